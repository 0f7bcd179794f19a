"""Score-CAM and Ablation-CAM machinery: fx suffix, fallback, chunking, reuse across targets."""

from __future__ import annotations

import warnings

import pytest
import torch
import torchvision
from torch import nn

from featviz.cam import forward_for_cam, load_method, suffix
from featviz.cam.methods import perturbation
from featviz.layers.trace import trace_model


def _model(arch: str) -> nn.Module:
    torch.manual_seed(0)
    return getattr(torchvision.models, arch)(weights=None).eval().requires_grad_(False)


@pytest.fixture(scope="module")
def resnet():
    return _model("resnet18")


@pytest.fixture(scope="module")
def densenet():
    return _model("densenet121")


def _context(model: nn.Module, layer: str, size=(32, 48), n: int = 2):
    x = torch.randn(n, 3, *size, generator=torch.Generator().manual_seed(1))
    return forward_for_cam(model, x, [layer], trace_model(model, (1, 3, *size)).calls())


@pytest.mark.parametrize(
    ("fixture", "layer", "skips"),
    [
        ("resnet", "layer2.0.bn2", True),  # the suffix adds the block's (downsampled) input
        ("resnet", "layer1.0.relu", False),  # a module that runs twice: cut after its last call
        ("resnet", "layer4", False),
        ("densenet", "features.denseblock2.denselayer3", True),  # concatenates earlier outputs
        ("densenet", "features", False),  # in-place ReLU right after the cut
    ],
)
def test_fx_suffix_gives_the_full_models_logits(request, fixture, layer, skips):
    model = request.getfixturevalue(fixture)
    ctx = _context(model, layer)
    method = load_method("ablationcam", batch_size=64)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a fallback would warn
        scores = method.scores(ctx, layer)
    assert method.fallbacks == {}
    k = ctx.activations[layer].shape[1]
    assert scores.shape == (2, k + 1, 1000)
    with torch.no_grad():
        full = model(ctx.inputs)
    # Row 0 of each image is the suffix run on the unablated activations.
    torch.testing.assert_close(scores[:, 0], full, rtol=1e-4, atol=1e-5 * float(full.abs().max()))
    split = suffix.Split(model, layer)
    assert bool(split.batched) is skips


def test_ablated_rows_differ_by_one_channel(resnet):
    """Zeroing channel k of resnet's layer4 changes the logits by exactly fc · mean(A_k)."""
    ctx = _context(resnet, "layer4", size=(64, 64))
    scores = load_method("ablationcam").scores(ctx, "layer4")
    pooled = ctx.activation("layer4").mean(dim=(2, 3))  # (N, K)
    expected = pooled[:, :, None] * resnet.fc.weight.T[None]  # (N, K, classes)
    torch.testing.assert_close(scores[:, :1] - scores[:, 1:], expected, rtol=1e-3, atol=1e-5)


class _Gated(nn.Module):
    """A forward with data-dependent control flow after the tap: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 12, 3, stride=2, padding=1),
            nn.ReLU(),
        )
        self.fc = nn.Linear(12, 4)

    def forward(self, x):
        a = self.features(x)
        if a.amax() > 1e6:
            a = a / a.amax()
        return self.fc(a.mean(dim=(2, 3)))


class _SizeInPrefix(_Gated):
    """Traceable, but the suffix reads a batch size computed before the cut."""

    def forward(self, x):
        n = x.shape[0]
        a = self.features(x)
        return self.fc(a.mean(dim=(2, 3)).view(n, -1))


class _InPlaceInPrefix(_Gated):
    """Traceable, but an in-place op before the cut changes a value the suffix reads, and the
    split's partial forward (which runs only what computes that value) misses it."""

    def forward(self, x):
        skip = self.features[0](x)
        torch.relu_(skip)
        a = self.features[3](self.features[2](self.features[1](skip)))
        return self.fc(a.mean(dim=(2, 3))) + skip.mean(dim=(1, 2, 3))[:, None]


def _reference_ablation(model: nn.Module, ctx, targets: torch.Tensor) -> torch.Tensor:
    """(S − S_k) / (S + ε) by brute force: the whole model, features.3's output replaced by the
    activations with channel k zeroed, one channel at a time; then ReLU(Σ_k w_k A_k)."""
    a = ctx.activation("features.3")
    n, k = a.shape[:2]
    maps = []
    for i in range(n):
        rows = a[i].repeat(k + 1, 1, 1, 1)
        rows[torch.arange(1, k + 1), torch.arange(k)] = 0
        handle = model.features[3].register_forward_hook(lambda *args, rows=rows: rows)
        try:
            scores = model(ctx.inputs[i : i + 1].expand(k + 1, -1, -1, -1))[:, targets[i]]
        finally:
            handle.remove()
        w = (scores[0] - scores[1:]) / (scores[0] + 1e-7)
        maps.append(torch.einsum("k,khw->hw", w, a[i]).clamp(min=0))
    return torch.stack(maps)


@pytest.mark.parametrize(
    ("cls", "reason"),
    [
        (_Gated, r"torch\.fx cannot trace the model: TraceError"),
        (
            _SizeInPrefix,
            r"running the split network failed: ValueError: the layers after the cut read "
            r"'getitem', a value computed before it that is not a tensor with a batch dimension",
        ),
        (_InPlaceInPrefix, r"the split network does not reproduce the model's scores"),
    ],
)
def test_fallback_is_taken_and_reported(cls, reason):
    torch.manual_seed(0)
    model = cls().eval().requires_grad_(False)
    ctx = _context(model, "features.3", size=(12, 16), n=3)
    targets = torch.tensor([0, 3, 1])
    method = load_method("ablationcam", batch_size=5)
    with pytest.warns(
        RuntimeWarning,
        match=f"ablationcam: cannot run only the layers after 'features.3' \\({reason}",
    ):
        ours = method.compute(ctx, "features.3", targets)
    assert list(method.fallbacks) == ["features.3"]
    expected = _reference_ablation(model, ctx, targets)
    assert expected.abs().max() > 0
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4 * expected.abs().max())
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # reported once per layer, not per batch
        method.compute(
            _context(model, "features.3", size=(12, 16)), "features.3", torch.tensor([1, 2])
        )
    assert all(not m._forward_hooks for m in model.modules())


def test_fallback_and_fx_give_the_same_weights(resnet, monkeypatch):
    ctx = _context(resnet, "layer2.0.bn2")
    targets = torch.tensor([4, 9])
    fx_maps = load_method("ablationcam").compute(ctx, "layer2.0.bn2", targets)

    def untraceable(model, layer):
        raise RuntimeError("pretend fx failed")

    monkeypatch.setattr(perturbation, "Split", untraceable)
    method = load_method("ablationcam")
    with pytest.warns(RuntimeWarning, match="pretend fx failed"):
        hooked_maps = method.compute(_context(resnet, "layer2.0.bn2"), "layer2.0.bn2", targets)
    assert method.fallbacks == {
        "layer2.0.bn2": "torch.fx cannot trace the model: RuntimeError: pretend fx failed"
    }
    assert fx_maps.abs().max() > 0
    torch.testing.assert_close(hooked_maps, fx_maps, rtol=1e-4, atol=1e-4 * fx_maps.abs().max())
    assert all(not m._forward_hooks for m in resnet.modules())


@pytest.mark.parametrize("method_name", ["scorecam", "ablationcam"])
def test_chunk_size_does_not_change_the_map(tiny_model, method_name):
    ctx = _context(tiny_model, "features.3", size=(8, 12), n=3)
    targets = torch.tensor([1, 2, 3])
    maps = [
        load_method(method_name, batch_size=size).compute(ctx, "features.3", targets)
        for size in (1, 5, 7, 100)  # chunks of one row, that split images, that hold all three
    ]
    assert maps[0].abs().max() > 0
    for other in maps[1:]:
        torch.testing.assert_close(other, maps[0], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("method_name", ["scorecam", "ablationcam"])
def test_a_second_target_reuses_the_extra_forwards(tiny_model, method_name):
    ctx = _context(tiny_model, "features.3", size=(8, 8))
    forwards = []
    handle = tiny_model.fc.register_forward_hook(lambda *args: forwards.append(1))
    try:
        method = load_method(method_name, batch_size=4)
        first = method.compute(ctx, "features.3", torch.tensor([0, 1]))
        count = len(forwards)
        second = method.compute(ctx, "features.3", torch.tensor([2, 4]))
        assert len(forwards) == count > 0
    finally:
        handle.remove()
    assert not torch.equal(first, second)
