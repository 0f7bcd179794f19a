"""TensorBoard gets a clip's animated overlay: an animated GIF in an image summary (what
``SummaryWriter.add_video`` writes), read back here from the event file."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from conftest import TINY_VIDEO_MODEL, bar_frames, image_folder, write_video
from PIL import Image, ImageSequence
from typer.testing import CliRunner

from featviz.cli.app import app


def _frames(picture: Image.Image) -> np.ndarray:
    return np.stack(
        [np.asarray(f.convert("RGB"), dtype=float) for f in ImageSequence.Iterator(picture)]
    )


def test_tensorboard_plays_each_clips_animated_overlay(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (tmp_path / "tiny3d.py").write_text(TINY_VIDEO_MODEL)
    video = write_video(tmp_path / "bar.mp4", bar_frames(6, 24, 32), "libx264")
    out, board = tmp_path / "out", tmp_path / "tb"
    done = CliRunner().invoke(
        app,
        [
            "cam",
            "-m",
            f"{tmp_path / 'tiny3d.py'}:build",
            "-q",
            "-o",
            str(out),
            "--tensorboard",
            str(board),
            str(video),
        ],
    )
    assert done.exit_code == 0, done.stderr
    events = EventAccumulator(str(board), size_guidance={"images": 0})
    events.Reload()
    [tag] = events.Tags()["images"]
    assert tag.startswith("cam/gradcam/3/")  # the default layer
    images = sorted(events.Images(tag), key=lambda event: event.step)
    assert [event.step for event in images] == [0, 1]  # the video's two clips
    for event in images:
        with Image.open(io.BytesIO(event.encoded_image_string)) as gif:
            assert gif.format == "GIF" and gif.n_frames == 4 and gif.size == (32, 24)
            assert (event.width, event.height) == (32, 24)
            shown = _frames(gif)
        on_disk = image_folder(out, f"bar/clip{event.step:04d}") / f"{tag}.webp"
        with Image.open(on_disk) as webp:
            written = _frames(webp)
        # The same frames up to GIF's palette and WebP's lossy coding (about 5 levels of 255).
        assert np.abs(shown - written).mean() < 10
