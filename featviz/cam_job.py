"""``featviz cam``: class-activation maps for each image × method × layer × target.

The maps come from one forward per batch (featviz.explain); each is upsampled bilinearly from
the layer's resolution straight onto the ORIGINAL image (preprocessing never crops, so the
layer's grid covers the whole photo), colour-mapped and blended, and handed to the sinks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from featviz.artifacts import Artifact, ImageOutputs
from featviz.explain import ExplainedMap, ExplainingJob
from featviz.jobs import failure
from featviz.pipeline import ImageResult, LoadedImage, Prediction

if TYPE_CHECKING:
    import numpy as np
    import torch

    from featviz.requests import CamRequest

FUSED = "fused"


@dataclass(kw_only=True)
class CamJob(ExplainingJob):
    request: CamRequest

    def __post_init__(self) -> None:
        from featviz.render import colormap_lut

        self.lut = colormap_lut(self.request.cmap)  # an unknown name fails before any image
        super().__post_init__()

    def process(self, batch: list[LoadedImage]) -> list[Callable[[], ImageResult]]:
        inputs = self.model.batch([item.tensor for item in batch])
        explained = self.explainer.explain(
            inputs, sizes=[item.original.shape[:2] for item in batch]
        )
        tapped = self.explainer.tapped if self.sinks.wants_activations else []
        layer_maps = {layer: explained.context.activation(layer).cpu().numpy() for layer in tapped}
        tasks = []
        for i, item in enumerate(batch):
            if i in explained.broken:
                tasks.append(failure(item, explained.broken[i]))
                continue
            activations = {layer: values[i] for layer, values in layer_maps.items()}
            tasks.append(
                self._writer(item, explained.maps[i], explained.predictions[i], activations)
            )
        return tasks

    def _writer(
        self,
        item: LoadedImage,
        maps: list[ExplainedMap],
        predictions: list[Prediction],
        activations: dict[str, np.ndarray],
    ):
        def write() -> ImageResult:
            from featviz.cam import fuse, heatmap

            size = item.original.shape[:2]
            artifacts: list[Artifact] = []
            by_target: dict[tuple[str, str], list[ExplainedMap]] = {}
            heatmaps: dict[int, torch.Tensor] = {}
            for entry in maps:
                values = heatmaps[id(entry)] = heatmap(entry.layer_cam, size)
                artifacts += self._artifacts(item, entry, values)
                if self.request.fuse:
                    by_target.setdefault((entry.method, entry.target), []).append(entry)
            for entries in by_target.values():
                fused = replace(entries[0], layer=FUSED, layer_cam=None)
                artifacts += self._artifacts(
                    item, fused, fuse([heatmaps[id(entry)] for entry in entries])
                )
            return self.deliver(
                ImageOutputs(
                    item.source, self.model.name, item.original, predictions, artifacts, activations
                )
            )

        return write

    def _artifacts(
        self, item: LoadedImage, entry: ExplainedMap, heatmap: torch.Tensor
    ) -> list[Artifact]:
        from featviz.render import apply_colormap, mark, overlay

        values = heatmap.numpy()
        where = {
            "layer": entry.layer,
            "method": entry.method,
            "target": entry.target,
            "caption": entry.caption,
        }
        pixels = overlay(item.original, values, lut=self.lut, alpha=self.request.alpha)
        mark(pixels, entry.region, entry.boxes, entry.caption)
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
