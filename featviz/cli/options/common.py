"""Options that several commands declare alike, outside the shared groups: one wording each."""

from __future__ import annotations

from typing import Annotated

import typer

LAYER_HELP = "Layer name or glob (`*` within a name part, `**` across); repeatable."

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
