"""The rules of layer-wise relevance propagation (LRP) for one layer, as pure functions.

Notation: a layer computes z = f(x; w, b) (a convolution or a Linear; x (N, …) its input, z
its output as the forward computed it), R_out (shaped like z) the relevance of its outputs, and
each rule's ``relevance(module, x, z, R_out)`` returns R_in (shaped like x), the relevance of
its inputs. Every rule has the form R_in = x ⊙ ∂f/∂xᵀ · (R_out / z′) for some
modified z′, computed with one ``torch.autograd.grad`` through the modified layer: no rule needs
to know whether f is a convolution or a Linear. z′ is kept away from zero by ``stabilise``.

- ``Epsilon`` (Bach et al., 2015): z′ = stabilise(z, ε). With ε → 0 it is LRP-0; Σ R_in =
  Σ R_out·(z − b)/z′, so only the bias (and ε) keeps a share.
- ``Gamma`` (Montavon et al., 2019; generalised to inputs of either sign by Andéol et al.,
  2021): positive contributions are favoured by w⁺ = w + γ·max(w, 0), w⁻ = w + γ·min(w, 0).
  Where z > 0: z′ = f(x⁺; w⁺, b + γ·b⁺) + f(x⁻; w⁻, 0) and R_out is spread over those two
  terms; where z < 0 the roles of w⁺ and w⁻ swap (bias b + γ·b⁻). x⁺ = max(x, 0), x⁻ = min(x, 0).
- ``ZBox`` (z^B, Montavon et al., 2017), for the layer that reads the pixels, whose values lie
  in [l, h] channel by channel: z′ = f(x; w) − f(l; max(w, 0)) − f(h; min(w, 0)) and
  R_in = x ⊙ c − l ⊙ c⁺ − h ⊙ c⁻, c (c⁺, c⁻) the back-projections through w (max(w, 0),
  min(w, 0)). Conservative whatever the bias.
- ``Proportional`` (average pooling): LRP-0 on a layer without parameters.
- ``Passed`` (activations, batch norms): R_in = R_out.

These are the rules of zennit's ``EpsilonGammaBox`` composite, so featviz's maps can be checked
against it; zennit is never imported here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call


def stabilise(z: torch.Tensor, epsilon: float) -> torch.Tensor:
    """z moved ε away from zero in its own direction (a zero counts as positive)."""
    return z + epsilon * torch.where(z >= 0, 1.0, -1.0).to(z.dtype)


def _run(module: nn.Module, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
    """The module's own forward on ``x`` with ``weight`` and ``bias`` in place of its own."""
    params = {"weight": weight}
    if getattr(module, "bias", None) is not None:
        params["bias"] = torch.zeros_like(module.bias) if bias is None else bias
    return functional_call(module, params, (x,))


def _back(outputs: list[torch.Tensor], inputs: list[torch.Tensor], scaled: list[torch.Tensor]):
    """Σ_k ∂outputs[k]/∂inputs ᵀ · scaled[k], one tensor per input, in one backward."""
    return torch.autograd.grad(outputs, inputs, grad_outputs=scaled)


@dataclass(frozen=True)
class Epsilon:
    epsilon: float = 1e-6

    def relevance(
        self, module: nn.Module, x: torch.Tensor, z: torch.Tensor, r_out: torch.Tensor
    ) -> torch.Tensor:
        with torch.enable_grad():
            x = x.detach().requires_grad_()
            (c,) = _back([module(x)], [x], [r_out / stabilise(z, self.epsilon)])
        return x.detach() * c


@dataclass(frozen=True)
class Gamma:
    gamma: float = 0.25
    stabiliser: float = 1e-6

    def relevance(
        self, module: nn.Module, x: torch.Tensor, z: torch.Tensor, r_out: torch.Tensor
    ) -> torch.Tensor:
        w, b = module.weight, module.bias
        favour_positive = w + self.gamma * w.clamp(min=0)
        favour_negative = w + self.gamma * w.clamp(max=0)
        bias_up = None if b is None else b + self.gamma * b.clamp(min=0)
        bias_down = None if b is None else b + self.gamma * b.clamp(max=0)
        with torch.enable_grad():
            x = x.detach()
            # Where z > 0 (z < 0): the contributions of the same sign, boosted by γ.
            # (input, up's weight and bias, down's weight and bias) for x⁺ and, if any, x⁻.
            parts = [(x.clamp(min=0), favour_positive, bias_up, favour_negative, bias_down)]
            if (x < 0).any():  # after a ReLU there is none: two convolutions fewer
                parts.append((x.clamp(max=0), favour_negative, None, favour_positive, None))
            inputs = [part[0].requires_grad_() for part in parts]
            up = [_run(module, x_, w_up, b_up) for x_, w_up, b_up, _, _ in parts]
            down = [_run(module, x_, w_down, b_down) for x_, _, _, w_down, b_down in parts]
            share_up = (z > 0) * r_out / stabilise(sum(z.detach() for z in up), self.stabiliser)
            share_down = (z < 0) * r_out / stabilise(sum(z.detach() for z in down), self.stabiliser)
            back = _back(up + down, inputs, [share_up] * len(up) + [share_down] * len(down))
        return sum(x_.detach() * c for x_, c in zip(inputs, back))


@dataclass(frozen=True)
class ZBox:
    """``low``/``high``: the lowest and highest value of each input channel, (C,) for every
    image or (N, C) image by image."""

    low: torch.Tensor
    high: torch.Tensor
    stabiliser: float = 1e-6

    def relevance(
        self, module: nn.Module, x: torch.Tensor, z: torch.Tensor, r_out: torch.Tensor
    ) -> torch.Tensor:
        w = module.weight
        with torch.enable_grad():
            x = x.detach().requires_grad_()
            low = _box(self.low, x).requires_grad_()
            high = _box(self.high, x).requires_grad_()
            # The biases cancel out of z′: each term would carry the same b.
            terms = [
                _run(module, x, w, None),
                _run(module, low, w.clamp(min=0), None),
                _run(module, high, w.clamp(max=0), None),
            ]
            z = terms[0] - terms[1] - terms[2]
            share = r_out / stabilise(z.detach(), self.stabiliser)
            c, c_pos, c_neg = _back(terms, [x, low, high], [share, share, share])
        return x.detach() * c - low.detach() * c_pos - high.detach() * c_neg


def _box(bound: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A (C,) or (N, C) bound as a tensor shaped like ``x`` (N, C, …)."""
    bound = torch.as_tensor(bound).to(x)
    if bound.ndim == 1:
        bound = bound[None]
    return bound.reshape(*bound.shape, *(1,) * (x.ndim - 2)).expand_as(x)


@dataclass(frozen=True)
class Proportional:
    stabiliser: float = 1e-6

    def relevance(
        self, module: nn.Module, x: torch.Tensor, z: torch.Tensor, r_out: torch.Tensor
    ) -> torch.Tensor:
        return Epsilon(self.stabiliser).relevance(module, x, z, r_out)


@dataclass(frozen=True)
class Passed:
    def relevance(
        self, module: nn.Module, x: torch.Tensor, z: torch.Tensor, r_out: torch.Tensor
    ) -> torch.Tensor:
        return r_out


Rule = Epsilon | Gamma | ZBox | Proportional | Passed
