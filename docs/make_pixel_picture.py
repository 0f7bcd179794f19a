"""Make docs/pixel_methods.png again: Grad-CAM and every pixel-level method on one photo.

The real EfficientNet-Lite0 from examples/ (fed 160 pixels on the shorter side, so that the
50 steps of integrated gradients and the windows of occlusion take seconds) explains the tabby in
sample_images/cat_and_coffee.png with ``featviz.explain`` (the library, as ``featviz cam``
would: signed maps drawn as their absolute value), and the overlays are laid out as ``compare``
lays out its panel, in two rows. Run from the repository root:

    python docs/make_pixel_picture.py [--out docs/pixel_methods.png]
"""

from __future__ import annotations

import argparse

import numpy as np
from PIL import Image

import featviz
from featviz.cam.registry import method_info, method_names
from featviz.render.figures import Cell, grid_panel

PHOTO = "sample_images/cat_and_coffee.png"
MODEL = "examples/efficientnet_lite0.py:build"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/pixel_methods.png")
    args = parser.parse_args()
    methods = ["gradcam", *(name for name in method_names() if method_info(name).pixel_level)]
    model = featviz.load(MODEL, input_size=160)
    found = featviz.explain(model, PHOTO, method=methods, target="tabby")
    cells = [Cell(f"{e.method} · {e.layer}", np.asarray(e.overlay())) for e in found]
    half = -(-len(cells) // 2)
    panel = grid_panel(
        found[0].image,
        [cells[:half], cells[half:]],
        cmap="jet",
        title=f"{PHOTO}: tabby {found[0].probability:.2f}, EfficientNet-Lite0",
    )
    Image.fromarray(panel).save(args.out)


if __name__ == "__main__":
    main()
