"""What the warm worker saves a shell loop: one-image ``featviz cam`` calls, cold and warm.

Times, as separate processes, interleaved (median of ``--calls``, default 20):

- ``featviz cam -m MODEL --weights none -q IMG`` with ``FEATVIZ_WORKER=off`` (a fresh process:
  import torch, build the model, the image, exit), for alexnet and resnet50;
- the same call answered by a running worker (``featviz worker start`` first; one call before
  the timing builds the model, as the first call of a loop does);

then a shell loop over ``--folders`` folders (default 100) of one photo each, cold and warm:
``for d in data/*/; do featviz cam "$d" -o "cams/$d" …; done``. Prints the ratios, the goal
(warm ≥ 10× faster than cold for alexnet, warm ≤ 0.4 s per call), the worker's start-up and
its memory afterwards.

Usage (from the repository root): python benchmarks/bench_worker.py [--calls 20] [--folders 100]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import (
    TIMES_NOTE,
    featviz_command,
    machine_line,
    make_photos,
    round_robin,
    runs_text,
    say,
    table,
)
from _common import typical as typical_of

MODELS = ("alexnet", "resnet50")
LOOP_MODEL = "alexnet"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20, help="one-image calls of each (20)")
    parser.add_argument("--folders", type=int, default=100, help="folders of the loop (100)")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="fv-bench-"))
    featviz = featviz_command()
    env = {**os.environ, "XDG_RUNTIME_DIR": str(work)}
    env.pop("FEATVIZ_WORKER", None)
    cold_env = {**env, "FEATVIZ_WORKER": "off"}
    try:
        [photo] = make_photos(work / "photos", 1)
        print(f"Machine: {machine_line()}\n")
        start = time.perf_counter()
        subprocess.run([*featviz, "worker", "start"], env=env, check=True, capture_output=True)
        started_s = time.perf_counter() - start
        pid = _status(featviz, env)["pid"]

        def call(model: str, environment: dict[str, str]) -> None:
            out = work / "out"
            command = [*featviz, "cam", "-m", model, "--weights", "none", "-q", "-o", str(out)]
            subprocess.run([*command, str(photo)], env=environment, check=True)
            shutil.rmtree(out)

        first: dict[str, float] = {}
        for model in MODELS:
            begin = time.perf_counter()
            call(model, env)
            first[model] = time.perf_counter() - begin
        contenders = {}
        for model in MODELS:
            contenders[f"{model} cold"] = functools.partial(call, model, cold_env)
            contenders[f"{model} warm"] = functools.partial(call, model, env)
        say(f"{args.calls} one-image calls of each, round-robin")
        runs = round_robin(contenders, args.calls, log=say, helpers=[pid])
        if _status(featviz, env).get("pid") != pid:
            sys.exit("the worker was replaced during the run (featviz's code changed?): rerun")
        typical = {name: typical_of(kept) for name, kept in runs.items()}
        rows = []
        for model in MODELS:
            cold, warm = typical[f"{model} cold"], typical[f"{model} warm"]
            rows.append(
                [
                    model,
                    f"{cold:.2f}",
                    f"{warm:.3f}",
                    f"{cold / warm:.1f}×",
                    f"{first[model]:.2f}",
                    runs_text(runs[f"{model} warm"]),
                ]
            )
        print("### One-image `featviz cam` calls: wall time per call\n")
        print(
            table(
                ["model", "cold s", "warm s", "cold / warm", "first warm call s", "warm runs (s)"],
                rows,
            )
        )
        alexnet_cold, alexnet_warm = typical["alexnet cold"], typical["alexnet warm"]
        print(
            f"\n- goal, alexnet: warm ≥ 10× faster than cold: {alexnet_cold / alexnet_warm:.1f}× "
            f"({'met' if alexnet_cold >= 10 * alexnet_warm else 'MISSED'}); warm ≤ 0.4 s per "
            f"call: {alexnet_warm:.3f} s ({'met' if alexnet_warm <= 0.4 else 'MISSED'})"
        )
        print(f"- `featviz worker start` (imports torch, torchvision, featviz): {started_s:.2f} s")
        print("- the first warm call of a model builds it (random init here), later ones reuse it")

        data = work / "data"
        for index in range(args.folders):
            (data / f"d{index:03d}").mkdir(parents=True)
            shutil.copy(photo, data / f"d{index:03d}" / "photo.jpg")
        loop = (
            'for d in data/*/; do "$@" cam "$d" -o "cams/$d" -m '
            + LOOP_MODEL
            + " --weights none -q || exit 1; done"
        )
        loops = {}
        for name, environment in (("cold", cold_env), ("warm", env)):
            shutil.rmtree(work / "cams", ignore_errors=True)
            say(f"{args.folders}-folder loop, {name}")
            begin = time.perf_counter()
            subprocess.run(
                ["bash", "-c", loop, "bash", *featviz], cwd=work, env=environment, check=True
            )
            loops[name] = time.perf_counter() - begin
        written = len(list((work / "cams").rglob("*.png")))
        print(f"\n### A shell loop over {args.folders} folders of one photo ({LOOP_MODEL})\n")
        print(
            table(
                ["", "total s", "per folder s"],
                [[name, f"{s:.1f}", f"{s / args.folders:.3f}"] for name, s in loops.items()],
            )
        )
        print(f"\n- cold / warm: {loops['cold'] / loops['warm']:.1f}× ({written} PNGs each run)")
        state = _status(featviz, env)
        kept = sum(model["bytes"] for model in state["models"])
        print(
            f"- the worker afterwards: {state['calls']} calls, {state['rss_bytes'] / 1e9:.2f} GB "
            f"resident, {kept / 1e6:.0f} MB of models kept\n"
        )
        print(TIMES_NOTE)
    finally:
        subprocess.run([*featviz, "worker", "stop"], env=env, capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


def _status(featviz: list[str], env: dict[str, str]) -> dict:
    done = subprocess.run(
        [*featviz, "worker", "status", "--json"], env=env, check=True, capture_output=True
    )
    return json.loads(done.stdout)


if __name__ == "__main__":
    main()
