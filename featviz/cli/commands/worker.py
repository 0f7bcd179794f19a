"""worker start, stop and status: the warm worker, seen from the command line."""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from featviz.cli.terminal import errors
from featviz.errors import FeatvizError


def worker_start() -> None:
    """Start this environment's worker (if none runs) and wait until it answers."""
    with errors():
        from featviz.cli.launch import SERVER
        from featviz.worker import control

        where = _worker_place()
        started = control.start(where, SERVER)
        if started.problem:
            raise FeatvizError(f"the featviz worker did not start: {started.problem}")
        started.connection.close()
        typer.echo(f"featviz worker running (pid {started.pid}); featviz calls now use it")
        if os.environ.get("FEATVIZ_WORKER", "").lower() == "off":
            print("Note: FEATVIZ_WORKER=off: calls of this shell bypass it", file=sys.stderr)


def worker_stop() -> None:
    """Stop the worker once its current call has finished (calls queued behind run without it)."""
    with errors():
        from featviz.worker import control

        pid = control.stop(_worker_place())
        typer.echo("no featviz worker was running" if pid is None else f"stopped (pid {pid})")


def worker_status(
    json_out: Annotated[
        bool, typer.Option("--json", help="The status as one JSON object.")
    ] = False,
) -> None:
    """Whether a worker runs here, and what it holds: calls, memory, the models it keeps."""
    with errors():
        import json

        from featviz.cli.text import worker_status_text
        from featviz.worker import control

        state = control.status(_worker_place())
        if json_out:
            typer.echo(json.dumps(state or {"running": False}))
        else:
            typer.echo(worker_status_text(state))


def _worker_place():
    from featviz.worker.client import SUPPORTED
    from featviz.worker.place import UnsafeFolder, place

    if not SUPPORTED:
        raise FeatvizError(
            "the warm worker needs Linux (it checks each caller's user with SO_PEERCRED)",
            hint="featviz runs the same without it",
        )
    try:
        return place()
    except UnsafeFolder as exc:
        raise FeatvizError(
            f"cannot use the worker's folder: {exc}",
            hint="set XDG_RUNTIME_DIR to a short folder that only you can enter",
        ) from None
