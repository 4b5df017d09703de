"""``python -m rsft.demos.compare`` (``make compare``): is rejection sampling enough, or do I need RL? RSFT against GRPO, a
random-sample control and the base model, on one task, one held-out set and one sample budget, over
several seeds.

The arms, every one trained from the same base with the same LoRA, learning rate, batch and epochs:

- ``base``: the model as it is (greedy decoding is deterministic, so one eval serves every seed);
- ``rsft``: ``--rounds`` rounds of N samples for each of M questions, the best correct answer of each
  question kept (checker score 1), SFT on the kept set, each round from the last round's policy;
- ``control``: the same rounds, but each round trains on one random sample of its *own* policy for
  as many random questions as RSFT kept: what the same amount of self-training gives without selection;
- ``grpo``: TRL's ``GRPOTrainer`` on the same M questions per round with N completions each, the same
  checker as its reward: the same number of generated samples as RSFT.

Every policy answers the held-out questions greedily with a budget that does not bind
(``--long-budget``). The accuracy at the training budget (``--budget``) is read from the first
``budget`` tokens of the same answers: greedy decoding writes the same tokens up to there, so one
decode gives both, and with them the share of answers that finished and their mean length. A gain at
the training budget that is gone at the long one is brevity, not skill.

Per arm: accuracy per seed, the mean with a t-interval across seeds, a paired test against the
control (and the base) over the same questions, KL from the base, samples, completion tokens and
wall time. Every step writes its files and is skipped on a rerun when they are intact, so an
interrupted study resumes. Results: ``compare.json``, ``compare.md`` and ``compare.png`` in the
study folder.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rsft import artifacts, matrix, pipeline, stages
from rsft.config import (
    EvalConfig,
    GenerationConfig,
    GeneratorConfig,
    PromptsConfig,
    RoundsConfig,
    RunConfig,
    ScoringConfig,
    SelectionConfig,
    TaskConfig,
)
from rsft.demos.demo_real import CHAIN_TEMPLATE, MODEL, SAMPLING, TRAIN
from rsft.errors import RsftError
from rsft.generate import LocalModel
from rsft.rounds import loop as rounds
from rsft.stats import mean_ci, paired_test
from rsft.train.sft import GRPO_SAMPLERS
from rsft.types import Prompt, unwrap_verdict

ARMS = ("base", "rsft", "control", "grpo")
VERSUS = ("control", "base", "grpo")
"""The arms every other arm is tested against, paired on the same questions: the control (does the
selection matter?), the base (did training help?) and GRPO (is rejection sampling enough?)."""


@dataclasses.dataclass(frozen=True)
class Study:
    """One comparison: what is trained, on what, and how it is judged."""

    out: Path
    model: str = MODEL
    task: str = "chain_sum"
    scorer: str = "math"
    seeds: tuple[int, ...] = (0, 1, 2)
    arms: tuple[str, ...] = ARMS
    rounds: int = 1
    prompts_per_round: int = 24
    n: int = 4
    eval_prompts: int = 96
    budget: int = 160
    long_budget: int = 384
    learning_rate: float = TRAIN.learning_rate
    grpo_learning_rate: float | None = None
    grpo_generation_batch: int = 48
    """Completions GRPO samples at once: 48 = 12 questions x 4, feeding 6 optimizer steps of 8 with
    TRL's clipped importance ratio (verl's default ratio of rollout to mini-batch is 4); on 2 CPU
    cores TRL's sampling through ``model.generate`` is the slow part: 8 rows at a time (fully
    on-policy) took 350 s per optimizer step."""
    grpo_sampler: str = "rsft"
    """What samples GRPO's completions (``rsft.train.sft.GRPO_SAMPLERS``): ``rsft``'s decoding loop on the
    policy being trained (about 4x TRL's ``model.generate`` on a peft model on CPU), or ``trl``."""
    kl_prompts: int = 32

    def task_config(self, seed: int, size: int) -> TaskConfig:
        return TaskConfig(name=self.task, seed=seed, size=size, shots=0, template=CHAIN_TEMPLATE, chat=True)

    def run_config(self, seed: int) -> RunConfig:
        """The RSFT rounds of ``seed`` (the control lives in each round's ``control/`` folder)."""
        sampling = dataclasses.replace(SAMPLING, max_new_tokens=self.budget, seed=seed)
        train = dataclasses.replace(TRAIN, learning_rate=self.learning_rate, merge=False, seed=seed)
        return RunConfig(
            name="rsft", out=str(self.out / f"seed-{seed}"),
            prompts=PromptsConfig(task=self.task_config(1, self.rounds * self.prompts_per_round)),
            generation=GenerationConfig(n=self.n, generator=GeneratorConfig("hf", self.model), sampling=sampling),
            scoring=ScoringConfig(scorer=self.scorer), selection=SelectionConfig(strategy="best", threshold=1.0),
            train=train,
            eval=EvalConfig(prompts=PromptsConfig(task=self.task_config(9001, self.eval_prompts)), scorer=self.scorer,
                            kl_samples=1, kl_max_new_tokens=48, kl_prompts=self.kl_prompts),
            rounds=RoundsConfig(rounds=self.rounds, train=True, prompts_per_round=self.prompts_per_round,
                                refresh="rotate", seed=seed, control=True, control_mode="chain"))


# --- training the arms ---------------------------------------------------------------------------


def train_rsft_and_control(study: Study, seed: int, policies: rounds.Policies) -> dict[str, str]:
    """The RSFT rounds and the control's rounds of ``seed``; returns each arm's last policy."""
    config = study.run_config(seed)
    pool = pipeline.load_prompt_set(config.prompts)
    current = control = study.model
    for k in range(study.rounds):
        rd = pipeline.round_dir(config, k)
        result = pipeline.run_round(rounds.with_policy(config, current), k, generator=policies.generator(current),
                                    prompts=rounds.round_prompts(pool, k, config), quiet=True, write_config=False)
        kept = result.export["rows"]
        policies.release()
        if kept == 0:  # nothing correct to learn from: both arms keep their policy this round
            stages.warn(f"{rd}: no sample was correct; RSFT and the control skip training this round")
            continue
        current = rounds.train_arm(rd, config, current)
        rounds.write_own_control_set(rd, config, policies, control, kept, seed=seed * 1000 + k)
        policies.release()
        control = rounds.train_arm(rd / artifacts.CONTROL, config, control)
    return {"rsft": current, "control": control}


def train_grpo_arm(study: Study, seed: int) -> str:
    """GRPO rounds of ``seed`` on the same questions per round as RSFT; returns the last policy."""
    from rsft.train.sft import train_grpo

    config = study.run_config(seed)
    pool = pipeline.load_prompt_set(config.prompts)
    train = dataclasses.replace(config.train, learning_rate=study.grpo_learning_rate or study.learning_rate)
    current = study.model
    for k in range(study.rounds):
        out = grpo_round_dir(study, seed, k)
        train_grpo(out, rounds.round_prompts(pool, k, config), study.scorer, train, config.generation.sampling,
                   study.n, current, generation_batch=study.grpo_generation_batch, sampler=study.grpo_sampler)
        current = str(out / artifacts.CHECKPOINT)
    return current


def grpo_round_dir(study: Study, seed: int, k: int) -> Path:
    """GRPO's round ``k`` of ``seed``: ``seed-S/grpo/round-00K`` beside RSFT's ``seed-S/rsft/round-00K``."""
    return pipeline.round_dir(dataclasses.replace(study.run_config(seed), name="grpo"), k)


def arm_cost(study: Study, seed: int, arm: str) -> dict[str, float]:
    """Samples generated, their completion tokens, wall seconds (sampling, scoring, training) and the
    part of them spent sampling, of one trained arm, read from its round folders' manifests and checkpoints."""
    samples = tokens = wall = sampling = 0.0
    for k in range(study.rounds):
        if arm == "grpo":
            info_path = grpo_round_dir(study, seed, k) / artifacts.CHECKPOINT / artifacts.TRAIN_INFO
            if info_path.is_file():
                info = json.loads(info_path.read_text(encoding="utf-8"))
                samples, tokens, wall = samples + info["samples"], tokens + info["completion_tokens"], wall + info["wall_s"]
                sampling += info.get("sampling_s") or 0.0
            continue
        rd = pipeline.round_dir(study.run_config(seed), k)
        folder = rd if arm == "rsft" else rd / artifacts.CONTROL  # the control samples into its own folder
        if not (folder / artifacts.COMPLETIONS).is_file():
            continue
        counts = matrix.read_completions(folder / artifacts.COMPLETIONS, matrix.read_prompts(folder / artifacts.PROMPTS)).n_tokens
        samples += float(np.isfinite(counts).sum())
        tokens += float(np.nansum(counts))
        stages_done = artifacts.read_manifest(folder).get("stages", {})
        wall += sum(float(s.get("wall_s", 0.0)) for s in stages_done.values())
        sampling += float(stages_done.get("generate", {}).get("wall_s", 0.0))
    return {"samples": samples, "completion_tokens": tokens, "wall_s": round(wall, 3), "sampling_s": round(sampling, 3)}


# --- held-out eval -------------------------------------------------------------------------------


def evaluate_policy(study: Study, folder: Path, checkpoint: str, policies: rounds.Policies,
                    prompts: list[Prompt]) -> dict[str, Any]:
    """Greedy answers of ``checkpoint`` to ``prompts`` at the long budget, scored at both budgets, and
    KL from the base; written to ``folder/eval.json`` and reused while the checkpoint is the same."""
    key = rounds.checkpoint_key({"study": [study.model, study.scorer, study.budget, study.long_budget, study.kl_prompts],
                                 "checkpoint": checkpoint, "prompts": [p.prompt_id for p in prompts]}, checkpoint)
    path = folder / artifacts.EVAL
    old = artifacts.read_if_key(path, key)
    if old is not None:
        return old
    greedy = dataclasses.replace(SAMPLING, temperature=0.0, top_k=0, max_new_tokens=study.long_budget)
    # every question in one batch: rsft's decode loop drops finished rows, so one pass at 96 rows costs less
    # than 64 + 32 rows that both run to the longest answer
    gen = GenerationConfig(n=1, sampling=greedy, shard_size=max(64, len(prompts)),
                           generator=GeneratorConfig("hf", checkpoint, {"batch_size": len(prompts)}))
    samples = folder / artifacts.EVAL_SAMPLES

    def generator() -> Any:
        policies.release()  # before loading: one model in memory at a time
        policies.add(checkpoint, pipeline.build_generator(gen))
        return policies.generator(checkpoint)

    stages.generate(samples, gen, generator, prompts)
    comps = matrix.read_completions(samples / artifacts.COMPLETIONS, prompts)
    texts = [row[0] or "" for row in comps.texts]
    n_tokens = comps.n_tokens[:, 0]
    finished = np.array([reason == "stop" for reason in comps.table.column("finish_reason").to_pylist()])
    policy = policies.generator(checkpoint)
    if not isinstance(policy, LocalModel):
        raise RsftError(f"compare: {checkpoint} must load as a local model (hf)")
    short_texts = [truncate_tokens(policy.tokenizer, t, study.budget) for t in texts]
    del policy
    scorer = pipeline.build_scorer(ScoringConfig(scorer=study.scorer))
    long_ok = correct(scorer, prompts, texts)
    short_ok = correct(scorer, prompts, short_texts)
    short_finished = finished & (n_tokens <= study.budget)
    result = {
        "key": key, "checkpoint": checkpoint, "questions": len(prompts),
        "budget": {"tokens": study.budget, "accuracy": float(short_ok.mean()), "finished": float(short_finished.mean()),
                   "correct": short_ok.astype(int).tolist()},
        "long_budget": {"tokens": study.long_budget, "accuracy": float(long_ok.mean()),
                        "finished": float(finished.mean()), "mean_tokens": float(np.nanmean(n_tokens)),
                        "correct": long_ok.astype(int).tolist()},
        "kl": rounds.kl_from_base(study.run_config(0), policies, checkpoint, study.model, prompts, folder),
    }
    artifacts.write_json(path, result)
    return result


def truncate_tokens(tokenizer: Any, text: str, budget: int) -> str:
    """``text`` cut to its first ``budget`` tokens: what a decode with that budget would have written."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return text if len(ids) <= budget else tokenizer.decode(ids[:budget], skip_special_tokens=True)


def correct(scorer: Any, prompts: Sequence[Prompt], texts: Sequence[str]) -> np.ndarray:
    """1 where the checker scores an answer 1 (or more), else 0."""
    values = scorer.score([p.prompt for p in prompts], list(texts), [p.metadata for p in prompts])
    return np.array([float(unwrap_verdict(v)[0]) >= 1.0 for v in values], dtype=bool)


def summarize(study: Study, evals: dict[str, dict[int, dict[str, Any]]],
              costs: dict[str, dict[int, dict[str, float]]]) -> dict[str, Any]:
    """The head-to-head: per arm, per seed and mean with CI at both budgets, finished share, mean
    length, KL, cost, and paired tests against the control and the base."""
    table: dict[str, Any] = {}
    # each arm's 0/1 answers, seeds x questions, per budget: the paired tests' input, and kept in compare.json
    answers = {arm: {budget: _correct(per_seed, budget) for budget in ("budget", "long_budget")}
               for arm, per_seed in evals.items()}
    for arm, per_seed in evals.items():
        seeds = sorted(per_seed)
        row: dict[str, Any] = {"seeds": seeds}
        for budget in ("budget", "long_budget"):
            row[budget] = {"accuracy": mean_ci([per_seed[s][budget]["accuracy"] for s in seeds]),
                           "finished": mean_ci([per_seed[s][budget]["finished"] for s in seeds])}
        row["long_budget"]["mean_tokens"] = mean_ci([per_seed[s]["long_budget"]["mean_tokens"] for s in seeds])
        kls = [per_seed[s]["kl"]["mean"] for s in seeds if per_seed[s].get("kl")]
        row["kl"] = mean_ci(kls) if kls else None
        cost = [costs.get(arm, {}).get(s) for s in seeds]
        if all(c is not None for c in cost):
            row["cost"] = {key: mean_ci([c[key] for c in cost])
                           for key in ("samples", "completion_tokens", "wall_s", "sampling_s")}
        for other in VERSUS:
            if other in evals and other != arm:
                row[f"vs_{other}"] = {budget: paired_test(mine, answers[other][budget])
                                      for budget, mine in answers[arm].items()}
        # so that any other pair of arms can be tested later
        row["correct"] = {budget: mine.astype(int).tolist() for budget, mine in answers[arm].items()}
        table[arm] = row
    return {"study": {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(study).items()},
            "arms": table}


def _correct(per_seed: dict[int, dict[str, Any]], budget: str) -> np.ndarray:
    return np.array([per_seed[s][budget]["correct"] for s in sorted(per_seed)])


# --- report --------------------------------------------------------------------------------------


def _pct(ci: dict[str, Any]) -> str:
    """``mean [low, high]`` in percent, the interval clipped to what an accuracy can be."""
    text = f"{ci['mean']:.1%}"
    if ci["ci_low"] is None:
        return text
    return text + f" [{max(ci['ci_low'], 0.0):.1%}, {min(ci['ci_high'], 1.0):.1%}]"


def _per_seed(ci: dict[str, Any]) -> str:
    return " / ".join(f"{v:.1%}" for v in ci["values"])


def _vs(row: dict[str, Any], other: str, budget: str) -> str:
    t = row.get(f"vs_{other}", {}).get(budget)
    return "-" if t is None else f"{t['difference']:+.1%} (p = {t['p_value']:.3g}; {t['a_only']} vs {t['b_only']})"


def markdown(summary: dict[str, Any]) -> str:
    """The head-to-head tables as Markdown."""
    s = summary["study"]
    arms = summary["arms"]
    lines = [f"Model `{s['model']}`, task `{s['task']}`, checker `{s['scorer']}`; {s['rounds']} round(s) of "
             f"{s['prompts_per_round']} questions x {s['n']} samples per arm and seed; {s['eval_prompts']} held-out "
             f"questions, greedy; seeds {', '.join(map(str, s['seeds']))}.", ""]
    for budget, title in (("budget", f"training budget, {s['budget']} tokens"),
                          ("long_budget", f"budget that does not bind, {s['long_budget']} tokens")):
        lines += [f"**Held-out accuracy at the {title}** (mean [95% t-interval across seeds]; paired tests: "
                  "difference of the means, sign-flip p-value over questions, discordant answers)", "",
                  "| arm | per seed | mean [CI] | finished | " + " | ".join(f"vs {o}" for o in VERSUS) + " |",
                  "|---|---|---|---|" + "---|" * len(VERSUS)]
        for arm, row in arms.items():
            b = row[budget]
            lines.append(f"| {arm} | {_per_seed(b['accuracy'])} | {_pct(b['accuracy'])} | {b['finished']['mean']:.1%} | "
                         + " | ".join(_vs(row, o, budget) for o in VERSUS) + " |")
        lines.append("")
    lines += ["**Cost and drift** (means over seeds)", "",
              "| arm | mean answer tokens (long budget) | KL from base | samples | completion tokens | wall s (sampling) | wall s per seed |",
              "|---|---|---|---|---|---|---|"]
    for arm, row in arms.items():
        kl = row.get("kl")
        cost = row.get("cost")
        kl_text = f"{kl['mean']:.2f}" if kl else "-"
        per_seed = ", ".join(f"{v:.0f}" for v in cost["wall_s"]["values"]) if cost else ""
        cost_text = (f"{cost['samples']['mean']:.0f} | {cost['completion_tokens']['mean']:.0f} | "
                     f"{cost['wall_s']['mean']:.0f} ({cost['sampling_s']['mean']:.0f}) | {per_seed}") if cost else "- | - | - | -"
        lines.append(f"| {arm} | {row['long_budget']['mean_tokens']['mean']:.0f} | {kl_text} | {cost_text} |")
    return "\n".join(lines) + "\n"


def plot(summary: dict[str, Any], path: Path) -> None:
    """Accuracy per arm at both budgets: bars at the mean, the seeds as dots, the t-interval as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = list(summary["arms"])
    s = summary["study"]
    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=110)
    width = 0.38
    for j, (budget, label) in enumerate((("budget", f"{s['budget']} tokens (training budget)"),
                                         ("long_budget", f"{s['long_budget']} tokens (does not bind)"))):
        xs = np.arange(len(arms)) + (j - 0.5) * width
        acc = [summary["arms"][a][budget]["accuracy"] for a in arms]
        ax.bar(xs, [c["mean"] for c in acc], width, label=label, alpha=0.75)
        for x, c in zip(xs, acc, strict=True):
            ax.scatter([x] * len(c["values"]), c["values"], color="black", s=9, zorder=3)
            if c["ci_low"] is not None:
                ax.plot([x, x], [max(c["ci_low"], 0.0), min(c["ci_high"], 1.0)], color="black", linewidth=1)
    ax.set_xticks(np.arange(len(arms)), arms)
    ax.set_ylabel("held-out accuracy")
    ax.set_ylim(0, 1)
    ax.set_title(f"{s['task']}: {s['eval_prompts']} held-out questions, seeds {', '.join(map(str, s['seeds']))}")
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    with artifacts.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


# --- the study -----------------------------------------------------------------------------------


def run(study: Study) -> dict[str, Any]:
    """Train and evaluate every arm for every seed, then write the tables and the plot."""
    unknown = set(study.arms) - set(ARMS)
    if unknown or not study.arms:
        raise RsftError(f"--arms: expected some of {', '.join(ARMS)}, got {', '.join(sorted(unknown)) or 'none'}")
    if study.budget >= study.long_budget:
        raise RsftError(f"--long-budget ({study.long_budget}) must be above --budget ({study.budget})")
    study.out.mkdir(parents=True, exist_ok=True)
    config = study.run_config(study.seeds[0])
    pool = pipeline.load_prompt_set(config.prompts)
    held = rounds.held_out(pipeline.load_prompt_set(config.eval.prompts), pool)
    policies = rounds.Policies(config)
    evals: dict[str, dict[int, dict[str, Any]]] = {arm: {} for arm in study.arms}
    costs: dict[str, dict[int, dict[str, float]]] = {arm: {} for arm in study.arms if arm != "base"}
    started = time.time()
    if "base" in study.arms:
        base_eval = evaluate_policy(study, study.out / "base", study.model, policies, held)
        evals["base"] = dict.fromkeys(study.seeds, base_eval)
        _say(f"base: {_brief(base_eval)}", started)
    for seed in study.seeds:
        sdir = study.out / f"seed-{seed}"
        trained: dict[str, str] = {}
        if {"rsft", "control"} & set(study.arms):
            trained.update(train_rsft_and_control(study, seed, policies))
        if "grpo" in study.arms:
            policies.release()
            trained["grpo"] = train_grpo_arm(study, seed)
        for arm in ("rsft", "control", "grpo"):
            if arm in study.arms:
                evals[arm][seed] = evaluate_policy(study, sdir / "eval" / arm, trained[arm], policies, held)
                costs[arm][seed] = arm_cost(study, seed, arm)
                _say(f"seed {seed} {arm}: {_brief(evals[arm][seed])}", started)
    policies.release()
    summary = summarize(study, evals, costs)
    summary["wall_s"] = round(time.time() - started, 1)
    artifacts.write_json(study.out / "compare.json", summary)
    artifacts.write_text(study.out / "compare.md", markdown(summary))
    plot(summary, study.out / "compare.png")
    return summary


def _brief(ev: dict[str, Any]) -> str:
    s, long = ev["budget"], ev["long_budget"]
    kl = ev.get("kl")
    return (f"{s['accuracy']:.1%} at {s['tokens']} tokens ({s['finished']:.0%} finished), {long['accuracy']:.1%} at "
            f"{long['tokens']} ({long['finished']:.0%} finished, {long['mean_tokens']:.0f} tokens)"
            + (f", KL {kl['mean']:.2f}" if kl else ""))


def _say(text: str, started: float) -> None:
    print(f"[{time.time() - started:6.0f} s] {text}", flush=True)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m rsft.demos.compare", description=__doc__.splitlines()[0])
    d = Study(out=Path("runs"))
    p.add_argument("--out", default=None, help="study folder (default: runs/compare-TASK)")
    p.add_argument("--model", default=d.model, help=f"base model: an embedded name or a folder (default {d.model})")
    p.add_argument("--task", default=d.task, help=f"reasoning-gym task (default {d.task})")
    p.add_argument("--scorer", default=d.scorer, help="checker: RSFT's filter, GRPO's reward and the eval (default math)")
    p.add_argument("--seeds", type=int, nargs="+", default=list(d.seeds), help="seeds (default 0 1 2)")
    p.add_argument("--arms", nargs="+", default=list(d.arms), choices=ARMS, help="arms (default all)")
    p.add_argument("--rounds", type=int, default=d.rounds, help="rounds per trained arm (default 1)")
    p.add_argument("--prompts-per-round", type=int, default=d.prompts_per_round, help="questions per round (M)")
    p.add_argument("-n", type=int, default=d.n, help="samples per question (N; GRPO's group size)")
    p.add_argument("--eval-prompts", type=int, default=d.eval_prompts, help="held-out questions")
    p.add_argument("--budget", type=int, default=d.budget, help="training budget in new tokens (default 160)")
    p.add_argument("--long-budget", type=int, default=d.long_budget, help="eval budget that does not bind (default 384)")
    p.add_argument("--lr", type=float, default=d.learning_rate, help="LoRA learning rate of every arm")
    p.add_argument("--grpo-lr", type=float, default=None, help="GRPO's learning rate, if it should differ")
    p.add_argument("--grpo-generation-batch", type=int, default=d.grpo_generation_batch,
                   help="completions GRPO samples at once (default 48: 6 optimizer steps per batch)")
    p.add_argument("--grpo-sampler", default=d.grpo_sampler, choices=GRPO_SAMPLERS,
                   help="what samples GRPO's completions: rsft's decoding loop on the live policy (default) or TRL's")
    p.add_argument("--kl-prompts", type=int, default=d.kl_prompts, help="held-out questions KL is estimated on")
    return p


def main(argv: list[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    study = Study(out=Path(a.out or f"runs/compare-{a.task}"), model=a.model, task=a.task, scorer=a.scorer,
                  seeds=tuple(a.seeds), arms=tuple(dict.fromkeys(a.arms)), rounds=a.rounds,
                  prompts_per_round=a.prompts_per_round, n=a.n, eval_prompts=a.eval_prompts, budget=a.budget,
                  long_budget=a.long_budget, learning_rate=a.lr, grpo_learning_rate=a.grpo_lr,
                  grpo_generation_batch=a.grpo_generation_batch, grpo_sampler=a.grpo_sampler, kl_prompts=a.kl_prompts)
    try:
        summary = run(study)
    except RsftError as e:
        print(f"rsft compare: {e}", file=sys.stderr)
        return 2
    print(markdown(summary))
    print(f"study folder: {study.out} (compare.json, compare.md, compare.png); {summary['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
