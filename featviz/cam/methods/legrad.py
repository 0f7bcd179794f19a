"""LeGrad for vision transformers (``legrad``; Bousselham et al., 2024, "LeGrad: An
Explainability Method for Vision Transformers via Feature Formation Sensitivity").

For every block b, with z_b (N, T, D) the block's output tokens and A_b (N, heads, T, T) its
attention probabilities, s_b is the score the model would give if its head read z_b's average
token: everything after the last block (final norm, pooling,
classifier, a two-tower model's prompt scores; featviz.cam.suffix) runs on T copies of that
average, so whatever the head pools (the class token or the mean) is that token. Then

    E_b = mean over heads and queries of (∂s_b^c / ∂A_b)⁺, on the patch keys (prefix dropped)
    L   = mean_b E_b, laid on the patch grid.

Every block, as the paper averages them (its reference code for large CLIP models starts at the
second-to-last block instead; on a trained 3-block ViT all three localise best).

The gradients are not multiplied by the attention (unlike gradient-weighted rollout). Each
block's input is cut from the graph, so the one backward of Σ_b s_b^c gives every A_b the
gradient of its own block's score alone, what one backward per block would give. Cost: one
extra forward of the batch with the attention written out, the head on L·N token sets (L
blocks) and one backward. Where fx cannot trace the model (Hugging Face's) the head is the
whole network with the last block's output swapped: L extra forwards of the batch.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from featviz.cam.base import CamMethod, logits_match
from featviz.cam.context import CamContext
from featviz.cam.suffix import HookedForward, Resume, Split
from featviz.errors import UsageError
from featviz.layers.attention import AttentionCapture, attention_blocks
from featviz.layers.layouts import token_grid
from featviz.layers.taps import first_tensor
from featviz.tasks.base import replaying


def _no_attention() -> UsageError:
    return UsageError(
        "method 'legrad' needs a transformer's self-attention, and this model has none that "
        "featviz can read",
        hint="use --method gradcam",
    )


@dataclass
class _BlockScores:
    """One forward's attention of the chosen blocks, A_b (N, heads, T, T) each, and their
    scores s_b, (blocks, N, classes), still in the graph."""

    attentions: list[torch.Tensor]
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
        with torch.inference_mode(False), torch.enable_grad():
            grads = torch.autograd.grad(
                picked.sum(), blocks.attentions, retain_graph=True, allow_unused=True
            )
        patches = [
            torch.zeros_like(a[:, 0, 0]) if g is None else g.clamp(min=0).mean(dim=(1, 2))
            for a, g in zip(blocks.attentions, grads)
        ]
        relevance = torch.stack(patches).mean(dim=0)[:, ctx.token_prefix :].float()
        h, w = token_grid(relevance.shape[1], ctx.input_hw)
        return relevance.reshape(n, h, w)

    def _block_scores(self, ctx: CamContext) -> _BlockScores:
        model, x = ctx.model, ctx.inputs.detach()
        names = attention_blocks(model)
        if not names:
            raise _no_attention()
        outputs: dict[str, torch.Tensor] = {}
        with ExitStack() as stack, torch.inference_mode(False), torch.enable_grad():
            captures = []
            for name in names:
                block = model.get_submodule(name)
                captures.append(stack.enter_context(AttentionCapture(block)))
                stack.enter_context(_own_gradient(block, name, outputs))
            model(x)
        # Blocks the image's forward did not run (a two-tower model's text tower) are left out.
        ran = [i for i, name in enumerate(names) if name in outputs]
        names = [names[i] for i in ran]
        attentions = [captures[i].maps[-1] if captures[i].maps else None for i in ran]
        tokens = [outputs[name] for name in names]
        if not names:
            raise _no_attention()
        _check_global(attentions, tokens, len(x))
        resume = self._head(ctx, names[-1], tokens[-1].detach())
        # Every token the block's average: the head's pooling reads that average.
        pooled = torch.cat([z.mean(dim=1, keepdim=True).expand_as(z).contiguous() for z in tokens])
        rows = torch.arange(len(x), device=x.device).repeat(len(names))
        with torch.inference_mode(False), torch.enable_grad(), replaying(rows):
            scores = resume(rows, pooled).float().view(len(names), len(x), -1)
        return _BlockScores(attentions, scores)

    def _head(self, ctx: CamContext, block: str, last: torch.Tensor) -> Resume:
        """The layers after ``block`` as a function of its output: fx's suffix when it traces
        and reproduces the model's scores from the block's real output, else the whole network
        with the block's output swapped."""
        per_model = self._heads.setdefault(ctx.model, {})
        rows = torch.arange(len(last), device=last.device)
        if block not in per_model:
            per_model[block] = None
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


@contextmanager
def _own_gradient(block: nn.Module, name: str, outputs: dict[str, torch.Tensor]) -> Iterator[None]:
    """Within the block: its input cut from the graph (a fresh leaf, so gradients reaching its
    attention come from its own score only) and its output tokens kept in ``outputs``."""

    def cut(_module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if args and isinstance(args[0], torch.Tensor):
            return (args[0].detach().requires_grad_(), *args[1:]), kwargs
        key = next((k for k, v in kwargs.items() if isinstance(v, torch.Tensor)), None)
        if key is not None:
            kwargs = {**kwargs, key: kwargs[key].detach().requires_grad_()}
        return args, kwargs

    def keep(_module: nn.Module, _inputs: Any, output: Any) -> None:
        outputs[name] = first_tensor(output)

    handles = [
        block.register_forward_pre_hook(cut, with_kwargs=True),
        block.register_forward_hook(keep),
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _check_global(
    attentions: list[torch.Tensor | None], tokens: list[torch.Tensor | None], n: int
) -> None:
    """Every chosen block attends globally over the (N, T, D) tokens it returns."""
    for a, z in zip(attentions, tokens):
        if (
            a is None
            or z is None
            or a.ndim != 4
            or a.shape[0] != n
            or z.ndim != 3
            or z.shape[:2] != (n, a.shape[-1])
            or a.shape[-2] != a.shape[-1]
        ):
            raise UsageError(
                "method 'legrad' needs blocks with global self-attention over the (N, tokens, "
                "channels) tokens they return (ViT, DeiT, CLIP's image tower); this model's "
                "attention is windowed, changes size or runs sequence-first",
                hint="use --method gradcam",
            )
