"""forward_for_cam, CamContext and the shared helpers: gradients, hooks, frozen weights, no NaN."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from featviz.cam import forward_for_cam, load_method, method_info, method_names, normalise
from featviz.errors import RunError, UsageError
from featviz.layers.grids import upsample
from featviz.layers.outputs import logits_of
from featviz.layers.trace import trace_model
from featviz.model.load import load_model
from featviz.model.options import ModelRequest

# Methods that read one layer (the rollout methods read attention: tests/test_attention.py;
# the pixel-level ones the input: tests/test_cam_pixel.py).
LAYER_METHODS = [
    name
    for name in method_names()
    if not (method_info(name).needs_attention or method_info(name).pixel_level)
]


def _no_hooks(model: nn.Module) -> bool:
    return all(
        not (m._forward_hooks or m._forward_pre_hooks or m._backward_hooks) for m in model.modules()
    )


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval().requires_grad_(False)
    return model, trace_model(model, (1, 3, 64, 64)).calls()


def test_context_holds_one_forward(resnet):
    model, calls = resnet
    x = torch.randn(2, 3, 64, 96)
    ctx = forward_for_cam(model, x, ["layer4", "layer3"], calls)
    assert ctx.layers == ["layer4", "layer3"]
    assert ctx.activations["layer4"].shape == (2, 512, 2, 3)
    assert ctx.activations["layer3"].shape == (2, 256, 4, 6)
    assert ctx.logits.shape == (2, 1000)
    with torch.no_grad():
        torch.testing.assert_close(ctx.logits.detach(), model(x), rtol=1e-5, atol=1e-6)
    assert _no_hooks(model)


def test_gradients_one_call_for_every_layer_and_image(resnet):
    model, calls = resnet
    x = torch.randn(2, 3, 64, 64)
    ctx = forward_for_cam(model, x, ["layer3", "layer4"], calls)
    grads = ctx.gradients(torch.tensor([5, 9]))
    assert set(grads) == {"layer3", "layer4"}
    # Each image's gradient is its own target's, as if it had been run alone.
    for n, target in enumerate([5, 9]):
        alone = forward_for_cam(model, x[n : n + 1], ["layer3", "layer4"], calls)
        single = alone.gradients(torch.tensor([target]))
        for layer in ("layer3", "layer4"):
            torch.testing.assert_close(grads[layer][n : n + 1], single[layer], rtol=1e-4, atol=1e-7)
    # At layer4, d(score)/dA = fc.weight[c] / (h·w) everywhere: avgpool then fc.
    expected = model.fc.weight[9][:, None, None].expand(512, 2, 2) / 4
    torch.testing.assert_close(grads["layer4"][1], expected, rtol=1e-5, atol=1e-8)


def test_gradients_are_cached_per_targets(resnet):
    model, calls = resnet
    ctx = forward_for_cam(model, torch.randn(2, 3, 64, 64), ["layer4"], calls)
    first = ctx.gradients(torch.tensor([1, 2]))
    assert ctx.gradients(torch.tensor([1, 2])) is first
    other = ctx.gradients(torch.tensor([2, 1]))
    assert other is not first
    torch.testing.assert_close(other["layer4"][0], first["layer4"][1])


def test_no_parameter_gradient_and_weights_stay_frozen(resnet, monkeypatch):
    model, calls = resnet
    ctx = forward_for_cam(model, torch.randn(1, 3, 32, 32), ["layer4"], calls)
    for name in LAYER_METHODS:
        method = load_method(name)
        if hasattr(method, "SAMPLES"):  # one perturbation per channel shows it as well as 35
            monkeypatch.setattr(type(method), "SAMPLES", 1)
        method.compute(ctx, "layer4", torch.tensor([3]))
    assert all(p.grad is None and not p.requires_grad for p in model.parameters())
    assert _no_hooks(model)


def test_works_under_inference_mode(resnet):
    model, calls = resnet
    with torch.inference_mode():
        x = torch.randn(1, 3, 64, 64)
        ctx = forward_for_cam(model, x, ["layer4"], calls)
        grads = ctx.gradients(torch.tensor([0]))
    assert grads["layer4"].abs().sum() > 0


class _Explodes(nn.Module):
    def forward(self, x):
        raise RuntimeError("boom")


def test_hooks_removed_after_an_exception(tiny_model):
    tiny_model.fc = nn.Sequential(_Explodes())
    with pytest.raises(RuntimeError, match="boom"):
        forward_for_cam(tiny_model, torch.randn(1, 3, 8, 8), ["features.1", "features.3"])
    assert _no_hooks(tiny_model)


class _TupleOut(nn.Module):
    def __init__(self, inner: nn.Module, as_dict: str | None = None) -> None:
        super().__init__()
        self.inner = inner
        self.as_dict = as_dict

    def forward(self, x):
        logits = self.inner(x)
        if self.as_dict:
            return {"aux": logits * 0, self.as_dict: logits}
        return logits, logits * 0


@pytest.mark.parametrize(
    ("as_dict", "source"),
    [(None, "output[0]"), ("logits", "output['logits']"), ("x", "output['aux']")],
)
def test_non_tensor_outputs(tiny_model, as_dict, source):
    wrapped = _TupleOut(tiny_model, as_dict)
    kind = "tuple" if as_dict is None else "dict"
    x = torch.randn(2, 3, 8, 8)
    with pytest.warns(UserWarning) as caught:
        ctx = forward_for_cam(wrapped, x, ["inner.features"])
    assert [str(w.message) for w in caught] == [
        f"the model returns a {kind}: featviz explains {source}"
    ]
    assert caught[0].filename == __file__  # it points at the caller's line
    expected = tiny_model(x) * (0 if source == "output['aux']" else 1)
    torch.testing.assert_close(ctx.logits.detach(), expected)


def test_output_without_tensor_is_a_run_error():
    with pytest.raises(RunError, match="the model returned a str with no tensor in it"):
        logits_of("nope")


def test_targets_are_checked(tiny_model):
    ctx = forward_for_cam(tiny_model, torch.randn(2, 3, 8, 8), ["features"])
    with pytest.raises(
        UsageError, match=r"class 5 is out of range: the model has 5 classes \(0–4\)"
    ):
        ctx.gradients(torch.tensor([0, 5]))
    with pytest.raises(ValueError, match=r"targets must be an integer tensor of shape \(2,\)"):
        load_method("gradcam").compute(ctx, "features", torch.tensor([0]))
    with pytest.raises(ValueError, match=r"layer 'features\.1' was not tapped"):
        load_method("gradcam").compute(ctx, "features.1", torch.tensor([0, 1]))


def test_non_spatial_layer_is_refused(tiny_model):
    with pytest.raises(UsageError, match=r"layer 'fc' has output shape \[1, 5\]"):
        forward_for_cam(tiny_model, torch.randn(1, 3, 8, 8), ["fc"])


class _SideBranch(nn.Module):
    """A tapped layer whose output never reaches the logits."""

    def __init__(self) -> None:
        super().__init__()
        self.used = nn.Conv2d(3, 2, 3)
        self.unused = nn.Conv2d(3, 2, 3)
        self.fc = nn.Linear(2, 3)

    def forward(self, x):
        self.unused(x)
        return self.fc(self.used(x).mean(dim=(2, 3)))


def test_layer_off_the_path_has_no_gradient():
    model = _SideBranch().eval().requires_grad_(False)
    ctx = forward_for_cam(model, torch.randn(1, 3, 6, 6), ["unused"])
    with pytest.raises(RunError, match="do not depend on the output of layer 'unused'"):
        ctx.gradients(torch.tensor([0]))


def _all_methods_maps(model, x, layer):
    ctx = forward_for_cam(model, x, [layer], trace_model(model, (1, *x.shape[1:])).calls())
    targets = torch.arange(len(x)) % ctx.num_classes
    return {name: load_method(name).compute(ctx, layer, targets) for name in LAYER_METHODS}


def test_all_zero_activations_give_zero_maps(tiny_model):
    tiny_model.features[2].weight.zero_()
    tiny_model.features[2].bias.zero_()
    maps = _all_methods_maps(tiny_model, torch.zeros(2, 3, 8, 8), "features.3")
    for name, raw in maps.items():
        assert raw.shape == (2, 4, 4), name
        assert torch.equal(raw, torch.zeros_like(raw)), name
        assert torch.equal(normalise(raw), torch.zeros_like(raw)), name


def test_constant_channels_never_give_nan(tiny_model):
    # conv weights 0, biases ±: each tapped channel is constant over space (or 0 after ReLU).
    tiny_model.features[2].weight.zero_()
    tiny_model.features[2].bias.copy_(torch.tensor([0.5, -1.0, 2.0, 0.0, 1.5, -0.2]))
    maps = _all_methods_maps(tiny_model, torch.randn(2, 3, 8, 8), "features.3")
    for name, raw in maps.items():
        assert torch.isfinite(raw).all(), name
        flat = raw.flatten(1)
        assert torch.allclose(flat, flat[:, :1].expand_as(flat), rtol=1e-5, atol=1e-7), name
        assert torch.equal(normalise(raw), torch.zeros_like(raw)), name


def test_normalise_is_per_map_relu_then_min_max():
    maps = torch.tensor(
        [
            [[-1.0, 0.0], [2.0, 4.0]],  # ReLU, then / 4
            [[3.0, 3.0], [3.0, 3.0]],  # constant → zeros
            [[-2.0, -1.0], [-3.0, -4.0]],  # nothing positive → zeros
            [[1.0, 2.0], [3.0, 5.0]],  # min 1 → 0
        ]
    )
    expected = torch.tensor(
        [
            [[0.0, 0.0], [0.5, 1.0]],
            [[0.0, 0.0], [0.0, 0.0]],
            [[0.0, 0.0], [0.0, 0.0]],
            [[0.0, 0.25], [0.5, 1.0]],
        ]
    )
    assert torch.equal(normalise(maps), expected)
    assert torch.equal(maps[0, 0, 0], torch.tensor(-1.0))  # input untouched


def test_upsample_is_bilinear_without_corner_alignment():
    maps = torch.rand(3, 4, 5)
    out = upsample(maps, (8, 15))
    assert out.shape == (3, 8, 15)
    expected = F.interpolate(maps[:, None], size=(8, 15), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out, expected[:, 0])


class _Branchy(nn.Module):
    """Data-dependent control flow: the meta-device trace fails halfway and is redone for real."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        a = self.conv(x)
        if a.amax() > 1e6:
            a = a / 2
        return self.fc(a.mean(dim=(2, 3)))


def test_trace_counts_calls_once_when_the_meta_forward_fails():
    """Regression (featviz/layers.py): the failed meta attempt used to leave its hook records
    behind, every module counted 2 calls, and forward_for_cam then waited for a second call."""
    model = _Branchy().eval().requires_grad_(False)
    calls = trace_model(model, (1, 3, 8, 8)).calls()
    assert calls == {"conv": 1, "fc": 1}
    ctx = forward_for_cam(model, torch.randn(1, 3, 8, 8), ["conv"], calls)
    assert ctx.activations["conv"].shape == (1, 4, 6, 6)


def test_channels_last_models_give_the_same_maps_as_nchw() -> None:
    import copy

    from featviz.cam import forward_for_cam, load_method

    loaded = load_model(ModelRequest("resnet18", weights="none", device="cpu"))  # channels-last
    nchw = copy.deepcopy(loaded.module).to(memory_format=torch.contiguous_format)
    torch.manual_seed(0)
    images = [torch.randn(3, 64, 80) for _ in range(2)]
    targets = torch.tensor([3, 7])
    # ablationcam subtracts nearly equal scores, which amplifies the layouts' different float32
    # rounding (measured 9e-5 of the map's maximum; gradient methods 1e-6).
    for name, tolerance in [("gradcam", 1e-5), ("layercam", 1e-5), ("ablationcam", 5e-4)]:
        method = load_method(name, batch_size=64)
        fast = method.compute(
            forward_for_cam(loaded.module, loaded.batch(images), ["layer3"]), "layer3", targets
        )
        plain = method.compute(
            forward_for_cam(nchw, torch.stack(images), ["layer3"]), "layer3", targets
        )
        torch.testing.assert_close(fast, plain, rtol=0, atol=tolerance * plain.abs().max())
