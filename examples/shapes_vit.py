"""A vision transformer you can explain offline: a tiny timm ViT trained on coloured shapes.

    pip install -e ".[examples]"
    featviz cam -m examples/shapes_vit.py:build -M gradrollout --top-k 2 sample_images/shapes.png

No pretrained transformer can be downloaded everywhere, so this one trains itself the first
time (about 20 s on 2 CPU cores) on the task of ``synthetic_shapes.py`` — a red square, a green
disc and a blue cross on clutter, one per half of a 32 × 64 scene — and keeps its weights in
``$XDG_CACHE_HOME/featviz/`` (``~/.cache/featviz/``) for the next calls. The ViT has a class
token and two register tokens: featviz finds both from the model's shapes alone.
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synthetic_shapes import CLASSES, cached, trained, vit

# Optional constants featviz reads next to the factory.
LABELS = CLASSES
INPUT_SIZE = 32
MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)


def build() -> torch.nn.Module:
    return cached("shapes_vit", vit, lambda: trained(vit), "about 20 s")
