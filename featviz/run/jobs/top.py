"""``featviz top``: for every channel of the tapped layers, the k images that excite it most.

Images stream through the pipeline like any command's; each batch runs one forward that stops
at the deepest tapped layer on the model's thread, and its images' tasks on the writer threads
(which have nothing else to write) merge the scores of a few batches at a time into each
layer's ``ChannelRanking`` (featviz.features.top) while the next forwards run. Nothing per
image is written, and only the images among some channel's k best are remembered (their
source, how they were seen and, within a budget, their pixels): memory is k × channels, not
the dataset. When the run ends, each layer's outputs are drawn and written
(featviz.run.jobs.top_outputs).

With ``--shard K/N`` a run writes only its partial rankings; ``--merge`` (the same command
line, without ``--shard``) reads the N partials, checks that each covered all of its images,
and writes what one run over every image writes, byte for byte.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from functools import cached_property, partial
from typing import TYPE_CHECKING, Any

from featviz.errors import UsageError
from featviz.explainer.checks import model_failure, nan_or_infinite, not_finite
from featviz.features.top import (
    ChannelRanking,
    Extent,
    Geometry,
    boxes_of,
    held_images,
)
from featviz.inputs.loaded import LoadedImage
from featviz.layers.layouts import as_maps
from featviz.layers.taps import LayerTaps
from featviz.run.jobs.base import ImageJob, failure
from featviz.run.plan import Resolved
from featviz.sinks.results import ImageResult

if TYPE_CHECKING:
    import numpy as np
    import torch

    from featviz.inputs.discover import ImageSource
    from featviz.inputs.shards import Shard
    from featviz.layers.catalog import LayerInfo
    from featviz.layers.layouts import Layout
    from featviz.model.load import LoadedModel
    from featviz.run.plan import TopRequest
    from featviz.sinks.artifacts import RunOutput


# The winners' decoded pixels are kept up to this many bytes, so that drawing their examples
# at the end needs no second decode: every winner of a dataset of small images, a few 12-MP
# photos; the others are decoded again.
KEPT_PIXELS_BYTES = 256 * 2**20

# Batches are ranked together once this many images, or bytes of their activations and
# pixels, have come (or their input size changes): ranking costs mostly per call, so 32
# images at once cost a third of four batches of 8 one by one.
RANK_TOGETHER_IMAGES = 32
RANK_TOGETHER_BYTES = 64 * 2**20


@dataclass
class Seen:
    """One image among the winners: where it came from, how each layer saw it and, within
    KEPT_PIXELS_BYTES, its decoded pixels."""

    source: ImageSource
    original: tuple[int, int]
    model_input: tuple[int, int]
    grids: dict[str, tuple[int, int]]
    pixels: np.ndarray | None = None


@dataclass(frozen=True)
class TopPartial:
    """What a copy of the job ranked (a Ray actor's chunk): the rankings, the images among
    their winners, how many images it ranked, and the receptive fields it measured."""

    rankings: dict[str, ChannelRanking]
    winners: dict[int, Seen]
    ranked: int
    extents: dict[str, Extent | None] | None


@dataclass(kw_only=True)
class TopJob(ImageJob):
    request: TopRequest
    layers: list[str]  # resolved module names, in execution order
    channels: dict[str, list[int]]  # per layer, the channels ranked
    batch_size: int  # every forward runs at this size (see process)
    shard: Shard | None = None
    merged_sources: list[ImageSource] | None = None  # --merge: every input, none processed
    rankings: dict[str, ChannelRanking] = field(init=False)
    extents: dict[str, Extent | None] | None = field(init=False, default=None)
    winners: dict[int, Seen] = field(init=False, default_factory=dict)
    kept_bytes: int = field(init=False, default=0)  # the winners' pixels held
    ranked: int = field(init=False, default=0)  # images ranked (not failed)
    # Batches waiting to be ranked together: (images, activations by layer, input size).
    unranked: list[tuple[list[LoadedImage], dict[str, Any], tuple[int, int]]] = field(
        init=False, default_factory=list
    )
    # Batches are ranked on the writer threads, one at a time (see process).
    _lock: threading.Lock = field(init=False, default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        self.rankings = self._empty_rankings()

    def _empty_rankings(self) -> dict[str, ChannelRanking]:
        return {
            name: ChannelRanking(len(self.channels[name]), self.request.k) for name in self.layers
        }

    def take_partial(self) -> TopPartial:
        """What this copy ranked, its winners without their pixels (a Ray actor's go to the
        driver, which decodes its winners again)."""
        self.settle()
        winners = {index: replace(seen, pixels=None) for index, seen in self.winners.items()}
        partial = TopPartial(self.rankings, winners, self.ranked, self.extents)
        self.rankings, self.winners, self.ranked = self._empty_rankings(), {}, 0
        self.kept_bytes = 0
        return partial

    def add_partial(self, partial: TopPartial) -> None:
        for name, ranking in partial.rankings.items():
            self.rankings[name].merge(ranking)
        self.ranked += partial.ranked
        self.extents = self.extents or partial.extents
        self.winners.update(partial.winners)
        self._forget_losers(held_images(self.rankings.values()))

    def process(
        self, batch: list[LoadedImage], inputs: torch.Tensor
    ) -> list[Callable[[], ImageResult] | ImageResult]:
        """The batch's forward, here on the model's thread; its ranking in its images' write
        tasks, on a writer thread while the next batch's forward runs."""
        import torch

        if len(batch) < self.batch_size:
            # A short batch runs at the full size, padded: kernels pick their blocking by the
            # batch's shape, so this keeps every image's activations the same bits whichever
            # images share its batch (a shard's scores are the single run's).
            padding = inputs.new_zeros((self.batch_size - len(batch), *inputs.shape[1:]))
            inputs = torch.cat([inputs, padding])
        if self.extents is None:
            self.extents = self._extents()
        taps = self._taps
        try:
            with torch.inference_mode(), taps:
                taps.run(inputs)
        except RuntimeError as exc:
            raise model_failure(inputs, exc) from exc
        outputs = {name: taps.outputs[name] for name in self.layers}
        forwarded = _Forwarded(batch, outputs, tuple(inputs.shape[-2:]))
        return [partial(self._result, forwarded, i) for i in range(len(batch))]

    def _result(self, forwarded: _Forwarded, i: int) -> ImageResult:
        """Image ``i``'s result: ranked, or failed for activations that are not finite. The
        first of a batch's tasks to run ranks the whole batch."""
        with self._lock:
            if forwarded.broken is None:
                forwarded.broken = self._check_and_queue(forwarded)
        item, reason = forwarded.batch[i], forwarded.broken.get(i)
        if reason is None:  # ranked: it writes nothing of its own
            return ImageResult(item.source)
        return failure(item, reason)()

    def _check_and_queue(self, forwarded: _Forwarded) -> dict[int, str]:
        """Queue a forwarded batch's activations for ranking, without its images whose
        activations are not finite: those, each with why."""
        batch, input_hw, layouts = forwarded.batch, forwarded.input_hw, self._layouts
        maps, broken = {}, {}
        for name, output in forwarded.outputs.items():
            values = as_maps(layouts.get(name), output[: len(batch)], input_hw).float()
            if len(self.channels[name]) < values.shape[1]:  # --channels: a copy of those only
                values = values[:, self.channels[name]]
            for i in not_finite(values).nonzero().flatten().tolist():
                broken.setdefault(i, f"layer '{name}' has {nan_or_infinite(values[i])} activations")
            maps[name] = values
        forwarded.outputs = {}  # held by the queue from here, in ``maps``
        kept = [i for i in range(len(batch)) if i not in broken]
        if broken and kept:
            maps = {name: values[kept] for name, values in maps.items()}
        if kept:
            self._queue([batch[i] for i in kept], maps, input_hw)
        return broken

    @cached_property
    def _taps(self) -> LayerTaps:
        """The taps every batch's forward runs with (entered anew each time)."""
        calls = self.model.trace.calls()
        return LayerTaps(self.model.module, self.layers, calls=calls, stop_early=True)

    @cached_property
    def _layouts(self) -> dict[str, Layout]:
        return self.model.trace.layouts()

    def _queue(self, batch: list[LoadedImage], maps: dict, input_hw: tuple[int, int]) -> None:
        """Rank ``batch`` with the batches before it once enough have come (see
        RANK_TOGETHER_IMAGES)."""
        if self.unranked and self.unranked[0][2] != input_hw:
            self._rank_waiting()
        self.unranked.append((batch, maps, input_hw))
        waiting = [item for items, _, _ in self.unranked for item in items]
        waiting_bytes = sum(item.original.nbytes + item.tensor.nbytes for item in waiting) + sum(
            values.nbytes for _, maps, _ in self.unranked for values in maps.values()
        )
        if len(waiting) >= RANK_TOGETHER_IMAGES or waiting_bytes >= RANK_TOGETHER_BYTES:
            self._rank_waiting()

    def settle(self) -> None:
        """Rank the batches still waiting: before the rankings are read."""
        with self._lock:
            self._rank_waiting()

    def _rank_waiting(self) -> None:
        import torch

        if not self.unranked:
            return
        waiting, self.unranked = self.unranked, []
        batch = [item for items, _, _ in waiting for item in items]
        maps = {name: torch.cat([maps[name] for _, maps, _ in waiting]) for name in self.layers}
        self._rank(batch, maps, waiting[0][2])

    def _rank(self, batch: list[LoadedImage], maps: dict, input_hw: tuple[int, int]) -> None:
        """Merge a batch's scores into every layer's ranking; remember its images that won."""
        import numpy as np

        images = np.array([item.source.index for item in batch], dtype=np.int64)
        for name, values in maps.items():
            self.rankings[name].add_maps(values, images, self.request.stat)
        self.ranked += len(batch)
        held = held_images(self.rankings.values())
        grids = {name: tuple(values.shape[-2:]) for name, values in maps.items()}
        self._forget_losers(held)
        for item in batch:
            if item.source.index in held:
                original = tuple(item.original.shape[:2])
                seen = Seen(item.source, original, input_hw, grids)
                if self.kept_bytes + item.original.nbytes <= KEPT_PIXELS_BYTES:
                    seen.pixels = item.original
                    self.kept_bytes += item.original.nbytes
                self.winners[item.source.index] = seen

    def _forget_losers(self, held: set[int]) -> None:
        """Keep only the winners among some channel's ``held`` images."""
        for index in [index for index in self.winners if index not in held]:
            lost = self.winners.pop(index)
            if lost.pixels is not None:
                self.kept_bytes -= lost.pixels.nbytes

    def _extents(self) -> dict[str, Extent | None]:
        """Each layer's receptive field; None (the whole image) for one value per channel."""
        from featviz.features.receptive import receptive_extents

        trace, size = self.model.trace, self.model.preprocessing.input_size
        mapped = [name for name in self.layers if trace.get(name).spatial]
        extents: dict[str, Extent | None] = dict.fromkeys(self.layers)
        if mapped:
            extents |= receptive_extents(
                self.model.module,
                mapped,
                trace.layouts(),
                (size, size),
                calls=trace.calls(),
                device=self.model.device,
            )
        return extents

    def ranking_entries(self, layer: str) -> list[list[dict[str, Any]]]:
        """Per ranked channel of ``layer``, its entries best first: input, index (position in
        the run), score, position [row, col] on the layer's grid, the grid cell and the
        receptive-field box [x0, y0, x1, y1] in the image's pixels."""
        ranking, extent = self.rankings[layer], (self.extents or {}).get(layer)
        boxes: dict[tuple[int, Geometry], tuple[list[int], list[int], list[int]]] = {}
        channels = []
        for scores, images, positions in zip(
            ranking.scores.tolist(), ranking.images.tolist(), ranking.positions.tolist()
        ):
            entries = []
            for score, image, position in zip(scores, images, positions):
                seen = self.winners[image]
                geometry = Geometry(seen.original, seen.model_input, seen.grids[layer])
                if (position, geometry) not in boxes:  # photos of one size share them
                    boxes[position, geometry] = boxes_of(position, geometry, extent)
                place, cell, box = boxes[position, geometry]
                entries.append(
                    {
                        "input": seen.source.display,
                        "index": image,
                        "score": score,
                        "position": place,
                        "cell": cell,
                        "box": box,
                    }
                )
            channels.append(entries)
        return channels

    def run_outputs(self, results: list[dict[str, Any]]) -> Iterable[RunOutput]:
        from featviz.run.jobs import top_outputs

        self.settle()
        if self.merged_sources is not None:
            return top_outputs.merged(self, self.merged_sources)
        if self.shard is not None:
            return top_outputs.partials(self, self.shard, len(results))
        sources = {index: seen.source for index, seen in self.winners.items()}
        kept = {i: seen.pixels for i, seen in self.winners.items() if seen.pixels is not None}
        return top_outputs.finals(self, self.ranked, self.ranking_entries, sources, kept)


@dataclass
class _Forwarded:
    """A batch after its forward: the tapped layers' outputs, until the batch is ranked; then
    its images whose activations are not finite, each with why."""

    batch: list[LoadedImage]
    outputs: dict[str, Any]
    input_hw: tuple[int, int]
    broken: dict[int, str] | None = None


def resolve_top(
    request: TopRequest,
    loaded: LoadedModel,
    sources: Iterable[ImageSource],
    shard: Shard | None,
) -> tuple[Resolved, Callable[..., ImageJob], Iterable[ImageSource]]:
    """The layers and channels ``request`` ranks on ``loaded``, how to make the job, and the
    images the pipeline is to stream (none for ``--merge``, whose job reads the partials)."""
    from featviz.layers.catalog import resolve_layers

    if not request.layers:
        raise UsageError("top needs a layer to rank", hint="pass --layer, see `featviz layers`")
    if request.merge and shard is not None:
        raise UsageError(
            "--merge combines the shards' partial results: it cannot go with --shard",
            hint="run the same command line with --merge in place of --shard K/N",
        )
    layers = resolve_layers(loaded.trace, list(request.layers), spatial_only=True, per_channel=True)
    channels = {name: _channels_of(loaded.trace.get(name), request.channels) for name in layers}
    merged = list(sources) if request.merge else None
    resolved = Resolved(layers)

    def make(**common: object) -> ImageJob:
        return TopJob(
            request=request,
            layers=layers,
            channels=channels,
            batch_size=resolved.batch_size,  # set by then
            shard=shard,
            merged_sources=merged,
            **common,
        )

    return resolved, make, ([] if request.merge else sources)


def _channels_of(info: LayerInfo, chosen: tuple[int, ...]) -> list[int]:
    """The channels of a layer that ``--channels`` names (all when none), checked."""
    count = info.channels
    outside = [channel for channel in chosen if channel >= count]
    if outside:
        raise UsageError(
            f"--channels {outside[0]}: layer '{info.name}' has {count} channels (0-{count - 1})",
            hint=f"pick channels below {count}",
        )
    return list(chosen) if chosen else list(range(count))
