"""Peak memory of a checker-only round as the prompt count grows.

Each run is a fresh subprocess (its peak RSS is its own: ``VmHWM``, as ``ru_maxrss`` would carry the
parent's peak across fork + exec) running ``pipeline.run_round`` from a JSONL prompt file with a
stand-in generator (answers from the prompt's number, right on sample 0: no model) and the ``exact``
checker, so what grows is rsft's own bookkeeping: prompts, completion and reward tables, shards,
selection and export. M = 10k and 100k run ``--repeats`` times each (the median counts: the
allocators make single runs differ by ~10 MB); M = 1M runs once, for its peak and wall time.

    .venv/bin/python bench/memory_scaling.py                   # 10k and 100k x 3, 1M once (~6 min)
    .venv/bin/python bench/memory_scaling.py --big 0           # without the 1M run
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from common import ROOT, header, table, verdict

PROMPT = "Q: How many 1 bits are there in the binary representation of the number {i}?\nA:"


class AnsweringGenerator:
    """A stand-in policy without a model: sample j answers the prompt's bit count plus j (so sample 0
    is right and the checker has something to tell apart)."""

    name = "answering"

    def generate(self, prompts: Sequence[Any], n: int, sampling: Any) -> list[list[Any]]:
        from rsft.types import Completion

        out = []
        for p in prompts:
            bits = bin(int(re.search(r"number (\d+)", str(p)).group(1))).count("1")  # type: ignore[union-attr]
            out.append([Completion(text=f" {bits + j}", n_tokens=1, finish_reason="stop", generator=self.name)
                        for j in range(n)])
        return out


def peak_rss_kib() -> int:
    """This process's peak resident set (VmHWM, KiB); it starts afresh at exec, unlike ``ru_maxrss``."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def write_prompts(path: Path, m: int) -> None:
    """M prompts as JSONL, a line at a time (the file, not a list, is the prompt set)."""
    with open(path, "w", encoding="utf-8") as f:
        for i in range(m):
            f.write(json.dumps({"prompt": PROMPT.format(i=i), "answer": str(bin(i).count("1"))}) + "\n")


def child(prompts: Path, out: Path, n: int, shard_size: int) -> None:
    """One round over the prompt file; print peak RSS (KiB), wall time and counts as JSON."""
    from rsft import pipeline
    from rsft.config import (
        GenerationConfig,
        PromptsConfig,
        RunConfig,
        SamplingConfig,
        ScoringConfig,
        SelectionConfig,
    )

    before = peak_rss_kib()
    started = time.perf_counter()
    config = RunConfig(name="rss", out=str(out), prompts=PromptsConfig(path=str(prompts)),
                       generation=GenerationConfig(n=n, sampling=SamplingConfig(max_new_tokens=4, seed=0),
                                                   shard_size=shard_size),
                       scoring=ScoringConfig(scorer="exact"), selection=SelectionConfig(strategy="best"))
    result = pipeline.run_round(config, generator=AnsweringGenerator(), quiet=True)
    print(json.dumps({"before_kib": before, "peak_kib": peak_rss_kib(), "seconds": time.perf_counter() - started,
                      "selected": result.selection["selected"]}))


def run(m: int, n: int, shard_size: int) -> dict[str, Any]:
    """One fresh subprocess over a new prompt file of M prompts."""
    with tempfile.TemporaryDirectory() as tmp:
        prompts = Path(tmp) / "prompts.jsonl"
        write_prompts(prompts, m)
        proc = subprocess.run([sys.executable, str(Path(__file__)), "--child", str(prompts), tmp, "-n", str(n),
                               "--shard-size", str(shard_size)], capture_output=True, text=True, check=True, cwd=ROOT)
    return {"m": m, **json.loads(proc.stdout.strip().splitlines()[-1])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=2, help="samples per prompt")
    parser.add_argument("--shard-size", type=int, default=64)
    parser.add_argument("--m", type=int, nargs=2, default=[10_000, 100_000], help="the two sizes compared")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--big", type=int, default=1_000_000, help="one more run at this size (0: none)")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:  # no torch here: the stand-in round must not need it
        child(Path(args.child[0]), Path(args.child[1]), args.n, args.shard_size)
        return
    header("4b. Peak memory of a checker-only round vs prompt count (prompts streamed from a JSONL file)")
    runs = {m: [run(m, args.n, args.shard_size) for _ in range(args.repeats)] for m in args.m}
    if args.big:
        runs[args.big] = [run(args.big, args.n, args.shard_size)]
    print(f"### N = {args.n}, shards of {args.shard_size} prompts, `exact` checker, stand-in generator; "
          "a fresh subprocess per run\n")
    rows = []
    for m, rs in runs.items():
        peaks = [r["peak_kib"] / 1024 for r in rs]
        rows.append([f"{m:,}", len(rs), statistics.median(peaks), f"{min(peaks):.0f}-{max(peaks):.0f}",
                     statistics.median(r["before_kib"] / 1024 for r in rs), statistics.median(r["seconds"] for r in rs),
                     f"{rs[0]['selected']:,}"])
    table(["prompts M", "runs", "peak RSS MiB (median)", "range", "RSS after imports MiB", "seconds", "selected"], rows)
    small, large = (statistics.median(r["peak_kib"] for r in runs[m]) for m in args.m)
    growth = large / small
    print("#### Goals\n")
    goals = [[f"checker-only round: peak RSS at M={args.m[1]:,} / M={args.m[0]:,}", f"{growth:.2f}x", "<= 1.15x",
              verdict(growth, 1.15, higher_is_better=False)]]
    if args.big:
        big = runs[args.big][0]
        goals.append([f"checker-only round at M={args.big:,}: peak RSS MiB (wall s)",
                      f"{big['peak_kib'] / 1024:.0f} ({big['seconds']:.0f} s)", "reported (no target)", "-"])
    table(["measure", "value", "goal", "met?"], goals)


if __name__ == "__main__":
    main()
