"""Building the network a user names: a torchvision model, or a factory in a file or package.

The model is built once per run, on the meta device whenever real weights will replace the random
initialisation (vgg16's random init alone costs about 1.7 s on a CPU), then put in eval mode with
every parameter frozen, so CAM backward passes never compute weight gradients.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from featviz.checkpoints import load_into, read_state_dict
from featviz.errors import RunError, UsageError

if TYPE_CHECKING:
    import torch
    from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class LoadedModel:
    """A ready network and what it takes to feed it and read its output."""

    module: nn.Module
    name: str
    weights: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    input_size: int
    categories: list[str] | None
    device: torch.device
    channels_last: bool = False

    def batch(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        """Stack (3, h, w) inputs into the (N, 3, h, w) batch the model expects: on its device,
        in the memory layout of its weights."""
        import torch

        stacked = torch.stack(tensors).to(self.device)
        if self.channels_last:
            return stacked.contiguous(memory_format=torch.channels_last)
        return stacked

    def label(self, index: int) -> str:
        if self.categories and 0 <= index < len(self.categories):
            return self.categories[index]
        return f"class {index}"


def classification_models() -> list[str]:
    """Names of torchvision's image-classification models."""
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def model_weights_names(name: str) -> list[str]:
    import torchvision

    return [weights.name for weights in torchvision.models.get_model_weights(name)]


def imagenet_categories() -> list[str]:
    """The 1000 ImageNet-1k class names, shipped with torchvision (no download)."""
    from torchvision.models import AlexNet_Weights

    return list(AlexNet_Weights.IMAGENET1K_V1.meta["categories"])


def load_model(
    spec: str,
    *,
    weights: str = "DEFAULT",
    checkpoint: Path | None = None,
    num_classes: int | None = None,
    labels: str | None = None,
    seed: int = 0,
    device: str = "auto",
    input_size: int | None = None,
) -> LoadedModel:
    """Build ``spec`` (torchvision name, ``file.py:callable`` or ``pkg.mod:callable``)."""
    import torch

    target = resolve_device(device)
    torch.manual_seed(seed)
    if ":" in spec:
        loaded = _load_factory_model(spec, checkpoint, num_classes)
    else:
        loaded = _load_torchvision_model(spec, weights, checkpoint, num_classes)
    module = loaded.module
    module.eval()
    module.requires_grad_(False)
    # Channels-last convolutions run ~20% faster on CPU (oneDNN's native layout; resnet50's
    # compute floor here: 121 → 91 ms/image) with the same results up to float rounding. Only
    # for torchvision's models: a user's forward may .view() a tensor, which needs the default
    # layout.
    loaded.channels_last = ":" not in spec
    layout = torch.channels_last if loaded.channels_last else torch.contiguous_format
    loaded.module = module.to(target, memory_format=layout)
    loaded.device = target
    if labels is not None:
        loaded.categories = read_labels(labels)
    if input_size is not None:
        loaded.input_size = input_size
    return loaded


def load_architecture(spec: str, *, num_classes: int | None = None) -> LoadedModel:
    """The model's structure only: torchvision models are built on the meta device (no weights
    to download, no initialisation to pay), which is all ``featviz layers`` needs."""
    import torch

    if ":" in spec:
        return load_model(spec, num_classes=num_classes, device="cpu")
    with torch.device("meta"):
        loaded = _load_torchvision_model(spec, "none", None, num_classes)
    loaded.module.eval()
    loaded.weights = "none (structure only)"
    return loaded


def resolve_device(device: str) -> torch.device:
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA GPU is available here", hint="use --device cpu")
    if device == "mps" and not torch.backends.mps.is_available():
        raise UsageError(
            "--device mps: Apple's MPS backend is not available here", hint="use --device cpu"
        )
    if device not in ("cpu", "cuda", "mps"):
        raise UsageError(f"unknown device '{device}'", hint="choose auto, cpu, cuda or mps")
    return torch.device(device)


def read_labels(labels: str) -> list[str]:
    """``imagenet`` or a text file with one class name per line."""
    if labels == "imagenet":
        return imagenet_categories()
    path = Path(labels)
    try:
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except OSError as exc:
        raise UsageError(
            f"--labels: cannot read '{labels}' ({exc.strerror})",
            hint="pass `imagenet` or a text file with one class name per line",
        ) from exc
    names = [name for name in names if name]
    if not names:
        raise UsageError(f"--labels: '{labels}' holds no class names")
    return names


def _load_torchvision_model(
    name: str, weights: str, checkpoint: Path | None, num_classes: int | None
) -> LoadedModel:
    import torch
    import torchvision

    available = classification_models()
    if name not in available:
        close = difflib.get_close_matches(name, available, n=3, cutoff=0.5)
        hint = f"closest: {', '.join(close)}; " if close else ""
        raise UsageError(
            f"unknown model '{name}'",
            hint=hint + "list them with `featviz models`, or pass your own as file.py:callable",
        )
    builder = torchvision.models.get_model_builder(name)
    weights_enum = None
    if checkpoint is None and weights.lower() != "none":
        weights_enum = _weights_enum(name, weights)

    kwargs: dict[str, Any] = {}
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if weights_enum is not None:
        state = _pretrained_state(weights_enum)
        model = _build_on_meta(lambda: builder(weights=weights_enum), weights_enum, state)
        load_into(model, state, f"the {weights_enum} weights")
    elif checkpoint is not None:
        state = read_state_dict(checkpoint)
        with torch.device("meta"):
            model = builder(weights=None, **kwargs)
        load_into(model, state, f"checkpoint '{checkpoint}'")
    else:
        model = builder(weights=None, **kwargs)

    meta_source = weights_enum or torchvision.models.get_model_weights(name).DEFAULT
    transforms = meta_source.transforms()
    classes = model_output_classes(model)
    categories = list(meta_source.meta["categories"])
    return LoadedModel(
        module=model,
        name=name,
        weights=str(weights_enum.name)
        if weights_enum
        else (str(checkpoint) if checkpoint else "none"),
        mean=tuple(transforms.mean),
        std=tuple(transforms.std),
        input_size=int(transforms.crop_size[0]),
        categories=categories if classes in (None, len(categories)) else None,
        device=torch.device("cpu"),
    )


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
    """Run torchvision's builder on the meta device, handing it the state we already loaded.

    The builder sets the architecture options the weights need (number of classes, Inception's
    ``transform_input``…) and loads meta copies of the weights into its meta tensors, which
    costs nothing; the caller then assigns the real tensors.
    """
    import torch

    enum_type = type(weights_enum)
    original = enum_type.get_state_dict
    shapes_only = {key: torch.empty_like(value, device="meta") for key, value in state.items()}
    enum_type.get_state_dict = lambda self, *args, **kwargs: shapes_only
    try:
        with torch.device("meta"):
            return build()
    finally:
        enum_type.get_state_dict = original


def model_output_classes(model: nn.Module) -> int | None:
    """Number of outputs of the model's last Linear layer, when it has one."""
    from torch import nn

    last = None
    for module in model.modules():
        if isinstance(module, nn.Linear):
            last = module
    return last.out_features if last is not None else None


def _load_factory_model(spec: str, checkpoint: Path | None, num_classes: int | None) -> LoadedModel:
    import torch
    from torch import nn

    location, _, attribute = spec.rpartition(":")
    source = _import_location(location, spec)
    factory = getattr(source, attribute, None)
    if factory is None or not callable(factory):
        raise UsageError(f"--model {spec}: '{location}' has no callable '{attribute}'")
    try:
        model = factory(num_classes=num_classes) if num_classes is not None else factory()
    except Exception as exc:
        raise RunError(f"--model {spec}: the factory raised {type(exc).__name__}: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise UsageError(
            f"--model {spec}: the factory returned a {type(model).__name__}, not a torch.nn.Module"
        )
    if checkpoint is not None:
        load_into(model, read_state_dict(checkpoint), f"checkpoint '{checkpoint}'")
    # A factory's module may describe its inputs and classes with optional module-level
    # constants; without them featviz assumes ImageNet normalisation at 224 and no labels.
    labels = getattr(source, "LABELS", None)
    return LoadedModel(
        module=model,
        name=spec,
        weights=str(checkpoint) if checkpoint else "factory",
        mean=tuple(getattr(source, "MEAN", IMAGENET_MEAN)),
        std=tuple(getattr(source, "STD", IMAGENET_STD)),
        input_size=int(getattr(source, "INPUT_SIZE", 224)),
        categories=read_labels(labels) if isinstance(labels, str) else labels,
        device=torch.device("cpu"),
    )


def _import_location(location: str, spec: str) -> Any:
    if location.endswith(".py") or "/" in location or "\\" in location:
        path = Path(location)
        if not path.is_file():
            raise UsageError(f"--model {spec}: file '{location}' does not exist")
        module_spec = importlib.util.spec_from_file_location(f"featviz_user_{path.stem}", path)
        module = importlib.util.module_from_spec(module_spec)
        try:
            module_spec.loader.exec_module(module)
        except Exception as exc:
            raise RunError(
                f"--model {spec}: importing '{location}' failed: {type(exc).__name__}: {exc}"
            ) from exc
        return module
    try:
        return importlib.import_module(location)
    except ImportError as exc:
        raise UsageError(f"--model {spec}: cannot import '{location}' ({exc})") from exc
