"""bf16 vs float32 for the embedded Qwen2.5-Coder-0.5B on CPU: greedy accuracy, agreement, speed.

    python bench/qwen_dtype.py [--out runs/bench-qwen-dtype] [--chain 96] [--humaneval 16]

``dtype: auto`` runs the embedded Qwen in bf16 on a CPU with native bf16 (rsft.models.auto_dtype);
this measures what that costs: the same greedy passes as ``make demo-real``'s held-out eval (chain_sum
seed 9001, step by step, checked by math-verify) and its HumanEval problems (40..55, run against their
tests in the sandbox), once per dtype, with the answers compared text for text. Needs the ``qwen``
extra. Writes ``dtype.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

from rsft import artifacts, matrix, pipeline, stages
from rsft.config import GenerationConfig, GeneratorConfig, PromptsConfig, ScoringConfig
from rsft.demos.demo_real import CHAIN_TASK, GREEDY, HUMANEVAL_SAMPLING, MODEL
from rsft.prompts import humaneval_prompts
from rsft.rounds.loop import metric_with_ci


def greedy_pass(folder: Path, dtype: str, prompts, sampling, scorer: str) -> dict:
    gen = GenerationConfig(n=1, generator=GeneratorConfig("hf", MODEL, {"dtype": dtype, "batch_size": 64}),
                           sampling=sampling, shard_size=64)
    generator = pipeline.build_generator(gen)
    t0 = time.time()
    stages.generate(folder, gen, lambda: generator, prompts)
    took = time.time() - t0
    scoring = ScoringConfig(scorer=scorer)
    stages.score(folder, scoring, pipeline.build_scorer(scoring))
    ids = [p.prompt_id for p in prompts]
    R, _ = matrix.read_rewards(folder / artifacts.REWARDS, ids)
    comps = matrix.read_completions(folder / artifacts.COMPLETIONS, matrix.read_prompts(folder / artifacts.PROMPTS))
    metric = metric_with_ci(R, pass_threshold=1.0)
    return {"correct": int((R[:, 0] >= 1.0).sum()), "n": len(prompts), "accuracy": metric["value"],
            "ci": [metric["ci_low"], metric["ci_high"]], "generate_s": round(took, 1),
            "tokens": int(np.asarray(comps.n_tokens).sum()), "texts": [row[0] for row in comps.texts]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/bench-qwen-dtype"))
    ap.add_argument("--chain", type=int, default=96, help="held-out chain_sum questions (seed 9001)")
    ap.add_argument("--humaneval", type=int, default=16, help="HumanEval problems from 40")
    args = ap.parse_args(argv)
    tasks = {
        "chain_sum": (pipeline.load_prompt_set(PromptsConfig(task=dataclasses.replace(CHAIN_TASK, seed=9001,
                                                                                     size=args.chain))),
                      GREEDY, "math"),
        "humaneval": (humaneval_prompts(40, 40 + args.humaneval, chat=False),
                      dataclasses.replace(HUMANEVAL_SAMPLING, temperature=0.0, top_k=0), "code"),
    }
    results: dict = {}
    for task, (prompts, sampling, scorer) in tasks.items():
        for dtype in ("bfloat16", "float32"):
            results.setdefault(task, {})[dtype] = greedy_pass(args.out / task / dtype, dtype, prompts, sampling,
                                                              scorer)
    print("| task | dtype | greedy accuracy | 95% CI | generate s | identical answers |")
    print("|---|---|---|---|---|---|")
    for task, by in results.items():
        same = sum(a == b for a, b in zip(by["bfloat16"]["texts"], by["float32"]["texts"], strict=True))
        for dtype, r in by.items():
            lo, hi = r["ci"]
            print(f"| {task} | {dtype} | {r['correct']}/{r['n']} = {r['accuracy']:.1%} | [{lo:.2f}, {hi:.2f}] | "
                  f"{r['generate_s']:.0f} | {same}/{r['n']} |")
        by["identical"] = same
    for by in results.values():
        for r in (by["bfloat16"], by["float32"]):
            r.pop("texts")
    artifacts.write_json(args.out / "dtype.json", results)
    print(json.dumps({t: {d: by[d]["accuracy"] for d in ("bfloat16", "float32")} for t, by in results.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
