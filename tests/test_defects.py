"""Regressions for defects found by use (issue 13): each of these failed before its fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import TINY_MODEL_SOURCE, record_of
from PIL import Image
from typer.main import get_command
from typer.testing import CliRunner

from featviz.cli.app import app
from featviz.errors import first_line

# A model whose scores are NaN for bright images and finite for dark ones, so one run has both.
NAN_MODEL = (
    TINY_MODEL_SOURCE
    + """

class NanWhenBright(TinyNet):
    def forward(self, x):
        bright = x.mean(dim=(1, 2, 3)) > 0
        scale = torch.where(bright, torch.tensor(float("nan")), torch.tensor(1.0))
        return super().forward(x) * scale[:, None]


class NanActivations(TinyNet):
    def forward(self, x):
        bright = x.mean(dim=(1, 2, 3)) > 0
        return super().forward(torch.where(bright[:, None, None, None], x * float("inf"), x))


def nan():
    torch.manual_seed(0)
    return NanWhenBright()


def inf():
    torch.manual_seed(0)
    return NanActivations()
"""
)


def invoke(*args: str | Path):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(autouse=True)
def _workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("m.py").write_text(NAN_MODEL)
    Path("photos").mkdir()
    Image.new("RGB", (40, 30), (250, 250, 250)).save("photos/bright.png")
    Image.new("RGB", (40, 30), (5, 5, 5)).save("photos/dark.png")


def test_nan_scores_fail_that_image_alone_with_one_line() -> None:
    result = invoke("cam", "-m", "m.py:nan", "--input-size", "32", "photos", "-o", "out")
    assert result.exit_code == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [
        "error: photos/bright.png: the model's scores are NaN: there is nothing to explain"
    ]
    assert "Warning" not in result.stderr
    assert not Path("out/m.nan/bright").exists()  # no picture of NaN
    assert record_of(Path("out"), "dark")
    manifest = json.loads(Path("out/manifest.json").read_text())
    assert manifest["counts"] == {
        "done": 1, "failed": 1, "skipped": 0, "cut_off": 0, "not_attempted": 0
    }  # fmt: skip


def test_non_finite_maps_and_activations_fail_that_image() -> None:
    cam = invoke("cam", "-m", "m.py:inf", "--input-size", "32", "photos", "-o", "out", "--json")
    assert cam.exit_code == 1
    records = {json.loads(line)["input"]: json.loads(line) for line in cam.stdout.splitlines()}
    assert records["photos/dark.png"]["error"] is None
    bright = records["photos/bright.png"]["error"]
    assert bright.startswith("photos/bright.png: the model's scores are ")
    maps = invoke("maps", "-m", "m.py:inf", "--input-size", "32", "photos", "-o", "grids")
    assert maps.exit_code == 1
    assert "error: photos/bright.png: layer 'features.0' has NaN activations" in (
        maps.stderr.splitlines()
    )
    assert sorted(p.name for p in Path("grids/m.inf/dark/maps").iterdir()) == [
        "features.0.png",
        "features.2.png",
    ]
    assert not Path("grids/m.inf/bright").exists()


def test_top_fails_an_image_whose_activations_are_not_finite_and_ranks_the_others() -> None:
    result = invoke(
        "top", "-m", "m.py:inf", "--input-size", "32", "-l", "features.0", "-k", "2",
        "photos", "-o", "out",
    )  # fmt: skip
    assert result.exit_code == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert errors == ["error: photos/bright.png: layer 'features.0' has NaN activations"]
    ranking = json.loads(Path("out/top/m.inf/features.0.json").read_text())
    assert ranking["images"] == 1
    assert {entry["input"] for channel in ranking["channels"] for entry in channel["top"]} == {
        "photos/dark.png"
    }


def test_a_labels_file_with_the_wrong_count_is_a_usage_error() -> None:
    Path("three.txt").write_text("a\nb\nc\n")
    Path("m.py").write_text(TINY_MODEL_SOURCE)
    for command in ("cam", "maps"):
        result = invoke(
            command, "-m", "m.py:build", "--num-classes", "10", "--labels", "three.txt", "photos"
        )
        assert result.exit_code == 2
        assert result.stderr.splitlines() == [
            "Error: --labels three.txt has 3 names, the model has 10 classes",
            "Hint: give one class name per line, in the order of the model's outputs",
        ]
    assert not Path("featviz-out").exists()


def test_class_count_comes_from_the_output_not_a_linear_layer() -> None:
    """squeezenet ends in a Conv2d classifier: a search for the last Linear found none, and a
    10-class head kept ImageNet's 1000 names."""
    args = ["-m", "squeezenet1_1", "--weights", "none", "--num-classes", "10", "photos"]
    result = invoke("cam", *args, "--top-k", "11")
    assert result.exit_code == 2
    assert result.stderr.splitlines() == ["Error: --top-k 11: the model has only 10 classes"]
    named = invoke("cam", *args, "-t", "tabby")
    assert named.stderr.splitlines()[0] == "Error: --target 'tabby': this model has no class names"


def test_filters_expands_globs_and_skips_layers_without_kernels() -> None:
    result = invoke(
        "filters", "-m", "alexnet", "--weights", "none", "-l", "features.*", "-o", "out"
    )
    assert result.exit_code == 0, result.stderr
    convs = ["features.0", "features.3", "features.6", "features.8", "features.10"]
    assert result.stdout.splitlines() == [f"wrote out/filters/alexnet@none/{c}.png" for c in convs]
    assert result.stderr.splitlines() == [
        "Note: skipped 8 matching layers that are not Conv2d (features.1, features.2, "
        "features.4, features.5, features.7, …)"
    ]
    assert sorted(p.stem for p in Path("out/filters/alexnet@none").iterdir()) == sorted(convs)
    none = invoke("filters", "-m", "alexnet", "--weights", "none", "-l", "classifier.*")
    assert none.exit_code == 2
    assert none.stderr.splitlines()[0] == "Error: no Conv2d layer matches 'classifier.*'"


@pytest.mark.parametrize("model", ["regnet_y_400mf", "regnet_x_16gf"])
def test_layers_of_models_whose_builder_computes_with_tensors(model: str) -> None:
    result = invoke("layers", "-m", model)
    assert result.exit_code == 0, result.stderr
    default = [row for row in result.stdout.splitlines() if "← default cam layer" in row]
    assert [row.split()[0] for row in default] == ["trunk_output"]


def _options(command: str) -> dict:
    click_command = get_command(app).commands[command]
    return {
        param.name: param
        for param in click_command.params
        if param.param_type_name == "option" and param.name != "help"
    }


MODEL_OPTIONS = {
    "model",
    "weights",
    "checkpoint",
    "num_classes",
    "labels",
    "seed",
    "device",
    "input_size",
    "resize",
}


@pytest.mark.parametrize("command", ["maps", "cam", "layers", "filters"])
def test_every_command_accepts_every_model_option(command: str) -> None:
    assert set(_options(command)) >= MODEL_OPTIONS
    result = invoke("layers", "-m", "resnet18", "--weights", "none", "--labels", "imagenet")
    assert result.exit_code == 0, result.stderr


def test_ignored_options_say_so_in_help() -> None:
    result = CliRunner().invoke(app, ["layers", "--help"], env={"COLUMNS": "250"})
    help_text = " ".join(result.stdout.split())
    assert "Ignored by this command: the structure is built on the meta device" in help_text
    assert _options("layers")["input_size"].help == "Shorter side fed to the network."


@pytest.mark.parametrize("command", ["maps", "cam", "layers", "filters"])
def test_every_default_is_shown_in_help(command: str) -> None:
    result = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "250"})
    shown = " ".join(result.stdout.split())
    for name, option in _options(command).items():
        if option.required or (option.is_flag and not option.default):
            continue  # filters' --layer; --json, --fuse: off unless given
        if isinstance(option.show_default, str):
            text = f"[default: ({option.show_default})"
        elif option.is_flag:
            text = f"[default: {name.replace('_', '-')}"
        else:
            assert option.default is not None, f"--{name} shows no default"
            default = getattr(option.default, "value", option.default)
            text = f"[default: {default}"
        # A range may follow the default: [default: 32; x>=1]
        assert f"{text}]" in shown or f"{text};" in shown, f"{command} --{name}: {text}"


def test_first_line_of_an_exception_without_a_message() -> None:
    assert first_line(RuntimeError()) == "RuntimeError"
    assert first_line(RuntimeError("\n  out of memory\nmore")) == "out of memory"


def test_a_method_failing_with_an_empty_message_fails_its_images(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from featviz.cam.methods.gradient import GradCam

    def fail(self, ctx, layer, targets):
        raise RuntimeError()

    monkeypatch.setattr(GradCam, "_weights", fail)
    Path("m.py").write_text(TINY_MODEL_SOURCE)
    result = invoke("cam", "-m", "m.py:build", "--input-size", "32", "photos/dark.png")
    assert result.exit_code == 1
    assert result.stderr.splitlines()[0] == (
        "error: photos/dark.png: gradcam at layer 'features' failed on this input: RuntimeError"
    )


def test_the_manifest_records_the_requests_as_given_and_what_was_resolved() -> None:
    Path("m.py").write_text(TINY_MODEL_SOURCE)
    result = invoke("cam", "-m", "m.py:build", "--input-size", "32", "photos", "-l", "features.*")
    assert result.exit_code == 0, result.stderr
    manifest = json.loads(Path("featviz-out/manifest.json").read_text())
    assert manifest["request"]["options"]["layers"] == ["features.*"]
    assert manifest["request"]["model"]["spec"] == "m.py:build"
    assert manifest["resolved"]["layers"] == [f"features.{i}" for i in range(4)]
    assert torch.__version__ == manifest["versions"]["torch"]
