"""The warm worker's entry (``featviz worker start``): the worker runs each call's command line
through this CLI, in its own process, with torch and the commands imported once."""

from __future__ import annotations


def main() -> None:
    from featviz.cli.app import run_command
    from featviz.worker.server import serve

    serve(run_command, _warm_up)


def _warm_up() -> None:
    """Import now what every call needs, so the first call is as quick as the next."""
    import torch  # noqa: F401
    import torchvision.models  # noqa: F401

    from featviz.cam.registry import method_names
    from featviz.cli.app import click_command

    click_command()  # typer builds it in about 50 ms
    method_names()
