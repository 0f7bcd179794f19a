"""Pictures of the images that excite a channel most (``featviz top``): pure, arrays in and out.

An example is the receptive-field crop of an image around the position where the channel peaks,
fitted into a square cell, with that position's grid cell outlined and the score written in a
corner. A channel's sheet tiles its k examples best first, row by row; the overview tiles every
channel's best example, labelled with the channel's number.

A run draws thousands of examples (channels × k), so each step is cheap: a crop is scaled once
(``fit``) however many channels an image wins with the same box, examples are drawn straight
into their sheet, and labels are put together from glyphs drawn once per character (``_line``),
each label once however often it comes back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

from featviz.render.draw import SEPARATOR_RGB, filled, grid_places, tile

if TYPE_CHECKING:
    from collections.abc import Sequence

    import numpy as np

MARK_RGB = (255, 214, 0)  # the grid cell where the channel peaks
LABEL_BACKGROUND = (0, 0, 0)
LABEL_TEXT = (255, 255, 255)

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in the image's pixels


@dataclass(frozen=True)
class Fitted:
    """A crop scaled to fit a square cell, centred on the separator colour, not yet marked."""

    pixels: np.ndarray  # (size, size, 3) uint8
    box: Box  # what was cut, in the image's pixels
    scale: float  # cell pixels per image pixel
    left: int  # where the crop starts in the cell
    top: int


def fit(image: np.ndarray, box: Box, size: int) -> Fitted:
    """``box`` cut from the (H, W, 3) ``image`` and scaled to fit a ``size`` × ``size`` cell,
    its aspect kept (nearest-neighbour from 2× up, bilinear below)."""
    import numpy as np
    from PIL import Image

    x0, y0, x1, y1 = box
    crop = image[y0:y1, x0:x1]
    height, width = crop.shape[:2]
    scale = size / max(height, width)
    fitted_w, fitted_h = max(1, round(width * scale)), max(1, round(height * scale))
    resample = Image.Resampling.NEAREST if scale >= 2 else Image.Resampling.BILINEAR
    fitted = np.asarray(Image.fromarray(crop).resize((fitted_w, fitted_h), resample))
    out = filled((size, size), SEPARATOR_RGB)
    top, left = (size - fitted_h) // 2, (size - fitted_w) // 2
    out[top : top + fitted_h, left : left + fitted_w] = fitted
    return Fitted(out, box, scale, left, top)


Example = tuple[Fitted, Box, str]  # a crop, the grid cell to outline on it, its label


def sheet(examples: Sequence[Example], size: int) -> np.ndarray:
    """Examples best first in a near-square grid (RGB uint8): each crop with the grid cell
    (in the image's pixels) outlined and its label written top-left. Each is drawn straight
    into its place in the grid, not drawn then copied there: a run draws thousands."""
    import numpy as np

    if not examples:
        return tile(np.zeros((1, size, size, 3), np.uint8), padding=2)
    shape, places = grid_places(len(examples), (size, size), padding=2)
    out = filled(shape, SEPARATOR_RGB)
    for (fitted, cell, label), (top, left) in zip(examples, places):
        _draw(out[top : top + size, left : left + size], fitted, cell, label)
    return out


def _draw(pixels: np.ndarray, fitted: Fitted, cell: Box, label: str) -> None:
    """The ``fitted`` crop on ``pixels`` (its size), ``cell`` outlined, ``label`` stamped."""
    pixels[...] = fitted.pixels
    x0, y0 = fitted.box[:2]
    cx0, cy0, cx1, cy1 = cell
    scale, left, top = fitted.scale, fitted.left, fitted.top
    _outline(
        pixels,
        (
            left + math.floor((cx0 - x0) * scale),
            top + math.floor((cy0 - y0) * scale),
            left + math.ceil((cx1 - x0) * scale),
            top + math.ceil((cy1 - y0) * scale),
        ),
    )
    _stamp(pixels, label)


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
    """``text`` on a black band at the top-left corner of ``pixels``, in place, cut to it."""
    label = _label(text, max(9, pixels.shape[0] // 7))
    height, width = min(label.shape[0], pixels.shape[0]), min(label.shape[1], pixels.shape[1])
    pixels[:height, :width] = label[:height, :width]


@lru_cache(maxsize=4096)
def _label(text: str, size: int) -> np.ndarray:
    """``text``'s line (the rows its ink spans) on a band two pixels wider all round. Made
    once per text: scores are written with three digits, so a run's labels repeat (about 800
    different ones among 3,840). Read only."""
    line = _line(text, size)
    band = filled((line.shape[0] + 4, line.shape[1] + 4), LABEL_BACKGROUND)
    band[2:-2, 2:-2] = line
    band.flags.writeable = False
    return band


def _line(text: str, size: int) -> np.ndarray:
    """(h, w, 3) uint8: ``text`` in LABEL_TEXT on LABEL_BACKGROUND, cut to the rows its ink
    spans. Its glyphs side by side, each as wide as its advance: what drawing the text whole
    gives wherever advances are whole pixels (Pillow's font at 13 pixels, a 96-pixel cell's,
    has them for digits, the point, signs and 'e')."""
    import numpy as np

    glyphs = [_glyph(char, size) for char in text]
    top = min(glyph.ink[0] for glyph in glyphs)
    bottom = max(glyph.ink[1] for glyph in glyphs)
    if top >= bottom:  # no ink at all (spaces)
        top, bottom = 0, glyphs[0].pixels.shape[0]
    return np.concatenate([glyph.pixels[top:bottom] for glyph in glyphs], axis=1)


@dataclass(frozen=True)
class _Glyph:
    pixels: np.ndarray  # (ascent + descent, advance, 3) uint8
    ink: tuple[int, int]  # the rows its ink spans, first and past the last


@lru_cache(maxsize=1024)
def _glyph(char: str, size: int) -> _Glyph:
    """``char`` drawn in a box as high as the font's line (ascent + descent: glyphs line up on
    one baseline side by side) and as wide as its advance."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=size)
    ascent, descent = font.getmetrics()
    width = max(1, round(font.getlength(char)))
    picture = Image.new("RGB", (width, ascent + descent), LABEL_BACKGROUND)
    ImageDraw.Draw(picture).text((0, 0), char, fill=LABEL_TEXT, font=font)
    pixels = np.asarray(picture)
    rows = np.flatnonzero((pixels != np.array(LABEL_BACKGROUND, np.uint8)).any(axis=(1, 2)))
    ink = (int(rows[0]), int(rows[-1]) + 1) if rows.size else (pixels.shape[0], 0)
    return _Glyph(pixels, ink)
