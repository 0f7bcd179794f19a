"""What happened to one input: its outputs, or why it failed, or that it was skipped."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from featviz.inputs.printable import printable

if TYPE_CHECKING:
    from featviz.inputs.discover import ImageSource
from featviz.explainer.predictions import Prediction


@dataclass
class ImageResult:
    """What happened to one input: its outputs, or why it failed, or that it was skipped."""

    source: ImageSource
    outputs: list[str] = field(default_factory=list)
    predictions: list[Prediction] = field(default_factory=list)
    error: str | None = None
    skipped: bool = False
    rows: list[dict[str, Any]] = field(default_factory=list)  # score and sanity: one per map
    note: str | None = None  # why there was nothing to explain (a detector found no box)

    def as_dict(self) -> dict[str, Any]:
        """The JSON form: paths printable like ``input`` (no bytes that are not UTF-8); the
        rows of score and sanity under ``rows``."""
        described = {
            "input": self.source.display,
            "outputs": [printable(path) for path in self.outputs],
            "predictions": [p.as_dict() for p in self.predictions],
            "error": self.error,
            "skipped": self.skipped,
        }
        if self.rows:
            described["rows"] = self.rows
        if self.note:
            described["note"] = self.note
        return described

    def json_lines(self) -> list[dict[str, Any]]:
        """What ``--json`` prints for this image: one object per row where it has rows (each
        naming its input), else its ``as_dict``."""
        if self.rows and not self.error:
            return [{"input": self.source.display, **row} for row in self.rows]
        return [self.as_dict()]
