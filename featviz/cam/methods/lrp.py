"""Layer-wise relevance propagation for convolutional networks (``lrp``).

The relevance of the explained class starts as its score S^c (every other output 0) and flows
back layer by layer, each layer passing on what it received by its own rule
(featviz.cam.methods.lrp_rules), so that the input's relevance sums to S^c up to what biases
and stabilisers keep. The composite, the usual one for image classifiers:

- the layers that read the pixels (the first convolution): z^B, with the input's bounds (the
  normalised values of pixel 0 and pixel 255, channel by channel);
- every other convolution: γ = 0.25, which favours positive evidence and keeps the lower
  layers' maps from turning to noise;
- every Linear (the dense head): ε = 1e-6;
- average pooling, and the sum that ends a residual block: proportional to each input's
  contribution;
- activations and batch norms: relevance passed unchanged; max pooling: all of a window's
  relevance to its maximum.

The rules run as modified backward passes (``RelevanceRules``): a forward hook on every layer
that has a rule swaps the layer's backward for its rule, inside a context manager that always
removes the hooks. Relevance then travels where gradients would, so ``torch.autograd.grad`` of
the scores with respect to the input returns the input's relevance.

Skip connections (``out += identity`` in a ResNet) are additions inside a block's forward, not
layers: ``SkipConnections``, a torch function mode, splits the relevance of every sum of two
tensors that both carry it in proportion to the two parts (zennit needs its ResNet canonizer
for the same).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from featviz.cam.context import CamContext
from featviz.cam.methods.lrp_rules import (
    Epsilon,
    Gamma,
    Passed,
    Proportional,
    Rule,
    ZBox,
    stabilise,
)
from featviz.cam.methods.pixel import PixelMethod
from featviz.layers.outputs import logits_of
from featviz.tasks.base import replaying

_ACTIVATIONS = (
    nn.ReLU,
    nn.LeakyReLU,
    nn.ReLU6,
    nn.ELU,
    nn.GELU,
    nn.SiLU,
    nn.Hardswish,
    nn.Sigmoid,
    nn.Tanh,
    nn.Softplus,
)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_POOLS = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)
_CONVOLUTIONS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_STABILISER = 1e-6
_WEIGHTED = (*_CONVOLUTIONS, nn.Linear)


def composite_rule(module: nn.Module, *, gamma: float = 0.25, epsilon: float = 1e-6) -> Rule | None:
    """The rule of ``module`` in the composite above (None: plain gradient, e.g. max pooling)."""
    if isinstance(module, _CONVOLUTIONS):
        return Gamma(gamma)
    if isinstance(module, nn.Linear):
        return Epsilon(epsilon)
    if isinstance(module, _POOLS):
        return Proportional()
    if isinstance(module, _ACTIVATIONS + _NORMS):
        return Passed()
    return None


class _RuleBackward(torch.autograd.Function):
    """Identity on the layer's output; its backward is the layer's rule applied to the layer's
    input (the layer's own graph is dropped, so its ordinary backward never runs)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, output: torch.Tensor, rule: Callable) -> torch.Tensor:
        ctx.save_for_backward(x, output)
        ctx.rule = rule
        # A copy goes on: an in-place op after the layer (ReLU) must not change the saved output.
        return output.clone()

    @staticmethod
    def backward(ctx, relevance: torch.Tensor):
        x, output = ctx.saved_tensors
        return ctx.rule(x, output, relevance), None, None


class _ProportionalSum(torch.autograd.Function):
    """a + b; backward: the sum's relevance split in proportion, R_a = a·R / (a + b)."""

    @staticmethod
    def forward(ctx, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(a, b)
        return a + b

    @staticmethod
    def backward(ctx, relevance: torch.Tensor):
        a, b = ctx.saved_tensors
        # The sum is computed again: an in-place ReLU after the block overwrites the output.
        share = relevance / stabilise(a + b, _STABILISER)
        return a * share, b * share


_ADDITIONS = {torch.add, torch.Tensor.add, torch.Tensor.__add__, torch.Tensor.__iadd__}
_ADDITIONS |= {torch.Tensor.__radd__, torch.Tensor.add_}


class SkipConnections(TorchFunctionMode):
    """Within the ``with`` block, the sum of two tensors that both carry relevance (a skip
    connection joining its block, ``out += identity``) splits it in proportion to each part
    (LRP-0 on the sum), instead of handing the whole of it to both."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _ADDITIONS and len(args) == 2 and not kwargs and _both_carry(*args):
            return _ProportionalSum.apply(*args)
        return func(*args, **kwargs)


def _both_carry(a: object, b: object) -> bool:
    return (
        torch.is_tensor(a)
        and torch.is_tensor(b)
        and a.requires_grad
        and b.requires_grad
        and a.shape == b.shape
    )


class RelevanceRules:
    """Within the ``with`` block, every layer of ``model`` that has a rule propagates relevance.

    ``rule_for(module)``: its rule, or None for the ordinary backward; ``first``: the rule of
    any convolution or Linear with a rule whose input is ``inputs`` itself (the pixels). The
    hooks are removed on leaving the block, also when the forward or backward raised.
    """

    def __init__(
        self,
        model: nn.Module,
        inputs: torch.Tensor,
        rule_for: Callable[[nn.Module], Rule | None],
        first: Rule | None,
    ) -> None:
        self.model = model
        self.inputs = inputs
        self.rules = {module: rule_for(module) for module in model.modules()}
        self.first = first
        self._handles: list = []
        # A rule runs its layer's forward again (modified): its hook must not fire there.
        self._in_rule = False

    def __enter__(self) -> RelevanceRules:
        try:
            for module, rule in self.rules.items():
                if rule is not None:
                    self._handles.append(module.register_forward_hook(self._hook))
        except BaseException:
            self._remove()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._remove()

    def _remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _hook(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        if self._in_rule or not args or not torch.is_tensor(args[0]) or not args[0].requires_grad:
            return None
        x = args[0]
        rule = self.rules[module]
        if x is self.inputs and self.first is not None and isinstance(module, _WEIGHTED):
            rule = self.first

        def backward(x: torch.Tensor, z: torch.Tensor, relevance: torch.Tensor) -> torch.Tensor:
            self._in_rule = True
            try:
                return rule.relevance(module, x, z, relevance)
            finally:
                self._in_rule = False

        return _RuleBackward.apply(x, output.detach(), backward)


def lrp_relevance(
    model: nn.Module,
    x: torch.Tensor,
    targets: torch.Tensor,
    low: torch.Tensor,
    high: torch.Tensor,
    *,
    gamma: float = 0.25,
    epsilon: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The relevance of every input value for each image's target class, and those scores.

    ``x`` (N, C, H, W) normalised inputs; ``targets`` (N,) class indices; ``low``/``high`` (C,)
    or (N, C), the lowest and highest value each input channel can take (z^B's box). Returns
    the relevance (N, C, H, W) float32, which sums per image to its score S^c up to what the
    biases keep, and the scores (N,). ``model`` is left as it was.
    """
    leaf, logits = forward_under_rules(model, x, low, high, gamma=gamma, epsilon=epsilon)
    return relevance_of(leaf, logits, targets)


def forward_under_rules(
    model: nn.Module,
    x: torch.Tensor,
    low: torch.Tensor,
    high: torch.Tensor,
    *,
    gamma: float = 0.25,
    epsilon: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward of ``x`` whose backward propagates relevance: (the input leaf, the logits
    (N, classes)). Several targets can then be explained from it (``relevance_of``)."""
    with torch.inference_mode(False), torch.enable_grad():
        leaf = x.detach().clone().requires_grad_()
        box = ZBox(torch.as_tensor(low), torch.as_tensor(high))
        rules = RelevanceRules(
            model, leaf, lambda m: composite_rule(m, gamma=gamma, epsilon=epsilon), box
        )
        with rules, SkipConnections():
            logits, _ = logits_of(model(leaf))
    return leaf, logits


def relevance_of(
    leaf: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The input's relevance (N, C, H, W) for ``targets`` (N,) from ``forward_under_rules``'s
    forward (kept for the next targets), and the scores S^c (N,)."""
    rows = torch.arange(len(targets), device=logits.device)
    scores = logits[rows, targets].detach()
    # The relevance starts as the explained score itself, every other output 0.
    start = torch.zeros_like(logits)
    start[rows, targets] = scores
    with torch.inference_mode(False), torch.enable_grad():
        (relevance,) = torch.autograd.grad(logits, leaf, grad_outputs=start, retain_graph=True)
    return relevance.detach().float(), scores.float()


class Lrp(PixelMethod):
    """The input's relevance under the composite, per colour channel (signed)."""

    name = "lrp"
    images_only = True  # not written nor tested for clips yet

    def _attribution(self, ctx: CamContext, targets: torch.Tensor) -> torch.Tensor:
        leaf, logits = ctx.cached("lrp", lambda: self._forward(ctx))
        relevance, _ = relevance_of(leaf, logits, targets)
        return relevance

    @staticmethod
    def _forward(ctx: CamContext) -> tuple[torch.Tensor, torch.Tensor]:
        low, high = ctx.pixel_range()
        with replaying(torch.arange(len(ctx.inputs), device=ctx.inputs.device)):
            return forward_under_rules(ctx.model, ctx.inputs, low, high)
