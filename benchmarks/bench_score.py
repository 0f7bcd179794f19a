"""What `featviz score` costs against the peers' metric classes doing the same work, in one run.

On the real EfficientNet-Lite0 (examples/), the sample photos squashed to 224 × 224 (one batch,
the same tensors for everyone) and the same Grad-CAM maps (featviz's, at ``bn2``, upsampled to
the input and scaled to [0, 1]), it times, round-robin:

1. average drop + increase in confidence, and the deletion and insertion curves (20 steps,
   deletion to 0, insertion from the input blurred):
   - featviz: ``featviz.judge.metrics.drop_and_increase`` + ``deletion_insertion`` as
     `featviz score` runs them on a CPU: perturbed inputs in forwards of 8, channels-last,
     Lite0's batch norms folded (featviz.layers.folding);
   - torchcam: ``ClassificationMetric`` + ``DeletionInsertionMetric(steps=20)`` for deletion +
     a second one with ``baseline=`` the same blur for insertion (one instance has one
     baseline), each ``update(x, class_idx=...)`` on the batch; at its default batch_size (32)
     and at featviz's (8). Its CAM extractor is a stub returning the precomputed maps: torchcam
     is not charged for computing them.
2. ROAD MoRF + LeRF at the percentiles 10…90 (noisy linear imputation, noise 0.01):
   - featviz: ``featviz.judge.metrics.road`` (every image's 18 imputations at once; forwards
     as in 1);
   - pytorch-grad-cam: ``ROADMostRelevantFirstAverage()`` + ``ROADLeastRelevantFirstAverage()``
     with ``ClassifierOutputSoftmaxTarget``, on the batch.
   Also the imputation alone, for one photo's 18 masks: featviz's batched solve against
   NoisyLinearImputer's per-mask scipy solve.

Prints seconds per image per method and the ratios, as Markdown.

    python benchmarks/bench_score.py [--images 5] [--repeats 2]
"""

from __future__ import annotations

import argparse
import contextlib
import sys

import numpy as np
import torch
from _common import REPO, SAMPLE_NAMES, SAMPLES, machine_line, round_robin, say, table, typical

sys.path.insert(0, str(REPO / "examples"))


class _Stub:
    """torchcam's CAM-extractor protocol over maps computed beforehand."""

    def __init__(self, model: torch.nn.Module, maps: torch.Tensor) -> None:
        self.model, self.maps = model, maps

    def __call__(self, class_idx=None, scores=None, normalized=True, **_):
        return [self.maps]

    def fuse_cams(self, cams):
        return cams[0]

    @contextlib.contextmanager
    def _hooks_off(self):
        yield


def setup(count: int):
    """Lite0, (N, 3, 224, 224) inputs, their Grad-CAM maps at input size, top-1 targets."""
    from PIL import Image

    from featviz.cam import normalise
    from featviz.explainer.batch import Explainer
    from featviz.layers.folding import folded_for
    from featviz.layers.grids import upsample
    from featviz.model.load import load_model
    from featviz.model.options import ModelRequest

    model = load_model(ModelRequest(str(REPO / "examples/efficientnet_lite0.py") + ":build"))
    folding = folded_for(model.module, model.trace.foldable, ["bn2"])  # as `featviz score`
    mean = torch.tensor(model.preprocessing.mean).view(3, 1, 1)
    std = torch.tensor(model.preprocessing.std).view(3, 1, 1)
    tensors = []
    for name in (SAMPLE_NAMES * 4)[:count]:
        photo = Image.open(SAMPLES / name).convert("RGB").resize((224, 224), Image.BILINEAR)
        pixels = torch.from_numpy(np.asarray(photo).copy()).permute(2, 0, 1).float() / 255
        tensors.append((pixels - mean) / std)
    x = torch.stack(tensors)
    explained = Explainer(model, ("gradcam",), ["bn2"], [], top_k=1, cam_batch_size=32).explain(x)
    maps = torch.stack([entry[0].layer_cam for entry in explained.maps])
    E = normalise(upsample(maps, (224, 224)))
    targets = explained.targets[:, 0]
    Y = explained.context.logits.detach().softmax(1).gather(1, targets[:, None])[:, 0]
    return model.module, folding, x, E, targets, Y


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    from pytorch_grad_cam.metrics.road import (
        NoisyLinearImputer,
        ROADLeastRelevantFirstAverage,
        ROADMostRelevantFirstAverage,
    )
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget
    from torchcam.metrics import ClassificationMetric, DeletionInsertionMetric

    from featviz.judge.imputation import impute
    from featviz.judge.metrics import deletion_insertion, drop_and_increase, gaussian_blur, road

    model, folding, x, E, targets, Y = setup(args.images)
    n = len(x)
    softmax = lambda logits: logits.softmax(dim=-1)  # noqa: E731
    classes = [int(t) for t in targets]

    def scorer(batch: torch.Tensor) -> torch.Tensor:  # as ScoreJob._scorer settles on Lite0
        return model(batch.contiguous(memory_format=torch.channels_last))

    def featviz_confidence_metrics():
        with folding.applied():
            drop_and_increase(scorer, x, E, targets, Y, batch_size=8)
            deletion_insertion(scorer, x, E, targets, Y, steps=20, batch_size=8)

    def torchcam_confidence_metrics(batch_size: int = 32):
        stub = _Stub(model, E)
        ClassificationMetric(stub, softmax).update(x, class_idx=classes)
        DeletionInsertionMetric(stub, softmax, steps=20, batch_size=batch_size).update(x, classes)
        DeletionInsertionMetric(
            stub, softmax, steps=20, batch_size=batch_size, baseline=gaussian_blur
        ).update(x, classes)

    def featviz_road():
        with folding.applied():
            road(scorer, x, E, targets, Y, batch_size=8, seeds=list(range(n)))

    def grad_cam_road():
        wanted = [ClassifierOutputSoftmaxTarget(c) for c in classes]
        ROADMostRelevantFirstAverage()(x, E.numpy(), wanted, model)
        ROADLeastRelevantFirstAverage()(x, E.numpy(), wanted, model)

    flat = E[0].flatten()
    masks = []
    for p in range(10, 100, 10):
        for values in (flat, 1 - flat):
            masks.append((values >= torch.quantile(values, p / 100)).view(224, 224))
    missing = torch.stack(masks)[:, None]

    def featviz_imputation():
        impute(x[:1].expand(18, -1, -1, -1), missing)

    def grad_cam_imputation():
        imputer = NoisyLinearImputer()
        for mask in masks:
            imputer(x[0], (~mask).float())

    say(f"{n} photos 224×224, Lite0, Grad-CAM maps at bn2; {args.repeats} repeats")
    runs = round_robin(
        {
            "featviz drop/increase + deletion/insertion": featviz_confidence_metrics,
            "torchcam drop/increase + deletion/insertion": torchcam_confidence_metrics,
            "torchcam (batch 8) drop/increase + deletion/insertion": lambda: (
                torchcam_confidence_metrics(8)
            ),
            "featviz ROAD": featviz_road,
            "pytorch-grad-cam ROAD": grad_cam_road,
            "featviz imputation (18 masks)": featviz_imputation,
            "pytorch-grad-cam imputation (18 masks)": grad_cam_imputation,
        },
        args.repeats,
        log=say,
    )
    seconds = {name: typical(r) for name, r in runs.items()}
    pairs = [
        ("drop/increase + deletion/insertion", "featviz", "torchcam", n),
        ("drop/increase + deletion/insertion", "featviz", "torchcam (batch 8)", n),
        ("ROAD", "featviz", "pytorch-grad-cam", n),
        ("imputation (18 masks)", "featviz", "pytorch-grad-cam", 1),
    ]
    rows = []
    for work, ours, theirs, per in pairs:
        mine, other = seconds[f"{ours} {work}"], seconds[f"{theirs} {work}"]
        rows.append(
            [work, f"{mine / per:.2f}", f"{other / per:.2f}", theirs, f"{other / mine:.1f}×"]
        )
    print(machine_line())
    print()
    print(
        table(
            ["work (per image, one method)", "featviz s", "peer s", "peer", "featviz faster by"],
            rows,
        )
    )


if __name__ == "__main__":
    main()
