"""One `featviz cam` run over a folder of everything people keep on disk.

Every file is made here. The folder holds good photos and hostile files side by side; ONE run
over it (``--json``) must give each file either correct outputs (the overlay at the original,
upright size) or exactly one ``error: <path>: <reason>`` line, process all the others, exit 1,
and list the failures in the JSON lines and the manifest, all valid UTF-8 JSON even for a file
name that is not UTF-8. Decoding each file is covered in test_decode.py; this is the whole path.

The overlay is written with ``--alpha 0``, so it must equal the decoded original pixel for pixel:
that shows the image was turned upright and never cropped or squashed; ``--heatmap`` adds the
bare heatmap, which must have the same size.
"""

from __future__ import annotations

import io
import json
import os
import re
import struct
import sys
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_MODEL_SOURCE, record_of
from PIL import Image
from typer.testing import CliRunner

from featviz.cli.app import app
from featviz.inputs.printable import printable

RED, GREEN, BLUE, BLACK, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (0, 0, 0), (255, 255, 255)
NOT_UTF8 = os.fsdecode(b"caf\xe9.png")


@dataclass(frozen=True)
class Outcome:
    """What one input must give: an overlay of ``size`` (width, height) whose pixels at (x, y)
    are as listed (± ``tolerance``, for JPEG), or the failure ``reason`` after "<path>: "."""

    size: tuple[int, int] | None = None
    pixels: dict[tuple[int, int], tuple[int, int, int]] = field(default_factory=dict)
    tolerance: int = 0
    reason: str | None = None


def noise(width: int, height: int, seed: int = 0) -> Image.Image:
    """Random pixels: incompressible, so a cut through the file lands in pixel data."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def encoded(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png() -> bytes:
    """A 100 kB-free PNG declaring 100000 × 100000 pixels (30 GB once decoded)."""
    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + png_chunk(b"IEND", b"")
    )


def photo_with_marker(orientation: int) -> bytes:
    """A 40×20 black JPEG with a red 10×10 marker in its stored top-left corner."""
    image = Image.new("RGB", (40, 20), BLACK)
    image.paste(RED, (0, 0, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encoded(image, "JPEG", exif=exif, quality=95)


def onebit() -> Image.Image:
    image = Image.new("1", (30, 20), 0)
    image.paste(1, (15, 0, 30, 20))
    return image


def palette_with_transparency() -> Image.Image:
    image = Image.new("P", (30, 20), 0)
    image.putpalette([*RED, *BLUE])
    image.paste(1, (15, 0, 30, 20))
    image.info["transparency"] = 0
    return image


def horizontal_ramp(width: int, height: int) -> Image.Image:
    row = (np.arange(width) % 256).astype(np.uint8)
    return Image.fromarray(np.repeat(np.tile(row, (height, 1))[..., None], 3, axis=2))


def save(image: Image.Image, **params: object) -> Callable[[Path], None]:
    return lambda path: image.save(path, **params)


def write(data: bytes) -> Callable[[Path], None]:
    return lambda path: path.write_bytes(data)


def multi(fmt: str, frames: list[Image.Image]) -> Callable[[Path], None]:
    return lambda path: frames[0].save(path, fmt, save_all=True, append_images=frames[1:])


def symlink(target: str) -> Callable[[Path], None]:
    return lambda path: os.symlink(target, path)


def fifo(path: Path) -> None:
    os.mkfifo(path)  # opened for reading, it would wait for a writer forever


def subfolder_photo(path: Path) -> None:
    path.mkdir()
    Image.new("RGB", (30, 20), GREEN).save(path / "inside.png")


NOISE_40x30 = noise(40, 30)
TRUNCATED_JPEG = encoded(noise(64, 48, 1), "JPEG")
TRUNCATED_PNG = encoded(noise(64, 48, 2), "PNG")
CORRUPT = "truncated or corrupt image data"
NOT_AN_IMAGE = "not an image file (unrecognised format)"
# name in the folder → (how to make it, what must come out). A folder's outputs mirror the
# input's stem: "x.jpg/inside.png" is the image inside the directory named "x.jpg".
CORPUS: dict[str, tuple[Callable[[Path], None], Outcome]] = {
    "good.png": (save(NOISE_40x30), Outcome((40, 30))),
    "photo.jpg": (save(noise(40, 30, 3), quality=90), Outcome((40, 30))),
    "empty.jpg": (write(b""), Outcome(reason="is empty (0 bytes)")),
    "truncated_jpeg.jpg": (
        write(TRUNCATED_JPEG[: len(TRUNCATED_JPEG) // 2]),
        Outcome(reason=CORRUPT),
    ),
    "truncated_png.png": (write(TRUNCATED_PNG[: len(TRUNCATED_PNG) // 2]), Outcome(reason=CORRUPT)),
    "text.jpg": (write(b"just some notes, not a JPEG\n"), Outcome(reason=NOT_AN_IMAGE)),
    "page.png": (
        write(b"<!DOCTYPE html><html><body>404</body></html>\n"),
        Outcome(reason=NOT_AN_IMAGE),
    ),
    # 40000 / 65535 of full scale → 156 of 255: scaled, not clipped to 255
    "grey16.png": (
        save(Image.fromarray(np.full((20, 30), 40000, dtype=np.uint16))),
        Outcome((30, 20), {(0, 0): (156, 156, 156)}),
    ),
    "onebit.png": (save(onebit()), Outcome((30, 20), {(0, 0): BLACK, (29, 19): WHITE})),
    # the transparent red half is composited over white; the blue half stays blue
    "palette.png": (
        save(palette_with_transparency(), transparency=0),
        Outcome((30, 20), {(0, 0): WHITE, (29, 19): BLUE}),
    ),
    "rgba.png": (
        save(Image.new("RGBA", (30, 20), (255, 0, 0, 128))),
        Outcome((30, 20), {(0, 0): (255, 127, 127)}, tolerance=1),
    ),
    "la.png": (
        save(Image.new("LA", (30, 20), (100, 50))),
        Outcome((30, 20), {(0, 0): (225, 225, 225)}, tolerance=1),
    ),
    "cmyk.jpg": (
        save(Image.new("CMYK", (30, 20), (0, 255, 255, 0))),
        Outcome((30, 20), {(15, 10): RED}, tolerance=16),
    ),
    # orientation 6: the stored top-left corner is shown top-right; 8: bottom-left
    "exif6.jpg": (
        write(photo_with_marker(6)),
        Outcome((20, 40), {(17, 2): RED, (2, 2): BLACK, (2, 37): BLACK}, tolerance=40),
    ),
    "exif8.jpg": (
        write(photo_with_marker(8)),
        Outcome((20, 40), {(2, 37): RED, (2, 2): BLACK, (17, 2): BLACK}, tolerance=40),
    ),
    "animated.gif": (
        multi("GIF", [Image.new("RGB", (30, 20), RED), Image.new("RGB", (30, 20), GREEN)]),
        Outcome((30, 20), {(0, 0): RED}),
    ),
    "pages.tif": (
        multi("TIFF", [Image.new("RGB", (30, 20), RED), Image.new("RGB", (50, 10), BLUE)]),
        Outcome((30, 20), {(0, 0): RED}),
    ),
    "one.png": (
        save(Image.new("RGB", (1, 1), (10, 20, 30))),
        Outcome((1, 1), {(0, 0): (10, 20, 30)}),
    ),
    "strip.png": (
        save(horizontal_ramp(10_000, 10)),
        Outcome((10_000, 10), {(0, 0): BLACK, (9_999, 9): (15, 15, 15)}),
    ),
    "bomb.png": (
        write(bomb_png()),
        Outcome(reason="1e10 pixels is over the limit of 178,956,970 (decompression-bomb guard)"),
    ),
    "pipe.png": (fifo, Outcome(reason="is not a regular file (a FIFO, socket or device)")),
    "x.jpg": (subfolder_photo, Outcome((30, 20), {(0, 0): GREEN})),
    "link.jpg": (
        symlink("gone.jpg"),
        Outcome(reason="does not exist (broken symbolic link to 'gone.jpg')"),
    ),
    "locked.png": (save(Image.new("RGB", (30, 20), BLUE)), Outcome((30, 20), {(0, 0): BLUE})),
    "with space.png": (save(Image.new("RGB", (30, 20), RED)), Outcome((30, 20), {(0, 0): RED})),
    "café 猫.png": (save(Image.new("RGB", (30, 20), GREEN)), Outcome((30, 20), {(0, 0): GREEN})),
    NOT_UTF8: (
        save(Image.new("RGB", (30, 20), BLUE), format="PNG"),
        Outcome((30, 20), {(0, 0): BLUE}),
    ),
}


@dataclass
class HostileRun:
    exit_code: int
    exception: BaseException | None
    stdout: bytes
    stderr: str
    names: list[str]  # the corpus files this platform could make
    expected: dict[str, Outcome]
    root: Path

    @property
    def stderr_lines(self) -> list[str]:
        return self.stderr.splitlines()

    def json_lines(self) -> dict[str, dict]:
        records = [json.loads(line.decode("utf-8")) for line in self.stdout.splitlines()]
        return {record["input"]: record for record in records}


def input_path(name: str) -> str:
    """The path of a corpus entry as the run sees it (relative to the working folder)."""
    return f"in/{name}/inside.png" if name == "x.jpg" else f"in/{name}"


def relative(name: str) -> str:
    """Where the outputs of in/``name`` go under the model's folder."""
    return f"{name}/inside" if name == "x.jpg" else os.path.splitext(name)[0]


def output_folder(root: Path, name: str) -> Path:
    return root / "out" / "tiny_model" / relative(name)


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostileRun]:
    root = tmp_path_factory.mktemp("hostile")
    (root / "in").mkdir()
    (root / "tiny_model.py").write_text(TINY_MODEL_SOURCE)
    names, expected = [], {}
    for name, (make, outcome) in CORPUS.items():
        try:
            make(root / "in" / name)
        except (OSError, UnicodeError):  # a file system that refuses non-UTF-8 names
            assert name == NOT_UTF8 and sys.platform != "linux"
            continue
        names.append(name)
        expected[name] = outcome
    os.chmod(root / "in" / "locked.png", 0)
    if not os.access(root / "in" / "locked.png", os.R_OK):
        expected["locked.png"] = Outcome(reason="permission denied")
    previous = os.getcwd()
    os.chdir(root)
    try:
        result = CliRunner().invoke(
            app,
            [
                "cam",
                "-m",
                "tiny_model.py:build",
                "--input-size",
                "32",
                "--batch-size",
                "4",
                "--recursive",
                "--alpha",
                "0",
                "--heatmap",
                "--json",
                "in",
                "-o",
                "out",
            ],
        )
    finally:
        os.chdir(previous)
        os.chmod(root / "in" / "locked.png", 0o644)
    yield HostileRun(
        result.exit_code,
        result.exception,
        result.stdout_bytes,
        result.stderr,
        names,
        expected,
        root,
    )


def failures(run: HostileRun) -> dict[str, str]:
    return {name: outcome.reason for name, outcome in run.expected.items() if outcome.reason}


def test_the_run_exits_1_with_one_line_per_failure_and_a_summary(hostile: HostileRun) -> None:
    assert hostile.exit_code == 1, hostile.stderr
    assert isinstance(hostile.exception, SystemExit)  # nothing escaped the CLI
    *errors, summary = hostile.stderr_lines
    assert sorted(errors) == sorted(
        f"error: {printable(input_path(name))}: {reason}"
        for name, reason in failures(hostile).items()
    )
    done = len(hostile.names) - len(failures(hostile))
    assert re.fullmatch(
        rf"{done} done, {len(failures(hostile))} failed, 0 skipped in \d+\.\d s "
        r"\(\d+\.\d\d images/s\); outputs in out; manifest out/manifest\.json",
        summary,
    ), summary
    assert "Traceback" not in hostile.stderr


@pytest.mark.parametrize("name", list(CORPUS))
def test_each_file_gives_its_outputs_or_one_error_line(hostile: HostileRun, name: str) -> None:
    if name not in hostile.names:
        pytest.skip("this file system does not take file names that are not UTF-8")
    outcome = hostile.expected[name]
    display = printable(input_path(name))
    record = hostile.json_lines()[display]
    mentions = [line for line in hostile.stderr_lines if display in line]
    folder = output_folder(hostile.root, name)
    if outcome.reason:
        assert mentions == [f"error: {display}: {outcome.reason}"]
        assert record["error"] == f"{display}: {outcome.reason}"
        assert record["outputs"] == [] and not folder.exists()
        return
    assert mentions == [] and record["error"] is None
    top = record["predictions"][0]["index"]
    overlay = folder / "cam" / "gradcam" / "features" / f"{top}.png"
    heatmap = overlay.with_name(f"{top}.heatmap.png")
    assert sorted(folder.rglob("*.png")) == sorted([overlay, heatmap])
    assert sorted(record["outputs"]) == sorted(
        printable(path.relative_to(hostile.root)) for path in (overlay, heatmap)
    )
    with Image.open(heatmap) as image:
        assert image.size == outcome.size
    with Image.open(overlay) as image:
        assert image.size == outcome.size and image.mode == "RGB"
        pixels = np.asarray(image)
    for (x, y), colour in outcome.pixels.items():
        assert np.abs(pixels[y, x].astype(int) - colour).max() <= outcome.tolerance, (x, y)
    if name == "good.png":  # lossless: the alpha-0 overlay is the photo itself
        np.testing.assert_array_equal(pixels, np.asarray(NOISE_40x30))


def test_json_lines_are_utf8_json_one_per_input(hostile: HostileRun) -> None:
    lines = hostile.stdout.splitlines()
    records = hostile.json_lines()
    assert len(lines) == len(records) == len(hostile.names)
    assert set(records) == {printable(input_path(name)) for name in hostile.names}
    if NOT_UTF8 in hostile.names:  # shown, like in messages, with the byte escaped
        assert records["in/caf\\xe9.png"]["outputs"][0].startswith("out/tiny_model/caf\\xe9/cam/")


def test_manifest_and_records_list_every_input_and_the_failures(hostile: HostileRun) -> None:
    manifest = json.loads((hostile.root / "out" / "manifest.json").read_bytes().decode("utf-8"))
    failed = failures(hostile)
    assert manifest["interrupted"] is False
    assert manifest["counts"] == {
        "done": len(hostile.names) - len(failed),
        "failed": len(failed),
        "skipped": 0,
        "cut_off": 0,
        "not_attempted": 0,
    }
    errors = {image["input"]: image["error"] for image in manifest["images"]}
    assert errors == {
        printable(input_path(name)): (
            f"{printable(input_path(name))}: {failed[name]}" if name in failed else None
        )
        for name in hostile.names
    }
    assert manifest["images"] == list(hostile.json_lines().values())
    for name in set(hostile.names) - set(failed):
        record = record_of(hostile.root / "out", relative(name))
        assert json.loads(record.read_bytes().decode("utf-8"))["error"] is None


@pytest.mark.skipif(sys.platform != "linux", reason="needs file names that are not UTF-8")
def test_arguments_that_are_not_utf8_give_a_valid_manifest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("tiny_model.py").write_text(TINY_MODEL_SOURCE)
    folder, out = os.fsdecode(b"f\xf6to"), os.fsdecode(b"\xff-out")
    os.mkdir(folder)
    Image.new("RGB", (30, 20), RED).save(Path(folder, "cat.png"))
    result = CliRunner().invoke(
        app, ["cam", "-m", "tiny_model.py:build", "--input-size", "32", folder, "-o", out]
    )
    assert result.exit_code == 0, result.stderr
    assert re.fullmatch(
        r"f\\xf6to/cat\.png: class (\d) \(\d\.\d\d\) → 1 file in "
        r"\\xff-out/tiny_model/cat/cam/gradcam/features/\1\.png\n",
        result.stdout,
    ), result.stdout
    manifest = json.loads(Path(out, "manifest.json").read_bytes().decode("utf-8"))
    # the arguments read back as the very same paths
    request = manifest["request"]
    assert request["run"]["inputs"] == [folder] and request["output"]["out"] == out
    assert manifest["images"][0]["input"] == "f\\xf6to/cat.png"
    assert re.fullmatch(
        r"1 done, 0 failed, 0 skipped in .*; outputs in \\xff-out; "
        r"manifest \\xff-out/manifest\.json\n",
        result.stderr,
    ), result.stderr
