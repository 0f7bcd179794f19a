"""Handing freed heap memory back to the system."""

from __future__ import annotations

import contextlib
import ctypes
import functools


@functools.cache
def _libc() -> ctypes.CDLL | None:
    with contextlib.suppress(OSError):
        return ctypes.CDLL("libc.so.6")
    return None


def return_freed_memory() -> None:
    """glibc keeps memory freed inside its heaps (one per thread pool worker) for reuse: after a
    large photo's buffers, hundreds of MB that the next image may not fit in. ``malloc_trim``
    gives the free pages back (a few ms); elsewhere than glibc this does nothing."""
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)
