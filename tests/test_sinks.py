"""Outputs as sinks: runs that share an output folder keep every record, TensorBoard shows the
very pictures written to disk (read back with tensorboard's own EventAccumulator, and listed by a
real ``tensorboard`` server), and the gallery covers every command that wrote there."""

from __future__ import annotations

import io
import json
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_MODEL_SOURCE, record_of
from PIL import Image
from typer.testing import CliRunner

from featviz.cli.app import app

TINY = ["-m", "tiny_model.py:build", "--input-size", "32"]


def invoke(*args: str | Path):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(autouse=True)
def _workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("tiny_model.py").write_text(TINY_MODEL_SOURCE)
    Path("in").mkdir()
    rng = np.random.default_rng(0)
    for index, size in enumerate([(40, 30), (40, 30), (30, 45)]):
        pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(f"in/{index}.png")


def test_runs_into_one_folder_keep_every_record_and_manifest() -> None:
    """The README's quick start ran cam then maps into one folder: the cam run's record was gone."""
    assert invoke("cam", *TINY, "in", "-o", "out").exit_code == 0
    assert invoke("maps", *TINY, "in", "-o", "out").exit_code == 0
    assert invoke("cam", *TINY, "in", "-o", "out", "-M", "layercam").exit_code == 0
    runs = sorted(Path("out/runs").iterdir())
    assert [re.sub(r".*Z-(\w+)-\d+\.json", r"\1", p.name) for p in runs] == ["cam", "maps", "cam"]
    commands = [json.loads(p.read_text())["command"] for p in runs]
    assert sorted(commands) == ["cam", "cam", "maps"]
    latest = json.loads(Path("out/manifest.json").read_text())
    assert latest["runs"] == [f"runs/{p.name}" for p in runs]
    assert latest["request"]["options"]["methods"] == ["layercam"]
    records = sorted(p.name.split("-")[0] for p in Path("out/records/tiny_model/0").iterdir())
    assert records == ["cam", "cam", "maps"]  # both cam settings and the maps run


def test_skip_existing_redoes_an_image_whose_file_another_run_rewrote() -> None:
    first = ["cam", *TINY, "in/0.png", "-o", "out", "--heatmap"]
    assert invoke(*first).exit_code == 0
    # Other pixels go to a model folder of their own: the first run's files stay as they were.
    assert invoke("cam", *TINY, "in/0.png", "-o", "out", "--alpha", "0.9").exit_code == 0
    assert json.loads(invoke(*first, "--skip-existing", "--json").stdout)["skipped"] is True
    # Other settings of the same pictures (no heatmap) rewrite the overlay: done again.
    assert invoke("cam", *TINY, "in/0.png", "-o", "out").exit_code == 0
    again = invoke(*first, "--skip-existing", "--json")
    assert json.loads(again.stdout)["skipped"] is False
    settled = invoke(*first, "--skip-existing", "--json")
    assert json.loads(settled.stdout)["skipped"] is True


def _event_images(log_dir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(log_dir), size_guidance={"images": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator


def _decoded(event, like: np.ndarray) -> np.ndarray:
    """TensorBoard's picture, in the PNG's channels (it stores grey pictures as RGB)."""
    pixels = np.asarray(Image.open(io.BytesIO(event.encoded_image_string)))
    if like.ndim == 2 and pixels.ndim == 3:
        assert (pixels == pixels[..., :1]).all()
        return pixels[..., 0]
    return pixels


def test_tensorboard_shows_the_pictures_written_to_disk() -> None:
    assert invoke("maps", *TINY, "in", "-o", "out", "--tensorboard", "tb/maps").exit_code == 0
    result = invoke("cam", *TINY, "in", "-o", "out", "--tensorboard", "tb/cam", "-M", "gradcam")
    assert result.exit_code == 0, result.stderr
    maps = _event_images(Path("tb/maps"))
    assert sorted(maps.Tags()["images"]) == ["maps/features.0", "maps/features.2"]
    assert sorted(maps.Tags()["histograms"]) == ["activations/features.0", "activations/features.2"]
    events = sorted(maps.Images("maps/features.2"), key=lambda event: event.step)
    assert [e.step for e in events] == [0, 1, 2]  # the images' positions in the run
    for event in events:
        on_disk = np.asarray(Image.open(f"out/tiny_model/{event.step}/maps/features.2.png"))
        np.testing.assert_array_equal(_decoded(event, on_disk), on_disk)
    cam = _event_images(Path("tb/cam"))
    for tag in cam.Tags()["images"]:
        _, method, layer, target = tag.split("/")
        for event in cam.Images(tag):
            picture = f"out/tiny_model/{event.step}/cam/{method}/{layer}/{target}.png"
            on_disk = np.asarray(Image.open(picture))
            np.testing.assert_array_equal(_decoded(event, on_disk), on_disk)
    texts = {
        e.step: e.tensor_proto.string_val[0].decode() for e in cam.Tensors("image/text_summary")
    }
    assert sorted(texts) == [0, 1, 2]
    assert texts[2].startswith("**in/2.png** (step 2)") and "| class | probability |" in texts[2]


def test_filters_go_to_tensorboard_at_step_0() -> None:
    result = invoke(
        "filters",
        "-m",
        "alexnet",
        "--weights",
        "none",
        "-l",
        "features.0",
        "-o",
        "out",
        "--tensorboard",
        "tb",
    )
    assert result.exit_code == 0, result.stderr
    [event] = _event_images(Path("tb")).Images("filters/features.0")
    assert event.step == 0
    on_disk = np.asarray(Image.open("out/filters/alexnet@none/features.0.png"))
    np.testing.assert_array_equal(_decoded(event, on_disk), on_disk)


def test_without_tensorboard_installed_the_option_gives_the_pip_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    result = invoke("maps", *TINY, "in", "-o", "out", "--tensorboard", "tb")
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        "Error: --tensorboard needs the tensorboard package, which is not installed",
        "Hint: pip install 'featviz[tensorboard]'",
    ]
    assert not Path("out").exists()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_real_tensorboard_server_lists_the_tags() -> None:
    assert invoke("cam", *TINY, "in", "-o", "out", "--tensorboard", "tb").exit_code == 0
    port = _free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tensorboard.main",
            "--logdir",
            "tb",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        tags = None
        while time.monotonic() < deadline and tags is None:
            try:
                url = f"http://127.0.0.1:{port}/data/plugin/images/tags"
                with urllib.request.urlopen(url, timeout=2) as response:
                    tags = json.loads(response.read())
            except OSError:
                time.sleep(0.5)
        assert tags is not None, "tensorboard did not answer within 60 s"
        [run] = tags.values()
        overlays = [tag for tag in run if tag.startswith("cam/gradcam/features/")]
        assert overlays, run
    finally:
        server.terminate()
        server.wait(timeout=30)


def _gallery() -> dict:
    script = Path("out/gallery/data.js").read_text()
    return json.loads(script.removeprefix("window.FEATVIZ_GALLERY = ").rstrip().rstrip(";"))


def test_the_gallery_covers_every_command_that_wrote_to_the_folder() -> None:
    assert invoke("cam", *TINY, "in", "-o", "out", "--heatmap").exit_code == 0
    assert invoke("maps", *TINY, "in", "-o", "out").exit_code == 0
    assert Path("out/index.html").read_bytes().startswith(b"<!doctype html>")
    images = _gallery()["images"]
    assert [image["name"] for image in images] == ["in/0.png", "in/1.png", "in/2.png"]
    for image in images:
        commands = sorted({output[1] for output in image["outputs"]})
        assert commands == ["cam", "maps"]
        assert {output[0] for output in image["outputs"]} == {"tiny_model"}
        assert len(image["outputs"]) == 4  # overlay + heatmap, two grids
        assert image["predictions"] and image["thumb"].startswith("gallery/originals/")
        for output in image["outputs"]:
            assert Path("out", output[6]).is_file() and Path("out", output[7]).is_file()
            with Image.open(Path("out", output[7])) as thumb:
                assert thumb.format == "JPEG" and max(thumb.size) <= 240
        assert Path("out", image["link"]).resolve() == Path(image["name"]).resolve()
    record = json.loads(record_of(Path("out"), "0").read_text())
    assert [a["kind"] for a in record["artifacts"]] == ["overlay", "heatmap"]


def test_no_gallery_writes_no_page_and_a_later_run_fills_the_thumbnails_in() -> None:
    assert invoke("cam", *TINY, "in", "-o", "out", "--no-gallery").exit_code == 0
    assert not Path("out/index.html").exists() and not Path("out/gallery").exists()
    assert invoke("maps", *TINY, "in/0.png", "-o", "out").exit_code == 0
    images = {image["name"]: image for image in _gallery()["images"]}
    assert len(images) == 3  # the cam run's images too, from their records
    for output in images["in/1.png"]["outputs"]:
        assert Path("out", output[7]).is_file()  # made at the end from the PNGs on disk


def test_pictures_encode_side_by_side(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two writer threads encode two pictures' PNGs at once, each once: neither waits for the
    other (functools.cached_property, up to Python 3.11, held one lock per class)."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from featviz.sinks.artifacts import Artifact

    both_inside = threading.Barrier(2, timeout=10)
    calls = []

    def encode_png(pixels: np.ndarray) -> bytes:
        calls.append(pixels.shape)
        both_inside.wait()  # raises BrokenBarrierError if the other encode cannot start
        return b"png of %d" % pixels.shape[0]

    monkeypatch.setattr("featviz.sinks.encode.encode_png", encode_png)
    pictures = [
        Artifact("top", "overview", "layer", pixels=np.zeros((size, 2, 3), np.uint8))
        for size in (1, 2)
    ]
    with ThreadPoolExecutor(2) as pool:
        assert list(pool.map(lambda picture: picture.png, pictures)) == [b"png of 1", b"png of 2"]
    assert [picture.png for picture in pictures] == [b"png of 1", b"png of 2"]
    assert sorted(calls) == [(1, 2, 3), (2, 2, 3)]
