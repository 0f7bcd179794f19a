"""``featviz.load``: a model ready to explain, from a spec string or a module you built."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

    from featviz.inputs.video import Sampling
    from featviz.model.load import LoadedModel

# The model loaded for the last module passed straight to explain() & co., so that calls on
# the same module pay one trace. One only: a loaded model holds its module, so a cache of them
# would keep every module a session ever explained alive.
_LAST_MODULE: list[LoadedModel] = []


def load(
    model: str | nn.Module,
    *,
    weights: str = "DEFAULT",
    checkpoint: str | Path | None = None,
    num_classes: int | None = None,
    labels: str | list[str] | None = None,
    seed: int = 0,
    device: str | None = None,
    precision: str = "fp32",
    input_size: int | None = None,
    resize: str = "keep",
    mean: tuple[float, float, float] | None = None,
    std: tuple[float, float, float] | None = None,
    clip_length: int | None = None,
    frame_rate: float | None = None,
) -> LoadedModel:
    """A model ready to explain: built (or taken as it is), traced once, its default layer,
    token layouts and task found.

    ``model``: a spec string exactly as ``--model`` takes (a torchvision name, ``timm/NAME``,
    ``hf:REPO``, ``file.py:callable``) with the same options as the command line; or a
    ``torch.nn.Module`` you built, which gets everything a factory file gets. A module is
    never changed for good: featviz puts it in eval mode with frozen parameters only while it
    explains, and moves it only when ``device`` is given (default: where its parameters are).
    For a module, ``labels`` is a list of class names, ``"imagenet"`` or a text file;
    ``input_size`` its shorter input side (default 224); ``mean``/``std`` its normalisation
    (default ImageNet's); ``clip_length`` says that it is a video model, which takes
    (N, 3, clip_length, H, W) clips (a factory file's ``CLIP_LENGTH``), sampled at
    ``frame_rate`` frames per second of video (its ``FRAME_RATE``; default every frame).
    ``precision`` is ``fp32``, ``bf16`` or ``fp16`` (CUDA).
    """
    from torch import nn

    from featviz.model.load import load_model
    from featviz.model.options import ModelRequest

    if isinstance(model, nn.Module):
        from featviz.model.sources.module import ModuleSource

        source = ModuleSource(
            model, labels=labels, mean=mean, std=std, clip=_sampling(clip_length, frame_rate)
        )
        request = ModelRequest(
            spec=type(model).__name__,
            checkpoint=None if checkpoint is None else Path(checkpoint),
            device=device or "module",
            precision=precision,
            input_size=input_size,
            resize=resize,
        )
        return load_model(request, source=source)
    _check_spec(model, labels, mean, std, clip_length, frame_rate)
    request = ModelRequest(
        spec=model,
        weights=weights,
        checkpoint=None if checkpoint is None else Path(checkpoint),
        num_classes=num_classes,
        labels=labels,
        seed=seed,
        device=device or "auto",
        precision=precision,
        input_size=input_size,
        resize=resize,
    )
    return load_model(request)


def _check_spec(
    model: object,
    labels: str | list[str] | None,
    mean: tuple[float, float, float] | None,
    std: tuple[float, float, float] | None,
    clip_length: int | None,
    frame_rate: float | None,
) -> None:
    """Refuse what is not a spec string, and the options that only a module takes."""
    from featviz.errors import UsageError

    if not isinstance(model, str):
        raise UsageError(f"expected a spec string or a torch.nn.Module, got {type(model).__name__}")
    if isinstance(labels, list) or mean is not None or std is not None:
        raise UsageError(
            "labels as a list, mean and std are for a module you built",
            hint="a spec's own preprocessing and names are used; pass labels as a file path",
        )
    if clip_length is not None or frame_rate is not None:
        raise UsageError(
            "clip_length and frame_rate are for a module you built",
            hint="a spec's video model takes its own clips (a factory file says CLIP_LENGTH "
            "and FRAME_RATE beside the factory)",
        )


def _sampling(clip_length: int | None, frame_rate: float | None) -> Sampling | None:
    """A module's clips (None: it takes images); raises UsageError for a rate without a
    length, or either not positive."""
    from featviz.errors import UsageError
    from featviz.inputs.video import Sampling

    if clip_length is None:
        if frame_rate is not None:
            raise UsageError("frame_rate needs clip_length", hint="say how many frames a clip has")
        return None
    if clip_length < 1 or (frame_rate is not None and frame_rate <= 0):
        raise UsageError(
            f"clip_length {clip_length} and frame_rate {frame_rate}: both must be positive"
        )
    return Sampling(int(clip_length), None if frame_rate is None else float(frame_rate))


def loaded_model(model: Any) -> LoadedModel:
    """What a library call was given as its model, loaded: a loaded model as it is, a spec
    string loaded now, a module loaded once and remembered."""
    from torch import nn

    from featviz.model.load import LoadedModel

    if isinstance(model, LoadedModel):
        return model
    if isinstance(model, nn.Module):
        if not _LAST_MODULE or _LAST_MODULE[0].module is not model:
            _LAST_MODULE[:] = [load(model)]
        return _LAST_MODULE[0]
    return load(model)
