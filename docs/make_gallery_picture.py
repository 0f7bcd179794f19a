"""Make docs/gallery.png again: the gallery of a cam and a maps run on the sample photos.

Runs, from the repository root and with relative paths (so the cards name
``sample_images/chelsea.png``, never a machine's folders), the two commands the docs' caption
shows, into one temporary output folder:

    featviz cam -m examples/efficientnet_lite0.py:build --top-k 2 -M gradcam -M layercam \
        'sample_images/*'
    featviz maps -m examples/efficientnet_lite0.py:build -l blocks.1 -l blocks.5 \
        sample_images/chelsea.png sample_images/coffee.png

(the pattern quoted: featviz expands it to the images only, where the shell would also pass
LICENSES.md and fail on it), then opens the folder's index.html in headless Chromium and
screenshots the whole page, every sample image's card on it. Needs the examples extra,
playwright and a Chromium (``apt-get install chromium``); nothing is fetched from the network.

Usage: python docs/make_gallery_picture.py [--out docs/gallery.png] [--width 1400]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = "sample_images"
MODEL = "examples/efficientnet_lite0.py:build"
# Keeps Chromium off the network, as tests/test_gallery.py does: the page must need none.
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def featviz(*args: str) -> None:
    """One featviz command, from the repository root, run by this checkout's featviz."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FEATVIZ_WORKER": "off"}
    subprocess.run([sys.executable, "-m", "featviz", *args], cwd=ROOT, env=env, check=True)


def make_gallery(out: Path) -> Path:
    """The two runs into ``out``; returns its index.html."""
    featviz("cam", "-m", MODEL, "--top-k", "2", "-M", "gradcam", "-M", "layercam",
            f"{SAMPLES}/*", "-o", str(out), "-q")  # fmt: skip
    featviz("maps", "-m", MODEL, "-l", "blocks.1", "-l", "blocks.5",
            f"{SAMPLES}/chelsea.png", f"{SAMPLES}/coffee.png", "-o", str(out), "-q")  # fmt: skip
    return out / "index.html"


def screenshot(page_path: Path, picture: Path, width: int) -> None:
    """The whole page at ``width`` CSS pixels, once its thumbnails have loaded."""
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("needs Chromium: apt-get install chromium")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": width, "height": 800})
        page.goto(page_path.as_uri())
        page.wait_for_load_state("networkidle")
        page.screenshot(path=str(picture), full_page=True)
        browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "gallery.png")
    parser.add_argument("--width", type=int, default=1400, help="CSS pixels (default 1400)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="featviz-gallery-") as folder:
        index = make_gallery(Path(folder) / "out")
        screenshot(index, args.out, args.width)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
