"""The network a command asks for and how to feed it (every command's "Model options")."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from featviz.inputs.preprocess import ResizeMode

# An option that never changes what a run writes (featviz.run.plan reads these marks).
NO_EFFECT = {"outputs": "none"}


@dataclass(frozen=True)
class ModelRequest:
    """The network and its inputs' preparation (every command's "Model options")."""

    spec: str = "alexnet"
    weights: str = "DEFAULT"
    checkpoint: Path | None = None
    num_classes: int | None = None
    labels: str | None = None
    seed: int = 0
    device: str = field(default="auto", metadata=NO_EFFECT)
    precision: str = "fp32"  # fp32 · bf16 · fp16: autocast around the model's forwards
    check_precision: bool = field(default=False, metadata=NO_EFFECT)
    input_size: int | None = None
    resize: ResizeMode = "keep"
