"""Real behaviour on trained transformers, where the right answer is known
(examples/synthetic_shapes.py): in a scene with two objects of different classes, each class's
map puts most of its mass on its own object's half.

Measured here (20 scenes, 40 maps; mean / worst share on the own half):
- Swin, Grad-CAM at its default layer (``norm``, channels-last 4 × 8): 0.89 / 0.80.
- ViT (class token + 2 registers), gradient-weighted rollout: 0.96 / 0.87; Grad-CAM at its
  default layer (the last attention's input, ``blocks.2.norm1``): 0.78 / 0.55. Plain rollout is
  class-agnostic: the same map for both classes, so 0.5 on average by construction. LeGrad
  (every block): 0.71 / 0.54, all 40 on the right half (with only the last one or two blocks,
  as its reference code does for large CLIP models: 0.72 / 0.28 and 0.70 / 0.36, 34 of 40).
The prints (``pytest -s``) give the numbers of a run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import example_cache, image_folder
from PIL import Image
from synthetic_shapes import CLASSES, HEIGHT, WIDTH, accuracy, swin, trained, two_object_scenes, vit
from typer.testing import CliRunner

from featviz.cam import forward_for_cam, heatmap, load_method
from featviz.cam.methods.attnlrp import AttnLrpRules, attnlrp_relevance, forward_under_rules
from featviz.cli.app import app
from featviz.layers.trace import trace_model

EXAMPLES = Path(__file__).parent.parent / "examples"
# Parameters added to the residual stream or to a layer's output: they keep a share of AttnLRP's
# relevance.
ADDITIVE = ("bias", "pos_embed", "cls_token", "reg_token")


def own_half_share(heat: np.ndarray, half: int) -> float:
    """The share of a heatmap's mass on the left (0) or right (1) half."""
    total = float(heat.sum())
    own = heat[:, : WIDTH // 2] if half == 0 else heat[:, WIDTH // 2 :]
    return float(own.sum()) / total if total > 0 else 0.5


@pytest.fixture(scope="module")
def trained_swin():
    model = trained(swin)
    assert accuracy(model) > 0.9
    return model


@pytest.fixture(scope="module")
def trained_vit():
    model = trained(vit)
    assert accuracy(model) > 0.9
    return model


def test_swin_default_map_sits_on_each_object(trained_swin) -> None:
    trace = trace_model(trained_swin, (1, 3, HEIGHT, WIDTH))
    layer = trace.default_cam_layer()
    assert layer == "norm" and trace.get(layer).layout.kind == "nhwc"
    assert trace.get(layer).grid == (4, 8)  # recognised channels-last at a non-square input
    gradcam = load_method("gradcam")
    shares = []
    for x, left, right in two_object_scenes(20, seed=1):
        ctx = forward_for_cam(trained_swin, x, [layer], trace.calls(), layouts=trace.layouts())
        for half, target in ((0, left), (1, right)):
            layer_map = gradcam.compute(ctx, layer, torch.tensor([target]))[0]
            shares.append(own_half_share(heatmap(layer_map, (HEIGHT, WIDTH)).numpy(), half))
    print("swin gradcam", round(float(np.mean(shares)), 3), round(min(shares), 3))
    assert np.mean(shares) > 0.75 and min(shares) > 0.55, (np.mean(shares), min(shares))


def test_vit_gradient_rollout_sits_on_each_object_end_to_end(
    trained_vit, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the command line, with examples/shapes_vit.py (its cached weights are the ones
    trained here), PNG scenes, --top-k 2 (the two objects' classes), raw heatmaps read back."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    (cache / "featviz").mkdir(parents=True)
    version = torch.__version__.split("+")[0]
    torch.save(trained_vit.state_dict(), cache / "featviz" / f"shapes_vit-{version}.pt")
    scenes = tmp_path / "scenes"
    scenes.mkdir()
    halves = {}
    for i, (x, left, right) in enumerate(two_object_scenes(20, seed=1)):
        pixels = ((x[0] * 0.5 + 0.5).clamp(0, 1) * 255).round().byte().permute(1, 2, 0)
        Image.fromarray(pixels.numpy()).save(scenes / f"s{i:02d}.png")
        halves[f"s{i:02d}"] = {left: 0, right: 1}
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app,
        [
            "cam",
            "-m",
            f"{EXAMPLES / 'shapes_vit.py'}:build",
            "-M",
            "gradrollout",
            "-M",
            "legrad",
            "-M",
            "gradcam",
            "--top-k",
            "2",
            "--save-raw",
            "-q",
            str(scenes),
            "-o",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.stderr
    shares: dict[str, list[float]] = {
        "gradrollout/attention": [],
        "legrad/attention": [],
        "gradcam/blocks.2.norm1": [],
    }
    for name, sides in halves.items():
        for folder, values in shares.items():
            for target, half in sides.items():
                where = image_folder(out, name) / "cam" / folder
                raw = np.load(where / f"{target}_{CLASSES[target]}.npz")
                assert raw["layer_cam"].shape == (8, 16)  # the patch grid, 2 registers dropped
                values.append(own_half_share(raw["heatmap"], half))
    rollout = shares["gradrollout/attention"]
    assert np.mean(rollout) > 0.85 and min(rollout) > 0.7, (np.mean(rollout), min(rollout))
    assert np.mean(shares["gradcam/blocks.2.norm1"]) > 0.55
    legrad = shares["legrad/attention"]  # on the right half every time, like Grad-CAM
    assert np.mean(legrad) > 0.65 and min(legrad) > 0.5, (np.mean(legrad), min(legrad))
    print({k: (round(float(np.mean(v)), 3), round(min(v), 3)) for k, v in shares.items()})


def test_vit_attnlrp_forward_is_the_models_own(trained_vit) -> None:
    x = torch.cat([scene for scene, _, _ in two_object_scenes(4, seed=2)])
    with torch.no_grad():
        plain = trained_vit(x)
        with AttnLrpRules():
            ruled = trained_vit(x)
    torch.testing.assert_close(ruled, plain, rtol=1e-4, atol=1e-5)


def test_vit_attnlrp_score_is_pixels_additive_parameters_and_softmax_remainders(
    trained_vit, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every rule but softmax's conserves relevance, so S^c = Σ pixels + Σ what biases, the
    position embedding and the prefix tokens keep + Σ over softmaxes (Σ R_out − Σ R_in)."""
    remainders: list[torch.Tensor] = []
    softmax = torch.Tensor.softmax

    def booked(logits: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        s = softmax(logits, *args, **kwargs)
        flows: dict[str, torch.Tensor] = {}
        s.register_hook(lambda g: flows.__setitem__("out", (s.detach() * g).sum()))
        logits.register_hook(
            lambda g: remainders.append(flows["out"] - (logits.detach() * g).sum())
        )
        return s

    monkeypatch.setattr(torch.Tensor, "softmax", booked)
    additive = [p for n, p in trained_vit.named_parameters() if n.split(".")[-1] in ADDITIVE]
    try:
        for p in additive:
            p.requires_grad_()
        for x, left, _ in two_object_scenes(3, seed=3):
            remainders.clear()
            leaf, logits = forward_under_rules(trained_vit, x)
            score = logits[0, left]
            pixels, *kept = torch.autograd.grad(score, [leaf, *additive])
            score = float(score.detach())
            parts = {
                "pixels": float((leaf * pixels).sum().detach()),
                "parameters": float(sum((p * g).sum() for p, g in zip(additive, kept)).detach()),
                "softmax": float(sum(remainders)),
            }
            print({k: round(v / score, 3) for k, v in parts.items()})
            assert len(remainders) == 3  # one softmax per block
            assert sum(parts.values()) == pytest.approx(score, rel=1e-2)
            assert 0.2 < parts["pixels"] / score < 1
    finally:
        for p in additive:
            p.requires_grad_(False)


def test_vit_attnlrp_is_the_same_for_a_scene_alone_and_in_a_batch(trained_vit) -> None:
    scenes = two_object_scenes(3, seed=4)
    x = torch.cat([scene for scene, _, _ in scenes])
    targets = torch.tensor([left for _, left, _ in scenes])
    together, scores = attnlrp_relevance(trained_vit, x, targets)
    alone, score = attnlrp_relevance(trained_vit, x[1:2], targets[1:2])
    torch.testing.assert_close(together[1:2], alone, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(scores[1:2], score)


def test_vit_attnlrp_sits_on_each_object_more_often_than_gradcam_end_to_end(
    trained_vit, tmp_path_factory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the command line, like gradient rollout above; the positive relevance is
    measured (the picture is of |relevance|, and the other object gets negative relevance)."""
    cache = example_cache(tmp_path_factory, "shapes_vit", lambda: trained_vit)
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    scenes = tmp_path / "scenes"
    scenes.mkdir()
    halves = {}
    for i, (x, left, right) in enumerate(two_object_scenes(12, seed=1)):
        pixels = ((x[0] * 0.5 + 0.5).clamp(0, 1) * 255).round().byte().permute(1, 2, 0)
        Image.fromarray(pixels.numpy()).save(scenes / f"s{i:02d}.png")
        halves[f"s{i:02d}"] = {left: 0, right: 1}
    out = tmp_path / "out"
    model = ["-m", f"{EXAMPLES / 'shapes_vit.py'}:build"]
    methods = ["-M", "attnlrp", "-M", "gradcam", "--top-k", "2", "--save-raw", "-q"]
    result = CliRunner().invoke(app, ["cam", *model, *methods, str(scenes), "-o", str(out)])
    assert result.exit_code == 0, result.stderr
    shares: dict[str, list[float]] = {"attnlrp": [], "gradcam": []}
    for name, sides in halves.items():
        folder = image_folder(out, name) / "cam"
        for target, half in sides.items():
            file = f"{target}_{CLASSES[target]}.npz"
            relevance = np.load(folder / "attnlrp" / "input" / file)["layer_cam"]
            assert relevance.shape == (32, 64) and (relevance < 0).any()  # signed, raw
            shares["attnlrp"].append(own_half_share(relevance.clip(min=0), half))
            gradcam = np.load(folder / "gradcam" / "blocks.2.norm1" / file)["heatmap"]
            shares["gradcam"].append(own_half_share(gradcam, half))
    print({k: (round(float(np.mean(v)), 3), round(min(v), 3)) for k, v in shares.items()})
    right = {k: sum(share > 0.5 for share in v) for k, v in shares.items()}
    assert right["attnlrp"] == len(shares["attnlrp"]) >= right["gradcam"]
    assert np.mean(shares["attnlrp"]) > max(0.8, np.mean(shares["gradcam"]))
