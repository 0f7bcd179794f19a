"""What to explain: the options of every command that computes maps (cam, compare, score,
sanity) and of the library's ``featviz.explain``.

Field metadata ``{"outputs": "none"}`` marks an option that never changes what is written (a
batch size); ``{"outputs": "files"}`` one that only chooses which files are written (see
featviz.run.plan, which derives records, fingerprints and model folders from these marks).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

NO_EFFECT = {"outputs": "none"}


@dataclass(frozen=True)
class ExplainRequest:
    """What to explain: ``methods`` (registry names), ``layers`` (names or globs; empty: the
    default CAM layer), ``targets`` (class indices or names as typed; empty: the ``top_k``
    most likely, 1 by default, or a detector's boxes of at least ``min_score``),
    ``target_fn`` (``FILE.py:fn`` or ``pkg.mod:fn``: a score of the raw output instead of the
    classes); ``prompts``: a file of text prompts, one a line, for a CLIP-style model's
    zero-shot classifier (featviz.tasks.prompts); ``cam_batch_size``: extra forwards per
    batch for the perturbation methods."""

    methods: tuple[str, ...] = ("gradcam",)
    layers: tuple[str, ...] = ()
    targets: tuple[str, ...] = ()
    top_k: int | None = None
    cam_batch_size: int = field(default=32, metadata=NO_EFFECT)
    target_fn: str | None = None
    min_score: float | None = None
    prompts: Path | None = None
