"""Text a person reads on the terminal: per-image lines, the layer and model tables, the
worker's status. Pure strings; cli/ decides where they go.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from featviz.inputs.printable import printable
from featviz.layers.taps import ENTRY, split_entry

if TYPE_CHECKING:
    from featviz.layers.catalog import ModelTrace
    from featviz.sinks.results import ImageResult
from featviz.render.text import _columns


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
        elif layer.per_channel:
            notes.append("top, dream: one value per channel")
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


def dream_line(row: dict[str, Any]) -> str:
    """What a dreamed image maximises and how far it got: ``layer3 channel 5: 0.12 → 4.5``,
    with the class's probability for a class (``featviz dream``'s rows)."""
    what = (
        f"class {row['index']} {row['label'] or ''}".rstrip()
        if row["objective"] == "class"
        else f"{row['layer']} {row['objective']} {row['index']}"
    )
    line = f"{what}: {row['start']:.3g} → {row['value']:.3g}"
    return line + (f", p {row['probability']:.2f}" if "probability" in row else "")


def models_table(entries: list[tuple[str, list[str]]]) -> str:
    rows = [("model", "weights")]
    rows += [(name, ", ".join(weights) or "-") for name, weights in entries]
    return _columns(rows)


def worker_status_text(status: dict[str, Any] | None) -> str:
    """``featviz worker status`` for a person."""
    from featviz.run.sizes import format_bytes

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
