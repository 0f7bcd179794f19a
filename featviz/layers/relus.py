"""ReLU modules whose backward rule is chosen after the forward, in a context manager that
always puts the modules back.

Guided backpropagation and deconvolution differ from the ordinary gradient only in what each
ReLU sends back, so one forward can serve all three: inside ``switchable_relus(model)`` every
``nn.ReLU`` module computes the same ReLU (not in place) through a function whose backward reads
the forward's ``ReluSwitch``; ``switch.rule_of(GUIDED)`` around a backward of that graph then
gives guided gradients, and every other backward the ordinary ones. The switch belongs to one
forward, so threads and devices never share it. Only ``nn.ReLU`` modules are switched (as in
captum and pytorch-grad-cam): a functional ``relu``, ReLU6 or GELU back-propagates as usual.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

ORDINARY = "ordinary"  # grad · 1[input > 0]
GUIDED = "guided"  # ReLU(grad) · 1[input > 0] (Springenberg et al. 2015)
DECONVOLUTION = "deconvolution"  # ReLU(grad) (Zeiler & Fergus 2014)


class ReluSwitch:
    """The backward rule of the ReLUs of one forward: ``rule``, ORDINARY unless switched."""

    def __init__(self) -> None:
        self.rule = ORDINARY

    @contextmanager
    def rule_of(self, rule: str) -> Iterator[None]:
        """Backwards inside the block use ``rule``; the previous rule is back after it."""
        previous, self.rule = self.rule, rule
        try:
            yield
        finally:
            self.rule = previous


class _SwitchableRelu(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, switch: ReluSwitch) -> torch.Tensor:
        output = torch.relu(x)
        ctx.switch = switch
        ctx.save_for_backward(output)
        return output

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (output,) = ctx.saved_tensors
        rule = ctx.switch.rule
        if rule != ORDINARY:
            grad = grad.clamp(min=0)
        if rule == DECONVOLUTION:
            return grad, None
        # ReLU's own backward kernel: one pass, no mask tensor (what nn.ReLU's graph runs).
        return torch.ops.aten.threshold_backward(grad, output, 0), None


@contextmanager
def switchable_relus(model: nn.Module) -> Iterator[ReluSwitch]:
    """Every ``nn.ReLU`` module of ``model`` runs through the switchable function inside the
    block (forwards there build graphs that the yielded switch steers); their own forward is
    back after it, also on an error."""
    switch = ReluSwitch()
    relus = [module for module in model.modules() if isinstance(module, nn.ReLU)]
    try:
        for module in relus:
            # An instance attribute shadows the class's forward: nothing else is touched.
            module.forward = lambda x: _SwitchableRelu.apply(x, switch)
        yield switch
    finally:
        for module in relus:
            vars(module).pop("forward", None)
