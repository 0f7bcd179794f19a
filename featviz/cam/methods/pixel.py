"""Pixel-level attributions from gradients and perturbations of the input itself.

Each map is at the model input's resolution (the pseudo-layer ``INPUT``) and is the
attribution of the colour channels summed, as captum's visualiser sums them: (N, 3, H, W) →
(N, H, W). S^c is the pre-softmax score of each image's own target class c, x the normalised
input, g = ∂S^c/∂x. Saliency and input × gradient read the batch's one backward
(``CamContext.input_gradient``); the others run extra forwards in chunks of ``batch_size`` rows.
"""

from __future__ import annotations

import torch

from featviz.cam.base import CamMethod
from featviz.cam.context import CamContext


class PixelMethod(CamMethod):
    """A pixel-level method: ``_attribution`` returns (N, 3, H, W); the map sums the channels.
    Signed: no ReLU (pictures and scores use the absolute value, see the registry)."""

    relu = False

    def _map(self, ctx: CamContext, layer: str, targets: torch.Tensor) -> torch.Tensor:
        return self._attribution(ctx, targets).sum(dim=1)

    def _attribution(self, ctx: CamContext, targets: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must override _attribution")


class Saliency(PixelMethod):
    """|g| per channel (Simonyan et al. 2014; captum's ``Saliency``, ``abs=True``)."""

    name = "saliency"

    def _attribution(self, ctx: CamContext, targets: torch.Tensor) -> torch.Tensor:
        return ctx.input_gradient(targets).abs()


class InputXGradient(PixelMethod):
    """x · g per channel, signed (captum's ``InputXGradient``)."""

    name = "inputxgradient"

    def _attribution(self, ctx: CamContext, targets: torch.Tensor) -> torch.Tensor:
        return ctx.inputs.detach().float() * ctx.input_gradient(targets)
