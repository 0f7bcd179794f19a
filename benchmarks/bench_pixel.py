"""The pixel-level methods against their peers, side by side in one run, and where they look.

Speed: for each method, featviz (``forward_for_cam`` + ``method.compute`` with the batch norms
folded, as ``featviz cam`` runs them) and the peer's documented call on the same random-init
model, images and targets: captum for saliency, input × gradient, integrated gradients,
SmoothGrad (NoiseTunnel over Saliency, its noise replaced by featviz's), occlusion (given the
same windows per forward as featviz's ``--cam-batch-size``), guided backpropagation and
deconvolution; pytorch-grad-cam for Guided Grad-CAM (its GradCAM × GuidedBackpropReLUModel, per
image) and FullGrad. Each row also gives the largest difference of the two maps (channels
summed, relative to the peer's largest value; FullGrad min-max scaled as the peer returns it),
for featviz on the model as given and with its batch norms folded (folding rounds differently,
which can flip a ReLU or a max-pool tie at a few pixels of a flat photo region).

Localisation: on the CNN trained on the synthetic shapes (examples/synthetic_shapes.py, trained
once and cached), in scenes with one object in each half, how much of each method's |map| lies
on the explained object's half, and where its brightest 1 % of pixels lie, beside Grad-CAM's.

Usage (from the repository root):

    python benchmarks/bench_pixel.py                        # resnet18, 2 images of 224 px
    python benchmarks/bench_pixel.py --model vgg16 --images 1 --repeats 1 --no-localisation
    python benchmarks/bench_pixel.py --methods "" --localise sscam,iscam   # any method's place

Tables to stdout (Markdown), progress to stderr.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np
import torch
import torchvision
from _common import REPO, SAMPLE_NAMES, SAMPLES, machine_line, say, table
from PIL import Image

from featviz.cam import forward_for_cam, heatmap, load_method, normalise
from featviz.cam.methods import pixel
from featviz.cam.registry import method_info
from featviz.inputs.preprocess import Preprocessing, to_tensor
from featviz.layers.folding import folded_for
from featviz.layers.trace import trace_model

sys.path.insert(0, str(REPO / "examples"))

METHODS = (
    "saliency",
    "inputxgradient",
    "integratedgradients",
    "smoothgrad",
    "occlusion",
    "guidedbackprop",
    "deconvolution",
    "guidedgradcam",
    "fullgrad",
)
LAYERS = {"resnet18": "layer4", "vgg16": "features.29"}
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def featviz_call(
    model, layer, x, targets, name, cam_batch_size, fold: bool = True
) -> Callable[[], torch.Tensor]:
    method = load_method(name, batch_size=cam_batch_size)
    [where] = method.layers_for([layer])
    tapped = [] if method.info.pixel_level and where != layer else [layer]
    trace = trace_model(model, tuple(x.shape))
    folding = folded_for(model, trace.foldable if fold else [], tapped)

    def run() -> torch.Tensor:
        with folding.applied():
            ctx = forward_for_cam(
                model,
                x,
                tapped,
                trace.calls(),
                input_gradients=method.info.needs_gradients,
                relu_rules=method.relu_rules,
            )
            ctx.seeds = tuple(range(len(x)))
            return method.compute(ctx, where, targets)

    return run


def peer_call(model, layer, x, targets, name, cam_batch_size) -> Callable[[], torch.Tensor]:
    """The peer's map of the same images and targets, channels summed: (N, H, W)."""
    import captum.attr as ca

    def captum(attribution, **options) -> Callable[[], torch.Tensor]:
        def run() -> torch.Tensor:
            leaf = x.clone().requires_grad_()
            return attribution.attribute(leaf, target=targets, **options).detach().sum(dim=1)

        return run

    if name == "saliency":
        return captum(ca.Saliency(model))
    if name == "inputxgradient":
        return captum(ca.InputXGradient(model))
    if name == "integratedgradients":
        return captum(ca.IntegratedGradients(model), internal_batch_size=cam_batch_size)
    if name == "smoothgrad":
        return _captum_smoothgrad(model, x, targets)
    if name == "occlusion":
        window, stride = pixel.OCCLUSION_WINDOW, pixel.OCCLUSION_STRIDE
        run = captum(
            ca.Occlusion(model),
            sliding_window_shapes=(3, window, window),
            strides=(3, stride, stride),
            perturbations_per_eval=cam_batch_size,
        )
        return lambda: run() / 3  # captum's attribution is per channel, the same in each
    if name == "guidedbackprop":
        return captum(ca.GuidedBackprop(model))
    if name == "deconvolution":
        return captum(ca.Deconvolution(model))
    if name == "guidedgradcam":
        return _grad_cam_guided(model, layer, x, targets)
    return _grad_cam_fullgrad(model, x, targets)


def _captum_smoothgrad(model, x, targets) -> Callable[[], torch.Tensor]:
    import captum.attr as ca

    ctx = forward_for_cam(model, x, [], gradients=False)
    ctx.seeds = tuple(range(len(x)))
    tunnel = ca.NoiseTunnel(ca.Saliency(model))

    def noise(*args, **kwargs) -> torch.Tensor:  # drawn on each call, as captum's own is
        return torch.cat([pixel.smoothgrad_noise(ctx, i) for i in range(len(x))])

    def run() -> torch.Tensor:
        normal = torch.normal
        torch.normal = noise  # captum's noise is featviz's
        try:
            return (
                tunnel.attribute(
                    x.clone().requires_grad_(),
                    nt_type="smoothgrad",
                    nt_samples=pixel.SMOOTHGRAD_SAMPLES,
                    abs=False,
                    target=targets,
                )
                .detach()
                .sum(dim=1)
            )
        finally:
            torch.normal = normal

    return run


def _grad_cam_guided(model, layer, x, targets) -> Callable[[], torch.Tensor]:
    from pytorch_grad_cam import GradCAM, GuidedBackpropReLUModel
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    trainable = copy.deepcopy(model).requires_grad_(True)  # pytorch-grad-cam needs weight grads
    cam = GradCAM(trainable, [trainable.get_submodule(layer)])
    guided = GuidedBackpropReLUModel(trainable, device="cpu")

    def run() -> torch.Tensor:
        masks = cam(x, targets=[ClassifierOutputTarget(int(c)) for c in targets])
        maps = [
            (masks[i][..., None] * guided(x[i : i + 1], target_category=int(c))).sum(axis=-1)
            for i, c in enumerate(targets)
        ]
        return torch.from_numpy(np.stack(maps))

    return run


def _grad_cam_fullgrad(model, x, targets) -> Callable[[], torch.Tensor]:
    from pytorch_grad_cam import FullGrad
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    full = FullGrad(copy.deepcopy(model).requires_grad_(True), [])

    def run() -> torch.Tensor:
        return torch.from_numpy(full(x, targets=[ClassifierOutputTarget(int(c)) for c in targets]))

    return run


def timed(contenders: dict[str, Callable[[], object]], repeats: int):
    """Median wall and CPU seconds (this process, every thread) of each contender, timed
    round-robin: on a shared machine, others' load slows the wall clock of whichever contender
    it hits, while the CPU time is the work done."""
    wall: dict[str, list[float]] = {name: [] for name in contenders}
    cpu: dict[str, list[float]] = {name: [] for name in contenders}
    for repeat in range(repeats):
        for name, function in contenders.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            function()
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
            say(f"  repeat {repeat + 1}/{repeats} {name}: {wall[name][-1]:.2f} s")
    return (
        {name: statistics.median(values) for name, values in wall.items()},
        {name: statistics.median(values) for name, values in cpu.items()},
    )


def difference(name: str, ours: torch.Tensor, theirs: torch.Tensor) -> float:
    if name == "fullgrad":
        ours = normalise(ours)
    return float((ours - theirs).abs().max() / theirs.abs().max())


def speed(args) -> None:
    torch.manual_seed(0)
    model = getattr(torchvision.models, args.model)(weights=None).eval().requires_grad_(False)
    layer = LAYERS[args.model]
    size = Preprocessing(MEAN, STD, args.size, "square")
    images = [Image.open(SAMPLES / name).convert("RGB") for name in SAMPLE_NAMES[: args.images]]
    x = torch.stack([to_tensor(image, size) for image in images])
    targets = torch.tensor([281, 504, 967, 652, 812][: args.images])
    rows = []
    for name in args.methods.split(","):
        ours = featviz_call(model, layer, x, targets, name, args.cam_batch_size)
        theirs = peer_call(model, layer, x, targets, name, args.cam_batch_size)
        folded_gap = difference(name, ours(), theirs())  # also the warm-up
        unfolded = featviz_call(model, layer, x, targets, name, args.cam_batch_size, fold=False)
        gap = difference(name, unfolded(), theirs())
        wall, cpu = timed({"featviz": ours, "peer": theirs}, args.repeats)
        rows.append(
            [
                name,
                f"{wall['featviz']:.2f}",
                f"{wall['peer']:.2f}",
                f"**{wall['peer'] / wall['featviz']:.2f}×**",
                f"{cpu['featviz']:.2f}",
                f"{cpu['peer']:.2f}",
                f"**{cpu['peer'] / cpu['featviz']:.2f}×**",
                f"{gap:.1e}",
                f"{folded_gap:.1e}",
            ]
        )
        say(f"{name}: {rows[-1]}")
    print(
        f"{args.model}, {args.images} images of {args.size}×{args.size} px, one target each, "
        f"cam batch size {args.cam_batch_size}, median of {args.repeats} runs timed round-robin"
    )
    print(machine_line() + "\n")
    headers = ["method", "featviz s", "peer s", "peer / featviz"]
    headers += ["featviz CPU s", "peer CPU s", "CPU peer / featviz"]
    headers += ["max |Δ| / max", "folded: max |Δ| / max"]
    print(table(headers, rows))


def localisation(methods: list[str]) -> None:
    from synthetic_shapes import HEIGHT, WIDTH, accuracy, cached, cnn, trained, two_object_scenes

    model = cached("shapes_cnn", cnn, lambda: trained(cnn), "about 20 s")
    say(f"shapes CNN: every label right on {accuracy(model):.0%} of held-out scenes")
    layer = "5"  # the last ReLU, 8 × 16
    names = ("gradcam", *methods)
    mass: dict[str, list[float]] = {name: [] for name in names}
    peaks: dict[str, list[float]] = {name: [] for name in names}
    for x, left, right in two_object_scenes(20, seed=1):
        ctx = forward_for_cam(model, x, [layer], input_gradients=True)
        ctx.seeds = (0,)
        for half, target in ((0, left), (1, right)):
            for name in names:
                method = load_method(name)
                [where] = method.layers_for([layer])
                found = method.compute(ctx, where, torch.tensor([target]))[0]
                found = found.abs() if method_info(name).signed else found
                heat = heatmap(found, (HEIGHT, WIDTH)).numpy()
                own = heat[:, : WIDTH // 2] if half == 0 else heat[:, WIDTH // 2 :]
                mass[name].append(float(own.sum() / heat.sum()))
                top = heat >= np.quantile(heat, 0.99)
                mine = top[:, : WIDTH // 2] if half == 0 else top[:, WIDTH // 2 :]
                peaks[name].append(float(mine.sum() / top.sum()))
    rows = [
        [
            name,
            f"{np.mean(mass[name]):.2f}",
            f"{min(mass[name]):.2f}",
            f"{np.mean(peaks[name]):.2f}",
        ]
        for name in names
    ]
    print("\nshapes CNN, 20 two-object scenes × both objects: the explained object's half holds")
    print(table(["method", "share of |map|", "worst", "share of the top 1 % pixels"], rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18", choices=sorted(LAYERS))
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cam-batch-size", type=int, default=32)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--no-localisation", action="store_true")
    parser.add_argument(
        "--localise", default=",".join(METHODS), help="methods placed beside gradcam's"
    )
    args = parser.parse_args()
    if args.methods:
        speed(args)
    if not args.no_localisation:
        localisation(args.localise.split(","))


if __name__ == "__main__":
    main()
