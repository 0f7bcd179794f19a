"""Score-CAM and Ablation-CAM: channel weights from extra forwards instead of gradients.

Both run one extra forward per channel of the tapped layer, K per image, in chunks of
``batch_size`` rows. Each forward yields every class's score, so the (N, K, classes) scores are
cached in the CamContext: a second target class for the same images costs no forward at all.

Ablation-CAM only needs the network AFTER the tapped layer. ``torch.fx`` splits the graph at the
tapped module's last call and an ``fx.Interpreter`` runs the suffix on chunks of ablated
activations, seeded with the earlier values the suffix still reads (skip connections). Where fx
cannot trace the model (data-dependent control flow, some timm models) the whole network runs
with a hook that swaps in the ablated activations: same weights, slower, and said so in a
warning and in ``AblationCam.fallbacks``.
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from featviz.cam.base import CamMethod, logits_match, safe_divide
from featviz.cam.context import CamContext
from featviz.errors import first_line
from featviz.layers.grids import upsample
from featviz.layers.outputs import logits_of
from featviz.layers.taps import split_entry, with_tapped
from featviz.tasks.base import replaying

# Score-CAM's mask denominator max − min + ε: a constant channel gives an all-zero mask.
_MASK_EPS = 1e-8
# Ablation-CAM's (S − S_k) / (S + ε), as in the paper.
_ABLATION_EPS = 1e-7


class ScoreCam(CamMethod):
    """M_k = minmax(upsample(A_k)); s_k = S^c(X ∘ M_k); α = softmax_k(s); L = ReLU(Σ_k α_k A_k).

    X is the normalised input, so a masked-out pixel becomes the dataset mean.
    """

    name = "scorecam"
    images_only = True

    def _weights(self, ctx: CamContext, layer: str, targets: torch.Tensor) -> torch.Tensor:
        scores = ctx.cached(("scorecam", layer), lambda: self._masked_scores(ctx, layer))
        return torch.softmax(_pick(scores, targets), dim=1)

    def _masked_scores(self, ctx: CamContext, layer: str) -> torch.Tensor:
        """(N, K, classes) scores of every image masked by each of its upsampled channels."""
        activations = ctx.activation(layer)
        inputs = ctx.inputs.detach()
        n, k = activations.shape[:2]
        images, channels = _rows(n, k, first=0, device=inputs.device)
        scores = torch.empty(n * k, ctx.num_classes, device=inputs.device)
        with torch.no_grad():
            for start in range(0, n * k, self.batch_size):
                image = images[start : start + self.batch_size]
                masks = upsample(
                    activations[image, channels[start : start + self.batch_size]], inputs.shape[-2:]
                )
                low = masks.amin(dim=(1, 2), keepdim=True)
                masks = (masks - low) / (masks.amax(dim=(1, 2), keepdim=True) - low + _MASK_EPS)
                with replaying(image):
                    logits, _ = logits_of(ctx.model(inputs[image] * masks[:, None]))
                scores[start : start + len(image)] = logits.float()
        return scores.view(n, k, -1)


class AblationCam(CamMethod):
    """w_k = (S^c − S^c with channel k of A zeroed) / (S^c + ε); L = ReLU(Σ_k w_k A_k).

    ``fallbacks`` maps each layer whose ablations re-run the whole network to the reason.
    """

    name = "ablationcam"

    def __init__(self, *, batch_size: int = 32) -> None:
        super().__init__(batch_size=batch_size)
        self.fallbacks: dict[str, str] = {}
        # One fx split per model and layer for the whole run (None: use the fallback); weak
        # keys, so a model can still be freed.
        self._splits: weakref.WeakKeyDictionary[nn.Module, dict[str, _Split | None]] = (
            weakref.WeakKeyDictionary()
        )

    def _weights(self, ctx: CamContext, layer: str, targets: torch.Tensor) -> torch.Tensor:
        scores = _pick(ctx.cached(("ablationcam", layer), lambda: self.scores(ctx, layer)), targets)
        original = scores[:, :1]
        return safe_divide(original - scores[:, 1:], original + _ABLATION_EPS)

    def scores(self, ctx: CamContext, layer: str) -> torch.Tensor:
        """(N, 1 + K, classes): scores with nothing ablated, then with channel k zeroed."""
        split = self._split(ctx.model, layer)
        if split is not None:
            try:
                scores = self._ablated_scores(ctx, layer, split.bind(ctx.inputs.detach()))
                if logits_match(scores[:, 0], ctx.logits):
                    return scores
                reason = "the split network does not reproduce the model's scores"
            except Exception as exc:  # any failure of the split: fall back
                reason = f"running the split network failed: {type(exc).__name__}: {exc}"
            self._give_up(ctx.model, layer, reason)
        return self._ablated_scores(ctx, layer, _HookedForward(ctx, layer))

    def _ablated_scores(self, ctx: CamContext, layer: str, resume: _Resume) -> torch.Tensor:
        activations = ctx.activation(layer)
        n, k = activations.shape[:2]
        images, channels = _rows(n, k, first=-1, device=activations.device)
        scores = torch.empty(n * (k + 1), ctx.num_classes, device=activations.device)
        with torch.no_grad():
            for start in range(0, len(images), self.batch_size):
                image = images[start : start + self.batch_size]
                channel = channels[start : start + self.batch_size]
                chunk = activations[image]
                ablated = torch.nonzero(channel >= 0).squeeze(1)
                chunk[ablated, channel[ablated]] = 0
                chunk = ctx.as_layer_output(layer, chunk, image)
                with replaying(image):
                    scores[start : start + len(image)] = resume(image, chunk).float()
        return scores.view(n, k + 1, -1)

    def _split(self, model: nn.Module, layer: str) -> _Split | None:
        per_model = self._splits.setdefault(model, {})
        if layer not in per_model:
            try:
                per_model[layer] = _Split(model, layer)
            except Exception as exc:  # fx raises many kinds on untraceable code
                self._give_up(
                    model,
                    layer,
                    f"torch.fx cannot trace the model: {type(exc).__name__}: {first_line(exc)}",
                )
        return per_model[layer]

    def _give_up(self, model: nn.Module, layer: str, reason: str) -> None:
        self._splits.setdefault(model, {})[layer] = None
        self.fallbacks[layer] = reason
        warnings.warn(
            f"ablationcam: cannot run only the layers after '{layer}' ({reason}); re-running "
            "the whole network for every chunk of ablated channels instead, which is slower",
            RuntimeWarning,
            stacklevel=3,
        )


# (image index (B,), activations (B, K, h, w)) → logits (B, classes)
_Resume = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _rows(n: int, k: int, *, first: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Image and channel index of every extra forward: for each image, channels first … k−1."""
    channels = torch.arange(first, k, device=device)
    images = torch.arange(n, device=device).repeat_interleave(len(channels))
    return images, channels.repeat(n)


def _pick(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(N, R, classes) scores → (N, R), each image's own target class."""
    index = targets.view(-1, 1, 1).expand(-1, scores.shape[1], 1)
    return scores.gather(2, index).squeeze(2)


class _TapAsLeaf(fx.Tracer):
    """Traces through every module except standard layers and the tapped one, so the tapped
    module is one ``call_module`` node even when it is a container (resnet's ``layer4``)."""

    def __init__(self, layer: str) -> None:
        super().__init__()
        self.layer = layer

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return qualified_name == self.layer or super().is_leaf_module(module, qualified_name)


class _Split:
    """The model's fx graph cut after the tapped module's last call.

    ``needed``: nodes before the cut that the suffix reads (skip connections); ``ancestors``:
    what must run to compute them; ``batched``: those that depend on the input image.
    """

    def __init__(self, model: nn.Module, layer: str) -> None:
        tracer = _TapAsLeaf(layer)
        graph = tracer.trace(model)
        self.module = fx.GraphModule(tracer.root, graph)
        # The graph is the forward alone: the hooks on the model's root (featviz.tasks turns a
        # segmenter's pixels into class scores there) run on the suffix's output too.
        self.root, self.root_hooks = model, list(model._forward_hooks.values())
        nodes = list(graph.nodes)
        taps = [node for node in nodes if node.op == "call_module" and node.target == layer]
        if not taps:
            raise ValueError(f"layer '{layer}' is not called as a module in the traced graph")
        if sum(node.op == "placeholder" for node in nodes) != 1:
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
            if node.op == "placeholder" or from_input.intersection(node.all_input_nodes):
                from_input.add(node)
        self.batched = self.needed & from_input

    def bind(self, inputs: torch.Tensor) -> _BoundSuffix:
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
        return _BoundSuffix(self, values)


class _BoundSuffix:
    """Runs the suffix for chunks of activations, each row belonging to one image."""

    def __init__(self, split: _Split, values: Mapping[fx.Node, Any]) -> None:
        self.split = split
        self.values = values

    def __call__(self, image: torch.Tensor, activations: torch.Tensor) -> torch.Tensor:
        """``image`` (B,) image index of each row; ``activations`` (B, K, h, w) → (B, classes)."""
        split = self.split
        env: dict[fx.Node, Any] = dict.fromkeys(split.prefix)
        for node, value in self.values.items():
            # index_select copies: an in-place op in the suffix cannot touch the stored value.
            env[node] = value.index_select(0, image) if node in split.batched else value
        env[split.tap] = activations
        output = fx.Interpreter(split.module).run(initial_env=env)
        for hook in split.root_hooks:  # its inputs: one row per image, as the model's were
            changed = hook(split.root, (activations,), output)
            output = output if changed is None else changed
        logits, _ = logits_of(output)
        return logits


class _HookedForward:
    """The fallback: the whole network, the tapped module's output swapped for the chunk."""

    def __init__(self, ctx: CamContext, layer: str) -> None:
        self.model = ctx.model
        self.inputs = ctx.inputs.detach()
        module, self.key = split_entry(layer)
        self.module = ctx.model.get_submodule(module)
        # Like LayerTaps: every call from the expected last one on is replaced.
        self.expected = (ctx.calls or {}).get(layer, 1)

    def __call__(self, image: torch.Tensor, activations: torch.Tensor) -> torch.Tensor:
        seen = 0

        def swap(module: nn.Module, inputs: Any, output: Any) -> torch.Tensor | None:
            nonlocal seen
            seen += 1
            return with_tapped(output, self.key, activations) if seen >= self.expected else None

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
