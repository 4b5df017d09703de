"""``make bench``: run every side-by-side benchmark and write bench/results.md.

Each script runs in its own process (OMP_NUM_THREADS=1) and prints markdown: its machine and
versions header, its tables, and a ``#### Goals`` table. results.md gets the date, the total wall
time, a summary of every goal row, then each script's output in full. A script that fails is
recorded as failed (with the end of its stderr) and the others still run.

    .venv/bin/python bench/run_all.py                 # all, ~15 minutes on 2 busy cores
    .venv/bin/python bench/run_all.py selection       # only scripts whose name contains a word
                                                      # (printed; results.md is left alone)
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import time
from pathlib import Path

from common import cores, cpu_model, versions

HERE = Path(__file__).resolve().parent
SCRIPTS = [
    ("generation.py", ["--model", "tiny", "gemma3-270m"]),
    ("reward_scoring.py", ["--gemma"]),
    ("selection.py", []),
    ("bon_curve.py", []),
    ("pipeline_overhead.py", []),
    ("memory_scaling.py", []),
    ("sandbox_throughput.py", []),
    ("llamacpp_vs_hf.py", []),  # skipped (one line) without llama-cpp-python
]
TIMEOUT_S = 900


def goal_rows(output: str) -> list[str]:
    """The data rows of the ``#### Goals`` table in a script's output."""
    rows, inside = [], False
    for line in output.splitlines():
        if line.startswith("#### Goals"):
            inside = True
            continue
        if inside and line.startswith("|") and not line.startswith("|---") and not line.startswith("| measure"):
            rows.append(line)
        elif inside and rows and not line.startswith("|"):
            inside = False
    return rows


def main() -> None:
    only = sys.argv[1:]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    started_at = dt.datetime.now(dt.timezone.utc)
    started = time.perf_counter()
    sections, summary = [], []
    for script, script_args in SCRIPTS:
        if only and not any(word in script for word in only):
            continue
        print(f"bench: {script} ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        try:
            proc = subprocess.run([sys.executable, str(HERE / script), *script_args], capture_output=True,
                                  text=True, env=env, cwd=HERE.parent, timeout=TIMEOUT_S, check=False)
            out, err, code = proc.stdout, proc.stderr, proc.returncode
        except subprocess.TimeoutExpired as e:
            out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
            err, code = f"timed out after {TIMEOUT_S} s", -1
        seconds = time.perf_counter() - t0
        print(f"bench: {script} done in {seconds:.0f} s (exit {code})", file=sys.stderr, flush=True)
        text = out.strip() + f"\n\n_{script}: {seconds:.0f} s wall_\n"
        if code != 0:
            tail = "\n".join(err.strip().splitlines()[-15:])
            text += f"\n**{script} FAILED (exit {code})**:\n\n```\n{tail}\n```\n"
            summary.append(f"| {script}: FAILED (exit {code}) | | | MISSED |")
        summary += goal_rows(out)
        sections.append(text)
    total = time.perf_counter() - started
    head = [
        "# rsft benchmarks against the peers",
        "",
        f"Latest run: {started_at:%Y-%m-%d %H:%M} UTC, `make bench` total wall time {total / 60:.1f} min.",
        f"Machine: {cpu_model()}, {cores()} cores; {versions()}.",
        "Every comparison runs both sides in the same run, interleaved, median of repeats, one torch/OpenMP "
        "thread; the machine may be shared, so ratios matter more than absolute numbers.",
        "Written by bench/run_all.py; each section below is one script's own output.",
        "",
        "## Summary of goals",
        "",
        "| measure | value | goal | met? |",
        "|---|---|---|---|",
        *summary,
        "",
    ]
    text = "\n".join(head) + "\n" + "\n".join(sections)
    if only:  # a partial run prints its sections and leaves the full results.md alone
        print(text)
        return
    (HERE / "results.md").write_text(text)
    print(f"bench: wrote {HERE / 'results.md'} in {total / 60:.1f} min", file=sys.stderr)


if __name__ == "__main__":
    main()
