"""The warm worker process: torch, torchvision and featviz imported once, recent models kept
(model/cache.py), commands run one at a time in its main thread as the caller's process would
run them (isolation.py), and what a command changed of the process's global state put back
after it (global_state.py).

Threads: one per connection reads the caller's messages (its hello, later the signals it
forwards, or its going away); the main thread runs the queued calls in arrival order, so two
calls never share the process state or interleave their output. A call waiting in the queue
has started nothing: a caller interrupted there just leaves.

Started by the client (``featviz worker start`` or ``FEATVIZ_WORKER=auto``) as
``python -c "…; from featviz.cli.serve import main; main()"`` with stdout and stderr on its log
file: the CLI hands ``serve`` the function that runs a command line, and what to import first.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import queue
import signal
import socket
import struct
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from featviz.run.heap import return_freed_memory
from featviz.run.sizes import parse_bytes
from featviz.worker import protocol
from featviz.worker.place import (
    DEFAULT_IDLE_S,
    DEFAULT_MODELS,
    IDLE_ENV,
    MODELS_ENV,
    Place,
    code_version,
    place,
)

RunCommand = Callable[[list[str], "str | None"], int]
_LOCK_WAIT_S = 60.0  # a worker of the old code finishing its last call before it leaves
_POLL_S = 0.5


class SignalDeath(BaseException):
    """SIGTERM outside featviz's own handlers: a fresh process would die of it, so the caller
    is told to (nothing catches a BaseException on the way out)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


@dataclass
class Call:
    conn: socket.socket
    request: dict[str, Any]
    fds: list[int]
    state: str = "queued"  # → running → done; or gone (the caller left while queued)
    lock: threading.Lock = field(default_factory=threading.Lock)


class Worker:
    def __init__(
        self, where: Place, idle_s: float, models_budget: int, run_command: RunCommand
    ) -> None:
        from featviz.model.cache import ModelCache

        self.place = where
        self.run_command = run_command
        self.idle_s = idle_s
        self.cache = ModelCache(models_budget)
        self.version = code_version()
        self.started = time.time()
        self.last_active = time.monotonic()
        self.calls = 0
        self.queue: queue.Queue[Call] = queue.Queue()
        self.current: Call | None = None
        self.stopping = False
        self.main_thread = threading.get_ident()
        self.in_command = False
        self.forwarded = False

    # The main thread ------------------------------------------------------------------------

    def serve(self, listener: socket.socket) -> None:
        from featviz.model import cache as model_cache
        from featviz.worker.global_state import GlobalState
        from featviz.worker.isolation import FreshState

        model_cache.install(self.cache)
        self.fresh = FreshState()
        self.pristine = GlobalState()
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._on_signal)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        while not self.stopping:
            try:
                call = self.queue.get(timeout=_POLL_S)
            except queue.Empty:
                if time.monotonic() - self.last_active > self.idle_s and self.queue.empty():
                    self.stopping = True
                continue
            self._run(call)
            self.last_active = time.monotonic()
        # Calls still queued fall back to running in their own process.
        while not self.queue.empty():
            self.queue.get().conn.close()

    def _run(self, call: Call) -> None:
        self.current = call
        with self.cache.lock:
            models_before = set(self.cache.entries)
        outcome = self._command(call)
        with call.lock:
            call.state = "done"
        self.current = None
        protocol.close(call.fds)
        if outcome is not None:
            with contextlib.suppress(OSError):
                protocol.send(call.conn, outcome)
        call.conn.close()
        self._put_back_global_state(models_before)  # after the answer: off the caller's clock
        return_freed_memory()

    def _put_back_global_state(self, models_before: set) -> None:
        """What the call changed of the process's global state goes back (global_state.py).
        A model it built is not kept then: built under that state, it would meet the next
        call without it, where a fresh process would rebuild it with it. What cannot go back
        makes this worker leave: the next call runs afresh."""
        changed = self.pristine.restore()
        if not (changed.restored or changed.stuck):
            return
        with self.cache.lock:
            for key in set(self.cache.entries) - models_before:
                del self.cache.entries[key]
        if changed.restored:
            _log(f"call {self.calls} changed global state; put back: {_listed(changed.restored)}")
        if changed.stuck:
            _log(f"call {self.calls} changed what cannot be put back: {_listed(changed.stuck)}")
            self.stopping = True

    def _command(self, call: Call) -> dict[str, Any] | None:
        """The call's outcome for its caller: ``exit`` or ``signal`` once it has run,
        ``refused`` when its state could not be taken on (the caller then runs it itself),
        None when the caller has gone."""
        from featviz.worker.isolation import call_state

        request = call.request
        try:
            with call_state(request, call.fds, self.fresh):
                if not self._started(call):
                    return None
                self.in_command = True
                try:
                    return {"exit": self.run_command(request["argv"][1:], request["prog"])}
                except Exception:  # a bug outside the error funnel: as Python would show it
                    traceback.print_exc()
                    return {"exit": 1}
                finally:
                    self.in_command = False
        except SignalDeath as death:
            return {"signal": death.signum}
        except KeyboardInterrupt:  # Ctrl-C just as the command ended
            return {"exit": 130}
        except OSError as exc:  # its folder has gone, a descriptor cannot be duplicated
            return {"refused": f"cannot take the call on: {exc}"}

    def _started(self, call: Call) -> bool:
        with call.lock:
            if call.state == "gone":
                return False
            call.state = "running"
        try:
            protocol.send(call.conn, {"started": True, "pid": os.getpid()})
        except OSError:
            return False
        self.calls += 1
        return True

    def _on_signal(self, signum: int, frame: object) -> None:
        """Inside a command, a signal acts as on a fresh featviz process: SIGINT raises
        KeyboardInterrupt, SIGTERM kills (featviz's own handlers take over while images run).
        Outside, a forwarded signal that came too late is dropped; anyone else's stops the
        worker after its queue's current call."""
        forwarded, self.forwarded = self.forwarded, False
        if self.in_command:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            raise SignalDeath(signum)
        if not forwarded:
            self.stopping = True

    # Connection threads ---------------------------------------------------------------------

    def _accept(self, listener: socket.socket) -> None:
        while True:
            conn, _ = listener.accept()
            threading.Thread(target=self._converse, args=(conn,), daemon=True).start()

    def _converse(self, conn: socket.socket) -> None:
        """Answer the connection's first message; a call is queued and then followed. Every
        message gets an answer, a malformed one its refusal (protocol.problem)."""
        fds: list[int] = []
        try:
            uid = _peer_uid(conn)
            try:
                request, fds = protocol.receive(conn)
                problem = protocol.problem(request, len(fds), self.version)
            except protocol.Malformed as exc:
                request, problem = {}, str(exc)
            if uid != os.getuid():
                protocol.send(conn, {"refused": f"uid {uid} is not this worker's user"})
            elif problem is not None:
                protocol.send(conn, {"refused": f"malformed request: {problem}"})
            elif request["op"] == "status":
                protocol.send(conn, self._status())
            elif request["op"] == "stop":
                self.stopping = True
                protocol.send(conn, {"stopping": True, "pid": os.getpid()})
            elif request["version"] != self.version or self.stopping:
                # A caller of other code: this worker leaves, the caller starts a new one.
                self.stopping = True
                protocol.send(conn, {"refused": "version", "version": self.version})
            else:
                call = Call(conn, request, fds)
                self.last_active = time.monotonic()
                self.queue.put(call)
                self._follow(call)
                return
        except (OSError, protocol.Closed):
            pass
        protocol.close(fds)
        conn.close()

    def _follow(self, call: Call) -> None:
        """Forward the caller's Ctrl-C / SIGTERM to the command; a caller that goes away
        mid-command stops it as SIGTERM would."""
        while True:
            try:
                message, fds = protocol.receive(call.conn)
                protocol.close(fds)  # none of a signal's business
            except protocol.Malformed:
                continue  # not a signal; mid-call the caller is only ever answered its outcome
            except (OSError, protocol.Closed):
                message = {"signal": signal.SIGTERM, "gone": True}
            with call.lock:
                if call.state == "queued" and message.get("gone"):
                    call.state = "gone"
                running = call.state == "running"
            signum = message.get("signal")
            if running and isinstance(signum, int) and signum in (signal.SIGINT, signal.SIGTERM):
                self.forwarded = True
                signal.pthread_kill(self.main_thread, signum)
            if message.get("gone") or call.state == "done":
                return

    def _status(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "version": self.version,
            "python": sys.executable,
            "socket": str(self.place.socket),
            "uptime_s": round(time.time() - self.started, 1),
            "idle_timeout_s": self.idle_s,
            "idle_s": 0.0 if self.current else round(time.monotonic() - self.last_active, 1),
            "calls": self.calls,
            "busy": self.current is not None,
            "queued": self.queue.qsize(),
            "threads": threading.active_count(),
            "rss_bytes": _rss_bytes(),
            "models_budget": self.cache.budget,
            "models": self.cache.describe(),
        }


def _die(signum: int, frame: object) -> None:
    raise SignalDeath(signum)


def _peer_uid(conn: socket.socket) -> int:
    credentials = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", credentials)
    return uid


def _log(line: str) -> None:
    print(f"featviz worker (pid {os.getpid()}): {line}", file=sys.stderr, flush=True)


def _listed(names: list[str], shown: int = 12) -> str:
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def _rss_bytes() -> int | None:
    with contextlib.suppress(OSError, ValueError), open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    return None


def _hold_lock(where: Place) -> Any:
    """The worker's lock, once a previous worker (old code, leaving) has let it go; None when a
    live worker keeps it."""
    handle = open(where.lock, "a")  # noqa: SIM115 - held for the worker's life
    deadline = time.monotonic() + _LOCK_WAIT_S
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return handle
        except BlockingIOError:
            if time.monotonic() > deadline:
                handle.close()
                return None
            time.sleep(0.1)


def _listen(where: Place) -> socket.socket:
    with contextlib.suppress(FileNotFoundError):
        where.socket.unlink()  # a dead worker's
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    previous = os.umask(0o177)  # the socket is born 0600: no moment when others may connect
    try:
        listener.bind(str(where.socket))
    finally:
        os.umask(previous)
    listener.listen(64)
    return listener


def serve(run_command: RunCommand, warm_up: Callable[[], None]) -> None:
    """Be this environment's worker until idle or stopped: ``run_command(args, prog_name)``
    runs one call's command line and returns its exit code; ``warm_up`` imports beforehand
    what every call needs, so the first call is as quick as the next."""
    where = place()
    lock = _hold_lock(where)
    if lock is None:
        return
    idle_s = float(os.environ.get(IDLE_ENV) or DEFAULT_IDLE_S)
    budget = parse_bytes(os.environ.get(MODELS_ENV) or DEFAULT_MODELS, what=MODELS_ENV)
    warm_up()
    worker = Worker(where, idle_s, budget, run_command)
    listener = _listen(where)
    identity = os.stat(where.socket).st_ino
    try:
        worker.serve(listener)
    finally:
        listener.close()
        with contextlib.suppress(OSError):
            if os.stat(where.socket).st_ino == identity:
                where.socket.unlink()
        lock.close()
    # Leave like the CLI does: no second of torch teardown, no daemon thread left to join.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
