"""The layer methods that came from pytorch-grad-cam 1.5.7, against it on the same model, layer,
images and targets: random-init resnet18 and vgg16 (seeded, as ``--weights none``) and the real
EfficientNet-Lite0 on a photo.

Compared at layer resolution, as tests/test_cam_reference.py does: their
``get_target_width_height`` is pointed at the layer's own (w, h), so their output is ReLU +
min-max normalisation of the raw map, which is what ``normalise`` does. Their capture calls
``backward``, which needs a graph through the layer: their model has its first parameter
requiring grad (weight gradients for the rest, vgg16's 100 M classifier weights, would only cost
time). It is the random-init model itself once our forward is done, and a copy of the shared
Lite0.
"""

from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import pytest
import torch
import torchvision
from conftest import SAMPLES
from PIL import Image
from pytorch_grad_cam import (
    FEM,
    KPCA_CAM,
    EigenGradCAM,
    FinerCAM,
    GradCAMElementWise,
    ShapleyCAM,
)
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection

from featviz.cam import forward_for_cam, load_method, normalise
from featviz.inputs.preprocess import to_tensor
from featviz.layers.trace import trace_model

TARGETS = [3, 7]
# Float32 on both sides, summed in different orders: ≤ 2e-6 measured on maps in [0, 1]. 1e-4
# still catches any formula difference (a missing ReLU, a mean for a sum: > 1e-2).
ATOL = 1e-4

DETERMINISTIC = {
    "gradcamelementwise": GradCAMElementWise,
    "fem": FEM,
    "kpcacam": KPCA_CAM,
    "shapleycam": ShapleyCAM,
}


def _theirs(cls, theirs_model, layer: str, x: torch.Tensor, ctx, targets) -> torch.Tensor:
    """Their public output, at the layer's resolution."""
    h, w = ctx.activation(layer).shape[-2:]
    cam = cls(model=theirs_model, target_layers=[theirs_model.get_submodule(layer)])
    cam.get_target_width_height = lambda input_tensor: (w, h)
    with cam:
        out = cam(input_tensor=x, targets=[ClassifierOutputTarget(t) for t in targets])
    return torch.from_numpy(out)


def _random_init(arch: str, layer: str, size: tuple[int, int]):
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(weights=None).eval().requires_grad_(False)
    x = torch.randn(2, 3, *size)
    calls = trace_model(model, (1, 3, *size)).calls()
    return model, layer, x, forward_for_cam(model, x, [layer], calls), TARGETS


@pytest.fixture(
    scope="module",
    params=[("resnet18", "layer4"), ("vgg16", "features.29"), ("lite0", "bn2")],
    ids=["resnet18", "vgg16", "lite0"],
)
def setup(request):
    """(their model, layer, inputs, our context, targets) on each of the three networks."""
    arch, layer = request.param
    if arch != "lite0":
        model, layer, x, ctx, targets = _random_init(arch, layer, (64, 96))
        next(model.parameters()).requires_grad_(True)
        return model, layer, x, ctx, targets
    lite0 = request.getfixturevalue("lite0")
    model = lite0.module
    image = Image.open(SAMPLES / "cat_and_coffee.png").convert("RGB")
    x = to_tensor(image, replace(lite0.preprocessing, input_size=96))[None]
    calls = trace_model(model, tuple(x.shape)).calls()
    ctx = forward_for_cam(model, x, [layer], calls)
    theirs = copy.deepcopy(model)
    next(theirs.parameters()).requires_grad_(True)
    return theirs, layer, x, ctx, [281]  # tabby


@pytest.mark.parametrize("method", list(DETERMINISTIC))
def test_same_map_as_pytorch_grad_cam(setup, method):
    theirs_model, layer, x, ctx, targets = setup
    ours = normalise(load_method(method).compute(ctx, layer, torch.tensor(targets)))
    if method == "shapleycam":
        if isinstance(theirs_model, torchvision.models.VGG):
            # Their Hessian-vector product needs weights that require grad after the layer,
            # 100 M of them here; H = 0 after vgg16's last ReLU (see the test below).
            gradcam = load_method("gradcam").compute(ctx, layer, torch.tensor(targets))
            torch.testing.assert_close(ours, normalise(gradcam), rtol=0, atol=1e-6)
            return
        theirs_model = copy.deepcopy(theirs_model).requires_grad_(True)
    theirs = _theirs(DETERMINISTIC[method], theirs_model, layer, x, ctx, targets)
    assert theirs.shape == ours.shape == (len(targets), *ctx.activation(layer).shape[2:])
    assert theirs.amax(dim=(1, 2)).gt(0.99).all()  # real maps, not zeros
    torch.testing.assert_close(ours, theirs, rtol=0, atol=ATOL)


def test_eigengradcam_up_to_the_sign(setup):
    """Their SVD sign is arbitrary; ours is fixed as eigencam's. Each image matches their map
    or the map of the flipped projection."""
    theirs_model, layer, x, ctx, targets = setup
    ours = normalise(load_method("eigengradcam").compute(ctx, layer, torch.tensor(targets)))
    theirs = _theirs(EigenGradCAM, theirs_model, layer, x, ctx, targets)
    evidence = ctx.gradients(torch.tensor(targets))[layer] * ctx.activation(layer)
    flipped = normalise(-torch.from_numpy(get_2d_projection(evidence.numpy())))
    for n in range(len(ours)):
        same = torch.allclose(ours[n], theirs[n], rtol=0, atol=ATOL)
        other = torch.allclose(ours[n], flipped[n], rtol=0, atol=ATOL)
        assert same or other, n


def test_finercam(setup):
    """Their FinerCAM (GradCAM base, α = 1, the 3 classes nearest in score), one image at a
    time with ``target_idx`` = that image's target."""
    theirs_model, layer, x, ctx, targets = setup
    ours = normalise(load_method("finercam").compute(ctx, layer, torch.tensor(targets)))
    h, w = ctx.activation(layer).shape[-2:]
    for n, target in enumerate(targets):
        cam = FinerCAM(theirs_model, [theirs_model.get_submodule(layer)])
        cam.base_cam.get_target_width_height = lambda input_tensor: (w, h)
        with cam:
            theirs = torch.from_numpy(cam(x[n : n + 1], target_idx=target))
        torch.testing.assert_close(ours[n : n + 1], theirs, rtol=0, atol=ATOL)


def test_finercam_differs_from_gradcam(setup):
    """The contrast changes the map: it is not Grad-CAM under another name."""
    _, layer, _, ctx, targets = setup
    finer = normalise(load_method("finercam").compute(ctx, layer, torch.tensor(targets)))
    plain = normalise(load_method("gradcam").compute(ctx, layer, torch.tensor(targets)))
    assert (finer - plain).abs().amax() > 0.05


class _Curved(torch.nn.Module):
    """conv → ReLU → conv (the tapped layer) → tanh → conv → GELU → pool → Linear: smooth
    after the tap, with activations of order 1, so the Hessian there is far from zero."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU())
        self.tapped = torch.nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.head = torch.nn.Sequential(
            torch.nn.Tanh(),
            torch.nn.Conv2d(8, 8, 1),
            torch.nn.GELU(),
            torch.nn.AdaptiveAvgPool2d(1),
        )
        self.fc = torch.nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.head(self.tapped(self.stem(x))), 1))


def test_shapleycam_where_the_hessian_is_not_zero():
    """After resnet18's layer4 (pool → Linear) or vgg16's last ReLU the score is piecewise
    linear in A, so H·A = 0 and shapleycam is gradcam. With tanh and GELU after the tap the
    maps differ from gradcam's and still match pytorch-grad-cam's."""
    torch.manual_seed(0)
    model = _Curved().eval().requires_grad_(False)
    x = torch.randn(2, 3, 16, 16) * 3
    ctx = forward_for_cam(model, x, ["tapped"], trace_model(model, (1, 3, 16, 16)).calls())
    ours = normalise(load_method("shapleycam").compute(ctx, "tapped", torch.tensor(TARGETS)))
    plain = normalise(load_method("gradcam").compute(ctx, "tapped", torch.tensor(TARGETS)))
    assert (ours - plain).abs().amax() > 0.02  # measured 0.03
    theirs_model = copy.deepcopy(model).requires_grad_(True)
    theirs = _theirs(ShapleyCAM, theirs_model, "tapped", x, ctx, TARGETS)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=ATOL)


def test_kpcacam_and_fem_are_class_agnostic(setup):
    _, layer, _, ctx, _ = setup
    for name in ("kpcacam", "fem"):
        method = load_method(name)
        zeros = torch.zeros(ctx.logits.shape[0], dtype=torch.long)
        first = method.compute(ctx, layer, zeros)
        assert torch.equal(first, method.compute(ctx, layer, zeros + 1))
        assert not method.info.class_specific and not method.info.needs_gradients


def test_fem_weights_against_its_formula():
    """w_k = share of positions above mean + 2·std, checked in float64 on a made-up layer."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(1, 5, 6, 7, generator=gen).exp()
    flat = a.double().flatten(2)
    threshold = flat.mean(dim=2) + 2 * flat.std(dim=2, unbiased=False)
    weights = (flat > threshold[..., None]).double().mean(dim=2)
    expected = np.einsum("nk,nkhw->nhw", weights.numpy(), a.double().numpy())
    ctx = _fixed_context(a)
    ours = load_method("fem").compute(ctx, "layer", torch.tensor([0]))
    np.testing.assert_allclose(ours.numpy(), expected, rtol=1e-6)
    assert (weights > 0).any() and (weights < 1).all()


def _fixed_context(activations: torch.Tensor):
    """A context around given activations (for the methods that read nothing else)."""
    from featviz.cam.context import CamContext

    n = activations.shape[0]
    return CamContext(
        model=torch.nn.Identity(),
        inputs=torch.zeros(n, 3, 32, 32),
        logits=torch.zeros(n, 2),
        activations={"layer": activations},
        layers=["layer"],
    )
