"""Byte sizes as people write them (``2GB``, ``512MiB``, ``1.5G``) and as featviz prints them."""

from __future__ import annotations

import re

from featviz.errors import UsageError

_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}
_BINARY = {"ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?)?b?\s*$", re.IGNORECASE)


def parse_bytes(text: str, *, what: str) -> int:
    """``text`` in bytes: decimal units (kB, MB, GB, TB), binary ones (KiB … TiB), or a plain
    number of bytes. ``what`` names the setting in the error."""
    match = _SIZE.match(text)
    if not match:
        raise UsageError(
            f"{what}: '{text}' is not a size", hint="write it like 2GB, 512MB or 1.5GiB"
        )
    unit = (match.group(2) or "").lower()
    return int(float(match.group(1)) * (_BINARY.get(unit) or _UNITS[unit]))


def format_bytes(count: float) -> str:
    """``count`` bytes in the largest decimal unit that keeps a number ≥ 1 (``1.2 GB``)."""
    for unit, size in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return f"{int(count)} B"
