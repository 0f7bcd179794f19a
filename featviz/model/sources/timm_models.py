"""timm's models by name: ``-m timm/NAME`` or ``-m timm/NAME.TAG`` for a pretrained tag.

Pretrained weights come through timm's own loading (the Hugging Face hub cache, downloading
when allowed); ``--weights none`` builds a seeded random model without touching the network.
Preprocessing is the weights' own ``pretrained_cfg`` (mean, std, input size, interpolation;
its crop is ignored: featviz never crops). Class names: ImageNet's for the ImageNet subsets timm
knows (1k, 12k, 22k), none otherwise.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from featviz.errors import RunError, UsageError, closest
from featviz.model.checkpoints import load_into, read_state_dict
from featviz.model.sources import TIMM_PREFIX, BuiltModel, hub, require
from featviz.model.sources.meta import parameters_on_meta

if TYPE_CHECKING:
    from torch import nn

    from featviz.model.options import ModelRequest


def timm_models(name_filter: str | None) -> list[tuple[str, list[str]]]:
    """(architecture, its pretrained tags) for every timm architecture containing the filter."""
    timm = require("timm", "timm", "timm/…")
    tags: dict[str, list[str]] = {}
    for full in timm.list_pretrained():
        name, _, tag = full.partition(".")
        tags.setdefault(name, []).append(tag)
    names = [
        name
        for name in timm.list_models()
        if not name_filter or name_filter.lower() in name.lower()
    ]
    return [(f"{TIMM_PREFIX}{name}", tags.get(name, [])) for name in names]


class TimmSource:
    def build(self, request: ModelRequest, *, structure_only: bool) -> BuiltModel:
        timm = require("timm", "timm", request.spec)
        full = request.spec.removeprefix(TIMM_PREFIX)
        name, _, tag = full.partition(".")
        if not timm.is_model(name):
            near = closest(name, timm.list_models())
            raise UsageError(
                f"unknown timm model '{name}'",
                hint=(f"{near}; " if near else "")
                + "list them with `featviz models --source timm FILTER`",
            )
        kwargs: dict[str, Any] = {}
        if request.num_classes is not None:
            kwargs["num_classes"] = request.num_classes
        pretrained = not structure_only and request.checkpoint is None
        pretrained = pretrained and request.weights.lower() != "none"
        if pretrained and request.weights.upper() != "DEFAULT":
            tag = request.weights
        if tag and f"{name}.{tag}" not in timm.list_pretrained(f"{name}.*"):
            known = [t.partition(".")[2] for t in timm.list_pretrained(f"{name}.*")]
            raise UsageError(
                f"timm model '{name}' has no pretrained tag '{tag}'",
                hint=f"choose one of {', '.join(known) or '(none)'}, or --weights none",
            )
        architecture = f"{name}.{tag}" if tag else name
        if structure_only or request.checkpoint is not None:
            with parameters_on_meta():
                model = timm.create_model(architecture, pretrained=False, **kwargs)
            if request.checkpoint is not None and not structure_only:
                state = read_state_dict(request.checkpoint)
                load_into(model, state, f"checkpoint '{request.checkpoint}'")
        elif pretrained:
            model = _pretrained(timm, architecture, kwargs)
        else:
            model = timm.create_model(architecture, pretrained=False, **kwargs)
        config = model.pretrained_cfg
        categories = _categories(timm, model)
        if structure_only:
            weights = "none (structure only)"
        elif request.checkpoint is not None:
            weights = str(request.checkpoint)
        else:
            weights = (config.get("tag") or "default") if pretrained else "none"
        return BuiltModel(
            module=model,
            name=request.spec,
            weights=weights,
            mean=tuple(config.get("mean", (0.485, 0.456, 0.406))),
            std=tuple(config.get("std", (0.229, 0.224, 0.225))),
            input_size=int(config.get("input_size", (3, 224, 224))[1]),
            categories=categories,
            categories_from=f"the {architecture} weights",
            interpolation=config.get("interpolation") or "bilinear",
            class_token=_reads_class_token(model),
        )


def _pretrained(timm: Any, architecture: str, kwargs: dict[str, Any]) -> nn.Module:
    """The pretrained model from timm's cache (the Hugging Face hub's), downloaded into it when
    not there and the hub answers; a RunError in seconds otherwise (hub.py)."""

    def create(cache_only: bool) -> nn.Module:
        with hub.cache_only(cache_only):
            return timm.create_model(architecture, pretrained=True, **kwargs)

    try:
        return hub.cached_first(create)  # hub, network and file errors come in many types
    except hub.HubUnavailable as exc:
        raise RunError(
            f"pretrained weights of timm/{architecture} are not cached and cannot be "
            f"downloaded ({exc}; cache: {hub.cache_folder()})",
            hint="download them once where there is a network (HF_HOME moves the cache), or "
            "use --weights none for random initialisation, or --checkpoint FILE",
        ) from exc


def _reads_class_token(model: nn.Module) -> bool | None:
    """timm's transformers say how their head pools: ``global_pool`` "token" reads the class
    token; "avg" (the ``…_gap`` models), "map" and the rest pool the patch tokens."""
    pool = getattr(model, "global_pool", None)
    if not isinstance(pool, str) or not hasattr(model, "num_prefix_tokens"):
        return None
    return pool == "token" and bool(getattr(model, "has_class_token", True))


def _categories(timm: Any, model: nn.Module) -> list[str] | None:
    """ImageNet's class names when the head is one of the ImageNet subsets timm knows."""
    from featviz.model.sources.torchvision_models import imagenet_categories

    subset = timm.data.infer_imagenet_subset(model)
    if subset is None:
        return None
    if subset == "imagenet-1k":
        return imagenet_categories()
    info = timm.data.ImageNetInfo(subset)
    return [info.index_to_description(i).split(",")[0] for i in range(info.num_classes())]
