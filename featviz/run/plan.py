"""What a command asks for, typed and built once (by the CLI or a library call), never repacked.

A ``Plan`` is a command's name and its option groups: ``ModelRequest`` (which network, which
weights, how to feed it), ``RunRequest`` (which images, how many at a time), ``OutputRequest``
(where results go) and the command's own options (``CamRequest``, ``MapsRequest``…). What is
resolved from it once the model is built (layer names from globs, class indices from names,
batch sizes) is a ``Resolved``. Everything downstream reads these values; what the manifest
records, the fingerprint that ``--skip-existing`` matches and the model folder a run writes
into are all derived here from their fields, never assembled by hand:

- every field is recorded in the manifest as given (``plain``);
- the fingerprint hashes every field that can change an output — all but those whose metadata
  says ``{"outputs": "none"}`` (a batch size, the device, the output folder);
- the model folder (featviz.sinks.variants) is claimed for the fields that change what a file
  at a given path holds: not those, and not the ones a command lists in ``CHOOSES_FILES``
  (``-M``, ``-l``, ``-t`` of ``cam`` write files of their own; in ``compare`` they change the
  one panel, so they count there).

No torch here: the CLI builds a plan before deciding whether torch is needed at all.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from featviz.cam.registry import JUDGED_METHODS
from featviz.explainer.options import NO_EFFECT, ExplainRequest
from featviz.features.top import Stat
from featviz.inputs.limits import DEFAULT_MAX_PIXELS
from featviz.inputs.shards import Shard
from featviz.model.options import ModelRequest
from featviz.sinks.options import OutputRequest

if TYPE_CHECKING:
    from featviz.model.load import LoadedModel

ChannelOrder = Literal["index", "activation"]
DEFAULT_MAX_MEMORY = 2 * 10**9  # --max-memory 2GB


@dataclass(frozen=True)
class RayRequest:
    """``--ray``: run the batches on a Ray cluster. ``address``: ``auto`` (the cluster that
    ``RAY_ADDRESS`` or a running ``ray start`` names), ``local`` (start one here) or an address;
    ``actors``: how many (None: as many as the cluster's CPUs, or GPUs, hold); ``cpus`` and
    ``gpus``: what each actor reserves."""

    address: str
    actors: int | None = None
    cpus: float = 1.0
    gpus: float = 0.0


@dataclass(frozen=True)
class RunRequest:
    """The images a per-image command reads, and how (none of it changes an image's outputs)."""

    inputs: tuple[str, ...]
    recursive: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS
    batch_size: int | None = None
    skip_existing: bool = False
    shard: Shard | None = None
    max_memory: int = DEFAULT_MAX_MEMORY  # bytes for the images in flight
    workers: int | None = None  # decode and write threads each; None: one per core
    ray: RayRequest | None = None  # None: the batches run in this process


@dataclass(frozen=True)
class MapsRequest:
    CHOOSES_FILES: ClassVar[frozenset[str]] = frozenset({"layers", "save_raw"})

    layers: tuple[str, ...] = ()
    max_channels: int = 64
    order: ChannelOrder = "index"
    cmap: str = "gray"
    cell_size: int = 64
    save_raw: bool = False


@dataclass(frozen=True)
class CamRequest(ExplainRequest):
    CHOOSES_FILES: ClassVar[frozenset[str]] = frozenset(
        {"methods", "layers", "targets", "top_k", "min_score", "boxes", "fuse", "heatmap"}
        | {"save_raw"}
    )

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
    score_batch_size: int | None = field(default=None, metadata=NO_EFFECT)  # None: by device
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


@dataclass(frozen=True)
class DreamRequest:
    """``featviz dream``: ``channels`` (``-c`` texts: 37, 0-7, 1,5,9) of each of ``layers``,
    at the centre only when ``neuron``, and the classes ``targets``; how they are optimised
    (featviz.features.dream.DreamSettings); ``seed`` is --seed."""

    CHOOSES_FILES: ClassVar[frozenset[str]] = frozenset({"layers", "channels", "neuron", "targets"})

    layers: tuple[str, ...] = ()
    channels: tuple[str, ...] = ()
    neuron: bool = False
    targets: tuple[str, ...] = ()
    steps: int = 256
    size: int | None = None
    learning_rate: float = 0.05
    diversity: int = 1
    diversity_weight: float = 100.0
    seed: int = 0


@dataclass(frozen=True)
class TopRequest:
    """``featviz top``: per channel the k images that excite it most (featviz.features.top)."""

    CHOOSES_FILES: ClassVar[frozenset[str]] = frozenset({"layers", "channels"})

    layers: tuple[str, ...] = ()
    k: int = 9
    channels: tuple[int, ...] = ()  # empty: every channel
    stat: Stat = "max"
    cell_size: int = 96
    merge: bool = field(default=False, metadata=NO_EFFECT)  # combine --shard runs' partials


CommandOptions = (
    MapsRequest
    | CamRequest
    | CompareRequest
    | ScoreRequest
    | SanityRequest
    | FiltersRequest
    | DreamRequest
    | TopRequest
)


@dataclass
class Resolved:
    """What a plan became once the model was built: the layers' module names (execution
    order), the class indices of ``--target``, a detector's box choice (``min_score``,
    ``top_k``), and how the run goes (batch size, threads, batch norms folded, the precision
    check's outcome), which changes no output."""

    layers: list[str]
    targets: list[int] = field(default_factory=list)
    boxes: dict[str, Any] | None = None
    batch_size: int = field(default=8, metadata=NO_EFFECT)
    workers: int = field(default=2, metadata=NO_EFFECT)
    folded_batch_norms: int = field(default=0, metadata=NO_EFFECT)
    precision_check: dict[str, Any] | None = field(default=None, metadata=NO_EFFECT)


@dataclass(frozen=True)
class Plan:
    """One command as asked. ``run`` is None for ``filters`` and ``dream``, which read no
    image."""

    command: str
    model: ModelRequest
    output: OutputRequest
    options: CommandOptions
    run: RunRequest | None = None

    def request(self) -> dict[str, Any]:
        """The option groups exactly as given, as the manifest records them."""
        groups = {"model": self.model, "run": self.run, "output": self.output}
        described = {name: plain(group) for name, group in groups.items() if group is not None}
        return {**described, "options": plain(self.options)}

    def record(self, loaded: LoadedModel, resolved: Resolved) -> dict[str, Any]:
        """What the manifest says of the run besides its images."""
        return {
            "model": {
                "name": loaded.name,
                "weights": loaded.weights,
                "device": str(loaded.device),
                "input_size": loaded.preprocessing.input_size,
            },
            "request": self.request(),
            "resolved": plain(resolved),
        }

    def fingerprint(self, loaded: LoadedModel, resolved: Resolved) -> str:
        """A short stable hash of everything that changes an image's outputs."""
        settings = {
            "command": self.command,
            "model": self._model_settings(loaded, choosing=False),
            "options": _effective(self.options),
            "resolved": _effective(resolved),
            "output": _effective(self.output),
        }
        text = json.dumps(settings, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def pictures(self, loaded: LoadedModel, resolved: Resolved) -> tuple[dict, dict]:
        """(model, options): what the pictures at given paths depend on, for the model folder
        they are claimed in (featviz.sinks.variants)."""
        choosing = getattr(type(self.options), "CHOOSES_FILES", frozenset())
        options = {
            **_effective(self.options, leaving=choosing),
            **_effective(resolved, leaving=choosing),
            **_effective(self.output, leaving={"image_format"}),
        }
        return self._model_settings(loaded, choosing=True), options

    def _model_settings(self, loaded: LoadedModel, *, choosing: bool) -> dict[str, Any]:
        """The model options that change outputs, with what they resolved to; for a model
        folder (``choosing``) files named relatively are made absolute."""
        settings = {
            **_effective(self.model),
            "weights": loaded.weights,
            "input_size": loaded.preprocessing.input_size,
        }
        if choosing:
            for key in ("checkpoint", "labels"):
                if settings.get(key) and settings[key] != "imagenet":
                    settings[key] = os.path.abspath(settings[key])
        return settings


def _effective(group: Any, leaving: set[str] | frozenset[str] = frozenset()) -> dict[str, Any]:
    """A group's fields that can change an output, as JSON-ready values."""
    return {
        item.name: plain(getattr(group, item.name))
        for item in fields(group)
        if item.metadata.get("outputs") != "none" and item.name not in leaving
    }


def plain(value: Any) -> Any:
    """A request (or anything in one) as JSON-ready values: paths as text, tuples as lists."""
    if is_dataclass(value) and not isinstance(value, type):
        return {item.name: plain(getattr(value, item.name)) for item in fields(value)}
    if isinstance(value, (tuple, list)):
        return [plain(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    return value
