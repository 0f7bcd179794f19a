"""``featviz.explain``: class-activation maps of images in memory or on disk, as arrays.

One call is the CLI's ``cam`` without the files: the same resolution of layers and classes,
the same batching through the pipeline (decode threads, images of one shape batched, one
forward and one backward per target), the same maps. Each result holds the heatmap over the
original image, the map at the layer's grid, what it explains and a picture that shows itself
in a notebook. A video model explains the clips of the videos it is given, as ``featviz cam``
does: one result per clip, its heatmap over every frame.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from featviz.api.model import loaded_model
from featviz.api.running import clips_of, in_memory, resolved_request, run_pipeline
from featviz.explainer.options import ExplainRequest
from featviz.run.jobs.explaining import ExplainingJob

if TYPE_CHECKING:
    import numpy as np
    import torch
    from PIL import Image

    from featviz.explainer.maps import ExplainedMap
    from featviz.inputs.loaded import LoadedImage
    from featviz.sinks.results import ImageResult


@dataclass(eq=False)
class Explanation:
    """One map of one image.

    ``heatmap``: float32 (H, W) in [0, 1] over the original image (H, W), exactly what
    ``featviz cam --save-raw`` writes as ``heatmap`` (of the absolute value, for a signed
    method); ``layer_cam``: float32 (h, w) at the layer's grid (a pixel-level method's at the
    model input's, signed where the method is), after the method's own ReLU, before any
    normalisation (``--save-raw``'s ``layer_cam``; None for a fusion of layers); ``image``:
    the original (H, W, 3) uint8 pixels; ``index``, ``label``, ``probability``: the class
    explained (None, "all classes" and None for a class-agnostic method such as eigencam);
    ``box``: a detector's box, x0 y0 x1 y1 in the image's pixels; ``input``: the image's
    path, or ``image N`` for the Nth in-memory image.

    A video model's clip (``input``: ``clip.mp4 clip N``): ``image`` is its (T, H, W, 3)
    frames, ``heatmap`` (T, H, W) every frame's, normalised over the whole clip (what
    ``--save-raw`` writes), ``layer_cam`` (t, h, w); ``frame_ms`` the time from one frame to
    the next, in milliseconds (None for an image).
    """

    input: str
    image: np.ndarray
    heatmap: np.ndarray
    layer_cam: np.ndarray | None
    method: str
    layer: str
    index: int | None
    label: str
    probability: float | None
    box: tuple[float, float, float, float] | None = None
    frame_ms: int | None = None

    def overlay(self, alpha: float = 0.5, cmap: str = "jet") -> Image.Image | list[Image.Image]:
        """The heatmap over the image, ``alpha`` its opacity in [0, 1], ``cmap`` any matplotlib
        colormap: the picture ``featviz cam`` writes with those options; a clip's, one picture
        per frame (the frames of the animation ``featviz cam`` writes)."""
        from PIL import Image

        from featviz.render.draw import colormap_lut, overlay

        pixels = overlay(self.image, self.heatmap, lut=colormap_lut(cmap), alpha=alpha)
        if pixels.ndim == 4:
            return [Image.fromarray(frame) for frame in pixels]
        return Image.fromarray(pixels)

    def still(self, alpha: float = 0.5, cmap: str = "jet") -> Image.Image:
        """``overlay`` as one picture: a clip's frames side by side, left to right."""
        from PIL import Image

        pictures = self.overlay(alpha, cmap)
        if isinstance(pictures, Image.Image):
            return pictures
        strip = Image.new("RGB", (sum(p.width for p in pictures), pictures[0].height))
        for number, picture in enumerate(pictures):
            strip.paste(picture, (number * picture.width, 0))
        return strip

    def _repr_png_(self) -> bytes:
        buffer = io.BytesIO()
        self.still().save(buffer, "PNG")
        return buffer.getvalue()

    def __repr__(self) -> str:
        what = f"{self.label} {self.probability:.2f}" if self.probability is not None else "all"
        *frames, height, width = self.heatmap.shape
        size = f"{frames[0]} frames of {width}×{height}" if frames else f"{width}×{height}"
        return f"Explanation({self.input!r}, {self.method} at {self.layer}, {what}, {size})"


class Explanations(list):
    """Several explanations, in the order images × methods × layers × targets; shows itself
    in a notebook as a grid of overlays."""

    def grid(self, columns: int | None = None, alpha: float = 0.5, cmap: str = "jet"):
        """The overlays tiled ``columns`` wide (default: as many as the first image has maps),
        each scaled to the first one's height."""
        from PIL import Image

        pictures = [explanation.still(alpha, cmap) for explanation in self]
        if not pictures:
            return Image.new("RGB", (1, 1), "white")
        first = self[0].input
        columns = columns or sum(1 for explanation in self if explanation.input == first)
        height = pictures[0].height
        pictures = [p.resize((max(1, p.width * height // p.height), height)) for p in pictures]
        width = max(p.width for p in pictures)
        rows = -(-len(pictures) // columns)
        sheet = Image.new("RGB", (columns * width, rows * height), "white")
        for number, picture in enumerate(pictures):
            sheet.paste(picture, ((number % columns) * width, (number // columns) * height))
        return sheet

    def _repr_png_(self) -> bytes:
        buffer = io.BytesIO()
        self.grid().save(buffer, "PNG")
        return buffer.getvalue()


def explain(
    model: Any,
    images: Any,
    *,
    method: str | list[str] = "gradcam",
    layer: str | list[str] | None = None,
    target: int | str | list[int | str] | None = None,
    top_k: int | None = None,
    target_fn: str | None = None,
    min_score: float | None = None,
    prompts: str | Path | None = None,
    seed: int = 0,
    batch_size: int | None = None,
    cam_batch_size: int = 32,
) -> Explanation | Explanations:
    """Class-activation maps of ``images`` by ``model``.

    ``model``: what ``featviz.load`` returns, a spec string as ``--model`` takes, or a
    ``torch.nn.Module`` (loaded once and remembered for that module). ``images``: a path, a
    PIL image, a uint8 (H, W, 3) array, or a list of them (or a (N, H, W, 3) array); for a
    video model, the paths of videos, each explained clip by clip.
    ``method``, ``layer``, ``target``: one or several (registry names; layer names or globs,
    default the model's default CAM layer; class indices or names, default the ``top_k`` most
    likely, 1); for a CLIP-style model, ``"text:a photo of a cat"`` is a prompt's target, and
    ``prompts`` a file of prompts, one a line, for its zero-shot classifier). One image with
    one method, layer and target gives one ``Explanation``; anything else an ``Explanations``
    list (images × methods × layers × targets; a video model's always a list, clips ×
    methods × layers × targets). An image that cannot be used raises
    ``featviz.errors.InputError``.
    """
    loaded = loaded_model(model)
    request = ExplainRequest(
        methods=_tuple(method),
        layers=_tuple(layer),
        targets=tuple(str(item) for item in _tuple(target)),
        top_k=top_k,
        cam_batch_size=cam_batch_size,
        target_fn=target_fn,
        min_score=min_score,
        prompts=None if prompts is None else Path(prompts),
    )
    loaded, resolved = resolved_request("cam", request, loaded)
    found, single = in_memory(images)
    collected: dict[int, list[Explanation]] = {}
    job = _MapsInMemory(
        model=loaded,
        sinks=None,
        max_pixels=None,
        skip_existing=False,
        request=request,
        layers=resolved.layers,
        targets=resolved.targets,
        seed=seed,
        collected=collected,
    )
    inputs = found if loaded.clip is None else clips_of(loaded, found)
    run_pipeline(loaded, job, inputs, batch_size, resolved.layers)
    # The images' explanations in input order (each image's position in the run).
    explanations = Explanations(e for index in sorted(collected) for e in collected[index])
    if single and len(explanations) == 1 and loaded.clip is None:
        return explanations[0]
    return explanations


def _tuple(value: Any) -> tuple:
    if value is None:
        return ()
    return tuple(value) if isinstance(value, (list, tuple)) else (value,)


@dataclass(kw_only=True)
class _MapsInMemory(ExplainingJob):
    """The maps of each batch, upsampled onto each original image as ``featviz cam`` does and
    kept as ``Explanation``s (``collected``, by the image's position) instead of written."""

    collected: dict[int, list[Explanation]]

    def process(
        self, batch: list[LoadedImage], inputs: torch.Tensor
    ) -> list[Callable[[], ImageResult]]:
        from featviz.run.jobs.base import failure
        from featviz.sinks.results import ImageResult

        explained = self.explainer.explain(
            inputs,
            sizes=[item.original.shape[:2] for item in batch],
            ids=[item.source.index for item in batch],
        )
        tasks = []
        for i, item in enumerate(batch):
            if i in explained.broken:
                tasks.append(failure(item, explained.broken[i]))
                continue
            self.collected[item.source.index] = [
                self._explanation(item, entry) for entry in explained.maps[i]
            ]
            tasks.append(lambda source=item.source: ImageResult(source))
        return tasks

    def _explanation(self, item: LoadedImage, entry: ExplainedMap) -> Explanation:
        from featviz.cam import heatmap

        values = heatmap(entry.shown, item.original.shape[:-1]).numpy()  # or a clip's (T, H, W)
        label = "all classes" if entry.index is None else self.model.label(entry.index)
        raw = None if entry.layer_cam is None else entry.layer_cam.numpy().astype("float32")
        return Explanation(
            input=item.source.display,
            image=item.original,
            heatmap=values.astype("float32"),
            layer_cam=raw,
            method=entry.method,
            layer=entry.layer,
            index=entry.index,
            label=label,
            probability=entry.probability,
            box=entry.boxes[0] if len(entry.boxes) == 1 else None,
            frame_ms=item.frame_ms if item.original.ndim == 4 else None,
        )
