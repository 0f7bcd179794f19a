"""The ``featviz`` command line: the Typer app, every command registered on it, and the ways in.

The commands live in cli/commands/ (one module per family), the options they share in
cli/options/; this module puts them in ``featviz --help``'s order and runs a command line to its
exit code. Exit codes: 0 all done · 1 some inputs failed or the run failed · 2 usage error ·
130/143 interrupted by SIGINT/SIGTERM. Nothing here imports torch at module level:
``featviz --help`` and shell loops stay cheap.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from collections.abc import Iterator
from typing import Annotated

import typer

from featviz import __version__
from featviz.cli.commands import dream, explain, features, info, worker
from featviz.cli.help import MAX_HELP_WIDTH, HelpCommand, HelpGroup, MethodsHelpCommand
from featviz.cli.terminal import one_line


class _Commands(HelpGroup):
    """Typer's command group, telling a bad option like every other error: one line, a hint.

    Click would print a usage block and a boxed, wrapped message; a log or a shell loop wants the
    same ``Error: …`` line that featviz's own usage errors give (exit 2 either way), for an
    option of ``featviz`` itself as for one of a command.
    """

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        with _told_in_one_line(ctx):
            return super().parse_args(ctx, args)

    def invoke(self, ctx: typer.Context) -> object:
        with _told_in_one_line(ctx):
            return super().invoke(ctx)


# Typer words a value its validation refused as "Value error, <reason>": the reason is the news.
_VALIDATION_PREFIX = "Value error, "


@contextlib.contextmanager
def _told_in_one_line(ctx: typer.Context) -> Iterator[None]:
    try:
        yield
    except typer.TyperException as exc:  # the base of click's UsageError, BadParameter…
        command = (getattr(exc, "ctx", None) or ctx).command_path
        message = one_line(exc.format_message()).replace(_VALIDATION_PREFIX, "", 1)
        print(f"Error: {message}", file=sys.stderr)
        print(f"Hint: see `{command} --help`", file=sys.stderr)
        raise typer.Exit(exc.exit_code) from None


_HELP_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": MAX_HELP_WIDTH}

app = typer.Typer(
    name="featviz",
    cls=_Commands,
    help="See what a vision model sees: feature-map grids and class-activation maps, for "
    "convolutional networks and vision transformers alike.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: see cli/help.py
    context_settings=_HELP_SETTINGS,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"featviz {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Show the version and exit."
        ),
    ] = False,
) -> None:
    """See what a vision model sees."""


app.command(cls=HelpCommand)(features.maps)
app.command(cls=MethodsHelpCommand)(explain.cam)
app.command(cls=MethodsHelpCommand)(explain.compare)
app.command(cls=MethodsHelpCommand)(explain.score)
app.command(cls=MethodsHelpCommand)(explain.sanity)
app.command(cls=HelpCommand)(features.top)
app.command(cls=HelpCommand)(info.layers)
app.command(cls=HelpCommand)(info.models)
app.command(cls=HelpCommand)(features.filters)
app.command(cls=HelpCommand)(dream.dream)

worker_app = typer.Typer(
    cls=_Commands,
    help="A background process that keeps torch and recent models loaded, so that featviz calls "
    "from shell loops stop paying start-up. While it runs, every featviz call of this user and "
    "environment uses it (FEATVIZ_WORKER=off: never; =auto: start it on first use).",
    no_args_is_help=True,
    rich_markup_mode=None,
    context_settings=_HELP_SETTINGS,
)
app.add_typer(worker_app, name="worker")

worker_app.command("start", cls=HelpCommand)(worker.worker_start)
worker_app.command("stop", cls=HelpCommand)(worker.worker_stop)
worker_app.command("status", cls=HelpCommand)(worker.worker_status)


def main() -> None:
    """The in-process command line (cli/launch.py calls it when no worker takes the call). Leaves
    through ``os._exit`` once everything is written and flushed: the interpreter's normal exit
    tears torch down for about 1 s, which every call of a shell loop would pay (one-image
    ``featviz cam``: 5.7 → 4.4 s). featviz registers no atexit work, and every file is closed
    and renamed by then."""
    os._exit(run_command(sys.argv[1:]))


def run_command(args: list[str], prog_name: str | None = None) -> int:
    """Run one command line to its end and return its exit code, stdout and stderr flushed:
    the console script's and the warm worker's way in."""
    try:
        click_command().main(args=args, prog_name=prog_name)
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    for stream_ in (sys.stdout, sys.stderr):
        # A closed pipe (`featviz … | head`) has nothing left to flush.
        with contextlib.suppress(OSError, ValueError):
            stream_.flush()
    return code


@functools.cache
def click_command() -> HelpGroup:
    """Typer builds the click command anew on every ``app()``; a worker builds it once."""
    return typer.main.get_command(app)
