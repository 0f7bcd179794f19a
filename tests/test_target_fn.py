"""--target-fn: the user's own score of the model's raw output, explained like a class."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_MODEL_SOURCE
from PIL import Image
from typer.testing import CliRunner

from featviz.cli.app import app

SCORES = '''
import torch


def margin(output):
    """A regression-like score: class 1's logit over class 2's."""
    return output[:, 1] - output[:, 2]


def similarity(output):
    """An embedding head's cosine similarity to a fixed direction (a dict output)."""
    direction = torch.linspace(-1, 1, output["embedding"].shape[1])
    return torch.nn.functional.cosine_similarity(output["embedding"], direction[None], dim=1)


def wrong_shape(output):
    return output
'''
DICT_MODEL = TINY_MODEL_SOURCE.replace(
    "        return self.fc(torch.flatten(self.pool(self.features(x)), 1))",
    "        features = torch.flatten(self.pool(self.features(x)), 1)\n"
    '        return {"logits": self.fc(features), "embedding": features}',
)


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    Path("tiny_model.py").write_text(TINY_MODEL_SOURCE)
    Path("dict_model.py").write_text(DICT_MODEL)
    Path("scores.py").write_text(SCORES)
    rng = np.random.default_rng(1)
    for index in range(3):
        Image.fromarray(rng.integers(0, 256, (20, 28, 3), dtype=np.uint8)).save(f"{index}.png")
    return tmp_path


def invoke(*args: str):
    return CliRunner().invoke(app, ["cam", *args, "--json", "--save-raw", "--input-size", "20"])


def test_a_margin_is_explained_as_its_gradient_says(workspace: Path, tiny_model) -> None:
    done = invoke("-m", "tiny_model.py:build", "--target-fn", "scores.py:margin", "0.png")
    assert done.exit_code == 0, done.output
    line = json.loads(done.stdout)
    [overlay, raw] = line["outputs"]
    assert overlay.endswith("/cam/gradcam/features/0_margin.png")  # named after the function
    [shown] = line["predictions"]
    # Recomputed: the same preprocessing featviz used, Grad-CAM of the margin at `features`.
    from featviz.inputs.decode import decode
    from featviz.inputs.preprocess import Preprocessing, to_tensor

    x = to_tensor(decode("0.png"), Preprocessing((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 20))
    taken = {}
    tiny_model.features.register_forward_hook(lambda m, i, o: taken.update(a=o))
    with torch.enable_grad():
        tiny_model.requires_grad_(True)
        out = tiny_model(x[None])
        score = out[0, 1] - out[0, 2]
        (grads,) = torch.autograd.grad(score, taken["a"])
    expected = (grads.mean((2, 3), keepdim=True) * taken["a"]).sum(1)[0].clamp(min=0)
    got = torch.from_numpy(np.load(raw)["layer_cam"])
    assert torch.allclose(got, expected.detach(), atol=1e-5)
    assert shown["label"] == "margin"
    assert shown["probability"] == pytest.approx(float(score.detach()), abs=1e-4)


def test_a_dict_output_and_an_embedding_similarity(workspace: Path) -> None:
    done = invoke("-m", "dict_model.py:build", "--target-fn", "scores.py:similarity", "0.png")
    assert done.exit_code == 0, done.output
    assert -1 <= json.loads(done.stdout)["predictions"][0]["probability"] <= 1
    plain = invoke("-m", "dict_model.py:build", "0.png")  # without: the dict's logits
    assert plain.exit_code == 0 and "explains output['logits']" in plain.stderr


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            ["--target-fn", "scores.py:wrong_shape"],
            "Error: --target-fn scores.py:wrong_shape returned [1, 5]: it must return one score "
            "per image, a tensor of shape [1]",
        ),
        (
            ["--target-fn", "scores.py:nope"],
            "Error: --target-fn scores.py:nope: 'scores.py' has no callable 'nope'",
        ),
        (
            ["--target-fn", "scores.py:margin", "-t", "2"],
            "Error: --target-fn replaces the classes: it cannot go with --target, --top-k or "
            "--min-score",
        ),
    ],
)
def test_a_bad_target_fn_is_one_line_and_exit_2(
    workspace: Path, extra: list[str], message: str
) -> None:
    done = invoke("-m", "tiny_model.py:build", *extra, "0.png")
    assert done.exit_code == 2, done.output
    # A shape is only seen on the first batch: then after the run's summary, as the last line.
    assert message in done.stderr.splitlines()[-2:]
