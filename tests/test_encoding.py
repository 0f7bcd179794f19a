"""How pictures are encoded: PNG through ISA-L or zlib (the same pixels either way), and
--format jpg / webp for the pictures (heatmaps and raw arrays stay as they are)."""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from typer.testing import CliRunner

import featviz.sinks.encode
from featviz.cli.app import app
from featviz.sinks.encode import deflate_zlib, encode_json, encode_png


@pytest.mark.parametrize("shape", [(37, 53, 3), (41, 29)])
def test_png_through_isal_and_through_zlib_decode_to_the_same_pixels(
    shape: tuple[int, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    from isal import isal_zlib

    rng = np.random.default_rng(0)
    smooth = np.linspace(0, 255, shape[0] * shape[1]).reshape(shape[:2])
    image = (smooth[..., None] if len(shape) == 3 else smooth) + rng.integers(0, 40, shape)
    image = np.clip(image, 0, 255).astype(np.uint8)
    assert featviz.sinks.encode.deflate is not deflate_zlib  # isal is installed: featviz uses it
    through_isal = encode_png(image)
    monkeypatch.setattr(featviz.sinks.encode, "deflate", deflate_zlib)
    through_zlib = encode_png(image)
    assert through_isal != through_zlib  # two different encoders really ran
    for data in (through_isal, through_zlib):
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(data))), image)
    start = through_isal.index(b"IDAT")
    (length,) = struct.unpack(">I", through_isal[start - 4 : start])
    chunk = through_isal[start : start + 4 + length]  # its type, then its data
    (crc,) = struct.unpack(">I", through_isal[start + 4 + length : start + 8 + length])
    assert crc == zlib.crc32(chunk)  # ISA-L's CRC-32 is zlib's
    raw = isal_zlib.decompress(chunk[4:])
    assert len(raw) == shape[0] * (1 + int(np.prod(shape[1:])))  # one filter byte a row


def test_cam_writes_jpeg_overlays_and_keeps_heatmaps_png(
    tmp_path: Path, tiny_model_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    photo = np.asarray(Image.open(Path(__file__).parent.parent / "sample_images/chelsea.png"))
    Image.fromarray(photo).save("cat.png")
    model = ["-m", f"{tiny_model_file}:build", "cat.png", "--heatmap", "--json"]
    png = CliRunner().invoke(app, ["cam", *model, "-o", "png"])
    jpg = CliRunner().invoke(
        app, ["cam", *model, "-o", "jpg", "--format", "jpg", "--quality", "95"]
    )
    assert png.exit_code == jpg.exit_code == 0, jpg.output
    [png_overlay, png_heatmap] = json.loads(png.stdout)["outputs"]
    [jpg_overlay, jpg_heatmap] = json.loads(jpg.stdout)["outputs"]
    assert jpg_overlay == png_overlay.replace("png/", "jpg/", 1)[: -len(".png")] + ".jpg"
    assert jpg_heatmap.endswith(".heatmap.png")
    assert Path(jpg_heatmap).read_bytes() == Path(png_heatmap).read_bytes()
    with Image.open(jpg_overlay) as decoded:
        assert decoded.format == "JPEG" and decoded.size == (photo.shape[1], photo.shape[0])
        lossy = np.asarray(decoded).astype(int)
    exact = np.asarray(Image.open(png_overlay)).astype(int)
    assert 0 < np.abs(lossy - exact).mean() < 3
    assert Path("jpg/gallery/thumbs/tiny_model/cat/cam").is_dir()  # JPEG outputs shown too
    assert '.jpg"' in Path("jpg/gallery/data.js").read_text()


def test_another_format_is_other_settings_for_skip_existing(
    tmp_path: Path, tiny_model_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    Image.new("RGB", (30, 20), (200, 10, 10)).save("a.png")
    common = ["maps", "-m", f"{tiny_model_file}:build", "a.png", "--json", "--skip-existing"]
    first = CliRunner().invoke(app, common)
    again = CliRunner().invoke(app, common)
    webp = CliRunner().invoke(app, [*common, "--format", "webp"])
    assert [json.loads(r.stdout)["skipped"] for r in (first, again, webp)] == [False, True, False]
    grids = json.loads(webp.stdout)["outputs"]
    assert len(grids) == 2 and all(grid.endswith(".webp") for grid in grids)
    for grid in grids:
        with Image.open(grid) as decoded:
            assert decoded.format == "WEBP"


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(value=JSON_VALUES)
def test_json_reads_back_as_what_was_written(value) -> None:
    assert json.loads(encode_json(value)) == value


def test_json_gives_each_member_of_the_top_two_levels_a_line() -> None:
    manifest = {"command": "top", "images": [{"input": "a.jpg", "outputs": []}, {"input": "b"}]}
    assert encode_json(manifest).decode() == (
        "{\n"
        '  "command": "top",\n'
        '  "images": [\n'
        '    {"input": "a.jpg", "outputs": []},\n'
        '    {"input": "b"}\n'
        "  ]\n"
        "}\n"
    )
