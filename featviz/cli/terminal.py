"""The command line's terminal side: streaming results to stdout/stderr, the progress bar,
signals, warnings, and the one error funnel that turns exceptions into exit codes.

Together with the commands (cli/commands/) this is the only code that prints.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import typer

from featviz.errors import FeatvizError
from featviz.run.interrupts import Terminated, handled

DEBUG_ENV = "FEATVIZ_DEBUG"


def stream(run, report) -> None:
    """Consume the run's results: JSON lines or per-image lines, progress, summary, manifest.

    Interrupts (SIGINT, SIGTERM) and fatal errors (disk full, a bug) still write the manifest of
    what was done and print the summary before exiting; a manifest that cannot be written fails
    the run.
    """
    with handled():  # in-process callers (tests, notebooks) get their own handlers back after
        _consume(run, json_lines=report.json_lines, quiet=report.quiet)


def _consume(run, *, json_lines: bool, quiet: bool) -> None:
    from featviz.cli.text import image_line
    from featviz.inputs.printable import printable
    from featviz.sinks.manifest import RunTally

    tally = RunTally()
    stopped: BaseException | None = None
    progress = None if quiet else _progress_for(run.total)
    try:
        for result in run.results():
            tally.add(result)
            if json_lines:
                for line in result.json_lines():
                    _emit(json.dumps(line, ensure_ascii=False))
            elif result.error:
                _print_err(f"error: {result.error}", progress)
            elif not quiet:
                _print(image_line(result), progress)
            if progress:
                progress.advance()
    except (KeyboardInterrupt, Exception) as exc:
        stopped = exc
        run.settle(tally, _stop_reason(exc))
    finally:
        if progress:
            progress.stop()
    interrupted = isinstance(stopped, KeyboardInterrupt)
    try:
        manifest = f"; manifest {printable(run.finish(tally, interrupted))}"
    except FeatvizError as exc:
        manifest = f"; manifest not written ({exc.message})"
        stopped = stopped or exc
    if json_lines:
        for failure in tally.failures:
            _print_err(f"error: {failure}")
    elif not quiet and stopped is None:
        table = run.report(tally)
        if table:
            _emit(table)
    if not quiet:
        _print_err(tally.summary(printable(run.out), interrupted) + manifest)
        for note in run.notes:
            _print_err(f"Note: {note}")
    if interrupted:
        raise typer.Exit(143 if isinstance(stopped, Terminated) else 130)
    if stopped is not None:
        raise stopped
    if tally.failed:
        raise typer.Exit(1)


def _stop_reason(exc: BaseException) -> str:
    """Why a run stopped, for its manifest: the signal, or the error's line."""
    if isinstance(exc, Terminated):
        return "SIGTERM"
    if isinstance(exc, KeyboardInterrupt):
        return "SIGINT"
    if isinstance(exc, FeatvizError):
        return one_line(exc.message)
    return f"internal error: {type(exc).__name__}: {one_line(str(exc))}"


# A run whose stderr is not a terminal (a batch job's log) gets a progress line this often.
PROGRESS_ENV = "FEATVIZ_PROGRESS_EVERY"
PROGRESS_EVERY_S = 60.0


def _progress_for(total: int | None):
    """A progress bar on a terminal; elsewhere a line every PROGRESS_EVERY_S seconds."""
    if sys.stderr.isatty():
        return _Progress(total)
    try:
        every = float(os.environ.get(PROGRESS_ENV, PROGRESS_EVERY_S))
    except ValueError:
        every = PROGRESS_EVERY_S
    return _ProgressLines(total, every) if every > 0 else None


class _Progress:
    """A rich progress bar on stderr: images done, speed, ETA when the total is known."""

    def __init__(self, total: int | None) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.bar = Progress(
            TextColumn("images"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        self.task = self.bar.add_task("images", total=total, rate="")
        self.console = self.bar.console
        self.bar.start()

    def advance(self) -> None:
        from featviz.sinks.manifest import speed

        self.bar.advance(self.task)
        task = self.bar.tasks[0]
        if task.elapsed:
            self.bar.update(self.task, rate=speed(int(task.completed), task.elapsed))

    def stop(self) -> None:
        self.bar.stop()


class _ProgressLines:
    """``progress: 120/4000 images (3 %), 2.10 images/s, about 31 min left`` on stderr every
    ``every`` seconds, from a thread of its own: a log shows that a long run is alive even
    while no image completes (a big model's first batch)."""

    console = None

    def __init__(self, total: int | None, every: float) -> None:
        import threading

        self.total = total
        self.done = 0
        self.started = time.monotonic()
        self.stopped = threading.Event()
        self.thread = threading.Thread(
            target=self._tell, args=(every,), name="featviz-progress", daemon=True
        )
        self.thread.start()

    def advance(self) -> None:
        self.done += 1

    def _tell(self, every: float) -> None:
        while not self.stopped.wait(every):
            print(self.line(time.monotonic() - self.started), file=sys.stderr, flush=True)

    def line(self, elapsed: float) -> str:
        from featviz.sinks.manifest import speed

        done, rate = self.done, speed(self.done, elapsed)
        if not self.total:
            return f"progress: {done} images, {rate}, {_duration(elapsed)} in"
        left = f"about {_duration((self.total - done) * elapsed / done)} left" if done else ""
        return (
            f"progress: {done}/{self.total} images ({100 * done // self.total} %), {rate}, "
            f"{_duration(elapsed)} in" + (f", {left}" if left else "")
        )

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join()


@contextmanager
def steps_progress(total: int, *, shown: bool) -> Iterator[Callable[[int], None] | None]:
    """A bar of optimisation steps on a terminal's stderr (``featviz dream``), fed the steps
    done; None when not ``shown`` or stderr is not a terminal."""
    if not shown or not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    bar = Progress(
        TextColumn("steps"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    )
    task = bar.add_task("steps", total=total)
    with bar:
        yield lambda done: bar.update(task, completed=done)


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{round(seconds / 60)} min"
    return f"{round(seconds)} s"


def _print(line: str, progress=None) -> None:
    if progress and progress.console:
        progress.console.print(line, highlight=False, markup=False, soft_wrap=True)
    else:
        _emit(line)


def _print_err(line: str, progress=None) -> None:
    if progress and progress.console:
        progress.console.print(line, highlight=False, markup=False, soft_wrap=True)
    else:
        print(line, file=sys.stderr, flush=True)


def _emit(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


_TERMINAL_CODES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def one_line(text: str) -> str:
    """``text`` as one line: terminal colour codes dropped (torch puts some in its messages),
    line breaks joined with a space."""
    return re.sub(r"\s*[\r\n]+\s*", " ", _TERMINAL_CODES.sub("", text)).strip()


def _show_warning(message: Warning | str, *args: object, **kwargs: object) -> None:
    """A warning from the core or a library, as one line like the errors (no source excerpt)."""
    print(f"Warning: {one_line(str(message))}", file=sys.stderr)


@contextmanager
def errors() -> Iterator[None]:
    """The one error funnel: FeatvizError → 'Error: …' (+ hint) on stderr and its exit code;
    anything unexpected → one line and exit 1 (the traceback with FEATVIZ_DEBUG=1)."""
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            yield
    except FeatvizError as exc:
        if os.environ.get(DEBUG_ENV):
            traceback.print_exc()
        print(f"Error: {one_line(exc.message)}", file=sys.stderr)
        if exc.hint:
            print(f"Hint: {one_line(exc.hint)}", file=sys.stderr)
        raise typer.Exit(exc.exit_code) from None
    except (typer.Exit, typer.Abort, KeyboardInterrupt):
        raise
    except Exception as exc:
        if os.environ.get(DEBUG_ENV):
            traceback.print_exc()
        print(f"Error: internal error: {type(exc).__name__}: {one_line(str(exc))}", file=sys.stderr)
        print(
            f"Hint: rerun with {DEBUG_ENV}=1 for the traceback, and please report it",
            file=sys.stderr,
        )
        raise typer.Exit(1) from None
