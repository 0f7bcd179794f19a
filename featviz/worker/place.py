"""Where a worker lives and which worker a call may use. Imported by the client: no torch.

One worker per user *and* per start-time environment: the Python it runs on and the variables
that only count when a process starts (PYTHONPATH, CUDA_VISIBLE_DEVICES, thread counts, …) are
hashed into the socket's name, so a second virtual environment, or one shard per GPU with its
own CUDA_VISIBLE_DEVICES, gets its own worker instead of a wrong one. Variables read while a
command runs (TORCH_HOME, HF_HOME, COLUMNS, NO_COLOR, …) travel with every call instead.
"""

from __future__ import annotations

import hashlib
import os
import stat
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from featviz.run.cpus import usable_cpus

MODE_ENV = "FEATVIZ_WORKER"  # off · on (the default: use a running worker) · auto (start one)
IDLE_ENV = "FEATVIZ_WORKER_IDLE"  # seconds without a call before the worker leaves
MODELS_ENV = "FEATVIZ_WORKER_MODELS"  # memory the worker may keep models in
DEFAULT_IDLE_S = 900
DEFAULT_MODELS = "2GB"

# Read once, when a Python process with torch starts: a worker started under other values would
# not behave like a fresh featviz process under these.
START_TIME_ENV = (
    "PYTHONPATH",
    "PYTHONHOME",
    "PYTHONHASHSEED",
    "PYTHONUTF8",
    "CUDA_VISIBLE_DEVICES",
    "CUDA_DEVICE_ORDER",
    "PYTORCH_CUDA_ALLOC_CONF",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "LD_LIBRARY_PATH",
    "LD_PRELOAD",
    IDLE_ENV,
    MODELS_ENV,
)

# AF_UNIX paths are limited to 108 bytes on Linux.
_MAX_SOCKET_PATH = 100


@dataclass(frozen=True)
class Place:
    """The files of this environment's worker, in a folder only this user can enter."""

    folder: Path
    name: str

    @property
    def socket(self) -> Path:
        return self.folder / f"{self.name}.sock"

    @property
    def lock(self) -> Path:
        """Held (flock) by the live worker for its whole life: a socket without it is stale."""
        return self.folder / f"{self.name}.lock"

    @property
    def log(self) -> Path:
        """The worker's own stderr: what it printed outside any command, a crash's traceback."""
        return self.folder / f"{self.name}.log"


class UnsafeFolder(Exception):
    """The worker folder exists but another user could reach into it: never used."""


def worker_folder() -> Path:
    """``$XDG_RUNTIME_DIR/featviz`` (a per-user tmpfs on systemd machines), else
    ``<temp dir>/featviz-<uid>``; created 0700, refused when someone else owns it or when
    group or others may enter it (a folder planted in /tmp by another user)."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    folder = (
        Path(runtime) / "featviz"
        if runtime
        else Path(tempfile.gettempdir()) / f"featviz-{os.getuid()}"
    )
    try:
        folder.mkdir(mode=0o700, parents=bool(runtime), exist_ok=True)
        info = folder.lstat()
    except OSError as exc:
        raise UnsafeFolder(f"{folder}: {exc.strerror}") from exc
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise UnsafeFolder(f"{folder} is not a folder of this user")
    if info.st_mode & 0o077:
        raise UnsafeFolder(f"{folder} is open to other users (mode {info.st_mode & 0o777:o})")
    return folder


def environment_key() -> str:
    """What a worker must share with its callers to answer as a fresh process would."""
    parts = [sys.executable, sys.prefix, sys.getfilesystemencoding()]
    parts += [f"{name}={os.environ.get(name, '')}" for name in START_TIME_ENV]
    parts.append(",".join(map(str, sorted(usable_cpus()))))
    return hashlib.sha256("\0".join(parts).encode("utf-8", "surrogateescape")).hexdigest()[:12]


def place() -> Place:
    place_ = Place(worker_folder(), f"worker-{environment_key()}")
    if len(os.fsencode(place_.socket)) > _MAX_SOCKET_PATH:
        raise UnsafeFolder(f"{place_.socket} is too long for a Unix socket")
    return place_


def code_version() -> str:
    """featviz's version and its code as installed: after an upgrade (or an edit of an
    editable install) a worker still running the old code is restarted, never used."""
    from featviz import __version__

    package = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256(__version__.encode())
    for path in sorted(package.rglob("*.py")):
        info = path.stat()
        digest.update(f"{path.relative_to(package)}:{info.st_size}:{info.st_mtime_ns}".encode())
    return f"{__version__}+{digest.hexdigest()[:12]}"
