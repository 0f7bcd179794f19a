"""Make docs/dream_classes.png and docs/dream_channels.png again, and check what they show.

Runs, from the repository root, the two commands the dream page shows on the real pretrained
EfficientNet-Lite0 of examples/:

    featviz dream -m examples/efficientnet_lite0.py:build -t goldfish -t flamingo \
        -t monarch -t lemon -t volcano --steps 256
    featviz dream -m examples/efficientnet_lite0.py:build -l blocks.1 -c 0-15 --size 96 \
        --steps 128

keeps each run's labelled grid in docs/ (in 256 colours), and prints the network's probability
of each class on its own dream (the goal: at least 0.9 for at least 4 of the 5) as a Markdown
table. Needs the examples extra; nothing is fetched from the network. Exits 1 when the goal is
missed.

Usage: python docs/make_dream_pictures.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODEL = "examples/efficientnet_lite0.py:build"
CLASSES = ["goldfish", "flamingo", "monarch", "lemon", "volcano"]
GOAL = 0.9  # the probability each class's dream should reach, for 4 of the 5


def dream(out: Path, *args: str) -> list[dict]:
    """One ``featviz dream`` run into ``out`` (this checkout's featviz); its --json rows."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FEATVIZ_WORKER": "off"}
    command = [sys.executable, "-m", "featviz", "dream", "-m", MODEL, *args, "-o", str(out)]
    done = subprocess.run(
        [*command, "--json"], cwd=ROOT, env=env, check=True, capture_output=True, text=True
    )
    return [json.loads(line) for line in done.stdout.splitlines()]


def keep_grid(out: Path, picture: str) -> None:
    """The grid of the one run in ``out`` as docs/``picture``, in 256 colours (a third of the
    bytes; the dreams' textures keep their look)."""
    from PIL import Image

    [grid] = (out / "runs").glob("*/dream.png")
    image = Image.open(grid).convert("RGB")
    palette = image.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    palette.save(ROOT / "docs" / picture, optimize=True)


def main() -> int:
    with tempfile.TemporaryDirectory() as folder:
        classes = Path(folder) / "classes"
        targets = [arg for name in CLASSES for arg in ("-t", name)]
        rows = dream(classes, *targets, "--steps", "256")
        keep_grid(classes, "dream_classes.png")
        channels = Path(folder) / "channels"
        dream(channels, "-l", "blocks.1", "-c", "0-15", "--size", "96", "--steps", "128")
        keep_grid(channels, "dream_channels.png")
    print("| class | score (logit) | probability |")
    print("|---|---|---|")
    for row in rows:
        print(f"| {row['index']} {row['label']} | {row['value']:.1f} | {row['probability']:.3f} |")
    reached = sum(row["probability"] >= GOAL for row in rows)
    print(f"\n{reached} of {len(rows)} class dreams at probability ≥ {GOAL}")
    return 0 if reached >= 4 else 1


if __name__ == "__main__":
    sys.exit(main())
