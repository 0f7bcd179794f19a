"""The library: featviz from Python — a notebook, a training loop, a data pipeline.

``load`` a model once (a spec string as ``--model`` takes, or your own ``nn.Module``), then
``explain`` images (paths, PIL images, uint8 arrays) into maps you can look at or compute
with, ``feature_maps`` a layer's channels, ``compare``, ``score`` and ``sanity`` as the
commands do, and ``top`` each channel's best images over a dataset. ``Explainer`` is the same
for a stream of batches (a validation step, a Ray Data ``map_batches``). Every call runs the
core the CLI runs, minus the files.
"""
