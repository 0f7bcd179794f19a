"""A batch's failures, said per image: the model rejecting the input, scores or maps that are
not finite; and scores that leave nothing to explain.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

from featviz.errors import InputError, first_line

if TYPE_CHECKING:
    import torch


def model_failure(inputs: torch.Tensor, error: RuntimeError) -> InputError:
    """The model rejected a batch (too small for its pooling, out of memory…): its images fail
    with this one line, and the run goes on."""
    height, width = inputs.shape[-2:]
    return InputError(
        f"the model cannot run on this input ({width}×{height} after resizing): {first_line(error)}"
    )


def not_finite(values: torch.Tensor) -> torch.Tensor:
    """(N, …) → (N,) bool: which rows hold a NaN or an infinity.

    A row's largest and smallest values say it: a NaN makes both NaN, +∞ the largest, −∞
    the smallest. Two reductions that copy nothing, where ``isfinite`` writes a mask of the
    whole batch first (and a channels-last one is copied again to flatten it): about 15×
    faster on a resnet's activations."""
    import torch

    if values.dim() == 1:
        return ~torch.isfinite(values)
    rows = tuple(range(1, values.dim()))
    return ~(torch.isfinite(values.amax(dim=rows)) & torch.isfinite(values.amin(dim=rows)))


def nan_or_infinite(values: torch.Tensor) -> str:
    """How to name what is wrong with a row that is not finite."""
    import torch

    return "NaN" if bool(torch.isnan(values).any()) else "infinite"


def warn_if_flat(scores: torch.Tensor) -> None:
    """Warn when some image's (N, classes) scores are all the same: its maps would be zeros."""
    if scores.shape[1] > 1 and bool((scores.amax(dim=1) == scores.amin(dim=1)).any()):
        warnings.warn(
            "the model gives every class the same score on some images (a zero-initialised "
            "head, as torchvision's ViTs have with --weights none?): their maps are zeros",
            stacklevel=1,
        )
