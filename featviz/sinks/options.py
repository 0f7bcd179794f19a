"""Where results go: the output folder (always), TensorBoard event files, the gallery."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

ImageFormat = Literal["png", "jpg", "webp"]


@dataclass(frozen=True)
class OutputRequest:
    """Where results go: the output folder (always), TensorBoard event files, the gallery."""

    out: Path = Path("featviz-out")
    tensorboard: Path | None = None
    gallery: bool = True
    image_format: ImageFormat = "png"  # overlays, grids, panels, kernels (heatmaps stay PNG)
    quality: int = 90  # JPEG and WebP
