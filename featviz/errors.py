"""Errors the core raises for a person to read; cli/terminal.py maps them to exit codes.

The core never prints and never exits: it raises one of these with a message that says what went
wrong and, where there is a likely fix, a hint that says what to do.
"""

from __future__ import annotations

from collections.abc import Callable


class FeatvizError(Exception):
    """Base class. ``exit_code`` is what the CLI exits with when this ends the run."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class UsageError(FeatvizError):
    """The command line asks for something that does not exist or cannot work (exit 2)."""

    exit_code = 2


class RunError(FeatvizError):
    """The run itself cannot go on: weights missing, disk full, output not writable (exit 1)."""


class InputError(FeatvizError):
    """One input file cannot be used; the run goes on with the others and exits 1 at the end."""


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message, or its type name when it has none
    (``RuntimeError()`` has an empty message, and ``"".splitlines()`` is empty)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def closest(
    wrong: str,
    choices: list[str],
    *,
    count: int = 3,
    shown: Callable[[str], str] = str,
) -> str | None:
    """``closest: 'a', 'b'`` — the hint naming the choices nearest to ``wrong``, or None.

    One cutoff and one wording for every "did you mean" in featviz (models, layers, methods,
    classes, colormaps, input paths); case is ignored when comparing. ``shown`` turns a choice
    into what the hint prints (a file name into its path).
    """
    import difflib

    lowered = {choice.lower(): choice for choice in choices}
    matches = difflib.get_close_matches(wrong.lower(), list(lowered), n=count, cutoff=0.6)
    if not matches:
        return None
    return "closest: " + ", ".join(f"'{shown(lowered[match])}'" for match in matches)
