"""The job of every command that explains its batches (cam, compare, score, sanity): its
Explainer, built once from the request's methods and the resolved layers and classes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from featviz.run.jobs.base import ImageJob
from featviz.tasks.detection import (
    DEFAULT_MIN_SCORE,
)

if TYPE_CHECKING:
    from featviz.explainer.options import ExplainRequest
from featviz.explainer.batch import Explainer


@dataclass(kw_only=True)
class ExplainingJob(ImageJob):
    """A job that explains its batches (cam, compare, score, sanity): its Explainer, built once
    from the request's methods and the resolved layers and classes."""

    request: ExplainRequest
    layers: list[str]  # resolved module names, in execution order
    targets: list[int]  # resolved class indices; empty → the top-k predictions
    seed: int = 0  # --seed: with each image's position, the noise of the random methods

    def __post_init__(self) -> None:
        self.explainer = Explainer(
            self.model,
            self.request.methods,
            self.layers,
            self.targets,
            top_k=self.request.top_k,
            cam_batch_size=self.request.cam_batch_size,
            min_score=(
                DEFAULT_MIN_SCORE if self.request.min_score is None else self.request.min_score
            ),
            seed=self.seed,
        )
