"""The caller's side of the warm worker: hand this process's command to a running worker and
exit as the command did. Imports neither torch nor typer (cli/launch.py runs it before either).

``FEATVIZ_WORKER``: ``on`` (the default) uses a worker when one runs, ``auto`` also starts one
when none does, ``off`` never uses one. A call the worker cannot take — no worker, one of other
code, one stopping, a queue the worker drops — runs in this process instead, with the same
result: the worker only ever changes how long a call takes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
from typing import Any

from featviz.worker import protocol
from featviz.worker.place import MODE_ENV, Place, UnsafeFolder, code_version, place

MODES = ("on", "auto", "off")
# The worker checks its callers' uid with SO_PEERCRED, which only Linux has.
SUPPORTED = sys.platform.startswith("linux") and hasattr(socket, "SO_PEERCRED")
# Commands that never touch torch gain nothing from the worker; help texts stay in-process; a
# --ray run is a Ray driver, whose connection and threads must not outlive the call.
_IN_PROCESS = {"worker", "--help", "-h", "--version", "--ray"}


def delegate(argv: list[str], server: str) -> int | None:
    """The exit code of ``argv`` run by the worker, or None: run it in this process.
    ``server``: the module whose ``main()`` serves, for a worker started here."""
    mode = _mode()
    names = {arg.partition("=")[0] if arg.startswith("--") else arg for arg in argv[1:]}
    if mode == "off" or not argv[1:] or _IN_PROCESS.intersection(names):
        return None
    if not SUPPORTED:
        return None
    if None in _streams():  # a closed descriptor cannot be passed on
        return None
    try:
        where = place()
    except UnsafeFolder:
        return None
    conn = connect(where)
    if conn is None and mode == "auto":
        from featviz.worker.control import start

        conn = start(where, server).connection
    if conn is None:
        return None
    return _run(conn, where, argv, server)


def connect(where: Place) -> socket.socket | None:
    """A connection to this environment's live worker; None when there is none (no socket,
    or a stale one that nobody listens on any more)."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(str(where.socket))
    except OSError:
        conn.close()
        return None
    return conn


def ask(where: Place, op: str) -> dict[str, Any] | None:
    """The worker's answer to ``status`` or ``stop``; None when no worker answers."""
    conn = connect(where)
    if conn is None:
        return None
    try:
        with conn:
            protocol.send(conn, {"op": op})
            return protocol.receive(conn)[0]
    except (OSError, protocol.Closed):
        return None


def _run(conn: socket.socket, where: Place, argv: list[str], server: str) -> int | None:
    with conn:
        try:
            protocol.send(conn, _call(argv), fds=[0, 1, 2])  # the working folder may be gone
            reply, _ = protocol.receive(conn)
        except (OSError, protocol.Closed):  # a worker stopping, a closed stdin: run here
            return None
        except KeyboardInterrupt:  # Ctrl-C while queued: nothing started, leave as Python would
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)
        if "started" not in reply:
            if reply.get("refused") == "version":
                from featviz.worker.control import replace

                replace(where, server)
            return None
        return _follow(conn, reply["pid"])


def _follow(conn: socket.socket, pid: int) -> int:
    """Wait for the command's end, forwarding Ctrl-C and SIGTERM to it meanwhile."""

    def forward(signum: int, frame: object) -> None:
        with contextlib.suppress(OSError):
            protocol.send(conn, {"signal": signum})

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, forward)
    try:
        reply, _ = protocol.receive(conn)
    except (OSError, protocol.Closed):
        print(
            f"Error: the featviz worker (pid {pid}) died during this command; its outputs may "
            "be incomplete: run it again (the next call starts afresh)",
            file=sys.stderr,
        )
        return 1
    if "signal" in reply:  # what the command's own process would have died of
        signal.signal(reply["signal"], signal.SIG_DFL)
        os.kill(os.getpid(), reply["signal"])
    return int(reply["exit"])


def _call(argv: list[str]) -> dict[str, Any]:
    umask = os.umask(0)
    os.umask(umask)
    return {
        "op": "run",
        "version": code_version(),
        "argv": argv,
        "prog": _prog_name(argv),
        "cwd": os.getcwd(),
        "env": dict(os.environ),
        "umask": umask,
        "stdio": {
            name: [stream.encoding, stream.errors, stream.line_buffering, stream.write_through]
            for name, stream in zip(("stdin", "stdout", "stderr"), _streams())
        },
    }


def _streams() -> tuple:
    return sys.stdin, sys.stdout, sys.stderr


def _prog_name(argv: list[str]) -> str:
    """The name click would show in usage lines: ``featviz``, or ``python -m featviz``."""
    package = getattr(sys.modules["__main__"], "__package__", None)
    if package:
        return f"python -m {package}"
    return os.path.basename(argv[0])


def _mode() -> str:
    mode = (os.environ.get(MODE_ENV) or "on").strip().lower()
    if mode in MODES:
        return mode
    print(f"Warning: {MODE_ENV}={mode}: expected {', '.join(MODES)}; using 'on'", file=sys.stderr)
    return "on"
