"""TensorBoard event files (``--tensorboard DIR``), through ``torch.utils.tensorboard``.

Tags, each image at step = its position in the run (0, 1, 2… in input order; skipped images
keep their step):
- ``maps/<layer>``: the feature-map grid (channels tiled, each scaled on its own), as written
  to ``maps/<layer>.png``;
- ``cam/<method>/<layer>/<class>``: the CAM overlay, as written to its PNG; a clip's
  animated overlay as an animated GIF (what ``SummaryWriter.add_video`` stores, without the
  moviepy it needs), which TensorBoard's image tab plays;
- ``filters/<layer>`` (step 0): the kernel grid;
- ``top/<layer>``, ``top/<layer>/<channel>`` (step 0): ``featviz top``'s overview, and each
  channel's best images;
- ``activations/<layer>``: a histogram of the tapped layer's activations;
- ``image``: text naming the input, with its top-5 predictions when the command has them.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from featviz.errors import RunError, UsageError

HISTOGRAM_BINS = 64
HISTOGRAM_SAMPLE = 65_536

if TYPE_CHECKING:
    import numpy as np

    from featviz.sinks import RunEnd
    from featviz.sinks.artifacts import Artifact, ImageOutputs


def _fast_checksums() -> None:
    """tensorboard checksums every event record with a pure-Python CRC32C loop: 100 ms for one
    337 kB grid here, more than everything else featviz does for it. The ``crc32c`` package
    (installed with featviz[tensorboard]) gives the same checksums in 16 µs; without it
    tensorboard's own loop stays."""
    try:
        import crc32c
        from tensorboard.summary.writer import record_writer
    except ImportError:
        return

    def masked_crc32c(data: bytes) -> int:
        crc = crc32c.crc32c(data) & 0xFFFFFFFF
        return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF

    record_writer.masked_crc32c = masked_crc32c


def tag_of(command: str, kind: str, layer: str, method: str, target: str) -> str | None:
    """The TensorBoard tag of an output, None for those TensorBoard does not show (raw arrays,
    bare heatmaps, tables)."""
    if command == "maps" and kind == "grid":
        return f"maps/{layer}"
    if command == "cam" and kind == "overlay":
        return f"cam/{method}/{layer}/{target}"
    if command == "filters" and kind.startswith("kernels"):
        return f"filters/{layer}" + ("/all-inputs" if kind == "kernels-all-inputs" else "")
    if command == "dream":  # each optimised image, and the run's grid of them
        return f"dream/{layer}/{target}" if kind == "dream" else "dream"
    if command == "top" and kind in ("overview", "examples"):  # a layer's, a channel's
        return f"top/{layer}" + (f"/{target}" if kind == "examples" else "")
    if kind == "panel":  # compare's and sanity's picture of each image
        return command
    if kind == "curves":  # score's and sanity's plot of the whole run
        return f"{command}/curves"
    return None


class TensorBoardSink:
    wants_activations = True

    def __init__(self, log_dir: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UsageError(
                "--tensorboard needs the tensorboard package, which is not installed",
                hint="pip install 'featviz[tensorboard]'",
            ) from None
        self.writer_class = SummaryWriter
        self.log_dir = log_dir
        self.writer: Any = None
        # Summaries are encoded on the writer threads in parallel; handing them to the event
        # file (SummaryWriter's queue) is done one thread at a time.
        self._lock = threading.Lock()

    def open(self) -> None:
        _fast_checksums()
        try:
            self.writer = self.writer_class(log_dir=str(self.log_dir))
        except OSError as exc:
            raise RunError(
                f"--tensorboard {self.log_dir}: cannot write there ({exc.strerror})",
                hint="choose another folder",
            ) from exc

    def write(self, outputs: ImageOutputs) -> None:
        from tensorboard.compat.proto.summary_pb2 import Summary

        values = []
        for a in outputs.artifacts:
            tag = tag_of(a.command, a.kind, a.layer, a.method, a.target)
            if tag is not None and a.pixels is not None:
                picture = _animation(a) if a.animated else _image(a)
                values.append(Summary.Value(tag=tag, image=picture))
        for layer, activations in outputs.activations.items():
            values.append(Summary.Value(tag=f"activations/{layer}", histo=_histogram(activations)))
        step = 0 if outputs.source is None else outputs.source.index
        with self._lock:
            # The event file under SummaryWriter (its add_image/add_histogram would re-encode
            # what is encoded above, about 10× slower).
            self.writer._get_file_writer().add_summary(Summary(value=values), global_step=step)
            if outputs.source is not None:
                self.writer.add_text("image", _describe(outputs), global_step=step)

    def close(self, end: RunEnd) -> None:
        self.writer.close()


def _image(artifact: Artifact) -> Any:
    """An image summary holding the very PNG the file layout wrote: ``SummaryWriter.add_image``
    would convert it to RGB and encode it again with Pillow at its default level (250 ms for a
    580×580 grid; featviz's writer: 20 ms, once for both)."""
    from tensorboard.compat.proto.summary_pb2 import Summary

    height, width = artifact.pixels.shape[:2]
    colorspace = 1 if artifact.pixels.ndim == 2 else 3
    return Summary.Image(
        height=height, width=width, colorspace=colorspace, encoded_image_string=artifact.png
    )


def _animation(artifact: Artifact) -> Any:
    """An image summary holding a clip's (T, H, W[, 3]) frames as an animated GIF, each frame
    ``frame_ms`` long: TensorBoard serves a GIF as ``image/gif`` to a plain ``<img>``, which
    plays it (an animated WebP would be served untyped)."""
    import io

    from PIL import Image
    from tensorboard.compat.proto.summary_pb2 import Summary

    frames = [Image.fromarray(frame) for frame in artifact.pixels]
    buffer = io.BytesIO()
    frames[0].save(
        buffer,
        format="GIF",
        save_all=True,
        append_images=frames[1:],
        duration=artifact.frame_ms,
        loop=0,
    )
    height, width = artifact.pixels.shape[1:3]
    colorspace = 1 if artifact.pixels.ndim == 3 else 3
    return Summary.Image(
        height=height, width=width, colorspace=colorspace, encoded_image_string=buffer.getvalue()
    )


def _histogram(values: np.ndarray) -> Any:
    """A histogram summary in HISTOGRAM_BINS equal bins between the layer's minimum and maximum.

    The counts come from at most HISTOGRAM_SAMPLE evenly strided activations (a 64×55×73 layer
    has 257,000; the shape of their distribution does not change, the time does: 7 ms → 1 ms
    a layer); minimum, maximum, sum and sum of squares are over all of them, and the counts are
    scaled to their number. ``add_histogram``'s TensorFlow-style bins took 30 ms a layer.
    """
    import numpy as np
    from tensorboard.compat.proto.summary_pb2 import HistogramProto

    flat = values.ravel()
    low, high = float(flat.min()), float(flat.max())
    sample = flat[:: max(1, flat.size // HISTOGRAM_SAMPLE)]
    width = (high - low) / HISTOGRAM_BINS or 1.0
    bins = np.minimum(((sample - low) / width).astype(np.int64), HISTOGRAM_BINS - 1)
    counts = np.bincount(bins, minlength=HISTOGRAM_BINS) * (flat.size / sample.size)
    return HistogramProto(
        min=low,
        max=high,
        num=flat.size,
        sum=float(flat.sum(dtype=np.float64)),
        sum_squares=float(np.dot(flat, flat)),
        bucket_limit=(low + width * np.arange(1, HISTOGRAM_BINS + 1)).tolist(),
        bucket=counts.tolist(),
    )


def _describe(outputs: ImageOutputs) -> str:
    """Markdown for TensorBoard's text tab: the input, then its predictions."""
    lines = [f"**{outputs.source.display}** (step {outputs.source.index})"]
    if outputs.predictions:
        lines += ["", "| class | probability |", "|---|---|"]
        lines += [f"| {p.label} | {p.probability:.4f} |" for p in outputs.predictions]
    return "\n".join(lines)
