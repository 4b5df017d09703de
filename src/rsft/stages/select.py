"""The select stage: completions picked from the reward matrix into ``selection.parquet`` (no model calls).

It holds the M×N reward matrix (8 bytes a pair) and the picks as arrays; prompt ids stay Arrow
strings and completion texts (for ``dedup``) are read a block of prompts at a time.
"""

from __future__ import annotations

import itertools
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rsft import artifacts, matrix, registry
from rsft import select as selectors
from rsft.config import SelectionConfig
from rsft.stages import shards

DEDUP_BLOCK = 4096
"""Prompts whose completion texts are in memory at once while ``dedup`` masks repeats."""


def select_completions(round_dir: Path, config: SelectionConfig) -> dict[str, Any]:
    """Pick completions from the reward matrix into ``selection.parquet`` (no model calls)."""
    started = time.time()
    ids = matrix.read_prompt_ids(round_dir / artifacts.PROMPTS)
    m = len(ids)
    R = matrix.read_reward_matrix(round_dir / artifacts.REWARDS, ids)
    R, nans, infs = selectors.mask_non_finite(R)  # NaN and +-inf from a scorer are never picked: counted
    unsampled = _unsampled(round_dir, R.shape)
    nans -= unsampled  # cells adaptive N did not sample are NaN too, but no scorer failed on them
    no_finite = int(np.count_nonzero(~(R > -np.inf).any(axis=1))) if R.shape[1] else m
    Rs = selectors.apply_mask(R, dedup_mask(round_dir, ids)) if config.dedup else R

    strategy = registry.STRATEGIES.get(config.strategy, "selection.strategy: ")
    if strategy.pairs:
        pick = strategy.load()
        triples = np.concatenate([_offset(pick(block, k=config.k, threshold=config.threshold, beta=config.beta,
                                               seed=config.seed), start, 3)
                                  for start, block in (_blocks(Rs) if strategy.row_wise else [(0, Rs)])])
        rows, samples = np.repeat(triples[:, 0], 2), triples[:, 1:].reshape(-1)
        roles, role_names = np.tile(np.array([0, 1], dtype=np.int8), len(triples)), ["chosen", "rejected"]
        pairs = np.repeat(np.arange(len(triples)), 2)
        kept_rows = len(np.unique(matrix.rows_of_ids(ids, ids.take(pa.array(np.unique(rows))))))  # distinct ids
    else:
        rows, samples, without_pick = _select(Rs, config, strategy.row_wise)
        roles, role_names, pairs = np.zeros(len(rows), dtype=np.int8), ["keep"], np.arange(len(rows))
        kept_rows = m - without_pick
    rewards = R[rows, samples]
    columns = {"prompt_id": (ids, rows), "sample_idx": samples, "reward": rewards, "rank": np.arange(len(rows)),
               "role": (pa.array(role_names, pa.string()), roles), "pair": pairs}
    write_arrays(round_dir / artifacts.SELECTION, columns, matrix.SELECTION_SCHEMA)
    counts = {"selected": len(rows), "prompts_with_pick": kept_rows, "prompts": m,
              "nan_rewards": nans, "inf_rewards": infs, "prompts_without_finite_reward": no_finite,
              "mean_selected_reward": _mean(rewards)}
    if unsampled:
        counts["unsampled"] = unsampled
    if nans or infs:
        warn(f"{nans} NaN and {infs} infinite rewards were counted as -inf (never selected); "
             f"{no_finite} of {m} prompts have no finite reward and give no selection")
    artifacts.record_stage(round_dir, "select", config=asdict(config), inputs=[artifacts.REWARDS],
                           outputs=[artifacts.SELECTION], started=started, counts=counts)
    matrix.release_memory()
    return counts


SELECT_BLOCK = 8192
"""Rows at a time of a strategy that picks within each row alone (``row_wise`` in
``rsft.registry.STRATEGIES``: the same picks, and its lists of picks stay small); ``top_k`` (global)
and ``rso`` (one seeded stream) take R whole."""


def _blocks(R: np.ndarray) -> list[tuple[int, np.ndarray]]:
    return [(start, R[start : start + SELECT_BLOCK]) for start in range(0, max(1, len(R)), SELECT_BLOCK)]


def _offset(picks: list[tuple[int, ...]], start: int, width: int) -> np.ndarray:
    """Picks of a block of rows as an array, their rows made rows of R."""
    out = np.array(picks, dtype=np.int64).reshape(-1, width)
    out[:, 0] += start
    return out


def _select(R: np.ndarray, config: SelectionConfig, row_wise: bool) -> tuple[np.ndarray, np.ndarray, int]:
    """``selectors.select``'s picks as (rows, columns) arrays, and the rows without a pick."""
    picks, without = [], 0
    for start, block in _blocks(R) if row_wise else [(0, R)]:
        picked = selectors.select(block, config.strategy, k=config.k, threshold=config.threshold,
                                  beta=config.beta, seed=config.seed)
        picks.append(_offset(picked.pairs, start, 2))
        without += picked.n_rows_without_pick
    rows, cols = np.concatenate(picks).T
    return rows, cols, without


def write_arrays(path: Path, columns: dict[str, Any], schema: pa.Schema) -> None:
    """Write a table given as numpy columns, or ``(values, index)`` pairs for ``values.take(index)``,
    a row group of ``shards.ROW_GROUP_ROWS`` at a time (each made when written): the bytes of
    ``artifacts.write_table`` of the same rows up to that size."""
    length = len(next(c[1] if isinstance(c, tuple) else c for c in columns.values()))

    def group(start: int, stop: int) -> pa.Table:
        return pa.table({name: pa.array(_part(columns[name], start, stop), schema.field(name).type)
                         for name in schema.names}, schema=schema)

    with artifacts.atomic_path(path) as tmp:
        if not length:
            pq.write_table(group(0, 0), tmp, compression="zstd")
            return
        with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
            for start in range(0, length, shards.ROW_GROUP_ROWS):
                writer.write_table(group(start, start + shards.ROW_GROUP_ROWS))


def _part(column: Any, start: int, stop: int) -> Any:
    if isinstance(column, tuple):
        values, index = column
        return values.take(pa.array(index[start:stop], pa.int64()))
    return column[start:stop]


def _unsampled(round_dir: Path, shape: tuple[int, int]) -> int:
    """How many cells of the round adaptive N left unsampled (0 without a completions file)."""
    path = round_dir / artifacts.COMPLETIONS
    mask = matrix.unsampled_mask(path, *shape) if path.exists() else None
    return int(mask.sum()) if mask is not None else 0


def dedup_mask(round_dir: Path, ids: pa.Array) -> np.ndarray:
    """``rsft.select.dedup_mask`` of the round's completion texts, read ``DEDUP_BLOCK`` prompts at a time."""
    comps = matrix.read_completion_index(round_dir / artifacts.COMPLETIONS, ids)
    m, n = comps.shape
    texts = matrix.CompletionTexts(comps, batch_rows=DEDUP_BLOCK * n)
    try:
        blocks = [selectors.dedup_mask(texts.rows(a, min(m, a + DEDUP_BLOCK))).reshape(-1, n)
                  for a in range(0, m, DEDUP_BLOCK)]
    finally:
        texts.close()
    return np.concatenate(blocks)


def _mean(values: np.ndarray) -> float | None:
    """The mean of the finite values, summed one by one in order as Python's ``sum`` of a list does."""
    finite = values[np.isfinite(values)]
    if not len(finite):
        return None
    chunks = (finite[k : k + 8192].tolist() for k in range(0, len(finite), 8192))
    return sum(itertools.chain.from_iterable(chunks)) / len(finite)


def warn(message: str) -> None:
    print(f"rsft: warning: {message}", file=sys.stderr)
