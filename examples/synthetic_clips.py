"""A video task where the right answer is known: one square moves among squares that stay, and a
tiny 3-D network trained on it in about a minute of CPU time (examples/shapes_video.py; the
tests train it).

A clip is ``FRAMES`` frames of 32 × 32: fixed noise, two static squares and one square of the
same kind that moves 2 pixels a frame up, down, left or right — the class. Only motion tells
the moving square from the others, so a network that gets the class right must look at it,
in every frame. Everything is seeded.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

FRAMES, SIDE, SQUARE, STEP = 8, 32, 6, 2
CLASSES = ["up", "down", "left", "right"]
_MOVES = [(-1, 0), (1, 0), (0, -1), (0, 1)]  # (dy, dx) per class


def clip(kind: int, generator: torch.Generator) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """(3, FRAMES, 32, 32) in [0, 1] of class ``kind``, and the moving square's top-left
    corner (y, x) in each frame."""
    travel = STEP * (FRAMES - 1)
    dy, dx = _MOVES[kind]
    low_y, high_y = max(0, -dy * travel), SIDE - SQUARE - max(0, dy * travel)
    low_x, high_x = max(0, -dx * travel), SIDE - SQUARE - max(0, dx * travel)
    y0 = int(torch.randint(low_y, high_y + 1, (1,), generator=generator))
    x0 = int(torch.randint(low_x, high_x + 1, (1,), generator=generator))
    path = [(y0 + dy * STEP * t, x0 + dx * STEP * t) for t in range(FRAMES)]
    background = torch.rand(3, 1, SIDE, SIDE, generator=generator) * 0.4
    video = background.expand(3, FRAMES, SIDE, SIDE).clone()
    colour = 0.7 + 0.3 * torch.rand(3, generator=generator)
    for y, x in _static_places(path, generator):
        video[:, :, y : y + SQUARE, x : x + SQUARE] = colour[:, None, None, None]
    for t, (y, x) in enumerate(path):
        video[:, t, y : y + SQUARE, x : x + SQUARE] = colour[:, None, None]
    return video, path


def _static_places(
    path: list[tuple[int, int]], generator: torch.Generator, count: int = 2
) -> list[tuple[int, int]]:
    """``count`` places for the static squares, clear of the moving square's path and of each
    other by a pixel."""
    taken = [*path]
    places: list[tuple[int, int]] = []
    while len(places) < count:
        y, x = (int(v) for v in torch.randint(0, SIDE - SQUARE + 1, (2,), generator=generator))
        if all(max(abs(y - ty), abs(x - tx)) > SQUARE for ty, tx in taken):
            places.append((y, x))
            taken.append((y, x))
    return places


def batch(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` clips normalised with mean = std = 0.5, and their classes."""
    kinds = torch.randint(0, len(CLASSES), (n,), generator=generator)
    clips = torch.stack([clip(int(kind), generator)[0] for kind in kinds])
    return (clips - 0.5) / 0.5, kinds


class Tiny3d(nn.Module):
    """Three 3-D convolutions and a global average: (N, 3, T, 32, 32) → (N, 4) scores."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv3d(3, 8, 3, padding=1),
            nn.ReLU(),
            nn.Conv3d(8, 16, 3, padding=1, stride=(1, 2, 2)),
            nn.ReLU(),
            nn.Conv3d(16, 16, 3, padding=1),
            nn.ReLU(),
        )
        self.head = nn.Linear(16, len(CLASSES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3, 4)))


def trained_tiny3d(steps: int = 80, batch_size: int = 16) -> nn.Module:
    """``Tiny3d`` trained with AdamW and a one-cycle schedule on fresh clips, then eval and
    frozen (about a minute of CPU time; tests/test_video.py checks that it tells the move of
    each of eight held-out clips, and that its maps follow the moving square)."""
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    model = Tiny3d()
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=1e-2, total_steps=steps)
    model.train()
    for _ in range(steps):
        x, kinds = batch(batch_size, generator)
        error = F.cross_entropy(model(x), kinds)
        optimiser.zero_grad()
        error.backward()
        optimiser.step()
        schedule.step()
    return model.eval().requires_grad_(False)


def accuracy(model: nn.Module, seed: int = 99) -> float:
    """Share of 128 held-out clips whose class the model gets right."""
    x, kinds = batch(128, torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return float((model(x).argmax(dim=1) == kinds).float().mean())
