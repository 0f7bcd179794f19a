"""``featviz cam``: class-activation maps for each image × method × layer × target.

One forward per batch with the layers tapped in gradient mode; every method and target reuses
it (gradient methods share one backward per target, scorecam/ablationcam score all classes in one
set of extra forwards). Maps are upsampled bilinearly from the layer's resolution straight onto
the ORIGINAL image: preprocessing never crops, so the layer's grid covers the whole photo.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from featviz.artifacts import Artifact, ImageOutputs
from featviz.cam.registry import ATTENTION
from featviz.errors import InputError, first_line
from featviz.jobs import ImageJob, failure, model_failure, nan_or_infinite, not_finite
from featviz.output import class_slug
from featviz.pipeline import ImageResult, LoadedImage, Prediction

if TYPE_CHECKING:
    import numpy as np
    import torch

    from featviz.requests import CamRequest

FUSED = "fused"
ANY_CLASS = "all"  # file name of a class-agnostic method's map (eigencam)
SHOWN_PREDICTIONS = 5


@dataclass
class _Map:
    """One map of one image: where it goes and its values at layer resolution (h, w)."""

    method: str
    layer: str
    target: str  # the class slug, ``281_tabby``, or ``all`` (class-agnostic)
    caption: str  # "tabby 0.87"
    layer_cam: torch.Tensor | None  # None for a fused map, which has no single layer


def _compute(method: Any, context: Any, layer: str, targets: torch.Tensor) -> torch.Tensor:
    """One method's (N, h, w) maps on the CPU; a failure of the extra forwards that scorecam and
    ablationcam run fails this batch's images, not the whole run."""
    try:
        return method.compute(context, layer, targets).detach().float().cpu()
    except RuntimeError as exc:
        raise InputError(
            f"{method.name} at layer '{layer}' failed on this input: {first_line(exc)}"
        ) from exc


@dataclass(kw_only=True)
class CamJob(ImageJob):
    request: CamRequest
    layers: list[str]  # resolved module names, in execution order
    targets: list[int]  # resolved class indices; empty → the top-k predictions

    def __post_init__(self) -> None:
        from featviz.cam import load_method
        from featviz.render import colormap_lut

        self.lut = colormap_lut(self.request.cmap)  # an unknown name fails before any image
        self.methods = [
            load_method(name, batch_size=self.request.cam_batch_size)
            for name in self.request.methods
        ]
        self.attention = any(method.info.needs_attention for method in self.methods)
        # The layers are tapped only for methods that read them (not for rollouts alone).
        self.tapped = [] if all(m.info.needs_attention for m in self.methods) else self.layers
        # Attention methods on a model without readable global attention: refused now.
        self.token_prefix = self.model.trace.attention_prefix() if self.attention else 0
        self.class_token = (
            bool(self.token_prefix) if self.model.class_token is None else self.model.class_token
        )

    def _layers_of(self, method: Any) -> list[str]:
        return [ATTENTION] if method.info.needs_attention else self.layers

    def process(self, batch: list[LoadedImage]) -> list[Callable[[], ImageResult]]:
        import torch

        from featviz.cam import forward_for_cam

        inputs = self.model.batch([item.tensor for item in batch])
        try:
            trace = self.model.trace
            context = forward_for_cam(
                self.model.module,
                inputs,
                self.tapped,
                trace.calls(),
                layouts=trace.layouts(),
                gradients=any(method.info.needs_gradients for method in self.methods),
                attention=self.attention,
                token_prefix=self.token_prefix,
                class_token=self.class_token,
            )
        except RuntimeError as exc:
            raise model_failure(inputs, exc) from exc
        scores = context.logits.detach().float()
        broken = {
            i: f"the model's scores are {nan_or_infinite(scores[i])}: there is nothing to explain"
            for i in not_finite(scores).nonzero().flatten().tolist()
        }
        if bool((scores.amax(dim=1) == scores.amin(dim=1)).any()):
            warnings.warn(
                "the model gives every class the same score on some images (a zero-initialised "
                "head, as torchvision's ViTs have with --weights none?): their maps are zeros",
                stacklevel=1,
            )
        probabilities = scores.softmax(dim=1)
        # One ranking for the targets and the predictions shown: ties break the same way.
        ranked = probabilities.topk(
            min(max(SHOWN_PREDICTIONS, self.request.top_k), probabilities.shape[1]), dim=1
        )
        if self.targets:
            targets = torch.tensor(self.targets, device=inputs.device).expand(len(batch), -1)
        else:
            targets = ranked.indices[:, : self.request.top_k]

        per_image: list[list[_Map]] = [[] for _ in batch]
        for method in self.methods:
            class_specific = method.info.class_specific
            for column in range(targets.shape[1] if class_specific else 1):
                for layer in self._layers_of(method):
                    maps = _compute(method, context, layer, targets[:, column])
                    for i in not_finite(maps).nonzero().flatten().tolist():
                        broken.setdefault(
                            i,
                            f"{method.name}'s map at layer '{layer}' is {nan_or_infinite(maps[i])}",
                        )
                    for i in range(len(batch)):
                        index = int(targets[i, column])
                        if class_specific:
                            target = class_slug(index, self.model.category(index))
                            caption = f"{self.model.label(index)} {probabilities[i, index]:.2f}"
                        else:
                            target, caption = ANY_CLASS, "all classes"
                        per_image[i].append(_Map(method.name, layer, target, caption, maps[i]))
        layer_maps = {
            layer: context.activation(layer).cpu().numpy()
            for layer in (self.tapped if self.sinks.wants_activations else [])
        }
        tasks = []
        for i, item in enumerate(batch):
            if i in broken:
                tasks.append(failure(item, broken[i]))
                continue
            predictions = [
                Prediction(int(index), self.model.label(int(index)), float(p))
                for p, index in zip(
                    ranked.values[i, :SHOWN_PREDICTIONS], ranked.indices[i, :SHOWN_PREDICTIONS]
                )
            ]
            activations = {layer: values[i] for layer, values in layer_maps.items()}
            tasks.append(self._writer(item, per_image[i], predictions, activations))
        return tasks

    def _writer(
        self,
        item: LoadedImage,
        maps: list[_Map],
        predictions: list[Prediction],
        activations: dict[str, np.ndarray],
    ):
        def write() -> ImageResult:
            from featviz.cam import fuse, heatmap

            size = item.original.shape[:2]
            artifacts: list[Artifact] = []
            by_class: dict[tuple[str, str, str], list[torch.Tensor]] = {}
            for entry in maps:
                values = heatmap(entry.layer_cam, size)
                artifacts += self._artifacts(item, entry, values)
                if self.request.fuse:
                    key = (entry.method, entry.target, entry.caption)
                    by_class.setdefault(key, []).append(values)
            for (method, target, caption), heatmaps in by_class.items():
                fused = _Map(method, FUSED, target, caption, None)
                artifacts += self._artifacts(item, fused, fuse(heatmaps))
            return self.deliver(
                ImageOutputs(
                    item.source, self.model.name, item.original, predictions, artifacts, activations
                )
            )

        return write

    def _artifacts(self, item: LoadedImage, entry: _Map, heatmap: torch.Tensor) -> list[Artifact]:
        from featviz.render import apply_colormap, overlay

        values = heatmap.numpy()
        where = {
            "layer": entry.layer,
            "method": entry.method,
            "target": entry.target,
            "caption": entry.caption,
        }
        pixels = overlay(item.original, values, lut=self.lut, alpha=self.request.alpha)
        artifacts = [Artifact("cam", "overlay", pixels=pixels, **where)]
        if self.request.heatmap:
            artifacts.append(
                Artifact("cam", "heatmap", pixels=apply_colormap(values, self.lut), **where)
            )
        if self.request.save_raw:
            arrays = {"heatmap": values.astype("float32")}
            if entry.layer_cam is not None:
                arrays["layer_cam"] = entry.layer_cam.numpy().astype("float32")
            artifacts.append(Artifact("cam", "raw", arrays=arrays, **where))
        return artifacts
