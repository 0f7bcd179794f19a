"""The CPUs this process may run on (standard library only: the worker's client reads it too)."""

from __future__ import annotations

import os


def usable_cpus() -> set[int]:
    """The CPUs this process may run on (its affinity, where the system has one)."""
    if hasattr(os, "sched_getaffinity"):
        return os.sched_getaffinity(0)
    return set(range(os.cpu_count() or 1))
