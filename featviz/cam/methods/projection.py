"""Eigen-CAM: the activations' first principal component, class-agnostic."""

from __future__ import annotations

import torch

from featviz.cam.base import CamMethod
from featviz.cam.context import CamContext

# Leading singular values within this relative gap of the first count as tied. A float32
# forward changes by ~1e-6 relative with the thread count or the BLAS path, which turns the
# first singular vector by about that divided by the gap: 1e-3 of the map at this gap.
TIED_RTOL = 1e-3
# Below this cosine between the channel-mean axis and the principal direction(s), the channel
# mean says nothing about the sign. Channels that sum to one value at every position (a
# LayerNorm's output while its affine is the identity, as in a random-init ViT) leave ~1e-8
# there, rounding alone; a random direction among K channels has ~1/√K (0.04 for K = 768).
MEAN_AXIS_MIN = 1e-4


class EigenCam(CamMethod):
    """Project the centred (h·w, K) activation matrix on its first right-singular vector.

    The SVD runs in float64 on the float32 activations. Its singular vectors are defined up to
    sign, and up to any rotation among tied ones; featviz's choice depends on neither, nor on
    which of them LAPACK returns:

    - The direction is taken among the leading right-singular vectors, those whose singular
      value is within ``TIED_RTOL`` (relative) of the first: just the first one, unless the top
      values are tied.
    - It is the one of them closest to the channel-mean axis (1, …, 1)/√K: the projection then
      correlates positively with the channel-mean activation, and the map highlights where the
      layer is active, not where it is quiet. For a single vector that is its sign.
    - Where the channel-mean axis is (nearly) orthogonal to them (cosine < ``MEAN_AXIS_MIN``:
      LayerNorm outputs), it is the one pointing at the position they represent most strongly
      (its largest projection on them): that position's value is the map's largest, positive.

    Then ReLU. Where the first value stands apart, this is pytorch-grad-cam's EigenCAM up to
    its sign. The same map for every target class.
    """

    name = "eigencam"

    def _map(self, ctx: CamContext, layer: str, targets: torch.Tensor) -> torch.Tensor:
        return ctx.cached(("eigencam", layer), lambda: _principal_projection(ctx.activation(layer)))


def _principal_projection(activations: torch.Tensor) -> torch.Tensor:
    """(N, K, h, w) → (N, h, w) float32 projections on the principal direction (see EigenCam)."""
    n, _, h, w = activations.shape
    positions = activations.flatten(2).transpose(1, 2).double()  # (N, h·w, K)
    centred = positions - positions.mean(dim=1, keepdim=True)
    _, singular, vh = torch.linalg.svd(centred, full_matrices=False)
    projection = centred @ _principal_direction(centred, singular, vh)[:, :, None]
    return projection.view(n, h, w).float()


def _principal_direction(
    centred: torch.Tensor, singular: torch.Tensor, vh: torch.Tensor
) -> torch.Tensor:
    """(N, K) unit directions in the span of each image's tied leading right-singular vectors
    (rows of ``vh`` (N, R, K), ``singular`` (N, R) descending), chosen as EigenCam says."""
    tied = singular >= singular[:, :1] * (1 - TIED_RTOL)
    leading = int(tied.sum(dim=1).max())  # tied values come first: sorted descending
    basis = vh[:, :leading] * tied[:, :leading, None]  # (N, m, K), rows not tied zeroed
    channels = centred.shape[2]
    mean_axis = basis.sum(dim=2) / channels**0.5  # (N, m): (1, …, 1)/√K in the basis
    coordinates = centred @ basis.transpose(1, 2)  # (N, h·w, m)
    strongest = coordinates.norm(dim=2).argmax(dim=1)
    peak_axis = coordinates[torch.arange(len(centred)), strongest]  # (N, m)
    informative = mean_axis.norm(dim=1, keepdim=True) >= MEAN_AXIS_MIN
    chosen = torch.where(informative, mean_axis, peak_axis)
    direction = (chosen[:, None, :] @ basis).squeeze(1)
    length = direction.norm(dim=1, keepdim=True)
    # An image with constant activations has nothing to project (a map of zeros): no 0/0.
    return direction / length.clamp_min(torch.finfo(length.dtype).tiny)
