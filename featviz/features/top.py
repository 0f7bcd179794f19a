"""What excites a channel most over a dataset: the k best images of every channel, streamed.

A ``ChannelRanking`` holds, for each of a layer's C channels, the k highest scores seen so far
with the image (its position in the run) and where on the layer's grid its maximum sits, as
(C, k) tensors: memory is k × C whatever the number of images. Each batch's (N, C) scores are
merged in with one sort, so a run costs a few small sorts beside its forwards.

Ranking is deterministic: by score, highest first, and among equal scores by the image's
position in the run, lowest first. The order in which batches arrive (decode threads, shapes
grouped, shards) therefore never changes the result, and rankings of disjoint sets of images
(``--shard``) merge into exactly the ranking of their union (``merge_entries``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import torch

Stat = Literal["max", "mean"]


def channel_scores(maps: torch.Tensor, stat: Stat) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, C, h, w) activations → (N, C) scores and (N, C) flat positions (row · w + col) of
    each channel's maximum (the first one in row-major order where several are equal).
    ``stat``: the score is that maximum, or the channel's mean over positions."""
    flat = maps.flatten(2)
    peaks, positions = flat.max(dim=2)
    return (peaks if stat == "max" else flat.mean(dim=2)), positions


class ChannelRanking:
    """The k best (score, image, position) of each of ``channels`` channels seen so far."""

    def __init__(self, channels: int, k: int) -> None:
        import torch

        self.k = k
        self.scores = torch.empty(channels, 0)  # (C, ≤k) float32, best first
        self.images = torch.empty(channels, 0, dtype=torch.int64)  # position in the run
        self.positions = torch.empty(channels, 0, dtype=torch.int64)  # row · w + col

    def add(self, scores: torch.Tensor, images: torch.Tensor, positions: torch.Tensor) -> None:
        """Merge one batch in: ``scores`` and ``positions`` (N, C), ``images`` (N,) the images'
        positions in the run."""
        count, channels = scores.shape
        self._keep(scores.T.float().cpu(), images.cpu().expand(channels, count), positions.T.cpu())

    def merge(self, other: ChannelRanking) -> None:
        """Merge in the ranking of the same channels over other images (a Ray actor's): the
        same as adding those images here."""
        self._keep(other.scores, other.images, other.positions)

    def _keep(self, scores: torch.Tensor, images: torch.Tensor, positions: torch.Tensor) -> None:
        """The k best of what is held and the (C, n) candidates ``scores``, ``images`` and
        ``positions``."""
        import torch

        candidates = torch.cat([self.scores, scores], dim=1)
        image_ids = torch.cat([self.images, images], dim=1)
        places = torch.cat([self.positions, positions], dim=1)
        # Two stable sorts: by image, then by score; equal scores keep the image order.
        by_image = torch.argsort(image_ids, dim=1, stable=True)
        by_score = torch.argsort(
            candidates.gather(1, by_image), dim=1, descending=True, stable=True
        )
        kept = by_image.gather(1, by_score[:, : self.k])
        self.scores = candidates.gather(1, kept)
        self.images = image_ids.gather(1, kept)
        self.positions = places.gather(1, kept)


def held_images(rankings: Iterable[ChannelRanking]) -> set[int]:
    """The images that are among some channel's k best in any of ``rankings``."""
    import torch

    return set(torch.cat([ranking.images.flatten() for ranking in rankings]).unique().tolist())


@dataclass(frozen=True)
class Geometry:
    """How one image was seen: its original (H, W) pixels, the model's input (H, W) and the
    layer's (h, w) grid."""

    original: tuple[int, int]
    model_input: tuple[int, int]
    grid: tuple[int, int]


@dataclass(frozen=True)
class Extent:
    """How far a layer position's receptive field reaches from its grid cell's centre, in the
    model input's pixels: up, down, left, right (None: the whole input)."""

    up: float
    down: float
    left: float
    right: float


def boxes_of(
    position: int, geometry: Geometry, extent: Extent | None
) -> tuple[list[int], list[int], list[int]]:
    """([row, col], cell, box) of a flat grid ``position``: the grid cell and the receptive
    field around it, each [x0, y0, x1, y1] in the original image's pixels (outward to whole
    pixels, clipped to the image)."""
    import math

    rows, cols = geometry.grid
    row, col = divmod(position, cols)
    in_h, in_w = geometry.model_input
    out_h, out_w = geometry.original
    sy, sx = out_h / in_h, out_w / in_w
    cell_h, cell_w = in_h / rows, in_w / cols
    cell = (col * cell_w, row * cell_h, (col + 1) * cell_w, (row + 1) * cell_h)
    if extent is None:
        box = (0.0, 0.0, float(in_w), float(in_h))
    else:
        cy, cx = (row + 0.5) * cell_h, (col + 0.5) * cell_w
        box = (cx - extent.left, cy - extent.up, cx + extent.right, cy + extent.down)

    def pixels(x0: float, y0: float, x1: float, y1: float) -> list[int]:
        return [
            max(0, math.floor(x0 * sx + 1e-6)),
            max(0, math.floor(y0 * sy + 1e-6)),
            min(out_w, math.ceil(x1 * sx - 1e-6)),
            min(out_h, math.ceil(y1 * sy - 1e-6)),
        ]

    return [row, col], pixels(*cell), pixels(*box)


def merge_entries(lists: list[list[dict]], k: int) -> list[dict]:
    """The k best of several channels' ranked lists of entries (``score``, ``index``: the
    image's position in the run) over disjoint sets of images: by score, highest first, then
    by image, as ``ChannelRanking`` ranks."""
    entries = [entry for ranked in lists for entry in ranked]
    return sorted(entries, key=lambda entry: (-entry["score"], entry["index"]))[:k]


def parse_channels(text: str) -> tuple[int, ...]:
    """``--channels`` as given, ``0-63`` or ``3,7,40-47``: the channels in order, each once."""
    import re

    from featviz.errors import UsageError

    channels: list[int] = []
    for part in text.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        first, last = (int(match[1]), int(match[2] or match[1])) if match else (1, 0)
        if last < first:
            raise UsageError(
                f"--channels '{text}': expected channels and ranges like 0-63 or 3,7,40-47",
                hint="channels count from 0; a range is FIRST-LAST, both included",
            )
        channels.extend(range(first, last + 1))
    return tuple(dict.fromkeys(channels))
