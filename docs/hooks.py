"""mkdocs hook: the tables that must never go stale are generated from the code at build time.

A page asks for one with a marker on a line of its own:

    <!-- featviz:methods -->            every registered CAM method (featviz/cam/registry.py)
    <!-- featviz:options cam -->        every option of ``featviz cam``, grouped as its --help is
    <!-- featviz:options worker status -->

The method table reads the registry that ``featviz cam --help`` and ``--method``'s choices read;
the option tables read the click command that parses the command line, through the same
HelpCommand.format_options that prints ``--help``. Neither imports torch. An unknown marker or
command stops the build (mkdocs reports the hook's error), so a typo cannot silently drop a table.
"""

from __future__ import annotations

import html
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# The pages describe this checkout's featviz, whichever featviz the environment has installed.
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MARKER = re.compile(r"^<!-- featviz:(?P<kind>[a-z]+)(?P<args>(?: [a-z-]+)*) -->$", re.MULTILINE)
_DEFAULT = re.compile(r"\s+\[(?P<extra>(?:default: |required).*)\]$", re.DOTALL)
_CODE = re.compile(r"`([^`]+)`")
METHODS_SECTION = "Methods (--method)"  # featviz.cli.help.MethodsHelpCommand's epilog


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """Replace every featviz marker of a page with its generated HTML table."""

    def table(match: re.Match[str]) -> str:
        kind, args = match["kind"], match["args"].split()
        if kind == "methods" and not args:
            return methods_table()
        if kind == "options" and args:
            return options_table(args)
        raise ValueError(f"{page.file.src_path}: unknown marker {match[0]!r}")

    return MARKER.sub(table, markdown)


def methods_table() -> str:
    """One row per registered method, in registration order: what it needs and what its map is."""
    from featviz.cam.registry import method_info, method_names

    flags = (
        ("needs_gradients", "gradients"),
        ("class_specific", "class-specific"),
        ("needs_attention", "attention"),
        ("pixel_level", "pixel-level"),
        ("signed", "signed"),
        ("random", "random"),
    )
    head = ["method", "what it computes; what it costs per batch"] + [title for _, title in flags]
    rows = []
    for name in method_names():
        info = method_info(name)
        name_cell = f'<code id="method-{_anchor(name)}">{html.escape(name)}</code>'
        cells = [name_cell, _text(info.summary)]
        cells += ["✓" if getattr(info, field) else "–" for field, _ in flags]
        rows.append(cells)
    return _html_table("featviz-methods", head, rows)


def options_table(command_path: list[str]) -> str:
    """Every option of ``featviz <command_path>``, one table per section of its ``--help``."""
    sections = _help_sections(command_path)
    parts = []
    for title, records in sections.items():
        if title == METHODS_SECTION:  # the epilog of cam, compare, score and sanity
            rows = [[f"<code>{html.escape(name)}</code>", _text(text)] for name, text in records]
            parts.append(f"<p><strong>{html.escape(title)}</strong></p>")
            parts.append(_html_table("featviz-options", ["method", "what it computes"], rows))
            continue
        rows = []
        for term, text in records:
            found = _DEFAULT.search(text)
            extra = found["extra"].removeprefix("default: ") if found else ""
            described = text[: found.start()] if found else text
            term_cell = f"<code>{html.escape(term.strip())}</code>"
            rows.append([term_cell, _text(described), _text(extra)])
        parts.append(f"<p><strong>{html.escape(title)}</strong></p>")
        first = "argument" if title == "Arguments" else "option"
        parts.append(_html_table("featviz-options", [first, "meaning", "default"], rows))
    return "\n".join(parts)


class _Collector:
    """Stands in for click's HelpFormatter: keeps the rows of each section instead of text."""

    def __init__(self) -> None:
        self.sections: dict[str, list[tuple[str, str]]] = {}
        self._current = ""

    @contextmanager
    def section(self, title: str) -> Iterator[None]:
        self._current = title
        yield

    def write_dl(self, rows: list[tuple[str, str]], *args: object) -> None:
        self.sections.setdefault(self._current, []).extend(rows)

    # A section's free text under its rows (the methods' note on pixel-level maps) is not a
    # row: the pages say it in their own words (methods.md).
    def write_paragraph(self) -> None:
        pass

    def write_text(self, text: str) -> None:
        pass


def _help_sections(command_path: list[str]) -> dict[str, list[tuple[str, str]]]:
    from featviz.cli.app import click_command

    command: Any = click_command()
    # Typer's own click classes; the context settings make the help option read "-h, --help".
    context = command.context_class(command, info_name="featviz", **command.context_settings)
    for name in command_path:
        found = command.get_command(context, name) if hasattr(command, "get_command") else None
        if found is None:
            raise ValueError(f"featviz has no command {' '.join(command_path)!r}")
        command = found
        context = command.context_class(
            command, info_name=name, parent=context, **command.context_settings
        )
    collector = _Collector()
    command.format_options(context, collector)
    command.format_epilog(context, collector)
    return collector.sections


def _html_table(css_class: str, head: list[str], rows: list[list[str]]) -> str:
    """A table styled like the theme's Markdown tables (which it styles only without a class
    of their own: the class goes on a wrapper), in a block of its own for Markdown to pass."""
    header = "".join(f"<th>{html.escape(title)}</th>" for title in head)
    body = "\n".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return (
        f'\n<div class="featviz-table {css_class}">\n<table>\n<thead><tr>{header}</tr></thead>\n'
        f"<tbody>\n{body}\n</tbody>\n</table>\n</div>\n"
    )


def _text(text: str) -> str:
    """Help text as HTML: escaped, its `code` spans as <code>."""
    return _CODE.sub(r"<code>\1</code>", html.escape(" ".join(text.split()), quote=False))


def _anchor(name: str) -> str:
    """An HTML id for a method name: ``gradcam++`` → ``gradcampp``."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower().replace("+", "p")).strip("-")
