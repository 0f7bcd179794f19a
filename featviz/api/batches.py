"""``featviz.Explainer``: explanations of batches as they come, with the model loaded once.

For the pipelines users already have: a training loop's validation step calls it on a batch of
images and logs the overlays; Ray Data's ``Dataset.map_batches(featviz.Explainer, …)`` builds
one per actor and calls it on each batch of rows, getting the maps back as columns.
"""

from __future__ import annotations

from typing import Any

from featviz.errors import UsageError


class Explainer:
    """``featviz.explain`` with everything but the images fixed: ``model`` (``featviz.load``'s,
    a spec string or an ``nn.Module``; ``load_options`` for a spec) and the explain options
    (``method``, ``layer``, ``target``, ``top_k``, ``batch_size``…).

    Called on a list of images (paths, PIL images, uint8 (H, W, 3) arrays) or a (N, H, W, 3)
    uint8 array, it returns their ``Explanations``. Called on a dict of columns (a Ray Data
    batch), it reads the images from ``column`` and returns the batch with ``heatmap`` (each
    image's float32 (H, W) map in [0, 1]), ``class_index``, ``label`` and ``probability``
    added: one map per image, so one method, layer and target.
    """

    def __init__(
        self, model: Any, *, column: str = "image", load_options: dict | None = None, **options
    ) -> None:
        from featviz.api.model import load, loaded_model

        self.model = load(model, **load_options) if load_options else loaded_model(model)
        self.column = column
        self.options = options

    def __call__(self, images: Any) -> Any:
        from featviz.api.explain import Explanations, explain

        if isinstance(images, dict):
            return self._columns(images)
        found = explain(self.model, images, **self.options)
        return found if isinstance(found, Explanations) else Explanations([found])

    def _columns(self, batch: dict[str, Any]) -> dict[str, Any]:
        import numpy as np

        from featviz.api.explain import Explanations, explain

        images = list(batch[self.column])
        found = explain(self.model, images, **self.options)
        found = found if isinstance(found, Explanations) else Explanations([found])
        if len(found) != len(images):
            raise UsageError(
                f"{len(found)} maps for {len(images)} images: columns hold one map per image",
                hint="give one method, one layer and one target",
            )
        heatmaps = np.empty(len(found), dtype=object)
        heatmaps[:] = [explanation.heatmap for explanation in found]
        return {
            **batch,
            "heatmap": heatmaps,
            "class_index": np.array([-1 if e.index is None else e.index for e in found]),
            "label": np.array([e.label for e in found]),
            "probability": np.array(
                [np.nan if e.probability is None else e.probability for e in found]
            ),
        }
