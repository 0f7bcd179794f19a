"""What every per-image command shares: loading an input, skipping finished ones, records."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from featviz.errors import InputError, first_line
from featviz.output import OutputLayout, encode_json, finished_record, write_atomic
from featviz.pipeline import ImageResult, LoadedImage, Prediction

if TYPE_CHECKING:
    import torch

    from featviz.images import ImageSource
    from featviz.models import LoadedModel


def model_failure(inputs: torch.Tensor, error: RuntimeError) -> InputError:
    """The model rejected a batch (too small for its pooling, out of memory…): its images fail
    with this one line, and the run goes on."""
    height, width = inputs.shape[-2:]
    return InputError(
        f"the model cannot run on this input ({width}×{height} after resizing): {first_line(error)}"
    )


def not_finite(values: torch.Tensor) -> torch.Tensor:
    """(N, …) → (N,) bool: which rows hold a NaN or an infinity."""
    import torch

    return ~torch.isfinite(values.flatten(1)).all(dim=1)


def nan_or_infinite(values: torch.Tensor) -> str:
    """How to name what is wrong with a row that is not finite."""
    import torch

    return "NaN" if bool(torch.isnan(values).any()) else "infinite"


def failure(item: LoadedImage, reason: str) -> Callable[[], ImageResult]:
    """The write task of an image that failed in the model's thread: it writes nothing."""
    return lambda: ImageResult(item.source, error=f"{item.source.display}: {reason}")


def fingerprint(settings: dict[str, Any]) -> str:
    """A short stable hash of everything that changes an image's outputs."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(kw_only=True)
class ImageJob:
    """Base for maps.MapsJob and cam_job.CamJob (see pipeline.Job).

    ``fingerprint`` hashes everything that decides an image's outputs (the model, its
    preprocessing, the resolved layers and classes, the command's options), so that
    ``--skip-existing`` skips only images done with the very same settings.
    """

    model: LoadedModel
    layout: OutputLayout
    command: str
    fingerprint: str
    max_pixels: int
    skip_existing: bool

    def finished(self, source: ImageSource) -> ImageResult | None:
        if not self.skip_existing:
            return None
        record = finished_record(
            self.layout.record(source.relative, self.command), self.fingerprint
        )
        if record is None:
            return None
        predictions = [Prediction(**p) for p in record.get("predictions", [])]
        return ImageResult(source, outputs=record["outputs"], predictions=predictions, skipped=True)

    def load(self, source: ImageSource) -> LoadedImage:
        import numpy as np

        from featviz.decode import decode
        from featviz.preprocess import to_tensor

        image = decode(source.path, max_pixels=self.max_pixels)
        return LoadedImage(source, np.asarray(image), to_tensor(image, self.model.preprocessing))

    def finish(self, result: ImageResult) -> ImageResult:
        """Write the image's record last: its presence means every output above is complete."""
        record = {**result.as_dict(), "fingerprint": self.fingerprint}
        write_atomic(self.layout.record(result.source.relative, self.command), encode_json(record))
        return result
