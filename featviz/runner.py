"""The library entry points behind each command: build what a run needs, then stream it.

cli.py parses options into these dataclasses and calls one function per command; everything
here raises FeatvizError subclasses and never prints.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from featviz.errors import UsageError
from featviz.output import OutputLayout, write_atomic

if TYPE_CHECKING:
    from featviz.cam_job import CamOptions
    from featviz.images import ImageSource
    from featviz.layers import ModelTrace
    from featviz.maps import MapsOptions
    from featviz.models import LoadedModel
    from featviz.pipeline import ImageResult, PipelineStats
    from featviz.preprocess import ResizeMode


@dataclass
class ModelChoice:
    spec: str = "alexnet"
    weights: str = "DEFAULT"
    checkpoint: Path | None = None
    num_classes: int | None = None
    labels: str | None = None
    seed: int = 0
    device: str = "auto"
    input_size: int | None = None

    def load(self) -> LoadedModel:
        from featviz.models import load_model

        return load_model(
            self.spec,
            weights=self.weights,
            checkpoint=self.checkpoint,
            num_classes=self.num_classes,
            labels=self.labels,
            seed=self.seed,
            device=self.device,
            input_size=self.input_size,
        )


@dataclass
class InputChoice:
    inputs: list[str]
    recursive: bool = False
    resize: ResizeMode = "keep"
    max_pixels: int | None = None
    out: Path = Path("featviz-out")
    batch_size: int | None = None
    skip_existing: bool = False


@dataclass
class PreparedRun:
    """A run ready to stream: call ``results()`` once, then ``write_manifest``."""

    command: str
    model: LoadedModel
    layout: OutputLayout
    job: Any
    sources: Any
    batch_size: int
    options: dict[str, Any]
    total: int | None
    stats: PipelineStats = field(init=False)

    def results(self) -> Iterator[ImageResult]:
        from featviz.pipeline import PipelineConfig, PipelineStats, run

        self.stats = PipelineStats()
        return run(self.job, self.sources, PipelineConfig(batch_size=self.batch_size), self.stats)

    def write_manifest(self, tally: Any, interrupted: bool) -> Path:
        from featviz.output import encode_json
        from featviz.report import manifest

        model = {
            "name": self.model.name,
            "weights": self.model.weights,
            "device": str(self.model.device),
            "input_size": self.model.input_size,
        }
        data = manifest(self.command, model, self.options, tally, interrupted)
        path = self.layout.manifest()
        write_atomic(path, encode_json(data))
        return path


def model_trace(model: LoadedModel) -> ModelTrace:
    from featviz.layers import trace_model

    size = model.input_size
    return trace_model(model.module, (1, 3, size, size))


def default_map_layers(model: LoadedModel, trace: ModelTrace) -> list[str]:
    """Every Conv2d that runs in the forward, as in the classic hook tutorial."""
    from torch import nn

    modules = dict(model.module.named_modules())
    convs = [
        layer.name for layer in trace.cam_candidates() if isinstance(modules[layer.name], nn.Conv2d)
    ]
    if not convs:
        raise UsageError(
            "this model has no Conv2d layer to draw",
            hint="pick layers with --layer; see `featviz layers`",
        )
    return convs


def prepare_maps(
    choice: ModelChoice, inputs: InputChoice, layers: list[str], options: dict[str, Any]
) -> PreparedRun:
    from featviz.layers import resolve_layers
    from featviz.maps import MapsJob, MapsOptions

    sources = _discover(inputs)  # a typo in an input fails before the model is built
    model = choice.load()
    trace = model_trace(model)
    names = (
        resolve_layers(trace, layers, spatial_only=True)
        if layers
        else default_map_layers(model, trace)
    )
    maps_options = MapsOptions(layers=names, calls=trace.calls(), **options)
    return _prepare("maps", choice, inputs, sources, model, maps_options, MapsJob)


def prepare_cam(
    choice: ModelChoice,
    inputs: InputChoice,
    layers: list[str],
    targets: list[str],
    options: dict[str, Any],
) -> PreparedRun:
    from featviz.cam_job import CamJob, CamOptions
    from featviz.layers import resolve_layers
    from featviz.models import model_output_classes
    from featviz.targets import check_top_k, resolve_target

    sources = _discover(inputs)
    model = choice.load()
    trace = model_trace(model)
    names = (
        resolve_layers(trace, layers, spatial_only=True) if layers else [trace.default_cam_layer()]
    )
    classes = model_output_classes(model.module) or (
        len(model.categories) if model.categories else None
    )
    indices = [resolve_target(text, model.categories, classes) for text in targets]
    if indices and options.get("top_k", 1) != 1:
        raise UsageError(
            "--target and --top-k exclude each other",
            hint="explain given classes with --target, or the k best with --top-k",
        )
    check_top_k(options.get("top_k", 1), classes)
    cam_options = CamOptions(layers=names, calls=trace.calls(), targets=indices, **options)
    return _prepare("cam", choice, inputs, sources, model, cam_options, CamJob)


def _discover(inputs: InputChoice) -> Iterable[ImageSource]:
    """The inputs, validated now; a list (cheap to hold, and the progress bar gets a total)
    unless paths stream in on stdin."""
    import sys

    from featviz.images import discover

    reads_stdin = "-" in inputs.inputs
    sources = discover(
        inputs.inputs, recursive=inputs.recursive, stdin=sys.stdin if reads_stdin else None
    )
    return sources if reads_stdin else list(sources)


def _prepare(
    command: str,
    choice: ModelChoice,
    inputs: InputChoice,
    sources: Iterable[ImageSource],
    model: LoadedModel,
    options: MapsOptions | CamOptions,
    job_type: type,
) -> PreparedRun:
    from featviz.decode import DEFAULT_MAX_PIXELS
    from featviz.jobs import fingerprint

    layout = OutputLayout(inputs.out)
    layout.prepare()
    checkpoint = None if choice.checkpoint is None else str(choice.checkpoint)  # JSON has no Path
    recorded = {
        **{key: value for key, value in asdict(options).items() if key != "calls"},
        "model": choice.spec,
        "weights": model.weights,
        "checkpoint": checkpoint,
        "num_classes": choice.num_classes,
        "labels": choice.labels,
        "seed": choice.seed,
        "input_size": model.input_size,
        "resize": inputs.resize,
    }
    job = job_type(
        model=model,
        layout=layout,
        command=command,
        options_fingerprint=fingerprint(recorded),
        resize=inputs.resize,
        max_pixels=inputs.max_pixels or DEFAULT_MAX_PIXELS,
        skip_existing=inputs.skip_existing,
        options=options,
    )
    batch_size = inputs.batch_size or (32 if model.device.type == "cuda" else 8)
    return PreparedRun(
        command,
        model,
        layout,
        job,
        sources,
        batch_size,
        {
            **recorded,
            "inputs": inputs.inputs,
            "recursive": inputs.recursive,
            "batch_size": batch_size,
            "out": str(inputs.out),
        },
        len(sources) if isinstance(sources, list) else None,
    )


def describe_layers(spec: str, num_classes: int | None, input_size: int | None) -> str:
    from featviz.models import load_architecture
    from featviz.report import layer_table

    model = load_architecture(spec, num_classes=num_classes)
    if input_size is not None:
        model.input_size = input_size
    trace = model_trace(model)
    try:
        default = trace.default_cam_layer()
    except UsageError:
        default = None
    return layer_table(trace, default)


def list_models(name_filter: str | None) -> list[tuple[str, list[str]]]:
    from featviz.models import classification_models, model_weights_names

    names = [
        name
        for name in classification_models()
        if not name_filter or name_filter.lower() in name.lower()
    ]
    return [(name, model_weights_names(name)) for name in names]


def render_filters(
    choice: ModelChoice, layer: str, *, out: Path, all_inputs: bool, cmap: str, cell_size: int
) -> Path:
    from featviz.filters import filter_grid
    from featviz.output import encode_png

    model = choice.load()
    modules = dict(model.module.named_modules())
    if layer not in modules:
        from featviz.layers import resolve_layers

        resolve_layers(model_trace(model), [layer], spatial_only=False)
    grid = filter_grid(modules[layer], layer, all_inputs=all_inputs, cmap=cmap, cell_size=cell_size)
    layout = OutputLayout(out)
    layout.prepare()
    path = layout.filters_png(
        model.name.rpartition(":")[2] if ":" in model.name else model.name,
        layer,
        "-all-inputs" if all_inputs else "",
    )
    write_atomic(path, encode_png(grid))
    return path
