"""``featviz filters``: a model's learned Conv2d kernels, drawn and written like any output."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from featviz.run.plan import Resolved

if TYPE_CHECKING:
    from featviz.run.plan import Plan


@dataclass(frozen=True)
class FiltersResult:
    """The grids written, and the layers a glob matched that have no kernels to draw."""

    written: list[Path]
    skipped: list[str]


def render_filters(plan: Plan) -> FiltersResult:
    """``featviz filters``: the kernels of the plan's layers, one grid each, written through
    the sinks like any command's outputs."""
    from featviz.features.filters import conv_layers, filter_grid
    from featviz.model.load import load_model
    from featviz.run.prepare import model_folder
    from featviz.sinks import RunEnd, sinks_for
    from featviz.sinks.artifacts import Artifact, ImageOutputs
    from featviz.sinks.manifest import RunTally

    request = plan.options
    loaded = load_model(plan.model)
    modules = dict(loaded.module.named_modules())
    layers, skipped = conv_layers(loaded.trace, modules, list(request.layers))
    kind = "kernels-all-inputs" if request.all_inputs else "kernels"
    artifacts = [
        Artifact(
            "filters",
            kind,
            layer,
            pixels=filter_grid(
                modules[layer],
                layer,
                all_inputs=request.all_inputs,
                cmap=request.cmap,
                cell_size=request.cell_size,
            ),
        )
        for layer in layers
    ]
    resolved = Resolved(layers)
    sinks = sinks_for(
        plan.output,
        command="filters",
        fingerprint=plan.fingerprint(loaded, resolved),
        variant=model_folder(plan, loaded, resolved),
        record=lambda: plan.record(loaded, resolved),
    )
    sinks.open()
    result = sinks.write(ImageOutputs(None, loaded.name, None, [], artifacts))
    sinks.close(RunEnd(RunTally(), interrupted=False))
    return FiltersResult([Path(path) for path in result.outputs], skipped)
