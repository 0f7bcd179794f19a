"""What cam, compare, score and sanity explain (--method, --layer, --target, --top-k…): their
options, declared once, and their packing into ``Explaining``."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from featviz.cam.registry import ALL, method_names
from featviz.cli.options.common import LAYER_HELP
from featviz.cli.options.panels import Declared
from featviz.tasks.detection import DEFAULT_MIN_SCORE


@dataclass(frozen=True)
class Explaining:
    """What to explain, as cam, compare, score and sanity all take it (their requests add the
    rest). ``methods`` is empty when --method was not given: the command's default then."""

    methods: tuple[str, ...]
    layers: tuple[str, ...]
    targets: tuple[str, ...]
    top_k: int | None
    cam_batch_size: int
    target_fn: str | None
    min_score: float | None
    prompts: Path | None = None

    def fields(self, default_methods: tuple[str, ...]) -> dict[str, Any]:
        """The keyword arguments of an ExplainRequest subclass."""
        return {
            "methods": self.methods or default_methods,
            "layers": self.layers,
            "targets": self.targets,
            "top_k": self.top_k,
            "cam_batch_size": self.cam_batch_size,
            "target_fn": self.target_fn,
            "min_score": self.min_score,
            "prompts": self.prompts,
        }


Method = Enum("Method", {name: name for name in (*method_names(), ALL)}, type=str)
EXPLAIN_OPTIONS: Declared = {
    "method": (
        Annotated[
            list[Method] | None,
            typer.Option(
                "--method",
                "-M",
                metavar="METHOD",
                show_default="gradcam",
                help="CAM method, repeatable (listed below); all: every one that applies.",
            ),
        ],
        None,
    ),
    "layer": (
        Annotated[
            list[str] | None,
            typer.Option(
                "--layer",
                "-l",
                metavar="NAME",
                help=LAYER_HELP,
                show_default="the last convolutional stage",
            ),
        ],
        None,
    ),
    "target": (
        Annotated[
            list[str] | None,
            typer.Option(
                "--target",
                "-t",
                metavar="CLASS",
                show_default="the top-1 class",
                help="Class index or name (any case): exact, or whole words of just one name; "
                "text:PROMPT for a CLIP-style model; repeatable.",
            ),
        ],
        None,
    ),
    "top_k": (
        Annotated[
            int | None,
            typer.Option(
                metavar="K",
                help="Explain the k most likely classes (a detector's k best boxes).",
                show_default="1; a detector: every box of at least --min-score",
            ),
        ],
        None,
    ),
    "min_score": (
        Annotated[
            float | None,
            typer.Option(
                min=0.0,
                max=1.0,
                metavar="SCORE",
                help="A detection model's boxes to explain: those scoring at least this.",
                show_default=str(DEFAULT_MIN_SCORE),
            ),
        ],
        None,
    ),
    "cam_batch_size": (
        Annotated[
            int,
            typer.Option(
                min=1,
                metavar="N",
                help="Rows per extra forward (scorecam, ablationcam, occlusion, integrated "
                "gradients, smoothgrad).",
            ),
        ],
        32,
    ),
    "target_fn": (
        Annotated[
            str | None,
            typer.Option(
                metavar="FILE.py:FN",
                show_default="the classes",
                help="Your own score to explain: FN(output) → one value per image, from the "
                "model's raw output (a tensor, tuple, dict or object); FILE.py:FN or "
                "package.module:FN. Replaces --target and --top-k.",
            ),
        ],
        None,
    ),
    "prompts": (
        Annotated[
            Path | None,
            typer.Option(
                metavar="FILE",
                show_default="the classes",
                help="A CLIP-style model as a zero-shot classifier over FILE's prompts, one a "
                "line: --top-k and --target pick among them.",
            ),
        ],
        None,
    ),
}


def explaining(values: dict[str, Any]) -> Explaining:
    """The values of ``EXPLAIN_OPTIONS``; a method given twice counts once."""
    methods = tuple(dict.fromkeys(m.value for m in values["method"] or ()))
    return Explaining(
        methods=methods,
        layers=tuple(values["layer"] or ()),
        targets=tuple(values["target"] or ()),
        top_k=values["top_k"],
        cam_batch_size=values["cam_batch_size"],
        target_fn=values["target_fn"],
        min_score=values["min_score"],
        prompts=values["prompts"],
    )
