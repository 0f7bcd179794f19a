"""``featviz dream`` vs torch-lucent's ``render_vis``: time per objective and objective reached.

Same model (the real EfficientNet-Lite0 of examples/), same objectives (channels of one layer,
then classes), same image size and steps, both with their defaults otherwise (Adam at 0.05,
Fourier parameterisation with decorrelated colour, their transformation robustness, the
network fed 224 × 224). lucent renders one objective per call and gets the model as its
documentation prepares one (built, ``.eval()``); featviz renders all objectives of a kind in
one batch, through ``featviz.load`` (parameters frozen, batch norms folded while it runs, the
forward stopped at a channel objective's layer). featviz one objective per call is timed too,
to show what the batch itself is worth.

Both contenders' final images are scored the same way, by this script: quantised to uint8,
fed whole at 224 × 224, the mean of the channel (the class's logit) read by a forward hook.
The objective at the start (a near-grey image) is shown for scale.

Usage: python benchmarks/bench_dream.py [--steps 64] [--size 128] [--layer blocks.2]
       [--channels 8] [--classes 1 130 323 951]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, machine_line, say, table

MODEL = str(REPO / "examples" / "efficientnet_lite0.py") + ":build"
INPUT = 224


def score(module: torch.nn.Module, layer: str | None, indices: list[int], images) -> np.ndarray:
    """The objective of image i, ``indices[i]``, on ``images`` (N, H, W, 3) in [0, 1]:
    a channel's mean at ``layer`` or, when ``layer`` is None, a class's logit."""
    pixels = torch.from_numpy((np.asarray(images) * 255).round() / 255).float()
    x = torch.nn.functional.interpolate(
        pixels.permute(0, 3, 1, 2), size=(INPUT, INPUT), mode="bilinear", antialias=True
    )
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    seen = {}
    hook = None
    if layer is not None:
        target = dict(module.named_modules())[layer]
        hook = target.register_forward_hook(lambda m, i, out: seen.update(out=out))
    with torch.no_grad():
        logits = module((x - mean) / std)
    if hook is not None:
        hook.remove()
    rows = torch.arange(len(indices))
    if layer is None:
        return logits[rows, indices].numpy()
    return seen["out"][rows, indices].mean(dim=(1, 2)).numpy()


def run_lucent(module, layer: str | None, indices: list[int], steps: int, size: int):
    """lucent, one ``render_vis`` per objective; (seconds, (N, size, size, 3) images)."""
    from lucent.optvis import param, render

    name = "labels" if layer is None else layer.replace(".", "_")
    images = []
    start = time.perf_counter()
    for index in indices:
        torch.manual_seed(index)
        found = render.render_vis(
            module,
            f"{name}:{index}",
            param_f=lambda: param.image(size),
            thresholds=(steps,),
            progress=False,
            show_image=False,
        )
        images.append(found[-1][0])
    return time.perf_counter() - start, np.stack(images)


def run_featviz(loaded, layer: str | None, indices: list[int], steps: int, size: int, batch: bool):
    """featviz, all objectives in one batch or one per call; (seconds, images in [0, 1])."""
    from featviz.features.dream import DreamSettings, dream
    from featviz.features.objectives import Objective

    objectives = [
        Objective("class", i) if layer is None else Objective("channel", i, layer) for i in indices
    ]
    settings = DreamSettings(steps=steps, size=size)
    groups = [objectives] if batch else [[objective] for objective in objectives]
    start = time.perf_counter()
    pixels = [dream(loaded, group, settings).pixels for group in groups]
    return time.perf_counter() - start, np.concatenate(pixels) / 255.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--layer", default="blocks.2")
    parser.add_argument("--channels", type=int, default=8)
    parser.add_argument("--classes", type=int, nargs="+", default=[1, 130, 323, 951])
    args = parser.parse_args()

    import featviz

    sys.path.insert(0, str(REPO / "examples"))
    from efficientnet_lite0 import build

    loaded = featviz.load(MODEL, device="cpu")
    # lucent as its documentation uses a model: built, in eval mode, nothing else done to it.
    module = build().eval()
    rows = []
    for layer, indices in ((args.layer, list(range(args.channels))), (None, args.classes)):
        what = f"{len(indices)} channels of {layer}" if layer else f"{len(indices)} classes"
        grey = score(module, layer, indices, np.full((len(indices), 8, 8, 3), 0.5))
        say(f"{what}: lucent…")
        lucent_s, lucent_images = run_lucent(module, layer, indices, args.steps, args.size)
        say(f"{what}: featviz, one per call…")
        single_s, _ = run_featviz(loaded, layer, indices, args.steps, args.size, batch=False)
        say(f"{what}: featviz, one batch…")
        featviz_s, featviz_images = run_featviz(
            loaded, layer, indices, args.steps, args.size, batch=True
        )
        per = len(indices)
        rows.append(
            [
                what,
                f"{grey.mean():.2f}",
                f"{score(module, layer, indices, lucent_images).mean():.2f}",
                f"{score(module, layer, indices, featviz_images).mean():.2f}",
                f"{lucent_s / per:.2f}",
                f"{single_s / per:.2f}",
                f"{featviz_s / per:.2f}",
                f"**{lucent_s / featviz_s:.1f}×**",
            ]
        )
    print(machine_line())
    print(f"\nEfficientNet-Lite0, {args.size} px images seen at 224, {args.steps} steps\n")
    headers = [
        "objectives",
        "grey start",
        "lucent reached",
        "featviz reached",
        "lucent s/objective",
        "featviz 1 per call s/obj.",
        "featviz batch s/obj.",
        "lucent / featviz batch",
    ]
    print(table(headers, rows))


if __name__ == "__main__":
    main()
