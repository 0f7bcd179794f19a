"""LayerTaps: early stop, cleanup after errors, copies safe from in-place ops, repeated calls."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from featviz.layers.taps import LayerTaps
from featviz.layers.trace import trace_model


def _no_hooks_left(model: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_tapping_the_first_layer_does_not_run_the_rest() -> None:
    model = torchvision.models.vgg16(weights=None).eval()
    ran: list[str] = []
    for name, module in model.named_modules():
        if name and name != "features.0" and not list(module.children()):
            module.register_forward_hook(lambda m, i, o, name=name: ran.append(name))
    with torch.inference_mode(), LayerTaps(model, ["features.0"], stop_early=True) as taps:
        assert taps.run(torch.zeros(1, 3, 64, 64)) is None
    assert ran == []
    assert taps.outputs["features.0"].shape == (1, 64, 64, 64)


def test_hooks_are_removed_even_after_an_exception() -> None:
    model = torchvision.models.resnet18(weights=None).eval()
    with pytest.raises(RuntimeError), LayerTaps(model, ["layer1", "layer4"], grad=True) as taps:
        taps.run(torch.zeros(1, 5, 64, 64))  # wrong channel count fails inside the forward
    assert _no_hooks_left(model)


def test_captured_output_is_not_changed_by_a_following_inplace_relu() -> None:
    model = torchvision.models.alexnet(weights=None).eval()  # features.1 is ReLU(inplace=True)
    torch.manual_seed(0)
    x = torch.randn(1, 3, 96, 96)
    with torch.inference_mode(), LayerTaps(model, ["features.0"], stop_early=True) as taps:
        taps.run(x)
    with torch.inference_mode():
        expected = model.features[0](x)
    assert torch.equal(taps.outputs["features.0"], expected)
    assert (taps.outputs["features.0"] < 0).any()


def test_a_module_called_twice_keeps_its_last_call() -> None:
    model = torchvision.models.resnet18(weights=None).eval()
    calls = trace_model(model, (1, 3, 64, 64)).calls()
    x = torch.randn(2, 3, 64, 64)
    with (
        torch.inference_mode(),
        LayerTaps(model, ["layer1.0.relu", "layer1.0"], calls=calls, stop_early=True) as taps,
    ):
        taps.run(x)
    assert torch.equal(taps.outputs["layer1.0.relu"], taps.outputs["layer1.0"])


def test_grad_mode_gives_gradients_at_the_tap_only() -> None:
    model = torchvision.models.densenet121(weights=None).eval().requires_grad_(False)
    x = torch.randn(2, 3, 64, 64)
    with LayerTaps(model, ["features.denseblock4", "features"], grad=True) as taps:
        logits = taps.run(x)
    first, last = taps.outputs["features.denseblock4"], taps.outputs["features"]
    assert first.is_leaf and first.requires_grad and not last.is_leaf
    grads = torch.autograd.grad(logits[:, 3].sum(), [first, last])
    assert all(g.shape == t.shape for g, t in zip(grads, [first, last]))
    # densenet applies F.relu(inplace=True) after `features`: the stored tensor keeps negatives.
    assert (last < 0).any()
    assert all(p.grad is None for p in model.parameters())
    assert _no_hooks_left(model)
