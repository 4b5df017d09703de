"""Shared by the side-by-side benchmarks: the machine and versions header, interleaved timing,
markdown tables, and the tiny test models.

Every benchmark measures rsft and the thing a user would use instead in the same process (or in
fresh subprocesses started alternately), interleaved, and reports the median of the repeats and
the ratio, so a busy shared machine slows both sides alike.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # tiny_models.py: the tests' tiny random models


def one_thread() -> None:
    """Pin torch (and OpenMP) to one thread: comparable numbers on a shared machine."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown cpu"


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 0


def versions(extra: Sequence[str] = ()) -> str:
    out = [f"python {platform.python_version()}"]
    for dist in ("torch", "transformers", "rsft", *extra):
        try:
            out.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            out.append(f"{dist} (not installed)")
    return ", ".join(out)


def header(title: str, extra_versions: Sequence[str] = ()) -> None:
    """Print the section title, the machine (CPU model, cores, load) and the versions."""
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"## {title}\n")
    print(f"- machine: {cpu_model()}, {cores()} cores, load average {load} at start")
    print(f"- versions: {versions(extra_versions)}")
    print(f"- threads: torch/OpenMP {os.environ.get('OMP_NUM_THREADS', 'default')}")
    print()


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Print a markdown table (numbers formatted to 3 significant digits)."""

    def cell(x: Any) -> str:
        if isinstance(x, float):
            return f"{x:.3g}" if abs(x) < 1000 else f"{x:,.0f}"
        return str(x)

    print("| " + " | ".join(headers) + " |")
    print("|" + "|".join("---" for _ in headers) + "|")
    for row in rows:
        print("| " + " | ".join(cell(x) for x in row) + " |")
    print()


def interleaved(sides: dict[str, Callable[[], Any]], repeats: int, warmup: bool = True) -> dict[str, dict[str, Any]]:
    """Run each side ``repeats`` times in rotation (A B C, B C A, ...); per side the wall times, the
    median, and the last return value. One untimed warm-up call per side first."""
    names = list(sides)
    if warmup:
        for name in names:
            sides[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    last: dict[str, Any] = {}
    for r in range(repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:
            started = time.perf_counter()
            last[name] = sides[name]()
            times[name].append(time.perf_counter() - started)
    return {name: {"times": times[name], "median": statistics.median(times[name]), "value": last[name]}
            for name in names}


def demo_count_bits_prompts(count: int) -> list[str]:
    """Few-shot reasoning-gym ``count_bits`` prompts, as in ``make demo`` (configs/demo.yaml)."""
    from rsft.prompts import TaskSpec, task_prompts

    spec = TaskSpec(name="count_bits", size=count, seed=1, shot_seed=2, shots=5, options={"max_n": 127})
    return [str(p.prompt) for p in task_prompts(spec)]


def verdict(value: float, goal: float, higher_is_better: bool = True) -> str:
    ok = value >= goal if higher_is_better else value <= goal
    return "met" if ok else "MISSED"
