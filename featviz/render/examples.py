"""Pictures of the images that excite a channel most (``featviz top``): pure, arrays in and out.

An example is the receptive-field crop of an image around the position where the channel peaks,
fitted into a square cell, with that position's grid cell outlined and the score written in a
corner. A channel's sheet tiles its k examples best first, row by row; the overview tiles every
channel's best example, labelled with the channel's number.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import TYPE_CHECKING

from featviz.render.draw import SEPARATOR_RGB, tile

if TYPE_CHECKING:
    import numpy as np

MARK_RGB = (255, 214, 0)  # the grid cell where the channel peaks
LABEL_BACKGROUND = (0, 0, 0)
LABEL_TEXT = (255, 255, 255)

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in the image's pixels


def example_cell(image: np.ndarray, box: Box, cell: Box, label: str, size: int) -> np.ndarray:
    """(size, size, 3) uint8: ``box`` cut from the (H, W, 3) ``image``, scaled to fit (aspect
    kept, centred on the separator colour), the grid ``cell`` outlined, ``label`` top-left."""
    import numpy as np
    from PIL import Image

    x0, y0, x1, y1 = box
    crop = image[y0:y1, x0:x1]
    height, width = crop.shape[:2]
    scale = size / max(height, width)
    fitted_w, fitted_h = max(1, round(width * scale)), max(1, round(height * scale))
    resample = Image.Resampling.NEAREST if scale >= 2 else Image.Resampling.BILINEAR
    fitted = np.asarray(Image.fromarray(crop).resize((fitted_w, fitted_h), resample))
    out = np.empty((size, size, 3), dtype=np.uint8)
    out[:] = SEPARATOR_RGB
    top, left = (size - fitted_h) // 2, (size - fitted_w) // 2
    out[top : top + fitted_h, left : left + fitted_w] = fitted
    cx0, cy0, cx1, cy1 = cell
    _outline(
        out,
        (
            left + math.floor((cx0 - x0) * scale),
            top + math.floor((cy0 - y0) * scale),
            left + math.ceil((cx1 - x0) * scale),
            top + math.ceil((cy1 - y0) * scale),
        ),
    )
    _stamp(out, label)
    return out


def sheet(cells: list[np.ndarray], size: int) -> np.ndarray:
    """One channel's examples, best first, in a near-square grid (RGB uint8)."""
    import numpy as np

    return tile(np.stack(cells) if cells else np.zeros((1, size, size, 3), np.uint8), padding=2)


def _outline(pixels: np.ndarray, box: Box) -> None:
    """A one-pixel rectangle on ``pixels`` in place, clipped to it, never thinner than one."""
    height, width = pixels.shape[:2]
    x0, y0 = min(max(box[0], 0), width - 1), min(max(box[1], 0), height - 1)
    x1, y1 = min(max(box[2], x0 + 1), width), min(max(box[3], y0 + 1), height)
    pixels[y0, x0:x1] = MARK_RGB
    pixels[y1 - 1, x0:x1] = MARK_RGB
    pixels[y0:y1, x0] = MARK_RGB
    pixels[y0:y1, x1 - 1] = MARK_RGB


def _stamp(pixels: np.ndarray, text: str) -> None:
    """``text`` on a black band at the top-left corner of ``pixels``, in place."""
    label = _label(text, max(9, pixels.shape[0] // 7))
    rows, cols = min(label.shape[0], pixels.shape[0]), min(label.shape[1], pixels.shape[1])
    pixels[:rows, :cols] = label[:rows, :cols]


@lru_cache(maxsize=4096)
def _label(text: str, size: int) -> np.ndarray:
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=size)
    left, top, right, bottom = font.getbbox(text)
    picture = Image.new("RGB", (right - left + 4, bottom - top + 4), LABEL_BACKGROUND)
    ImageDraw.Draw(picture).text((2 - left, 2 - top), text, fill=LABEL_TEXT, font=font)
    return np.asarray(picture)
