"""What each CAM method costs, relative to Grad-CAM, per image, in one run.

For each model (random-init resnet18 at ``layer4``; the real EfficientNet-Lite0 from examples/ at
``bn2``) and each registered method, it times one image end to end through the library:
``forward_for_cam`` (the grad-mode forward) + ``method.compute`` (backward, extra forwards, SVD).
The input is sample_images/chelsea.png squashed to ``--size`` × ``--size``. Methods are timed
round-robin so a burst of someone else's load hits them alike; each run waits for a quiet CPU
and is redone when other processes took more than 10 % of it (``_common.round_robin``).

Usage (from the repository root):

    python benchmarks/cam_method_costs.py                   # 224 px, median of 5 (scorecam: 1)
    python benchmarks/cam_method_costs.py --size 160 --cam-batch-size 8 --models lite0
    python benchmarks/cam_method_costs.py --methods gradcam,finercam   # a few (gradcam first)

Table to stdout (Markdown), progress to stderr.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
import torchvision
from _common import REPO, SAMPLES, TIMES_NOTE, machine_line, round_robin, say, table, typical
from PIL import Image

from featviz.cam import forward_for_cam, load_method, method_names
from featviz.inputs.preprocess import Preprocessing, to_tensor
from featviz.layers.trace import trace_model
from featviz.model.load import load_model
from featviz.model.options import ModelRequest

SLOW = {"scorecam", "sscam", "iscam"}  # K (35·K, 10·K) full forwards: timed once


def build(name: str) -> tuple[torch.nn.Module, str, tuple, tuple]:
    """(model, tapped layer, mean, std) for ``resnet18`` or ``lite0``."""
    if name == "resnet18":
        torch.manual_seed(0)
        model = torchvision.models.resnet18(weights=None).eval().requires_grad_(False)
        return model, "layer4", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    spec = str(REPO / "examples" / "efficientnet_lite0.py") + ":build"
    loaded = load_model(ModelRequest(spec, device="cpu"))
    return loaded.module, "bn2", loaded.preprocessing.mean, loaded.preprocessing.std


def one_image(model, layer, calls, x, method) -> Callable[[], object]:
    target = torch.tensor([281])
    pixel_level = method.info.pixel_level  # its map is of the input (or, guidedgradcam, layer)
    where = method.layers_for([layer])[0] if pixel_level else layer

    def run() -> object:
        ctx = forward_for_cam(
            model,
            x,
            [layer],
            calls,
            input_gradients=pixel_level,
            relu_rules=method.relu_rules,
        )
        return method.compute(ctx, where, target)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet18,lite0")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cam-batch-size", type=int, default=32)
    parser.add_argument("--methods", default=",".join(method_names()))
    args = parser.parse_args()
    methods = args.methods.split(",")

    image = Image.open(SAMPLES / "chelsea.png").convert("RGB")
    models = args.models.split(",")
    seconds: dict[str, dict[str, float]] = {}
    for name in models:
        model, layer, mean, std = build(name)
        x = to_tensor(image, Preprocessing(mean, std, args.size, "square"))[None]
        calls = trace_model(model, tuple(x.shape)).calls()
        runs = {
            method: one_image(
                model, layer, calls, x, load_method(method, batch_size=args.cam_batch_size)
            )
            for method in methods
        }
        for method, run in runs.items():  # warm-up: oneDNN builds its kernels on first use
            if method not in SLOW:
                run()
        fast = {method: run for method, run in runs.items() if method not in SLOW}
        slow = {method: run for method, run in runs.items() if method in SLOW}
        kept = round_robin(fast, args.repeats, log=say) | round_robin(slow, 1, log=say)
        seconds[name] = {method: typical(method_runs) for method, method_runs in kept.items()}

    headers = ["method"]
    for name in models:
        headers += [f"{name} s/image", f"{name} × gradcam"]
    rows = []
    for method in methods:
        row: list[object] = [method]
        for name in models:
            value = seconds[name][method]
            row += [f"{value:.3f}", f"{value / seconds[name]['gradcam']:.1f}"]
        rows.append(row)
    print(f"{args.size}×{args.size} px, 1 image, cam batch size {args.cam_batch_size}")
    print(machine_line())
    print(TIMES_NOTE + "\n")
    print(table(headers, rows))


if __name__ == "__main__":
    main()
