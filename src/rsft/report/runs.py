"""``rsft report RUN_DIR``: one self-contained HTML page about a run of RSFT rounds, and a table.

The page shows, across rounds, the eval metric with its CI (the starting policy as ``base``, the
random-selection control arm beside RSFT), the KL from the base policy and the kept-set size; per
round, the reward distribution of all vs kept completions, their lengths, the training loss, the
promotion decision and the warnings; and the run's config. Plots are inline base64 PNGs, so the
page needs nothing but itself. A piece a run does not have yet (no baseline, no control arm, a
round still running) shows as "—".
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rsft import artifacts, matrix
from rsft.errors import RsftError
from rsft.report.tables import DASH as DASH
from rsft.report.tables import finite, format_kl, format_metric, sweep_table, sweep_table_note

COLUMNS = ["round", "kept", "reward all/kept", "eval (CI)", "control eval", "KL", "promoted"]
_ROUND = re.compile(r"round-(\d+)")


# --- reading the run folder ----------------------------------------------------------------------


@dataclass
class RoundData:
    """What one round folder holds; a piece it lacks is None or empty."""

    name: str
    index: int
    eval: dict[str, Any] | None = None
    control: dict[str, Any] | None = None
    """The control arm's ``{"metric", "kl", "kept"}``, when it ran."""
    shape: tuple[int, int] | None = None
    nan_rewards: int = 0
    unsampled: int = 0
    """Cells adaptive N did not sample."""
    rewards_all: np.ndarray = field(default_factory=lambda: np.empty(0))
    rewards_kept: np.ndarray = field(default_factory=lambda: np.empty(0))
    lengths_all: np.ndarray = field(default_factory=lambda: np.empty(0))
    lengths_kept: np.ndarray = field(default_factory=lambda: np.empty(0))
    kept: int | None = None
    loss: list[tuple[float, float]] = field(default_factory=list)
    control_loss: list[tuple[float, float]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    """Files that were there but could not be read."""


@dataclass
class RunData:
    run_dir: Path
    config_text: str | None
    baseline: dict[str, Any] | None
    rounds: list[RoundData]
    rounds_json: dict[str, Any] | None
    problems: list[str]


def load_run(run_dir: Path) -> RunData:
    """Read everything the report shows from a run folder.

    Raises:
        RsftError: ``run_dir`` is not a run folder (no config.yaml, baseline/ or round-XXX/).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RsftError(f"{run_dir}: no such folder (give a run folder, e.g. runs/x)")
    round_dirs = sorted(
        (int(m.group(1)), p) for p in run_dir.iterdir() if p.is_dir() and (m := _ROUND.fullmatch(p.name))
    )
    config = run_dir / artifacts.CONFIG
    if not round_dirs and not config.exists() and not (run_dir / artifacts.BASELINE).is_dir():
        if _ROUND.fullmatch(run_dir.name) or (run_dir / artifacts.PROMPTS).exists():
            raise RsftError(f"{run_dir} is a round folder; give its run folder ({run_dir.parent})")
        raise RsftError(f"{run_dir}: not a run folder "
                        f"(no {artifacts.CONFIG}, {artifacts.BASELINE}/ or round-XXX/)")
    problems: list[str] = []
    config_text = None
    if config.exists():
        try:
            config_text = config.read_text(encoding="utf-8", errors="replace")
        except OSError as e:
            problems.append(f"{config}: cannot read: {e.strerror or e}")
    return RunData(
        run_dir=run_dir,
        config_text=config_text,
        baseline=_read_json(run_dir / artifacts.BASELINE / artifacts.EVAL, problems),
        rounds=[load_round(p, k) for k, p in round_dirs],
        rounds_json=_read_json(run_dir / artifacts.ROUNDS, problems),
        problems=problems,
    )


def load_round(path: Path, index: int) -> RoundData:
    """Read one round folder; unreadable files are noted in ``problems``, never raised."""
    rd = RoundData(name=path.name, index=index)
    rd.eval = _read_json(path / artifacts.EVAL, rd.problems)
    control = (rd.eval or {}).get("control")
    control_eval = path / artifacts.CONTROL / artifacts.EVAL
    rd.control = control if isinstance(control, dict) else _read_json(control_eval, rd.problems)
    rd.loss = _read_loss(path / artifacts.TRAIN_LOG, rd.problems)
    rd.control_loss = _read_loss(path / artifacts.CONTROL / artifacts.TRAIN_LOG, rd.problems)
    try:
        _read_tables(path, rd)
    except RsftError as e:
        rd.problems.append(str(e))
    if rd.kept is None and finite((rd.eval or {}).get("kept")) is not None:
        rd.kept = int((rd.eval or {})["kept"])
    return rd


def _read_tables(path: Path, rd: RoundData) -> None:
    """Fill the reward, length and kept-set fields from the round's Parquet files."""
    if not (path / artifacts.PROMPTS).exists():
        return
    prompts = matrix.read_prompts(path / artifacts.PROMPTS)
    ids = [p.prompt_id for p in prompts]
    R = tokens = None
    if (path / artifacts.REWARDS).exists():
        R, _ = matrix.read_rewards(path / artifacts.REWARDS, ids)
        rd.shape = (int(R.shape[0]), int(R.shape[1]))
        comps = path / artifacts.COMPLETIONS
        skipped = matrix.unsampled_mask(comps, *rd.shape) if comps.exists() else None  # adaptive N: NaN, not failed
        rd.unsampled = int(skipped.sum()) if skipped is not None else 0
        rd.nan_rewards = int(np.count_nonzero(np.isnan(R))) - rd.unsampled
        rd.rewards_all = R[np.isfinite(R)]
    if (path / artifacts.COMPLETIONS).exists():
        tokens = matrix.read_completions(path / artifacts.COMPLETIONS, prompts).n_tokens
        rd.shape = rd.shape or (int(tokens.shape[0]), int(tokens.shape[1]))
        rd.lengths_all = tokens[np.isfinite(tokens)]
    if rd.shape is None or not (path / artifacts.SELECTION).exists():
        return
    table = artifacts.read_table(path / artifacts.SELECTION, "select")
    row_of = {pid: i for i, pid in enumerate(ids)}
    keep = np.zeros(rd.shape, dtype=bool)
    for row in table.select(["prompt_id", "sample_idx", "role"]).to_pylist():
        if row["role"] != "keep":
            continue
        i, j = row_of.get(row["prompt_id"]), row["sample_idx"]
        if i is None or j is None or not 0 <= j < rd.shape[1]:
            raise RsftError(f"{path / artifacts.SELECTION}: a kept row ({row['prompt_id']}, {j}) is not in "
                            f"the round's {rd.shape[0]}x{rd.shape[1]} matrix")
        keep[i, j] = True
    rd.kept = int(np.count_nonzero(keep))
    if R is not None:
        rd.rewards_kept = R[keep & np.isfinite(R)]
    if tokens is not None:
        rd.lengths_kept = tokens[keep & np.isfinite(tokens)]


def _read_json(path: Path, problems: list[str]) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        problems.append(f"{path}: cannot read: {e.strerror or e}")
        return None
    except json.JSONDecodeError as e:
        problems.append(f"{path}:{e.lineno}: not valid JSON: {e.msg}")
        return None
    if not isinstance(data, dict):
        problems.append(f"{path}: expected a JSON object")
        return None
    return data


def _read_loss(path: Path, problems: list[str]) -> list[tuple[float, float]]:
    """(step, loss) pairs of a train log; lines without both are skipped."""
    if not path.exists():
        return []
    out = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        problems.append(f"{path}: cannot read: {e.strerror or e}")
        return []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            problems.append(f"{path}:{number}: not valid JSON: {e.msg}")
            continue
        if not isinstance(record, dict):
            continue
        step, loss = finite(record.get("step")), finite(record.get("loss"))
        if step is not None and loss is not None:
            out.append((step, loss))
    return out


# --- the summary table ---------------------------------------------------------------------------


def _mean(values: np.ndarray) -> float | None:
    return float(np.mean(values)) if values.size else None


def _promoted(rd: RoundData, run: RunData) -> bool | None:
    value = (rd.eval or {}).get("promoted")
    if isinstance(value, bool):
        return value
    for entry in (run.rounds_json or {}).get("rounds") or []:
        if isinstance(entry, dict) and entry.get("round") == rd.index and isinstance(entry.get("promoted"), bool):
            return entry["promoted"]
    return None


def reward_means(rd: RoundData) -> tuple[float | None, float | None]:
    """Mean reward of all and of kept completions: from the Parquet files, else from eval.json."""
    ev = rd.eval or {}
    every = _mean(rd.rewards_all) if rd.rewards_all.size else finite(ev.get("reward_mean_all"))
    kept = _mean(rd.rewards_kept) if rd.rewards_kept.size else finite(ev.get("reward_mean_kept"))
    return every, kept


def summary_rows(run: RunData) -> list[list[str]]:
    """One row per COLUMNS: the baseline (when evaluated), then each round."""
    rows = []
    if run.baseline is not None:
        rows.append(["base", DASH, DASH, format_metric(run.baseline.get("metric")), DASH,
                     format_kl(run.baseline.get("kl")), DASH])
    for rd in run.rounds:
        every, kept = reward_means(rd)
        rewards = DASH if every is None and kept is None else "/".join(
            DASH if x is None else f"{x:.3f}" for x in (every, kept))
        promoted = _promoted(rd, run)
        rows.append([
            str(rd.index),
            DASH if rd.kept is None else str(rd.kept),
            rewards,
            format_metric((rd.eval or {}).get("metric")),
            format_metric((rd.control or {}).get("metric")),
            format_kl((rd.eval or {}).get("kl")),
            DASH if promoted is None else ("yes" if promoted else "no"),
        ])
    return rows


def format_table(run: RunData) -> str:
    table = [COLUMNS] + summary_rows(run)
    widths = [max(len(row[c]) for row in table) for c in range(len(COLUMNS))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
                     for row in table)


# --- plots ---------------------------------------------------------------------------------------


def _figure(width: float = 6.0, height: float = 3.4) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # Fixed margins: a layout engine would double the drawing time of these small plots.
    fig = Figure(figsize=(width, height))
    fig.subplots_adjust(left=0.13, right=0.97, bottom=0.16, top=0.89)
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Any) -> str:
    """The figure as a base64 PNG data URI."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _errorbar_series(points: list[tuple[float, float, float, float]], ax: Any, **style: Any) -> None:
    """Plot (x, y, low, high) points with asymmetric error bars (none where the bound is missing)."""
    if not points:
        return
    xs, ys, lows, highs = (np.array(c, dtype=float) for c in zip(*points, strict=True))
    err = np.vstack([np.maximum(ys - lows, 0), np.maximum(highs - ys, 0)])
    ax.errorbar(xs, ys, yerr=err, capsize=4, **style)


def _metric_point(x: float, metric: Any) -> tuple[float, float, float, float] | None:
    if not isinstance(metric, dict) or (y := finite(metric.get("value"))) is None:
        return None
    low, high = finite(metric.get("ci_low")), finite(metric.get("ci_high"))
    return x, y, y if low is None else low, y if high is None else high


def _kl_point(x: float, kl: Any) -> tuple[float, float, float, float] | None:
    if not isinstance(kl, dict) or (y := finite(kl.get("mean"))) is None:
        return None
    se = finite(kl.get("stderr")) or 0.0
    return x, y, y - se, y + se


def plot_across_rounds(run: RunData, key: str) -> str | None:
    """The eval metric (``key="metric"``) or the KL (``key="kl"``) per round, RSFT beside control."""
    point = _metric_point if key == "metric" else _kl_point
    rsft = [p for rd in run.rounds if (p := point(rd.index, (rd.eval or {}).get(key)))]
    control = [p for rd in run.rounds if (p := point(rd.index + 0.12, (rd.control or {}).get(key)))]
    base = point(-1, run.baseline.get(key)) if run.baseline else None
    if base:
        rsft.insert(0, base)
    if not rsft and not control:
        return None
    fig = _figure()
    ax = fig.subplots()
    _errorbar_series(rsft, ax, fmt="o-", label="RSFT")
    _errorbar_series(control, ax, fmt="s--", label="control (random selection)")
    promoted = [p[:2] for rd in run.rounds if _promoted(rd, run) and (p := point(rd.index, (rd.eval or {}).get(key)))]
    if promoted:
        ax.scatter(*zip(*promoted, strict=True), marker="*", s=160, color="gold", edgecolor="black",
                   zorder=3, label="promoted")
    ticks = ([-1] if base else []) + [rd.index for rd in run.rounds]
    ax.set_xticks(ticks, labels=["base" if t == -1 else str(t) for t in ticks])
    ax.set_xlabel("round")
    if key == "metric":
        ax.set_ylabel(_metric_name(run))
        ax.set_title(f"held-out {_metric_name(run)} (error bars: CI)")
    else:
        ax.set_ylabel("KL, nats")
        ax.set_title("KL from the base policy (± stderr)")
    ax.grid(True, alpha=0.3)
    ax.legend()
    return _png(fig)


def _metric_name(run: RunData) -> str:
    for ev in [run.baseline] + [rd.eval for rd in run.rounds]:
        name = ((ev or {}).get("metric") or {}).get("name")
        if isinstance(name, str) and name:
            return name
    return "metric"


def plot_kept(run: RunData) -> str | None:
    """Bars of the kept-set size per round (and the control arm's beside them, when it ran)."""
    rsft = [(rd.index, rd.kept) for rd in run.rounds if rd.kept is not None]
    control = [(rd.index, int(k)) for rd in run.rounds if (k := finite((rd.control or {}).get("kept"))) is not None]
    if not rsft and not control:
        return None
    fig = _figure(height=3.0)
    ax = fig.subplots()
    shift = 0.2 if control else 0.0
    for series, offset, label in ((rsft, -shift, "RSFT"), (control, shift, "control")):
        if series:
            xs, heights = zip(*series, strict=True)
            ax.bar(np.array(xs) + offset, heights, width=0.4, label=label)
    ax.set_xticks([rd.index for rd in run.rounds], labels=[str(rd.index) for rd in run.rounds])
    ax.set_xlabel("round")
    ax.set_ylabel("completions kept")
    ax.set_title("kept-set size")
    ax.legend()
    return _png(fig)


def _reward_bins(values: np.ndarray) -> np.ndarray:
    """Histogram edges: one bin centred on each level when rewards take few values (0/1 checkers),
    else 30 even bins."""
    levels = np.unique(values)
    if len(levels) > 20:
        return np.histogram_bin_edges(values, bins=30)
    if len(levels) == 1:
        return np.array([levels[0] - 0.5, levels[0] + 0.5])
    half = float(np.min(np.diff(levels))) / 2
    return np.concatenate([[levels[0] - half], (levels[1:] + levels[:-1]) / 2, [levels[-1] + half]])


def plot_rewards(rd: RoundData) -> str | None:
    """Histogram of the rewards of all completions, with the kept ones over it on the same bins."""
    if not rd.rewards_all.size:
        return None
    bins = _reward_bins(rd.rewards_all)
    fig = _figure()
    ax = fig.subplots()
    ax.hist(rd.rewards_all, bins=bins, alpha=0.5, label=f"all ({rd.rewards_all.size})")
    if rd.rewards_kept.size:
        ax.hist(rd.rewards_kept, bins=bins, alpha=0.7, label=f"kept ({rd.rewards_kept.size})")
    ax.set_xlabel("reward")
    ax.set_ylabel("completions")
    ax.set_title(f"{rd.name}: rewards of all vs kept completions")
    ax.legend()
    return _png(fig)


def plot_lengths(rd: RoundData) -> str | None:
    """Box plots of completion length (tokens) of all vs kept completions."""
    groups = [(name, v) for name, v in (("all", rd.lengths_all), ("kept", rd.lengths_kept)) if v.size]
    if not groups:
        return None
    fig = _figure(width=4.5)
    ax = fig.subplots()
    ax.boxplot([v for _, v in groups])
    ax.set_xticks(range(1, len(groups) + 1), labels=[f"{name} ({v.size})" for name, v in groups])
    ax.set_ylabel("tokens")
    ax.set_title(f"{rd.name}: completion length")
    return _png(fig)


def plot_loss(rd: RoundData) -> str | None:
    """Training loss against step, for RSFT and the control arm."""
    if not rd.loss and not rd.control_loss:
        return None
    fig = _figure()
    ax = fig.subplots()
    for series, style, label in ((rd.loss, "-", "RSFT"), (rd.control_loss, "--", "control")):
        if series:
            ax.plot(*zip(*series, strict=True), style, marker=".", label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(f"{rd.name}: training loss")
    ax.grid(True, alpha=0.3)
    ax.legend()
    return _png(fig)


def _has_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


# --- the page ------------------------------------------------------------------------------------

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 70em; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.7em; text-align: right; }
th { background: #f2f2f2; }
figure { display: inline-block; margin: 0.5em; vertical-align: top; }
pre { background: #f6f6f6; padding: 1em; overflow-x: auto; }
.missing { color: #888; }
.warn { color: #a05a00; }
section { border-top: 1px solid #ddd; margin-top: 2em; }
"""


def _e(text: Any) -> str:
    return html.escape(str(text))


def _plot(plot_id: str, caption: str, uri: str | None, why_missing: str) -> str:
    if uri is None:
        return f'<p class="missing">{_e(caption)}: {DASH} ({_e(why_missing)})</p>'
    return (f'<figure><img id="{plot_id}" alt="{_e(plot_id)}: {_e(caption)}" src="{uri}">'
            f"<figcaption>{_e(caption)}</figcaption></figure>")


def _html_table(header: list[str] | None, rows: list[list[str]], table_id: str) -> str:
    head = "" if header is None else "<tr>" + "".join(f"<th>{_e(h)}</th>" for h in header) + "</tr>"
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table id="{table_id}">{head}{body}</table>'


def _items(values: list[str], css: str) -> str:
    return "<ul>" + "".join(f'<li class="{css}">{_e(v)}</li>' for v in values) + "</ul>"


def _round_section(rd: RoundData, run: RunData, plots: bool) -> str:
    ev = rd.eval or {}
    promoted = _promoted(rd, run)
    status = DASH + " unfinished (no eval.json yet)" if rd.eval is None else (
        "promoted" if promoted else "not promoted" if promoted is False else DASH)
    every, kept = reward_means(rd)
    facts = [
        ["checkpoint", ev.get("checkpoint", DASH)],
        ["matrix (prompts × samples)", DASH if rd.shape is None else f"{rd.shape[0]} × {rd.shape[1]}"],
        ["failed scorings (NaN rewards)", rd.nan_rewards if rd.shape else DASH],
        *([["unsampled cells (adaptive N)", rd.unsampled]] if rd.unsampled else []),
        ["kept", DASH if rd.kept is None else rd.kept],
        ["mean reward all / kept", " / ".join(DASH if x is None else f"{x:.3f}" for x in (every, kept))],
        [f"eval {_metric_name(run)} (CI)", format_metric(ev.get("metric"))],
        ["control eval (CI)", format_metric((rd.control or {}).get("metric"))],
        ["KL (± stderr)", format_kl(ev.get("kl"))],
        ["control KL", format_kl((rd.control or {}).get("kl"))],
        ["best before / margin", " / ".join(DASH if finite(ev.get(k)) is None else f"{finite(ev.get(k)):.3f}"
                                            for k in ("best_before", "margin"))],
        ["final training loss", DASH if not rd.loss else f"{rd.loss[-1][1]:.4f}"],
        ["decision", status],
        ["reason", ev.get("reason") or DASH],
    ]
    parts = [f'<section id="{_e(rd.name)}"><h2>{_e(rd.name)}: {_e(status)}</h2>',
             _html_table(None, [[str(a), str(b)] for a, b in facts], f"facts-{_e(rd.name)}")]
    warnings = [str(w) for w in ev.get("warnings") or []]
    parts.append("<h3>Warnings</h3>" + (_items(warnings, "warn") if warnings else f"<p>{DASH}</p>"))
    if rd.problems:
        parts.append("<h3>Unreadable files</h3>" + _items(rd.problems, "warn"))
    if plots:
        parts += [
            _plot(f"reward-dist-{rd.name}", "reward distribution, all vs kept", plot_rewards(rd),
                  "no rewards.parquet yet"),
            _plot(f"lengths-{rd.name}", "completion length, all vs kept", plot_lengths(rd),
                  "no completions.parquet yet"),
            _plot(f"loss-{rd.name}", "training loss, RSFT and control", plot_loss(rd), "no train_log.jsonl yet"),
        ]
    parts.append("</section>")
    return "\n".join(parts)


def _sweep_section(run: RunData) -> str:
    """The ``rsft sweep`` results table, when the run folder has a ``sweep.json``."""
    summary = _read_json(run.run_dir / artifacts.SWEEP_JSON, run.problems)
    if summary is None:
        return ""
    header, rows = sweep_table(summary)
    return (f'<section id="sweep"><h2>Sweep</h2>{_html_table(header, rows, "sweep-table")}'
            f"<p>{_e(sweep_table_note(summary))}</p></section>")


def render_html(run: RunData) -> str:
    """The whole page as one string: inline CSS and images, no external resource."""
    plots = _has_matplotlib()
    title = f"rsft report: {run.run_dir}"
    current = (run.rounds_json or {}).get("current")
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">', f"<title>{_e(title)}</title>",
        f"<style>{_CSS}</style></head><body>", f"<h1>{_e(title)}</h1>",
        f"<p>current policy: <code>{_e(current if current else DASH)}</code>; "
        f"{len(run.rounds)} round(s); metric: {_e(_metric_name(run))}</p>",
        _html_table(COLUMNS, summary_rows(run), "summary"),
        _sweep_section(run),
    ]
    if run.problems:
        parts.append("<h3>Unreadable files</h3>" + _items(run.problems, "warn"))
    if plots:
        parts += [
            _plot("eval-metric", f"held-out {_metric_name(run)} per round (CI), RSFT and control",
                  plot_across_rounds(run, "metric"), "no eval.json yet"),
            _plot("kl", "KL from the base policy per round", plot_across_rounds(run, "kl"), "no KL measured"),
            _plot("kept", "kept-set size per round", plot_kept(run), "no selection yet"),
        ]
    else:
        parts.append('<p class="missing">plots need matplotlib (pip install matplotlib)</p>')
    parts += [_round_section(rd, run, plots) for rd in run.rounds]
    config = run.config_text if run.config_text is not None else DASH + f" (no {artifacts.CONFIG})"
    parts += ['<section id="config"><h2>Config</h2>', f'<pre id="config-yaml">{_e(config)}</pre></section>',
              "</body></html>"]
    return "\n".join(parts) + "\n"


def write_report(run_dir: Path, output: Path | None = None) -> tuple[RunData, Path]:
    """Read ``run_dir`` and write its page to ``output`` (default ``RUN_DIR/report.html``), atomically."""
    run = load_run(run_dir)
    output = output if output is not None else run.run_dir / "report.html"
    artifacts.write_text(output, render_html(run))
    return run, output
