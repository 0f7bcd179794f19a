"""Segmentation models: per-pixel logits become one score per class (the class's logits
summed over the pixels the model assigns to it), and the regions are drawn as outlines.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
from featviz.layers.outputs import segmentation_logits
from featviz.tasks.base import Outcome, Task, replayed


class SegmentationTask(Task):
    name = "segmentation"
    shown_as = "share of the pixels"

    def __call__(self, module: Any, inputs: Any, output: Any) -> torch.Tensor:
        import torch

        logits = segmentation_logits(output)
        rows = replayed()
        # A perturbed re-run (scorecam, ablationcam) is scored on the pixels the first
        # forward assigned, as pytorch-grad-cam's target keeps its mask.
        first = rows is None or self.latest is None
        classes = logits.detach().argmax(1) if first else self.latest.regions[rows]
        index = torch.arange(logits.shape[1], device=logits.device)[None, :, None, None]
        assigned = (classes[:, None] == index).to(logits.dtype)  # (N, C, H, W), no gradient
        if first:
            self.latest = Outcome(shown=assigned.float().mean((2, 3)), regions=classes)
        return (logits * assigned).sum((2, 3))
