"""The options every command shares, declared once, and the decorator that adds them.

A command asks for ``model: ModelRequest``, ``run: RunRequest``, ``output: OutputRequest`` or
``report: Report`` in its signature; ``shared_options`` replaces each such parameter with the
options it is made of (so ``--help`` shows them under their own heading) and packs them
back into the frozen value before the command runs. Every command thus accepts the same model
options: users paste the same options across commands and scripts. An option a command does
not use is still accepted, and its help says it is ignored there and why.

Defaults that are not a plain value are spelled out with ``show_default`` text, so that every
default reads the same way, ``[default: …]`` after the help; cli_help.py lays the help out.
"""

from __future__ import annotations

import copy
import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from featviz.cam.registry import ALL, method_names
from featviz.cli.help import choices
from featviz.errors import UsageError
from featviz.inputs.limits import DEFAULT_MAX_PIXELS
from featviz.inputs.shards import Shard
from featviz.model.options import ModelRequest
from featviz.run.plan import RayRequest, RunRequest
from featviz.run.sizes import parse_bytes
from featviz.sinks.options import OutputRequest
from featviz.tasks.detection import DEFAULT_MIN_SCORE

MODEL_PANEL = "Model"
INPUT_PANEL = "Input"
OUTPUT_PANEL = "Output"
RAY_PANEL = "Ray cluster"


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


@dataclass(frozen=True)
class Report:
    """How results are shown on the terminal (not part of any request: outputs do not change)."""

    json_lines: bool = False
    quiet: bool = False


def _option(*names: str, panel: str, **kwargs: Any) -> Any:
    return typer.Option(*names, rich_help_panel=panel, **kwargs)


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


class ImageFormatChoice(str, Enum):
    png = "png"
    jpg = "jpg"
    webp = "webp"


# name → (annotation, default); the order is the order in --help.
_MODEL_OPTIONS: dict[str, tuple[Any, Any]] = {
    "model": (
        Annotated[
            str,
            _option(
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
            _option(
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
            _option(
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
            _option(
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
            _option(
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
            _option(
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
            _option(
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
            _option(
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
            _option(
                panel=MODEL_PANEL,
                help="Run the first batch in fp32 too and say how many top-1 classes changed.",
            ),
        ],
        False,
    ),
    "input_size": (
        Annotated[
            int | None,
            _option(
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
            _option(
                panel=MODEL_PANEL,
                metavar=choices(Resize),
                help="keep: shorter side = input size, aspect kept; square: squash to "
                "input × input. Never crops.",
            ),
        ],
        Resize.keep,
    ),
}

_RUN_OPTIONS: dict[str, tuple[Any, Any]] = {
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
            bool, _option("--recursive", "-r", panel=INPUT_PANEL, help="Look into sub-folders.")
        ],
        False,
    ),
    "max_pixels": (
        Annotated[
            int,
            _option(
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
            _option(
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
            _option(
                panel=INPUT_PANEL,
                help="Skip images whose outputs from the same options all exist (resume a run).",
            ),
        ],
        False,
    ),
    "max_memory": (
        Annotated[
            int,
            _option(
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
            _option(
                min=1,
                panel=INPUT_PANEL,
                metavar="N",
                show_default="one per core, 2 to 32",
                help="Threads that decode, and threads that encode and write.",
            ),
        ],
        None,
    ),
    "shard": (
        Annotated[
            Shard | None,
            _option(
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

_RAY_OPTIONS: dict[str, tuple[Any, Any]] = {
    "ray": (
        Annotated[
            str | None,
            _option(
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
            _option(
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
            _option(
                min=0.0, panel=RAY_PANEL, metavar="N", show_default="1", help="CPUs per actor."
            ),
        ],
        None,
    ),
    "ray_gpus": (
        Annotated[
            float | None,
            _option(
                min=0.0, panel=RAY_PANEL, metavar="N", show_default="0", help="GPUs per actor."
            ),
        ],
        None,
    ),
}

_OUTPUT_OPTIONS: dict[str, tuple[Any, Any]] = {
    "out": (
        Annotated[
            Path, _option("--out", "-o", panel=OUTPUT_PANEL, metavar="DIR", help="Output folder.")
        ],
        Path("featviz-out"),
    ),
    "tensorboard": (
        Annotated[
            Path | None,
            _option(
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
            _option(
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
            _option(
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
            _option(min=1, max=100, panel=OUTPUT_PANEL, metavar="N", help="JPEG / WebP quality."),
        ],
        90,
    ),
}

Method = Enum("Method", {name: name for name in (*method_names(), ALL)}, type=str)

_EXPLAIN_OPTIONS: dict[str, tuple[Any, Any]] = {
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
                help="Layer name or glob (`*` within a name part, `**` across); repeatable.",
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

_REPORT_OPTIONS: dict[str, tuple[Any, Any]] = {
    "json_lines": (
        Annotated[
            bool,
            _option(
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
            _option(
                "--quiet",
                "-q",
                panel=OUTPUT_PANEL,
                help="No progress bar, per-image lines or summary; errors still go to stderr.",
            ),
        ],
        False,
    ),
}


def _model_request(values: dict[str, Any]) -> ModelRequest:
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


def _run_request(values: dict[str, Any]) -> RunRequest:
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
    asked = {
        name: values[f"ray_{name}"]
        for name in ("actors", "cpus", "gpus")
        if values[f"ray_{name}"] is not None
    }
    if values["ray"] is None:
        if asked:
            option = "--ray-" + next(iter(asked))
            raise typer.BadParameter(f"{option} goes with --ray (auto, local or an address)")
        return None
    return RayRequest(values["ray"], **asked)


def _output_request(values: dict[str, Any]) -> OutputRequest:
    return OutputRequest(
        out=values["out"],
        tensorboard=values["tensorboard"],
        gallery=values["gallery"],
        image_format=ImageFormatChoice(values["image_format"]).value,
        quality=values["quality"],
    )


def _explaining(values: dict[str, Any]) -> Explaining:
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


def _report(values: dict[str, Any]) -> Report:
    return Report(json_lines=values["json_lines"], quiet=values["quiet"])


_GROUPS: dict[type, tuple[dict[str, tuple[Any, Any]], Callable[[dict[str, Any]], Any]]] = {
    ModelRequest: (_MODEL_OPTIONS, _model_request),
    RunRequest: ({**_RUN_OPTIONS, **_RAY_OPTIONS}, _run_request),
    OutputRequest: (_OUTPUT_OPTIONS, _output_request),
    Explaining: (_EXPLAIN_OPTIONS, _explaining),
    Report: (_REPORT_OPTIONS, _report),
}


def shared_options(
    *, ignored: dict[str, str] | None = None, methods: tuple[str, ...] = ("gradcam",)
) -> Callable[[Callable], Callable]:
    """Replace a command's ``ModelRequest`` / ``RunRequest`` / ``OutputRequest`` /
    ``Explaining`` / ``Report`` parameters by their options. ``ignored`` maps option names this
    command accepts but does not use to why; ``methods`` is the command's default --method,
    shown in its help."""
    ignored = ignored or {}

    def decorate(command: Callable) -> Callable:
        signature = inspect.signature(command, eval_str=True)
        arguments: list[inspect.Parameter] = []
        options: list[inspect.Parameter] = []
        packed: dict[str, type] = {}
        for parameter in signature.parameters.values():
            group = _GROUPS.get(parameter.annotation)
            if group is None:
                # Typer passes everything by keyword; keyword-only lets arguments come first.
                options.append(parameter.replace(kind=inspect.Parameter.KEYWORD_ONLY))
                continue
            packed[parameter.name] = parameter.annotation
            for name, (annotation, default) in group[0].items():
                if name in ignored:
                    annotation = _ignored(annotation, ignored[name])
                if name == "method":
                    annotation = _with_default(annotation, ", ".join(methods))
                added = inspect.Parameter(
                    name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation
                )
                target = arguments if default is inspect.Parameter.empty else options
                target.append(added)
        unknown = set(ignored) - {p.name for p in arguments + options}
        if unknown:
            raise ValueError(f"{command.__name__}: no option {', '.join(sorted(unknown))}")

        @functools.wraps(command)
        def run(**values: Any) -> Any:
            for name, kind in packed.items():
                fields, pack = _GROUPS[kind]
                values[name] = pack({key: values.pop(key) for key in fields})
            return command(**values)

        parameters = arguments + options
        run.__signature__ = signature.replace(parameters=parameters)
        run.__annotations__ = {p.name: p.annotation for p in parameters}
        return run

    return decorate


def _with_default(annotation: Any, shown: str) -> Any:
    """The same option, showing ``shown`` as its default."""
    base, info = annotation.__origin__, copy.copy(annotation.__metadata__[0])
    info.show_default = shown
    return Annotated[base, info]


def _ignored(annotation: Any, why: str) -> Any:
    """The same option, its help saying that this command ignores it."""
    base, info = annotation.__origin__, copy.copy(annotation.__metadata__[0])
    info.help = f"{info.help} Ignored by this command: {why}."
    return Annotated[base, info]
