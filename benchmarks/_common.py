"""What the featviz benchmarks share: test photos, timing, machine load, tables.

Not a test and not part of featviz: helpers for ``bench_cam.py``, ``bench_maps.py`` and
``bench_startup.py`` in this folder.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "sample_images"
SAMPLE_NAMES = ("cat_and_coffee.png", "chelsea.png", "coffee.png", "grace_hopper.jpg", "rocket.jpg")


def make_photos(
    folder: Path, count: int, size: tuple[int, int] = (640, 480), fmt: str = "jpg"
) -> list[Path]:
    """Write ``count`` deterministic ``size`` photos made from the real sample images.

    Each is a different crop (position and zoom vary with the index) of one sample, resized to
    ``size`` and mirrored every other time: real content, so decoding and PNG encoding cost what
    they cost on photos (noise would compress far worse than any photo).
    """
    from PIL import Image, ImageOps

    folder.mkdir(parents=True, exist_ok=True)
    sources = [Image.open(SAMPLES / name).convert("RGB") for name in SAMPLE_NAMES]
    width, height = size
    aspect = width / height
    paths = []
    for index in range(count):
        source = sources[index % len(sources)]
        variant = index // len(sources)
        # the largest crop of the target aspect, then zoomed in by up to 30 %
        crop_w = min(source.width, round(source.height * aspect))
        crop_h = round(crop_w / aspect)
        zoom = 1.0 - 0.3 * ((variant * 0.37) % 1.0)
        crop_w, crop_h = max(8, round(crop_w * zoom)), max(8, round(crop_h * zoom))
        left = round((source.width - crop_w) * ((variant * 0.61) % 1.0))
        top = round((source.height - crop_h) * ((variant * 0.29) % 1.0))
        photo = source.crop((left, top, left + crop_w, top + crop_h))
        photo = photo.resize(size, Image.Resampling.LANCZOS)
        if index % 2:
            photo = ImageOps.mirror(photo)
        path = folder / f"photo_{index:03d}.{fmt}"
        if fmt == "jpg":
            photo.save(path, quality=90)
        else:
            photo.save(path)
        paths.append(path)
    return paths


def timed(function: Callable[[], object]) -> float:
    """Seconds ``function()`` takes, by ``time.perf_counter``."""
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


class CpuMeter:
    """How much CPU other processes took while a block ran (this is a shared machine).

    ``foreign`` is (all CPU time − this process's and its children's) / (wall × cores): 0 on an
    idle machine, 1 when others kept every core busy. It matters more than it seems: torch's
    OpenMP threads wait for each other at every op, and one thread descheduled by someone
    else's process stalls both (alexnet at batch 1 ran 7× slower under a load of 2 here).
    """

    def __init__(self, helpers: Sequence[int] = ()) -> None:
        self.cores = os.cpu_count() or 1
        self.foreign = 0.0
        # Processes working for the timed block without being its children (a warm worker).
        self.helpers = helpers

    @staticmethod
    def _system_busy() -> float:
        try:
            fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        except OSError:
            return 0.0
        ticks = [int(value) for value in fields[:8]]  # user nice system idle iowait irq …
        return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")

    def _own(self) -> float:
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system + self._helpers()

    def _helpers(self) -> float:
        total = 0.0
        for pid in self.helpers:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return total

    def __enter__(self) -> CpuMeter:
        self._start = (time.perf_counter(), self._system_busy(), self._own())
        return self

    def __exit__(self, *exc_info: object) -> None:
        wall, busy, own = self._start
        elapsed = max(time.perf_counter() - wall, 1e-9)
        others = (self._system_busy() - busy) - (self._own() - own)
        self.foreign = max(0.0, others / (elapsed * self.cores))


def wait_for_quiet(threshold: float, max_wait: float = 60.0) -> float:
    """Wait (up to ``max_wait`` s) for a 1-s window in which others use < ``threshold`` of the
    CPU; returns the last window's foreign share."""
    if threshold >= 1:
        return 0.0
    deadline = time.perf_counter() + max_wait
    while True:
        with CpuMeter() as meter:
            time.sleep(1.0)
        if meter.foreign <= threshold or time.perf_counter() > deadline:
            return meter.foreign


# A run during which other processes took more than this share of the CPU is redone; set
# FEATVIZ_BENCH_QUIET=1 to never wait or redo (a quick smoke run on a busy machine).
QUIET = float(os.environ.get("FEATVIZ_BENCH_QUIET", "0.10"))
RETRIES = 4
TIMES_NOTE = (
    f"Times: median of the clean runs (others took ≤ {QUIET:.0%} of the CPU; a run above that "
    f"is redone up to {RETRIES} times, then kept and starred *); the fastest run when none was "
    "clean."
)


@dataclass
class Run:
    """One timed call: its wall seconds, the CPU share others took meanwhile, what it returned."""

    seconds: float
    foreign: float
    value: object = None

    @property
    def clean(self) -> bool:
        return self.foreign <= QUIET


def round_robin(
    contenders: dict[str, Callable[[], object]],
    repeats: int,
    log: Callable[[str], None] | None = None,
    helpers: Sequence[int] = (),
) -> dict[str, list[Run]]:
    """Time every contender ``repeats`` times, round-robin, every other round in reverse order;
    the kept Run of each repeat.

    Round-robin rather than one contender after the other: this machine is shared, and a burst
    of someone else's load then hits every contender alike instead of one of them. Each run
    waits for a quiet moment first and is redone (up to RETRIES times) when other processes took
    more than QUIET of the CPU while it ran. ``helpers``: pids whose CPU counts as the
    contenders' own (a warm worker doing their work).
    """
    runs: dict[str, list[Run]] = {name: [] for name in contenders}
    for repeat in range(repeats):
        # Every other repeat in reverse order: a contender run right after another one (its
        # files still being written back, the caches its own) is not always the same one.
        order = list(contenders.items())
        for name, function in order[:: -1 if repeat % 2 else 1]:
            for attempt in range(RETRIES + 1):
                wait_for_quiet(QUIET)
                with CpuMeter(helpers) as meter:
                    start = time.perf_counter()
                    value = function()
                    seconds = time.perf_counter() - start
                run = Run(seconds, meter.foreign, value)
                if run.clean:
                    break
                if log and attempt < RETRIES:
                    log(
                        f"  {name}: {seconds:.2f} s but others took {meter.foreign:.0%} of the "
                        "CPU, redoing"
                    )
            runs[name].append(run)
            if log:
                log(
                    f"  repeat {repeat + 1}/{repeats} {name}: {seconds:.2f} s "
                    f"(others {meter.foreign:.0%})"
                )
    return runs


def typical(runs: Sequence[Run]) -> float:
    """The median of the clean runs; the fastest run when none was clean (others' load only
    ever slows a run down)."""
    clean = [run.seconds for run in runs if run.clean]
    return statistics.median(clean) if clean else min(run.seconds for run in runs)


def runs_text(runs: Sequence[Run]) -> str:
    """'4.36 4.51 9.20*': every kept run, * where others took more than QUIET of the CPU."""
    return " ".join(f"{run.seconds:.2f}{'' if run.clean else '*'}" for run in runs)


def fastest_of(function: Callable[[], object], repeats: int = 3) -> float:
    """The fastest of ``repeats`` calls of a short step, each after a quiet moment: others'
    load only ever slows a step down, so on a shared machine the minimum is the estimate."""
    best = float("inf")
    for _ in range(repeats):
        wait_for_quiet(QUIET, max_wait=10.0)
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return best


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def machine_line() -> str:
    """Which machine and libraries produced the numbers."""
    import numpy
    import PIL
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), Pillow {PIL.__version__}, "
        f"numpy {numpy.__version__}, Python {platform.python_version()}"
    )


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub-flavoured Markdown table (pastes into benchmarks/README.md as is)."""
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        return "| " + " | ".join(cell.ljust(width) for cell, width in zip(row, widths)) + " |"

    return "\n".join(
        [
            line(cells[0]),
            "|" + "|".join("-" * (w + 2) for w in widths) + "|",
            *(line(row) for row in cells[1:]),
        ]
    )


def say(text: str) -> None:
    """Progress on stderr, results on stdout: ``> results.md`` keeps only the tables."""
    print(text, file=sys.stderr, flush=True)


def featviz_command() -> list[str]:
    """The ``featviz`` console script of this Python, or ``python -m featviz``."""
    script = Path(sys.executable).with_name("featviz")
    return [str(script)] if script.exists() else [sys.executable, "-m", "featviz"]


def sample_batch(count: int, size: int, mean: Sequence[float], std: Sequence[float]) -> Any:
    """``count`` sample photos (cycled) squashed to ``size`` × ``size`` and normalised with
    ``mean`` and ``std``: a (count, 3, size, size) float32 batch."""
    import torch
    from PIL import Image

    from featviz.inputs.preprocess import Preprocessing, to_tensor

    names = [SAMPLE_NAMES[i % len(SAMPLE_NAMES)] for i in range(count)]
    pre = Preprocessing(tuple(mean), tuple(std), size, "square")
    return torch.stack([to_tensor(Image.open(SAMPLES / n).convert("RGB"), pre) for n in names])
