"""Pure rendering: arrays in, arrays out. Nothing here touches the disk or the model.

Conventions: values to colour are float arrays in [0, 1]; images are uint8 (H, W, 3) RGB.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from featviz.errors import UsageError, closest

if TYPE_CHECKING:
    from collections.abc import Sequence

    import numpy as np

SEPARATOR_RGB = (255, 255, 255)


@lru_cache(maxsize=16)
def colormap_lut(name: str) -> np.ndarray:
    """A matplotlib colormap as a (256, 3) uint8 lookup table."""
    import matplotlib
    import numpy as np

    try:
        cmap = matplotlib.colormaps[name]
    except KeyError:
        near = closest(name, list(matplotlib.colormaps))
        raise UsageError(
            f"unknown colormap '{name}'",
            hint=(f"{near}; " if near else "")
            + "any matplotlib colormap name works (gray, viridis, jet, magma…)",
        ) from None
    table = cmap(np.linspace(0.0, 1.0, 256))[:, :3]
    return np.round(table * 255).astype(np.uint8)


def is_grey(lut: np.ndarray) -> bool:
    """Whether a (256, 3) lookup table has R = G = B everywhere (a one-channel PNG will do)."""
    return bool((lut[:, 0] == lut[:, 1]).all() and (lut[:, 1] == lut[:, 2]).all())


def apply_colormap(values: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """(…, H, W) floats in [0, 1] → (…, H, W, 3) uint8 through ``lut``."""
    import numpy as np

    # np.take, not lut[index]: a fancy index along the first of two axes is 4× slower.
    return np.take(lut, colour_index(values), axis=0)


def colour_index(values: np.ndarray) -> np.ndarray:
    """Floats in [0, 1] → the uint8 row of a 256-entry lookup table."""
    import numpy as np

    return np.clip(np.rint(values * 255.0), 0, 255).astype(np.uint8)


def scale_each(maps: np.ndarray, axes: tuple[int, ...] = (-2, -1)) -> np.ndarray:
    """Min-max scale each map of a stack on its own, over ``axes`` (default: each (h, w) map
    of a (C, h, w) stack); a flat map becomes zeros."""
    import numpy as np

    low = maps.min(axis=axes, keepdims=True)
    span = maps.max(axis=axes, keepdims=True) - low
    with np.errstate(invalid="ignore", divide="ignore"):
        scaled = np.where(span > 0, (maps - low) / np.where(span > 0, span, 1.0), 0.0)
    return scaled.astype(np.float32)


def enlarge_factor(height: int, width: int, cell_size: int) -> int:
    """Integer nearest-neighbour factor that brings the longer side up to about ``cell_size``."""
    return max(1, math.ceil(cell_size / max(height, width)))


def tile(
    cells: np.ndarray | Sequence[np.ndarray], *, nrow: int | None = None, padding: int = 1
) -> np.ndarray:
    """Tile (C, h, w, 3) uint8 cells (or C arrays of (h, w, 3)) into a near-square grid with
    thin separators.

    ``nrow`` is the number of cells per row (torchvision's make_grid naming), by default
    ceil(sqrt(C)). Unused cells at the end stay the separator colour.
    """
    height, width = cells[0].shape[:2]
    shape, places = grid_places(len(cells), (height, width), nrow=nrow, padding=padding)
    grid = filled(shape, SEPARATOR_RGB)
    for cell, (top, left) in zip(cells, places):
        grid[top : top + height, left : left + width] = cell
    return grid


def grid_places(
    count: int, cell: tuple[int, int], *, nrow: int | None = None, padding: int = 1
) -> tuple[tuple[int, int], list[tuple[int, int]]]:
    """The (H, W) of ``tile``'s grid of ``count`` cells of (h, w) ``cell`` pixels, and where
    each cell goes in it: (top, left), row by row."""
    (height, width), per_row = cell, nrow or math.ceil(math.sqrt(count))
    rows = math.ceil(count / per_row)
    shape = (rows * (height + padding) + padding, per_row * (width + padding) + padding)
    places = [
        (padding + row * (height + padding), padding + column * (width + padding))
        for row, column in (divmod(index, per_row) for index in range(count))
    ]
    return shape, places


def filled(shape: tuple[int, int], rgb: tuple[int, int, int]) -> np.ndarray:
    """(H, W, 3) uint8, every pixel ``rgb``. One row is set pixel by pixel and copied to the
    others: assigning the 3-vector to the whole array at once runs numpy's inner loop 3 values
    at a time, about 100× slower (0.6 ms for a 292-pixel square)."""
    import numpy as np

    pixels = np.empty((*shape, 3), dtype=np.uint8)
    pixels[0] = rgb
    pixels[1:] = pixels[0]
    return pixels


def enlarge(cells: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour enlargement of the two spatial axes of (C, h, w, …) by ``factor``."""
    if factor == 1:
        return cells
    return cells.repeat(factor, axis=1).repeat(factor, axis=2)


def channel_grid(
    maps: np.ndarray, *, lut: np.ndarray, cell_size: int, padding: int = 1
) -> np.ndarray:
    """(C, h, w) activations → one RGB grid image, each channel scaled on its own."""
    cells = apply_colormap(scale_each(maps), lut)
    return tile(enlarge(cells, enlarge_factor(*maps.shape[-2:], cell_size)), padding=padding)


def channel_grid_frames(
    maps: np.ndarray, *, lut: np.ndarray, cell_size: int, padding: int = 1
) -> np.ndarray:
    """A video layer's (C, t, h, w) activations → (t, H, W, 3): the channel grid of each of its
    t frames, each channel scaled over all its frames (so that it brightens and fades in
    time as its activation does)."""
    import numpy as np

    cells = apply_colormap(scale_each(maps, axes=(-3, -2, -1)), lut)
    factor = enlarge_factor(*maps.shape[-2:], cell_size)
    return np.stack(
        [tile(enlarge(cells[:, t], factor), padding=padding) for t in range(maps.shape[1])]
    )


OVERLAY_BAND_ROWS = 256


def overlay(image: np.ndarray, heatmap: np.ndarray, *, lut: np.ndarray, alpha: float) -> np.ndarray:
    """Blend a colour-mapped (H, W) heatmap in [0, 1] over an (H, W, 3) uint8 image; or a
    clip's (T, H, W) heatmaps over its (T, H, W, 3) frames, each over its own.

    ``alpha`` is the heatmap's opacity: 0 gives the image back unchanged, 1 the bare heatmap.
    """
    import numpy as np

    if image.shape[:-1] != heatmap.shape:
        raise ValueError(f"heatmap {heatmap.shape} does not match image {image.shape[:-1]}")
    out = np.empty(image.shape, dtype=np.uint8)
    table = blend_table(alpha)
    # A band of rows (of a clip: of frames) at a time: the temporaries then cost a band, not
    # a whole photo.
    for top in range(0, image.shape[0], OVERLAY_BAND_ROWS):
        rows = slice(top, top + OVERLAY_BAND_ROWS)
        index = image[rows].astype(np.uint16)
        index <<= 8
        index |= apply_colormap(heatmap[rows], lut)
        np.take(table, index, out=out[rows])
    return out


@lru_cache(maxsize=16)
def blend_table(alpha: float) -> np.ndarray:
    """The overlay's blend (1 − α)·v + α·c, rounded, for every photo value v and colour value
    c, flat at v·256 + c ((65536,) uint8, read-only). Each entry is the float32 formula itself,
    so one lookup per byte gives its exact result, about 3× faster than the arithmetic (on
    the CPU, ``overlay``, and on a GPU, featviz.render.device)."""
    import numpy as np

    values = np.arange(256, dtype=np.float32)
    blended = ((1.0 - alpha) * values)[:, None] + (alpha * values)[None, :]
    np.rint(blended, out=blended)
    table = np.clip(blended, 0, 255, out=blended).astype(np.uint8).ravel()
    table.flags.writeable = False
    return table


def outline(region: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The border of a (h, w) bool ``region`` (a segmentation's pixels of one class at the
    model's input size) as an (H, W) bool mask over the original image of ``size``: one
    input pixel thick, so it scales with the photo as the map does."""
    import numpy as np

    inside = np.pad(region, 1, mode="edge")
    eroded = inside[1:-1, 1:-1] & inside[:-2, 1:-1] & inside[2:, 1:-1]
    eroded &= inside[1:-1, :-2] & inside[1:-1, 2:]
    border = region & ~eroded
    height, width = size
    rows = np.minimum((np.arange(height) + 0.5) * region.shape[0] / height, region.shape[0] - 1)
    cols = np.minimum((np.arange(width) + 0.5) * region.shape[1] / width, region.shape[1] - 1)
    return border[rows.astype(np.intp)][:, cols.astype(np.intp)]


OUTLINE_RGB = (255, 255, 255)  # the border of a segmentation's class region
BOX_RGB = (255, 255, 255)  # a detector's box and its label's background
LABEL_RGB = (0, 0, 0)


def mark(
    pixels: np.ndarray,
    region: Any,
    boxes: tuple[tuple[float, float, float, float], ...],
    caption: str,
) -> None:
    """Draw on an overlay, in place, what its map is of: a segmentation's ``region`` ((h, w)
    bool tensor at the model's input size) outlined, a detector's ``boxes`` (in the picture's
    pixels; one is labelled with ``caption``)."""
    if region is not None:
        pixels[outline(region.numpy(), pixels.shape[:2])] = OUTLINE_RGB
    if boxes:
        draw_boxes(pixels, boxes, caption if len(boxes) == 1 else None)


def draw_boxes(
    pixels: np.ndarray,
    boxes: tuple[tuple[float, float, float, float], ...],
    caption: str | None = None,
) -> None:
    """Draw ``boxes`` (x0 y0 x1 y1 in ``pixels``' own coordinates) on an (H, W, 3) picture in
    place, lines and label scaled with the picture; ``caption`` ("dog 0.98") labels the first
    box, above its top-left corner (inside it at the picture's top edge). Each edge lies on
    the pixel boundary nearest its float coordinate (Python's ``round``), lines inside it."""
    height, width = pixels.shape[:2]
    thick = max(2, round(min(height, width) / 200))
    for box in boxes:
        x0, y0, x1, y1 = _clipped(box, width, height)
        pixels[y0 : min(y0 + thick, y1), x0:x1] = BOX_RGB
        pixels[max(y1 - thick, y0) : y1, x0:x1] = BOX_RGB
        pixels[y0:y1, x0 : min(x0 + thick, x1)] = BOX_RGB
        pixels[y0:y1, max(x1 - thick, x0) : x1] = BOX_RGB
    if caption and boxes:
        label = _label(caption, max(12, round(min(height, width) / 25)))
        x0, y0, _, _ = _clipped(boxes[0], width, height)
        top = y0 - label.shape[0] if y0 >= label.shape[0] else y0
        rows, cols = min(label.shape[0], height - top), min(label.shape[1], width - x0)
        pixels[top : top + rows, x0 : x0 + cols] = label[:rows, :cols]


def _clipped(box: tuple[float, ...], width: int, height: int) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = (round(value) for value in box)
    x0, x1 = sorted((min(max(x0, 0), width), min(max(x1, 0), width)))
    y0, y1 = sorted((min(max(y0, 0), height), min(max(y1, 0), height)))
    return x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)


def _label(text: str, size: int) -> np.ndarray:
    """``text`` in LABEL_RGB on BOX_RGB, (h, w, 3) uint8, a font ``size`` pixels high."""
    import numpy as np
    from PIL import Image, ImageDraw

    font = _font(size)
    left, top, right, bottom = font.getbbox(text)
    pad = max(1, size // 6)
    picture = Image.new("RGB", (right - left + 2 * pad, bottom - top + 2 * pad), BOX_RGB)
    ImageDraw.Draw(picture).text((pad - left, pad - top), text, fill=LABEL_RGB, font=font)
    return np.asarray(picture)


@lru_cache(maxsize=8)
def _font(size: int):
    """Pillow's bundled font at ``size`` pixels, read from its file once per size."""
    from PIL import ImageFont

    return ImageFont.load_default(size=size)
