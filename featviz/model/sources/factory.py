"""A user's own network: ``path/to/file.py:callable`` or ``package.module:callable``.

The factory returns an ``nn.Module``; optional module-level constants next to it describe its
inputs and classes (``LABELS`` = "imagenet" or a list of names, ``INPUT_SIZE``, ``MEAN``,
``STD``). Without them featviz assumes ImageNet normalisation at 224 and no class names. A video
model, which takes (N, 3, T, H, W) clips, says so with ``CLIP_LENGTH`` (frames per clip, T) and
optionally ``FRAME_RATE`` (frames per second its clips were sampled at; default: every frame).
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

from featviz.errors import RunError, UsageError
from featviz.inputs.video import Sampling
from featviz.model.checkpoints import load_into, read_state_dict
from featviz.model.sources import IMAGENET_MEAN, IMAGENET_STD, BuiltModel
from featviz.model.sources.meta import parameters_on_meta
from featviz.user_code import import_callable

if TYPE_CHECKING:
    from featviz.model.options import ModelRequest


class FactorySource:
    def build(self, request: ModelRequest, *, structure_only: bool) -> BuiltModel:
        from torch import nn

        spec = request.spec
        factory, source, _ = import_callable(spec, f"--model {spec}")
        kwargs = {} if request.num_classes is None else {"num_classes": request.num_classes}
        model = _structure(factory, kwargs) if structure_only else None
        if model is None:
            try:
                model = factory(**kwargs)
            except Exception as exc:
                raise RunError(
                    f"--model {spec}: the factory raised {type(exc).__name__}: {exc}"
                ) from exc
        if not isinstance(model, nn.Module):
            raise UsageError(
                f"--model {spec}: the factory returned a {type(model).__name__}, not a "
                "torch.nn.Module"
            )
        if request.checkpoint is not None and not structure_only:
            load_into(
                model, read_state_dict(request.checkpoint), f"checkpoint '{request.checkpoint}'"
            )
        labels = getattr(source, "LABELS", None)
        if isinstance(labels, str):
            from featviz.model.labels import read_labels

            labels = read_labels(labels)
        return BuiltModel(
            module=model,
            name=spec,
            weights="none (structure only)"
            if structure_only
            else (str(request.checkpoint) if request.checkpoint else "factory"),
            mean=tuple(getattr(source, "MEAN", IMAGENET_MEAN)),
            std=tuple(getattr(source, "STD", IMAGENET_STD)),
            input_size=int(getattr(source, "INPUT_SIZE", 224)),
            categories=list(labels) if labels is not None else None,
            categories_from=f"LABELS in {spec.rpartition(':')[0]}",
            categories_given=True,
            clip=_clip_sampling(source),
        )


def _clip_sampling(source: Any) -> Sampling | None:
    """A video model's clips, from its module's ``CLIP_LENGTH`` and ``FRAME_RATE``."""
    length = getattr(source, "CLIP_LENGTH", None)
    if length is None:
        return None
    rate = getattr(source, "FRAME_RATE", None)
    return Sampling(int(length), None if rate is None else float(rate))


def _structure(factory: Any, kwargs: dict[str, Any]) -> Any:
    """The factory's module with parameters on meta, or None when its code needs real tensors
    (it computes with its weights, say): the caller then builds it for real. A factory that
    loads weights makes torch warn, once per tensor, that copying into meta parameters does
    nothing: true, and nothing to tell the user of a structure-only build."""
    try:
        with parameters_on_meta(), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return factory(**kwargs)
    except Exception:
        return None
