"""maps, top and filters: what a layer's channels hold — their activations on an image, the
images that excite each channel most over a dataset, and the learned kernels."""

from __future__ import annotations

import sys
from enum import Enum
from typing import Annotated

import typer

from featviz.cli.help import choices
from featviz.cli.options.common import LAYER_HELP, CellOpt
from featviz.cli.options.output import Report
from featviz.cli.options.shared import shared_options
from featviz.cli.terminal import errors, stream
from featviz.model.options import ModelRequest
from featviz.run.plan import FiltersRequest, MapsRequest, Plan, RunRequest, TopRequest
from featviz.sinks.options import OutputRequest


class Order(str, Enum):
    index = "index"
    activation = "activation"


@shared_options()
def maps(
    run: RunRequest,
    layer: Annotated[
        list[str] | None,
        typer.Option("--layer", "-l", metavar="NAME", help=LAYER_HELP, show_default="every Conv2d"),
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


class Stat(str, Enum):
    max = "max"
    mean = "mean"


@shared_options(ignored={"skip_existing": "a ranking needs every image"})
def top(
    run: RunRequest,
    layer: Annotated[
        list[str],
        typer.Option(
            "--layer",
            "-l",
            metavar="NAME",
            help=f"{LAYER_HELP} Feature maps, tokens, or one value per channel (fc, avgpool).",
        ),
    ],
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
        from featviz.inputs.printable import printable
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
