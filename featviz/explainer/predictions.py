"""A prediction shown beside a map: a class and its probability, or a detector's box."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class Prediction:
    """A class and its probability; for a detector, a box of that class and its score, with
    ``box`` x0 y0 x1 y1 in the original photo's pixels."""

    index: int
    label: str
    probability: float
    box: tuple[float, float, float, float] | None = None

    def as_dict(self) -> dict[str, Any]:
        described = {
            "index": self.index,
            "label": self.label,
            "probability": round(self.probability, 6),
        }
        if self.box is not None:
            described["box"] = [round(value, 1) for value in self.box]
        return described
