"""Best-of-N statistics from one M x N reward matrix: what reward and pass rate Best-of-n buys for
each n (``bon_curve``, ``format_bon_curve``, ``expected_best_of_n``, ``pass_at_k``), and its KL from
the base policy (``bon_kl_bound``, and exactly on a finite support ``bon_distribution`` + ``kl``).

Every value in ``bon_curve`` is a plain Python int, float or None (never NaN or inf), so it goes
into JSON as is.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

from rsft.errors import RsftError
from rsft.select import as_reward_matrix
from rsft.stats import BLOCK_ELEMS, plain_float

_DENSE_RUN_CODES = 1 << 16  # (N + 1)^2 up to N = 255: count tied runs in one array


# --- Best-of-N statistics ----------------------------------------------------------------------
#
# Best-of-N (BoN) draws n iid completions from the base policy pi and keeps the highest-reward one.
# Two questions matter before paying for a large n: how much reward it buys (``expected_best_of_n``,
# ``pass_at_k``, estimated without bias from one M x N round) and how far it moves from pi
# (``bon_kl_bound``, and exactly on a finite support ``bon_distribution`` + ``kl``).
#
# Failed scorings in R: NaN (and -inf, a masked duplicate) rank below every finite reward, as in
# selection, where they are never picked over a scored completion. When every one of the n draws
# is such an entry, the "best" counts as the lowest finite reward in R, the worst outcome seen. So
# every prompt stays in every average (the curve is over the same prompts at each n), a failure
# lowers the estimate rather than vanishing from it, and a 0/1 checker's failures count as 0. For
# ``pass_at_k`` a NaN never passes.


def _n_arg(n: object, name: str = "n") -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"{name} must be a positive integer, got {n!r}")
    return int(n)


def bon_kl_bound(n: int) -> float:
    """Upper bound on KL(pi_BoN || pi) in nats: ``log n - (n - 1) / n``.

    Exact when rewards have no ties (a continuous reward); with ties (e.g. a 0/1 checker) the true
    KL is strictly smaller for n > 1. 0 at n = 1.

    Raises:
        ValueError: n is not a positive integer.
    """
    n = _n_arg(n)
    return math.log(n) - (n - 1) / n


def _distribution_arg(p: npt.ArrayLike, name: str) -> np.ndarray:
    try:
        a = np.asarray(p, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a 1-D array of probabilities") from None
    if a.ndim != 1 or a.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array, got shape {a.shape}")
    if not np.all(np.isfinite(a)) or np.any(a < 0):
        raise ValueError(f"{name} must hold finite, non-negative probabilities")
    if abs(a.sum() - 1.0) > 1e-6:
        raise ValueError(f"{name} must sum to 1, sums to {a.sum():.6g}")
    return a


def bon_distribution(p: npt.ArrayLike, r: npt.ArrayLike, n: int) -> np.ndarray:
    """The exact Best-of-n distribution over a finite support.

    Outcome i has base probability ``p[i]`` and reward ``r[i]``. Grouping outcomes by reward
    level v, with F the CDF of the reward under p, the best of n iid draws lands in level v with
    probability ``F(v)^n - F(v-)^n``, and that mass splits within the level in proportion to p.
    Tied draws may be broken by first index or uniformly at random: the draws are iid, so the
    selected outcome is distributed the same way under either rule.

    Raises:
        ValueError: p is not a probability vector, r does not match it or is not finite, or n is
            not a positive integer.
    """
    n = _n_arg(n)
    p = _distribution_arg(p, "p")
    try:
        r = np.asarray(r, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError("r must be a 1-D array of rewards") from None
    if r.shape != p.shape:
        raise ValueError(f"r has shape {r.shape} but p has shape {p.shape}")
    if not np.all(np.isfinite(r)):
        raise ValueError("r must hold finite rewards (no NaN or inf)")
    p = p / p.sum()
    _, level = np.unique(r, return_inverse=True)
    mass = np.bincount(level, weights=p)
    cdf = np.minimum(np.cumsum(mass), 1.0)
    below = np.maximum(cdf - mass, 0.0)
    picked = cdf**n - below**n
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(mass > 0, picked / mass, 0.0)
    return p * share[level]


def kl(q: npt.ArrayLike, p: npt.ArrayLike) -> float:
    """KL(q || p) in nats between two distributions on the same support.

    ``0 * log(0 / p) = 0``; inf when q puts mass where p has none.

    Raises:
        ValueError: either is not a probability vector, or their shapes differ.
    """
    q = _distribution_arg(q, "q")
    p = _distribution_arg(p, "p")
    if q.shape != p.shape:
        raise ValueError(f"q has shape {q.shape} but p has shape {p.shape}")
    on = q > 0
    if np.any(p[on] == 0):
        return math.inf
    return max(0.0, float(np.sum(q[on] * np.log(q[on] / p[on]))))


# Estimates from one round: for each prompt, its N samples stand in for pi.


def _order_weights(N: int, n: int) -> np.ndarray:
    """``w[i] = C(i, n-1) / C(N, n)``: the chance that ascending position i (0-based) is the best
    of a uniformly random n-subset of N.

    Computed downward from ``w[N-1] = n / N`` with factors in [0, 1], so nothing overflows for
    any N; weights too small for float64 underflow to 0.
    """
    w = np.zeros(N)
    factors = (np.arange(N - 1, n - 1, -1) - n + 1) / np.arange(N - 1, n - 1, -1)  # i = N-1 .. n
    w[n - 1 :] = (n / N) * np.concatenate(([1.0], np.cumprod(factors)))[::-1]
    return w


def _miss_probabilities(N: int, k: int) -> np.ndarray:
    """``g[c] = C(N - c, k) / C(N, k)`` for c = 0..N: the chance that k of N samples, c of which
    pass, include no pass. A running product of factors in [0, 1]."""
    c = np.arange(N)
    factors = np.clip((N - c - k) / (N - c), 0.0, 1.0)
    return np.concatenate(([1.0], np.cumprod(factors)))


def _k_arg(k: object, N: int, name: str) -> int:
    try:
        k = _n_arg(k, name)
    except ValueError as e:
        raise RsftError(str(e)) from None
    if k > N:
        raise RsftError(f"{name}={k} is above N={N} samples per prompt: no unbiased estimate")
    return k


def _finite_floor(R: np.ndarray) -> float | None:
    """The lowest finite reward, or None when there is none. ``fmin`` skips NaN in one fast pass;
    only a -inf or +inf minimum needs the masked one."""
    low = np.fmin.reduce(R, axis=None)
    if np.isfinite(low):
        return float(low)
    finite = np.isfinite(R)
    return float(np.min(R, where=finite, initial=np.inf)) if finite.any() else None


def _sorted_rows(block: np.ndarray, floor: float) -> np.ndarray:
    """The block's rows sorted ascending, in R's dtype, with NaN and -inf counted as ``floor`` (the
    lowest finite reward, so ``fmax`` leaves every other value alone). Callers widen to float64
    only when they add: widening is monotonic and exact, so ties and order are the same as if it
    came first, and float32 sorts faster."""
    rows = np.fmax(block, floor)
    rows.sort(axis=1)
    return rows


def _tied_runs(sorted_rows: np.ndarray) -> np.ndarray:
    """``a * (N + 1) + b`` for every run of two or more equal rewards in the sorted rows, the run
    holding the 1-based sorted positions a + 1 .. b. Found from where "equals its left neighbour"
    switches on and off; the flag is off at both ends of each row, so the switches pair up per row."""
    rows, N = sorted_rows.shape
    tied = np.zeros((rows, N + 1), dtype=bool)
    np.equal(sorted_rows[:, 1:], sorted_rows[:, :-1], out=tied[:, 1:N])
    switches = np.flatnonzero(tied[:, 1:] != tied[:, :-1])
    return (switches[0::2] % N) * (N + 1) + switches[1::2] % N + 1


class _RunCounts:
    """How many rows hold each tied run (``_tied_runs`` code): a dense count while there are few
    possible codes, else the distinct codes of each block, so memory follows what occurs, not N^2."""

    def __init__(self, N: int) -> None:
        self.size = (N + 1) ** 2
        self.dense = np.zeros(self.size, dtype=np.int64) if self.size <= _DENSE_RUN_CODES else None
        self.parts: list[tuple[np.ndarray, np.ndarray]] = []

    def add(self, codes: np.ndarray) -> None:
        if self.dense is not None:
            self.dense += np.bincount(codes, minlength=self.size)
        elif codes.size:
            self.parts.append(np.unique(codes, return_counts=True))

    def totals(self) -> tuple[np.ndarray, np.ndarray]:
        """The distinct codes and how many rows hold each."""
        if self.dense is not None:
            codes = np.flatnonzero(self.dense)
            return codes, self.dense[codes]
        if not self.parts:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        codes, inverse = np.unique(np.concatenate([c for c, _ in self.parts]), return_inverse=True)
        counts = np.zeros(codes.size, dtype=np.int64)
        np.add.at(counts, inverse, np.concatenate([k for _, k in self.parts]))
        return codes, counts


def _level_terms(a: np.ndarray, b: np.ndarray, N: int, n: int) -> np.ndarray:
    """A reward level's term of KL(BoN || uniform) over a row's N samples taken as equally likely
    outcomes: the level holds sorted positions a + 1 .. b (1-based), so it has base mass
    (b - a) / N and BoN mass (b / N)^n - (a / N)^n; within it the BoN / base ratio is constant."""
    base = (b - a) / N
    picked = (b / N) ** n - (a / N) ** n
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(picked > 0, picked * np.log(picked / base), 0.0)


def _kl_sums(runs: tuple[np.ndarray, np.ndarray], M: int, N: int, ns: list[int]) -> np.ndarray:
    """Sum over M prompts of the per-row BoN KL (``_level_terms`` summed over the row's levels),
    for each n, from the tied runs (``_RunCounts.totals``).

    A row without ties has N one-sample levels and the same KL as every such row, ``S[N]`` below.
    A run over positions a + 1 .. b replaces b - a one-sample levels (``S[b] - S[a]``) by one, so
    each run's correction depends only on (a, b): nothing passes over the matrix per n.
    """
    codes, counts = runs
    a, b = np.divmod(codes, N + 1)
    out = np.zeros(len(ns))
    j = np.arange(N + 1)
    for t, n in enumerate(ns):
        if n > 1:
            S = np.concatenate(([0.0], np.cumsum(_level_terms(j[:-1], j[1:], N, n))))
            out[t] = max(0.0, M * S[N] - float(counts @ (S[b] - S[a] - _level_terms(a, b, N, n))))
    return out


def _curve_sums(R: np.ndarray, ns: list[int], threshold: float, with_kl: bool = True) -> tuple[np.ndarray, ...]:
    """Sums over prompts of E[max of n], pass@n and the empirical KL (0 unless ``with_kl``), for
    each n in ns.

    Works in blocks of rows, sorting each block once. Every per-n sum is linear in something
    independent of n, so a block only adds up its sorted columns (E[max of n] weighs sorted
    position i by ``_order_weights``), its rows' pass counts and its tied runs; n enters at the end.
    """
    M, N = R.shape
    best, passed = np.zeros(len(ns)), np.zeros(len(ns))
    floor = _finite_floor(R)
    weights = [_order_weights(N, n) for n in ns]
    pass_counts = np.zeros(N + 1, dtype=np.int64)
    runs = _RunCounts(N)
    step = max(1, BLOCK_ELEMS // N)
    for start in range(0, M, step):
        block = R[start : start + step]
        pass_counts += np.bincount(np.count_nonzero(block >= threshold, axis=1), minlength=N + 1)
        rows = _sorted_rows(block, floor if floor is not None else 0.0)
        columns = rows.sum(axis=0, dtype=np.float64)
        for t, n in enumerate(ns):
            best[t] += float(columns[n - 1 :] @ weights[t][n - 1 :])
        if with_kl:
            runs.add(_tied_runs(rows))
    for t, n in enumerate(ns):
        passed[t] = float(pass_counts @ (1.0 - _miss_probabilities(N, n)))
    div = _kl_sums(runs.totals(), M, N, ns) if with_kl else np.zeros(len(ns))
    if floor is None:
        best[:] = np.nan
    return best, passed, div


def _matrix(R: npt.ArrayLike) -> np.ndarray:
    R = as_reward_matrix(R)
    return R if R.dtype.kind == "f" else R.astype(np.float64)


def _threshold_arg(threshold: object) -> float:
    t = threshold
    if isinstance(t, bool) or not isinstance(t, (int, float, np.integer, np.floating)) or not np.isfinite(t):
        raise RsftError(f"threshold must be a finite number, got {threshold!r}")
    return float(t)


def expected_best_of_n(R: npt.ArrayLike, n: int) -> float:
    """Unbiased estimate of E[best reward of n iid samples], averaged over prompts.

    Per prompt, with its N rewards sorted ascending ``r_(1) <= ... <= r_(N)``, the mean over all
    n-subsets of the subset's maximum is ``sum_i r_(i) C(i-1, n-1) / C(N, n)``. n = 1 gives the
    row mean, n = N the row max. NaN and -inf count as the worst sample (see the section note);
    NaN when R has no prompt or no finite reward.

    Raises:
        RsftError: a bad R, or n not in 1..N.
    """
    R = _matrix(R)
    if R.shape[0] == 0:
        return math.nan
    n = _k_arg(n, R.shape[1], "n")
    return float(_curve_sums(R, [n], 0.0, with_kl=False)[0][0] / R.shape[0])


def pass_at_k(R: npt.ArrayLike, k: int, threshold: float = 0.5) -> float:
    """Unbiased pass@k averaged over prompts: ``1 - C(N - c, k) / C(N, k)`` per prompt, where c of
    its N rewards are >= threshold (a NaN never passes).

    For any reward, this is also the chance that Best-of-k's pick reaches the threshold, since the
    pick is the max. NaN when R has no prompt.

    Raises:
        RsftError: a bad R or threshold, or k not in 1..N.
    """
    R = _matrix(R)
    t = _threshold_arg(threshold)
    if R.shape[0] == 0:
        return math.nan
    k = _k_arg(k, R.shape[1], "k")
    n_pass = np.count_nonzero(R >= t, axis=1)
    return float(np.mean(1.0 - _miss_probabilities(R.shape[1], k)[n_pass]))


def bon_curve(
    R: npt.ArrayLike, ns: list[int] | None = None, threshold: float = 0.5
) -> list[dict[str, Any]]:
    """What Best-of-n buys, for each n, estimated from one M x N round.

    Args:
        R: M x N rewards (NaN for a failed scoring).
        ns: the n to report (each in 1..N); default the powers of two up to N, then N.
        threshold: a reward >= this passes, for ``pass_at_n``.

    Returns:
        One dict per n, ascending: ``n``; ``expected_max_reward`` (``expected_best_of_n``);
        ``pass_at_n`` (``pass_at_k``: with a 0/1 checker the solve rate, with any reward the
        chance the pick reaches ``threshold``); ``kl_bound`` (``bon_kl_bound(n)``);
        ``kl_estimate``, the mean over prompts of the exact BoN KL when a prompt's N samples are
        taken as its whole distribution (ties, e.g. 0/1 rewards, bring it far below the bound;
        it is a plug-in estimate, biased low when N is not much above n). A value that is
        undefined (no prompts, no finite reward) is None.

    Raises:
        RsftError: a bad R or threshold, or an n not in 1..N.
    """
    R = _matrix(R)
    t = _threshold_arg(threshold)
    M, N = R.shape
    if ns is None:
        ns = [2**i for i in range(N.bit_length()) if 2**i <= N] + [N]
    ns = sorted({_k_arg(n, N, "n") for n in ns})
    if M == 0:
        best = passed = div = np.full(len(ns), np.nan)
    else:
        best, passed, div = (s / M for s in _curve_sums(R, ns, t))
    return [
        {
            "n": n,
            "expected_max_reward": plain_float(best[i]),
            "pass_at_n": plain_float(passed[i]),
            "kl_bound": bon_kl_bound(n),
            "kl_estimate": plain_float(div[i]),
        }
        for i, n in enumerate(ns)
    ]


def format_bon_curve(rows: list[dict[str, Any]], threshold: float | None = None) -> str:
    """``bon_curve`` rows as an aligned table."""

    def f(x: Any) -> str:
        return "n/a" if x is None else f"{x:.4g}"

    at = "" if threshold is None else f" (r>={threshold:g})"
    header = ["n", "E[max reward]", f"pass@n{at}", "KL bound", "KL est."]
    table = [header] + [
        [str(r["n"]), f(r["expected_max_reward"]), f(r["pass_at_n"]), f(r["kl_bound"]), f(r.get("kl_estimate"))]
        for r in rows
    ]
    widths = [max(len(row[c]) for row in table) for c in range(len(header))]
    return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)) for row in table)
