"""``featviz.compare``, ``featviz.score`` and ``featviz.sanity``: the judging commands as calls.

Each runs its command's job over images in memory or on disk, through the same pipeline, and
returns what the command would have written: ``compare`` its panels as PIL images, ``score``
and ``sanity`` their rows (one per image × method × layer × target; ``sanity`` one per step of
the cascade too), as dictionaries naming their input.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from featviz.api.model import loaded_model
from featviz.api.running import images_only, in_memory, resolved_request, run_pipeline
from featviz.cam.registry import JUDGED_METHODS
from featviz.sinks.memory import MemorySinks

if TYPE_CHECKING:
    from PIL import Image

    from featviz.explainer.options import ExplainRequest
    from featviz.inputs.discover import ImageSource


def compare(
    model: Any,
    images: Any,
    *,
    method: str | list[str] = JUDGED_METHODS,
    layer: str | list[str] | None = None,
    target: int | str | list[int | str] | None = None,
    top_k: int | None = None,
    cmap: str = "jet",
    alpha: float = 0.5,
    seed: int = 0,
    batch_size: int | None = None,
) -> Image.Image | list[Image.Image]:
    """The panel ``featviz compare`` draws for each image: the original, then one row per
    method and one column per layer × target. One image gives one picture, a list a list."""
    from PIL import Image

    from featviz.run.plan import CompareRequest

    request = CompareRequest(**_explaining(method, layer, target, top_k), cmap=cmap, alpha=alpha)
    sinks, found, single = _judged("compare", model, images, request, seed, batch_size)
    panels = [Image.fromarray(sinks.outputs[s.index].artifacts[0].pixels) for s in found]
    return panels[0] if single else panels


def score(
    model: Any,
    images: Any,
    *,
    method: str | list[str] = JUDGED_METHODS,
    layer: str | list[str] | None = None,
    target: int | str | list[int | str] | None = None,
    top_k: int | None = None,
    steps: int = 20,
    seed: int = 0,
    batch_size: int | None = None,
    score_batch_size: int | None = None,
) -> list[dict[str, Any]]:
    """``featviz score``'s rows: average drop, increase in confidence, deletion and insertion
    AUC, ROAD MoRF and LeRF of every map, with the random and centred baselines' rows."""
    from featviz.run.plan import ScoreRequest

    request = ScoreRequest(
        **_explaining(method, layer, target, top_k),
        steps=steps,
        score_batch_size=score_batch_size,
        seed=seed,
    )
    return _rows("score", model, images, request, seed, batch_size)


def sanity(
    model: Any,
    images: Any,
    *,
    method: str | list[str] = JUDGED_METHODS,
    layer: str | list[str] | None = None,
    target: int | str | list[int | str] | None = None,
    top_k: int | None = None,
    seed: int = 0,
    batch_size: int | None = None,
) -> list[dict[str, Any]]:
    """``featviz sanity``'s rows: each map's Spearman correlation and SSIM with the trained
    model's as its blocks are re-initialised from the top (``randomized``: the block last
    re-initialised, ``none`` for the trained model)."""
    from featviz.run.plan import SanityRequest

    request = SanityRequest(**_explaining(method, layer, target, top_k), seed=seed)
    return _rows("sanity", model, images, request, seed, batch_size)


def _explaining(method: Any, layer: Any, target: Any, top_k: int | None) -> dict[str, Any]:
    def items(value: Any) -> tuple:
        if value is None:
            return ()
        return tuple(value) if isinstance(value, (list, tuple)) else (value,)

    return {
        "methods": items(method),
        "layers": items(layer),
        "targets": tuple(str(item) for item in items(target)),
        "top_k": top_k,
    }


def _rows(
    command: str, model: Any, images: Any, request: ExplainRequest, seed: int, batch: int | None
) -> list[dict[str, Any]]:
    sinks, found, _ = _judged(command, model, images, request, seed, batch)
    return [{"input": s.display, **row} for s in found for row in sinks.rows[s.index]]


def _judged(
    command: str, model: Any, images: Any, request: ExplainRequest, seed: int, batch: int | None
) -> tuple[MemorySinks, list[ImageSource], bool]:
    """The command's job over the images, its outputs kept in memory: (those, the images in
    order, whether one image was given)."""
    from featviz.run.resolve import job_type

    loaded = loaded_model(model)
    images_only(loaded, command)
    loaded, resolved = resolved_request(command, request, loaded)
    found, single = in_memory(images)
    sinks = MemorySinks()
    job = job_type(command)(
        model=loaded,
        sinks=sinks,
        max_pixels=None,
        skip_existing=False,
        request=request,
        layers=resolved.layers,
        targets=resolved.targets,
        seed=seed,
    )
    run_pipeline(loaded, job, found, batch, resolved.layers)
    return sinks, found, single
