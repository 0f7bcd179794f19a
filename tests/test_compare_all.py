"""``--method all``: every registered method that applies to the model, derived from the
registry, so methods registered later are in it; those that say they cannot work on the model
are left out with a warning instead of failing the run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import image_folder
from PIL import Image
from typer.testing import CliRunner

from featviz.cam import registry
from featviz.cam.registry import ALL, INPUT, every_method, method_info, method_names, register
from featviz.cli.app import app

# conv → relu → flatten → Linear: no global-average-pool, so the method 'cam' cannot apply.
NO_POOL_SOURCE = """
import torch
from torch import nn


def build():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, stride=4, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 3)
    )
"""


def test_all_is_the_registry_less_attention_methods_on_a_cnn():
    layer_methods = [n for n in method_names() if not method_info(n).needs_attention]
    assert list(every_method(attention=False)) == layer_methods
    assert list(every_method(attention=True)) == method_names()
    assert {"rollout", "gradrollout"} <= set(method_names()) - set(layer_methods)


def test_a_method_registered_later_is_in_all(monkeypatch):
    monkeypatch.setattr(registry, "_METHODS", dict(registry._METHODS))
    register("later", module="x", class_name="X", summary="1 forward", needs_gradients=False)
    assert every_method(attention=False)[-1] == "later"


def _explainer(spec: str, methods: tuple[str, ...]):
    from featviz.explainer.batch import Explainer
    from featviz.model.load import load_model
    from featviz.model.options import ModelRequest

    model = load_model(ModelRequest(spec, device="cpu", input_size=32))
    layer = model.trace.default_cam_layer()
    return Explainer(model, methods, [layer], [], top_k=1, cam_batch_size=64), layer


def test_all_leaves_out_what_cannot_work_with_a_warning(tmp_path: Path):
    path = tmp_path / "no_pool.py"
    path.write_text(NO_POOL_SOURCE)
    explainer, layer = _explainer(f"{path}:build", (ALL,))
    expected = list(every_method(attention=False))
    assert [m.name for m in explainer.methods] == expected
    with pytest.warns(UserWarning, match=r"^--method all leaves out cam: method 'cam' needs"):
        explained = explainer.explain(torch.rand(2, 3, 32, 32))
    expected.remove("cam")
    assert [m.name for m in explainer.methods] == expected
    for maps in explained.maps:
        assert [entry.method for entry in maps] == expected  # one map each, top-1 class
        # Guided Grad-CAM is pixel-level but multiplies the layer's Grad-CAM: it keeps the layer.
        on_input = [m for m in expected if method_info(m).pixel_level and m != "guidedgradcam"]
        assert [entry.method for entry in maps if entry.layer == INPUT] == on_input
        assert all(entry.layer == layer for entry in maps if entry.method not in on_input)
    assert not explained.broken


def test_a_method_named_with_all_must_work(tmp_path: Path):
    """``-M cam -M all``: cam was asked for by name, so its usage error stops the run."""
    from featviz.errors import UsageError

    path = tmp_path / "no_pool.py"
    path.write_text(NO_POOL_SOURCE)
    explainer, _ = _explainer(f"{path}:build", ("cam", ALL))
    assert explainer.methods[0].name == "cam" and len(explainer.methods) == len(
        every_method(attention=False)
    )
    with pytest.raises(UsageError, match="method 'cam' needs"):
        explainer.explain(torch.rand(1, 3, 32, 32))


def test_compare_all_end_to_end(tiny_model_file: Path, tmp_path: Path):
    """One panel, one row per layer method (TinyNet ends in pool → Linear: cam applies too)."""
    photo = tmp_path / "a.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(photo)
    model = ["-m", f"{tiny_model_file}:build", "--input-size", "32"]
    runner = CliRunner()
    one = runner.invoke(
        app, ["compare", *model, "-M", "gradcam", str(photo), "-o", str(tmp_path / "one")]
    )
    every = runner.invoke(
        app, ["compare", *model, "-M", "all", str(photo), "-o", str(tmp_path / "all")]
    )
    assert one.exit_code == every.exit_code == 0, one.output + every.output
    small = Image.open(image_folder(tmp_path / "one", "a") / "compare.png")
    big = Image.open(image_folder(tmp_path / "all", "a") / "compare.png")
    rows = len(every_method(attention=False))
    assert big.size[0] == small.size[0]
    assert big.size[1] > small.size[1] * rows * 0.6  # the original's row is shared


def test_help_lists_all():
    result = CliRunner().invoke(app, ["compare", "--help"])
    assert result.exit_code == 0
    text = " ".join(result.output.split())  # as wrapped for the terminal's width
    assert "repeatable (listed below); all: every one that applies." in text
    assert "all every method above that applies to the model; scorecam, sscam and iscam" in text
