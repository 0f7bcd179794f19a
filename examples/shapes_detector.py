"""A detection model you can explain offline: torchvision's FCOS, tiny, trained on shapes.

    featviz cam -m examples/shapes_detector.py:build sample_images/shapes.png

It returns one dict of boxes, scores and labels per image, as torchvision's detectors do, so
featviz explains it as one: a map per box scoring at least --min-score, the box drawn on it.
It trains itself the first time (about 35 s on 2 CPU cores) on the scenes of
``synthetic_shapes.py`` and keeps its weights in ``$XDG_CACHE_HOME/featviz/``
(``~/.cache/featviz/``).
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synthetic_shapes import DETECTION_CLASSES, cached, detector, trained_detector

LABELS = DETECTION_CLASSES
INPUT_SIZE = 32
# It normalises its [0, 1] input itself, as torchvision's detectors do.
MEAN = (0.0, 0.0, 0.0)
STD = (1.0, 1.0, 1.0)


def build() -> torch.nn.Module:
    return cached("shapes_detector", detector, trained_detector, "about 35 s")
