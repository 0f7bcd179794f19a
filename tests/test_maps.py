"""Feature-map grids across model families, channel selection and scaling."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from conftest import image_folder
from PIL import Image

from featviz.model.options import ModelRequest
from featviz.run.jobs.maps import select_channels
from featviz.run.plan import MapsRequest, Plan, RunRequest
from featviz.run.prepare import prepare
from featviz.sinks.options import OutputRequest


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("in") / "photo.png"
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)).save(path)
    return path


@pytest.mark.parametrize(
    ("model", "layer"),
    [
        ("alexnet", "features.3"),
        ("vgg11", "features.8"),
        ("resnet18", "layer2.0.relu"),  # called twice per forward: the last call is kept
        ("densenet121", "features.denseblock2"),
        ("mobilenet_v3_small", "features.4"),
        ("efficientnet_b0", "features.6.0"),
        ("convnext_tiny", "features.3"),
    ],
)
def test_grid_geometry_across_families(model: str, layer: str, photo: Path, tmp_path: Path) -> None:
    run = prepare(
        Plan(
            "maps",
            ModelRequest(model, weights="none", device="cpu", input_size=96),
            OutputRequest(tmp_path, gallery=False),
            MapsRequest(layers=(layer,), max_channels=20, cell_size=10, save_raw=True),
            RunRequest((str(photo),)),
        )
    )
    [result] = list(run.results())
    assert result.error is None
    raw = np.load(image_folder(tmp_path, "photo") / "maps" / f"{layer}.npy")
    channels, height, width = raw.shape
    expected = run.model.trace.get(layer).shape
    assert channels == expected[1]
    drawn = min(20, channels)
    per_row = math.ceil(math.sqrt(drawn))
    rows = math.ceil(drawn / per_row)
    factor = max(1, math.ceil(10 / max(height, width)))
    grid = Image.open(image_folder(tmp_path, "photo") / "maps" / f"{layer}.png")
    assert grid.size == (per_row * (width * factor + 1) + 1, rows * (height * factor + 1) + 1)
    assert not np.isnan(raw).any()


def test_the_default_taps_are_every_conv2d(photo: Path, tmp_path: Path) -> None:
    run = prepare(
        Plan(
            "maps",
            ModelRequest("alexnet", weights="none", device="cpu"),
            OutputRequest(tmp_path, gallery=False),
            MapsRequest(),
            RunRequest((str(photo),)),
        )
    )
    assert run.job.layers == [
        "features.0",
        "features.3",
        "features.6",
        "features.8",
        "features.10",
    ]


def test_channels_by_index_or_by_mean_activation() -> None:
    maps = np.zeros((5, 2, 2), dtype=np.float32)
    maps[:, 0, 0] = [1.0, 5.0, 3.0, 5.0, 0.0]
    assert select_channels(maps, 3, "index").tolist() == [0, 1, 2]
    assert select_channels(maps, 3, "activation").tolist() == [1, 3, 2]
    assert select_channels(maps, 10, "activation").tolist() == [1, 3, 2, 0, 4]


def test_activation_order_draws_the_strongest_channels_first(photo: Path, tmp_path: Path) -> None:
    run = prepare(
        Plan(
            "maps",
            ModelRequest("alexnet", weights="none", device="cpu", input_size=64),
            OutputRequest(tmp_path, gallery=False),
            MapsRequest(
                layers=("features.0",),
                max_channels=4,
                order="activation",
                cell_size=1,
                save_raw=True,
            ),
            RunRequest((str(photo),)),
        )
    )
    list(run.results())
    raw = np.load(image_folder(tmp_path, "photo") / "maps" / "features.0.npy")
    grid = np.asarray(Image.open(image_folder(tmp_path, "photo") / "maps" / "features.0.png"))
    strongest = int(np.argmax(raw.mean(axis=(1, 2))))
    scaled = (raw[strongest] - raw[strongest].min()) / np.ptp(raw[strongest])
    height, width = raw.shape[1:]
    assert grid.ndim == 2  # the default gray colormap is written as a one-channel PNG
    first_cell = grid[1 : 1 + height, 1 : 1 + width]
    np.testing.assert_allclose(first_cell, np.rint(scaled * 255), atol=1)
