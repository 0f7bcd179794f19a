"""What a command asks for, as frozen values built once by the CLI and passed down unchanged.

``ModelRequest`` (which network, which weights, how to feed it) and ``OutputRequest`` (where
results go: the output folder, TensorBoard, the gallery) are shared by every command;
``RunRequest`` says which images a per-image command reads; each command adds its own options
(``MapsRequest``, ``CamRequest``, ``FiltersRequest``). What the library resolves from
them (layer names from globs, class indices from names) lives in the job, never back in here:
a request is exactly what the user said, which is what the manifest records.

No torch here: the CLI builds these before deciding whether torch is needed at all.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any, Literal

from featviz.cam.registry import JUDGED_METHODS
from featviz.inputs.limits import DEFAULT_MAX_PIXELS
from featviz.inputs.shards import Shard

ChannelOrder = Literal["index", "activation"]
DEFAULT_MAX_MEMORY = 2 * 10**9  # --max-memory 2GB


@dataclass(frozen=True)
class RunRequest:
    """The images a per-image command reads, and how."""

    inputs: tuple[str, ...]
    recursive: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS
    batch_size: int | None = None
    skip_existing: bool = False
    shard: Shard | None = None
    max_memory: int = DEFAULT_MAX_MEMORY  # bytes for the images in flight
    workers: int | None = None  # decode and write threads each; None: one per core


@dataclass(frozen=True)
class MapsRequest:
    layers: tuple[str, ...] = ()
    max_channels: int = 64
    order: ChannelOrder = "index"
    cmap: str = "gray"
    cell_size: int = 64
    save_raw: bool = False


@dataclass(frozen=True)
class ExplainRequest:
    """What to explain, for every command that computes CAMs."""

    methods: tuple[str, ...] = ("gradcam",)
    layers: tuple[str, ...] = ()
    targets: tuple[str, ...] = ()  # class indices or names as typed; empty → the top-k
    top_k: int | None = None  # None: 1, and for a detector every box of at least min_score
    cam_batch_size: int = 32
    target_fn: str | None = None  # FILE.py:fn or pkg.mod:fn: the score instead of the classes
    min_score: float | None = None  # a detector's boxes explained; None: DEFAULT_MIN_SCORE


@dataclass(frozen=True)
class CamRequest(ExplainRequest):
    fuse: bool = False
    cmap: str = "jet"
    alpha: float = 0.5
    heatmap: bool = False
    save_raw: bool = False


@dataclass(frozen=True)
class CompareRequest(ExplainRequest):
    methods: tuple[str, ...] = JUDGED_METHODS
    cmap: str = "jet"
    alpha: float = 0.5


@dataclass(frozen=True)
class ScoreRequest(ExplainRequest):
    methods: tuple[str, ...] = JUDGED_METHODS
    steps: int = 20  # deletion/insertion: pixels removed in this many equal steps
    score_batch_size: int | None = None  # perturbed inputs per forward; None: by device
    seed: int = 0  # the random baseline and ROAD's noise


@dataclass(frozen=True)
class SanityRequest(ExplainRequest):
    methods: tuple[str, ...] = JUDGED_METHODS
    seed: int = 0  # the re-initialised weights


@dataclass(frozen=True)
class FiltersRequest:
    layers: tuple[str, ...]
    all_inputs: bool = False
    cmap: str = "gray"
    cell_size: int = 32


def plain(value: Any) -> Any:
    """A request (or anything in one) as JSON-ready values: paths as text, tuples as lists."""
    if is_dataclass(value) and not isinstance(value, type):
        return {field.name: plain(getattr(value, field.name)) for field in fields(value)}
    if isinstance(value, (tuple, list)):
        return [plain(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    return value
