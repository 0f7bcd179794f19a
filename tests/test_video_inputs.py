"""Folders and patterns of videos: a video model's run takes every video file in them (an
image model's leaves the videos aside, and says how many), on the command line and on Ray."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_MODEL_SOURCE, TINY_VIDEO_MODEL, bar_frames, image_folder, write_video
from PIL import Image
from typer.testing import CliRunner

from featviz.cli.app import app
from featviz.inputs.discover import discover
from featviz.inputs.kinds import IMAGES, VIDEOS
from featviz.inputs.video import Sampling, clips

NAMES = ["a.MP4", "b.webm", "c.mkv", "d.avi", "e.mov", "f.gif", "g.png", "h.jpg", "i.txt"]


def found(inputs: list[str], **options) -> tuple[list[str], list[str]]:
    """(the relative folders ``discover`` yields, the files it left aside)."""
    aside: list[str] = []
    sources = list(discover(inputs, on_aside=aside.append, **options))
    return [str(source.relative) for source in sources if source.problem is None], sorted(aside)


def test_folders_and_patterns_give_the_files_of_the_models_kind(tmp_path: Path) -> None:
    for name in NAMES:
        (tmp_path / name).touch()
    folder, pattern = str(tmp_path), str(tmp_path / "*")
    for inputs in ([folder], [pattern]):
        assert found(inputs, kind=VIDEOS) == (
            ["a", "b", "c", "d", "e", "f"],
            [str(tmp_path / "g.png"), str(tmp_path / "h.jpg")],
        )
        videos = [str(tmp_path / name) for name in NAMES[:5]]
        assert found(inputs, kind=IMAGES) == (["f", "g", "h"], videos)
        assert found(inputs) == found(inputs, kind=IMAGES)  # images unless told


def test_a_folder_of_the_other_kind_says_what_it_left_aside(tmp_path: Path) -> None:
    (tmp_path / "clips").mkdir()
    (tmp_path / "clips" / "a.mp4").touch()
    (tmp_path / "clips" / "b.mov").touch()
    [source] = discover([str(tmp_path / "clips")])
    assert (
        source.problem == "has no image files (2 video files left aside: this model takes images)"
    )
    [source] = discover([str(tmp_path / "clips" / "*.mp4")], kind=VIDEOS)
    assert source.problem is None
    [source] = discover([str(tmp_path / "clips" / "*.mp4")])
    assert source.problem == (
        "matches no image files (1 video file left aside: this model takes images)"
    )
    (tmp_path / "empty").mkdir()
    [source] = discover([str(tmp_path / "empty")], kind=VIDEOS)
    assert source.problem == (
        "has no video files (featviz looks for .avi .gif .m4v .mkv .mov .mp4 .webm files, any case)"
    )


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    """A folder ``videos`` with two videos (6 and 4 frames of 24 × 32) and a photo, and the
    tiny video and image models beside it."""
    root = tmp_path_factory.mktemp("media")
    (root / "videos").mkdir()
    write_video(root / "videos" / "a.mp4", bar_frames(6, 24, 32), "libx264")
    write_video(root / "videos" / "b.webm", bar_frames(4, 24, 32), "libvpx-vp9")
    Image.fromarray(bar_frames(1, 24, 32)[0]).save(root / "videos" / "c.png")
    (root / "tiny3d.py").write_text(TINY_VIDEO_MODEL)
    (root / "tiny.py").write_text(TINY_MODEL_SOURCE)
    return root


def cam(media: Path, model: str, out: Path, *inputs: str, extra: tuple[str, ...] = ()):
    return CliRunner().invoke(
        app, ["cam", "-m", f"{media / model}:build", "-o", str(out), *extra, *inputs]
    )


def outputs(out: Path) -> list[str]:
    return sorted(str(path.relative_to(out)) for path in out.glob("*/*/*/cam/*/*/*.webp"))


def test_a_video_model_explains_every_video_of_a_folder(media: Path, tmp_path: Path) -> None:
    done = cam(media, "tiny3d.py", tmp_path / "out", str(media / "videos"))
    assert done.exit_code == 0, done.stderr
    assert [path.split("/cam/")[0] for path in outputs(tmp_path / "out")] == [
        "tiny3d/a/clip0000",
        "tiny3d/a/clip0001",  # 6 frames: a clip of 4, then one filled up
        "tiny3d/b/clip0000",
    ]
    assert "3 done, 0 failed" in done.stderr
    note = f"Note: left aside 1 image file found in folders or patterns: {media}/tiny3d.py:build"
    assert f"{note} takes videos" in done.stderr.splitlines()


def test_an_image_model_leaves_a_folders_videos_aside(media: Path, tmp_path: Path) -> None:
    done = cam(media, "tiny.py", tmp_path / "out", str(media / "videos" / "*"))
    assert done.exit_code == 0, done.stderr
    assert "1 done, 0 failed" in done.stderr
    note = f"Note: left aside 2 video files found in folders or patterns: {media}/tiny.py:build"
    assert f"{note} takes images" in done.stderr.splitlines()
    assert image_folder(tmp_path / "out", "c").is_dir()


def test_a_typo_fails_before_the_folder_is_read_or_made(media: Path, tmp_path: Path) -> None:
    done = cam(
        media, "tiny3d.py", tmp_path / "out", str(media / "videos"), extra=("--cmap", "jeet")
    )
    assert done.exit_code == 2
    assert done.stderr.startswith("Error: unknown colormap 'jeet'\nHint: closest: 'jet'")
    assert not (tmp_path / "out").exists()


def test_ray_finds_a_folders_videos_on_the_driver(
    media: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With --ray the driver finds the inputs as it builds its run (here the run it builds is
    carried out in place of a cluster's): the folder's clips, as without --ray."""
    import featviz.run.cluster

    built = []
    monkeypatch.setattr(
        featviz.run.cluster,
        "prepare_on_cluster",
        lambda plan, build: built.append(build()) or built[0],
    )
    done = cam(media, "tiny3d.py", tmp_path / "out", str(media / "videos"), extra=("--ray", "auto"))
    assert done.exit_code == 0, done.stderr
    assert len(outputs(tmp_path / "out")) == 3


def test_skip_existing_converts_no_frame_of_a_finished_clip(
    media: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Frames become RGB only when a clip is explained: a second run with --skip-existing
    converts none (and a first run each decoded frame once, the filling repeats not again)."""
    import featviz.inputs.video

    converted = []
    convert = featviz.inputs.video._rgb
    monkeypatch.setattr(
        featviz.inputs.video, "_rgb", lambda frame: converted.append(1) or convert(frame)
    )
    video = str(media / "videos" / "a.mp4")  # 6 frames: clips of 4 and 2 (+ 2 repeats)
    first = cam(media, "tiny3d.py", tmp_path / "out", video, extra=("--skip-existing",))
    assert first.exit_code == 0 and "2 done, 0 failed, 0 skipped" in first.stderr
    assert len(converted) == 6
    again = cam(media, "tiny3d.py", tmp_path / "out", video, extra=("--skip-existing",))
    assert again.exit_code == 0 and "0 done, 0 failed, 2 skipped" in again.stderr
    assert len(converted) == 6


def test_a_clip_goes_to_a_ray_actor_with_its_pixels(media: Path) -> None:
    """PyAV's frames do not pickle: a clip sent to an actor carries its RGB pixels."""
    clip = next(clips(media / "videos" / "a.mp4", Sampling(4)))
    sent = pickle.loads(pickle.dumps(clip))
    assert all(isinstance(frame, np.ndarray) for frame in sent.decoded)
    assert np.array_equal(sent.frames, clip.frames) and sent.frames.shape == (4, 24, 32, 3)
    assert (sent.pixels, sent.times, sent.used) == (4 * 24 * 32, clip.times, 4)
