"""Every torchvision classifier through featviz, as a new user would try it: a table.

For each of the models ``torchvision.models.list_models(module=torchvision.models)`` lists:
``featviz layers -m NAME`` (a default layer marked), then ``featviz cam -m NAME --weights none
--save-raw`` and ``featviz maps -m NAME --weights none -l <default layer>`` on a 320×240 photo
(sample_images/cat_and_coffee.png resized), all in one process through the CLI's own entry
point. Prints one row per model: exit codes, the default layer and its layout, whether the map
at that layer varies (torchvision zero-initialises its ViTs' heads, so with --weights none
their scores, gradients and maps are all zero: marked "zero head"), and seconds.

    python benchmarks/sweep_torchvision.py            # all of them (about 15 minutes here)
    python benchmarks/sweep_torchvision.py vit swin   # names containing any of these
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torchvision
from _common import SAMPLES, machine_line, table
from PIL import Image
from typer.testing import CliRunner

from featviz.cli.app import app
from featviz.model.load import load_model
from featviz.model.options import ModelRequest


def main() -> None:
    wanted = sys.argv[1:]
    names = sorted(torchvision.models.list_models(module=torchvision.models))
    names = [n for n in names if not wanted or any(w in n for w in wanted)]
    work = Path(tempfile.mkdtemp(prefix="featviz-sweep-"))
    photo = work / "photo.png"
    Image.open(SAMPLES / "cat_and_coffee.png").convert("RGB").resize((320, 240)).save(photo)
    runner = CliRunner()
    headers = ["model", "layers", "cam", "maps", "default layer", "layout", "map", "s"]
    rows = []
    failures = 0
    for name in names:
        start = time.perf_counter()
        layers = runner.invoke(app, ["layers", "-m", name])
        structure = load_model(ModelRequest(name), structure_only=True)
        default = structure.default_cam_layer()
        info = structure.trace.get(default)
        out = work / name
        cam = runner.invoke(
            app,
            [
                "cam",
                "-m",
                name,
                "--weights",
                "none",
                "--save-raw",
                "-q",
                str(photo),
                "-o",
                str(out),
            ],
        )
        maps = runner.invoke(
            app,
            [
                "maps",
                "-m",
                name,
                "--weights",
                "none",
                "-l",
                default,
                "-q",
                str(photo),
                "-o",
                str(out),
            ],
        )
        varies = "-"
        raws = list((out / "photo" / "cam").rglob("*.npz"))
        if raws:
            layer_cam = np.load(raws[0])["layer_cam"]
            varies = (
                "varies" if layer_cam.std() > 0 else ("zero head" if "vit_" in name else "CONSTANT")
            )
        codes = [layers.exit_code, cam.exit_code, maps.exit_code]
        failures += any(codes) or varies == "CONSTANT"
        rows.append(
            [
                name,
                *map(str, codes),
                default,
                f"{info.layout.kind} {info.grid[0]}×{info.grid[1]}",
                varies,
                f"{time.perf_counter() - start:.1f}",
            ]
        )
        print(" ".join(rows[-1]), flush=True)
        for result in (layers, cam, maps):
            if result.exit_code:
                print("   ", result.stderr.strip().splitlines()[-1], flush=True)
    print()
    print(machine_line())
    print(table(headers, rows))
    print(f"\n{len(names)} models, {failures} with a failure or a constant map")


if __name__ == "__main__":
    main()
