"""Decoded RGB image → normalised tensor, without cropping anything away.

Centre-cropping (torchvision's evaluation recipe) would cut off the image's borders, and a heatmap
drawn over the whole photo would no longer line up. featviz resizes instead:
- ``keep`` (default): the shorter side becomes ``input_size``, the aspect ratio is kept. CNNs with
  adaptive pooling accept any size; on a 2:1 cat-beside-cup picture this put 0.90 of the cat
  map's mass on the cat, against 0.75 when squashed.
- ``square``: squash to ``input_size`` × ``input_size``, for models that need a fixed size.

In ``keep`` mode the longer side is capped at ``MAX_ASPECT`` × ``input_size``: a 10000×10 strip
would otherwise become a 224×224000 tensor. Past that ratio the image is squashed only as much as
needed, and its heatmap still covers the whole original.

Models that accept only some sizes (found by tracing.trace_model) are fed the nearest size they
accept, squashed, never cropped and never padded:
- one size only (torchvision's ViTs assert 224 × 224; timm's ViTs by default): the photo is
  squashed to it, like ``square``;
- multiples of a step (MaxViT's 7 × 7 windows at stride 32: multiples of 224; a ViT's patch
  size, so no pixel falls outside the patch grid): each side is rounded to the nearest
  multiple after the aspect-keeping resize.
Squashing rather than letterboxing: every pixel of the photo reaches the network and the map
covers the photo exactly, with no padded border for attention to pick up; networks trained
with random-resized crops have seen aspect changes of 3:4 to 4:3 throughout training.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import torch
    from PIL import Image

MAX_ASPECT = 4

ResizeMode = Literal["keep", "square"]


@dataclass(frozen=True)
class Preprocessing:
    """How a model wants its input: normalisation per RGB channel, shorter side, resize mode."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    input_size: int
    resize: ResizeMode = "keep"
    multiple: int | None = 1  # every side a multiple of this; None: input_size × input_size only
    interpolation: str = "bilinear"  # as the weights were trained: timm's ViTs use bicubic

    def pixel_bounds(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """The normalised values of pixel 0 and pixel 255, channel by channel."""
        return (
            tuple((0.0 - m) / s for m, s in zip(self.mean, self.std)),
            tuple((1.0 - m) / s for m, s in zip(self.mean, self.std)),
        )


def resized_shape(width: int, height: int, preprocessing: Preprocessing) -> tuple[int, int]:
    """(height, width) the network sees for an original of ``width`` × ``height`` pixels."""
    size, multiple = preprocessing.input_size, preprocessing.multiple
    if preprocessing.resize == "square" or multiple is None:
        return size, size
    scale = size / min(width, height)
    longest = MAX_ASPECT * size
    sides = (min(longest, max(1, round(side * scale))) for side in (height, width))
    return tuple(max(multiple, round(side / multiple) * multiple) for side in sides)


def to_tensor(image: Image.Image, preprocessing: Preprocessing) -> torch.Tensor:
    """RGB PIL image → float32 (3, h, w) tensor, resized and normalised."""
    return normalise(resized(image, preprocessing), preprocessing)


def resized(image: Image.Image, preprocessing: Preprocessing) -> torch.Tensor:
    """RGB PIL image → uint8 (3, h, w) tensor at the size the network sees (antialiased, with
    the weights' own interpolation). Images travel to the model's device as bytes, a quarter
    of their float32 size, and are normalised there (``normalise``)."""
    import numpy as np
    import torch
    from PIL import Image

    height, width = resized_shape(image.width, image.height, preprocessing)
    resample = Image.Resampling[preprocessing.interpolation.upper()]
    pixels = image.resize((width, height), resample, reducing_gap=None)
    return torch.from_numpy(np.array(pixels, dtype=np.uint8)).permute(2, 0, 1)


def normalise(pixels: torch.Tensor, preprocessing: Preprocessing) -> torch.Tensor:
    """uint8 (…, 3, h, w) → float32 in the model's normalisation, on the pixels' device:
    (pixels / 255 − mean) / std, in place on the one new float tensor (the same values as
    out of place, without three more tensors per image)."""
    mean, std = _constants(preprocessing.mean, preprocessing.std, str(pixels.device))
    return pixels.float().div_(255.0).sub_(mean).div_(std)


@lru_cache(maxsize=16)
def _constants(
    mean: tuple[float, ...], std: tuple[float, ...], device: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """The (3, 1, 1) float32 mean and std on ``device``, made once rather than per image."""
    import torch

    def column(values: tuple[float, ...]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.float32, device=device).view(3, 1, 1)

    return column(mean), column(std)
