"""``rsft.bon.stats.bon_curve`` on a 1M x 64 reward matrix: the current code against the previous one.

The previous implementation (before issue 13) is kept below as the reference: it sorted each block
of rows in float64, took one matrix-vector product per n for E[max of n], and looked up the KL
terms of every (row, sorted position) for every n. The current one sorts each block once in R's
dtype and only adds up, per block, its sorted columns, pass counts and tied runs; n enters at the
end. Both run on the same matrices in one process, alternately (median of the repeats), and their
results must agree to 1e-12 on every field. Two matrices: rewards ~ N(0, 1) float32 with 1% NaN
(as in selection.py), and a 0/1 checker (every row tied).

    .venv/bin/python bench/bon_curve.py [--rows 1000000] [--cols 64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from common import header, one_thread, table, verdict

from rsft import stats
from rsft.bon import stats as bon_stats

BLOCK_ELEMS = 1 << 18


# --- the previous implementation, verbatim but for names -----------------------------------------


def old_floored(R: np.ndarray, floor: float) -> np.ndarray:
    out = np.asarray(R, dtype=np.float64)
    bad = np.isnan(out) | (out == -np.inf)
    return np.where(bad, floor, out) if bad.any() else out


def old_finite_floor(R: np.ndarray) -> float | None:
    finite = np.isfinite(R)
    return float(np.min(R, where=finite, initial=np.inf)) if finite.any() else None


def old_level_index(sorted_rows: np.ndarray) -> np.ndarray:
    rows, N = sorted_rows.shape
    ends = np.ones((rows, N), dtype=bool)
    ends[:, :-1] = sorted_rows[:, 1:] != sorted_rows[:, :-1]
    b = np.where(ends, np.arange(1, N + 1), 0)
    a = np.zeros_like(b)
    a[:, 1:] = np.maximum.accumulate(b, axis=1)[:, :-1]
    return a * (N + 1) + b


def old_level_kl(levels: np.ndarray, N: int, n: int) -> np.ndarray:
    if n == 1:
        return np.zeros(levels.shape[0])
    a, b = np.divmod(np.arange((N + 1) ** 2), N + 1)
    base = (b - a) / N
    picked = (b / N) ** n - (a / N) ** n
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(picked > 0, picked * np.log(picked / base), 0.0)
    return np.maximum(terms[levels].sum(axis=1), 0.0)


def old_curve_sums(R: np.ndarray, ns: list[int], threshold: float) -> tuple[np.ndarray, ...]:
    M, N = R.shape
    best, passed, div = np.zeros(len(ns)), np.zeros(len(ns)), np.zeros(len(ns))
    floor = old_finite_floor(R)
    weights = [bon_stats._order_weights(N, n) for n in ns]
    misses = [bon_stats._miss_probabilities(N, n) for n in ns]
    step = max(1, BLOCK_ELEMS // N)
    for start in range(0, M, step):
        block = R[start : start + step]
        n_pass = np.count_nonzero(block >= threshold, axis=1)
        rows = np.sort(old_floored(block, floor if floor is not None else 0.0), axis=1)
        levels = old_level_index(rows)
        for t, n in enumerate(ns):
            best[t] += float(np.sum(rows[:, n - 1 :] @ weights[t][n - 1 :]))
            passed[t] += float(np.sum(1.0 - misses[t][n_pass]))
            div[t] += float(np.sum(old_level_kl(levels, N, n)))
    if floor is None:
        best[:] = np.nan
    return best, passed, div


def old_bon_curve(R: np.ndarray, threshold: float = 0.5) -> list[dict[str, Any]]:
    """The previous ``bon_curve`` for a non-empty float matrix and the default n."""
    N = R.shape[1]
    ns = sorted({2**i for i in range(N.bit_length()) if 2**i <= N} | {N})
    best, passed, div = (s / R.shape[0] for s in old_curve_sums(R, ns, threshold))
    return [
        {"n": n, "expected_max_reward": stats.plain_float(best[i]), "pass_at_n": stats.plain_float(passed[i]),
         "kl_bound": bon_stats.bon_kl_bound(n), "kl_estimate": stats.plain_float(div[i])}
        for i, n in enumerate(ns)
    ]


# --- the measurement -------------------------------------------------------------------------------


def alternating(sides: dict[str, Callable[[], Any]], repeats: int) -> dict[str, dict[str, Any]]:
    """Each side ``repeats`` times in rotation; median wall and CPU seconds and the last result. CPU
    time is what the goal is judged on: numpy runs one thread and the machine is shared."""
    out: dict[str, dict[str, Any]] = {name: {"wall": [], "cpu": []} for name in sides}
    names = list(sides)
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            wall, cpu = time.perf_counter(), time.process_time()
            out[name]["value"] = sides[name]()
            out[name]["wall"].append(time.perf_counter() - wall)
            out[name]["cpu"].append(time.process_time() - cpu)
    for side in out.values():
        side["wall"], side["cpu"] = statistics.median(side["wall"]), statistics.median(side["cpu"])
    return out


def max_difference(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> float:
    """Largest absolute difference over every field of two curves (inf if one is None and not both)."""
    worst = 0.0
    for x, y in zip(a, b, strict=True):
        for key in x:
            if (x[key] is None) != (y[key] is None):
                return float("inf")
            if x[key] is not None:
                worst = max(worst, abs(x[key] - y[key]))
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--cols", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    one_thread()
    header(f"3b. bon_curve on a {args.rows:,} x {args.cols} reward matrix: current vs previous code", ["numpy"])
    rng = np.random.default_rng(0)
    R = rng.standard_normal((args.rows, args.cols), dtype=np.float32)
    R.ravel()[rng.choice(R.size, R.size // 100, replace=False)] = np.nan
    matrices = {"N(0, 1) float32, 1% NaN": R, "0/1 checker float32": (R > 1.0).astype(np.float32)}
    print(f"bon_curve(R) at its default n = 1, 2, 4, ..., {args.cols}, with the KL estimate; "
          f"median of {args.repeats}, alternating.\n")
    rows, goals = [], []
    for name, M in matrices.items():
        res = alternating({"current": lambda M=M: bon_stats.bon_curve(M), "previous": lambda M=M: old_bon_curve(M)},
                          args.repeats)
        new, old = res["current"], res["previous"]
        diff = max_difference(new["value"], old["value"])
        rows.append([name, new["cpu"], new["wall"], old["cpu"], old["wall"], f"{old['cpu'] / new['cpu']:.1f}x",
                     f"{diff:.1e}"])
        goals.append([f"bon_curve {name}: CPU time (wall {new['wall']:.2f} s)", f"{new['cpu']:.2f} s", "< 1 s",
                      verdict(new["cpu"], 1.0, higher_is_better=False)])
        goals.append([f"bon_curve {name}: max abs difference from the previous code", f"{diff:.1e}", "<= 1e-12",
                      verdict(diff, 1e-12, higher_is_better=False)])
    table(["matrix", "current CPU s", "current wall s", "previous CPU s", "previous wall s", "speed-up (CPU)",
           "max abs diff"], rows)
    print("#### Goals (time judged on CPU seconds: one thread, the machine is shared)\n")
    table(["measure", "value", "goal", "met?"], goals)


if __name__ == "__main__":
    main()
