"""Models that accept one input size only get it, squashed, and the map still lines up with the
photo; every torchvision classifier builds, traces and has a default layer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import image_folder
from PIL import Image
from typer.testing import CliRunner

from featviz.cli.app import app
from featviz.model.load import load_model
from featviz.model.options import ModelRequest
from featviz.model.sources.torchvision_models import classification_models

# A ViT-shaped model that asserts its 32×32 input: 4×4 patches become 64 tokens behind a class
# token; class 0's score is the mean redness of the patches, so its map is where the photo is red.
MARKER_MODEL = """
import torch
from torch import nn

LABELS = ["red", "other"]
INPUT_SIZE = 32
MEAN = (0.0, 0.0, 0.0)
STD = (1.0, 1.0, 1.0)


class FixedSizeTokens(nn.Module):
    def __init__(self):
        super().__init__()
        self.patches = nn.Conv2d(3, 2, kernel_size=4, stride=4, bias=False)
        with torch.no_grad():
            self.patches.weight.zero_()
            self.patches.weight[0, 0] = 1 / 16  # redness
            self.patches.weight[1, 1] = 1 / 16  # greenness
        self.tokens = nn.Identity()
        self.head = nn.Linear(2, 2)
        with torch.no_grad():
            self.head.weight.copy_(torch.eye(2))
            self.head.bias.zero_()

    def forward(self, x):
        assert x.shape[-2:] == (32, 32), f"Wrong image size {tuple(x.shape[-2:])}"
        tokens = self.patches(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([torch.zeros_like(tokens[:, :1]), tokens], dim=1)
        tokens = self.tokens(tokens)
        return self.head(tokens[:, 1:].mean(dim=1))


def build():
    return FixedSizeTokens()
"""


def test_a_fixed_size_model_is_fed_its_size_and_the_map_lines_up(tmp_path: Path) -> None:
    (tmp_path / "marker.py").write_text(MARKER_MODEL)
    spec = f"{tmp_path / 'marker.py'}:build"
    loaded = load_model(ModelRequest(spec, device="cpu"))
    assert loaded.trace.size_step is None and loaded.preprocessing.multiple is None
    tokens = loaded.trace.get("tokens")
    assert (tokens.layout.kind, tokens.layout.prefix, tokens.grid) == ("tokens", 1, (8, 8))
    # A 2:1 photo, grey, with a red block right of centre (x 96–127, y 16–47): squashed to
    # 32×32 it covers exactly the patches of rows 2–5 and columns 6–7.
    photo = np.full((64, 128, 3), 128, dtype=np.uint8)
    photo[..., 0] = 0
    photo[16:48, 96:128] = (255, 0, 0)
    Image.fromarray(photo).save(tmp_path / "photo.png")
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app,
        ["cam", "-m", spec, "-t", "red", "--save-raw", str(tmp_path / "photo.png"), "-o", str(out)],
    )
    assert result.exit_code == 0, result.stderr
    raw = np.load(image_folder(out, "photo") / "cam" / "gradcam" / "tokens" / "0_red.npz")
    grid = raw["layer_cam"] / raw["layer_cam"].max()
    block = np.zeros((8, 8), dtype=bool)
    block[2:6, 6:8] = True
    # The antialiased downscaling blurs the block's edges into the neighbouring patches.
    assert grid.shape == (8, 8) and grid[block].min() > 0.9 and grid[~block].max() < 0.1
    heat = raw["heatmap"]
    assert heat.shape == (64, 128)
    ys, xs = np.mgrid[:64, :128]
    centre = ((heat * xs).sum() / heat.sum(), (heat * ys).sum() / heat.sum())
    # The block's centre is (111.5, 31.5); bilinear upsampling clamped at the right edge pulls
    # the centroid left by up to half a patch (2 px) there, never more.
    assert abs(centre[1] - 31.5) < 0.5 and 109.5 <= centre[0] <= 112, centre
    assert heat[16:48, 96:128].sum() / heat.sum() > 0.6
    layers = CliRunner().invoke(app, ["layers", "-m", spec])
    assert layers.stdout.splitlines()[0] == (
        "input: 32×32 only (photos are squashed to it, never cropped)"
    )


@pytest.mark.parametrize("name", classification_models())
def test_every_torchvision_classifier_traces_with_a_default_layer(name: str) -> None:
    """Structure only (meta device): what `featviz layers` shows. The full sweep, `cam` and
    `maps` for real on a photo, is benchmarks/sweep_torchvision.py."""
    model = load_model(ModelRequest(name), structure_only=True)
    default = model.trace.get(model.default_cam_layer())
    assert default.spatial and not default.pooled
    if name.startswith("vit_"):
        assert default.layout.kind == "tokens" and default.name.endswith(".ln_1")
        assert model.preprocessing.multiple is None  # 224×224 (vit_h_14: 224 without weights)
    if name.startswith("swin"):
        assert default.name == "permute"
        assert model.trace.get("features.7").layout.kind == "nhwc"


@pytest.mark.parametrize(
    "name",
    ["vit_b_32", "swin_t", "maxvit_t", "regnet_y_400mf", "squeezenet1_1", "inception_v3"],
)
def test_cam_and_maps_run_on_a_non_square_photo(name: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)).save(tmp_path / "p.png")
    common = ["-m", name, "--weights", "none", str(tmp_path / "p.png"), "-o", str(tmp_path / "o")]
    cam = CliRunner().invoke(app, ["cam", *common, "--save-raw", "--json"])
    assert cam.exit_code == 0, cam.stderr
    [npz] = (image_folder(tmp_path / "o", "p") / "cam" / "gradcam").rglob("*.npz")
    raw = np.load(npz)
    assert raw["heatmap"].shape == (240, 320)
    if not name.startswith("vit"):  # torchvision's ViT head is zero at init: scores all 0
        assert raw["layer_cam"].std() > 0
    layer = (name == "vit_b_32" and "encoder.layers.encoder_layer_11") or None
    maps = CliRunner().invoke(app, ["maps", *common, *(["-l", layer] if layer else [])])
    assert maps.exit_code == 0, maps.stderr
