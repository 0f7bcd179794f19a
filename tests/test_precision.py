"""--precision: forwards under autocast (bf16 on the CPU), maps still float32 math; fp16 needs
CUDA; --check-precision reports top-1 changes against fp32 in the summary and the manifest."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from featviz.cli.app import app


@pytest.fixture
def photos(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    Path("in").mkdir()
    for index in range(3):
        pixels = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(f"in/{index}.png")
    return tmp_path


def test_bf16_maps_are_close_to_fp32_and_the_check_is_reported(
    photos: Path, tiny_model_file: Path
) -> None:
    common = ["cam", "-m", f"{tiny_model_file}:build", "in", "--json", "--skip-existing"]
    fp32 = CliRunner().invoke(app, [*common, "-o", "out"])
    overlays = [json.loads(line)["outputs"][0] for line in fp32.stdout.splitlines()]
    exact = [np.asarray(Image.open(path)).astype(int) for path in overlays]
    bf16 = CliRunner().invoke(
        app, [*common, "-o", "out", "--precision", "bf16", "--check-precision"]
    )
    assert fp32.exit_code == bf16.exit_code == 0, bf16.output
    # Other settings: the fp32 records are not taken for bf16's.
    assert not any(json.loads(line)["skipped"] for line in bf16.stdout.splitlines())
    [note] = [line for line in bf16.stderr.splitlines() if line.startswith("Note:")]
    assert note.startswith(
        "Note: --precision bf16: the top-1 class of 0 of 3 images of the first batch differs "
        "from fp32 (probabilities moved by 0.0"
    ), note
    manifest = json.loads(Path("out/manifest.json").read_text())
    check = manifest["resolved"]["precision_check"]
    assert check["images"] == 3 and check["top1_changed"] == 0
    assert 0 < check["max_probability_change"] < 0.05  # bf16 really ran, and stayed close
    assert manifest["request"]["model"]["precision"] == "bf16"
    # Beside the fp32 pictures, in a model folder of their own: close to them, not equal.
    bf16_overlays = [json.loads(line)["outputs"][0] for line in bf16.stdout.splitlines()]
    assert bf16_overlays == [path.replace("/tiny_model/", "/tiny_model-2/") for path in overlays]
    for path, before, fp32_path in zip(bf16_overlays, exact, overlays):
        difference = np.abs(np.asarray(Image.open(path)).astype(int) - before)
        assert difference.mean() < 2
        assert np.array_equal(np.asarray(Image.open(fp32_path)), before)  # untouched
    quiet = CliRunner().invoke(app, [*common[:-1], "-o", "other", "--precision", "bf16"])
    assert quiet.exit_code == 0 and "Note:" not in quiet.stderr  # only when asked


def test_fp16_needs_cuda(photos: Path, tiny_model_file: Path) -> None:
    done = CliRunner().invoke(
        app, ["cam", "-m", f"{tiny_model_file}:build", "in", "--precision", "fp16", "-o", "x"]
    )
    assert done.exit_code == 2
    assert done.stderr.splitlines() == [
        "Error: --precision fp16 needs a CUDA device (this run is on cpu)",
        "Hint: use --precision bf16 on the CPU",
    ]
    assert not Path("x").exists()
