"""``featviz filters``: the learned Conv2d kernels themselves, as a grid.

- A layer reading RGB (3 input channels, e.g. ``features.0``): one colour patch per kernel, its
  three channels scaled together so the patch shows the colour the kernel responds to.
- Deeper layers: one grey tile per output channel, the MEAN of its kernels over the input
  channels; ``all_inputs`` draws every (output, input) kernel instead, one row per output channel.
Each tile is min-max scaled on its own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from featviz.errors import UsageError
from featviz.layers.catalog import resolve_layers
from featviz.render.draw import (
    apply_colormap,
    colormap_lut,
    enlarge,
    enlarge_factor,
    scale_each,
    tile,
)

if TYPE_CHECKING:
    import numpy as np
    from torch import nn

    from featviz.layers.catalog import ModelTrace


def conv_layers(
    trace: ModelTrace, modules: dict[str, nn.Module], patterns: list[str]
) -> tuple[list[str], list[str]]:
    """The Conv2d layers that names and globs select, and the other layers the globs matched.

    A glob expands as in ``featviz maps`` (``features.*``) and keeps its Conv2d matches; a glob
    with none, or an exact name that is not a Conv2d, is a usage error.
    """
    from torch import nn

    chosen: list[str] = []
    skipped: list[str] = []
    for pattern in patterns:
        matches = resolve_layers(trace, [pattern], spatial_only=False)
        if pattern in modules:
            chosen.extend(matches)  # an exact name: filter_grid says if it has no kernels
            continue
        convs = [name for name in matches if isinstance(modules.get(name), nn.Conv2d)]
        if not convs:
            raise UsageError(
                f"no Conv2d layer matches '{pattern}'",
                hint="filters draws convolution kernels; `featviz layers --model MODEL` lists "
                "the layers",
            )
        chosen.extend(convs)
        skipped.extend(name for name in matches if name not in convs)
    return list(dict.fromkeys(chosen)), [
        name for name in dict.fromkeys(skipped) if name not in chosen
    ]


def filter_grid(
    module: nn.Module, name: str, *, all_inputs: bool, cmap: str, cell_size: int
) -> np.ndarray:
    """Draw ``module``'s kernels; returns an (H, W, 3) uint8 grid."""
    from torch import nn

    if not isinstance(module, nn.Conv2d):
        raise UsageError(
            f"layer '{name}' is a {type(module).__name__}, not a Conv2d: it has no kernels to draw",
            hint="pick a Conv2d layer; see `featviz layers`",
        )
    weights = module.weight.detach().float().cpu().numpy()  # (out, in/groups, kh, kw)
    factor = enlarge_factor(*weights.shape[-2:], cell_size)
    if weights.shape[1] == 3 and not all_inputs:
        # The three colour channels of a kernel are scaled together: the patch keeps its hue.
        patches = (scale_each(weights, axes=(1, 2, 3)) * 255).round().astype("uint8")
        return tile(enlarge(patches.transpose(0, 2, 3, 1), factor))
    lut = colormap_lut(cmap)
    if all_inputs:
        in_channels = weights.shape[1]
        cells = apply_colormap(scale_each(weights.reshape(-1, *weights.shape[-2:])), lut)
        return tile(enlarge(cells, factor), nrow=in_channels)
    return tile(enlarge(apply_colormap(scale_each(weights.mean(axis=1)), lut), factor))
