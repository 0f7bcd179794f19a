"""``featviz cam``: class-activation maps for each image × method × layer × target.

One forward per batch with the layers tapped in gradient mode; every method and target reuses
it (gradient methods share one backward per target, scorecam/ablationcam score all classes in one
set of extra forwards). Maps are upsampled bilinearly from the layer's resolution straight onto
the ORIGINAL image: preprocessing never crops, so the layer's grid covers the whole photo.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from featviz.errors import InputError
from featviz.jobs import ImageJob, model_failure
from featviz.output import class_slug, encode_npz, encode_png, write_atomic
from featviz.pipeline import ImageResult, LoadedImage, Prediction

if TYPE_CHECKING:
    import numpy as np
    import torch

FUSED = "fused"
ANY_CLASS = "all"  # file name of a class-agnostic method's map (eigencam)
SHOWN_PREDICTIONS = 5


@dataclass
class CamOptions:
    methods: list[str]
    layers: list[str]
    calls: dict[str, int]
    targets: list[int]  # explicit class indices; empty → the top-k predictions
    top_k: int = 1
    fuse: bool = False
    cmap: str = "jet"
    alpha: float = 0.5
    heatmap: bool = False
    save_raw: bool = False
    cam_batch_size: int = 32

    def __post_init__(self) -> None:
        from featviz.render import colormap_lut

        colormap_lut(self.cmap)  # an unknown name fails now, not once the first image is drawn


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
            f"{method.name} at layer '{layer}' failed on this input: {str(exc).splitlines()[0]}"
        ) from exc


@dataclass(kw_only=True)
class CamJob(ImageJob):
    options: CamOptions

    def __post_init__(self) -> None:
        from featviz.cam import load_method

        self.methods = [
            load_method(name, batch_size=self.options.cam_batch_size)
            for name in self.options.methods
        ]

    def process(self, batch: list[LoadedImage]) -> list[Callable[[], ImageResult]]:
        import torch

        from featviz.cam import forward_for_cam

        options = self.options
        inputs = self.model.batch([item.tensor for item in batch])
        try:
            context = forward_for_cam(self.model.module, inputs, options.layers, options.calls)
        except RuntimeError as exc:
            raise model_failure(inputs, exc) from exc
        probabilities = context.logits.detach().float().softmax(dim=1)
        if options.targets:
            targets = torch.tensor(options.targets, device=inputs.device).expand(len(batch), -1)
        else:
            targets = probabilities.topk(options.top_k, dim=1).indices

        per_image: list[list[_Map]] = [[] for _ in batch]
        for method in self.methods:
            columns = range(targets.shape[1]) if method.class_specific else range(1)
            for column in columns:
                for layer in options.layers:
                    maps = _compute(method, context, layer, targets[:, column])
                    for i in range(len(batch)):
                        target = (
                            self._class_name(int(targets[i, column]))
                            if method.class_specific
                            else ANY_CLASS
                        )
                        per_image[i].append(_Map(method.name, layer, target, maps[i]))
        shown = probabilities.topk(min(SHOWN_PREDICTIONS, probabilities.shape[1]), dim=1)
        tasks = []
        for i, item in enumerate(batch):
            predictions = [
                Prediction(int(index), self.model.label(int(index)), float(p))
                for p, index in zip(shown.values[i], shown.indices[i])
            ]
            tasks.append(self._writer(item, per_image[i], predictions))
        return tasks

    def _class_name(self, index: int) -> str:
        categories = self.model.categories
        return class_slug(
            index, categories[index] if categories and index < len(categories) else None
        )

    def _writer(self, item: LoadedImage, maps: list[_Map], predictions: list[Prediction]):
        def write() -> ImageResult:
            from featviz.cam import normalise, upsample
            from featviz.render import colormap_lut

            lut = colormap_lut(self.options.cmap)
            height, width = item.original.shape[:2]
            result = ImageResult(item.source, predictions=predictions)
            fused: dict[tuple[str, str], torch.Tensor] = {}
            for entry in maps:
                heatmap = normalise(upsample(entry.layer_cam[None], (height, width)))[0]
                self._write_map(item, entry, heatmap, lut, result)
                if self.options.fuse:
                    key = (entry.method, entry.target)
                    fused[key] = heatmap if key not in fused else fused[key].maximum(heatmap)
            for (method, target), heatmap in fused.items():
                self._write_map(item, _Map(method, FUSED, target, None), heatmap, lut, result)
            return self.finish(result)

        return write

    def _write_map(
        self,
        item: LoadedImage,
        entry: _Map,
        heatmap: torch.Tensor,
        lut: np.ndarray,
        result: ImageResult,
    ) -> None:
        from featviz.render import apply_colormap, overlay

        values = heatmap.numpy()
        stem = self.layout.cam_stem(item.source.relative, entry.method, entry.layer, entry.target)
        files = [
            (
                stem.with_name(stem.name + ".png"),
                lambda: encode_png(
                    overlay(item.original, values, lut=lut, alpha=self.options.alpha)
                ),
            )
        ]
        if self.options.heatmap:
            files.append(
                (
                    stem.with_name(stem.name + ".heatmap.png"),
                    lambda: encode_png(apply_colormap(values, lut)),
                )
            )
        if self.options.save_raw:
            arrays = {"heatmap": values.astype("float32")}
            if entry.layer_cam is not None:
                arrays["layer_cam"] = entry.layer_cam.numpy().astype("float32")
            files.append((stem.with_name(stem.name + ".npz"), lambda: encode_npz(arrays)))
        for path, encode in files:
            write_atomic(path, encode())
            result.outputs.append(str(path))
