"""``featviz cam``: class-activation maps for each image × method × layer × target.

The maps come from one forward per batch (featviz.explainer.batch); each is upsampled bilinearly
from the layer's resolution straight onto the ORIGINAL image (preprocessing never crops, so the
layer's grid covers the whole photo), colour-mapped and blended, and handed to the sinks. A video
clip's map is upsampled to every one of its frames, and its pictures are animations.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from featviz.explainer.maps import ExplainedMap
from featviz.inputs.loaded import LoadedImage
from featviz.run.jobs.base import failure
from featviz.run.jobs.explaining import ExplainingJob
from featviz.sinks.artifacts import Artifact, ImageOutputs
from featviz.sinks.results import ImageResult

if TYPE_CHECKING:
    import numpy as np
    import torch

    from featviz.run.plan import CamRequest

FUSED = "fused"


@dataclass(kw_only=True)
class CamJob(ExplainingJob):
    request: CamRequest

    def __post_init__(self) -> None:
        from featviz.render.device import DeviceBlend, renders_on
        from featviz.render.draw import colormap_lut

        self.lut = colormap_lut(self.request.cmap)  # an unknown name fails before any image
        super().__post_init__()
        device = self.model.device
        self.blend = (
            DeviceBlend(self.lut, self.request.alpha, device) if renders_on(device) else None
        )

    def process(
        self, batch: list[LoadedImage], inputs: torch.Tensor
    ) -> list[Callable[[], ImageResult]]:
        explained = self.explainer.explain(
            inputs,
            sizes=[item.original.shape[:2] for item in batch],
            ids=[item.source.index for item in batch],
        )
        tapped = self.explainer.tapped if self.sinks.wants_activations else []
        layer_maps = {layer: explained.context.activation(layer).cpu().numpy() for layer in tapped}
        tasks = []
        for i, item in enumerate(batch):
            if i in explained.broken:
                tasks.append(failure(item, explained.broken[i]))
                continue
            activations = {layer: values[i] for layer, values in layer_maps.items()}
            # On a GPU the overlays are made here, where the maps are; on a CPU in the writer.
            pictures = self._on_device(item, explained.maps[i]) if self.blend else None
            outputs = ImageOutputs(
                item.source,
                self.model.name,
                item.original,
                explained.predictions[i],
                activations=activations,
                note=explained.notes.get(i),
            )
            tasks.append(self._writer(item, explained.maps[i], outputs, pictures))
        return tasks

    def _writer(
        self,
        item: LoadedImage,
        maps: list[ExplainedMap],
        outputs: ImageOutputs,
        pictures: list[Picture] | None,
    ):
        """The task that draws the image's maps (unless ``pictures`` were made on the device)
        and delivers them with ``outputs``, which holds everything else the image gave."""

        def write() -> ImageResult:
            from featviz.render.draw import overlay

            def blend(values: torch.Tensor) -> np.ndarray:
                return overlay(
                    item.original, values.numpy(), lut=self.lut, alpha=self.request.alpha
                )

            made = pictures if pictures is not None else self._pictures(item, maps, blend)
            artifacts = [a for picture in made for a in self._artifacts(picture, item.frame_ms)]
            return self.deliver(replace(outputs, artifacts=artifacts))

        return write

    def _on_device(self, item: LoadedImage, maps: list[ExplainedMap]) -> list[Picture]:
        """``_pictures`` on the model's device; the heatmaps come back only when asked for."""
        import torch

        # A copy (torch.tensor): a decoded photo's array is read-only, which from_numpy warns of.
        image = torch.tensor(item.original, device=self.blend.device)
        kept = self.request.heatmap or self.request.save_raw
        return [
            replace(picture, heatmap=picture.heatmap.cpu() if kept else None)
            for picture in self._pictures(
                item,
                maps,
                lambda values: self.blend.overlay(image, values).cpu().numpy(),
                device=self.blend.device,
            )
        ]

    def _pictures(
        self,
        item: LoadedImage,
        maps: list[ExplainedMap],
        blend: Callable[[torch.Tensor], np.ndarray],
        device: torch.device | None = None,
    ) -> list[Picture]:
        """Each map's heatmap over the original photo (upsampled on ``device``, default the
        CPU) and its overlay by ``blend``, then one fusion of layers per method and target
        with ``--fuse``."""
        from featviz.cam import fuse, heatmap
        from featviz.render.draw import mark

        size = item.original.shape[:-1]  # (H, W), or a clip's (T, H, W)
        made: list[Picture] = []
        by_target: dict[tuple[str, str], list[Picture]] = {}
        for entry in maps:
            layer_cam = entry.shown if device is None else entry.shown.to(device)
            values = heatmap(layer_cam, size)
            made.append(Picture(entry, values, blend(values)))
            if self.request.fuse:
                by_target.setdefault((entry.method, entry.target), []).append(made[-1])
        for layers in by_target.values():
            values = fuse([picture.heatmap for picture in layers])
            fused = replace(layers[0].entry, layer=FUSED, layer_cam=None)
            made.append(Picture(fused, values, blend(values)))
        for picture in made:
            entry = picture.entry
            mark(picture.pixels, entry.region, entry.boxes, entry.caption)
        return made

    def _artifacts(self, picture: Picture, frame_ms: int) -> list[Artifact]:
        """``frame_ms``: a clip's time per frame, which its animations play at."""
        from featviz.render.draw import apply_colormap

        entry = picture.entry
        where = {
            "layer": entry.layer,
            "method": entry.method,
            "target": entry.target,
            "caption": entry.caption,
            "frame_ms": frame_ms,
        }
        artifacts = [Artifact("cam", "overlay", pixels=picture.pixels, **where)]
        if self.request.heatmap:
            values = picture.heatmap.numpy()
            artifacts.append(
                Artifact("cam", "heatmap", pixels=apply_colormap(values, self.lut), **where)
            )
        if self.request.save_raw:
            arrays = {"heatmap": picture.heatmap.numpy().astype("float32")}
            if entry.layer_cam is not None:
                arrays["layer_cam"] = entry.layer_cam.numpy().astype("float32")
            artifacts.append(Artifact("cam", "raw", arrays=arrays, **where))
        return artifacts


@dataclass
class Picture:
    """One map drawn over its photo: the (H, W) heatmap in [0, 1] (None when it stayed on
    the GPU, unasked for) and the overlay's (H, W, 3) uint8 pixels, marked; a clip's
    (T, H, W) and (T, H, W, 3)."""

    entry: ExplainedMap
    heatmap: torch.Tensor | None
    pixels: np.ndarray
