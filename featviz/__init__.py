"""featviz: see what a vision model sees.

The library, for notebooks, training loops and data pipelines::

    import featviz

    model = featviz.load("resnet50")            # or your own torch.nn.Module
    explanation = featviz.explain(model, "cat.jpg", target="tabby")
    explanation.heatmap                         # float32 (H, W) in [0, 1] over the photo
    explanation.overlay()                       # a PIL image; a notebook shows it by itself

``featviz.explain``, ``featviz.feature_maps``, ``featviz.compare``, ``featviz.score``,
``featviz.sanity`` and ``featviz.Explainer`` (for a stream of batches: a validation step, Ray
Data's ``map_batches``) run the core the ``featviz`` command runs, minus the files; so does
``featviz.dream`` (images optimised to excite channels or classes) and ``featviz.top`` (the
images of a dataset that excite each channel most).

Importing this package stays cheap (no torch): its names load their modules on first use, and
shell loops that run ``featviz`` pay nothing for them.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.2.0"

_LAZY = {
    "load": "featviz.api.model",
    "explain": "featviz.api.explain",
    "Explanation": "featviz.api.explain",
    "Explanations": "featviz.api.explain",
    "feature_maps": "featviz.api.features",
    "FeatureMaps": "featviz.api.features",
    "compare": "featviz.api.judge",
    "score": "featviz.api.judge",
    "sanity": "featviz.api.judge",
    "Explainer": "featviz.api.batches",
    "dream": "featviz.api.dream",
    "top": "featviz.api.top",
    "TopExamples": "featviz.api.top",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'featviz' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted(__all__)
