"""The command line end to end on tiny models: exit codes, exact error lines, files on disk."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import image_folder, record_of
from PIL import Image
from typer.testing import CliRunner

from featviz import __version__
from featviz.cli.app import app

runner = CliRunner()


def invoke(*args: str | Path, stdin: str | None = None):
    return runner.invoke(app, [str(a) for a in args], input=stdin)


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """Three small photos of two shapes (so two batches), one in a sub-folder."""
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, size in [("a.png", (40, 30)), ("b.jpg", (40, 30)), ("sub/c.png", (30, 45))]:
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(
            folder / name
        )
    return folder


@pytest.fixture
def tiny(tiny_model_file: Path) -> list[str]:
    return ["-m", f"{tiny_model_file}:build", "--input-size", "32"]


def test_version() -> None:
    result = invoke("--version")
    assert result.exit_code == 0 and result.stdout == f"featviz {__version__}\n"


def test_help_does_not_import_torch() -> None:
    code = (
        "import sys; from typer.testing import CliRunner; from featviz.cli.app import app; "
        "r = CliRunner().invoke(app, ['cam', '--help']); "
        "print(r.exit_code, 'torch' in sys.modules, 'gradcam++' in r.stdout)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == ["0", "False", "True"]


def test_unknown_model_exits_2_with_suggestions(photos: Path) -> None:
    result = invoke("maps", "-m", "resnet5", photos)
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        "Error: unknown model 'resnet5'",
        "Hint: closest: 'resnet50', 'resnet152', 'resnet34'; list them with `featviz models`, or "
        "pass your own as file.py:callable",
    ]


def test_unknown_layer_exits_2_and_points_at_featviz_layers(photos: Path, tiny) -> None:
    result = invoke("maps", *tiny, "-l", "feature.0", photos)
    assert result.exit_code == 2
    assert result.stderr.splitlines()[0] == "Error: unknown layer 'feature.0'"
    assert "featviz layers" in result.stderr


def test_unknown_method_is_a_usage_error(photos: Path) -> None:
    result = invoke("cam", "-M", "gradcam+++", photos)
    assert result.exit_code == 2
    assert "'gradcam+++' is not one of" in result.stderr


def test_a_missing_input_fails_alone(photos: Path, tmp_path: Path, tiny) -> None:
    result = invoke("maps", *tiny, tmp_path / "nope.jpg", photos / "a.png", "-o", tmp_path / "out")
    assert result.exit_code == 1
    assert result.stderr.splitlines()[0] == f"error: {tmp_path / 'nope.jpg'}: does not exist"
    assert result.stdout.startswith(f"{photos / 'a.png'} → 2 files in ")


def test_output_path_that_is_a_file_exits_2(photos: Path, tmp_path: Path, tiny) -> None:
    target = tmp_path / "taken"
    target.write_text("x")
    result = invoke("maps", *tiny, photos, "-o", target)
    assert result.exit_code == 2
    assert (
        result.stderr.splitlines()[0] == f"Error: output path '{target}' exists and is not a folder"
    )


def test_pretrained_weights_offline_exit_1_without_traceback(
    photos: Path, torch_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def offline(*args: object, **kwargs: object) -> None:
        raise OSError("network is unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    result = invoke("maps", "-m", "resnet18", photos)
    assert result.exit_code == 1
    assert result.stderr.startswith(
        "Error: pretrained weights ResNet18_Weights.IMAGENET1K_V1 "
        "are not cached and cannot be downloaded"
    )
    assert "Traceback" not in result.stderr


def test_maps_writes_one_grid_per_layer_mirroring_folders(
    photos: Path, tmp_path: Path, tiny
) -> None:
    out = tmp_path / "out"
    result = invoke("maps", *tiny, "--recursive", photos, "-o", out, "--cell-size", "8")
    assert result.exit_code == 0, result.stderr
    for stem in ["a", "b", "sub/c"]:
        grids = sorted(p.name for p in (image_folder(out, stem) / "maps").iterdir())
        assert grids == ["features.0.png", "features.2.png"]
    # features.2 of TinyNet: 6 channels → 3 per row × 2 rows; a 40×30 photo becomes 43×32,
    # stride 2 → 22×16 maps, not enlarged (8 px cells are smaller).
    grid = Image.open(image_folder(out, "a") / "maps" / "features.2.png")
    assert grid.size == (3 * (22 + 1) + 1, 2 * (16 + 1) + 1)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"] == {
        "done": 3, "failed": 0, "skipped": 0, "cut_off": 0, "not_attempted": 0
    }  # fmt: skip
    assert manifest["versions"]["torch"] == torch.__version__


def test_maps_save_raw_writes_the_activations(photos: Path, tmp_path: Path, tiny) -> None:
    out = tmp_path / "out"
    result = invoke("maps", *tiny, photos / "a.png", "-l", "features.0", "--save-raw", "-o", out)
    assert result.exit_code == 0, result.stderr
    raw = np.load(image_folder(out, "a") / "maps" / "features.0.npy")
    assert raw.shape == (4, 32, 43) and raw.dtype == np.float32
    assert (raw < 0).any()  # captured before the in-place ReLU


def test_cam_overlay_has_the_original_size_and_alpha_zero_is_the_original(
    photos: Path, tmp_path: Path, tiny
) -> None:
    out = tmp_path / "out"
    result = invoke(
        "cam",
        *tiny,
        photos / "sub" / "c.png",
        "--alpha",
        "0",
        "-t",
        "3",
        "--heatmap",
        "--save-raw",
        "-o",
        out,
    )
    assert result.exit_code == 0, result.stderr
    stem = image_folder(out, "c") / "cam" / "gradcam" / "features" / "3"
    original = np.asarray(Image.open(photos / "sub" / "c.png"))
    np.testing.assert_array_equal(np.asarray(Image.open(f"{stem}.png")), original)
    assert Image.open(f"{stem}.heatmap.png").size == (30, 45)
    raw = np.load(f"{stem}.npz")
    assert raw["heatmap"].shape == (45, 30) and raw["layer_cam"].shape == (24, 16)
    assert raw["heatmap"].min() >= 0.0 and raw["heatmap"].max() <= 1.0


def test_cam_json_lines_are_the_only_stdout(photos: Path, tmp_path: Path, tiny) -> None:
    result = invoke("cam", *tiny, "-r", photos, "--json", "--top-k", "2", "-o", tmp_path / "o")
    assert result.exit_code == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert sorted(r["input"] for r in records) == sorted(
        str(photos / name) for name in ["a.png", "b.jpg", "sub/c.png"]
    )
    for record in records:
        assert set(record) == {"input", "outputs", "predictions", "error", "skipped"}
        assert record["error"] is None and len(record["outputs"]) == 2
        assert [p["index"] for p in record["predictions"]][:2] == [
            int(Path(o).name.split(".")[0]) for o in record["outputs"]
        ]
        assert abs(sum(p["probability"] for p in record["predictions"]) - 1.0) < 1e-4


def test_a_bad_file_fails_alone_and_the_run_exits_1(photos: Path, tmp_path: Path, tiny) -> None:
    (photos / "broken.png").write_bytes(b"not a png at all")
    out = tmp_path / "out"
    result = invoke("cam", *tiny, photos, "-o", out)
    assert result.exit_code == 1
    assert f"error: {photos / 'broken.png'}: not an image file" in result.stderr
    assert record_of(out, "a") and record_of(out, "b")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"] == {
        "done": 2, "failed": 1, "skipped": 0, "cut_off": 0, "not_attempted": 0
    }  # fmt: skip
    assert "1 failed" in result.stderr


def test_skip_existing_resumes_without_rewriting(photos: Path, tmp_path: Path, tiny) -> None:
    out = tmp_path / "out"
    assert invoke("cam", *tiny, photos, "-o", out).exit_code == 0
    overlay = next((image_folder(out, "a") / "cam").rglob("*.png"))
    written = overlay.stat().st_mtime_ns
    again = invoke("cam", *tiny, photos, "-o", out, "--skip-existing", "--json")
    assert again.exit_code == 0
    assert all(json.loads(line)["skipped"] for line in again.stdout.splitlines())
    assert overlay.stat().st_mtime_ns == written
    other = invoke("cam", *tiny, photos, "-o", out, "--skip-existing", "--json", "-M", "layercam")
    assert not any(json.loads(line)["skipped"] for line in other.stdout.splitlines())


def test_target_names_and_errors(photos: Path, tmp_path: Path) -> None:
    args = [
        "-m",
        "torchvision.models:resnet18",
        "--labels",
        "imagenet",
        "--input-size",
        "64",
        photos / "a.png",
        "-o",
        tmp_path / "o",
    ]
    ambiguous = invoke("cam", "-t", "bull", *args)
    assert ambiguous.exit_code == 2
    assert ambiguous.stderr.splitlines() == [
        "Error: --target 'bull' is ambiguous: 2 classes have those words: 'Boston bull', "
        "'bull mastiff'",
        "Hint: give the whole name, e.g. -t 'Boston bull', or the class index (195)",
    ]
    unknown = invoke("cam", "-t", "tabbby", *args)
    assert unknown.exit_code == 2
    assert unknown.stderr.splitlines() == [
        "Error: --target 'tabbby': no such class",
        "Hint: closest: 'tabby', 'tray'",
    ]
    too_many = invoke("cam", "--top-k", "1001", *args)
    assert too_many.stderr.splitlines()[0] == "Error: --top-k 1001: the model has only 1000 classes"
    ok = invoke("cam", "-t", "TABBY", "-t", "Egyptian", *args)
    assert ok.exit_code == 0, ok.stderr
    names = sorted(
        p.name for p in (image_folder(tmp_path / "o", "a") / "cam" / "gradcam" / "layer4").iterdir()
    )
    assert names == ["281_tabby.png", "285_Egyptian_cat.png"]


def test_cam_method_on_a_net_without_gap_linear_suggests_gradcam(photos: Path) -> None:
    result = invoke("cam", "-m", "alexnet", "--weights", "none", "-M", "cam", photos / "a.png")
    assert result.exit_code == 2
    assert "use --method gradcam" in result.stderr


def test_layers_and_models_commands() -> None:
    layers = invoke("layers", "-m", "resnet18")
    assert layers.exit_code == 0
    line = next(row for row in layers.stdout.splitlines() if row.startswith("layer4 "))
    assert "512×7×7" in line and "← default cam layer" in line
    models = invoke("models", "resnet1")
    assert models.exit_code == 0
    assert models.stdout.splitlines()[1:] == [  # the segmentation models too
        "deeplabv3_resnet101  COCO_WITH_VOC_LABELS_V1",
        "fcn_resnet101        COCO_WITH_VOC_LABELS_V1",
        "resnet101            IMAGENET1K_V1, IMAGENET1K_V2",
        "resnet152            IMAGENET1K_V1, IMAGENET1K_V2",
        "resnet18             IMAGENET1K_V1",
        "wide_resnet101_2     IMAGENET1K_V1, IMAGENET1K_V2",
    ]


def test_filters_command_draws_rgb_kernels(tmp_path: Path) -> None:
    result = invoke(
        "filters", "-m", "alexnet", "--weights", "none", "-l", "features.0", "-o", tmp_path
    )
    assert result.exit_code == 0
    grid = Image.open(tmp_path / "filters" / "alexnet@none" / "features.0.png")
    # 64 kernels of 11×11 enlarged ×3 (32 px cells) in an 8×8 grid.
    assert grid.size == (8 * 34 + 1, 8 * 34 + 1) and grid.mode == "RGB"
    wrong = invoke("filters", "-m", "alexnet", "--weights", "none", "-l", "features.1")
    assert wrong.exit_code == 2
    assert wrong.stderr.splitlines()[0] == (
        "Error: layer 'features.1' is a ReLU, not a Conv2d: it has no kernels to draw"
    )


GATED_MODEL = """
import torch
from torch import nn


class Gated(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        a = self.features(x)
        if a.amax() > 1e6:  # data-dependent: torch.fx cannot trace this
            a = a / a.amax()
        return self.fc(a.mean(dim=(2, 3)))


def build():
    torch.manual_seed(0)
    return Gated()
"""


def test_library_warnings_are_one_line(photos: Path, tmp_path: Path) -> None:
    model = tmp_path / "gated.py"
    model.write_text(GATED_MODEL)
    result = invoke(
        "cam",
        "-m",
        f"{model}:build",
        "--input-size",
        "16",
        "-M",
        "ablationcam",
        "-r",
        photos,
        "-o",
        tmp_path / "out",
    )
    assert result.exit_code == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("Warning: ")]
    assert warnings == [
        "Warning: ablationcam: cannot run only the layers after 'features' (torch.fx cannot "
        "trace the model: TraceError: symbolically traced variables cannot be used as inputs "
        "to control flow); re-running the whole network for every chunk of ablated channels "
        "instead, which is slower"
    ]
    assert "perturbation.py" not in result.stderr


def test_a_method_failing_on_a_batch_fails_those_images_only(
    photos: Path, tmp_path: Path, tiny, monkeypatch: pytest.MonkeyPatch
) -> None:
    from featviz.cam.methods.gradient import GradCam

    real = GradCam._weights
    calls: list[int] = []

    def fail_first_batch(self, ctx, layer, targets):
        calls.append(len(targets))
        if len(calls) == 1:
            raise RuntimeError("out of memory\nsecond line")
        return real(self, ctx, layer, targets)

    monkeypatch.setattr(GradCam, "_weights", fail_first_batch)
    result = invoke("cam", *tiny, "-r", photos, "-o", tmp_path / "out", "--batch-size", "2")
    assert result.exit_code == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [
        f"error: {photos / name}: gradcam at layer 'features' failed on this input: out of memory"
        for name in ["a.png", "b.jpg"]
    ]
    assert record_of(tmp_path / "out", "sub/c")


def test_console_script_exit_codes_and_flushed_output(tmp_path: Path) -> None:
    """main() leaves through os._exit: the exit code and everything printed must survive."""
    script = [sys.executable, "-c", "from featviz.cli.app import main; main()"]
    version = subprocess.run([*script, "--version"], capture_output=True, text=True)
    assert (version.returncode, version.stdout) == (0, f"featviz {__version__}\n")
    usage = subprocess.run(
        [*script, "cam", "--alpha", "2", str(tmp_path)], capture_output=True, text=True
    )
    assert usage.returncode == 2
    assert usage.stderr.splitlines()[0] == (
        "Error: Invalid value for '--alpha': Input should be less than or equal to 1"
    )


def test_a_usage_error_ends_the_run_whatever_its_inputs(tmp_path: Path) -> None:
    result = invoke("cam", "-m", "resnet5", tmp_path / "nope.jpg", "-o", tmp_path / "out")
    assert result.exit_code == 2
    assert result.stderr.startswith("Error: unknown model 'resnet5'\n")
    assert not (tmp_path / "out").exists()
