"""The CAM methods featviz knows, by CLI name; answering "which methods?" never imports torch.

Each entry says where its class lives, so ``featviz cam --help``, the ``--method`` choices and the
tests all read this one table while the numeric code is imported only when a method is used.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from featviz.errors import UsageError, closest

if TYPE_CHECKING:
    from featviz.cam.base import CamMethod


ATTENTION = "attention"
"""The "layer" of methods that read a transformer's attention rather than one layer's output:
their maps are written under cam/<method>/attention/."""

ALL = "all"
"""``--method all``: every registered method that applies to the model (``every_method``)."""
ALL_SUMMARY = "every method above that applies to the model; scorecam, sscam and iscam are slow"

INPUT = "input"
"""The "layer" of pixel-level methods, whose maps are attributions to the input's pixels."""


@dataclass(frozen=True)
class MethodInfo:
    """One registered method: its CLI name, where its class lives, and a one-line summary.

    ``summary`` says what the method needs and what it costs, for help text;
    ``needs_gradients``: it differentiates the scores of the batch's one forward (pixel-level
    methods that differentiate forwards of their own, integrated gradients…, do not);
    ``needs_attention``: it reads every self-attention matrix instead of a tapped layer;
    ``pixel_level``: its map is at the input's resolution (layer ``INPUT``), not a layer's;
    ``signed``: the sign of its map means something: ``--save-raw`` keeps it, while pictures,
    scores and the sanity check use the absolute value (``ExplainedMap.shown``);
    ``random``: it draws noise, seeded by ``--seed`` and each image's position in the run
    (``CamContext.generator``), never by its place in a batch.
    """

    name: str
    module: str
    class_name: str
    summary: str
    needs_gradients: bool
    class_specific: bool = True
    needs_attention: bool = False
    pixel_level: bool = False
    signed: bool = False
    random: bool = False


_METHODS: dict[str, MethodInfo] = {}


def register(
    name: str, *, module: str, class_name: str, summary: str, needs_gradients: bool, **flags: bool
) -> MethodInfo:
    """Add a method; ``flags`` are ``MethodInfo``'s optional ones (``class_specific``…). A name
    is registered once (a second registration is a bug, not an update)."""
    if name in _METHODS:
        existing = _METHODS[name]
        raise ValueError(
            f"CAM method '{name}' is already registered ({existing.module}.{existing.class_name})"
        )
    info = MethodInfo(name, module, class_name, summary, needs_gradients, **flags)
    _METHODS[name] = info
    return info


def method_names() -> list[str]:
    """Registered names, in registration order (cheapest and best-known first)."""
    return list(_METHODS)


def every_method(*, attention: bool) -> tuple[str, ...]:
    """What ``all`` stands for: every registered method in registration order, the ones that
    read self-attention only for a model that has it (``attention``). Methods registered later
    are in it with no change here."""
    return tuple(name for name, info in _METHODS.items() if attention or not info.needs_attention)


def method_info(name: str) -> MethodInfo:
    """The entry for ``name``; an unknown name is a usage error with the closest names."""
    try:
        return _METHODS[name]
    except KeyError:
        near = closest(name, list(_METHODS))
        raise UsageError(
            f"unknown method '{name}'",
            hint=(f"{near}; " if near else "") + f"choose one of {', '.join(_METHODS)}",
        ) from None


def load_method(name: str, *, batch_size: int = 32) -> CamMethod:
    """An instance of the method's class, importing its module now.

    ``batch_size``: images per extra forward for the methods that run them (scorecam,
    ablationcam, occlusion, integratedgradients, smoothgrad); the others ignore it.
    """
    info = method_info(name)
    cls = getattr(importlib.import_module(info.module), info.class_name)
    return cls(batch_size=batch_size)


# compare, score and sanity: every class-specific gradient method, and eigencam.
JUDGED_METHODS = ("gradcam", "gradcam++", "xgradcam", "layercam", "hirescam", "eigencam")

_GRADIENT = "featviz.cam.methods.gradient"
_PERTURBATION = "featviz.cam.methods.perturbation"
_PROJECTION = "featviz.cam.methods.projection"
_ROLLOUT = "featviz.cam.methods.rollout"
_SMOOTHED = "featviz.cam.methods.smoothed"

register(
    "cam",
    module=_GRADIENT,
    class_name="ClassActivationMap",
    summary="weights of the final Linear (nets ending in global-average-pool → Linear only); "
    "1 forward",
    needs_gradients=False,
)
register(
    "gradcam",
    module=_GRADIENT,
    class_name="GradCam",
    summary="gradients at the layer, averaged per channel; 1 forward + partial backward",
    needs_gradients=True,
)
register(
    "gradcam++",
    module=_GRADIENT,
    class_name="GradCamPlusPlus",
    summary="gradients at the layer, 2nd/3rd-order weighted; 1 forward + partial backward",
    needs_gradients=True,
)
register(
    "xgradcam",
    module=_GRADIENT,
    class_name="XGradCam",
    summary="gradients × normalised activations per channel; 1 forward + partial backward",
    needs_gradients=True,
)
register(
    "layercam",
    module=_GRADIENT,
    class_name="LayerCam",
    summary="positive gradients × activations per position; 1 forward + partial backward",
    needs_gradients=True,
)
register(
    "hirescam",
    module=_GRADIENT,
    class_name="HiResCam",
    summary="gradients × activations per position, signed; 1 forward + partial backward",
    needs_gradients=True,
)
register(
    "scorecam",
    module=_PERTURBATION,
    class_name="ScoreCam",
    summary="no gradients; 1 forward + 1 full forward per channel of the layer (batched)",
    needs_gradients=False,
)
register(
    "ablationcam",
    module=_PERTURBATION,
    class_name="AblationCam",
    summary="no gradients; 1 forward + 1 forward of the layers after the tap per channel (batched)",
    needs_gradients=False,
)
register(
    "eigencam",
    module=_PROJECTION,
    class_name="EigenCam",
    summary="no gradients, not class-specific; 1 forward + one SVD of the activations",
    needs_gradients=False,
    class_specific=False,
)
register(
    "gradrollout",
    module=_ROLLOUT,
    class_name="GradientRollout",
    summary="transformers: attention × its gradient, rolled out over blocks; forward + backward",
    needs_gradients=True,
    needs_attention=True,
)
register(
    "rollout",
    module=_ROLLOUT,
    class_name="AttentionRollout",
    summary="transformers: attention rolled out over the blocks, not class-specific; 1 forward",
    needs_gradients=False,
    class_specific=False,
    needs_attention=True,
)
register(
    "gradcamelementwise",
    module=_GRADIENT,
    class_name="GradCamElementWise",
    summary="ReLU(gradients × activations) per position, summed; 1 forward + partial backward",
    needs_gradients=True,
)
register(
    "eigengradcam",
    module=_PROJECTION,
    class_name="EigenGradCam",
    summary="first principal component of gradients × activations; forward + backward + SVD",
    needs_gradients=True,
)
register(
    "kpcacam",
    module=_PROJECTION,
    class_name="KpcaCam",
    summary="no gradients, not class-specific; 1 forward + kernel PCA over the h·w positions",
    needs_gradients=False,
    class_specific=False,
)
register(
    "fem",
    module=_PROJECTION,
    class_name="Fem",
    summary="no gradients, not class-specific: channels weighted by their outliers; 1 forward",
    needs_gradients=False,
    class_specific=False,
)
register(
    "shapleycam",
    module=_GRADIENT,
    class_name="ShapleyCam",
    summary="gradient − ½ Hessian × activations, averaged per channel; forward + 2 backwards",
    needs_gradients=True,
)
register(
    "finercam",
    module=_GRADIENT,
    class_name="FinerCam",
    summary="Grad-CAM of the target against its 3 nearest-scoring classes; 1 forward + backward",
    needs_gradients=True,
)
register(
    "sscam",
    module=_SMOOTHED,
    class_name="SsCam",
    summary="no gradients; 1 + 35·K full forwards, masks with noise (K channels; batched); slow",
    needs_gradients=False,
    random=True,
)
register(
    "iscam",
    module=_SMOOTHED,
    class_name="IsCam",
    summary="no gradients; 1 + 10·K full forwards, masked inputs scaled up in 10 steps; slow",
    needs_gradients=False,
)
register(
    "smoothgradcam++",
    module=_SMOOTHED,
    class_name="SmoothGradCamPlusPlus",
    summary="gradcam++ with derivatives averaged over 4 noisy inputs; 1 + 4 forwards + backwards",
    needs_gradients=True,
    random=True,
)

_PIXEL = "featviz.cam.methods.pixel"

register(
    "saliency",
    module=_PIXEL,
    class_name="Saliency",
    summary="pixel-level: |gradient| at the input, channels summed; 1 forward + full backward",
    needs_gradients=True,
    pixel_level=True,
)
register(
    "inputxgradient",
    module=_PIXEL,
    class_name="InputXGradient",
    summary="pixel-level, signed: input × its gradient; 1 forward + full backward",
    needs_gradients=True,
    pixel_level=True,
    signed=True,
)
register(
    "integratedgradients",
    module=_PIXEL,
    class_name="IntegratedGradients",
    summary="pixel-level, signed: gradients along 50 steps from a 0 baseline; 50 forward+backward",
    needs_gradients=False,
    pixel_level=True,
    signed=True,
)
register(
    "smoothgrad",
    module=_PIXEL,
    class_name="SmoothGrad",
    summary="pixel-level, signed: gradients of 25 noisy copies, seeded; 25 forward+backward",
    needs_gradients=False,
    pixel_level=True,
    signed=True,
    random=True,
)
register(
    "occlusion",
    module=_PIXEL,
    class_name="Occlusion",
    summary="pixel-level, signed: score drop under 32-pixel windows; "
    "1 forward per window (batched)",
    needs_gradients=False,
    pixel_level=True,
    signed=True,
)

_GUIDED = "featviz.cam.methods.guided"

register(
    "guidedbackprop",
    module=_GUIDED,
    class_name="GuidedBackprop",
    summary="pixel-level, signed: ReLUs pass back positive gradients where input > 0; "
    "2 forwards + backward",
    needs_gradients=True,
    pixel_level=True,
    signed=True,
)
register(
    "deconvolution",
    module=_GUIDED,
    class_name="Deconvolution",
    summary="pixel-level, signed: ReLUs pass back positive gradients; 2 forwards + backward",
    needs_gradients=True,
    pixel_level=True,
    signed=True,
)
register(
    "guidedgradcam",
    module=_GUIDED,
    class_name="GuidedGradCam",
    summary="pixel-level, signed: guided backprop × Grad-CAM, per layer; 2 forwards + 2 backwards",
    needs_gradients=True,
    pixel_level=True,
    signed=True,
)
register(
    "fullgrad",
    module="featviz.cam.methods.fullgrad",
    class_name="FullGrad",
    summary="pixel-level: |x × grad| + |bias × grad| of every conv and batch norm; "
    "2 forwards + backward",
    needs_gradients=False,
    pixel_level=True,
)

register(
    "lrp",
    module="featviz.cam.methods.lrp",
    class_name="Lrp",
    summary="pixel-level, signed: CNNs: z-box 1st conv, γ other convs, ε dense; "
    "2 forwards + backward",
    needs_gradients=False,
    pixel_level=True,
    signed=True,
)
register(
    "attnlrp",
    module="featviz.cam.methods.attnlrp",
    class_name="AttnLrp",
    summary="pixel-level, signed: transformers: LRP through attention and LayerNorm; "
    "2 forwards + backward",
    needs_gradients=False,
    pixel_level=True,
    signed=True,
)
register(
    "legrad",
    module="featviz.cam.methods.legrad",
    class_name="LeGrad",
    summary="transformers: each block's attention, positive gradients of its own score; "
    "1 forward + backward",
    needs_gradients=True,
    needs_attention=True,
)
