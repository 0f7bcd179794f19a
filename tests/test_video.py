"""Video classifiers: clips streamed from MP4, WebM and GIF files, frames sampled at the weights'
rate, 5-D layer layouts, every frame's map, animated overlays; a tiny 3-D network trained here
on a square that moves among squares that stay must look at the moving one."""

from __future__ import annotations

import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import (
    ROOT,
    TINY_VIDEO_MODEL,
    bar_frames,
    example_cache,
    image_folder,
    write_video,
)
from PIL import Image
from synthetic_clips import FRAMES, SIDE, SQUARE, clip, trained_tiny3d
from typer.testing import CliRunner

import featviz
from featviz.cli.app import app
from featviz.errors import InputError, UsageError
from featviz.explainer.batch import Explainer
from featviz.inputs.discover import discover
from featviz.inputs.loaded import LoadedImage
from featviz.inputs.video import Sampling, clip_sources, clips
from featviz.layers.layouts import Layout, detect
from featviz.model.load import load_model
from featviz.model.options import ModelRequest
from featviz.run.pipeline import PipelineConfig, PipelineStats, run
from featviz.sinks.results import ImageResult

EXAMPLE = ROOT / "examples" / "shapes_video.py"


def bar_start(frame: np.ndarray) -> int:
    """The first column of a frame's white bar (the brightest 8 columns)."""
    columns = frame.astype(float).mean(axis=(0, 2))
    return int(np.convolve(columns, np.ones(8), mode="valid").argmax())


@pytest.mark.parametrize(("name", "codec"), [("a.mp4", "libx264"), ("a.webm", "libvpx-vp9")])
def test_clips_sample_the_weights_rate_from_mp4_and_webm(
    tmp_path: Path, name: str, codec: str
) -> None:
    video = write_video(tmp_path / name, bar_frames(40), codec)
    got = list(clips(video, Sampling(16, frame_rate=15)))
    # 40 frames at 30 fps sampled at 15: frames 0, 2, … 38; 16 a clip, the last filled up.
    assert [(c.index, c.frames.shape, c.used) for c in got] == [
        (0, (16, 48, 64, 3), 16),
        (1, (16, 48, 64, 3), 4),
    ]
    starts = [bar_start(frame) for c in got for frame in c.frames]
    assert starts == [*range(0, 40, 2), *[38] * 12]
    assert got[0].times == pytest.approx([i / 15 for i in range(16)], abs=1e-3)
    assert got[0].frame_ms == 67
    every = list(clips(video, Sampling(16)))
    assert [c.used for c in every] == [16, 16, 8]


def test_clips_of_an_animated_gif_written_by_pillow(tmp_path: Path) -> None:
    frames = bar_frames(10, 20, 30)
    path = tmp_path / "a.gif"
    pictures = [Image.fromarray(frame) for frame in frames]
    pictures[0].save(path, save_all=True, append_images=pictures[1:], duration=100, loop=0)
    got = list(clips(path, Sampling(4, frame_rate=5)))  # 10 fps sampled at 5: every other one
    assert [c.used for c in got] == [4, 1]
    assert [bar_start(frame) for frame in got[0].frames] == [0, 2, 4, 6]
    assert got[0].times == pytest.approx([0.0, 0.2, 0.4, 0.6])


def test_a_long_video_is_streamed_in_bounded_memory(tmp_path: Path) -> None:
    """600 frames of 128 × 128 are 29 MB decoded; one clip of 16 holds 0.8 MB."""
    frames = np.zeros((600, 128, 128, 3), np.uint8)
    frames[:, :, ::7] = 200
    video = write_video(tmp_path / "long.mp4", frames, "mpeg4", bit_rate="400000")
    del frames
    tracemalloc.start()
    try:
        count = sum(len(clip.frames) == 16 for clip in clips(video, Sampling(16)))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 38  # 37 whole clips and 8 frames
    assert peak < 4_000_000, peak


def test_a_file_that_is_no_video_fails_alone_after_the_clips_before_it(tmp_path: Path) -> None:
    good = write_video(tmp_path / "good.mp4", bar_frames(6, 16, 16), "libx264")
    bad = tmp_path / "bad.mp4"
    bad.write_text("not a video\n")
    sources = list(clip_sources(discover([str(good), str(bad)]), Sampling(4)))
    assert [(str(s.relative), s.problem is None, s.index) for s in sources] == [
        ("good/clip0000", True, 0),
        ("good/clip0001", True, 1),
        ("bad", False, 2),
    ]
    assert sources[2].problem.startswith("cannot be read as a video (")
    with pytest.raises(InputError, match=r"bad\.mp4: cannot be read as a video"):
        next(clips(bad, Sampling(4)))


def test_video_layouts_stack_frames_top_to_bottom_and_back() -> None:
    output = torch.arange(2 * 4 * 3 * 5 * 6, dtype=torch.float32).reshape(2, 4, 3, 5, 6)
    layout = detect((1, 4, 3, 5, 6), (1, 4, 3, 5, 7), (40, 48), (40, 56), set())
    assert layout == Layout("ncthw")
    maps = layout.to_nchw(output, (40, 48))
    assert maps.shape == (2, 4, 15, 6) and torch.equal(maps[:, :, 5:10], output[:, :, 1])
    assert torch.equal(layout.from_nchw(maps, output), output)
    assert layout.grid((1, 4, 3, 5, 6), (40, 48)) == (15, 6) and layout.frames(output.shape) == 3
    last = output.permute(0, 2, 3, 4, 1)  # (N, t, h, w, C)
    channels_last = detect((1, 3, 5, 6, 4), (1, 3, 5, 7, 4), (40, 48), (40, 56), set())
    assert channels_last == Layout("nthwc")
    assert torch.equal(channels_last.to_nchw(last, (40, 48)), maps)
    assert torch.equal(channels_last.from_nchw(maps, last), last)


def test_torchvision_video_models_take_clips_at_their_weights_rate() -> None:
    r3d = load_model(ModelRequest("r3d_18", weights="none"), structure_only=True)
    assert r3d.clip == Sampling(16, 15.0) and r3d.preprocessing.input_size == 112
    assert r3d.default_cam_layer() == "layer4" and r3d.trace.get("layer4").grid == (2 * 7, 7)
    swin = load_model(ModelRequest("swin3d_t", weights="none"), structure_only=True)
    assert swin.clip == Sampling(32, 15.0)
    assert swin.trace.get(swin.default_cam_layer()).layout == Layout("nthwc")
    s3d = load_model(ModelRequest("s3d", weights="none"), structure_only=True)
    assert s3d.default_cam_layer() == "features"  # not its 1 × 1 classifier


def test_gradcam_of_a_video_layer_is_the_3d_formula(tmp_path: Path) -> None:
    """Grad-CAM over (t, h, w): weights are the gradients' mean over time and space."""
    (tmp_path / "tiny3d.py").write_text(TINY_VIDEO_MODEL)
    model = load_model(ModelRequest(f"{tmp_path / 'tiny3d.py'}:build", device="cpu"))
    x = torch.randn(2, 3, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    explained = Explainer(model, ("gradcam",), ["1"], [2], top_k=None, cam_batch_size=4)
    maps = torch.stack([entry.layer_cam for [entry] in explained.explain(x).maps])
    taken = {}
    # The layer's output made a leaf: the model's parameters are frozen.
    model.module[1].register_forward_hook(
        lambda m, i, o: taken.setdefault("a", o.detach().requires_grad_())
    )
    with torch.enable_grad():
        scores = model.module(x)
        [grads] = torch.autograd.grad(scores[:, 2].sum(), taken["a"])
    weights = grads.mean(dim=(2, 3, 4), keepdim=True)
    expected = (weights * taken["a"]).sum(dim=1).clamp(min=0)
    assert maps.shape == (2, 4, 16, 16)
    assert torch.allclose(maps, expected.detach(), rtol=1e-4, atol=1e-6)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return example_cache(tmp_path_factory, "shapes_video", trained_tiny3d)


def test_the_trained_maps_follow_the_moving_square_in_every_frame(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Eight clips of the four moves in one MP4, through `featviz cam`: each frame's heatmap
    peaks on the moving square (within a pixel) in at least 90 % of the 64 frames."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    generator = torch.Generator().manual_seed(7)
    made = [clip(kind % 4, generator) for kind in range(8)]
    frames = torch.cat([video for video, _ in made], dim=1)  # (3, 64, 32, 32)
    pixels = (frames.permute(1, 2, 3, 0) * 255).round().byte().numpy()
    video = write_video(tmp_path / "moves.mp4", pixels, "libx264", qp="0")
    out = tmp_path / "out"
    done = CliRunner().invoke(
        app, ["cam", "-m", f"{EXAMPLE}:build", "--save-raw", "-q", "-o", str(out), str(video)]
    )
    assert done.exit_code == 0, done.stderr
    hits = 0
    for number, (_, path) in enumerate(made):
        folder = image_folder(out, f"moves/clip{number:04d}") / "cam" / "gradcam" / "features"
        [raw] = folder.glob("*.npz")
        assert raw.name.startswith(f"{number % 4}_")  # the move itself is the top class
        heatmaps = np.load(raw)["heatmap"]
        assert heatmaps.shape == (FRAMES, SIDE, SIDE)
        for heat, (y, x) in zip(heatmaps, path):
            row, column = np.unravel_index(heat.argmax(), heat.shape)
            hits += y - 1 <= row <= y + SQUARE and x - 1 <= column <= x + SQUARE
        with Image.open(raw.with_suffix(".webp")) as overlay:
            assert overlay.is_animated and overlay.size == (SIDE, SIDE)
    assert hits >= 0.9 * 8 * FRAMES, hits


@pytest.fixture
def tiny3d(tmp_path: Path) -> str:
    (tmp_path / "tiny3d.py").write_text(TINY_VIDEO_MODEL)
    return f"{tmp_path / 'tiny3d.py'}:build"


def test_cam_writes_each_clips_animation_and_per_frame_heatmaps(
    tiny3d: str, tmp_path: Path
) -> None:
    video = write_video(tmp_path / "bar.mp4", bar_frames(6, 24, 32), "libx264")
    out = tmp_path / "out"
    done = CliRunner().invoke(
        app, ["cam", "-m", tiny3d, "--heatmap", "--save-raw", "-q", "-o", str(out), str(video)]
    )
    assert done.exit_code == 0, done.stderr
    for number in (0, 1):  # 6 frames: a clip of 4, then 2 filled up to 4
        [overlay] = (image_folder(out, f"bar/clip{number:04d}") / "cam" / "gradcam").glob(
            "*/*[0-9].webp"
        )
        with Image.open(overlay) as picture:
            assert picture.is_animated and picture.size == (32, 24)
            picture.load()  # the first frame's duration is known once it is read
            assert picture.info["duration"] == 33  # 30 frames per second, every one taken
        raw = np.load(overlay.with_suffix(".npz"))
        assert raw["heatmap"].shape == (4, 24, 32) and raw["layer_cam"].shape == (2, 8, 11)
        assert raw["heatmap"].min() == 0 and raw["heatmap"].max() == 1  # over the whole clip
        with Image.open(overlay.with_suffix(".heatmap.webp")) as heatmap:
            assert heatmap.is_animated
    thumbs = sorted((out / "gallery" / "thumbs").rglob("*.webp"))
    assert len(thumbs) == 4 and all(Image.open(thumb).is_animated for thumb in thumbs)


def test_maps_draws_a_video_layers_channels_over_its_frames(tiny3d: str, tmp_path: Path) -> None:
    video = write_video(tmp_path / "bar.mp4", bar_frames(4, 24, 32), "libx264")
    out = tmp_path / "out"
    done = CliRunner().invoke(app, ["maps", "-m", tiny3d, "-q", "-o", str(out), str(video)])
    assert done.exit_code == 0, done.stderr
    maps = image_folder(out, "bar/clip0000") / "maps"
    assert sorted(path.name for path in maps.iterdir()) == ["0.webp", "2.webp"]  # the Conv3ds
    with Image.open(maps / "2.webp") as grid:
        assert grid.n_frames == 2  # its stride 2 in time: 2 frames of the clip's 4


def test_video_models_refuse_the_commands_made_for_images(tiny3d: str, tmp_path: Path) -> None:
    video = write_video(tmp_path / "bar.mp4", bar_frames(4, 16, 16), "libx264")
    top = ["top", "-m", tiny3d, "-l", "0", "-o", str(tmp_path / "out"), str(video)]
    done = CliRunner().invoke(app, top)
    assert done.exit_code == 2
    assert done.stderr.splitlines()[:2] == [
        "Error: featviz top does not take video models yet",
        "Hint: featviz cam, maps, compare, score and sanity do",
    ]
    assert not (tmp_path / "out").exists()
    done = CliRunner().invoke(
        app, ["cam", "-m", tiny3d, "-M", "lrp", "-o", str(tmp_path / "out"), str(video)]
    )
    assert done.exit_code == 2
    assert done.stderr.splitlines()[0] == ("Error: --method lrp does not take video clips yet")
    assert not (tmp_path / "out").exists()


def test_a_broken_video_fails_alone_with_exit_1(tiny3d: str, tmp_path: Path) -> None:
    good = write_video(tmp_path / "good.mp4", bar_frames(4, 16, 16), "libx264")
    (tmp_path / "bad.webm").write_bytes(b"\x1a\x45\xdf\xa3 truncated")
    done = CliRunner().invoke(
        app,
        ["cam", "-m", tiny3d, "-o", str(tmp_path / "out"), str(good), str(tmp_path / "bad.webm")],
    )
    assert done.exit_code == 1
    assert "bad.webm: cannot be read as a video (" in done.stderr
    assert "1 done, 1 failed" in done.stderr


class _Holding:
    """A pipeline job that only holds its clips: what a run keeps in memory, without a model."""

    def finished(self, source):
        return None

    def load(self, source):
        return LoadedImage(source, source.image.frames, torch.zeros(1))

    def assemble(self, batch):
        return None

    def process(self, batch, inputs):
        return [lambda item=item: ImageResult(item.source) for item in batch]


def test_the_memory_budget_counts_every_frame_of_a_clip(tmp_path: Path) -> None:
    """Ten clips of 4 frames of 64 × 64 (16 bytes a pixel in flight: 262 kB each) under a
    300 kB budget: one clip at a time, however many the batch could take."""
    video = write_video(tmp_path / "bar.mp4", bar_frames(40, 64, 64), "libx264")
    sources = clip_sources(discover([str(video)]), Sampling(4))
    stats = PipelineStats()
    config = PipelineConfig(batch_size=4, max_memory=300_000)
    results = list(run(_Holding(), sources, config, stats))
    assert len(results) == 10 and all(result.error is None for result in results)
    assert stats.max_in_flight == 1 and stats.max_reserved == 16 * 4 * 64 * 64


def test_without_pyav_a_video_model_says_what_to_install(
    tiny3d: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    video = write_video(tmp_path / "bar.mp4", bar_frames(4, 16, 16), "libx264")
    monkeypatch.setitem(sys.modules, "av", None)  # import av now raises ImportError
    out = tmp_path / "out"
    done = CliRunner().invoke(app, ["cam", "-m", tiny3d, "-o", str(out), str(video)])
    assert done.exit_code == 2
    assert "Error: reading videos needs PyAV, which is not installed" in done.stderr
    assert "pip install 'featviz[video]'" in done.stderr
    assert not out.exists()


def test_the_library_says_a_video_model_takes_video_files(tiny3d: str) -> None:
    with pytest.raises(UsageError, match="is a video model: it takes video files, not image 0"):
        featviz.explain(tiny3d, np.zeros((16, 16, 3), np.uint8))
