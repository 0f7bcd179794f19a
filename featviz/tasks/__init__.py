"""Tasks: how a model's raw output becomes one score per image and target.

A classifier needs none. ``segmentation`` (per-pixel logits → a class's score over its
pixels), ``detection`` (boxes → each box's score, maps cropped out of the padding) and
``target_fn`` (the user's own function of the output) are root hooks on the model, so every
CAM method sees a classifier. A new task is one ``Task`` subclass in one module here, chosen
from the traced output in ``featviz.model.load``'s ``_task_for``.
"""
