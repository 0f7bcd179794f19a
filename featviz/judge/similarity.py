"""How alike two maps are, for the sanity check: rank correlation and structural similarity.

Both take (N, h, w) batches of maps, or a video layer's (N, t, h, w), and return (N,).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SSIM_WINDOW, SSIM_SIGMA = 11, 1.5  # Wang et al. 2004, as scikit-image's gaussian_weights=True
SSIM_C1, SSIM_C2 = 0.01**2, 0.03**2  # for data in [0, 1]


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman's rank correlation of each pair of maps (ties get their mean rank, as
    scipy.stats.spearmanr); 0 where a map is constant (its ranks carry nothing)."""
    ra, rb = _ranks(a.flatten(1).double()), _ranks(b.flatten(1).double())
    ra = ra - ra.mean(dim=1, keepdim=True)
    rb = rb - rb.mean(dim=1, keepdim=True)
    denominator = ra.norm(dim=1) * rb.norm(dim=1)
    return torch.where(denominator > 0, (ra * rb).sum(dim=1) / denominator.clamp(min=1e-300), 0.0)


def _ranks(values: torch.Tensor) -> torch.Tensor:
    """1-based ranks along dim 1, ties averaged."""
    order = values.argsort(dim=1, stable=True)
    sorted_values = values.gather(1, order)
    ranks = torch.empty_like(values)
    for row in range(values.shape[0]):  # one small map per row; runs of ties differ per row
        _, inverse, counts = torch.unique_consecutive(
            sorted_values[row], return_inverse=True, return_counts=True
        )
        ends = counts.cumsum(0).to(values.dtype)
        ranks[row, order[row]] = (ends - (counts.to(values.dtype) - 1) / 2)[inverse]
    return ranks


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean structural similarity of each pair of maps in [0, 1], Gaussian window of 11 px
    (σ = 1.5), computed where the window fits (no padding); a clip's, the mean over its
    frames' (each frame's window is in that frame)."""
    if a.ndim == 4:
        return ssim(a.flatten(0, 1), b.flatten(0, 1)).view(a.shape[:2]).mean(dim=1)
    x, y = a[:, None].double(), b[:, None].double()
    offsets = torch.arange(SSIM_WINDOW, dtype=torch.float64) - (SSIM_WINDOW - 1) / 2
    g = torch.exp(-(offsets**2) / (2 * SSIM_SIGMA**2))
    g = (g / g.sum()).to(x.device)
    window = (g[:, None] * g[None, :]).view(1, 1, SSIM_WINDOW, SSIM_WINDOW)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, window)

    mx, my = blur(x), blur(y)
    vx = blur(x * x) - mx * mx
    vy = blur(y * y) - my * my
    cxy = blur(x * y) - mx * my
    index = ((2 * mx * my + SSIM_C1) * (2 * cxy + SSIM_C2)) / (
        (mx * mx + my * my + SSIM_C1) * (vx + vy + SSIM_C2)
    )
    return index.mean(dim=(1, 2, 3)).float()
