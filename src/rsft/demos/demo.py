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
import gc
import json
import sys
import time
from pathlib import Path

import numpy as np

from rsft import artifacts, matrix, pipeline, stages
from rsft.config import (
    EvalConfig,
    GenerationConfig,
    GeneratorConfig,
    PromptsConfig,
    RoundsConfig,
    RunConfig,
    SamplingConfig,
    ScoringConfig,
    SelectionConfig,
    TaskConfig,
    TrainConfig,
)
from rsft.models import EMBEDDED_DEFAULT

DEMO_TASK = TaskConfig(name="count_bits", size=32, seed=1, shot_seed=2, shots=5, options={"max_n": 127})
DEMO_SAMPLING = SamplingConfig(temperature=0.7, top_k=50, max_new_tokens=12, stop=["\n"], seed=0)
DEMO_TRAIN = TrainConfig(lora=True, lora_r=16, lora_alpha=32, learning_rate=2e-4, epochs=2, batch_size=2,
                         grad_accum=4, max_length=512, logging_steps=1)


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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m rsft.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs", help="parent folder of the run folder (default: runs)")
    parser.add_argument("--prompts", type=int, default=DEMO_TASK.size, help="M, prompts (default 32)")
    parser.add_argument("-n", type=int, default=8, help="N, samples per prompt (default 8)")
    parser.add_argument("--no-rsft", dest="rsft", action="store_false",
                        help="stop after Best-of-N (~1 minute); by default one RSFT round follows: LoRA on the "
                             "kept set, held-out eval of base vs RSFT vs a random-selection control, KL")
    tune = parser.add_argument_group("the RSFT round (defaults measured in docs/rsft-demo.md)")
    tune.add_argument("--lr", type=float, default=DEMO_TRAIN.learning_rate, help="LoRA learning rate")
    tune.add_argument("--epochs", type=float, default=DEMO_TRAIN.epochs, help="training epochs")
    tune.add_argument("--lora-r", type=int, default=DEMO_TRAIN.lora_r, help="LoRA rank (alpha = 2 x rank)")
    tune.add_argument("--eval-prompts", type=int, default=96,
                      help="held-out questions requested; those also in the training prompts are dropped (default 96)")
    tune.add_argument("--eval-n", type=int, default=4,
                      help="samples per held-out prompt at the demo's T=0.7/top-k 50; 1 means greedy (default 4)")
    tune.add_argument("--no-control", dest="control", action="store_false", help="skip the random-selection control arm")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)

    started = time.time()
    config = demo_config(args.out, args.prompts, args.n)
    t = config.prompts.task
    print(f"rsft demo: {EMBEDDED_DEFAULT} on reasoning-gym {t.name} {t.options}, {t.shots}-shot, "
          f"M={t.size} prompts x N={args.n} samples (first run assembles and caches the model)", flush=True)
    generator = pipeline.build_generator(config.generation)
    load_s = time.time() - started

    greedy_dir = config.run_dir / artifacts.GREEDY
    greedy = dataclasses.replace(config.generation, n=1,
                                 sampling=dataclasses.replace(DEMO_SAMPLING, temperature=0.0))
    prompts = pipeline.load_prompt_set(config.prompts)
    t0 = time.time()
    # new_version: a rerun with other flags (-n, --prompts) keeps the earlier results under versions/
    stages.generate(greedy_dir, greedy, lambda: generator, prompts, new_version=True)
    stages.score(greedy_dir, config.scoring, pipeline.build_scorer(config.scoring), new_version=True)
    greedy_s = time.time() - t0
    R_greedy, _ = matrix.read_rewards(greedy_dir / artifacts.REWARDS, [p.prompt_id for p in prompts])

    t0 = time.time()
    result = pipeline.run_round(config, generator=generator, prompts=prompts, new_version=True)
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
    summary = {**acc, "M": int(R.shape[0]), "N": int(R.shape[1]), "wall_s": round(time.time() - started, 1)}
    if args.rsft:
        t0 = time.time()
        generator = result = None  # the round loads one policy at a time; don't hold a second copy
        gc.collect()
        summary["rsft"] = rsft_round(config, args)
        summary["rsft"]["wall_s"] = round(time.time() - t0, 1)
        summary["wall_s"] = round(time.time() - started, 1)
        print(f"total wall time: {summary['wall_s']:.0f} s (RSFT round {summary['rsft']['wall_s']:.0f} s)")
    artifacts.write_json(config.run_dir / "demo.json", summary)
    return 0


def rsft_round(config: RunConfig, args: argparse.Namespace) -> dict:
    """One RSFT round on the demo's kept set, gated on held-out questions, beside a random control."""
    from rsft.rounds import loop as rounds

    config.train = dataclasses.replace(DEMO_TRAIN, learning_rate=args.lr, epochs=args.epochs, lora_r=args.lora_r,
                                       lora_alpha=2 * args.lora_r)
    eval_sampling = DEMO_SAMPLING if args.eval_n > 1 else dataclasses.replace(DEMO_SAMPLING, temperature=0.0)
    config.eval = EvalConfig(prompts=PromptsConfig(task=dataclasses.replace(DEMO_TASK, seed=9001, size=args.eval_prompts)),
                             scorer="task", n=args.eval_n, sampling=eval_sampling, pass_threshold=1.0, kl_samples=1,
                             kl_max_new_tokens=8)
    config.rounds = RoundsConfig(rounds=1, train=True, control=args.control)
    how = f"{args.eval_n} samples each at T={DEMO_SAMPLING.temperature}" if args.eval_n > 1 else "greedy"
    print(f"\nRSFT round: LoRA r={args.lora_r}, lr {args.lr:g}, {args.epochs:g} epochs on the kept set; held-out "
          f"eval ({how}) of base, RSFT{' and a control trained on as many random completions' if args.control else ''}",
          flush=True)
    summary = rounds.run_rounds(config)
    r = summary["rounds"][0]
    base = summary["baseline"]
    rows = [("base", base["metric"], base.get("kl")), ("RSFT round 1", r["metric"], r.get("kl"))]
    if args.control:
        rows.append(("random control", r["control"]["metric"], r["control"].get("kl")))
    print(f"\n{'held-out (' + str(base['metric']['n']) + ' prompts)':24}{'accuracy':>9}  {'95% CI':>15}  "
          f"{'KL from base':>14}  {'train loss first -> last':>24}")
    arm_dirs = {"RSFT round 1": config.run_dir / "round-000",
                "random control": config.run_dir / "round-000" / artifacts.CONTROL}
    losses = {name: train_summary(folder) for name, folder in arm_dirs.items()}
    for name, m, kl in rows:
        kl_text = f"{kl['mean']:.3f} ± {kl['stderr']:.3f}" if kl else "-"
        loss = losses.get(name)
        loss_text = f"{loss['first']:.3f} -> {loss['last']:.3f} ({loss['steps']} steps)" if loss else "-"
        print(f"{name:24}{m['value']:9.1%}  [{m['ci_low']:.2f}, {m['ci_high']:.2f}]  {kl_text:>14}  {loss_text:>24}")
    print(f"decision: {'promoted' if r['promoted'] else 'not promoted'} ({r['reason']})")
    if args.control:
        diff = r["metric"]["value"] - r["control"]["metric"]["value"]
        print(f"RSFT - control: {100 * diff:+.1f} points (docs/rsft-demo.md: what this does and does not show)")
    print(f"report: rsft report {config.run_dir}")
    out = {"base": base["metric"], "rsft": r["metric"], "kl": r.get("kl"), "promoted": r["promoted"],
           "kept": r["kept"], "train": losses.get("RSFT round 1"), "eval_n": args.eval_n,
           "lr": args.lr, "epochs": args.epochs, "lora_r": args.lora_r}
    if args.control:
        out.update(control=r["control"]["metric"], control_kl=r["control"].get("kl"),
                   control_train=losses.get("random control"))
    return out


def train_summary(arm_dir: Path) -> dict | None:
    """First and last logged training loss of an arm, with its step and row counts, training wall time
    and peak RSS (from ``rsft_train.json``); None before the arm has trained."""
    log = arm_dir / artifacts.TRAIN_LOG
    info = arm_dir / artifacts.CHECKPOINT / artifacts.TRAIN_INFO
    if not log.exists() or not info.exists():
        return None
    records = [record for _, record in artifacts.read_jsonl(log)]
    meta = json.loads(info.read_text(encoding="utf-8"))
    if not records:
        return None
    return {"first": records[0]["loss"], "last": records[-1]["loss"], "steps": meta["steps"], "rows": meta.get("rows"),
            "train_s": meta["train_s"], "peak_rss_mb": meta.get("peak_rss_mb")}


def accuracies(R_greedy: np.ndarray, R: np.ndarray) -> dict[str, float]:
    """Exact-answer accuracies: reasoning-gym gives partial credit (e.g. 0.01) to wrong answers."""
    correct = R >= 1.0
    return {"greedy_accuracy": float((R_greedy >= 1.0).mean()), "mean_sampled_accuracy": float(correct.mean()),
            "best_of_n_accuracy": float(correct.any(axis=1).mean())}


if __name__ == "__main__":
    sys.exit(main())
