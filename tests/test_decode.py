"""decode: every hostile or unusual file becomes an upright RGB image or one clear InputError.

Every file is made here, with Pillow or by hand; nothing binary is committed.
"""

from __future__ import annotations

import errno
import io
import json
import os
import struct
import tempfile
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from conftest import mutate_bytes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from featviz.errors import InputError, UsageError
from featviz.inputs.decode import BACKGROUND, DEFAULT_MAX_PIXELS, MAX_PIXELS_HINT, decode

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Short relative paths, so that messages can be pinned exactly."""
    monkeypatch.chdir(tmp_path)


def save(name: str, image: Image.Image, **params: object) -> Path:
    path = Path(name)
    image.save(path, **params)
    return path


def stored_mode(path: Path) -> str:
    """The mode Pillow itself opens the file in: proof that the test file is what it claims."""
    with Image.open(path) as image:
        return image.mode


def failure(path: str | Path, **kwargs: int) -> InputError:
    with pytest.raises(InputError) as caught:
        decode(path, **kwargs)
    return caught.value


def close_to(actual: tuple[int, ...], expected: tuple[int, ...], tolerance: int = 12) -> bool:
    return all(abs(a - e) <= tolerance for a, e in zip(actual, expected, strict=True))


def pixels(image: Image.Image) -> list[tuple[int, ...]]:
    return [tuple(pixel) for pixel in np.asarray(image).reshape(-1, len(image.getbands())).tolist()]


def noisy(size: tuple[int, int]) -> Image.Image:
    """Random pixels: they do not compress, so a cut through the file lands in pixel data."""
    pixels = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def declared_png(width: int, height: int) -> bytes:
    """A valid PNG header declaring ``width`` × ``height`` greyscale, with a few bytes of data."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + png_chunk(b"IEND", b"")
    )


# --- files that are not images --------------------------------------------------------------


def test_empty_file() -> None:
    Path("empty.jpg").touch()
    assert failure("empty.jpg").message == "empty.jpg: is empty (0 bytes)"


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_file(fmt: str) -> None:
    data = io.BytesIO()
    noisy((64, 64)).save(data, fmt)
    Path("cut.img").write_bytes(data.getvalue()[: len(data.getvalue()) // 2])
    assert failure("cut.img").message == "cut.img: truncated or corrupt image data"


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("notes.jpg", b"just some text\n"),
        ("page.png", b"<!DOCTYPE html><html><body>Not found</body></html>"),
    ],
)
def test_not_an_image(name: str, content: bytes) -> None:
    Path(name).write_bytes(content)
    error = failure(name)
    assert error.message == f"{name}: not an image file (unrecognised format)"
    assert error.hint == "featviz reads BMP, GIF, JPEG, PNG, TIFF and WebP files"


def test_formats_outside_the_list_are_never_opened() -> None:
    # Pillow would identify this as EPS and, on load, run Ghostscript on it.
    Path("trap.jpg").write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    assert failure("trap.jpg").message == "trap.jpg: not an image file (unrecognised format)"


def test_directory_named_like_an_image() -> None:
    Path("x.jpg").mkdir()
    assert failure("x.jpg").message == "x.jpg: is a directory"


def test_missing_file_and_broken_symlink() -> None:
    assert failure("nowhere.jpg").message == "nowhere.jpg: does not exist"
    Path("link.jpg").symlink_to("gone.jpg")
    assert (
        failure("link.jpg").message
        == "link.jpg: does not exist (broken symbolic link to 'gone.jpg')"
    )


def test_fifo_is_refused_without_blocking() -> None:
    os.mkfifo("pipe.png")  # opening it for reading would wait for a writer forever
    message = "pipe.png: is not a regular file (a FIFO, socket or device)"
    assert failure("pipe.png").message == message


def test_unreadable_file() -> None:
    path = save("secret.png", Image.new("RGB", (2, 2)))
    path.chmod(0)
    try:
        if os.access(path, os.R_OK):
            pytest.skip("permissions are not enforced for this user (root)")
        assert failure(path).message == "secret.png: permission denied"
    finally:
        path.chmod(0o644)


def test_permission_denied_is_mapped(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same mapping, checked where tests run as root and chmod cannot deny anything."""
    path = save("secret.png", Image.new("RGB", (2, 2)))
    real_open = os.open

    def deny(target: object, flags: int, *args: object) -> int:
        if os.fspath(target) == "secret.png":  # type: ignore[arg-type]
            raise PermissionError(13, "Permission denied")
        return real_open(target, flags, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", deny)
    assert failure(path).message == "secret.png: permission denied"


def test_read_failures_are_told_apart_from_bad_data(monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_disk(*args: object) -> None:
        raise OSError(errno.EIO, "Input/output error")

    path = save("far.png", Image.new("RGB", (2, 2)))
    monkeypatch.setattr("PIL.ImageFile.ImageFile.load", failing_disk)
    assert failure(path).message == "far.png: cannot be read (input/output error)"


# --- modes → RGB ----------------------------------------------------------------------------


def test_16_bit_greyscale_is_scaled_not_clipped() -> None:
    values = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    path = save("deep.png", Image.fromarray(values))
    assert stored_mode(path) == "I;16"
    grey = np.asarray(decode(path))[0, :, 0]
    assert grey[0] == 0 and grey[1] == 1 and abs(int(grey[2]) - 128) <= 1 and grey[3] == 255


def test_16_bit_big_endian_tiff() -> None:
    values = np.array([[0, 32768, 65535]], dtype=">u2")
    path = save("deep.tif", Image.frombytes("I;16B", (3, 1), values.tobytes()))
    assert stored_mode(path) == "I;16B"
    assert np.asarray(decode(path))[0, :, 0].tolist() == [0, 128, 255]


def test_32_bit_and_float_greyscale() -> None:
    integers = save("int.tif", Image.fromarray(np.array([[0, 65535]], dtype=np.int32)))
    assert np.asarray(decode(integers))[0, :, 0].tolist() == [0, 255]
    unit = save("unit.tif", Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32)))
    assert np.asarray(decode(unit))[0, :, 0].tolist() == [0, 128, 255]
    wide = np.array([[-1000.0, 0.0, 1000.0, np.nan]], dtype=np.float32)
    stretched = save("wide.tif", Image.fromarray(wide))
    assert np.asarray(decode(stretched))[0, :, 0].tolist() == [0, 128, 255, 128]


def test_one_bit() -> None:
    image = Image.new("1", (2, 1))
    image.putpixel((1, 0), 1)
    assert pixels(decode(save("bits.png", image))) == [(0, 0, 0), (255, 255, 255)]


def test_palette_with_and_without_transparency() -> None:
    image = Image.new("P", (2, 1))
    image.putpalette([*RED, *GREEN])
    image.putpixel((1, 0), 1)
    assert pixels(decode(save("opaque.png", image))) == [RED, GREEN]
    clear = save("clear.png", image, transparency=1)
    assert pixels(decode(clear)) == [RED, BACKGROUND]


def test_alpha_is_composited_over_the_documented_background() -> None:
    assert BACKGROUND == (255, 255, 255)
    image = Image.new("RGBA", (3, 1))
    image.putdata([(0, 0, 255, 0), (0, 0, 255, 255), (0, 0, 0, 128)])
    decoded = pixels(decode(save("alpha.png", image)))
    assert decoded[:2] == [BACKGROUND, BLUE]
    assert close_to(decoded[2], (127, 127, 127), tolerance=1)
    grey_alpha = Image.new("LA", (2, 1))
    grey_alpha.putdata([(0, 0), (0, 255)])
    assert pixels(decode(save("la.png", grey_alpha))) == [BACKGROUND, (0, 0, 0)]


def test_cmyk_jpeg() -> None:
    path = save("print.jpg", Image.new("CMYK", (8, 8), (0, 255, 255, 0)), quality=95)
    assert stored_mode(path) == "CMYK"
    decoded = decode(path)
    assert decoded.mode == "RGB" and close_to(decoded.getpixel((4, 4)), RED)


# --- geometry -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("orientation", "marker_corner"),
    [(1, (5, 5)), (6, (14, 5)), (8, (5, 34))],  # 6: turn 90° clockwise; 8: anticlockwise
)
def test_exif_orientation(orientation: int, marker_corner: tuple[int, int]) -> None:
    image = Image.new("RGB", (40, 20), BLUE)
    image.paste(RED, (0, 0, 10, 10))  # marker in the stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = orientation
    decoded = decode(save("turned.jpg", image, exif=exif, quality=95))
    assert decoded.size == ((40, 20) if orientation == 1 else (20, 40))
    assert close_to(decoded.getpixel(marker_corner), RED)
    corners = [(0, 0), (decoded.width - 1, 0), (0, decoded.height - 1)]
    reds = [corner for corner in corners if close_to(decoded.getpixel(corner), RED, 40)]
    assert len(reds) == 1


def test_animated_gif_gives_its_first_frame() -> None:
    frames = [Image.new("RGB", (4, 4), colour) for colour in (RED, GREEN, BLUE)]
    frames[0].save("anim.gif", save_all=True, append_images=frames[1:], duration=50, loop=0)
    with Image.open("anim.gif") as stored:
        assert stored.n_frames == 3
    assert set(pixels(decode("anim.gif"))) == {RED}


def test_multi_page_tiff_gives_its_first_page() -> None:
    pages = [Image.new("RGB", (4, 4), GREEN), Image.new("RGB", (6, 6), RED)]
    pages[0].save("pages.tif", save_all=True, append_images=pages[1:])
    decoded = decode("pages.tif")
    assert decoded.size == (4, 4) and set(pixels(decoded)) == {GREEN}


@pytest.mark.parametrize("size", [(1, 1), (10000, 10), (10, 10000)])
def test_extreme_shapes(size: tuple[int, int]) -> None:
    decoded = decode(save("shape.png", Image.new("RGB", size, GREEN)))
    assert decoded.mode == "RGB" and decoded.size == size
    assert decoded.getpixel((size[0] - 1, size[1] - 1)) == GREEN


# --- decompression bombs ----------------------------------------------------------------------


def test_declared_size_is_refused_before_decoding() -> None:
    Path("bomb.png").write_bytes(declared_png(100_000, 100_000))
    assert Path("bomb.png").stat().st_size < 200
    started = time.perf_counter()
    error = failure("bomb.png")
    assert time.perf_counter() - started < 1.0
    assert error.message == (
        "bomb.png: 1e10 pixels is over the limit of 178,956,970 (decompression-bomb guard)"
    )
    assert error.hint == MAX_PIXELS_HINT == "raise it with --max-pixels N if you trust the file"


def test_own_limit_names_the_size(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbid_load(*args: object) -> None:
        raise AssertionError("pixels decoded before the size check")

    path = save("square.png", Image.new("RGB", (100, 100)))
    monkeypatch.setattr("PIL.ImageFile.ImageFile.load", forbid_load)
    assert failure(path, max_pixels=9_999).message == (
        "square.png: 100×100 = 1e4 pixels is over the limit of 9,999 (decompression-bomb guard)"
    )


def test_limit_is_inclusive() -> None:
    path = save("square.png", Image.new("RGB", (100, 100)))
    assert decode(path, max_pixels=10_000).size == (100, 100)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_max_pixels_lets_through_what_pillow_would_refuse(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 89_478_485)  # Pillow's default, restored after
    decode(save("small.png", Image.new("RGB", (2, 2))))
    assert Image.MAX_IMAGE_PIXELS == 89_478_485, "the default limit needs no change to Pillow"
    assert DEFAULT_MAX_PIXELS == 2 * 89_478_485
    # 14000² = 1.96e8 pixels, over Pillow's default refusal point: now it reaches the decoder,
    # which finds only a few bytes of pixel data.
    Path("big.png").write_bytes(declared_png(14_000, 14_000))
    assert "decompression-bomb" in failure("big.png").message
    assert (
        failure("big.png", max_pixels=200_000_000).message
        == "big.png: truncated or corrupt image data"
    )


def test_max_pixels_below_one_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="--max-pixels must be at least 1, not 0"):
        decode("any.png", max_pixels=0)


def test_concurrent_decodes_with_different_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)
    path = save("tile.png", Image.new("RGB", (300, 300), RED))
    limits = [50_000, 100_000, 10**9] * 20

    def outcome(limit: int) -> str:
        try:
            return str(decode(path, max_pixels=limit).size)
        except InputError as error:
            return error.message

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(outcome, limits))
    refused = (
        "tile.png: 300×300 = 9e4 pixels is over the limit of 50,000 (decompression-bomb guard)"
    )
    expected = {50_000: refused, 100_000: "(300, 300)", 10**9: "(300, 300)"}
    assert results == [expected[limit] for limit in limits]


# --- file names -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "display"),
    [
        ("with spaces.png", "with spaces.png"),
        ("café 猫.png", "café 猫.png"),
        (os.fsdecode(b"caf\xe9.png"), "caf\\xe9.png"),
        ("line\nbreak.png", "line\\x0abreak.png"),
    ],
)
def test_awkward_file_names(name: str, display: str) -> None:
    assert decode(save(name, Image.new("RGB", (3, 2), RED))).size == (3, 2)
    Path(name).write_bytes(b"garbage")
    message = failure(name).message
    assert message == f"{display}: not an image file (unrecognised format)"
    assert json.loads(json.dumps(message, ensure_ascii=False).encode("utf-8")) == message


# --- fuzzing --------------------------------------------------------------------------------


def _seed_files() -> list[bytes]:
    image = noisy((12, 8)).convert("RGBA")
    image.putpixel((0, 0), (0, 0, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6
    seeds = []
    for fmt, params in [
        ("PNG", {}),
        ("JPEG", {"exif": exif}),
        ("GIF", {"save_all": True, "append_images": [image.rotate(90)]}),
        ("TIFF", {}),
        ("BMP", {}),
        ("WEBP", {"quality": 50}),
    ]:
        data = io.BytesIO()
        (image.convert("RGB") if fmt in ("JPEG", "BMP") else image).save(data, fmt, **params)
        seeds.append(data.getvalue())
    return seeds


SEEDS = _seed_files()


@st.composite
def hostile_bytes(draw: st.DrawFn) -> bytes:
    if draw(st.booleans()):
        return draw(st.binary(max_size=256))
    data = bytearray(draw(st.sampled_from(SEEDS)))
    return mutate_bytes(draw, data, draw(st.integers(1, 4)))


@pytest.fixture(scope="module")
def fuzz_file() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as folder:
        yield Path(folder) / "fuzz.img"


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow's remarks on broken files
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=hostile_bytes())
def test_any_bytes_give_an_rgb_image_or_an_input_error(fuzz_file: Path, data: bytes) -> None:
    fuzz_file.write_bytes(data)
    try:
        decoded = decode(fuzz_file, max_pixels=1_000_000)
    except InputError as error:
        assert error.message.startswith(f"{fuzz_file}: ") and "\n" not in error.message
    else:
        assert decoded.mode == "RGB" and decoded.width >= 1 and decoded.height >= 1
        decoded.tobytes()  # the pixels are really there, detached from the closed file


@pytest.mark.parametrize(
    ("size", "seen"),
    [((128, 96), (96, 128)), ((96, 96), (96, 96)), ((200, 150), (96, 128)), ((96, 128), (128, 96))],
)
def test_an_image_loads_as_resizing_gives_it_at_its_size_or_not(
    size: tuple[int, int], seen: tuple[int, int]
) -> None:
    """An image at the size the network sees is not resized (its pixels are converted once
    for the original and the input): the same tensor and original as through the resize. The
    tensor is the pixels, normalised later with its batch."""
    from pathlib import PurePath

    import torch

    from featviz.inputs.discover import ImageSource
    from featviz.inputs.loaded import load_image
    from featviz.inputs.preprocess import Preprocessing, resized

    pixels = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    path = save("photo.png", Image.fromarray(pixels))
    preprocessing = Preprocessing((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 96)
    source = ImageSource(path=path, relative=PurePath("photo"), display="photo.png")
    loaded = load_image(source, preprocessing, torch.device("cpu"), DEFAULT_MAX_PIXELS)
    expected = resized(Image.fromarray(pixels), preprocessing)
    assert loaded.tensor.dtype == expected.dtype == torch.uint8
    assert loaded.tensor.shape == expected.shape == (3, *seen)
    assert torch.equal(loaded.tensor, expected)
    assert np.array_equal(loaded.original, pixels)
