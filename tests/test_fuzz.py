"""Random and mutated image bytes through the whole ``cam`` path (decode → resize → forward →
CAM → overlay → write): every input ends as a success with readable outputs or as one clean
per-file error line; no exception ever leaves the run. (test_decode.py fuzzes decode alone.)"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_MODEL_SOURCE, mutate_bytes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from featviz.inputs.decode import decode
from featviz.model.options import ModelRequest
from featviz.run.plan import CamRequest, Plan, RunRequest
from featviz.run.prepare import PreparedRun, prepare
from featviz.sinks.options import OutputRequest

NAMES = ["a.png", "b.jpg", "c.png", "d.jpg"]
MAX_PIXELS = 1_000_000  # a mutated header may declare any size: keep refusals cheap


def _seeds() -> list[bytes]:
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8))
    rgba = photo.convert("RGBA")
    rgba.putpixel((0, 0), (0, 0, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6
    variants = [
        (photo, "PNG", {}),
        (rgba, "PNG", {}),
        (photo.convert("P"), "PNG", {"transparency": 0}),
        (Image.fromarray(rng.integers(0, 65536, (8, 12), dtype=np.uint16)), "PNG", {}),
        (photo, "JPEG", {"exif": exif}),
        (photo, "JPEG", {"progressive": True}),
        (photo.convert("CMYK"), "JPEG", {}),
    ]
    seeds = []
    for image, fmt, params in variants:
        buffer = io.BytesIO()
        image.save(buffer, fmt, **params)
        seeds.append(buffer.getvalue())
    return seeds


SEEDS = _seeds()


def _with_declared_size(data: bytes, width: int, height: int) -> bytes:
    """A PNG whose header declares another size, its checksum fixed so the lie is believed."""
    header = bytearray(data[16:29])
    header[0:8] = struct.pack(">II", width, height)
    crc = struct.pack(">I", zlib.crc32(b"IHDR" + header))
    return data[:16] + bytes(header) + crc + data[33:]


@st.composite
def image_bytes(draw: st.DrawFn) -> bytes:
    """Random bytes, or a valid PNG/JPEG mutated: bits flipped, cut, spliced, resized header."""
    if draw(st.integers(0, 5)) == 0:
        return draw(st.binary(max_size=200))
    data = bytearray(draw(st.sampled_from(SEEDS)))
    if data.startswith(b"\x89PNG") and draw(st.booleans()):
        size = st.integers(0, 5000)
        data = bytearray(_with_declared_size(bytes(data), draw(size), draw(size)))
    return mutate_bytes(draw, data, draw(st.integers(0, 3)))


@pytest.fixture(scope="module")
def fuzz_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PreparedRun, Path]]:
    """One prepared run over a folder of four files whose bytes each example replaces."""
    root = tmp_path_factory.mktemp("fuzz")
    (root / "tiny_model.py").write_text(TINY_MODEL_SOURCE)
    (root / "in").mkdir()
    for name in NAMES:
        (root / "in" / name).write_bytes(SEEDS[0])
    run = prepare(
        Plan(
            "cam",
            ModelRequest(f"{root / 'tiny_model.py'}:build", input_size=32, device="cpu"),
            OutputRequest(root / "out", gallery=False),
            CamRequest(methods=("gradcam", "eigencam"), heatmap=True),
            RunRequest((str(root / "in"),), max_pixels=MAX_PIXELS, batch_size=2),
        )
    )
    assert [source.path.name for source in run.sources] == sorted(NAMES)
    yield run, root


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(files=st.lists(image_bytes(), min_size=len(NAMES), max_size=len(NAMES)))
def test_any_bytes_give_outputs_or_one_clean_error(fuzz_run, files: list[bytes]) -> None:
    run, root = fuzz_run
    for name, data in zip(sorted(NAMES), files):
        (root / "in" / name).write_bytes(data)
    results = list(run.results())  # nothing may escape
    assert sorted(result.source.path.name for result in results) == sorted(NAMES)
    for result in results:
        if result.error is not None:
            assert result.error.startswith(f"{result.source.display}: ")
            assert "\n" not in result.error and not result.outputs
            continue
        expected = decode(result.source.path, max_pixels=MAX_PIXELS).size
        assert len(result.outputs) == 4  # overlay + heatmap for each of two methods
        for output in result.outputs:
            with Image.open(output) as image:
                assert image.size == expected
                image.load()
