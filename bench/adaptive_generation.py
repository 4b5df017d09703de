"""Adaptive N in the RSFT generate stage, replayed on real samples: samples saved vs training rows lost.

    python bench/adaptive_generation.py ROUND_DIR [--answer boxed] [--equivalence math] [--out FILE.md]

ROUND_DIR is a scored round sampled with the full N (prompts.parquet, completions.parquet,
rewards.parquet), e.g. ``make demo-real``'s ``runs/demo-real/bon-chain_sum/sampled`` (Qwen, 16
samples per chain_sum question, math-verify verdicts). Each setting runs the real stages on a copy
of its prompts: ``rsft.stages.generate`` with ``generation.adaptive`` and a generator that replays
the stored samples in order (a live run's batch k is seeded ``seed + k``; with a backend that seeds
each sample, as ``openai`` with ``max_n_per_request=1`` does, its samples are the first ones of
the full run), then ``score`` with a scorer that returns each stored verdict, then ``select``
(best per prompt at threshold 1.0: the RSFT kept set). The full-N row is the same replay without
adaptive N.

What it measures for RSFT: adaptive N stops a prompt once its answers agree, which saves samples on
the prompts the model is sure about; the cost is the prompts where it agreed on a wrong answer early
and a later sample was right. Those are lost training rows, and often the most useful ones.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from rsft import artifacts, matrix, stages
from rsft.config import (
    AdaptiveGenerationConfig,
    GenerationConfig,
    SamplingConfig,
    ScoringConfig,
    SelectionConfig,
)
from rsft.types import Completion, Prompt, PromptValue, SamplingParams

SETTINGS: list[tuple[str, dict[str, Any] | None]] = [
    ("full N", None),
    ("share >= 0.6, min_n 4", {"min_n": 4, "supermajority": 0.6}),
    ("share >= 0.8, min_n 4", {"min_n": 4, "supermajority": 0.8}),
    ("share >= 0.6, min_n 2", {"min_n": 2, "supermajority": 0.6}),
    ("beta 0.95, min_n 4", {"min_n": 4, "rule": "beta", "confidence": 0.95}),
]


def key(prompt: PromptValue) -> str:
    """A prompt (text or chat messages) as a dictionary key."""
    return json.dumps(prompt, sort_keys=True)


class Replay:
    """Sample t of a call seeded s is the stored sample s + t of the prompt (one shard, seed 0)."""

    name = "replay"

    def __init__(self, prompts: list[Prompt], texts: list[list[str]]) -> None:
        self.rows = {key(p.prompt): row for p, row in zip(prompts, texts, strict=True)}

    def generate(self, prompts: list[PromptValue], n: int, sampling: SamplingParams) -> list[list[Completion]]:
        return [[Completion(self.rows[key(p)][sampling.seed + t], 1, "stop") for t in range(n)] for p in prompts]


class StoredVerdict:
    """The round's own reward for a (prompt, completion) pair: the checker is not run again."""

    name = "stored"

    def __init__(self, prompts: list[Prompt], texts: list[list[str]], R: np.ndarray) -> None:
        self.verdicts = {(key(p.prompt), t): float(r) for p, row, rs in zip(prompts, texts, R, strict=True)
                         for t, r in zip(row, rs, strict=True)}

    def score(self, prompts: list[PromptValue], completions: list[str], metadata: list[dict]) -> list[float]:
        return [self.verdicts[(key(p), c)] for p, c in zip(prompts, completions, strict=True)]


def replay(folder: Path, answer: str, equivalence: str) -> list[dict[str, Any]]:
    prompts = matrix.read_prompts(folder / artifacts.PROMPTS)
    texts = matrix.read_completions(folder / artifacts.COMPLETIONS, prompts).texts
    R, _ = matrix.read_rewards(folder / artifacts.REWARDS, [p.prompt_id for p in prompts])
    m, n = R.shape
    out = []
    for name, adaptive in SETTINGS:
        config = GenerationConfig(n=n, shard_size=m, sampling=SamplingConfig(seed=0), adaptive=AdaptiveGenerationConfig(
            enabled=adaptive is not None, answer=answer, equivalence=equivalence, **(adaptive or {})))
        with tempfile.TemporaryDirectory() as tmp:
            rd = Path(tmp)
            counts = stages.generate(rd, config, lambda: Replay(prompts, texts), prompts)
            stages.score(rd, ScoringConfig(pass_threshold=1.0), StoredVerdict(prompts, texts, R), shard_size=m)
            stages.select_completions(rd, SelectionConfig(strategy="best", threshold=1.0))
            picks = {(r["prompt_id"], r["sample_idx"]) for r in pq.read_table(rd / artifacts.SELECTION).to_pylist()}
        out.append({"setting": name, "samples": counts["completions"], "budget": m * n, "kept": len(picks),
                    "picks": picks})
    full = out[0]["picks"]
    for row in out:
        row["same_picks"] = len(row["picks"] & full)
    return out


def table(folder: Path, rows: list[dict[str, Any]]) -> str:
    m_n = rows[0]["budget"]
    lines = [f"`{folder}`: {m_n} cells; kept = prompts with a passing sample (best per prompt, threshold 1.0)", "",
             "| setting | samples drawn | saved | kept prompts | kept picks equal to full N's |",
             "|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['setting']} | {r['samples']} | {1 - r['samples'] / m_n:.1%} | {r['kept']} | "
                     f"{r['same_picks']} of {rows[0]['kept']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("rounds", nargs="+", type=Path, help="scored round folders sampled with the full N")
    p.add_argument("--answer", default="boxed", help="answer extractor for the votes (default boxed)")
    p.add_argument("--equivalence", default="math", help="answer grouping (default math)")
    p.add_argument("--out", type=Path, help="also write the tables to this markdown file")
    args = p.parse_args(argv)
    text = "\n\n".join(table(f, replay(f, args.answer, args.equivalence)) for f in args.rounds)
    print(text)
    if args.out:
        artifacts.write_text(args.out, text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
