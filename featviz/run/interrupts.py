"""Ctrl-C and SIGTERM as exceptions in the main thread, but never inside a thread pool's
bookkeeping.

Python raises a signal's exception between any two bytecodes of the main thread. Raised while
``ThreadPoolExecutor.submit`` holds one of the pool's internal locks, it leaves that lock held,
and the pool's worker threads then wait for it forever: the run hangs on exit instead of
stopping (seen here under load, about one interrupt in two). So the handlers installed by
``handled`` raise at once, except inside ``shielded()`` blocks, where they only note the
signal; the block raises it as soon as it ends.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C's KeyboardInterrupt so both stop a run the same way."""


_shield_depth = 0
_pending: int | None = None


def _exception_for(signum: int) -> KeyboardInterrupt:
    return Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def _handler(signum: int, frame: object) -> None:
    global _pending
    if _shield_depth:
        _pending = signum
        return
    raise _exception_for(signum)


@contextmanager
def handled() -> Iterator[None]:
    """Install the handlers for SIGINT and SIGTERM; the previous ones come back afterwards."""
    global _pending
    _pending = None
    previous = {sig: signal.signal(sig, _handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)


@contextmanager
def shielded() -> Iterator[None]:
    """Hold back SIGINT/SIGTERM (under ``handled``) until the block has finished."""
    global _shield_depth, _pending
    _shield_depth += 1
    try:
        yield
    finally:
        _shield_depth -= 1
        if not _shield_depth and _pending is not None:
            signum, _pending = _pending, None
            raise _exception_for(signum)
