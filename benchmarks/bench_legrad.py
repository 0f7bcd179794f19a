"""LeGrad: featviz's ``legrad`` against torchcam's ``LeGrad`` on the same CPU work, side by side
in one run, with the ratio; and its cost beside ``gradrollout`` and ``gradcam`` on the model.

torchvision's ``vit_b_16`` (random init, seed 0, the zero-initialised head drawn at std 0.02;
torchcam's LeGrad supports only torchvision's ViT), every encoder block, a batch of sample
photos squashed to 224 px, one target class (281) per image. featviz runs as ``featviz cam``
does: the model as ``featviz.load`` builds it, the batch's forward (attention and the blocks'
outputs captured in the graph), ``method.compute`` and ``normalise``; torchcam its documented
call, a forward with its hooks, then ``extractor(class_idx)``, on a copy of the same weights
with parameters requiring grad, as users run it. Both give maps on the 14 × 14 patch grid.

Usage (from the repository root):

    python benchmarks/bench_legrad.py                 # 4 images, 3 repeats
    python benchmarks/bench_legrad.py --images 2 --repeats 1

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
from featviz.model.load import load_model
from featviz.model.options import ModelRequest

TARGET = 281
MEAN, STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
CAM_LAYER = "encoder.layers.encoder_layer_11.ln_1"  # featviz's default Grad-CAM layer for it


def ours(loaded, x: torch.Tensor, name: str) -> Callable[[], torch.Tensor]:
    """featviz's map for ``name`` as ``featviz cam`` computes it for one batch."""
    method = load_method(name)
    trace = loaded.trace
    layers = [] if method.info.needs_attention else [CAM_LAYER]
    targets = torch.full((len(x),), TARGET)
    layer = "attention" if method.info.needs_attention else CAM_LAYER

    def run() -> torch.Tensor:
        ctx = forward_for_cam(
            loaded.module,
            x,
            layers,
            trace.calls(),
            layouts=trace.layouts(),
            gradients=method.info.needs_gradients,
            attention=method.info.needs_attention,
            token_prefix=trace.attention_prefix(),
        )
        return normalise(method.compute(ctx, layer, targets))

    return run


def torchcam_legrad(model: torch.nn.Module, x: torch.Tensor) -> Callable[[], object]:
    from torchcam.methods import LeGrad

    def run() -> object:
        with LeGrad(model, list(model.encoder.layers)) as extractor:
            scores = model(x)
            return extractor(class_idx=[TARGET] * len(x), scores=scores)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    torch.manual_seed(0)
    loaded = load_model(ModelRequest("vit_b_16", weights="none", device="cpu"))
    with torch.no_grad():  # torchvision zero-initialises the head: every map would be empty
        torch.nn.init.normal_(loaded.module.heads.head.weight, std=0.02)
    peer_model = copy.deepcopy(loaded.module).requires_grad_(True)
    x = sample_batch(args.images, 224, MEAN, STD)
    contenders = {
        "featviz legrad": ours(loaded, x, "legrad"),
        "torchcam LeGrad": torchcam_legrad(peer_model, x),
        "featviz gradrollout": ours(loaded, x, "gradrollout"),
        "featviz gradcam": ours(loaded, x, "gradcam"),
    }
    mine, theirs = contenders["featviz legrad"](), contenders["torchcam LeGrad"]()[0]
    assert float(mine.amax()) > 0, "empty maps: nothing to compare"
    difference = float((mine - theirs).abs().max())  # both min-max normalised per map
    for run in contenders.values():  # warm-up: oneDNN builds its kernels on first use
        run()
    kept = round_robin(contenders, args.repeats, log=say)
    seconds = {name: typical(runs) for name, runs in kept.items()}
    legrad = seconds["featviz legrad"]
    rows = [
        [name, f"{s:.3f}", f"{s / legrad:.2f}×", f"{s / seconds['featviz gradcam']:.2f}×"]
        for name, s in seconds.items()
    ]
    print(f"vit_b_16 (random init), every block, {args.images} images at 224 px, class {TARGET}")
    print(machine_line())
    print(TIMES_NOTE)
    print(
        f"Largest difference between featviz's and torchcam's normalised maps: {difference:.1e}\n"
    )
    print(table(["contender", "s", "vs featviz legrad", "vs featviz gradcam"], rows))


if __name__ == "__main__":
    main()
