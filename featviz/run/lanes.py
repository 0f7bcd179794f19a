"""Decoding in as few threads at once as keep the model fed.

Decoding more images at once than the model needs only takes cores from it: on two cores with
the model's thread on one, a second decoder thread takes the other core's share of the
interpreter's lock, wakes more often and leaves the model's forwards less of the machine. On
``featviz top`` over 2,000 small photos (the benchmark), one decoder at a time made the whole
run 1.08× its forwards against 1.11× with two, and its CPU beyond the forwards a sixth less.

So the work goes down lanes: a lane is a task in the pool that takes the queue's next call,
runs it, and goes on until the queue is empty. One lane runs at first; ``widen()`` opens
another, up to the pool's threads, when the model had to wait for a decode (the caller says
when). Each call has its own Future, which behaves as the pool's would: cancelling one that
has not started keeps it from running.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


class Lanes:
    """Calls run in submission order by at most ``lanes`` of ``pool``'s threads at once."""

    def __init__(self, pool: ThreadPoolExecutor, most: int) -> None:
        self.pool, self.most = pool, most
        self.lanes = 1
        self.running = 0  # lanes taking calls now
        self.queue: deque[tuple[Future[Any], Callable[[Any], Any], Any]] = deque()
        self.lock = threading.Lock()

    def submit(self, function: Callable[[Any], T], argument: Any) -> Future[T]:
        future: Future[T] = Future()
        with self.lock:
            self.queue.append((future, function, argument))
        self._open()
        return future

    def widen(self) -> None:
        """One more lane, up to ``most``: the caller waited for a call to finish."""
        with self.lock:
            self.lanes = min(self.most, self.lanes + 1)
        self._open()

    def _open(self) -> None:
        """Start a lane if fewer run than may and a call is waiting (a lane that finds the
        queue emptied meanwhile just ends)."""
        with self.lock:
            if self.running >= self.lanes or not self.queue:
                return
            self.running += 1
        self.pool.submit(self._drain)

    def _drain(self) -> None:
        """Run the queued calls one after the other until none is left."""
        while True:
            with self.lock:
                if not self.queue:
                    self.running -= 1
                    return
                future, function, argument = self.queue.popleft()
            if not future.set_running_or_notify_cancel():
                continue  # cancelled before it started
            try:
                future.set_result(function(argument))
            except BaseException as error:  # the caller's to see, as from the pool's futures
                future.set_exception(error)
