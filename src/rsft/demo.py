"""``make demo``: the embedded default end to end, offline, on CPU.

Gemma-3-270M (base, from the PyPI GGUF packages) answers few-shot reasoning-gym questions; the
task's own checker scores them. One greedy pass and one round of N samples per prompt give the
three numbers that motivate rejection sampling: greedy accuracy, mean sampled accuracy, and
Best-of-N accuracy (a prompt counts as solved when any of its N samples is right).

The task and its settings were chosen by measurement (docs/demo-task.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time

import numpy as np

from rsft import artifacts, matrix, pipeline, stages
from rsft.config import (
    GenerationConfig,
    GeneratorConfig,
    PromptsConfig,
    RunConfig,
    SamplingConfig,
    ScoringConfig,
    SelectionConfig,
    TaskConfig,
)
from rsft.models import EMBEDDED_DEFAULT

DEMO_TASK = TaskConfig(name="count_bits", size=32, seed=1, shots=5, options={"max_n": 63})
DEMO_SAMPLING = SamplingConfig(temperature=0.7, top_k=50, max_new_tokens=12, stop=["\n"], seed=0)


def demo_config(out: str, prompts: int, n: int) -> RunConfig:
    return RunConfig(
        name="demo",
        out=out,
        prompts=PromptsConfig(task=dataclasses.replace(DEMO_TASK, size=prompts)),
        generation=GenerationConfig(n=n, generator=GeneratorConfig("hf", EMBEDDED_DEFAULT, {"batch_size": 8}),
                                    sampling=DEMO_SAMPLING, shard_size=16),
        scoring=ScoringConfig(scorer="task"),
        selection=SelectionConfig(strategy="best", threshold=1.0),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rsft.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs", help="parent folder of the run folder (default: runs)")
    parser.add_argument("--prompts", type=int, default=DEMO_TASK.size, help="M, prompts (default 32)")
    parser.add_argument("-n", type=int, default=8, help="N, samples per prompt (default 8)")
    args = parser.parse_args(argv)

    started = time.time()
    config = demo_config(args.out, args.prompts, args.n)
    t = config.prompts.task
    print(f"rsft demo: {EMBEDDED_DEFAULT} on reasoning-gym {t.name} {t.options}, {t.shots}-shot, "
          f"M={t.size} prompts x N={args.n} samples (first run assembles and caches the model)", flush=True)
    generator = pipeline.build_generator(config.generation)
    load_s = time.time() - started

    greedy_dir = config.run_dir / "greedy"
    greedy = dataclasses.replace(config.generation, n=1,
                                 sampling=dataclasses.replace(DEMO_SAMPLING, temperature=0.0))
    prompts = pipeline.load_prompt_set(config.prompts)
    t0 = time.time()
    stages.generate(greedy_dir, greedy, lambda: generator, prompts)
    stages.score(greedy_dir, config.scoring, pipeline.build_scorer(config.scoring))
    greedy_s = time.time() - t0
    R_greedy, _ = matrix.read_rewards(greedy_dir / artifacts.REWARDS, [p.prompt_id for p in prompts])

    t0 = time.time()
    result = pipeline.run_round(config, generator=generator, prompts=prompts)
    sampled_s = time.time() - t0
    R, _ = matrix.read_rewards(result.round_dir / artifacts.REWARDS, [p.prompt_id for p in prompts])

    acc = accuracies(R_greedy, R)
    print()
    print(f"{'':28}accuracy   ({len(prompts)} prompts; correct = task score 1.0)")
    print(f"{'greedy':28}{acc['greedy_accuracy']:8.1%}")
    print(f"{'mean sampled (T=0.7, top-k 50)':28}{acc['mean_sampled_accuracy']:8.1%}")
    print(f"{f'best-of-{args.n} (pass@{args.n})':28}{acc['best_of_n_accuracy']:8.1%}")
    print()
    print(f"kept for SFT: {result.export['rows']} prompts with a correct sample -> {result.export['path']}")
    print(f"run folder:   {config.run_dir}/  (round-000/: prompts, completions, rewards, selection, "
          f"selected.jsonl, manifest.json; greedy/: the greedy pass)")
    print(f"wall time:    {time.time() - started:.0f} s (model load {load_s:.0f} s, greedy {greedy_s:.0f} s, "
          f"sampled round {sampled_s:.0f} s); rsft stats {config.run_dir} shows the Best-of-n curve")
    artifacts.write_json(config.run_dir / "demo.json", {**acc, "M": int(R.shape[0]), "N": int(R.shape[1]),
                                                       "wall_s": round(time.time() - started, 1)})
    return 0


def accuracies(R_greedy: np.ndarray, R: np.ndarray) -> dict[str, float]:
    """Exact-answer accuracies: reasoning-gym gives partial credit (e.g. 0.01) to wrong answers."""
    correct = R >= 1.0
    return {"greedy_accuracy": float((R_greedy >= 1.0).mean()), "mean_sampled_accuracy": float(correct.mean()),
            "best_of_n_accuracy": float(correct.any(axis=1).mean())}


if __name__ == "__main__":
    sys.exit(main())
