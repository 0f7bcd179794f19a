"""Layer-wise relevance propagation: the rules against their formulas, ``lrp`` against zennit's
EpsilonGammaBox composite on VGG16 (random-init, seeded) with relevance conserved, the hooks
always removed, and ``lrp`` / ``attnlrp`` through the command line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from conftest import image_folder
from PIL import Image
from torch import nn
from typer.testing import CliRunner

import featviz
from featviz.cam.methods.lrp import RelevanceRules, composite_rule, lrp_relevance
from featviz.cam.methods.lrp_rules import Epsilon, Gamma, ZBox, stabilise
from featviz.cli.app import app
from featviz.inputs.preprocess import normalise

MEAN = torch.tensor([0.485, 0.456, 0.406])
STD = torch.tensor([0.229, 0.224, 0.225])
LOW, HIGH = (0 - MEAN) / STD, (1 - MEAN) / STD


def _pixels(n: int, size: int, seed: int) -> torch.Tensor:
    """``n`` random images, normalised as ImageNet's."""
    images = torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))
    return (images - MEAN[:, None, None]) / STD[:, None, None]


def _linear(seed: int, bias: bool) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(6, 4, bias=bias).requires_grad_(False)


def test_epsilon_rule_is_the_formula_and_the_bias_keeps_its_share() -> None:
    layer = _linear(0, bias=True)
    x = torch.randn(3, 6, generator=torch.Generator().manual_seed(1))
    r_out = torch.randn(3, 4, generator=torch.Generator().manual_seed(2))
    z = layer(x)
    expected = x * ((r_out / stabilise(z, 1e-6)) @ layer.weight)
    r_in = Epsilon(1e-6).relevance(layer, x, z, r_out)
    torch.testing.assert_close(r_in, expected)
    torch.testing.assert_close(
        r_in.sum(1), (r_out * (z - layer.bias) / z).sum(1), rtol=1e-4, atol=0
    )


def test_gamma_rule_is_the_formula_and_gamma_zero_is_epsilon() -> None:
    layer = _linear(3, bias=False)
    x = torch.rand(3, 6, generator=torch.Generator().manual_seed(4))  # after a ReLU: x ≥ 0
    r_out = torch.randn(3, 4, generator=torch.Generator().manual_seed(5))
    w = layer.weight
    # z_j > 0 spreads R_j over x_i·(w_ij + γ·w_ij⁺), z_j < 0 over x_i·(w_ij + γ·w_ij⁻).
    up, down = w + 0.25 * w.clamp(min=0), w + 0.25 * w.clamp(max=0)
    z = layer(x)
    share = torch.where(z > 0, r_out / (x @ up.T), 0), torch.where(z < 0, r_out / (x @ down.T), 0)
    expected = x * (share[0] @ up + share[1] @ down)
    torch.testing.assert_close(
        Gamma(0.25).relevance(layer, x, z, r_out), expected, rtol=1e-4, atol=1e-6
    )
    signed = torch.randn(3, 6, generator=torch.Generator().manual_seed(6))  # both signs
    torch.testing.assert_close(
        Gamma(0.0).relevance(layer, signed, layer(signed), r_out),
        Epsilon(1e-6).relevance(layer, signed, layer(signed), r_out),
    )


def test_zbox_rule_conserves_relevance_whatever_the_bias() -> None:
    torch.manual_seed(7)
    conv = nn.Conv2d(3, 5, 3, padding=1).requires_grad_(False)
    conv.bias.fill_(0.3)
    x = _pixels(2, 6, seed=8)
    r_out = torch.rand(2, 5, 6, 6, generator=torch.Generator().manual_seed(9))
    r_in = ZBox(LOW, HIGH).relevance(conv, x, conv(x), r_out)
    torch.testing.assert_close(r_in.sum((1, 2, 3)), r_out.sum((1, 2, 3)), rtol=1e-4, atol=0)


@pytest.fixture(scope="module")
def vgg16() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.vgg16().eval().requires_grad_(False)


def test_lrp_equals_zennit_epsilon_gamma_box_on_vgg16_and_conserves_the_score(vgg16) -> None:
    from zennit.attribution import Gradient
    from zennit.composites import EpsilonGammaBox

    x, targets = _pixels(2, 64, seed=10), torch.tensor([3, 7])
    ours, scores = lrp_relevance(vgg16, x, targets, LOW, HIGH)
    box = {
        name: bound[None, :, None, None].expand_as(x)
        for name, bound in (("low", LOW), ("high", HIGH))
    }
    with Gradient(model=vgg16, composite=EpsilonGammaBox(**box)) as attributor:
        _, theirs = attributor(x, lambda out: out * F.one_hot(targets, out.shape[1]))
    assert theirs.abs().amax() > 0
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5 * float(theirs.abs().amax()))
    # VGG16's biases start at 0: nothing keeps relevance, the input gets all of the score.
    torch.testing.assert_close(ours.sum((1, 2, 3)), scores, rtol=1e-2, atol=0)
    assert not any(m._forward_hooks for m in vgg16.modules())


def test_the_rules_leave_the_model_as_it_was_even_when_the_forward_fails(vgg16) -> None:
    x = _pixels(1, 32, seed=11)
    before = vgg16(x)
    leaf = x.clone().requires_grad_()
    rules = RelevanceRules(vgg16, leaf, composite_rule, ZBox(LOW, HIGH))
    with pytest.raises(RuntimeError, match="boom"), rules:
        # 13 convolutions, 3 Linear, 15 ReLU, the average pool.
        assert sum(len(m._forward_hooks) for m in vgg16.modules()) == 32
        raise RuntimeError("boom")
    assert not any(m._forward_hooks for m in vgg16.modules())
    torch.testing.assert_close(vgg16(x), before, rtol=0, atol=0)


def test_cam_writes_the_lrp_map_the_library_computes(tmp_path: Path, tiny_model_file: Path):
    photo = tmp_path / "photo.png"
    pixels = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(photo)
    out = tmp_path / "out"
    args = ["cam", "-m", f"{tiny_model_file}:build", "--input-size", "32", str(photo)]
    result = CliRunner().invoke(app, [*args, "-M", "lrp", "-t", "2", "--save-raw", "-o", str(out)])
    assert result.exit_code == 0, result.stderr
    folder = image_folder(out, "photo") / "cam" / "lrp" / "input"
    assert (folder / "2.png").is_file()
    layer_cam = np.load(folder / "2.npz")["layer_cam"]

    model = featviz.load(f"{tiny_model_file}:build", input_size=32)
    x = normalise(torch.from_numpy(pixels).permute(2, 0, 1)[None], model.preprocessing)
    low, high = (torch.tensor(bound) for bound in model.preprocessing.pixel_bounds())
    relevance, _ = lrp_relevance(model.module, x, torch.tensor([2]), low, high)
    assert (layer_cam < 0).any() and (layer_cam > 0).any()  # signed, as computed
    expected = relevance.sum(1)[0].numpy()
    np.testing.assert_allclose(layer_cam, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())


def test_the_box_is_the_normalised_pixel_range_or_each_images_own(tiny_model) -> None:
    from featviz.cam import forward_for_cam
    from featviz.inputs.preprocess import Preprocessing

    x = _pixels(2, 8, seed=12)
    ctx = forward_for_cam(tiny_model, x, [], gradients=False)
    low, high = ctx.pixel_range()  # no bounds given: each image's own, channel by channel
    torch.testing.assert_close(low, x.amin(dim=(2, 3)))
    torch.testing.assert_close(high, x.amax(dim=(2, 3)))
    preprocessing = Preprocessing(mean=tuple(MEAN.tolist()), std=tuple(STD.tolist()), input_size=8)
    ctx.pixel_bounds = preprocessing.pixel_bounds()
    low, high = ctx.pixel_range()
    torch.testing.assert_close(low, LOW.expand(2, 3))
    torch.testing.assert_close(high, HIGH.expand(2, 3))


def test_lrp_on_resnet18_equals_zennit_with_its_resnet_canonizer() -> None:
    """Skip connections split relevance in proportion, batch norms are folded into their
    convolutions (as featviz's commands do): zennit's ResNetCanonizer does the same."""
    from zennit.attribution import Gradient
    from zennit.composites import EpsilonGammaBox
    from zennit.torchvision import ResNetCanonizer

    from featviz.layers.folding import folded_for
    from featviz.layers.trace import trace_model

    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval().requires_grad_(False)
    stats = torch.Generator().manual_seed(1)
    for norm in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
        # Statistics that are not the identity, so folding matters.
        norm.running_mean.copy_(torch.randn(norm.num_features, generator=stats) * 0.1)
        norm.running_var.copy_(torch.rand(norm.num_features, generator=stats) + 0.5)
        norm.weight.copy_(torch.rand(norm.num_features, generator=stats) + 0.5)
        norm.bias.copy_(torch.randn(norm.num_features, generator=stats) * 0.1)
    x = _pixels(2, 64, seed=13)
    targets = model(x).argmax(dim=1)
    pairs = trace_model(model, (1, 3, 64, 64)).foldable
    with folded_for(model, pairs, []).applied():
        ours, scores = lrp_relevance(model, x, targets, LOW, HIGH)
    box = {
        "low": LOW[None, :, None, None].expand_as(x),
        "high": HIGH[None, :, None, None].expand_as(x),
    }
    composite = EpsilonGammaBox(**box, canonizers=[ResNetCanonizer()])
    with Gradient(model=model, composite=composite) as attributor:
        _, theirs = attributor(x, lambda out: out * F.one_hot(targets, out.shape[1]))
    torch.testing.assert_close(ours, theirs, rtol=1e-3, atol=1e-3 * float(theirs.abs().amax()))
    # Measured 0.95 and 0.94: the biases of the folded batch norms keep the rest.
    ratio = ours.sum((1, 2, 3)) / scores
    assert ((ratio > 0.85) & (ratio < 1.05)).all(), ratio
