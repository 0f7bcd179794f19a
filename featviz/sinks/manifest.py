"""A run's tally and its manifest: what was done, failed, skipped, cut off or never attempted,
and how the run ended.
"""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from featviz import __version__

if TYPE_CHECKING:
    from featviz.sinks.results import ImageResult


@dataclass
class RunTally:
    """Counts of a run, kept by the CLI as results arrive. When a run stops early, ``cut_off``
    lists the images it had started but not finished, ``not_attempted`` those it never reached
    (None: not known, for paths streamed on stdin), and ``stopped_by`` why it stopped."""

    done: int = 0
    failed: int = 0
    skipped: int = 0
    failures: list[str] = field(default_factory=list)
    results: list[dict[str, Any]] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)
    reported: set[int] = field(default_factory=set)  # the inputs' indices with a result
    cut_off: list[str] = field(default_factory=list)
    not_attempted: list[str] | None = field(default_factory=list)
    stopped_by: str | None = None

    def add(self, result: ImageResult) -> None:
        self.reported.add(result.source.index)
        self.results.append(result.as_dict())
        if result.error:
            self.failed += 1
            self.failures.append(result.error)
        elif result.skipped:
            self.skipped += 1
        else:
            self.done += 1

    def summary(self, out_dir: str, interrupted: bool = False) -> str:
        elapsed = time.perf_counter() - self.started
        head = "interrupted: " if interrupted else ""
        left = len(self.cut_off) + len(self.not_attempted or ())
        unknown = self.not_attempted is None and self.stopped_by is not None
        rest = f", {left} not done" if left else (", the rest not done" if unknown else "")
        return (
            f"{head}{self.done} done, {self.failed} failed, {self.skipped} skipped{rest} in "
            f"{elapsed:.1f} s ({speed(self.done, elapsed)}); outputs in {out_dir}"
        )


def speed(images: int, seconds: float) -> str:
    """``2.31 images/s``, or ``4.2 s/image`` when under one a second."""
    if images and seconds / images > 1:
        return f"{seconds / images:.1f} s/image"
    return f"{images / seconds if seconds > 0 else 0.0:.2f} images/s"


def manifest(
    command: str, record: dict[str, Any], tally: RunTally, interrupted: bool
) -> dict[str, Any]:
    """The whole run: versions, ``record`` (the model loaded, the requests as given and what was
    resolved from them), how it ended, counts, every image's result, and the inputs it did not
    finish."""
    import torch
    import torchvision

    return {
        "command": command,
        "versions": {
            "featviz": __version__,
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "python": platform.python_version(),
        },
        **record,
        "interrupted": interrupted,
        "outcome": _outcome(tally, interrupted),
        "counts": {
            "done": tally.done,
            "failed": tally.failed,
            "skipped": tally.skipped,
            "cut_off": len(tally.cut_off),
            "not_attempted": None if tally.not_attempted is None else len(tally.not_attempted),
        },
        "elapsed_s": round(time.perf_counter() - tally.started, 3),
        "images": tally.results,
        "cut_off": tally.cut_off,
        "not_attempted": tally.not_attempted,
    }


def _outcome(tally: RunTally, interrupted: bool) -> dict[str, Any]:
    """How the run ended: ``completed`` (every input has a result, failed ones included),
    ``interrupted`` (a signal) or ``stopped`` (an error that ends a run: a full disk…), and
    why."""
    if interrupted:
        return {"status": "interrupted", "reason": tally.stopped_by}
    if tally.stopped_by is not None:
        return {"status": "stopped", "reason": tally.stopped_by}
    return {"status": "completed", "reason": None}
