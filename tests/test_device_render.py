"""Rendering on the model's device (a GPU's path, run here on the CPU): the same bytes as the
CPU's writer threads, and inputs that travel as uint8 and are normalised after the copy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from featviz.cli.app import app
from featviz.inputs.preprocess import resized, to_tensor
from featviz.model.load import load_model
from featviz.model.options import ModelRequest
from featviz.render import device as device_render
from featviz.render.device import DeviceBlend
from featviz.render.draw import OVERLAY_BAND_ROWS, colormap_lut, overlay


@pytest.mark.parametrize("cmap", ["jet", "gray", "viridis"])
@pytest.mark.parametrize("alpha", [0.0, 0.31, 0.5, 1.0])
def test_device_blend_gives_the_cpu_overlays_bytes(cmap: str, alpha: float) -> None:
    rng = np.random.default_rng(3)
    height = OVERLAY_BAND_ROWS + 37  # two bands, the second one short
    image = rng.integers(0, 256, (height, 41, 3), dtype=np.uint8)
    heat = rng.random((height, 41), dtype=np.float32)
    heat[0, :3] = [0.0, 1.0, 0.5 / 255]  # the ends, and a value that rounds half to even
    lut = colormap_lut(cmap)
    blend = DeviceBlend(lut, alpha, torch.device("cpu"))
    pixels = blend.overlay(torch.from_numpy(image), torch.from_numpy(heat)).numpy()
    np.testing.assert_array_equal(pixels, overlay(image, heat, lut=lut, alpha=alpha))


def test_uint8_inputs_are_normalised_in_the_batch_as_to_tensor_does(tiny_model_file) -> None:
    model = load_model(ModelRequest(f"{tiny_model_file}:build", device="cpu", input_size=32))
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 45, 3), np.uint8))
    pixels = resized(photo, model.preprocessing)
    assert pixels.dtype == torch.uint8 and pixels.shape == (3, 32, 48)
    expected = to_tensor(photo, model.preprocessing)
    assert torch.equal(model.batch([pixels, pixels]), torch.stack([expected, expected]))
    # Already-normalised floats pass through unchanged.
    assert torch.equal(model.batch([expected]), expected[None])
    white = torch.full((3, 2, 2), 255, dtype=torch.uint8)
    np.testing.assert_allclose(
        model.batch([white])[0, :, 0, 0].numpy(),
        [(1 - m) / s for m, s in zip(model.preprocessing.mean, model.preprocessing.std)],
        rtol=1e-6,
    )


@pytest.mark.filterwarnings("error")
def test_cam_rendered_on_the_device_writes_the_same_files(
    tiny_model_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, (width, height) in [("a.png", (40, 30)), ("b.png", (30, 45))]:
        Image.fromarray(rng.integers(0, 256, (height, width, 3), np.uint8)).save(folder / name)
    args = [
        "cam", "-m", f"{tiny_model_file}:build", "--input-size", "32", str(folder),
        "-M", "gradcam", "-M", "eigencam", "-l", "features.1", "-l", "features.3",
        "--fuse", "--heatmap", "--save-raw", "--top-k", "2",
    ]  # fmt: skip
    runner = CliRunner()
    assert runner.invoke(app, [*args, "-o", str(tmp_path / "cpu")]).exit_code == 0

    overlays = []
    original = DeviceBlend.overlay

    def counted(self, image, heatmap):
        overlays.append(image.shape)
        return original(self, image, heatmap)

    monkeypatch.setattr(device_render, "renders_on", lambda device: True)
    monkeypatch.setattr(DeviceBlend, "overlay", counted)
    result = runner.invoke(app, [*args, "-o", str(tmp_path / "device")])
    assert result.exit_code == 0, result.stderr
    # Per image: 2 classes × 2 layers of gradcam + 2 fusions, 2 layers of eigencam + 1 fusion.
    assert len(overlays) == 2 * (4 + 2 + 3)
    written = sorted(
        path.relative_to(tmp_path / "cpu")
        for path in (tmp_path / "cpu").rglob("*")
        if path.suffix in (".png", ".npz")
    )
    assert len(written) == 2 * 9 * 3  # overlay, heatmap, raw arrays for each
    for path in written:
        assert (tmp_path / "device" / path).read_bytes() == (tmp_path / "cpu" / path).read_bytes()
