"""``featviz compare``: every method side by side, one labelled panel per image.

``<rel>/compare.png``: the original, then a grid of overlays: one row per method, one column per
layer × target (``-l``, ``-t`` / ``--top-k``); each cell titled with its method, layer, class and
probability; one colour bar for all (every map is scaled to [0, 1]). All the maps come from one
forward and, for the gradient methods, one backward per target (featviz.explainer.batch).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from featviz.explainer.maps import ExplainedMap
from featviz.explainer.predictions import Prediction
from featviz.inputs.loaded import LoadedImage
from featviz.run.jobs.base import failure
from featviz.run.jobs.explaining import ExplainingJob
from featviz.sinks.artifacts import Artifact, ImageOutputs
from featviz.sinks.results import ImageResult

if TYPE_CHECKING:
    import torch

    from featviz.render.figures import Cell
    from featviz.run.plan import CompareRequest


@dataclass(kw_only=True)
class CompareJob(ExplainingJob):
    request: CompareRequest

    def __post_init__(self) -> None:
        from featviz.render.draw import colormap_lut

        self.lut = colormap_lut(self.request.cmap)
        super().__post_init__()

    def process(
        self, batch: list[LoadedImage], inputs: torch.Tensor
    ) -> list[Callable[[], ImageResult]]:
        explained = self.explainer.explain(
            inputs,
            sizes=[item.original.shape[:2] for item in batch],
            ids=[item.source.index for item in batch],
        )
        return [
            failure(item, explained.broken[i])
            if i in explained.broken
            else self._writer(
                item, explained.maps[i], explained.predictions[i], explained.notes.get(i)
            )
            for i, item in enumerate(batch)
        ]

    def _writer(
        self,
        item: LoadedImage,
        maps: list[ExplainedMap],
        predictions: list[Prediction],
        note: str | None,
    ):
        def write() -> ImageResult:
            from featviz.render.figures import grid_panel

            outputs = ImageOutputs(
                item.source, self.model.name, item.original, predictions, note=note
            )
            rows = self._rows(item, maps)
            if not rows:
                return self.deliver(outputs)
            panel = grid_panel(
                item.original,
                rows,
                cmap=self.request.cmap,
                title=item.source.display,
                original_title="original: "
                + ", ".join(f"{p.label} {p.probability:.2f}" for p in predictions[:2]),
            )
            artifact = Artifact(
                "compare",
                "panel",
                "",
                caption="methods side by side",
                pixels=panel,
                frame_ms=item.frame_ms,
            )
            return self.deliver(replace(outputs, artifacts=[artifact]))

        return write

    def _rows(self, item: LoadedImage, maps: list[ExplainedMap]) -> list[list[Cell]]:
        """One row of overlays per method, one column per target (a detector's image has as
        many as boxes; a class-agnostic map repeats in each); no row for a class-specific
        method on a detector's image without a box."""
        from featviz.cam import heatmap
        from featviz.render.draw import mark, overlay
        from featviz.render.figures import Cell

        size = item.original.shape[:-1]  # (H, W), or a clip's (T, H, W)
        columns = max(
            (
                len(group)
                for method in self.explainer.methods
                for group in _by_layer([e for e in maps if e.method == method.name])
                if method.info.class_specific
            ),
            default=1,
        )
        rows = []
        for method in self.explainer.methods:
            cells = []
            for layer_maps in _by_layer([e for e in maps if e.method == method.name]):
                for column in range(columns):
                    entry = layer_maps[min(column, len(layer_maps) - 1)]
                    values = heatmap(entry.shown, size).numpy()
                    pixels = overlay(item.original, values, lut=self.lut, alpha=self.request.alpha)
                    mark(pixels, entry.region, entry.boxes, entry.caption)
                    cells.append(Cell(f"{entry.method} · {entry.layer}\n{entry.caption}", pixels))
            if cells:
                rows.append(cells)
        return rows


def _by_layer(maps: list[ExplainedMap]) -> list[list[ExplainedMap]]:
    """One method's maps grouped by layer, in the order computed (target columns inside)."""
    groups: dict[str, list[ExplainedMap]] = {}
    for entry in maps:
        groups.setdefault(entry.layer, []).append(entry)
    return list(groups.values())
