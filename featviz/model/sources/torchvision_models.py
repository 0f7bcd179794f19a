"""torchvision's classification models by name, their weights through torch.hub's cache.

Its video classifiers (r3d_18, s3d, mvit_v2_s, swin3d_t…) take clips (N, 3, T, H, W): their
frames per clip and frame rate come from the notes of the weights (``clip_len=16``,
``frame_rate=15``).

Pretrained builds run torchvision's own builder with parameters on the meta device (it sets the
architecture options the weights need: number of classes, Inception's ``transform_input``…) and
then assign the real tensors: vgg16's random initialisation alone costs about 1.7 s on a CPU.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from featviz.errors import RunError, UsageError, closest
from featviz.inputs.video import Sampling
from featviz.model.checkpoints import load_into, read_state_dict
from featviz.model.sources import DEFAULT_CLIP_LENGTH, BuiltModel
from featviz.model.sources.meta import parameters_on_meta

if TYPE_CHECKING:
    import torch
    from torch import nn

    from featviz.model.options import ModelRequest


def classification_models() -> list[str]:
    """Names of torchvision's image-classification models."""
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def segmentation_models() -> list[str]:
    """Names of torchvision's semantic-segmentation models (fcn_*, deeplabv3_*, lraspp_*)."""
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models.segmentation))


def detection_models() -> list[str]:
    """Names of torchvision's detection models (fasterrcnn_*, retinanet_*, fcos_*, ssd*,
    maskrcnn_*, keypointrcnn_*)."""
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models.detection))


def video_models() -> list[str]:
    """Names of torchvision's video classifiers (r3d_18, mc3_18, r2plus1d_18, s3d, mvit_*,
    swin3d_*)."""
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models.video))


def torchvision_models() -> list[str]:
    """Every model --model takes by name: the classifiers, segmenters, detectors and video
    classifiers."""
    return sorted(
        classification_models() + segmentation_models() + detection_models() + video_models()
    )


def model_weights_names(name: str) -> list[str]:
    import torchvision

    return [weights.name for weights in torchvision.models.get_model_weights(name)]


def imagenet_categories() -> list[str]:
    """The 1000 ImageNet-1k class names, shipped with torchvision (no download)."""
    from torchvision.models import AlexNet_Weights

    return list(AlexNet_Weights.IMAGENET1K_V1.meta["categories"])


class TorchvisionSource:
    def build(self, request: ModelRequest, *, structure_only: bool) -> BuiltModel:
        import torchvision

        name = request.spec
        available = torchvision_models()
        if name not in available:
            near = closest(name, available)
            raise UsageError(
                f"unknown model '{name}'",
                hint=(f"{near}; " if near else "")
                + "list them with `featviz models`, or pass your own as file.py:callable",
            )
        detector = name in detection_models()
        model, described, weights_enum = _instantiated(request, structure_only, detector)
        meta_source = weights_enum or torchvision.models.get_model_weights(name).DEFAULT
        transforms = meta_source.transforms()
        if detector:
            # It normalises and resizes inside (its ``transform``): it takes [0, 1] pixels,
            # and fed at its own shorter side, its resize changes nothing.
            mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
            size = model.transform.min_size[-1]
        else:
            mean, std = tuple(transforms.mean), tuple(transforms.std)
            # The size the architecture was built for (a ViT asserts it): vit_h_14's default
            # weights are for 518, the same builder without them makes a 224 model.
            size = getattr(model, "image_size", None) or _preset_size(transforms)
        video = name in video_models()
        return BuiltModel(
            module=model,
            name=name,
            weights=described,
            mean=mean,
            std=std,
            input_size=int(size),
            categories=list(meta_source.meta["categories"]),
            categories_from=f"the {meta_source} weights",
            # Channels-last convolutions run ~20% faster on CPU (oneDNN's native layout;
            # resnet50's compute floor here: 121 → 91 ms/image) with the same results up to
            # float rounding. Video models' 5-D weights have no such layout.
            fixed_layout=video,
            clip=_clip_sampling(meta_source.meta) if video else None,
        )


def _instantiated(
    request: ModelRequest, structure_only: bool, detector: bool
) -> tuple[nn.Module, str, Any]:
    """The model ``request`` names: its structure alone (parameters on the meta device), or
    with a checkpoint's weights, none, or torchvision's pretrained ones; those weights,
    described; and the pretrained weights' enum (None for any other)."""
    import torchvision

    name = request.spec
    builder = torchvision.models.get_model_builder(name)
    kwargs: dict[str, Any] = {}
    if request.num_classes is not None:
        kwargs["num_classes"] = request.num_classes
    if detector or name in segmentation_models():
        # Its builder would fetch an ImageNet backbone by default: --weights none means
        # nothing is downloaded, and pretrained weights hold the backbone's already.
        kwargs["weights_backbone"] = None
    if structure_only:
        with parameters_on_meta():
            return builder(weights=None, **kwargs), "none (structure only)", None
    if request.checkpoint is not None:
        state = read_state_dict(request.checkpoint)
        with parameters_on_meta():
            model = builder(weights=None, **kwargs)
        load_into(model, state, f"checkpoint '{request.checkpoint}'")
        return model, str(request.checkpoint), None
    if request.weights.lower() == "none":
        return builder(weights=None, **kwargs), "none", None
    weights_enum = _weights_enum(name, request.weights)
    state = _pretrained_state(weights_enum)
    model = _build_on_meta(lambda: builder(weights=weights_enum, **kwargs), weights_enum, state)
    load_into(model, state, f"the {weights_enum} weights")
    return model, str(weights_enum.name), weights_enum


def _clip_sampling(meta: dict[str, Any]) -> Sampling:
    """A video model's frames per clip and frame rate: torchvision states the ones its weights
    were evaluated with only in their notes (``clip_len=16``, ``frame_rate=15``)."""
    notes = meta.get("_docs", "")
    length = re.search(r"clip_len=(\d+)", notes)
    rate = re.search(r"frame_rate=([\d.]+)", notes)
    return Sampling(
        length=int(length.group(1)) if length else DEFAULT_CLIP_LENGTH,
        frame_rate=float(rate.group(1)) if rate else None,
    )


def _preset_size(transforms: Any) -> int:
    """The size the weights' preprocessing feeds: a classifier's crop, a segmenter's resize
    (its shorter side, 520 for the VOC weights)."""
    size = getattr(transforms, "crop_size", None) or transforms.resize_size
    return size[0]


def _weights_enum(name: str, weights: str) -> Any:
    import torchvision

    enum = torchvision.models.get_model_weights(name)
    if weights.upper() == "DEFAULT":
        return enum.DEFAULT
    try:
        return enum[weights.split(".")[-1]]
    except KeyError:
        names = ", ".join(member.name for member in enum)
        raise UsageError(
            f"model '{name}' has no weights '{weights}'",
            hint=f"choose one of DEFAULT, {names}, or none for random initialisation",
        ) from None


def _pretrained_state(weights_enum: Any) -> dict[str, torch.Tensor]:
    """The weights from torch's cache, downloading them there first when they are missing."""
    import torch

    checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
    filename = Path(urlparse(weights_enum.url).path).name
    try:
        return torch.hub.load_state_dict_from_url(
            weights_enum.url, progress=sys.stderr.isatty(), check_hash=True, map_location="cpu"
        )
    except (OSError, RuntimeError) as exc:
        if (checkpoints / filename).is_file():
            raise RunError(
                f"the cached weights file {checkpoints / filename} cannot be read: {exc}",
                hint="delete it so featviz downloads it again",
            ) from exc
        raise RunError(
            f"pretrained weights {weights_enum} are not cached and cannot be downloaded "
            f"(expected {filename} in {checkpoints})",
            hint="put the file there (TORCH_HOME moves the cache), or use --weights none "
            "for random initialisation, or --checkpoint FILE for your own weights",
        ) from exc


def _build_on_meta(build: Any, weights_enum: Any, state: dict[str, torch.Tensor]) -> nn.Module:
    """Run torchvision's builder with parameters on meta, handing it the state already loaded.

    The builder loads meta copies of the weights into its meta tensors, which costs nothing;
    the caller then assigns the real tensors.
    """
    import torch

    enum_type = type(weights_enum)
    original = enum_type.get_state_dict
    shapes_only = {key: torch.empty_like(value, device="meta") for key, value in state.items()}
    enum_type.get_state_dict = lambda self, *args, **kwargs: shapes_only
    try:
        with parameters_on_meta():
            return build()
    finally:
        enum_type.get_state_dict = original
