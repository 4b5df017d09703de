"""The score stage: every (prompt, completion) pair's reward into ``rewards.parquet``, in shards of
prompts; and ``generate_and_score``, generation and scoring as one streaming pipeline."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rsft import artifacts, matrix, stats
from rsft.config import GenerationConfig, ScoringConfig
from rsft.config.checks import check_on_error
from rsft.generate import Generator
from rsft.progress import progress
from rsft.score import ReportsStats, Scorer, as_scorer, score_pairs, scorer_gpus
from rsft.stages.executor import Executor, LocalExecutor
from rsft.stages.generate import (
    GenerationPlan,
    GenerationShards,
    adaptive_sampling,
    finish_generation,
    generation_gpus,
    plan_generation,
)
from rsft.stages.shard_job import ShardResult
from rsft.stages.shards import LazyTasks, finish_shards, missing_shards, run_shards, shard_dir, shard_path
from rsft.types import Prompt, SamplingParams


def score(
    round_dir: Path,
    config: ScoringConfig,
    scorer: Any,
    shard_size: int = 64,
    new_version: bool = False,
    executor: Executor | None = None,
    make_scorer: Callable[[], Any] | None = None,
    scored: Mapping[int, ShardResult] | None = None,
) -> dict[str, Any]:
    """Score every (prompt, completion) pair into ``rewards.parquet``; returns the reward statistics.

    ``scorer`` is anything ``rsft.score.as_scorer`` accepts (a Scorer, a plain callable, a spec).
    ``executor`` computes the missing shards; its workers build their scorer with ``make_scorer``
    (default: a copy of ``scorer``). ``scored`` holds shards the overlapped pipeline already scored.
    """
    started = time.time()
    scorer = as_scorer(scorer)
    check_on_error(config)
    ids = matrix.read_prompt_ids(round_dir / artifacts.PROMPTS)
    comps = matrix.read_completion_index(round_dir / artifacts.COMPLETIONS, ids)
    m, n = comps.shape
    stage_config = {"scoring": {**asdict(config), "scorer_name": scorer.name},
                    "completions": artifacts.file_sha256(round_dir / artifacts.COMPLETIONS)}
    done = artifacts.stage_is_current(round_dir, "score", stage_config["scoring"],
                                      [artifacts.PROMPTS, artifacts.COMPLETIONS], [artifacts.REWARDS])
    if done:
        return {**done["stats"], "reused": True}
    artifacts.guard_outputs(round_dir, "score", stage_config["scoring"], new_version)
    folder, digest = shard_dir(round_dir, "rewards", stage_config)
    size = max(1, shard_size)
    prompts = matrix.PromptReader(round_dir / artifacts.PROMPTS, batch_rows=max(size, 4096))
    texts = matrix.CompletionTexts(comps, batch_rows=size * n)

    def task(s: int) -> tuple[list[Prompt], list[list[str]]]:
        first, stop = s * size, min(m, (s + 1) * size)
        return prompts.rows(first, stop), texts.rows(first, stop)

    padding: dict[str, int] = {}

    def on_result(result: ShardResult) -> None:
        bar.update(result.units)
        for key, value in result.stats.items():
            padding[key] = padding.get(key, 0) + value

    job = ScoringShards(make_scorer or (lambda: scorer), config.on_error, gpus=scoring_gpus(config))
    count = math.ceil(m / size)
    with progress(m * n, "score", unit="pair") as bar:
        try:
            made = run_shards(folder, count, job, task, matrix.REWARDS_SCHEMA, executor or LocalExecutor(),
                              on_result, done=scored)
        finally:
            texts.close()
            prompts.close()
    failed = [0]
    finish_shards(folder, count, matrix.REWARDS_SCHEMA, round_dir / artifacts.REWARDS,
                  lambda table: failed.append(sum(table.column("failed").to_pylist())))
    R = matrix.read_reward_matrix(round_dir / artifacts.REWARDS, ids)
    summary = stats.reward_stats(R, comps.n_tokens, pass_threshold=config.pass_threshold,
                                 unsampled=matrix.unsampled_mask(comps.path, m, n))
    summary["failed_pairs"] = int(sum(failed))
    if padding.get("padded_tokens"):
        summary["padding_efficiency"] = round(padding["real_tokens"] / padding["padded_tokens"], 4)
    artifacts.record_stage(round_dir, "score", config=stage_config["scoring"],
                           inputs=[artifacts.PROMPTS, artifacts.COMPLETIONS], outputs=[artifacts.REWARDS],
                           started=started, counts={"pairs": m * n, "shards_scored": made},
                           extra={"stats": summary, "scorer": scorer.name, "shard_key": digest})
    matrix.release_memory()
    return summary


@dataclass
class ScoringShards:
    """Scoring's per-shard work: every (prompt, completion) pair of a chunk of prompts."""

    make_scorer: Callable[[], Any]
    on_error: str
    gpus: float = 0.0
    role: str = "score"
    _scorer: Scorer | None = field(default=None, repr=False)

    def setup(self) -> None:
        self._scorer = as_scorer(self.make_scorer())

    def run(self, task: tuple[Sequence[Prompt], Sequence[Sequence[str]]]) -> ShardResult:
        chunk, texts = task
        scorer = self._scorer
        assert scorer is not None, "setup() first"
        pairs = [(p, j, text) for p, row in zip(chunk, texts, strict=True) for j, text in enumerate(row)]
        sampled = [k for k, (_, _, text) in enumerate(pairs) if text is not None]  # None: unsampled (adaptive N)
        got, got_details, got_failed = ([], [], []) if not sampled else score_pairs(
            scorer,
            [pairs[k][0].prompt for k in sampled],
            [pairs[k][2] for k in sampled],
            [pairs[k][0].metadata for k in sampled],
            on_error=self.on_error,
            labels=[f"prompt {pairs[k][0].prompt_id} sample {pairs[k][1]}" for k in sampled],
        )
        values: list[float] = [math.nan] * len(pairs)
        details: list[str | None] = [None] * len(pairs)
        failed = [False] * len(pairs)
        for k, value, detail, fail in zip(sampled, got, got_details, got_failed, strict=True):
            values[k], details[k], failed[k] = value, detail, fail
        last = (scorer.last_stats or {}) if isinstance(scorer, ReportsStats) else {}
        columns = {
            "prompt_id": [p.prompt_id for p, _, _ in pairs],
            "sample_idx": [j for _, j, _ in pairs],
            "reward": values,
            "scorer": [scorer.name] * len(pairs),
            "details": details,
            "failed": failed,
        }
        return ShardResult(columns, {k: int(last.get(k, 0)) for k in ("real_tokens", "padded_tokens")},
                           units=len(pairs))

    def task_from_generation(
        self, generation_task: tuple[list[Prompt], SamplingParams], generated: ShardResult
    ) -> tuple[list[Prompt], list[list[str]]]:
        """The scoring task of a shard straight from its generation output (same prompts, same order)."""
        chunk = generation_task[0]
        texts = generated.columns["text"]
        n = len(texts) // max(1, len(chunk))
        return chunk, [texts[i * n : (i + 1) * n] for i in range(len(chunk))]


def scoring_gpus(config: ScoringConfig) -> float:
    """GPUs one scorer wants where the cluster has them (``rsft.score.scorer_gpus``: 1 with a reward model)."""
    return scorer_gpus(config.scorer)


def generate_and_score(
    round_dir: Path,
    generation: GenerationConfig,
    make_generator: Callable[[], Generator],
    prompts: Iterable[Prompt] | None,
    scoring: ScoringConfig,
    scorer: Any,
    executor: Executor,
    make_scorer: Callable[[], Any] | None = None,
    new_version: bool = False,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``generate`` then ``score`` as one streaming pipeline (``Executor.run_stream``): on ``ray``
    shard k is scored while shard k+1 generates, locally each shard is generated then scored.

    The files and manifest records are those of the two stages run separately: each completion
    shard is written as soon as it reaches the driver (with its scores; a rerun resumes generation
    from the written shards), its rewards are kept until ``completions.parquet`` exists and the
    score stage then writes them under its own shard key.
    """
    check_on_error(scoring)
    plan = plan_generation(round_dir, generation, prompts, new_version)
    scored: dict[int, ShardResult] = {}
    if isinstance(plan, dict):
        counts = plan
    else:
        score_job = ScoringShards(make_scorer or (lambda: as_scorer(scorer)), scoring.on_error,
                                  gpus=scoring_gpus(scoring))
        counts = _stream_generation(round_dir, plan, make_generator, score_job, executor, scored)
    summary = score(round_dir, scoring, scorer, shard_size=generation.shard_size, new_version=new_version,
                    executor=executor, make_scorer=make_scorer, scored=scored)
    return counts, summary


def _stream_generation(round_dir: Path, plan: GenerationPlan, make_generator: Callable[[], Generator],
                       score_job: ScoringShards, executor: Executor, scored: dict[int, ShardResult]) -> dict[str, Any]:
    """Generate the plan's missing shards with ``score_job`` right behind; the scores go into ``scored``."""
    gen_job = GenerationShards(make_generator, plan.config.n, gpus=generation_gpus(plan.config),
                               adaptive=adaptive_sampling(plan.config))
    made = 0

    def on_generated(s: int, result: ShardResult) -> None:
        nonlocal made
        artifacts.write_table(shard_path(plan.shard_dir, s), result.columns, matrix.COMPLETIONS_SCHEMA)
        made += 1
        bar.update(result.units)

    with progress(plan.m, "generate+score", unit="prompt") as bar:
        try:
            tasks = LazyTasks(missing_shards(plan.shard_dir, plan.count), plan.task)
            executor.run_stream(gen_job, score_job, tasks, on_generated, scored.__setitem__)
            run_shards(plan.shard_dir, plan.count, gen_job, plan.task, matrix.COMPLETIONS_SCHEMA,
                       executor, lambda r: None)
        finally:
            plan.prompts.close()
    return finish_generation(round_dir, plan, made)
