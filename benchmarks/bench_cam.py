"""Grad-CAM overlays, end to end: featviz against pytorch-grad-cam and torchcam, in one run.

For each model (resnet50 at ``layer4``, alexnet at ``features.11``), on one folder of photos
(default 32 at 640×480, made from sample_images/), it times:

- featviz: its library path in-process, ``prepare(Plan("cam", …)).results()`` (decode and PNG
  writing in thread pools, batches of 8 on CPU), the model built beforehand;
- pytorch-grad-cam: the documented per-image loop, ``with GradCAM(model=..., target_layers=[...])
  as cam: cam(input_tensor=..., targets=None)``, ``show_cam_on_image`` at the original size,
  ``cv2.imwrite``;
- torchcam: the documented per-image loop, ``GradCAM(model, target_layer=...)``,
  ``cam_extractor(class_idx, scores)``, ``overlay_mask`` at the original size, ``Image.save``;
- the compute floor: the same model's batched forward + backward to the layer's activation
  (``torch.autograd.grad``, frozen weights: the cheapest correct Grad-CAM compute) on tensors
  preloaded at the same shapes, batch 8; no decoding, no maps, no writing;

and, once per model, the ``featviz cam`` command line on the same folder (wall time, imports and
model build included). Beside them, in the same round-robin, featviz with each candidate fix of
whatif.py applied (``--no-what-if`` skips them), and the floor with a channels_last model; the
"top-1 k/N" after a variant's runs says it explains the same classes. Every contender reads the
photos, explains the top-1 class at the same layer, makes an overlay at the ORIGINAL resolution
and writes one PNG per photo. All models are random-init (``--weights none``, seed 0): no
download, same weights everywhere.

Usage (from the repository root, with the bench extras installed: ``pip install -e .[bench]``):

    python benchmarks/bench_cam.py                        # both models, 32 photos, 3 repeats
    python benchmarks/bench_cam.py --images 16 --repeats 1 --models alexnet
    python benchmarks/bench_cam.py --profile              # + stage breakdown and py-spy profile
    FEATVIZ_BENCH_QUIET=1 python benchmarks/bench_cam.py  # never wait for a quiet CPU

About 7 minutes on a quiet machine (4 with ``--no-what-if``); longer on a busy one, where runs
during which other processes took over 10 % of the CPU are redone. Tables go to stdout
(Markdown), progress to stderr.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import whatif
from _common import (
    TIMES_NOTE,
    Run,
    featviz_command,
    machine_line,
    make_photos,
    round_robin,
    runs_text,
    say,
    table,
    typical,
)
from torch import nn

MODELS = {"resnet50": "layer4", "alexnet": "features.11"}
# featviz against the faster peer (issue 14); 2× for any other model.
SPEEDUP_GOALS = {"resnet50": 3, "alexnet": 6}
INPUT_SIZE = 224
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
SEED = 0
BATCH = 8  # featviz's default on CPU; the floor uses it too


@dataclass
class Stages:
    """Seconds spent per named stage, summed over a loop (peers are timed stage by stage)."""

    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - start


def resized_shape(width: int, height: int) -> tuple[int, int]:
    """(height, width) with the shorter side = INPUT_SIZE, aspect kept, as featviz does."""
    scale = INPUT_SIZE / min(width, height)
    return round(height * scale), round(width * scale)


def build_model(name: str) -> nn.Module:
    """The peers' model: random init with featviz's seed, eval mode, weights left trainable as
    in both libraries' examples (pytorch-grad-cam needs it: its gradient hook only fires on
    outputs that require grad)."""
    import torchvision

    torch.manual_seed(SEED)
    return torchvision.models.get_model(name, weights=None).eval()


# --- the peers ---------------------------------------------------------------------------------


def pytorch_grad_cam_loop(
    model: nn.Module, layer: str, photos: list[Path], out: Path
) -> tuple[list[int], Stages]:
    """pytorch-grad-cam's README idiom, one image at a time, preprocessing made featviz's."""
    import cv2
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.image import preprocess_image, show_cam_on_image

    target = dict(model.named_modules())[layer]
    top1, stages = [], Stages()
    with GradCAM(model=model, target_layers=[target]) as cam:
        for path in photos:
            with stages("decode"):
                rgb = cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
            with stages("resize + normalise input"):
                height, width = rgb.shape[:2]
                small_h, small_w = resized_shape(width, height)
                # INTER_AREA: antialiased downscaling, like featviz's Pillow resize
                small = cv2.resize(rgb, (small_w, small_h), interpolation=cv2.INTER_AREA)
                input_tensor = preprocess_image(np.float32(small) / 255, mean=MEAN, std=STD)
            with stages("forward + backward + CAM"):
                # also scales the map to the input tensor's size (cv2.resize)
                grayscale = cam(input_tensor=input_tensor, targets=None)[0]
                top1.append(int(cam.outputs.argmax()))
            with stages("upsample to original"):
                full = cv2.resize(grayscale, (width, height))
            with stages("colour map + blend"):
                overlay = show_cam_on_image(np.float32(rgb) / 255, full, use_rgb=True)
            with stages("PNG encode + write"):
                cv2.imwrite(str(out / f"{path.stem}.png"), cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR))
    return top1, stages


def torchcam_loop(
    model: nn.Module, layer: str, photos: list[Path], out: Path
) -> tuple[list[int], Stages]:
    """torchcam's README idiom (read_image, resize, normalize, overlay_mask), one image at a
    time. Its ``resize(img, 224)`` truncates the longer side (298 px, featviz rounds to 299)."""
    from torchcam.methods import GradCAM
    from torchcam.utils import overlay_mask
    from torchvision.io import read_image
    from torchvision.transforms.functional import normalize, resize, to_pil_image

    top1, stages = [], Stages()
    with GradCAM(model, target_layer=layer) as cam_extractor:
        for path in photos:
            with stages("decode"):
                image = read_image(str(path))
            with stages("resize + normalise input"):
                tensor = normalize(resize(image, INPUT_SIZE) / 255.0, MEAN, STD)
            with stages("forward + backward + CAM"):
                scores = model(tensor.unsqueeze(0))
                class_idx = int(scores.squeeze(0).argmax())
                [activation_map] = cam_extractor(class_idx, scores)
                top1.append(class_idx)
            with stages("upsample + colour map + blend"):
                # overlay_mask resizes the map to the image (bicubic), colours it with
                # matplotlib and blends; alpha is the image's weight: 0.5 as featviz's default
                result = overlay_mask(
                    to_pil_image(image),
                    to_pil_image(activation_map.squeeze(0), mode="F"),
                    alpha=0.5,
                )
            with stages("PNG encode + write"):
                result.save(out / f"{path.stem}.png")
    return top1, stages


# --- the floor ---------------------------------------------------------------------------------


def preload(photos: list[Path]) -> list[torch.Tensor]:
    """The photos as featviz feeds them to the network, in batches of BATCH."""
    from featviz.inputs.decode import decode
    from featviz.inputs.preprocess import Preprocessing, to_tensor

    tensors = [to_tensor(decode(path), Preprocessing(MEAN, STD, INPUT_SIZE)) for path in photos]
    return [torch.stack(tensors[i : i + BATCH]) for i in range(0, len(tensors), BATCH)]


def compute_floor(module: nn.Module, layer: str, batches: list[torch.Tensor]) -> None:
    """Forward each batch, then d(top-1 score)/d(layer output) only: the tap's output becomes an
    autograd leaf of frozen weights, so nothing before it is recorded or differentiated."""
    leaves: list[torch.Tensor] = []

    def tap(_module: nn.Module, _inputs: object, output: torch.Tensor) -> torch.Tensor:
        leaf = output.detach().requires_grad_()
        leaves.append(leaf)
        return leaf.clone()  # an in-place op after the tap (ReLU, +=) must not touch the leaf

    handle = dict(module.named_modules())[layer].register_forward_hook(tap)
    try:
        for batch in batches:
            leaves.clear()
            logits = module(batch)
            score = logits.gather(1, logits.argmax(1, keepdim=True)).sum()
            torch.autograd.grad(score, leaves[0])
    finally:
        handle.remove()


# --- featviz -----------------------------------------------------------------------------------


def prepare_featviz(model: str, layer: str, folder: Path, out: Path):
    """featviz's library path, model built and layers traced (not timed)."""
    from featviz.model.options import ModelRequest
    from featviz.run.plan import CamRequest, Plan, RunRequest
    from featviz.run.prepare import prepare
    from featviz.sinks.options import OutputRequest

    return prepare(
        Plan(
            "cam",
            ModelRequest(model, weights="none", seed=SEED, device="cpu"),
            OutputRequest(out, gallery=False),
            CamRequest(layers=(layer,)),
            RunRequest((str(folder),)),
        )
    )


def run_featviz(run) -> list[int]:
    """One featviz run over the folder; the top-1 class of each image."""
    results = list(run.results())
    failed = [r.error for r in results if r.error]
    if failed:
        raise RuntimeError(f"featviz failed on {len(failed)} images: {failed[0]}")
    return [r.predictions[0].index for r in results]


def run_cli(model: str, layer: str, folder: Path, out: Path) -> None:
    """``featviz cam`` on the folder: process start, imports, model build, run."""
    command = [
        *featviz_command(),
        "cam",
        "-m",
        model,
        "--weights",
        "none",
        "-l",
        layer,
        "-q",
        "-o",
        str(out),
        str(folder),
    ]
    subprocess.run(command, check=True, capture_output=True)


# --- the benchmark -----------------------------------------------------------------------------


@dataclass
class ModelResult:
    model: str
    layer: str
    images: int
    runs: dict[str, list[Run]]
    cli: Run | None
    agreement: dict[str, int]


def with_context(factory: Callable[[], Any], function: Callable[[], object]) -> object:
    with factory():
        return function()


def bench_model(
    model: str,
    layer: str,
    photos: list[Path],
    folder: Path,
    work: Path,
    repeats: int,
    cli: bool,
    what_if: bool,
) -> ModelResult:
    say(f"{model} at {layer}: building models (not timed)")
    outs = {name: work / f"{model}-{name}" for name in ("featviz", "pgc", "torchcam", "cli")}
    for path in outs.values():
        path.mkdir(parents=True, exist_ok=True)
    run = prepare_featviz(model, layer, folder, outs["featviz"])
    assert run.config.batch_size == BATCH, run.config.batch_size
    peer_model = build_model(model)
    batches = preload(photos)
    contenders: dict[str, Callable[[], object]] = {
        "featviz": lambda: run_featviz(run),
        "pytorch-grad-cam": lambda: pytorch_grad_cam_loop(peer_model, layer, photos, outs["pgc"]),
        "torchcam": lambda: torchcam_loop(peer_model, layer, photos, outs["torchcam"]),
        "floor": lambda: compute_floor(run.model.module, layer, batches),
    }
    if what_if:  # candidate fixes, timed in the same round-robin (see whatif.py)
        for name, factory in whatif.variants(run).items():
            contenders[f"featviz + {name}"] = partial(with_context, factory, contenders["featviz"])
        contenders["floor, model channels_last"] = partial(
            with_context, partial(whatif.channels_last, run.model.module), contenders["floor"]
        )
    say("  warm-up (one run each, not timed)")
    warm = {name: function() for name, function in contenders.items()}
    for name in ("featviz", "pgc", "torchcam"):
        # photos with an overlay (featviz: <photo>/cam/gradcam/<layer>/<class>.png, and a
        # variant that explains another class adds a file beside it)
        written = {path.relative_to(outs[name]).parts[0] for path in outs[name].rglob("*.png")}
        if len(written) != len(photos):
            raise RuntimeError(f"{name} wrote overlays for {len(written)} of {len(photos)} photos")
    agreement = {
        peer: sum(a == b for a, b in zip(warm["featviz"], warm[peer][0]))
        for peer in ("pytorch-grad-cam", "torchcam")
    }
    runs = round_robin(contenders, repeats, log=say)
    for name, kept in runs.items():  # a candidate fix must not change what is explained
        if name.startswith("featviz + "):
            agreement[name] = sum(a == b for a, b in zip(warm["featviz"], kept[-1].value))
    cli_run = None
    if cli:
        say("  featviz cam command line")
        cli_run = round_robin({"cli": lambda: run_cli(model, layer, folder, outs["cli"])}, 1)
        cli_run = cli_run["cli"][0]
    return ModelResult(model, layer, len(photos), runs, cli_run, agreement)


def peer_stages(runs: list[Run], images: int) -> str:
    """The peer's own stage times, ms/image, averaged over its kept runs."""
    totals: dict[str, float] = defaultdict(float)
    for run in runs:
        for stage, seconds in run.value[1].seconds.items():
            totals[stage] += seconds / len(runs)
    return ", ".join(f"{stage} {1000 * s / images:.1f}" for stage, s in totals.items())


def report(result: ModelResult) -> str:
    """The model's table (Markdown), the two goals, agreement and the peers' stages."""
    n = result.images
    med = {name: typical(runs) for name, runs in result.runs.items()}
    faster_peer = min(med["pytorch-grad-cam"], med["torchcam"])
    rows = []
    for name in ("featviz", "pytorch-grad-cam", "torchcam", "floor"):
        seconds = med[name]
        rows.append(
            [
                name,
                f"{seconds:.2f}",
                f"{n / seconds:.1f}",
                f"{1000 * seconds / n:.0f}",
                f"{seconds / med['featviz']:.2f}×" if name not in ("featviz", "floor") else "",
                f"{med['featviz'] / seconds:.2f}" if name == "floor" else "",
                runs_text(result.runs[name]),
            ]
        )
    for name in result.runs:
        if name.startswith(("featviz + ", "floor, ")):
            seconds = med[name]
            rows.append(
                [
                    f"what if: {name}",
                    f"{seconds:.2f}",
                    f"{n / seconds:.1f}",
                    f"{1000 * seconds / n:.0f}",
                    f"{faster_peer / seconds:.2f}× faster" if name.startswith("featviz") else "",
                    f"{seconds / med['floor']:.2f}" if name.startswith("featviz") else "",
                    runs_text(result.runs[name])
                    + (f"; top-1 {result.agreement[name]}/{n}" if name in result.agreement else ""),
                ]
            )
    if result.cli is not None:
        seconds = result.cli.seconds
        rows.append(
            [
                "featviz CLI (1 run, wall)",
                f"{seconds:.2f}",
                f"{n / seconds:.1f}",
                f"{1000 * seconds / n:.0f}",
                "",
                "",
                f"{runs_text([result.cli])}: fixed ≈ {seconds - med['featviz']:.2f} s",
            ]
        )
    speedup = faster_peer / med["featviz"]
    goal = SPEEDUP_GOALS.get(result.model, 2)
    floor_ratio = med["featviz"] / med["floor"]
    lines = [
        f"### {result.model} at {result.layer}: {n} photos 640×480, Grad-CAM top-1",
        "",
        table(
            ["contender", "s", "images/s", "ms/image", "peer/featviz", "featviz/floor", "runs (s)"],
            rows,
        ),
        "",
        f"- featviz vs the faster peer: {speedup:.2f}× "
        f"({'met' if speedup >= goal else 'MISSED'}: goal ≥ {goal}×)",
        f"- featviz / floor: {floor_ratio:.2f} "
        f"({'met' if floor_ratio <= 1.3 else 'MISSED'}: goal ≤ 1.3)",
        "- same top-1 class as featviz: "
        + ", ".join(
            f"{name} {result.agreement[name]}/{n}" for name in ("pytorch-grad-cam", "torchcam")
        ),
    ]
    for peer in ("pytorch-grad-cam", "torchcam"):
        lines.append(f"- {peer} stages, ms/image: {peer_stages(result.runs[peer], n)}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32, help="photos in the folder (32)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs each (median; 3)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--no-cli", action="store_true", help="skip the command-line run")
    parser.add_argument(
        "--no-what-if", action="store_true", help="skip the candidate fixes (whatif.py)"
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also a stage breakdown and a py-spy profile of featviz",
    )
    parser.add_argument("--keep", type=Path, help="write photos and outputs here and keep them")
    args = parser.parse_args(argv)

    work = args.keep or Path(tempfile.mkdtemp(prefix="featviz-bench-"))
    try:
        folder = work / "photos"
        photos = make_photos(folder, args.images)
        started = time.perf_counter()
        print(f"Machine: {machine_line()}\n")
        for model in args.models:
            result = bench_model(
                model,
                MODELS[model],
                photos,
                folder,
                work,
                args.repeats,
                cli=not args.no_cli,
                what_if=not args.no_what_if,
            )
            print(report(result), flush=True)
            if args.profile:
                from profile_cam import profile_model

                print(profile_model(model, MODELS[model], photos, folder, work), flush=True)
        print(f"Total {time.perf_counter() - started:.0f} s. {TIMES_NOTE}")
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
