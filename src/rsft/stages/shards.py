"""Shards: how generation and scoring split a stage into pieces that survive a kill.

Each finished shard is written atomically as ``.shards/<kind>-<key>/<s>.parquet``, so an
interrupted stage resumes at the first missing shard; an executor (``rsft.stages.executor``) computes the
missing ones, here or on Ray actors, and the driver writes them. ``finish_shards`` then streams
them into the stage's one output file.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from rsft import artifacts
from rsft.stages.executor import Executor
from rsft.stages.shard_job import ShardJob, ShardResult


def shard_dir(round_dir: Path, kind: str, stage_config: Mapping[str, Any]) -> tuple[Path, str]:
    """The shard folder of a stage run with ``stage_config``, and its key (the config's hash)."""
    digest = artifacts.config_hash(stage_config)
    return round_dir / artifacts.SHARDS / f"{kind}-{digest}", digest


def hash_with_ids(stage_config: Mapping[str, Any], key: str, ids: pa.Array) -> str:
    """``artifacts.config_hash`` of ``{**stage_config, key: ids.to_pylist()}``, hashing the ids a
    chunk at a time instead of making a Python list (and one JSON text) of every prompt's id."""
    marker = "\x00ids\x00"
    blob = json.dumps({**stage_config, key: marker}, sort_keys=True, default=str, separators=(",", ":"))
    before, after = blob.split(json.dumps(marker))
    h = hashlib.sha256(before.encode())
    h.update(b"[")
    for start in range(0, len(ids), 8192):
        chunk = json.dumps(ids.slice(start, 8192).to_pylist(), separators=(",", ":"))[1:-1]
        h.update(("," if start else "").encode() + chunk.encode())
    h.update(b"]" + after.encode())
    return h.hexdigest()[:16]


def shard_path(folder: Path, s: int) -> Path:
    return folder / f"{s:05d}.parquet"


def missing_shards(folder: Path, count: int) -> list[int]:
    return [s for s in range(count) if not shard_path(folder, s).exists()]


def run_shards(
    folder: Path,
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
        artifacts.write_table(shard_path(folder, s), result.columns, schema)
        made += 1
        on_result(result)

    missing = missing_shards(folder, count)
    for s in missing:
        if done and s in done:
            write(s, done[s])
    executor.run(job, LazyTasks([s for s in missing if not (done and s in done)], task), write)
    return made


class LazyTasks(Sequence[tuple[int, Any]]):
    """The ``(shard, task)`` pairs of some shards, each task made when it is asked for."""

    def __init__(self, shards: Sequence[int], task: Callable[[int], Any]) -> None:
        self.shards, self.task = list(shards), task

    def __len__(self) -> int:
        return len(self.shards)

    def __getitem__(self, k: Any) -> Any:
        if isinstance(k, slice):
            return [(s, self.task(s)) for s in self.shards[k]]
        return self.shards[k], self.task(self.shards[k])


ROW_GROUP_ROWS = 16384
ROW_GROUP_BYTES = 8 << 20
"""A stage's output gets row groups of this many rows or this much Arrow data, whichever is reached
first; below that size the file has the bytes one ``pq.write_table`` of all its shards would give.
The writer holds a whole row group (and a reader a row group's column chunks), so these bound the
memory of a stage: a round's peak memory does not grow with M (bench/memory_scaling.py), while
long texts still get row groups of a few MB (1M prompts x 8 samples of 2 KB: ~2k row groups)."""


def finish_shards(
    folder: Path, count: int, schema: pa.Schema, target: Path, on_shard: Callable[[pa.Table], None]
) -> None:
    """Write the stage's output from its shards, streaming them into one Parquet file; ``on_shard``
    sees each shard's table (for counts). The shards stay until ``artifacts.record_stage`` (given
    ``shard_key``) has recorded the stage: a kill in between still resumes from them."""
    with artifacts.atomic_path(target) as tmp:
        if not count:
            pq.write_table(schema.empty_table(), tmp, compression="zstd")
            return
        tables = (pq.read_table(shard_path(folder, s)) for s in range(count))
        first = next(tables)
        with pq.ParquetWriter(tmp, first.schema, compression="zstd") as writer:
            for group in row_groups(itertools.chain([first], tables), on_shard):
                writer.write_table(group)


def row_groups(tables: Iterable[pa.Table], on_shard: Callable[[pa.Table], None]) -> Iterator[pa.Table]:
    """Regroup shard tables into the row groups ``finish_shards`` writes (see ``ROW_GROUP_BYTES``)."""
    buffered: list[pa.Table] = []
    rows = size = 0
    wrote = False
    for table in tables:
        on_shard(table)
        buffered.append(table)
        rows, size = rows + table.num_rows, size + table.nbytes
        while rows >= ROW_GROUP_ROWS or (rows and size >= ROW_GROUP_BYTES):
            whole = pa.concat_tables(buffered)
            take = min(rows, ROW_GROUP_ROWS)
            yield whole.slice(0, take)
            wrote = True
            rest = whole.slice(take)
            buffered, rows, size = ([rest] if rest.num_rows else []), rest.num_rows, rest.nbytes
    if rows or not wrote:
        yield pa.concat_tables(buffered)
