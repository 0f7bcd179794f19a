"""A network the caller built and hands over as it is (the library: ``featviz.load(module)``).

It gets what a factory file gets: the trace, token and channels-last layouts, the default
layer, tasks. ``labels`` is a list of class names, ``"imagenet"`` or a text file; ``mean`` and
``std`` its normalisation (default ImageNet's); ``clip`` how a video model takes clips (None:
it takes images); the input size comes from the request (default
224). featviz does not own it (``BuiltModel.owned``): nothing about it changes for good.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from featviz.model.sources import IMAGENET_MEAN, IMAGENET_STD, BuiltModel

if TYPE_CHECKING:
    from torch import nn

    from featviz.inputs.video import Sampling
    from featviz.model.options import ModelRequest


class ModuleSource:
    def __init__(
        self,
        module: nn.Module,
        *,
        labels: str | list[str] | None = None,
        mean: tuple[float, ...] | None = None,
        std: tuple[float, ...] | None = None,
        clip: Sampling | None = None,
    ) -> None:
        self.module = module
        self.clip = clip
        self.labels = labels
        self.mean = tuple(mean) if mean is not None else IMAGENET_MEAN
        self.std = tuple(std) if std is not None else IMAGENET_STD

    def build(self, request: ModelRequest, *, structure_only: bool) -> BuiltModel:
        from featviz.model.checkpoints import load_into, read_state_dict
        from featviz.model.labels import read_labels

        if request.checkpoint is not None:
            state = read_state_dict(request.checkpoint)
            load_into(self.module, state, f"checkpoint '{request.checkpoint}'")
        categories = read_labels(self.labels) if isinstance(self.labels, str) else self.labels
        return BuiltModel(
            module=self.module,
            name=request.spec,
            weights=str(request.checkpoint) if request.checkpoint else "module",
            mean=self.mean,
            std=self.std,
            input_size=224,
            categories=list(categories) if categories is not None else None,
            categories_from="labels=",
            categories_given=categories is not None,
            owned=False,
            clip=self.clip,
        )
