"""The layer methods featviz took from pytorch-grad-cam and torchcam, each timed against its
peer on the same CPU work, side by side in one run, with the ratio.

Random-init resnet18 (``--weights none``, seed 0) at ``layer4``, a batch of sample photos
squashed to a square, one target class (281) per image. Each contender computes every image's
map from the pixels: featviz as ``featviz cam`` runs it (the model as ``featviz.load`` builds it,
channels-last, with its batch norms folded for the batch's work; ``forward_for_cam`` +
``method.compute`` + ``normalise``), the peer its documented call (pytorch-grad-cam:
``cam(input_tensor, targets)``, which also resizes to the input, so featviz upsamples too;
torchcam: a forward, then ``extractor(class_idx)``, maps at layer resolution like featviz's) on
a copy of the same weights in the usual layout, parameters requiring grad, as users run it.

SS-CAM, IS-CAM run one full forward per channel and perturbation (35 × 512 and 10 × 512 per
image at their defaults): they are timed at ``--small`` px with ``--draws`` perturbations on
both sides, which changes the loop count alike for both and not what each forward costs.

Usage (from the repository root):

    python benchmarks/bench_methods.py                # 224 px, 4 images; slow ones 64 px, 2 draws
    python benchmarks/bench_methods.py --images 2 --repeats 1

Table to stdout (Markdown), progress to stderr.
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Callable

import torch
from _common import (
    TIMES_NOTE,
    machine_line,
    round_robin,
    sample_batch,
    say,
    table,
    typical,
)

from featviz.cam import forward_for_cam, load_method, normalise
from featviz.layers.folding import folded_for
from featviz.layers.grids import upsample
from featviz.layers.trace import trace_model
from featviz.model.load import load_model
from featviz.model.options import ModelRequest

LAYER = "layer4"
TARGET = 281
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

GRAD_CAM = {  # featviz name → pytorch-grad-cam class name
    "gradcamelementwise": "GradCAMElementWise",
    "eigengradcam": "EigenGradCAM",
    "kpcacam": "KPCA_CAM",
    "fem": "FEM",
    "shapleycam": "ShapleyCAM",
    "finercam": "FinerCAM",
}
TORCHCAM = {"smoothgradcam++": "SmoothGradCAMpp", "sscam": "SSCAM", "iscam": "ISCAM"}
DRAWN = {"sscam", "iscam"}  # timed at --small px with --draws perturbations


def ours(loaded, calls, x, name: str, draws: int, full_size: bool) -> Callable[[], object]:
    model = loaded.module
    folded = folded_for(model, loaded.trace.foldable, [LAYER])
    method = load_method(name)
    if name in DRAWN:
        method.SAMPLES = draws  # an instance attribute: the class keeps its default
    targets = torch.full((len(x),), TARGET)

    def run() -> torch.Tensor:
        with folded.applied():
            ctx = forward_for_cam(model, x, [LAYER], calls)
            ctx.seeds = tuple(range(len(x)))
            maps = normalise(method.compute(ctx, LAYER, targets))
        return upsample(maps, x.shape[-2:]) if full_size else maps

    return run


def grad_cam_peer(model, x, name: str) -> Callable[[], object]:
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    cls = getattr(pytorch_grad_cam, GRAD_CAM[name])
    layers = [model.get_submodule(LAYER)]

    def run() -> object:
        with cls(model, layers) as cam:
            if name == "finercam":
                return cam(x, target_idx=TARGET)
            return cam(input_tensor=x, targets=[ClassifierOutputTarget(TARGET)] * len(x))

    return run


def torchcam_peer(model, x, name: str, draws: int) -> Callable[[], object]:
    import torchcam.methods

    cls = getattr(torchcam.methods, TORCHCAM[name])
    options = {"num_samples": draws} if name in DRAWN else {}

    def run() -> object:
        with cls(model, LAYER, **options) as extractor:
            with torch.set_grad_enabled(name == "smoothgradcam++"):
                model(x)
            return extractor(class_idx=[TARGET] * len(x))

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--small", type=int, default=64, help="px for sscam and iscam")
    parser.add_argument("--draws", type=int, default=2, help="perturbations for sscam, iscam")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--methods", default=",".join([*GRAD_CAM, *TORCHCAM]))
    args = parser.parse_args()

    loaded = load_model(ModelRequest("resnet18", weights="none", device="cpu"))
    model = loaded.module
    peer_model = copy.deepcopy(model).to(memory_format=torch.contiguous_format)
    peer_model.requires_grad_(True)
    inputs = {size: sample_batch(args.images, size, MEAN, STD) for size in (args.size, args.small)}
    calls = {size: trace_model(model, (1, 3, size, size)).calls() for size in inputs}
    rows = []
    for name in args.methods.split(","):
        size = args.small if name in DRAWN else args.size
        x = inputs[size]
        if name in GRAD_CAM:
            peer, peer_name = grad_cam_peer(peer_model, x, name), "pytorch-grad-cam"
        else:
            peer, peer_name = torchcam_peer(peer_model, x, name, args.draws), "torchcam"
        contenders = {
            "featviz": ours(loaded, calls[size], x, name, args.draws, name in GRAD_CAM),
            peer_name: peer,
        }
        for run in contenders.values():  # warm-up: oneDNN builds its kernels on first use
            run()
        say(f"{name} ({size} px)")
        kept = round_robin(contenders, args.repeats, log=say)
        mine, theirs = typical(kept["featviz"]), typical(kept[peer_name])
        draws = f", {args.draws} draws" if name in DRAWN else ""
        rows.append(
            [name, f"{size} px{draws}", peer_name, f"{mine:.3f}", f"{theirs:.3f}",
             f"**{theirs / mine:.2f}×**"]
        )  # fmt: skip
    print(f"resnet18 (random init) at {LAYER}, {args.images} images, class {TARGET}")
    print(machine_line())
    print(TIMES_NOTE + "\n")
    headers = ["method", "input", "peer", "featviz s", "peer s", "featviz faster by"]
    print(table(headers, rows))


if __name__ == "__main__":
    main()
