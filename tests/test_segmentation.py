"""Segmentation models: a class's score is the sum of its logits over the pixels assigned to it
(pytorch-grad-cam's SemanticSegmentationTarget); a tiny segmenter trained here on shapes where
the right answer is known; torchvision's segmenters by name with nothing downloaded."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, example_cache
from PIL import Image
from synthetic_shapes import (
    HEIGHT,
    SEGMENTATION_CLASSES,
    WIDTH,
    pixel_accuracy,
    scene,
    trained_segmenter,
    two_object_scenes,
)
from typer.testing import CliRunner

from featviz.cli.app import app
from featviz.explainer.batch import Explainer
from featviz.model.load import load_model
from featviz.model.options import ModelRequest

EXAMPLE = ROOT / "examples" / "shapes_segmenter.py"


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return example_cache(tmp_path_factory, "shapes_segmenter", trained_segmenter)


@pytest.fixture
def segmenter(cache: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    return load_model(ModelRequest(f"{EXAMPLE}:build", device="cpu"))


def test_the_segmenter_learned_the_scenes(segmenter) -> None:
    overall, objects = pixel_accuracy(_raw(segmenter))
    assert overall > 0.97 and objects > 0.85, (overall, objects)


def _raw(loaded):
    """The segmenter's module without featviz's task hook: its per-pixel logits."""
    from synthetic_shapes import Segmenter

    raw = Segmenter()
    raw.load_state_dict(loaded.module.state_dict())
    return raw.eval()


def test_the_default_layer_is_the_decoders_last_features(segmenter) -> None:
    assert segmenter.trace.task == "segmentation" and segmenter.num_classes == 4
    assert segmenter.default_cam_layer() == "decoder.1"


@pytest.mark.parametrize("method", ["gradcam", "hirescam", "layercam"])
def test_gradient_maps_match_a_recomputation_of_the_segmentation_score(
    segmenter, method: str
) -> None:
    inputs = torch.cat([image for image, _, _ in two_object_scenes(4, seed=3)])
    layer = "decoder.1"
    explainer = Explainer(segmenter, (method,), [layer], [], top_k=2, cam_batch_size=8)
    explained = explainer.explain(inputs)
    raw = _raw(segmenter)
    taken = {}
    raw.decoder[1].register_forward_hook(lambda m, i, o: taken.update(a=o))
    logits = raw(inputs)
    for column in range(2):
        classes = explained.targets[:, column]
        mask = logits.detach().argmax(1) == classes[:, None, None]
        score = (logits[torch.arange(4), classes] * mask).sum()
        (grads,) = torch.autograd.grad(score, taken["a"], retain_graph=True)
        acts = taken["a"].detach()
        if method == "gradcam":
            expected = (grads.mean((2, 3), keepdim=True) * acts).sum(1).clamp(min=0)
        elif method == "hirescam":  # signed: the ReLU comes with the heatmap
            expected = (grads * acts).sum(1)
        else:
            expected = (grads.clamp(min=0) * acts).sum(1).clamp(min=0)
        for i in range(4):
            got = explained.maps[i][column].layer_cam
            assert torch.allclose(got, expected[i], atol=1e-4 * float(expected[i].abs().max()))


def test_each_class_map_sits_on_its_own_object(segmenter) -> None:
    """Two objects per scene, one per half: the share of each present class's Grad-CAM mass
    (upsampled to the scene) on its own object's half, over 40 held-out scenes."""
    from featviz.cam import heatmap

    explainer = Explainer(segmenter, ("gradcam",), ["decoder.1"], [], top_k=1, cam_batch_size=8)
    shares = []
    for image, left, right in two_object_scenes(40, seed=11):
        for half, kind in ((0, left), (1, right)):
            [entry] = explainer.explain(image, targets=torch.tensor([[1 + kind]])).maps[0]
            values = heatmap(entry.layer_cam, (HEIGHT, WIDTH))
            own = values[:, half * WIDTH // 2 : (half + 1) * WIDTH // 2].sum()
            shares.append(float(own / values.sum()))
    mean, worst = float(np.mean(shares)), min(shares)
    print(f"segmentation Grad-CAM on its own half: mean {mean:.2f}, worst {worst:.2f}")
    assert mean > 0.85 and worst > 0.5, (mean, worst)


def test_cam_outlines_the_pixels_it_explains(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    monkeypatch.chdir(tmp_path)
    generator = torch.Generator().manual_seed(5)
    mask = torch.zeros(HEIGHT, WIDTH, dtype=torch.long)
    picture = scene([(0, 0), (1, 1)], generator, mask)  # a square left, a disc right
    big = (picture.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    big = np.kron(big, np.ones((8, 8, 1), dtype=np.uint8))  # 256 × 512: the map must scale
    Image.fromarray(big).save("scene.png")
    done = CliRunner().invoke(
        app, ["cam", "-m", f"{EXAMPLE}:build", "scene.png", "--top-k", "3", "--json"]
    )
    assert done.exit_code == 0, done.output
    line = json.loads(done.stdout)
    shown = {p["label"]: p["probability"] for p in line["predictions"][:3]}
    assert list(shown) == SEGMENTATION_CLASSES[:3]  # background, square, disc, by share
    assert 0.08 < shown["square"] < 0.11 and 0.02 < shown["disc"] < 0.04  # 196, 60 of 2048
    assert shown["background"] > shown["square"] > 0 and shown["disc"] > 0
    square = next(path for path in line["outputs"] if path.endswith("1_square.png"))
    overlay = np.asarray(Image.open(square))
    white = (overlay == 255).all(axis=2)
    # Where the square's border is, give or take one pixel of the model's input (8 here).
    square_pixels = np.pad(mask.numpy() == 1, 1)
    near = np.zeros_like(square_pixels)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            near |= np.roll(np.roll(square_pixels, dy, 0), dx, 1)
    inner = square_pixels.copy()
    for dy, dx in ((-2, 0), (2, 0), (0, -2), (0, 2)):
        inner &= np.roll(np.roll(square_pixels, dy, 0), dx, 1)
    band = np.kron((near & ~inner)[1:-1, 1:-1], np.ones((8, 8), dtype=bool))
    assert white.sum() > 4 * 8 * 10  # four sides of a 10-pixel square at least, 8 px thick
    assert white[band].sum() / white.sum() > 0.95
    assert not white[:, WIDTH * 4 :].any()  # the right half holds the disc, not the square


@pytest.mark.parametrize(
    ("name", "layer"),
    [("lraspp_mobilenet_v3_large", "backbone.16"), ("fcn_resnet50", "backbone.layer4")],
)
def test_torchvision_segmenters_by_name_download_nothing(
    name: str, layer: str, torch_home: Path, tmp_path: Path
) -> None:
    """torch_home is an empty cache and there is no network: a builder that fetched its
    ImageNet backbone would fail here."""
    photo = tmp_path / "photo.png"
    Image.open(ROOT / "sample_images" / "chelsea.png").resize((160, 120)).save(photo)
    done = CliRunner().invoke(
        app,
        ["cam", "-m", name, "--weights", "none", "--input-size", "96", str(photo), "--json",
         "-o", str(tmp_path / "out")],
    )  # fmt: skip
    assert done.exit_code == 0, done.output
    [overlay] = json.loads(done.stdout)["outputs"]
    assert f"/cam/gradcam/{layer}/" in overlay
    assert Image.open(overlay).size == (160, 120)
    assert not torch_home.exists() or not any(torch_home.rglob("*.pth"))
    layers = CliRunner().invoke(app, ["layers", "-m", name])
    assert layers.exit_code == 0 and f"{layer} " in layers.stdout


def test_a_copy_of_the_segmenter_is_explained_with_its_own_pixels(segmenter) -> None:
    """sanity explains deep copies of the model: each has its own copy of the task's hook, and
    its maps are captioned and outlined with what the copy assigned, not the original."""
    import copy

    inputs = torch.cat([image for image, _, _ in two_object_scenes(2, seed=4)])
    explainer = Explainer(segmenter, ("gradcam",), ["decoder.1"], [1, 2], top_k=1, cam_batch_size=8)
    original = explainer.explain(inputs)
    assert any(entry.region.any() for maps in original.maps for entry in maps)
    background_only = copy.deepcopy(segmenter.module)
    with torch.no_grad():
        background_only.decoder[2].bias[0] += 1e4  # every pixel is background now
    copied = explainer.explain(inputs, module=background_only, targets=original.targets)
    for maps in copied.maps:
        assert [entry.caption for entry in maps] == ["square 0.00", "disc 0.00"]
        assert not any(entry.region.any() for entry in maps)


@pytest.mark.parametrize("method", ["scorecam", "ablationcam"])
def test_perturbation_maps_match_pytorch_grad_cam_with_its_fixed_mask(
    segmenter, method: str
) -> None:
    """Their SemanticSegmentationTarget keeps the clean forward's mask for the masked re-runs;
    so do ours. ``encoder.1`` has the input's resolution, so both ways of upsampling the
    Score-CAM masks agree; it ends in a ReLU, so their ablation zeroes channels as ours does."""
    from pytorch_grad_cam import AblationCAM, ScoreCAM
    from pytorch_grad_cam.utils.model_targets import SemanticSegmentationTarget

    from featviz.cam import normalise

    inputs = torch.cat([image for image, _, _ in two_object_scenes(2, seed=8)])
    explainer = Explainer(segmenter, (method,), ["encoder.1"], [], top_k=2, cam_batch_size=16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # ablationcam's split suffix ends in the task's hook
        explained = explainer.explain(inputs)
    raw = _raw(segmenter).requires_grad_(True)
    with torch.no_grad():
        classes = raw(inputs).argmax(1)
    kind = {"scorecam": ScoreCAM, "ablationcam": AblationCAM}[method]
    for column in range(2):
        targets = explained.targets[:, column].tolist()
        masks = [(classes[i] == c).float().numpy() for i, c in enumerate(targets)]
        cam = kind(model=raw, target_layers=[raw.encoder[1]])
        cam.get_target_width_height = lambda input_tensor: (WIDTH, HEIGHT)
        with cam:
            theirs = cam(
                input_tensor=inputs,
                targets=[SemanticSegmentationTarget(c, m) for c, m in zip(targets, masks)],
            )
        ours = normalise(torch.stack([maps[column].layer_cam for maps in explained.maps]))
        torch.testing.assert_close(ours, torch.from_numpy(theirs), rtol=0, atol=5e-4)
