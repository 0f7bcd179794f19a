"""featviz's LRP against zennit's, and AttnLRP's cost, in one run.

- ``lrp`` on VGG16 (random-init, seed 0): featviz's ``lrp_relevance`` against zennit's
  ``Gradient`` attributor with the ``EpsilonGammaBox`` composite (the same rules: z^B on the
  first convolution, γ = 0.25 on the others, ε = 1e-6 on the Linear layers), one batch of
  ``--images`` random images at ``--size`` pixels, the first class of each; beside them the
  floor, plain input × gradient (one forward, one backward to the input), and featviz's
  Grad-CAM at the default layer, the unit of the docs' cost column. The largest
  difference between the two relevance maps is printed with the times.
- ``attnlrp`` on timm's ``vit_small_patch16_224`` (random-init, seed 0) against that floor: no
  peer of AttnLRP is among featviz's test dependencies, so its cost is shown relative to a
  plain backward of the same model (and to Grad-CAM).

Usage (from the repository root, with the test extras, which have zennit and timm):

    python benchmarks/bench_lrp.py                  # 4 images at 224 px, 3 repeats
    python benchmarks/bench_lrp.py --images 2 --size 112 --repeats 2

Tables go to stdout (Markdown), progress to stderr.
"""

from __future__ import annotations

import argparse

import timm
import torch
import torch.nn.functional as F
import torchvision
from _common import machine_line, round_robin, runs_text, say, table, typical
from zennit.attribution import Gradient
from zennit.composites import EpsilonGammaBox

from featviz.cam import forward_for_cam, load_method
from featviz.cam.methods.attnlrp import attnlrp_relevance
from featviz.cam.methods.lrp import lrp_relevance
from featviz.layers.trace import trace_model

MEAN = torch.tensor([0.485, 0.456, 0.406])
STD = torch.tensor([0.229, 0.224, 0.225])


def _floor(model: torch.nn.Module, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Input × gradient: the cheapest one-backward attribution of the same model."""
    leaf = x.clone().requires_grad_()
    scores = model(leaf)[torch.arange(len(x)), targets]
    (gradient,) = torch.autograd.grad(scores.sum(), leaf)
    return leaf.detach() * gradient


def _gradcam(model: torch.nn.Module, x: torch.Tensor, targets: torch.Tensor):
    """featviz's Grad-CAM at the model's default layer, the unit of the docs' cost column."""
    trace = trace_model(model, (1, *x.shape[1:]))
    layer, method = trace.default_cam_layer(), load_method("gradcam")

    def run() -> torch.Tensor:
        ctx = forward_for_cam(model, x, [layer], trace.calls(), layouts=trace.layouts())
        return method.compute(ctx, layer, targets)

    return run


def _rows(runs: dict, base: str) -> list[list[str]]:
    """One row per contender: seconds, ÷ ``base``, ÷ featviz gradcam, every run."""
    unit, gradcam = typical(runs[base]), typical(runs["featviz gradcam"])
    rows = []
    for name, r in runs.items():
        seconds = typical(r)
        ratios = [f"{seconds / unit:.2f}×", f"{seconds / gradcam:.1f}×"]
        rows.append([name, f"{seconds:.3f}", *ratios, runs_text(r)])
    return rows


def _images(count: int, size: int) -> torch.Tensor:
    pixels = torch.rand(count, 3, size, size, generator=torch.Generator().manual_seed(0))
    return (pixels - MEAN[:, None, None]) / STD[:, None, None]


def bench_lrp(images: int, size: int, repeats: int) -> str:
    torch.manual_seed(0)
    model = torchvision.models.vgg16().eval().requires_grad_(False)
    x, targets = _images(images, size), torch.zeros(images, dtype=torch.long)
    low, high = (0 - MEAN) / STD, (1 - MEAN) / STD
    box = {
        "low": low[None, :, None, None].expand_as(x),
        "high": high[None, :, None, None].expand_as(x),
    }

    def zennit() -> torch.Tensor:
        with Gradient(model=model, composite=EpsilonGammaBox(**box)) as attributor:
            _, relevance = attributor(x, lambda out: out * F.one_hot(targets, out.shape[1]))
        return relevance

    contenders = {
        "featviz lrp": lambda: lrp_relevance(model, x, targets, low, high)[0],
        "zennit EpsilonGammaBox": zennit,
        "floor: input × gradient": lambda: _floor(model, x, targets),
        "featviz gradcam": _gradcam(model, x, targets),
    }
    runs = round_robin(contenders, repeats, log=say)
    ours, theirs = runs["featviz lrp"][-1].value, runs["zennit EpsilonGammaBox"][-1].value
    difference = float((ours - theirs).abs().amax() / theirs.abs().amax())
    header = (
        f"VGG16, {images} images at {size} px; largest |featviz − zennit| / largest |zennit|: "
        f"{difference:.1e}\n\n"
    )
    rows = _rows(runs, "featviz lrp")
    return header + table(["", "s", "÷ featviz lrp", "÷ gradcam", "runs"], rows)


def bench_attnlrp(images: int, repeats: int) -> str:
    torch.manual_seed(0)
    model = timm.create_model("vit_small_patch16_224", pretrained=False).eval()
    model.requires_grad_(False)
    x, targets = _images(images, 224), torch.zeros(images, dtype=torch.long)
    contenders = {
        "featviz attnlrp": lambda: attnlrp_relevance(model, x, targets)[0],
        "floor: input × gradient": lambda: _floor(model, x, targets),
        "featviz gradcam": _gradcam(model, x, targets),
    }
    runs = round_robin(contenders, repeats, log=say)
    rows = _rows(runs, "floor: input × gradient")
    return f"vit_small_patch16_224, {images} images at 224 px\n\n" + table(
        ["", "s", "÷ floor", "÷ gradcam", "runs"], rows
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(machine_line() + "\n")
    print(bench_lrp(args.images, args.size, args.repeats) + "\n")
    print(bench_attnlrp(args.images, args.repeats))


if __name__ == "__main__":
    main()
