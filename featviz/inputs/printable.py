"""Paths as text that prints on one line: what messages, terminals and JSON files show."""

from __future__ import annotations

import itertools
import os

# Characters that would break a one-line message or fool a terminal: C0/C1 controls, DEL, line
# and paragraph separators, and bidirectional overrides ("Trojan source" file names).
_UNPRINTABLE = {
    code: (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
    for code in itertools.chain(
        range(0x20),
        range(0x7F, 0xA0),
        (0x200E, 0x200F, 0x2028, 0x2029),
        range(0x202A, 0x202F),
        range(0x2066, 0x206A),
    )
}


def printable(path: str | os.PathLike[str]) -> str:
    """``path`` as one printable line of valid UTF-8, for messages and JSON.

    Bytes of a Linux file name that are not UTF-8 (held by Python as surrogate escapes, which
    cannot be printed or JSON-encoded) become ``\\xe9``; control characters become ``\\x0a``.
    """
    try:
        text = os.fsencode(path).decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a lone surrogate that is not an escaped byte
        text = os.fspath(path).encode("utf-8", "backslashreplace").decode("utf-8")
    return text.translate(_UNPRINTABLE)
