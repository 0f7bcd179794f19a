"""The gallery in a real browser: headless Chromium (Debian's ``chromium``; .ci/run installs it)
opens ``index.html`` from disk, for a folder that two commands wrote 300 images into, a video
model's clip, and `featviz top`'s sheets."""

from __future__ import annotations

import io
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_MODEL_SOURCE, TINY_VIDEO_MODEL, bar_frames, write_video
from PIL import Image
from typer.testing import CliRunner

from featviz.cli.app import app

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
IMAGES = 300
MAPPED = 100  # the first 100 also get feature-map grids
# Flags that keep Chromium off the network (updates, sync, probes): the page must need none.
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="needs chromium (apt-get install chromium)"
)


@pytest.fixture(scope="module")
def gallery(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("gallery")
    (root / "tiny_model.py").write_text(TINY_MODEL_SOURCE)
    rng = np.random.default_rng(0)
    for index in range(IMAGES):
        folder = root / "photos" / ("a" if index < MAPPED else "b")
        folder.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (18, 24, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"img_{index:03d}.png")
    common = [
        "-m",
        f"{root / 'tiny_model.py'}:build",
        "--input-size",
        "16",
        "-q",
        "-o",
        str(root / "out"),
    ]
    runner = CliRunner()
    cam = runner.invoke(
        app, ["cam", *common, "-r", "-M", "gradcam", "-M", "eigencam", str(root / "photos")]
    )
    assert cam.exit_code == 0, cam.stderr
    maps = runner.invoke(app, ["maps", *common, str(root / "photos" / "a")])
    assert maps.exit_code == 0, maps.stderr
    # Another model's maps of the same photos: a folder of its own, a filter of its own.
    (root / "other_model.py").write_text(TINY_MODEL_SOURCE.replace("(0)", "(1)"))
    other = [*common[2:], "-m", f"{root / 'other_model.py'}:build", str(root / "photos" / "a")]
    assert runner.invoke(app, ["cam", *other]).exit_code == 0
    return root / "out"


@pytest.fixture(scope="module")
def browser():
    """One Chromium for the module: Playwright's sync API runs one instance per thread."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def page(browser, gallery: Path):
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.problems = []
    page.on("console", lambda m: m.type == "error" and page.problems.append(m.text))
    page.on("pageerror", lambda error: page.problems.append(str(error)))
    page.on(
        "request",
        lambda r: r.url.startswith("file://") or page.problems.append(f"request {r.url}"),
    )
    page.goto((gallery / "index.html").as_uri())
    yield page
    page.close()


def _names_on_every_page(page) -> list[str]:
    names = []
    while True:
        names += page.locator("article.card h2").all_text_contents()
        if page.locator("#next").is_disabled():
            return names
        page.click("#next")


RESOLVES = """() => Promise.all(Array.from(document.images, (img) => new Promise((done) => {
  const probe = new Image();  // not lazy: loads now, whatever is on screen
  probe.onload = () => done(probe.naturalWidth > 0 ? null : img.src);
  probe.onerror = () => done(img.src);
  probe.src = img.src;
}))).then((failed) => failed.filter(Boolean))"""


def test_every_card_is_there_and_every_picture_resolves(page, gallery: Path) -> None:
    assert page.text_content("#count") == f"{IMAGES} of {IMAGES} images"
    assert page.text_content("#page") == "page 1 / 7"
    names, broken = [], []
    while True:
        names += page.locator("article.card h2").all_text_contents()
        broken += page.evaluate(RESOLVES)
        if page.locator("#next").is_disabled():
            break
        page.click("#next")
    expected = {
        str(gallery.parent / "photos" / ("a" if i < MAPPED else "b") / f"img_{i:03d}.png")
        for i in range(IMAGES)
    }
    assert set(names) == expected and len(names) == IMAGES
    assert broken == []
    assert page.problems == []


def test_filters_change_what_is_shown(page, gallery: Path) -> None:
    page.select_option("#method", "eigencam")
    assert page.text_content("#count") == f"{IMAGES} of {IMAGES} images"
    titles = page.locator(".outputs a").evaluate_all("links => links.map(a => a.title)")
    spec = re.escape(str(gallery.parent / "tiny_model.py"))
    model = rf"{spec}:build, seed 0, precision fp32, input size 16"
    assert titles and all(
        re.match(rf"{model}, resize keep · cam · eigencam · features", title) for title in titles
    ), titles[:3]
    page.select_option("#method", "")
    page.select_option("#command", "maps")
    assert page.text_content("#count") == f"{MAPPED} of {IMAGES} images"
    assert all(
        " · maps · " in title
        for title in page.locator(".outputs a").evaluate_all("links => links.map(a => a.title)")
    )
    page.select_option("#command", "")
    # Issue 21.1: which model made each picture, and a filter by it.
    assert page.locator("#model option").all_text_contents()[1:] == [
        f"other_model ({gallery.parent / 'other_model.py'}:build, seed 0, precision fp32, "
        "input size 16, resize keep)",
        f"tiny_model ({gallery.parent / 'tiny_model.py'}:build, seed 0, precision fp32, "
        "input size 16, resize keep)",
    ]
    page.select_option("#model", "other_model")
    assert page.text_content("#count") == f"{MAPPED} of {IMAGES} images"
    models = page.locator(".outputs a").evaluate_all("links => links.map(a => a.dataset.model)")
    assert models and set(models) == {"other_model"}
    page.select_option("#model", "")
    page.fill("#name", "img_01")
    assert page.text_content("#count") == f"10 of {IMAGES} images"  # img_010 … img_019
    assert len(_names_on_every_page(page)) == 10
    page.fill("#name", "")
    assert page.text_content("#count") == f"{IMAGES} of {IMAGES} images"
    assert page.problems == []


def test_a_screenshot_of_the_page(page, tmp_path: Path) -> None:
    shot = tmp_path / "gallery.png"
    page.screenshot(path=str(shot))
    with Image.open(shot) as image:
        assert image.size == (1400, 900)
        assert np.asarray(image.convert("L")).std() > 10  # cards and pictures, not a blank page


@pytest.fixture(scope="module")
def video_gallery(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A video model's cam run on a clip whose frames differ, 5 frames a second."""
    root = tmp_path_factory.mktemp("video_gallery")
    (root / "tiny3d.py").write_text(TINY_VIDEO_MODEL)
    video = write_video(root / "bar.mp4", bar_frames(4, 48, 64), "libx264", rate=5)
    out = root / "out"
    done = CliRunner().invoke(
        app, ["cam", "-m", f"{root / 'tiny3d.py'}:build", "-q", "-o", str(out), str(video)]
    )
    assert done.exit_code == 0, done.stderr
    return out


def test_a_clips_animation_plays_in_its_card(browser, video_gallery: Path) -> None:
    """The card's thumbnail is the animated WebP itself: Chromium decodes it and, in the
    0.8 s it loops in, shows more than one picture."""
    page = browser.new_page(viewport={"width": 800, "height": 600})
    problems = []
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.goto((video_gallery / "index.html").as_uri())
    thumb = page.locator(".outputs img").first
    assert thumb.get_attribute("src").endswith(".webp.webp")
    assert page.evaluate(RESOLVES) == []
    shots = set()
    for _ in range(8):
        shots.add(thumb.screenshot())
        page.wait_for_timeout(110)
    page.close()
    assert len(shots) > 1 and problems == []


@pytest.fixture(scope="module")
def top_gallery(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`featviz top` of the tiny model over six photos (two channels of one layer, k = 2),
    and their maps by `featviz cam`, in one folder."""
    root = tmp_path_factory.mktemp("top_gallery")
    (root / "tiny_model.py").write_text(TINY_MODEL_SOURCE)
    (root / "in").mkdir()
    rng = np.random.default_rng(0)
    for index in range(6):
        pixels = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "in" / f"im{index}.png")
    options = ["-m", f"{root / 'tiny_model.py'}:build", "--input-size", "32", "-q"]
    options += ["-l", "features.2", "-k", "2", "--channels", "1,3"]
    done = CliRunner().invoke(app, ["top", *options, "-o", str(root / "out"), str(root / "in")])
    assert done.exit_code == 0, done.output
    cam = ["cam", *options[:5], "-o", str(root / "out"), str(root / "in")]
    assert CliRunner().invoke(app, cam).exit_code == 0
    return root / "out"


def test_tops_card_shows_every_sheet_and_opens_each_at_its_pixels(browser, top_gallery: Path):
    """The layer's card, counted apart from the images: its overview, then each ranked
    channel's sheet; a click opens the sheet, which the browser draws pixel for pixel as it
    is on disk."""
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    problems = []
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.goto((top_gallery / "index.html").as_uri())
    assert page.text_content("#count") == "6 of 6 images · 1 of 1 top layer"
    page.select_option("#command", "top")
    assert page.text_content("#count") == "0 of 6 images · 1 of 1 top layer"
    assert page.locator("article.card h2").all_text_contents() == ["top: tiny_model features.2"]
    captions = page.locator(".outputs a").evaluate_all(
        "links => links.map(a => a.childNodes[1].textContent)"
    )
    assert captions == [
        "top · features.2 · every channel",
        "top · features.2 · channel 1",
        "top · features.2 · channel 3",
    ]
    assert page.evaluate(RESOLVES) == []
    with page.expect_navigation():
        page.locator(".outputs a", has_text="channel 3").click()
    sheet = top_gallery / "top" / "tiny_model" / "features.2" / "0003.png"
    assert page.url == sheet.as_uri()
    shown = Image.open(io.BytesIO(page.locator("img").screenshot())).convert("RGB")
    assert np.array_equal(np.asarray(shown), np.asarray(Image.open(sheet).convert("RGB")))
    page.close()
    assert problems == []
