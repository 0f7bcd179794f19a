"""Maps on a layer's grid brought to an image's pixels, or to a clip's frames."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N, h, w) → (N, H, W) for ``size`` = (H, W), bilinear with ``align_corners=False``."""
    return F.interpolate(
        maps[:, None].float(), size=tuple(size), mode="bilinear", align_corners=False
    )[:, 0]


def resized(maps: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """``upsample`` for an image's ``size`` = (H, W), ``upsample_clip`` for a clip's (T, H, W)."""
    return (upsample_clip if len(size) == 3 else upsample)(maps, size)


def upsample_clip(maps: torch.Tensor, size: tuple[int, int, int]) -> torch.Tensor:
    """(N, t, h, w) → (N, T, H, W) for ``size`` = (T, H, W): a video layer's maps brought to
    every frame of its clip, trilinear with ``align_corners=False`` (time like space: each of
    the t map frames covers T / t clip frames)."""
    return F.interpolate(
        maps[:, None].float(), size=tuple(size), mode="trilinear", align_corners=False
    )[:, 0]
