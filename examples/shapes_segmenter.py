"""A segmentation model you can explain offline: a tiny encoder–decoder trained on shapes.

    featviz cam -m examples/shapes_segmenter.py:build --top-k 3 sample_images/shapes.png

It outputs per-pixel logits (N, 4, H, W), as torchvision's segmentation models do, so featviz
explains it as one: the score of a class is the sum of its logits over the pixels assigned to
it, and the overlay outlines those pixels. It trains itself the first time (about 15 s on 2
CPU cores) on the scenes of ``synthetic_shapes.py`` and keeps its weights in
``$XDG_CACHE_HOME/featviz/`` (``~/.cache/featviz/``).
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synthetic_shapes import SEGMENTATION_CLASSES, Segmenter, cached, trained_segmenter

LABELS = SEGMENTATION_CLASSES
INPUT_SIZE = 32
MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)


def build() -> torch.nn.Module:
    return cached("shapes_segmenter", Segmenter, trained_segmenter, "about 15 s")
