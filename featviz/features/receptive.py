"""A layer's receptive field, measured: which input pixels one position's activations depend on.

The extent is found by gradient rather than from the architecture, so it holds for any network
the tracer understands (strides, dilations, pooling, blocks with shortcuts): the channels of the
grid cell at the centre of a random input are summed and differentiated with respect to the
input, and every pixel whose gradient is not exactly zero is in the field. A few random inputs
are pooled, since a ReLU that is off or a max-pool that picks one pixel hides part of the field
on any one input. Convolutions see the same field at every position (up to the image border),
so the centre's extent is carried to every cell. A field that reaches across the whole probe
(at the model's input size) is taken as the whole image (``None``): a transformer's token mixes
every patch from its first attention on, and a deep CNN layer's field outgrows the input.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from featviz.features.top import Extent
from featviz.layers.taps import LayerTaps

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    import torch
    from torch import nn

    from featviz.layers.layouts import Layout

PROBES = 3  # random inputs pooled
WHOLE = 0.98  # a field covering this share of both sides is the whole input


def receptive_extents(
    module: nn.Module,
    layers: Sequence[str],
    layouts: Mapping[str, Layout],
    input_hw: tuple[int, int],
    *,
    calls: Mapping[str, int],
    device: torch.device,
    seed: int = 0,
) -> dict[str, Extent | None]:
    """How far the receptive field of each layer's centre cell reaches from the cell's centre
    at an input of ``input_hw`` = (H, W) pixels; None when it covers the whole input. One
    forward to the deepest of ``layers``, then one gradient per layer."""
    import torch

    height, width = input_hw
    generator = torch.Generator().manual_seed(seed)
    probe = torch.randn(PROBES, 3, height, width, generator=generator).to(device)
    probe.requires_grad_(True)
    taps = LayerTaps(module, list(layers), calls=calls, stop_early=True)
    extents = {}
    with torch.enable_grad(), taps:
        taps.run(probe)
        for i, layer in enumerate(layers):
            maps = layouts[layer].to_nchw(taps.outputs[layer], input_hw)
            rows, cols = maps.shape[-2:]
            centre = maps[:, :, rows // 2, cols // 2].float().sum()
            last = i == len(layers) - 1  # the graph is kept for the layers after
            (gradient,) = torch.autograd.grad(centre, probe, retain_graph=not last)
            extents[layer] = _extent(gradient.detach(), (rows, cols), input_hw)
    return extents


def _extent(
    gradient: torch.Tensor, grid: tuple[int, int], input_hw: tuple[int, int]
) -> Extent | None:
    """The extent of the pixels whose ``gradient`` is not exactly zero around the centre cell
    of a ``grid`` = (rows, cols) layer."""
    (height, width), (rows, cols) = input_hw, grid
    row, col = rows // 2, cols // 2
    reached = gradient.abs().sum(dim=(0, 1)) > 0  # (H, W)
    ys, xs = reached.any(dim=1).nonzero().flatten(), reached.any(dim=0).nonzero().flatten()
    if ys.numel() == 0:
        return Extent(0.0, 0.0, 0.0, 0.0)
    top, bottom, left, right = int(ys[0]), int(ys[-1]) + 1, int(xs[0]), int(xs[-1]) + 1
    if (bottom - top) >= WHOLE * height and (right - left) >= WHOLE * width:
        return None
    cy, cx = (row + 0.5) * height / rows, (col + 0.5) * width / cols
    return Extent(up=cy - top, down=bottom - cy, left=cx - left, right=right - cx)
