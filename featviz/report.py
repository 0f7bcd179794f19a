"""Text a person reads: tables, per-image lines, the closing summary, the manifest. Pure strings
and dicts; cli.py decides where they go."""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from featviz import __version__
from featviz.hooks import ENTRY, split_entry
from featviz.images import printable

if TYPE_CHECKING:
    from featviz.layers import ModelTrace
    from featviz.pipeline import ImageResult


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


def image_line(result: ImageResult) -> str:
    """One line per image: top-1 class and probability (or why there was nothing to explain),
    and what was written where (or how many rows it scored, for a run whose per-image results
    are rows: score)."""
    if result.error:
        return f"error: {result.error}"
    status = "skipped (done earlier), " if result.skipped else ""
    top = result.predictions[0] if result.predictions else None
    guess = f": {top.label} ({top.probability:.2f})" if top else ""
    if result.note:  # a detector without a box: an answer, said in place of the top guess
        if not result.outputs:
            return f"{result.source.display}: {result.note}: nothing to explain"
        guess = f": {result.note}"
    if result.rows and not result.outputs:
        return f"{result.source.display}{guess} → {status}{_count(len(result.rows), 'row')}"
    where = printable(os.path.commonpath(result.outputs)) if result.outputs else "-"
    files = _count(len(result.outputs), "file")
    return f"{result.source.display}{guess} → {status}{files} in {where}"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' if n != 1 else ''}"


def layer_table(trace: ModelTrace, default_layer: str | None, multiple: int | None) -> str:
    """Every module: name, type, output shape (and how it becomes maps), parameters, and what
    featviz can do with it; a first line says which input sizes the model takes."""
    height, width = trace.input_hw
    if multiple is None:
        sizes = f"{width}×{height} only (photos are squashed to it, never cropped)"
    elif multiple > 1:
        sizes = f"sides that are multiples of {multiple} (shorter side {height} by default)"
    else:
        sizes = f"any size (shorter side {height} by default); shapes below for {width}×{height}"
    rows = [("name", "type", "output shape", "params", "notes")]
    attention_input = trace.attention_inputs[-1] if trace.attention_inputs else None
    dicts = {split_entry(layer.name)[0] for layer in trace.layers if ENTRY in layer.name}
    for layer in trace.layers:
        if layer.shape is None:
            shape = "-"
        elif layer.layout is None:
            shape = "×".join(str(d) for d in layer.shape[1:])
        else:
            shape = layer.layout.describe(layer.shape, trace.input_hw)
        notes = []
        if layer.spatial:
            notes.append("cam" + (" (pooled)" if layer.pooled else ""))
        if layer.name == default_layer:
            why = " (the last attention's input)" if layer.name == attention_input else ""
            notes.append(f"← default cam layer{why}")
        if layer.name in dicts:
            notes.append(f"a dict: tap an entry as {layer.name}{ENTRY}KEY (below)")
        if layer.calls > 1:
            notes.append(f"runs {layer.calls}× per forward: a tap keeps the last call")
        if layer.calls == 0:
            notes.append("not run in forward")
        rows.append((layer.name, layer.type_name, shape, f"{layer.params:,}", ", ".join(notes)))
    return f"input: {sizes}\n" + _columns(rows)


def models_table(entries: list[tuple[str, list[str]]]) -> str:
    rows = [("model", "weights")]
    rows += [(name, ", ".join(weights) or "-") for name, weights in entries]
    return _columns(rows)


def _columns(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows
    )


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


def score_csv(rows: list[dict[str, Any]]) -> str:
    """Every row of a score or sanity run as CSV, columns in the rows' own order."""
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def score_table(rows: list[dict[str, Any]]) -> str:
    """Mean ± standard error of each metric per method and layer, the best of each column
    marked with *; the baselines (random, center) last."""
    import math

    from featviz.score_job import BASELINES, LOWER_IS_BETTER, METRICS

    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["method"], row["layer"]), []).append(row)
    order = sorted(groups, key=lambda key: (key[0] in BASELINES, key[1]))

    def stats(values: list[float]) -> tuple[float, float]:
        mean = sum(values) / len(values)
        if len(values) < 2:
            return mean, 0.0
        variance = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
        return mean, math.sqrt(variance / len(values))

    means = {key: {m: stats([r[m] for r in groups[key]]) for m in METRICS} for key in order}
    best = {
        metric: (min if metric in LOWER_IS_BETTER else max)(means[key][metric][0] for key in order)
        for metric in METRICS
    }
    arrows = {m: "↓" if m in LOWER_IS_BETTER else "↑" for m in METRICS}
    header = ("method", "layer", "n", *(f"{m} {arrows[m]}" for m in METRICS))
    table = [header]
    for key in order:
        cells = []
        for metric in METRICS:
            mean, error = means[key][metric]
            mark = "*" if math.isclose(mean, best[metric]) else " "
            cells.append(f"{mean:.3f} ± {error:.3f}{mark}")
        table.append((key[0], key[1], str(len(groups[key])), *cells))
    return _columns(table)


def sanity_table(rows: list[dict[str, Any]], blocks: list[str]) -> str:
    """Mean Spearman correlation with the trained model's map per method and layer after the
    top block, half the blocks and all of them are re-initialised (and SSIM after all): a map
    that stays near 1 does not depend on what the model learned."""
    totals: dict[tuple[str, str], dict[str, list[float]]] = {}
    for row in rows:
        key = (row["method"], row["layer"])
        totals.setdefault(key, {}).setdefault(row["randomized"], []).append(row["spearman"])
        if row["randomized"] == blocks[-1]:
            totals[key].setdefault("ssim", []).append(row["ssim"])
    steps = {"top block": blocks[0], "half": blocks[(len(blocks) - 1) // 2], "all": blocks[-1]}
    header = ("method", "layer", *(f"spearman, {name}" for name in steps), "ssim, all")
    table = [header]
    for (method, layer), values in totals.items():
        means = [values.get(block, []) for block in steps.values()] + [values.get("ssim", [])]
        table.append((method, layer, *(f"{sum(v) / len(v):.3f}" if v else "-" for v in means)))
    return _columns(table)


def worker_status_text(status: dict[str, Any] | None) -> str:
    """``featviz worker status`` for a person."""
    from featviz.sizes import format_bytes

    if status is None:
        return "no featviz worker is running for this environment"
    idle = f"idle {status['idle_s']:.0f} s" if not status["busy"] else "busy"
    queued = f", {status['queued']} queued" if status["queued"] else ""
    lines = [
        f"featviz worker: pid {status['pid']}, up {_duration(status['uptime_s'])}, "
        f"{status['calls']} calls, {idle}{queued} (leaves after "
        f"{_duration(status['idle_timeout_s'])} idle)",
        f"socket: {status['socket']}",
        f"python: {status['python']}; featviz {status['version']}",
    ]
    models = status["models"]
    kept = sum(model["bytes"] for model in models)
    rss = format_bytes(status["rss_bytes"]) if status["rss_bytes"] else "?"
    lines.append(
        f"memory: {rss} resident; models {format_bytes(kept)} kept of "
        f"{format_bytes(status['models_budget'])}" + (":" if models else "")
    )
    if models:
        rows = [("model", "weights", "device", "size", "uses")]
        rows += [
            (m["model"], m["weights"], m["device"], format_bytes(m["bytes"]), str(m["uses"]))
            for m in reversed(models)
        ]
        lines += ["  " + line for line in _columns(rows).splitlines()]
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    minutes, second = divmod(int(seconds), 60)
    hours, minute = divmod(minutes, 60)
    if hours:
        return f"{hours} h {minute} min"
    if minute:
        return f"{minute} min {second} s" if second else f"{minute} min"
    return f"{second} s"
