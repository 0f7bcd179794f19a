"""``featviz.feature_maps``: a layer's activations for images, as arrays and as grids."""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from featviz.api.model import loaded_model
from featviz.api.running import images_only, in_memory, run_pipeline
from featviz.run.jobs.maps import MapsJob

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

    from featviz.inputs.loaded import LoadedImage
    from featviz.sinks.results import ImageResult


@dataclass(eq=False)
class FeatureMaps:
    """One image's activations: ``activations[layer]`` float32 (C, h, w) as the layer output
    them (token and channels-last layers laid out as maps), ``image`` the original (H, W, 3)
    uint8 pixels, ``input`` its path or ``image N``."""

    input: str
    image: np.ndarray
    activations: dict[str, np.ndarray]

    def grid(
        self,
        layer: str | None = None,
        *,
        max_channels: int = 64,
        order: str = "index",
        cmap: str = "gray",
        cell_size: int = 64,
    ) -> Image.Image:
        """The picture ``featviz maps`` writes for ``layer`` (default: the first): the first
        ``max_channels`` channels, or with ``order="activation"`` the strongest, each min-max
        scaled on its own, tiled near-square, small maps enlarged to ``cell_size`` pixels."""
        from PIL import Image

        from featviz.render.draw import channel_grid, colormap_lut
        from featviz.run.jobs.maps import select_channels

        values = self.activations[layer or next(iter(self.activations))]
        chosen = select_channels(values, max_channels, order)
        pixels = channel_grid(values[chosen], lut=colormap_lut(cmap), cell_size=cell_size)
        return Image.fromarray(pixels)

    def _repr_png_(self) -> bytes:
        buffer = io.BytesIO()
        self.grid().save(buffer, "PNG")
        return buffer.getvalue()


def feature_maps(
    model: Any,
    images: Any,
    *,
    layer: str | list[str] | None = None,
    batch_size: int | None = None,
) -> FeatureMaps | list[FeatureMaps]:
    """The activations of ``layer`` (names or globs; default: every Conv2d, as ``featviz
    maps``) for ``images`` (a path, PIL image, uint8 array or a list of them) by ``model``
    (``featviz.load``'s, a spec string or an ``nn.Module``). The forward stops at the deepest
    layer asked for. One image gives one ``FeatureMaps``, a list a list."""
    from featviz.layers.catalog import resolve_layers
    from featviz.run.plan import MapsRequest
    from featviz.run.resolve import default_map_layers

    loaded = loaded_model(model)
    images_only(loaded, "feature_maps")
    names = [layer] if isinstance(layer, str) else list(layer or ())
    layers = (
        resolve_layers(loaded.trace, names, spatial_only=True)
        if names
        else default_map_layers(loaded)
    )
    found, single = in_memory(images)
    collected: dict[int, FeatureMaps] = {}
    job = _ActivationsInMemory(
        model=loaded,
        sinks=None,
        max_pixels=None,
        skip_existing=False,
        request=MapsRequest(),
        layers=layers,
        collected=collected,
    )
    run_pipeline(loaded, job, found, batch_size, layers)
    maps = [collected[source.index] for source in found]
    return maps[0] if single else maps


@dataclass(kw_only=True)
class _ActivationsInMemory(MapsJob):
    """MapsJob's forward and checks; each image's activations kept, no grid drawn."""

    collected: dict[int, FeatureMaps]

    def _writer(self, item: LoadedImage, maps: dict[str, np.ndarray]) -> Callable[[], ImageResult]:
        from featviz.sinks.results import ImageResult

        def keep() -> ImageResult:
            activations = {name: values.astype("float32") for name, values in maps.items()}
            self.collected[item.source.index] = FeatureMaps(
                item.source.display, item.original, activations
            )
            return ImageResult(item.source)

        return keep
