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

from featviz.cam.registry import ATTENTION
from featviz.errors import InputError, first_line
from featviz.jobs import ImageJob, failure, model_failure, nan_or_infinite, not_finite
from featviz.output import class_slug, encode_npz, encode_png, write_atomic
from featviz.pipeline import ImageResult, LoadedImage, Prediction

if TYPE_CHECKING:
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
    target: str
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
                        target = (
                            class_slug(index, self.model.category(index))
                            if class_specific
                            else ANY_CLASS
                        )
                        per_image[i].append(_Map(method.name, layer, target, maps[i]))
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
            tasks.append(self._writer(item, per_image[i], predictions))
        return tasks

    def _writer(self, item: LoadedImage, maps: list[_Map], predictions: list[Prediction]):
        def write() -> ImageResult:
            from featviz.cam import fuse, heatmap

            size = item.original.shape[:2]
            result = ImageResult(item.source, predictions=predictions)
            by_class: dict[tuple[str, str], list[torch.Tensor]] = {}
            for entry in maps:
                values = heatmap(entry.layer_cam, size)
                self._write_map(item, entry, values, result)
                if self.request.fuse:
                    by_class.setdefault((entry.method, entry.target), []).append(values)
            for (method, target), heatmaps in by_class.items():
                self._write_map(item, _Map(method, FUSED, target, None), fuse(heatmaps), result)
            return self.finish(result)

        return write

    def _write_map(
        self, item: LoadedImage, entry: _Map, heatmap: torch.Tensor, result: ImageResult
    ) -> None:
        from featviz.render import apply_colormap, overlay

        values = heatmap.numpy()
        files = self.layout.cam_files(item.source.relative, entry.method, entry.layer, entry.target)
        outputs = [
            (
                files.overlay,
                lambda: encode_png(
                    overlay(item.original, values, lut=self.lut, alpha=self.request.alpha)
                ),
            )
        ]
        if self.request.heatmap:
            outputs.append((files.heatmap, lambda: encode_png(apply_colormap(values, self.lut))))
        if self.request.save_raw:
            arrays = {"heatmap": values.astype("float32")}
            if entry.layer_cam is not None:
                arrays["layer_cam"] = entry.layer_cam.numpy().astype("float32")
            outputs.append((files.raw, lambda: encode_npz(arrays)))
        for path, encode in outputs:
            write_atomic(path, encode())
            result.outputs.append(str(path))
