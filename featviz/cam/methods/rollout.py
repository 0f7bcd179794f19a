"""Explanations from a vision transformer's attention rather than from one layer's output.

Notation: A_b (N, heads, T, T) the attention probabilities of block b = 1…L (rows: queries,
columns: keys), T = P prefix tokens (class first) + h·w patch tokens; ∇A_b = ∂S^c/∂A_b.

- ``rollout`` (Abnar & Zuidema, ACL 2020): Â_b = 0.5·mean_heads(A_b) + 0.5·I, rows renormalised
  to sum to 1; R = Â_L ⋯ Â_1. Class-agnostic.
- ``gradrollout`` (Chefer, Gur & Wolf, ICCV 2021, "Generic Attention-model Explainability…"):
  Ā_b = mean_heads((∇A_b ⊙ A_b)⁺); R = I, then R ← R + Ā_b·R for b = 1…L. Class-specific.

The map is the class token's row of R over the patch tokens (other prefix tokens, distillation
and registers, dropped), laid on the patch grid. A model whose head averages the patch tokens
(no class token, or timm's ``…_gap`` models) reads every patch equally, so the mean of the
patch tokens' rows is taken instead.
"""

from __future__ import annotations

import torch

from featviz.cam.base import CamMethod
from featviz.cam.context import CamContext
from featviz.errors import UsageError
from featviz.layers.layouts import token_grid


class _Rollout(CamMethod):
    def _attention(self, ctx: CamContext) -> list[torch.Tensor]:
        n = ctx.inputs.shape[0]
        maps = [a.detach().float() for a in ctx.attentions]
        if not maps:
            raise UsageError(
                f"method '{self.name}' needs a transformer's self-attention, and this model has "
                "none that featviz can read",
                hint="use --method gradcam",
            )
        tokens = maps[0].shape[-1]
        if any(a.ndim != 4 or a.shape[0] != n or a.shape[-1] != tokens for a in maps):
            raise UsageError(
                f"method '{self.name}' needs global self-attention over all tokens in every block "
                "(ViT, DeiT); this model's attention is windowed or changes size",
                hint="use --method gradcam",
            )
        return maps

    def _read(self, ctx: CamContext, rollout: torch.Tensor) -> torch.Tensor:
        """(N, T, T) rollout → (N, h, w) map over the patch tokens."""
        prefix = ctx.token_prefix
        rows = rollout[:, 0] if ctx.class_token and prefix else rollout[:, prefix:].mean(dim=1)
        patches = rows[:, prefix:]
        h, w = token_grid(patches.shape[1], ctx.input_hw)
        return patches.reshape(-1, h, w)


class AttentionRollout(_Rollout):
    name = "rollout"

    def _map(self, ctx: CamContext, layer: str, targets: torch.Tensor) -> torch.Tensor:
        return ctx.cached("rollout", lambda: self._rolled(ctx))

    def _rolled(self, ctx: CamContext) -> torch.Tensor:
        maps = self._attention(ctx)
        eye = torch.eye(maps[0].shape[-1], device=maps[0].device)
        rollout = eye.expand(maps[0].shape[0], -1, -1)
        for attention in maps:
            mixed = 0.5 * attention.mean(dim=1) + 0.5 * eye
            mixed = mixed / mixed.sum(dim=-1, keepdim=True)
            rollout = mixed @ rollout
        return self._read(ctx, rollout)


class GradientRollout(_Rollout):
    name = "gradrollout"

    def _map(self, ctx: CamContext, layer: str, targets: torch.Tensor) -> torch.Tensor:
        maps = self._attention(ctx)
        grads = ctx.attention_gradients(targets)
        eye = torch.eye(maps[0].shape[-1], device=maps[0].device)
        rollout = eye.expand(maps[0].shape[0], -1, -1)
        for attention, grad in zip(maps, grads):
            relevance = (grad.float() * attention).clamp(min=0).mean(dim=1)
            rollout = rollout + relevance @ rollout
        return self._read(ctx, rollout)
