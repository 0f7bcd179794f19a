"""Make docs/prompts_shapes.png again: one text prompt's Grad-CAM per panel, on the shapes sample.

Runs, from the repository root and with relative paths, the command the text prompts guide's
caption shows, into a temporary output folder:

    featviz cam -m examples/shapes_clip.py:build -t "text:a red square" \
        -t "text:a green disc" -t "text:a blue cross" sample_images/shapes.png

then lays the three overlays side by side, each under its prompt and the cosine similarity
featviz printed beside it. The example trains itself the first time (about 10 s);
nothing is fetched from the network.

Usage: python docs/make_prompts_picture.py [--out docs/prompts_shapes.png]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = ["a red square", "a green disc", "a blue cross"]
CAPTION_HEIGHT = 24


def overlays(folder: Path) -> list[dict]:
    """The cam run's one JSON line per map: each prompt's overlay and its similarity."""
    command = [sys.executable, "-m", "featviz", "cam", "-m", "examples/shapes_clip.py:build"]
    command += [argument for prompt in PROMPTS for argument in ("-t", f"text:{prompt}")]
    command += ["sample_images/shapes.png", "--json", "-o", str(folder)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FEATVIZ_WORKER": "off"}
    done = subprocess.run(command, cwd=ROOT, env=env, check=True, capture_output=True, text=True)
    [line] = [json.loads(text) for text in done.stdout.splitlines()]
    shown = {prediction["label"]: prediction["probability"] for prediction in line["predictions"]}
    named = {Path(path).name: path for path in line["outputs"]}
    return [
        {"path": named[f"{i}_{'_'.join(prompt.split())}.png"],
         "caption": f'"{prompt}"  cos {shown[prompt]:.2f}'}
        for i, prompt in enumerate(PROMPTS)
    ]  # fmt: skip


def make_picture(out: Path) -> None:
    with tempfile.TemporaryDirectory() as folder:
        panels = [(Image.open(item["path"]).convert("RGB"), item["caption"]) for item in
                  overlays(Path(folder))]  # fmt: skip
    width, height = panels[0][0].size
    sheet = Image.new("RGB", (width * len(panels), height + CAPTION_HEIGHT), "white")
    draw = ImageDraw.Draw(sheet)
    for number, (panel, caption) in enumerate(panels):
        sheet.paste(panel, (number * width, CAPTION_HEIGHT))
        draw.text((number * width + 8, 6), caption, fill="black")
    sheet.save(out, optimize=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/prompts_shapes.png"))
    make_picture(parser.parse_args().out)


if __name__ == "__main__":
    main()
