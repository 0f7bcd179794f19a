"""featviz's maps against pytorch-grad-cam's (PyPI ``grad-cam``), the reference implementation.

Compared at layer resolution: their public call resizes the map to the input with OpenCV, so
``get_target_width_height`` is pointed at the layer's own (w, h); ``cv2.resize`` to the same size
is the identity and their output is then ReLU + min-max normalisation (eps 1e-7) of the raw map,
which is what ``normalise`` does. Their model is a deep copy (their gradient capture calls
``loss.backward()``, which needs parameters that require grad; ours stay frozen).

Not compared: densenet121's default layer. They store ``output.cpu().detach()``, which on the CPU
shares memory with the tensor densenet then ReLUs in place, so their activations are silently
post-ReLU while their gradients are taken before it.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torchvision
from pytorch_grad_cam import (
    AblationCAM,
    EigenCAM,
    GradCAM,
    GradCAMPlusPlus,
    HiResCAM,
    LayerCAM,
    ScoreCAM,
    XGradCAM,
)
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection

from featviz.cam import forward_for_cam, load_method, normalise
from featviz.layers.trace import trace_model

TARGETS = [3, 7]

# Float32 everywhere on both sides, summed in different orders (NumPy vs torch): measured
# ≤ 1.2e-6 on maps normalised to [0, 1]. For gradcam++ their eps = 1e-6 in the denominator of
# a_kij adds up to 2e-5 once gradients are O(1) (see ``_scaled``). 1e-4 covers both with margin
# and still catches any formula difference (a mean instead of a sum, a missing ReLU: > 1e-2).
GRADIENT_ATOL = 1e-4

GRADIENT_CLASSES = {
    "gradcam": GradCAM,
    "gradcam++": GradCAMPlusPlus,
    "xgradcam": XGradCAM,
    "layercam": LayerCAM,
    "hirescam": HiResCAM,
}


def _scaled(model: torch.nn.Module) -> torch.nn.Module:
    """Multiply the last Linear by 1e3, so every gradient at the layer is 1e3 larger.

    Random-init gradients at these layers are ~1e-3, so g² ~ 1e-6 sits right next to
    pytorch-grad-cam's eps = 1e-6 in gradcam++'s a_kij = g² / (2g² + ΣA·g³ + eps) and its
    maps differ from eq. 19 by up to 1.6e-2. Scaled, eps is negligible; the other maps are
    linear in g and their normalised values do not change.
    """
    last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    last.weight.mul_(1e3)
    last.bias.mul_(1e3)
    return model


def _setup(arch: str, layer: str, size: tuple[int, int], scale: bool = False):
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(weights=None).eval().requires_grad_(False)
    if scale:
        _scaled(model)
    x = torch.randn(2, 3, *size)
    calls = trace_model(model, (1, 3, *size)).calls()
    return model, x, forward_for_cam(model, x, [layer], calls)


def _theirs(cls, theirs_model, layer: str, x: torch.Tensor, ctx) -> torch.Tensor:
    """Their public output, at the layer's resolution."""
    h, w = ctx.activations[layer].shape[-2:]
    cam = cls(model=theirs_model, target_layers=[theirs_model.get_submodule(layer)])
    cam.get_target_width_height = lambda input_tensor: (w, h)
    with cam:
        out = cam(input_tensor=x, targets=[ClassifierOutputTarget(t) for t in TARGETS])
    return torch.from_numpy(out)


def _copy_for_them(model: torch.nn.Module) -> torch.nn.Module:
    return copy.deepcopy(model).requires_grad_(True)


@pytest.fixture(scope="module", params=[("resnet18", "layer4"), ("vgg11", "features.19")])
def gradient_setup(request):
    arch, layer = request.param
    model, x, ctx = _setup(arch, layer, (96, 128), scale=True)
    return _copy_for_them(model), layer, x, ctx


@pytest.mark.parametrize("method", list(GRADIENT_CLASSES))
def test_gradient_methods(gradient_setup, method):
    theirs_model, layer, x, ctx = gradient_setup
    ours = normalise(load_method(method).compute(ctx, layer, torch.tensor(TARGETS)))
    theirs = _theirs(GRADIENT_CLASSES[method], theirs_model, layer, x, ctx)
    assert theirs.shape == ours.shape == (2, *ctx.activations[layer].shape[2:])
    assert theirs.amax(dim=(1, 2)).gt(0.99).all()  # real maps, not zeros
    torch.testing.assert_close(ours, theirs, rtol=0, atol=GRADIENT_ATOL)


def test_eigencam_up_to_the_sign(gradient_setup):
    """pytorch-grad-cam keeps the SVD's arbitrary sign; ours is fixed by the mean activation.
    Each image must match their map with one of the two signs."""
    theirs_model, layer, x, ctx = gradient_setup
    ours = normalise(load_method("eigencam").compute(ctx, layer, torch.tensor(TARGETS)))
    theirs = _theirs(EigenCAM, theirs_model, layer, x, ctx)
    flipped = normalise(-torch.from_numpy(get_2d_projection(ctx.activation(layer).numpy())))
    for n in range(len(ours)):
        same = torch.allclose(ours[n], theirs[n], rtol=0, atol=GRADIENT_ATOL)
        other = torch.allclose(ours[n], flipped[n], rtol=0, atol=GRADIENT_ATOL)
        assert same or other, n


def test_scorecam():
    """vgg11's first ReLU has the input's resolution: upsampling the masks is the identity for
    their ``align_corners=True`` and our ``align_corners=False`` alike, so the masks agree.
    Their mask eps (1e-8) is ours; measured difference 2e-7."""
    model, x, ctx = _setup("vgg11", "features.1", (32, 32))
    ours = normalise(load_method("scorecam").compute(ctx, "features.1", torch.tensor(TARGETS)))
    theirs = _theirs(ScoreCAM, _copy_for_them(model), "features.1", x, ctx)
    assert ours.shape == (2, 32, 32)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-4)


def test_ablationcam():
    """layer2 ends in a ReLU, so its minimum is 0 and their ablation zeroes the channel, as the
    paper does (on signed layers they write min − 1e7 instead). w_k = (S − S_k)/S is a
    difference of nearly equal logits: float32 noise of ~1e-7·|S| from different batch
    compositions (their full forward, our suffix) becomes ~1e-5 of the map (measured 2.3e-5);
    their S has no ε, ours S + 1e-7. Hence 5e-4."""
    model, x, ctx = _setup("resnet18", "layer2", (48, 64))
    assert float(ctx.activation("layer2").min()) == 0
    ours = normalise(load_method("ablationcam").compute(ctx, "layer2", torch.tensor(TARGETS)))
    theirs = _theirs(AblationCAM, _copy_for_them(model), "layer2", x, ctx)
    assert ours.shape == (2, 6, 8)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=5e-4)
