"""Where outputs go on disk, atomic writes, encoders, and the per-image records.

Layout under ``--out``. Each model (with its weights and settings) writes into a folder of its
own, ``<model>`` (featviz.sinks.variants: ``resnet50``, ``resnet50@none``, ``mynet``, and ``-2``,
``-3``… when another run with other settings got the name first); ``<image>`` is the image's
folder mirroring the inputs, named after its file (featviz.inputs.discover: ``a/cat``):

    <model>/<image>/maps/<layer>.png                 featviz maps (+ <layer>.npy with --save-raw)
    <model>/<image>/cam/<method>/<layer>/<class>.png featviz cam overlay (<class> = index_label)
    <model>/<image>/cam/<method>/<layer>/<class>.heatmap.png / .npz
    <model>/<image>/compare.png, sanity.png          featviz compare, featviz sanity
    filters/<model>/<layer>.png                      featviz filters
    dream/<model>/<layer>/c0037.png, n0037.png       featviz dream: a channel, a neuron
    dream/<model>/classes/<class>.png                featviz dream: a class (-2, -3…: --diversity)
    top/<model>/<layer>.json, <layer>.png            featviz top: the ranking, the overview
    top/<model>/<layer>/<channel>.png                featviz top: a channel's examples
    top/<model>/<layer>.shard-K-of-N.json            featviz top --shard: a partial ranking
    records/<model>/<image>/<command>-<fingerprint>.json
                                                     what the image produced with those settings
                                                     (--skip-existing, the gallery)
    models/<model>.json, models/<model>.<command>.json
                                                     which model and settings own each folder
    runs/<run>.json                                  one manifest per run, never overwritten
    runs/<run>/score.csv, score.png, sanity.csv…     what a run made of all its images
    runs/<run>/dream.png                             featviz dream: the run's images, labelled
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
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import TYPE_CHECKING

from featviz.errors import RunError, UsageError
from featviz.inputs.discover import OUTPUT_MARKER

if TYPE_CHECKING:
    from featviz.sinks.artifacts import Artifact
from featviz.explainer.names import safe_name


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
        "dream",
        "top",
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
        if artifact.kind == "dream":
            stem = f"{artifact.target}.{self.picture}"
            return self.root / "dream" / self.variant / artifact.layer / stem
        if artifact.kind == "dream-grid":
            return self.root / "runs" / self.run / f"dream.{self.picture}"
        if artifact.command == "top":
            return self.top_picture(artifact)
        if artifact.kind == "panel":  # compare.png, sanity.png beside the image's outputs
            path = self.image_dir(relative) / f"{artifact.command}.{self.picture}"
        elif artifact.kind in ("table", "curves"):  # score.csv, score.png: the run's own
            suffix = "csv" if artifact.kind == "table" else "png"
            return self.root / "runs" / self.run / f"{artifact.command}.{suffix}"
        elif artifact.command == "maps":
            if artifact.kind == "raw":
                return self.maps_raw(relative, artifact.layer)
            path = self.maps_grid(relative, artifact.layer)
        else:
            files = self.cam_files(relative, artifact.method, artifact.layer, artifact.target)
            path = {"overlay": files.overlay, "heatmap": files.heatmap, "raw": files.raw}[
                artifact.kind
            ]
        return path.with_suffix(".webp") if artifact.animated else path

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

    def top_folder(self) -> Path:
        return self.root / "top" / self.variant

    def top_picture(self, artifact: Artifact) -> Path:
        """A ``featviz top`` output: a layer's ranking (a shard's partial one: ``target`` is
        ``shard-K-of-N``), its overview, or one channel's examples (``target``: the channel)."""
        stem = self.top_folder() / safe_name(artifact.layer)
        if artifact.kind == "ranking":
            return stem.with_name(f"{stem.name}.json")
        if artifact.kind == "partial":
            return stem.with_name(f"{stem.name}.{artifact.target}.json")
        if artifact.kind == "overview":
            return stem.with_name(f"{stem.name}.{self.picture}")
        return stem / f"{artifact.target}.{self.picture}"

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
        descriptor = _created(temporary)
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


def _created(temporary: Path) -> int:
    """``temporary`` created exclusively, its folders first where missing: tried first without,
    since a run writes thousands of files into a few folders."""
    try:
        return os.open(temporary, _TEMPORARY_FLAGS, 0o666)
    except FileNotFoundError:
        temporary.parent.mkdir(parents=True, exist_ok=True)
        return os.open(temporary, _TEMPORARY_FLAGS, 0o666)


def _write_failure(path: Path, exc: OSError) -> RunError:
    reason = "the disk is full" if exc.errno == errno.ENOSPC else exc.strerror or str(exc)
    return RunError(f"cannot write '{path}': {reason}")
