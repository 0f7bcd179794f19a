"""cam, compare, score and sanity: the commands that explain a model's classes with CAM methods,
each from the same ``Explaining`` options, run through the pipeline and streamed."""

from __future__ import annotations

from typing import Annotated

import typer

from featviz.cam.registry import JUDGED_METHODS
from featviz.cli.options.common import AlphaOpt, CmapOpt
from featviz.cli.options.explain import Explaining
from featviz.cli.options.output import Report
from featviz.cli.options.shared import shared_options
from featviz.cli.terminal import errors, stream
from featviz.model.options import ModelRequest
from featviz.run.plan import (
    CamRequest,
    CompareRequest,
    Plan,
    RunRequest,
    SanityRequest,
    ScoreRequest,
)
from featviz.sinks.options import OutputRequest


@shared_options()
def cam(
    run: RunRequest,
    explaining: Explaining = None,
    fuse: Annotated[
        bool, typer.Option(help="With several layers, also their fusion (element-wise max).")
    ] = False,
    cmap: CmapOpt = "jet",
    alpha: AlphaOpt = 0.5,
    heatmap: Annotated[bool, typer.Option(help="Also write the bare heatmap PNG.")] = False,
    save_raw: Annotated[
        bool,
        typer.Option(help="Also write .npz: layer_cam (h, w) raw map, heatmap (H, W) in [0, 1]."),
    ] = False,
    model: ModelRequest = None,
    output: OutputRequest = None,
    report: Report = None,
) -> None:
    """Class-activation maps over the original image (default: Grad-CAM, top-1 class).

    Example: featviz cam -m resnet50 -M gradcam++ -t tabby -t 'tiger cat' cat.jpg
    """
    with errors():
        from featviz.run.prepare import prepare

        request = CamRequest(
            **explaining.fields(("gradcam",)),
            fuse=fuse,
            cmap=cmap,
            alpha=alpha,
            heatmap=heatmap,
            save_raw=save_raw,
        )
        stream(prepare(Plan("cam", model, output, request, run)), report)


@shared_options(methods=JUDGED_METHODS)
def compare(
    run: RunRequest,
    explaining: Explaining = None,
    cmap: CmapOpt = "jet",
    alpha: AlphaOpt = 0.5,
    model: ModelRequest = None,
    output: OutputRequest = None,
    report: Report = None,
) -> None:
    """Methods side by side: one labelled panel per image, <rel>/compare.png.

    Rows are methods, columns layers × classes; one forward (and one
    backward per class) serves every method.

    Example: featviz compare -m resnet50 --top-k 2 photos/
    """
    with errors():
        from featviz.run.prepare import prepare

        request = CompareRequest(**explaining.fields(JUDGED_METHODS), cmap=cmap, alpha=alpha)
        stream(prepare(Plan("compare", model, output, request, run)), report)


@shared_options(methods=JUDGED_METHODS)
def score(
    run: RunRequest,
    explaining: Explaining = None,
    steps: Annotated[
        int,
        typer.Option(
            min=1, metavar="N", help="Deletion/insertion: pixels removed in this many steps."
        ),
    ] = 20,
    score_batch_size: Annotated[
        int | None,
        typer.Option(
            min=1,
            metavar="N",
            help="Perturbed inputs per forward (large batches are slower on a CPU).",
            show_default="8 on CPU, 64 on CUDA",
        ),
    ] = None,
    model: ModelRequest = None,
    output: OutputRequest = None,
    report: Report = None,
) -> None:
    """How faithful each map is, against random and centred baselines.

    Average drop, increase in confidence, deletion and insertion AUC
    (Petsiuk et al. 2018), ROAD MoRF/LeRF (Rong et al. 2022). One --json
    row per image × method × layer × class; score.csv, score.png (mean
    curves) and a table of means ± standard errors at the end. Lower is
    better for average drop, deletion and MoRF; higher for the rest.

    Example: featviz score -m resnet50 photos/ -o scores/
    """
    with errors():
        from featviz.run.prepare import prepare

        request = ScoreRequest(
            **explaining.fields(JUDGED_METHODS),
            steps=steps,
            score_batch_size=score_batch_size,
            seed=model.seed,  # --seed: also the random baseline's and ROAD's noise
        )
        stream(prepare(Plan("score", model, output, request, run)), report)


@shared_options(methods=JUDGED_METHODS)
def sanity(
    run: RunRequest,
    explaining: Explaining = None,
    model: ModelRequest = None,
    output: OutputRequest = None,
    report: Report = None,
) -> None:
    """The sanity check: maps as the model's blocks are re-initialised from the top.

    Cascading randomisation (Adebayo et al. 2018): Spearman correlation
    and SSIM with the trained model's map after each block;
    <rel>/sanity.png, sanity.csv, sanity.png (correlation per step).

    Example: featviz sanity -m resnet50 photo.jpg
    """
    with errors():
        from featviz.run.prepare import prepare

        # --seed: also the re-initialised weights'
        request = SanityRequest(**explaining.fields(JUDGED_METHODS), seed=model.seed)
        stream(prepare(Plan("sanity", model, output, request, run)), report)
