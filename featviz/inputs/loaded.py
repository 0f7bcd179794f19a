"""A decoded input ready for the model: the original pixels and the model's input tensor."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import torch

    from featviz.inputs.discover import ImageSource


@dataclass
class LoadedImage:
    """A decoded input: the original pixels (H, W, 3) uint8 and the model's (3, h, w) input,
    normalised, or for a GPU uint8 pixels at the size it sees (``LoadedModel.batch``
    normalises them there)."""

    source: ImageSource
    original: np.ndarray
    tensor: torch.Tensor
