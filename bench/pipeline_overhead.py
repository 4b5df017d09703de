"""End-to-end overhead of a round over its engine calls.

``pipeline.run_round`` (generate -> score -> select -> export, with its parquet shards,
hashes, manifest and statistics) on the tests' tiny Llama policy and tiny RM, against the same
engine calls made directly (``HFGenerator.generate`` on each shard's prompts with the shard's
seed, then ``RewardModelScorer.score`` on the same pairs in the same shards). Both sides share
the loaded engines; they alternate, median of the repeats. The engine time measured *inside*
the round (the generator and scorer wrapped in timers) is shown too, so the overhead is
visible two ways: round / direct calls, and round minus its own engine time.
Peak memory as the prompt count grows is bench/memory_scaling.py (section 4b).

    .venv/bin/python bench/pipeline_overhead.py
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from common import demo_count_bits_prompts, header, interleaved, one_thread, table, verdict


class Timed:
    """A generator or scorer that adds the time spent in its calls to ``seconds``."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.name, self.seconds = inner, inner.name, 0.0

    @property
    def last_stats(self) -> Any:
        return getattr(self.inner, "last_stats", None)

    def generate(self, *args: Any) -> Any:
        started = time.perf_counter()
        try:
            return self.inner.generate(*args)
        finally:
            self.seconds += time.perf_counter() - started

    def score(self, *args: Any) -> Any:
        started = time.perf_counter()
        try:
            return self.inner.score(*args)
        finally:
            self.seconds += time.perf_counter() - started


def round_config(out: Path, name: str, n: int, tokens: int, shard_size: int) -> Any:
    from rsft.config import GenerationConfig, RunConfig, SamplingConfig, ScoringConfig, SelectionConfig

    return RunConfig(name=name, out=str(out),
                     generation=GenerationConfig(n=n, sampling=SamplingConfig(temperature=0.7, top_k=50,
                                                                              max_new_tokens=tokens, seed=0),
                                                 shard_size=shard_size),
                     scoring=ScoringConfig(scorer="rm"), selection=SelectionConfig(strategy="best"))


def overhead(m: int, n: int, tokens: int, shard_size: int, repeats: int) -> list[list[Any]]:
    from tiny_models import build_causal_lm, build_reward_model

    from rsft import pipeline, stages
    from rsft.generate.hf import HFGenerator
    from rsft.prompts import prompt_id
    from rsft.score.reward_model import RewardModelScorer
    from rsft.types import Prompt

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        gen = HFGenerator(str(build_causal_lm(tmp_path / "lm")), dtype="float32", device="cpu")
        rm = RewardModelScorer(build_reward_model(tmp_path / "rm"), batch_size=16, device="cpu")
        texts = demo_count_bits_prompts(m)
        prompts = [Prompt(prompt_id=prompt_id(t), prompt=t) for t in texts]
        counter = {"k": 0}
        inside = {"engine": 0.0}

        def round_side() -> None:
            counter["k"] += 1
            config = round_config(tmp_path / "runs", f"r{counter['k']}", n, tokens, shard_size)
            g, s = Timed(gen), Timed(rm)
            pipeline.run_round(config, generator=g, scorer=s, prompts=prompts, quiet=True)
            inside["engine"] = g.seconds + s.seconds

        def direct_side() -> None:
            config = round_config(tmp_path / "runs", "direct", n, tokens, shard_size).generation
            for start in range(0, m, shard_size):
                chunk = texts[start : start + shard_size]
                rows = gen.generate(chunk, n, stages.sampling_params(config, seed_offset=1009 * (start // shard_size)))
                rm.score([p for p in chunk for _ in range(n)], [c.text for row in rows for c in row],
                         [{} for _ in range(len(chunk) * n)])

        results = interleaved({"rsft round (run_round)": round_side, "direct engine calls": direct_side}, repeats)
    rnd, direct = results["rsft round (run_round)"]["median"], results["direct engine calls"]["median"]
    return [
        ["rsft round: generate, score, select, export, files", rnd, rnd / direct - 1],
        ["direct engine calls (generate + score, same shards)", direct, 0.0],
        ["engine time inside the (last) round", inside["engine"], rnd / inside["engine"] - 1],
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("-n", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--shard-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    one_thread()
    header("4. End-to-end: overhead of a round over its engine calls")
    print(f"### Overhead: tiny Llama policy + tiny RM, {args.prompts} prompts x {args.n} samples x {args.tokens} "
          f"tokens, shards of {args.shard_size} prompts (median of {args.repeats})\n")
    rows = overhead(args.prompts, args.n, args.tokens, args.shard_size, args.repeats)
    table(["what", "seconds", "overhead"], [[r[0], r[1], f"{100 * r[2]:+.1f}%"] for r in rows])
    print("#### Goals\n")
    table(["measure", "value", "goal", "met?"], [
        ["round wall time over direct engine calls", f"{100 * rows[0][2]:+.1f}%", "<= 5%",
         verdict(rows[0][2], 0.05, higher_is_better=False)],
    ])


if __name__ == "__main__":
    main()
