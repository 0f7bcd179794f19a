"""Feature-map grids, end to end: ``featviz maps`` on alexnet, a per-image reference loop, the
compute floor, and where the time goes.

On one folder of photos (default 32 at 640×480, made from sample_images/), alexnet random-init
(seed 0), featviz's defaults (every Conv2d: features.0/3/6/8/10; 64 channels each, grey, cells
of at least 64 px), it times:

- featviz: its library path in-process, ``prepare(Plan("maps", …)).results()``, model built
  beforehand;
- reference loop: the classic forward-hook tutorial, one image at a time: torchvision
  transforms, hooks on the same layers, each channel min-max scaled, nearest enlargement,
  ``torchvision.utils.make_grid`` and ``save_image`` (Pillow's default PNG level);
- the compute floor: alexnet's batched forward up to features.10 under ``inference_mode`` on
  tensors preloaded at the same shapes, batch 8, no decoding, no grids, no writing;

and, in the same round-robin, featviz with the candidate PNG writers of whatif.py
(``--no-what-if`` skips them); then (``--no-profile`` skips it) featviz's stages one at a time,
with the same grids through each candidate encoder and their PNG sizes.

Usage (from the repository root): python benchmarks/bench_maps.py [--images 32] [--repeats 3]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import torch
import whatif
from _common import (
    TIMES_NOTE,
    fastest_of,
    machine_line,
    make_photos,
    round_robin,
    runs_text,
    say,
    table,
    typical,
)
from torch import nn

MODEL = "alexnet"
LAYERS = ["features.0", "features.3", "features.6", "features.8", "features.10"]
INPUT_SIZE = 224
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
MAX_CHANNELS = 64
CELL = 64
BATCH = 8


def prepare_featviz(folder: Path, out: Path):
    from featviz.model.options import ModelRequest
    from featviz.run.plan import MapsRequest, Plan, RunRequest
    from featviz.run.prepare import prepare
    from featviz.sinks.options import OutputRequest

    run = prepare(
        Plan(
            "maps",
            ModelRequest(MODEL, weights="none", device="cpu"),
            OutputRequest(out, gallery=False),
            MapsRequest(),
            RunRequest((str(folder),)),
        )
    )
    assert run.job.layers == LAYERS, run.job.layers
    return run


def run_featviz(run) -> None:
    failed = [r.error for r in run.results() if r.error]
    if failed:
        raise RuntimeError(f"featviz failed on {len(failed)} images: {failed[0]}")


def reference_loop(model: nn.Module, photos: list[Path], out: Path) -> None:
    """The forward-hook tutorial idiom, one image at a time, the same grids as featviz."""
    import torch.nn.functional as F
    from PIL import Image
    from torchvision import transforms
    from torchvision.utils import make_grid, save_image

    preprocess = transforms.Compose(
        [transforms.Resize(INPUT_SIZE), transforms.ToTensor(), transforms.Normalize(MEAN, STD)]
    )
    captured: dict[str, torch.Tensor] = {}
    modules = dict(model.named_modules())

    def hook_for(name: str):
        def hook(_module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
            captured[name] = output.clone()  # the in-place ReLU after each conv would change it

        return hook

    handles = [modules[name].register_forward_hook(hook_for(name)) for name in LAYERS]
    try:
        for path in photos:
            image = Image.open(path).convert("RGB")
            with torch.inference_mode():
                model(preprocess(image).unsqueeze(0))
            for name in LAYERS:
                maps = captured[name][0, :MAX_CHANNELS]
                low = maps.amin(dim=(1, 2), keepdim=True)
                span = maps.amax(dim=(1, 2), keepdim=True) - low
                maps = torch.where(span > 0, (maps - low) / span.clamp(min=1e-12), 0)
                factor = max(1, -(-CELL // max(maps.shape[-2:])))
                maps = F.interpolate(maps[:, None], scale_factor=factor, mode="nearest")
                grid = make_grid(
                    maps, nrow=int(np.ceil(np.sqrt(len(maps)))), padding=1, pad_value=1.0
                )
                save_image(grid, out / f"{path.stem}-{name}.png")
    finally:
        for handle in handles:
            handle.remove()


def compute_floor(module: nn.Module, batches: list[torch.Tensor]) -> None:
    """Batched inference forward through the last tapped layer (features.10), nothing else."""
    head = module.features[:11]
    with torch.inference_mode():
        for batch in batches:
            head(batch)


def preload(photos: list[Path]) -> list[torch.Tensor]:
    from featviz.inputs.decode import decode
    from featviz.inputs.preprocess import Preprocessing, to_tensor

    tensors = [to_tensor(decode(path), Preprocessing(MEAN, STD, INPUT_SIZE)) for path in photos]
    return [torch.stack(tensors[i : i + BATCH]) for i in range(0, len(tensors), BATCH)]


def stage_breakdown(run, photos: list[Path], work: Path) -> list[list[str]]:
    """featviz's maps stages one at a time, ms/image (fastest of 3), and two encoders."""
    from featviz.inputs.decode import decode
    from featviz.inputs.preprocess import to_tensor
    from featviz.layers.taps import LayerTaps
    from featviz.render.draw import channel_grid, colormap_lut
    from featviz.run.jobs.maps import select_channels
    from featviz.sinks.encode import encode_png
    from featviz.sinks.layout import write_atomic

    model, options = run.model, run.job.request
    lut = colormap_lut(options.cmap)
    n = len(photos)
    state: dict[str, object] = {}

    def stage_decode() -> None:
        state["images"] = [decode(path) for path in photos]

    def stage_tensor() -> None:
        state["tensors"] = [to_tensor(image, model.preprocessing) for image in state["images"]]

    def stage_forward() -> None:
        activations = []
        tensors = state["tensors"]
        for i in range(0, n, BATCH):
            taps = LayerTaps(model.module, LAYERS, calls=options.calls, stop_early=True)
            with torch.inference_mode(), taps:
                taps.run(torch.stack(tensors[i : i + BATCH]))
            activations.append({name: taps.outputs[name].float().numpy() for name in LAYERS})
        state["maps"] = [
            {name: batch[name][j] for name in LAYERS}
            for batch in activations
            for j in range(len(batch[LAYERS[0]]))
        ]

    def stage_grid() -> None:
        state["grids"] = [
            channel_grid(
                maps[name][select_channels(maps[name], MAX_CHANNELS, "index")],
                lut=lut,
                cell_size=CELL,
            )
            for maps in state["maps"]
            for name in LAYERS
        ]

    def stage_encode() -> None:
        state["pngs"] = [encode_png(grid) for grid in state["grids"]]

    def stage_write() -> None:
        for i, data in enumerate(state["pngs"]):
            write_atomic(work / f"{i}.png", data)

    def encode_with(encode: Callable[[np.ndarray], bytes]) -> Callable[[], None]:
        def stage() -> None:
            state["pngs"] = [encode(grid) for grid in state["grids"]]

        return stage

    stages = [
        ("decode", stage_decode),
        ("resize + normalise input", stage_tensor),
        ("forward to features.10 (batch 8)", stage_forward),
        ("grids: scale, colour map, enlarge, tile (5 layers)", stage_grid),
        ("PNG encode as now: Pillow level 1, RGB (5 grids)", encode_with(encode_png)),
        ("file writes (5 grids)", stage_write),
    ]
    # what a grey colormap needs: one channel (R = G = B), a third of the bytes to deflate
    alternatives = [
        (
            "Pillow level 1, grey as 1 channel",
            encode_with(lambda grid: encode_png(np.ascontiguousarray(grid[..., 0]))),
        )
    ]
    alternatives += [
        (f"{name} (whatif.py)", encode_with(encode)) for name, encode in encoders().items()
    ]
    work.mkdir(parents=True, exist_ok=True)
    rows, total = [], 0.0
    for name, function in stages + alternatives:
        function()  # warm-up
        per_image = 1000 * fastest_of(function) / n
        size = ""
        if "PNG" in name or "Pillow" in name:
            size = f"{sum(len(png) for png in state['pngs']) / n / 1024:.0f}"
        if (name, function) in stages:
            total += per_image
        rows.append([name, f"{per_image:.1f}", size])
        if name.startswith("PNG encode as now"):
            encoded_now = state["pngs"]
    rows.insert(len(stages), ["sum of the stages (serial)", f"{total:.1f}", ""])
    rows.insert(len(stages) + 1, ["other PNG encoders for the same grids:", "", ""])
    state["pngs"] = encoded_now
    return rows


def grey_or_rgb(image: np.ndarray) -> np.ndarray:
    """One channel when R = G = B everywhere (a grey colormap): a third of the bytes. In
    featviz the colormap would say so (``lut[:, 0] == lut[:, 1] == lut[:, 2]``), no pixel check."""
    if (
        image.ndim == 3
        and (image[..., 0] == image[..., 1]).all()
        and (image[..., 1] == image[..., 2]).all()
    ):
        return image[..., 0]
    return image


def encoders() -> dict[str, Callable[[np.ndarray], bytes]]:
    """Candidate PNG encoders for featviz's grids (see whatif.py)."""
    found = {"PNG: Up filter + stdlib zlib 1": whatif.fast_encode_png}
    fast = whatif.isal_compress()
    if fast is not None:
        found["PNG: Up filter + ISA-L 1"] = partial(whatif.fast_encode_png, compress=fast)
    best_name = "PNG: Up filter + ISA-L 1" if fast else "PNG: Up filter + stdlib zlib 1"
    best = found[best_name]
    found[f"{best_name}, grey as 1 channel"] = lambda image: best(grey_or_rgb(image))
    return found


def with_encoder(encode: Callable[[np.ndarray], bytes], function: Callable[[], object]) -> None:
    with whatif.png_encoder(encode):
        function()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32, help="photos in the folder (32)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs each (median; 3)")
    parser.add_argument("--no-profile", action="store_true", help="skip the stage breakdown")
    parser.add_argument(
        "--no-what-if", action="store_true", help="skip the candidate fixes (whatif.py)"
    )
    args = parser.parse_args(argv)

    import torchvision

    work = Path(tempfile.mkdtemp(prefix="featviz-bench-maps-"))
    try:
        photos = make_photos(work / "photos", args.images)
        n = len(photos)
        started = time.perf_counter()
        print(f"Machine: {machine_line()}\n")
        (work / "featviz").mkdir()
        (work / "reference").mkdir()
        run = prepare_featviz(work / "photos", work / "featviz")
        torch.manual_seed(0)
        reference_model = torchvision.models.alexnet(weights=None).eval()
        batches = preload(photos)
        contenders: dict[str, Callable[[], object]] = {
            "featviz maps": lambda: run_featviz(run),
            "reference loop (hooks + make_grid + save_image)": lambda: reference_loop(
                reference_model, photos, work / "reference"
            ),
            "floor (batched inference forward)": lambda: compute_floor(run.model.module, batches),
        }
        if not args.no_what_if:  # candidate fixes, timed in the same round-robin
            for name, encode in encoders().items():
                contenders[f"what if: featviz + {name}"] = partial(
                    with_encoder, encode, contenders["featviz maps"]
                )
        say("warm-up (one run each, not timed)")
        for function in contenders.values():
            function()
        runs = round_robin(contenders, args.repeats, log=say)
        med = {name: typical(kept) for name, kept in runs.items()}
        featviz = med["featviz maps"]
        rows = [
            [
                name,
                f"{seconds:.2f}",
                f"{n / seconds:.1f}",
                f"{1000 * seconds / n:.0f}",
                f"{seconds / featviz:.2f}" if name != "featviz maps" else "",
                runs_text(runs[name]),
            ]
            for name, seconds in med.items()
        ]
        print(f"### featviz maps, alexnet, 5 layers × 64 channels, {n} photos 640×480\n")
        print(
            table(
                ["contender", "s", "images/s", "ms/image", "time / featviz's", "runs (s)"],
                rows,
            )
        )
        print(
            f"\n- featviz / floor: {featviz / med['floor (batched inference forward)']:.2f}"
            f"; reference loop / featviz: "
            f"{med['reference loop (hooks + make_grid + save_image)'] / featviz:.2f}×\n"
        )
        if not args.no_profile:
            say("stage breakdown")
            print("#### Where featviz maps' time goes (stages one at a time, fastest of 3)\n")
            rows = stage_breakdown(run, photos, work / "stages")
            print(table(["stage", "ms/image", "PNG KB/image"], rows))
        print(f"\nTotal {time.perf_counter() - started:.0f} s. {TIMES_NOTE}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
