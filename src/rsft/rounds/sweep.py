"""``rsft sweep``: ablate N, temperature, keep threshold and epochs from one YAML, with a results table.

RSFT's knobs are empirical: how many samples per prompt (N), at which temperature, which keep
threshold on the reward and how many epochs of training. A sweep runs the grid of them, paying for
each expensive step only once:

- Generation: one per temperature, at ``N_max = max(sweep.n)`` samples per prompt over the training
  prompts (those of round 0 of ``rsft run``), scored once, into ``RUN/sweep/T<temp>/`` (the usual
  round files, resumable shard by shard). A cell with n samples uses the first n columns of that
  M x N_max reward matrix. These are n i.i.d. samples from the same policy and temperature, but not
  byte-identical to an n-sample run: the hf backend draws every row of a batch from one random
  stream whose layout depends on N, so sample j's randomness depends on N.
- Selection: pure numpy on ``R[:, :n]`` (``rsft.select``: the best per prompt, ties to the first
  column, kept when at or above the threshold; null keeps it whatever its reward). Each
  (temperature, n, threshold) cell writes ``selection.parquet`` and ``selected.jsonl`` (TRL
  prompt/completion rows) into ``RUN/sweep/T<temp>/n<n>-thr<t>/``.
- Training: each epochs value fine-tunes the *base* policy on the cell's kept set, in
  ``RUN/sweep/train/<kept-set hash>-e<epochs>/``. The folder is named by the content of the kept
  set, so cells that keep the same rows (two thresholds below every best reward, say) share one
  checkpoint, whichever of them comes first in the grid, and a changed grid finds it again.
- Eval: every checkpoint, and the base policy (the baseline row, ``RUN/baseline/``, shared with
  ``rsft run``), on the held-out ``eval.prompts`` with ``rsft.rounds.loop``' eval: the metric with its 95%
  CI (``rounds.metric_with_ci``: Wilson for one 0/1 sample per prompt, else normal over prompts) and
  KL(checkpoint || base) by Monte Carlo (mean ± stderr).

Every step is skipped on a rerun when its files are intact, so an interrupted sweep resumes.

The table (``RUN/sweep.json``, ``RUN/sweep.md``, the terminal and ``rsft report RUN``) has one row
per cell in grid order (temperature, n, threshold, epochs, each ascending) after the baseline row:
the kept rows, their mean reward, the pass rate of the n samples (reward >= scoring.pass_threshold),
the held-out metric [95% CI], the KL, the training loss first -> last and the cell's wall time (its
training and eval; a cell that reused another's checkpoint shows ``shared``). ``*`` marks the cell
with the best held-out metric; overlapping CIs mean the grid cannot tell those cells apart.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from rsft import artifacts, matrix, pipeline, select, stages, stats
from rsft.config import RunConfig, dump_config
from rsft.errors import RsftError
from rsft.generate import Generator
from rsft.report.tables import finite, label
from rsft.report.tables import sweep_markdown as format_markdown
from rsft.rounds import loop as rounds
from rsft.train.rows import sft_row
from rsft.types import Prompt

SWEEP = "sweep"
TRAIN = "train"


# --- the grid ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Grid:
    """The sweep's axes, each sorted ascending (a null threshold first) and checked."""

    temperature: list[float]
    n: list[int]
    threshold: list[float | None]
    epochs: list[float]

    @property
    def n_max(self) -> int:
        return max(self.n)

    @property
    def cells(self) -> int:
        return len(self.temperature) * len(self.n) * len(self.threshold) * len(self.epochs)


def grid_of(config: RunConfig) -> Grid:
    """The grid of ``config.sweep`` (a missing list: the base config's single value), validated.

    Raises:
        RsftError: one line naming the field: no sweep section, an empty list, a bad or repeated
            value, or a base config the sweep cannot vary (another selection strategy, a generator
            mix, ``train.max_steps`` while sweeping epochs, no held-out eval prompts).
    """
    s = config.sweep
    if s is None:
        raise RsftError("sweep: the config has no 'sweep:' section; give lists for some of n, temperature, "
                        "threshold and epochs")
    if config.selection.strategy not in ("best", "threshold"):
        raise RsftError(f"selection.strategy: rsft sweep keeps the best completion per prompt ('best' or "
                        f"'threshold'), got {config.selection.strategy!r}")
    if config.generation.mix:
        raise RsftError("generation.mix: rsft sweep samples N_max from one generator; remove the mix")
    if config.generation.adaptive.enabled:
        raise RsftError("generation.adaptive: rsft sweep reads the first n samples of every prompt as a run "
                        "with N = n; adaptive N leaves some unsampled, so turn it off")
    if s.epochs is not None and config.train.max_steps is not None:
        raise RsftError("sweep.epochs: train.max_steps overrides epochs; remove train.max_steps to sweep epochs")
    if config.eval.prompts is None:
        raise RsftError("eval.prompts: a sweep compares checkpoints on held-out eval prompts; give some")
    base = {"n": [config.generation.n], "temperature": [config.generation.sampling.temperature],
            "threshold": [config.selection.threshold], "epochs": [config.train.epochs]}
    checks = {
        "n": (lambda v: not isinstance(v, bool) and isinstance(v, int) and v >= 1, "a positive integer"),
        "temperature": (lambda v: math.isfinite(v) and v >= 0, "a number >= 0"),
        "threshold": (lambda v: v is None or math.isfinite(v), "a finite number or null"),
        "epochs": (lambda v: math.isfinite(v) and v > 0, "a number > 0"),
    }
    axes: dict[str, list[Any]] = {}
    for name, (ok, what) in checks.items():
        values = getattr(s, name)
        if values is None:
            values = base[name]
        elif not values:
            raise RsftError(f"sweep.{name}: give at least one value (or leave the key out)")
        for v in values:
            if not ok(v):
                raise RsftError(f"sweep.{name}: each value must be {what}, got {v!r}")
        labels = [label(v) for v in values]
        for lab in labels:
            if labels.count(lab) > 1:
                raise RsftError(f"sweep.{name}: value {lab} is given twice")
        axes[name] = sorted(values, key=lambda v: (v is not None, v or 0))
    return Grid(**axes)


# --- the plan (--dry-run) ------------------------------------------------------------------------


def plan(config: RunConfig) -> dict[str, Any]:
    """What a sweep would run, counted without loading a model (the prompts are read)."""
    grid = grid_of(config)
    pool = pipeline.load_prompt_set(config.prompts)
    prompts = rounds.round_prompts(pool, 0, config)
    eval_prompts = rounds.held_out(pipeline.load_prompt_set(config.eval.prompts), pool)
    selections = len(grid.temperature) * len(grid.n) * len(grid.threshold)
    return {"run_dir": str(config.run_dir), "grid": dataclasses.asdict(grid), "cells": grid.cells,
            "prompts": len(prompts), "n_max": grid.n_max, "eval_prompts": len(eval_prompts),
            "generations": len(grid.temperature), "completions": len(grid.temperature) * len(prompts) * grid.n_max,
            "selections": selections, "trainings_at_most": selections * len(grid.epochs),
            "evals_at_most": selections * len(grid.epochs) + 1}


def format_plan(p: dict[str, Any]) -> str:
    g = p["grid"]
    axes = " x ".join(f"{name} [{', '.join(label(v) for v in g[name])}]"
                      for name in ("temperature", "n", "threshold", "epochs"))
    return "\n".join([
        f"rsft sweep plan: {p['run_dir']}",
        f"  grid: {axes} = {p['cells']} cells",
        f"  generations: {p['generations']} (one per temperature: {p['prompts']} prompts x {p['n_max']} samples, "
        f"scored once; {p['completions']} completions)",
        f"  selections: {p['selections']} (numpy on the first n columns, no model)",
        f"  trainings: at most {p['trainings_at_most']} (identical kept sets train once)",
        f"  evals: at most {p['evals_at_most']} (the base policy and each checkpoint, "
        f"{p['eval_prompts']} held-out prompts)",
    ])


# --- generation, selection -----------------------------------------------------------------------


def generate_at(config: RunConfig, temperature: float, n_max: int, prompts: list[Prompt],
                policies: rounds.Policies, scorer: Any, new_version: bool = False) -> dict[str, Any]:
    """Sample ``n_max`` completions per prompt at ``temperature`` from the base policy and score them,
    into ``RUN/sweep/T<temp>/`` (skipped when the files are intact)."""
    from rsft.stages.executor import make_executor

    folder = config.run_dir / SWEEP / f"T{label(temperature)}"
    sampling = dataclasses.replace(config.generation.sampling, temperature=temperature)
    gen = dataclasses.replace(config.generation, n=n_max, mix=[], sampling=sampling)
    base = gen.generator.model
    executor = make_executor(config.executor, config.ray)
    # locally the policies' loaded base is reused; Ray actors load the model themselves
    make = ((lambda: policies.generator(base)) if executor.in_process
            else functools.partial(pipeline.build_generator, gen, round_dir=folder))
    counts = stages.generate(folder, gen, make, prompts, new_version=new_version, executor=executor)
    stages.score(folder, config.scoring, scorer, shard_size=gen.shard_size, new_version=new_version,
                 executor=executor, make_scorer=pipeline.scorer_factory(config.scoring, executor))
    done = artifacts.read_manifest(folder)["stages"]
    return {"temperature": temperature, "dir": str(folder), "prompts": len(prompts), "n": n_max,
            "completions": counts.get("completions"), "generate_s": done["generate"]["wall_s"],
            "score_s": done["score"]["wall_s"]}


def select_cell(R: np.ndarray, n: int, threshold: float | None) -> list[tuple[int, int]]:
    """``(row, column)`` of each prompt's best reward among its first ``n`` samples (ties to the first),
    kept when >= ``threshold`` (None: always). ``R`` has its NaN/inf already set to -inf (never kept)."""
    return select.select(R[:, :n], "best", threshold=threshold).pairs


def write_cell(folder: Path, prompts: list[Prompt], texts: list[list[str]], R: np.ndarray,
               pairs: list[tuple[int, int]]) -> tuple[str, str]:
    """Write the cell's ``selection.parquet`` and ``selected.jsonl`` (unless unchanged); returns the
    JSONL text and its SHA-256 (the kept set's identity)."""
    text = "".join(json.dumps(sft_row(prompts[i], texts[i][j]), ensure_ascii=False) + "\n" for i, j in pairs)
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    if _changed(folder / artifacts.SELECTED, digest) or not (folder / artifacts.SELECTION).exists():
        cols = {"prompt_id": [prompts[i].prompt_id for i, _ in pairs], "sample_idx": [j for _, j in pairs],
                "reward": [float(R[i, j]) for i, j in pairs], "rank": list(range(len(pairs))),
                "role": ["keep"] * len(pairs), "pair": list(range(len(pairs)))}
        artifacts.write_table(folder / artifacts.SELECTION, cols, matrix.SELECTION_SCHEMA)
        artifacts.write_text(folder / artifacts.SELECTED, text)
    return text, digest


def _changed(path: Path, digest: str) -> bool:
    """Whether ``path`` is missing or its SHA-256 is not ``digest`` (rewriting it would change it)."""
    return not path.exists() or artifacts.file_sha256(path) != digest


# --- training and eval ---------------------------------------------------------------------------


def train_and_eval(config: RunConfig, epochs: float, text: str, digest: str, policies: rounds.Policies,
                   base: str, eval_prompts: list[Prompt]) -> dict[str, Any]:
    """Train the base policy on a kept set for ``epochs`` in its content-named folder and evaluate it;
    both are skipped when their files are intact. Returns the folder's numbers."""
    folder = config.run_dir / SWEEP / TRAIN / f"{digest[:16]}-e{label(epochs)}"
    if _changed(folder / artifacts.SELECTED, digest):
        artifacts.write_text(folder / artifacts.SELECTED, text)
    cfg = dataclasses.replace(config, train=dataclasses.replace(config.train, epochs=epochs))
    checkpoint = rounds.train_arm(folder, cfg, base)
    before = _mtime(folder / artifacts.EVAL)
    started = time.time()
    ev = rounds.evaluate_checkpoint(folder, {"checkpoint": checkpoint, "epochs": epochs}, cfg, policies, base, eval_prompts)
    timing = _read_json(folder / artifacts.TIMING)
    if _mtime(folder / artifacts.EVAL) != before:  # the eval ran now: record how long it took
        timing = {"eval_s": round(time.time() - started, 3)}
        artifacts.write_json(folder / artifacts.TIMING, timing)
    info = _read_json(Path(checkpoint) / artifacts.TRAIN_INFO)
    log = folder / artifacts.TRAIN_LOG
    losses = [row["loss"] for _, row in artifacts.read_jsonl(log) if "loss" in row] if log.exists() else []
    train_s, eval_s = info.get("wall_s"), timing.get("eval_s")
    return {"dir": str(folder), "checkpoint": checkpoint, "metric": ev.get("metric"), "kl": ev.get("kl"),
            "train_loss_first": losses[0] if losses else None, "train_loss_last": losses[-1] if losses else None,
            "steps": info.get("steps"),
            "wall_s": None if train_s is None or eval_s is None else round(train_s + eval_s, 3)}


def _mtime(path: Path) -> int | None:
    return path.stat().st_mtime_ns if path.exists() else None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


# --- the sweep -----------------------------------------------------------------------------------


def run_sweep(config: RunConfig, generator: Generator | None = None, quiet: bool = False,
              new_version: bool = False) -> dict[str, Any]:
    """Run the grid of ``config.sweep``; returns the summary also written to ``RUN/sweep.json`` (and
    the table to ``RUN/sweep.md``). ``generator``: an already loaded base policy to reuse."""
    grid = grid_of(config)
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, file=sys.stderr))
    run_dir = config.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    artifacts.write_text(run_dir / artifacts.CONFIG, dump_config(config))
    base = config.generation.generator.model
    policies = rounds.Policies(config)
    if generator is not None:
        policies.add(base, generator)
    pool = pipeline.load_prompt_set(config.prompts)
    prompts = rounds.round_prompts(pool, 0, config)
    eval_prompts = rounds.held_out(pipeline.load_prompt_set(config.eval.prompts), pool)
    scorer = pipeline.build_scorer(config.scoring)  # before generating: a bad scorer fails fast
    generations = []
    for t in grid.temperature:
        say(f"sweep: generation at temperature {label(t)} ({len(prompts)} prompts x {grid.n_max})")
        generations.append(generate_at(config, t, grid.n_max, prompts, policies, scorer, new_version))
    baseline = rounds.evaluate_checkpoint(run_dir / artifacts.BASELINE, {"round": -1, "checkpoint": base}, config,
                                 policies, base, eval_prompts)
    say(f"sweep: base {rounds.format_eval(baseline)}")
    cells = []
    trained: dict[tuple[str, float], dict[str, Any]] = {}
    for gen in generations:
        cells += _cells_at(config, grid, gen, prompts, eval_prompts, policies, base, trained, say)
    summary = {"base": base, "grid": dataclasses.asdict(grid), "n_max": grid.n_max, "prompts": len(prompts),
               "eval_prompts": len(eval_prompts), "pass_threshold": config.scoring.pass_threshold,
               "generations": generations, "trainings": len(trained),
               "baseline": {"metric": baseline.get("metric"), "kl": baseline.get("kl")},
               "cells": cells, "best": best_cell(cells)}
    artifacts.write_json(run_dir / artifacts.SWEEP_JSON, summary)
    artifacts.write_text(run_dir / artifacts.SWEEP_MD, format_markdown(summary))
    return summary


def _cells_at(config: RunConfig, grid: Grid, gen: dict[str, Any], prompts: list[Prompt],
              eval_prompts: list[Prompt], policies: rounds.Policies, base: str,
              trained: dict[tuple[str, float], dict[str, Any]], say: Any) -> list[dict[str, Any]]:
    """Every (n, threshold, epochs) cell of one temperature's generation; ``trained`` maps a kept
    set's hash and epochs to the cell that trained it (shared across temperatures)."""
    folder = Path(gen["dir"])
    texts = matrix.read_completions(folder / artifacts.COMPLETIONS, prompts).texts
    R, _ = matrix.read_rewards(folder / artifacts.REWARDS, [p.prompt_id for p in prompts])
    finite_R, _, _ = select.mask_non_finite(R)
    t = gen["temperature"]
    out = []
    for n in grid.n:
        pass_rate = stats.reward_stats(R[:, :n], pass_threshold=config.scoring.pass_threshold)["pass_at_1"]
        for thr in grid.threshold:
            pairs = select_cell(finite_R, n, thr)
            cell_dir = folder / f"n{n}-thr{label(thr)}"
            text, digest = write_cell(cell_dir, prompts, texts, finite_R, pairs)
            kept_rewards = [float(finite_R[i, j]) for i, j in pairs]
            for e in grid.epochs:
                cell = {"id": f"T{label(t)}/n{n}-thr{label(thr)}/e{label(e)}", "temperature": t, "n": n,
                        "threshold": thr, "epochs": e, "dir": str(cell_dir), "kept": len(pairs),
                        "prompts": len(prompts), "kept_sha256": digest,
                        "mean_reward_kept": float(np.mean(kept_rewards)) if kept_rewards else None,
                        "pass_rate": pass_rate, "reused_from": None}
                if not pairs:
                    stages.warn(f"sweep: {cell['id']} keeps nothing (threshold {label(thr)}): not trained")
                    out.append({**cell, "metric": None, "kl": None, "wall_s": None})
                    continue
                owner = trained.get((digest, e))
                result = train_and_eval(config, e, text, digest, policies, base, eval_prompts)
                if owner is None:
                    trained[(digest, e)] = cell
                else:
                    cell["reused_from"] = owner["id"]
                    result["wall_s"] = None
                out.append({**cell, **result})
                say(f"sweep: {cell['id']}: kept {len(pairs)}, {rounds.format_eval(result) if result['metric'] else '-'}")
    return out


def best_cell(cells: list[dict[str, Any]]) -> str | None:
    """The id of the cell with the highest held-out metric (ties: the first in grid order)."""
    best, value = None, -math.inf
    for c in cells:
        v = finite((c.get("metric") or {}).get("value"))
        if v is not None and v > value:
            best, value = c["id"], v
    return best
