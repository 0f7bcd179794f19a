"""``featviz top`` over a dataset against the forward passes alone, and its memory over 500 vs
2,000 images.

On ``--images`` small photos (default 2,000 at 128×96, made from sample_images/), resnet18
random-init (seed 0) at input size 96, layers ``layer2`` and ``layer3`` (every channel, k = 9),
it times, round-robin in one run:

- featviz: ``prepare(Plan("top", …))`` streamed to its end in-process (decoding, the forwards,
  the rankings, and at the end 384 channel sheets drawn from the winners' kept pixels, two
  overviews and two JSON files written), the model built beforehand;
- the forward passes alone: the same network as featviz runs it (channels-last, its batch
  norms folded into the convolutions) under ``inference_mode`` up to ``layer3`` (a hook stops
  the forward there), batch 8, on tensors preloaded at the same shapes: no decoding, no
  ranking, no writing;

and prints the ratios of wall time and of this process's CPU time (every thread's: on a
machine others load, the work done), goal (issue 24) ≤ 1.1×, and the wall-time ratio of each
repeat's pair of runs (run one after the other, so less apart in the machine's moods). Then
``featviz top`` as a child process over the first 500 images and over all of them, with the
peak resident memory of each (its ``VmHWM``): flat, since what a run holds is k × channels
(and the winners' pixels up to a fixed budget), not the images.

Usage (from the repository root): python benchmarks/bench_top.py [--images 2000] [--repeats 2]
[--threads N] [--no-memory]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from _common import (
    RETRIES,
    TIMES_NOTE,
    featviz_command,
    machine_line,
    make_photos,
    round_robin,
    runs_text,
    say,
    table,
    typical,
)

MODEL, INPUT_SIZE, LAYERS, K, BATCH = "resnet18", 96, ("layer2", "layer3"), 9, 8
GOAL = 1.1


class _Stop(Exception):
    """Raised by the hook on the deepest layer: nothing after it runs."""


def prepare_featviz(folder: Path, out: Path):
    from featviz.model.options import ModelRequest
    from featviz.run.plan import Plan, RunRequest, TopRequest
    from featviz.run.prepare import prepare
    from featviz.sinks.options import OutputRequest

    return prepare(
        Plan(
            "top",
            ModelRequest(MODEL, weights="none", input_size=INPUT_SIZE, device="cpu"),
            OutputRequest(out, gallery=False),
            TopRequest(layers=LAYERS, k=K),
            RunRequest((str(folder),), batch_size=BATCH),
        )
    )


def run_featviz(ready: list) -> None:
    """Stream the next of the runs prepared beforehand (the model built) to its end."""
    from featviz.sinks.manifest import RunTally

    run = ready.pop()
    tally = RunTally()
    for result in run.results():
        if result.error:
            raise RuntimeError(result.error)
        tally.add(result)
    run.finish(tally, interrupted=False)


def preload(photos: list[Path]) -> list[torch.Tensor]:
    """The photos as featviz's model sees them, in batches of BATCH."""
    from PIL import Image

    from featviz.inputs.preprocess import Preprocessing, to_tensor

    preprocessing = Preprocessing((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), INPUT_SIZE)
    tensors = [to_tensor(Image.open(path).convert("RGB"), preprocessing) for path in photos]
    return [torch.stack(tensors[i : i + BATCH]) for i in range(0, len(tensors), BATCH)]


def forwards_alone(model: torch.nn.Module, batches: list[torch.Tensor]) -> None:
    def stop(*_: object) -> None:
        raise _Stop

    handle = dict(model.named_modules())[LAYERS[-1]].register_forward_hook(stop)
    try:
        with torch.inference_mode():
            for batch in batches:
                with contextlib.suppress(_Stop):
                    model(batch)
    finally:
        handle.remove()


def peak_rss(folder: Path, out: Path) -> tuple[float, float]:
    """Seconds and peak resident GB of ``featviz top`` over ``folder`` as a child process.

    Linux's ``ru_maxrss`` of a child counts what it held before ``exec`` too: a forked copy
    of this process, GBs with the preloaded batches, whatever featviz then used. The child's
    own high-water mark (``VmHWM``, kept per address space, so from ``exec`` on) is read from
    /proc while it runs; ``ru_maxrss`` only where there is no /proc."""
    command = [*featviz_command(), "top", "-m", MODEL, "--weights", "none", "-q"]
    command += ["--input-size", str(INPUT_SIZE), "-k", str(K), "--no-gallery", "-o", str(out)]
    command += [part for layer in LAYERS for part in ("-l", layer)] + [str(folder)]
    start = time.perf_counter()
    process = subprocess.Popen(command, env={**os.environ, "FEATVIZ_WORKER": "off"})
    status_file, peak_kb = Path(f"/proc/{process.pid}/status"), 0
    while process.poll() is None:  # VmHWM only grows: its last reading is the peak
        with contextlib.suppress(OSError, StopIteration, ValueError):
            lines = status_file.read_text().splitlines()
            peak_kb = int(next(line for line in lines if line.startswith("VmHWM")).split()[1])
        time.sleep(0.05)
    if process.returncode != 0:
        sys.exit(f"{' '.join(command)} failed")
    if not peak_kb:
        peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return time.perf_counter() - start, peak_kb * 1024 / 1e9


def _cpu_timed(function, spent: list[float]):
    """``function``, noting the CPU seconds this process (every thread) spent in each call:
    on a machine others load, the work done, where wall time also counts their share."""

    def timed() -> None:
        start = time.process_time()
        function()
        spent.append(time.process_time() - start)

    return timed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000, help="small photos (2000)")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs of each (2)")
    parser.add_argument("--threads", type=int, help="torch's threads in-process (its default)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-RSS runs")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="featviz-bench-top-"))
    try:
        say(f"writing {args.images} photos of 128×96")
        photos = make_photos(work / "all", args.images, size=(128, 96))
        subset = work / "first500"
        subset.mkdir()
        for photo in photos[:500]:
            os.link(photo, subset / photo.name)
        prepared = prepare_featviz(work / "all", work / "floor")
        batches = [batch.contiguous(memory_format=torch.channels_last) for batch in preload(photos)]

        def floor() -> None:
            with prepared.config.compute():  # the batch norms folded, as for featviz's batches
                forwards_alone(prepared.model.module, batches)

        # One prepared run per timed run, redone ones included (a run streams once).
        ready = [
            prepare_featviz(work / "all", work / f"out{i}")
            for i in range(args.repeats * (RETRIES + 1))
        ]
        contenders = {
            "featviz top": lambda: run_featviz(ready),
            "forward passes alone": floor,
        }
        cpu: dict[str, list[float]] = {name: [] for name in contenders}
        runs = round_robin(
            {name: _cpu_timed(function, cpu[name]) for name, function in contenders.items()},
            args.repeats,
            log=say,
        )
        seconds = {name: typical(kept) for name, kept in runs.items()}
        cpu_seconds = {name: min(spent) for name, spent in cpu.items()}
        print(machine_line())
        print()
        base, cpu_base = seconds["forward passes alone"], cpu_seconds["forward passes alone"]
        rows = [
            [
                name,
                f"{s:.2f}",
                runs_text(runs[name]),
                f"{s / base:.2f}×",
                f"{cpu_seconds[name]:.2f}",
                f"{cpu_seconds[name] / cpu_base:.2f}×",
            ]
            for name, s in seconds.items()
        ]
        headers = ["resnet18 to layer3, 96 px", "s", "runs", "vs forwards", "CPU s", "vs forwards"]
        print(table(headers, rows))
        print()
        for what, values in (("wall", seconds), ("CPU", cpu_seconds)):
            ratio = values["featviz top"] / values["forward passes alone"]
            verdict = "met" if ratio <= GOAL else "not met"
            print(
                f"featviz top / forward passes alone, {what} time: **{ratio:.2f}×** "
                f"(goal ≤ {GOAL}×: {verdict})  "
            )
        # Each repeat's two runs follow each other: a slow spell of the machine hits both.
        paired = [
            mine.seconds / floor_run.seconds
            for mine, floor_run in zip(runs["featviz top"], runs["forward passes alone"])
        ]
        print(
            f"wall time, repeat by repeat: {' '.join(f'{r:.2f}×' for r in paired)}, "
            f"median **{statistics.median(paired):.2f}×**  "
        )
        print(TIMES_NOTE)
        print()
        if args.no_memory:
            return
        rows = []
        for name, folder in (("500 images", subset), (f"{args.images} images", work / "all")):
            say(f"featviz top over {name} as a child process")
            took, peak = peak_rss(folder, work / f"rss-{folder.name}")
            rows.append([name, f"{took:.1f}", f"{peak:.3f}"])
        print(table(["featviz top (child process)", "s", "peak RSS GB"], rows))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
