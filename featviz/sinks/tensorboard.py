"""TensorBoard event files (``--tensorboard DIR``), through ``torch.utils.tensorboard``.

Tags, each image at step = its position in the run (0, 1, 2… in input order; skipped images
keep their step):
- ``maps/<layer>``: the feature-map grid (channels tiled, each scaled on its own), as written
  to ``maps/<layer>.png``;
- ``cam/<method>/<layer>/<class>``: the CAM overlay, as written to its PNG;
- ``filters/<layer>`` (step 0): the kernel grid;
- ``activations/<layer>``: a histogram of the tapped layer's activations;
- ``image``: text naming the input, with its top-5 predictions when the command has them.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from featviz.errors import RunError, UsageError

if TYPE_CHECKING:
    from featviz.artifacts import ImageOutputs
    from featviz.sinks import RunEnd


def tag_of(command: str, kind: str, layer: str, method: str, target: str) -> str | None:
    """The TensorBoard tag of an output, None for those TensorBoard does not show (raw arrays,
    bare heatmaps)."""
    if command == "maps" and kind == "grid":
        return f"maps/{layer}"
    if command == "cam" and kind == "overlay":
        return f"cam/{method}/{layer}/{target}"
    if command == "filters" and kind.startswith("kernels"):
        return f"filters/{layer}" + ("/all-inputs" if kind == "kernels-all-inputs" else "")
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
        # SummaryWriter queues events for its own thread, but its encoders are not documented
        # as thread-safe: the writer threads take turns.
        self._lock = threading.Lock()

    def open(self) -> None:
        try:
            self.writer = self.writer_class(log_dir=str(self.log_dir))
        except OSError as exc:
            raise RunError(
                f"--tensorboard {self.log_dir}: cannot write there ({exc.strerror})",
                hint="choose another folder",
            ) from exc

    def write(self, outputs: ImageOutputs) -> None:
        step = 0 if outputs.source is None else outputs.source.index
        with self._lock:
            for artifact in outputs.artifacts:
                tag = tag_of(
                    artifact.command,
                    artifact.kind,
                    artifact.layer,
                    artifact.method,
                    artifact.target,
                )
                if tag is None or artifact.pixels is None:
                    continue
                pixels = artifact.pixels
                formats = "HW" if pixels.ndim == 2 else "HWC"
                self.writer.add_image(tag, pixels, global_step=step, dataformats=formats)
            for layer, values in outputs.activations.items():
                self.writer.add_histogram(f"activations/{layer}", values, global_step=step)
            if outputs.source is not None:
                self.writer.add_text("image", _describe(outputs), global_step=step)

    def close(self, end: RunEnd) -> None:
        self.writer.close()


def _describe(outputs: ImageOutputs) -> str:
    """Markdown for TensorBoard's text tab: the input, then its predictions."""
    lines = [f"**{outputs.source.display}** (step {outputs.source.index})"]
    if outputs.predictions:
        lines += ["", "| class | probability |", "|---|---|"]
        lines += [f"| {p.label} | {p.probability:.4f} |" for p in outputs.predictions]
    return "\n".join(lines)
