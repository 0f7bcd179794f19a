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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from featviz.requests import ResizeMode

if TYPE_CHECKING:
    import torch
    from PIL import Image

MAX_ASPECT = 4


@dataclass(frozen=True)
class Preprocessing:
    """How a model wants its input: normalisation per RGB channel, shorter side, resize mode."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    input_size: int
    resize: ResizeMode = "keep"


def resized_shape(width: int, height: int, input_size: int, resize: ResizeMode) -> tuple[int, int]:
    """(height, width) the network sees for an original of ``width`` × ``height`` pixels."""
    if resize == "square":
        return input_size, input_size
    scale = input_size / min(width, height)
    longest = MAX_ASPECT * input_size
    return min(longest, max(1, round(height * scale))), min(longest, max(1, round(width * scale)))


def to_tensor(image: Image.Image, preprocessing: Preprocessing) -> torch.Tensor:
    """RGB PIL image → float32 (3, h, w) tensor, resized (antialiased bilinear) and normalised."""
    import numpy as np
    import torch
    from PIL import Image

    height, width = resized_shape(
        image.width, image.height, preprocessing.input_size, preprocessing.resize
    )
    resized = image.resize((width, height), Image.Resampling.BILINEAR, reducing_gap=None)
    array = torch.from_numpy(np.asarray(resized, dtype=np.float32)).permute(2, 0, 1) / 255.0
    mean = torch.tensor(preprocessing.mean, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(preprocessing.std, dtype=torch.float32).view(3, 1, 1)
    return (array - mean) / std
