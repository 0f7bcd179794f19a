"""What ``featviz top`` writes when its images have streamed through: per layer a JSON ranking,
one sheet of examples per channel and an overview (featviz.render.examples); or, for a shard,
its partial ranking; or, for ``--merge``, the shards' partials combined.

The JSON of a layer (``top/<model>/<layer>.json``)::

    {"layer": …, "stat": "max", "k": 9, "images": <images ranked>,
     "channels": [{"channel": 37, "top": [{"input": …, "index": <position in the run>,
        "score": …, "position": [row, col], "cell": [x0, y0, x1, y1],
        "box": [x0, y0, x1, y1]}, …]}, …]}

``cell`` is the grid cell of the channel's maximum and ``box`` its receptive field, both in the
image's own pixels. A shard's partial (``<layer>.shard-K-of-N.json``) is the same ranking over
its images, with the shard, the run's settings fingerprint and the number of inputs it went
through: the merge refuses partials of other settings and shards that did not finish.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from functools import partial
from typing import TYPE_CHECKING, Any

from featviz.errors import InputError, RunError, UsageError
from featviz.explainer.names import safe_name
from featviz.features.top import merge_entries
from featviz.inputs.shards import shard_of
from featviz.render.examples import fit, sheet
from featviz.sinks.artifacts import Artifact, RunOutput
from featviz.sinks.encode import json_line

if TYPE_CHECKING:
    from pathlib import Path

    import numpy as np

    from featviz.inputs.discover import ImageSource
    from featviz.inputs.shards import Shard
    from featviz.render.examples import Example, Fitted
    from featviz.run.jobs.top import TopJob

Entries = list[list[dict[str, Any]]]  # per channel, its entries best first


def finals(
    job: TopJob,
    images: int,
    entries_of: Callable[[str], Entries],
    sources: dict[int, ImageSource],
    kept: dict[int, np.ndarray] | None = None,
) -> Iterator[RunOutput]:
    """Every layer's JSON ranking, overview and channel sheets, the pictures to be drawn on
    the writer threads. Every winner's pixels are at hand before the first, ``kept`` or
    decoded again: a winner that cannot be read again fails the run with nothing of it
    written."""
    entries = {layer: entries_of(layer) for layer in job.layers}
    crops = _crops(job, entries, sources, kept or {})
    for layer in job.layers:
        text = _document(ranking(job, layer, images, entries[layer]))
        yield Artifact("top", "ranking", layer, text=text)
        yield from _pictures(job, layer, entries[layer], crops)


def partials(job: TopJob, shard: Shard, inputs: int) -> list[Artifact]:
    """Each layer's partial ranking over this shard's images."""
    header = {
        "shard": [shard.index, shard.count],
        "fingerprint": job.sinks.files.fingerprint,
        "batch_size": job.batch_size,
        "inputs": inputs,
    }
    return [
        Artifact(
            "top",
            "partial",
            layer,
            target=f"shard-{shard.index}-of-{shard.count}",
            text=_document(ranking(job, layer, job.ranked, job.ranking_entries(layer), header)),
        )
        for layer in job.layers
    ]


def merged(job: TopJob, sources: list[ImageSource]) -> Iterator[RunOutput]:
    """What one run over ``sources`` writes, from the partials of its N shards."""
    by_index = {source.index: source for source in sources}
    folder = job.sinks.files.layout.top_folder()
    documents = {layer: _partials_of(job, folder, layer, sources) for layer in job.layers}
    images = sum(part["images"] for part in next(iter(documents.values())))

    def entries_of(layer: str) -> Entries:
        parts = documents[layer]
        return [
            merge_entries([part["channels"][i]["top"] for part in parts], job.request.k)
            for i in range(len(job.channels[layer]))
        ]

    return finals(job, images, entries_of, by_index)


_PARTIAL = re.compile(r"^(?P<stem>.+)\.shard-(?P<index>\d+)-of-(?P<count>\d+)\.json$")


def _partials_of(
    job: TopJob, folder: Path, layer: str, sources: list[ImageSource]
) -> list[dict[str, Any]]:
    """The N partial rankings of ``layer``, checked: one N, every shard there, each of this
    run's settings and through all of its inputs."""
    stem = safe_name(layer)
    found: dict[int, dict[int, Path]] = {}
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        match = _PARTIAL.match(path.name)
        if match and match["stem"] == stem:
            found.setdefault(int(match["count"]), {})[int(match["index"])] = path
    if not found:
        raise UsageError(
            f"--merge: no partial results of layer '{layer}' in {folder}",
            hint="run `featviz top` with --shard K/N for K = 1 … N first, with the same -o",
        )
    if len(found) > 1:
        raise UsageError(
            f"--merge: partial results of layer '{layer}' from {sorted(found)} shards in {folder}",
            hint="keep the partials of one --shard K/N split",
        )
    [(count, paths)] = found.items()
    missing = [index for index in range(1, count + 1) if index not in paths]
    if missing:
        raise RunError(
            f"--merge: shard {missing[0]}/{count} of layer '{layer}' has no partial results",
            hint=f"run it with --shard {missing[0]}/{count}, then merge again",
        )
    expected = [0] * count
    for source in sources:
        expected[shard_of(source.relative, count) - 1] += 1
    parts = []
    for index in range(1, count + 1):
        part = json.loads(paths[index].read_bytes())
        if part["fingerprint"] != job.sinks.files.fingerprint:
            raise UsageError(
                f"--merge: {paths[index].name} was made with other settings",
                hint="merge with the command line the shards ran, --shard replaced by --merge",
            )
        if part["inputs"] != expected[index - 1]:
            raise RunError(
                f"--merge: shard {index}/{count} went through {part['inputs']} of its "
                f"{expected[index - 1]} inputs",
                hint=f"run --shard {index}/{count} again to its end, then merge again",
            )
        if part["batch_size"] != job.batch_size:
            raise UsageError(
                f"--merge: {paths[index].name} ran batches of {part['batch_size']}, "
                f"this merge's are {job.batch_size}: scores would differ in the last bits",
                hint=f"merge with --batch-size {part['batch_size']}, and run every shard with it",
            )
        parts.append(part)
    return parts


def ranking(
    job: TopJob,
    layer: str,
    images: int,
    entries: Entries,
    header: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A layer's ranking as its JSON file holds it (see the module docstring), ``header``'s
    fields first."""
    return {
        **(header or {}),
        "layer": layer,
        "stat": job.request.stat,
        "k": job.request.k,
        "images": images,
        "channels": [
            {"channel": channel, "top": top} for channel, top in zip(job.channels[layer], entries)
        ],
    }


def _document(ranked: dict[str, Any]) -> str:
    """The JSON text of a ``ranking``: one line per entry, so that it reads and diffs well."""
    fields = dict(ranked)
    channels = fields.pop("channels")
    lines = [f" {json.dumps(key)}: {json.dumps(value)}," for key, value in fields.items()]
    blocks = []
    for channel in channels:
        ranked = ",\n".join(f"   {json_line(entry)}" for entry in channel["top"])
        blocks.append(f'  {{"channel": {channel["channel"]}, "top": [\n{ranked}\n  ]}}')
    body = ",\n".join(blocks)
    return "{\n" + "\n".join(lines) + f'\n "channels": [\n{body}\n ]\n}}\n'


def _crops(
    job: TopJob,
    entries: dict[str, Entries],
    sources: dict[int, ImageSource],
    kept: dict[int, np.ndarray],
) -> Crops:
    """Every example's crop, by (image, box): each winning image's pixels at hand (from
    ``kept``, or read again here, before anything is written), each crop scaled to the cell
    when first drawn, on the writer threads."""
    indices = {entry["index"] for ranked in entries.values() for top in ranked for entry in top}
    images = {
        index: kept[index] if index in kept else reread(sources[index], job.max_pixels)
        for index in sorted(indices)
    }
    return Crops(images, job.request.cell_size)


class Crops:
    """The crops of the winning ``images``, by (image, box), each scaled to a ``size`` cell
    once however many channels an image wins with the same box. Two writer threads wanting one
    at the same moment may both scale it: the same pixels, one kept."""

    def __init__(self, images: dict[int, np.ndarray], size: int) -> None:
        self.images, self.size = images, size
        self.fitted: dict[tuple[int, tuple[int, ...]], Fitted] = {}

    def __call__(self, index: int, box: tuple[int, ...]) -> Fitted:
        fitted = self.fitted.get((index, box))
        if fitted is None:
            fitted = self.fitted[index, box] = fit(self.images[index], box, self.size)
        return fitted


def _pictures(job: TopJob, layer: str, ranked: Entries, crops: Crops) -> Iterator[RunOutput]:
    """The overview of ``layer`` (each channel's best, labelled with the channel), then the
    sheet of each channel (its examples labelled with their scores), each to be drawn on a
    writer thread: the largest first, so that it is encoded while the sheets are drawn."""
    size, channels = job.request.cell_size, job.channels[layer]

    def example(entry: dict[str, Any], label: str) -> Example:
        return crops(entry["index"], tuple(entry["box"])), tuple(entry["cell"]), label

    def overview() -> Artifact:
        firsts = [example(top[0], str(channel)) for channel, top in zip(channels, ranked) if top]
        return Artifact(
            "top", "overview", layer, caption="every channel", pixels=sheet(firsts, size)
        )

    def examples(channel: int, top: list[dict[str, Any]]) -> Artifact:
        return Artifact(
            "top",
            "examples",
            layer,
            target=f"{channel:04d}",
            caption=f"channel {channel}",
            pixels=sheet([example(entry, f"{entry['score']:.3g}") for entry in top], size),
        )

    yield overview
    for channel, top in zip(channels, ranked):
        yield partial(examples, channel, top)


def reread(source: ImageSource, max_pixels: int | None) -> np.ndarray:
    """A winner's pixels, decoded again; an image that cannot be read any more (moved or
    changed since) is a run error: its crops would show something else."""
    import numpy as np

    from featviz.inputs.decode import decode
    from featviz.inputs.limits import DEFAULT_MAX_PIXELS
    from featviz.inputs.memory import picture

    try:
        if source.image is not None:
            return np.asarray(picture(source.image))
        return np.asarray(decode(source.path, max_pixels=max_pixels or DEFAULT_MAX_PIXELS))
    except InputError as exc:
        raise RunError(
            f"cannot read {source.display} again to draw its crops: {exc.message}",
            hint="keep the inputs in place until the run ends",
        ) from exc
