"""Which layers a model has, what they output, and which one a CAM should use by default.

``trace_model`` runs one forward on the meta device (shapes only, a few milliseconds, no real
arithmetic) with a hook on every module, and records the order in which module outputs are
produced, their shapes and how often each module runs. Everything else here reads that trace.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from featviz.errors import UsageError, closest

if TYPE_CHECKING:
    from collections.abc import Callable

    from torch import nn

_POOLING = ("Pool",)


@dataclass(frozen=True)
class LayerInfo:
    """One module as seen in a traced forward.

    ``shape`` is the output shape (batch of one) of the module's last call, or None when the
    module did not run or did not return a tensor; ``pooled``: the output comes from a pooling
    layer, or is the very tensor a pooling layer inside this module returned.
    """

    name: str
    type_name: str
    shape: tuple[int, ...] | None
    params: int
    calls: int
    order: int
    pooled: bool

    @property
    def spatial(self) -> bool:
        """Usable for feature maps and CAM: a 4-D output with more than one spatial position."""
        return self.shape is not None and len(self.shape) == 4 and self.shape[2] * self.shape[3] > 1


@dataclass(frozen=True)
class ModelTrace:
    """All modules of a model, in ``named_modules`` order, with their traced outputs.

    ``num_classes``: the width of the model's (N, classes) scores, None when its output is not
    one (see scores.logits_of).
    """

    layers: tuple[LayerInfo, ...]
    num_classes: int | None

    def get(self, name: str) -> LayerInfo:
        return next(layer for layer in self.layers if layer.name == name)

    @property
    def names(self) -> list[str]:
        return [layer.name for layer in self.layers]

    def calls(self) -> dict[str, int]:
        return {layer.name: layer.calls for layer in self.layers}

    def cam_candidates(self) -> list[LayerInfo]:
        """Spatial layers in execution order."""
        ran = [layer for layer in self.layers if layer.spatial]
        return sorted(ran, key=lambda layer: layer.order)

    def default_cam_layer(self) -> str:
        """The output of the last convolutional stage: the last spatial output that is not pooled.

        Among modules producing that very tensor (``layer4.2.relu`` → ``layer4.2`` → ``layer4``)
        the outermost is named, because it is the name a user reads in the model's structure.
        """
        usable = [layer for layer in self.cam_candidates() if not layer.pooled]
        if not usable:
            raise UsageError(
                "this model has no layer with a spatial (N, C, H, W) output to compute a CAM on",
                hint="featviz works on convolutional networks; `featviz layers` shows what it has",
            )
        return usable[-1].name


def trace_model(model: nn.Module, input_shape: tuple[int, ...]) -> ModelTrace:
    """Trace one forward of a zero input of ``input_shape`` (N, C, H, W)."""
    import torch

    named = [(name, module) for name, module in model.named_modules() if name]
    records: dict[str, dict] = {}
    produced: dict[int, bool] = {}  # id of an output tensor → whether a pooling made it
    keep_alive: list[torch.Tensor] = []
    counter = iter(range(1 << 30))

    def hook_for(name: str):
        def hook(module: nn.Module, inputs: object, output: object) -> None:
            record = records.setdefault(name, {"calls": 0})
            record["calls"] += 1
            record["order"] = next(counter)
            if not isinstance(output, torch.Tensor):
                record.update(shape=None, pooled=False)
                return
            is_pool = any(word in type(module).__name__ for word in _POOLING)
            # A container returning its last child's output returns the same tensor object.
            pooled = is_pool or produced.get(id(output), False)
            record.update(shape=tuple(output.shape), pooled=pooled)
            keep_alive.append(output)  # ids stay unique while the trace runs
            produced.setdefault(id(output), pooled)

        return hook

    handles = [module.register_forward_hook(hook_for(name)) for name, module in named]
    try:
        output = _forward_shapes(
            model, input_shape, restart=lambda: (records.clear(), produced.clear())
        )
    finally:
        for handle in handles:
            handle.remove()

    layers = []
    for name, module in named:
        record = records.get(name, {})
        layers.append(
            LayerInfo(
                name=name,
                type_name=type(module).__name__,
                shape=record.get("shape"),
                params=sum(p.numel() for p in module.parameters()),
                calls=record.get("calls", 0),
                order=record.get("order", -1),
                pooled=record.get("pooled", False),
            )
        )
    return ModelTrace(tuple(layers), _classes_of(output))


def _classes_of(output: object) -> int | None:
    from featviz.errors import RunError
    from featviz.scores import logits_of

    try:
        scores, _ = logits_of(output)
    except RunError:
        return None
    return int(scores.shape[1]) if scores.ndim == 2 else None


def _forward_shapes(
    model: nn.Module, input_shape: tuple[int, ...], restart: Callable[[], object]
) -> object:
    """The model's output for a zero input: on the meta device when every op allows it, else a
    real forward of zeros.

    ``restart()`` runs before the real forward: a meta forward that failed halfway has already
    fired some hooks, whose records would otherwise count every call twice.
    """
    import torch
    from torch.func import functional_call

    meta_state = {
        name: torch.empty_like(tensor, device="meta")
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]
    }
    try:
        with torch.no_grad():
            return functional_call(model, meta_state, (torch.zeros(input_shape, device="meta"),))
    except Exception:
        pass
    restart()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    with torch.inference_mode():
        return model(torch.zeros(input_shape, device=device))


def resolve_layers(trace: ModelTrace, patterns: list[str], *, spatial_only: bool) -> list[str]:
    """Turn names and glob patterns into module names, in execution order.

    ``*`` matches within one dotted segment (``layer4.*`` → ``layer4.0`` … ``layer4.2``), ``**``
    across segments. An exact name that is not spatial is refused when ``spatial_only``; layers a
    glob matches that are not spatial are left out silently (``features.*`` includes ReLUs and
    pools, which are spatial, but a glob over a classifier would catch Linear layers too).
    """
    chosen: list[str] = []
    for pattern in patterns:
        if pattern in trace.names:
            info = trace.get(pattern)
            if spatial_only and not info.spatial:
                raise _not_spatial(trace, info)
            chosen.append(pattern)
            continue
        if any(char in pattern for char in "*?["):
            regex = _glob_regex(pattern)
            matches = [
                layer.name
                for layer in trace.layers
                if regex.fullmatch(layer.name) and (layer.spatial or not spatial_only)
            ]
            if matches:
                chosen.extend(matches)
                continue
            raise UsageError(
                f"no {'spatial ' if spatial_only else ''}layer matches '{pattern}'",
                hint=_layers_hint(trace, pattern),
            )
        raise UsageError(f"unknown layer '{pattern}'", hint=_layers_hint(trace, pattern))
    order = {layer.name: layer.order for layer in trace.layers}
    return sorted(dict.fromkeys(chosen), key=lambda name: order[name])


def _glob_regex(pattern: str) -> re.Pattern[str]:
    parts = re.split(r"(\*\*|\*|\?)", pattern)
    table = {"**": ".*", "*": "[^.]*", "?": "[^.]"}
    return re.compile("".join(table.get(part, re.escape(part)) for part in parts))


def _layers_hint(trace: ModelTrace, wrong: str) -> str:
    near = closest(wrong, trace.names)
    listing = "`featviz layers --model MODEL`"
    return f"{near}; list them all with {listing}" if near else f"list the layers with {listing}"


def _not_spatial(trace: ModelTrace, info: LayerInfo) -> UsageError:
    shape = "no tensor output" if info.shape is None else f"output shape {list(info.shape)}"
    candidates = [layer.name for layer in trace.cam_candidates() if not layer.pooled][-3:]
    return UsageError(
        f"layer '{info.name}' ({info.type_name}, {shape}) has no spatial (N, C, H, W) output "
        "to draw",
        hint=f"try one of the last spatial layers: {', '.join(candidates)}",
    )
