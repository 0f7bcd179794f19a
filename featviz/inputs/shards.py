"""``--shard K/N``: split one run's inputs among N independent processes, with no coordinator.

An image belongs to shard ``1 + hash(relative output path) mod N``: a stable hash (SHA-256 of
the path's bytes, never Python's salted ``hash``), of the path its outputs get under
``--out``, so N shards of the same command line cover every image exactly once whatever
machines, job runners or orders they run in, and a shard rerun with ``--skip-existing`` finds
its own images again. Images keep their position in the whole run (TensorBoard steps, the seeds
of ``score``'s noise), so sharded results equal unsharded ones.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

from featviz.errors import UsageError

_SHARD = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


@dataclass(frozen=True)
class Shard:
    index: int  # 1 … count
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        match = _SHARD.match(text)
        if match:
            index, count = int(match.group(1)), int(match.group(2))
            if 1 <= index <= count:
                return cls(index, count)
        raise UsageError(
            f"--shard '{text}': expected K/N with 1 ≤ K ≤ N",
            hint="e.g. --shard 1/4 … --shard 4/4; in a Slurm array: "
            "--shard $((SLURM_ARRAY_TASK_ID+1))/$SLURM_ARRAY_TASK_COUNT",
        )

    def holds(self, relative: PurePath) -> bool:
        return shard_of(relative, self.count) == self.index

    @property
    def label(self) -> str:
        return f"{self.index}/{self.count}"


def shard_of(relative: PurePath, count: int) -> int:
    """The shard (1 … count) of the image whose outputs go to ``relative``."""
    digest = hashlib.sha256(os.fsencode(relative.as_posix())).digest()
    return 1 + int.from_bytes(digest[:8], "big") % count


def shards_summary(own: dict[str, Any], runs: list[dict[str, Any]]) -> dict[str, Any]:
    """How far the N shards of ``own``'s job have got, from every run manifest in the folder:
    the latest run of each shard of the same command and request, its counts, and which shards
    have not finished (never run, still running, interrupted or stopped by an error)."""
    count = _shard(own)["count"]
    latest: dict[int, dict[str, Any]] = {}
    for run in runs:  # in the order they started
        shard = _shard(run)
        if shard and shard["count"] == count and _same_job(run, own):
            latest[shard["index"]] = run
    finished = sorted(k for k, run in latest.items() if _completed(run))
    totals = {"done": 0, "failed": 0, "skipped": 0}
    for run in latest.values():
        for name in totals:
            totals[name] += run["counts"][name]
    return {
        "count": count,
        "finished": finished,
        "unfinished": [k for k in range(1, count + 1) if k not in finished],
        "counts": totals,
    }


def _completed(run: dict[str, Any]) -> bool:
    """Whether a run went through all its inputs: not interrupted, nor stopped by an error."""
    outcome = run.get("outcome")
    return outcome["status"] == "completed" if outcome else not run.get("interrupted")


def _shard(manifest: dict[str, Any]) -> dict[str, int] | None:
    return manifest.get("request", {}).get("run", {}).get("shard")


def _same_job(run: dict[str, Any], own: dict[str, Any]) -> bool:
    def job(manifest: dict[str, Any]) -> tuple:
        request = manifest["request"]
        run_options = {k: v for k, v in request["run"].items() if k != "shard"}
        return manifest["command"], request["model"], request["options"], run_options

    return job(run) == job(own)
