"""Running only the layers after one module: what Ablation-CAM and LeGrad score with.

``Split`` cuts the model's ``torch.fx`` graph after a module's last call; bound to a batch's
inputs (``Split.bind``), it runs the suffix on replacement outputs of that module, seeded with
the earlier values the suffix still reads (skip connections). Where fx cannot trace the model
(data-dependent control flow, Hugging Face models) ``HookedForward`` runs the whole network with
a hook that swaps the module's output: the same scores, at the cost of a full forward.

Both are called as ``resume(image, outputs)``: ``image`` (B,) the batch row each replacement
belongs to, ``outputs`` the module's replacement outputs for those rows (B, …), in the module's
own layout; they return the (B, classes) scores, with the model's root hooks (featviz.tasks:
a segmenter's pixels or a two-tower model's prompts turned into class scores) applied.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from featviz.layers.outputs import logits_of
from featviz.layers.taps import split_entry, with_tapped

# (image index (B,), the module's outputs for those rows) → logits (B, classes)
Resume = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class _TapAsLeaf(fx.Tracer):
    """Traces through every module except standard layers and the cut one, so the cut module
    is one ``call_module`` node even when it is a container (resnet's ``layer4``)."""

    def __init__(self, layer: str) -> None:
        super().__init__()
        self.layer = layer

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return qualified_name == self.layer or super().is_leaf_module(module, qualified_name)


def _optional_arguments(model: nn.Module) -> dict[str, Any]:
    """The forward's parameters after the input that have defaults (timm's ``attn_mask=None``):
    traced at those defaults, as featviz always calls the model with the input alone."""
    parameters = list(inspect.signature(model.forward).parameters.values())[1:]
    return {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty}


class Split:
    """The model's fx graph cut after ``layer``'s last call.

    ``needed``: nodes before the cut that the suffix reads (skip connections); ``ancestors``:
    what must run to compute them; ``batched``: those that depend on the input image.
    """

    def __init__(self, model: nn.Module, layer: str) -> None:
        tracer = _TapAsLeaf(layer)
        concrete = _optional_arguments(model)
        graph = tracer.trace(model, concrete_args=concrete or None)
        self.module = fx.GraphModule(tracer.root, graph)
        # The graph is the forward alone: the hooks on the model's root (featviz.tasks turns a
        # segmenter's pixels into class scores there) run on the suffix's output too.
        self.root, self.root_hooks = model, list(model._forward_hooks.values())
        nodes = list(graph.nodes)
        taps = [node for node in nodes if node.op == "call_module" and node.target == layer]
        if not taps:
            raise ValueError(f"layer '{layer}' is not called as a module in the traced graph")
        # fx keeps a placeholder for each concrete argument too (renamed), after the input.
        placeholders = [node for node in nodes if node.op == "placeholder"]
        inputs = placeholders[: len(placeholders) - len(concrete)]
        if len(inputs) != 1:
            raise ValueError("the model's forward takes more than one input")
        self.tap = taps[-1]
        cut = nodes.index(self.tap) + 1
        self.prefix = nodes[:cut]
        before = set(self.prefix)
        self.needed = {
            source
            for node in nodes[cut:]
            for source in node.all_input_nodes
            if source in before and source is not self.tap
        }
        self.ancestors = _closure(self.needed)
        from_input: set[fx.Node] = set()
        for node in self.prefix:
            if node in inputs or from_input.intersection(node.all_input_nodes):
                from_input.add(node)
        self.batched = self.needed & from_input

    def bind(self, inputs: torch.Tensor) -> BoundSuffix:
        """Compute the needed values for ``inputs`` (N, 3, H, W): one partial forward, if any."""
        env: dict[fx.Node, Any] = {}
        if self.ancestors:
            env = {node: None for node in self.module.graph.nodes if node not in self.ancestors}
            with torch.no_grad():
                fx.Interpreter(self.module, garbage_collect_values=False).run(
                    inputs, initial_env=env
                )
        values = {node: env[node] for node in self.needed}
        for node in self.batched:
            value = values[node]
            if not isinstance(value, torch.Tensor) or value.shape[:1] != inputs.shape[:1]:
                raise ValueError(
                    f"the layers after the cut read '{node.name}', a value computed before it "
                    "that is not a tensor with a batch dimension"
                )
        return BoundSuffix(self, values)


class BoundSuffix:
    """Runs the suffix for chunks of replacement outputs, each row belonging to one image."""

    def __init__(self, split: Split, values: Mapping[fx.Node, Any]) -> None:
        self.split = split
        self.values = values

    def __call__(self, image: torch.Tensor, outputs: torch.Tensor) -> torch.Tensor:
        """``image`` (B,) image index of each row; ``outputs`` (B, …) → (B, classes)."""
        split = self.split
        env: dict[fx.Node, Any] = dict.fromkeys(split.prefix)
        for node, value in self.values.items():
            # index_select copies: an in-place op in the suffix cannot touch the stored value.
            env[node] = value.index_select(0, image) if node in split.batched else value
        env[split.tap] = outputs
        output = fx.Interpreter(split.module).run(initial_env=env)
        for hook in split.root_hooks:  # its inputs: one row per image, as the model's were
            changed = hook(split.root, (outputs,), output)
            output = output if changed is None else changed
        logits, _ = logits_of(output)
        return logits


class HookedForward:
    """The fallback: the whole network on ``inputs`` (N, 3, H, W), the module's output swapped.

    ``calls``: how often each layer runs per forward (``ModelTrace.calls()``); like the taps,
    every call from the expected last one on is replaced.
    """

    def __init__(
        self,
        model: nn.Module,
        inputs: torch.Tensor,
        layer: str,
        calls: Mapping[str, int] | None = None,
    ) -> None:
        self.model = model
        self.inputs = inputs.detach()
        module, self.key = split_entry(layer)
        self.module = model.get_submodule(module)
        self.expected = (calls or {}).get(layer, 1)

    def __call__(self, image: torch.Tensor, outputs: torch.Tensor) -> torch.Tensor:
        seen = 0

        def swap(module: nn.Module, inputs: Any, output: Any) -> torch.Tensor | None:
            nonlocal seen
            seen += 1
            return with_tapped(output, self.key, outputs) if seen >= self.expected else None

        handle = self.module.register_forward_hook(swap)
        try:
            logits, _ = logits_of(self.model(self.inputs[image]))
        finally:
            handle.remove()
        return logits


def _closure(nodes: set[fx.Node]) -> set[fx.Node]:
    """``nodes`` and every node they are computed from."""
    seen: set[fx.Node] = set()
    stack = list(nodes)
    while stack:
        node = stack.pop()
        if node not in seen:
            seen.add(node)
            stack.extend(node.all_input_nodes)
    return seen
