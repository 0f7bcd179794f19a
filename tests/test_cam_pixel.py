"""Pixel-level methods: maps at the input's resolution, equal to captum's and pytorch-grad-cam's
on the same model, input and target, and carried through cam, compare, score and the library."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from typer.testing import CliRunner

import featviz
from featviz.cam import INPUT, forward_for_cam, load_method
from featviz.cam.registry import method_info, method_names
from featviz.cli.app import app
from tests.conftest import image_folder

PIXEL_METHODS = [name for name in method_names() if method_info(name).pixel_level]


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None).eval().requires_grad_(False)


@pytest.fixture(scope="module")
def batch():
    torch.manual_seed(1)
    return torch.randn(2, 3, 64, 64), torch.tensor([3, 7])


def _featviz(model, name, x, targets, layers=()):
    info = method_info(name)
    ctx = forward_for_cam(
        model,
        x,
        list(layers),
        gradients=info.needs_gradients,
        input_gradients=True,
    )
    method = load_method(name, batch_size=16)
    [layer] = method.layers_for(list(layers) or ["unused"])
    return method.compute(ctx, layer, targets)


def _close(ours: torch.Tensor, theirs: torch.Tensor, rtol: float = 1e-4) -> None:
    """Equal to float32 summation-order noise, relative to the map's largest value."""
    theirs = torch.as_tensor(theirs).float()
    assert ours.shape == theirs.shape
    atol = rtol * float(theirs.abs().max())
    assert atol > 0
    torch.testing.assert_close(ours, theirs, rtol=rtol, atol=atol)


def test_pixel_methods_map_the_input_pseudo_layer():
    for name in PIXEL_METHODS:
        assert load_method(name).layers_for(["layer4"]) in (["layer4"], [INPUT]), name


@pytest.mark.parametrize(
    ("name", "peer"), [("saliency", "Saliency"), ("inputxgradient", "InputXGradient")]
)
def test_gradient_maps_equal_captums(resnet, batch, name, peer):
    import captum.attr

    x, targets = batch
    ours = _featviz(resnet, name, x, targets)
    theirs = getattr(captum.attr, peer)(resnet).attribute(
        x.clone().requires_grad_(), target=targets
    )
    _close(ours, theirs.detach().sum(dim=1))
    assert ours.shape == (2, 64, 64)


def test_input_gradient_shares_the_layers_backward(resnet, batch):
    x, targets = batch
    ctx = forward_for_cam(resnet, x, ["layer3", "layer4"], input_gradients=True)
    gradcam = load_method("gradcam").compute(ctx, "layer4", targets)
    saliency = load_method("saliency").compute(ctx, INPUT, targets)
    alone = forward_for_cam(resnet, x, ["layer4"])
    _close(gradcam, load_method("gradcam").compute(alone, "layer4", targets))
    leaf = x.clone().requires_grad_()
    rows = torch.arange(2)
    (expected,) = torch.autograd.grad(resnet(leaf)[rows, targets].sum(), leaf)
    _close(saliency, expected.abs().sum(dim=1))
    assert len(ctx._memo) == 1  # one backward answered both


def test_cam_writes_signed_raw_maps_at_the_input_under_layer_input(
    tmp_path: Path, tiny_model_file: Path
):
    photo = tmp_path / "photo.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (30, 45, 3), dtype=np.uint8)).save(photo)
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app,
        [
            "cam",
            "-m",
            f"{tiny_model_file}:build",
            "--input-size",
            "32",
            str(photo),
            "-M",
            "inputxgradient",
            "-M",
            "gradcam",
            "-t",
            "2",
            "--save-raw",
            "-o",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.stderr
    folder = image_folder(out, "photo") / "cam"
    raw = np.load(folder / "inputxgradient" / "input" / "2.npz")
    layer_cam, heatmap = raw["layer_cam"], raw["heatmap"]
    assert layer_cam.shape == (32, 48)  # the model's input: shorter side 32, aspect kept
    assert (layer_cam < 0).any() and (layer_cam > 0).any()  # signed, as computed
    assert heatmap.shape == (30, 45) and heatmap.min() == 0 and heatmap.max() == 1
    # The picture is of |map|, brought to the photo like every map, then min-max scaled.
    magnitude = torch.nn.functional.interpolate(
        torch.from_numpy(np.abs(layer_cam))[None, None], size=(30, 45), mode="bilinear"
    )[0, 0].numpy()
    expected = (magnitude - magnitude.min()) / (magnitude.max() - magnitude.min())
    np.testing.assert_allclose(heatmap, expected, atol=1e-5)
    assert (folder / "inputxgradient" / "input" / "2.png").is_file()
    assert (folder / "gradcam" / "features" / "2.png").is_file()


def test_library_explains_with_a_pixel_method(tiny_model_file: Path):
    model = featviz.load(f"{tiny_model_file}:build", input_size=32)
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    found = featviz.explain(model, image, method="saliency", target=1)
    assert found.layer == INPUT and found.method == "saliency"
    assert found.layer_cam.shape == (32, 32) and found.heatmap.max() == 1
