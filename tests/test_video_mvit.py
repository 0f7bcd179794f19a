"""MViT, torchvision's video transformer: its blocks return tokens (N, 1 + t·h·w, C) with their
(t, h, w) beside them, which changes from stage to stage; featviz lays them on the clip's frames
from that thw, and the CAM methods compute their 3-D forms there."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import bar_frames, image_folder, write_video
from PIL import Image
from typer.testing import CliRunner

from featviz.cli.app import app
from featviz.errors import RunError
from featviz.explainer.batch import Explainer
from featviz.layers.layouts import Layout, detect
from featviz.model.load import load_model
from featviz.model.options import ModelRequest

# A shallow MViTv2: torchvision's MViT class with mvit_v2_s's options (relative positions,
# residual pooling) and five blocks for 4 frames of 64 × 64: 2 frames of 16 × 16 tokens,
# pooled to 8 × 8 at block 1 and to 4 × 4 at block 3.
SMALL_MVIT = """
import torch
from torchvision.models.video.mvit import MSBlockConfig, MViT

CLIP_LENGTH = 4
INPUT_SIZE = 64
MEAN = STD = (0.5, 0.5, 0.5)
BLOCKS = [  # heads, channels in and out, query stride, key and value stride
    (1, 16, 16, 1, 4), (2, 16, 32, 2, 2), (2, 32, 32, 1, 2), (4, 32, 64, 2, 1), (4, 64, 64, 1, 1)
]


def build():
    torch.manual_seed(0)
    setting = [
        MSBlockConfig(heads, c_in, c_out, [3, 3, 3], [3, 3, 3], [1, q, q], [1, kv, kv])
        for heads, c_in, c_out, q, kv in BLOCKS
    ]
    return MViT(
        spatial_size=(64, 64), temporal_size=4, block_setting=setting, residual_pool=True,
        residual_with_cls_embed=False, rel_pos_embed=True, proj_after_attn=True, num_classes=5,
    )
"""


@pytest.fixture(scope="module")
def small_mvit(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("mvit") / "small_mvit.py"
    path.write_text(SMALL_MVIT)
    return f"{path}:build"


def test_thw_tokens_are_laid_on_their_frames_and_back() -> None:
    tokens = torch.arange(2 * (1 + 3 * 2 * 4) * 5, dtype=torch.float32).reshape(2, 25, 5)
    layout = detect((1, 25, 5), None, (64, 64), None, {25}, (3, 2, 4))
    assert layout == Layout("thw_tokens", 1, (3, 2, 4))
    maps = layout.to_nchw(tokens, (64, 64))
    assert maps.shape == (2, 5, 3 * 2, 4) and layout.frames((1, 25, 5)) == 3
    # Frame 1, row 0, column 2 is patch token 1·(2·4) + 0·4 + 2, after the class token.
    assert torch.equal(maps[:, :, 2, 2], tokens[:, 1 + 8 + 2])
    assert torch.equal(layout.from_nchw(maps, tokens), tokens)
    assert layout.describe((1, 25, 5), (64, 64)) == "25×5 tokens, 1 prefix → 3 frames of 2×4"
    # Pooling's tokens split by head (N, heads, T, C) come with a thw too: not a map.
    assert detect((1, 2, 25, 5), None, (64, 64), None, {25}, (3, 2, 4)) is None
    with pytest.raises(RunError, match="a layer returned 17 tokens where the model's trace had"):
        layout.to_nchw(tokens[:, :17], (64, 64))


def test_torchvisions_mvits_default_to_the_input_of_their_last_block() -> None:
    for name in ("mvit_v1_b", "mvit_v2_s"):
        model = load_model(ModelRequest(name, weights="none"), structure_only=True)
        assert model.default_cam_layer() == "blocks.14"
        assert model.trace.get("blocks.14").layout == Layout("thw_tokens", 1, (8, 7, 7))
        assert model.trace.get("blocks.2").grid == (8 * 28, 28)
        # Pooling's Conv3d runs on batch × heads: no map of the clip.
        assert model.trace.get("blocks.1.attn.pool_k.pool").layout is None


def _by_hand(model, layer: str, clips: torch.Tensor, target: int) -> tuple:
    """The block's tokens and their gradient for ``target``, laid on (N, C, t, h, w) with the
    thw the block returned."""
    taken = {}

    def leaf(module, inputs, output):
        tokens, thw = output
        taken["a"], taken["thw"] = tokens.detach().requires_grad_(), thw
        return taken["a"], thw

    handle = model.module.get_submodule(layer).register_forward_hook(leaf)
    try:
        with torch.enable_grad():
            scores = model.module(clips)
            [grads] = torch.autograd.grad(scores[:, target].sum(), taken["a"])
    finally:
        handle.remove()

    def frames(tokens: torch.Tensor) -> torch.Tensor:
        return tokens[:, 1:].unflatten(1, taken["thw"]).permute(0, 4, 1, 2, 3)

    return frames(taken["a"].detach()), frames(grads)


def test_gradcam_and_layercam_of_an_mvit_block_are_the_3d_formulas(small_mvit: str) -> None:
    model = load_model(ModelRequest(small_mvit, device="cpu"))
    assert model.default_cam_layer() == "blocks.3"
    clips = torch.randn(2, 3, 4, 64, 64, generator=torch.Generator().manual_seed(0))
    explained = Explainer(
        model, ("gradcam", "layercam"), ["blocks.2"], [3], top_k=None, cam_batch_size=4
    )
    maps = {
        entry.method: torch.stack([row[i].layer_cam for row in explained.explain(clips).maps])
        for i, entry in enumerate(explained.explain(clips).maps[0])
    }
    activations, grads = _by_hand(model, "blocks.2", clips, 3)
    assert activations.shape == (2, 32, 2, 8, 8)
    weights = grads.mean(dim=(2, 3, 4), keepdim=True)
    expected = {
        "gradcam": (weights * activations).sum(dim=1).clamp(min=0),
        "layercam": (grads.clamp(min=0) * activations).sum(dim=1).clamp(min=0),
    }
    for method, expect in expected.items():
        assert maps[method].shape == (2, 2, 8, 8)
        assert expect.amax() > 0, method
        assert torch.allclose(maps[method], expect, rtol=1e-4, atol=1e-5 * float(expect.amax()))


def test_cam_writes_an_mvits_animated_overlay_for_every_frame(
    small_mvit: str, tmp_path: Path
) -> None:
    video = write_video(tmp_path / "bar.mp4", bar_frames(4, 64, 64), "libx264")
    out = tmp_path / "out"
    done = CliRunner().invoke(
        app, ["cam", "-m", small_mvit, "--save-raw", "-q", "-o", str(out), str(video)]
    )
    assert done.exit_code == 0, done.stderr
    [overlay] = (image_folder(out, "bar/clip0000") / "cam" / "gradcam" / "blocks.3").glob(
        "*[0-9].webp"
    )
    with Image.open(overlay) as picture:
        assert picture.is_animated and picture.n_frames == 4 and picture.size == (64, 64)
    raw = np.load(overlay.with_suffix(".npz"))
    assert raw["layer_cam"].shape == (2, 4, 4) and raw["heatmap"].shape == (4, 64, 64)
