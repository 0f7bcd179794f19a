"""What a model's final output holds: the class scores (a tensor, a tuple's first tensor, a
dict's ``logits``), a segmenter's per-pixel logits, a detector's list of boxes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
from collections.abc import Sequence

from featviz.errors import RunError


def segmentation_logits(output: Any) -> Any:
    """The (N, classes, H, W) logits of a segmentation model's output, or None."""
    import torch

    if isinstance(output, Mapping):
        output = output.get("out", next(iter(output.values()), None))
    if isinstance(output, torch.Tensor) and output.ndim == 4:
        return output
    return None


def logits_of(output: Any) -> tuple[torch.Tensor, str]:
    """The class scores in a model's output and where they were found.

    A tensor is taken as is; a mapping's ``logits`` entry, else its first tensor; a tuple or
    list's first tensor (torchvision's GoogLeNet/Inception return named tuples in train mode);
    an object with a ``logits`` tensor attribute (Hugging Face's ``ModelOutput``).
    """
    import torch

    if isinstance(output, torch.Tensor):
        return output, "output"
    if isinstance(output, Mapping) and isinstance(output.get("logits"), torch.Tensor):
        return output["logits"], "output['logits']"
    if not isinstance(output, Mapping) and isinstance(
        getattr(output, "logits", None), torch.Tensor
    ):
        return output.logits, "output.logits"
    items = output.items() if isinstance(output, Mapping) else None
    if items is None and isinstance(output, (tuple, list)):
        items = enumerate(output)
    for key, value in items or ():
        if isinstance(value, torch.Tensor):
            return value, f"output[{key!r}]"
    raise RunError(
        f"the model returned a {type(output).__name__} with no tensor in it; a CAM needs class "
        "scores of shape [N, classes]"
    )


def detections_of(output: Any) -> list[Mapping[str, Any]] | None:
    """The per-image detections in a model's output (a list of dicts with boxes, scores and
    labels; a scripted torchvision detector's (losses, detections) tuple), or None."""

    def is_detection(item: Any) -> bool:
        return isinstance(item, Mapping) and {"boxes", "scores", "labels"} <= item.keys()

    if isinstance(output, tuple) and len(output) == 2 and isinstance(output[0], Mapping):
        output = output[1]
    if isinstance(output, Sequence) and output and all(is_detection(item) for item in output):
        return list(output)
    return None
