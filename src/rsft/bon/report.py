"""``rsft stats RUN_OR_ROUND_DIR``: the Best-of-N curve of a scored round, to pick N before paying.

For each n (powers of two up to the round's N, then N) it prints the expected best reward of n
samples, pass@n and the KL from the base policy, all estimated from the round's M x N rewards
(``rsft.bon.stats.bon_curve``). ``--json`` prints the same as JSON; ``--plot`` draws it to a PNG.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from rsft import artifacts, matrix
from rsft.bon import stats as bon_stats
from rsft.errors import RsftError

_ROUND = re.compile(r"round-(\d+)")


def find_round(path: Path, round_index: int | None = None) -> Path:
    """The round folder to report: ``path`` itself when it holds rewards, else a round of the run
    folder ``path`` (``round-K`` with ``round_index``, or the highest-numbered scored one).

    Raises:
        RsftError: no such folder, or no scored round in it.
    """
    if not path.is_dir():
        raise RsftError(f"{path}: no such folder (give a run folder or a round folder)")
    if (path / artifacts.REWARDS).exists():
        if round_index is not None:
            raise RsftError(f"{path} is a round folder; --round applies to a run folder")
        return path
    rounds = sorted(
        (int(m.group(1)), p) for p in path.iterdir() if p.is_dir() and (m := _ROUND.fullmatch(p.name))
    )
    if round_index is not None:
        for k, p in rounds:
            if k == round_index:
                if not (p / artifacts.REWARDS).exists():
                    raise RsftError(f"{p / artifacts.REWARDS}: missing (run `rsft score` first)")
                return p
        raise RsftError(f"{path}: no round-{round_index:03d} folder")
    scored = [p for _, p in rounds if (p / artifacts.REWARDS).exists()]
    if not scored:
        what = "no round-XXX folder" if not rounds else "no round with rewards.parquet (run `rsft score` first)"
        raise RsftError(f"{path}: {what}")
    return scored[-1]


def report(round_dir: Path, threshold: float = 1.0) -> dict[str, Any]:
    """The BoN curve of one round, with its shape and NaN count; JSON-ready."""
    prompts = matrix.read_prompts(round_dir / artifacts.PROMPTS)
    R, _ = matrix.read_rewards(round_dir / artifacts.REWARDS, [p.prompt_id for p in prompts])
    M, N = R.shape
    out: dict[str, Any] = {"round_dir": str(round_dir), "M": int(M), "N": int(N)}
    unsampled = None
    if (round_dir / artifacts.COMPLETIONS).exists():
        unsampled = matrix.unsampled_mask(round_dir / artifacts.COMPLETIONS, M, N)
    if unsampled is not None:
        # adaptive N: every prompt sampled its first columns; the curve uses only those, where the
        # estimates stay unbiased (later columns exist only for the prompts that kept sampling)
        columns = int((~unsampled).sum(axis=1).min())
        out.update(unsampled=int(unsampled.sum()), curve_columns=columns)
        R = R[:, :columns]
    out["nan_count"] = int(np.count_nonzero(np.isnan(R)))
    out["threshold"] = threshold
    out["curve"] = bon_stats.bon_curve(R, threshold=threshold)
    return out


def format_report(rep: dict[str, Any]) -> str:
    lines = [f"{rep['round_dir']}: {rep['M']} prompts x {rep['N']} samples, {rep['nan_count']} NaN"]
    lines.append(bon_stats.format_bon_curve(rep["curve"], rep["threshold"]))
    if rep.get("unsampled"):
        lines.append(f"note: adaptive N left {rep['unsampled']} cells unsampled; the curve uses the first "
                     f"{rep['curve_columns']} samples of each prompt, which every prompt drew")
    if rep["nan_count"]:
        lines.append(f"note: {rep['nan_count']} NaN rewards (failed scorings) count as the worst sample "
                     "(the lowest finite reward) and never pass")
    lines.append("KL bound: log n - (n-1)/n nats, exact for rewards without ties; KL est.: exact KL with "
                 "each prompt's N samples as its distribution")
    return "\n".join(lines)


def plot(rep: dict[str, Any], path: Path) -> None:
    """Draw E[max reward], pass@n and KL against n into a PNG, written atomically."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise RsftError("--plot needs matplotlib (pip install matplotlib)") from None
    curve = rep["curve"]
    ns = [r["n"] for r in curve]

    def column(key: str) -> list[float]:
        return [float("nan") if r[key] is None else r[key] for r in curve]

    fig = Figure(figsize=(12, 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    panels = [
        ("E[max reward]", [("expected_max_reward", "E[max reward of n]")]),
        (f"pass@n (reward >= {rep['threshold']:g})", [("pass_at_n", "pass@n")]),
        ("KL(BoN || base), nats", [("kl_bound", "bound log n - (n-1)/n"), ("kl_estimate", "estimate")]),
    ]
    for ax, (title, series) in zip(fig.subplots(1, 3), panels, strict=True):
        for key, label in series:
            ax.plot(ns, column(key), marker="o", label=label)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("n (samples per prompt)")
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        if len(series) > 1:
            ax.legend()
    fig.suptitle(f"Best-of-n: {rep['round_dir']} ({rep['M']} prompts x {rep['N']} samples)")
    with artifacts.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
