"""What an explained batch is made of: each image's maps (``ExplainedMap``), and how a map of a
class or of a detector's box is named and captioned."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from featviz.cam.registry import method_info
from featviz.explainer.names import class_slug

if TYPE_CHECKING:
    import torch

    from featviz.cam.context import CamContext
    from featviz.explainer.predictions import Prediction
    from featviz.model.load import LoadedModel


ANY_CLASS = "all"  # the "class" of a class-agnostic method's map (eigencam, rollout)


@dataclass
class ExplainedMap:
    """One map of one image, at layer resolution (h, w), float32 on the CPU; of a video
    layer, (t, h, w): its frames.

    ``target``: the class slug (``281_tabby``; a detector's ``box1_18_dog``, its best box) or
    ``all``; ``index`` the class (None for a class-agnostic map); ``caption`` how a person
    reads it ("tabby 0.87"); ``probability`` the class's probability (a detector's box
    score; None for a class-agnostic map).
    """

    method: str
    layer: str
    target: str
    index: int | None
    caption: str
    layer_cam: torch.Tensor | None  # None for a fusion of layers, which has no single layer
    # A segmentation model's pixels of this class, (h, w) bool at the model's input size.
    region: torch.Tensor | None = None
    # A detector's box(es) this map is of, x0 y0 x1 y1 in the original photo's pixels.
    boxes: tuple[tuple[float, float, float, float], ...] = ()
    probability: float | None = None

    @property
    def shown(self) -> torch.Tensor | None:
        """The map that pictures and scores are made of: ``layer_cam``, or its absolute value
        for a signed method (integrated gradients…), whose raw signed values ``layer_cam``
        keeps (``--save-raw``)."""
        if self.layer_cam is not None and method_info(self.method).signed:
            return self.layer_cam.abs()
        return self.layer_cam


@dataclass
class Explained:
    """A batch explained: each image's maps and predictions, and the failed images' reasons.

    ``targets`` (N, columns) the class indices explained; ``context`` the forward they came
    from (for jobs that need more of it: activations, more forwards); ``notes`` why an image
    has no target to explain (a detector's image without a box), by image.
    """

    context: CamContext
    targets: torch.Tensor
    maps: list[list[ExplainedMap]]
    predictions: list[list[Prediction]]
    broken: dict[int, str] = field(default_factory=dict)
    notes: dict[int, str] = field(default_factory=dict)


def class_map(
    model: LoadedModel,
    method: Any,
    layer: str,
    index: int,
    probabilities: torch.Tensor,
    layer_cam: Any,
) -> ExplainedMap:
    """``method``'s map of class ``index`` (of every class for a class-agnostic method)."""
    if not method.info.class_specific:
        return ExplainedMap(method.name, layer, ANY_CLASS, None, "all classes", layer_cam)
    target = class_slug(index, model.category(index))
    probability = float(probabilities[index])
    caption = f"{model.label(index)} {probability:.2f}"
    return ExplainedMap(
        method.name, layer, target, index, caption, layer_cam, probability=probability
    )


def box_map(
    model: LoadedModel,
    method: Any,
    layer: str,
    layer_cam: Any,
    detections: list[Prediction],
    place: int,
) -> ExplainedMap:
    """A detector's map of its explained box number ``place`` (best first), or of
    everything it sees for a class-agnostic method, with every box drawn."""
    if not method.info.class_specific:
        every = tuple(found.box for found in detections)
        return ExplainedMap(
            method.name, layer, ANY_CLASS, None, "all boxes", layer_cam, boxes=every
        )
    found = detections[place]
    target = f"box{place + 1}_{class_slug(found.index, model.category(found.index))}"
    caption = f"{found.label} {found.probability:.2f}"
    return ExplainedMap(
        method.name,
        layer,
        target,
        found.index,
        caption,
        layer_cam,
        boxes=(found.box,),
        probability=found.probability,
    )


@dataclass
class Chosen:
    """What a batch's maps are of: (N, columns) ``targets``, class indices or a detector's box
    ranks; ``keep`` (N, columns) which of them are there to explain (a detector's boxes; None:
    all); ``shown`` each image's predictions; ``probabilities`` what ranked them; ``regions`` a
    segmentation's class per pixel; ``detector`` whether the targets are boxes."""

    targets: torch.Tensor
    shown: list[list[Prediction]]
    probabilities: torch.Tensor
    keep: torch.Tensor | None = None
    regions: torch.Tensor | None = None
    detector: bool = False

    def entry(
        self, model: LoadedModel, method: Any, layer: str, i: int, column: int, layer_cam: Any
    ) -> ExplainedMap:
        """Image ``i``'s map of its target in ``column``, with its segmentation region."""
        if self.detector:
            entry = box_map(model, method, layer, layer_cam, self.shown[i], column)
        else:
            index = int(self.targets[i, column])
            entry = class_map(model, method, layer, index, self.probabilities[i], layer_cam)
        if self.regions is not None and entry.index is not None:
            entry = replace(entry, region=(self.regions[i] == entry.index).cpu())
        return entry
