"""What excites a channel most over a dataset: the k best images of every channel, streamed.

A ``ChannelRanking`` holds, for each of a layer's C channels, the k highest scores seen so far
with the image (its position in the run) and where on the layer's grid its maximum sits, as
(C, k) tensors: memory is k × C whatever the number of images. Each batch's (N, C) scores are
merged in with two small sorts, and where a maximum sits is found only for the images that get
in, so a run costs little beside its forwards.

Ranking is deterministic: by score, highest first, and among equal scores by the image's
position in the run, lowest first. The order in which batches arrive (decode threads, shapes
grouped, shards) therefore never changes the result, and rankings of disjoint sets of images
(``--shard``) merge into exactly the ranking of their union (``merge_entries``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import numpy as np
    import torch

Stat = Literal["max", "mean"]


def channel_scores(maps: torch.Tensor, stat: Stat) -> torch.Tensor:
    """(N, C, h, w) activations → (N, C) scores: each channel's maximum over positions, or
    (``stat`` "mean") its mean."""
    if stat == "max":
        return maps.amax(dim=(2, 3))  # exact in any order; ten times max() with its indices
    return maps.flatten(2).mean(dim=2)


def peak_positions(maps: torch.Tensor, rows: np.ndarray, channels: np.ndarray) -> np.ndarray:
    """The flat positions (row · w + col) of the maxima of ``maps[rows[i], channels[i]]``: the
    first in row-major order where several are equal."""
    import torch

    where = (torch.from_numpy(rows).to(maps.device), torch.from_numpy(channels).to(maps.device))
    return maps[where].flatten(1).argmax(dim=1).cpu().numpy()


# Which candidates' positions to give: (channels, columns), columns counted among the new ones.
PositionsOf = Callable[["np.ndarray", "np.ndarray"], "np.ndarray"]


class ChannelRanking:
    """The k best (score, image, position) of each of ``channels`` channels seen so far, as
    (C, ≤k) tensors. The bookkeeping runs in numpy: a torch call on these small arrays lets
    the decoding threads take the interpreter's lock, and getting it back costs the model's
    thread more than the call."""

    def __init__(self, channels: int, k: int) -> None:
        import torch

        self.k = k
        self.scores = torch.empty(channels, 0)  # (C, ≤k) float32, best first
        self.images = torch.empty(channels, 0, dtype=torch.int64)  # position in the run
        self.positions = torch.empty(channels, 0, dtype=torch.int64)  # row · w + col

    def add(self, scores: torch.Tensor, images: torch.Tensor, positions: torch.Tensor) -> None:
        """Merge one batch in: ``scores`` and ``positions`` (N, C), ``images`` (N,) the images'
        positions in the run."""
        by_channel = positions.cpu().numpy().T
        self._keep(
            scores.float().cpu().numpy().T,
            images.cpu().numpy(),
            lambda rows, columns: by_channel[rows, columns],
        )

    def add_maps(self, maps: torch.Tensor, images: np.ndarray, stat: Stat) -> None:
        """Merge one batch's (N, C, h, w) activations in, ``images`` (N,) the images' positions
        in the run (int64): where the maximum sits is looked up only for the images that get
        in, a few per batch once the ranking has filled."""
        import numpy as np

        scores = channel_scores(maps, stat).cpu().numpy().astype(np.float32, copy=False)
        self._keep(
            scores.T,
            images,
            lambda rows, columns: peak_positions(maps, columns, rows),
        )

    def merge(self, other: ChannelRanking) -> None:
        """Merge in the ranking of the same channels over other images (a Ray actor's): the
        same as adding those images here."""
        positions = other.positions.numpy()
        self._keep(
            other.scores.numpy(),
            other.images.numpy(),
            lambda rows, columns: positions[rows, columns],
        )

    def _keep(self, scores: np.ndarray, images: np.ndarray, positions_of: PositionsOf) -> None:
        """The k best of what is held and the (C, n) candidates ``scores`` and ``images`` (or
        (n,) images, the same for every channel), whose positions ``positions_of`` gives for
        those kept. Once a channel holds k, only a candidate scoring at least its k-th can get
        in: the channels without one, most of them late in a run, are left as they are."""
        import numpy as np
        import torch

        held_scores, held_ids, held_positions = (
            self.scores.numpy(),
            self.images.numpy(),
            self.positions.numpy(),
        )
        held = held_scores.shape[1]
        images = np.broadcast_to(images, scores.shape)
        if held == self.k:
            channels = np.flatnonzero((scores >= held_scores[:, -1:]).any(axis=1))
            if not len(channels):
                return
        else:
            channels = np.arange(len(scores))
        candidates = np.concatenate([held_scores[channels], scores[channels]], axis=1)
        image_ids = np.concatenate([held_ids[channels], images[channels]], axis=1)
        # Two stable sorts: by image, then by score, highest first (ascending on the negated
        # scores: equal ones keep the image order).
        order = np.arange(len(channels))[:, None]
        by_image = np.argsort(image_ids, axis=1, kind="stable")
        by_score = np.argsort(-candidates[order, by_image], axis=1, kind="stable")
        kept = by_image[order, by_score[:, : self.k]]
        chosen = channels[:, None], kept.clip(max=held - 1)
        positions = held_positions[chosen] if held else np.empty_like(kept)
        new_rows, slots = np.nonzero(kept >= held)
        positions[new_rows, slots] = positions_of(channels[new_rows], kept[new_rows, slots] - held)
        if held == self.k:  # the other channels as they were
            kept_scores, kept_images = held_scores.copy(), held_ids.copy()
            kept_positions = held_positions.copy()
            kept_scores[channels] = candidates[order, kept]
            kept_images[channels] = image_ids[order, kept]
            kept_positions[channels] = positions
        else:
            kept_scores, kept_images = candidates[order, kept], image_ids[order, kept]
            kept_positions = positions
        self.scores = torch.from_numpy(kept_scores)
        self.images = torch.from_numpy(kept_images)
        self.positions = torch.from_numpy(kept_positions)


def held_images(rankings: Iterable[ChannelRanking]) -> set[int]:
    """The images that are among some channel's k best in any of ``rankings``."""
    import numpy as np

    return set(np.concatenate([ranking.images.numpy().ravel() for ranking in rankings]).tolist())


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
