"""What a record remembers of the files it lists, and whether an earlier run's record still
holds (``--skip-existing``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


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
