"""Tasks: how a model's raw output becomes one differentiable score per (image, target), what
ranks the targets, and what is drawn with each map (DESIGN.md "Tasks").

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

Detection (a model returning one dict of boxes, scores and labels per image): featviz.detection.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
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
    input, or None. A detector's targets are its boxes (featviz.detection): ``boxes`` (N,
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


def segmentation_logits(output: Any) -> Any:
    """The (N, classes, H, W) logits of a segmentation model's output, or None."""
    import torch

    if isinstance(output, Mapping):
        output = output.get("out", next(iter(output.values()), None))
    if isinstance(output, torch.Tensor) and output.ndim == 4:
        return output
    return None


class TargetFnTask(Task):
    """``fn(output)`` as the single (N, 1) score; ``spec`` as the user wrote it, for messages."""

    name = "target-fn"
    shown_as = "the score"

    def __init__(self, fn: Any, spec: str) -> None:
        super().__init__()
        self.fn, self.spec = fn, spec

    def __call__(self, module: Any, inputs: Any, output: Any) -> torch.Tensor:
        import torch

        from featviz.errors import UsageError

        images = len(inputs[0]) if inputs and hasattr(inputs[0], "__len__") else None
        try:
            scores = self.fn(output)
        except Exception as exc:  # the user's code: say whose, in one line
            raise UsageError(f"--target-fn {self.spec} raised {type(exc).__name__}: {exc}") from exc
        if not isinstance(scores, torch.Tensor) or scores.reshape(-1).shape[0] != images:
            got = list(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
            raise UsageError(
                f"--target-fn {self.spec} returned {got}: it must return one score per image, "
                f"a tensor of shape [{images}]"
            )
        scores = scores.reshape(-1, 1)
        self.latest = Outcome(shown=scores.detach().float())
        return scores


def with_target_fn(loaded: Any, spec: str) -> Any:
    """``loaded`` explaining ``fn(output)`` instead of its classes: a shallow copy of its root
    module with the task's hook (the model itself, which the warm worker may keep for other
    calls, is left as it was; the layers are the same modules), one target named after fn."""
    import copy
    from collections import OrderedDict
    from dataclasses import replace

    from featviz.user_code import import_callable

    fn, _, name = import_callable(spec, f"--target-fn {spec}")
    task = TargetFnTask(fn, spec)
    root = copy.copy(loaded.module)
    # Its own hook tables: the original's stay untouched; a segmentation or detection hook is
    # dropped, so fn reads the raw output.
    root._forward_hooks = OrderedDict(
        (key, hook) for key, hook in loaded.module._forward_hooks.items() if hook is not loaded.task
    )
    root._forward_hooks_with_kwargs = OrderedDict(loaded.module._forward_hooks_with_kwargs)
    root._forward_hooks_always_called = OrderedDict(loaded.module._forward_hooks_always_called)
    root.register_forward_hook(task)
    trace = replace(loaded.trace, num_classes=1, task=None)
    return replace(loaded, module=root, trace=trace, categories=[name], task=task)
