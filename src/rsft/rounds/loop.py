"""RSFT rounds: generate -> score -> select -> train -> held-out eval gate, K times.

Round k samples from the current policy (the base model, or the last promoted checkpoint),
keeps the best completions, fine-tunes the *current policy* on them, and evaluates the result on
held-out prompts that selection never sees. The checkpoint is promoted only when its eval metric
beats the best so far by the configured margin; otherwise the run keeps the previous policy and
records why. KL(policy || base) is estimated beside the metric, and an optional control arm trains
on random completions so users can see whether selection by reward beat chance.

Every step writes its files into the round folder and is skipped on a rerun when they are intact.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np

from rsft import artifacts, matrix, pipeline, stages
from rsft.config import (
    GenerationConfig,
    GeneratorConfig,
    RunConfig,
    SamplingConfig,
    ScoringConfig,
    dump_config,
)
from rsft.config.checks import check_eval, check_rounds, check_run
from rsft.errors import RsftError
from rsft.generate import Generator, LocalModel
from rsft.rounds.rm_check import gate_round
from rsft.types import Prompt

# --- prompt refresh ------------------------------------------------------------------------------


def round_prompts(pool: list[Prompt], index: int, config: RunConfig) -> list[Prompt]:
    """The prompts of round ``index``: all of them, a seeded sub-sample, or a rotating slice."""
    r = config.rounds
    check_rounds(r)
    size = r.prompts_per_round
    if size is None or size >= len(pool):
        return list(pool)
    if r.refresh == "subsample":
        rng = random.Random(f"{r.seed}:{index}")
        picked = sorted(rng.sample(range(len(pool)), size))
    else:  # rotate
        order = list(range(len(pool)))
        random.Random(r.seed).shuffle(order)
        start = (index * size) % len(pool)
        picked = sorted((order * 2)[start : start + size])
    return [pool[i] for i in picked]


# --- policies ------------------------------------------------------------------------------------


class Policies:
    """The generator of one checkpoint at a time: asking for another releases the one held.

    A round needs the current policy (sampling), the new checkpoint and the control (eval) and the
    base (KL), but never two at once: holding one keeps peak memory at one model (plus training,
    which loads its own copy after :meth:`release`). Reloading a cached checkpoint takes seconds.
    """

    def __init__(self, config: RunConfig) -> None:
        self.config = config
        self._model: str | None = None
        self._generator: Generator | None = None
        self.loads = 0
        """How many generators were built (for tests and the demo's timing)."""

    def add(self, model: str, generator: Generator) -> None:
        """Use an existing generator for ``model`` (e.g. the caller's already loaded base)."""
        self.release()
        self._model, self._generator = model, generator

    def generator(self, model: str) -> Generator:
        if self._model != model or self._generator is None:
            self.release()
            g = self.config.generation.generator
            gen_config = dataclasses.replace(self.config.generation, mix=[],
                                             generator=GeneratorConfig(g.backend, model, self.options()))
            self._generator = pipeline.build_generator(gen_config)
            self._model = model
            self.loads += 1
        return self._generator

    def release(self) -> None:
        """Drop the held generator (and its model) so the memory can be reused; also frees what a
        finished training left behind, so call it before loading the next model."""
        from rsft.models import release_memory

        self._model, self._generator = None, None
        release_memory()

    def options(self) -> dict[str, Any]:
        """The generator options of every policy. A vLLM engine that will serve the rounds' LoRA
        adapters (``train.merge: false``) is started able to, so the base and every round share it."""
        g, t = self.config.generation.generator, self.config.train
        options = dict(g.options)
        if g.backend == "vllm" and self.config.rounds.train and t.lora and not t.merge:
            options.setdefault("enable_lora", True)
            options.setdefault("max_lora_rank", t.lora_r)
        return options

    def logprobs(self, model: str, prompts: list[str], completions: list[str]) -> list[float]:
        """``log p(completion | prompt)`` under a checkpoint, for KL. ``hf``: by the generator (the
        model it samples with). Other backends: by transformers for the policy and the base alike, so
        the two sides of the estimate come from the same kernels (vLLM's and transformers' bf16
        log-probs differ by more than KL's resolution) and no engine is started just to score."""
        if self.config.generation.generator.backend == "hf":
            g = self.generator(model)
            if isinstance(g, LocalModel):
                return g.sequence_logprobs(prompts, completions)
        from rsft.train.logprobs import checkpoint_logprobs

        self.release()
        return checkpoint_logprobs(model, prompts, completions)


# --- eval ----------------------------------------------------------------------------------------


def metric_with_ci(R: np.ndarray, pass_threshold: float | None = None) -> dict[str, Any]:
    """Mean reward per prompt, averaged; 95% CI (Wilson for 0/1 rewards with one sample, else normal).

    With ``pass_threshold`` the rewards are first turned into 0/1 (at or above the threshold).
    """
    if pass_threshold is not None:
        R = np.where(np.isnan(R), np.nan, (R >= pass_threshold).astype(float))
    per_prompt = np.array([np.nanmean(row) if np.isfinite(row).any() else 0.0 for row in R], dtype=float)
    m = len(per_prompt)
    mean = float(per_prompt.mean()) if m else math.nan
    binary = R.shape[1] == 1 and np.isin(R[np.isfinite(R)], (0.0, 1.0)).all()
    if binary and m:
        z, p = 1.96, mean
        centre = (p + z * z / (2 * m)) / (1 + z * z / m)
        half = z * math.sqrt(p * (1 - p) / m + z * z / (4 * m * m)) / (1 + z * z / m)
        low, high = centre - half, centre + half
    else:
        se = float(per_prompt.std(ddof=1) / math.sqrt(m)) if m > 1 else math.nan
        low, high = mean - 1.96 * se, mean + 1.96 * se
    name = "accuracy" if binary or pass_threshold is not None else "mean_reward"
    return {"name": name, "value": mean, "ci_low": low, "ci_high": high, "n": m}


def question_key(p: Prompt) -> str:
    """What makes two prompts the same question: a task entry's question, else the prompt id."""
    entry = p.metadata.get("entry")
    return str(entry["question"]) if isinstance(entry, dict) and "question" in entry else p.prompt_id


def held_out(eval_prompts: list[Prompt], pool: list[Prompt]) -> list[Prompt]:
    """The eval prompts minus any question that is also in the training pool (warned, never silent)."""
    seen = {question_key(p) for p in pool}
    kept = [p for p in eval_prompts if question_key(p) not in seen]
    if not kept:
        raise RsftError("eval.prompts: every eval question is also in the training prompts; use another seed or file")
    if len(kept) < len(eval_prompts):
        stages.warn(f"eval: dropped {len(eval_prompts) - len(kept)} eval prompts whose question is also a "
                    "training prompt (the eval must be held out)")
    return kept


def evaluate(config: RunConfig, policies: Policies, model: str, base: str, out: Path,
             prompts: list[Prompt]) -> dict[str, Any]:
    """Held-out metric (with CI) of ``model`` and its KL from ``base``; files under ``out/eval*``.

    Called only when ``eval.json`` is missing or stale, so the derived eval folders are redone from
    scratch: a retrained checkpoint at the same path must never reuse the old one's samples.
    """
    for derived in (artifacts.EVAL_SAMPLES, artifacts.KL_SAMPLES):
        shutil.rmtree(out / derived, ignore_errors=True)
    e = config.eval
    gen = GenerationConfig(n=e.n, sampling=e.sampling, shard_size=config.generation.shard_size,
                           generator=GeneratorConfig(config.generation.generator.backend, model))
    samples = out / artifacts.EVAL_SAMPLES
    stages.generate(samples, gen, lambda: policies.generator(model), prompts)
    scoring = ScoringConfig(scorer=e.scorer, options=e.options, on_error="fail")
    stages.score(samples, scoring, pipeline.build_scorer(scoring), shard_size=gen.shard_size)
    R, _ = matrix.read_rewards(samples / artifacts.REWARDS, [p.prompt_id for p in prompts])
    if np.isnan(R).any():
        raise RsftError(f"{samples}: the eval scorer failed on {int(np.isnan(R).sum())} pairs; "
                        "an eval that cannot score is never a reason to promote")
    return {"metric": metric_with_ci(R, e.pass_threshold), "kl": kl_from_base(config, policies, model, base, prompts, out)}


def kl_from_base(config: RunConfig, policies: Policies, model: str, base: str, prompts: list[Prompt],
                 out: Path) -> dict[str, Any] | None:
    """Monte Carlo KL(policy || base): samples from the policy at temperature 1 without filters."""
    e = config.eval
    if e.kl_samples < 1:
        return None
    from rsft.train.logprobs import kl_estimate

    check_eval(e)
    if e.kl_prompts is not None:
        prompts = prompts[: e.kl_prompts]
    if model == base:  # KL(base || base) is 0 exactly: nothing to sample
        zeros = [0.0] * (len(prompts) * e.kl_samples)
        return kl_estimate(zeros, zeros)
    sampling = SamplingConfig(temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=e.kl_max_new_tokens, seed=1)
    gen = GenerationConfig(n=e.kl_samples, sampling=sampling, shard_size=config.generation.shard_size,
                           generator=GeneratorConfig(config.generation.generator.backend, model))
    stages.generate(out / artifacts.KL_SAMPLES, gen, lambda: policies.generator(model), prompts)
    comps = matrix.read_completions(out / artifacts.KL_SAMPLES / artifacts.COMPLETIONS, prompts)
    policy = policies.generator(model)
    if not isinstance(policy, LocalModel) and any(p.is_chat for p in prompts):
        raise RsftError(f"eval: KL on chat prompts needs a backend that renders them (hf, vllm), not "
                        f"{config.generation.generator.backend!r}")
    render = policy.render if isinstance(policy, LocalModel) else str
    flat_prompts = [render(p.prompt) for p in prompts for _ in range(e.kl_samples)]
    del policy, render  # would keep the policy's model alive while the base is loaded
    texts = [t for row in comps.texts for t in row]
    lp_policy = policies.logprobs(model, flat_prompts, texts)
    return kl_estimate(lp_policy, policies.logprobs(base, flat_prompts, texts))


# --- one round -----------------------------------------------------------------------------------


def train_arm(arm_dir: Path, config: RunConfig, start: str) -> str:
    """Fine-tune ``start`` on ``arm_dir/selected.jsonl`` unless an intact checkpoint exists; returns it."""
    from rsft.train.sft import train

    checkpoint = arm_dir / artifacts.CHECKPOINT
    key = {"base_model": start, **dataclasses.asdict(config.train)}
    info = f"{artifacts.CHECKPOINT}/{artifacts.TRAIN_INFO}"
    if not artifacts.stage_is_current(arm_dir, "train", key, [artifacts.SELECTED], [info]):
        train(arm_dir, config.train, base_model=start)
    return str(checkpoint)


def write_control_set(round_dir: Path, count: int, seed: int) -> int:
    """One random completion for each of ``count`` random prompts: the random-selection control."""
    prompts = matrix.read_prompts(round_dir / artifacts.PROMPTS)
    comps = matrix.read_completions(round_dir / artifacts.COMPLETIONS, prompts)
    rng = random.Random(seed)
    rows_idx = sorted(rng.sample(range(len(prompts)), min(count, len(prompts))))
    from rsft.train.rows import sft_row

    rows = []
    for i in rows_idx:
        sampled = [text for text in comps.texts[i] if text is not None]  # None: adaptive N did not sample it
        rows.append(sft_row(prompts[i], sampled[rng.randrange(len(sampled))]))
    return artifacts.write_jsonl(round_dir / artifacts.CONTROL / artifacts.SELECTED, rows)


def run_rounds(config: RunConfig, generator: Generator | None = None, quiet: bool = False) -> dict[str, Any]:
    """The whole RSFT loop. Returns the summary also written to ``<run>/rounds.json``."""
    check_run(config)
    if config.eval.prompts is None:
        raise RsftError("eval.prompts: RSFT rounds need held-out eval prompts (the gate never promotes blindly)")
    run_dir = config.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    artifacts.write_text(run_dir / artifacts.CONFIG, dump_config(config))
    from rsft.tracking import start as start_tracking

    tracker = start_tracking(config)  # metrics.jsonl, and the trackers of tracking.report_to
    policies = Policies(config)
    base = config.generation.generator.model
    if generator is not None:
        policies.add(base, generator)
    pool = pipeline.load_prompt_set(config.prompts)
    eval_prompts = held_out(pipeline.load_prompt_set(config.eval.prompts), pool)
    baseline = evaluate_checkpoint(run_dir / artifacts.BASELINE, {"round": -1, "checkpoint": base}, config, policies,
                          base, eval_prompts)
    best, current, history = baseline["metric"]["value"], base, []
    control_policy = base  # control_mode "chain": the control's own policy
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, file=sys.stderr))
    say(f"base: {format_eval(baseline)}")
    for k in range(config.rounds.rounds):
        rd = pipeline.round_dir(config, k)
        gate_round(config, rd)  # rounds.rm_check: refuse the round when the reward model fails its pairs
        # locally the loaded policy is reused; Ray actors load the checkpoint themselves (never a pickled model)
        live = policies.generator(current) if config.executor == "local" else None
        result = pipeline.run_round(with_policy(config, current), k, generator=live,
                                    prompts=round_prompts(pool, k, config), quiet=quiet, write_config=False)
        kept = result.export["rows"]
        if kept == 0:
            raise RsftError(f"{rd}: the kept set is empty; lower selection.threshold or raise generation.n")
        live = None
        policies.release()  # training loads its own copy
        checkpoint = train_arm(rd, config, current)
        info = {"round": k, "checkpoint": checkpoint, "started_from": current, "kept": kept,
                "reward_mean_all": result.reward_stats.get("mean"),
                "reward_mean_kept": result.selection.get("mean_selected_reward")}
        ev = evaluate_checkpoint(rd, info, config, policies, base, eval_prompts)
        if config.rounds.control:
            chain = config.rounds.control_mode == "chain"
            ev["control"] = _control(config, policies, rd, kept, control_policy if chain else current, base, k,
                                     eval_prompts, sample_own=chain)
            if chain:
                control_policy = ev["control"]["checkpoint"]
        value = ev["metric"]["value"]
        promoted = value > best + config.eval.margin
        ev.update(best_before=best, margin=config.eval.margin, promoted=promoted,
                  reason=f"{ev['metric']['name']} {value:.3f} {'>' if promoted else '<='} best {best:.3f} "
                         f"+ margin {config.eval.margin:.3f}")
        ev["warnings"] = over_optimisation([*history, ev])
        artifacts.write_json(rd / artifacts.EVAL, ev)
        tracker.round(k, rd, ev)
        history.append(ev)
        if promoted:
            best, current = value, checkpoint
        say(f"round {k}: {format_eval(ev)} -> {'promoted' if promoted else 'kept ' + current}")
        for w in ev["warnings"]:
            stages.warn(w)
    summary = {"base": base, "current": current, "best": best, "baseline": baseline,
               "rounds": [{key: h.get(key) for key in ("round", "checkpoint", "promoted", "reason", "kept", "metric",
                                                       "kl", "control")} for h in history]}
    artifacts.write_json(run_dir / artifacts.ROUNDS, summary)
    return summary


def with_policy(config: RunConfig, model: str) -> RunConfig:
    """The run config with the generator pointed at ``model`` (recorded in the round's manifest)."""
    g = config.generation.generator
    generation = dataclasses.replace(config.generation, mix=[], generator=GeneratorConfig(g.backend, model, g.options))
    return dataclasses.replace(config, generation=generation)


def _control(config: RunConfig, policies: Policies, rd: Path, kept: int, start: str, base: str, k: int,
             eval_prompts: list[Prompt], sample_own: bool = False) -> dict[str, Any]:
    """Train and evaluate the random-selection control of round ``k`` from ``start``: on random
    completions of the round's samples, or (``sample_own``) on completions ``start`` samples itself."""
    seed = config.rounds.seed * 1000 + k
    if sample_own:
        write_own_control_set(rd, config, policies, start, kept, seed)
    else:
        write_control_set(rd, kept, seed=seed)
    policies.release()
    checkpoint = train_arm(rd / artifacts.CONTROL, config, start)
    info = {"round": k, "checkpoint": checkpoint, "kept": kept, "started_from": start,
            "mode": "chain" if sample_own else "round"}
    ev = evaluate_checkpoint(rd / artifacts.CONTROL, info, config, policies, base, eval_prompts)
    return {key: ev.get(key) for key in ("metric", "kl", "kept", "checkpoint", "started_from", "mode")}


def write_own_control_set(rd: Path, config: RunConfig, policies: Policies, policy: str, count: int,
                          seed: int) -> int:
    """One completion sampled by ``policy`` (the round's sampling settings) for each of ``count``
    random prompts of round ``rd``: random selection from the control's own distribution."""
    prompts = matrix.read_prompts(rd / artifacts.PROMPTS)
    rng = random.Random(seed)
    picked = [prompts[i] for i in sorted(rng.sample(range(len(prompts)), min(count, len(prompts))))]
    g = config.generation
    gen = GenerationConfig(n=1, sampling=dataclasses.replace(g.sampling, seed=g.sampling.seed + seed),
                           shard_size=g.shard_size, generator=GeneratorConfig(g.generator.backend, policy))
    out = rd / artifacts.CONTROL
    stages.generate(out, gen, lambda: policies.generator(policy), picked)
    comps = matrix.read_completions(out / artifacts.COMPLETIONS, picked)
    from rsft.train.rows import sft_row

    return artifacts.write_jsonl(out / artifacts.SELECTED, [sft_row(p, row[0]) for p, row in zip(picked, comps.texts, strict=True)])


def evaluate_checkpoint(folder: Path, info: dict[str, Any], config: RunConfig, policies: Policies, base: str,
               prompts: list[Prompt]) -> dict[str, Any]:
    """Evaluate ``info["checkpoint"]`` (on ``prompts``, KL against ``base``) into ``folder/eval.json``
    and return the result merged with ``info``, or reuse that file when it was computed with the same
    eval config for the same checkpoint and prompts (``rsft run`` and ``rsft sweep`` share it)."""
    settings = dataclasses.asdict(config.eval)
    if settings["kl_prompts"] is None:
        del settings["kl_prompts"]  # evals written before the option existed stay current
    identity = {"eval": settings, "checkpoint": info["checkpoint"],
                "prompts": [p.prompt_id for p in prompts]}  # the held-out set shrinks when the pool grows
    key = checkpoint_key(identity, info["checkpoint"])
    path = folder / artifacts.EVAL
    if path.exists():
        old = json.loads(path.read_text(encoding="utf-8"))
        if old.get("eval_key") == key:
            return {**old, **info}
    result = {**info, **evaluate(config, policies, info["checkpoint"], base, folder, prompts), "eval_key": key}
    artifacts.write_json(path, result)
    return result


def checkpoint_key(identity: dict[str, Any], checkpoint: str) -> str:
    """The hash of ``identity`` and of the checkpoint's ``rsft_train.json`` when it has one: an eval
    of a checkpoint retrained at the same path never passes for the old one's."""
    meta = Path(checkpoint) / artifacts.TRAIN_INFO
    if meta.exists():
        identity = {**identity, "trained": artifacts.file_sha256(meta)}
    return artifacts.config_hash(identity)


def over_optimisation(history: list[dict[str, Any]]) -> list[str]:
    """Reward up + KL up + eval down between the last two rounds is the classic over-optimisation sign."""
    if len(history) < 2:
        return []
    a, b = history[-2], history[-1]
    try:
        reward_up = b["reward_mean_kept"] > a["reward_mean_kept"]
        kl_up = b["kl"]["mean"] > a["kl"]["mean"]
        eval_down = b["metric"]["value"] < a["metric"]["value"]
    except (KeyError, TypeError):
        return []
    if reward_up and kl_up and eval_down:
        return [f"round {b['round']}: reward up, KL up, held-out eval down: possible over-optimisation "
                "of the scorer; consider fewer epochs, a lower learning rate or a better scorer"]
    return []


def format_eval(ev: dict[str, Any]) -> str:
    """An eval result in one line: ``name 0.310 [0.220, 0.410] (n=40), KL 0.0120 ± 0.0030``."""
    m = ev["metric"]
    kl = ev.get("kl")
    text = f"{m['name']} {m['value']:.3f} [{m['ci_low']:.3f}, {m['ci_high']:.3f}] (n={m['n']})"
    return text + (f", KL {kl['mean']:.4f} ± {kl['stderr']:.4f}" if kl else "")
