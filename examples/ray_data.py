"""featviz in a Ray Data pipeline: ``Dataset.map_batches(featviz.Explainer, …)``.

Each actor of the pool builds the model once; each batch of rows comes back with four more
columns: ``heatmap`` (the image's float32 (H, W) map in [0, 1]), ``class_index``, ``label``
and ``probability``. Run from the repository root (``pip install -e ".[examples,ray]"``)::

    python examples/ray_data.py

It starts a local Ray, explains the sample photos with EfficientNet-Lite0 on an actor per CPU
but one (Ray Data reads the files with that one: actors holding every CPU would leave the
reads none, and the pipeline would wait forever) and prints each photo's class and where its
map is hottest.
"""

from __future__ import annotations

from typing import Any

import featviz


def explain_images(
    folder: str, model: str, *, actors: int = 2, batch_size: int = 4, **options: Any
) -> list[dict[str, Any]]:
    """Every image in ``folder`` through ``featviz.Explainer`` on ``actors`` Ray actors; the
    rows (``path``, ``image``, ``heatmap``, ``class_index``, ``label``, ``probability``) sorted
    by path. ``options``: the Explainer's (``method``, ``layer``, ``target``…)."""
    import ray

    rows = ray.data.read_images(folder, mode="RGB", include_paths=True)
    explained = rows.map_batches(
        featviz.Explainer,
        fn_constructor_kwargs={"model": model, **options},
        batch_size=batch_size,
        batch_format="numpy",
        concurrency=actors,  # an actor pool; on GPUs add num_gpus=1: an actor per GPU
    )
    return sorted(explained.take_all(), key=lambda row: row["path"])


def main() -> None:
    import numpy as np
    import ray

    ray.init()
    actors = max(1, int(ray.cluster_resources()["CPU"]) - 1)
    for row in explain_images(
        "sample_images", "examples/efficientnet_lite0.py:build", actors=actors
    ):
        y, x = np.unravel_index(np.argmax(row["heatmap"]), row["heatmap"].shape)
        print(f"{row['path']}: {row['label']} ({row['probability']:.2f}), hottest at x={x} y={y}")


if __name__ == "__main__":
    main()
