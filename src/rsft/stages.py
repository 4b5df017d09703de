"""The four stages of a round. Each reads the previous stage's files from the round folder and
writes its own, so any stage can be re-run alone (generate once, re-score or re-select many times).

generate: prompts.parquet + completions.parquet     score:  rewards.parquet
select:   selection.parquet                          export: selected.jsonl
Generation and scoring run in shards of prompts; each finished shard is written atomically under
``.shards/`` so an interrupted stage resumes at the first missing shard. An executor
(``rsft.executor``) computes the missing shards, here or on Ray actors; the driver writes them.
"""

from __future__ import annotations

import itertools
import math
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rsft import artifacts, export, matrix, select, stats
from rsft.config import GenerationConfig, ScoringConfig, SelectionConfig
from rsft.errors import RsftError
from rsft.executor import Executor, LocalExecutor, ShardJob, ShardResult
from rsft.generate import Generator
from rsft.progress import progress
from rsft.score import Scorer, as_scorer
from rsft.types import Prompt, SamplingParams, Verdict


def _shards(round_dir: Path, kind: str, stage_config: Mapping[str, Any]) -> tuple[Path, str]:
    digest = artifacts.config_hash(stage_config)
    return round_dir / ".shards" / f"{kind}-{digest}", digest


def _shard_path(shard_dir: Path, s: int) -> Path:
    return shard_dir / f"{s:05d}.parquet"


def _missing(shard_dir: Path, count: int) -> list[int]:
    return [s for s in range(count) if not _shard_path(shard_dir, s).exists()]


def _run_shards(
    shard_dir: Path,
    count: int,
    job: ShardJob,
    task: Callable[[int], Any],
    schema: pa.Schema,
    executor: Executor,
    on_result: Callable[[ShardResult], None],
    done: Mapping[int, ShardResult] | None = None,
) -> int:
    """Produce every missing shard; return how many were new.

    ``executor`` runs ``job`` on ``task(s)`` of each missing shard ``s`` (``done`` holds shards
    already computed elsewhere); the driver writes each result atomically as it arrives. Tasks
    are made as the executor reaches them, so a shard's inputs are in memory only while it runs.
    """
    made = 0

    def write(s: int, result: ShardResult) -> None:
        nonlocal made
        artifacts.write_table(_shard_path(shard_dir, s), result.columns, schema)
        made += 1
        on_result(result)

    missing = _missing(shard_dir, count)
    for s in missing:
        if done and s in done:
            write(s, done[s])
    executor.run(job, _Tasks([s for s in missing if not (done and s in done)], task), write)
    return made


class _Tasks(Sequence[tuple[int, Any]]):
    """The ``(shard, task)`` pairs of some shards, each task made when it is asked for."""

    def __init__(self, shards: Sequence[int], task: Callable[[int], Any]) -> None:
        self.shards, self.task = list(shards), task

    def __len__(self) -> int:
        return len(self.shards)

    def __getitem__(self, k: Any) -> Any:
        if isinstance(k, slice):
            return [(s, self.task(s)) for s in self.shards[k]]
        return self.shards[k], self.task(self.shards[k])


ROW_GROUP_BYTES = 64 << 20
"""A stage's output gets row groups of 1Mi rows (``pq.write_table``'s default) or of this much Arrow
data, whichever is reached first: the file has the bytes one ``pq.write_table`` of all its shards
would give (below this size per row group), while memory is bounded by a row group, not by M×N."""
_ROW_GROUP_ROWS = 1024 * 1024


def _finish_shards(
    shard_dir: Path, count: int, schema: pa.Schema, target: Path, on_shard: Callable[[pa.Table], None]
) -> None:
    """Write the stage's output from its shards, streaming them into one Parquet file; ``on_shard``
    sees each shard's table (for counts). The shards stay until ``artifacts.record_stage`` (given
    ``shard_key``) has recorded the stage: a kill in between still resumes from them."""
    with artifacts.atomic_path(target) as tmp:
        if not count:
            pq.write_table(schema.empty_table(), tmp, compression="zstd")
            return
        tables = (pq.read_table(_shard_path(shard_dir, s)) for s in range(count))
        first = next(tables)
        with pq.ParquetWriter(tmp, first.schema, compression="zstd") as writer:
            for group in _row_groups(itertools.chain([first], tables), on_shard):
                writer.write_table(group)


def _row_groups(tables: Iterable[pa.Table], on_shard: Callable[[pa.Table], None]) -> Iterator[pa.Table]:
    """Regroup shard tables into the row groups ``_finish_shards`` writes (see ``ROW_GROUP_BYTES``)."""
    buffered: list[pa.Table] = []
    rows = size = 0
    wrote = False
    for table in tables:
        on_shard(table)
        buffered.append(table)
        rows, size = rows + table.num_rows, size + table.nbytes
        while rows >= _ROW_GROUP_ROWS or (rows and size >= ROW_GROUP_BYTES):
            whole = pa.concat_tables(buffered)
            take = min(rows, _ROW_GROUP_ROWS)
            yield whole.slice(0, take)
            wrote = True
            rest = whole.slice(take)
            buffered, rows, size = ([rest] if rest.num_rows else []), rest.num_rows, rest.nbytes
    if rows or not wrote:
        yield pa.concat_tables(buffered)


def sampling_params(config: GenerationConfig, seed_offset: int = 0) -> SamplingParams:
    s = config.sampling
    return SamplingParams(
        temperature=s.temperature,
        top_p=s.top_p,
        top_k=s.top_k,
        max_new_tokens=s.max_new_tokens,
        stop=tuple(s.stop),
        seed=s.seed + seed_offset,
    )


# --- generate ------------------------------------------------------------------------------------


def generate(
    round_dir: Path,
    config: GenerationConfig,
    make_generator: Callable[[], Generator],
    prompts: Sequence[Prompt] | None = None,
    new_version: bool = False,
    executor: Executor | None = None,
) -> dict[str, Any]:
    """Sample ``config.n`` completions per prompt into ``completions.parquet``.

    ``prompts`` (when given) are written to ``prompts.parquet`` first; otherwise the round's
    existing prompts are used. The generator is only built when a shard is actually missing, by
    ``executor`` (default: this process; ``ray``: once per actor, so ``make_generator`` must pickle).
    """
    plan = _plan_generation(round_dir, config, prompts, new_version)
    if isinstance(plan, dict):
        return plan
    job = GenerationShards(make_generator, config.n, gpus=generation_gpus(config))
    with progress(len(plan.prompts), "generate", unit="prompt") as bar:
        made = _run_shards(plan.shard_dir, plan.count, job, plan.task, matrix.COMPLETIONS_SCHEMA,
                           executor or LocalExecutor(), lambda r: bar.update(r.units))
    return _finish_generation(round_dir, plan, made)


@dataclass
class _GenerationPlan:
    config: GenerationConfig
    prompts: list[Prompt]
    stage_config: dict[str, Any]
    shard_dir: Path
    digest: str
    count: int
    started: float

    def task(self, s: int) -> tuple[list[Prompt], SamplingParams]:
        """Shard ``s``: its prompts and sampling settings (seed offset 1009 * s)."""
        size = max(1, self.config.shard_size)
        return self.prompts[s * size : (s + 1) * size], sampling_params(self.config, seed_offset=1009 * s)


def _plan_generation(
    round_dir: Path, config: GenerationConfig, prompts: Sequence[Prompt] | None, new_version: bool
) -> _GenerationPlan | dict[str, Any]:
    """Check the config, write the prompts; the finished stage's counts when it is current, else the plan."""
    started = time.time()
    try:
        sampling_params(config)
    except ValueError as e:
        raise RsftError(f"generation.sampling: {e}") from None
    if config.n < 1:
        raise RsftError(f"generation.n: must be >= 1, got {config.n}")
    if prompts is not None and not matrix.same_prompts(round_dir / artifacts.PROMPTS, prompts):
        artifacts.guard_outputs(round_dir, "generate", None, new_version, why="the prompts changed")
        matrix.write_prompts(round_dir / artifacts.PROMPTS, prompts)
    prompts = matrix.read_prompts(round_dir / artifacts.PROMPTS)
    stage_config = {"generation": asdict(config), "prompt_ids": [p.prompt_id for p in prompts]}
    done = artifacts.stage_is_current(round_dir, "generate", stage_config["generation"], [artifacts.PROMPTS],
                                      [artifacts.COMPLETIONS])
    if done:
        return {**done["counts"], "shards_generated": 0, "reused": True}
    artifacts.guard_outputs(round_dir, "generate", stage_config["generation"], new_version)
    shard_dir, digest = _shards(round_dir, "completions", stage_config)
    count = math.ceil(len(prompts) / max(1, config.shard_size))
    return _GenerationPlan(config, list(prompts), stage_config, shard_dir, digest, count, started)


def _finish_generation(round_dir: Path, plan: _GenerationPlan, made: int) -> dict[str, Any]:
    total = {"completions": 0, "tokens": 0}

    def count(table: pa.Table) -> None:
        total["completions"] += table.num_rows
        total["tokens"] += int(np.nansum(np.array(table.column("n_tokens").to_pylist(), dtype=float)))

    _finish_shards(plan.shard_dir, plan.count, matrix.COMPLETIONS_SCHEMA, round_dir / artifacts.COMPLETIONS, count)
    counts = {"prompts": len(plan.prompts), "n": plan.config.n, "completions": total["completions"],
              "shards_generated": made, "tokens": total["tokens"]}
    artifacts.record_stage(round_dir, "generate", config=plan.stage_config["generation"], inputs=[artifacts.PROMPTS],
                           outputs=[artifacts.COMPLETIONS], started=plan.started, counts=counts,
                           extra={"shard_key": plan.digest})
    return counts


@dataclass
class GenerationShards:
    """Generation's per-shard work: ``n`` completions for each prompt of a chunk."""

    make_generator: Callable[[], Generator]
    n: int
    gpus: float = 0.0
    role: str = "generate"
    _generator: Generator | None = field(default=None, repr=False)

    def setup(self) -> None:
        self._generator = self.make_generator()

    def run(self, task: tuple[list[Prompt], SamplingParams]) -> ShardResult:
        chunk, sampling = task
        assert self._generator is not None, "setup() first"
        rows = self._generator.generate([p.prompt for p in chunk], self.n, sampling)
        _check_rows(rows, len(chunk), self.n, self._generator.name)
        return ShardResult(matrix.completion_columns(chunk, rows, sampling.seed), units=len(chunk))


def generation_gpus(config: GenerationConfig) -> float:
    """GPUs one generator wants where the cluster has them: vLLM's tensor-parallel size, 1 for hf."""
    wants = {"vllm": lambda g: float(g.options.get("tensor_parallel_size", 1)),
             "hf": lambda g: 0.0 if g.options.get("device") == "cpu" else 1.0}
    return max((wants.get(g.backend, lambda g: 0.0)(g) for g in config.mix or [config.generator]), default=0.0)


def _check_rows(rows: Sequence[Sequence[Any]], m: int, n: int, name: str) -> None:
    if len(rows) != m or any(len(r) != n for r in rows):
        got = sorted({len(r) for r in rows})
        raise RsftError(f"generator {name!r} returned {len(rows)} rows of {got} completions; expected {m} of {n}")


# --- score ---------------------------------------------------------------------------------------


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
    prompts = matrix.read_prompts(round_dir / artifacts.PROMPTS)
    comps = matrix.read_completion_index(round_dir / artifacts.COMPLETIONS, prompts)
    m, n = comps.shape
    stage_config = {"scoring": {**asdict(config), "scorer_name": scorer.name},
                    "completions": artifacts.file_sha256(round_dir / artifacts.COMPLETIONS)}
    done = artifacts.stage_is_current(round_dir, "score", stage_config["scoring"],
                                      [artifacts.PROMPTS, artifacts.COMPLETIONS], [artifacts.REWARDS])
    if done:
        return {**done["stats"], "reused": True}
    artifacts.guard_outputs(round_dir, "score", stage_config["scoring"], new_version)
    shard_dir, digest = _shards(round_dir, "rewards", stage_config)
    size = max(1, shard_size)
    texts = matrix.CompletionTexts(comps, batch_rows=size * n)

    def task(s: int) -> tuple[list[Prompt], list[list[str]]]:
        first, stop = s * size, min(m, (s + 1) * size)
        return prompts[first:stop], texts.rows(first, stop)

    padding: dict[str, int] = {}

    def on_result(result: ShardResult) -> None:
        bar.update(result.units)
        for key, value in result.stats.items():
            padding[key] = padding.get(key, 0) + value

    job = ScoringShards(make_scorer or (lambda: scorer), config.on_error, gpus=scoring_gpus(config))
    count = math.ceil(m / size)
    with progress(m * n, "score", unit="pair") as bar:
        try:
            made = _run_shards(shard_dir, count, job, task, matrix.REWARDS_SCHEMA, executor or LocalExecutor(),
                               on_result, done=scored)
        finally:
            texts.close()
    failed = [0]
    _finish_shards(shard_dir, count, matrix.REWARDS_SCHEMA, round_dir / artifacts.REWARDS,
                   lambda table: failed.append(sum(table.column("failed").to_pylist())))
    R, _ = matrix.read_rewards(round_dir / artifacts.REWARDS, comps.prompt_ids)
    summary = stats.reward_stats(R, comps.n_tokens, pass_threshold=config.pass_threshold)
    summary["failed_pairs"] = int(sum(failed))
    if padding.get("padded_tokens"):
        summary["padding_efficiency"] = round(padding["real_tokens"] / padding["padded_tokens"], 4)
    artifacts.record_stage(round_dir, "score", config=stage_config["scoring"],
                           inputs=[artifacts.PROMPTS, artifacts.COMPLETIONS], outputs=[artifacts.REWARDS],
                           started=started, counts={"pairs": m * n, "shards_scored": made},
                           extra={"stats": summary, "scorer": scorer.name, "shard_key": digest})
    return summary


def check_on_error(config: ScoringConfig) -> None:
    if config.on_error not in ("fail", "record"):
        raise RsftError(f"scoring.on_error: expected 'fail' or 'record', got {config.on_error!r}")


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
        values, details, failed = score_pairs(
            scorer,
            [p.prompt for p, _, _ in pairs],
            [text for _, _, text in pairs],
            [p.metadata for p, _, _ in pairs],
            on_error=self.on_error,
            labels=[f"prompt {p.prompt_id} sample {j}" for p, j, _ in pairs],
        )
        last = getattr(scorer, "last_stats", None) or {}  # reward models report their padding waste
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
    """GPUs one scorer wants where the cluster has them: 1 when a reward model is involved, else 0."""
    return 1.0 if "rm:" in str(config.scorer) else 0.0


def generate_and_score(
    round_dir: Path,
    generation: GenerationConfig,
    make_generator: Callable[[], Generator],
    prompts: Sequence[Prompt] | None,
    scoring: ScoringConfig,
    scorer: Any,
    executor: Executor,
    make_scorer: Callable[[], Any] | None = None,
    new_version: bool = False,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``generate`` then ``score`` as one streaming pipeline: shard k is scored while shard k+1 generates.

    Needs an executor with ``run_stream`` (``ray``); with any other it runs the two stages one after
    the other. The files and manifest records are those of the two stages run separately: each
    completion shard is written as soon as it reaches the driver (with its scores; a rerun resumes
    generation from the written shards), its rewards are kept until ``completions.parquet`` exists
    and the score stage then writes them under its own shard key.
    """
    check_on_error(scoring)
    stream = getattr(executor, "run_stream", None)
    plan = _plan_generation(round_dir, generation, prompts, new_version)
    scored: dict[int, ShardResult] = {}
    if isinstance(plan, dict):
        counts = plan
    elif stream is None:
        counts = generate(round_dir, generation, make_generator, None, new_version, executor)
    else:
        gen_job = GenerationShards(make_generator, generation.n, gpus=generation_gpus(generation))
        score_job = ScoringShards(make_scorer or (lambda: as_scorer(scorer)), scoring.on_error,
                                  gpus=scoring_gpus(scoring))
        made = 0

        def on_generated(s: int, result: ShardResult) -> None:
            nonlocal made
            artifacts.write_table(_shard_path(plan.shard_dir, s), result.columns, matrix.COMPLETIONS_SCHEMA)
            made += 1
            bar.update(result.units)

        with progress(len(plan.prompts), "generate+score", unit="prompt") as bar:
            tasks = [(s, plan.task(s)) for s in _missing(plan.shard_dir, plan.count)]
            stream(gen_job, score_job, tasks, on_generated, scored.__setitem__)
            _run_shards(plan.shard_dir, plan.count, gen_job, plan.task, matrix.COMPLETIONS_SCHEMA,
                        executor, lambda r: None)
        counts = _finish_generation(round_dir, plan, made)
    summary = score(round_dir, scoring, scorer, shard_size=generation.shard_size, new_version=new_version,
                    executor=executor, make_scorer=make_scorer, scored=scored)
    return counts, summary


def score_pairs(
    scorer: Scorer,
    prompts: Sequence[Any],
    completions: Sequence[str],
    metadata: Sequence[Mapping[str, Any]],
    on_error: str = "fail",
    labels: Sequence[str] | None = None,
) -> tuple[list[float], list[str | None], list[bool]]:
    """Score a flat batch; returns (rewards, details, failed).

    A scorer that raises or returns a non-number is retried pair by pair to find the culprits:
    with ``on_error="fail"`` the first one stops the stage naming the pair; with ``"record"`` each
    failing pair gets NaN and ``failed=True`` (counted in the statistics).
    """
    labels = labels or [f"pair {k}" for k in range(len(prompts))]
    try:
        raw = list(scorer.score(prompts, completions, metadata))
        if len(raw) != len(prompts):
            raise RsftError(f"scorer {scorer.name!r} returned {len(raw)} scores for {len(prompts)} pairs")
        return _unpack(raw, scorer.name, labels, on_error)
    except RsftError:
        raise
    except Exception:  # noqa: BLE001 - locate the failing pair(s) below
        pass
    values: list[float] = []
    details: list[str | None] = []
    failed: list[bool] = []
    for k in range(len(prompts)):
        try:
            out = list(scorer.score([prompts[k]], [completions[k]], [metadata[k]]))
            if len(out) != 1:
                raise RsftError(f"scorer {scorer.name!r} returned {len(out)} scores for 1 pair")
            v, d, f = _unpack(out, scorer.name, [labels[k]], on_error)
        except RsftError:
            raise
        except Exception as e:  # noqa: BLE001 - user code may raise anything
            message = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}".rstrip(": ")
            if on_error == "fail":
                raise RsftError(f"scorer {scorer.name!r} failed on {labels[k]}: {message} "
                                "(scoring.on_error: record keeps going)") from e
            v, d, f = [math.nan], [f"error: {message}"], [True]
        values += v
        details += d
        failed += f
    return values, details, failed


def _unpack(raw: Sequence[Any], name: str, labels: Sequence[str], on_error: str):
    values, details, failed = [], [], []
    for value, label in zip(raw, labels, strict=True):
        detail = None
        if isinstance(value, Verdict):
            value, detail = value.score, value.details
        if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
            if on_error == "fail":
                raise RsftError(f"scorer {name!r} returned {value!r} (not a number) for {label}")
            values.append(math.nan)
            details.append(f"error: not a number: {value!r}"[:200])
            failed.append(True)
            continue
        values.append(float(value))
        details.append(detail)
        failed.append(False)
    return values, details, failed


# --- select and export ---------------------------------------------------------------------------


def select_completions(round_dir: Path, config: SelectionConfig) -> dict[str, Any]:
    """Pick completions from the reward matrix into ``selection.parquet`` (no model calls)."""
    started = time.time()
    prompts = matrix.read_prompts(round_dir / artifacts.PROMPTS)
    ids = [p.prompt_id for p in prompts]
    R, _ = matrix.read_rewards(round_dir / artifacts.REWARDS, ids)
    R, nans, infs = select.mask_non_finite(R)  # NaN and +-inf from a scorer are never picked: counted
    no_finite = int(np.count_nonzero(~(R > -np.inf).any(axis=1))) if R.shape[1] else len(prompts)
    texts = matrix.read_completions(round_dir / artifacts.COMPLETIONS, prompts).texts if config.dedup else None
    cols: dict[str, list[Any]] = {name: [] for name in matrix.SELECTION_SCHEMA.names}

    def add(i: int, j: int, rank: int, role: str, pair: int) -> None:
        for key, value in zip(cols, (ids[i], j, float(R[i, j]), rank, role, pair), strict=True):
            cols[key].append(value)

    if config.strategy == "dpo_pairs":
        Rs = select.apply_mask(R, select.dedup_mask(texts)) if texts is not None else R
        for p, (i, chosen, rejected) in enumerate(select.dpo_pairs(Rs, min_margin=config.threshold or 0.0)):
            add(i, chosen, 2 * p, "chosen", p)
            add(i, rejected, 2 * p + 1, "rejected", p)
        kept_rows = len(set(cols["prompt_id"]))
    else:
        chosen = select.select(R, config.strategy, k=config.k, threshold=config.threshold, texts=texts,
                               dedup=config.dedup)
        for rank, (i, j) in enumerate(chosen.pairs):
            add(i, j, rank, "keep", rank)
        kept_rows = len(prompts) - chosen.n_rows_without_pick
    artifacts.write_table(round_dir / artifacts.SELECTION, cols, matrix.SELECTION_SCHEMA)
    counts = {"selected": len(cols["prompt_id"]), "prompts_with_pick": kept_rows, "prompts": len(prompts),
              "nan_rewards": nans, "inf_rewards": infs, "prompts_without_finite_reward": no_finite,
              "mean_selected_reward": _mean(cols["reward"])}
    if nans or infs:
        warn(f"{nans} NaN and {infs} infinite rewards were counted as -inf (never selected); "
             f"{no_finite} of {len(prompts)} prompts have no finite reward and give no selection")
    artifacts.record_stage(round_dir, "select", config=asdict(config), inputs=[artifacts.REWARDS],
                           outputs=[artifacts.SELECTION], started=started, counts=counts)
    return counts


def export_selected(round_dir: Path) -> dict[str, Any]:
    """Write the selected completions as TRL-ready JSONL (``selected.jsonl``)."""
    started = time.time()
    prompts = matrix.read_prompts(round_dir / artifacts.PROMPTS)
    by_id = {p.prompt_id: p for p in prompts}
    comps = matrix.read_completion_index(round_dir / artifacts.COMPLETIONS, prompts)
    row_of = {pid: i for i, pid in enumerate(comps.prompt_ids)}
    selection = artifacts.read_table(round_dir / artifacts.SELECTION, "select")
    ids, samples, roles, pair_of = (selection.column(c).to_pylist() for c in ("prompt_id", "sample_idx", "role", "pair"))

    def row(pid: str, j: int) -> int:
        if not 0 <= j < comps.n:
            raise RsftError(f"{round_dir / artifacts.SELECTION}: sample_idx {j} is not one of the "
                            f"{comps.n} samples of prompt {pid}")
        return row_of[pid] * comps.n + j

    rows_at = [row(pid, j) for pid, j in zip(ids, samples, strict=True)]
    reader = matrix.CompletionTexts(comps)
    try:
        selected_texts = reader.at(rows_at)  # only the selected rows' texts
    finally:
        reader.close()

    def text(k: int) -> str:
        return selected_texts[rows_at[k]]

    rows: Iterator[dict[str, Any]]  # made as they are written
    if any(role != "keep" for role in roles):
        pairs: dict[int, dict[str, int]] = {}
        for k, (role, pair) in enumerate(zip(roles, pair_of, strict=True)):
            pairs.setdefault(pair, {})[role] = k
        rows = (export.preference_row(by_id[ids[p["chosen"]]], text(p["chosen"]), text(p["rejected"]))
                for p in pairs.values())
        kind = "preference"
    else:
        rows = (export.sft_row(by_id[ids[k]], text(k)) for k in range(len(ids)))
        kind = "sft"
    written = artifacts.write_jsonl(round_dir / artifacts.SELECTED, rows)
    artifacts.record_stage(round_dir, "export", config={"format": kind}, inputs=[artifacts.SELECTION],
                           outputs=[artifacts.SELECTED], started=started, counts={"rows": written})
    return {"rows": written, "format": kind, "path": str(round_dir / artifacts.SELECTED)}


def _mean(values: Sequence[float]) -> float | None:
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else None


def warn(message: str) -> None:
    print(f"rsft: warning: {message}", file=sys.stderr)
