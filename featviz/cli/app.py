"""The ``featviz`` command line: parse options, call one runner function, report, exit.

Only this module, cli/options.py (the shared options) and cli/terminal.py (streaming, progress, the
error funnel) import typer or print. Exit codes: 0 all done · 1 some inputs failed or the run
failed · 2 usage error · 130/143 interrupted by SIGINT/SIGTERM. Nothing here imports torch at
module level: ``featviz --help`` and shell loops stay cheap.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from enum import Enum
from typing import Annotated

import typer

from featviz import __version__
from featviz.cam.registry import JUDGED_METHODS
from featviz.cli.help import MAX_HELP_WIDTH, HelpCommand, HelpGroup, MethodsHelpCommand, choices
from featviz.cli.options import Explaining, Report, shared_options
from featviz.cli.terminal import errors, one_line, steps_progress, stream
from featviz.errors import FeatvizError
from featviz.model.options import ModelRequest
from featviz.run.plan import (
    CamRequest,
    CompareRequest,
    DreamRequest,
    FiltersRequest,
    MapsRequest,
    Plan,
    RunRequest,
    SanityRequest,
    ScoreRequest,
    TopRequest,
)
from featviz.sinks.options import OutputRequest


class _Commands(HelpGroup):
    """Typer's command group, telling a bad option like every other error: one line, a hint.

    Click would print a usage block and a boxed, wrapped message; a log or a shell loop wants the
    same ``Error: …`` line that featviz's own usage errors give (exit 2 either way).
    """

    def invoke(self, ctx: typer.Context) -> object:
        try:
            return super().invoke(ctx)
        except typer.TyperException as exc:  # the base of click's UsageError, BadParameter…
            command = (getattr(exc, "ctx", None) or ctx).command_path
            print(f"Error: {one_line(exc.format_message())}", file=sys.stderr)
            print(f"Hint: see `{command} --help`", file=sys.stderr)
            raise typer.Exit(exc.exit_code) from None


_HELP_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": MAX_HELP_WIDTH}

app = typer.Typer(
    name="featviz",
    cls=_Commands,
    help="See what a vision model sees: feature-map grids and class-activation maps, for "
    "convolutional networks and vision transformers alike.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: see cli_help.py
    context_settings=_HELP_SETTINGS,
)


class Order(str, Enum):
    index = "index"
    activation = "activation"


CmapOpt = Annotated[str, typer.Option(metavar="NAME", help="matplotlib colormap of the heatmap.")]
AlphaOpt = Annotated[
    float,
    typer.Option(
        min=0.0,
        max=1.0,
        metavar="FLOAT",
        help="Heatmap opacity over the image: 0 = image only, 1 = heatmap only.",
    ),
]
CellOpt = Annotated[
    int,
    typer.Option(
        min=1,
        metavar="PIXELS",
        help="Smallest cell side in pixels; small maps are enlarged nearest-neighbour.",
    ),
]
_LAYER_HELP = "Layer name or glob (`*` within a name part, `**` across); repeatable."
_STRUCTURE_ONLY = "the structure is built on the meta device, without weights"


def _version(value: bool) -> None:
    if value:
        typer.echo(f"featviz {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Show the version and exit."
        ),
    ] = False,
) -> None:
    """See what a vision model sees."""


@app.command(cls=HelpCommand)
@shared_options()
def maps(
    run: RunRequest,
    layer: Annotated[
        list[str] | None,
        typer.Option(
            "--layer", "-l", metavar="NAME", help=_LAYER_HELP, show_default="every Conv2d"
        ),
    ] = None,
    max_channels: Annotated[
        int, typer.Option(min=1, metavar="N", help="Channels drawn per layer.")
    ] = 64,
    order: Annotated[
        Order,
        typer.Option(
            metavar=choices(Order),
            help="Which channels: the first ones, or those with the highest mean activation.",
        ),
    ] = Order.index,
    cmap: Annotated[str, typer.Option(metavar="NAME", help="matplotlib colormap.")] = "gray",
    cell_size: CellOpt = 64,
    save_raw: Annotated[
        bool, typer.Option(help="Also write each layer's activations .npy.")
    ] = False,
    model: ModelRequest = None,
    output: OutputRequest = None,
    report: Report = None,
) -> None:
    """Feature-map grids: one PNG per image × layer (default: every Conv2d).

    Example: featviz maps -m resnet50 -l layer1 -l 'layer4.*' photos/cat.jpg -o out/
    """
    with errors():
        from featviz.run.prepare import prepare

        request = MapsRequest(
            layers=tuple(layer or ()),
            max_channels=max_channels,
            order=order.value,
            cmap=cmap,
            cell_size=cell_size,
            save_raw=save_raw,
        )
        stream(prepare(Plan("maps", model, output, request, run)), report)


@app.command(cls=MethodsHelpCommand)
@shared_options()
def cam(
    run: RunRequest,
    explaining: Explaining = None,
    fuse: Annotated[
        bool, typer.Option(help="With several layers, also their fusion (element-wise max).")
    ] = False,
    cmap: CmapOpt = "jet",
    alpha: AlphaOpt = 0.5,
    heatmap: Annotated[bool, typer.Option(help="Also write the bare heatmap PNG.")] = False,
    save_raw: Annotated[
        bool,
        typer.Option(help="Also write .npz: layer_cam (h, w) raw map, heatmap (H, W) in [0, 1]."),
    ] = False,
    model: ModelRequest = None,
    output: OutputRequest = None,
    report: Report = None,
) -> None:
    """Class-activation maps over the original image (default: Grad-CAM, top-1 class).

    Example: featviz cam -m resnet50 -M gradcam++ -t tabby -t 'tiger cat' cat.jpg
    """
    with errors():
        from featviz.run.prepare import prepare

        request = CamRequest(
            **explaining.fields(("gradcam",)),
            fuse=fuse,
            cmap=cmap,
            alpha=alpha,
            heatmap=heatmap,
            save_raw=save_raw,
        )
        stream(prepare(Plan("cam", model, output, request, run)), report)


@app.command(cls=MethodsHelpCommand)
@shared_options(methods=JUDGED_METHODS)
def compare(
    run: RunRequest,
    explaining: Explaining = None,
    cmap: CmapOpt = "jet",
    alpha: AlphaOpt = 0.5,
    model: ModelRequest = None,
    output: OutputRequest = None,
    report: Report = None,
) -> None:
    """Methods side by side: one labelled panel per image, <rel>/compare.png.

    Rows are methods, columns layers × classes; one forward (and one
    backward per class) serves every method.

    Example: featviz compare -m resnet50 --top-k 2 photos/
    """
    with errors():
        from featviz.run.prepare import prepare

        request = CompareRequest(**explaining.fields(JUDGED_METHODS), cmap=cmap, alpha=alpha)
        stream(prepare(Plan("compare", model, output, request, run)), report)


@app.command(cls=MethodsHelpCommand)
@shared_options(methods=JUDGED_METHODS)
def score(
    run: RunRequest,
    explaining: Explaining = None,
    steps: Annotated[
        int,
        typer.Option(
            min=1, metavar="N", help="Deletion/insertion: pixels removed in this many steps."
        ),
    ] = 20,
    score_batch_size: Annotated[
        int | None,
        typer.Option(
            min=1,
            metavar="N",
            help="Perturbed inputs per forward (large batches are slower on a CPU).",
            show_default="8 on CPU, 64 on CUDA",
        ),
    ] = None,
    model: ModelRequest = None,
    output: OutputRequest = None,
    report: Report = None,
) -> None:
    """How faithful each map is, against random and centred baselines.

    Average drop, increase in confidence, deletion and insertion AUC
    (Petsiuk et al. 2018), ROAD MoRF/LeRF (Rong et al. 2022). One --json
    row per image × method × layer × class; score.csv, score.png (mean
    curves) and a table of means ± standard errors at the end. Lower is
    better for average drop, deletion and MoRF; higher for the rest.

    Example: featviz score -m resnet50 photos/ -o scores/
    """
    with errors():
        from featviz.run.prepare import prepare

        request = ScoreRequest(
            **explaining.fields(JUDGED_METHODS),
            steps=steps,
            score_batch_size=score_batch_size,
            seed=model.seed,  # --seed: also the random baseline's and ROAD's noise
        )
        stream(prepare(Plan("score", model, output, request, run)), report)


@app.command(cls=MethodsHelpCommand)
@shared_options(methods=JUDGED_METHODS)
def sanity(
    run: RunRequest,
    explaining: Explaining = None,
    model: ModelRequest = None,
    output: OutputRequest = None,
    report: Report = None,
) -> None:
    """The sanity check: maps as the model's blocks are re-initialised from the top.

    Cascading randomisation (Adebayo et al. 2018): Spearman correlation
    and SSIM with the trained model's map after each block;
    <rel>/sanity.png, sanity.csv, sanity.png (correlation per step).

    Example: featviz sanity -m resnet50 photo.jpg
    """
    with errors():
        from featviz.run.prepare import prepare

        # --seed: also the re-initialised weights'
        request = SanityRequest(**explaining.fields(JUDGED_METHODS), seed=model.seed)
        stream(prepare(Plan("sanity", model, output, request, run)), report)


class Stat(str, Enum):
    max = "max"
    mean = "mean"


@app.command(cls=HelpCommand)
@shared_options(ignored={"skip_existing": "a ranking needs every image"})
def top(
    run: RunRequest,
    layer: Annotated[list[str], typer.Option("--layer", "-l", metavar="NAME", help=_LAYER_HELP)],
    k: Annotated[int, typer.Option("-k", min=1, metavar="N", help="Images kept per channel.")] = 9,
    channels: Annotated[
        str | None,
        typer.Option(
            metavar="LIST",
            help="Channels to rank, e.g. 0-63 or 3,7,40-47.",
            show_default="every channel",
        ),
    ] = None,
    stat: Annotated[
        Stat,
        typer.Option(
            metavar=choices(Stat),
            help="A channel's score on an image: its maximum over positions, or its mean.",
        ),
    ] = Stat.max,
    cell_size: Annotated[
        int, typer.Option(min=16, metavar="PIXELS", help="Side of each example's square cell.")
    ] = 96,
    merge: Annotated[
        bool,
        typer.Option(
            help="Combine the partial results of --shard K/N runs (run the same command line, "
            "--shard replaced by --merge).",
        ),
    ] = False,
    model: ModelRequest = None,
    output: OutputRequest = None,
    report: Report = None,
) -> None:
    """Per channel, the k images that excite it most, and where.

    Writes top/<model>/<layer>.json (per channel the ranked inputs,
    scores, positions on the layer's grid and boxes in the image's
    pixels), <layer>.png (every channel's best crop) and
    <layer>/<channel>.png (a channel's k receptive-field crops).

    Example: featviz top -m resnet50 -l layer3 -k 9 --channels 0-63 photos/
    """
    with errors():
        from featviz.features.top import parse_channels
        from featviz.run.prepare import prepare

        request = TopRequest(
            layers=tuple(layer),
            k=k,
            channels=parse_channels(channels) if channels else (),
            stat=stat.value,
            cell_size=cell_size,
            merge=merge,
        )
        stream(prepare(Plan("top", model, output, request, run)), report)


@app.command(cls=HelpCommand)
@shared_options(
    ignored={
        "weights": _STRUCTURE_ONLY,
        "checkpoint": _STRUCTURE_ONLY,
        "labels": "no classes are named",
        "seed": _STRUCTURE_ONLY,
        "device": "nothing runs for real",
        "precision": "nothing runs for real",
        "check_precision": "nothing runs for real",
        "resize": "shapes are for a square input",
    }
)
def layers(model: ModelRequest = None) -> None:
    """Every layer you can tap: name, type, output shape, parameters, CAM use.

    Shapes are for one input of the model's size; no weights are needed or downloaded.

    Example: featviz layers -m resnet50
    """
    with errors():
        from featviz.cli.text import layer_table
        from featviz.run.info import describe_layers

        catalog = describe_layers(model)
        typer.echo(layer_table(catalog.trace, catalog.default, catalog.multiple))


class Source(str, Enum):
    torchvision = "torchvision"
    timm = "timm"
    open_clip = "open_clip"


@app.command(cls=HelpCommand)
def models(
    name_filter: Annotated[
        str | None, typer.Argument(metavar="FILTER", help="Show only names containing this.")
    ] = None,
    source: Annotated[
        Source,
        typer.Option(
            metavar=choices(Source),
            help="Whose models: torchvision's, timm's (as timm/NAME) or OpenCLIP's (as "
            "open_clip/NAME).",
        ),
    ] = Source.torchvision,
) -> None:
    """Model names to pass to --model, with their pretrained weights (or timm's tags).

    Example: featviz models resnet · featviz models --source timm vit_small
    """
    with errors():
        from featviz.cli.text import models_table
        from featviz.run.info import list_models

        entries = list_models(name_filter, source.value)
        if not entries:
            raise FeatvizError(f"no {source.value} model name contains '{name_filter}'")
        typer.echo(models_table(entries))


@app.command(cls=HelpCommand)
@shared_options(
    ignored={
        "labels": "kernels have no classes",
        "device": "kernels are read on the CPU",
        "precision": "kernels are read as stored",
        "check_precision": "kernels are read as stored",
        "input_size": "no image is fed",
        "resize": "no image is fed",
    }
)
def filters(
    layer: Annotated[
        list[str],
        typer.Option(
            "--layer",
            "-l",
            metavar="NAME",
            help="A Conv2d layer, or a glob (its Conv2d matches); repeatable.",
        ),
    ],
    all_inputs: Annotated[
        bool,
        typer.Option(help="One tile per (output, input) kernel instead of the mean over inputs."),
    ] = False,
    cmap: Annotated[str, typer.Option(metavar="NAME", help="Colormap of grey tiles.")] = "gray",
    cell_size: CellOpt = 32,
    model: ModelRequest = None,
    output: OutputRequest = None,
) -> None:
    """The learned Conv2d kernels of some layers, one grid per layer.

    Example: featviz filters -m alexnet -l features.0
    """
    with errors():
        from featviz.inputs.discover import printable
        from featviz.run.filters import render_filters

        request = FiltersRequest(
            layers=tuple(layer), all_inputs=all_inputs, cmap=cmap, cell_size=cell_size
        )
        result = render_filters(Plan("filters", model, output, request))
        for path in result.written:
            typer.echo(f"wrote {printable(path)}")
        if result.skipped:
            shown = ", ".join(result.skipped[:5]) + (", …" if len(result.skipped) > 5 else "")
            print(
                f"Note: skipped {len(result.skipped)} matching layers that are not Conv2d "
                f"({shown})",
                file=sys.stderr,
            )


@app.command(cls=HelpCommand)
@shared_options(
    ignored={
        "precision": "images are optimised in float32",
        "check_precision": "images are optimised in float32",
        "resize": "the network sees square images at its input size",
    }
)
def dream(
    layer: Annotated[
        list[str] | None,
        typer.Option("--layer", "-l", metavar="NAME", help=_LAYER_HELP, show_default="none"),
    ] = None,
    channel: Annotated[
        list[str] | None,
        typer.Option(
            "--channel",
            "-c",
            metavar="N",
            help="Channel of each --layer to maximise: 37, 0-7 or 1,5,9; repeatable.",
            show_default="none",
        ),
    ] = None,
    neuron: Annotated[
        bool,
        typer.Option(help="Maximise each channel at the layer's centre position only."),
    ] = False,
    target: Annotated[
        list[str] | None,
        typer.Option(
            "--target",
            "-t",
            metavar="CLASS",
            help="Class to maximise (its score), by index or name; repeatable.",
            show_default="none",
        ),
    ] = None,
    steps: Annotated[int, typer.Option(min=1, metavar="N", help="Optimisation steps.")] = 256,
    size: Annotated[
        int | None,
        typer.Option(
            min=8,
            metavar="PIXELS",
            help="Side of the images (the network sees them at its input size).",
            show_default="the model's input size",
        ),
    ] = None,
    lr: Annotated[float, typer.Option(min=1e-6, metavar="FLOAT", help="Adam's step size.")] = 0.05,
    diversity: Annotated[
        int,
        typer.Option(
            min=1, metavar="N", help="Images per objective, pushed apart by a diversity term."
        ),
    ] = 1,
    diversity_weight: Annotated[
        float,
        typer.Option(
            min=0.0, metavar="FLOAT", help="Weight of the diversity term against the objective."
        ),
    ] = 100.0,
    model: ModelRequest = None,
    output: OutputRequest = None,
    report: Report = None,
) -> None:
    """Images optimised to excite channels of a layer, or classes, all in one batch.

    Fourier-space images with decorrelated colour, a random shift, zoom
    and turn at every step, Adam; seeded by --seed. One PNG per image
    under dream/<model>/, a labelled grid runs/<run>/dream.png.

    Example: featviz dream -m resnet50 -l layer3 -c 0-7 · featviz dream -m resnet50 -t tabby
    """
    with errors():
        import json

        from featviz.cli.text import dream_line
        from featviz.inputs.discover import printable
        from featviz.run.dream import run_dream

        request = DreamRequest(
            layers=tuple(layer or ()),
            channels=tuple(channel or ()),
            neuron=neuron,
            targets=tuple(target or ()),
            steps=steps,
            size=size,
            learning_rate=lr,
            diversity=diversity,
            diversity_weight=diversity_weight,
            seed=model.seed,  # --seed: the images' start and their random views
        )
        shown = not (report.quiet or report.json_lines)
        with steps_progress(steps, shown=shown) as progress:
            result = run_dream(Plan("dream", model, output, request), progress)
        for row, path in zip(result.rows, result.written):
            if report.json_lines:
                typer.echo(json.dumps(row))
            elif not report.quiet:
                typer.echo(f"wrote {printable(path)}  {dream_line(row)}")
        if not report.json_lines and not report.quiet:
            typer.echo(f"wrote {printable(result.written[-1])}")


worker_app = typer.Typer(
    cls=_Commands,
    help="A background process that keeps torch and recent models loaded, so that featviz calls "
    "from shell loops stop paying start-up. While it runs, every featviz call of this user and "
    "environment uses it (FEATVIZ_WORKER=off: never; =auto: start it on first use).",
    no_args_is_help=True,
    rich_markup_mode=None,
    context_settings=_HELP_SETTINGS,
)
app.add_typer(worker_app, name="worker")


@worker_app.command("start", cls=HelpCommand)
def worker_start() -> None:
    """Start this environment's worker (if none runs) and wait until it answers."""
    with errors():
        from featviz.cli.launch import SERVER
        from featviz.worker import control

        where = _worker_place()
        started = control.start(where, SERVER)
        if started.problem:
            raise FeatvizError(f"the featviz worker did not start: {started.problem}")
        started.connection.close()
        typer.echo(f"featviz worker running (pid {started.pid}); featviz calls now use it")
        if os.environ.get("FEATVIZ_WORKER", "").lower() == "off":
            print("Note: FEATVIZ_WORKER=off: calls of this shell bypass it", file=sys.stderr)


@worker_app.command("stop", cls=HelpCommand)
def worker_stop() -> None:
    """Stop the worker once its current call has finished (calls queued behind run without it)."""
    with errors():
        from featviz.worker import control

        pid = control.stop(_worker_place())
        typer.echo("no featviz worker was running" if pid is None else f"stopped (pid {pid})")


@worker_app.command("status", cls=HelpCommand)
def worker_status(
    json_out: Annotated[
        bool, typer.Option("--json", help="The status as one JSON object.")
    ] = False,
) -> None:
    """Whether a worker runs here, and what it holds: calls, memory, the models it keeps."""
    with errors():
        import json

        from featviz.cli.text import worker_status_text
        from featviz.worker import control

        state = control.status(_worker_place())
        if json_out:
            typer.echo(json.dumps(state or {"running": False}))
        else:
            typer.echo(worker_status_text(state))


def _worker_place():
    from featviz.worker.client import SUPPORTED
    from featviz.worker.place import UnsafeFolder, place

    if not SUPPORTED:
        raise FeatvizError(
            "the warm worker needs Linux (it checks each caller's user with SO_PEERCRED)",
            hint="featviz runs the same without it",
        )
    try:
        return place()
    except UnsafeFolder as exc:
        raise FeatvizError(
            f"cannot use the worker's folder: {exc}",
            hint="set XDG_RUNTIME_DIR to a short folder that only you can enter",
        ) from None


def main() -> None:
    """The in-process command line (cli/launch.py calls it when no worker takes the call). Leaves
    through ``os._exit`` once everything is written and flushed: the interpreter's normal exit
    tears torch down for about 1 s, which every call of a shell loop would pay (one-image
    ``featviz cam``: 5.7 → 4.4 s). featviz registers no atexit work, and every file is closed
    and renamed by then."""
    os._exit(run_command(sys.argv[1:]))


def run_command(args: list[str], prog_name: str | None = None) -> int:
    """Run one command line to its end and return its exit code, stdout and stderr flushed:
    the console script's and the warm worker's way in."""
    try:
        click_command().main(args=args, prog_name=prog_name)
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    for stream_ in (sys.stdout, sys.stderr):
        # A closed pipe (`featviz … | head`) has nothing left to flush.
        with contextlib.suppress(OSError, ValueError):
            stream_.flush()
    return code


@functools.cache
def click_command() -> HelpGroup:
    """Typer builds the click command anew on every ``app()``; a worker builds it once."""
    return typer.main.get_command(app)
