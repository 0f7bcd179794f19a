"""What every per-image command shares: loading an input, skipping finished ones, records."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from featviz.errors import InputError
from featviz.output import OutputLayout, encode_json, finished_record, write_atomic
from featviz.pipeline import ImageResult, LoadedImage, Prediction

if TYPE_CHECKING:
    import torch

    from featviz.images import ImageSource
    from featviz.models import LoadedModel
    from featviz.preprocess import ResizeMode


def model_failure(inputs: torch.Tensor, error: RuntimeError) -> InputError:
    """The model rejected a batch (too small for its pooling, out of memory…): its images fail
    with this one line, and the run goes on."""
    height, width = inputs.shape[-2:]
    reason = str(error).splitlines()[0] if str(error) else type(error).__name__
    return InputError(
        f"the model cannot run on this input ({width}×{height} after resizing): {reason}"
    )


def fingerprint(options: dict[str, Any]) -> str:
    """A short stable hash of everything that changes an image's outputs."""
    text = json.dumps(options, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(kw_only=True)
class ImageJob:
    """Base for maps.MapsJob and cam_job.CamJob (see pipeline.Job)."""

    model: LoadedModel
    layout: OutputLayout
    command: str
    options_fingerprint: str
    resize: ResizeMode
    max_pixels: int
    skip_existing: bool

    def finished(self, source: ImageSource) -> ImageResult | None:
        if not self.skip_existing:
            return None
        record = finished_record(
            self.layout.record(source.relative, self.command), self.options_fingerprint
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
        tensor = to_tensor(
            image,
            input_size=self.model.input_size,
            resize=self.resize,
            mean=self.model.mean,
            std=self.model.std,
        )
        return LoadedImage(source, np.asarray(image), tensor)

    def finish(self, result: ImageResult) -> ImageResult:
        """Write the image's record last: its presence means every output above is complete."""
        record = {**result.as_dict(), "fingerprint": self.options_fingerprint}
        write_atomic(self.layout.record(result.source.relative, self.command), encode_json(record))
        return result
