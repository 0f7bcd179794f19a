"""What ``featviz layers`` and ``featviz models`` show: a model's layers, the models by name."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from featviz.errors import UsageError

if TYPE_CHECKING:
    from featviz.layers.catalog import ModelTrace
    from featviz.model.options import ModelRequest


@dataclass(frozen=True)
class LayerCatalog:
    """What ``featviz layers`` shows: the model's trace, its default CAM layer (None when it
    has none) and the input side's multiple (None: one size only)."""

    trace: ModelTrace
    default: str | None
    multiple: int | None


def describe_layers(model: ModelRequest) -> LayerCatalog:
    """The model's layers, built on the meta device: nothing is downloaded."""
    from featviz.model.load import load_model

    loaded = load_model(model, structure_only=True)
    try:
        default = loaded.default_cam_layer()
    except UsageError:
        default = None
    return LayerCatalog(loaded.trace, default, loaded.preprocessing.multiple)


def list_models(
    name_filter: str | None, source: str = "torchvision"
) -> list[tuple[str, list[str]]]:
    """(name for --model, its weights) of the source's models whose name contains the filter."""
    if source == "timm":
        from featviz.model.sources.timm_models import timm_models

        return timm_models(name_filter)
    if source == "open_clip":
        from featviz.model.sources.open_clip_models import open_clip_models

        return open_clip_models(name_filter)
    from featviz.model.sources.torchvision_models import model_weights_names, torchvision_models

    names = [
        name
        for name in torchvision_models()
        if not name_filter or name_filter.lower() in name.lower()
    ]
    return [(name, model_weights_names(name)) for name in names]
