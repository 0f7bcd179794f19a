"""Transformation robustness: the network sees every image a little shifted, zoomed and turned
at each step, so that an optimised image has to excite its objective robustly rather than
through an adversarial pattern tied to exact pixel positions (lucid's ``standard_transforms``:
pad 12, jitter 8, scale 0.9–1.1, rotate ±10°, jitter 4).

Here the four are one affine map per image and step, applied by a single ``grid_sample`` that
also resamples to the network's input size: one pass over the batch instead of five, each
image with its own draw. Outside the image the network sees mid-grey (lucid's constant pad of
0.5), which leaves a margin of ``BORDER`` pixels around the unshifted, unzoomed view.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

MAX_SHIFT = 5.0  # pixels each way: lucid's jitter 8 then 4 move the centre by at most ±5
MAX_ZOOM = 0.1  # the view is scaled by 1 ± 0.1
MAX_ANGLE = 10.0  # degrees each way
BORDER = 6.0  # pixels of grey each side of the unshifted view: lucid's pad 12 less its jitter


class RandomViews:
    """The random view of every image at every step, drawn once up front.

    ``generators``: one per image (an image's views do not depend on the rest of the batch);
    ``size``: the images' side in pixels (shifts are in the image's own pixels).
    """

    def __init__(
        self, steps: int, size: int, generators: list[torch.Generator], device: torch.device
    ) -> None:
        import torch

        draws = torch.stack([torch.rand(steps, 4, generator=g) for g in generators]) * 2 - 1
        self.size = size
        self.shift = (draws[..., :2] * MAX_SHIFT).to(device)  # (N, steps, 2) pixels x, y
        self.zoom = (1 + draws[..., 2] * MAX_ZOOM).to(device)  # (N, steps)
        self.angle = (draws[..., 3] * math.radians(MAX_ANGLE)).to(device)  # (N, steps) radians

    def view(self, pixels: torch.Tensor, step: int, out_hw: tuple[int, int]) -> torch.Tensor:
        """(N, 3, size, size) in [0, 1] → (N, 3, *out_hw): each image as step ``step`` sees it."""
        import torch

        # affine_grid maps output coordinates in [-1, 1] to input ones in the same units, where
        # the image spans [-1, 1]: a view of side V pixels has half-extent V / size.
        extent = (self.size + 2 * BORDER) / self.size / self.zoom[:, step]
        cos, sin = torch.cos(self.angle[:, step]), torch.sin(self.angle[:, step])
        offset = self.shift[:, step] * 2 / self.size
        theta = torch.stack(
            [
                torch.stack([extent * cos, -extent * sin, offset[:, 0]], dim=1),
                torch.stack([extent * sin, extent * cos, offset[:, 1]], dim=1),
            ],
            dim=1,
        )
        return resample(pixels, theta, out_hw)


def resample(pixels: torch.Tensor, theta: torch.Tensor, out_hw: tuple[int, int]) -> torch.Tensor:
    """``pixels`` (N, 3, H, W) in [0, 1] seen through the affine maps ``theta`` (N, 2, 3) at
    ``out_hw``, bilinear, mid-grey outside."""
    import torch.nn.functional as F

    grid = F.affine_grid(theta, (pixels.shape[0], 3, *out_hw), align_corners=False)
    # Sampling the image less 0.5 with zero padding, then adding 0.5 back, pads with grey.
    seen = F.grid_sample(
        pixels - 0.5, grid, mode="bilinear", padding_mode="zeros", align_corners=False
    )
    return seen + 0.5


def plain_view(pixels: torch.Tensor, out_hw: tuple[int, int]) -> torch.Tensor:
    """The whole image at ``out_hw`` as featviz would feed a photo of it (antialiased when
    shrinking), with no shift, zoom or turn: how the final images are scored."""
    import torch.nn.functional as F

    if tuple(pixels.shape[-2:]) == tuple(out_hw):
        return pixels
    return F.interpolate(pixels, size=out_hw, mode="bilinear", antialias=True, align_corners=False)
