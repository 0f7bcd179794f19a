"""Maps on a layer's grid brought to an image's pixels."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    pass


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N, h, w) → (N, H, W) for ``size`` = (H, W), bilinear with ``align_corners=False``."""
    return F.interpolate(
        maps[:, None].float(), size=tuple(size), mode="bilinear", align_corners=False
    )[:, 0]
