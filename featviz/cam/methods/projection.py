"""Maps from the structure of a layer's activations: their principal components (Eigen-CAM,
Eigen-Grad-CAM on gradients × activations, KPCA-CAM with a kernel) and their outliers (FEM)."""

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


class EigenGradCam(CamMethod):
    """Eigen-CAM of g ⊙ A (g = ∂S^c/∂A): the first principal component of the class evidence
    per position, its sign fixed as EigenCam's; then ReLU. pytorch-grad-cam's EigenGradCAM up
    to that sign (theirs is the SVD's)."""

    name = "eigengradcam"

    def _map(self, ctx: CamContext, layer: str, targets: torch.Tensor) -> torch.Tensor:
        evidence = ctx.gradients(targets)[layer].float() * ctx.activation(layer)
        return _principal_projection(evidence)


class KpcaCam(CamMethod):
    """KPCA-CAM (Karmani et al. 2024): the first kernel principal component of the centred
    (h·w, K) activations, with the sigmoid kernel k(x, y) = tanh(x·y / K + 1), as
    scikit-learn's KernelPCA defaults (which pytorch-grad-cam calls).

    The kernel matrix is centred in feature space and its leading eigenvector v (eigenvalue λ)
    gives the projection √λ·v, in float64. Its sign is the one that makes the position with the
    largest |projection| positive (scikit-learn's choice too). Class-agnostic; cost O((h·w)³).
    """

    name = "kpcacam"

    def _map(self, ctx: CamContext, layer: str, targets: torch.Tensor) -> torch.Tensor:
        return ctx.cached(("kpcacam", layer), lambda: _kernel_projection(ctx.activation(layer)))


class Fem(CamMethod):
    """FEM (Fuad et al. 2020): a channel's weight is the share of its positions above its
    mean + ``K_SIGMA``·std (population std over the positions): L = ReLU(Σ_k w_k A_k).
    Class-agnostic, no gradients."""

    name = "fem"
    K_SIGMA = 2.0

    def _weights(self, ctx: CamContext, layer: str, targets: torch.Tensor) -> torch.Tensor:
        activations = ctx.activation(layer)
        mean = activations.mean(dim=(2, 3), keepdim=True)
        std = activations.std(dim=(2, 3), correction=0, keepdim=True)
        return (activations > mean + self.K_SIGMA * std).float().mean(dim=(2, 3))


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


def _kernel_projection(activations: torch.Tensor) -> torch.Tensor:
    """(N, K, h, w) → (N, h, w) float32 first sigmoid-kernel principal component (KpcaCam)."""
    n, channels, h, w = activations.shape
    positions = activations.flatten(2).transpose(1, 2).double()  # (N, P, K)
    centred = positions - positions.mean(dim=1, keepdim=True)
    kernel = torch.tanh(centred @ centred.transpose(1, 2) / channels + 1)  # (N, P, P)
    kernel = kernel - kernel.mean(dim=1, keepdim=True)
    kernel = kernel - kernel.mean(dim=2, keepdim=True)  # centred in feature space
    values, vectors = torch.linalg.eigh(kernel)  # ascending
    first = vectors[:, :, -1] * values[:, -1:].clamp(min=0).sqrt()  # (N, P)
    strongest = first.abs().argmax(dim=1, keepdim=True)
    first = first * first.gather(1, strongest).sign()
    return first.view(n, h, w).float()
