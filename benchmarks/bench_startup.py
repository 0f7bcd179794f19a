"""The fixed cost of one ``featviz`` call, as a shell loop pays it on every image.

Times, as separate processes (median of ``--repeats``, default 5, interleaved):

- ``python -c pass``: the interpreter alone;
- ``python -c "import featviz"`` and ``featviz --help``: must stay cheap (no torch);
- ``featviz cam -m resnet50 --weights none -q IMG``: one 640×480 photo, end to end;
- the same call leaving through ``os._exit`` once its output is flushed (a candidate fix: the
  interpreter's teardown of torch costs about a second);
- the bare floor the issue names: ``python -c "import torch, torchvision; build resnet50;
  one forward and backward"`` (random init, full backward as a naive script does it);
- the same bare script doing featviz's compute instead (frozen weights, gradient to layer4 only);

prints the ratios, then splits one in-process ``featviz cam`` call into its phases (imports,
model build, trace, the image, the manifest) to show where the fixed cost goes.

Usage (from the repository root): python benchmarks/bench_startup.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import (
    QUIET,
    TIMES_NOTE,
    featviz_command,
    machine_line,
    make_photos,
    round_robin,
    runs_text,
    say,
    table,
    typical,
    wait_for_quiet,
)

BARE = (
    "import torch, torchvision; torch.manual_seed(0); "
    "m = torchvision.models.resnet50().eval(); x = torch.randn(1, 3, 224, 299); "
    "y = m(x); y[0, y.argmax()].backward()"
)
BARE_FROZEN = (
    "import torch, torchvision; torch.manual_seed(0); "
    "m = torchvision.models.resnet50().eval().requires_grad_(False); "
    "a = []; m.layer4.register_forward_hook("
    "lambda mod, i, o: a.append(o.detach().requires_grad_()) or a[0].clone()); "
    "y = m(torch.randn(1, 3, 224, 299)); torch.autograd.grad(y[0, y.argmax()], a[0])"
)

IMPORT = "python -c 'import featviz'"
CAM = "featviz cam -m resnet50 --weights none IMG"
# Candidate fix: featviz's own CLI, but leaving through os._exit once all output is flushed, so
# the interpreter does not tear torch down (about 1 s here; see docs/commands/worker.md).
FAST_EXIT = """
import os, sys
from featviz.cli.app import app
sys.argv = ["featviz", *sys.argv[1:]]
try:
    app()
    code = 0
except SystemExit as exc:
    code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
sys.stdout.flush()
sys.stderr.flush()
os._exit(code)
"""
# One in-process featviz cam call, phase by phase; prints "phase seconds" lines.
PHASES = """
import sys, time
from pathlib import Path
marks = [("start", time.perf_counter())]
def mark(name): marks.append((name, time.perf_counter()))
import featviz.cli.app; mark("import featviz.cli.app (typer; what --help pays, less rendering)")
import torch; mark("import torch")
import torchvision; mark("import torchvision (its ops import torch._dynamo)")
from featviz.render.draw import colormap_lut; colormap_lut("jet"); mark("import matplotlib, jet LUT"
from featviz.sinks.options import OutputRequest
from featviz.run.plan import CamRequest, RunRequest
from featviz.model.options import ModelRequest
from featviz.run.plan import Plan
from featviz.run.prepare import prepare
model = ModelRequest("resnet50", weights="none", device="cpu")
output = OutputRequest(Path(sys.argv[2]), gallery=False)
run = prepare(Plan("cam", model, output, CamRequest(), RunRequest((sys.argv[1],))))
mark("prepare: build resnet50 (random init), trace, set up")
results = list(run.results()); mark("the image, cold: decode, forward, backward, overlay, PNG")
results = list(run.results()); mark("(for scale) the same image again, warm")
from featviz.sinks.manifest import RunTally
tally = RunTally()
for result in results:
    tally.add(result)
run.finish(tally, False); mark("manifest")
with torch.device("meta"):
    torchvision.models.resnet50()
mark("(for scale) resnet50 built on the meta device: no init")
for (_, before), (name, after) in zip(marks, marks[1:]):
    print(f"{after - before:.3f} {name}")
"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="runs of each command (5)")
    args = parser.parse_args(argv)
    # Cold calls only: a warm worker would answer them (bench_worker.py times that).
    os.environ["FEATVIZ_WORKER"] = "off"
    work = Path(tempfile.mkdtemp(prefix="featviz-bench-startup-"))
    try:
        [photo] = make_photos(work / "photos", 1)
        python = sys.executable
        cam_args = [
            "cam",
            "-m",
            "resnet50",
            "--weights",
            "none",
            "-q",
            "-o",
            str(work / "out"),
            str(photo),
        ]
        commands = {
            "python -c pass": [python, "-c", "pass"],
            IMPORT: [python, "-c", "import featviz"],
            "featviz --help": [*featviz_command(), "--help"],
            CAM: [*featviz_command(), *cam_args],
            "candidate: same, leaving through os._exit": [python, "-c", FAST_EXIT, *cam_args],
            "bare: import, build, forward + full backward": [python, "-c", BARE],
            "bare: same, frozen, gradient to layer4 only": [python, "-c", BARE_FROZEN],
        }
        print(f"Machine: {machine_line()}\n")
        runs = round_robin(
            {
                name: functools.partial(subprocess.run, command, check=True, capture_output=True)
                for name, command in commands.items()
            },
            args.repeats,
            log=say,
        )
        med = {name: typical(kept) for name, kept in runs.items()}
        cam = med[CAM]
        bare = med["bare: import, build, forward + full backward"]
        rows = [
            [
                name,
                f"{seconds:.2f}",
                f"{med[name] / bare:.2f}" if name.startswith(("featviz cam", "candidate")) else "",
                runs_text(runs[name]),
            ]
            for name, seconds in med.items()
        ]
        print("### One call: wall time\n")
        print(table(["command", "s", "this / bare one-liner", "runs (s)"], rows))
        print(f"\n- featviz cam / bare one-liner: {cam / bare:.2f}")
        print(
            f"- featviz --help: {med['featviz --help']:.2f} s; import featviz: "
            f"{med[IMPORT]:.2f} s; python alone: {med['python -c pass']:.2f} s\n"
        )
        say("phases of one in-process featviz cam call (fastest of 3)")
        best: dict[str, float] = {}
        walls = []
        for _ in range(3):
            wait_for_quiet(QUIET)
            start = time.perf_counter()
            output = subprocess.run(
                [python, "-c", PHASES, str(photo), str(work / "phases")],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            wall = time.perf_counter() - start
            phases = [line.split(" ", 1) for line in output.splitlines()]
            # what the script's own clock did not see: interpreter start, exit, teardown
            walls.append(wall - sum(float(seconds) for seconds, _ in phases))
            for seconds, name in phases:
                best[name] = min(best.get(name, float("inf")), float(seconds))
        best["process start (interpreter, libraries loaded) and exit"] = min(walls)
        print("### Where one call's time goes (in-process phases, fastest of 3 runs)\n")
        print(table(["phase", "seconds"], [[name, f"{s:.2f}"] for name, s in best.items()]))
        print(f"\n{TIMES_NOTE}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
