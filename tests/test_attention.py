"""Attention capture and the rollout methods, against independent recomputations.

For each attention implementation featviz reads (timm's ``Attention``, torch's
``nn.MultiheadAttention`` in torchvision's ViT, Hugging Face's ``ViTAttention``) the reference
here gets A = softmax(q·kᵀ·scale) its own way (a forward written out by hand, or the library's
own ``output_attentions``), takes ∂S/∂A with ``autograd.grad``, and evaluates rollout (Abnar &
Zuidema 2020) and gradient-weighted rollout (Chefer et al. 2021) in float64.
"""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F
import transformers
from torch import nn
from torchvision.models.vision_transformer import VisionTransformer

from featviz.cam import forward_for_cam, load_method
from featviz.layers.attention import AttentionCapture
from featviz.layers.trace import trace_model

TARGETS = torch.tensor([2, 5])


def ref_rollout(attentions: list[torch.Tensor], prefix: int, grid: tuple[int, int]):
    tokens = attentions[0].shape[-1]
    eye = torch.eye(tokens, dtype=torch.float64)
    rollout = eye.expand(attentions[0].shape[0], -1, -1)
    for a in attentions:
        mixed = 0.5 * a.double().mean(dim=1) + 0.5 * eye
        mixed = mixed / mixed.sum(dim=-1, keepdim=True)
        rollout = mixed @ rollout
    return rollout[:, 0, prefix:].reshape(-1, *grid)


def ref_gradrollout(attentions, grads, prefix: int, grid: tuple[int, int]):
    tokens = attentions[0].shape[-1]
    rollout = torch.eye(tokens, dtype=torch.float64).expand(attentions[0].shape[0], -1, -1)
    for a, g in zip(attentions, grads):
        relevance = (g.double() * a.double()).clamp(min=0).mean(dim=1)
        rollout = rollout + relevance @ rollout
    return rollout[:, 0, prefix:].reshape(-1, *grid)


# ---- three implementations, each with its own way to the attention matrices ----------------


def timm_vit() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model(
        "deit_tiny_distilled_patch16_224",
        pretrained=False,
        img_size=32,
        patch_size=8,
        depth=3,
        embed_dim=32,
        num_heads=2,
        num_classes=10,
    ).eval()


def timm_reference(model, x):
    """timm's own non-fused path, switched on here, its attn_drop outputs kept."""
    kept = []
    handles = []
    for block in model.blocks:
        block.attn.fused_attn = False
        handles.append(block.attn.attn_drop.register_forward_hook(lambda m, i, o: kept.append(o)))
    try:
        logits = model(x.requires_grad_())
    finally:
        for handle in handles:
            handle.remove()
        for block in model.blocks:
            block.attn.fused_attn = True
    return logits, kept


def torchvision_vit() -> nn.Module:
    torch.manual_seed(0)
    model = VisionTransformer(
        image_size=32,
        patch_size=8,
        num_layers=3,
        num_heads=2,
        hidden_dim=32,
        mlp_dim=64,
        num_classes=10,
    )
    nn.init.normal_(model.heads.head.weight, std=0.5)  # torchvision zero-initialises it
    return model.eval()


def torchvision_reference(model, x):
    """torchvision's ViT forward written out, attention included."""
    kept = []
    tokens = model._process_input(x)
    tokens = torch.cat([model.class_token.expand(len(x), -1, -1), tokens], dim=1)
    tokens = tokens + model.encoder.pos_embedding
    for block in model.encoder.layers:
        mha = block.self_attention
        q, k, v = F.linear(block.ln_1(tokens), mha.in_proj_weight, mha.in_proj_bias).chunk(3, -1)
        n, t, c = q.shape
        heads = [z.view(n, t, mha.num_heads, -1).transpose(1, 2) for z in (q, k, v)]
        a = (heads[0] @ heads[1].transpose(-2, -1) / (c // mha.num_heads) ** 0.5).softmax(-1)
        kept.append(a)
        mixed = (a @ heads[2]).transpose(1, 2).reshape(n, t, c)
        tokens = tokens + mha.out_proj(mixed)
        tokens = tokens + block.mlp(block.ln_2(tokens))
    return model.heads(model.encoder.ln(tokens)[:, 0]), kept


def hf_vit() -> nn.Module:
    torch.manual_seed(0)
    config = transformers.ViTConfig(
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=32,
        patch_size=8,
        num_labels=10,
    )
    return transformers.ViTForImageClassification(config).eval()


def hf_reference(model, x):
    """The library's own eager attention, returned with output_attentions=True."""
    implementation = model.config._attn_implementation
    model.config._attn_implementation = "eager"
    try:
        output = model(pixel_values=x, output_attentions=True)
    finally:
        model.config._attn_implementation = implementation
    return output.logits, list(output.attentions)


CASES = {
    "timm (DeiT, distillation token)": (timm_vit, timm_reference, 2),
    "torchvision": (torchvision_vit, torchvision_reference, 1),
    "hugging face": (hf_vit, hf_reference, 1),
}


def _logits(output):
    return getattr(output, "logits", output)


@pytest.mark.parametrize("key", list(CASES))
def test_captured_attention_is_the_models_own_and_the_model_comes_back(key):
    build, reference, _ = CASES[key]
    model = build().requires_grad_(False)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = _logits(model(x))
        expected_logits, expected = reference(model, x)
        with AttentionCapture(model) as capture:
            during = _logits(model(x))
        after = _logits(model(x))
    assert len(capture.maps) == 3 and capture.maps[0].shape == (
        2,
        2,
        16 + CASES[key][2],
        16 + CASES[key][2],
    )
    for ours, theirs in zip(capture.maps, expected):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(expected_logits, before, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(during, before, rtol=1e-5, atol=1e-5)
    assert torch.equal(after, before)
    for module in model.modules():
        assert "forward" not in vars(module)  # torch's MultiheadAttention has its own back
        assert getattr(module, "fused_attn", True) is True
    assert model.config._attn_implementation != "eager" if key == "hugging face" else True


@pytest.mark.parametrize("key", list(CASES))
def test_rollout_and_gradient_rollout_against_the_formulas(key):
    build, reference, prefix = CASES[key]
    model = build().requires_grad_(False)
    x = torch.randn(2, 3, 32, 32)
    logits, attentions = reference(model, x.clone().requires_grad_())
    grads = torch.autograd.grad(logits[torch.arange(2), TARGETS].sum(), attentions)
    trace = trace_model(model, (1, 3, 32, 32))
    assert trace.attention_prefix() == prefix  # found from the shapes and the attention inputs
    ctx = forward_for_cam(
        model, x, [], trace.calls(), layouts=trace.layouts(), attention=True, token_prefix=prefix
    )
    ours = load_method("gradrollout").compute(ctx, "attention", TARGETS)
    expected = ref_gradrollout(attentions, grads, prefix, (4, 4))
    assert float(expected.abs().max()) > 0
    torch.testing.assert_close(
        ours.double(), expected, rtol=1e-4, atol=1e-4 * float(expected.max())
    )
    plain = load_method("rollout").compute(ctx, "attention", TARGETS)
    torch.testing.assert_close(
        plain.double(),
        ref_rollout([a.detach() for a in attentions], prefix, (4, 4)),
        rtol=1e-5,
        atol=1e-7,
    )


def test_gradient_rollout_is_class_specific_and_rollout_is_not():
    model = timm_vit().requires_grad_(False)
    trace = trace_model(model, (1, 3, 32, 32))
    x = torch.randn(2, 3, 32, 32)
    ctx = forward_for_cam(model, x, [], trace.calls(), attention=True, token_prefix=2)
    first = load_method("gradrollout").compute(ctx, "attention", torch.tensor([0, 0]))
    second = load_method("gradrollout").compute(ctx, "attention", torch.tensor([1, 1]))
    assert not torch.allclose(first, second)
    torch.testing.assert_close(
        load_method("rollout").compute(ctx, "attention", torch.tensor([0, 0])),
        load_method("rollout").compute(ctx, "attention", torch.tensor([1, 1])),
    )
