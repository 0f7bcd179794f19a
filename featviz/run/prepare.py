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
from featviz.run.resolve import (
    check_video_methods,
    explaining_job,
    maps_job,
    resolve_explaining,
)

if TYPE_CHECKING:
    from featviz.inputs.discover import ImageSource
    from featviz.layers.folding import FoldedBatchNorms
    from featviz.model.load import LoadedModel
    from featviz.run.cluster import ClusterRun
    from featviz.run.jobs.base import ImageJob
    from featviz.run.pipeline import Pipeline, PipelineConfig
    from featviz.run.plan import Plan, RunRequest
    from featviz.sinks.artifacts import RunOutput
    from featviz.sinks.manifest import RunTally
    from featviz.sinks.results import ImageResult
    from featviz.sinks.variants import Variant

# The commands that take a video model's clips (top ranks still images).
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

    def _write_run_outputs(self, artifacts: Iterable[RunOutput]) -> list[str]:
        """Each of ``artifacts`` made (a function's, top's hundreds of sheets), encoded and
        written on the writer threads as soon as the job hands it over; the files written, in
        the job's order. A failed write (a full disk) raises here, what is queued behind it
        cancelled."""
        from concurrent.futures import ThreadPoolExecutor

        from featviz.run.handovers import prompt_handovers
        from featviz.run.interrupts import shielded
        from featviz.sinks.artifacts import ImageOutputs

        def write(output: RunOutput) -> list[str]:
            artifact = output() if callable(output) else output
            outputs = ImageOutputs(None, self.model.name, None, [], [artifact])
            return self.job.sinks.write(outputs).outputs

        with prompt_handovers():
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
        resolved, make_job = maps_job(plan.options, loaded)
    elif plan.command == "top":
        from featviz.run.jobs.top import resolve_top

        resolved, make_job, sources = resolve_top(plan.options, loaded, sources, plan.run.shard)
    else:
        loaded, resolved = resolve_explaining(plan.command, plan.options, loaded)
        if loaded.clip is not None:
            check_video_methods(plan.options.methods)
        make_job = explaining_job(plan, resolved)
    return _prepared(plan, loaded, resolved, make_job, sources, notes)


def _discover(run: RunRequest, loaded: LoadedModel, notes: list[str]) -> Iterable[ImageSource]:
    """The inputs of ``loaded``: a list (cheap to hold, and the progress bar gets a total)
    unless paths stream in on stdin. Folders and patterns give the files it takes, images or
    a video model's videos; featviz output folders left out, and how many files of the other
    kind, are told in ``notes``."""
    import sys

    from featviz.inputs.discover import discover
    from featviz.inputs.kinds import IMAGES, VIDEOS

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
