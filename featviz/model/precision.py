"""``--precision``: the model's forwards (and so its backward passes) under autocast, bf16 on
the CPU or CUDA, fp16 on CUDA only; CAM arithmetic stays float32 (the tapped activations and
gradients are cast up before any method reads them), and so do heatmaps and overlays.

``--check-precision`` runs the first batch once more in float32 and says how many top-1
classes the reduced precision changed, in the summary and the manifest.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any

from featviz.errors import UsageError

if TYPE_CHECKING:
    import torch

    from featviz.model.load import LoadedModel

PRECISIONS = ("fp32", "bf16", "fp16")


def autocast_for(precision: str, device: torch.device) -> Callable[[], AbstractContextManager]:
    """A factory of the context every batch's model work runs in."""
    import torch

    if precision == "fp32":
        return nullcontext
    if precision == "fp16" and device.type != "cuda":
        raise UsageError(
            f"--precision fp16 needs a CUDA device (this run is on {device.type})",
            hint="use --precision bf16 on the CPU",
        )
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return lambda: torch.autocast(device.type, dtype=dtype)


class PrecisionCheck:
    """Called with the first batch's input, inside its autocast: top-1 classes at float32 against
    the run's precision; the outcome goes to ``notes`` (the summary) and to ``resolved``'s
    ``precision_check`` (the manifest's)."""

    def __init__(self, model: LoadedModel, precision: str, notes: list[str], resolved: Any) -> None:
        self.model, self.precision = model, precision
        self.notes, self.resolved = notes, resolved

    def __call__(self, inputs: torch.Tensor) -> None:
        import torch

        from featviz.layers.outputs import logits_of

        with torch.no_grad():
            reduced = logits_of(self.model.module(inputs))[0].float().softmax(1)
            with torch.autocast(self.model.device.type, enabled=False):
                exact = logits_of(self.model.module(inputs.float()))[0].float().softmax(1)
        changed = int((reduced.argmax(1) != exact.argmax(1)).sum())
        drift = float((reduced - exact).abs().max())
        self.resolved.precision_check = {
            "images": len(inputs),
            "top1_changed": changed,
            "max_probability_change": round(drift, 6),
        }
        self.notes.append(
            f"--precision {self.precision}: the top-1 class of {changed} of {len(inputs)} images "
            f"of the first batch differs from fp32 (probabilities moved by {drift:.4f} at most)"
        )
