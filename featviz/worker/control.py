"""Starting and stopping this environment's worker (``featviz worker start|stop|status``, and
``FEATVIZ_WORKER=auto``). No torch here: the worker imports it, in its own process."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from featviz.worker.client import ask, connect
from featviz.worker.place import Place

_READY_S = 120.0  # importing torch on a busy machine
_STOP_S = 30.0


@dataclass(frozen=True)
class Started:
    """A worker answering on the socket (``connection``, opened for the caller), or why not."""

    connection: Any = None
    pid: int | None = None
    problem: str | None = None


def start(where: Place, server: str) -> Started:
    """Start a worker unless one runs, and wait until it answers. ``server``: the module whose
    ``main()`` serves (the CLI's, which runs each call's command line)."""
    process = _spawn(where, server)
    deadline = time.monotonic() + _READY_S
    while time.monotonic() < deadline:
        status = ask(where, "status")
        if status is not None:
            return Started(connect(where), status["pid"])
        if process.poll() is not None:
            return Started(
                problem=f"it exited at start (code {process.returncode}); its log: {where.log}"
            )
        time.sleep(0.05)
    return Started(problem=f"it did not answer within {_READY_S:.0f} s; its log: {where.log}")


def replace(where: Place, server: str) -> None:
    """A worker of other code was asked to leave: start this code's, without waiting for it
    (it takes over the socket once the old one has gone)."""
    _spawn(where, server)


def stop(where: Place) -> int | None:
    """Ask the worker to leave after its current call; its pid once it has gone, None when no
    worker was running."""
    reply = ask(where, "stop")
    if reply is None:
        return None
    deadline = time.monotonic() + _STOP_S
    while time.monotonic() < deadline and _pid_alive(reply["pid"]):
        time.sleep(0.05)
    return reply["pid"]


def status(where: Place) -> dict[str, Any] | None:
    return ask(where, "status")


def _spawn(where: Place, server: str) -> subprocess.Popen:
    # The very featviz code of this call, whatever the working directory.
    package_root = Path(__file__).resolve().parent.parent.parent
    code = (
        f"import sys; sys.path.insert(0, {str(package_root)!r}); from {server} import main; main()"
    )
    log = open(where.log, "ab")  # noqa: SIM115 - handed to the child
    with log:
        return subprocess.Popen(
            [sys.executable, "-c", code],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            cwd="/",
            start_new_session=True,  # no Ctrl-C of the caller's terminal reaches it
            close_fds=True,
        )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (the worker was our own child) has gone for every purpose here.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False
