"""What a dreamed image maximises: a channel, a neuron, or a class score, and the diversity term
that keeps several images of one objective apart.

- ``channel``: the mean over positions of one channel of a layer's (N, C, h, w) maps (token and
  channels-last layers laid out as maps first, featviz.layers.layouts);
- ``neuron``: that channel at the centre position (h // 2, w // 2) only;
- ``class``: the model's score (logit) of one class.

Every image of a batch has its own objective; one forward gives all their values, and the sum
of them is what the optimiser climbs (the images do not interact, so each gets the gradient of
its own objective alone).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from featviz.errors import UsageError
from featviz.explainer.names import class_slug, safe_name

if TYPE_CHECKING:
    import torch

    from featviz.model.load import LoadedModel

Kind = Literal["channel", "neuron", "class"]


@dataclass(frozen=True)
class Objective:
    """One thing to maximise: ``index`` is a channel of ``layer`` or a class (``layer`` empty);
    ``label`` a class's name."""

    kind: Kind
    index: int
    layer: str = ""
    label: str = ""

    @property
    def stem(self) -> str:
        """Its file name without suffix: ``c0037`` (channel), ``n0037`` (neuron), ``281_tabby``."""
        if self.kind == "class":
            return class_slug(self.index, self.label)
        return f"{self.kind[0]}{self.index:04d}"

    @property
    def folder(self) -> str:
        """Its folder: the layer's file-safe name, ``classes`` for class objectives."""
        return "classes" if self.kind == "class" else safe_name(self.layer)

    def describe(self) -> str:
        """How a person reads it: ``layer3 channel 37``, ``class 281 tabby``."""
        if self.kind == "class":
            return f"class {self.index} {self.label}".rstrip()
        return f"{self.layer} {self.kind} {self.index}"


def parse_channels(texts: list[str]) -> list[int]:
    """Channel indices from ``-c`` values: ``37``, ``0-7`` (inclusive), ``1,5,9``; in the order
    given, repeats dropped."""
    chosen: list[int] = []
    for text in texts:
        for part in text.split(","):
            first, dash, last = part.strip().partition("-")
            if not first.isdigit() or (dash and not last.isdigit()):
                raise UsageError(
                    f"--channel '{text}': not a channel index or range",
                    hint="pass indices like 37, ranges like 0-7, or lists like 1,5,9",
                )
            low, high = int(first), int(last) if dash else int(first)
            if high < low:
                raise UsageError(f"--channel '{text}': the range ends before it starts")
            chosen.extend(range(low, high + 1))
    return list(dict.fromkeys(chosen))


def check_channels(layer: str, channels: list[int], available: int) -> None:
    """A usage error when a channel is past the ``available`` channels of ``layer``."""
    wrong = [channel for channel in channels if channel >= available]
    if wrong:
        raise UsageError(
            f"--channel {wrong[0]}: layer '{layer}' has channels 0 to {available - 1}",
            hint="`featviz layers --model MODEL` shows each layer's shape",
        )


def objective_values(
    objectives: list[Objective], maps: dict[str, torch.Tensor], logits: torch.Tensor | None
) -> torch.Tensor:
    """(N,) the value of image i's objective ``objectives[i]``; ``maps``: each objective
    layer's (N, C, h, w) maps; ``logits``: the (N, classes) scores (None when no objective is
    a class)."""
    import torch

    rows: dict[tuple[str, str], list[int]] = defaultdict(list)
    for row, objective in enumerate(objectives):
        rows[objective.kind, objective.layer].append(row)
    values = [None] * len(objectives)
    for (kind, layer), group in rows.items():
        index = torch.tensor([objectives[row].index for row in group], device=_device(maps, logits))
        picked = torch.tensor(group, device=index.device)
        if kind == "class":
            found = logits[picked, index]
        else:
            channel = maps[layer][picked, index]  # (n, h, w)
            h, w = channel.shape[-2:]
            found = channel[:, h // 2, w // 2] if kind == "neuron" else channel.mean(dim=(1, 2))
        for row, value in zip(group, found.unbind()):
            values[row] = value
    return torch.stack(values)


def diversity_penalty(maps: torch.Tensor, groups: list[list[int]]) -> torch.Tensor:
    """How alike the images of each group are: for every pair of a group, the cosine
    similarity of their Gram matrices (channel × channel correlations of ``maps`` (N, C, h, w),
    which ignore where things are), summed over pairs and divided by the group's size, as in
    lucid's ``diversity``; summed over groups. 0 for groups of one."""
    import torch.nn.functional as F

    flat = maps.flatten(2)  # (N, C, h·w)
    grams = F.normalize((flat @ flat.transpose(1, 2)).flatten(1), dim=1)  # (N, C²), unit norm
    total = maps.new_zeros(())
    for group in groups:
        if len(group) < 2:
            continue
        chosen = grams[group]
        similarity = chosen @ chosen.T
        total = total + (similarity.sum() - similarity.diagonal().sum()) / len(group)
    return total


def _device(maps: dict[str, torch.Tensor], logits: torch.Tensor | None) -> torch.device:
    tensor = logits if logits is not None else next(iter(maps.values()))
    return tensor.device


def objectives_for(
    loaded: LoadedModel,
    layers: list[str],
    channels: list[str],
    *,
    neuron: bool,
    targets: list[str],
) -> list[Objective]:
    """The objectives a command line asks for: every ``channels`` of every layer ``layers``
    names (globs as ``featviz maps`` takes them), a neuron at its centre when ``neuron``, then
    every class of ``targets`` (indices or names, as ``featviz cam -t``)."""
    from featviz.explainer.targets import resolve_target
    from featviz.layers.catalog import resolve_layers

    if bool(layers) != bool(channels):
        raise UsageError(
            "--layer and --channel go together: a channel objective needs both",
            hint="e.g. -l layer3 -c 0-7; for a class, pass -t CLASS alone",
        )
    if not channels and not targets:
        raise UsageError(
            "nothing to dream: give channels of a layer or classes",
            hint="e.g. featviz dream -m resnet50 -l layer3 -c 0-7, or -t tabby",
        )
    kind: Kind = "neuron" if neuron else "channel"
    wanted = parse_channels(channels)
    found: list[Objective] = []
    for layer in resolve_layers(loaded.trace, layers, spatial_only=True, per_channel=True):
        check_channels(layer, wanted, loaded.trace.get(layer).channels)
        found.extend(Objective(kind, channel, layer) for channel in wanted)
    if targets and loaded.num_classes is None:
        raise UsageError(
            "--target: this model's output is not class scores",
            hint="dream channels of a layer instead (-l LAYER -c CHANNEL)",
        )
    for text in targets:
        index = resolve_target(text, loaded.categories, loaded.num_classes)
        found.append(Objective("class", index, label=loaded.category(index) or ""))
    return list(dict.fromkeys(found))
