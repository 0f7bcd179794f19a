"""Gradients through rectified backward passes: guided backpropagation, deconvolution, and
Guided Grad-CAM.

Both passes change only what every ``nn.ReLU`` module sends back (featviz.layers.relus): guided
backpropagation (Springenberg et al. 2015) passes a gradient where the ReLU's input and the
gradient are both positive, deconvolution (Zeiler & Fergus 2014) where the gradient is positive
whatever the input. The batch's one forward runs with switchable ReLUs when one of these methods
is asked for (``relu_rules``), so each target costs one backward of that graph; a context built
without them gets one more forward, under switchable ReLUs, kept for the other targets.
"""

from __future__ import annotations

import torch

from featviz.cam.base import normalise
from featviz.cam.context import CamContext
from featviz.cam.methods.gradient import GradCam
from featviz.cam.methods.pixel import PixelMethod
from featviz.layers.outputs import logits_of
from featviz.layers.relus import DECONVOLUTION, GUIDED, ReluSwitch, switchable_relus
from featviz.tasks.base import replaying


class _RectifiedGradient(PixelMethod):
    """∂S^c/∂x with every ReLU module's backward replaced by ``rule``."""

    rule: str
    relu_rules = True

    def _attribution(self, ctx: CamContext, targets: torch.Tensor) -> torch.Tensor:
        return rectified_gradient(ctx, targets, self.rule)


def rectified_gradient(ctx: CamContext, targets: torch.Tensor, rule: str) -> torch.Tensor:
    """(N, 3, H, W) input gradient of each image's target score, the ReLUs back-propagating by
    ``rule``: a backward of the batch's forward, or of one more forward kept for the batch."""
    if ctx.relus is not None and ctx.input_gradients:
        leaf, logits, switch = ctx.inputs, ctx.logits, ctx.relus
    else:
        leaf, logits, switch = ctx.cached("switchable relus", lambda: _switchable_forward(ctx))
    rows = torch.arange(len(targets), device=logits.device)
    with switch.rule_of(rule), torch.inference_mode(False), torch.enable_grad():
        (grad,) = torch.autograd.grad(logits[rows, targets].sum(), leaf, retain_graph=True)
    return grad.float()


def _switchable_forward(ctx: CamContext) -> tuple[torch.Tensor, torch.Tensor, ReluSwitch]:
    with torch.inference_mode(False), torch.enable_grad():
        leaf = ctx.inputs.detach().clone().requires_grad_()
        images = torch.arange(len(leaf), device=leaf.device)
        with switchable_relus(ctx.model) as switch, replaying(images):
            logits, _ = logits_of(ctx.model(leaf))
    return leaf, logits, switch


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
    resolution (a clip's Grad-CAM brought to its frames trilinearly)."""

    name = "guidedgradcam"
    rule = GUIDED

    def layers_for(self, layers: list[str]) -> list[str]:
        return list(layers)

    def _map(self, ctx: CamContext, layer: str, targets: torch.Tensor) -> torch.Tensor:
        gradcam = GradCam().compute(ctx, layer, targets)
        return super()._map(ctx, layer, targets) * normalise(ctx.at_input(layer, gradcam))
