"""A video classifier you can explain offline: a tiny 3-D network that tells which way a square
moves among squares that stay.

    featviz cam -m examples/shapes_video.py:build --save-raw sample_images/moves.mp4

It takes (N, 3, 8, 32, 32) clips (``CLIP_LENGTH`` frames, every frame of the video: no
``FRAME_RATE``) and answers up, down, left or right. It trains itself the first time (about a
minute of CPU time) on the clips of ``synthetic_clips.py`` and keeps its weights in
``$XDG_CACHE_HOME/featviz/`` (``~/.cache/featviz/``).
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synthetic_clips import CLASSES, FRAMES, SIDE, Tiny3d, trained_tiny3d
from synthetic_shapes import cached

LABELS = CLASSES
CLIP_LENGTH = FRAMES
INPUT_SIZE = SIDE
MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)


def build() -> torch.nn.Module:
    return cached("shapes_video", Tiny3d, trained_tiny3d, "about a minute")
