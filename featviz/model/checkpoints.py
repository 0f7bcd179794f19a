"""Reading a user's state-dict file safely and matching it against a model."""

from __future__ import annotations

import io
import pickle
import re
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

from featviz.errors import RunError, UsageError

if TYPE_CHECKING:
    import torch
    from torch import nn

_NESTING_KEYS = ("state_dict", "model", "model_state_dict", "net")
_SHOWN = 5
_SAVE_HINT = "save the weights with torch.save(model.state_dict(), 'weights.pt')"
# Enough to tell text from binary, and far more than torch's pre-1.6 header (its magic number
# pickled, 30 bytes at most).
_HEAD_BYTES = 512
# What text files are made of (the heuristic of file(1)): printable bytes, whitespace, ESC, BEL,
# backspace, and any byte of a UTF-8 or Latin-1 character.
_TEXT_BYTES = bytes({7, 8, 9, 10, 12, 13, 27} | set(range(0x20, 0x100)) - {0x7F})


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Load ``path`` with ``weights_only=True`` (no code runs) and unwrap common nestings.

    Accepts a bare state dict or one nested under ``state_dict``/``model``/…; strips the
    ``module.`` prefix that DataParallel and DistributedDataParallel add.
    """
    import torch

    if not path.is_file():
        raise RunError(f"checkpoint '{path}' does not exist or is not a file")
    try:
        with path.open("rb") as file:
            head = file.read(_HEAD_BYTES)
    except OSError as exc:
        raise RunError(f"checkpoint '{path}' cannot be read ({exc.strerror})") from exc
    _check_torch_format(path, head)
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        # Only a whole pickle names a global; a damaged one trips the weights-only unpickler
        # over whatever its stack machine meets (KeyError, IndexError, RuntimeError…).
        unsafe = _unsafe_global(exc)
        if unsafe is None:
            raise _cut_short(path) from exc
        raise RunError(
            f"checkpoint '{path}' needs arbitrary Python code to load, and featviz refuses to run "
            f"code from a weights file ({unsafe})",
            hint="save the weights only: torch.save(model.state_dict(), 'weights.pt')",
        ) from exc
    state = _unwrap(loaded)
    if state is None:
        raise RunError(
            f"checkpoint '{path}' holds a {type(loaded).__name__}, not a state dict of tensors",
            hint=_SAVE_HINT,
        )
    return {key.removeprefix("module."): value for key, value in state.items()}


def load_into(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state`` into ``model`` by name, assigning tensors (the model may be on meta).

    Every missing or unexpected key and every shape mismatch is an error, listed (first few).
    """
    expected = model.state_dict()
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    mismatched = [
        f"{key} {list(state[key].shape)} vs model {list(expected[key].shape)}"
        for key in expected
        if key in state and tuple(state[key].shape) != tuple(expected[key].shape)
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing ({_few(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected ({_few(unexpected)})")
    if mismatched:
        problems.append(f"{len(mismatched)} with another shape ({_few(mismatched)})")
    if problems:
        raise RunError(
            f"{source} does not fit this model: keys " + "; ".join(problems),
            hint="check --model; for a fine-tuned head pass --num-classes N",
        )
    model.load_state_dict(state, assign=True)


def _unwrap(loaded: object) -> dict[str, torch.Tensor] | None:
    import torch

    if not isinstance(loaded, dict):
        return None
    if loaded and all(
        isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in loaded.items()
    ):
        return loaded
    for key in _NESTING_KEYS:
        inner = _unwrap(loaded.get(key))
        if inner is not None:
            return inner
    return None


def _few(items: list[str]) -> str:
    more = f", … {len(items) - _SHOWN} more" if len(items) > _SHOWN else ""
    return ", ".join(items[:_SHOWN]) + more


def _unsafe_global(exc: BaseException) -> str | None:
    """torch's words naming what the file wanted to call ("Unsupported global: GLOBAL print"),
    or None when the load failed for another reason."""
    if not isinstance(exc, pickle.UnpicklingError):
        return None
    match = re.search(r"Unsupported global: GLOBAL [^ ]+", str(exc))
    return match.group(0) if match else None


def _check_torch_format(path: Path, head: bytes) -> None:
    """Raise unless a file starting with ``head`` may be one that torch.save wrote.

    Checked before torch.load, whose weights-only unpickler reads text or random bytes as
    opcodes and fails in ways that say nothing (``KeyError: 101``) or blame unsafe code.
    """
    if head.startswith(b"PK"):
        _check_torch_archive(path)
        return
    if head and _starts_with_torch_magic(head):
        return
    if not head:
        reason = "the file is empty"
    elif not head.translate(None, _TEXT_BYTES):
        reason = "it holds text"
    else:
        reason = "its bytes are neither torch's zip archive nor its older pickle format"
    raise UsageError(f"checkpoint '{path}' is not a PyTorch checkpoint: {reason}", _SAVE_HINT)


def _check_torch_archive(path: Path) -> None:
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise _cut_short(path) from exc
    # torch.save puts everything in one folder: <name>/data.pkl, <name>/data/0, …
    if not any(re.fullmatch(r"[^/]+/data\.pkl", name) for name in names):
        raise UsageError(
            f"checkpoint '{path}' is not a PyTorch checkpoint: "
            "it is a zip archive without torch's data.pkl",
            _SAVE_HINT,
        )


def _cut_short(path: Path) -> UsageError:
    return UsageError(
        f"checkpoint '{path}' is not a PyTorch checkpoint: it is cut short or damaged",
        hint="copy or save the file again, in full",
    )


class _NoGlobals(pickle.Unpickler):
    """Unpickles plain values only: no class or function is ever looked up, so none can run."""

    def find_class(self, module: str, name: str) -> None:
        raise pickle.UnpicklingError(f"global {module}.{name} refused")


def _starts_with_torch_magic(head: bytes) -> bool:
    """Whether ``head`` opens with the magic number torch.save wrote before torch 1.6."""
    from torch.serialization import MAGIC_NUMBER

    try:
        return _NoGlobals(io.BytesIO(head)).load() == MAGIC_NUMBER
    except Exception:  # any bytes at all: whatever fails to unpickle is not the magic number
        return False
