"""Where results go: each image's rendered outputs (featviz.sinks.artifacts) are handed to sinks.

The file layout (``files.py``) is always on: it writes PNG/NPY/NPZ files, the per-image records
that ``--skip-existing`` and the gallery read, and the run's manifest. ``--tensorboard DIR``
adds TensorBoard event files (``tensorboard.py``); the gallery (``gallery.py``, on unless
``--no-gallery``) writes thumbnails as images complete and ``index.html`` when the run ends.
``open`` creates what a sink writes into, once every option has been checked; ``write`` runs
on the pipeline's writer threads, off the model's thread; ``close`` once, on the main thread,
at the end of every run (interrupted and failed ones too). A new sink is one module with
``open``, ``write`` and ``close``, and one line in ``sinks_for``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from pathlib import Path

    from featviz.inputs.discover import ImageSource
    from featviz.sinks.artifacts import ImageOutputs
    from featviz.sinks.files import FileSink
    from featviz.sinks.manifest import RunTally
    from featviz.sinks.options import OutputRequest
    from featviz.sinks.results import ImageResult
    from featviz.sinks.variants import Variant


@dataclass(frozen=True)
class RunEnd:
    """What the sinks are told when a run ends: the tally so far, whether it was cut, and the
    files the run as a whole wrote (score's and sanity's table and plot)."""

    tally: RunTally
    interrupted: bool
    outputs: list[str] = field(default_factory=list)


class Sink(Protocol):
    wants_activations: bool  # whether ImageOutputs.activations should be filled for it

    def open(self) -> None: ...

    def write(self, outputs: ImageOutputs) -> None: ...

    def close(self, end: RunEnd) -> None: ...


class Sinks:
    """The file layout plus the other sinks, fed together."""

    def __init__(self, files: FileSink, others: list[Sink]) -> None:
        self.files = files
        self.others = others
        self.wants_activations = any(sink.wants_activations for sink in others)

    def open(self) -> None:
        self.files.open()
        for sink in self.others:
            sink.open()

    def finished(self, source: ImageSource) -> ImageResult | None:
        return self.files.finished(source)

    def write(self, outputs: ImageOutputs, rows: list[dict[str, Any]] | None = None) -> ImageResult:
        """Every sink writes the image's outputs; its record comes last (its presence means
        everything it lists is complete). ``rows``: score's and sanity's numbers."""
        from featviz.sinks.results import ImageResult

        written = self.files.write(outputs)
        for sink in self.others:
            sink.write(outputs)
        result = ImageResult(
            outputs.source,
            outputs=[str(path) for path, _ in written],
            predictions=outputs.predictions,
            rows=rows or [],
            note=outputs.note,
        )
        if outputs.source is not None:
            self.files.record(result, written)
        return result

    def close(self, end: RunEnd) -> Path:
        """Close every sink; returns the manifest written."""
        manifest = self.files.close(end)
        for sink in self.others:
            sink.close(end)
        return manifest


def sinks_for(
    output: OutputRequest,
    *,
    command: str,
    fingerprint: str,
    variant: Variant,
    record: Callable[[], dict[str, Any]],
) -> Sinks:
    """The sinks ``output`` asks for, checked (a missing tensorboard package is a usage error)
    but not opened: nothing is written before ``Sinks.open``.

    ``variant``: the model and settings the pictures depend on (featviz.sinks.variants: their
    folder); ``record``: what the manifest says about the run besides its images, asked when
    the manifest is written (what the run found out meanwhile included).
    """
    from featviz.sinks.files import FileSink
    from featviz.sinks.layout import OutputLayout

    layout = OutputLayout(output.out, output.image_format)
    others: list[Sink] = []
    if output.tensorboard is not None:
        from featviz.sinks.tensorboard import TensorBoardSink

        others.append(TensorBoardSink(output.tensorboard))
    if output.gallery:
        from featviz.sinks.gallery import GallerySink

        others.append(GallerySink(layout))
    return Sinks(FileSink(layout, command, fingerprint, variant, record, output.quality), others)
