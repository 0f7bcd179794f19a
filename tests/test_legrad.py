"""LeGrad (``legrad``) against torchcam's LeGrad and against its formula recomputed per block.

The formula: for every block b, s_b = head(final norm(mean of the block's output
tokens)); E_b = mean over heads and queries of (∂s_b/∂A_b)⁺ over the patch keys; the map is the
mean of the E_b. The recomputation here takes one ``autograd.grad`` per block through the whole
graph (as torchcam does), where featviz takes one backward with each block's input cut.
"""

from __future__ import annotations

import pytest
import torch
from test_attention import hf_reference, hf_vit, timm_reference, timm_vit, torchvision_vit
from torch import nn

from featviz.cam import forward_for_cam, load_method
from featviz.errors import UsageError
from featviz.layers.taps import first_tensor
from featviz.layers.trace import trace_model

TARGETS = torch.tensor([2, 5])


def _legrad(model: nn.Module, x: torch.Tensor, prefix: int, targets=TARGETS):
    """featviz's map and the method (to see which head it used)."""
    trace = trace_model(model, (1, *x.shape[1:]))
    ctx = forward_for_cam(
        model, x, [], trace.calls(), layouts=trace.layouts(), attention=True, token_prefix=prefix
    )
    method = load_method("legrad")
    return method.compute(ctx, "attention", targets), method


def _images(n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def test_legrad_equals_torchcams_on_torchvisions_vit() -> None:
    from torchcam.methods import LeGrad

    model = torchvision_vit().requires_grad_(False)
    x = _images()
    ours, method = _legrad(model, x, prefix=1)
    with LeGrad(model, list(model.encoder.layers)) as extractor:
        theirs = extractor(TARGETS.tolist(), model(x), normalized=False)[0]
    assert ours.shape == (2, 4, 4) and float(theirs.amax()) > 0
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5 * float(theirs.amax()))
    assert method._heads[model]["encoder.layers.encoder_layer_2"] is not None  # fx's suffix


def _reference(logits_and_attentions, blocks: list[nn.Module], head, x, prefix: int):
    """The formula, one backward per block, float64 at the end."""
    outputs: list[torch.Tensor] = []
    handles = [
        b.register_forward_hook(lambda m, i, o: outputs.append(first_tensor(o))) for b in blocks
    ]
    try:
        _, attentions = logits_and_attentions(x)
    finally:
        for handle in handles:
            handle.remove()
    maps = []
    for z, a in zip(outputs, attentions):
        score = head(z.mean(dim=1))[torch.arange(len(x)), TARGETS].sum()
        (grad,) = torch.autograd.grad(score, a, retain_graph=True)
        maps.append(grad.double().clamp(min=0).mean(dim=(1, 2))[:, prefix:])
    return torch.stack(maps).mean(dim=0).reshape(len(x), 4, 4)


def test_legrad_equals_its_formula_on_timm_with_a_distillation_token() -> None:
    model = timm_vit().requires_grad_(False)
    x = _images()
    ours, method = _legrad(model, x, prefix=2)

    def head(mean: torch.Tensor) -> torch.Tensor:  # DeiT's two heads, averaged in eval mode
        tokens = model.norm(mean)
        return (model.head(tokens) + model.head_dist(tokens)) / 2

    expected = _reference(
        lambda x: timm_reference(model, x.clone()), list(model.blocks), head, x, 2
    )
    assert float(expected.amax()) > 0
    torch.testing.assert_close(
        ours.double(), expected, rtol=1e-4, atol=1e-5 * float(expected.amax())
    )
    assert method._heads[model]["blocks.2"] is not None  # traced with attn_mask=None


def test_legrad_equals_its_formula_on_hugging_face_through_the_whole_network() -> None:
    """fx cannot trace Hugging Face's ViT: the head is the whole network with the last block's
    output swapped, and gives the same map."""
    model = hf_vit().requires_grad_(False)
    x = _images()
    ours, method = _legrad(model, x, prefix=1)

    def head(mean: torch.Tensor) -> torch.Tensor:
        return model.classifier(model.vit.layernorm(mean))

    layers = model.vit.encoder.layer if hasattr(model.vit, "encoder") else model.vit.layers
    expected = _reference(
        lambda x: hf_reference(model, x.clone().requires_grad_()), list(layers), head, x, 1
    )
    assert float(expected.amax()) > 0
    torch.testing.assert_close(
        ours.double(), expected, rtol=1e-4, atol=1e-5 * float(expected.amax())
    )
    assert list(method._heads[model].values()) == [None]


def test_legrad_is_class_specific_batch_independent_and_leaves_the_model_as_it_was() -> None:
    model = timm_vit().requires_grad_(False)
    x = _images(3)
    before = model(x)
    first, _ = _legrad(model, x, 2, torch.tensor([0, 0, 0]))
    second, _ = _legrad(model, x, 2, torch.tensor([1, 1, 1]))
    alone, _ = _legrad(model, x[2:], 2, torch.tensor([1]))
    assert not torch.allclose(first, second)
    torch.testing.assert_close(alone[0], second[2], rtol=1e-4, atol=1e-6)
    assert torch.equal(model(x), before)
    for module in model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks
        assert getattr(module, "fused_attn", True) is True


def test_legrad_refuses_a_model_without_self_attention() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)
    )
    x = _images()
    ctx = forward_for_cam(model.eval(), x, ["0"], attention=True, token_prefix=0)
    with pytest.raises(UsageError, match=r"^method 'legrad' needs a transformer's self-attention"):
        load_method("legrad").compute(ctx, "attention", torch.tensor([0, 1]))
