"""``featviz sanity``: does the map depend on the model? (Adebayo et al., NeurIPS 2018)

Cascading randomisation (featviz.judge.randomize): the model's blocks are re-initialised one by one
from the top, and after each step every method's map is computed again on a randomised copy
for the same classes, and compared with the map of the trained model: Spearman's rank
correlation of |map| at the layer's resolution, and SSIM of the maps scaled to [0, 1] at the
network's input size. A map that stays the same while the weights go random shows the input,
not what the model learned.

Per image: one row per map and step (``randomized``: the block re-initialised last, "none" for
the trained model, whose row has spearman = ssim = 1), and ``<rel>/sanity.png``: one row per
method, its map along the cascade. At the end: ``sanity.csv`` and ``sanity.png``, the mean
correlation per method against the step.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from featviz.errors import UsageError
from featviz.inputs.loaded import LoadedImage
from featviz.run.jobs.base import failure, run_rows
from featviz.run.jobs.explaining import ExplainingJob
from featviz.sinks.artifacts import Artifact, ImageOutputs
from featviz.sinks.results import ImageResult

if TYPE_CHECKING:
    import torch

    from featviz.run.plan import SanityRequest


@dataclass(kw_only=True)
class SanityJob(ExplainingJob):
    request: SanityRequest

    def __post_init__(self) -> None:
        from featviz.judge.randomize import cascade_blocks, randomised_states

        super().__post_init__()
        module = self.model.module
        self.blocks = cascade_blocks(module, self.model.trace)
        if not self.blocks:
            raise UsageError(
                f"sanity: {self.model.name} has no sub-modules with parameters to re-initialise"
            )
        self.states = list(randomised_states(module, self.blocks, self.request.seed))
        self.trained = {k: v.clone() for k, v in module.state_dict().items()}
        self.copy = copy.deepcopy(module)
        # (method, layer) → {step: [sum of spearman, count]}, filled on the model's thread.
        self.curves: dict[tuple[str, str], dict[int, list[float]]] = {}

    def process(
        self, batch: list[LoadedImage], inputs: torch.Tensor
    ) -> list[Callable[[], ImageResult]]:
        ids = [item.source.index for item in batch]
        original = self.explainer.explain(inputs, ids=ids)
        keep = [i for i in range(len(batch)) if i not in original.broken]
        steps: list[list[list[Any]]] = []  # per step, per image: its maps
        if keep:
            self.copy.load_state_dict(self.trained)
            for state in self.states:
                self.copy.load_state_dict(state, strict=False)
                randomised = self.explainer.explain(
                    inputs, module=self.copy, targets=original.targets, ids=ids
                )
                steps.append(randomised.maps)
        size = tuple(inputs.shape[2:])  # (H, W), or a clip's (T, H, W)
        rows = {i: self._rows(original.maps[i], [step[i] for step in steps], size) for i in keep}
        return [
            failure(item, original.broken[i])
            if i in original.broken
            else self._writer(item, original, i, [step[i] for step in steps], rows[i])
            for i, item in enumerate(batch)
        ]

    def _rows(
        self, trained: list[Any], cascade: list[list[Any]], size: tuple[int, ...]
    ) -> list[dict[str, Any]]:
        """Every map's similarity to the trained model's along the cascade; SSIM at the
        network's input ``size``."""
        from featviz.cam import normalise
        from featviz.judge.similarity import spearman, ssim
        from featviz.layers.grids import resized

        rows = []
        for j, entry in enumerate(trained):
            base = {"method": entry.method, "layer": entry.layer, "target": entry.target}
            rows.append({**base, "randomized": "none", "spearman": 1.0, "ssim": 1.0})
            self._add((entry.method, entry.layer), 0, 1.0)
            reference = entry.shown[None]
            scaled_reference = normalise(resized(reference, size))
            for step, (block, maps) in enumerate(zip(self.blocks, cascade), 1):
                other = maps[j].shown[None]
                rho = float(spearman(reference.abs(), other.abs())[0])
                similarity = float(ssim(scaled_reference, normalise(resized(other, size)))[0])
                rows.append(
                    {
                        **base,
                        "randomized": block,
                        "spearman": round(rho, 6),
                        "ssim": round(similarity, 6),
                    }
                )
                self._add((entry.method, entry.layer), step, rho)
        return rows

    def _add(self, key: tuple[str, str], step: int, value: float) -> None:
        total = self.curves.setdefault(key, {}).setdefault(step, [0.0, 0])
        total[0] += value
        total[1] += 1

    def _writer(
        self,
        item: LoadedImage,
        original: Any,
        i: int,
        cascade: list[list[Any]],
        rows: list[dict[str, Any]],
    ):
        def write() -> ImageResult:
            from featviz.cam import heatmap
            from featviz.render.draw import apply_colormap, colormap_lut
            from featviz.render.figures import Cell, grid_panel

            lut = colormap_lut("jet")
            size = item.original.shape[:-1]  # (H, W), or a clip's (T, H, W)
            panel_rows = []
            shown = set()
            for j, entry in enumerate(original.maps[i]):
                if entry.method in shown:
                    continue  # one row per method: its first layer and target
                shown.add(entry.method)
                maps = [entry.shown] + [step[j].shown for step in cascade]
                titles = ["trained"] + [f"→ {block}" for block in self.blocks]
                cells = [
                    Cell(f"{entry.method}\n{title}", apply_colormap(heatmap(m, size).numpy(), lut))
                    for m, title in zip(maps, titles)
                ]
                panel_rows.append(cells)
            panel = grid_panel(
                item.original,
                panel_rows,
                cmap="jet",
                title=f"{item.source.display}: maps as the blocks are re-initialised from the top",
            )
            artifact = Artifact(
                "sanity",
                "panel",
                "",
                caption="cascading randomisation",
                pixels=panel,
                frame_ms=item.frame_ms,
            )
            outputs = ImageOutputs(
                item.source, self.model.name, item.original, original.predictions[i], [artifact]
            )
            return self.deliver(outputs, rows)

        return write

    def run_outputs(self, results: list[dict[str, Any]]) -> list[Artifact]:
        from featviz.judge.tables import score_csv
        from featviz.render.figures import curves_plot

        rows = run_rows(results)
        if not rows:
            return []
        several = len({layer for _, layer in self.curves}) > 1
        series = {
            (f"{method} @ {layer}" if several else method): (
                sorted(steps),
                [steps[k][0] / steps[k][1] for k in sorted(steps)],
            )
            for (method, layer), steps in self.curves.items()
        }
        plot = curves_plot(
            "sanity check: step k = the top k blocks re-initialised",
            [
                (
                    "rank correlation with the trained model's map",
                    "blocks re-initialised",
                    "Spearman (|map|)",
                    series,
                )
            ],
        )
        return [
            Artifact("sanity", "table", "", text=score_csv(rows)),
            Artifact("sanity", "curves", "", caption="correlation along the cascade", pixels=plot),
        ]

    def report(self, results: list[dict[str, Any]]) -> str | None:
        from featviz.judge.tables import sanity_table

        rows = run_rows(results)
        return sanity_table(rows, self.blocks) if rows and self.blocks else None
