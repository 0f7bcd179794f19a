"""Noisy linear imputation (Rong et al., ICML 2022), the removal step of ROAD, for a batch.

Each missing pixel becomes the weighted mean of its 8 neighbours (1/6 for the 4 edge
neighbours, 1/12 for the corners; neighbours outside the image are left out), all missing
pixels solved jointly: d_i·u_i − Σ_j w_ij·u_j = Σ_k w_ik·x_k over the missing i (j missing
neighbours, k known ones, d_i the weight of i's neighbours inside the image). That is the system
pytorch-grad-cam's NoisyLinearImputer builds and hands to scipy's sparse LU one image at a time.
Here every plane of every image is solved at once by conjugate gradients preconditioned with a
geometric multigrid V-cycle, so the iterations do not grow with the image or the size of the
holes: a few tens of stencil passes over the batch, on the model's device.

Multigrid choices, and why: cell-centred coarsening by 2 (bilinear prolongation P, restriction
P^T/4, so the preconditioner stays symmetric, as CG needs); a coarse pixel is missing only when
all four of its children are, so the known pixels keep pinning the coarse problems (a coarse
grid that forgot them would be singular); damped Jacobi smoothing, one sweep before and after.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

ROAD_NOISE = 0.01
TOLERANCE = 2e-5  # relative residual: max error ≈ 1e-3 of a normalised pixel, below 1 grey level
_BILINEAR = torch.tensor([0.25, 0.75, 0.75, 0.25])
_JACOBI = 1.0  # damping; the stencil's largest eigenvalue (relative to d) is 4/3
_COARSEST = 4  # px: below this a grid is smoothed, not coarsened


def _neighbours(v: torch.Tensor) -> torch.Tensor:
    """Σ_j w_ij·v_j with zero outside: the kernel [1 2 1]ᵀ[1 2 1]/12 minus its centre, 4/12."""
    p = F.pad(v, (1, 1, 1, 1))
    rows = p[..., :, :-2] + 2 * p[..., :, 1:-1] + p[..., :, 2:]
    return (rows[..., :-2, :] + 2 * rows[..., 1:-1, :] + rows[..., 2:, :]) / 12 - v / 3


class _Grid:
    """The operator on one level: ``missing`` (B, 1, h, w) in {0, 1}, ``inside`` marks the
    pixels of the image (coarse grids of odd sizes overhang it)."""

    def __init__(self, inside: torch.Tensor, missing: torch.Tensor) -> None:
        self.inside, self.missing = inside, missing
        degree = _neighbours(inside) * missing
        self.degree = degree
        self.inverse = torch.where(missing > 0, 1 / degree.clamp(min=1e-12), 0.0)

    def apply(self, u: torch.Tensor) -> torch.Tensor:
        return self.missing * (self.degree * u - _neighbours(u * self.missing))

    def coarser(self) -> _Grid:
        return _Grid(
            F.max_pool2d(self.inside, 2, ceil_mode=True),
            -F.max_pool2d(-self.missing, 2, ceil_mode=True),
        )


def _restrict(r: torch.Tensor) -> torch.Tensor:
    h, w = r.shape[-2:]
    channels = r.shape[1]
    kernel = (_BILINEAR[:, None] * _BILINEAR[None, :]).to(r).expand(channels, 1, 4, 4)
    padded = F.pad(r, (1, 1 + w % 2, 1, 1 + h % 2))
    return F.conv2d(padded, kernel, stride=2, groups=channels) / 4


def _prolong(e: torch.Tensor, size: torch.Size) -> torch.Tensor:
    channels = e.shape[1]
    kernel = (_BILINEAR[:, None] * _BILINEAR[None, :]).to(e).expand(channels, 1, 4, 4)
    fine = F.conv_transpose2d(e, kernel, stride=2, padding=1, groups=channels)
    return fine[..., : size[0], : size[1]]


def _v_cycle(grids: list[_Grid], level: int, r: torch.Tensor) -> torch.Tensor:
    grid = grids[level]
    if level == len(grids) - 1:
        u = torch.zeros_like(r)
        for _ in range(2 * _COARSEST):
            u = u + _JACOBI * grid.inverse * (r - grid.apply(u))
        return u
    u = _JACOBI * grid.inverse * r
    # The coarse operator is the same stencil at twice the spacing: 4× the fine one's scale.
    coarse = _v_cycle(grids, level + 1, 4 * grids[level + 1].missing * _restrict(r - grid.apply(u)))
    u = u + grid.missing * _prolong(coarse, r.shape[-2:])
    return u + _JACOBI * grid.inverse * (r - grid.apply(u))


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum(dim=(2, 3), keepdim=True)


def _grids(missing: torch.Tensor) -> list[_Grid]:
    grids = [_Grid(torch.ones_like(missing), missing)]
    while min(grids[-1].missing.shape[-2:]) > _COARSEST:
        grids.append(grids[-1].coarser())
    return grids


def impute(
    x: torch.Tensor,
    missing: torch.Tensor,
    *,
    noise: float = ROAD_NOISE,
    generator: torch.Generator | None = None,
    tolerance: float = TOLERANCE,
    max_iterations: int = 100,
) -> torch.Tensor:
    """``x`` (B, C, H, W) with its ``missing`` (B, 1, H, W) pixels imputed, plus N(0, noise²)
    on them. An image leaves the batch as soon as all its planes have converged (small holes
    take a third of the iterations of large ones), so the rest iterate on less."""
    m = missing.to(x.dtype)
    rhs = m * _neighbours(x * (1 - m))
    solution = torch.zeros_like(x)
    active = torch.arange(len(x), device=x.device)
    grids = _grids(m)
    limit = tolerance**2 * _dot(rhs, rhs)
    u = torch.zeros_like(x)
    r = rhs
    z = _v_cycle(grids, 0, r)
    p = z
    rz = _dot(r, z)
    for _ in range(max_iterations):
        done = (_dot(r, r) <= limit).flatten(1).all(dim=1)
        if bool(done.any()):
            solution[active[done]] = u[done]
            keep = ~done
            if not bool(keep.any()):
                break
            active, u, r, p, rz, limit = (t[keep] for t in (active, u, r, p, rz, limit))
            grids = _grids(m[active])
        ap = grids[0].apply(p)
        alpha = rz / _dot(p, ap).clamp(min=1e-30)
        u = u + alpha * p
        r = r - alpha * ap
        z = _v_cycle(grids, 0, r)
        rz_next = _dot(r, z)
        p = z + (rz_next / rz.clamp(min=1e-30)) * p
        rz = rz_next
    else:
        solution[active] = u  # not converged in max_iterations: the best so far
    jitter = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return x * (1 - m) + m * (solution + noise * jitter)
