"""The model options (--model, --weights, --device, --input-size…), which every command takes
alike, and their packing into a ``ModelRequest``."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Any

from featviz.cli.help import choices
from featviz.cli.options.panels import MODEL_PANEL, Declared, option
from featviz.model.options import ModelRequest


class Resize(str, Enum):
    keep = "keep"
    square = "square"


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"
    mps = "mps"


class PrecisionChoice(str, Enum):
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


# name → (annotation, default); the order is the order in --help.
MODEL_OPTIONS: Declared = {
    "model": (
        Annotated[
            str,
            option(
                "--model",
                "-m",
                panel=MODEL_PANEL,
                metavar="NAME",
                help="torchvision model name (see `featviz models`), timm/NAME[.TAG], "
                "hf:REPO_ID or hf:DIR, open_clip/NAME, or your own as file.py:callable or "
                "package.module:callable.",
            ),
        ],
        "alexnet",
    ),
    "weights": (
        Annotated[
            str,
            option(
                panel=MODEL_PANEL,
                metavar="NAME",
                help="DEFAULT, a weights name (IMAGENET1K_V1), or none for seeded random "
                "initialisation.",
            ),
        ],
        "DEFAULT",
    ),
    "checkpoint": (
        Annotated[
            Path | None,
            option(
                panel=MODEL_PANEL,
                metavar="FILE",
                show_default="none",
                help="State-dict file to load (nested under state_dict/model and module. "
                "prefixes are fine).",
            ),
        ],
        None,
    ),
    "num_classes": (
        Annotated[
            int | None,
            option(
                min=1,
                panel=MODEL_PANEL,
                metavar="N",
                show_default="the model's own",
                help="Classes of a fine-tuned head.",
            ),
        ],
        None,
    ),
    "labels": (
        Annotated[
            str | None,
            option(
                panel=MODEL_PANEL,
                metavar="imagenet|FILE",
                show_default="the weights' own names",
                help="Class names: imagenet, or a text file with one name per line.",
            ),
        ],
        None,
    ),
    "seed": (
        Annotated[
            int,
            option(
                panel=MODEL_PANEL,
                metavar="N",
                help="Seed of random init (and of score's random baseline and ROAD noise, "
                "sanity's re-initialisation, dream's images).",
            ),
        ],
        0,
    ),
    "device": (
        Annotated[
            Device,
            option(
                panel=MODEL_PANEL,
                metavar=choices(Device),
                help="auto = cuda when available, else cpu.",
            ),
        ],
        Device.auto,
    ),
    "precision": (
        Annotated[
            PrecisionChoice,
            option(
                panel=MODEL_PANEL,
                metavar=choices(PrecisionChoice),
                help="The model's forwards under autocast: bf16 (CPU or CUDA) or fp16 (CUDA); "
                "maps are still computed in float32.",
            ),
        ],
        PrecisionChoice.fp32,
    ),
    "check_precision": (
        Annotated[
            bool,
            option(
                panel=MODEL_PANEL,
                help="Run the first batch in fp32 too and say how many top-1 classes changed.",
            ),
        ],
        False,
    ),
    "input_size": (
        Annotated[
            int | None,
            option(
                min=8,
                panel=MODEL_PANEL,
                metavar="PIXELS",
                show_default="the weights' own size, or 224",
                help="Shorter side fed to the network.",
            ),
        ],
        None,
    ),
    "resize": (
        Annotated[
            Resize,
            option(
                panel=MODEL_PANEL,
                metavar=choices(Resize),
                help="keep: shorter side = input size, aspect kept; square: squash to "
                "input × input. Never crops.",
            ),
        ],
        Resize.keep,
    ),
}


def model_request(values: dict[str, Any]) -> ModelRequest:
    """The values of ``MODEL_OPTIONS``, as the model's request."""
    return ModelRequest(
        spec=values["model"],
        weights=values["weights"],
        checkpoint=values["checkpoint"],
        num_classes=values["num_classes"],
        labels=values["labels"],
        seed=values["seed"],
        device=values["device"].value,
        precision=values["precision"].value,
        check_precision=values["check_precision"],
        input_size=values["input_size"],
        resize=values["resize"].value,
    )
