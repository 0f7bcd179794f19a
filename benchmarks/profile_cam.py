"""Where featviz's time goes on a ``cam`` run: stage by stage, and sampled across its threads.

Two views, printed as Markdown by ``bench_cam.py --profile`` (or run this file directly):

1. Stages one at a time: featviz's own functions (decode, to_tensor, forward_for_cam, the
   Grad-CAM backward, upsample + normalise, overlay, encode_png, write_atomic, the JSON record)
   timed serially on the same photos, ms per image, fastest of 3, and the candidate
   replacements of whatif.py (PNG writers) on the same data, with PNG sizes.
   Their sum against the pipelined run shows what the decode and write thread pools hide.
2. A py-spy profile of ``prepare(Plan("cam", …)).results()`` in a child process, every Python thread
   sampled (main = model work, featviz-decode, featviz-write), each sample filed under the
   innermost featviz function on its stack: busy time per stage as the real, threaded run
   spends it. Skipped when py-spy is not installed (``pip install py-spy``).

Usage: python benchmarks/profile_cam.py [--model resnet50] [--images 32]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from functools import partial
from pathlib import Path

import whatif
from _common import fastest_of, make_photos, median, say, table

RATE = 100  # py-spy samples per second
# (stage, function, file): a sample goes to the innermost frame's rule (see _stage_of)
RULES = [
    ("PNG encode", "encode_png", "featviz/sinks/encode.py"),
    ("file writes", "write_atomic", "featviz/sinks/layout.py"),
    ("JSON record", "record", "featviz/sinks/files.py"),
    ("colour map + blend", "overlay", "featviz/render/draw.py"),
    ("colormap LUT (matplotlib)", "colormap_lut", "featviz/render/draw.py"),
    ("upsample + normalise", "upsample", "featviz/layers/grids.py"),
    ("upsample + normalise", "heatmap", "featviz/cam/base.py"),
    ("backward to the layer", "_gradients", "featviz/cam/context.py"),
    ("CAM weights", "compute", "featviz/cam/base.py"),
    ("forward", "forward_for_cam", "featviz/cam/context.py"),
    ("resize input", "resized", "featviz/inputs/preprocess.py"),
    ("normalise input", "normalise", "featviz/inputs/preprocess.py"),
    ("decode", "decode", "featviz/inputs/decode.py"),
]


def stage_breakdown(model: str, layer: str, photos: list[Path], work: Path) -> list[list[str]]:
    """Rows (stage, ms/image) timing featviz's functions one stage at a time."""
    import numpy as np
    import torch

    from featviz.cam import forward_for_cam, load_method, normalise
    from featviz.inputs.decode import decode
    from featviz.inputs.preprocess import to_tensor
    from featviz.layers.grids import upsample
    from featviz.model.options import ModelRequest
    from featviz.render.draw import colormap_lut, overlay
    from featviz.run.plan import CamRequest, Plan, RunRequest
    from featviz.run.prepare import prepare
    from featviz.sinks.encode import encode_json, encode_png
    from featviz.sinks.layout import write_atomic
    from featviz.sinks.options import OutputRequest

    run = prepare(
        Plan(
            "cam",
            ModelRequest(model, weights="none", device="cpu"),
            OutputRequest(work, gallery=False),
            CamRequest(layers=(layer,)),
            RunRequest((str(photos[0]),)),
        )
    )
    module, calls = run.model.module, run.model.trace.calls()
    gradcam = load_method("gradcam")
    lut = colormap_lut("jet")
    state: dict[str, object] = {}
    n = len(photos)

    def stage_decode() -> None:
        state["images"] = [decode(path) for path in photos]

    def stage_tensor() -> None:
        state["tensors"] = [to_tensor(image, run.model.preprocessing) for image in state["images"]]

    def batches() -> list[torch.Tensor]:
        tensors = state["tensors"]
        return [
            torch.stack(tensors[i : i + run.config.batch_size])
            for i in range(0, n, run.config.batch_size)
        ]

    def stage_forward() -> None:
        state["contexts"] = [forward_for_cam(module, batch, [layer], calls) for batch in batches()]

    def stage_backward() -> None:
        maps = [
            gradcam.compute(ctx, layer, ctx.logits.detach().argmax(1)).detach().float()
            for ctx in state["contexts"]
        ]
        state["maps"] = torch.cat(maps)
        for ctx in state["contexts"]:
            ctx._memo.clear()  # the next repeat computes the gradients again

    def stage_upsample() -> None:
        originals = [np.asarray(image) for image in state["images"]]
        state["originals"] = originals
        state["heatmaps"] = [
            normalise(upsample(state["maps"][i][None], o.shape[:2]))[0].numpy()
            for i, o in enumerate(originals)
        ]

    def stage_overlay() -> None:
        state["overlays"] = [
            overlay(o, h, lut=lut, alpha=0.5) for o, h in zip(state["originals"], state["heatmaps"])
        ]

    def encode_with(encode: Callable[[np.ndarray], bytes]) -> Callable[[], None]:
        def stage() -> None:
            state["pngs"] = [encode(image) for image in state["overlays"]]

        return stage

    def stage_write() -> None:
        for i, data in enumerate(state["pngs"]):
            write_atomic(work / f"{i}.png", data)

    def stage_record() -> None:
        for i in range(n):
            write_atomic(
                work / f"{i}.json", encode_json({"input": str(photos[i]), "outputs": [f"{i}.png"]})
            )

    stages = [
        ("decode", stage_decode),
        ("resize + normalise input", stage_tensor),
        ("forward (batch 8, grad mode)", stage_forward),
        ("backward to the layer + CAM weights", stage_backward),
        ("upsample + normalise to original", stage_upsample),
        ("colour map + blend", stage_overlay),
        ("PNG encode (featviz: ISA-L when installed)", encode_with(encode_png)),
        ("file writes", stage_write),
        ("JSON record", stage_record),
    ]
    alternatives = [
        ("PNG: Up filter + stdlib zlib 1 (whatif.py)", encode_with(whatif.fast_encode_png))
    ]
    fast = whatif.isal_compress()
    if fast is not None:
        alternatives.append(
            (
                "PNG: Up filter + ISA-L 1 (whatif.py)",
                encode_with(partial(whatif.fast_encode_png, compress=fast)),
            )
        )
    for _, function in stages:  # warm-up: lazy imports, oneDNN primitives, colormap
        function()
    rows, total = [], 0.0
    for name, function in stages + alternatives:
        per_image = 1000 * fastest_of(function) / n
        kilobytes = ""
        if "PNG" in name:
            kilobytes = f"{sum(len(png) for png in state['pngs']) / n / 1024:.0f}"
        if (name, function) in stages:
            total += per_image
        rows.append([name, f"{per_image:.1f}", kilobytes])
    rows.insert(len(stages), ["sum (one stage after the other)", f"{total:.1f}", ""])
    rows.insert(len(stages) + 1, ["candidate replacements:", "", ""])
    return rows


def _child(model: str, layer: str, folder: Path, out: Path, runs: int, threads: int) -> None:
    """What py-spy watches: one warm-up, then ``runs`` timed runs; prints seconds per run."""
    import torch

    from featviz.model.options import ModelRequest
    from featviz.run.plan import CamRequest, Plan, RunRequest
    from featviz.run.prepare import prepare
    from featviz.sinks.options import OutputRequest

    if threads:
        torch.set_num_threads(threads)
    run = prepare(
        Plan(
            "cam",
            ModelRequest(model, weights="none", device="cpu"),
            OutputRequest(out, gallery=False),
            CamRequest(layers=(layer,)),
            RunRequest((str(folder),)),
        )
    )
    list(run.results())
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        list(run.results())
        times.append(time.perf_counter() - start)
    print(median(times))


def _stage_of(frames: list[str]) -> str:
    """The stage of the innermost frame that a rule names; else featviz's own bookkeeping when
    the stack passes through featviz at all, else the thread pools' own code."""
    for frame in reversed(frames):
        qualified, _, where = frame.partition(" (")
        function = qualified.rpartition(".")[2]  # "CamContext._gradients" → "_gradients"
        for stage, name, path in RULES:
            if function == name and path in where:
                return stage
    if any("featviz/" in frame for frame in frames):
        return "batching, top-k, bookkeeping"
    return "outside featviz (thread pools)"


def _categorise(raw: Path) -> Counter[str]:
    """Samples per stage from py-spy's raw output (``frame;frame;… count`` per line)."""
    counts: Counter[str] = Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        pooled = "featviz-decode" in frames[0] or "featviz-write" in frames[0]
        if pooled or any("featviz/run/pipeline.py" in frame for frame in frames):
            counts[_stage_of(frames)] += int(count)
        # else: imports and model build, outside the pipeline
    return counts


def pyspy_profile(
    model: str, layer: str, folder: Path, work: Path, images: int
) -> list[list[str]] | None:
    """Rows (stage, thread-busy ms/image, share) from all threads, or None without py-spy."""
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(pyspy).exists():
        return None
    raw = work / f"pyspy-{model}.txt"
    runs = 2
    command = [
        pyspy,
        "record",
        "--threads",
        "--nonblocking",
        "-r",
        str(RATE),
        "-f",
        "raw",
        "-o",
        str(raw),
        "--",
        sys.executable,
        __file__,
        "--child",
        model,
        layer,
        str(folder),
        str(work / "pyspy-out"),
        str(runs),
        "0",
    ]
    subprocess.run(command, check=True, capture_output=True)
    counts = _categorise(raw)
    total = sum(counts.values())
    scale = 1000 / RATE / ((runs + 1) * images)  # samples → ms per image (warm-up included)
    rows = [
        [stage, f"{count * scale:.1f}", f"{count / total:.0%}"]
        for stage, count in counts.most_common()
    ]
    rows.append(["all sampled threads", f"{total * scale:.1f}", "100%"])
    return rows


def profile_model(model: str, layer: str, photos: list[Path], folder: Path, work: Path) -> str:
    """Both views for one model, as Markdown."""
    n = len(photos)
    say(f"{model}: stage breakdown")
    lines = [
        f"#### Where featviz's time goes: {model} at {layer}, {n} photos",
        "",
        "Stages one at a time (featviz's functions, serial, fastest of 3):",
        "",
        table(
            ["stage", "ms/image", "PNG KB/image"],
            stage_breakdown(model, layer, photos, work / f"stages-{model}"),
        ),
        "",
    ]
    say(f"{model}: py-spy profile")
    sampled = pyspy_profile(model, layer, folder, work, n)
    if sampled is None:
        lines += ["py-spy not installed: no threaded profile (`pip install py-spy`).", ""]
    else:
        lines += [
            "The pipelined run, sampled by py-spy in every Python thread: time a thread was "
            "busy (running, or runnable but waiting for a core; idle waits are not sampled), "
            "so with more busy threads than cores the column sums to more than the wall time:",
            "",
            table(["stage", "thread-busy ms/image", "share"], sampled),
            "",
        ]
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        model, layer, folder, out, runs, threads = sys.argv[2:8]
        _child(model, layer, Path(folder), Path(out), int(runs), int(threads))
        return
    from bench_cam import MODELS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50", choices=list(MODELS))
    parser.add_argument("--images", type=int, default=32)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="featviz-profile-"))
    try:
        folder = work / "photos"
        photos = make_photos(folder, args.images)
        print(profile_model(args.model, MODELS[args.model], photos, folder, work))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
