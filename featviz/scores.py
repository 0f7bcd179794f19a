"""Which part of a model's output holds its class scores."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from featviz.errors import RunError

if TYPE_CHECKING:
    import torch


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
