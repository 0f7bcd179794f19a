"""``featviz dream``: images optimised for a model's channels or classes, drawn and written like
any output (featviz.features.dream does the optimising)."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from featviz.run.plan import Resolved

if TYPE_CHECKING:
    from featviz.features.dream import Dreams
    from featviz.model.load import LoadedModel
    from featviz.run.plan import Plan
    from featviz.sinks.artifacts import Artifact


@dataclass(frozen=True)
class DreamResult:
    """The files written (each image, then the grid) and one row per image: what it
    maximises, its file, its objective at the start and at the end, and for a class its
    probability."""

    written: list[Path]
    rows: list[dict[str, Any]]


def run_dream(plan: Plan, progress: Callable[[int], None] | None = None) -> DreamResult:
    """``featviz dream``: optimise the plan's objectives in one batch and write one picture
    per image, a labelled grid of all, and the numbers in the run's manifest. ``progress``,
    if given, is told the steps done after each step."""
    from featviz.features.dream import DreamSettings, dream
    from featviz.features.objectives import objectives_for
    from featviz.model.load import load_model
    from featviz.run.prepare import model_folder
    from featviz.sinks import RunEnd, sinks_for
    from featviz.sinks.artifacts import ImageOutputs
    from featviz.sinks.manifest import RunTally

    request = plan.options
    loaded = load_model(plan.model)
    objectives = objectives_for(
        loaded,
        list(request.layers),
        list(request.channels),
        neuron=request.neuron,
        targets=list(request.targets),
    )
    settings = DreamSettings(
        steps=request.steps,
        size=request.size,
        learning_rate=request.learning_rate,
        diversity=request.diversity,
        diversity_weight=request.diversity_weight,
        diversity_layer=loaded.default_cam_layer(),
        seed=request.seed,
    )
    dreams = dream(loaded, objectives, settings, progress)
    artifacts = _artifacts(loaded, dreams, request.diversity)
    resolved = Resolved(
        list(dict.fromkeys(o.layer for o in objectives if o.layer)),
        targets=[o.index for o in objectives if o.kind == "class"],
    )
    rows = _rows(dreams)
    sinks = sinks_for(
        plan.output,
        command="dream",
        fingerprint=plan.fingerprint(loaded, resolved),
        variant=model_folder(plan, loaded, resolved),
        record=lambda: {**plan.record(loaded, resolved), "dreams": rows},
    )
    sinks.open()
    written = sinks.write(ImageOutputs(None, loaded.name, None, [], artifacts)).outputs
    for row, path in zip(rows, written):  # before close: the manifest lists them
        row["file"] = os.path.relpath(path, plan.output.out)
    sinks.close(RunEnd(RunTally(), interrupted=False))
    return DreamResult([Path(path) for path in written], rows)


def _artifacts(loaded: LoadedModel, dreams: Dreams, diversity: int) -> list[Artifact]:
    """One picture per image, then the run's grid: a row per objective's copies, or with one
    copy each a near-square grid."""
    from featviz.render.figures import Cell, titled_grid
    from featviz.sinks.artifacts import Artifact

    pictures = []
    cells = []
    for i, objective in enumerate(dreams.objectives):
        caption = _caption(dreams, i)
        target = objective.stem + (f"-{dreams.copies[i] + 1}" if diversity > 1 else "")
        pictures.append(
            Artifact(
                "dream",
                "dream",
                objective.folder,
                target=target,
                caption=caption,
                pixels=dreams.pixels[i],
            )
        )
        cells.append(Cell(f"{objective.describe()}: {caption}", dreams.pixels[i]))
    columns = diversity if diversity > 1 else math.ceil(math.sqrt(len(cells)))
    rows = [cells[start : start + columns] for start in range(0, len(cells), columns)]
    grid = titled_grid(rows, title=f"featviz dream: {loaded.name}")
    return [*pictures, Artifact("dream", "dream-grid", "", pixels=grid)]


def _caption(dreams: Dreams, i: int) -> str:
    """``12.3`` (the objective on the final image), ``p 0.97`` added for a class."""
    text = f"{dreams.values[i]:.3g}"
    if dreams.objectives[i].kind == "class":
        text += f", p {dreams.probabilities[i]:.2f}"
    return text


def _rows(dreams: Dreams) -> list[dict[str, Any]]:
    """The manifest's and ``--json``'s numbers, one row per image."""
    rows = []
    for i, objective in enumerate(dreams.objectives):
        row: dict[str, Any] = {
            "objective": objective.kind,
            "layer": objective.layer or None,
            "index": objective.index,
            "label": objective.label or None,
            "copy": dreams.copies[i] + 1,
            "start": round(float(dreams.start[i]), 6),
            "value": round(float(dreams.values[i]), 6),
        }
        if objective.kind == "class":
            row["probability"] = round(float(dreams.probabilities[i]), 6)
        rows.append(row)
    return rows
