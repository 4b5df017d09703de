"""The generate stage: ``config.n`` completions per prompt into ``completions.parquet``.

``prompts.parquet`` holds the round's prompts; generation runs in shards of ``shard_size`` prompts
(``rsft.stages.shards``), shard ``s`` sampling with seed offset ``1009 * s``. Prompts are streamed
into that file and read back a shard at a time, so memory does not grow with their number.

With ``config.adaptive.enabled`` a shard samples adaptively (``rsft.bon.adaptive``): each prompt stops
once its answers agree, and its row is filled up to N with unsampled cells (``matrix.UNSAMPLED``:
null text, scored NaN without calling the scorer, never selected). The counts say how many
completions were drawn and how many were saved.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rsft import artifacts, matrix
from rsft.bon.adaptive import AdaptivePolicy, sample_adaptively
from rsft.bon.answers import answer_extractor, resolve_equivalence
from rsft.config import GenerationConfig, sampling_params
from rsft.config.checks import check_generation
from rsft.errors import RsftError
from rsft.generate import Generator, generator_gpus
from rsft.progress import progress
from rsft.stages.executor import Executor, LocalExecutor
from rsft.stages.shard_job import ShardResult
from rsft.stages.shards import finish_shards, hash_with_ids, run_shards
from rsft.types import Completion, Prompt, SamplingParams


def generate(
    round_dir: Path,
    config: GenerationConfig,
    make_generator: Callable[[], Generator],
    prompts: Iterable[Prompt] | None = None,
    new_version: bool = False,
    executor: Executor | None = None,
) -> dict[str, Any]:
    """Sample ``config.n`` completions per prompt into ``completions.parquet``.

    ``prompts`` (when given: a list, or any iterable such as ``rsft.prompts.open_prompts``) are
    streamed into ``prompts.parquet`` first; otherwise the round's existing prompts are used. Each
    shard's prompts are read from that file when its task is made. The generator is only built when
    a shard is actually missing, by ``executor`` (default: this process; ``ray``: once per actor, so
    ``make_generator`` must pickle).
    """
    plan = plan_generation(round_dir, config, prompts, new_version)
    if isinstance(plan, dict):
        return plan
    job = GenerationShards(make_generator, config.n, gpus=generation_gpus(config), adaptive=adaptive_sampling(config))
    try:
        with progress(plan.m, "generate", unit="prompt") as bar:
            made = run_shards(plan.shard_dir, plan.count, job, plan.task, matrix.COMPLETIONS_SCHEMA,
                              executor or LocalExecutor(), lambda r: bar.update(r.units))
    finally:
        plan.prompts.close()
    return finish_generation(round_dir, plan, made)


@dataclass
class GenerationPlan:
    """What a generate stage that has work to do will write, and where its shards go."""

    config: GenerationConfig
    m: int
    """The number of prompts."""
    prompts: matrix.PromptReader
    """``prompts.parquet``, read a shard at a time as tasks are made."""
    stage_config: dict[str, Any]
    """The ``generation`` config recorded in the manifest."""
    shard_dir: Path
    digest: str
    count: int
    started: float

    def task(self, s: int) -> tuple[list[Prompt], SamplingParams]:
        """Shard ``s``: its prompts (rows ``s * shard_size`` up to the next shard's first) and
        sampling settings (seed offset 1009 * s)."""
        size = max(1, self.config.shard_size)
        chunk = self.prompts.rows(s * size, min(self.m, (s + 1) * size))
        return chunk, sampling_params(self.config, seed_offset=1009 * s)


def plan_generation(
    round_dir: Path, config: GenerationConfig, prompts: Iterable[Prompt] | None, new_version: bool
) -> GenerationPlan | dict[str, Any]:
    """Check the config, write the prompts; the finished stage's counts when it is current, else the plan."""
    started = time.time()
    check_generation(config)
    adaptive_sampling(config)  # answer and equivalence code is imported before any prompt is written
    path = round_dir / artifacts.PROMPTS
    if prompts is not None:
        update_prompts(path, prompts, lambda: artifacts.guard_outputs(round_dir, "generate", None, new_version,
                                                                      why="the prompts changed"))
    ids = matrix.read_prompt_ids(path)
    generation = stage_config(config)
    done = artifacts.stage_is_current(round_dir, "generate", generation, [artifacts.PROMPTS], [artifacts.COMPLETIONS])
    if done:
        return {**done["counts"], "shards_generated": 0, "reused": True}
    artifacts.guard_outputs(round_dir, "generate", generation, new_version)
    digest = hash_with_ids({"generation": generation}, "prompt_ids", ids)
    count = math.ceil(len(ids) / max(1, config.shard_size))
    return GenerationPlan(config, len(ids), matrix.PromptReader(path), generation,
                          round_dir / artifacts.SHARDS / f"completions-{digest}", digest, count, started)


def stage_config(config: GenerationConfig) -> dict[str, Any]:
    """The ``generation`` config the manifest records; without adaptive N its (unused) settings are
    left out, so rounds written before the option existed stay current."""
    out = asdict(config)
    if not config.adaptive.enabled:
        del out["adaptive"]
    return out


def adaptive_sampling(config: GenerationConfig) -> AdaptiveSampling | None:
    """The adaptive sampling of ``config.adaptive`` (budget ``config.n``; the settings checked by
    ``check_generation``), with its user code imported; None when it is off."""
    a = config.adaptive
    if not a.enabled:
        return None
    try:
        policy = AdaptivePolicy(budget=config.n, min_n=a.min_n, supermajority=a.supermajority, growth=a.growth,
                                rule=a.rule, confidence=a.confidence)
        answer_extractor(a.answer)  # an unknown spec fails here, not in a shard
        resolve_equivalence(a.equivalence)
    except RsftError as e:
        raise RsftError(f"generation.adaptive: {e}") from None
    return AdaptiveSampling(policy, a.answer, a.equivalence)


@dataclass(frozen=True)
class AdaptiveSampling:
    """Adaptive N for generation shards: the policy and how answers are read and grouped, as specs
    (they pickle to Ray actors; the functions are looked up when a shard samples)."""

    policy: AdaptivePolicy
    answer: str
    equivalence: str

    def sample(self, generator: Generator, chunk: list[Prompt], sampling: SamplingParams) -> list[list[Completion]]:
        return sample_adaptively([p.prompt for p in chunk], self.policy, generator, sampling,
                                 answer_extractor(self.answer), resolve_equivalence(self.equivalence)).rows


class _Unchanged(Exception):
    """The new prompts equal those of ``prompts.parquet``: keep that file as it is."""


def update_prompts(path: Path, prompts: Iterable[Prompt], before_replace: Callable[[], None]) -> None:
    """Stream ``prompts`` into ``path`` unless it already holds them (same ids and metadata, in order:
    ``matrix.same_prompt_files``); ``before_replace`` runs first when it does not (it may refuse)."""
    try:
        with artifacts.atomic_path(path) as tmp:
            matrix.write_prompt_file(tmp, prompts)
            if matrix.same_prompt_files(path, tmp):
                raise _Unchanged
            before_replace()
    except _Unchanged:
        pass


def finish_generation(round_dir: Path, plan: GenerationPlan, made: int) -> dict[str, Any]:
    """Write ``completions.parquet`` from the plan's shards and record the stage; returns its counts."""
    total = {"completions": 0, "tokens": 0, "unsampled": 0}

    def count(table: pa.Table) -> None:
        unsampled = int(pc.sum(pc.equal(table.column("finish_reason"), matrix.UNSAMPLED)).as_py() or 0)
        total["completions"] += table.num_rows - unsampled
        total["unsampled"] += unsampled
        total["tokens"] += int(np.nansum(np.array(table.column("n_tokens").to_pylist(), dtype=float)))

    finish_shards(plan.shard_dir, plan.count, matrix.COMPLETIONS_SCHEMA, round_dir / artifacts.COMPLETIONS, count)
    counts = {"prompts": plan.m, "n": plan.config.n, "completions": total["completions"],
              "shards_generated": made, "tokens": total["tokens"]}
    if plan.config.adaptive.enabled:
        cells = plan.m * plan.config.n
        counts["adaptive"] = {"budget": cells, "samples": total["completions"], "saved": total["unsampled"],
                              "saved_fraction": round(total["unsampled"] / cells, 4) if cells else 0.0}
    artifacts.record_stage(round_dir, "generate", config=plan.stage_config, inputs=[artifacts.PROMPTS],
                           outputs=[artifacts.COMPLETIONS], started=plan.started, counts=counts,
                           extra={"shard_key": plan.digest})
    matrix.release_memory()
    return counts


@dataclass
class GenerationShards:
    """Generation's per-shard work: ``n`` completions for each prompt of a chunk."""

    make_generator: Callable[[], Generator]
    n: int
    gpus: float = 0.0
    role: str = "generate"
    adaptive: AdaptiveSampling | None = None
    """Adaptive N: rows stop early and are filled with unsampled cells; None: ``n`` each."""
    _generator: Generator | None = field(default=None, repr=False)

    def setup(self) -> None:
        self._generator = self.make_generator()

    def run(self, task: tuple[list[Prompt], SamplingParams]) -> ShardResult:
        chunk, sampling = task
        assert self._generator is not None, "setup() first"
        if self.adaptive is not None:
            rows = self.adaptive.sample(self._generator, chunk, sampling)
            return ShardResult(matrix.completion_columns(chunk, rows, sampling.seed, n=self.n), units=len(chunk))
        rows = self._generator.generate([p.prompt for p in chunk], self.n, sampling)
        _check_rows(rows, len(chunk), self.n, self._generator.name)
        return ShardResult(matrix.completion_columns(chunk, rows, sampling.seed), units=len(chunk))


def generation_gpus(config: GenerationConfig) -> float:
    """GPUs one generator wants where the cluster has them: the most any of its backends asks for
    (``rsft.generate.generator_gpus``: vLLM's tensor-parallel size, 1 for hf)."""
    return max((generator_gpus(g.backend, g.options) for g in config.mix or [config.generator]), default=0.0)


def _check_rows(rows: Sequence[Sequence[Any]], m: int, n: int, name: str) -> None:
    if len(rows) != m or any(len(r) != n for r in rows):
        got = sorted({len(r) for r in rows})
        raise RsftError(f"generator {name!r} returned {len(rows)} rows of {got} completions; expected {m} of {n}")
