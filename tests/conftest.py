"""Shared fixtures: tiny seeded models, sample photos, an isolated torch cache."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from hypothesis import strategies as st

if TYPE_CHECKING:
    import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_images"
LITE0_SPEC = str(ROOT / "examples" / "efficientnet_lite0.py") + ":build"
sys.path.insert(0, str(ROOT / "examples"))
# A warm worker the developer runs must not answer the tests' featviz processes; test_worker.py
# starts its own.
os.environ["FEATVIZ_WORKER"] = "off"  # synthetic_shapes: the tests' trained transformers

TINY_MODEL_SOURCE = '''
import torch
from torch import nn


class TinyNet(nn.Module):
    """conv → relu → conv → relu → global-average-pool → linear: small enough for any test."""

    def __init__(self, num_classes: int = 5) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(4, 6, 3, stride=2, padding=1), nn.ReLU(inplace=True),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, num_classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


def build(num_classes: int = 5) -> nn.Module:
    torch.manual_seed(0)
    return TinyNet(num_classes)
'''


# A video classifier (featviz.inputs.video) small enough for any test: clips of 4 frames.
TINY_VIDEO_MODEL = """
import torch
from torch import nn

CLIP_LENGTH = 4
INPUT_SIZE = 16
MEAN = STD = (0.5, 0.5, 0.5)


def build():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv3d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv3d(4, 6, 3, padding=1, stride=(2, 2, 2)),
        nn.ReLU(), nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(6, 3),
    )
"""


def bar_frames(count: int, height: int = 48, width: int = 64) -> np.ndarray:
    """(count, H, W, 3): frame i is black with a white bar at columns i … i + 7."""
    import numpy as np

    frames = np.zeros((count, height, width, 3), np.uint8)
    for i in range(count):
        frames[i, :, i : i + 8] = 255
    return frames


def write_video(path: Path, frames: np.ndarray, codec: str, rate: int = 30, **options) -> Path:
    """``frames`` (T, H, W, 3) uint8 encoded by PyAV at ``rate`` frames per second."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate, options=options)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv444p" if codec == "libx264" else "yuv420p"
        for pixels in frames:
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def tiny_video_case(root: Path) -> tuple[Path, str]:
    """(a 6-frame MP4 of a moving bar: two clips of the tiny video model, the model's spec),
    written under ``root``."""
    (root / "tiny3d.py").write_text(TINY_VIDEO_MODEL)
    video = write_video(root / "bar.mp4", bar_frames(6, 24, 32), "libx264")
    return video, f"{root}/tiny3d.py:build"


def example_cache(tmp_path_factory, name: str, train) -> Path:
    """A folder for XDG_CACHE_HOME holding the weights of example ``name`` (see
    synthetic_shapes.cached) as ``train()`` gives them: trained once per test module."""
    import torch

    folder = tmp_path_factory.mktemp("cache")
    weights = folder / "featviz" / f"{name}-{torch.__version__.split('+')[0]}.pt"
    weights.parent.mkdir(parents=True)
    torch.save(train().state_dict(), weights)
    return folder


def image_folder(out: Path, relative: str | Path, model: str | None = None) -> Path:
    """Where the outputs of the image at ``relative`` (its folder under a model's folder: the
    input's name, ``photo.png``) are in output folder ``out``: under ``model``'s folder, or the
    only model folder there is."""
    if model is None:
        from featviz.sinks.layout import RESERVED

        [model] = [p.name for p in out.iterdir() if p.is_dir() and p.name not in RESERVED]
    return out / model / relative


def record_of(
    out: Path, relative: str | Path, command: str = "cam", model: str | None = None
) -> Path | None:
    """The one record ``command`` wrote for the image at ``relative`` in output folder ``out``
    (records/<model>/<relative>/<command>-<fingerprint>.json), or None."""
    models = [model] if model else sorted(p.name for p in (out / "records").iterdir())
    found = [
        path
        for name in models
        if (out / "records" / name / relative).is_dir()
        for path in sorted((out / "records" / name / relative).iterdir())
        if path.name.startswith(f"{command}-") and path.suffix == ".json"
    ]
    assert len(found) <= 1, found
    return found[0] if found else None


def mutate_bytes(draw, data: bytearray, steps: int) -> bytes:
    """Apply ``steps`` hypothesis-drawn edits to ``data``: flip a bit, cut the tail, insert or
    delete a few bytes (the fuzz tests' way of damaging a valid image file)."""
    for _ in range(steps):
        where = draw(st.integers(0, len(data)))
        action = draw(st.sampled_from(["flip", "cut", "insert", "delete"]))
        if action == "flip" and where < len(data):
            data[where] ^= 1 << draw(st.integers(0, 7))
        elif action == "cut":
            del data[where:]
        elif action == "insert":
            data[where:where] = draw(st.binary(min_size=1, max_size=16))
        else:
            del data[where : where + draw(st.integers(1, 16))]
    return bytes(data)


@pytest.fixture
def tiny_model_file(tmp_path: Path) -> Path:
    """A user model file exposing ``build``; use as ``--model <path>:build``."""
    path = tmp_path / "tiny_model.py"
    path.write_text(TINY_MODEL_SOURCE)
    return path


@pytest.fixture
def tiny_model(tiny_model_file: Path):
    """The same TinyNet, seeded, eval mode, parameters frozen."""
    namespace: dict = {}
    exec(compile(TINY_MODEL_SOURCE, str(tiny_model_file), "exec"), namespace)
    return namespace["build"]().eval().requires_grad_(False)


@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty torch cache, so no test sees (or fills) the user's real one."""
    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def lite0():
    """The real ImageNet-pretrained EfficientNet-Lite0 from examples/, loaded once."""
    from featviz.model.load import load_model
    from featviz.model.options import ModelRequest

    return load_model(ModelRequest(LITE0_SPEC, device="cpu"))
