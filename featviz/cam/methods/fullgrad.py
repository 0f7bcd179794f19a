"""FullGrad (Srinivas & Fleuret 2019): the input gradient and every bias's gradient, together.

M = ψ(|x·g|) summed over colour channels + Σ_layers upsample(Σ_k ψ(|b_k·∂S^c/∂z_k|)), where z is
the output of each ``Conv2d`` and ``BatchNorm2d`` that adds a bias b, and ψ scales each (image,
channel) map to [0, 1] as (v − min) / (max − min + 1e-7): pytorch-grad-cam's recipe. A batch
norm's bias is the one it adds in eval mode, β − μ·γ/√(σ² + ε). Bilinear upsampling is linear,
so each layer's channels are summed before it, not after. A batch norm folded into its
convolution (featviz cam, compare, score) leaves its bias to that convolution: the same maps,
unless the convolution had a bias of its own, whose term is then merged with the norm's.
"""

from __future__ import annotations

import torch
from torch import nn

from featviz.cam.context import CamContext
from featviz.cam.methods.pixel import PixelMethod
from featviz.layers.grids import upsample
from featviz.layers.outputs import logits_of
from featviz.layers.taps import LayerTaps
from featviz.tasks.base import replaying

_SCALE_EPS = 1e-7


class FullGrad(PixelMethod):
    """Non-negative: every term is an absolute value."""

    name = "fullgrad"
    images_only = True  # not written nor tested for clips yet

    def _map(self, ctx: CamContext, layer: str, targets: torch.Tensor) -> torch.Tensor:
        leaf, logits, outputs, biases = ctx.cached("fullgrad", lambda: _forward_with_biases(ctx))
        rows = torch.arange(len(targets), device=logits.device)
        with torch.inference_mode(False), torch.enable_grad():
            grads = torch.autograd.grad(
                logits[rows, targets].sum(), [leaf, *outputs], retain_graph=True
            )
        total = _scaled((grads[0] * leaf.detach()).abs()).sum(dim=1)
        for bias, grad in zip(biases, grads[1:]):
            part = _scaled((grad.float() * bias.view(1, -1, 1, 1)).abs()).sum(dim=1)
            total += upsample(part, ctx.input_hw)
        return total


def bias_layers(model: nn.Module) -> dict[str, torch.Tensor]:
    """Each module that adds a bias to its (N, C, h, w) output, by name: its (C,) bias."""
    found = {}
    for name, module in model.named_modules():
        # A norm whose forward was swapped out (folded into its convolution) adds nothing.
        if type(module) not in (nn.Conv2d, nn.BatchNorm2d) or "forward" in vars(module):
            continue
        if module.bias is None:
            continue
        if isinstance(module, nn.BatchNorm2d):
            scale = module.weight / torch.sqrt(module.running_var + module.eps)
            found[name] = (module.bias - module.running_mean * scale).detach().float()
        else:
            found[name] = module.bias.detach().float()
    return found


def _forward_with_biases(ctx: CamContext):
    """One more forward of the batch, the input a leaf and every bias layer's output kept."""
    biases = bias_layers(ctx.model)
    with torch.inference_mode(False), torch.enable_grad():
        leaf = ctx.inputs.detach().clone().requires_grad_()
        taps = LayerTaps(ctx.model, list(biases), calls=ctx.calls, grad=True)
        with taps, replaying(torch.arange(len(leaf), device=leaf.device)):
            logits, _ = logits_of(taps.run(leaf))
    used = [name for name in biases if name in taps.outputs]
    return leaf, logits, [taps.outputs[name] for name in used], [biases[name] for name in used]


def _scaled(maps: torch.Tensor) -> torch.Tensor:
    """(N, C, h, w) → each (image, channel) map as (v − min) / (max − min + ε)."""
    low = maps.amin(dim=(2, 3), keepdim=True)
    maps = maps - low
    return maps / (maps.amax(dim=(2, 3), keepdim=True) + _SCALE_EPS)
