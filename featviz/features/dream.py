"""``featviz dream``: images optimised to excite a channel, a neuron or a class.

Every objective's images are one batch: one forward and one backward per step serve them all,
each image climbing its own objective (featviz.features.objectives). An image is a set of
Fourier coefficients with decorrelated colour (featviz.features.fourier), seen at each step
through a random shift, zoom and turn (featviz.features.robustness), and updated by Adam. When
no objective is a class, the forward stops at the deepest objective layer.

Reproducible: image i's start and its random views come from a generator seeded by ``seed``
and the objective itself (kind, layer, index, copy), so an objective's images do not depend on
which other objectives share the batch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from featviz.features.objectives import Objective, diversity_penalty, objective_values
from featviz.layers.layouts import as_maps

if TYPE_CHECKING:
    import numpy as np
    import torch

    from featviz.model.load import LoadedModel

DIVERSITY_WEIGHT = 100.0  # lucid's weight of its diversity term against a channel objective


@dataclass(frozen=True)
class DreamSettings:
    """How the images are optimised: ``steps`` Adam steps at ``learning_rate`` on images of
    ``size`` × ``size`` pixels (None: the model's input size; the network always sees its input
    size), ``diversity`` images per objective kept apart by ``diversity_weight`` × the
    diversity term (measured at ``diversity_layer`` for class objectives)."""

    steps: int = 256
    size: int | None = None
    learning_rate: float = 0.05
    diversity: int = 1
    diversity_weight: float = DIVERSITY_WEIGHT
    diversity_layer: str | None = None
    seed: int = 0


@dataclass(frozen=True)
class Dreams:
    """The images, in objective order, each objective's ``diversity`` copies together.

    ``objectives[i]`` and ``copies[i]`` say what image i is; ``pixels`` (N, size, size, 3)
    uint8; ``start`` and ``values`` (N,) its objective on the start image and on the final
    image as saved (uint8, whole, at the network's input size); ``probabilities`` (N,) the
    softmax probability of a class objective's own class on the final image (NaN for channel
    and neuron objectives); ``curve`` (N, steps) the objective at each step, under that step's
    random view.
    """

    objectives: list[Objective]
    copies: list[int]
    pixels: np.ndarray
    start: np.ndarray
    values: np.ndarray
    probabilities: np.ndarray
    curve: np.ndarray


def dream(
    loaded: LoadedModel,
    objectives: list[Objective],
    settings: DreamSettings,
    progress: Callable[[int], None] | None = None,
) -> Dreams:
    """Optimise ``settings.diversity`` images for each of ``objectives`` together;
    ``progress``, if given, is told the steps done after each step."""
    import torch

    from featviz.features.fourier import FourierImages, to_uint8
    from featviz.features.robustness import RandomViews

    rows = [(objective, copy) for objective in objectives for copy in range(settings.diversity)]
    generators = [
        torch.Generator().manual_seed(_image_seed(settings.seed, objective, copy))
        for objective, copy in rows
    ]
    size = settings.size or loaded.preprocessing.input_size
    images = FourierImages(size, generators, loaded.device)
    views = RandomViews(settings.steps, size, generators, loaded.device)
    optimiser = torch.optim.Adam([images.coefficients], lr=settings.learning_rate)
    forward = _Forward(loaded, [objective for objective, _ in rows], settings)
    curve = torch.zeros(len(rows), settings.steps)
    with forward:
        start = forward.final(images.pixels().detach())
        for step in range(settings.steps):
            optimiser.zero_grad(set_to_none=True)
            values, penalty = forward.climb(views.view(images.pixels(), step, forward.input_hw))
            (settings.diversity_weight * penalty - values.sum()).backward()
            optimiser.step()
            curve[:, step] = values.detach().float().cpu()
            if progress is not None:
                progress(step + 1)
        pixels = to_uint8(images.pixels())
        final = forward.final(pixels.permute(0, 3, 1, 2).to(loaded.device).float() / 255)
    return Dreams(
        objectives=[objective for objective, _ in rows],
        copies=[copy for _, copy in rows],
        pixels=pixels.numpy(),
        start=start[0].numpy(),
        values=final[0].numpy(),
        probabilities=final[1].numpy(),
        curve=curve.numpy(),
    )


class _Forward:
    """The model with hooks on the objective layers (and the diversity layer), its batch norms
    folded, for the length of a ``with``: pixels in, objective values out."""

    def __init__(self, loaded: LoadedModel, rows: list[Objective], settings: DreamSettings):
        from featviz.inputs.preprocess import resized_shape

        self.loaded = loaded
        self.rows = rows
        self.classes = any(objective.kind == "class" for objective in rows)
        # Each objective's copies, by the layer their diversity is measured at.
        self.groups: dict[str, list[list[int]]] = {}
        if settings.diversity > 1:
            for first in range(0, len(rows), settings.diversity):
                layer = rows[first].layer or settings.diversity_layer
                copies = list(range(first, first + settings.diversity))
                self.groups.setdefault(layer, []).append(copies)
        layers = [objective.layer for objective in rows if objective.layer]
        self.layers = list(dict.fromkeys([*layers, *self.groups]))
        size = loaded.preprocessing.input_size
        self.input_hw = resized_shape(size, size, loaded.preprocessing)
        self._stack = None

    def __enter__(self) -> _Forward:
        from contextlib import ExitStack

        from featviz.layers.folding import folded_for
        from featviz.layers.taps import LayerTaps

        trace = self.loaded.trace
        with ExitStack() as stack:
            stack.enter_context(self.loaded.in_use())
            folded = folded_for(self.loaded.module, trace.foldable, self.layers)
            stack.enter_context(folded.applied())
            self.taps = stack.enter_context(
                LayerTaps(
                    self.loaded.module,
                    self.layers,
                    calls=trace.calls(),
                    stop_early=not self.classes,
                )
            )
            self._stack = stack.pop_all()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stack.close()

    def climb(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(values (N,), diversity penalty ()) for ``pixels`` (N, 3, h, w) in [0, 1] at the
        network's input size, differentiable."""
        maps, logits = self._run(pixels)
        values = objective_values(self.rows, maps, logits)
        penalty = values.new_zeros(())
        for layer, groups in self.groups.items():
            penalty = penalty + diversity_penalty(maps[layer], groups)
        return values, penalty

    def final(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(values (N,), own-class probabilities (N,), NaN for channels) of whole images
        ``pixels`` (N, 3, size, size) in [0, 1], on the CPU."""
        import torch

        from featviz.features.robustness import plain_view

        with torch.no_grad():
            maps, logits = self._run(plain_view(pixels, self.input_hw))
            values = objective_values(self.rows, maps, logits).float().cpu()
        probabilities = torch.full_like(values, float("nan"))
        if logits is not None:
            chances = logits.float().softmax(dim=1).cpu()
            for row, objective in enumerate(self.rows):
                if objective.kind == "class":
                    probabilities[row] = chances[row, objective.index]
        return values, probabilities

    def _run(self, pixels: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        """The objective layers' (N, C, h, w) maps and the class scores (None when the forward
        stopped early) for ``pixels`` in [0, 1]."""
        import torch

        from featviz.layers.outputs import logits_of

        preprocessing = self.loaded.preprocessing
        mean = torch.tensor(preprocessing.mean, device=pixels.device).view(1, 3, 1, 1)
        std = torch.tensor(preprocessing.std, device=pixels.device).view(1, 3, 1, 1)
        x = (pixels - mean) / std
        if self.loaded.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        output = self.taps.run(x)
        layouts = self.loaded.trace.layouts()
        maps = {
            name: as_maps(layouts.get(name), self.taps.outputs[name], self.input_hw)
            for name in self.layers
        }
        return maps, None if output is None or not self.classes else logits_of(output)[0]


def _image_seed(seed: int, objective: Objective, copy: int) -> int:
    """A 63-bit seed of its own for each image: the same objective and copy get the same start
    and views whatever else shares the batch."""
    text = f"{seed}|{objective.kind}|{objective.layer}|{objective.index}|{copy}"
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") >> 1
