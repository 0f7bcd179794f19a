"""Hugging Face ``transformers`` image classifiers: ``-m hf:REPO_ID`` or ``-m hf:LOCAL_DIR``;
two-tower models (CLIP, SigLIP) too, explained against text prompts (hf_towers.py).

Loaded with ``AutoModelForImageClassification`` through the hub's own cache (downloading when
allowed); ``--weights none`` builds a seeded random model from the config without any network
access (the config must be local or cached). Preprocessing comes from the image-processor
config (``preprocessor_config.json``: mean, std, size, resample; a crop is ignored), class
names from the model config's ``id2label`` unless they are the placeholders ``LABEL_0``….

The model keeps its own module names (``vit.layers.11.layernorm_before``). Two hooks on the
top module adapt its calls: ``interpolate_pos_encoding=True`` where the forward takes it (so
any multiple of the patch size runs, not only the trained size), and the output object becomes
its ``logits``.
"""

from __future__ import annotations

import inspect
import json
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

from featviz.errors import RunError, first_line
from featviz.model.checkpoints import load_into, read_state_dict
from featviz.model.sources import HF_PREFIX, IMAGENET_MEAN, IMAGENET_STD, BuiltModel, hub, require
from featviz.model.sources.hf_towers import HfTowers, is_two_tower
from featviz.model.sources.meta import parameters_on_meta

if TYPE_CHECKING:
    from torch import nn

    from featviz.model.options import ModelRequest

# PIL's resampling numbers, as image-processor configs store them.
_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


class HuggingFaceSource:
    def build(self, request: ModelRequest, *, structure_only: bool) -> BuiltModel:
        transformers = require("transformers", "hf", request.spec)
        repo = request.spec.removeprefix(HF_PREFIX)
        local = Path(repo).is_dir()
        pretrained = not structure_only and request.checkpoint is None
        pretrained = pretrained and request.weights.lower() != "none"
        overrides = {} if request.num_classes is None else {"num_labels": request.num_classes}
        try:
            if pretrained and not local:
                config, model = hub.cached_first(
                    lambda cache_only: _pretrained(transformers, repo, overrides, cache_only),
                    (OSError, ValueError),
                )
            elif pretrained:
                config, model = _pretrained(transformers, repo, overrides, cache_only=True)
            else:
                config = transformers.AutoConfig.from_pretrained(
                    repo, local_files_only=True, **overrides
                )
                on_meta = structure_only or request.checkpoint is not None
                with parameters_on_meta() if on_meta else nullcontext():
                    model = _auto_class(transformers, config).from_config(config)
            processor = _processor_config(repo, local)
        except (OSError, ValueError, hub.HubUnavailable) as exc:
            raise _unavailable(repo, pretrained, exc) from exc
        if request.checkpoint is not None and not structure_only:
            state = read_state_dict(request.checkpoint)
            load_into(model, state, f"checkpoint '{request.checkpoint}'")
        towers = is_two_tower(config)
        if towers:  # explained against text prompts (featviz.tasks.prompts)
            model = HfTowers(model, repo, local)
        else:
            _adapt_calls(model)
        size = processor.get("size") or {}
        if isinstance(size, int):
            size = {"shortest_edge": size}
        image_size = config.vision_config.image_size if towers else config.image_size
        input_size = size.get("shortest_edge") or size.get("height") or image_size
        if structure_only:
            weights = "none (structure only)"
        elif request.checkpoint is not None:
            weights = str(request.checkpoint)
        else:
            weights = repo if pretrained else "none"
        return BuiltModel(
            module=model,
            name=request.spec,
            weights=weights,
            mean=tuple(processor.get("image_mean", IMAGENET_MEAN)),
            std=tuple(processor.get("image_std", IMAGENET_STD)),
            input_size=int(input_size),
            categories=None if towers else _categories(config),
            categories_from=f"id2label of {repo}",
            interpolation=_RESAMPLE.get(processor.get("resample"), "bilinear"),
            class_token=True,  # HF's image classifiers read the [CLS] token
        )


def _pretrained(
    transformers: Any, repo: str, overrides: dict[str, Any], cache_only: bool
) -> tuple[Any, nn.Module]:
    """The model's config and pretrained model, from the hub's cache alone or downloading."""
    config = transformers.AutoConfig.from_pretrained(repo, local_files_only=cache_only, **overrides)
    model = _auto_class(transformers, config).from_pretrained(
        repo, config=config, local_files_only=cache_only, ignore_mismatched_sizes=bool(overrides)
    )
    return config, model


def _auto_class(transformers: Any, config: Any) -> Any:
    """AutoModel for a two-tower model (CLIP, SigLIP: no classification head), else the
    image classifier's."""
    if is_two_tower(config):
        return transformers.AutoModel
    return transformers.AutoModelForImageClassification


def _processor_config(repo: str, local: bool) -> dict[str, Any]:
    """The image processor's settings, or {} when the repository has none."""
    if local:
        path = Path(repo) / "preprocessor_config.json"
        return json.loads(path.read_text()) if path.is_file() else {}
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(repo, "preprocessor_config.json")
    return json.loads(Path(cached).read_text()) if isinstance(cached, str) else {}


def _categories(config: Any) -> list[str] | None:
    labels = getattr(config, "id2label", None) or {}
    names = [labels[i] for i in sorted(labels)]
    if not names or all(name == f"LABEL_{i}" for i, name in enumerate(names)):
        return None
    return names


def _adapt_calls(model: nn.Module) -> None:
    if "interpolate_pos_encoding" in inspect.signature(model.forward).parameters:

        def any_size(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            return args, {**kwargs, "interpolate_pos_encoding": True}

        model.register_forward_pre_hook(any_size, with_kwargs=True)

    def logits(module: nn.Module, args: tuple, output: Any) -> Any:
        return getattr(output, "logits", output)

    model.register_forward_hook(logits)


def _unavailable(repo: str, pretrained: bool, exc: Exception) -> RunError:
    what = "the model" if pretrained else "its config (--weights none needs it locally)"
    reason = (
        str(exc)
        if isinstance(exc, hub.HubUnavailable)
        else f"{type(exc).__name__}: {first_line(exc)}"
    )
    return RunError(
        f"hf:{repo}: {what} is not cached and cannot be downloaded "
        f"({reason}; cache: {hub.cache_folder()})",
        hint="download it once where there is a network (HF_HOME moves the cache), pass a "
        "local folder as hf:DIR, or use --weights none once its config is cached",
    )
