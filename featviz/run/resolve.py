"""What each command computes, resolved on the loaded model: the layers (``maps``' default:
every convolution), the classes or prompts a command explains (``resolve_explaining``), the
methods a video model's clips can take, and the job class that does the work (``job_type``).
Raises UsageError for what the model cannot do; never prints.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from featviz.errors import UsageError
from featviz.run.plan import Resolved
from featviz.tasks.detection import DEFAULT_MIN_SCORE

if TYPE_CHECKING:
    from featviz.explainer.options import ExplainRequest
    from featviz.model.load import LoadedModel
    from featviz.run.jobs.base import ImageJob
    from featviz.run.plan import MapsRequest, Plan


def check_video_methods(methods: Iterable[str]) -> None:
    """A video model's clips go only to methods that take them (``--method all`` leaves the
    others out on its first batch)."""
    from featviz.cam import load_method
    from featviz.cam.base import video_refusal
    from featviz.cam.registry import ALL

    for name in methods:
        if name != ALL and not load_method(name).takes_clips:
            raise video_refusal(name)


def default_map_layers(model: LoadedModel) -> list[str]:
    """Every Conv2d (a video model's Conv3d) that runs in the forward, as in the classic hook
    tutorial."""
    from torch import nn

    modules = dict(model.module.named_modules())
    convs = [
        layer.name
        for layer in model.trace.cam_candidates()
        if isinstance(modules.get(layer.name), (nn.Conv2d, nn.Conv3d))
    ]
    if not convs:
        raise UsageError(
            "this model has no Conv2d or Conv3d layer to draw",
            hint="pick layers with --layer; see `featviz layers`",
        )
    return convs


def maps_job(request: MapsRequest, loaded: LoadedModel) -> tuple[Resolved, Callable[..., ImageJob]]:
    from featviz.layers.catalog import resolve_layers
    from featviz.run.jobs.maps import MapsJob

    layers = (
        resolve_layers(loaded.trace, list(request.layers), spatial_only=True)
        if request.layers
        else default_map_layers(loaded)
    )
    return Resolved(layers), lambda **common: MapsJob(request=request, layers=layers, **common)


def resolve_explaining(
    command: str, request: ExplainRequest, loaded: LoadedModel
) -> tuple[LoadedModel, Resolved]:
    """What a command that explains classes (cam, compare, score, sanity) asks for, resolved
    on ``loaded``: its layers and classes, a detector's boxes; ``--target-fn``'s model."""
    from featviz.explainer.targets import check_top_k, resolve_target
    from featviz.layers.catalog import resolve_layers
    from featviz.tasks.detection import check_detection_request

    loaded, prompted = _with_prompts(command, loaded, request)
    if request.target_fn is not None:
        loaded = _with_target_fn(command, loaded, request)
    layers = (
        resolve_layers(loaded.trace, list(request.layers), spatial_only=True)
        if request.layers
        else [loaded.default_cam_layer()]
    )
    classes = loaded.num_classes
    targets = prompted or [
        resolve_target(text, loaded.categories, classes) for text in request.targets
    ]
    detector = loaded.trace.task == "detection" and request.target_fn is None
    if detector:
        check_detection_request(command, request)
    elif request.min_score is not None:
        raise UsageError(
            f"--min-score: {loaded.name} is not a detection model; it scores boxes",
            hint="leave --min-score out",
        )
    # A detector's --target picks the classes whose boxes --top-k ranks.
    if targets and request.top_k is not None and not detector:
        raise UsageError(
            "--target and --top-k exclude each other",
            hint="explain given classes with --target, or the k best with --top-k",
        )
    if request.top_k is not None:
        check_top_k(request.top_k, None if detector else classes)
    boxes = None
    if detector:
        min_score = DEFAULT_MIN_SCORE if request.min_score is None else request.min_score
        boxes = {"min_score": min_score, "top_k": request.top_k}
    return loaded, Resolved(layers, targets, boxes)


def explaining_job(plan: Plan, resolved: Resolved) -> Callable[..., ImageJob]:
    job = job_type(plan.command)

    def make(**common: object) -> ImageJob:
        return job(
            request=plan.options,
            layers=resolved.layers,
            targets=resolved.targets,
            seed=plan.model.seed,
            **common,
        )

    return make


def job_type(command: str) -> type:
    """The job class of a command that explains classes."""
    if command == "cam":
        from featviz.run.jobs.cam import CamJob as job
    elif command == "compare":
        from featviz.run.jobs.compare import CompareJob as job
    elif command == "score":
        from featviz.run.jobs.score import ScoreJob as job
    elif command == "sanity":
        from featviz.run.jobs.sanity import SanityJob as job
    else:
        raise ValueError(f"no job for command '{command}'")
    return job


def _with_target_fn(command: str, loaded: LoadedModel, request: ExplainRequest) -> LoadedModel:
    from featviz.tasks.target_fn import with_target_fn

    if command == "score":
        raise UsageError(
            "--target-fn: score measures how class probabilities move; a score of your own "
            "has none",
            hint="explain it with cam or compare",
        )
    if request.targets or request.top_k is not None or request.min_score is not None:
        raise UsageError(
            "--target-fn replaces the classes: it cannot go with --target, --top-k or --min-score",
            hint="leave them out",
        )
    return with_target_fn(loaded, request.target_fn)


def _with_prompts(
    command: str, loaded: LoadedModel, request: ExplainRequest
) -> tuple[LoadedModel, list[int]]:
    """A two-tower model scoring its images against ``-t text:…`` or ``--prompts``' prompts
    (featviz.tasks.prompts), and the indices of the ``-t text:…`` prompts; ``loaded`` as it
    is, and no indices, when there are no prompts."""
    from featviz.tasks.prompts import TEXT_PREFIX, read_prompts, takes_prompts, with_prompts

    texts = [
        t.removeprefix(TEXT_PREFIX).strip() for t in request.targets if t.startswith(TEXT_PREFIX)
    ]
    if not texts and request.prompts is None:
        if takes_prompts(loaded.module) and request.target_fn is None:
            raise UsageError(
                f"{loaded.name} compares images with text: say what to look for",
                hint='-t "text:a photo of a cat" (repeatable), or --prompts FILE, one a line',
            )
        return loaded, []
    asked = "--prompts" if request.prompts is not None else "-t text:…"
    if not takes_prompts(loaded.module):
        raise UsageError(
            f"{asked}: {loaded.name} has no text tower to read prompts with",
            hint="text prompts need a CLIP-style model: open_clip/NAME, an hf: CLIP or "
            "SigLIP, or a module with encode_text (see the text prompts guide)",
        )
    if request.target_fn is not None:
        raise UsageError(f"{asked} and --target-fn exclude each other", hint="pick one")
    if texts and request.prompts is not None:
        raise UsageError(
            "-t text:… and --prompts exclude each other",
            hint="pick the file's prompts with -t PROMPT, or give every prompt as -t text:…",
        )
    if texts and (len(texts) != len(request.targets) or not all(texts)):
        raise UsageError(
            "-t text:…: once one target is a text prompt, all must be, none empty",
            hint='give each as -t "text:a photo of a cat"',
        )
    prompts = read_prompts(request.prompts) if request.prompts else list(dict.fromkeys(texts))
    if command == "score" and len(prompts) < 2:
        raise UsageError(
            "score measures how the prompts' probabilities move, and one prompt has none",
            hint='give two prompts or more (-t "text:…" repeated, or --prompts FILE)',
        )
    loaded = with_prompts(loaded, prompts, classify=request.prompts is not None)
    return loaded, [prompts.index(text) for text in texts]
