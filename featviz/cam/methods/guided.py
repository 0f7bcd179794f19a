"""Gradients through rectified backward passes: guided backpropagation, deconvolution, and
Guided Grad-CAM.

Both passes change only what every ``nn.ReLU`` module sends back (the forward is unchanged):
guided backpropagation (Springenberg et al. 2015) passes a gradient where the ReLU's input and
the gradient are both positive, deconvolution (Zeiler & Fergus 2014) where the gradient is
positive whatever the input. As in captum and pytorch-grad-cam, only ``nn.ReLU`` modules are
changed: a functional ``relu`` call or another activation (ReLU6, SiLU) back-propagates as
usual. The rule is in place only inside ``relu_rule``, a context manager that always puts every
module back; the batch is forwarded once more under it (the first forward's graph holds the
ordinary ReLUs) and each target class then costs one backward of that graph.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from featviz.cam.base import normalise
from featviz.cam.context import CamContext
from featviz.cam.methods.gradient import GradCam
from featviz.cam.methods.pixel import PixelMethod
from featviz.layers.grids import upsample
from featviz.layers.outputs import logits_of
from featviz.tasks.base import replaying

GUIDED = "guided"
DECONVOLUTION = "deconvolution"


class _RectifiedRelu(torch.autograd.Function):
    """ReLU forward; backward ReLU(grad), times 1[input > 0] for the guided rule."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, guided: bool) -> torch.Tensor:
        output = x.clamp(min=0)
        ctx.guided = guided
        ctx.save_for_backward(output)
        return output

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (output,) = ctx.saved_tensors
        grad = grad.clamp(min=0)
        return (grad * (output > 0) if ctx.guided else grad), None


@contextmanager
def relu_rule(model: nn.Module, rule: str) -> Iterator[None]:
    """Every ``nn.ReLU`` module of ``model`` back-propagates by ``rule`` (``GUIDED`` or
    ``DECONVOLUTION``) inside the block; their own forward is back after it, also on an error."""
    guided = rule == GUIDED
    relus = [module for module in model.modules() if isinstance(module, nn.ReLU)]
    try:
        for module in relus:
            # An instance attribute shadows the class's forward: nothing else is touched.
            module.forward = lambda x, guided=guided: _RectifiedRelu.apply(x, guided)
        yield
    finally:
        for module in relus:
            vars(module).pop("forward", None)


class _RectifiedGradient(PixelMethod):
    """∂S^c/∂x with every ReLU module's backward replaced by ``rule``."""

    rule: str

    def _attribution(self, ctx: CamContext, targets: torch.Tensor) -> torch.Tensor:
        return rectified_gradient(ctx, targets, self.rule)


def rectified_gradient(ctx: CamContext, targets: torch.Tensor, rule: str) -> torch.Tensor:
    """(N, 3, H, W) input gradient of each image's target score under ``rule``; the batch's
    forward under the rule is run once and kept for the other targets."""
    leaf, logits = ctx.cached(("relu_rule", rule), lambda: _forward_under(ctx, rule))
    rows = torch.arange(len(targets), device=logits.device)
    with torch.inference_mode(False), torch.enable_grad():
        (grad,) = torch.autograd.grad(logits[rows, targets].sum(), leaf, retain_graph=True)
    return grad.float()


def _forward_under(ctx: CamContext, rule: str) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.inference_mode(False), torch.enable_grad():
        leaf = ctx.inputs.detach().clone().requires_grad_()
        with relu_rule(ctx.model, rule), replaying(torch.arange(len(leaf), device=leaf.device)):
            logits, _ = logits_of(ctx.model(leaf))
    return leaf, logits


class GuidedBackprop(_RectifiedGradient):
    """Guided backpropagation: g with each ReLU passing back ReLU(grad)·1[input > 0]."""

    name = "guidedbackprop"
    rule = GUIDED


class Deconvolution(_RectifiedGradient):
    """Deconvolution: g with each ReLU passing back ReLU(grad)."""

    name = "deconvolution"
    rule = DECONVOLUTION


class GuidedGradCam(_RectifiedGradient):
    """Guided backpropagation × the layer's Grad-CAM upsampled to the input and min-max scaled
    (Selvaraju et al. 2017; pytorch-grad-cam's recipe): one map per layer, at the input's
    resolution."""

    name = "guidedgradcam"
    rule = GUIDED

    def layers_for(self, layers: list[str]) -> list[str]:
        return list(layers)

    def _map(self, ctx: CamContext, layer: str, targets: torch.Tensor) -> torch.Tensor:
        gradcam = GradCam().compute(ctx, layer, targets)
        return super()._map(ctx, layer, targets) * normalise(upsample(gradcam, ctx.input_hw))
