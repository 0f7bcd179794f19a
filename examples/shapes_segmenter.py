"""A segmentation model you can explain offline: a tiny encoder–decoder trained on shapes.

    featviz cam -m examples/shapes_segmenter.py:build --top-k 3 sample_images/shapes.png

It outputs per-pixel logits (N, 4, H, W), as torchvision's segmentation models do, so featviz
explains it as one: the score of a class is the sum of its logits over the pixels assigned to
it, and the overlay outlines those pixels. It trains itself the first time (about 15 s on 2
CPU cores) on the scenes of ``synthetic_shapes.py`` and keeps its weights in
``$XDG_CACHE_HOME/featviz/`` (``~/.cache/featviz/``).
"""

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synthetic_shapes import SEGMENTATION_CLASSES, Segmenter, trained_segmenter

LABELS = SEGMENTATION_CLASSES
INPUT_SIZE = 32
MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)

_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "featviz"


def build() -> torch.nn.Module:
    weights = _CACHE / f"shapes_segmenter-{torch.__version__.split('+')[0]}.pt"
    model = Segmenter()
    if weights.is_file():
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        return model
    print("shapes_segmenter: training the example once (about 15 s)…", file=sys.stderr)
    model = trained_segmenter()
    weights.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), weights)
    return model
