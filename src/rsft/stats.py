"""Statistics of the M x N reward matrix R, printed after scoring and stored in the manifest.

The reward summary (``reward_stats``, ``format_stats``): what the scores look like and whether
selection has anything to work with; ``wilson_interval`` for the small proportions reported; and
for comparing trained policies, ``mean_ci`` (a t-interval across seeds) and ``paired_test`` (two
policies on the same questions).
What Best-of-n buys for each n is ``rsft.bon.stats``.

Every value in the summary is a plain Python int, float, str, list or None (never NaN or inf), so
it goes into JSON as is.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from rsft.errors import RsftError
from rsft.select import as_reward_matrix

BLOCK_ELEMS = 1 << 18
"""Elements of R handled at once by the block-wise passes (``rsft.bon.stats`` too)."""

MIN_SAMPLES_PER_PROMPT = 10
"""Below this N, ``reward_stats`` warns that per-prompt estimates are noisy."""


def plain_float(x: Any) -> float | None:
    """A plain float, or None for a missing or non-finite value."""
    if x is None:
        return None
    out = float(x)
    return out if np.isfinite(out) else None


def _mean(x: np.ndarray) -> float | None:
    return plain_float(np.mean(x, dtype=np.float64)) if x.size else None


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
        step = max(1, BLOCK_ELEMS // R.shape[1])
        for start in range(0, R.shape[0], step):
            rows = slice(start, start + step)
            d = R[rows][finite[rows]].astype(np.float64) - mean
            squares += float(np.dot(d, d))
        std = float(np.sqrt(squares / n))
        low = np.min(R, where=finite, initial=np.inf)
        high = np.max(R, where=finite, initial=-np.inf)
    return {
        "n_finite": n,
        "mean": plain_float(mean),
        "std": plain_float(std),
        "min": plain_float(low),
        "max": plain_float(high),
        "best_of_n_mean": _mean(best),
        "per_prompt_mean": _mean(row_mean),
    }


def _pass_rates(R: np.ndarray, pass_threshold: float, unsampled: np.ndarray | None = None) -> dict[str, Any]:
    """Pass rates at ``pass_threshold``; a NaN reward never passes. ``unsampled`` cells (adaptive N)
    are left out: pass@1 is over the sampled cells, "all pass" over each row's sampled cells."""
    passes = R >= pass_threshold
    any_pass = passes.any(axis=1)
    if unsampled is None:
        pass_at_1, all_pass = _mean(passes), passes.all(axis=1)
    else:
        sampled = int(np.count_nonzero(~unsampled))
        pass_at_1 = plain_float(np.count_nonzero(passes) / sampled) if sampled else None
        all_pass = (passes | unsampled).all(axis=1) & (~unsampled).any(axis=1)
    return {
        "pass_threshold": pass_threshold,
        "pass_at_1": pass_at_1,
        "pass_at_n": _mean(any_pass),
        "frac_no_pass": _mean(~any_pass),
        "frac_all_pass": _mean(all_pass),
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
    return plain_float(min(1.0, max(-1.0, r)))


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
    if stats.get("unsampled"):
        out.append(
            f"{stats['unsampled']} of {M * N} cells were not sampled (adaptive N stopped their prompts early): "
            "never selected; pass@1 and means are over the sampled cells"
        )
    if n_inf:
        out.append(f"{n_inf} rewards are +inf or -inf: left out of mean, std, min and max")
    if stats["prompts_without_finite"]:
        out.append(
            f"{stats['prompts_without_finite']} of {M} prompts have no finite reward: "
            "selection takes nothing from them"
        )
    if M and stats["frac_no_pass"] == 1.0:
        out.append(
            f"no prompt has a completion with reward >= {stats['pass_threshold']:g}: "
            "threshold selection there keeps nothing"
        )
    return out


def reward_stats(
    R: npt.ArrayLike, n_tokens: npt.ArrayLike | None = None, pass_threshold: float = 0.5,
    unsampled: npt.ArrayLike | None = None,
) -> dict[str, Any]:
    """Summarise R for the log and the manifest.

    Args:
        R: M x N rewards; NaN marks a failed scoring.
        n_tokens: optional M x N completion lengths (NaN or None where unknown), for
            ``length_reward_corr``.
        pass_threshold: a reward >= this counts as a pass (0.5 suits 0/1 checkers).
        unsampled: optional M x N bool mask of cells adaptive N did not sample (their rewards are
            NaN): they are counted as ``unsampled``, not in ``nan_count``, and left out of pass@1.

    Returns:
        ``M``, ``N``, ``nan_count``, ``n_finite``, ``inf_count`` (+inf or -inf),
        ``prompts_without_finite`` (rows with no finite reward, which selection skips); ``mean``, ``std`` (population), ``min``, ``max``
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
    mask = _unsampled_mask(unsampled, R)
    skipped = int(np.count_nonzero(mask)) if mask is not None else 0
    stats: dict[str, Any] = {"M": int(M), "N": int(N), "nan_count": nans - skipped}
    if skipped:
        stats["unsampled"] = skipped
    stats.update(_distribution(R, finite))
    stats["inf_count"] = M * N - stats["n_finite"] - nans
    stats["prompts_without_finite"] = int(M - np.count_nonzero(finite.any(axis=1))) if N else int(M)
    stats.update(_pass_rates(R, float(t), mask))
    stats["length_reward_corr"] = _length_reward_corr(R, finite, n_tokens)
    stats["warnings"] = _warnings(stats, stats["inf_count"])
    return stats


def _unsampled_mask(unsampled: npt.ArrayLike | None, R: np.ndarray) -> np.ndarray | None:
    """The unsampled mask as a bool array of R's shape (its cells must be NaN in R); None for none."""
    if unsampled is None:
        return None
    mask = np.asarray(unsampled, dtype=bool)
    if mask.shape != R.shape:
        raise RsftError(f"unsampled mask shape {mask.shape} does not match reward matrix shape {R.shape}")
    if not np.isnan(R[mask]).all():
        raise RsftError("unsampled cells must have NaN rewards")
    return mask if mask.any() else None


def format_stats(stats: dict[str, Any]) -> str:
    """A short human-readable block of ``reward_stats`` output."""

    def f(x: Any) -> str:
        return "n/a" if x is None else f"{x:.4g}"

    def pct(x: Any) -> str:
        return "n/a" if x is None else f"{100 * x:.1f}%"

    s = stats
    lines = [
        f"rewards: {s['M']} prompts x {s['N']} samples, {s['nan_count']} NaN"
        + (f", {s['inf_count']} inf" if s.get("inf_count") else "")
        + (f", {s['unsampled']} unsampled (adaptive N)" if s.get("unsampled") else ""),
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


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (95% for z = 1.96); ``(nan, nan)`` when n = 0.

    Unlike the normal approximation it stays inside [0, 1] and is not degenerate at 0 or n successes,
    which matters for the small samples (tens of pairs, held-out prompts) this package reports on."""
    if n <= 0:
        return math.nan, math.nan
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}
"""Two-sided 95% quantiles of Student's t by degrees of freedom (1.96 beyond 10 is close enough: 2.23 at 10)."""


def mean_ci(values: Sequence[float]) -> dict[str, Any]:
    """Mean of the per-seed values and a 95% t-interval across seeds (none for one seed)."""
    x = np.asarray(values, dtype=float)
    mean = float(x.mean())
    if len(x) < 2:
        return {"mean": mean, "ci_low": None, "ci_high": None, "values": x.tolist()}
    half = T_975.get(len(x) - 1, 1.96) * float(x.std(ddof=1)) / math.sqrt(len(x))
    return {"mean": mean, "ci_low": mean - half, "ci_high": mean + half, "values": x.tolist()}


def paired_test(a: np.ndarray, b: np.ndarray, draws: int = 100_000, seed: int = 0) -> dict[str, Any]:
    """Arm ``a`` against arm ``b`` on the same questions: ``a`` and ``b`` are seeds x questions of 0/1.

    Each question's difference is averaged over the seeds (a seed's answers to one question are not
    independent of another seed's), and the two-sided p-value is a sign-flip permutation test of the
    mean difference (exact for up to 20 questions that differ, else ``draws`` random flips). Also
    the discordant counts over all seed x question pairs: ``a`` right where ``b`` is wrong, and back.
    """
    a, b = np.atleast_2d(a).astype(float), np.atleast_2d(b).astype(float)
    d = a.mean(axis=0) - b.mean(axis=0)
    observed = abs(float(d.mean()))
    nonzero = d[d != 0]
    if len(nonzero) == 0:
        p = 1.0
    elif len(nonzero) <= 20:
        signs = np.array(np.meshgrid(*[[-1.0, 1.0]] * len(nonzero))).reshape(len(nonzero), -1).T
        p = float((np.abs((signs * nonzero).sum(axis=1)) >= abs(nonzero.sum()) - 1e-12).mean())
    else:
        rng = np.random.default_rng(seed)
        flips = rng.choice([-1.0, 1.0], size=(draws, len(nonzero)))
        p = float(((np.abs((flips * nonzero).sum(axis=1)) >= abs(nonzero.sum()) - 1e-12).sum() + 1) / (draws + 1))
    aa, bb = np.broadcast_arrays(a, b)
    return {"difference": float(d.mean()), "p_value": p, "observed_abs": observed,
            "a_only": int(((aa == 1) & (bb == 0)).sum()), "b_only": int(((aa == 0) & (bb == 1)).sum())}
