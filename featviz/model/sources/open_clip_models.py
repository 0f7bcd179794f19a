"""OpenCLIP's two-tower models by name: ``-m open_clip/ViT-B-32`` (CLIP, SigLIP, CoCa…).

What featviz explains is the image tower, scored against text prompts (featviz.tasks.prompts):
the module's forward is ``visual`` (images → (N, D) embeddings, the layers ``visual.…``), and
the text tower beside it (``text.…``) encodes the prompts. ``--weights`` is one of the
model's pretrained tags (``featviz models --source open_clip``; DEFAULT: the first listed),
loaded through open_clip's own cache (the Hugging Face hub's), downloading when allowed;
``--weights none`` builds a seeded random model without touching the network. The tokenizer is
open_clip's: CLIP's ships with the package, others (SigLIP's) come from the hub's cache.
Preprocessing is the image tower's own ``preprocess_cfg`` (mean, std, size, interpolation).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from torch import nn  # only imported once a model is built: the torch of its forward

from featviz.errors import RunError, UsageError, closest
from featviz.model.checkpoints import load_into, read_state_dict
from featviz.model.sources import OPEN_CLIP_PREFIX, BuiltModel, hub, require
from featviz.model.sources.meta import parameters_on_meta

if TYPE_CHECKING:
    import torch

    from featviz.model.options import ModelRequest

_OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
_OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def open_clip_models(name_filter: str | None) -> list[tuple[str, list[str]]]:
    """(``open_clip/NAME``, its pretrained tags) for every model containing the filter."""
    open_clip = require("open_clip", "clip", "open_clip/…")
    return [
        (f"{OPEN_CLIP_PREFIX}{name}", list(open_clip.list_pretrained_tags_by_model(name)))
        for name in open_clip.list_models()
        if not name_filter or name_filter.lower() in name.lower()
    ]


class OpenClipSource:
    def build(self, request: ModelRequest, *, structure_only: bool) -> BuiltModel:
        open_clip = require("open_clip", "clip", request.spec)
        name = request.spec.removeprefix(OPEN_CLIP_PREFIX)
        if name not in open_clip.list_models():
            near = closest(name, open_clip.list_models())
            raise UsageError(
                f"unknown open_clip model '{name}'",
                hint=(f"{near}; " if near else "")
                + "list them with `featviz models --source open_clip FILTER`",
            )
        tag = _tag(open_clip, name, request, structure_only)
        if structure_only or request.checkpoint is not None:
            with parameters_on_meta(), _quiet():  # open_clip moves it to its device: meta
                model = open_clip.create_model(name, pretrained=None, device="meta")
            if request.checkpoint is not None and not structure_only:
                load_into(
                    model, read_state_dict(request.checkpoint), f"checkpoint '{request.checkpoint}'"
                )
        elif tag is not None:
            model = _pretrained(open_clip, name, tag)
        else:
            with _quiet():
                model = open_clip.create_model(name, pretrained=None)
        visual = model.visual
        config = getattr(visual, "preprocess_cfg", None) or {}
        size = config.get("size") or getattr(visual, "image_size", 224)
        if structure_only:
            weights = "none (structure only)"
        elif request.checkpoint is not None:
            weights = str(request.checkpoint)
        else:
            weights = tag or "none"
        return BuiltModel(
            module=OpenClipTowers(model, name),
            name=request.spec,
            weights=weights,
            mean=tuple(config.get("mean", _OPENAI_MEAN)),
            std=tuple(config.get("std", _OPENAI_STD)),
            input_size=int(size[0] if isinstance(size, (tuple, list)) else size),
            categories=None,
            categories_from=None,
            interpolation=config.get("interpolation") or "bicubic",
            class_token=getattr(visual, "pool_type", "tok") == "tok",
        )


def _tag(open_clip: Any, name: str, request: ModelRequest, structure_only: bool) -> str | None:
    """The pretrained tag to load, or None: random weights (or a checkpoint's)."""
    if structure_only or request.checkpoint is not None or request.weights.lower() == "none":
        return None
    tags = list(open_clip.list_pretrained_tags_by_model(name))
    if request.weights.upper() == "DEFAULT" and tags:
        return tags[0]
    if request.weights not in tags:
        raise UsageError(
            f"open_clip model '{name}' has no pretrained tag '{request.weights}'",
            hint=f"choose one of {', '.join(tags) or '(none)'}, or --weights none",
        )
    return request.weights


def _pretrained(open_clip: Any, name: str, tag: str) -> nn.Module:
    """The pretrained model from open_clip's cache (the hub's), downloaded into it when not
    there and the hub answers; a RunError in seconds otherwise (hub.py)."""

    def create(cache_only: bool) -> nn.Module:
        with hub.cache_only(cache_only):
            return open_clip.create_model(name, pretrained=tag)

    try:
        return hub.cached_first(create)
    except hub.HubUnavailable as exc:
        raise RunError(
            f"pretrained weights '{tag}' of open_clip/{name} are not cached and cannot be "
            f"downloaded ({exc}; cache: {hub.cache_folder()})",
            hint="download them once where there is a network (HF_HOME moves the cache), or "
            "use --weights none for random initialisation, or --checkpoint FILE",
        ) from exc


@contextmanager
def _quiet() -> Iterator[None]:
    """Without open_clip's warning that no pretrained weights were loaded: asked for."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


class OpenClipTowers(nn.Module):
    """An open_clip model as featviz explains it: ``forward`` is the image tower (``visual``:
    (N, 3, H, W) → (N, D) embeddings), ``encode_text`` the text tower's (``text``: the model
    without its image tower)."""

    def __init__(self, model: nn.Module, name: str) -> None:
        super().__init__()
        self.visual = model.visual
        del model.visual  # the text tower keeps the rest: embeddings, transformer, scale
        self.text = model
        self.model_name = name
        self._tokenizer: Any = None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.visual(images)

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """(P, D) text embeddings of ``texts``, on the model's device."""
        if self._tokenizer is None:
            self._tokenizer = _tokenizer(self.model_name)
        tokens = self._tokenizer(texts).to(self.text.logit_scale.device)
        return self.text.encode_text(tokens)

    @property
    def logit_scale(self) -> float:
        """The multiplier of the cosine similarity (the model stores its logarithm)."""
        return float(self.text.logit_scale.exp())

    @property
    def logit_bias(self) -> float:
        bias = getattr(self.text, "logit_bias", None)
        return 0.0 if bias is None else float(bias)


def _tokenizer(name: str) -> Any:
    """open_clip's tokenizer of ``name``: shipped for CLIP; from the hub's cache otherwise."""
    import open_clip

    try:
        return hub.cached_first(
            lambda cache_only: _cached_tokenizer(open_clip, name, cache_only),
            (OSError, ValueError),
        )
    except hub.HubUnavailable as exc:
        raise RunError(
            f"the tokenizer of open_clip/{name} is not cached and cannot be downloaded "
            f"({exc}; cache: {hub.cache_folder()})",
            hint="download it once where there is a network (HF_HOME moves the cache)",
        ) from exc


def _cached_tokenizer(open_clip: Any, name: str, cache_only: bool) -> Any:
    with hub.cache_only(cache_only):
        return open_clip.get_tokenizer(name)
