"""Explaining a batch: one forward, then every method's map for every layer and target.

``Explainer`` is what `cam`, `compare`, `score` and `sanity` share: the methods loaded once,
the layers tapped (only for methods that read layers), the forward with gradients and attention
only when a method needs them, the targets (``--target`` or the top-k), the predictions shown,
and a failure line for every image whose scores or maps are not finite. Gradient methods share
one backward per target; scorecam and ablationcam score every class in one set of extra
forwards.
"""

from __future__ import annotations

import warnings
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any

from featviz.cam.registry import ALL, every_method
from featviz.errors import InputError, UsageError, first_line
from featviz.explainer.checks import model_failure, nan_or_infinite, not_finite, warn_if_flat
from featviz.explainer.maps import Chosen, Explained, ExplainedMap
from featviz.explainer.predictions import Prediction
from featviz.tasks.base import task_of
from featviz.tasks.detection import (
    DEFAULT_MIN_SCORE,
    DetectionTask,
    chosen_boxes,
    detected_boxes,
    nothing_found,
    own_threshold_lowered,
)

if TYPE_CHECKING:
    import torch
    from torch import nn

    from featviz.cam.context import CamContext
    from featviz.model.load import LoadedModel
    from featviz.tasks.base import Task


SHOWN_PREDICTIONS = 5


def _compute(method: Any, context: Any, layer: str, targets: torch.Tensor) -> torch.Tensor:
    """One method's (N, h, w) maps on the CPU; a failure of the extra forwards that scorecam and
    ablationcam run fails this batch's images, not the whole run."""
    try:
        return method.compute(context, layer, targets).detach().float().cpu()
    except RuntimeError as exc:
        raise InputError(
            f"{method.name} at layer '{layer}' failed on this input: {first_line(exc)}"
        ) from exc


class Explainer:
    """``methods`` (registry names) at ``layers`` (resolved) for ``classes`` (resolved class
    indices; empty: the ``top_k`` predictions, None: one) of ``model``.

    A detector's targets are its boxes scoring at least ``min_score``: the ``top_k`` best
    (None: all), of the ``classes`` only when there are any.
    """

    def __init__(
        self,
        model: LoadedModel,
        methods: tuple[str, ...],
        layers: list[str],
        classes: list[int],
        *,
        top_k: int | None,
        cam_batch_size: int,
        min_score: float = DEFAULT_MIN_SCORE,
        seed: int = 0,
    ) -> None:
        from featviz.cam import load_method

        self.model = model
        # --method all: those of its methods that turn out not to apply to this model (cam on
        # a net without global-average-pool → Linear) are left out on the first batch.
        self.unprobed: set[str] = set()
        if ALL in methods:
            every = every_method(attention=_has_global_attention(model))
            self.unprobed = set(every) - set(methods)
            named = [every if name == ALL else (name,) for name in methods]
            methods = tuple(dict.fromkeys(name for names in named for name in names))
        self.methods = [load_method(name, batch_size=cam_batch_size) for name in methods]
        self.layers = layers
        self.classes = classes
        self.top_k = top_k
        self.min_score = min_score
        self.seed = seed
        self.attention = any(method.info.needs_attention for method in self.methods)
        # The layers are tapped only for methods that read them (not for rollouts or
        # pixel-level methods alone).
        read = {layer for method in self.methods for layer in method.layers_for(layers)}
        self.tapped = [layer for layer in layers if layer in read]
        # Gradients with respect to the input, from the same one backward (saliency…).
        self.input_gradients = any(
            m.info.pixel_level and m.info.needs_gradients for m in self.methods
        )
        self.relu_rules = any(method.relu_rules for method in self.methods)
        # Attention methods on a model without readable global attention: refused now.
        self.token_prefix = model.trace.attention_prefix() if self.attention else 0
        self.class_token = (
            bool(self.token_prefix) if model.class_token is None else model.class_token
        )

    def layers_of(self, method: Any) -> list[str]:
        """The layers ``method`` makes maps of: the resolved ones, ``ATTENTION`` or ``INPUT``."""
        return method.layers_for(self.layers)

    def forward(self, inputs: torch.Tensor, module: nn.Module | None = None) -> CamContext:
        """One forward of ``inputs`` through ``module`` (default: the model) for every method."""
        from featviz.cam import forward_for_cam

        trace = self.model.trace
        try:
            return forward_for_cam(
                module or self.model.module,
                inputs,
                self.tapped,
                trace.calls(),
                layouts=trace.layouts(),
                gradients=any(method.info.needs_gradients for method in self.methods),
                attention=self.attention,
                input_gradients=self.input_gradients,
                relu_rules=self.relu_rules,
                token_prefix=self.token_prefix,
                class_token=self.class_token,
            )
        except RuntimeError as exc:
            raise model_failure(inputs, exc) from exc

    def explain(
        self,
        inputs: torch.Tensor,
        *,
        module: nn.Module | None = None,
        targets: torch.Tensor | None = None,
        sizes: list[tuple[int, int]] | None = None,
        ids: list[int] | None = None,
    ) -> Explained:
        """Every method's maps for ``inputs`` (N, 3, H, W); ``targets`` (N, columns) to explain
        given classes (the sanity check's randomised models explain the original's);
        ``sizes`` each original photo's (height, width), which a detector's boxes are given in
        (default: the input's); ``ids`` each image's position in the run, which with ``seed``
        seeds the methods that draw noise (default: its place in the batch). A detector keeps
        its boxes down to ``min_score`` meanwhile."""
        # A copy of the model (sanity's randomised ones) has its own copy of the task's hook.
        task = self.model.task if module is None else task_of(module)
        lowered = (
            own_threshold_lowered(module or self.model.module, self.min_score)
            if isinstance(task, DetectionTask)
            else nullcontext()
        )
        with lowered:
            return self._explained(inputs, module, targets, sizes, task, ids)

    def _explained(
        self,
        inputs: torch.Tensor,
        module: nn.Module | None,
        targets: torch.Tensor | None,
        sizes: list[tuple[int, int]] | None,
        task: Task | None,
        ids: list[int] | None,
    ) -> Explained:
        context = self.forward(inputs, module)
        ids = ids if ids is not None else list(range(len(inputs)))
        context.seeds = tuple(self.seed * 1_000_003 + i for i in ids)
        context.pixel_bounds = self.model.preprocessing.pixel_bounds()
        scores = context.logits.detach().float()
        broken = {
            i: f"the model's scores are {nan_or_infinite(scores[i])}: there is nothing to explain"
            for i in not_finite(scores).nonzero().flatten().tolist()
        }
        chosen, notes = self._chosen(inputs, scores, targets, sizes, task, warn=module is None)
        if self.unprobed and chosen.targets.shape[1]:
            self._leave_out_inapplicable(context, chosen.targets[:, 0])
        per_image = self._every_map(context, chosen, task, broken)
        return Explained(context, chosen.targets, per_image, chosen.shown, broken, notes)

    def _chosen(
        self,
        inputs: torch.Tensor,
        scores: torch.Tensor,
        targets: torch.Tensor | None,
        sizes: list[tuple[int, int]] | None,
        task: Task | None,
        *,
        warn: bool,
    ) -> tuple[Chosen, dict[int, str]]:
        """The targets to explain, and why an image has none (a detector's image without a
        box); ``warn`` whether flat scores are worth a warning (not on sanity's copies)."""
        outcome = task.latest if task else None  # what the task's hook saw of this forward
        regions = outcome.regions if outcome else None
        # What ranks the targets and is shown beside them: the class probabilities, or what
        # the task's latest forward (this one) showed (a segmentation's pixel shares, a
        # detector's box scores).
        probabilities = outcome.shown if outcome else scores.softmax(dim=1)
        if outcome is None or outcome.boxes is None:
            if warn:
                warn_if_flat(scores)
            targets, shown = self._classes(probabilities, targets)
            return Chosen(targets, shown, probabilities, regions=regions), {}
        input_hw = tuple(inputs.shape[-2:])
        targets, keep, shown = self._boxes(outcome, input_hw, sizes or [input_hw] * len(inputs))
        note = nothing_found(self.min_score, [self.model.label(c) for c in self.classes])
        notes = {i: note for i in range(len(inputs)) if not keep[i].any()}
        return Chosen(targets, shown, probabilities, keep, regions, detector=True), notes

    def _every_map(
        self, context: CamContext, chosen: Chosen, task: Task | None, broken: dict[int, str]
    ) -> list[list[ExplainedMap]]:
        """Each image's maps: every method's, of every layer and chosen target; an image whose
        map is not finite gets its line in ``broken``."""
        n = len(chosen.targets)
        per_image: list[list[ExplainedMap]] = [[] for _ in range(n)]
        keep = chosen.keep
        for method in self.methods:
            class_specific = method.info.class_specific
            for column in range(chosen.targets.shape[1] if class_specific else 1):
                wanted = keep[:, column] if keep is not None and class_specific else None
                if wanted is not None and not wanted.any():
                    continue
                for layer in self.layers_of(method):
                    maps = self._maps(method, context, layer, chosen.targets[:, column], task)
                    for i in not_finite(maps).nonzero().flatten().tolist():
                        broken.setdefault(
                            i,
                            f"{method.name}'s map at layer '{layer}' is {nan_or_infinite(maps[i])}",
                        )
                    for i in range(n):
                        if wanted is None or wanted[i]:
                            entry = chosen.entry(self.model, method, layer, i, column, maps[i])
                            per_image[i].append(entry)
        return per_image

    def _maps(
        self,
        method: Any,
        context: CamContext,
        layer: str,
        targets: torch.Tensor,
        task: Task | None,
    ) -> torch.Tensor:
        """``method``'s maps of ``targets`` at ``layer``, on the input's frames and aligned with
        what the task shows (a pixel-level map covers exactly the model's input already)."""
        maps = _compute(method, context, layer, targets)
        if not method.info.pixel_level:
            maps = self._frames(layer, maps)
            if task is not None:
                maps = task.align(maps)
        return maps

    def _leave_out_inapplicable(self, context: CamContext, targets: torch.Tensor) -> None:
        """``--method all``, first batch: a method that says it cannot work on this model (a
        UsageError: cam on a net without global-average-pool → Linear) is left out of the run
        with a warning instead of failing it. What the methods computed here is cached in the
        context, so the maps that follow do not compute it again."""
        for method in [m for m in self.methods if m.name in self.unprobed]:
            try:
                for layer in self.layers_of(method):
                    _compute(method, context, layer, targets)
            except UsageError as exc:
                warnings.warn(f"--method all leaves out {method.name}: {exc}", stacklevel=2)
                self.methods.remove(method)
        self.unprobed.clear()

    def _frames(self, layer: str, maps: torch.Tensor) -> torch.Tensor:
        """A video layer's (N, t·h, w) maps, its frames stacked (layers/layouts.py), cut into
        (N, t, h, w); other maps (of no traced layer: attention, the input) as they are."""
        if layer not in self.model.trace.names:
            return maps
        info = self.model.trace.get(layer)
        frames = info.layout.frames(info.shape) if info.layout is not None else 1
        return maps if frames == 1 else maps.unflatten(1, (frames, -1))

    def _classes(
        self, probabilities: torch.Tensor, targets: torch.Tensor | None
    ) -> tuple[torch.Tensor, list[list[Prediction]]]:
        """(N, columns) classes to explain (``targets`` if given, else --target's, else the
        top-k) and each image's top predictions: one ranking for both, so ties break alike."""
        import torch

        n = len(probabilities)
        top = min(max(SHOWN_PREDICTIONS, self.top_k or 1), probabilities.shape[1])
        ranked = probabilities.topk(top, dim=1)
        if targets is None and self.classes:
            targets = torch.tensor(self.classes, device=probabilities.device).expand(n, -1)
        elif targets is None:
            targets = ranked.indices[:, : self.top_k or 1]
        shown = [
            [
                Prediction(int(index), self.model.label(int(index)), float(p))
                for p, index in zip(
                    ranked.values[i, :SHOWN_PREDICTIONS], ranked.indices[i, :SHOWN_PREDICTIONS]
                )
            ]
            for i in range(n)
        ]
        return targets, shown

    def _boxes(
        self, outcome: Any, input_hw: tuple[int, int], sizes: list[tuple[int, int]]
    ) -> tuple[torch.Tensor, torch.Tensor, list[list[Prediction]]]:
        """A detector's (N, columns) box ranks to explain, which of them are boxes, and each
        image's explained boxes as predictions (boxes in its photo's pixels)."""
        boxes = detected_boxes(outcome, input_hw, sizes)
        targets, keep = chosen_boxes(outcome, self.min_score, self.classes, self.top_k)
        shown = [
            self._detections(outcome, boxes, i, keep[i], targets[i]) for i in range(len(targets))
        ]
        return targets, keep, shown

    def _detections(
        self, outcome: Any, boxes: torch.Tensor, i: int, keep: torch.Tensor, ranks: torch.Tensor
    ) -> list[Prediction]:
        """Image ``i``'s explained boxes, best first, as predictions with their boxes."""
        return [
            Prediction(
                int(outcome.labels[i, rank]),
                self.model.label(int(outcome.labels[i, rank])),
                float(outcome.shown[i, rank]),
                box=tuple(float(value) for value in boxes[i, rank]),
            )
            for rank in ranks[keep].tolist()
        ]


def _has_global_attention(model: LoadedModel) -> bool:
    """Whether the attention methods can read this model's self-attention."""
    try:
        model.trace.attention_prefix()
    except UsageError:
        return False
    return True
