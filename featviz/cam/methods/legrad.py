"""LeGrad for vision transformers (``legrad``; Bousselham et al., 2024, "LeGrad: An
Explainability Method for Vision Transformers via Feature Formation Sensitivity").

For every block b, with z_b (N, T, D) the block's output tokens and A_b (N, heads, T, T) its
attention probabilities, s_b is the score the model would give if its head read z_b's average
token: everything after the last block (final norm, pooling, classifier, a two-tower model's
prompt scores; featviz.cam.suffix) runs on T copies of that average, so whatever the head pools
(the class token or the mean) is that token. Then

    E_b = mean over heads and queries of (∂s_b^c / ∂A_b)⁺, on the patch keys (prefix dropped)
    L   = mean_b E_b, laid on the patch grid.

Every block, as the paper averages them (its reference code for large CLIP models starts at the
second-to-last block instead; on a trained 3-block ViT all three localise best). The gradients
are not multiplied by the attention (unlike gradient-weighted rollout).

It reads the batch's one forward (the attention matrices and the blocks' outputs, in the graph)
and adds the head on L·N token sets (L blocks), one backward through the head and one through
each block, from its mean token to its attention: a full backward's worth in all. Where fx
cannot trace the model (Hugging Face's) the head is the whole network with the last block's
output swapped: L extra forwards of the batch.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
from torch import nn

from featviz.cam.base import CamMethod, logits_match
from featviz.cam.context import CamContext
from featviz.cam.suffix import HookedForward, Resume, Split
from featviz.errors import UsageError
from featviz.layers.layouts import token_grid
from featviz.tasks.base import replaying


@dataclass
class _BlockScores:
    """What the batch's forward gives for every block b: its attention A_b (N, heads, T, T)
    and mean token (N, D), both in the graph; that mean as a leaf, and the head's scores s_b
    on it, (L, N, classes)."""

    attentions: list[torch.Tensor]
    means: list[torch.Tensor]
    leaves: list[torch.Tensor]
    scores: torch.Tensor


class LeGrad(CamMethod):
    name = "legrad"
    # A video transformer's tokens span time as well as the patch grid.
    images_only = True

    def __init__(self, *, batch_size: int = 32) -> None:
        super().__init__(batch_size=batch_size)
        # The head after the last block, per model and block: fx's suffix, or None (the whole
        # network with the block's output swapped). Weak keys: a model can still be freed.
        self._heads: weakref.WeakKeyDictionary[nn.Module, dict[str, Split | None]] = (
            weakref.WeakKeyDictionary()
        )

    def _map(self, ctx: CamContext, layer: str, targets: torch.Tensor) -> torch.Tensor:
        blocks = ctx.cached("legrad", lambda: self._block_scores(ctx))
        n = len(targets)
        picked = blocks.scores[:, torch.arange(n, device=targets.device), targets]
        patches = []
        with torch.inference_mode(False), torch.enable_grad():
            # ∂s_b/∂(mean token of block b) through the head, then on to A_b through block b
            # alone: from s_b itself the backward would also walk the blocks after b.
            through_head = torch.autograd.grad(picked.sum(), blocks.leaves, retain_graph=True)
            for mean, grad_mean, attention in zip(blocks.means, through_head, blocks.attentions):
                (grad,) = torch.autograd.grad(mean, attention, grad_mean, retain_graph=True)
                patches.append(grad.clamp(min=0).mean(dim=(1, 2)))
        relevance = torch.stack(patches).mean(dim=0)[:, ctx.token_prefix :].float()
        h, w = token_grid(relevance.shape[1], ctx.input_hw)
        return relevance.reshape(n, h, w)

    def _block_scores(self, ctx: CamContext) -> _BlockScores:
        n = len(ctx.inputs)
        blocks = [(name, z, ctx.attentions[i]) for name, z, i in ctx.blocks if i >= 0]
        if not blocks:
            raise UsageError(
                "method 'legrad' needs a transformer's self-attention, and this model has none "
                "that featviz can read",
                hint="use --method gradcam",
            )
        for _, z, a in blocks:
            _check_global(a, z, n)
        if not all(z.requires_grad and a.requires_grad for _, z, a in blocks):
            raise ValueError("this context was built with gradients=False")
        tokens = [z for _, z, _ in blocks]
        resume = self._head(ctx, blocks[-1][0], tokens[-1].detach())
        with torch.inference_mode(False), torch.enable_grad():
            means = [z.mean(dim=1) for z in tokens]
            leaves = [mean.detach().requires_grad_() for mean in means]
            # Every token the block's average: the head's pooling reads that average.
            pooled = torch.cat([m[:, None].expand_as(z) for m, z in zip(leaves, tokens)])
            rows = torch.arange(n, device=pooled.device).repeat(len(blocks))
            with replaying(rows):
                scores = resume(rows, pooled.contiguous()).float().view(len(blocks), n, -1)
        return _BlockScores([a for _, _, a in blocks], means, leaves, scores)

    def _head(self, ctx: CamContext, block: str, last: torch.Tensor) -> Resume:
        """The layers after ``block`` as a function of its output: fx's suffix when it traces
        and reproduces the model's scores from the block's real output, else the whole network
        with the block's output swapped."""
        per_model = self._heads.setdefault(ctx.model, {})
        if block not in per_model:
            per_model[block] = None
            rows = torch.arange(len(last), device=last.device)
            try:
                split = Split(ctx.model, block)
                with torch.no_grad(), replaying(rows):
                    again = split.bind(ctx.inputs.detach())(rows, last)
                if logits_match(again, ctx.logits):
                    per_model[block] = split
            except Exception:  # fx raises many kinds on untraceable code: use the fallback
                pass
        split = per_model[block]
        if split is None:
            return HookedForward(ctx.model, ctx.inputs, block, ctx.calls)
        return split.bind(ctx.inputs.detach())


def _check_global(attention: torch.Tensor, tokens: torch.Tensor | None, n: int) -> None:
    """The block attends globally over the (N, T, D) tokens it returns."""
    if (
        tokens is None
        or attention.ndim != 4
        or attention.shape[0] != n
        or attention.shape[-2] != attention.shape[-1]
        or tokens.ndim != 3
        or tokens.shape[:2] != (n, attention.shape[-1])
    ):
        raise UsageError(
            "method 'legrad' needs blocks with global self-attention over the (N, tokens, "
            "channels) tokens they return (ViT, DeiT, CLIP's image tower); this model's "
            "attention is windowed, changes size or runs sequence-first",
            hint="use --method gradcam",
        )
