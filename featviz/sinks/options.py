"""Where results go: the output folder (always), TensorBoard event files, the gallery."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

ImageFormat = Literal["png", "jpg", "webp"]
# An option that never changes what a run writes (featviz.run.plan reads these marks).
NO_EFFECT = {"outputs": "none"}


@dataclass(frozen=True)
class OutputRequest:
    """Where results go: the output folder (always), TensorBoard event files, the gallery."""

    out: Path = field(default=Path("featviz-out"), metadata=NO_EFFECT)
    tensorboard: Path | None = field(default=None, metadata=NO_EFFECT)
    gallery: bool = field(default=True, metadata=NO_EFFECT)
    # overlays, grids, panels, kernels (heatmaps stay PNG): another suffix, another file
    image_format: ImageFormat = field(default="png", metadata={"outputs": "files"})
    quality: int = 90  # JPEG and WebP
