"""SS-CAM, IS-CAM and Smooth Grad-CAM++ against torchcam 0.5, with torchcam's noise patched to
featviz's draws (``CamContext.generator``), and Smooth Grad-CAM++ against an independent
recomputation of its formula.

Every extra forward is a full one, so the layers here have few channels (resnet18 ``layer1``: 64,
EfficientNet-Lite0 ``blocks.1``: 24) and the perturbation counts are 3 on both sides: the count
is a loop bound, not part of what is compared. vgg16 is left to tests/test_cam_peers_layer.py:
its 100 M-weight classifier makes each of the ~400 forwards here cost as much as a resnet18's
whole test.
"""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch
import torchvision
from conftest import SAMPLES
from PIL import Image
from torchcam.methods import ISCAM, SSCAM, SmoothGradCAMpp

from featviz.cam import forward_for_cam, load_method, normalise
from featviz.cam.methods.smoothed import IsCam, SmoothGradCamPlusPlus, SsCam
from featviz.inputs.preprocess import to_tensor
from featviz.layers.trace import trace_model

TARGETS = [3, 7]
DRAWS = 3
# Float32 on both sides: the scores of the same masked inputs agree to ~1e-6 relative, the
# softmax over channels and normalised maps to ≤ 1e-5 measured. 1e-4 catches any formula
# difference (masks scaled after upsampling instead of before: > 1e-2).
ATOL = 1e-4


class _PatchedNoise:
    """Stands in for torchcam's ``Normal(0, σ)``: call m returns, stacked over the images, image
    i's m-th draw from its featviz generator, as the featviz method draws it."""

    def __init__(self, ctx, per_image_shape: tuple[int, ...], sigma: float) -> None:
        self.generators = [ctx.generator(i) for i in range(len(ctx.inputs))]
        self.shape, self.sigma = per_image_shape, sigma

    def sample(self, size: torch.Size) -> torch.Tensor:
        draws = [torch.randn(self.shape, generator=g) for g in self.generators]
        noise = self.sigma * torch.stack(draws)
        assert noise.shape == size
        return noise


def _setup(arch: str, layer: str, size: tuple[int, int], request):
    if arch == "lite0":
        lite0 = request.getfixturevalue("lite0")
        model = lite0.module
        image = Image.open(SAMPLES / "cat_and_coffee.png").convert("RGB")
        x = to_tensor(image, replace(lite0.preprocessing, input_size=size[0]))[None]
        targets = [281]  # tabby
    else:
        torch.manual_seed(0)
        model = getattr(torchvision.models, arch)(weights=None).eval().requires_grad_(False)
        x = torch.randn(2, 3, *size)
        targets = TARGETS
    ctx = forward_for_cam(model, x, [layer], trace_model(model, tuple(x.shape)).calls())
    ctx.seeds = tuple(11 + i for i in range(len(x)))
    return model, x, ctx, targets


@pytest.fixture(
    scope="module",
    params=[("resnet18", "layer1"), ("lite0", "blocks.1")],
    ids=["resnet18", "lite0"],
)
def setup(request):
    arch, layer = request.param
    model, x, ctx, targets = _setup(arch, layer, (32, 32), request)
    return model, layer, x, ctx, targets


@pytest.mark.parametrize("name", ["sscam", "iscam"])
def test_same_map_as_torchcam(setup, name, monkeypatch):
    model, layer, x, ctx, targets = setup
    k, (h, w) = ctx.activation(layer).shape[1], x.shape[-2:]
    cls = {"sscam": SsCam, "iscam": IsCam}[name]
    monkeypatch.setattr(cls, "SAMPLES", DRAWS)
    # One chunk per draw and image: featviz then draws each image's noise (K, H, W) at a time,
    # torchcam (N, K, H, W).
    ours = normalise(load_method(name, batch_size=k).compute(ctx, layer, torch.tensor(targets)))
    theirs_cls = {"sscam": SSCAM, "iscam": ISCAM}[name]
    with theirs_cls(model, layer, batch_size=k, num_samples=DRAWS) as extractor:
        if name == "sscam":
            extractor._distrib = _PatchedNoise(ctx, (k, h, w), SsCam.SIGMA)
        with torch.no_grad():
            model(x)
        [theirs] = extractor(class_idx=targets)
    assert ours.shape == theirs.shape == (len(targets), *ctx.activation(layer).shape[2:])
    assert theirs.amax(dim=(1, 2)).gt(0.99).all()
    torch.testing.assert_close(ours, theirs, rtol=0, atol=ATOL)


def test_sscam_noise_is_seeded_per_image(setup, monkeypatch):
    """Another seed, another map; the same seed, the same map, also for the image alone."""
    model, layer, x, ctx, targets = setup
    monkeypatch.setattr(SsCam, "SAMPLES", DRAWS)
    method = load_method("sscam")
    first = method.compute(ctx, layer, torch.tensor(targets))
    assert torch.equal(first, load_method("sscam").compute(ctx, layer, torch.tensor(targets)))
    alone = forward_for_cam(model, x[-1:], [layer], ctx.calls)
    alone.seeds = ctx.seeds[-1:]
    torch.testing.assert_close(
        method.compute(alone, layer, torch.tensor(targets[-1:]))[0], first[-1], rtol=1e-4, atol=0
    )
    ctx2 = forward_for_cam(model, x, [layer], ctx.calls)
    ctx2.seeds = tuple(s + 1 for s in ctx.seeds)
    other = method.compute(ctx2, layer, torch.tensor(targets))
    assert (normalise(other) - normalise(first)).abs().amax() > 1e-3


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval().requires_grad_(False)
    x = torch.randn(2, 3, 32, 32)
    ctx = forward_for_cam(
        model, x, ["layer3", "layer4"], trace_model(model, (1, 3, 32, 32)).calls()
    )
    ctx.seeds = (5, 9)
    return model, x, ctx


def test_smoothgradcampp_without_noise_is_gradcampp(resnet, monkeypatch):
    model, x, shared = resnet
    # A context of its own: the moments it caches are those of σ = 0.
    ctx = forward_for_cam(model, x, ["layer3", "layer4"], shared.calls)
    monkeypatch.setattr(SmoothGradCamPlusPlus, "SIGMA", 0.0)
    for layer in ("layer3", "layer4"):
        ours = load_method("smoothgradcam++").compute(ctx, layer, torch.tensor(TARGETS))
        plain = load_method("gradcam++").compute(ctx, layer, torch.tensor(TARGETS))
        torch.testing.assert_close(normalise(ours), normalise(plain), rtol=0, atol=1e-5)


def test_smoothgradcampp_against_its_formula(resnet):
    """resnet18 split by hand at layer3 (prefix → A, suffix → scores, no hooks), with the noise
    featviz draws: D_p = mean_s g_s^p, a = D2 / (2·D2 + ΣA·D3), w = Σ a·ReLU(D1). In float32
    as featviz: eq. 19's denominator comes near 0 for some channels of a random-init network,
    where float64 would differ by a few % for rounding alone."""
    model, x, ctx = resnet
    m = model
    prefix = torch.nn.Sequential(m.conv1, m.bn1, m.relu, m.maxpool, m.layer1, m.layer2, m.layer3)

    def suffix(a):
        return m.fc(torch.flatten(m.avgpool(m.layer4(a)), 1))

    draws = SmoothGradCamPlusPlus.SAMPLES
    noise = torch.stack(
        [torch.randn((draws, 3, 32, 32), generator=ctx.generator(i)) for i in range(2)]
    )
    rows, targets = torch.arange(2), torch.tensor(TARGETS)
    powers = []
    for s in range(draws):
        a = prefix(x + SmoothGradCamPlusPlus.SIGMA * noise[:, s]).requires_grad_()
        (g,) = torch.autograd.grad(suffix(a)[rows, targets].sum(), a)
        powers.append(torch.stack([g, g**2, g**3]))
    d1, d2, d3 = torch.stack(powers).mean(dim=0)
    clean = prefix(x)
    denominator = 2 * d2 + clean.sum(dim=(2, 3), keepdim=True) * d3
    alpha = torch.where(denominator != 0, d2 / denominator, 0)
    weights = (alpha * d1.clamp(min=0)).sum(dim=(2, 3))
    expected = torch.einsum("nk,nkhw->nhw", weights, clean).clamp(min=0)
    ours = load_method("smoothgradcam++", batch_size=3).compute(ctx, "layer3", targets)
    assert expected.amax() > 0
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-5 * float(expected.amax()))


def test_smoothgradcampp_weights_as_torchcam_where_the_formulas_meet(resnet, monkeypatch):
    """At resnet18's layer4 the gradient is fc.weight[c] / (h·w) at every position and for
    every input, so torchcam's three departures (see SmoothGradCamPlusPlus) vanish from its
    channel weights: with one draw of the same noise they equal ours. The last Linear is scaled
    by 1e3 so that torchcam's ε = 1e-8 next to g² (~1e-5 unscaled) does not count."""
    model, x, _ = resnet
    model = copy.deepcopy(model)
    model.fc.weight.mul_(1e3)
    model.fc.bias.mul_(1e3)
    ctx = forward_for_cam(model, x, ["layer4"], trace_model(model, (1, 3, 32, 32)).calls())
    ctx.seeds = (5, 9)
    monkeypatch.setattr(SmoothGradCamPlusPlus, "SAMPLES", 1)
    ours = SmoothGradCamPlusPlus()._weights(ctx, "layer4", torch.tensor(TARGETS))
    with SmoothGradCAMpp(model, "layer4", num_samples=1) as extractor:
        extractor._distrib = _PatchedNoise(ctx, (3, 32, 32), SmoothGradCamPlusPlus.SIGMA)
        model(x)
        [theirs] = extractor._get_weights(TARGETS)
    assert theirs.abs().amax() > 0
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-6 * float(theirs.abs().max()))
