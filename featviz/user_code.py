"""A user's own code named on the command line, ``path/to/file.py:name`` or
``package.module:name``: imported as featviz's options name it (``--model``, ``--target-fn``),
with one wording of what went wrong."""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from typing import Any

from featviz.errors import RunError, UsageError


def import_location(location: str, option: str) -> Any:
    """The module at ``location`` (a file, run afresh every call, or an importable name);
    ``option`` ("--model file.py:build") starts every error message."""
    if location.endswith(".py") or "/" in location or "\\" in location:
        path = Path(location)
        if not path.is_file():
            raise UsageError(f"{option}: file '{location}' does not exist")
        module_spec = importlib.util.spec_from_file_location(f"featviz_user_{path.stem}", path)
        module = importlib.util.module_from_spec(module_spec)
        try:
            module_spec.loader.exec_module(module)
        except Exception as exc:
            raise RunError(
                f"{option}: importing '{location}' failed: {type(exc).__name__}: {exc}"
            ) from exc
        return module
    try:
        return importlib.import_module(location)
    except ImportError as exc:
        raise UsageError(f"{option}: cannot import '{location}' ({exc})") from exc


def import_callable(spec: str, option: str) -> tuple[Any, str, str]:
    """(the callable, its module, its name) named by ``spec`` = ``location:name``."""
    location, _, name = spec.rpartition(":")
    if not location or not name:
        raise UsageError(f"{option}: expected FILE.py:NAME or package.module:NAME")
    module = import_location(location, option)
    found = getattr(module, name, None)
    if found is None or not callable(found):
        raise UsageError(f"{option}: '{location}' has no callable '{name}'")
    return found, module, name
