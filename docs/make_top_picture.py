"""Make docs/top_overview.png and docs/top_channel.png again: ``featviz top`` on a real network.

Cuts each sample photo into 12 overlapping square crops (72 images), then runs, from the
repository root, on the real ImageNet-pretrained EfficientNet-Lite0:

    featviz top -m examples/efficientnet_lite0.py:build -l blocks.3 -k 6 --channels 0-23 \
        --cell-size 112 --no-gallery CROPS -o OUT

and copies the layer's overview (every channel's best crop) and one channel's sheet (its six
best crops, best first) into docs/. Nothing is fetched from the network.

Usage: python docs/make_top_picture.py [--channel 7]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_images"
MODEL = "examples/efficientnet_lite0.py:build"
LAYER = "blocks.3"


def crops(folder: Path) -> None:
    """12 overlapping squares of each sample photo: 3 sizes × 4 corners."""
    from PIL import Image

    folder.mkdir()
    for path in sorted(SAMPLES.iterdir()):
        if path.suffix not in (".png", ".jpg"):
            continue
        image = Image.open(path).convert("RGB")
        for scale in (0.5, 0.7, 0.9):
            side = round(min(image.size) * scale)
            for corner, (fx, fy) in enumerate(((0, 0), (1, 0), (0, 1), (1, 1))):
                left, top = round(fx * (image.width - side)), round(fy * (image.height - side))
                square = image.crop((left, top, left + side, top + side)).resize((224, 224))
                square.save(folder / f"{path.stem}-{scale}-{corner}.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--channel", type=int, default=7, help="the channel whose sheet is shown")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="featviz-top-picture-"))
    try:
        crops(work / "crops")
        command = [sys.executable, "-m", "featviz", "top", "-m", MODEL, "-l", LAYER, "-k", "6"]
        command += ["--channels", "0-23", "--cell-size", "112", "--no-gallery", "-q"]
        subprocess.run([*command, str(work / "crops"), "-o", str(work / "out")], check=True)
        [folder] = (work / "out" / "top").iterdir()
        shutil.copy(folder / f"{LAYER}.png", ROOT / "docs" / "top_overview.png")
        sheet = folder / LAYER / f"{args.channel:04d}.png"
        shutil.copy(sheet, ROOT / "docs" / "top_channel.png")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
