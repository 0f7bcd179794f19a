"""``featviz score``: how faithful is each map? Numbers per image × method × layer × target.

Each map E is upsampled to the network's input and scaled to [0, 1]; featviz.judge.metrics then
perturbs the input by it (average drop / increase in confidence, deletion / insertion AUC,
ROAD MoRF / LeRF), every image of a batch and every perturbation of it in as few forwards as
``--score-batch-size`` allows, on the model's device. Two baselines are scored like methods, at
every layer: ``random`` (seeded noise on the layer's grid, the mean over RANDOM_DRAWS maps) and
``center`` (a Gaussian in the middle): a method that does not beat them explains nothing. A
class-agnostic map (eigencam) is scored for every target.

Per image: one row per map (``--json`` prints them, the records keep them). At the end of the
run: ``score.csv`` (every row), ``score.png`` (mean deletion and insertion curves), and a table of
means ± standard errors per method and layer, the best of each column marked.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from featviz.inputs.loaded import LoadedImage
from featviz.run.jobs.base import failure, run_rows
from featviz.run.jobs.explaining import ExplainingJob
from featviz.sinks.artifacts import Artifact, ImageOutputs
from featviz.sinks.results import ImageResult

if TYPE_CHECKING:
    import torch

    from featviz.run.plan import ScoreRequest

# The random baseline is the mean over this many seeded random maps: one draw's numbers vary
# more between draws than the methods do between themselves (insertion AUC 0.26 and 0.39 for
# two draws on coffee.png).
RANDOM_DRAWS = 4


@dataclass(kw_only=True)
class ScoreJob(ExplainingJob):
    request: ScoreRequest

    def __post_init__(self) -> None:
        super().__post_init__()
        # Whether the perturbed inputs may go channels-last (decided on the first forward).
        self.channels_last: bool | None = None
        # (method, layer) → summed (steps + 1) deletion and insertion curves and their count,
        # on a common grid of fractions; filled on the model's thread, read at the end.
        self.curves: dict[tuple[str, str], list[Any]] = {}

    def process(
        self, batch: list[LoadedImage], inputs: torch.Tensor
    ) -> list[Callable[[], ImageResult]]:
        explained = self.explainer.explain(inputs, ids=[item.source.index for item in batch])
        keep = [i for i in range(len(batch)) if i not in explained.broken]
        rows: dict[int, list[dict[str, Any]]] = {i: [] for i in keep}
        if keep:
            x = explained.context.inputs.detach()[keep]
            probabilities = explained.context.logits.detach().float().softmax(dim=1)[keep]
            seeds = [batch[i].source.index for i in keep]
            for method, layer, maps, classes in self._groups(explained, keep, seeds):
                scores = self._score(x, probabilities, maps, classes, (method, layer), seeds)
                for position, i in enumerate(keep):
                    row = self._row(method, layer, int(classes[position]))
                    rows[i].append({**row, **{k: v[position] for k, v in scores.items()}})
        return [
            failure(item, explained.broken[i])
            if i in explained.broken
            else self._writer(item, explained.predictions[i], rows[i])
            for i, item in enumerate(batch)
        ]

    def _groups(self, explained: Any, keep: list[int], seeds: list[int]):
        """(method, layer, [(N, h, w) maps], (N,) classes) of every method, layer and target
        column (a class-agnostic map once per column), then the two baselines at every layer
        (random: RANDOM_DRAWS maps, whose numbers are averaged); ``seeds``: the images'
        positions in the run, which seed the random maps."""
        import torch

        from featviz.judge.metrics import centre_map, random_map

        targets = explained.targets[keep].cpu()
        grids: dict[str, tuple[int, int]] = {}
        for j, entry in enumerate(explained.maps[keep[0]]):
            maps = torch.stack([explained.maps[i][j].shown for i in keep])
            grids.setdefault(entry.layer, tuple(maps.shape[1:]))
            if entry.index is not None:
                classes = torch.tensor([explained.maps[i][j].index for i in keep])
                yield entry.method, entry.layer, [maps], classes
                continue
            for column in range(targets.shape[1]):
                yield entry.method, entry.layer, [maps], targets[:, column]
        base = self.request.seed * 1_000_003
        for layer, grid in grids.items():
            for column in range(targets.shape[1]):
                draws = [
                    torch.stack(
                        [random_map(grid, base + s * 997 + column * 31 + draw) for s in seeds]
                    )
                    for draw in range(RANDOM_DRAWS)
                ]
                yield "random", layer, draws, targets[:, column]
                centre = centre_map(grid).expand(len(keep), *grid)
                yield "center", layer, [centre], targets[:, column]

    def _row(self, method: str, layer: str, index: int) -> dict[str, Any]:
        from featviz.explainer.names import class_slug

        return {
            "method": method,
            "layer": layer,
            "target": class_slug(index, self.model.category(index)),
            "class": index,
            "label": self.model.label(index),
        }

    def _score(
        self,
        x: torch.Tensor,
        probabilities: torch.Tensor,
        draws: list[torch.Tensor],
        classes: torch.Tensor,
        key: tuple[str, str],
        seeds: list[int],
    ) -> dict[str, list[float]]:
        """Every metric of each image's map, averaged over ``draws`` (several for random)."""
        totals: dict[str, torch.Tensor] = {}
        for maps in draws:
            values = self._score_maps(x, probabilities, maps, classes, key, seeds)
            for name, value in values.items():
                totals[name] = totals.get(name, 0) + value.float().cpu() / len(draws)
        return {name: [round(float(v), 6) for v in value] for name, value in totals.items()}

    def _score_maps(
        self,
        x: torch.Tensor,
        probabilities: torch.Tensor,
        maps: torch.Tensor,
        classes: torch.Tensor,
        key: tuple[str, str],
        seeds: list[int],
    ) -> dict[str, torch.Tensor]:
        import numpy as np

        from featviz.cam import normalise
        from featviz.judge.metrics import deletion_insertion, drop_and_increase, road
        from featviz.layers.grids import resized

        scorer = self._scorer
        size = self.request.score_batch_size or (64 if self.model.device.type == "cuda" else 8)
        targets = classes.to(x.device)
        E = normalise(resized(maps.to(x.device), x.shape[2:]))
        Y = probabilities.gather(1, targets[:, None])[:, 0]
        drop, increase = drop_and_increase(scorer, x, E, targets, Y, size)
        curves = deletion_insertion(
            scorer, x, E, targets, Y, steps=self.request.steps, batch_size=size
        )
        noise_seeds = [self.request.seed * 1_000_003 + s for s in seeds]
        morf, lerf = road(scorer, x, E, targets, Y, batch_size=size, seeds=noise_seeds)
        grid = np.linspace(0.0, 1.0, self.request.steps + 1)
        fractions = curves.fractions.cpu().numpy()
        total = self.curves.setdefault(key, [np.zeros_like(grid), np.zeros_like(grid), 0])
        for deletion, insertion in zip(
            curves.deletion.cpu().numpy(), curves.insertion.cpu().numpy()
        ):
            total[0] += np.interp(grid, fractions, deletion)
            total[1] += np.interp(grid, fractions, insertion)
            total[2] += 1
        return {
            "probability": Y,
            "average_drop": drop,
            "increase_in_confidence": increase,
            "deletion_auc": curves.deletion_auc,
            "insertion_auc": curves.insertion_auc,
            "road_morf": morf,
            "road_lerf": lerf,
        }

    def _scorer(self, batch: torch.Tensor) -> torch.Tensor:
        """The logits of perturbed inputs. Channels-last inputs make the convolutions of a model
        kept in NCHW run 1.5–2× faster on a CPU (EfficientNet-Lite0, batch 8: 40 → 20 ms per
        image), but a model may reshape with ``.view`` and fail on them: the first batch runs
        both ways, and channels-last is kept only when it runs and gives the same logits."""
        import torch

        from featviz.layers.outputs import logits_of

        module = self.model.module
        if self.channels_last is None:
            reference = logits_of(module(batch))[0]
            try:
                fast = logits_of(module(batch.contiguous(memory_format=torch.channels_last)))[0]
                scale = float(reference.abs().max()) or 1.0
                self.channels_last = bool(torch.allclose(fast, reference, atol=1e-4 * scale))
            except RuntimeError:
                self.channels_last = False
            return reference
        if self.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        return logits_of(module(batch))[0]

    def _writer(self, item: LoadedImage, predictions: list[Any], rows: list[dict[str, Any]]):
        def write() -> ImageResult:
            outputs = ImageOutputs(item.source, self.model.name, item.original, predictions)
            return self.deliver(outputs, rows)

        return write

    def run_outputs(self, results: list[dict[str, Any]]) -> list[Artifact]:
        import numpy as np

        from featviz.judge.tables import score_csv
        from featviz.render.figures import curves_plot

        rows = run_rows(results)
        if not rows:
            return []
        grid = np.linspace(0.0, 1.0, self.request.steps + 1)
        several = len({layer for _, layer in self.curves}) > 1
        series = {}
        for kind, index in (("deletion", 0), ("insertion", 1)):
            series[kind] = {
                (f"{method} @ {layer}" if several else method): (grid, total[index] / total[2])
                for (method, layer), total in self.curves.items()
            }
        plot = curves_plot(
            "confidence as the map's most relevant pixels are deleted / inserted",
            [
                (
                    "deletion (lower is better)",
                    "fraction of pixels deleted",
                    "probability",
                    series["deletion"],
                ),
                (
                    "insertion (higher is better)",
                    "fraction of pixels inserted",
                    "probability",
                    series["insertion"],
                ),
            ],
        )
        return [
            Artifact("score", "table", "", text=score_csv(rows)),
            Artifact("score", "curves", "", caption="deletion and insertion curves", pixels=plot),
        ]

    def report(self, results: list[dict[str, Any]]) -> str | None:
        from featviz.judge.tables import score_table

        rows = run_rows(results)
        return score_table(rows) if rows else None
