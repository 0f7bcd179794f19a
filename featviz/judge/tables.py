"""The tables of score and sanity runs: every row as CSV, and the closing summaries (mean ±
standard error per method and layer; Spearman along the randomisation cascade).
"""

from __future__ import annotations

from typing import Any

from featviz.render.text import _columns


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

    from featviz.judge.metrics import BASELINES, LOWER_IS_BETTER, METRICS

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
