"""dream: images optimised to excite a layer's channels, or classes, with a progress bar."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from featviz.cli.options.common import LAYER_HELP
from featviz.cli.options.output import Report
from featviz.cli.options.shared import shared_options
from featviz.cli.terminal import errors, steps_progress
from featviz.model.options import ModelRequest
from featviz.run.plan import DreamRequest, Plan
from featviz.sinks.options import OutputRequest

if TYPE_CHECKING:
    from featviz.run.dream import DreamResult


# The options whose declarations span lines, named so that the signature reads as a list.
_LayerOpt = Annotated[
    list[str] | None,
    typer.Option("--layer", "-l", metavar="NAME", help=LAYER_HELP, show_default="none"),
]
_ChannelOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--channel",
        "-c",
        metavar="N",
        help="Channel of each --layer to maximise: 37, 0-7 or 1,5,9; repeatable.",
        show_default="none",
    ),
]
_NeuronOpt = Annotated[
    bool,
    typer.Option(help="Maximise each channel at the layer's centre position only."),
]
_TargetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--target",
        "-t",
        metavar="CLASS",
        help="Class to maximise (its score), by index or name; repeatable.",
        show_default="none",
    ),
]
_SizeOpt = Annotated[
    int | None,
    typer.Option(
        min=8,
        metavar="PIXELS",
        help="Side of the images (the network sees them at its input size).",
        show_default="the model's input size",
    ),
]
_DiversityOpt = Annotated[
    int,
    typer.Option(
        min=1, metavar="N", help="Images per objective, pushed apart by a diversity term."
    ),
]
_DiversityWeightOpt = Annotated[
    float,
    typer.Option(
        min=0.0, metavar="FLOAT", help="Weight of the diversity term against the objective."
    ),
]


@shared_options(
    ignored={
        "precision": "images are optimised in float32",
        "check_precision": "images are optimised in float32",
        "resize": "the network sees square images at its input size",
    }
)
def dream(
    layer: _LayerOpt = None,
    channel: _ChannelOpt = None,
    neuron: _NeuronOpt = False,
    target: _TargetOpt = None,
    steps: Annotated[int, typer.Option(min=1, metavar="N", help="Optimisation steps.")] = 256,
    size: _SizeOpt = None,
    lr: Annotated[float, typer.Option(min=1e-6, metavar="FLOAT", help="Adam's step size.")] = 0.05,
    diversity: _DiversityOpt = 1,
    diversity_weight: _DiversityWeightOpt = 100.0,
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
        _show(result, report)


def _show(result: DreamResult, report: Report) -> None:
    """One line per image written (its JSON row with --json), then the grid's path."""
    import json

    from featviz.cli.text import dream_line
    from featviz.inputs.printable import printable

    for row, path in zip(result.rows, result.written):
        if report.json_lines:
            typer.echo(json.dumps(row))
        elif not report.quiet:
            typer.echo(f"wrote {printable(path)}  {dream_line(row)}")
    if not report.json_lines and not report.quiet:
        typer.echo(f"wrote {printable(result.written[-1])}")
