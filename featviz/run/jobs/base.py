"""What every per-image command shares: loading an input, skipping finished ones, records."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from featviz.errors import InputError
from featviz.inputs.loaded import LoadedImage
from featviz.sinks.results import ImageResult

if TYPE_CHECKING:
    from featviz.inputs.discover import ImageSource
    from featviz.model.load import LoadedModel
    from featviz.sinks import Sinks
    from featviz.sinks.artifacts import Artifact, ImageOutputs


def failure(item: LoadedImage, reason: str) -> Callable[[], ImageResult]:
    """The write task of an image that failed in the model's thread: it writes nothing."""
    return lambda: ImageResult(item.source, error=f"{item.source.display}: {reason}")


@dataclass(kw_only=True)
class ImageJob:
    """Base for maps.MapsJob and cam_job.CamJob (see pipeline.Job): loading an input, and
    handing each image's rendered outputs to the sinks (which also know the finished ones)."""

    model: LoadedModel
    sinks: Sinks
    max_pixels: int
    skip_existing: bool

    def finished(self, source: ImageSource) -> ImageResult | None:
        return self.sinks.finished(source) if self.skip_existing else None

    def load(self, source: ImageSource) -> LoadedImage:
        import numpy as np

        from featviz.inputs.decode import decode
        from featviz.inputs.preprocess import normalise, resized

        if source.problem is not None:  # an input argument that gave no image
            raise InputError(f"{source.display}: {source.problem}")
        image = decode(source.path, max_pixels=self.max_pixels)
        pixels = resized(image, self.model.preprocessing)
        if self.model.device.type == "cuda":
            # Bytes, page-locked: the batch's copy to the GPU is one DMA of a quarter of the
            # floats' size, which need not wait, and the GPU normalises them.
            pixels = pixels.pin_memory()
        else:
            # Here, in the decode threads, beside the model's work rather than before it.
            pixels = normalise(pixels, self.model.preprocessing)
        return LoadedImage(source, np.asarray(image), pixels)

    def deliver(
        self, outputs: ImageOutputs, rows: list[dict[str, Any]] | None = None
    ) -> ImageResult:
        return self.sinks.write(outputs, rows)

    def run_outputs(self, results: list[dict[str, Any]]) -> list[Artifact]:
        """What the whole run produced besides each image's outputs (score's table and plot),
        from every image's result (``ImageResult.as_dict``); written when the run ends."""
        return []

    def report(self, results: list[dict[str, Any]]) -> str | None:
        """A table for the terminal once the run ends (score's summary), or None."""
        return None


def run_rows(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every row of a score or sanity run's images (as the manifest keeps them), each naming
    its input: what score.csv, sanity.csv and the closing tables are made of."""
    return [{"input": r["input"], **row} for r in results for row in r.get("rows", [])]
