"""declared_pixels: the size a file's header declares, read without decoding, equal to what
Pillow reads from the same header, for every format and variant featviz decodes."""

from __future__ import annotations

import io
import os
import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import mutate_bytes
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from featviz.inputs.decode import declared_pixels


def picture(width: int, height: int, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(width * 7919 + height)
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels).convert(mode)


def exif(orientation: int) -> Image.Exif:
    tags = Image.Exif()
    tags[0x0112] = orientation
    return tags


def encoded(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


# name → the file's bytes; sizes all different, so that width and height cannot be swapped.
FILES = {
    "rgb.png": encoded(picture(37, 21), "PNG"),
    "grey16.png": encoded(Image.fromarray(np.zeros((19, 23), np.uint16)), "PNG"),
    "animated.png": encoded(
        picture(29, 17), "PNG", save_all=True, append_images=[picture(29, 17, "L")]
    ),
    "baseline.jpg": encoded(picture(41, 27), "JPEG"),
    "progressive.jpg": encoded(picture(43, 25), "JPEG", progressive=True),
    "optimized.jpg": encoded(picture(45, 23), "JPEG", optimize=True, quality=60),
    # EXIF orientation 6 turns it upright as 31 × 53: the header, and the pixel count, stay
    "rotated.jpg": encoded(picture(53, 31), "JPEG", exif=exif(6)),
    # an ICC profile and a comment: segments to walk past before the frame header
    "profiled.jpg": encoded(
        picture(39, 29), "JPEG", icc_profile=b"\0" * 70_000, comment=b"featviz"
    ),
    "grey.jpg": encoded(picture(33, 35, "L"), "JPEG"),
    "cmyk.jpg": encoded(picture(35, 33, "CMYK"), "JPEG"),
    "pictures.mpo": encoded(picture(47, 19), "MPO", save_all=True, append_images=[picture(47, 19)]),
    "frames.gif": encoded(
        picture(31, 19, "P"), "GIF", save_all=True, append_images=[picture(31, 19, "P")]
    ),
    "picture.bmp": encoded(picture(27, 13), "BMP"),
    "pages.tif": encoded(picture(25, 15), "TIFF"),
    "picture.webp": encoded(picture(21, 11), "WEBP"),
}


@pytest.mark.parametrize("name", list(FILES))
def test_the_declared_size_is_pillows(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(FILES[name])
    with Image.open(path) as image:
        width, height = image.size
    assert declared_pixels(path) == width * height


@pytest.mark.parametrize(
    "data",
    [b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8", b"\xff\xd8\xff\xe0\x00\x10JFIF", b"not an image"],
    ids=["empty", "png-signature", "jpeg-start", "jpeg-cut-in-a-segment", "text"],
)
def test_what_declares_no_size_counts_nothing(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "broken.jpg"
    path.write_bytes(data)
    assert declared_pixels(path) == 0


def test_missing_files_and_folders_count_nothing(tmp_path: Path) -> None:
    assert declared_pixels(tmp_path / "gone.png") == 0
    assert declared_pixels(tmp_path) == 0


def test_a_fifo_is_not_waited_on(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.png")
    counted: list[int] = []
    # A daemon thread: were it to block on the FIFO, the test fails instead of hanging.
    reader = threading.Thread(
        target=lambda: counted.append(declared_pixels(tmp_path / "pipe.png")), daemon=True
    )
    reader.start()
    reader.join(timeout=10)
    assert counted == [0]


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_any_bytes_count_some_pixels_or_none(tmp_path_factory, data: st.DataObject) -> None:
    seed = bytearray(data.draw(st.sampled_from([FILES["rgb.png"], FILES["profiled.jpg"]])))
    path = tmp_path_factory.getbasetemp() / "fuzzed.img"
    path.write_bytes(mutate_bytes(data.draw, seed, data.draw(st.integers(1, 4))))
    assert declared_pixels(path) >= 0
