"""Tasks: how a model's raw output becomes one differentiable score per (image, target), what
ranks the targets, and what is drawn with each map (DESIGN.md "Tasks").

A classifier needs none of this: its output is (N, classes) scores already. Any other task
is a forward hook on the model's root module, installed once when the model is loaded, that
replaces the output with the task's (N, targets) scores; every CAM method, the trace and the
judging commands then read a classifier's output, and the task keeps what the last forward
showed (``latest``) for the ranking and the drawing.

Segmentation (a model whose output is (N, classes, H, W), alone or as a dict's ``out``): the
score of class c is the sum of its logits over the pixels the model assigns to c (the argmax),
as pytorch-grad-cam's ``SemanticSegmentationTarget``; a class no pixel is assigned to scores
0 and its map is zeros. Targets are ranked by the share of pixels they cover, which is what is
printed beside their names.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Outcome:
    """What the latest forward showed, detached: ``shown`` (N, targets) ranks the targets and
    is printed beside them; ``regions`` (N, h, w) the target of each pixel of the model's
    input, or None."""

    shown: torch.Tensor
    regions: torch.Tensor | None = None


class SegmentationTask:
    name = "segmentation"
    shown_as = "share of the pixels"

    def __init__(self) -> None:
        self.latest: Outcome | None = None

    def __call__(self, module: Any, inputs: Any, output: Any) -> torch.Tensor:
        import torch

        logits = segmentation_logits(output)
        classes = logits.detach().argmax(1)  # (N, H, W)
        index = torch.arange(logits.shape[1], device=logits.device)[None, :, None, None]
        assigned = (classes[:, None] == index).to(logits.dtype)  # (N, C, H, W), no gradient
        self.latest = Outcome(shown=assigned.float().mean((2, 3)), regions=classes)
        return (logits * assigned).sum((2, 3))


def segmentation_logits(output: Any) -> Any:
    """The (N, classes, H, W) logits of a segmentation model's output, or None."""
    import torch

    if isinstance(output, Mapping):
        output = output.get("out", next(iter(output.values()), None))
    if isinstance(output, torch.Tensor) and output.ndim == 4:
        return output
    return None


def task_for(output: Any) -> SegmentationTask | None:
    """The task a traced model's raw output calls for; None: a classifier (or unknown)."""
    return SegmentationTask() if segmentation_logits(output) is not None else None
