"""Every layer method at transformer layers: token outputs (N, T, C) and channels-last (N, H, W, C)
against the formulas, with the prefix dropped and the grid laid out here, independently.

The reference taps the layer with a hook of its own that swaps the output for a leaf, takes
g = ∂S/∂A with one ``autograd.grad``, drops the prefix tokens and reshapes by hand; the formulas
are those of test_cam_formulas. Random-init models, seeded: a timm ViT with 4 register tokens at
a non-square 48×64 input (a 6×8 grid), torchvision's vit_b_16 (head re-initialised: torchvision
zero-initialises it, which makes every gradient zero), a timm Swin (channels-last stages).
pytorch-grad-cam with its ``reshape_transform`` is the second reference, at 1e-4.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import pytest
import timm
import torch
import torchvision
from pytorch_grad_cam import GradCAM, HiResCAM, LayerCAM, XGradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from test_cam_formulas import GRADIENT_REFERENCES, _weighted, assert_maps_close
from torch import nn

from featviz.cam import forward_for_cam, load_method, normalise
from featviz.cam.context import CamContext
from featviz.layers.layouts import Layout
from featviz.layers.trace import trace_model

TARGETS = torch.tensor([3, 7])


@dataclass
class TokenCase:
    model: nn.Module
    layer: str
    size: tuple[int, int]
    layout: Layout
    grid: tuple[int, int]


def timm_vit_with_registers() -> TokenCase:
    model = timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        img_size=64,
        patch_size=8,
        depth=2,
        embed_dim=48,
        num_heads=3,
        reg_tokens=4,
        dynamic_img_size=True,
        num_classes=10,
    )
    return TokenCase(model, "blocks.1.norm1", (48, 64), Layout("tokens", 5), (6, 8))


def torchvision_vit_b_16() -> TokenCase:
    model = torchvision.models.vit_b_16(weights=None)
    nn.init.normal_(model.heads.head.weight, std=0.02)
    layer = "encoder.layers.encoder_layer_11.ln_1"
    return TokenCase(model, layer, (224, 224), Layout("tokens", 1), (14, 14))


def timm_swin() -> TokenCase:
    model = timm.create_model(
        "swin_tiny_patch4_window7_224",
        pretrained=False,
        img_size=32,
        window_size=4,
        embed_dim=24,
        depths=(2, 2),
        num_heads=(2, 4),
        num_classes=10,
    )
    return TokenCase(model, "layers.1", (32, 32), Layout("nhwc"), (4, 4))


CASES = {
    "timm-vit-registers": timm_vit_with_registers,
    "torchvision-vit_b_16": torchvision_vit_b_16,
    "timm-swin": timm_swin,
}


@dataclass
class Prepared:
    case: TokenCase
    x: torch.Tensor
    ctx: CamContext
    a: torch.Tensor  # (N, K, h, w) float64, captured and laid out here
    g: torch.Tensor


_PREPARED: dict[str, Prepared] = {}


def _as_maps(output: torch.Tensor, case: TokenCase) -> torch.Tensor:
    """The reference's own conversion: drop the prefix, lay the patches on the grid."""
    if case.layout.kind == "nhwc":
        return output.permute(0, 3, 1, 2)
    n, _, channels = output.shape
    return output[:, case.layout.prefix :].reshape(n, *case.grid, channels).permute(0, 3, 1, 2)


def prepared(key: str) -> Prepared:
    if key not in _PREPARED:
        torch.manual_seed(0)
        case = CASES[key]()
        model = case.model.eval().requires_grad_(False)
        x = torch.randn(2, 3, *case.size)
        leaves: list[torch.Tensor] = []

        def swap(module, inputs, output):
            leaves.append(output.detach().requires_grad_())
            return leaves[-1]

        handle = model.get_submodule(case.layer).register_forward_hook(swap)
        try:
            logits = model(x)
        finally:
            handle.remove()
        (g,) = torch.autograd.grad(logits[torch.arange(2), TARGETS].sum(), leaves[-1])
        trace = trace_model(model, (1, 3, *case.size))
        assert trace.get(case.layer).layout == case.layout  # recognised from shapes alone
        assert trace.get(case.layer).grid == case.grid or case.layout.kind == "tokens"
        ctx = forward_for_cam(model, x, [case.layer], trace.calls(), layouts=trace.layouts())
        a = _as_maps(leaves[-1].detach(), case).double()
        _PREPARED[key] = Prepared(case, x, ctx, a, _as_maps(g, case).double())
    return _PREPARED[key]


@pytest.mark.parametrize("method", list(GRADIENT_REFERENCES))
@pytest.mark.parametrize("key", list(CASES))
def test_methods_at_token_and_channels_last_layers(key: str, method: str) -> None:
    p = prepared(key)
    ours = load_method(method).compute(p.ctx, p.case.layer, TARGETS)
    assert ours.shape == (2, *p.a.shape[2:])
    assert p.a.shape[2:] == p.case.grid
    # hirescam sums signed g·A over channels: on the Swin, whose random-init gradients are
    # ~1e-6, that sum cancels to 1e-3 of its terms, and the float32 rounding of two separate
    # forwards (ours, the reference's) shows at 3e-4 of the map's maximum.
    rtol = 1e-3 if (key, method) == ("timm-swin", "hirescam") else 1e-4
    assert_maps_close(ours, GRADIENT_REFERENCES[method](p.a, p.g), rtol)


def test_ablationcam_puts_ablated_tokens_back_in_place() -> None:
    """Each channel zeroed on the patch tokens only (the prefix tokens kept), the rest of the
    network run on the tokens: against full forwards with the same tokens swapped in."""
    p = prepared("timm-vit-registers")
    model, layer = p.case.model, p.case.layer
    ours = load_method("ablationcam", batch_size=64).compute(p.ctx, layer, TARGETS)
    raw = p.ctx.activations[layer].detach()
    module = model.get_submodule(layer)
    maps = []
    with torch.no_grad():
        for i in range(2):
            scores = []
            for k in range(-1, raw.shape[2]):
                tokens = raw[i : i + 1].clone()
                if k >= 0:
                    tokens[:, 5:, k] = 0
                handle = module.register_forward_hook(lambda m, inputs, out, t=tokens: t)
                try:
                    scores.append(model(p.x[i : i + 1])[0, TARGETS[i]].double())
                finally:
                    handle.remove()
            scores = torch.stack(scores)
            weights = (scores[0] - scores[1:]) / (scores[0] + 1e-7)
            maps.append(_weighted(weights[None], p.a[i : i + 1])[0])
    assert_maps_close(ours, torch.stack(maps), rtol=1e-3)


def _reshape_for_them(case: TokenCase):
    """pytorch-grad-cam's reshape_transform, written for this grid (theirs hard-codes 14×14)."""

    def reshape(tensor: torch.Tensor) -> torch.Tensor:
        return _as_maps(tensor, case)

    return reshape


@pytest.mark.parametrize("key", ["timm-vit-registers", "timm-swin"])
@pytest.mark.parametrize(
    ("method", "cls"),
    [("gradcam", GradCAM), ("xgradcam", XGradCAM), ("layercam", LayerCAM), ("hirescam", HiResCAM)],
)
def test_against_pytorch_grad_cam_with_its_reshape_transform(key, method, cls) -> None:
    p = prepared(key)
    theirs_model = copy.deepcopy(p.case.model).requires_grad_(True)
    h, w = p.case.grid
    cam = cls(
        model=theirs_model,
        target_layers=[theirs_model.get_submodule(p.case.layer)],
        reshape_transform=_reshape_for_them(p.case),
    )
    cam.get_target_width_height = lambda input_tensor: (w, h)
    with cam:
        theirs = cam(input_tensor=p.x, targets=[ClassifierOutputTarget(int(t)) for t in TARGETS])
    ours = normalise(load_method(method).compute(p.ctx, p.case.layer, TARGETS))
    theirs = torch.from_numpy(theirs)
    assert theirs.amax(dim=(1, 2)).gt(0.99).all()
    # hirescam on the Swin: the cancellation described above, 3.7e-4 here.
    atol = 1e-3 if (key, method) == ("timm-swin", "hirescam") else 1e-4
    torch.testing.assert_close(ours, theirs, rtol=0, atol=atol)


def test_gradients_on_patch_tokens_vanish_after_the_last_attention() -> None:
    """Why the default layer of a class-token ViT is the last attention's input: at the last
    block's output the head reads the class token only, so patch tokens get no gradient."""
    p = prepared("torchvision-vit_b_16")
    model, x = p.case.model, p.x
    last = "encoder.layers.encoder_layer_11"
    trace = trace_model(model, (1, 3, 224, 224))
    ctx = forward_for_cam(model, x, [last, p.case.layer], trace.calls(), layouts=trace.layouts())
    grads = ctx.gradients(TARGETS)
    assert grads[last].shape == (2, 768, 14, 14)  # the patch tokens, prefix dropped
    assert float(grads[last].abs().max()) == 0
    assert float(grads[p.case.layer].abs().max()) > 0
