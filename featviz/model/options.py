"""The network a command asks for and how to feed it (every command's "Model options")."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from featviz.inputs.preprocess import ResizeMode


@dataclass(frozen=True)
class ModelRequest:
    """The network and its inputs' preparation (every command's "Model options")."""

    spec: str = "alexnet"
    weights: str = "DEFAULT"
    checkpoint: Path | None = None
    num_classes: int | None = None
    labels: str | None = None
    seed: int = 0
    device: str = "auto"
    precision: str = "fp32"  # fp32 · bf16 · fp16: autocast around the model's forwards
    check_precision: bool = False
    input_size: int | None = None
    resize: ResizeMode = "keep"
