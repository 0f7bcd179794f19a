"""layers and models: what a model is made of, and which models there are, as tables."""

from __future__ import annotations

from enum import Enum
from typing import Annotated

import typer

from featviz.cli.help import choices
from featviz.cli.options.shared import shared_options
from featviz.cli.terminal import errors
from featviz.errors import FeatvizError
from featviz.model.options import ModelRequest

_STRUCTURE_ONLY = "the structure is built on the meta device, without weights"


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
