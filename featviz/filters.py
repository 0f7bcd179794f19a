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
from featviz.render import apply_colormap, colormap_lut, enlarge, enlarge_factor, scale_each, tile

if TYPE_CHECKING:
    import numpy as np
    from torch import nn


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
        low = weights.min(axis=(1, 2, 3), keepdims=True)
        span = weights.max(axis=(1, 2, 3), keepdims=True) - low
        span[span == 0] = 1.0
        patches = ((weights - low) / span * 255).round().astype("uint8").transpose(0, 2, 3, 1)
        return tile(enlarge(patches, factor))
    lut = colormap_lut(cmap)
    if all_inputs:
        in_channels = weights.shape[1]
        cells = apply_colormap(scale_each(weights.reshape(-1, *weights.shape[-2:])), lut)
        return tile(enlarge(cells, factor), nrow=in_channels)
    return tile(enlarge(apply_colormap(scale_each(weights.mean(axis=1)), lut), factor))
