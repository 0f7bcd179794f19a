"""Tasks: how a model's raw output becomes one differentiable score per (image, target), what
ranks the targets, and what is drawn with each map.

A classifier needs none of this: its output is (N, classes) scores already. Any other task
is a forward hook on the model's root module, installed once when the model is loaded, that
replaces the output with the task's (N, targets) scores; every CAM method, the trace and the
judging commands then read a classifier's output, and the task keeps what the last forward
showed (``latest``) for the ranking and the drawing.

``--target-fn FILE.py:fn`` (or ``pkg.mod:fn``): the user's own score, ``fn(output)`` → (N,)
on the model's raw output (any tensor, tuple, dict or object): regression, a multi-label
head's sigmoid, an embedding's similarity, a sum over a region. It is the one target; the
value itself is shown beside its name.

Segmentation (a model whose output is (N, classes, H, W), alone or as a dict's ``out``): the
score of class c is the sum of its logits over the pixels the model assigns to c (the argmax),
as pytorch-grad-cam's ``SemanticSegmentationTarget``; a class no pixel is assigned to scores
0 and its map is zeros. The perturbed re-runs of scorecam and ablationcam sum over the pixels
of the first forward, as that target's fixed mask does. Targets are ranked by the share of
pixels they cover, which is what is printed beside their names.

Detection (a model returning one dict of boxes, scores and labels per image):
featviz.tasks.detection.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Outcome:
    """What the latest forward showed, detached: ``shown`` (N, targets) ranks the targets and
    is printed beside them; ``regions`` (N, h, w) the target of each pixel of the model's
    input, or None. A detector's targets are its boxes (featviz.tasks.detection): ``boxes`` (N,
    targets, 4) x0 y0 x1 y1 in the input's pixels, ``labels`` (N, targets) their classes,
    ``valid`` (N, targets) which of the padded targets are boxes at all."""

    shown: torch.Tensor
    regions: torch.Tensor | None = None
    boxes: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    valid: torch.Tensor | None = None


# During the extra forwards of scorecam and ablationcam: for each row of the batch, the image
# of the batch's first forward it re-runs (perturbed). A task whose targets belong to that
# forward (a detector's boxes) scores the rows against it.
_REPLAYED: ContextVar[torch.Tensor | None] = ContextVar("replayed", default=None)


@contextmanager
def replaying(images: torch.Tensor) -> Iterator[None]:
    """Forwards inside re-run perturbed copies of the images ``images`` (B,) of the batch's
    first forward, one per row."""
    token = _REPLAYED.set(images)
    try:
        yield
    finally:
        _REPLAYED.reset(token)


def replayed() -> torch.Tensor | None:
    """The images the rows of the current forward re-run, or None: a first forward."""
    return _REPLAYED.get()


class Task:
    """A root forward hook that turns the model's output into (N, targets) scores."""

    name: str
    shown_as: str

    def __init__(self) -> None:
        self.latest: Outcome | None = None

    def align(self, maps: torch.Tensor) -> torch.Tensor:
        """(N, h, w) maps of a layer → maps covering exactly the model's input (a detector's
        layers also see the padding it adds); as they are by default."""
        return maps

    def crop(self, maps: torch.Tensor) -> torch.Tensor:
        """(N, C, h, w) feature maps → the cells that cover the model's input (``align`` to
        the nearest cell, for the grids of `featviz maps`); as they are by default."""
        return maps


def task_of(module: Any) -> Task | None:
    """The task hooked on ``module``'s root, if any (a deep copy of a model has its own)."""
    return next((hook for hook in module._forward_hooks.values() if isinstance(hook, Task)), None)
