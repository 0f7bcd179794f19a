"""Eigen-CAM's choice of direction: one map whatever SVD LAPACK returns (a singular vector's
sign, a basis of tied singular vectors) and whatever float32 rounding the forward had (thread
count, BLAS path), including at LayerNorm outputs, where the channel mean carries no sign."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from featviz.cam import forward_for_cam, load_method


class Emits(nn.Module):
    """A network whose layer ``layer`` outputs the given (N, K, h, w) activations."""

    def __init__(self, activations: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("given", activations)
        self.layer = nn.Identity()
        self.head = nn.Linear(activations.shape[1], 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layer(self.given + 0 * x.mean()).mean(dim=(2, 3)))


def eigencam(activations: torch.Tensor) -> torch.Tensor:
    n = len(activations)
    ctx = forward_for_cam(Emits(activations), torch.zeros(n, 3, 4, 4), ["layer"], gradients=False)
    return load_method("eigencam").compute(ctx, "layer", torch.zeros(n, dtype=torch.long))


def layer_norm_outputs(seed: int, channels: int = 96, side: int = 12) -> torch.Tensor:
    """(2, K, h, w) token features after a LayerNorm whose affine is the identity (as at
    random init): every position's channels sum to 0, up to rounding."""
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randn(2, side * side, channels, generator=generator) * 3 + 1
    normed = nn.LayerNorm(channels)(tokens).detach()
    return normed.transpose(1, 2).reshape(2, channels, side, side)


def _other_svd(change):
    """torch.linalg.svd, its answer changed by ``change`` (u, s, vh) → (u, s, vh): another
    valid decomposition, as another LAPACK build or thread count could return."""
    svd = torch.linalg.svd

    def patched(matrix, full_matrices=True):
        return change(*svd(matrix, full_matrices=full_matrices))

    return patched


def _flipped(u, s, vh):
    return -u, s, -vh


def test_at_a_layer_norm_the_sign_puts_the_peak_up_whatever_the_svd(monkeypatch) -> None:
    """Integer features whose channels sum to exactly 0 at every position: the correlation
    with the channel mean is exactly 0, so it cannot pick the sign. The map's largest value
    is the projection's largest magnitude, and flipping the SVD's signs changes nothing."""
    generator = torch.Generator().manual_seed(3)
    half = torch.randint(-9, 10, (2, 8, 5, 6), generator=generator).float()
    activations = torch.cat([half, -half], dim=1)  # channel k and k + 8 cancel
    assert activations.sum(dim=1).eq(0).all()
    ours = eigencam(activations)
    monkeypatch.setattr(torch.linalg, "svd", _other_svd(_flipped))
    assert torch.equal(eigencam(activations), ours)
    for image, features in zip(ours, activations.double()):
        matrix = features.flatten(1).T
        centred = matrix - matrix.mean(dim=0)
        projection = centred @ torch.linalg.svd(centred)[2][0]
        assert float(image.max()) == pytest.approx(float(projection.abs().max()), rel=1e-5)


def test_a_mean_activation_sign_survives_a_flipped_svd(monkeypatch) -> None:
    activations = torch.rand(2, 8, 5, 6, generator=torch.Generator().manual_seed(4))
    ours = eigencam(activations)
    monkeypatch.setattr(torch.linalg, "svd", _other_svd(_flipped))
    torch.testing.assert_close(eigencam(activations), ours, rtol=0, atol=1e-6)


def _rotated(u, s, vh, angle: float = 0.7):
    """The first two singular vectors turned by ``angle``: valid while s[0] == s[1]."""
    c, t = math.cos(angle), math.sin(angle)
    rotation = torch.tensor([[c, -t], [t, c]], dtype=vh.dtype)
    u, vh = u.clone(), vh.clone()
    u[..., :, :2] = u[..., :, :2] @ rotation.T
    vh[..., :2, :] = rotation @ vh[..., :2, :]
    return u, s, vh


def _tied_activations(mean_axis: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(1, 6, 4, 5) activations whose centred matrix has singular values 6, 6, 1, and the
    span of the two tied right-singular vectors; with ``mean_axis`` that span holds part of
    the channel-mean axis, without it it is orthogonal to it."""
    generator = torch.Generator().manual_seed(5)
    positions, channels = 20, 6
    left = torch.randn(positions, 3, generator=generator, dtype=torch.float64)
    left = torch.linalg.qr(left - left.mean(dim=0))[0]  # orthonormal, centred columns
    right = torch.randn(channels, 3, generator=generator, dtype=torch.float64)
    if not mean_axis:
        right -= right.mean(dim=0)  # every column orthogonal to (1, …, 1)
    right = torch.linalg.qr(right)[0]
    centred = left @ torch.diag(torch.tensor([6.0, 6.0, 1.0], dtype=torch.float64)) @ right.T
    offsets = torch.randn(channels, generator=generator, dtype=torch.float64)
    activations = (centred + offsets).T.reshape(1, channels, 4, 5).float()
    return activations, right[:, :2]


@pytest.mark.parametrize("mean_axis", [True, False])
def test_tied_singular_values_give_one_map_whatever_their_basis(monkeypatch, mean_axis) -> None:
    activations, tied = _tied_activations(mean_axis)
    ours = eigencam(activations)
    for angle in (0.7, 2.0, -1.2):
        monkeypatch.setattr(
            torch.linalg, "svd", _other_svd(lambda u, s, vh, a=angle: _rotated(u, s, vh, a))
        )
        torch.testing.assert_close(eigencam(activations), ours, rtol=0, atol=1e-5)
    matrix = activations[0].double().flatten(1).T
    centred = matrix - matrix.mean(dim=0)
    if mean_axis:  # the direction of the tied span closest to the channel-mean axis
        direction = tied @ (tied.T @ torch.ones(6, dtype=torch.float64))
    else:  # the one through the position the span represents most strongly
        inside = centred @ tied
        direction = tied @ inside[inside.norm(dim=1).argmax()]
    expected = (centred @ direction / direction.norm()).clamp(min=0).reshape(4, 5)
    torch.testing.assert_close(ours[0].double(), expected, rtol=0, atol=1e-5)


def test_layer_norm_maps_do_not_move_with_float32_rounding() -> None:
    """What another thread count does to a float32 forward (a relative change of ~1e-6), and
    another channel order, leave the map where it was, sign included."""
    activations = layer_norm_outputs(seed=0)
    ours = eigencam(activations)
    assert ours.amax(dim=(1, 2)).gt(0).all()
    generator = torch.Generator().manual_seed(1)
    for _ in range(8):
        noise = 1 + 1e-6 * torch.randn(activations.shape, generator=generator)
        torch.testing.assert_close(eigencam(activations * noise), ours, rtol=0, atol=1e-3)
    shuffled = activations[:, torch.randperm(activations.shape[1], generator=generator)]
    torch.testing.assert_close(eigencam(shuffled), ours, rtol=0, atol=1e-4)


def test_constant_activations_give_a_map_of_zeros() -> None:
    maps = eigencam(torch.full((2, 4, 3, 3), 2.5))
    assert torch.equal(maps, torch.zeros(2, 3, 3))
