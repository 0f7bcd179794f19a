"""Forward hooks that capture layer outputs, always removed, optionally stopping the forward early.

Two modes:
- capture (feature maps, forward under ``inference_mode``): each tapped output is kept as a copy,
  because an in-place op right after the tap (alexnet's ``ReLU(inplace=True)`` after every conv)
  would otherwise overwrite what we stored.
- grad (CAM): the earliest tapped output is replaced by ``leaf.clone()`` where
  ``leaf = output.detach().requires_grad_()``; later tapped outputs already depend on that leaf
  and are kept as they are while the network gets a clone. ``torch.autograd.grad(score, taps)``
  then computes only d(score)/d(tap): no parameter gradients, no backward through the layers
  before the first tap, and in-place ops after a tap touch the clone, never the stored tensor.

A module whose output is a plain dict of tensors (an FPN's levels, torchvision's
IntermediateLayerGetter) is tapped one entry at a time: the name ``module:key`` (``backbone:0``)
takes the entry ``key`` of ``module``'s output. A model output object (Hugging Face's
``ModelOutput`` is a dict too) is not a plain dict: it keeps its first tensor.

A module that runs several times in one forward (torchvision's BasicBlock reuses one ``relu``)
fires its hook on every call; a tap keeps the LAST call's output, which is the one that leaves
the enclosing block. ``calls`` (from ``tracing.trace_model``) says how many calls to expect, so
that an early stop waits for that last call.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn


class _StopForward(Exception):
    """Raised inside a hook once every tapped layer has produced its final output."""


class LayerTaps:
    """Capture the outputs of named modules during ``run(x)``.

    Args:
        model: the network.
        layers: tapped module names, in any order.
        calls: expected calls per forward for each tapped name (default 1).
        grad: CAM mode (see module docstring); otherwise capture mode.
        stop_early: in capture mode, abort the forward right after the last tapped output.

    After ``run``, ``outputs[name]`` is the (N, C, h, w) tensor (any shape the module returns).
    """

    def __init__(
        self,
        model: nn.Module,
        layers: list[str],
        *,
        calls: Mapping[str, int] | None = None,
        grad: bool = False,
        stop_early: bool = False,
    ) -> None:
        self.model = model
        self.layers = list(dict.fromkeys(layers))
        self.expected_calls = {name: (calls or {}).get(name, 1) for name in self.layers}
        self.grad = grad
        self.stop_early = stop_early and not grad
        self.outputs: dict[str, torch.Tensor] = {}
        self._seen: dict[str, int] = {}
        self._handles: list[Any] = []
        # Found once: a job that taps every batch enters these taps again and again.
        modules = dict(model.named_modules())
        self._modules = [modules[split_entry(name)[0]] for name in self.layers]

    def __enter__(self) -> LayerTaps:
        try:
            for name, module in zip(self.layers, self._modules):
                self._handles.append(module.register_forward_hook(self._hook_for(name)))
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.remove()

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def run(self, x: torch.Tensor) -> Any:
        """Forward ``x``; returns the model output, or None when the forward was stopped early."""
        self.outputs.clear()
        self._seen.clear()
        try:
            return self.model(x)
        except _StopForward:
            return None

    def _hook_for(self, name: str):
        _, key = split_entry(name)

        def hook(module: nn.Module, inputs: Any, output: Any) -> Any:
            count = self._seen.get(name, 0) + 1
            self._seen[name] = count
            if count < self.expected_calls[name]:
                return None
            tensor = tapped_tensor(output, key)
            if tensor is None:
                return None
            replacement = None
            if self.grad:
                if not tensor.requires_grad:
                    tensor = tensor.detach().requires_grad_()
                replacement = tensor.clone()
                self.outputs[name] = tensor
            elif self.stop_early and len(self.outputs.keys() | {name}) == len(self.layers):
                # The output the forward stops at: nothing runs after it that could change it
                # in place, so it is kept as it is, not copied.
                self.outputs[name] = tensor
                raise _StopForward
            else:
                self.outputs[name] = tensor.clone()
            return None if replacement is None else with_tapped(output, key, replacement)

        return hook


ENTRY = ":"  # ``module:key``: the entry ``key`` of the module's dict output


def split_entry(name: str) -> tuple[str, str | None]:
    """A tapped name as (module name, dict key or None)."""
    module, found, key = name.partition(ENTRY)
    return module, key if found else None


def plain_dict(value: Any) -> bool:
    """Whether ``value`` is a dict and nothing more (not a model output object)."""
    from collections import OrderedDict

    return type(value) in (dict, OrderedDict)


def tapped_tensor(output: Any, key: str | None) -> torch.Tensor | None:
    """What a tap of ``key`` (None: the output itself) takes from a module's output."""
    import torch

    if key is None:
        return first_tensor(output)
    value = output.get(key) if plain_dict(output) else None
    return value if isinstance(value, torch.Tensor) else None


def with_tapped(output: Any, key: str | None, replacement: torch.Tensor) -> Any:
    """``output`` with what ``tapped_tensor`` takes swapped for ``replacement``."""
    if key is None:
        return with_first_tensor(output, replacement)
    swapped = type(output)(output)
    swapped[key] = replacement
    return swapped


def first_tensor(value: Any) -> torch.Tensor | None:
    """A module's output tensor: the output itself, or the first tensor of a tuple or list
    (Hugging Face layers return ``(hidden_states, attention)``)."""
    import torch

    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)):
        return next((item for item in value if isinstance(item, torch.Tensor)), None)
    return None


def with_first_tensor(value: Any, replacement: torch.Tensor) -> Any:
    """``value`` with its first tensor (see ``first_tensor``) swapped for ``replacement``."""
    import torch

    if isinstance(value, torch.Tensor):
        return replacement
    items = list(value)
    index = next(i for i, item in enumerate(items) if isinstance(item, torch.Tensor))
    items[index] = replacement
    if isinstance(value, list):
        return items
    return type(value)(*items) if hasattr(value, "_fields") else tuple(items)
