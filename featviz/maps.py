"""``featviz maps``: per-layer grids of a layer's channels, one PNG per image × layer.

Each channel is min-max scaled on its own (a flat channel renders as zeros), channels are tiled
in a near-square grid, and small maps are enlarged with nearest-neighbour so every activation
stays a visible square. The forward runs under ``inference_mode`` and stops as soon as the
deepest tapped layer has produced its output.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from featviz.hooks import LayerTaps
from featviz.jobs import ImageJob, model_failure
from featviz.output import encode_npy, encode_png, write_atomic
from featviz.pipeline import ImageResult, LoadedImage

if TYPE_CHECKING:
    import numpy as np

ChannelOrder = Literal["index", "activation"]


@dataclass
class MapsOptions:
    layers: list[str]
    calls: dict[str, int]
    max_channels: int = 64
    order: ChannelOrder = "index"
    cmap: str = "gray"
    cell_size: int = 64
    save_raw: bool = False

    def __post_init__(self) -> None:
        from featviz.render import colormap_lut

        colormap_lut(self.cmap)  # an unknown name fails now, not once the first image is drawn


def select_channels(maps: np.ndarray, max_channels: int, order: ChannelOrder) -> np.ndarray:
    """Indices of the channels to draw from (C, h, w): the first K, or the K with the highest
    mean activation (descending)."""
    import numpy as np

    count = min(max_channels, maps.shape[0])
    if order == "activation":
        return np.argsort(-maps.mean(axis=(1, 2)), kind="stable")[:count]
    return np.arange(count)


@dataclass(kw_only=True)
class MapsJob(ImageJob):
    options: MapsOptions

    def process(self, batch: list[LoadedImage]) -> list[Callable[[], ImageResult]]:
        import torch

        from featviz.render import colormap_lut

        options = self.options
        lut = colormap_lut(options.cmap)
        inputs = self.model.batch([item.tensor for item in batch])
        taps = LayerTaps(self.model.module, options.layers, calls=options.calls, stop_early=True)
        try:
            with torch.inference_mode(), taps:
                taps.run(inputs)
        except RuntimeError as exc:
            raise model_failure(inputs, exc) from exc
        activations = {name: taps.outputs[name].float().cpu().numpy() for name in options.layers}
        return [
            self._writer(item, {name: acts[i] for name, acts in activations.items()}, lut)
            for i, item in enumerate(batch)
        ]

    def _writer(self, item: LoadedImage, maps: dict[str, np.ndarray], lut: np.ndarray):
        from featviz.render import channel_grid

        grey = bool((lut[:, 0] == lut[:, 1]).all() and (lut[:, 1] == lut[:, 2]).all())

        def write() -> ImageResult:
            result = ImageResult(item.source)
            for layer, layer_maps in maps.items():
                chosen = select_channels(layer_maps, self.options.max_channels, self.options.order)
                grid = channel_grid(layer_maps[chosen], lut=lut, cell_size=self.options.cell_size)
                if grey:
                    grid = grid[..., 0]  # a grey PNG: a third of the bytes to encode and store
                path = self.layout.maps_png(item.source.relative, layer)
                write_atomic(path, encode_png(grid))
                result.outputs.append(str(path))
                if self.options.save_raw:
                    raw = path.with_suffix(".npy")
                    write_atomic(raw, encode_npy(layer_maps))
                    result.outputs.append(str(raw))
            return self.finish(result)

        return write
