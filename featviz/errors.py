"""Errors the core raises for a person to read; cli.py maps them to exit codes.

The core never prints and never exits: it raises one of these with a message that says what went
wrong and, where there is a likely fix, a hint that says what to do.
"""

from __future__ import annotations


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
