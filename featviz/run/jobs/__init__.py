"""Jobs: what each command does with a batch, and writes for each image.

``base`` loads inputs and hands each image's outputs to the sinks; ``explaining`` builds the
Explainer that cam, compare, score and sanity share; ``cam``, ``compare``, ``score``,
``sanity``, ``maps`` and ``top`` (with ``top_outputs``, what it writes at the end) are one
command each. A new command is one module here.
"""
