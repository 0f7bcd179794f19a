"""The headings under which ``--help`` groups the shared options, and how a group is declared.

Defaults that are not a plain value are spelled out with ``show_default`` text, so that every
default reads the same way, ``[default: …]`` after the help; cli/help.py lays the help out.
"""

from __future__ import annotations

from typing import Any

import typer

MODEL_PANEL = "Model"
INPUT_PANEL = "Input"
OUTPUT_PANEL = "Output"
RAY_PANEL = "Ray cluster"

# A group of options: name → (annotation, default); the order is the order in --help.
Declared = dict[str, tuple[Any, Any]]


def option(*names: str, panel: str, **kwargs: Any) -> Any:
    """A ``typer.Option`` shown under the heading ``panel``."""
    return typer.Option(*names, rich_help_panel=panel, **kwargs)
