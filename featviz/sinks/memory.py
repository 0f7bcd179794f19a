"""A sink that keeps each image's outputs in memory: what the library returns instead of files.

A job writes to it exactly as to the file layout (featviz.sinks.Sinks): the same pictures,
arrays and rows, kept by each input's position in the run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from featviz.sinks.results import ImageResult

if TYPE_CHECKING:
    from featviz.inputs.discover import ImageSource
    from featviz.sinks.artifacts import ImageOutputs


class MemorySinks:
    """``outputs[index]`` and ``rows[index]``: the ImageOutputs and the rows (score, sanity)
    of the input at that position in the run."""

    wants_activations = False

    def __init__(self) -> None:
        self.outputs: dict[int, ImageOutputs] = {}
        self.rows: dict[int, list[dict[str, Any]]] = {}

    def finished(self, source: ImageSource) -> ImageResult | None:
        return None  # nothing is kept between calls: every image is done afresh

    def write(self, outputs: ImageOutputs, rows: list[dict[str, Any]] | None = None) -> ImageResult:
        if outputs.source is not None:
            self.outputs[outputs.source.index] = outputs
            self.rows[outputs.source.index] = rows or []
        return ImageResult(outputs.source, predictions=outputs.predictions, rows=rows or [])
