"""The four stages of a round. Each reads the previous stage's files from the round folder and
writes its own, so any stage can be re-run alone (generate once, re-score or re-select many times).

generate: prompts.parquet + completions.parquet     score:  rewards.parquet
select:   selection.parquet                          export: selected.jsonl
Generation and scoring run in shards of prompts; each finished shard is written atomically under
``.shards/`` so an interrupted stage resumes at the first missing shard.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rsft import artifacts, export, matrix, select, stats
from rsft.config import GenerationConfig, ScoringConfig, SelectionConfig
from rsft.errors import RsftError
from rsft.generate import Generator
from rsft.progress import progress
from rsft.score import Scorer, as_scorer
from rsft.types import Prompt, SamplingParams, Verdict


def _shards(round_dir: Path, kind: str, stage_config: Mapping[str, Any]) -> tuple[Path, str]:
    digest = artifacts.config_hash(stage_config)
    return round_dir / ".shards" / f"{kind}-{digest}", digest


def _run_shards(
    shard_dir: Path, count: int, make: Callable[[int], Mapping[str, list[Any]]], schema: pa.Schema
) -> tuple[pa.Table, int]:
    """Produce every missing shard (atomically), then return all shards concatenated and how many were new."""
    made = 0
    for s in range(count):
        path = shard_dir / f"{s:05d}.parquet"
        if not path.exists():
            artifacts.write_table(path, make(s), schema)
            made += 1
    tables = [pq.read_table(shard_dir / f"{s:05d}.parquet") for s in range(count)]
    return (pa.concat_tables(tables) if tables else schema.empty_table()), made


def _finish_shards(shard_dir: Path, table: pa.Table, target: Path) -> None:
    """Write the stage's output from its shards. The shards stay until ``artifacts.record_stage``
    (given ``shard_key``) has recorded the stage: a kill in between still resumes from them."""
    with artifacts.atomic_path(target) as tmp:
        pq.write_table(table, tmp, compression="zstd")


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
) -> dict[str, Any]:
    """Sample ``config.n`` completions per prompt into ``completions.parquet``.

    ``prompts`` (when given) are written to ``prompts.parquet`` first; otherwise the round's
    existing prompts are used. The generator is only built when a shard is actually missing.
    """
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
    size = max(1, config.shard_size)
    count = math.ceil(len(prompts) / size)
    generator: list[Generator] = []

    def make(s: int) -> dict[str, list[Any]]:
        if not generator:
            generator.append(make_generator())
        chunk = prompts[s * size : (s + 1) * size]
        sampling = sampling_params(config, seed_offset=1009 * s)
        rows = generator[0].generate([p.prompt for p in chunk], config.n, sampling)
        _check_rows(rows, len(chunk), config.n, generator[0].name)
        bar.update(len(chunk))
        return matrix.completion_columns(chunk, rows, sampling.seed)

    with progress(len(prompts), "generate", unit="prompt") as bar:
        table, made = _run_shards(shard_dir, count, make, matrix.COMPLETIONS_SCHEMA)
    _finish_shards(shard_dir, table, round_dir / artifacts.COMPLETIONS)
    counts = {"prompts": len(prompts), "n": config.n, "completions": table.num_rows, "shards_generated": made,
              "tokens": int(np.nansum(np.array(table.column("n_tokens").to_pylist(), dtype=float)))}
    artifacts.record_stage(round_dir, "generate", config=stage_config["generation"], inputs=[artifacts.PROMPTS],
                           outputs=[artifacts.COMPLETIONS], started=started, counts=counts,
                           extra={"shard_key": digest})
    return counts


def _check_rows(rows: Sequence[Sequence[Any]], m: int, n: int, name: str) -> None:
    if len(rows) != m or any(len(r) != n for r in rows):
        got = sorted({len(r) for r in rows})
        raise RsftError(f"generator {name!r} returned {len(rows)} rows of {got} completions; expected {m} of {n}")


# --- score ---------------------------------------------------------------------------------------


def score(
    round_dir: Path, config: ScoringConfig, scorer: Any, shard_size: int = 64, new_version: bool = False
) -> dict[str, Any]:
    """Score every (prompt, completion) pair into ``rewards.parquet``; returns the reward statistics.

    ``scorer`` is anything ``rsft.score.as_scorer`` accepts (a Scorer, a plain callable, a spec).
    """
    started = time.time()
    scorer = as_scorer(scorer)
    if config.on_error not in ("fail", "record"):
        raise RsftError(f"scoring.on_error: expected 'fail' or 'record', got {config.on_error!r}")
    prompts = matrix.read_prompts(round_dir / artifacts.PROMPTS)
    comps = matrix.read_completions(round_dir / artifacts.COMPLETIONS, prompts)
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

    def make(s: int) -> dict[str, list[Any]]:
        rows = range(s * size, min(m, (s + 1) * size))
        pairs = [(i, j) for i in rows for j in range(n)]
        values, details, failed = score_pairs(
            scorer,
            [prompts[i].prompt for i, _ in pairs],
            [comps.texts[i][j] for i, j in pairs],
            [prompts[i].metadata for i, _ in pairs],
            on_error=config.on_error,
            labels=[f"prompt {prompts[i].prompt_id} sample {j}" for i, j in pairs],
        )
        bar.update(len(pairs))
        for key in ("real_tokens", "padded_tokens"):  # reward models report their padding waste
            padding[key] = padding.get(key, 0) + (getattr(scorer, "last_stats", None) or {}).get(key, 0)
        return {
            "prompt_id": [prompts[i].prompt_id for i, _ in pairs],
            "sample_idx": [j for _, j in pairs],
            "reward": values,
            "scorer": [scorer.name] * len(pairs),
            "details": details,
            "failed": failed,
        }

    padding: dict[str, int] = {}
    with progress(m * n, "score", unit="pair") as bar:
        table, made = _run_shards(shard_dir, math.ceil(m / size), make, matrix.REWARDS_SCHEMA)
    _finish_shards(shard_dir, table, round_dir / artifacts.REWARDS)
    R, _ = matrix.read_rewards(round_dir / artifacts.REWARDS, comps.prompt_ids)
    summary = stats.reward_stats(R, comps.n_tokens, pass_threshold=config.pass_threshold)
    summary["failed_pairs"] = int(sum(table.column("failed").to_pylist()))
    if padding.get("padded_tokens"):
        summary["padding_efficiency"] = round(padding["real_tokens"] / padding["padded_tokens"], 4)
    artifacts.record_stage(round_dir, "score", config=stage_config["scoring"],
                           inputs=[artifacts.PROMPTS, artifacts.COMPLETIONS], outputs=[artifacts.REWARDS],
                           started=started, counts={"pairs": m * n, "shards_scored": made},
                           extra={"stats": summary, "scorer": scorer.name, "shard_key": digest})
    return summary


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
    comps = matrix.read_completions(round_dir / artifacts.COMPLETIONS, prompts)
    row_of = {pid: i for i, pid in enumerate(comps.prompt_ids)}
    selection = artifacts.read_table(round_dir / artifacts.SELECTION, "select").to_pylist()

    def text(r: Mapping[str, Any]) -> str:
        return comps.texts[row_of[r["prompt_id"]]][r["sample_idx"]]

    if any(r["role"] != "keep" for r in selection):
        pairs: dict[int, dict[str, Any]] = {}
        for r in selection:
            pairs.setdefault(r["pair"], {})[r["role"]] = r
        rows = [export.preference_row(by_id[p["chosen"]["prompt_id"]], text(p["chosen"]), text(p["rejected"]))
                for p in pairs.values()]
        kind = "preference"
    else:
        rows = [export.sft_row(by_id[r["prompt_id"]], text(r)) for r in selection]
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
