"""Eigen-CAM: the activations' first principal component, class-agnostic."""

from __future__ import annotations

import torch

from featviz.cam.base import CamMethod
from featviz.cam.context import CamContext


class EigenCam(CamMethod):
    """Project the centred (h·w, K) activation matrix on its first right-singular vector.

    An SVD's sign is arbitrary, so the projection is flipped where it anti-correlates with the
    channel-mean activation (the map then highlights where the layer is active, not where it is
    quiet); then ReLU. The same map for every target class.
    """

    name = "eigencam"

    def _map(self, ctx: CamContext, layer: str, targets: torch.Tensor) -> torch.Tensor:
        return ctx.cached(("eigencam", layer), lambda: _principal_projection(ctx.activation(layer)))


def _principal_projection(activations: torch.Tensor) -> torch.Tensor:
    """(N, K, h, w) → (N, h, w) sign-fixed projections on the first principal direction."""
    n, _, h, w = activations.shape
    positions = activations.flatten(2).transpose(1, 2)  # (N, h·w, K)
    centred = positions - positions.mean(dim=1, keepdim=True)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    projection = (centred @ vh[:, 0, :, None]).squeeze(2)  # (N, h·w), zero-mean
    channel_mean = positions.mean(dim=2)
    agreement = (projection * (channel_mean - channel_mean.mean(dim=1, keepdim=True))).sum(dim=1)
    sign = torch.where(agreement < 0, -1.0, 1.0)
    return (projection * sign[:, None]).view(n, h, w)
