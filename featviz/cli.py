"""The ``featviz`` command line: parse options, call one runner function, report, exit.

Only this module and terminal.py (streaming, progress, the error funnel) import typer or print.
Exit codes: 0 all done · 1 some inputs failed or the run failed · 2 usage error · 130/143
interrupted by SIGINT/SIGTERM. Nothing here imports torch at module level: ``featviz --help``
and shell loops stay cheap.
"""

from __future__ import annotations

import contextlib
import os
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from typer.core import TyperGroup

from featviz import __version__
from featviz.cam.registry import method_info, method_names
from featviz.errors import FeatvizError
from featviz.terminal import errors, one_line, stream


class _Commands(TyperGroup):
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


app = typer.Typer(
    name="featviz",
    cls=_Commands,
    help="See what a convolutional network sees: feature-map grids and class-activation maps.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


class Resize(str, Enum):
    keep = "keep"
    square = "square"


class Order(str, Enum):
    index = "index"
    activation = "activation"


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"
    mps = "mps"


Method = Enum("Method", {name: name for name in method_names()}, type=str)  # one registry

MODEL = "Model"
INPUT = "Input and output"
ModelOpt = Annotated[
    str,
    typer.Option(
        "--model",
        "-m",
        rich_help_panel=MODEL,
        help=(
            "torchvision model name (see `featviz models`), or your own as file.py:callable or "
            "package.module:callable."
        ),
    ),
]
WeightsOpt = Annotated[
    str,
    typer.Option(
        rich_help_panel=MODEL,
        help=("DEFAULT, a weights name (IMAGENET1K_V1), or none for seeded random initialisation."),
    ),
]
CheckpointOpt = Annotated[
    Path | None,
    typer.Option(
        rich_help_panel=MODEL,
        help=(
            "State-dict file to load (nested under state_dict/model and module. prefixes are fine)."
        ),
    ),
]
NumClassesOpt = Annotated[
    int | None, typer.Option(min=1, rich_help_panel=MODEL, help="Classes of a fine-tuned head.")
]
LabelsOpt = Annotated[
    str | None,
    typer.Option(
        rich_help_panel=MODEL,
        help=("Class names: imagenet, or a text file with one name per line."),
    ),
]
SeedOpt = Annotated[int, typer.Option(rich_help_panel=MODEL, help="Seed of random init.")]
DeviceOpt = Annotated[
    Device, typer.Option(rich_help_panel=MODEL, help=("auto = cuda when available, else cpu."))
]
InputSizeOpt = Annotated[
    int | None,
    typer.Option(
        min=8,
        rich_help_panel=MODEL,
        help=("Shorter side fed to the network [default: the weights' own size, or 224]."),
    ),
]
InputsArg = Annotated[
    list[str],
    typer.Argument(
        help=("Image files, folders, glob patterns, or - to read paths from stdin."),
        show_default=False,
    ),
]
RecursiveOpt = Annotated[
    bool, typer.Option("--recursive", "-r", rich_help_panel=INPUT, help="Look into sub-folders.")
]
ResizeOpt = Annotated[
    Resize,
    typer.Option(
        rich_help_panel=INPUT,
        help=(
            "keep: shorter side = input size, aspect kept; square: squash to input × input. "
            "Never crops."
        ),
    ),
]
MaxPixelsOpt = Annotated[
    int | None,
    typer.Option(
        min=1,
        rich_help_panel=INPUT,
        help=(
            "Refuse images above this many pixels (decompression-bomb guard) [default: 178956970]."
        ),
    ),
]
OutOpt = Annotated[Path, typer.Option("--out", "-o", rich_help_panel=INPUT, help="Output folder.")]
BatchOpt = Annotated[
    int | None,
    typer.Option(
        min=1, rich_help_panel=INPUT, help=("Images per forward [default: 8 on CPU, 32 on CUDA].")
    ),
]
SkipOpt = Annotated[
    bool,
    typer.Option(
        rich_help_panel=INPUT,
        help=("Skip images whose outputs from the same options all exist (resume a run)."),
    ),
]
JsonOpt = Annotated[
    bool,
    typer.Option(
        "--json",
        rich_help_panel=INPUT,
        help=("One JSON object per image on stdout, nothing else there."),
    ),
]
QuietOpt = Annotated[
    bool,
    typer.Option(
        "--quiet",
        "-q",
        rich_help_panel=INPUT,
        help=("No progress bar, per-image lines or summary; errors still go to stderr."),
    ),
]
LayerOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--layer",
        "-l",
        help=("Layer name or glob (`*` within a name part, `**` across); repeatable."),
    ),
]
CellOpt = Annotated[
    int,
    typer.Option(
        min=1, help="Smallest cell side in pixels; small maps are enlarged nearest-neighbour."
    ),
]


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
    """See what a convolutional network sees."""


def _model(model, weights, checkpoint, num_classes, labels, seed, device, input_size):
    from featviz.runner import ModelChoice

    return ModelChoice(
        model, weights, checkpoint, num_classes, labels, seed, device.value, input_size
    )


@app.command()
def maps(
    inputs: InputsArg,
    layer: LayerOpt = None,
    max_channels: Annotated[int, typer.Option(min=1, help="Channels drawn per layer.")] = 64,
    order: Annotated[
        Order,
        typer.Option(
            help=("Which channels: the first ones, or those with the highest mean activation.")
        ),
    ] = Order.index,
    cmap: Annotated[str, typer.Option(help="matplotlib colormap.")] = "gray",
    cell_size: CellOpt = 64,
    save_raw: Annotated[
        bool, typer.Option(help="Also write each layer's activations .npy.")
    ] = False,
    model: ModelOpt = "alexnet",
    weights: WeightsOpt = "DEFAULT",
    checkpoint: CheckpointOpt = None,
    num_classes: NumClassesOpt = None,
    labels: LabelsOpt = None,
    seed: SeedOpt = 0,
    device: DeviceOpt = Device.auto,
    input_size: InputSizeOpt = None,
    recursive: RecursiveOpt = False,
    resize: ResizeOpt = Resize.keep,
    max_pixels: MaxPixelsOpt = None,
    out: OutOpt = Path("featviz-out"),
    batch_size: BatchOpt = None,
    skip_existing: SkipOpt = False,
    json_lines: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Feature-map grids: one PNG per image × layer (default: every Conv2d).

    Example: featviz maps -m resnet50 -l layer1 -l 'layer4.*' photos/cat.jpg -o out/
    """
    with errors():
        from featviz.runner import InputChoice, prepare_maps

        run = prepare_maps(
            _model(model, weights, checkpoint, num_classes, labels, seed, device, input_size),
            InputChoice(
                inputs, recursive, resize.value, max_pixels, out, batch_size, skip_existing
            ),
            layer or [],
            {
                "max_channels": max_channels,
                "order": order.value,
                "cmap": cmap,
                "cell_size": cell_size,
                "save_raw": save_raw,
            },
        )
        stream(run, json_lines=json_lines, quiet=quiet)


def _methods_epilog() -> str:
    return "Methods (--method):\n\n" + "\n\n".join(
        f"{name}: {method_info(name).summary}" for name in method_names()
    )


@app.command(epilog=_methods_epilog())
def cam(
    inputs: InputsArg,
    method: Annotated[
        list[Method] | None,
        typer.Option(
            "--method",
            "-M",
            metavar="METHOD",
            help="CAM method, repeatable (listed below) [default: gradcam].",
        ),
    ] = None,
    layer: LayerOpt = None,
    target: Annotated[
        list[str] | None,
        typer.Option(
            "--target",
            "-t",
            help=(
                "Class index or name (case-insensitive, unique prefix ok); repeatable "
                "[default: top-1]."
            ),
        ),
    ] = None,
    top_k: Annotated[int, typer.Option(help="Explain the k most likely classes.")] = 1,
    fuse: Annotated[
        bool, typer.Option(help=("With several layers, also their fusion (element-wise max)."))
    ] = False,
    cmap: Annotated[str, typer.Option(help="matplotlib colormap of the heatmap.")] = "jet",
    alpha: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=1.0,
            help=("Heatmap opacity over the image: 0 = image only, 1 = heatmap only."),
        ),
    ] = 0.5,
    heatmap: Annotated[bool, typer.Option(help="Also write the bare heatmap PNG.")] = False,
    save_raw: Annotated[
        bool,
        typer.Option(help=("Also write .npz: layer_cam (h, w) raw map, heatmap (H, W) in [0, 1].")),
    ] = False,
    cam_batch_size: Annotated[
        int, typer.Option(min=1, help=("Extra forwards per batch for scorecam/ablationcam."))
    ] = 32,
    model: ModelOpt = "alexnet",
    weights: WeightsOpt = "DEFAULT",
    checkpoint: CheckpointOpt = None,
    num_classes: NumClassesOpt = None,
    labels: LabelsOpt = None,
    seed: SeedOpt = 0,
    device: DeviceOpt = Device.auto,
    input_size: InputSizeOpt = None,
    recursive: RecursiveOpt = False,
    resize: ResizeOpt = Resize.keep,
    max_pixels: MaxPixelsOpt = None,
    out: OutOpt = Path("featviz-out"),
    batch_size: BatchOpt = None,
    skip_existing: SkipOpt = False,
    json_lines: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Class-activation maps over the original image (default: Grad-CAM, top-1 class).

    Example: featviz cam -m resnet50 -M gradcam++ -t tabby -t 'tiger cat' cat.jpg
    """
    with errors():
        from featviz.runner import InputChoice, prepare_cam

        methods = list(dict.fromkeys(m.value for m in method)) if method else ["gradcam"]
        run = prepare_cam(
            _model(model, weights, checkpoint, num_classes, labels, seed, device, input_size),
            InputChoice(
                inputs, recursive, resize.value, max_pixels, out, batch_size, skip_existing
            ),
            layer or [],
            target or [],
            {
                "methods": methods,
                "top_k": top_k,
                "fuse": fuse,
                "cmap": cmap,
                "alpha": alpha,
                "heatmap": heatmap,
                "save_raw": save_raw,
                "cam_batch_size": cam_batch_size,
            },
        )
        stream(run, json_lines=json_lines, quiet=quiet)


@app.command()
def layers(
    model: ModelOpt = "alexnet",
    num_classes: NumClassesOpt = None,
    input_size: InputSizeOpt = None,
) -> None:
    """Every layer you can tap: name, type, output shape, parameters, CAM use.

    Shapes are for one input of the model's size; no weights are needed or downloaded.

    Example: featviz layers -m resnet50
    """
    with errors():
        from featviz.runner import describe_layers

        typer.echo(describe_layers(model, num_classes, input_size))


@app.command()
def models(
    name_filter: Annotated[
        str | None, typer.Argument(metavar="[FILTER]", help="Show only names containing this.")
    ] = None,
) -> None:
    """torchvision classification models and their weights.

    Example: featviz models resnet
    """
    with errors():
        from featviz.report import models_table
        from featviz.runner import list_models

        entries = list_models(name_filter)
        if not entries:
            raise FeatvizError(f"no torchvision model name contains '{name_filter}'")
        typer.echo(models_table(entries))


@app.command()
def filters(
    layer: Annotated[str, typer.Option("--layer", "-l", help="A Conv2d layer.")],
    all_inputs: Annotated[
        bool,
        typer.Option(help=("One tile per (output, input) kernel instead of the mean over inputs.")),
    ] = False,
    cmap: Annotated[str, typer.Option(help="Colormap of grey tiles.")] = "gray",
    cell_size: CellOpt = 32,
    model: ModelOpt = "alexnet",
    weights: WeightsOpt = "DEFAULT",
    checkpoint: CheckpointOpt = None,
    num_classes: NumClassesOpt = None,
    seed: SeedOpt = 0,
    out: OutOpt = Path("featviz-out"),
) -> None:
    """The learned Conv2d kernels of one layer as a grid.

    Example: featviz filters -m alexnet -l features.0
    """
    with errors():
        from featviz.runner import render_filters

        path = render_filters(
            _model(model, weights, checkpoint, num_classes, None, seed, Device.cpu, None),
            layer,
            out=out,
            all_inputs=all_inputs,
            cmap=cmap,
            cell_size=cell_size,
        )
        typer.echo(f"wrote {path}")


def main() -> None:
    """The console script. Leaves through ``os._exit`` once everything is written and flushed:
    the interpreter's normal exit tears torch down for about 1 s, which every call of a shell
    loop would pay (one-image ``featviz cam``: 5.7 → 4.4 s). featviz registers no atexit work,
    and every file is closed and renamed by then."""
    try:
        app()
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    for stream_ in (sys.stdout, sys.stderr):
        # A closed pipe (`featviz … | head`) has nothing left to flush.
        with contextlib.suppress(OSError, ValueError):
            stream_.flush()
    os._exit(code)
