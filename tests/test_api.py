"""The library (featviz.api): a module defined in a script, explained as the CLI explains it."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SAMPLES, TINY_MODEL_SOURCE
from PIL import Image
from torch import nn
from typer.testing import CliRunner

import featviz
from featviz.cli.app import app
from featviz.errors import InputError, UsageError


class ScriptNet(nn.Module):
    """A network a user writes in a notebook cell: conv → ReLU → conv → pool → linear."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 6, 3, stride=2, padding=1)
        )
        self.head = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.body(x)).mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return np.asarray(Image.open(SAMPLES / "chelsea.png").convert("RGB").resize((60, 40)))


def gradcam_float64(net: nn.Module, x: torch.Tensor, target: int) -> np.ndarray:
    """Grad-CAM of ``net``'s second conv by its formula, in float64: α_k = mean_ij ∂S/∂A_kij,
    L = ReLU(Σ_k α_k A_k)."""
    net = net.double()
    activations = net.body(x.double())
    scores = net.head(torch.relu(activations).mean(dim=(2, 3)))
    (gradients,) = torch.autograd.grad(scores[0, target], activations)
    weights = gradients.mean(dim=(2, 3), keepdim=True)
    return (weights * activations).sum(dim=1).clamp(min=0)[0].detach().numpy()


def test_a_script_module_gets_the_formula_and_stays_as_it_was(photo: np.ndarray) -> None:
    net = ScriptNet().train()
    hooks = len(net._forward_hooks)
    model = featviz.load(net, input_size=32, labels=["a", "b", "c", "d"])
    explanation = featviz.explain(model, photo, layer="body.2", target=2)
    assert (explanation.method, explanation.layer, explanation.index) == ("gradcam", "body.2", 2)
    assert explanation.label == "c"
    x = model.batch([_input(model, photo)])
    expected = gradcam_float64(ScriptNet(), x, 2)
    assert explanation.layer_cam.dtype == np.float32
    np.testing.assert_allclose(explanation.layer_cam, expected, rtol=1e-5, atol=1e-6)
    assert explanation.heatmap.shape == photo.shape[:2]
    assert explanation.heatmap.min() == 0 and explanation.heatmap.max() == 1
    # Nothing about the module changed for good: still training, trainable, hook-free.
    assert net.training and all(p.requires_grad for p in net.parameters())
    assert len(net._forward_hooks) == hooks
    assert next(net.parameters()).device.type == "cpu"


def _input(model, photo: np.ndarray) -> torch.Tensor:
    from featviz.inputs.preprocess import normalise, resized

    return normalise(resized(Image.fromarray(photo), model.preprocessing), model.preprocessing)


def test_the_library_and_the_cli_write_the_same_maps(
    photo: np.ndarray, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same model as a factory file: ``--save-raw`` holds the library's arrays."""
    monkeypatch.chdir(tmp_path)
    Path("tiny_model.py").write_text(TINY_MODEL_SOURCE)
    Image.fromarray(photo).save("photo.png")
    result = CliRunner().invoke(
        app,
        ["cam", "-m", "tiny_model.py:build", "--input-size", "32", "-M", "gradcam",
         "-M", "layercam", "--top-k", "2", "--save-raw", "photo.png", "-o", "out", "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    raws = sorted(p for p in json.loads(result.stdout)["outputs"] if p.endswith(".npz"))
    sys.path.insert(0, str(tmp_path))
    try:
        from tiny_model import build  # a fresh module, as a notebook would define it
    finally:
        sys.path.remove(str(tmp_path))
    found = featviz.explain(
        featviz.load(build(), input_size=32), "photo.png", method=["gradcam", "layercam"], top_k=2
    )
    assert len(found) == len(raws) == 4
    mine = {f"cam/{e.method}/{e.layer}/{e.index}.npz": e for e in found}
    for path in raws:
        saved = np.load(path)
        explanation = mine[path.split("/photo/", 1)[1]]
        np.testing.assert_array_equal(explanation.heatmap, saved["heatmap"])
        np.testing.assert_array_equal(explanation.layer_cam, saved["layer_cam"])


def test_a_second_call_on_a_module_pays_no_second_trace(
    photo: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    import featviz.model.load

    traced = []
    real = featviz.model.load._traced
    monkeypatch.setattr(
        featviz.model.load, "_traced", lambda *a, **k: traced.append(1) or real(*a, **k)
    )
    net = ScriptNet()
    first = featviz.explain(net, photo, layer="body.2")
    second = featviz.explain(net, [photo, photo], layer="body.2")
    assert len(traced) == 1
    np.testing.assert_array_equal(first.heatmap, second[1].heatmap)


def test_images_of_every_kind_and_the_shape_of_the_answer(photo: np.ndarray) -> None:
    model = featviz.load(ScriptNet(), input_size=32)
    path = str(SAMPLES / "chelsea.png")
    one = featviz.explain(model, Image.fromarray(photo), layer="body.2")
    assert isinstance(one, featviz.Explanation) and one.input == "image 0"
    many = featviz.explain(model, [path, photo, np.stack([photo])[0]], layer="body.2")
    assert isinstance(many, featviz.Explanations)
    assert [e.input for e in many] == [path, "image 1", "image 2"]
    np.testing.assert_array_equal(many[1].heatmap, many[2].heatmap)
    batch = featviz.explain(model, np.stack([photo, photo]), layer="body.2", method=["gradcam"])
    assert len(batch) == 2
    overlay = one.overlay(alpha=0.3, cmap="viridis")
    assert overlay.size == (60, 40) and one._repr_png_().startswith(b"\x89PNG")
    assert many._repr_png_().startswith(b"\x89PNG")


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.zeros((4, 4, 3), dtype=np.float32), r"^expected a uint8 array \(pixels 0–255\), got "),
        (np.zeros((4, 4, 4), dtype=np.uint8), r"^expected an \(H, W\) or \(H, W, 3\) array, got "),
        (3, r"^expected a path, a PIL image or a numpy array, got int$"),
    ],
)
def test_what_is_not_an_image_is_a_usage_error(image: object, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        featviz.explain(featviz.load(ScriptNet()), [image])


def test_an_image_that_cannot_be_read_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"nosuch\.png: does not exist"):
        featviz.explain(featviz.load(ScriptNet()), str(tmp_path / "nosuch.png"))


def test_feature_maps_are_what_maps_saves(photo: np.ndarray, tmp_path: Path) -> None:
    model = featviz.load(ScriptNet(), input_size=32)
    maps = featviz.feature_maps(model, photo, layer=["body.0", "body.2"])
    assert maps.activations["body.0"].shape == (8, 32, 48)
    assert maps.activations["body.2"].shape == (6, 16, 24)
    grid = maps.grid("body.2", max_channels=4, cell_size=8)
    assert grid.size[0] > 0 and maps._repr_png_().startswith(b"\x89PNG")


def test_judging_calls_give_what_the_commands_give(photo: np.ndarray) -> None:
    model = featviz.load(ScriptNet(), input_size=32)
    panel = featviz.compare(model, photo, method=["gradcam", "eigencam"], layer="body.2")
    assert panel.width > 2 * photo.shape[1]
    rows = featviz.score(model, photo, method="gradcam", layer="body.2", steps=4)
    assert [r["method"] for r in rows] == ["gradcam", "random", "center"]
    assert all(0 <= r["deletion_auc"] <= 1 for r in rows)
    steps = featviz.sanity(model, photo, method="gradcam", layer="body.2")
    assert [r["randomized"] for r in steps] == ["none", "head", "body.2", "body.0"]
    assert steps[0]["spearman"] == 1.0


def test_the_explainer_returns_columns_for_ray_data(photo: np.ndarray) -> None:
    explainer = featviz.Explainer(ScriptNet(), layer="body.2", target=1)
    batch = explainer({"image": np.stack([photo, photo]), "id": np.array([7, 8])})
    assert list(batch) == ["image", "id", "heatmap", "class_index", "label", "probability"]
    assert batch["heatmap"][0].shape == photo.shape[:2] and list(batch["class_index"]) == [1, 1]
    assert list(batch["id"]) == [7, 8]
    with pytest.raises(UsageError, match=r"^4 maps for 2 images: columns hold one map per image"):
        featviz.Explainer(ScriptNet(), layer="body.2", top_k=2)({"image": [photo, photo]})


def test_importing_featviz_imports_no_torch() -> None:
    done = subprocess.run(
        [sys.executable, "-c", "import sys, featviz; featviz.load; print('torch' in sys.modules)"],
        capture_output=True,
        text=True,
    )
    assert done.stdout.strip() == "False", done.stderr


@pytest.mark.parametrize(
    ("model", "options", "message"),
    [
        (42, {}, r"^expected a spec string or a torch\.nn\.Module, got int$"),
        ("resnet18", {"labels": ["cat", "dog"]}, r"^labels as a list, mean and std are for a "),
        ("resnet18", {"std": (1.0, 1.0, 1.0)}, r"^labels as a list, mean and std are for a "),
        ("resnet18", {"clip_length": 8}, r"^clip_length and frame_rate are for a module "),
    ],
)
def test_load_refuses_what_is_not_a_spec_and_a_module_s_options_with_a_spec(
    model: object, options: dict, message: str
) -> None:
    with pytest.raises(UsageError, match=message):
        featviz.load(model, weights="none", **options)


def test_a_head_that_scores_every_class_the_same_is_warned_of(photo: np.ndarray) -> None:
    net = ScriptNet()
    nn.init.zeros_(net.head.weight)
    nn.init.zeros_(net.head.bias)
    model = featviz.load(net, input_size=32)
    with pytest.warns(UserWarning, match=r"^the model gives every class the same score on some"):
        explanation = featviz.explain(model, photo, layer="body.2")
    assert not explanation.heatmap.any()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a trained head's scores differ: no warning
        featviz.explain(featviz.load(ScriptNet(), input_size=32), photo, layer="body.2")
