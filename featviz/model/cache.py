"""Built models kept between calls (by the warm worker; a plain ``featviz`` process has none).

Keyed by everything a build depends on: the whole ModelRequest (spec, weights, checkpoint,
classes, labels, seed, device, size, resize), the size and modification time of every local
file it names (a checkpoint, a labels file, a ``file.py`` factory or the module of a
``pkg.mod`` one, an ``hf:`` folder's files), and the environment variables that choose the
weights caches. A changed file is a new key: the next call builds afresh.

Least recently used models leave first once the kept parameters and buffers exceed the budget;
a model larger than the whole budget is built for its call and not kept.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from featviz.model.load import LoadedModel
    from featviz.model.options import ModelRequest

# Where torchvision, timm and Hugging Face look for weights, and whether they may download.
_WEIGHTS_ENV = (
    "HOME",
    "XDG_CACHE_HOME",
    "TORCH_HOME",
    "HF_HOME",
    "HF_HUB_CACHE",
    "HUGGINGFACE_HUB_CACHE",
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_CACHE",
    "TRANSFORMERS_OFFLINE",
)


@dataclass
class Entry:
    loaded: LoadedModel
    nbytes: int
    # The random generators right after the build: a call that reuses the model continues
    # from where a fresh build would have left them.
    rng: Any
    uses: int = 0


class ModelCache:
    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.entries: OrderedDict[tuple, Entry] = OrderedDict()
        # The worker's status answers from another thread while a call loads.
        self.lock = threading.Lock()

    @property
    def nbytes(self) -> int:
        return sum(entry.nbytes for entry in self.entries.values())

    def load(
        self,
        request: ModelRequest,
        structure_only: bool,
        build: Callable[[], LoadedModel],
    ) -> LoadedModel:
        key = cache_key(request, structure_only)
        with self.lock:
            entry = self.entries.get(key)
            if entry is not None:
                self.entries.move_to_end(key)
                entry.uses += 1
        if entry is not None:
            _set_rng(entry.rng)
            return entry.loaded
        loaded = build()
        entry = Entry(loaded, _model_bytes(loaded), _get_rng(), uses=1)
        if entry.nbytes <= self.budget:
            with self.lock:
                self.entries[key] = entry
                while self.nbytes > self.budget:
                    self.entries.popitem(last=False)
        return loaded

    def describe(self) -> list[dict[str, Any]]:
        """The kept models, least recently used first (``featviz worker status``)."""
        with self.lock:
            entries = list(self.entries.values())
        return [
            {
                "model": entry.loaded.name,
                "weights": entry.loaded.weights,
                "device": str(entry.loaded.device),
                "bytes": entry.nbytes,
                "uses": entry.uses,
            }
            for entry in entries
        ]


_active: ModelCache | None = None


def install(cache: ModelCache | None) -> None:
    """Make ``load_model`` keep models in ``cache`` (None: build every time, the default)."""
    global _active
    _active = cache


def active() -> ModelCache | None:
    return _active


def cache_key(request: ModelRequest, structure_only: bool) -> tuple:
    files = tuple(_stamp(path) for path in _local_files(request))
    env = tuple(os.environ.get(name) for name in _WEIGHTS_ENV)
    return (request, structure_only, files, env)


def _local_files(request: ModelRequest) -> list[Path]:
    paths = [Path(p) for p in (request.checkpoint, request.labels) if p is not None]
    spec = request.spec
    if spec.startswith("hf:"):
        paths.append(Path(spec[3:]))
    elif ":" in spec and not spec.startswith("timm/"):
        location = spec.rsplit(":", 1)[0]
        if location.endswith(".py"):
            paths.append(Path(location))
        else:
            paths += _module_file(location)
    return paths


def _module_file(location: str) -> list[Path]:
    try:
        found = importlib.util.find_spec(location)
    except (ImportError, ValueError):
        return []
    return [Path(found.origin)] if found is not None and found.origin else []


def _stamp(path: Path, *, inside: bool = True) -> tuple:
    """A file's (path, size, mtime); a folder's files too, one level down (a Hugging Face
    model folder)."""
    try:
        resolved = path.resolve()
        info = resolved.stat()
        children = sorted(resolved.iterdir()) if inside and resolved.is_dir() else []
    except OSError:
        return (str(path), None)
    files = tuple(_stamp(child, inside=False) for child in children)
    return (str(resolved), info.st_size, info.st_mtime_ns, files)


def _model_bytes(loaded: LoadedModel) -> int:
    tensors = {id(t): t for t in (*loaded.module.parameters(), *loaded.module.buffers())}
    return sum(t.numel() * t.element_size() for t in tensors.values() if not t.is_meta)


def _get_rng() -> tuple:
    import torch

    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    return torch.get_rng_state(), cuda


def _set_rng(state: tuple) -> None:
    import torch

    cpu, cuda = state
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state_all(cuda)
