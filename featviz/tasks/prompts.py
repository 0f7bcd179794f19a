"""Text prompts as targets: a CLIP-style model's image embedding scored against prompts.

A two-tower model (``open_clip/NAME``, a Hugging Face CLIP or SigLIP, or a user's module) is
loaded as its image tower: its forward returns (N, D) image embeddings. What makes it take
prompts is a method ``encode_text(texts: list[str]) → (P, D)`` text embeddings (on the
module's device) and two numbers, ``logit_scale`` (the multiplier of the cosine similarity,
already exponentiated) and ``logit_bias`` (SigLIP's; 0 for CLIP). The prompts' embeddings are
computed once per run, and a root hook turns every forward's image embeddings into

    score[n, p] = logit_scale · cos(image_n, prompt_p) + logit_bias

— the logits of the model's zero-shot classifier — so every CAM method explains one prompt
as it would a class. ``-t "text:a photo of a cat"`` asks for a prompt's map; what is shown
beside it is the cosine similarity itself. ``--prompts FILE`` (one prompt a line) makes the
model a zero-shot classifier over the file's prompts: its top-k are explained and shown with
their probabilities, the softmax of the scores over the prompts.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from featviz.errors import UsageError
from featviz.tasks.base import Outcome, Task

if TYPE_CHECKING:
    import torch

TEXT_PREFIX = "text:"


def takes_prompts(module: Any) -> bool:
    """Whether ``module`` is a two-tower model's image tower, with ``encode_text``."""
    return callable(getattr(module, "encode_text", None))


class PromptTask(Task):
    """(N, D) image embeddings → (N, P) scores against ``texts`` (P, D) embeddings.

    ``classify``: what ranks the prompts and is shown beside them is the softmax of the scores
    over the prompts (a zero-shot classifier); otherwise the cosine similarity."""

    name = "prompts"

    def __init__(self, texts: torch.Tensor, scale: float, bias: float, classify: bool) -> None:
        super().__init__()
        self.texts = texts / texts.norm(dim=1, keepdim=True)
        self.scale, self.bias, self.classify = scale, bias, classify
        self.shown_as = "probability" if classify else "cosine similarity"

    def __call__(self, module: Any, inputs: Any, output: Any) -> torch.Tensor:
        if getattr(output, "ndim", None) != 2 or output.shape[1] != self.texts.shape[1]:
            got = list(output.shape) if hasattr(output, "shape") else type(output).__name__
            raise UsageError(
                f"the image tower returned {got}: text prompts need (N, "
                f"{self.texts.shape[1]}) embeddings, the size of the text tower's"
            )
        images = output / output.norm(dim=1, keepdim=True)
        cosine = images @ self.texts.to(images.dtype).T
        scores = cosine * self.scale + self.bias
        shown = scores.softmax(dim=1) if self.classify else cosine
        self.latest = Outcome(shown=shown.detach().float())
        return scores


def read_prompts(path: Path) -> list[str]:
    """The prompts of a ``--prompts`` file: one a line, blank lines and repeats left out."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(
            f"--prompts {path}: cannot read it ({type(exc).__name__})",
            hint="give a UTF-8 text file with one prompt a line",
        ) from None
    prompts = list(dict.fromkeys(line.strip() for line in text.splitlines() if line.strip()))
    if len(prompts) < 2:
        raise UsageError(
            f"--prompts {path}: {len(prompts)} prompt(s); a zero-shot classifier needs two or more",
            hint='one prompt a line; for one prompt, use -t "text:PROMPT"',
        )
    return prompts


def with_prompts(loaded: Any, prompts: list[str], *, classify: bool) -> Any:
    """``loaded`` (a two-tower model's image tower) scoring its images against ``prompts``: a
    shallow copy of its root module with the task's hook (the model itself, which the warm
    worker may keep, is left as it was; the layers are the same modules), one target per
    prompt, named by it."""
    import copy
    from collections import OrderedDict
    from dataclasses import replace

    import torch

    module = loaded.module
    with torch.no_grad(), loaded.in_use():
        texts = module.encode_text(prompts)
    task = PromptTask(texts.detach().float(), float(module.logit_scale), float(module.logit_bias),
                      classify)  # fmt: skip
    root = copy.copy(module)
    root._forward_hooks = OrderedDict(module._forward_hooks)
    root._forward_hooks_with_kwargs = OrderedDict(module._forward_hooks_with_kwargs)
    root._forward_hooks_always_called = OrderedDict(module._forward_hooks_always_called)
    if loaded.owned:  # a caller's module gets the hook for the length of the work (in_use)
        root.register_forward_hook(task)
    trace = replace(loaded.trace, num_classes=len(prompts), task=None)
    return replace(loaded, module=root, trace=trace, categories=list(prompts), task=task)
