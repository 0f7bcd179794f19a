"""The library against the command: ``featviz.explain`` on photos vs ``featviz cam``'s own run.

On ``--images`` photos (default 32 at 640×480, made from sample_images/), with the model
loaded once beforehand (start-up is not the library's to judge), it times, round-robin:

- ``featviz.explain(model, paths)``: every photo's Grad-CAM heatmap over the photo, in memory;
- the CLI's run: ``prepare(Plan("cam", …)).results()`` — what ``featviz cam`` runs after
  start-up, writing one overlay PNG per photo;

and prints the ratio (goal: the library at most 1.1× the CLI's run), then checks that a second
call on the same model traces it no second time.

Usage: python benchmarks/bench_api.py [--images 32] [--repeats 3] [--model resnet50]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from _common import machine_line, make_photos, round_robin, runs_text, say, table, typical

LAYERS = {"resnet50": "layer4", "alexnet": "features.11"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", default="resnet50", choices=sorted(LAYERS))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="featviz-api-"))
    try:
        print(machine_line())
        print(compared(work, args.model, args.images, args.repeats))
        print(traces_once(work, args.model))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def compared(work: Path, model_name: str, images: int, repeats: int) -> str:
    import featviz
    from featviz.model.options import ModelRequest
    from featviz.run.plan import CamRequest, Plan, RunRequest
    from featviz.run.prepare import prepare
    from featviz.sinks.options import OutputRequest

    photos = make_photos(work / "photos", images)
    layer = LAYERS[model_name]
    model = featviz.load(model_name, weights="none", device="cpu")
    plan = Plan(
        "cam",
        ModelRequest(model_name, weights="none", device="cpu"),
        OutputRequest(work / "out", gallery=False),
        CamRequest(layers=(layer,)),
        RunRequest((str(work / "photos"),)),
    )
    run = prepare(plan)  # builds its own model: not timed
    contenders = {
        "featviz.explain (library)": lambda: featviz.explain(model, photos, layer=layer),
        "featviz cam's run (CLI)": lambda: list(run.results()),
    }
    say(f"{model_name} at {layer}, {images} photos 640×480, {repeats} repeats")
    runs = round_robin(contenders, repeats, log=say)
    library, cli = (typical(runs[name]) for name in contenders)
    rows = [[name, f"{1000 * typical(r) / images:.0f}", runs_text(r)] for name, r in runs.items()]
    verdict = "met" if library <= 1.1 * cli else "MISSED"
    return (
        table(["contender", "ms/image", "runs (s)"], rows)
        + f"\n\nlibrary / CLI run: {library / cli:.2f} (goal ≤ 1.1: {verdict})"
    )


def traces_once(work: Path, model_name: str) -> str:
    import featviz
    import featviz.model.load as loading

    calls = []
    real = loading._traced
    loading._traced = lambda *a, **k: calls.append(1) or real(*a, **k)
    try:
        model = featviz.load(model_name, weights="none", device="cpu")
        photo = make_photos(work / "one", 1)[0]
        featviz.explain(model, photo)
        featviz.explain(model, photo)
    finally:
        loading._traced = real
    return f"traces for load + two explain calls on one model: {len(calls)} (goal: 1)"


if __name__ == "__main__":
    main()
