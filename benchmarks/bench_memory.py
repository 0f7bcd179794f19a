"""Peak memory of ``featviz cam`` on very large photos: bounded by --max-memory, not by count.

Runs, each as its own process (peak RSS from ``wait4``), ``featviz cam -m alexnet --weights
none -q`` over:

- ``--count`` photos (default 12) of ``--megapixels`` (default 50, a current phone's full
  resolution), at the default ``--max-memory 2GB`` and with the budget lifted
  (``--max-memory 1TB``: only the count cap of images in flight is left, as before the budget);
- one photo at the default ``--max-pixels`` (178,956,970 pixels, 13,376 × 13,376).

Goals (issue 14): 12 × 50 MP ≤ 3 GB; one 178-MP photo ≤ 4 GB. Prints seconds and peak RSS.

Usage (from the repository root): python benchmarks/bench_memory.py [--count 12] [--megapixels 50]
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import featviz_command, machine_line, make_photos, say, table

GOALS = {"photos": 3e9, "largest": 4e9}
LARGEST_SIDE = 13_376  # 13,376² = 178,917,376 ≤ Pillow's (and featviz's) default limit


def peak_of(command: list[str], env: dict[str, str]) -> tuple[float, int]:
    """Seconds and peak resident bytes of ``command`` as a child process."""
    start = time.perf_counter()
    process = subprocess.Popen(command, env=env)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{' '.join(command)} failed")
    return seconds, usage.ru_maxrss * 1024  # kilobytes on Linux


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=12, help="large photos (12)")
    parser.add_argument("--megapixels", type=float, default=50, help="their size (50)")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="featviz-bench-memory-"))
    env = {**os.environ, "FEATVIZ_WORKER": "off"}
    try:
        width = round(math.sqrt(args.megapixels * 1e6 * 4 / 3))
        size = (width, round(width * 3 / 4))
        say(f"writing {args.count} photos of {size[0]}×{size[1]} and one of {LARGEST_SIDE}²")
        make_photos(work / "photos", args.count, size=size)
        make_photos(work / "largest", 1, size=(LARGEST_SIDE, LARGEST_SIDE))
        cam = [*featviz_command(), "cam", "-m", "alexnet", "--weights", "none", "-q"]
        cases = {
            f"{args.count} × {size[0] * size[1] / 1e6:.0f} MP, --max-memory 2GB (default)": (
                [*cam, str(work / "photos"), "-o", str(work / "a")],
                "photos",
            ),
            f"{args.count} × {size[0] * size[1] / 1e6:.0f} MP, --max-memory 1TB (count cap only)": (
                [*cam, str(work / "photos"), "-o", str(work / "b"), "--max-memory", "1TB"],
                None,
            ),
            f"1 × {LARGEST_SIDE**2 / 1e6:.0f} MP (the default --max-pixels)": (
                [*cam, str(work / "largest"), "-o", str(work / "c")],
                "largest",
            ),
        }
        print(f"Machine: {machine_line()}\n")
        rows = []
        for name, (command, goal) in cases.items():
            say(name)
            seconds, peak = peak_of(command, env)
            verdict = ""
            if goal:
                met = "met" if peak <= GOALS[goal] else "MISSED"
                verdict = f"≤ {GOALS[goal] / 1e9:.0f} GB: {met}"
            rows.append([name, f"{seconds:.1f}", f"{peak / 1e9:.2f}", verdict])
        print(table(["featviz cam -m alexnet", "s", "peak RSS GB", "goal"], rows))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
