"""AttnLRP for vision transformers (``attnlrp``; Achtibat et al., ICML 2024, "AttnLRP:
Attention-Aware Layer-Wise Relevance Propagation for Transformers").

Relevance is carried as R = t ⊙ g for every tensor t of the forward, g a modified gradient:
layers whose gradient × input already distributes relevance the way the paper's rules do keep
their ordinary backward, and the others get a backward of their own. With S^c the explained
score and g = 1 on it, the pixels' relevance is x ⊙ g at the input. The rules:

- Linear layers, the patch embedding, additions (residual streams, position embeddings):
  ε-LRP with ε → 0, which for a layer without a bias is its ordinary gradient × input; a
  bias, a position embedding, the class and register tokens keep their own share.
- element-wise non-linearities (GELU, SiLU…): the identity rule, R_in = R_out, i.e.
  g_in = g_out ⊙ f(x) / x.
- LayerNorm (and RMSNorm): the standard deviation is held constant, so the normalisation is
  linear in x (the identity rule on its non-linear part).
- softmax: the paper's rule R_in,i = x_i·(R_out,i − s_i·Σ_j R_out,j), which is exactly the
  ordinary gradient × input of the softmax.
- the matrix products of attention, q·kᵀ and A·v (both factors depend on the input): the
  uniform rule, each factor gets half (g halved for both).

The rules are applied to torch functions, not to modules (``AttnLrpRules``, a
``TorchFunctionMode``): ``scaled_dot_product_attention`` is computed written out, so timm's,
torchvision's and Hugging Face's attention all get them, and nothing on the model changes.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from featviz.cam.context import CamContext
from featviz.cam.methods.lrp_rules import stabilise
from featviz.cam.methods.pixel import PixelMethod
from featviz.layers.outputs import logits_of
from featviz.tasks.base import replaying

_STABILISER = 1e-6
_ELEMENTWISE = {F.gelu, F.silu, F.mish, F.softplus, F.elu, F.hardswish, torch.tanh, torch.sigmoid}
_MATMULS = {torch.matmul, torch.Tensor.__matmul__, torch.bmm, torch.Tensor.matmul, torch.Tensor.bmm}


class _Identity(torch.autograd.Function):
    """y = f(x) element-wise; backward: the identity rule, g_in = g_out ⊙ y / x."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, y)
        return y.clone()

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        x, y = ctx.saved_tensors
        return g * y / stabilise(x, _STABILISER), None


class _Half(torch.autograd.Function):
    """Identity whose backward halves the gradient: one factor of a product of two."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> torch.Tensor:
        return g * 0.5


def _uniform_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b with relevance split evenly between a and b when both depend on the input."""
    if a.requires_grad and b.requires_grad:
        return torch.matmul(_Half.apply(a), _Half.apply(b))
    return torch.matmul(a, b)


def _layer_norm(x, shape, weight=None, bias=None, eps=1e-5) -> torch.Tensor:
    dims = tuple(range(-len(shape), 0))
    centred = x - x.mean(dim=dims, keepdim=True)
    scale = (centred.pow(2).mean(dim=dims, keepdim=True) + eps).sqrt().detach()
    y = centred / scale
    if weight is not None:
        y = y * weight
    return y if bias is None else y + bias


def _rms_norm(x, shape, weight=None, eps=None) -> torch.Tensor:
    dims = tuple(range(-len(shape), 0))
    eps = torch.finfo(x.dtype).eps if eps is None else eps
    y = x / (x.pow(2).mean(dim=dims, keepdim=True) + eps).sqrt().detach()
    return y if weight is None else y * weight


def _attention(
    query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **_: Any
) -> torch.Tensor:
    """scaled_dot_product_attention written out (eval: no dropout), with the uniform rule."""
    scale = 1 / math.sqrt(query.shape[-1]) if scale is None else scale
    if key.shape[-3] != query.shape[-3]:  # grouped-query attention: heads shared by queries
        repeat = query.shape[-3] // key.shape[-3]
        key = key.repeat_interleave(repeat, dim=-3)
        value = value.repeat_interleave(repeat, dim=-3)
    logits = _uniform_matmul(query, key.transpose(-2, -1)) * scale
    if is_causal:
        causal = torch.ones(logits.shape[-2:], dtype=torch.bool, device=logits.device).tril()
        logits = logits.masked_fill(~causal, float("-inf"))
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            logits = logits.masked_fill(~attn_mask, float("-inf"))
        else:
            logits = logits + attn_mask
    return _uniform_matmul(logits.softmax(dim=-1), value)


class AttnLrpRules(TorchFunctionMode):
    """Within the ``with`` block, torch functions propagate AttnLRP relevance in backward."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            return _attention(*args, **kwargs)
        if func in _MATMULS and len(args) == 2:
            return _uniform_matmul(*args)
        if func is F.layer_norm:
            return _layer_norm(*args, **kwargs)
        if func is getattr(F, "rms_norm", None):
            return _rms_norm(*args, **kwargs)
        output = func(*args, **kwargs)
        if func in _ELEMENTWISE and args[0].requires_grad:
            return _Identity.apply(args[0], output.detach())
        return output


def attnlrp_relevance(
    model: nn.Module, x: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The relevance of every input value for each image's target class, and those scores.

    ``x`` (N, C, H, W) normalised inputs, ``targets`` (N,) class indices. Returns the
    relevance (N, C, H, W) float32 and the scores S^c (N,); ``model`` is left as it was.
    """
    leaf, logits = forward_under_rules(model, x)
    return relevance_of(leaf, logits, targets)


def forward_under_rules(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward of ``x`` under the rules: (the input leaf, the logits (N, classes))."""
    with torch.inference_mode(False), torch.enable_grad():
        leaf = x.detach().clone().requires_grad_()
        with AttnLrpRules():
            logits, _ = logits_of(model(leaf))
    return leaf, logits


def relevance_of(
    leaf: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """x ⊙ g at the input (N, C, H, W) for ``targets`` (N,), g the modified gradient of the
    scores S^c (N,) (also returned); the forward's graph is kept for the next targets."""
    rows = torch.arange(len(targets), device=logits.device)
    scores = logits[rows, targets]
    with torch.inference_mode(False), torch.enable_grad():
        (gradient,) = torch.autograd.grad(scores.sum(), leaf, retain_graph=True)
    return (leaf.detach() * gradient).float(), scores.detach().float()


class AttnLrp(PixelMethod):
    """The input's AttnLRP relevance, per colour channel (signed)."""

    name = "attnlrp"
    images_only = True  # not written nor tested for clips yet

    def _attribution(self, ctx: CamContext, targets: torch.Tensor) -> torch.Tensor:
        leaf, logits = ctx.cached("attnlrp", lambda: self._forward(ctx))
        relevance, _ = relevance_of(leaf, logits, targets)
        return relevance

    @staticmethod
    def _forward(ctx: CamContext) -> tuple[torch.Tensor, torch.Tensor]:
        with replaying(torch.arange(len(ctx.inputs), device=ctx.inputs.device)):
            return forward_under_rules(ctx.model, ctx.inputs)
