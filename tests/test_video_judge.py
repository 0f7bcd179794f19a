"""compare, score and sanity on a video model: each clip's animated panel, the metrics over the
clip's (T, H, W) map — a clip is ranked and deleted as a whole, blurred and imputed frame by
frame — and the sanity cascade on 3-D layers."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import image_folder, tiny_video_case
from PIL import Image
from typer.testing import CliRunner

from featviz.cam import normalise
from featviz.cli.app import app
from featviz.judge.imputation import impute
from featviz.judge.metrics import (
    METRICS,
    centre_map,
    confidence,
    deletion_insertion,
    gaussian_blur,
    road,
)
from featviz.judge.similarity import ssim

T, H, W = 3, 10, 12


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> tuple[Path, str]:
    return tiny_video_case(tmp_path_factory.mktemp("judge"))


def frame_scorer(seed: int = 0):
    """A fixed random linear model of a clip's every pixel, and the same model of its frames
    stacked top to bottom as one (3, T·H, W) image."""
    weights = torch.randn(4, 3 * T * H * W, generator=torch.Generator().manual_seed(seed))

    def clip(batch: torch.Tensor) -> torch.Tensor:
        return batch.flatten(1) @ weights.T / 20

    def image(batch: torch.Tensor) -> torch.Tensor:
        return clip(batch.view(len(batch), 3, T, H, W))

    return clip, image


@pytest.fixture
def clips() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, T, H, W, generator=generator)
    E = normalise(torch.rand(2, T, H, W, generator=generator))
    return x, E, torch.tensor([1, 3])


def test_a_clip_is_deleted_as_a_whole_and_blurred_frame_by_frame(clips) -> None:
    x, E, targets = clips
    clip, image = frame_scorer()
    Y = confidence(clip, x, targets, 8)
    got = deletion_insertion(clip, x, E, targets, Y, steps=9, batch_size=5)
    # Ranks over the whole clip: the same deletion as the frames stacked into one image.
    stacked = deletion_insertion(
        image, x.view(2, 3, T * H, W), E.view(2, T * H, W), targets, Y, steps=9, batch_size=5
    )
    assert torch.allclose(got.deletion, stacked.deletion, atol=1e-6)
    assert torch.equal(got.fractions, stacked.fractions) and got.fractions[-1] == 1
    # Insertion starts from every frame blurred on its own, not across the frames' borders.
    frames = gaussian_blur(x.transpose(1, 2).flatten(0, 1)).view(2, T, 3, H, W).transpose(1, 2)
    assert torch.allclose(got.insertion[:, 0], confidence(clip, frames, targets, 8), atol=1e-6)
    assert not torch.allclose(got.insertion[:, 0], stacked.insertion[:, 0], atol=1e-3)
    assert torch.allclose(got.insertion[:, -1], Y, atol=1e-6)  # everything restored


def test_road_imputes_each_frame_from_its_own_pixels(clips) -> None:
    x, E, targets = clips
    clip, _ = frame_scorer()
    Y = confidence(clip, x, targets, 8)
    percentiles = (30, 70)
    morf, lerf = road(
        clip, x, E, targets, Y, batch_size=4, seeds=[0, 1], percentiles=percentiles, noise=0.0
    )
    for i in range(2):
        changes = []
        for p in percentiles:
            for missing in (E[i] >= torch.quantile(E[i].flatten(), p / 100),
                            1 - E[i] >= torch.quantile(1 - E[i].flatten(), p / 100)):  # fmt: skip
                frames = impute(x[i].transpose(0, 1), missing[:, None], noise=0.0)
                after = confidence(clip, frames.transpose(0, 1)[None], targets[i : i + 1], 1)
                changes.append(float(after[0] - Y[i]))
        assert float(morf[i]) == pytest.approx(np.mean(changes[0::2]), abs=1e-5)
        assert float(lerf[i]) == pytest.approx(np.mean(changes[1::2]), abs=1e-5)


def test_a_clips_similarity_is_its_frames_mean_and_its_centre_the_same_each_frame() -> None:
    generator = torch.Generator().manual_seed(2)
    a, b = torch.rand(2, T, 16, 16, generator=generator), torch.rand(2, T, 16, 16)
    per_frame = torch.stack([ssim(a[:, t], b[:, t]) for t in range(T)], dim=1).mean(dim=1)
    assert torch.allclose(ssim(a, b), per_frame, atol=1e-6)
    centre = centre_map((T, 5, 7))
    assert centre.shape == (T, 5, 7) and torch.equal(centre[0], centre[-1])
    assert centre[1, 2, 3] == 1 and centre_map((5, 7)).equal(centre[0])


def run(command: str, video: tuple[Path, str], out: Path, *options: str):
    path, model = video
    done = CliRunner().invoke(app, [command, "-m", model, "-o", str(out), *options, str(path)])
    assert done.exit_code == 0, done.stderr
    return done


def test_compare_animates_each_clips_panel(video, tmp_path: Path) -> None:
    run("compare", video, tmp_path / "out", "-M", "gradcam", "-M", "layercam", "-q")
    for number in (0, 1):
        panel = image_folder(tmp_path / "out", f"bar/clip{number:04d}") / "compare.webp"
        with Image.open(panel) as picture:
            assert picture.n_frames == 4  # the clip's frames
            picture.load()
            assert picture.info["duration"] == 33
            frames = []
            for t in range(4):
                picture.seek(t)
                frames.append(np.asarray(picture.convert("L"), dtype=float))
        # The original (top left) shows the bar moving right by a pixel a frame.
        assert not np.allclose(frames[0], frames[1], atol=8)


def test_score_measures_the_clips_maps_and_baselines(video, tmp_path: Path) -> None:
    out = tmp_path / "out"
    run("score", video, out, "-M", "gradcam", "--steps", "4", "-q")
    [table] = out.glob("runs/*/score.csv")
    rows = list(csv.DictReader(table.open()))
    assert [(row["input"][-6:], row["method"]) for row in rows] == [
        (f"clip {number}", method)
        for number in (0, 1)
        for method in ("gradcam", "random", "center")
    ]
    for row in rows:
        values = [float(row[name]) for name in METRICS]
        assert all(np.isfinite(values)), row
        assert 0 <= float(row["deletion_auc"]) <= 1 and 0 <= float(row["insertion_auc"]) <= 1


def test_sanity_randomises_the_3d_layers(video, tmp_path: Path) -> None:
    out = tmp_path / "out"
    run("sanity", video, out, "-M", "gradcam", "-q")
    [table] = out.glob("runs/*/sanity.csv")
    rows = list(csv.DictReader(table.open()))
    # TINY_VIDEO_MODEL: Conv3d 0, ReLU, Conv3d 2, ReLU, pooling, Flatten, Linear 6: top first.
    assert [row["randomized"] for row in rows[:4]] == ["none", "6", "2", "0"]
    assert rows[0]["spearman"] == rows[0]["ssim"] == "1.0"
    assert all(-1 <= float(row["spearman"]) <= 1 for row in rows)
    assert any(abs(float(row["ssim"])) < 0.9 for row in rows[1:4])  # the maps changed
    with Image.open(image_folder(out, "bar/clip0000") / "sanity.webp") as panel:
        assert panel.n_frames == 4
