"""Streams any number of images through decode → batch → compute → render/write, overlapped.

Reading the images' headers (what each will cost) and decoding them run in a small thread pool
ahead of the model, off its thread: one at a time until the model has to wait for a decode
(featviz.run.lanes; decoders the model does not need only take cores from it). Images whose
resized tensors have the same shape are batched together (photos from one camera share a
shape), and a batch's input tensor is put together (stacked, moved to the model's device,
normalised) on a thread of its own while the batch before it runs; the model work runs on the
calling thread; colour-mapping, PNG encoding and writing run in a second pool while the next
batch computes.
Every stage is bounded, so the number of images held in memory never exceeds ``max_in_flight``
however long the input list is, and results are yielded as they complete.

The command-specific work lives in a ``Job`` (maps.MapsJob, cam_job.CamJob): it says how to
recognise an image already done, how a batch's images become the model's input, and turns a
batch of loaded images into one write task each (or its result, where it has nothing to
write).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from featviz.errors import FeatvizError, InputError
from featviz.inputs.decode import declared_pixels
from featviz.inputs.video import Clip
from featviz.run.handovers import prompt_handovers
from featviz.run.heap import return_freed_memory
from featviz.run.interrupts import shielded
from featviz.run.lanes import Lanes
from featviz.run.plan import DEFAULT_MAX_MEMORY

if TYPE_CHECKING:
    from featviz.inputs.discover import ImageSource
from featviz.inputs.loaded import LoadedImage
from featviz.sinks.results import ImageResult

T = TypeVar("T")


class Job(Protocol):
    def finished(self, source: ImageSource) -> ImageResult | None: ...

    def load(self, source: ImageSource) -> LoadedImage: ...

    def assemble(self, batch: list[LoadedImage]) -> Any:
        """The batch's input as the model takes it: run on a thread of the pipeline's own
        while the batch before runs."""

    def process(
        self, batch: list[LoadedImage], inputs: Any
    ) -> list[Callable[[], ImageResult] | ImageResult]:
        """The model's work on ``batch`` (``inputs`` its ``assemble``): one write task per
        image, or its result where it has nothing to write."""


@dataclass
class PipelineStats:
    """Counters the pipeline keeps about itself: what bounded memory means, checkable."""

    in_flight: int = 0
    max_in_flight: int = 0
    batches: int = 0
    largest_batch: int = 0
    reserved: int = 0  # bytes the images in flight are expected to take
    max_reserved: int = 0
    costs: dict[int, int] = field(default_factory=dict)  # id(source) → its bytes

    def enter(self, source: ImageSource, cost: int) -> None:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        self.costs[id(source)] = cost
        self.reserved += cost
        self.max_reserved = max(self.max_reserved, self.reserved)

    def leave(self, source: ImageSource) -> None:
        self.in_flight -= 1
        self.reserved -= self.costs.pop(id(source), 0)

    def admits(self, cost: int, budget: int) -> bool:
        """Whether an image of ``cost`` bytes may start now: within the budget, or alone."""
        return self.in_flight == 0 or self.reserved + cost <= budget


# What one image in flight costs per pixel of the original, measured on 50-megapixel photos
# through `featviz cam` (benchmarks/bench_memory.py): the decoded photo (3 bytes), its
# full-resolution heatmap (4), the overlay (3), its PNG (~2) and the encoders' buffers.
BYTES_PER_PIXEL = 16


LARGE_IMAGE_BYTES = BYTES_PER_PIXEL * 4_000_000  # from 4 megapixels on, heaps are trimmed after


@dataclass
class PipelineConfig:
    """``max_memory``: the bytes the images in flight may take (BYTES_PER_PIXEL per pixel);
    an image larger than that on its own still runs, alone."""

    batch_size: int = 8
    decode_workers: int = 2  # the most decoding at once (see featviz.run.lanes)
    write_workers: int = 2
    max_memory: int = DEFAULT_MAX_MEMORY
    # The context each batch's model work runs in (autocast for --precision), and what runs
    # first on the first batch's input (--check-precision).
    compute: Callable[[], AbstractContextManager] = nullcontext
    first_batch: Callable[[Any], None] | None = None

    @property
    def max_in_flight(self) -> int:
        """The most images held at once, decoded or being decoded, grouped, assembled, or
        being written: enough for a batch to run while the next is assembled, a third groups
        and the decoders run a batch ahead."""
        return 4 * self.batch_size + self.decode_workers + self.write_workers


def run(
    job: Job,
    sources: Iterable[ImageSource],
    config: PipelineConfig,
    stats: PipelineStats | None = None,
) -> Iterator[ImageResult]:
    """Yield one ImageResult per input (``Pipeline(…).results()``)."""
    return Pipeline(job, sources, config, stats).results()


class Pipeline:
    """One stream of images through a job: ``results()`` once; after a stop (an interrupt, a
    fatal error, or a consumer that left early), ``stop()`` says what was finished meanwhile
    and which images it cut off."""

    def __init__(
        self,
        job: Job,
        sources: Iterable[ImageSource],
        config: PipelineConfig,
        stats: PipelineStats | None = None,
    ) -> None:
        self.job = job
        self.sources = sources
        self.config = config
        self.stats = stats or PipelineStats()
        self.decode_ahead = config.batch_size + config.decode_workers
        # The next images, not started, each with its header being read in a decoder: what
        # it costs is known, off the model's thread, when its turn comes.
        self.heads: deque[tuple[ImageSource, Future[int]]] = deque()
        self.loads: deque[tuple[ImageSource, Future[LoadedImage]]] = deque()
        self.groups: dict[tuple[int, ...], list[LoadedImage]] = {}  # decoded, by tensor shape
        # Full batches, each with its input being assembled, oldest first.
        self.assembling: deque[tuple[list[LoadedImage], Future[Any]]] = deque()
        self.writes: deque[tuple[ImageSource, Future[ImageResult]]] = deque()
        self.started: dict[int, ImageSource] = {}  # id(source) → source, until reported
        self.stream: Iterator[ImageResult] | None = None

    def results(self) -> Iterator[ImageResult]:
        """Yield one ImageResult per input.

        A RunError (disk full…) fails the image whose write met it, then propagates and stops
        the stream; per-image problems (InputError, a batch the model rejects) become failed
        results and the run goes on.
        """
        self.stream = (self._reported(result) for result in self._stream())
        return self.stream

    def stop(self) -> tuple[list[ImageResult], list[ImageSource]]:
        """After the stream stopped early: the images whose writes finished but were not yet
        yielded (written whole, or failed), and the images started but cut off."""
        if self.stream is not None:
            self.stream.close()  # cancels what has not started; running writes finish
        finished = []
        for source, future in self.writes:
            if future.done() and not future.cancelled():
                finished.append(self._reported(_settled(source, future)))
        self.writes.clear()
        cut_off = sorted(self.started.values(), key=lambda source: source.index)
        return finished, cut_off

    def _reported(self, result: ImageResult) -> ImageResult:
        self.started.pop(id(result.source), None)
        return result

    def _stream(self) -> Iterator[ImageResult]:
        config = self.config
        self.pending, self.exhausted = iter(self.sources), False
        with (
            prompt_handovers(),
            ThreadPoolExecutor(config.decode_workers, "featviz-decode") as decoders,
            ThreadPoolExecutor(1, "featviz-assemble") as self.assembler,
            ThreadPoolExecutor(config.write_workers, "featviz-write") as self.writer,
        ):
            self.decoder = Lanes(decoders, config.decode_workers)
            try:
                while True:
                    yield from self._read_ahead()
                    self._start_loads()
                    if self.loads:
                        yield from self._take_load()
                    elif self.assembling:  # nothing more to decode now (inputs done or the cap)
                        yield from self._dispatch(*self.assembling.popleft())
                    elif self.groups:
                        yield from self._assemble(self.groups.pop(_largest(self.groups)))
                    elif self.writes:
                        yield from self._drain_writes(len(self.writes) - 1)
                    else:
                        break
                    yield from self._drain_writes(config.batch_size + config.write_workers)
            except BaseException:
                # Interrupted, a fatal error or the consumer gone: drop work not started;
                # running writes finish (they are atomic) while the pools shut down, and
                # stop() collects them.
                for _, queued in (*self.heads, *self.loads, *self.assembling, *self.writes):
                    queued.cancel()
                raise

    def _read_ahead(self) -> Iterator[ImageResult]:
        """Have the headers of the next images read; an image done by an earlier run (its
        result from the job) is reported at once."""
        while not self.exhausted and len(self.heads) < self.decode_ahead:
            source = next(self.pending, None)
            if source is None:
                self.exhausted = True
                return
            done = self.job.finished(source)
            if done is not None:
                yield done
                continue
            with shielded():  # a signal inside submit() would leave the pool's lock held
                self.heads.append((source, self.decoder.submit(_pixels, source)))

    def _start_loads(self) -> None:
        """Start decoding ahead, but never hold more than max_in_flight images, nor more
        bytes than max_memory (an image larger than that alone)."""
        stats, config = self.stats, self.config
        while (
            self.heads
            and len(self.loads) < self.decode_ahead
            and stats.in_flight < config.max_in_flight
        ):
            source, header = self.heads[0]
            cost = BYTES_PER_PIXEL * self._waited(header).result()
            if not stats.admits(cost, config.max_memory):
                return  # it waits until images in flight have been written
            self.heads.popleft()
            stats.enter(source, cost)
            self.started[id(source)] = source
            with shielded():
                self.loads.append((source, self.decoder.submit(self.job.load, source)))

    def _take_load(self) -> Iterator[ImageResult]:
        """The oldest decode's image into the group of its shape (photos from one camera
        share one); a group that fills a batch is assembled for the model."""
        source, future = self.loads.popleft()
        try:
            item = self._waited(future).result()
        except InputError as exc:
            self.stats.leave(source)
            yield ImageResult(source, error=exc.message)
            return
        shape, size, groups = tuple(item.tensor.shape), self.config.batch_size, self.groups
        groups.setdefault(shape, []).append(item)
        if len(groups[shape]) >= size:
            yield from self._assemble(groups.pop(shape))
        elif sum(len(group) for group in groups.values()) >= 2 * size:
            # Many shapes, none filling a batch: free memory with the largest.
            yield from self._assemble(groups.pop(_largest(groups)))

    def _assemble(self, batch: list[LoadedImage]) -> Iterator[ImageResult]:
        """Have ``batch``'s input put together; the batch before, whose input is ready by
        now, goes to the model meanwhile. Its own thread, not a decoder: a slow decode queued
        before it would hold the model up."""
        with shielded():  # a signal inside submit() would leave the pool's lock held
            self.assembling.append((batch, self.assembler.submit(self.job.assemble, batch)))
        if len(self.assembling) > 1:
            yield from self._dispatch(*self.assembling.popleft())

    def _waited(self, decode: Future[T]) -> Future[T]:
        """``decode``, about to be waited for: once the model has run, a decode it has to
        wait for opens another lane of decoders."""
        if self.stats.batches and not decode.done():
            with shielded():  # widening submits a lane to the pool, whose lock a signal would hold
                self.decoder.widen()
        return decode

    def _dispatch(self, batch: list[LoadedImage], assembled: Future[Any]) -> Iterator[ImageResult]:
        """The model's work on ``batch``, here; its writes queued on the writer threads."""
        stats, config = self.stats, self.config
        try:
            inputs = assembled.result()  # its own thread: a wait here is not the decoders'
            stats.batches += 1
            stats.largest_batch = max(stats.largest_batch, len(batch))
            with config.compute():
                if stats.batches == 1 and config.first_batch is not None:
                    config.first_batch(inputs)
                tasks = self.job.process(batch, inputs)
        except InputError as exc:  # about the batch: name each image, as decode errors do
            for item in batch:
                stats.leave(item.source)
                yield ImageResult(item.source, error=f"{item.source.display}: {exc.message}")
            return
        for item, task in zip(batch, tasks):
            with shielded():  # a signal inside submit() would leave the pool's lock held
                write = _done(task) if isinstance(task, ImageResult) else self.writer.submit(task)
                self.writes.append((item.source, write))

    def _drain_writes(self, keep: int) -> Iterator[ImageResult]:
        """Report the writes finished in order, and wait for those beyond the last ``keep``."""
        writes = self.writes
        while writes and (len(writes) > keep or _finished(writes[0][1])):
            source, future = writes[0]
            result = _result_of(source, future)  # a RunError leaves it queued for stop()
            writes.popleft()
            if self.stats.costs.get(id(source), 0) >= LARGE_IMAGE_BYTES:
                return_freed_memory()  # its buffers were freed in the writer threads' heaps
            self.stats.leave(source)
            yield result


def _done(result: ImageResult) -> Future[ImageResult]:
    """The write of an image that has nothing to write (top's): finished already."""
    future: Future[ImageResult] = Future()
    future.set_result(result)
    return future


def _pixels(source: ImageSource) -> int:
    """The pixels an input holds once loaded: a video clip's, all its frames (it is decoded
    already, featviz.inputs.video); an image file's, as its header declares them."""
    if isinstance(source.image, Clip):
        return source.image.pixels
    return declared_pixels(source.path)


def _settled(source: ImageSource, future: Future[ImageResult]) -> ImageResult:
    """A finished write's result, its failure (a full disk) included."""
    try:
        return _result_of(source, future)
    except FeatvizError as exc:
        return ImageResult(source, error=f"{source.display}: {exc.message}")


def _finished(future: Future[ImageResult]) -> bool:
    with shielded():  # done() takes the future's lock, which the writer thread needs too
        return future.done()


def _largest(groups: dict[tuple[int, ...], list[LoadedImage]]) -> tuple[int, ...]:
    return max(groups, key=lambda key: len(groups[key]))


def _result_of(source: ImageSource, future: Future[ImageResult]) -> ImageResult:
    """The write's result; a RunError (disk full) propagates, the failed image in stop()."""
    try:
        return future.result()
    except InputError as exc:
        return ImageResult(source, error=exc.message)
