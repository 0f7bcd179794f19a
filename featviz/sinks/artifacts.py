"""What a job produces for one image, before anything is written: pictures, raw arrays, metadata.

A job (maps.MapsJob, cam_job.CamJob, filters) renders each image's results once into an
``ImageOutputs``; every sink (featviz.sinks: the file layout, TensorBoard, the gallery) reads
the same pixels, so a PNG on disk and its TensorBoard image are the same picture.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from featviz.cached import cached

if TYPE_CHECKING:
    import numpy as np

    from featviz.explainer.predictions import Prediction
    from featviz.inputs.discover import ImageSource

Command = Literal["maps", "cam", "filters", "compare", "score", "sanity", "dream", "top"]
Kind = Literal[
    "grid",  # maps
    "overlay",  # cam
    "heatmap",
    "raw",
    "kernels",  # filters
    "kernels-all-inputs",
    "panel",  # compare and sanity: one labelled picture per image
    "table",  # score and sanity: the run's rows as CSV (``text``)
    "curves",  # score and sanity: the run's plot
    "dream",  # dream: one optimised image
    "dream-grid",  # dream: all of a run's images, labelled
    "ranking",  # top: a layer's channels' best images (``text``, JSON)
    "partial",  # top --shard: a shard's ranking (``target``: shard-K-of-N)
    "examples",  # top: one channel's best images (``target``: the channel, 0037)
    "overview",  # top: every channel's best image
]


@dataclass(frozen=True)
class Artifact:
    """One output: a picture (``pixels``, uint8 (H, W) grey or (H, W, 3) RGB; a clip's
    animation (T, H, W) or (T, H, W, 3), each frame shown ``frame_ms`` milliseconds), raw
    arrays, or ``text`` (a CSV table).

    ``layer`` is the layer (``fused`` for a fusion of several, ``attention`` for the rollout
    methods); ``method`` and ``target`` (a class slug, ``281_tabby``, or ``all`` for a
    class-agnostic map) are set for CAM outputs; ``caption`` is how a person reads it
    ("tabby 0.87").
    """

    command: Command
    kind: Kind
    layer: str
    method: str = ""
    target: str = ""
    caption: str = ""
    pixels: np.ndarray | None = None
    arrays: dict[str, np.ndarray] | None = None
    text: str | None = None
    frame_ms: int = 100

    @property
    def animated(self) -> bool:
        """Whether the picture is a clip's frames: written as an animated WebP whatever
        ``--format`` asks (featviz.sinks.encode.encode_animation says why)."""
        return self.pixels is not None and self.pixels.ndim == 3 + (self.pixels.shape[-1] == 3)

    @cached
    def png(self) -> bytes:
        """The picture as PNG, encoded once for every sink that wants it (the file layout and
        TensorBoard store the same bytes)."""
        from featviz.sinks.encode import encode_png

        return encode_png(self.pixels)

    def encoded(self, image_format: str, quality: int) -> bytes:
        """The picture as ``png`` (the same bytes as ``png``), ``jpg`` or ``webp`` (Pillow:
        libjpeg-turbo, libwebp) at ``quality``; an animation as animated WebP."""
        if self.animated:
            from featviz.sinks.encode import encode_animation

            return encode_animation(self.pixels, self.frame_ms, quality)
        if image_format == "png":
            return self.png
        import io

        from PIL import Image

        buffer = io.BytesIO()
        if image_format == "jpg":
            # 4:4:4, no chroma subsampling: a colour map's hues are the point of the picture.
            Image.fromarray(self.pixels).save(buffer, "JPEG", quality=quality, subsampling=0)
        else:
            Image.fromarray(self.pixels).save(buffer, "WEBP", quality=quality)
        return buffer.getvalue()


# What a job's run outputs are made of: artifacts, or functions that make one, called on a
# writer thread (top draws its hundreds of sheets there, beside their encoding).
RunOutput = Artifact | Callable[[], Artifact]


@dataclass
class ImageOutputs:
    """Everything one input produced. ``source`` is None for outputs of the model itself
    (filters); ``original`` the decoded photo (H, W, 3) uint8 (a clip's (T, H, W, 3) frames);
    ``activations`` the tapped layers' (C, h, w) maps, filled only when a sink asks for them
    (TensorBoard histograms); ``note`` why there was nothing to explain (a detector found no
    box), kept in the image's record."""

    source: ImageSource | None
    model: str
    original: np.ndarray | None
    predictions: list[Prediction] = field(default_factory=list)
    artifacts: list[Artifact] = field(default_factory=list)
    activations: dict[str, np.ndarray] = field(default_factory=dict)
    note: str | None = None
