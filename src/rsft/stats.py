"""Statistics of the M x N reward matrix R, printed after scoring and stored in the manifest.

Sections:
- reward summary (``reward_stats``, ``format_stats``): what the scores look like and whether
  selection has anything to work with;
- Best-of-N statistics (KL bound and expected best-of-n) belong in a section of their own below.

Every value returned is a plain Python int, float, str, list or None (never NaN or inf), so it
goes into JSON as is.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from rsft.errors import RsftError
from rsft.select import as_reward_matrix

_BLOCK_ELEMS = 1 << 18

MIN_SAMPLES_PER_PROMPT = 10
"""Below this N, ``reward_stats`` warns that per-prompt estimates are noisy."""


def _float(x: Any) -> float | None:
    """A plain float, or None for a missing or non-finite value."""
    if x is None:
        return None
    out = float(x)
    return out if np.isfinite(out) else None


def _mean(x: np.ndarray) -> float | None:
    return _float(np.mean(x, dtype=np.float64)) if x.size else None


# --- reward summary ----------------------------------------------------------------------------


def _distribution(R: np.ndarray, finite: np.ndarray) -> dict[str, Any]:
    """Mean, std (population), min, max over finite rewards, and per-prompt best vs mean.

    Works in blocks of rows, so the extra memory stays small next to R.
    """
    n = int(np.count_nonzero(finite))
    has_any = finite.any(axis=1)
    best = np.max(R, axis=1, where=finite, initial=-np.inf)[has_any]
    row_sum = np.sum(R, axis=1, where=finite, dtype=np.float64)
    row_mean = row_sum[has_any] / np.count_nonzero(finite, axis=1)[has_any]
    mean = std = low = high = None
    if n:
        mean = float(row_sum.sum() / n)
        squares = 0.0
        step = max(1, _BLOCK_ELEMS // R.shape[1])
        for start in range(0, R.shape[0], step):
            rows = slice(start, start + step)
            d = R[rows][finite[rows]].astype(np.float64) - mean
            squares += float(np.dot(d, d))
        std = float(np.sqrt(squares / n))
        low = np.min(R, where=finite, initial=np.inf)
        high = np.max(R, where=finite, initial=-np.inf)
    return {
        "n_finite": n,
        "mean": _float(mean),
        "std": _float(std),
        "min": _float(low),
        "max": _float(high),
        "best_of_n_mean": _mean(best),
        "per_prompt_mean": _mean(row_mean),
    }


def _pass_rates(R: np.ndarray, pass_threshold: float) -> dict[str, Any]:
    """Pass rates at ``pass_threshold``; a NaN reward never passes."""
    passes = R >= pass_threshold
    any_pass = passes.any(axis=1)
    return {
        "pass_threshold": pass_threshold,
        "pass_at_1": _mean(passes),
        "pass_at_n": _mean(any_pass),
        "frac_no_pass": _mean(~any_pass),
        "frac_all_pass": _mean(passes.all(axis=1)),
    }


def _length_reward_corr(R: np.ndarray, finite: np.ndarray, n_tokens: npt.ArrayLike | None) -> float | None:
    """Pearson correlation of reward with completion length over finite pairs with known lengths.

    None when there are no lengths, fewer than two pairs, or either side is constant.
    """
    if n_tokens is None:
        return None
    try:
        lengths = np.asarray(n_tokens, dtype=np.float64)
    except (TypeError, ValueError):
        raise RsftError("n_tokens must be an M x N array of token counts (None for unknown)") from None
    if lengths.shape != R.shape:
        raise RsftError(f"n_tokens shape {lengths.shape} does not match reward matrix shape {R.shape}")
    both = finite & np.isfinite(lengths)
    x, y = R[both].astype(np.float64), lengths[both]
    if x.size < 2 or x.max() == x.min() or y.max() == y.min():
        return None
    x = x - x.mean()
    y = y - y.mean()
    r = float(np.dot(x, y) / np.sqrt(np.dot(x, x) * np.dot(y, y)))
    return _float(min(1.0, max(-1.0, r)))


def _warnings(stats: dict[str, Any], n_inf: int) -> list[str]:
    M, N, nans = stats["M"], stats["N"], stats["nan_count"]
    out = []
    if M and N < MIN_SAMPLES_PER_PROMPT:
        out.append(
            f"N={N} samples per prompt is below {MIN_SAMPLES_PER_PROMPT}, the usual minimum for "
            "rejection sampling: per-prompt best and pass rates are noisy"
        )
    if nans:
        out.append(
            f"{nans} of {M * N} rewards are NaN (failed scoring): counted as -inf in selection, "
            "left out of means"
        )
    if n_inf:
        out.append(f"{n_inf} rewards are +inf or -inf: left out of mean, std, min and max")
    if M and stats["frac_no_pass"] == 1.0:
        out.append(
            f"no prompt has a completion with reward >= {stats['pass_threshold']:g}: "
            "threshold selection there keeps nothing"
        )
    return out


def reward_stats(
    R: npt.ArrayLike, n_tokens: npt.ArrayLike | None = None, pass_threshold: float = 0.5
) -> dict[str, Any]:
    """Summarise R for the log and the manifest.

    Args:
        R: M x N rewards; NaN marks a failed scoring.
        n_tokens: optional M x N completion lengths (NaN or None where unknown), for
            ``length_reward_corr``.
        pass_threshold: a reward >= this counts as a pass (0.5 suits 0/1 checkers).

    Returns:
        ``M``, ``N``, ``nan_count``, ``n_finite``; ``mean``, ``std`` (population), ``min``, ``max``
        over finite rewards; ``best_of_n_mean`` (mean over prompts of the best reward) and
        ``per_prompt_mean`` (mean over prompts of the mean reward), both over prompts with a
        finite reward; ``pass_threshold``, ``pass_at_1`` (fraction of all M*N rewards that
        pass), ``pass_at_n`` / ``frac_no_pass`` (fraction of prompts with some / no passing
        completion), ``frac_all_pass``; ``length_reward_corr``; ``warnings`` (list of str).
        A value that is undefined (e.g. no finite reward) is None.
    """
    R = as_reward_matrix(R)
    if R.dtype.kind != "f":
        R = R.astype(np.float64)
    t = pass_threshold
    if isinstance(t, bool) or not isinstance(t, (int, float, np.integer, np.floating)) or not np.isfinite(t):
        raise RsftError(f"pass_threshold must be a finite number, got {pass_threshold!r}")
    M, N = R.shape
    finite = np.isfinite(R)
    nans = int(np.count_nonzero(np.isnan(R)))
    stats: dict[str, Any] = {"M": int(M), "N": int(N), "nan_count": nans}
    stats.update(_distribution(R, finite))
    stats.update(_pass_rates(R, float(t)))
    stats["length_reward_corr"] = _length_reward_corr(R, finite, n_tokens)
    stats["warnings"] = _warnings(stats, M * N - stats["n_finite"] - nans)
    return stats


def format_stats(stats: dict[str, Any]) -> str:
    """A short human-readable block of ``reward_stats`` output."""

    def f(x: Any) -> str:
        return "n/a" if x is None else f"{x:.4g}"

    def pct(x: Any) -> str:
        return "n/a" if x is None else f"{100 * x:.1f}%"

    s = stats
    lines = [
        f"rewards: {s['M']} prompts x {s['N']} samples, {s['nan_count']} NaN",
        f"  mean {f(s['mean'])}  std {f(s['std'])}  min {f(s['min'])}  max {f(s['max'])}",
        f"  best-of-N mean {f(s['best_of_n_mean'])}  vs per-prompt mean {f(s['per_prompt_mean'])}",
        f"  pass (reward >= {s['pass_threshold']:g}): pass@1 {f(s['pass_at_1'])}, "
        f"prompts with none {pct(s['frac_no_pass'])}, with all {pct(s['frac_all_pass'])}",
    ]
    if s.get("length_reward_corr") is not None:
        lines.append(f"  length-reward correlation {s['length_reward_corr']:+.3f}")
    if s.get("padding_efficiency") is not None:
        lines.append(f"  reward-model padded-token efficiency {s['padding_efficiency']:.3f}")
    if s.get("failed_pairs"):
        lines.append(f"  failed pairs (scorer error, recorded as NaN): {s['failed_pairs']}")
    lines += [f"  warning: {w}" for w in s.get("warnings", [])]
    return "\n".join(lines)


# --- Best-of-N statistics ----------------------------------------------------------------------
