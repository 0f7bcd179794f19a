"""From a plan to a run ready to stream: the model built, layers and classes resolved, the job
and its sinks set up (``prepare``). Raises FeatvizError subclasses and never prints: the CLI
and the library are its callers. What is resolved (layer globs → names, class names →
indices, batch sizes) is a ``Resolved`` beside the plan; the manifest, the fingerprint and
the model folder are derived from both (featviz.run.plan).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from featviz.errors import UsageError
from featviz.run.plan import Resolved
from featviz.tasks.detection import DEFAULT_MIN_SCORE

if TYPE_CHECKING:
    from featviz.explainer.options import ExplainRequest
    from featviz.inputs.discover import ImageSource
    from featviz.layers.folding import FoldedBatchNorms
    from featviz.model.load import LoadedModel
    from featviz.run.cluster import ClusterRun
    from featviz.run.jobs.base import ImageJob
    from featviz.run.pipeline import Pipeline, PipelineConfig
    from featviz.run.plan import MapsRequest, Plan, RunRequest
    from featviz.sinks.artifacts import Artifact
    from featviz.sinks.manifest import RunTally
    from featviz.sinks.results import ImageResult
    from featviz.sinks.variants import Variant

# The commands that explain a video model's clips (compare's panels, score's and sanity's
# metrics are drawn and measured on images).
VIDEO_COMMANDS = ("cam", "maps", "compare", "score", "sanity")


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
        """Write what the run as a whole produced (score's table and plot, top's rankings and
        sheets), close the sinks (manifest, TensorBoard, gallery); returns the manifest's
        path."""
        from featviz.sinks import RunEnd

        outputs = self._write_run_outputs(self.job.run_outputs(tally.results))
        return self.job.sinks.close(RunEnd(tally, interrupted, outputs))

    def _write_run_outputs(self, artifacts: Iterable[Artifact]) -> list[str]:
        """Each of ``artifacts`` encoded and written on the writer threads as soon as the job
        hands it over, while it draws the next (top's hundreds of sheets); the files written,
        in the job's order. A failed write (a full disk) raises here, what is queued behind
        it cancelled."""
        from concurrent.futures import ThreadPoolExecutor

        from featviz.run.interrupts import shielded
        from featviz.sinks.artifacts import ImageOutputs

        def write(artifact: Artifact) -> list[str]:
            outputs = ImageOutputs(None, self.model.name, None, [], [artifact])
            return self.job.sinks.write(outputs).outputs

        pool = ThreadPoolExecutor(self.config.write_workers, "featviz-write")
        try:
            futures = []
            for artifact in artifacts:
                with shielded():  # a signal inside submit() would leave the pool's lock held
                    futures.append(pool.submit(write, artifact))
            return [path for future in futures for path in future.result()]
        finally:
            pool.shutdown(cancel_futures=True)

    def report(self, tally: RunTally) -> str | None:
        """The table the terminal shows after the images (score's summary), if any."""
        return self.job.report(tally.results)


def prepare(plan: Plan) -> PreparedRun | ClusterRun:
    """Build what ``plan`` (a per-image command: maps, cam, compare, score, sanity, top) needs,
    and open its output folder once every option has been checked: a typo leaves no folder.
    The inputs are found once the model is built: folders and patterns give the files it
    takes, images or videos."""
    notes: list[str] = []

    def find(loaded: LoadedModel) -> Iterable[ImageSource]:
        return _discover(plan.run, loaded, notes)

    if plan.run.ray is not None:  # the images go to a Ray cluster's actors
        from featviz.run.cluster import prepare_on_cluster

        return prepare_on_cluster(plan, lambda: prepare_sources(plan, find, notes))
    return prepare_sources(plan, find, notes)


def prepare_sources(
    plan: Plan, find: Callable[[LoadedModel], Iterable[ImageSource]], notes: list[str]
) -> PreparedRun:
    """``prepare`` for the inputs ``find`` gives for the built model (a Ray actor's: none, its
    chunks come later)."""
    from featviz.model.load import load_model

    loaded = load_model(plan.model)
    if loaded.clip is not None and plan.command not in VIDEO_COMMANDS:
        raise UsageError(
            f"featviz {plan.command} does not take video models yet",
            hint="featviz cam, maps, compare, score and sanity do",
        )
    sources = find(loaded)
    if loaded.clip is not None:  # a video model: each video's clips are its inputs
        from featviz.inputs.video import clip_sources

        sources = clip_sources(sources, loaded.clip, max_pixels=plan.run.max_pixels)
    if plan.command == "maps":
        resolved, make_job = _maps(plan.options, loaded)
    elif plan.command == "top":
        from featviz.run.jobs.top import resolve_top

        resolved, make_job, sources = resolve_top(plan.options, loaded, sources, plan.run.shard)
    else:
        loaded, resolved = resolve_explaining(plan.command, plan.options, loaded)
        if loaded.clip is not None:
            _check_video_methods(plan.options.methods)
        make_job = _explaining_job(plan, resolved)
    return _prepared(plan, loaded, resolved, make_job, sources, notes)


def _check_video_methods(methods: Iterable[str]) -> None:
    """A video model's clips go only to methods that take them (``--method all`` leaves the
    others out on its first batch)."""
    from featviz.cam import load_method
    from featviz.cam.base import video_refusal
    from featviz.cam.registry import ALL

    for name in methods:
        if name != ALL and not load_method(name).takes_clips:
            raise video_refusal(name)


def default_map_layers(model: LoadedModel) -> list[str]:
    """Every Conv2d (a video model's Conv3d) that runs in the forward, as in the classic hook
    tutorial."""
    from torch import nn

    modules = dict(model.module.named_modules())
    convs = [
        layer.name
        for layer in model.trace.cam_candidates()
        if isinstance(modules.get(layer.name), (nn.Conv2d, nn.Conv3d))
    ]
    if not convs:
        raise UsageError(
            "this model has no Conv2d or Conv3d layer to draw",
            hint="pick layers with --layer; see `featviz layers`",
        )
    return convs


def _maps(request: MapsRequest, loaded: LoadedModel) -> tuple[Resolved, Callable[..., ImageJob]]:
    from featviz.layers.catalog import resolve_layers
    from featviz.run.jobs.maps import MapsJob

    layers = (
        resolve_layers(loaded.trace, list(request.layers), spatial_only=True)
        if request.layers
        else default_map_layers(loaded)
    )
    return Resolved(layers), lambda **common: MapsJob(request=request, layers=layers, **common)


def resolve_explaining(
    command: str, request: ExplainRequest, loaded: LoadedModel
) -> tuple[LoadedModel, Resolved]:
    """What a command that explains classes (cam, compare, score, sanity) asks for, resolved
    on ``loaded``: its layers and classes, a detector's boxes; ``--target-fn``'s model."""
    from featviz.explainer.targets import check_top_k, resolve_target
    from featviz.layers.catalog import resolve_layers
    from featviz.tasks.detection import check_detection_request

    loaded, prompted = _with_prompts(command, loaded, request)
    if request.target_fn is not None:
        loaded = _with_target_fn(command, loaded, request)
    layers = (
        resolve_layers(loaded.trace, list(request.layers), spatial_only=True)
        if request.layers
        else [loaded.default_cam_layer()]
    )
    classes = loaded.num_classes
    targets = prompted or [
        resolve_target(text, loaded.categories, classes) for text in request.targets
    ]
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
    boxes = None
    if detector:
        min_score = DEFAULT_MIN_SCORE if request.min_score is None else request.min_score
        boxes = {"min_score": min_score, "top_k": request.top_k}
    return loaded, Resolved(layers, targets, boxes)


def _explaining_job(plan: Plan, resolved: Resolved) -> Callable[..., ImageJob]:
    job = job_type(plan.command)

    def make(**common: object) -> ImageJob:
        return job(
            request=plan.options,
            layers=resolved.layers,
            targets=resolved.targets,
            seed=plan.model.seed,
            **common,
        )

    return make


def job_type(command: str) -> type:
    """The job class of a command that explains classes."""
    if command == "cam":
        from featviz.run.jobs.cam import CamJob as job
    elif command == "compare":
        from featviz.run.jobs.compare import CompareJob as job
    elif command == "score":
        from featviz.run.jobs.score import ScoreJob as job
    elif command == "sanity":
        from featviz.run.jobs.sanity import SanityJob as job
    else:
        raise ValueError(f"no job for command '{command}'")
    return job


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


def _with_prompts(
    command: str, loaded: LoadedModel, request: ExplainRequest
) -> tuple[LoadedModel, list[int]]:
    """A two-tower model scoring its images against ``-t text:…`` or ``--prompts``' prompts
    (featviz.tasks.prompts), and the indices of the ``-t text:…`` prompts; ``loaded`` as it
    is, and no indices, when there are no prompts."""
    from featviz.tasks.prompts import TEXT_PREFIX, read_prompts, takes_prompts, with_prompts

    texts = [
        t.removeprefix(TEXT_PREFIX).strip() for t in request.targets if t.startswith(TEXT_PREFIX)
    ]
    if not texts and request.prompts is None:
        if takes_prompts(loaded.module) and request.target_fn is None:
            raise UsageError(
                f"{loaded.name} compares images with text: say what to look for",
                hint='-t "text:a photo of a cat" (repeatable), or --prompts FILE, one a line',
            )
        return loaded, []
    asked = "--prompts" if request.prompts is not None else "-t text:…"
    if not takes_prompts(loaded.module):
        raise UsageError(
            f"{asked}: {loaded.name} has no text tower to read prompts with",
            hint="text prompts need a CLIP-style model: open_clip/NAME, an hf: CLIP or "
            "SigLIP, or a module with encode_text (see the text prompts guide)",
        )
    if request.target_fn is not None:
        raise UsageError(f"{asked} and --target-fn exclude each other", hint="pick one")
    if texts and request.prompts is not None:
        raise UsageError(
            "-t text:… and --prompts exclude each other",
            hint="pick the file's prompts with -t PROMPT, or give every prompt as -t text:…",
        )
    if texts and (len(texts) != len(request.targets) or not all(texts)):
        raise UsageError(
            "-t text:…: once one target is a text prompt, all must be, none empty",
            hint='give each as -t "text:a photo of a cat"',
        )
    prompts = read_prompts(request.prompts) if request.prompts else list(dict.fromkeys(texts))
    if command == "score" and len(prompts) < 2:
        raise UsageError(
            "score measures how the prompts' probabilities move, and one prompt has none",
            hint='give two prompts or more (-t "text:…" repeated, or --prompts FILE)',
        )
    loaded = with_prompts(loaded, prompts, classify=request.prompts is not None)
    return loaded, [prompts.index(text) for text in texts]


def _discover(run: RunRequest, loaded: LoadedModel, notes: list[str]) -> Iterable[ImageSource]:
    """The inputs of ``loaded``: a list (cheap to hold, and the progress bar gets a total)
    unless paths stream in on stdin. Folders and patterns give the files it takes, images or
    a video model's videos; featviz output folders left out, and how many files of the other
    kind, are told in ``notes``."""
    import sys

    from featviz.inputs.discover import IMAGES, VIDEOS, discover

    def skipped(folder: str) -> None:
        notes.append(f"left out {folder}: a featviz output folder is never read as input")

    kind = IMAGES if loaded.clip is None else VIDEOS
    aside = _Aside(notes, loaded.name, kind.noun, VIDEOS.noun if kind is IMAGES else IMAGES.noun)
    reads_stdin = "-" in run.inputs
    sources = discover(
        run.inputs,
        recursive=run.recursive,
        stdin=sys.stdin if reads_stdin else None,
        on_skip=skipped,
        kind=kind,
        on_aside=aside,
    )
    if run.shard is not None:
        # After discovery, which gives every image its unique output path over all inputs.
        sources = (source for source in sources if run.shard.holds(source.relative))
    return sources if reads_stdin else list(sources)


class _Aside:
    """Counts the files of the other kind that folders and patterns leave out, in one note
    kept up to date (the summary reads the notes when the run ends)."""

    def __init__(self, notes: list[str], model: str, takes: str, other: str) -> None:
        self.notes, self.model, self.takes, self.other = notes, model, takes, other
        self.count = 0
        self.at: int | None = None  # the note's place in ``notes``

    def __call__(self, path: str) -> None:
        self.count += 1
        if self.at is None:
            self.at = len(self.notes)
            self.notes.append("")
        self.notes[self.at] = (
            f"left aside {self.count} {self.other} file{'s' if self.count > 1 else ''} found in "
            f"folders or patterns: "
            f"{self.model} takes {self.takes}s"
        )


def _prepared(
    plan: Plan,
    loaded: LoadedModel,
    resolved: Resolved,
    make_job: Callable[..., ImageJob],
    sources: Iterable[ImageSource],
    notes: list[str],
) -> PreparedRun:
    from featviz.model.precision import PrecisionCheck, autocast_for
    from featviz.run.pipeline import PipelineConfig
    from featviz.sinks import sinks_for

    run = plan.run
    resolved.batch_size = run.batch_size or (32 if loaded.device.type == "cuda" else 8)
    resolved.workers = run.workers or default_workers()
    sinks = sinks_for(
        plan.output,
        command=plan.command,
        fingerprint=plan.fingerprint(loaded, resolved),
        variant=model_folder(plan, loaded, resolved),
        record=lambda: plan.record(loaded, resolved),
    )
    job = make_job(
        model=loaded, sinks=sinks, max_pixels=run.max_pixels, skip_existing=run.skip_existing
    )
    autocast = autocast_for(plan.model.precision, loaded.device)  # fp16 on a CPU: a usage error
    folding = _folding(plan.command, loaded, resolved)
    resolved.folded_batch_norms = len(folding)

    @contextmanager
    def compute() -> Iterator[None]:
        with loaded.in_use(), autocast(), folding.applied():
            yield

    check = None
    if plan.model.check_precision and plan.model.precision != "fp32":
        check = PrecisionCheck(loaded, plan.model.precision, notes, resolved)
    sinks.open()  # after the job checked its options: a typo leaves no folder behind
    return PreparedRun(
        command=plan.command,
        model=loaded,
        out=plan.output.out,
        job=job,
        sources=sources,
        config=PipelineConfig(
            batch_size=resolved.batch_size,
            decode_workers=resolved.workers,
            write_workers=resolved.workers,
            max_memory=run.max_memory,
            compute=compute,
            first_batch=check,
        ),
        notes=notes,
        total=len(sources) if isinstance(sources, list) else None,
    )


def _folding(command: str, loaded: LoadedModel, resolved: Resolved) -> FoldedBatchNorms:
    """The batch norms folded for this run's batches: none for sanity, which randomises the
    weights of the very layers (batch norms among them) that folding would merge."""
    from featviz.layers.folding import folded_for

    pairs = () if command == "sanity" else loaded.trace.foldable
    return folded_for(loaded.module, pairs, resolved.layers)


def model_folder(plan: Plan, loaded: LoadedModel, resolved: Resolved) -> Variant:
    """The model and the settings a run's pictures depend on (featviz.sinks.variants)."""
    from featviz.sinks.variants import Variant, canonical_spec, folder_name

    model, options = plan.pictures(loaded, resolved)
    model = {**model, "spec": canonical_spec(plan.model.spec)}
    name = folder_name(plan.model.spec, plan.model.weights)
    return Variant(name, plan.command, model, options, plan.model.spec)


def default_workers() -> int:
    """Decode (and write) threads: one per core this process may run on, 2 to 32."""
    from featviz.run.cpus import usable_cpus

    return min(32, max(2, len(usable_cpus())))
