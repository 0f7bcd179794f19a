"""Where outputs go on disk, atomic writes, encoders, and the per-image records.

Layout under ``--out`` (``<rel>`` mirrors the input's sub-folders, see images.ImageSource):

    <rel>/maps/<layer>.png                      featviz maps (+ <layer>.npy with --save-raw)
    <rel>/cam/<method>/<layer>/<class>.png      featviz cam overlay (<class> = index_label)
    <rel>/cam/<method>/<layer>/<class>.heatmap.png / .npz
    <rel>/compare.png, <rel>/sanity.png         featviz compare, featviz sanity (one per image)
    score.csv, score.png, sanity.csv, sanity.png    the latest score / sanity run's table and plot
    <rel>/records/<command>-<fingerprint>.json  what the image produced with those settings
                                                (--skip-existing, the gallery)
    filters/<model>/<layer>.png                 featviz filters
    runs/<time>-<command>-<pid>.json            one manifest per run, never overwritten
    manifest.json                               the latest run's manifest, listing every run
    index.html, gallery/                        the gallery (sinks/gallery.py)

Every file is written under a temporary name in its own folder and renamed into place, so an
interrupted run or a full disk never leaves a truncated PNG, NPZ or manifest behind.
"""

from __future__ import annotations

import errno
import io
import json
import os
import re
import struct
import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any

from featviz.errors import RunError, UsageError

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


def safe_name(text: str) -> str:
    """A file-name-safe form of a layer or class name: keeps letters, digits, '.', '+', '-', '_'."""
    cleaned = re.sub(r"[^\w.+-]+", "_", text.strip()).strip("_")
    return cleaned or "_"


def class_slug(index: int, label: str | None) -> str:
    return f"{index}_{safe_name(label)}" if label else str(index)


@dataclass(frozen=True)
class CamFiles:
    overlay: Path
    heatmap: Path
    raw: Path


class OutputLayout:
    """Where each output of a run goes."""

    def __init__(self, root: Path, image_format: str = "png") -> None:
        self.root = root
        self.picture = image_format  # the suffix of overlays, grids, panels and kernels

    def prepare(self) -> None:
        """Create the output folder, or explain why it cannot be used (before any work)."""
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

    def image_dir(self, relative: PurePath) -> Path:
        return self.root / relative

    def maps_grid(self, relative: PurePath, layer: str) -> Path:
        return self.image_dir(relative) / "maps" / f"{safe_name(layer)}.{self.picture}"

    def maps_raw(self, relative: PurePath, layer: str) -> Path:
        return self.maps_grid(relative, layer).with_suffix(".npy")

    def path_of(self, artifact: Artifact, relative: PurePath | None, model: str) -> Path:
        """Where ``artifact`` of the image at ``relative`` (None: of the model) is written."""
        if artifact.command == "filters":
            suffix = "-all-inputs" if artifact.kind == "kernels-all-inputs" else ""
            return self.filters_picture(model, artifact.layer, suffix)
        if artifact.kind == "panel":  # compare.png, sanity.png beside the image's outputs
            return self.image_dir(relative) / f"{artifact.command}.{self.picture}"
        if artifact.kind in ("table", "curves"):  # score.csv, score.png: the run's own
            return self.root / f"{artifact.command}.{'csv' if artifact.kind == 'table' else 'png'}"
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
        return self.image_dir(relative) / "records" / f"{command}-{fingerprint}.json"

    def filters_picture(self, model: str, layer: str, suffix: str = "") -> Path:
        name = f"{safe_name(layer)}{suffix}.{self.picture}"
        return self.root / "filters" / safe_name(model) / name

    def manifest(self) -> Path:
        return self.root / "manifest.json"

    def run_manifest(
        self, started: float, command: str, shard: dict[str, int] | None = None
    ) -> Path:
        # Milliseconds: runs started in the same second still sort in the order they began.
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(started)) + f"{started % 1:.3f}"[1:]
        stamp = f"{stamp}Z"
        # Shards on other machines may share a pid; never their shard.
        part = f"-shard-{shard['index']}-of-{shard['count']}" if shard else ""
        return self.root / "runs" / f"{stamp}-{command}-{os.getpid()}{part}.json"


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(temporary, "wb") as handle:
            handle.write(data)
        os.replace(temporary, path)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        reason = "the disk is full" if exc.errno == errno.ENOSPC else exc.strerror or str(exc)
        raise RunError(f"cannot write '{path}': {reason}") from exc
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


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
