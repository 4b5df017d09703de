"""Selection and statistics on a large reward matrix: time and peak extra memory.

A 1M x 64 float32 matrix (256 MB; rewards ~ N(0, 1) with 1% NaN) goes through ``rsft.select``
(best per prompt, top-K, threshold) and ``rsft.stats`` (``expected_best_of_n`` at n=8,
``bon_curve`` at its default n = 1, 2, 4, ..., 64). Each is timed (median of the repeats) and its
peak extra memory is read with ``tracemalloc`` (numpy reports its buffers to it) in a separate,
untimed call. The plain-numpy one-liner a user would write instead is measured beside each, where
there is one (``np.argmax``, ``np.argpartition`` + sort, a mask): it is faster where it skips
rsft's NaN handling and tie rules, and its memory is what those one-liners cost.

    .venv/bin/python bench/selection.py --rows 1000000
"""

from __future__ import annotations

import argparse
import statistics
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np
from common import header, one_thread, table, verdict


def peak_extra(fn: Callable[[], Any]) -> int:
    """Peak bytes allocated (and traced) during ``fn()`` above what was allocated before."""
    tracemalloc.start()
    tracemalloc.reset_peak()
    before, _ = tracemalloc.get_traced_memory()
    result = fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del result
    return peak - before


def timed(fn: Callable[[], Any], repeats: int) -> tuple[float, float]:
    """Median wall and CPU (process) seconds of ``fn()``: on a shared machine the wall time carries
    other tenants' load; single-threaded numpy's CPU time does not."""
    wall, cpu = [], []
    for _ in range(repeats):
        started, started_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - started)
        cpu.append(time.process_time() - started_cpu)
    return statistics.median(wall), statistics.median(cpu)


def numpy_top_k(R: np.ndarray, k: int) -> np.ndarray:
    flat = R.ravel()
    part = np.argpartition(flat, -k)[-k:]
    return part[np.argsort(-flat[part], kind="stable")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--cols", type=int, default=64)
    parser.add_argument("--k", type=int, default=100_000, help="top-K overall")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    one_thread()
    from rsft import select
    from rsft.bon import stats as bon_stats

    header(f"3. Selection and statistics on a {args.rows:,} x {args.cols} float32 reward matrix", ["numpy"])
    rng = np.random.default_rng(0)
    R = rng.standard_normal((args.rows, args.cols), dtype=np.float32)
    R.ravel()[rng.choice(R.size, R.size // 100, replace=False)] = np.nan
    size = R.nbytes
    print(f"Matrix: {size / 2**20:.0f} MiB, 1% NaN. Peak extra memory is traced allocation above the matrix.\n")
    cases: list[tuple[str, Callable[[], Any], Callable[[], Any] | None]] = [
        ("best per prompt", lambda: select.best_per_prompt(R), lambda: np.argmax(R, axis=1)),
        (f"top-K overall (K={args.k:,})", lambda: select.top_k_overall(R, args.k), lambda: numpy_top_k(R, args.k)),
        ("threshold (best >= 2.0)", lambda: select.keep_above(R, 2.0),
         lambda: np.flatnonzero(np.nanmax(R, axis=1) >= 2.0)),
        ("select(strategy='best') (with NaN count)", lambda: select.select(R, "best"), None),
        ("expected_best_of_n(R, 8)", lambda: bon_stats.expected_best_of_n(R, 8), None),
        ("bon_curve(R) (n = 1..64, with KL estimate)", lambda: bon_stats.bon_curve(R), None),
    ]
    rows, goals, missed = [], [], []
    for name, fn, plain in cases:
        (wall, cpu), peak = timed(fn, args.repeats), peak_extra(fn)
        plain_wall = timed(plain, args.repeats)[0] if plain else None
        plain_peak = peak_extra(plain) if plain else None
        rows.append([name, wall, cpu, peak / 2**20, "-" if plain_wall is None else plain_wall,
                     "-" if plain_peak is None else plain_peak / 2**20])
        ratio = (size + peak) / size
        goals.append([f"{name}: CPU time (wall {wall:.2f} s)", f"{cpu:.2f} s", "< 1 s",
                      verdict(cpu, 1.0, higher_is_better=False)])
        goals.append([f"{name}: peak memory / matrix", f"{ratio:.2f}x", "< 2x",
                      verdict(ratio, 2.0, higher_is_better=False)])
        if cpu >= 1.0:
            missed.append(name)
    table(["operation", "rsft wall s", "rsft CPU s", "rsft peak extra MiB", "numpy one-liner wall s",
           "numpy peak extra MiB"], rows)
    print("#### Goals (time judged on CPU seconds: one thread, the machine is shared)\n")
    table(["measure", "value", "goal", "met?"], goals)
    for name in missed:
        print(f"- {name}: {CAUSES.get(name.split(' (')[0], 'see the profile')}")
    if missed:
        print()


CAUSES = {
    "bon_curve(R)": "sorts every row once and finds its tied runs (bench/bon_curve.py compares it with the "
                    "previous code, which looked up KL terms over all 64M entries for each of the 7 values of n)",
    "expected_best_of_n(R, 8)": "a copy and a sort of every row (64M entries) in R's dtype, then column sums",
    "threshold": "keep_above returns a Python list of (i, j) tuples, one per kept row",
    "select(strategy='best')": "counts NaN over the whole matrix, then keep_above's Python list of (i, j) tuples",
}


if __name__ == "__main__":
    main()
