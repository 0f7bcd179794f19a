"""What every per-image command shares: loading an input, skipping finished ones, records."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from featviz.inputs.loaded import LoadedImage
from featviz.sinks.results import ImageResult

if TYPE_CHECKING:
    import torch

    from featviz.inputs.discover import ImageSource
    from featviz.model.load import LoadedModel
    from featviz.sinks import Sinks
    from featviz.sinks.artifacts import ImageOutputs, RunOutput


def failure(item: LoadedImage, reason: str) -> Callable[[], ImageResult]:
    """The write task of an image that failed in the model's thread: it writes nothing."""
    return lambda: ImageResult(item.source, error=f"{item.source.display}: {reason}")


@dataclass(kw_only=True)
class ImageJob:
    """Base for maps.MapsJob and cam_job.CamJob (see pipeline.Job): loading an input, and
    handing each image's rendered outputs to the sinks (which also know the finished ones)."""

    model: LoadedModel
    sinks: Sinks  # or a featviz.sinks.memory.MemorySinks (the library)
    max_pixels: int | None  # None: the default limit
    skip_existing: bool

    def finished(self, source: ImageSource) -> ImageResult | None:
        return self.sinks.finished(source) if self.skip_existing else None

    def load(self, source: ImageSource) -> LoadedImage:
        from featviz.inputs.limits import DEFAULT_MAX_PIXELS
        from featviz.inputs.loaded import load_image

        limit = self.max_pixels or DEFAULT_MAX_PIXELS
        return load_image(source, self.model.preprocessing, self.model.device, limit)

    def assemble(self, batch: list[LoadedImage]) -> torch.Tensor:
        """The batch's input as the model takes it (see LoadedModel.batch)."""
        return self.model.batch([item.tensor for item in batch])

    def deliver(
        self, outputs: ImageOutputs, rows: list[dict[str, Any]] | None = None
    ) -> ImageResult:
        return self.sinks.write(outputs, rows)

    def run_outputs(self, results: list[dict[str, Any]]) -> Iterable[RunOutput]:
        """What the whole run produced besides each image's outputs (score's table and plot),
        from every image's result (``ImageResult.as_dict``); written when the run ends, each
        as soon as it comes (an iterator lets the first be written while the next is drawn)."""
        return []

    def take_partial(self) -> Any:
        """What the job gathered for the whole run since it was last asked, beside its images'
        results, handed over and forgotten here: a Ray actor's after each chunk (``top``'s
        rankings). None for a job whose run outputs come from the results alone."""
        return None

    def add_partial(self, partial: Any) -> None:
        """Merge another copy's ``take_partial`` into this job (the Ray driver's)."""

    def report(self, results: list[dict[str, Any]]) -> str | None:
        """A table for the terminal once the run ends (score's summary), or None."""
        return None


def run_rows(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every row of a score or sanity run's images (as the manifest keeps them), each naming
    its input: what score.csv, sanity.csv and the closing tables are made of."""
    return [{"input": r["input"], **row} for r in results for row in r.get("rows", [])]
