"""The cells of the results tables, shared by ``rsft report`` (``rsft.report.runs``) and ``rsft sweep``
(``rsft.rounds.sweep``): numbers as they are read back from JSON, a metric with its CI, KL with its stderr,
and the sweep's results table (``RUN/sweep.md``, the terminal and the report's sweep section).
"""

from __future__ import annotations

import math
from typing import Any

DASH = "—"
"""What a table shows where a value is missing."""

SWEEP_COLUMNS = ["", "temperature", "n", "threshold", "epochs", "kept", "reward kept", "pass rate",
                 "{metric} [95% CI]", "KL ± stderr", "train loss first → last", "wall s"]
"""The sweep table's header (``{metric}``: the eval metric's name)."""


def finite(x: Any) -> float | None:
    """A finite float, or None for anything else (missing, null, NaN, text)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    return float(x) if math.isfinite(x) else None


def format_metric(metric: Any) -> str:
    """``0.310 [0.220, 0.410]``, or the value alone without a CI, or "—"."""
    if not isinstance(metric, dict) or finite(metric.get("value")) is None:
        return DASH
    out = f"{finite(metric['value']):.3f}"
    low, high = finite(metric.get("ci_low")), finite(metric.get("ci_high"))
    if low is not None and high is not None:
        out += f" [{low:.3f}, {high:.3f}]"
    return out


def format_kl(kl: Any) -> str:
    """``0.120 ± 0.030``, or the mean alone without a stderr, or "—"."""
    if not isinstance(kl, dict) or finite(kl.get("mean")) is None:
        return DASH
    out = f"{finite(kl['mean']):.3f}"
    stderr = finite(kl.get("stderr"))
    return out + (f" ± {stderr:.3f}" if stderr is not None else "")


def label(value: float | None) -> str:
    """How a grid value is written in folder names and the table: ``0.7``, ``1``, ``none``."""
    return "none" if value is None else f"{value:g}"


def sweep_table(summary: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the results table: the baseline, then every cell in grid order."""
    cells = [c for c in summary.get("cells") or [] if isinstance(c, dict)]
    name = next((m["name"] for m in [summary.get("baseline", {}).get("metric")] + [c.get("metric") for c in cells]
                 if isinstance(m, dict) and m.get("name")), "metric")
    header = [h.format(metric=name) for h in SWEEP_COLUMNS]
    dash = DASH
    base = summary.get("baseline") or {}
    rows = [["base", dash, dash, dash, dash, dash, dash, dash, format_metric(base.get("metric")),
             format_kl(base.get("kl")), dash, dash]]

    def num(x: Any, fmt: str = ".3f") -> str:
        v = finite(x)
        return dash if v is None else format(v, fmt)

    for c in cells:
        first, last = finite(c.get("train_loss_first")), finite(c.get("train_loss_last"))
        loss = dash if first is None or last is None else f"{first:.3f} → {last:.3f}"
        wall = "shared" if c.get("reused_from") else num(c.get("wall_s"), ".1f")
        rows.append(["*" if c.get("id") == summary.get("best") else "", num(c.get("temperature"), "g"),
                     str(c.get("n", dash)), label(finite(c.get("threshold"))), num(c.get("epochs"), "g"),
                     str(c.get("kept", dash)), num(c.get("mean_reward_kept")), num(c.get("pass_rate")),
                     format_metric(c.get("metric")), format_kl(c.get("kl")), loss, wall])
    return header, rows


def sweep_table_note(summary: dict[str, Any]) -> str:
    """What the table's columns mean, under it."""
    return (f"* best held-out metric. Each temperature was generated once at N_max={summary.get('n_max')} and "
            f"scored once; a cell selects on its first n samples. Pass rate: share of those samples with reward "
            f">= {summary.get('pass_threshold')}. CI: the eval metric's 95% CI over "
            f"{summary.get('eval_prompts')} held-out prompts. Wall s: the cell's training and eval "
            "(shared: another cell trained the same kept set).")


def sweep_markdown(summary: dict[str, Any]) -> str:
    """The sweep table as Markdown, with its note (``RUN/sweep.md``)."""
    header, rows = sweep_table(summary)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n\n" + sweep_table_note(summary) + "\n"
