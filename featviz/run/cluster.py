"""``--ray``: a command's images carried out by the actors of a Ray cluster, the job unchanged.

The driver (the process the command runs in) prepares the run exactly as a plain run does —
the inputs found, the model built for the fingerprint and the manifest, the output folder
opened — and then, instead of its own pipeline, hands the images in chunks to actors. Each
actor prepares the same plan once (the model is loaded once per actor), streams its chunks
through the same pipeline, job and sinks into the shared output folder, and returns each
image's ``ImageResult``; the driver tallies them as they come, writes the manifest and builds
the gallery. ``--skip-existing`` is decided on the driver, so it holds across runs however
the images were spread.

Faults: an actor whose process or node dies is restarted by Ray (it loads the model again) and
the chunk it held is run again from its start, ``TASK_RETRIES`` times; every output is written
atomically and the same image gives the same bytes, so an image redone is an image done once,
and only the chunk's one returned list of results is counted. A chunk lost more often than
that fails its images, one by one, as an unreadable file does. An interrupt asks every actor
to stop after the image it is writing, collects what they finished, and says which images
were cut off or never attempted, as a plain run does.

A command whose run outputs are gathered over the images rather than made from their results
(``top``'s rankings) gets them the same way: with each chunk's results, the actor's job hands
over what it gathered over that chunk (``ImageJob.take_partial``, then forgotten there, so a
chunk run again counts once), and the driver's job merges it in (``add_partial``) before it
writes what one run writes: for ``top``, exactly what ``--shard`` and ``--merge`` would.

Ray is imported here only, and only when ``--ray`` is given (``featviz[ray]``).
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from featviz.errors import FeatvizError, RunError, UsageError

if TYPE_CHECKING:
    from pathlib import Path

    from featviz.inputs.discover import ImageSource
    from featviz.run.plan import Plan, RayRequest
    from featviz.run.prepare import PreparedRun
    from featviz.sinks.manifest import RunTally
    from featviz.sinks.results import ImageResult

CHUNK_BATCHES = 4  # batches per actor call at most: fewer calls, while every actor gets work
TASKS_PER_ACTOR = 2  # calls queued on each actor: the next chunk is there when one ends
TASK_RETRIES = 3  # runs of a chunk again after its actor died on it
STOP_WAIT_S = 120.0  # how long an interrupt waits for the actors' images being written
WAIT_TICK_S = 0.5  # the driver wakes this often while it waits: Ctrl-C is never held up


def prepare_on_cluster(plan: Plan, build: Callable[[], PreparedRun]) -> ClusterRun:
    """Connect to ``plan.run.ray``'s cluster (a usage error when there is none, before the
    model is built) and ``build`` the driver's run; the actors start with the first chunk."""
    if plan.output.tensorboard is not None:
        raise UsageError(
            "--tensorboard does not go with --ray yet: each actor would write event files of "
            "its own",
            hint="leave out one of them (a run without --ray writes the event files)",
        )
    ray = _import_ray()
    request = plan.run.ray
    started = _connect(ray, request.address)
    try:
        prepared = build()
    except BaseException:
        if started:
            ray.shutdown()
        raise
    count = request.actors or _actors_held(ray, request)
    return ClusterRun(prepared, ray, lambda: _start_actors(ray, plan, count), started, count)


class ClusterActor:
    """One Ray actor: the plan prepared once, then chunk after chunk of images through it.

    ``folder``: the driver's working folder, entered where it exists (a shared file system
    mounted at the same place), so that relative inputs, ``--out`` and model files mean there
    what they mean on the driver."""

    def __init__(self, plan: Plan, folder: str) -> None:
        from featviz.run.prepare import prepare_sources

        if os.path.isdir(folder):
            os.chdir(folder)
        self.stopping = threading.Event()
        self.failure: FeatvizError | None = None
        try:
            self.prepared = prepare_sources(plan, lambda _: [], [])
        except FeatvizError as exc:  # this node lacks a file, a GPU…: the driver is told
            self.failure = exc

    def run(self, sources: list[ImageSource]) -> tuple[list[ImageResult], Any]:
        """Every image of the chunk through the job: one result each, or, once ``stop`` was
        called, those finished by then; and what the job gathered over the chunk for the
        whole run (``ImageJob.take_partial``)."""
        from featviz.run.pipeline import Pipeline

        if self.failure is not None:
            raise self.failure
        job = self.prepared.job
        if self.stopping.is_set():  # a chunk queued behind the interrupted one
            return [], None
        pipeline = Pipeline(job, sources, self.prepared.config)
        results = []
        for result in pipeline.results():
            results.append(result)
            if self.stopping.is_set():
                finished, _ = pipeline.stop()  # the writes under way complete, atomically
                return results + finished, job.take_partial()
        return results, job.take_partial()

    def stop(self) -> None:
        self.stopping.set()


class ClusterRun:
    """A run whose images go to Ray actors: the same ``results``, ``settle``, ``finish`` and
    ``report`` as ``PreparedRun``'s, which it wraps (the terminal streams either)."""

    def __init__(
        self,
        prepared: PreparedRun,
        ray: Any,
        launch: Callable[[], list[Any]],
        started: bool,
        count: int,
    ) -> None:
        self.prepared = prepared
        self.ray = ray
        self.launch = launch  # the actors, started with the first chunk: none when all skip
        self.actors: list[Any] = []
        self.started = started  # whether this run started Ray, and so shuts it down
        self.pending: dict[Any, tuple[Any, list[ImageSource]]] = {}  # call → (actor, chunk)
        self.chunk_size = _chunk_size(prepared, count)

    @property
    def out(self) -> Path:
        return self.prepared.out

    @property
    def total(self) -> int | None:
        return self.prepared.total

    @property
    def notes(self) -> list[str]:
        return self.prepared.notes

    def results(self) -> Iterator[ImageResult]:
        """One result per input, as the actors return their chunks (skipped ones first)."""
        queued: dict[Any, int] = {}
        chunks = _chunks(self.prepared, self.chunk_size)
        exhausted = False
        while True:
            while not exhausted and min(queued.values(), default=0) < TASKS_PER_ACTOR:
                chunk = next(chunks, None)
                if chunk is None:
                    exhausted = True
                elif isinstance(chunk, list):
                    queued = queued or dict.fromkeys(self._actors(), 0)
                    actor = min(queued, key=queued.get)
                    self.pending[actor.run.remote(chunk)] = (actor, chunk)
                    queued[actor] += 1
                else:
                    yield chunk  # done by an earlier run (--skip-existing)
            if not self.pending:
                return
            ready, _ = self.ray.wait(list(self.pending), num_returns=1, timeout=WAIT_TICK_S)
            for call in ready:
                actor, chunk = self.pending.pop(call)
                queued[actor] -= 1
                yield from self._returned(call, chunk)

    def _actors(self) -> list[Any]:
        self.actors = self.launch()
        self.prepared.notes.append(f"{len(self.actors)} Ray actors ran the images")
        return self.actors

    def settle(self, tally: RunTally, stopped_by: str) -> None:
        """After the stream stopped early: every actor stops after the images it is writing,
        what they finished is counted, and the images cut off and never attempted are named."""
        for actor in self.actors:
            actor.stop.remote()
        calls = list(self.pending)
        ready = []
        if calls:
            ready, _ = self.ray.wait(calls, num_returns=len(calls), timeout=STOP_WAIT_S)
        for call in ready:
            _, chunk = self.pending.pop(call)
            for result in self._returned(call, chunk, raising=False):
                tally.add(result)
        tally.stopped_by = stopped_by
        cut_off = [s for _, chunk in self.pending.values() for s in chunk]
        cut_off = [s for s in cut_off if s.index not in tally.reported]
        tally.cut_off = [source.display for source in cut_off]
        sources = self.prepared.sources
        if not isinstance(sources, list):
            tally.not_attempted = None
            return
        left = tally.reported | {source.index for source in cut_off}
        tally.not_attempted = [s.display for s in sources if s.index not in left]

    def finish(self, tally: RunTally, interrupted: bool) -> Path:
        """The manifest and the gallery, written by the driver; then the actors go."""
        try:
            return self.prepared.finish(tally, interrupted)
        finally:
            for actor in self.actors:
                self.ray.kill(actor)
            if self.started:
                self.ray.shutdown()

    def report(self, tally: RunTally) -> str | None:
        return self.prepared.report(tally)

    def _returned(
        self, call: Any, chunk: list[ImageSource], raising: bool = True
    ) -> list[ImageResult]:
        """A chunk's results, what its job gathered merged into the driver's; an actor lost
        more than TASK_RETRIES times fails its images, and a RunError (a full disk) stops the
        run, as it does without Ray."""
        from featviz.sinks.results import ImageResult

        exceptions = self.ray.exceptions
        try:
            results, partial = self.ray.get(call)
        except exceptions.RayTaskError as exc:
            if not raising:
                return []
            cause = exc.cause
            if isinstance(cause, FeatvizError):
                raise cause from None
            raise RunError(f"a Ray actor failed: {type(cause).__name__}: {cause}") from None
        except exceptions.RayActorError as exc:
            reason = f"its Ray actor was lost {TASK_RETRIES + 1} times ({_first_line(exc)})"
            return [ImageResult(s, error=f"{s.display}: {reason}") for s in chunk]
        if partial is not None:
            self.prepared.job.add_partial(partial)
        return results


def _chunks(prepared: PreparedRun, size: int) -> Iterator[list[ImageSource] | ImageResult]:
    """The inputs in chunks of ``size`` for the actors, and the result of each image an
    earlier run finished (``--skip-existing``), as it is met."""
    chunk: list[ImageSource] = []
    for source in prepared.sources:
        done = prepared.job.finished(source)
        if done is not None:
            yield done
            continue
        chunk.append(source)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _chunk_size(prepared: PreparedRun, actors: int) -> int:
    """Whole batches (the actors batch as a plain run does, so maps are the same), up to
    CHUNK_BATCHES of them, and no more than an even share of a known number of inputs."""
    batch = prepared.config.batch_size
    batches = CHUNK_BATCHES
    if prepared.total is not None:
        share = math.ceil(prepared.total / actors)
        batches = max(1, min(batches, math.ceil(share / batch)))
    return batch * batches


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UsageError("--ray needs the ray package", hint="pip install 'featviz[ray]'") from None
    return ray


def _connect(ray: Any, address: str) -> bool:
    """Join the cluster at ``address`` (``local``: start one here); whether this call started
    Ray (a caller that had already, a test or a notebook, keeps its own)."""
    if ray.is_initialized():
        return False
    try:
        ray.init(
            address=address,
            log_to_driver=False,  # the actors' prints would mix into --json's stdout
            logging_level=logging.WARNING,
        )
    except (ConnectionError, ValueError, RuntimeError) as exc:
        raise UsageError(
            f"--ray {address}: no Ray cluster to join ({_first_line(exc)})",
            hint="start one with `ray start --head`, set RAY_ADDRESS, or use --ray local",
        ) from None
    return True


def _start_actors(ray: Any, plan: Plan, count: int) -> list[Any]:
    """``count`` actors, each loading the model; started together, they load at the same time.
    They do not skip finished images (the driver did): a chunk run again redoes all of its.
    Each decodes and writes with threads for its own CPUs (at least 2), not the whole node's."""
    request = plan.run.ray
    workers = plan.run.workers or max(2, math.ceil(request.cpus))
    run = replace(plan.run, ray=None, skip_existing=False, workers=workers)
    actor_plan = replace(plan, run=run)
    remote = ray.remote(
        num_cpus=request.cpus,
        num_gpus=request.gpus,
        max_restarts=-1,
        max_task_retries=TASK_RETRIES,
        concurrency_groups={"control": 1},  # stop() runs while run() does
    )(_with_control(ray, ClusterActor))
    return [remote.remote(actor_plan, os.getcwd()) for _ in range(count)]


def _with_control(ray: Any, actor: type) -> type:
    """``actor`` with ``stop`` in its own concurrency group: heard while a chunk runs."""

    class Actor(actor):
        @ray.method(concurrency_group="control")
        def stop(self) -> None:
            super().stop()

    Actor.__name__ = Actor.__qualname__ = actor.__name__
    return Actor


def _actors_held(ray: Any, request: RayRequest) -> int:
    """How many actors of ``request``'s size the cluster holds now: by GPUs when each takes
    some, else by CPUs; at least one."""
    resources = ray.cluster_resources()
    if request.gpus > 0:
        return max(1, int(resources.get("GPU", 0) // request.gpus))
    if request.cpus > 0:
        return max(1, int(resources.get("CPU", 0) // request.cpus))
    return max(1, int(resources.get("CPU", 1)))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
