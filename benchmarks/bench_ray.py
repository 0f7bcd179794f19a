"""What ``--ray`` costs and gains on one machine: ``featviz cam`` plain vs on 1 and 2 Ray actors.

Times, as separate processes, round-robin (median of ``--repeats``, default 2), the same
``featviz cam -m MODEL --weights none -q`` over ``--images`` photos (default 64, 640×480):

- plain: the run in one process (its threads decode, compute and write);
- ``--ray local --ray-actors 1`` and ``--ray-actors 2``: a local Ray cluster started by the
  call, actors of one CPU each loading the model, the driver tallying and writing the manifest.

Wall time includes everything a user waits for (Ray's start and stop, each actor's torch import
and model build); ``in run`` is the manifest's ``elapsed_s``, from the first image asked for to
the last result (the actors' start-up included). Prints the ratios (scaling: 1 → 2 actors;
overhead: Ray vs plain) and checks that every run wrote the same pictures.

Usage (from the repository root): python benchmarks/bench_ray.py [--images 64] [--repeats 2]
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import shutil
import subprocess
import tempfile
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
    typical,
)

CONTENDERS = {
    "plain": [],
    "--ray local --ray-actors 1": ["--ray", "local", "--ray-actors", "1"],
    "--ray local --ray-actors 2": ["--ray", "local", "--ray-actors", "2"],
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64, help="photos, 640×480 (64)")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each (2)")
    parser.add_argument("--model", default="resnet18", help="torchvision model (resnet18)")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="fv-bench-ray-"))
    try:
        make_photos(work / "photos", args.images)
        print(f"Machine: {machine_line()}\n")
        contenders = {
            name: functools.partial(_run, work, name, args.model, extra)
            for name, extra in CONTENDERS.items()
        }
        say(f"{args.images} photos, {args.model}, round-robin")
        runs = round_robin(contenders, args.repeats, log=say)
        _report(runs, args.images, args.model)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _run(work: Path, name: str, model: str, extra: list[str]) -> tuple[float, str]:
    """One call; (the manifest's elapsed_s, a digest of every picture written)."""
    out = work / "out"
    shutil.rmtree(out, ignore_errors=True)
    command = [*featviz_command(), "cam", "-m", model, "--weights", "none", "-q", "-o", str(out)]
    subprocess.run([*command, *extra, str(work / "photos")], check=True)
    manifest = json.loads((out / "manifest.json").read_bytes())
    assert manifest["counts"]["done"] == len(list((work / "photos").iterdir())), name
    digest = hashlib.sha256()
    for path in sorted((out / model).rglob("*.png")):
        digest.update(path.relative_to(out).as_posix().encode() + path.read_bytes())
    return manifest["elapsed_s"], digest.hexdigest()


def _report(runs: dict, images: int, model: str) -> None:
    wall = {name: typical(kept) for name, kept in runs.items()}
    in_run = {name: min(run.value[0] for run in kept) for name, kept in runs.items()}
    digests = {run.value[1] for kept in runs.values() for run in kept}
    rows = [
        [
            f"`{name}`" if name != "plain" else "plain",
            f"{wall[name]:.1f}",
            f"{images / wall[name]:.2f}",
            f"{in_run[name]:.1f}",
            f"{wall[name] / wall['plain']:.2f}×",
            runs_text(kept),
        ]
        for name, kept in runs.items()
    ]
    headers = ["featviz cam", "wall s", "images/s", "in run s", "wall / plain", "runs s"]
    print(f"`featviz cam -m {model} --weights none` over {images} photos (640×480)\n")
    print(table(headers, rows))
    one, two = wall["--ray local --ray-actors 1"], wall["--ray local --ray-actors 2"]
    inside = in_run["--ray local --ray-actors 1"] / in_run["--ray local --ray-actors 2"]
    print(f"\nScaling 1 → 2 actors: {one / two:.2f}× in wall time, {inside:.2f}× in run.")
    print(f"Overhead of Ray: {one / wall['plain']:.2f}× the plain run's wall time (1 actor).")
    same = "the same pictures in every run" if len(digests) == 1 else "PICTURES DIFFER"
    print(f"Outputs: {same}.\n\n{TIMES_NOTE}")


if __name__ == "__main__":
    main()
