"""Where outputs go on disk, atomic writes, encoders, and the per-image records.

Layout under ``--out``. Each model (with its weights and settings) writes into a folder of its
own, ``<model>`` (featviz.variants: ``resnet50``, ``resnet50@none``, ``mynet``, and ``-2``,
``-3``… when another run with other settings got the name first); ``<image>`` is the image's
folder mirroring the inputs, named after its file (featviz.images: ``a/cat``):

    <model>/<image>/maps/<layer>.png                 featviz maps (+ <layer>.npy with --save-raw)
    <model>/<image>/cam/<method>/<layer>/<class>.png featviz cam overlay (<class> = index_label)
    <model>/<image>/cam/<method>/<layer>/<class>.heatmap.png / .npz
    <model>/<image>/compare.png, sanity.png          featviz compare, featviz sanity
    filters/<model>/<layer>.png                      featviz filters
    records/<model>/<image>/<command>-<fingerprint>.json
                                                     what the image produced with those settings
                                                     (--skip-existing, the gallery)
    models/<model>.json, models/<model>.<command>.json
                                                     which model and settings own each folder
    runs/<run>.json                                  one manifest per run, never overwritten
    runs/<run>/score.csv, score.png, sanity.csv…     what a run made of all its images
    manifest.json                                    the latest run's manifest, listing every run
    index.html, gallery/                             the gallery (sinks/gallery.py)
    .featviz-output                                  marks the folder: never read as input

Input names never meet featviz's own: they live below a model's folder, and an image's folder
never holds another image's. Every file is written under a temporary name in
its own folder, created exclusively (a link planted there is never followed), and renamed over
the final name, so an interrupted run or a full disk never leaves a truncated PNG, NPZ or
manifest behind.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import re
import secrets
import struct
import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any

from featviz.errors import RunError, UsageError
from featviz.images import OUTPUT_MARKER

if TYPE_CHECKING:
    import numpy as np

    from featviz.artifacts import Artifact

PNG_COMPRESS_LEVEL = 1  # zlib level 1 writes ~3x faster than level 6, files ~15% larger
ISAL_COMPRESS_LEVEL = 2  # ISA-L level 2: the files of zlib level 1, about 4x faster


def deflate_zlib(raw: bytes) -> bytes:
    return zlib.compress(raw, PNG_COMPRESS_LEVEL)


def _best_deflate() -> Callable[[bytes], bytes]:
    """ISA-L's deflate (the ``isal`` package) when it imports, zlib's otherwise: both write a
    zlib stream that every PNG reader decodes to the same pixels."""
    try:
        from isal import isal_zlib
    except ImportError:
        return deflate_zlib
    return lambda raw: isal_zlib.compress(raw, ISAL_COMPRESS_LEVEL)


deflate = _best_deflate()


# File systems take 255 bytes a name; a name leaves room for its suffixes (".heatmap.png").
MAX_NAME_BYTES = 200


def safe_name(text: str) -> str:
    """A file-name-safe form of a layer or class name: keeps letters, digits, '.', '+', '-',
    '_'. A name longer than MAX_NAME_BYTES (a 235-character label) is cut and ends with a hash
    of the whole, so that two long names never become one."""
    cleaned = re.sub(r"[^\w.+-]+", "_", text.strip()).strip("_") or "_"
    if len(cleaned.encode("utf-8")) <= MAX_NAME_BYTES:
        return cleaned
    digest = hashlib.sha256(cleaned.encode("utf-8")).hexdigest()[:10]
    cut = cleaned.encode("utf-8")[: MAX_NAME_BYTES - 11].decode("utf-8", "ignore")
    return f"{cut}-{digest}"


def class_slug(index: int, label: str | None) -> str:
    return safe_name(f"{index}_{label}") if label else str(index)


@dataclass(frozen=True)
class CamFiles:
    overlay: Path
    heatmap: Path
    raw: Path


# featviz's own names at the top of an output folder: no model folder takes one.
RESERVED = frozenset(
    {
        "index.html",
        "manifest.json",
        "runs",
        "gallery",
        "records",
        "models",
        "filters",
        OUTPUT_MARKER,
    }
)
RECORDS = "records"


class OutputLayout:
    """Where each output of a run goes: ``variant`` (the model's folder) and ``run`` (this
    run's name under runs/) are set when the run opens its output folder."""

    def __init__(self, root: Path, image_format: str = "png") -> None:
        self.root = root
        self.picture = image_format  # the suffix of overlays, grids, panels and kernels
        self.variant = "_"
        self.run = "_"

    def prepare(self) -> None:
        """Create the output folder and its marker, or explain why it cannot be used (before
        any work)."""
        if self.root.exists() and not self.root.is_dir():
            raise UsageError(
                f"output path '{self.root}' exists and is not a folder",
                hint="pass a folder with --out",
            )
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunError(
                f"cannot create output folder '{self.root}': {exc.strerror}",
                hint="choose another folder with --out",
            ) from exc
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise RunError(
                f"output folder '{self.root}' is not writable",
                hint="choose another folder with --out",
            )
        marker = self.root / OUTPUT_MARKER
        if not marker.is_file():
            write_atomic(marker, b"featviz outputs: featviz never reads this folder as input\n")

    def image_dir(self, relative: PurePath) -> Path:
        return self.root / self.variant / relative

    def maps_grid(self, relative: PurePath, layer: str) -> Path:
        return self.image_dir(relative) / "maps" / f"{safe_name(layer)}.{self.picture}"

    def maps_raw(self, relative: PurePath, layer: str) -> Path:
        return self.maps_grid(relative, layer).with_suffix(".npy")

    def path_of(self, artifact: Artifact, relative: PurePath | None) -> Path:
        """Where ``artifact`` of the image at ``relative`` (None: of the model or the run) is
        written."""
        if artifact.command == "filters":
            suffix = "-all-inputs" if artifact.kind == "kernels-all-inputs" else ""
            return self.filters_picture(artifact.layer, suffix)
        if artifact.kind == "panel":  # compare.png, sanity.png beside the image's outputs
            return self.image_dir(relative) / f"{artifact.command}.{self.picture}"
        if artifact.kind in ("table", "curves"):  # score.csv, score.png: the run's own
            suffix = "csv" if artifact.kind == "table" else "png"
            return self.root / "runs" / self.run / f"{artifact.command}.{suffix}"
        if artifact.command == "maps":
            if artifact.kind == "raw":
                return self.maps_raw(relative, artifact.layer)
            return self.maps_grid(relative, artifact.layer)
        files = self.cam_files(relative, artifact.method, artifact.layer, artifact.target)
        return {"overlay": files.overlay, "heatmap": files.heatmap, "raw": files.raw}[artifact.kind]

    def cam_files(self, relative: PurePath, method: str, layer: str, target: str) -> CamFiles:
        """The overlay, bare heatmap and raw arrays of one map (``target``: a class slug)."""
        stem = self.image_dir(relative) / "cam" / safe_name(method) / safe_name(layer) / target
        return CamFiles(
            overlay=Path(f"{stem}.{self.picture}"),
            heatmap=Path(f"{stem}.heatmap.png"),
            raw=Path(f"{stem}.npz"),
        )

    def record(self, relative: PurePath, command: str, fingerprint: str) -> Path:
        return self.root / RECORDS / self.variant / relative / f"{command}-{fingerprint}.json"

    def filters_picture(self, layer: str, suffix: str = "") -> Path:
        name = f"{safe_name(layer)}{suffix}.{self.picture}"
        return self.root / "filters" / self.variant / name

    def manifest(self) -> Path:
        return self.root / "manifest.json"

    def run_manifest(self) -> Path:
        return self.root / "runs" / f"{self.run}.json"


def run_name(started: float, command: str, shard: dict[str, int] | None = None) -> str:
    """``<time>-<command>-<pid>[-shard-K-of-N]``: unique among runs sharing a folder."""
    # Milliseconds: runs started in the same second still sort in the order they began.
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(started)) + f"{started % 1:.3f}"[1:]
    # Shards on other machines may share a pid; never their shard.
    part = f"-shard-{shard['index']}-of-{shard['count']}" if shard else ""
    return f"{stamp}Z-{command}-{os.getpid()}{part}"


# Created only where nothing is (O_EXCL), never through a symbolic link (O_NOFOLLOW).
_TEMPORARY_FLAGS = (
    os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
)


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename.

    The temporary name is new each time (pid and random bits) and created exclusively: a file
    or link planted under a guessable name in a shared folder is never written through. The
    rename replaces the final name itself, a link there included, never what a link points to.
    """
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.partial")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(temporary, _TEMPORARY_FLAGS, 0o666)
    except OSError as exc:
        raise _write_failure(path, exc) from exc
    try:
        with open(descriptor, "wb") as handle:
            handle.write(data)
        os.replace(temporary, path)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise _write_failure(path, exc) from exc
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _write_failure(path: Path, exc: OSError) -> RunError:
    reason = "the disk is full" if exc.errno == errno.ENOSPC else exc.strerror or str(exc)
    return RunError(f"cannot write '{path}': {reason}")


def encode_png(image: np.ndarray) -> bytes:
    """(H, W, 3) RGB or (H, W) grey uint8 → PNG bytes.

    A small writer instead of Pillow's: every row gets PNG's "Up" filter (the difference to the
    row above, computed for the whole image in one numpy operation) and one zlib stream from
    ``deflate`` (ISA-L when installed). PNG encoding is the largest cost after the model in a
    run (an overlay of a 640×480 photo: 24 ms with Pillow, 13 ms here through zlib, about 4 ms
    through ISA-L, same size), and both release the GIL, so the writer threads encode in
    parallel.
    """
    import numpy as np

    if image.dtype != np.uint8 or image.ndim not in (2, 3) or image.shape[2:] not in ((), (3,)):
        raise ValueError(f"expected (H, W) or (H, W, 3) uint8, got {image.dtype} {image.shape}")
    height, width = image.shape[:2]
    rows = np.ascontiguousarray(image).reshape(height, -1)
    filtered = np.empty((height, rows.shape[1] + 1), dtype=np.uint8)
    filtered[:, 0] = 2  # filter type "Up"
    filtered[0, 1:] = rows[0]  # the row above the first counts as zeros
    np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])  # uint8 wraps modulo 256, as PNG does
    header = struct.pack(">IIBBBBB", width, height, 8, 2 if image.ndim == 3 else 0, 0, 0, 0)
    data = deflate(memoryview(filtered).cast("B"))  # no bytes copy of the whole image
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", data)
        + _chunk(b"IEND", b"")
    )


def _chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(payload, zlib.crc32(kind))
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def encode_npy(array: np.ndarray) -> bytes:
    import numpy as np

    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def encode_npz(arrays: Mapping[str, np.ndarray]) -> bytes:
    import numpy as np

    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def encode_json(data: Any) -> bytes:
    """UTF-8 JSON; a path's bytes that are not UTF-8 (surrogate escapes) become \\udcXX escapes,
    which read back as the same path, rather than bytes no JSON reader accepts."""
    text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    return text.encode("utf-8", "backslashreplace")


def file_stamps(paths: list[str]) -> dict[str, list[int]]:
    """(size, mtime in ns) of each written file: what a record remembers of its outputs."""
    stamps = {}
    for name in paths:
        info = os.stat(os.fsencode(name))
        stamps[name] = [info.st_size, info.st_mtime_ns]
    return stamps


def finished_record(path: Path, fingerprint: str) -> dict[str, Any] | None:
    """The record of an earlier run of the same settings whose outputs are all still there as
    it wrote them, or None. A file another run has since rewritten (same name, other options)
    has another size or time: its image is done again."""
    try:
        record = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    if record.get("fingerprint") != fingerprint or record.get("error"):
        return None
    stamps = record.get("stamps", {})
    try:
        current = file_stamps(record.get("outputs", []))
    except OSError:
        return None
    return record if current == stamps else None
