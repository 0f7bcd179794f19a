"""Faithfulness of an explanation map: does the model's confidence follow it?

Every function works on a batch: ``x`` (N, 3, H, W) the normalised inputs the model saw, ``E``
(N, H, W) the explanation maps upsampled to the input and min-max scaled to [0, 1], ``targets``
(N,) the class each map explains. A video model's clips work alike: ``x`` (N, 3, T, H, W), ``E``
(N, T, H, W), and a "pixel" below is one pixel of one frame — the clip is ranked, deleted and
inserted as a whole (its frames blurred one by one), and ROAD imputes each frame's pixels from
their neighbours in that frame. Confidence is the softmax probability of the target. The model
runs on perturbed copies of the inputs in chunks of ``batch_size`` rows, under no_grad.

- ``average_drop`` = max(0, Y − O) / Y and ``increase_in_confidence`` = [O > Y], with Y the
  confidence on x and O on x ⊙ E (Grad-CAM++ §4.1; the convention of torchcam's and
  pytorch-grad-cam's metrics: the normalised input times the map). Fractions, not percent.
- ``deletion`` / ``insertion`` (Petsiuk et al., RISE, BMVC 2018): pixels ranked by E
  (descending, stable), removed ``ceil(P / steps)`` at a time; deletion replaces them with 0 (the
  dataset mean, in normalised space), insertion starts from the input blurred (Gaussian σ = 5,
  kernel 11) and restores them. AUC of the confidence curve by the trapezoid rule over the
  fraction of pixels actually changed, in [0, 1] — as torchcam's DeletionInsertionMetric.
- ``road`` (Rong et al., ICML 2022, "A Consistent and Efficient Evaluation Strategy for
  Attribution Methods"): at each percentile p of ``ROAD_PERCENTILES`` the pixels with E at or
  above the p-th percentile (MoRF: most relevant first) or at or below the (100 − p)-th (LeRF)
  are imputed by noisy linear imputation — each the weighted mean of its 8 neighbours (1/6
  edges, 1/12 corners) solved jointly, plus N(0, 0.01²) noise — and the confidence change
  O − Y is averaged over the percentiles (as pytorch-grad-cam's ROAD…Average). Lower MoRF and
  higher LeRF mean a more faithful map. The imputation (featviz.judge.imputation) solves every
  image, percentile and channel at once.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from featviz.judge.imputation import ROAD_NOISE, impute

ROAD_PERCENTILES = (10, 20, 30, 40, 50, 60, 70, 80, 90)
# What `featviz score` reports for every map, in its columns' order, and which are better low.
METRICS = (
    "average_drop",
    "increase_in_confidence",
    "deletion_auc",
    "insertion_auc",
    "road_morf",
    "road_lerf",
)
LOWER_IS_BETTER = {"average_drop", "deletion_auc", "road_morf"}
# Maps that explain nothing, scored like methods: a method must beat them.
BASELINES = ("random", "center")
BLUR_SIGMA, BLUR_KERNEL = 5.0, 11

# (B, 3, H, W) inputs (a video model's (B, 3, T, H, W)) → (B, classes) logits
Scorer = Callable[[torch.Tensor], torch.Tensor]


def confidence(
    scorer: Scorer, x: torch.Tensor, targets: torch.Tensor, batch_size: int
) -> torch.Tensor:
    """(B,) softmax probability of each row's target, for any number B of rows."""
    out = torch.empty(len(x), device=x.device)
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            logits = scorer(x[start : start + batch_size]).float()
            rows = targets[start : start + batch_size]
            out[start : start + len(rows)] = logits.softmax(dim=1).gather(1, rows[:, None])[:, 0]
    return out


def drop_and_increase(
    scorer: Scorer,
    x: torch.Tensor,
    E: torch.Tensor,
    targets: torch.Tensor,
    Y: torch.Tensor,
    batch_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(average drop, increase in confidence), each (N,): one forward of x ⊙ E per map."""
    masked = confidence(scorer, x * E[:, None], targets, batch_size)
    return (Y - masked).clamp(min=0) / (Y + 1e-7), (masked > Y).float()


@dataclass(frozen=True)
class Curves:
    """Confidence after removing (deletion) or restoring (insertion) ``fractions`` of the
    pixels; (N, steps + 1) each, and their areas (N,)."""

    fractions: torch.Tensor
    deletion: torch.Tensor
    insertion: torch.Tensor

    @property
    def deletion_auc(self) -> torch.Tensor:
        return torch.trapezoid(self.deletion, self.fractions, dim=1)

    @property
    def insertion_auc(self) -> torch.Tensor:
        return torch.trapezoid(self.insertion, self.fractions, dim=1)


def deletion_insertion(
    scorer: Scorer,
    x: torch.Tensor,
    E: torch.Tensor,
    targets: torch.Tensor,
    Y: torch.Tensor,
    *,
    steps: int,
    batch_size: int,
) -> Curves:
    """Both curves of every map; all perturbed inputs in chunks of ``batch_size``."""
    n, spatial = len(x), x.shape[2:]
    pixels = math.prod(spatial)
    step = math.ceil(pixels / steps)
    counts = [*range(0, pixels, step), pixels]
    ranks = torch.argsort(torch.argsort(E.flatten(1), dim=1, descending=True, stable=True), dim=1)
    # A clip's frames blurred one by one: its channels and frames are the planes blurred.
    blurred = gaussian_blur(x.flatten(1, -3)).view_as(x)
    # rows: (image, point) for every point but the first of each curve, whose input is known
    points = torch.tensor(counts[1:], device=x.device)
    image = torch.arange(n, device=x.device).repeat_interleave(len(points))
    count = points.repeat(n)
    deletion = torch.empty(n, len(counts), device=x.device)
    insertion = torch.empty(n, len(counts), device=x.device)
    deletion[:, 0] = Y
    with torch.no_grad():
        for start in range(0, len(image), batch_size):
            rows, upto = image[start : start + batch_size], count[start : start + batch_size]
            removed = (ranks[rows] < upto[:, None]).view(-1, 1, *spatial)
            deleted = torch.where(removed, torch.zeros(()), x[rows])
            inserted = torch.where(removed, x[rows], blurred[rows])
            both = confidence(
                scorer, torch.cat([deleted, inserted]), targets[rows].repeat(2), batch_size * 2
            )
            column = (start + torch.arange(len(rows), device=x.device)) % len(points) + 1
            deletion[rows, column] = both[: len(rows)]
            insertion[rows, column] = both[len(rows) :]
        start_blurred = confidence(scorer, blurred, targets, batch_size)
    insertion[:, 0] = start_blurred
    fractions = torch.tensor(counts, dtype=torch.float32, device=x.device) / pixels
    return Curves(fractions, deletion, insertion)


def gaussian_blur(
    x: torch.Tensor, sigma: float = BLUR_SIGMA, size: int = BLUR_KERNEL
) -> torch.Tensor:
    """Each channel blurred with a (size × size) Gaussian of ``sigma`` px, edges reflected."""
    offsets = torch.arange(size, dtype=torch.float32, device=x.device) - (size - 1) / 2
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel = (kernel / kernel.sum()).to(x.dtype)
    channels = x.shape[1]
    padded = F.pad(x, (size // 2,) * 4, mode="reflect")
    rows = F.conv2d(
        padded, kernel.view(1, 1, 1, size).expand(channels, 1, 1, size), groups=channels
    )
    return F.conv2d(rows, kernel.view(1, 1, size, 1).expand(channels, 1, size, 1), groups=channels)


def road(
    scorer: Scorer,
    x: torch.Tensor,
    E: torch.Tensor,
    targets: torch.Tensor,
    Y: torch.Tensor,
    *,
    batch_size: int,
    seeds: list[int],
    percentiles: tuple[int, ...] = ROAD_PERCENTILES,
    noise: float = ROAD_NOISE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(MoRF, LeRF), each (N,): the confidence change averaged over ``percentiles``. The noise
    of image i is drawn from ``seeds[i]``: its numbers do not depend on the batch it was in."""
    count = 2 * len(percentiles)
    after = []
    for i, seed in enumerate(seeds):
        flat = E[i].flatten()
        # As numpy.percentile (linear interpolation); MoRF rows first, then LeRF rows.
        levels = torch.tensor([p / 100 for p in percentiles], device=x.device)
        high = torch.quantile(flat, levels)[:, None]
        low = torch.quantile(1 - flat, levels)[:, None]
        missing = torch.cat([flat[None] >= high, (1 - flat)[None] >= low])
        generator = torch.Generator(device=x.device).manual_seed(seed)
        holes = missing.view(count, *E.shape[1:])
        imputed = _imputed(x[i], holes, noise=noise, generator=generator)
        after.append(confidence(scorer, imputed, targets[i : i + 1].expand(count), batch_size))
    change = (torch.stack(after).view(len(x), 2, len(percentiles)) - Y[:, None, None]).mean(dim=2)
    return change[:, 0], change[:, 1]


def _imputed(
    x: torch.Tensor, missing: torch.Tensor, *, noise: float, generator: torch.Generator
) -> torch.Tensor:
    """One input ``x`` (C, H, W), or a clip's (C, T, H, W), once per mask of ``missing``
    (B, H, W), or (B, T, H, W), its missing pixels imputed: (B, C, H, W), or (B, C, T, H, W).
    A clip's frames are imputed each from its own pixels, all in one batch."""
    count = len(missing)
    if x.ndim == 3:
        return impute(
            x[None].expand(count, -1, -1, -1), missing[:, None], noise=noise, generator=generator
        )
    channels, frames = x.shape[:2]
    planes = x.transpose(0, 1)[None].expand(count, -1, -1, -1, -1).flatten(0, 1)
    done = impute(planes, missing.flatten(0, 1)[:, None], noise=noise, generator=generator)
    return done.view(count, frames, channels, *x.shape[2:]).transpose(1, 2)


def random_map(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """The ``random`` baseline: uniform noise on the layer's (h, w) grid (a video layer's
    (t, h, w)), seeded per image."""
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


def centre_map(shape: tuple[int, ...]) -> torch.Tensor:
    """The ``center`` baseline: a Gaussian at the centre of the (h, w) grid, σ = a quarter of
    each side; on a video layer's (t, h, w) grid, the same in every frame."""
    *frames, h, w = shape
    ys = (torch.arange(h) - (h - 1) / 2) / max(h / 4, 1e-6)
    xs = (torch.arange(w) - (w - 1) / 2) / max(w / 4, 1e-6)
    return torch.exp(-0.5 * (ys[:, None] ** 2 + xs[None, :] ** 2)).expand(*frames, h, w)
