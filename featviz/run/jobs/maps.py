"""``featviz maps``: per-layer grids of a layer's channels, one PNG per image × layer; for a
video model's clip, an animated WebP of the grid over the layer's frames.

Each channel is min-max scaled on its own (a flat channel renders as zeros), channels are tiled
in a near-square grid, and small maps are enlarged with nearest-neighbour so every activation
stays a visible square. The forward runs under ``inference_mode`` and stops as soon as the
deepest tapped layer has produced its output. The grids go to the sinks (featviz.sinks).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from featviz.explainer.checks import model_failure, nan_or_infinite, not_finite
from featviz.inputs.loaded import LoadedImage
from featviz.layers.taps import LayerTaps
from featviz.run.jobs.base import ImageJob, failure
from featviz.sinks.artifacts import Artifact, ImageOutputs
from featviz.sinks.results import ImageResult

if TYPE_CHECKING:
    import numpy as np
    import torch

    from featviz.layers.layouts import Layout
    from featviz.run.plan import ChannelOrder, MapsRequest


def select_channels(maps: np.ndarray, max_channels: int, order: ChannelOrder) -> np.ndarray:
    """Indices of the channels to draw from (C, h, w) (a clip's (C, t, h, w)): the first K, or
    the K with the highest mean activation (descending)."""
    import numpy as np

    count = min(max_channels, maps.shape[0])
    if order == "activation":
        means = maps.mean(axis=tuple(range(1, maps.ndim)))
        return np.argsort(-means, kind="stable")[:count]
    return np.arange(count)


@dataclass(kw_only=True)
class MapsJob(ImageJob):
    request: MapsRequest
    layers: list[str]  # resolved module names, in execution order

    def __post_init__(self) -> None:
        from featviz.render.draw import colormap_lut

        self.lut = colormap_lut(self.request.cmap)  # an unknown name fails before any image

    def process(
        self, batch: list[LoadedImage], inputs: torch.Tensor
    ) -> list[Callable[[], ImageResult]]:
        import torch

        calls = self.model.trace.calls()
        taps = LayerTaps(self.model.module, self.layers, calls=calls, stop_early=True)
        try:
            with torch.inference_mode(), taps:
                taps.run(inputs)
        except RuntimeError as exc:
            raise model_failure(inputs, exc) from exc
        layouts = self.model.trace.layouts()
        outputs = {
            name: _channel_maps(layouts[name], taps.outputs[name].float(), inputs)
            for name in self.layers
        }
        if self.model.task is not None:  # a detector's maps: not over the padding it added
            outputs = {name: self.model.task.crop(values) for name, values in outputs.items()}
        broken: dict[int, str] = {}
        for name, values in outputs.items():
            for i in not_finite(values).nonzero().flatten().tolist():
                broken.setdefault(i, f"layer '{name}' has {nan_or_infinite(values[i])} activations")
        activations = {name: values.cpu().numpy() for name, values in outputs.items()}
        return [
            failure(item, broken[i])
            if i in broken
            else self._writer(item, {name: acts[i] for name, acts in activations.items()})
            for i, item in enumerate(batch)
        ]

    def _writer(self, item: LoadedImage, maps: dict[str, np.ndarray]):
        from featviz.render.draw import channel_grid, channel_grid_frames, is_grey

        grey = is_grey(self.lut)

        def write() -> ImageResult:
            artifacts = []
            for layer, layer_maps in maps.items():
                chosen = select_channels(layer_maps, self.request.max_channels, self.request.order)
                video = layer_maps.ndim == 4  # (C, t, h, w): a clip's frames
                draw = channel_grid_frames if video else channel_grid
                grid = draw(layer_maps[chosen], lut=self.lut, cell_size=self.request.cell_size)
                if grey:
                    grid = grid[..., 0]  # a grey PNG: a third of the bytes to encode and store
                # The layer's t frames span the clip's T: each shown T / t frames' time.
                frame_ms = round(item.frame_ms * len(item.original) / len(layer_maps[0]))
                shown = {"frame_ms": frame_ms} if video else {}
                artifacts.append(Artifact("maps", "grid", layer, pixels=grid, **shown))
                if self.request.save_raw:
                    artifacts.append(
                        Artifact("maps", "raw", layer, arrays={"activations": layer_maps})
                    )
            activations = maps if self.sinks.wants_activations else {}
            return self.deliver(
                ImageOutputs(
                    item.source, self.model.name, item.original, [], artifacts, activations
                )
            )

        return write


def _channel_maps(layout: Layout, output: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """A tapped output as (N, C, h, w) channel maps; a video layer's as (N, C, t, h, w)."""
    maps = layout.to_nchw(output, tuple(inputs.shape[-2:]))
    frames = layout.frames(tuple(output.shape))
    return maps if frames == 1 else maps.unflatten(2, (frames, -1))
