"""Where results go: the output folder and its pictures (packed into an ``OutputRequest``), and
how they are shown on the terminal (``Report``, part of no request: outputs do not change)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

from featviz.cli.help import choices
from featviz.cli.options.panels import OUTPUT_PANEL, Declared, option
from featviz.sinks.options import OutputRequest


@dataclass(frozen=True)
class Report:
    """How results are shown on the terminal (not part of any request: outputs do not change)."""

    json_lines: bool = False
    quiet: bool = False


class ImageFormatChoice(str, Enum):
    png = "png"
    jpg = "jpg"
    webp = "webp"


OUTPUT_OPTIONS: Declared = {
    "out": (
        Annotated[
            Path, option("--out", "-o", panel=OUTPUT_PANEL, metavar="DIR", help="Output folder.")
        ],
        Path("featviz-out"),
    ),
    "tensorboard": (
        Annotated[
            Path | None,
            option(
                panel=OUTPUT_PANEL,
                show_default="none",
                metavar="DIR",
                help="Also write TensorBoard event files there (needs featviz[tensorboard]); "
                "steps are the images' positions in the run.",
            ),
        ],
        None,
    ),
    "gallery": (
        Annotated[
            bool,
            option(
                panel=OUTPUT_PANEL,
                help="Write index.html in the output folder: every image's outputs, browsable "
                "offline.",
            ),
        ],
        True,
    ),
    "image_format": (
        Annotated[
            ImageFormatChoice,
            option(
                "--format",
                panel=OUTPUT_PANEL,
                metavar=choices(ImageFormatChoice),
                help="Pictures as PNG (lossless), JPEG or WebP (a few ms each instead of PNG's "
                "deflate); heatmap PNGs and raw arrays stay as they are.",
            ),
        ],
        ImageFormatChoice.png,
    ),
    "quality": (
        Annotated[
            int,
            option(min=1, max=100, panel=OUTPUT_PANEL, metavar="N", help="JPEG / WebP quality."),
        ],
        90,
    ),
}
REPORT_OPTIONS: Declared = {
    "json_lines": (
        Annotated[
            bool,
            option(
                "--json",
                panel=OUTPUT_PANEL,
                help="One JSON object per image on stdout, nothing else there.",
            ),
        ],
        False,
    ),
    "quiet": (
        Annotated[
            bool,
            option(
                "--quiet",
                "-q",
                panel=OUTPUT_PANEL,
                help="No progress bar, per-image lines or summary; errors still go to stderr.",
            ),
        ],
        False,
    ),
}


def output_request(values: dict[str, Any]) -> OutputRequest:
    """The values of ``OUTPUT_OPTIONS``, as the output's request."""
    return OutputRequest(
        out=values["out"],
        tensorboard=values["tensorboard"],
        gallery=values["gallery"],
        image_format=ImageFormatChoice(values["image_format"]).value,
        quality=values["quality"],
    )


def report(values: dict[str, Any]) -> Report:
    """The values of ``REPORT_OPTIONS``."""
    return Report(json_lines=values["json_lines"], quiet=values["quiet"])
