"""Make sample_images/moves.mp4 and docs/video_moves.png again: a video classifier's Grad-CAM,
frame by frame.

Writes the sample video (eight clips of ``examples/synthetic_clips.py``, a square moving up,
down, left and right among squares that stay; 8 frames each, lossless H.264 at 8 frames a
second), runs, from the repository root and with relative paths, the command the docs' caption
shows

    featviz cam -m examples/shapes_video.py:build sample_images/moves.mp4

into a temporary folder, and draws a strip of the clip of a square moving right: its eight
frames (top) above the eight frames of the animated overlay featviz wrote (bottom), enlarged 4×
nearest-neighbour. Needs PyAV; the example trains itself once (about a minute of CPU time).

Usage: python docs/make_video_picture.py
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import av
import numpy as np
import torch
from PIL import Image, ImageSequence

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))
from synthetic_clips import CLASSES, FRAMES, clip  # noqa: E402

VIDEO = "sample_images/moves.mp4"
MODEL = "examples/shapes_video.py:build"
SHOWN = 7  # the eighth clip: a square moving right
SCALE, GAP = 4, 4


def write_sample() -> np.ndarray:
    """Write VIDEO; return its (T, H, W, 3) frames."""
    generator = torch.Generator().manual_seed(7)
    clips = [clip(kind % len(CLASSES), generator)[0] for kind in range(8)]
    frames = (torch.cat(clips, dim=1).permute(1, 2, 3, 0) * 255).round().byte().numpy()
    with av.open(str(ROOT / VIDEO), "w") as container:
        stream = container.add_stream("libx264", rate=8, options={"qp": "0"})
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv444p"
        for pixels in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return frames


def strip(rows: list[np.ndarray]) -> np.ndarray:
    """Rows of (T, h, w, 3) frames → one picture, frames side by side, enlarged."""
    height, width = rows[0].shape[1:3]
    count = len(rows[0])
    picture = np.full(
        (len(rows) * (height * SCALE + GAP) - GAP, count * (width * SCALE + GAP) - GAP, 3),
        255,
        np.uint8,
    )
    for r, frames in enumerate(rows):
        for t, frame in enumerate(frames):
            big = frame.repeat(SCALE, axis=0).repeat(SCALE, axis=1)
            top, left = r * (height * SCALE + GAP), t * (width * SCALE + GAP)
            picture[top : top + height * SCALE, left : left + width * SCALE] = big
    return picture


def main() -> None:
    frames = write_sample()
    with tempfile.TemporaryDirectory() as out:
        command = ["cam", "-m", MODEL, "-q", "--no-gallery", "-o", out, VIDEO]
        subprocess.run([sys.executable, "-m", "featviz", *command], cwd=ROOT, check=True)
        [overlay] = Path(out).glob(f"*/moves/clip{SHOWN:04d}/cam/gradcam/features/*.webp")
        with Image.open(overlay) as animation:
            drawn = [np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(animation)]
    shown = frames[SHOWN * FRAMES : (SHOWN + 1) * FRAMES]
    Image.fromarray(strip([shown, np.stack(drawn)])).save(ROOT / "docs" / "video_moves.png")


if __name__ == "__main__":
    main()
