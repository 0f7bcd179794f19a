"""The ``featviz`` console script: a running warm worker takes the call (featviz.worker),
otherwise the command line runs in this process. Nothing heavier than the standard library is
imported before that choice: a call that a worker answers never imports typer or torch."""

from __future__ import annotations

import os
import sys

# The module whose main() a worker started from here runs.
SERVER = "featviz.cli.serve"


def main() -> None:
    from featviz.worker.client import delegate

    code = delegate(sys.argv, SERVER)
    if code is None:
        from featviz.cli.app import main as in_process

        in_process()
    os._exit(code)
