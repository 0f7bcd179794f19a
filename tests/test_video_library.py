"""The library on a video model: ``featviz.explain`` gives one Explanation per clip, its heatmap
over every frame equal to ``featviz cam --save-raw``'s; a module loaded with ``clip_length``
is a video model too; what the library does not take yet says so."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import image_folder, tiny_video_case
from PIL import Image
from torch import nn
from typer.testing import CliRunner

import featviz
from featviz.cli.app import app
from featviz.errors import UsageError


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> tuple[Path, str]:
    return tiny_video_case(tmp_path_factory.mktemp("library"))


def tiny3d_module() -> nn.Module:
    """TINY_VIDEO_MODEL's network, built here as a user would."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv3d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv3d(4, 6, 3, padding=1, stride=(2, 2, 2)),
        nn.ReLU(),
        nn.AdaptiveAvgPool3d(1),
        nn.Flatten(),
        nn.Linear(6, 3),
    )


def test_explain_gives_each_clip_the_heatmaps_cam_saves(video, tmp_path: Path) -> None:
    path, model = video
    got = featviz.explain(featviz.load(model), path)
    assert [e.input for e in got] == [f"{path} clip 0", f"{path} clip 1"]
    out = tmp_path / "out"
    done = CliRunner().invoke(
        app, ["cam", "-m", model, "--save-raw", "-q", "-o", str(out), str(path)]
    )
    assert done.exit_code == 0, done.stderr
    for number, explanation in enumerate(got):
        folder = image_folder(out, f"bar/clip{number:04d}") / "cam" / "gradcam" / "3"
        [raw] = folder.glob("*.npz")
        assert raw.stem == str(explanation.index)  # no labels: the class is its number
        saved = np.load(raw)
        assert explanation.heatmap.dtype == np.float32 and explanation.heatmap.shape == (4, 24, 32)
        np.testing.assert_allclose(explanation.heatmap, saved["heatmap"], atol=1e-6)
        np.testing.assert_allclose(explanation.layer_cam, saved["layer_cam"], atol=1e-6)
        assert explanation.heatmap.min() == 0 and explanation.heatmap.max() == 1
        assert explanation.image.shape == (4, 24, 32, 3) and explanation.frame_ms == 33
    # The last clip holds 2 of the video's frames, its last repeated to fill it.
    assert np.array_equal(got[1].image[2], got[1].image[3])
    frames = got[0].overlay()
    assert [frame.size for frame in frames] == [(32, 24)] * 4
    assert got[0].still().size == (4 * 32, 24)
    assert repr(got[0]) == (
        f"Explanation('{path} clip 0', gradcam at 3, {got[0].label} "
        f"{got[0].probability:.2f}, 4 frames of 32×24)"
    )


def test_a_module_loaded_with_a_clip_length_is_a_video_model(video) -> None:
    path, model = video
    loaded = featviz.load(
        tiny3d_module(), clip_length=4, input_size=16, mean=(0.5,) * 3, std=(0.5,) * 3
    )
    mine = featviz.explain(loaded, [path, path], method=["gradcam", "layercam"])
    spec = featviz.explain(model, path, method=["gradcam", "layercam"])
    assert len(mine) == 2 * len(spec) == 8  # two videos × two clips × two methods
    for a, b in zip(mine, spec):
        assert (a.input, a.method) == (b.input, b.method)
        np.testing.assert_allclose(a.heatmap, b.heatmap, atol=1e-6)


def test_what_the_library_does_not_take_says_so(video) -> None:
    path, model = video
    with pytest.raises(UsageError, match=r"tiny3d.py:build is a video model: it takes video files"):
        featviz.explain(model, Image.new("RGB", (16, 16)))
    with pytest.raises(UsageError, match=r"video model: featviz.score takes images for now"):
        featviz.score(model, path)
    with pytest.raises(UsageError, match="clip_length and frame_rate are for a module you built"):
        featviz.load(model, clip_length=8)
    with pytest.raises(UsageError, match="frame_rate needs clip_length"):
        featviz.load(tiny3d_module(), frame_rate=15)
