"""Every method against its formula, recomputed here independently.

The reference splits each network by hand into prefix (input → tapped layer) and suffix (tapped
layer → logits), so A is a plain leaf tensor and g = ∂S/∂A comes from one ``autograd.grad`` with
no hooks at all; the formulas are then evaluated in float64. Random-init torchvision models of
several families (in-place ReLUs after the tap in densenet, skip connections in resnet), a batch
of two non-square images with a different target class per image.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from featviz.cam import forward_for_cam, load_method, normalise
from featviz.cam.context import CamContext
from featviz.errors import UsageError
from featviz.layers.trace import trace_model

TARGETS = torch.tensor([3, 7])
# float32 (ours) vs float64 (reference) from the same float32 A and g: ~1e-6 relative.
RTOL = 1e-4


@dataclass
class Case:
    model: nn.Module
    layer: str
    x: torch.Tensor | None  # set once the model is built (seeded)
    prefix: Callable[[torch.Tensor], torch.Tensor] | None
    suffix: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (A rows, their images)


def _resnet18_layer4() -> Case:
    m = torchvision.models.resnet18(weights=None)
    prefix = nn.Sequential(
        m.conv1, m.bn1, m.relu, m.maxpool, m.layer1, m.layer2, m.layer3, m.layer4
    )
    return Case(m, "layer4", None, prefix, lambda a, x: m.fc(torch.flatten(m.avgpool(a), 1)))


def _resnet18_inside_block() -> Case:
    """Tap inside layer2.0: the suffix needs the block's input again (downsampled identity)."""
    m = torchvision.models.resnet18(weights=None)
    block = m.layer2[0]
    stem = nn.Sequential(m.conv1, m.bn1, m.relu, m.maxpool, m.layer1)
    inner = nn.Sequential(block.conv1, block.bn1, block.relu, block.conv2, block.bn2)

    def suffix(a, x):
        out = F.relu(a + block.downsample(stem(x)))
        out = m.layer4(m.layer3(m.layer2[1](out)))
        return m.fc(torch.flatten(m.avgpool(out), 1))

    return Case(m, "layer2.0.bn2", None, lambda x: inner(stem(x)), suffix)


def _vgg11() -> Case:
    m = torchvision.models.vgg11(weights=None)
    features = m.features
    return Case(
        m,
        "features.19",
        None,
        features[:20],
        lambda a, x: m.classifier(torch.flatten(m.avgpool(features[20](a)), 1)),
    )


def _densenet121() -> Case:
    """The default layer ``features`` ends at norm5; densenet's forward then applies an
    in-place ReLU, which must not touch the stored activations."""
    m = torchvision.models.densenet121(weights=None)
    return Case(
        m,
        "features",
        None,
        m.features,
        lambda a, x: m.classifier(torch.flatten(F.adaptive_avg_pool2d(F.relu(a), 1), 1)),
    )


def _mnasnet() -> Case:
    m = torchvision.models.mnasnet0_5(weights=None)
    return Case(m, "layers", None, m.layers, lambda a, x: m.classifier(a.mean(dim=(2, 3))))


def _mobilenet_v3() -> Case:
    m = torchvision.models.mobilenet_v3_small(weights=None)
    return Case(
        m, "features", None, m.features, lambda a, x: m.classifier(torch.flatten(m.avgpool(a), 1))
    )


BUILDERS = {
    "resnet18/layer4": _resnet18_layer4,
    "resnet18/layer2.0.bn2": _resnet18_inside_block,
    "vgg11/features.19": _vgg11,
    "densenet121/features": _densenet121,
    "mnasnet0_5/layers": _mnasnet,
    "mobilenet_v3_small/features": _mobilenet_v3,
}


@dataclass
class Prepared:
    case: Case
    ctx: CamContext  # featviz's forward of the same batch
    a: torch.Tensor  # (N, K, h, w) float64, captured without featviz
    g: torch.Tensor | None  # (N, K, h, w) float64, d logits[n, TARGETS[n]] / dA


_PREPARED: dict[str, Prepared] = {}


def prepared(key: str) -> Prepared:
    """Build each case once per test session (densenet's init alone takes a second)."""
    if key not in _PREPARED:
        torch.manual_seed(0)
        case = BUILDERS[key]()
        case.model.eval().requires_grad_(False)
        case.x = torch.randn(2, 3, 64, 96)
        with torch.no_grad():
            full = case.model(case.x)
        a = case.prefix(case.x).detach().requires_grad_()
        logits = case.suffix(a, case.x)
        torch.testing.assert_close(logits.detach(), full, rtol=1e-4, atol=1e-4 * full.abs().max())
        (g,) = torch.autograd.grad(logits[torch.arange(2), TARGETS].sum(), a)
        calls = trace_model(case.model, (1, 3, 64, 96)).calls()
        ctx = forward_for_cam(case.model, case.x, [case.layer], calls)
        _PREPARED[key] = Prepared(case, ctx, a.detach().double(), g.double())
    return _PREPARED[key]


def _relu(t: torch.Tensor) -> torch.Tensor:
    return t.clamp(min=0)


def _weighted(w: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    return _relu((w[:, :, None, None] * a).sum(dim=1))


def ref_gradcam(a, g):
    return _weighted(g.mean(dim=(2, 3)), a)


def ref_gradcam_pp(a, g):
    # Eq. 19 literally: the spatial SUM of A times g³.
    numerator = g**2
    denominator = 2 * g**2 + a.sum(dim=(2, 3), keepdim=True) * g**3
    alpha = torch.zeros_like(g)
    nonzero = denominator != 0
    alpha[nonzero] = numerator[nonzero] / denominator[nonzero]
    return _weighted((alpha * _relu(g)).sum(dim=(2, 3)), a)


def ref_xgradcam(a, g):
    w = ((a / (a.sum(dim=(2, 3), keepdim=True) + 1e-7)) * g).sum(dim=(2, 3))
    return _weighted(w, a)


def ref_layercam(a, g):
    return _relu((_relu(g) * a).sum(dim=1))


def ref_hirescam(a, g):
    return (g * a).sum(dim=1)


def ref_eigencam(a, g):
    """The first principal direction of each image's centred (h·w, K) matrix, in float64; among
    singular values tied within 1e-3 of the first, the direction of their span closest to the
    channel-mean axis; that axis orthogonal to them (LayerNorm outputs), the one through the
    position they represent most strongly."""
    _, k, h, w = a.shape
    maps = []
    for image in a.double():
        matrix = image.reshape(k, h * w).T
        centred = matrix - matrix.mean(dim=0)
        _, s, vh = torch.linalg.svd(centred, full_matrices=False)
        basis = vh[s >= s[0] * (1 - 1e-3)]  # (m, K)
        along_mean = basis @ torch.full((k,), k**-0.5, dtype=basis.dtype)
        if along_mean.norm() >= 1e-4:
            direction = along_mean @ basis
        else:
            coordinates = centred @ basis.T
            direction = coordinates[coordinates.norm(dim=1).argmax()] @ basis
        projection = centred @ (direction / direction.norm())
        maps.append(_relu(projection).reshape(h, w))
    return torch.stack(maps)


GRADIENT_REFERENCES = {
    "gradcam": ref_gradcam,
    "gradcam++": ref_gradcam_pp,
    "xgradcam": ref_xgradcam,
    "layercam": ref_layercam,
    "hirescam": ref_hirescam,
    "eigencam": ref_eigencam,
}


def assert_maps_close(ours: torch.Tensor, reference: torch.Tensor, rtol: float = RTOL) -> None:
    assert ours.dtype == torch.float32
    scale = float(reference.abs().max())
    assert scale > 0, "a reference of zeros would test nothing"
    torch.testing.assert_close(ours.double(), reference, rtol=rtol, atol=rtol * scale)


def _tolerance(key: str, method: str) -> float:
    # xgradcam divides by Σ_ab A_kab. Where activations are signed (densenet's norm5 before its
    # ReLU, mobilenet's hardswish) a channel's sum can come close to 0 and 1/ΣA amplifies the
    # float32 rounding of that sum: measured 3e-4 (densenet) and 1.8e-3 (mobilenet) of the
    # map's maximum against the float64 reference, 1e-6 everywhere else.
    if method == "xgradcam" and key in ("densenet121/features", "mobilenet_v3_small/features"):
        return 5e-3
    return RTOL


@pytest.mark.parametrize("method", list(GRADIENT_REFERENCES))
@pytest.mark.parametrize("key", list(BUILDERS))
def test_gradient_and_projection_methods(key, method):
    p = prepared(key)
    ours = load_method(method).compute(p.ctx, p.case.layer, TARGETS)
    assert ours.shape == (2, *p.a.shape[2:])
    assert_maps_close(ours, GRADIENT_REFERENCES[method](p.a, p.g), _tolerance(key, method))


def test_hirescam_keeps_negative_values():
    p = prepared("vgg11/features.19")
    ours = load_method("hirescam").compute(p.ctx, p.case.layer, TARGETS)
    assert (ours < 0).any() and (ours > 0).any()


@pytest.mark.parametrize(
    ("key", "rectified"),
    [("resnet18/layer4", False), ("mnasnet0_5/layers", False), ("densenet121/features", True)],
)
def test_cam_uses_the_final_linear(key, rectified):
    p = prepared(key)
    fc = [m for m in p.case.model.modules() if isinstance(m, nn.Linear)][-1]
    features = _relu(p.a) if rectified else p.a
    expected = _weighted(fc.weight.double()[TARGETS], features)
    assert_maps_close(load_method("cam").compute(p.ctx, p.case.layer, TARGETS), expected)


@pytest.mark.parametrize(
    ("key", "layer"),
    [("vgg11/features.19", "features.19"), ("mobilenet_v3_small/features", "features")],
)
def test_cam_refuses_other_heads(key, layer):
    p = prepared(key)
    with pytest.raises(UsageError, match=f"one Linear after layer '{layer}'$") as caught:
        load_method("cam").compute(p.ctx, p.case.layer, TARGETS)
    assert caught.value.hint == "use --method gradcam, which works on any layer"


def test_cam_refuses_alexnet():
    torch.manual_seed(0)
    model = torchvision.models.alexnet(weights=None).eval().requires_grad_(False)
    ctx = forward_for_cam(model, torch.randn(1, 3, 96, 96), ["features.11"])
    message = (
        "method 'cam' needs a network that ends in global-average-pool → one Linear after "
        "layer 'features.11'"
    )
    with pytest.raises(UsageError, match=f"^{message}$"):
        load_method("cam").compute(ctx, "features.11", torch.tensor([0]))


def test_cam_refuses_a_resnet_layer_before_the_last():
    p = prepared("resnet18/layer2.0.bn2")
    with pytest.raises(UsageError, match=r"one Linear after layer 'layer2\.0\.bn2'"):
        load_method("cam").compute(p.ctx, p.case.layer, TARGETS)


def test_resnet_identity_at_layer4():
    """g is constant over space at layer4 (avgpool → fc): four methods, one normalised map."""
    p = prepared("resnet18/layer4")
    maps = {
        name: normalise(load_method(name).compute(p.ctx, "layer4", TARGETS))
        for name in ("cam", "gradcam", "hirescam", "xgradcam")
    }
    assert maps["gradcam"].amax(dim=(1, 2)).eq(1).all()
    for name in ("cam", "hirescam", "xgradcam"):
        torch.testing.assert_close(maps[name], maps["gradcam"], rtol=0, atol=1e-5)


def test_eigencam_sign_follows_the_mean_activation():
    p = prepared("vgg11/features.19")
    ours = load_method("eigencam").compute(p.ctx, p.case.layer, TARGETS)
    mean_map = p.a.mean(dim=1).float()
    for image, mean in zip(ours, mean_map):
        # Where the layer is most active overall, the sign-fixed projection is high, not zero.
        assert image.flatten()[mean.flatten().argmax()] > 0
    # Class-agnostic: the same map whatever the targets.
    torch.testing.assert_close(
        load_method("eigencam").compute(p.ctx, p.case.layer, torch.tensor([0, 1])), ours
    )


# ---- perturbation methods: independent extra forwards, small K keeps them cheap ----


def _hooked_suffix(model: nn.Module, layer: str):
    """The whole model with a hook that swaps in the given activations: a reference suffix for
    a tap deep inside a dense block, written independently of featviz."""
    module = model.get_submodule(layer)

    def suffix(a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        handle = module.register_forward_hook(lambda mod, inputs, output: a)
        try:
            return model(x)
        finally:
            handle.remove()

    return suffix


def _densenet_inner() -> Prepared:
    """densenet121 tapped inside a dense block: the suffix concatenates many earlier outputs."""
    base = prepared("densenet121/features")
    model = base.case.model
    layer = "features.denseblock1.denselayer2"
    x = torch.randn(2, 3, 32, 48, generator=torch.Generator().manual_seed(1))
    captured = []
    handle = model.get_submodule(layer).register_forward_hook(
        lambda mod, inputs, output: captured.append(output.detach().clone())
    )
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    ctx = forward_for_cam(model, x, [layer])
    case = Case(model, layer, x, None, _hooked_suffix(model, layer))
    return Prepared(case, ctx, captured[0].double(), None)


PERTURBATION_CASES = {
    "resnet18/layer2.0.bn2": lambda: prepared("resnet18/layer2.0.bn2"),
    "densenet121/features.denseblock1.denselayer2": _densenet_inner,
}


def ref_ablationcam(p: Prepared) -> torch.Tensor:
    a = p.a.float()
    n, k = a.shape[:2]
    maps = []
    with torch.no_grad():
        for i in range(n):
            rows = a[i].repeat(k + 1, 1, 1, 1)
            rows[torch.arange(1, k + 1), torch.arange(k)] = 0
            images = p.case.x[i : i + 1].expand(k + 1, -1, -1, -1)
            scores = p.case.suffix(rows, images)[:, TARGETS[i]].double()
            w = (scores[0] - scores[1:]) / (scores[0] + 1e-7)
            maps.append(_weighted(w[None], p.a[i : i + 1])[0])
    return torch.stack(maps)


def ref_scorecam(p: Prepared) -> torch.Tensor:
    a = p.a.float()
    x = p.case.x
    maps = []
    with torch.no_grad():
        for i in range(len(a)):
            up = F.interpolate(
                a[i : i + 1], size=x.shape[-2:], mode="bilinear", align_corners=False
            )
            up = up[0].double()
            low = up.amin(dim=(1, 2), keepdim=True)
            masks = (up - low) / (up.amax(dim=(1, 2), keepdim=True) - low + 1e-8)
            scores = p.case.model((x[i] * masks[:, None]).float())[:, TARGETS[i]].double()
            maps.append(_weighted(torch.softmax(scores, dim=0)[None], p.a[i : i + 1])[0])
    return torch.stack(maps)


@pytest.mark.parametrize("key", PERTURBATION_CASES)
def test_ablationcam(key):
    p = PERTURBATION_CASES[key]()
    method = load_method("ablationcam", batch_size=48)
    ours = method.compute(p.ctx, p.case.layer, TARGETS)
    assert method.fallbacks == {}  # the fx suffix was used
    assert_maps_close(ours, ref_ablationcam(p))


@pytest.mark.parametrize("key", PERTURBATION_CASES)
def test_scorecam(key):
    p = PERTURBATION_CASES[key]()
    ours = load_method("scorecam", batch_size=48).compute(p.ctx, p.case.layer, TARGETS)
    assert_maps_close(ours, ref_scorecam(p))
