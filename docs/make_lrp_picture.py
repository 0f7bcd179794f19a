"""Make docs/lrp_shapes_vit.png again: AttnLRP's signed relevance beside gradient rollout on the
tiny ViT of examples/shapes_vit.py, for both objects' classes of two scenes.

The relevance is drawn on a diverging colour map centred on zero (red: evidence for the class,
blue: against it), each map's colours spanning ± its 99th percentile of |relevance|; gradient
rollout, which has no sign, on the usual [0, 1] scale. The ViT trains itself the first time
(about 20 s).

Usage, from the repository root: python docs/make_lrp_picture.py [--out docs/lrp_shapes_vit.png]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

sys.path.insert(0, "examples")
from shapes_vit import build
from synthetic_shapes import CLASSES, two_object_scenes

import featviz
from featviz.cam.methods.attnlrp import attnlrp_relevance


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("docs/lrp_shapes_vit.png"))
    args = parser.parse_args()
    module = build().eval().requires_grad_(False)
    model = featviz.load(module, input_size=32, mean=(0.5,) * 3, std=(0.5,) * 3, labels=CLASSES)
    scenes = two_object_scenes(2, seed=1)
    figure = Figure(figsize=(10, 1.3 * len(scenes)), dpi=90)
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(scenes), 5, squeeze=False)
    for row, (x, left, right) in zip(axes, scenes):
        photo = ((x[0] * 0.5 + 0.5).clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
        row[0].imshow(photo)
        row[0].set_title("scene", fontsize=9)
        for column, target in enumerate((left, right)):
            relevance, _ = attnlrp_relevance(module, x, torch.tensor([target]))
            signed = relevance.sum(dim=1)[0].numpy()
            bound = float(np.quantile(np.abs(signed), 0.99))
            row[1 + column].imshow(signed, cmap="bwr", vmin=-bound, vmax=bound)
            row[1 + column].set_title(f"attnlrp: {CLASSES[target]}", fontsize=9)
            rollout = featviz.explain(model, photo, method="gradrollout", target=target)
            row[3 + column].imshow(rollout.heatmap, cmap="jet", vmin=0, vmax=1)
            row[3 + column].set_title(f"gradrollout: {CLASSES[target]}", fontsize=9)
    for ax in axes.ravel():
        ax.set_axis_off()
    figure.tight_layout()
    figure.savefig(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
