"""Reading a user's state-dict file safely and matching it against a model."""

from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

from featviz.errors import RunError, first_line

if TYPE_CHECKING:
    import torch
    from torch import nn

_NESTING_KEYS = ("state_dict", "model", "model_state_dict", "net")
_SHOWN = 5


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Load ``path`` with ``weights_only=True`` (no code runs) and unwrap common nestings.

    Accepts a bare state dict or one nested under ``state_dict``/``model``/…; strips the
    ``module.`` prefix that DataParallel and DistributedDataParallel add.
    """
    import torch

    if not path.is_file():
        raise RunError(f"checkpoint '{path}' does not exist or is not a file")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise RunError(
            f"checkpoint '{path}' needs arbitrary Python code to load, and featviz refuses to run "
            f"code from a weights file ({_unsafe_global(exc)})",
            hint="save the weights only: torch.save(model.state_dict(), 'weights.pt')",
        ) from exc
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as exc:
        raise RunError(
            f"checkpoint '{path}' cannot be read: it is truncated or not a PyTorch file "
            f"({first_line(exc)})"
        ) from exc
    state = _unwrap(loaded)
    if state is None:
        raise RunError(
            f"checkpoint '{path}' holds a {type(loaded).__name__}, not a state dict of tensors",
            hint="save the weights with torch.save(model.state_dict(), 'weights.pt')",
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
    if loaded and all(isinstance(value, torch.Tensor) for value in loaded.values()):
        return loaded
    for key in _NESTING_KEYS:
        inner = _unwrap(loaded.get(key))
        if inner is not None:
            return inner
    return None


def _few(items: list[str]) -> str:
    more = f", … {len(items) - _SHOWN} more" if len(items) > _SHOWN else ""
    return ", ".join(items[:_SHOWN]) + more


def _unsafe_global(exc: BaseException) -> str:
    """torch's line naming what the file wanted to call ("Unsupported global: GLOBAL print")."""
    match = re.search(r"Unsupported global: GLOBAL [^ ]+", str(exc))
    return match.group(0) if match else first_line(exc)
