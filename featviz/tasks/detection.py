"""What a command asks for, as frozen values built once by the CLI and passed down unchanged.

``ModelRequest`` (which network, which weights, how to feed it) and ``OutputRequest`` (where
results go: the output folder, TensorBoard, the gallery) are shared by every command;
``RunRequest`` says which images a per-image command reads; each command adds its own options
(``MapsRequest``, ``CamRequest``, ``FiltersRequest``). What the library resolves from
them (layer names from globs, class indices from names) lives in the job, never back in here:
a request is exactly what the user said, which is what the manifest records.

No torch here: the CLI builds these before deciding whether torch is needed at all.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from featviz.tasks.base import Outcome, Task, replayed

if TYPE_CHECKING:
    import torch
from featviz.layers.outputs import detections_of

# A detector's boxes below this score are not explained unless --min-score says otherwise:
# torchvision's detection examples draw from 0.5 up; its models keep boxes down to 0.05.
DEFAULT_MIN_SCORE = 0.5


# Methods that explain a detector's boxes: every method but cam, which needs a classifier's
# final Linear, and the rollouts, which need a transformer's attention. scorecam and
# ablationcam score re-runs of the model on perturbed inputs: each re-run's boxes are matched
# to the explained ones (DetectionTask._matched).
DETECTION_METHODS = (
    "gradcam", "gradcam++", "xgradcam", "layercam", "hirescam", "scorecam", "ablationcam",
    "eigencam",
)  # fmt: skip


# A perturbed re-run's box is the explained one when it has its class and overlaps it this much.
MATCH_IOU = 0.5


# The attribute under which torchvision's detectors keep the class score below which they drop
# a box: on ``roi_heads`` for the R-CNNs, on the model itself for RetinaNet, FCOS and SSD.
OWN_THRESHOLD = "score_thresh"


def check_detection_request(command: str, request: Any) -> None:
    """Refuse, as usage errors, what a detector cannot be asked: score and sanity (they
    perturb the image or the model, and the boxes move) or a method that re-runs the model."""
    from featviz.errors import UsageError

    if command not in ("cam", "compare"):
        raise UsageError(
            f"{command} does not take detection models yet: their targets are boxes, which "
            "move when the image or the model is perturbed",
            hint="explain the boxes with `featviz cam` or `featviz compare`",
        )
    refused = [name for name in request.methods if name not in DETECTION_METHODS]
    if refused:
        raise UsageError(
            f"method {refused[0]} cannot explain a detection model's boxes",
            hint=f"choose among {', '.join(DETECTION_METHODS)}",
        )


@contextmanager
def own_threshold_lowered(module: Any, min_score: float) -> Iterator[None]:
    """Inside, every ``score_thresh`` of ``module`` and its submodules above ``min_score`` is
    ``min_score``; each is put back on the way out, whatever happened inside (a worker keeps
    the model for the next run). A region proposal network's is left alone: it ranks
    proposals by objectness, not boxes by class score."""
    from torchvision.models.detection.rpn import RegionProposalNetwork

    lowered = []
    for part in module.modules():
        own = getattr(part, OWN_THRESHOLD, None)
        if isinstance(part, RegionProposalNetwork) or not isinstance(own, int | float):
            continue
        if own > min_score:
            lowered.append((part, own))
            setattr(part, OWN_THRESHOLD, min_score)
    try:
        yield
    finally:
        for part, own in lowered:
            setattr(part, OWN_THRESHOLD, own)


def nothing_found(min_score: float, classes: list[str]) -> str:
    """Why an image has no box to explain: ``classes`` the labels asked for (--target)."""
    which = f"{' or '.join(classes)} " if classes else ""
    return f"no {which}box scores at least {min_score:g}"


def chosen_boxes(
    outcome: Outcome, min_score: float, classes: list[int], top_k: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Which boxes to explain, per image: (N, columns) box ranks and whether each is one.

    The boxes scoring at least ``min_score`` (of ``classes``, when given), the ``top_k`` best
    (None: all), best first, so the kept columns of every row come first.
    """
    import torch

    wanted = outcome.valid & (outcome.shown >= min_score)
    if classes:
        wanted &= torch.isin(outcome.labels, torch.tensor(classes, device=outcome.labels.device))
    columns = max(1, int(wanted.sum(1).max()))
    if top_k is not None:
        columns = min(columns, top_k)
    # Scores sorted best first already (DetectionTask): wanted boxes first, in that order.
    order = (~wanted).to(torch.int8).argsort(dim=1, stable=True)[:, :columns]
    return order, wanted.gather(1, order)


def detected_boxes(
    outcome: Outcome, input_hw: Sequence[int], sizes: list[tuple[int, int]]
) -> torch.Tensor:
    """The (N, boxes, 4) boxes in each original photo's pixels: from the input's frame,
    scaled as the maps are (featviz resizes, never crops)."""
    import torch

    height, width = input_hw
    scale = torch.tensor(
        [[w / width, h / height, w / width, h / height] for h, w in sizes],
        device=outcome.boxes.device,
    )
    return outcome.boxes * scale[:, None, :]


class DetectionTask(Task):
    name = "detection"
    shown_as = "box score"

    def __init__(self, module: Any) -> None:
        super().__init__()
        # The latest forward's (height, width) of each image in the padded batch, and the
        # padded (height, width) (a batch's inputs are all one size); None when the model has
        # no transform of its own.
        self.frame: tuple[tuple[int, int], tuple[int, int]] | None = None
        transform = getattr(module, "transform", None)
        if transform is not None and hasattr(transform, "register_forward_hook"):
            transform.register_forward_hook(self._framed)

    def _framed(self, module: Any, inputs: Any, output: Any) -> None:
        images = output[0] if isinstance(output, tuple) else output
        sizes, tensors = getattr(images, "image_sizes", None), getattr(images, "tensors", None)
        if sizes is not None and tensors is not None:
            self.frame = (tuple(sizes[0]), tuple(tensors.shape[-2:]))

    def __call__(self, module: Any, inputs: Any, output: Any) -> torch.Tensor:
        import torch
        import torch.nn.functional as F

        detections = detections_of(output)
        if detections is None:
            from featviz.errors import RunError

            raise RunError(
                f"the detection model returned a {type(output).__name__}, not one dict of "
                "boxes, scores and labels per image"
            )
        rows = replayed()
        if rows is not None and self.latest is not None:
            return self._matched(detections, rows)
        width = max(1, *(len(found["scores"]) for found in detections))
        scores, boxes, labels, valid = [], [], [], []
        for found in detections:
            order = found["scores"].detach().argsort(descending=True)
            missing = width - len(order)
            scores.append(F.pad(found["scores"][order], (0, missing)))
            boxes.append(F.pad(found["boxes"].detach()[order].float(), (0, 0, 0, missing)))
            labels.append(F.pad(found["labels"][order].long(), (0, missing), value=-1))
            box = boxes[-1]
            # A box clipped to nothing lies outside the photo (a detector seeing things in its
            # own padding): not one of the photo's objects.
            sized = (box[:, 2] > box[:, 0]) & (box[:, 3] > box[:, 1])
            valid.append((torch.arange(width, device=order.device) < len(order)) & sized)
        stacked = torch.stack(scores)
        self.latest = Outcome(
            shown=stacked.detach().float(),
            boxes=torch.stack(boxes),
            labels=torch.stack(labels),
            valid=torch.stack(valid),
        )
        return stacked

    def _matched(self, detections: list[Mapping[str, Any]], rows: torch.Tensor) -> torch.Tensor:
        """Scores of a perturbed re-run (scorecam, ablationcam): row r re-runs image
        ``rows[r]`` of the first forward, and its score for that image's box k is the best
        score among its boxes of box k's class that overlap it by IoU ≥ MATCH_IOU, 0 if none.
        (pytorch-grad-cam's FasterRCNNBoxScoreTarget sums IoU + score over such boxes.)"""
        import torch
        from torchvision.ops import box_iou

        reference = self.latest
        scores = torch.zeros(len(rows), reference.shown.shape[1], device=reference.shown.device)
        for row, (image, found) in enumerate(zip(rows.tolist(), detections)):
            if not len(found["scores"]):
                continue
            overlap = box_iou(reference.boxes[image], found["boxes"].detach().float())
            same = reference.labels[image][:, None] == found["labels"][None, :].long()
            candidates = (overlap >= MATCH_IOU) & same & reference.valid[image][:, None]
            box_scores = found["scores"].detach().float()[None, :].expand_as(overlap)
            best = torch.where(candidates, box_scores, torch.zeros_like(box_scores)).amax(dim=1)
            scores[row] = best
        return scores

    def align(self, maps: torch.Tensor) -> torch.Tensor:
        """(N, h, w) maps over the padded, resized batch → (N, h', w') over each input alone:
        upsampled to the padded size, cropped to the image's part of it."""
        if self.frame is None:
            return maps
        from featviz.layers.grids import upsample

        (height, width), padded = self.frame
        if (height, width) == padded:
            return maps
        return upsample(maps, padded)[:, :height, :width]

    def crop(self, maps: torch.Tensor) -> torch.Tensor:
        if self.frame is None:
            return maps
        (height, width), (padded_h, padded_w) = self.frame
        rows = math.ceil(maps.shape[-2] * height / padded_h)
        cols = math.ceil(maps.shape[-1] * width / padded_w)
        return maps[..., :rows, :cols]
