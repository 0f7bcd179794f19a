"""``featviz.top``: the images that excite each channel most over a dataset, as plain values.

One call is the CLI's ``top`` without the files: the same layers and channels resolved, the
same streaming through the pipeline (decode threads, batches of one shape, one forward that
stops at the deepest layer asked for), the same rankings, to the bit at the same batch size.
Memory is k × channels whatever the dataset's size: only the winning images are remembered,
and their pictures are read again when a sheet is drawn.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from featviz.api.model import loaded_model
from featviz.api.running import batch_size_for, images_only, run_pipeline
from featviz.errors import UsageError

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

    from featviz.features.top import Stat
    from featviz.inputs.discover import ImageSource
    from featviz.render.examples import Example


@dataclass(eq=False)
class TopExamples:
    """Each ranked channel's k best images, per layer.

    ``rankings[layer]`` is what ``featviz top`` writes to ``top/<model>/<layer>.json``:
    ``{"layer", "stat", "k", "images": <images ranked>, "channels": [{"channel": c, "top":
    [entry, …]}, …]}``, each entry ``{"input": <path or "image N">, "index": <position in the
    run>, "score", "position": [row, col] on the layer's grid, "cell": [x0, y0, x1, y1] that
    grid cell and "box": [x0, y0, x1, y1] its receptive field, in the image's pixels}``, best
    first (ties: the earlier image). ``sources``: the winning images, by ``index``.
    """

    rankings: dict[str, dict[str, Any]]
    sources: dict[int, ImageSource]

    def values(self, layer: str, key: str = "score") -> np.ndarray:
        """One field of every entry of ``layer`` as an array, channels × ranks: ``score``
        (C, k) float, ``index`` (C, k) int, ``position`` (C, k, 2), ``cell`` and ``box``
        (C, k, 4); k is the number of images when fewer were ranked."""
        import numpy as np

        return np.array([[entry[key] for entry in c["top"]] for c in self._channels(layer)])

    def sheet(self, layer: str, channel: int, cell_size: int = 96) -> Image.Image:
        """The picture ``featviz top`` writes for ``channel`` (its number, as in ``rankings``)
        of ``layer``: its examples best first, each the receptive-field crop around the
        channel's maximum in a ``cell_size``-pixel square, the grid cell outlined, the score
        written in the corner."""
        from PIL import Image

        from featviz.render.examples import sheet

        ranked = next((c for c in self._channels(layer) if c["channel"] == channel), None)
        if ranked is None:
            raise UsageError(
                f"channel {channel} of layer '{layer}' was not ranked",
                hint="pick one of rankings[layer]['channels']",
            )
        cells = [self._cell(entry, f"{entry['score']:.3g}", cell_size) for entry in ranked["top"]]
        return Image.fromarray(sheet(cells, cell_size))

    def overview(self, layer: str | None = None, cell_size: int = 96) -> Image.Image:
        """The overview ``featviz top`` writes for ``layer`` (default: the first): every
        channel's best example, labelled with the channel's number."""
        from PIL import Image

        from featviz.render.examples import sheet

        channels = self._channels(layer or next(iter(self.rankings)))
        cells = [self._cell(c["top"][0], str(c["channel"]), cell_size) for c in channels]
        return Image.fromarray(sheet(cells, cell_size))

    def _channels(self, layer: str) -> list[dict[str, Any]]:
        if layer not in self.rankings:
            raise UsageError(
                f"layer '{layer}' was not ranked", hint=f"pick one of {', '.join(self.rankings)}"
            )
        return self.rankings[layer]["channels"]

    def _cell(self, entry: dict[str, Any], label: str, size: int) -> Example:
        from featviz.render.examples import fit
        from featviz.run.jobs.top_outputs import reread

        image = reread(self.sources[entry["index"]], None)
        return fit(image, tuple(entry["box"]), size), tuple(entry["cell"]), label

    def _repr_png_(self) -> bytes:
        buffer = io.BytesIO()
        self.overview().save(buffer, "PNG")
        return buffer.getvalue()


def top(
    model: Any,
    images: Any,
    *,
    layer: str | list[str],
    k: int = 9,
    channels: str | list[int] | None = None,
    stat: str = "max",
    batch_size: int | None = None,
) -> TopExamples:
    """For every channel of ``layer`` (names or globs), the ``k`` images of ``images`` that
    excite it most, by ``stat``: a channel's ``"max"`` over the layer's positions or its
    ``"mean"`` (a layer with one value per channel, a Linear's or a global pool's, ranks
    by that value). ``channels``: which to rank (indices, or text as ``--channels`` takes:
    ``"0-63"``, ``"3,7,40-47"``; default every one). ``images``: a folder or glob pattern (as
    the command line takes), or any iterable of paths, PIL images and uint8 arrays (read as
    the run goes: a generator over a million images is fine). ``model``: ``featviz.load``'s,
    a spec string or an ``nn.Module``. ``batch_size`` images per forward (default 8 on a CPU,
    32 on a GPU): the scores are the command's to the bit at the same batch size.

    Returns ``TopExamples``: the rankings as ``featviz top``'s JSON holds them, arrays of
    them, and each channel's sheet as a picture. An image that cannot be used raises
    ``featviz.errors.InputError`` once the run is over."""
    from featviz.features.top import parse_channels
    from featviz.inputs.memory import streamed
    from featviz.run.jobs.top import resolve_top
    from featviz.run.jobs.top_outputs import ranking
    from featviz.run.plan import TopRequest

    if k < 1:
        raise UsageError(f"top: k={k} keeps no image", hint="ask for k=1 or more per channel")
    if stat not in ("max", "mean"):
        raise UsageError(f"top: stat={stat!r} is not a score", hint="use 'max' or 'mean'")
    if isinstance(channels, str):
        chosen = parse_channels(channels)
    else:
        chosen = tuple(dict.fromkeys(channels or ()))
    loaded = loaded_model(model)
    images_only(loaded, "top", hint="featviz maps shows a video model's channels on its clips")
    names = (layer,) if isinstance(layer, str) else tuple(layer)
    request = TopRequest(layers=names, k=k, channels=chosen, stat=cast("Stat", stat))
    resolved, make_job, _ = resolve_top(request, loaded, [], None)
    resolved.batch_size = batch_size_for(loaded, batch_size)
    job = make_job(model=loaded, sinks=None, max_pixels=None, skip_existing=False)
    run_pipeline(loaded, job, streamed(images), resolved.batch_size, resolved.layers)
    job.settle()
    rankings = {
        name: ranking(job, name, job.ranked, job.ranking_entries(name)) for name in job.layers
    }
    sources = {index: seen.source for index, seen in job.winners.items()}
    return TopExamples(rankings, sources)
