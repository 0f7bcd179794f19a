"""How ``featviz … --help`` reads: click's plain layout, options grouped by panel.

Typer's rich help draws boxes that leave an 18-character description column at 80 columns, and
reads ``featviz[tensorboard]`` as a markup tag and drops it. The plain formatter keeps every
character; this command class adds back the grouping (Model, Input, Output) and names arguments
the way click does (``INPUTS...``, ``[FILTER]``), where Typer would print ``{inputs}...`` and a
``<list[str]>`` type.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Iterable
from enum import Enum
from typing import Any

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup

from featviz.cam.registry import ALL, ALL_SUMMARY, method_info, method_names

# The click that this Typer runs on: the click package, or (recent Typer) its own copy of it.
_BaseContext = TyperCommand.context_class
HelpFormatter = _BaseContext.formatter_class

_ARGUMENTS = "Arguments"
_OPTIONS = "Options"
# Terms up to this wide share a line with their description; longer ones (--x / --no-x pairs)
# take a line of their own, so that the description column stays wide.
_TERM_COLUMN = 26
# Prose wider than this is hard to read, whatever the terminal's width.
MAX_HELP_WIDTH = 100
# A command's summary in its group's list: its first sentence, wrapped rather than cut.
_WHOLE_SENTENCE = 200


def choices(enum: type[Enum]) -> str:
    """``[a|b|c]``: the metavar of an option taking one of an enum's values."""
    return "[" + "|".join(member.value for member in enum) + "]"


class _Formatter(HelpFormatter):
    """click's layout, with lines broken at spaces only: click would also break after any
    hyphen, inside option names (``--no-`` / ``save-raw``) and words (``element-`` / ``wise``)."""

    def write_text(self, text: str) -> None:
        indent = " " * self.current_indent
        self.write("\n".join(_wrap(text, max(self.width, self.current_indent + 20), indent)))
        self.write("\n")

    def write_dl(
        self, rows: Iterable[tuple[str, str]], col_max: int = 30, col_spacing: int = 2
    ) -> None:
        rows = list(rows)
        term_width = min(max(len(term) for term, _ in rows), col_max)
        column = self.current_indent + term_width + col_spacing
        for term, text in rows:
            lines = _wrap(text, max(self.width, column + 20), " " * column) or [""]
            if len(term) <= term_width:  # the description starts on the term's line
                start = " " * self.current_indent + term.ljust(term_width + col_spacing)
                lines[0] = start + lines[0].lstrip()
            else:
                lines.insert(0, " " * self.current_indent + term)
            self.write("\n".join(line.rstrip() for line in lines) + "\n")


class _Context(_BaseContext):
    formatter_class = _Formatter


class HelpCommand(TyperCommand):
    """A featviz command: Typer's parsing, click's plain help."""

    context_class = _Context

    def collect_usage_pieces(self, ctx: _BaseContext) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if isinstance(param, TyperArgument):
                pieces.append(_argument_term(param, in_usage=True))
        return pieces

    def format_options(self, ctx: _BaseContext, formatter: HelpFormatter) -> None:
        sections: dict[str, list[tuple[str, str]]] = {_ARGUMENTS: [], _OPTIONS: []}
        for param in self.get_params(ctx):
            if isinstance(param, TyperArgument):
                sections[_ARGUMENTS].append((_argument_term(param), param.help or ""))
                continue
            record = _off_flag_record(param) or param.get_help_record(ctx)
            if record is not None:
                panel = getattr(param, "rich_help_panel", None) or _OPTIONS
                sections.setdefault(panel, []).append(record)
        # One description column for every section: each section's terms padded to the same width
        terms = [term for rows in sections.values() for term, _ in rows]
        width = min(max(map(len, terms)), _TERM_COLUMN)
        for title, rows in sections.items():
            if rows:
                with formatter.section(title):
                    formatter.write_dl([(term.ljust(width), text) for term, text in rows], width)


PIXEL_LEVEL_NOTE = (
    "Pixel-level methods map the input's pixels (layer 'input', whatever -l says). Signed "
    "ones are drawn, scored and checked as their absolute value, scaled to [0, 1] like every "
    "map; --save-raw's layer_cam keeps the signed values."
)


class MethodsHelpCommand(HelpCommand):
    """A command taking --method: its help ends with every method, one summary each."""

    def format_epilog(self, ctx: _BaseContext, formatter: HelpFormatter) -> None:
        with formatter.section("Methods (--method)"):
            rows = [(name, method_info(name).summary) for name in method_names()]
            rows.append((ALL, ALL_SUMMARY))
            formatter.write_dl(rows)
            formatter.write_paragraph()
            formatter.write_text(PIXEL_LEVEL_NOTE)


class HelpGroup(TyperGroup):
    """featviz and featviz worker: each command's whole first sentence in the list, wrapped
    (Typer cuts it to the terminal's width with "..."); the help on stderr, exit 2, when no
    command is given."""

    context_class = _Context

    def parse_args(self, ctx: _BaseContext, args: list[str]) -> list[str]:
        # Typer would raise a usage error whose message is the whole help, which featviz's
        # one-line error funnel would squash into a single "Error:" line.
        if not args and self.no_args_is_help and not ctx.resilient_parsing:
            typer.echo(ctx.get_help(), err=True)
            raise typer.Exit(2)
        return super().parse_args(ctx, args)

    def format_commands(self, ctx: _BaseContext, formatter: HelpFormatter) -> None:
        rows = []
        for name in self.list_commands(ctx):
            command = self.get_command(ctx, name)
            if command is not None and not command.hidden:
                rows.append((name, command.get_short_help_str(limit=_WHOLE_SENTENCE)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def _off_flag_record(param: Any) -> tuple[str, str] | None:
    """``--fuse``, not ``--fuse / --no-fuse  … [default: no-fuse]``, for a flag that is off
    unless given: like ``--json``. ``--no-fuse`` is still accepted; ``--no-gallery`` (a flag
    that is on) is still shown."""
    if not getattr(param, "is_bool_flag", False) or param.default or param.hidden:
        return None
    short_first = sorted(param.opts, key=lambda name: name.startswith("--"))
    return ", ".join(short_first), param.help or ""


def _argument_term(argument: TyperArgument, *, in_usage: bool = False) -> str:
    name = argument.metavar or argument.name.upper()
    if argument.nargs != 1:
        name += "..."
    return f"[{name}]" if in_usage and not argument.required else name


def _wrap(text: str, width: int, indent: str) -> list[str]:
    """``text``'s paragraphs (split at blank lines) filled to ``width``, a blank line between."""
    lines: list[str] = []
    for paragraph in re.split(r"\n\s*\n", text.strip()):
        if lines:
            lines.append("")
        lines += textwrap.wrap(
            " ".join(paragraph.split()),
            width,
            initial_indent=indent,
            subsequent_indent=indent,
            break_on_hyphens=False,
            break_long_words=False,
        )
    return lines
