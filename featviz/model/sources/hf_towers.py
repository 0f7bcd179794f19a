"""Hugging Face's two-tower models (CLIP, SigLIP and kin: a config with a ``text_config`` and a
``vision_config``), as featviz explains them against text prompts (featviz.tasks.prompts).

The model keeps its own module names (``model.vision_model.encoder.layers.11…``); the forward
is its ``get_image_features`` (at any multiple of the patch size where it interpolates its
position embeddings), ``encode_text`` its ``get_text_features`` on what the repository's own
tokenizer makes of the prompts. The tokenizer comes from the hub's cache (downloading when
allowed) or the local folder, once, when prompts are first encoded: a structure-only build
needs none.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

from torch import nn  # only imported once a model is built: the torch of its forward

from featviz.errors import RunError, first_line
from featviz.model.sources import hub

if TYPE_CHECKING:
    import torch


def is_two_tower(config: Any) -> bool:
    return hasattr(config, "text_config") and hasattr(config, "vision_config")


class HfTowers(nn.Module):
    """A Hugging Face two-tower ``model`` from ``repo`` (a hub id, or a folder when ``local``):
    ``forward`` (N, 3, H, W) → (N, D) image embeddings, ``encode_text`` → (P, D)."""

    def __init__(self, model: nn.Module, repo: str, local: bool) -> None:
        super().__init__()
        self.model = model
        self.repo, self.local = repo, local
        self._tokenizer: Any = None
        takes = inspect.signature(model.get_image_features).parameters
        self._any_size = (
            {"interpolate_pos_encoding": True} if "interpolate_pos_encoding" in takes else {}
        )
        # SigLIP was trained on prompts padded to the full length; CLIP on the longest's.
        self._padding = "max_length" if "siglip" in model.config.model_type else True

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return _embeddings(self.model.get_image_features(pixel_values=images, **self._any_size))

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """(P, D) text embeddings of ``texts``, on the model's device."""
        if self._tokenizer is None:
            self._tokenizer = _tokenizer(self.repo, self.local)
        device = self.model.logit_scale.device
        tokens = self._tokenizer(texts, padding=self._padding, truncation=True, return_tensors="pt")
        return _embeddings(self.model.get_text_features(**tokens.to(device)))

    @property
    def logit_scale(self) -> float:
        """The multiplier of the cosine similarity (the model stores its logarithm)."""
        return float(self.model.logit_scale.exp())

    @property
    def logit_bias(self) -> float:
        bias = getattr(self.model, "logit_bias", None)
        return 0.0 if bias is None else float(bias)


def _embeddings(output: Any) -> torch.Tensor:
    """The projected embeddings: transformers 5 wraps them in an output's ``pooler_output``."""
    return getattr(output, "pooler_output", output)


def _tokenizer(repo: str, local: bool) -> Any:
    import transformers

    def load(cache_only: bool) -> Any:
        return transformers.AutoTokenizer.from_pretrained(repo, local_files_only=cache_only)

    try:
        return load(True) if local else hub.cached_first(load, (OSError, ValueError))
    except (OSError, ValueError, hub.HubUnavailable) as exc:
        reason = str(exc) if isinstance(exc, hub.HubUnavailable) else first_line(exc)
        raise RunError(
            f"hf:{repo}: its tokenizer is not cached and cannot be downloaded ({reason}; "
            f"cache: {hub.cache_folder()})",
            hint="download the repository once where there is a network (HF_HOME moves the "
            "cache), or pass a local folder with its tokenizer files as hf:DIR",
        ) from exc
