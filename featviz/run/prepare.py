"""The library entry points behind each command: build what a run needs, then stream it.

cli/app.py turns options into frozen requests (featviz.requests) and calls one function per command;
everything here raises FeatvizError subclasses and never prints. What is resolved from a request
(layer globs → names, class names → indices) goes into the job and into the manifest's
``resolved`` section, next to the request exactly as given.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from featviz.errors import UsageError
from featviz.run.plan import plain
from featviz.tasks.detection import DEFAULT_MIN_SCORE

if TYPE_CHECKING:
    from featviz.inputs.discover import ImageSource
    from featviz.layers.catalog import ModelTrace
    from featviz.layers.folding import FoldedBatchNorms
    from featviz.model.load import LoadedModel
    from featviz.model.options import ModelRequest
    from featviz.run.jobs.base import ImageJob
    from featviz.run.pipeline import Pipeline, PipelineConfig
    from featviz.run.plan import CamRequest, ExplainRequest, FiltersRequest, MapsRequest, RunRequest
    from featviz.sinks.manifest import RunTally
    from featviz.sinks.options import OutputRequest
    from featviz.sinks.results import ImageResult
    from featviz.sinks.variants import Variant


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

    @cached_property
    def pipeline(self) -> Pipeline:
        from featviz.run.pipeline import Pipeline

        return Pipeline(self.job, self.sources, self.config)

    def results(self) -> Iterator[ImageResult]:
        return self.pipeline.results()

    def settle(self, tally: RunTally, stopped_by: str) -> None:
        """After the stream stopped early: count what finished meanwhile, and say which
        inputs were cut off and which never attempted (unknown for stdin's stream)."""
        finished, cut_off = self.pipeline.stop()
        for result in finished:
            tally.add(result)
        tally.stopped_by = stopped_by
        tally.cut_off = [source.display for source in cut_off]
        if not isinstance(self.sources, list):
            tally.not_attempted = None
            return
        left = tally.reported | {source.index for source in cut_off}
        tally.not_attempted = [s.display for s in self.sources if s.index not in left]

    def finish(self, tally: RunTally, interrupted: bool) -> Path:
        """Write what the run as a whole produced (score's table and plot), close the sinks
        (manifest, TensorBoard, gallery); returns the manifest's path."""
        from featviz.sinks import RunEnd
        from featviz.sinks.artifacts import ImageOutputs

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
    from featviz.layers.catalog import resolve_layers
    from featviz.model.load import load_model
    from featviz.run.jobs.maps import MapsJob

    notes: list[str] = []
    sources = _discover(run, notes)
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
        notes,
    )


def prepare_cam(
    model: ModelRequest, run: RunRequest, output: OutputRequest, cam: CamRequest
) -> PreparedRun:
    from featviz.run.jobs.cam import CamJob

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
    from featviz.explain.targets import check_top_k, resolve_target
    from featviz.layers.catalog import resolve_layers
    from featviz.model.load import load_model
    from featviz.tasks.detection import check_detection_request

    notes: list[str] = []
    sources = _discover(run, notes)
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
        lambda **common: job_type(
            request=request, layers=layers, targets=targets, seed=model.seed, **common
        ),
        notes,
    )


def _with_target_fn(command: str, loaded: LoadedModel, request: ExplainRequest) -> LoadedModel:
    from featviz.tasks.target_fn import with_target_fn

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


def _discover(run: RunRequest, notes: list[str]) -> Iterable[ImageSource]:
    """The inputs: a list (cheap to hold, and the progress bar gets a total) unless paths
    stream in on stdin. Featviz output folders left out are told in ``notes``."""
    import sys

    from featviz.inputs.discover import discover

    def skipped(folder: str) -> None:
        notes.append(f"left out {folder}: a featviz output folder is never read as input")

    reads_stdin = "-" in run.inputs
    sources = discover(
        run.inputs,
        recursive=run.recursive,
        stdin=sys.stdin if reads_stdin else None,
        on_skip=skipped,
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
    notes: list[str],
) -> PreparedRun:
    from featviz.model.precision import PrecisionCheck, autocast_for
    from featviz.run.jobs.base import fingerprint
    from featviz.run.pipeline import PipelineConfig
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
    settings = _settings(command, model, options, resolved, loaded, output)
    sinks = sinks_for(
        output,
        command=command,
        fingerprint=fingerprint(settings),
        variant=variant_of(settings, model, output),
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
    from featviz.layers.folding import folded_for

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


# Options that only choose which files a run writes (each has its own path), never what a file
# at a given path holds: runs differing in these share a model folder.
_CHOOSING_FILES = {
    "cam": {"methods", "layers", "targets", "top_k", "fuse", "heatmap", "save_raw", "min_score"},
    "maps": {"layers", "save_raw"},
}
_NOT_IN_PICTURES = {"cam_batch_size", "score_batch_size"}


def variant_of(settings: dict[str, Any], model: ModelRequest, output: OutputRequest) -> Variant:
    """The model and the settings a run's pictures depend on (featviz.sinks.variants)."""
    from featviz.sinks.variants import Variant, canonical_spec, folder_name

    command = settings["command"]
    choosing = _CHOOSING_FILES.get(command, set()) | _NOT_IN_PICTURES
    described = {**settings["model"], "spec": canonical_spec(model.spec)}
    for key in ("checkpoint", "labels"):
        if described.get(key) and described[key] != "imagenet":
            described[key] = os.path.abspath(described[key])
    options = {key: v for key, v in settings["options"].items() if key not in choosing}
    resolved = {key: v for key, v in settings["resolved"].items() if key not in choosing}
    options = {**options, **resolved, "quality": output.quality}
    name = folder_name(model.spec, model.weights)
    return Variant(name, command, described, options, model.spec)


def default_workers() -> int:
    """Decode (and write) threads: one per core this process may run on, 2 to 32."""
    from featviz.run.cpus import usable_cpus

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


@dataclass(frozen=True)
class LayerCatalog:
    """What ``featviz layers`` shows: the model's trace, its default CAM layer (None when it
    has none) and the input side's multiple (None: one size only)."""

    trace: ModelTrace
    default: str | None
    multiple: int | None


def describe_layers(model: ModelRequest) -> LayerCatalog:
    """The model's layers, built on the meta device: nothing is downloaded."""
    from featviz.model.load import load_model

    loaded = load_model(model, structure_only=True)
    try:
        default = loaded.default_cam_layer()
    except UsageError:
        default = None
    return LayerCatalog(loaded.trace, default, loaded.preprocessing.multiple)


def list_models(
    name_filter: str | None, source: str = "torchvision"
) -> list[tuple[str, list[str]]]:
    """(name for --model, its weights) of the source's models whose name contains the filter."""
    if source == "timm":
        from featviz.model.sources.timm_models import timm_models

        return timm_models(name_filter)
    from featviz.model.sources.torchvision_models import model_weights_names, torchvision_models

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
    from featviz.features.filters import conv_layers, filter_grid
    from featviz.model.load import load_model
    from featviz.run.jobs.base import fingerprint
    from featviz.sinks import RunEnd, sinks_for
    from featviz.sinks.artifacts import Artifact, ImageOutputs
    from featviz.sinks.manifest import RunTally

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
    record = {
        "model": model_record(loaded),
        "request": {"model": plain(model), "output": plain(output), "options": plain(request)},
        "resolved": {"layers": layers},
    }
    settings = _settings("filters", model, request, {"layers": layers}, loaded, output)
    sinks = sinks_for(
        output,
        command="filters",
        fingerprint=fingerprint(settings),
        variant=variant_of(settings, model, output),
        record=record,
    )
    sinks.open()
    result = sinks.write(ImageOutputs(None, loaded.name, None, [], artifacts))
    sinks.close(RunEnd(RunTally(), interrupted=False))
    return FiltersResult([Path(path) for path in result.outputs], skipped)
