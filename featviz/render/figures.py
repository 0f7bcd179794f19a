"""Labelled pictures drawn with matplotlib: the compare panel, the sanity strip, and the plots of
a score or sanity run. Pure: arrays and numbers in, (H, W, 3) uint8 out (a clip's panel:
(T, H, W, 3), one picture per frame); nothing touches the
disk. Each figure is its own ``Figure`` on an Agg canvas (never pyplot's global state), so the
writer threads can draw at once. Text is in DejaVu Sans, which matplotlib ships.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    from matplotlib.figure import Figure

DPI = 100
CELL_INCHES = 2.6


@dataclass(frozen=True)
class Cell:
    """One picture of a grid with its title (None: an empty cell)."""

    title: str
    pixels: np.ndarray | None


def _figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(figure)
    figure.patch.set_facecolor("white")
    return figure


def _pixels(figure: Figure) -> np.ndarray:
    import numpy as np

    figure.canvas.draw()
    return np.asarray(figure.canvas.buffer_rgba())[..., :3].copy()


def _cell_size(image: np.ndarray) -> tuple[float, float]:
    """Inches of one cell showing ``image``, keeping its aspect."""
    height, width = image.shape[:2]
    aspect = height / width
    return (
        (CELL_INCHES, CELL_INCHES * aspect) if aspect <= 1 else (CELL_INCHES / aspect, CELL_INCHES)
    )


def grid_panel(
    original: np.ndarray,
    rows: Sequence[Sequence[Cell]],
    *,
    cmap: str,
    title: str,
    original_title: str = "original",
) -> np.ndarray:
    """The original at the top left, then ``rows`` of cells beside it, and one colour bar for
    every cell's map (all are scaled to [0, 1]). A clip's (T, H, W, 3) original and cells give
    the panel's T frames, (T, H', W', 3): laid out once, each frame drawn into the layout."""
    import numpy as np
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    clip = original.ndim == 4
    columns = max(len(row) for row in rows)
    cell_w, cell_h = _cell_size(original[0] if clip else original)
    figure = _figure(cell_w * (columns + 1) + 1.2, (cell_h + 0.5) * len(rows) + 0.5)
    figure.set_layout_engine("constrained")
    axes = figure.subplots(len(rows), columns + 1, squeeze=False)
    for row_axes in axes:
        for ax in row_axes:
            ax.set_axis_off()
    shown = [(axes[0][0].imshow(original[0] if clip else original), original)]
    axes[0][0].set_title(original_title, fontsize=8)
    for r, row in enumerate(rows):
        for c, cell in enumerate(row):
            if cell.pixels is not None:
                picture = cell.pixels[0] if clip else cell.pixels
                shown.append((axes[r][c + 1].imshow(picture), cell.pixels))
                axes[r][c + 1].set_title(cell.title, fontsize=8)
    figure.colorbar(
        ScalarMappable(norm=Normalize(0, 1), cmap=colormaps[cmap]),
        ax=axes[:, 1:].ravel().tolist(),
        label="map (scaled to [0, 1])",
        shrink=0.8,
    )
    figure.suptitle(title, fontsize=10)
    first = _pixels(figure)
    if not clip:
        return first
    figure.set_layout_engine("none")  # every frame in the first one's layout
    frames = [first]
    for t in range(1, len(original)):
        for artist, pixels in shown:
            artist.set_data(pixels[t])
        frames.append(_pixels(figure))
    return np.stack(frames)


def curves_plot(
    title: str,
    panels: Sequence[tuple[str, str, str, dict[str, tuple[Sequence[float], Sequence[float]]]]],
) -> np.ndarray:
    """Side-by-side line plots: each panel (title, x label, y label, {series: (xs, ys)}); the
    baselines dashed. ``title`` is wrapped to the figure's width."""
    import textwrap

    figure = _figure(max(6.5, 5.5 * len(panels)), 4.5)
    for index, (panel_title, x_label, y_label, series) in enumerate(panels, 1):
        axes = figure.add_subplot(1, len(panels), index)
        for label, (xs, ys) in series.items():
            dashed = label.startswith(("random", "center"))
            axes.plot(xs, ys, label=label, linestyle="--" if dashed else "-", linewidth=1.5)
        axes.set_title(panel_title, fontsize=10)
        axes.set_xlabel(x_label)
        axes.set_ylabel(y_label)
        axes.grid(alpha=0.3)
        axes.legend(fontsize=7)
    figure.suptitle(textwrap.fill(title, 60 * len(panels)), fontsize=11)
    figure.tight_layout()
    return _pixels(figure)


def titled_grid(rows: Sequence[Sequence[Cell]], *, title: str) -> np.ndarray:
    """``rows`` of pictures, each with its title above it (featviz dream: one row per
    objective, one column per copy), cells the size of the first picture."""
    import textwrap

    columns = max(len(row) for row in rows)
    first = next(cell.pixels for row in rows for cell in row if cell.pixels is not None)
    cell_w, cell_h = _cell_size(first)
    figure = _figure(cell_w * columns + 0.2, (cell_h + 0.45) * len(rows) + 0.5)
    figure.set_layout_engine("constrained")
    axes = figure.subplots(len(rows), columns, squeeze=False)
    for r, row_axes in enumerate(axes):
        for c, ax in enumerate(row_axes):
            ax.set_axis_off()
            cell = rows[r][c] if c < len(rows[r]) else None
            if cell is not None and cell.pixels is not None:
                ax.imshow(cell.pixels)
                ax.set_title(textwrap.fill(cell.title, 34), fontsize=8)
    figure.suptitle(textwrap.fill(title, 40 * columns), fontsize=10)
    return _pixels(figure)
