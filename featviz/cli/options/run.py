"""What a run reads and where it computes: the inputs and how they are read (Input), and the
batches on a Ray cluster (Ray cluster); their packing into a ``RunRequest``."""

from __future__ import annotations

import inspect
from typing import Annotated, Any

import typer

from featviz.cli.options.panels import INPUT_PANEL, RAY_PANEL, Declared, option
from featviz.errors import UsageError
from featviz.inputs.limits import DEFAULT_MAX_PIXELS
from featviz.inputs.shards import Shard
from featviz.run.plan import RayRequest, RunRequest
from featviz.run.sizes import parse_bytes


def _parse_memory(text: str) -> int:
    try:
        return parse_bytes(text, what="--max-memory")
    except UsageError as exc:
        raise typer.BadParameter(f"{exc.message} ({exc.hint})") from None


def _parse_shard(text: str) -> Shard:
    try:
        return Shard.parse(text)
    except UsageError as exc:  # told like any bad option value: one line, exit 2
        raise typer.BadParameter(f"{exc.message} ({exc.hint})") from None


RUN_OPTIONS: Declared = {
    "inputs": (
        Annotated[
            list[str],
            typer.Argument(
                help="Image files, folders, glob patterns, or - to read paths from stdin.",
                show_default=False,
            ),
        ],
        inspect.Parameter.empty,
    ),
    "recursive": (
        Annotated[
            bool, option("--recursive", "-r", panel=INPUT_PANEL, help="Look into sub-folders.")
        ],
        False,
    ),
    "max_pixels": (
        Annotated[
            int,
            option(
                min=1,
                panel=INPUT_PANEL,
                metavar="N",
                help="Refuse images above this many pixels (decompression-bomb guard).",
            ),
        ],
        DEFAULT_MAX_PIXELS,
    ),
    "batch_size": (
        Annotated[
            int | None,
            option(
                min=1,
                panel=INPUT_PANEL,
                metavar="N",
                show_default="8 on CPU, 32 on CUDA",
                help="Images per forward.",
            ),
        ],
        None,
    ),
    "skip_existing": (
        Annotated[
            bool,
            option(
                panel=INPUT_PANEL,
                help="Skip images whose outputs from the same options all exist (resume a run).",
            ),
        ],
        False,
    ),
    "max_memory": (
        Annotated[
            int,
            option(
                panel=INPUT_PANEL,
                metavar="SIZE",
                parser=_parse_memory,
                help="Memory for the images in flight (16 bytes a pixel; e.g. 8GB): large photos "
                "then run a few at a time; one larger than this runs alone.",
            ),
        ],
        "2GB",
    ),
    "workers": (
        Annotated[
            int | None,
            option(
                min=1,
                panel=INPUT_PANEL,
                metavar="N",
                show_default="one per core, 2 to 32",
                help=(
                    "Threads that decode (one at a time until the model waits for them), "
                    "and threads that encode and write."
                ),
            ),
        ],
        None,
    ),
    "shard": (
        Annotated[
            Shard | None,
            option(
                panel=INPUT_PANEL,
                metavar="K/N",
                parser=_parse_shard,
                show_default="all inputs",
                help="Only the inputs of shard K of N (by a stable hash of their output path): "
                "N runs with 1/N … N/N cover every input once, on any machines.",
            ),
        ],
        None,
    ),
}

RAY_OPTIONS: Declared = {
    "ray": (
        Annotated[
            str | None,
            option(
                panel=RAY_PANEL,
                metavar="ADDRESS",
                show_default="no Ray: this process",
                help="Run the batches on a Ray cluster (needs featviz[ray]): auto (the one "
                "RAY_ADDRESS names), local (start one here) or the head's address.",
            ),
        ],
        None,
    ),
    "ray_actors": (
        Annotated[
            int | None,
            option(
                min=1,
                panel=RAY_PANEL,
                metavar="N",
                show_default="as many as the cluster holds",
                help="Actors, each loading the model once.",
            ),
        ],
        None,
    ),
    "ray_cpus": (
        Annotated[
            float | None,
            option(min=0.0, panel=RAY_PANEL, metavar="N", show_default="1", help="CPUs per actor."),
        ],
        None,
    ),
    "ray_gpus": (
        Annotated[
            float | None,
            option(min=0.0, panel=RAY_PANEL, metavar="N", show_default="0", help="GPUs per actor."),
        ],
        None,
    ),
}


def run_request(values: dict[str, Any]) -> RunRequest:
    """The values of ``RUN_OPTIONS`` and ``RAY_OPTIONS``, as the run's request."""
    return RunRequest(
        inputs=tuple(values["inputs"]),
        recursive=values["recursive"],
        max_pixels=values["max_pixels"],
        batch_size=values["batch_size"],
        skip_existing=values["skip_existing"],
        shard=values["shard"],
        max_memory=values["max_memory"],
        workers=values["workers"],
        ray=_ray_request(values),
    )


def _ray_request(values: dict[str, Any]) -> RayRequest | None:
    """None without --ray; a --ray-* option without --ray is a usage error (exit 2)."""
    asked = {
        name: values[f"ray_{name}"]
        for name in ("actors", "cpus", "gpus")
        if values[f"ray_{name}"] is not None
    }
    if values["ray"] is None:
        if asked:
            named = "--ray-" + next(iter(asked))
            raise typer.BadParameter(f"{named} goes with --ray (auto, local or an address)")
        return None
    return RayRequest(values["ray"], **asked)
