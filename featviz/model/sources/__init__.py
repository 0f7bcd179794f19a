"""Where networks come from: one module per kind of ``--model`` spec, behind one interface.

A source turns a ``ModelRequest`` into a ``BuiltModel``: the module (with real weights, or on
the meta device when only its structure is wanted), how to feed it and how to name its classes.
models.py picks the source from the spec's form and does what every model needs after that
(eval mode, frozen parameters, device, trace). A new source is one module and one line in
``source_for``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from torch import nn

    from featviz.inputs.video import Sampling
    from featviz.model.options import ModelRequest

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TIMM_PREFIX = "timm/"
HF_PREFIX = "hf:"
OPEN_CLIP_PREFIX = "open_clip/"
DEFAULT_CLIP_LENGTH = 16  # frames per clip of a video model that does not say


def require(module: str, extra: str, spec: str) -> object:
    """Import an optional library, or a usage error that gives the pip command."""
    import importlib

    from featviz.errors import UsageError

    try:
        return importlib.import_module(module)
    except ImportError:
        raise UsageError(
            f"--model {spec} needs {module}, which is not installed",
            hint=f"pip install 'featviz[{extra}]'",
        ) from None


@dataclass(frozen=True)
class BuiltModel:
    """What a source hands back.

    ``interpolation``: how the weights' images were resized (bilinear, bicubic…).
    ``class_token``: for a transformer, whether its head reads the first prefix token (True) or
    averages the patch tokens (False); None: unknown, taken as True when there are prefix
    tokens.
    ``weights`` describes the weights for people ("IMAGENET1K_V1", "none", a checkpoint path);
    ``categories_from`` says where ``categories`` came from, for messages ("LABELS in
    mynet.py"), and ``categories_given`` whether a person wrote them (then a count that does
    not fit the model is their mistake to hear about); ``fixed_layout`` is True when featviz
    may not change the module's memory layout (a user's forward may ``.view()`` a tensor).
    ``clip``: a video model's frames per clip and their rate (it takes (N, 3, T, H, W)
    clips); None for an image model.
    """

    module: nn.Module
    name: str
    weights: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    input_size: int
    categories: list[str] | None
    categories_from: str | None
    categories_given: bool = False
    fixed_layout: bool = True
    interpolation: str = "bilinear"
    class_token: bool | None = None
    owned: bool = True  # False: a caller's module, which featviz must leave as it found it
    clip: Sampling | None = None


class ModelSource(Protocol):
    def build(self, request: ModelRequest, *, structure_only: bool) -> BuiltModel:
        """The network of ``request``; with ``structure_only`` its parameters may stay on the
        meta device (nothing downloaded, no initialisation paid)."""
        ...


def source_for(spec: str) -> ModelSource:
    """The source that understands ``spec``: ``timm/NAME``, ``hf:REPO_ID`` or ``hf:DIR``,
    ``open_clip/NAME``,
    ``file.py:callable`` / ``pkg.mod:callable`` for a user's factory, anything else a
    torchvision model name."""
    if spec.startswith(TIMM_PREFIX):
        from featviz.model.sources.timm_models import TimmSource

        return TimmSource()
    if spec.startswith(HF_PREFIX):
        from featviz.model.sources.hf_models import HuggingFaceSource

        return HuggingFaceSource()
    if spec.startswith(OPEN_CLIP_PREFIX):
        from featviz.model.sources.open_clip_models import OpenClipSource

        return OpenClipSource()
    if ":" in spec:
        from featviz.model.sources.factory import FactorySource

        return FactorySource()
    from featviz.model.sources.torchvision_models import TorchvisionSource

    return TorchvisionSource()
