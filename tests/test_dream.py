"""``featviz dream``: the image parameterisation against its formula and torch-lucent's, the
objectives and the diversity term against plain loops, objectives that rise, seeded
reproducibility, a token layer, a class dream a trained model believes, and the command's
files, manifest and exit codes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from synthetic_shapes import CLASSES, trained
from torch import nn
from typer.testing import CliRunner

import featviz
from featviz.cli.app import app
from featviz.features.dream import DreamSettings, dream
from featviz.features.fourier import FourierImages, colour_matrix, spectrum_scale
from featviz.features.objectives import (
    Objective,
    diversity_penalty,
    objective_values,
    objectives_for,
    parse_channels,
)
from featviz.features.robustness import RandomViews, resample


def generators(count: int, seed: int = 0) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed + i) for i in range(count)]


def test_fourier_images_follow_the_formula() -> None:
    images = FourierImages(12, generators(2), torch.device("cpu"))
    coefficients = images.coefficients.detach().double().numpy()
    spectrum = (coefficients[..., 0] + 1j * coefficients[..., 1]) * spectrum_scale(12, 12).numpy()
    spatial = np.fft.irfft2(spectrum, s=(12, 12), norm="ortho") / 4.0  # (2, 3, 12, 12)
    rgb = np.einsum("rc,nchw->nrhw", colour_matrix().double().numpy(), spatial)
    np.testing.assert_allclose(images.pixels().detach().numpy(), 1 / (1 + np.exp(-rgb)), atol=1e-6)
    # 1/f: the constant term counts as the lowest frequency, 1/12 cycles per pixel.
    assert spectrum_scale(12, 12)[0, 0] == pytest.approx(12.0)
    assert spectrum_scale(12, 12)[0, 6] == pytest.approx(2.0)  # 0.5 cycles per pixel


def test_fourier_images_equal_lucents() -> None:
    import lucent.optvis.param as lucent

    images = FourierImages(16, generators(2), torch.device("cpu"))
    params, spatial = lucent.spatial.fft_image((2, 3, 16, 16))
    with torch.no_grad():
        params[0].copy_(images.coefficients)
    theirs = lucent.color.to_valid_rgb(spatial, decorrelate=True)()
    torch.testing.assert_close(images.pixels(), theirs, atol=1e-6, rtol=0)


def test_a_view_without_shift_zoom_or_turn_is_the_image() -> None:
    pixels = torch.rand(2, 3, 10, 10, generator=torch.Generator().manual_seed(1))
    identity = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]).expand(2, 2, 3)
    torch.testing.assert_close(resample(pixels, identity, (10, 10)), pixels)
    # Half the view's width to the right: the left half shows the image's right half, the
    # right half grey.
    shifted = resample(pixels, torch.tensor([[1.0, 0, 1.0], [0, 1.0, 0]]).expand(2, 2, 3), (10, 10))
    torch.testing.assert_close(shifted[..., :5], pixels[..., 5:])
    assert torch.all(shifted[..., 5:] == 0.5)


def test_random_views_stay_in_their_ranges_and_are_seeded() -> None:
    views = RandomViews(50, 32, generators(3), torch.device("cpu"))
    assert views.shift.abs().max() <= 5 and views.zoom.min() >= 0.9 and views.zoom.max() <= 1.1
    assert views.angle.abs().max() <= np.radians(10)
    again = RandomViews(50, 32, generators(3), torch.device("cpu"))
    assert torch.equal(views.shift, again.shift) and torch.equal(views.angle, again.angle)


def test_objective_values_and_diversity_against_loops() -> None:
    maps = torch.randn(4, 5, 3, 4, generator=torch.Generator().manual_seed(2))
    logits = torch.randn(4, 7, generator=torch.Generator().manual_seed(3))
    rows = [
        Objective("channel", 2, "a"),
        Objective("neuron", 4, "a"),
        Objective("class", 6),
        Objective("channel", 0, "a"),
    ]
    values = objective_values(rows, {"a": maps}, logits)
    expected = [maps[0, 2].mean(), maps[1, 4, 1, 2], logits[2, 6], maps[3, 0].mean()]
    torch.testing.assert_close(values, torch.stack(expected))

    grams = [(m.flatten(1) @ m.flatten(1).T).flatten() for m in maps]
    grams = [g / g.norm() for g in grams]
    pairs = sum(float(grams[i] @ grams[j]) for i in (0, 1) for j in (0, 1) if i != j) / 2
    pairs += sum(float(grams[i] @ grams[j]) for i in (2, 3) for j in (2, 3) if i != j) / 2
    assert float(diversity_penalty(maps, [[0, 1], [2, 3]])) == pytest.approx(pairs, rel=1e-5)
    assert float(diversity_penalty(maps, [[0], [1]])) == 0.0


def test_channel_texts() -> None:
    assert parse_channels(["3", "0-2", "7,5", "3"]) == [3, 0, 1, 2, 7, 5]
    with pytest.raises(featviz.errors.UsageError, match="not a channel index or range"):
        parse_channels(["a-3"])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from conftest import TINY_MODEL_SOURCE

    path = tmp_path_factory.mktemp("tiny") / "tiny_model.py"
    path.write_text(TINY_MODEL_SOURCE)
    return f"{path}:build"


def test_channel_objectives_rise_and_runs_repeat(tiny: str) -> None:
    loaded = featviz.load(tiny, input_size=24)
    objectives = [Objective("channel", c, "features.2") for c in range(6)]
    settings = DreamSettings(steps=40, size=24)
    first = dream(loaded, objectives, settings)
    assert np.all(first.values > first.start), (first.start, first.values)
    assert np.mean(first.values - first.start) > 0.05
    assert np.all(first.curve[:, -5:].mean(1) > first.curve[:, :5].mean(1))
    steps_done: list[int] = []
    again = dream(loaded, objectives, settings, progress=steps_done.append)
    assert np.array_equal(first.pixels, again.pixels)
    assert steps_done == list(range(1, 41))
    other_seed = dream(loaded, objectives, DreamSettings(steps=40, size=24, seed=1))
    assert not np.array_equal(first.pixels, other_seed.pixels)
    # An objective's image does not depend on what else shares the batch.
    alone = dream(loaded, objectives[3:4], settings)
    assert np.abs(alone.pixels[0].astype(int) - first.pixels[3]).max() <= 2


def test_layers_with_one_value_per_channel(tiny: str) -> None:
    """A Linear's outputs (here the class scores) and a global pool's channels are dreamed
    as maps of one position."""
    loaded = featviz.load(tiny, input_size=24)
    pooled = objectives_for(loaded, ["pool"], ["0-5"], neuron=False, targets=[])
    assert [(o.layer, o.index) for o in pooled] == [("pool", c) for c in range(6)]
    scores = [Objective("channel", c, "fc") for c in range(5)]
    result = dream(loaded, scores, DreamSettings(steps=20, size=24))
    assert np.all(result.values > result.start), (result.start, result.values)


def test_diversity_pushes_copies_apart(tiny: str) -> None:
    loaded = featviz.load(tiny, input_size=24)
    objective = [Objective("channel", 1, "features.2")]
    alike = dream(
        loaded, objective, DreamSettings(steps=30, size=24, diversity=3, diversity_weight=0)
    )
    apart = dream(loaded, objective, DreamSettings(steps=30, size=24, diversity=3))

    def spread(pixels: np.ndarray) -> float:
        flat = pixels.reshape(len(pixels), -1).astype(float)
        return float(
            np.mean([np.abs(flat[i] - flat[j]).mean() for i in range(3) for j in range(i)])
        )

    assert spread(apart.pixels) > spread(alike.pixels) + 1.0


def test_token_layer_of_a_vision_transformer() -> None:
    import timm

    torch.manual_seed(0)
    vit = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, embed_dim=48,
        depth=2, num_heads=3, num_classes=4,
    )  # fmt: skip
    loaded = featviz.load(vit, input_size=32)
    assert loaded.trace.get("blocks.1").layout.kind == "tokens"
    objectives = [Objective("channel", c, "blocks.1") for c in (0, 7, 20)]
    dreams = dream(loaded, objectives, DreamSettings(steps=25))
    assert dreams.pixels.shape == (3, 32, 32, 3)
    assert np.all(dreams.values > dreams.start), (dreams.start, dreams.values)
    assert np.mean(dreams.values - dreams.start) > 0.03


class ShapesNet(nn.Module):
    """A small CNN for the coloured shapes (examples/synthetic_shapes.py)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
        )  # fmt: skip
        self.head = nn.Linear(32, len(CLASSES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).amax(dim=(2, 3)))


def test_class_dreams_convince_a_trained_model() -> None:
    model = trained(ShapesNet, steps=60)
    loaded = featviz.load(model, labels=CLASSES, input_size=32, mean=(0.5,) * 3, std=(0.5,) * 3)
    dreams = featviz.dream(loaded, targets=["square", "disc", 2], steps=32)  # names or indices
    assert [(o.index, o.label) for o in dreams.objectives] == list(enumerate(CLASSES))
    assert np.all(dreams.probabilities > 0.9), dreams.probabilities
    # Each class's dream is drawn in its shape's colour: red, green, blue.
    means = dreams.pixels.reshape(3, -1, 3).mean(axis=1)
    assert list(means.argmax(axis=1)) == [0, 1, 2], means


def run(args: list[str]):
    return CliRunner().invoke(app, args, catch_exceptions=False)


def test_command_writes_pictures_grid_and_manifest(tiny: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    base = ["dream", "-m", tiny, "--input-size", "16", "--steps", "3", "-o", str(out)]
    result = run([*base, "-l", "features.2", "-c", "0-1", "-t", "4", "--json"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(r["objective"], r["index"]) for r in rows] == [
        ("channel", 0),
        ("channel", 1),
        ("class", 4),
    ]
    assert [r["file"] for r in rows] == [
        "dream/tiny_model/features.2/c0000.png",
        "dream/tiny_model/features.2/c0001.png",
        "dream/tiny_model/classes/4.png",
    ]
    for row in rows:
        assert (out / row["file"]).is_file()
    assert 0 <= rows[2]["probability"] <= 1
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["command"] == "dream" and manifest["dreams"] == rows
    [grid] = (out / "runs").glob("*/dream.png")
    assert grid.stat().st_size > 0
    gallery = (out / "gallery" / "data.js").read_text()  # a card of the model's dreams
    assert '"name":"dream: tiny_model"' in gallery
    assert '"dream/tiny_model/classes/4.png"' in gallery
    assert sorted(p.name for p in (out / "dream" / "tiny_model" / "features.2").iterdir()) == [
        "c0000.png",
        "c0001.png",
    ]
    # Other settings write into a model folder of their own; copies are numbered from 1.
    neuron = run([*base, "-l", "features.2", "-c", "1", "--neuron", "--diversity", "2"])
    assert neuron.exit_code == 0
    lines = neuron.stdout.splitlines()
    assert len(lines) == 3 and lines[2].startswith("wrote ") and lines[2].endswith("dream.png")
    assert re.fullmatch(r"wrote .*n0001-1\.png  features\.2 neuron 1: \S+ → \S+", lines[0])
    assert sorted(p.name for p in (out / "dream" / "tiny_model-2" / "features.2").iterdir()) == [
        "n0001-1.png",
        "n0001-2.png",
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-l", "features.2", "-c", "6"], "--channel 6: layer 'features.2' has channels 0 to 5"),
        (["-c", "1"], "--layer and --channel go together: a channel objective needs both"),
        ([], "nothing to dream: give channels of a layer or classes"),
        (["-t", "9"], "--target 9: the model has classes 0 to 4"),
        (["-l", "nope", "-c", "1"], "unknown layer 'nope'"),
    ],
)
def test_usage_errors_exit_2_with_one_line(
    tiny: str, tmp_path: Path, args: list[str], message: str
) -> None:
    result = run(["dream", "-m", tiny, "--steps", "1", *args, "-o", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert result.stderr.splitlines()[0] == f"Error: {message}"
    assert not (tmp_path / "out").exists()  # refused before anything is written
