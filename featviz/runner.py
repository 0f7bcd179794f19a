"""The library entry points behind each command: build what a run needs, then stream it.

cli.py turns options into frozen requests (featviz.requests) and calls one function per command;
everything here raises FeatvizError subclasses and never prints. What is resolved from a request
(layer globs → names, class names → indices) goes into the job and into the manifest's
``resolved`` section, next to the request exactly as given.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from featviz.errors import UsageError
from featviz.requests import DEFAULT_MIN_SCORE, plain

if TYPE_CHECKING:
    from featviz.folding import FoldedBatchNorms
    from featviz.images import ImageSource
    from featviz.jobs import ImageJob
    from featviz.models import LoadedModel
    from featviz.pipeline import ImageResult, PipelineConfig
    from featviz.report import RunTally
    from featviz.requests import (
        CamRequest,
        ExplainRequest,
        FiltersRequest,
        MapsRequest,
        ModelRequest,
        OutputRequest,
        RunRequest,
    )


@dataclass(frozen=True)
class PreparedRun:
    """A run ready to stream: iterate ``results()`` once, then ``finish``.

    ``total`` is the number of inputs when known (not for paths streamed on stdin).
    """

    command: str
    model: LoadedModel
    out: Path
    job: ImageJob
    sources: Iterable[ImageSource]
    config: PipelineConfig
    total: int | None
    notes: list[str] = field(default_factory=list)  # filled as it runs; the summary adds them

    def results(self) -> Iterator[ImageResult]:
        from featviz.pipeline import run

        return run(self.job, self.sources, self.config)

    def finish(self, tally: RunTally, interrupted: bool) -> Path:
        """Write what the run as a whole produced (score's table and plot), close the sinks
        (manifest, TensorBoard, gallery); returns the manifest's path."""
        from featviz.artifacts import ImageOutputs
        from featviz.sinks import RunEnd

        artifacts = self.job.run_outputs(tally.results)
        outputs = []
        if artifacts:
            written = self.job.sinks.write(ImageOutputs(None, self.model.name, None, [], artifacts))
            outputs = written.outputs
        return self.job.sinks.close(RunEnd(tally, interrupted, outputs))

    def report(self, tally: RunTally) -> str | None:
        """The table the terminal shows after the images (score's summary), if any."""
        return self.job.report(tally.results)


def default_map_layers(model: LoadedModel) -> list[str]:
    """Every Conv2d that runs in the forward, as in the classic hook tutorial."""
    from torch import nn

    modules = dict(model.module.named_modules())
    convs = [
        layer.name
        for layer in model.trace.cam_candidates()
        if isinstance(modules.get(layer.name), nn.Conv2d)
    ]
    if not convs:
        raise UsageError(
            "this model has no Conv2d layer to draw",
            hint="pick layers with --layer; see `featviz layers`",
        )
    return convs


def prepare_maps(
    model: ModelRequest, run: RunRequest, output: OutputRequest, maps: MapsRequest
) -> PreparedRun:
    from featviz.layers import resolve_layers
    from featviz.maps import MapsJob
    from featviz.models import load_model

    sources = _discover(run)  # a typo in an input fails before the model is built
    loaded = load_model(model)
    layers = (
        resolve_layers(loaded.trace, list(maps.layers), spatial_only=True)
        if maps.layers
        else default_map_layers(loaded)
    )
    resolved = {"layers": layers}
    return _prepare(
        "maps",
        model,
        run,
        output,
        maps,
        resolved,
        sources,
        loaded,
        lambda **common: MapsJob(request=maps, layers=layers, **common),
    )


def prepare_cam(
    model: ModelRequest, run: RunRequest, output: OutputRequest, cam: CamRequest
) -> PreparedRun:
    from featviz.cam_job import CamJob

    return prepare_explaining("cam", CamJob, model, run, output, cam)


def prepare_explaining(
    command: str,
    job_type: type,
    model: ModelRequest,
    run: RunRequest,
    output: OutputRequest,
    request: ExplainRequest,
) -> PreparedRun:
    """A run of a command that explains classes (cam, compare, score, sanity): the layers and
    classes resolved from the request, then ``job_type`` over them."""
    from featviz.detection import check_detection_request
    from featviz.layers import resolve_layers
    from featviz.models import load_model
    from featviz.targets import check_top_k, resolve_target

    sources = _discover(run)
    loaded = load_model(model)
    if request.target_fn is not None:
        loaded = _with_target_fn(command, loaded, request)
    layers = (
        resolve_layers(loaded.trace, list(request.layers), spatial_only=True)
        if request.layers
        else [loaded.default_cam_layer()]
    )
    classes = loaded.num_classes
    targets = [resolve_target(text, loaded.categories, classes) for text in request.targets]
    detector = loaded.trace.task == "detection" and request.target_fn is None
    if detector:
        check_detection_request(command, request)
    elif request.min_score is not None:
        raise UsageError(
            f"--min-score: {loaded.name} is not a detection model; it scores boxes",
            hint="leave --min-score out",
        )
    # A detector's --target picks the classes whose boxes --top-k ranks.
    if targets and request.top_k is not None and not detector:
        raise UsageError(
            "--target and --top-k exclude each other",
            hint="explain given classes with --target, or the k best with --top-k",
        )
    if request.top_k is not None:
        check_top_k(request.top_k, None if detector else classes)
    resolved = {"layers": layers, "targets": targets}
    if detector:
        resolved["boxes"] = {
            "min_score": DEFAULT_MIN_SCORE if request.min_score is None else request.min_score,
            "top_k": request.top_k,
        }
    return _prepare(
        command,
        model,
        run,
        output,
        request,
        resolved,
        sources,
        loaded,
        lambda **common: job_type(request=request, layers=layers, targets=targets, **common),
    )


def _with_target_fn(command: str, loaded: LoadedModel, request: ExplainRequest) -> LoadedModel:
    from featviz.tasks import with_target_fn

    if command == "score":
        raise UsageError(
            "--target-fn: score measures how class probabilities move; a score of your own "
            "has none",
            hint="explain it with cam or compare",
        )
    if request.targets or request.top_k is not None or request.min_score is not None:
        raise UsageError(
            "--target-fn replaces the classes: it cannot go with --target, --top-k or --min-score",
            hint="leave them out",
        )
    return with_target_fn(loaded, request.target_fn)


def _discover(run: RunRequest) -> Iterable[ImageSource]:
    """The inputs, validated now; a list (cheap to hold, and the progress bar gets a total)
    unless paths stream in on stdin."""
    import sys

    from featviz.images import discover

    reads_stdin = "-" in run.inputs
    sources = discover(
        run.inputs, recursive=run.recursive, stdin=sys.stdin if reads_stdin else None
    )
    if run.shard is not None:
        # After discovery, which gives every image its unique output path over all inputs.
        sources = (source for source in sources if run.shard.holds(source.relative))
    return sources if reads_stdin else list(sources)


def _prepare(
    command: str,
    model: ModelRequest,
    run: RunRequest,
    output: OutputRequest,
    options: MapsRequest | ExplainRequest,
    resolved: dict[str, Any],
    sources: Iterable[ImageSource],
    loaded: LoadedModel,
    make_job: Callable[..., ImageJob],
) -> PreparedRun:
    from featviz.jobs import fingerprint
    from featviz.pipeline import PipelineConfig
    from featviz.precision import PrecisionCheck, autocast_for
    from featviz.sinks import sinks_for

    batch_size = run.batch_size or (32 if loaded.device.type == "cuda" else 8)
    workers = run.workers or default_workers()
    record = {
        "model": model_record(loaded),
        "request": {
            "model": plain(model),
            "run": plain(run),
            "output": plain(output),
            "options": plain(options),
        },
        "resolved": {**resolved, "batch_size": batch_size, "workers": workers},
    }
    sinks = sinks_for(
        output,
        command=command,
        fingerprint=fingerprint(_settings(command, model, options, resolved, loaded, output)),
        model=loaded.name,
        record=record,
    )
    job = make_job(
        model=loaded, sinks=sinks, max_pixels=run.max_pixels, skip_existing=run.skip_existing
    )
    autocast = autocast_for(model.precision, loaded.device)  # fp16 on a CPU: a usage error
    folding = _folding(command, loaded, resolved)
    record["resolved"]["folded_batch_norms"] = len(folding)

    @contextmanager
    def compute() -> Iterator[None]:
        with autocast(), folding.applied():
            yield

    notes: list[str] = []
    check = None
    if model.check_precision and model.precision != "fp32":
        check = PrecisionCheck(loaded, model.precision, notes, record["resolved"])
    sinks.open()  # after the job checked its options: a typo leaves no folder behind
    return PreparedRun(
        command=command,
        model=loaded,
        out=output.out,
        job=job,
        sources=sources,
        config=PipelineConfig(
            batch_size=batch_size,
            decode_workers=workers,
            write_workers=workers,
            max_memory=run.max_memory,
            compute=compute,
            first_batch=check,
        ),
        notes=notes,
        total=len(sources) if isinstance(sources, list) else None,
    )


def _folding(command: str, loaded: LoadedModel, resolved: dict[str, Any]) -> FoldedBatchNorms:
    """The batch norms folded for this run's batches: none for sanity, which randomises the
    weights of the very layers (batch norms among them) that folding would merge."""
    from featviz.folding import folded_for

    pairs = () if command == "sanity" else loaded.trace.foldable
    return folded_for(loaded.module, pairs, resolved["layers"])


def _outputs_of(model: dict[str, Any]) -> dict[str, Any]:
    """The model request's fields that change outputs, as records have always hashed them:
    not whether precision is checked, and the precision only when it is not fp32."""
    kept = {key: value for key, value in model.items() if key != "check_precision"}
    if kept["precision"] == "fp32":
        del kept["precision"]
    return kept


def _options_of(options: dict[str, Any]) -> dict[str, Any]:
    """The command's options as records have always hashed them: --top-k's default as 1
    and --min-score only when given (a detector's run says it in ``resolved``)."""
    kept = dict(options)
    if "top_k" in kept and kept["top_k"] is None:
        kept["top_k"] = 1
    if "min_score" in kept and kept["min_score"] is None:
        del kept["min_score"]
    return kept


def default_workers() -> int:
    """Decode (and write) threads: one per core this process may run on, 2 to 32."""
    from featviz.worker.place import usable_cpus

    return min(32, max(2, len(usable_cpus())))


def _settings(
    command: str,
    model: ModelRequest,
    options: MapsRequest | ExplainRequest | FiltersRequest,
    resolved: dict[str, Any],
    loaded: LoadedModel,
    output: OutputRequest,
) -> dict[str, Any]:
    """What decides an image's outputs: not the device, the batch size or where files go."""
    settings = {
        "command": command,
        "model": {
            **_outputs_of(plain(model)),
            "weights": loaded.weights,
            "input_size": loaded.preprocessing.input_size,
            "device": None,
        },
        "options": _options_of(plain(options)),
        "resolved": resolved,
    }
    if output.image_format != "png":  # PNG runs keep the fingerprints they always had
        settings["pictures"] = {"format": output.image_format, "quality": output.quality}
    return settings


def model_record(loaded: LoadedModel) -> dict[str, Any]:
    """The model as the manifest describes it."""
    return {
        "name": loaded.name,
        "weights": loaded.weights,
        "device": str(loaded.device),
        "input_size": loaded.preprocessing.input_size,
    }


def describe_layers(model: ModelRequest) -> str:
    from featviz.models import load_model
    from featviz.report import layer_table

    loaded = load_model(model, structure_only=True)
    try:
        default = loaded.default_cam_layer()
    except UsageError:
        default = None
    return layer_table(loaded.trace, default, loaded.preprocessing.multiple)


def list_models(
    name_filter: str | None, source: str = "torchvision"
) -> list[tuple[str, list[str]]]:
    """(name for --model, its weights) of the source's models whose name contains the filter."""
    if source == "timm":
        from featviz.sources.timm_models import timm_models

        return timm_models(name_filter)
    from featviz.sources.torchvision_models import model_weights_names, torchvision_models

    names = [
        name
        for name in torchvision_models()
        if not name_filter or name_filter.lower() in name.lower()
    ]
    return [(name, model_weights_names(name)) for name in names]


@dataclass(frozen=True)
class FiltersResult:
    """The grids written, and the layers a glob matched that have no kernels to draw."""

    written: list[Path]
    skipped: list[str]


def render_filters(
    model: ModelRequest, output: OutputRequest, request: FiltersRequest
) -> FiltersResult:
    from featviz.artifacts import Artifact, ImageOutputs
    from featviz.filters import conv_layers, filter_grid
    from featviz.jobs import fingerprint
    from featviz.models import load_model
    from featviz.report import RunTally
    from featviz.sinks import RunEnd, sinks_for

    loaded = load_model(model)
    modules = dict(loaded.module.named_modules())
    layers, skipped = conv_layers(loaded.trace, modules, list(request.layers))
    kind = "kernels-all-inputs" if request.all_inputs else "kernels"
    artifacts = [
        Artifact(
            "filters",
            kind,
            layer,
            pixels=filter_grid(
                modules[layer],
                layer,
                all_inputs=request.all_inputs,
                cmap=request.cmap,
                cell_size=request.cell_size,
            ),
        )
        for layer in layers
    ]
    name = loaded.name.rpartition(":")[2]  # a factory's callable, not its file's path
    record = {
        "model": model_record(loaded),
        "request": {"model": plain(model), "output": plain(output), "options": plain(request)},
        "resolved": {"layers": layers},
    }
    settings = _settings("filters", model, request, {"layers": layers}, loaded, output)
    sinks = sinks_for(
        output, command="filters", fingerprint=fingerprint(settings), model=name, record=record
    )
    sinks.open()
    result = sinks.write(ImageOutputs(None, name, None, [], artifacts))
    sinks.close(RunEnd(RunTally(), interrupted=False))
    return FiltersResult([Path(path) for path in result.outputs], skipped)
