"""One call's process state inside the worker, put in place before the command and taken away
after it, so that each call behaves as a fresh ``featviz`` process of the caller's would.

What a call brings: its working directory, its whole environment, its umask, its argv, its
stdin/stdout/stderr (the descriptors themselves, with the caller's text encodings and
buffering). What is reset to the worker's fresh state: the random generators, ``sys.path``,
warning filters, and user modules a command imported (a ``pkg.mod:build`` factory is imported
afresh by the next call, as a new process would).
"""

from __future__ import annotations

import contextlib
import io
import os
import random
import sys
import warnings
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

# Where libraries live: modules from anywhere else are the user's and are never kept.
LIBRARY_ROOTS = tuple(
    os.path.join(str(Path(root).resolve()), "")
    for root in {sys.prefix, sys.base_prefix, sys.exec_prefix, Path(__file__).parent.parent}
)


class FreshState:
    """The random generators as they were when the worker had just started."""

    def __init__(self) -> None:
        import torch

        self.torch = torch.get_rng_state()
        self.python = random.getstate()

    def restore(self) -> None:
        import torch

        torch.set_rng_state(self.torch)
        random.setstate(self.python)


@contextmanager
def call_state(call: dict[str, Any], fds: list[int], fresh: FreshState) -> Iterator[None]:
    """Run the body as the caller's process: see the module's docstring."""
    with ExitStack() as stack:
        stack.enter_context(_standard_streams(fds, call["stdio"]))
        stack.enter_context(_environment(call["env"]))
        stack.enter_context(_directory(call["cwd"]))
        stack.enter_context(_imports())
        stack.enter_context(warnings.catch_warnings())
        previous_umask = os.umask(call["umask"])
        stack.callback(os.umask, previous_umask)
        previous_argv = sys.argv
        sys.argv = list(call["argv"])
        stack.callback(setattr, sys, "argv", previous_argv)
        fresh.restore()
        yield


@contextmanager
def _standard_streams(fds: list[int], stdio: dict[str, list]) -> Iterator[None]:
    """The caller's descriptors on 0, 1, 2 and new text streams over them, with the caller's
    encodings and buffering (``PYTHONUNBUFFERED``, line buffering on a terminal)."""
    saved = [os.dup(fd) for fd in (0, 1, 2)]
    previous = sys.stdin, sys.stdout, sys.stderr
    try:
        for target, fd in enumerate(fds):
            os.dup2(fd, target)  # the call's own descriptors are closed by its owner, after it
        # A descriptor no text stream can be opened on (a directory) fails the call here.
        sys.stdin = _text(0, "r", *stdio["stdin"])
        sys.stdout = _text(1, "w", *stdio["stdout"])
        sys.stderr = _text(2, "w", *stdio["stderr"])
        yield
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):  # a closed pipe (`featviz … | head`)
                stream.flush()
        sys.stdin, sys.stdout, sys.stderr = previous
        for target, fd in enumerate(saved):
            os.dup2(fd, target)
            os.close(fd)


def _text(
    fd: int, mode: str, encoding: str, errors: str, line_buffering: bool, write_through: bool
) -> io.TextIOWrapper:
    # closefd=False: the descriptor is the call's, put back after it.
    stream = open(  # noqa: SIM115 - lives for the call
        fd,
        mode,
        buffering=1 if line_buffering else -1,
        encoding=encoding,
        errors=errors,
        closefd=False,
    )
    stream.reconfigure(write_through=write_through)
    return stream


@contextmanager
def _environment(env: dict[str, str]) -> Iterator[None]:
    previous = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(previous)


@contextmanager
def _directory(cwd: str) -> Iterator[None]:
    previous = os.getcwd()
    os.chdir(cwd)
    try:
        yield
    finally:
        os.chdir(previous)


@contextmanager
def _imports() -> Iterator[None]:
    """``sys.path`` as before, and the user's own modules a command imported forgotten."""
    path, modules = list(sys.path), set(sys.modules)
    try:
        yield
    finally:
        sys.path[:] = path
        for name in set(sys.modules) - modules:
            module = sys.modules.get(name)
            if module is not None and not is_library(module):
                del sys.modules[name]


def is_library(module: object) -> bool:
    file = getattr(module, "__file__", None)
    if not file:  # built-in and namespace modules
        return True
    return is_library_file(file)


def is_library_file(file: str) -> bool:
    return str(Path(file).resolve()).startswith(LIBRARY_ROOTS)
