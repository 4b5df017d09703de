"""The round's tables in long form, and their M×N views.

``prompts.parquet``      prompt_id, prompt (text, or JSON of messages), is_chat, metadata (JSON)
``completions.parquet``  prompt_id, sample_idx, text, n_tokens, finish_reason, logprob, generator, seed
``rewards.parquet``      prompt_id, sample_idx, reward, scorer, details, failed
``selection.parquet``    prompt_id, sample_idx, reward, rank, role, pair
Rows are ordered by prompt order, then sample index, so reshaping gives the M×N matrices.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from rsft import artifacts
from rsft.errors import RsftError
from rsft.types import Completion, Prompt

PROMPTS_SCHEMA = pa.schema(
    [("prompt_id", pa.string()), ("prompt", pa.string()), ("is_chat", pa.bool_()), ("metadata", pa.string())]
)
COMPLETIONS_SCHEMA = pa.schema(
    [
        ("prompt_id", pa.string()),
        ("sample_idx", pa.int32()),
        ("text", pa.string()),
        ("n_tokens", pa.int32()),
        ("finish_reason", pa.string()),
        ("logprob", pa.float64()),
        ("generator", pa.string()),
        ("seed", pa.int64()),
    ]
)
REWARDS_SCHEMA = pa.schema(
    [
        ("prompt_id", pa.string()),
        ("sample_idx", pa.int32()),
        ("reward", pa.float64()),
        ("scorer", pa.string()),
        ("details", pa.string()),
        ("failed", pa.bool_()),
    ]
)
SELECTION_SCHEMA = pa.schema(
    [
        ("prompt_id", pa.string()),
        ("sample_idx", pa.int32()),
        ("reward", pa.float64()),
        ("rank", pa.int32()),
        ("role", pa.string()),
        ("pair", pa.int32()),
    ]
)


# --- prompts -------------------------------------------------------------------------------------


def write_prompts(path: Path, prompts: Sequence[Prompt]) -> None:
    artifacts.write_table(path, prompt_columns(prompts), PROMPTS_SCHEMA)


def prompt_columns(prompts: Sequence[Prompt]) -> dict[str, list[Any]]:
    """The ``prompts.parquet`` columns of some prompts."""
    return {
        "prompt_id": [p.prompt_id for p in prompts],
        "prompt": [json.dumps(list(p.prompt)) if p.is_chat else p.prompt for p in prompts],
        "is_chat": [p.is_chat for p in prompts],
        "metadata": [json.dumps(dict(p.metadata), ensure_ascii=False, default=str) for p in prompts],
    }


PROMPT_GROUP_ROWS = 4096
"""Prompts per row group of a ``prompts.parquet`` written from a stream (``write_prompt_file``)."""


def write_prompt_file(path: Path, prompts: Iterable[Prompt]) -> None:
    """Write ``prompts.parquet`` at ``path`` (no atomic rename) as the prompts come, one row group of
    ``PROMPT_GROUP_ROWS`` at a time; up to that many prompts, the bytes of ``write_prompts``."""
    chunks = _chunks(prompts, PROMPT_GROUP_ROWS)
    first = next(chunks, [])
    if not first:
        pq.write_table(_prompt_table(first), path, compression="zstd")
        return
    with pq.ParquetWriter(path, PROMPTS_SCHEMA, compression="zstd") as writer:
        for chunk in itertools.chain([first], chunks):
            writer.write_table(_prompt_table(chunk))


def _prompt_table(prompts: Sequence[Prompt]) -> pa.Table:
    columns = prompt_columns(prompts)
    return pa.table({k: pa.array(columns[k], PROMPTS_SCHEMA.field(k).type) for k in PROMPTS_SCHEMA.names},
                    schema=PROMPTS_SCHEMA)


def _chunks(items: Iterable[Prompt], size: int) -> Iterator[list[Prompt]]:
    it = iter(items)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


def same_prompt_files(old: Path, new: Path) -> bool:
    """True when ``old`` exists and holds the prompts of ``new``: the same ids, in order, with the same
    metadata (compared as sorted JSON), so it need not be rewritten. Streams both files."""
    if not old.exists():
        return False
    try:
        with pq.ParquetFile(old) as a, pq.ParquetFile(new) as b:
            if a.metadata.num_rows != b.metadata.num_rows:
                return False
            for x, y in zip(_rows_of(a), _rows_of(b), strict=True):
                if x[0] != y[0] or (x[1] != y[1] and _sorted_json(x[1]) != _sorted_json(y[1])):
                    return False
    except (pa.ArrowInvalid, OSError, ValueError, KeyError, TypeError):  # JSONDecodeError is a ValueError
        return False
    return True


def _rows_of(file: pq.ParquetFile) -> Iterator[tuple[str, str | None]]:
    """(prompt_id, metadata) of each row, a batch at a time."""
    for batch in file.iter_batches(4096, columns=["prompt_id", "metadata"]):
        yield from zip(batch.column(0).to_pylist(), batch.column(1).to_pylist(), strict=True)


def _sorted_json(metadata: str | None) -> str:
    return json.dumps(json.loads(metadata or "{}"), ensure_ascii=False, default=str, sort_keys=True)


def read_prompts(path: Path) -> list[Prompt]:
    return [_to_prompt(row) for row in artifacts.read_table(path, "generate").to_pylist()]


def _to_prompt(row: Mapping[str, Any]) -> Prompt:
    value = json.loads(row["prompt"]) if row["is_chat"] else row["prompt"]
    return Prompt(row["prompt_id"], value, json.loads(row["metadata"] or "{}"))


def read_prompt_ids(path: Path) -> pa.Array:
    """The ``prompt_id`` column of ``prompts.parquet`` (Arrow strings: no Python object per prompt)."""
    return read_columns(path, "generate", ["prompt_id"]).column(0).combine_chunks()


ID_BLOCK = 16384
"""Prompt ids hashed at once by ``rows_of_ids`` (a hash of all M would cost ~100 bytes a prompt)."""


def rows_of_ids(ids: pa.Array, wanted: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """The row in ``ids`` of each ``wanted`` id (the last row holding it), -1 where none does;
    ``ID_BLOCK`` ids are hashed at a time and ``wanted`` is looked up in each block."""
    rows = np.full(len(wanted), -1, dtype=np.int64)
    for start in range(0, len(ids), ID_BLOCK):
        block = ids.slice(start, ID_BLOCK)
        backwards = block.take(pa.array(np.arange(len(block) - 1, -1, -1)))  # index_in finds the first
        found = pc.index_in(wanted, value_set=backwards).fill_null(-1).to_numpy(zero_copy_only=False)
        hit = found >= 0
        rows[hit] = start + len(block) - 1 - found[hit]
    return rows


class PromptReader:
    """Prompts of ``prompts.parquet`` a range at a time, read forward in batches (``RowReader``)."""

    def __init__(self, path: Path, batch_rows: int = 4096) -> None:
        self.rows_of = RowReader(path, PROMPTS_SCHEMA.names, batch_rows)

    def rows(self, first: int, stop: int) -> list[Prompt]:
        """Prompts ``first`` .. ``stop - 1``."""
        return [_to_prompt(row) for row in self.rows_of.take(first, stop).to_pylist()]

    def at(self, rows: npt.ArrayLike) -> dict[int, Prompt]:
        """The prompts at these row numbers (in any order), reading forward."""
        return {k: _to_prompt(row) for k, row in self.rows_of.at(rows).items()}

    def close(self) -> None:
        self.rows_of.close()


def release_memory() -> None:
    """Give the memory Arrow's allocator keeps cached (mimalloc, jemalloc) back to the OS: called as
    a stage ends, so the next one starts from what is held, not from this stage's high-water mark."""
    pa.default_memory_pool().release_unused()


# --- completions ---------------------------------------------------------------------------------


UNSAMPLED = "unsampled"
"""``finish_reason`` of a cell adaptive N did not sample (its text, token count and log-prob are null)."""


def completion_columns(
    prompts: Sequence[Prompt], rows: Sequence[Sequence[Completion]], seed: int, n: int | None = None
) -> dict[str, list[Any]]:
    """The completions file's columns for ``rows``; with ``n``, each row is filled up to ``n`` cells
    with unsampled ones (adaptive N: the row stopped early)."""
    cols: dict[str, list[Any]] = {name: [] for name in COMPLETIONS_SCHEMA.names}
    for prompt, row in zip(prompts, rows, strict=True):
        width = len(row) if n is None else n
        for j in range(width):
            c = row[j] if j < len(row) else None
            cols["prompt_id"].append(prompt.prompt_id)
            cols["sample_idx"].append(j)
            cols["text"].append(c.text if c else None)
            cols["n_tokens"].append(c.n_tokens if c else None)
            cols["finish_reason"].append(c.finish_reason if c else UNSAMPLED)
            cols["logprob"].append(c.logprob if c else None)
            cols["generator"].append(c.generator if c else "")
            cols["seed"].append(seed)
    return cols


def unsampled_mask(path: Path, m: int, n: int) -> np.ndarray | None:
    """The M x N cells of ``completions.parquet`` adaptive N left unsampled; None when there are none
    (a file checked by ``read_completion_index``, streamed a batch at a time)."""
    mask = np.zeros(m * n, dtype=bool)
    start = 0
    with pq.ParquetFile(path) as file:
        for batch in file.iter_batches(8192, columns=["finish_reason"]):
            column = batch.column(0)
            mask[start : start + batch.num_rows] = pc.fill_null(pc.equal(column, UNSAMPLED), False).to_numpy(
                zero_copy_only=False)
            start += batch.num_rows
    return mask.reshape(m, n) if mask.any() else None


@dataclass
class CompletionMatrix:
    """The completions of a round as M×N arrays aligned with the prompts."""

    prompt_ids: list[str]
    texts: list[list[str]]
    n_tokens: np.ndarray
    """M×N float array; NaN where the backend did not report a count."""
    table: pa.Table

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.texts), len(self.texts[0]) if self.texts else 0


def read_completions(path: Path, prompts: Sequence[Prompt]) -> CompletionMatrix:
    """Every completion in memory (texts as Python strings); stages use ``read_completion_index``."""
    table = artifacts.read_table(path, "generate")
    ids = [p.prompt_id for p in prompts]
    n = _check_long_form(table, ids, path)
    texts = table.column("text").to_pylist()
    return CompletionMatrix(
        prompt_ids=ids,
        texts=[texts[i * n : (i + 1) * n] for i in range(len(ids))],
        n_tokens=_token_counts(table).reshape(len(ids), n),
        table=table,
    )


@dataclass
class CompletionIndex:
    """The shape and token counts of ``completions.parquet``, checked against the prompts, without
    its texts: a stage reads those a shard at a time (``CompletionTexts``) or only where selected."""

    path: Path
    prompt_ids: pa.Array
    """The prompts' ids (Arrow strings), in row order."""
    n: int
    n_tokens: np.ndarray
    """M×N float array; NaN where the backend did not report a count."""

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.prompt_ids), self.n


def read_completion_index(path: Path, prompts: Sequence[Prompt] | pa.Array) -> CompletionIndex:
    """Check ``path`` forms the M×N matrix over ``prompts`` (or their ids, ``read_prompt_ids``),
    streaming its small columns; same errors as ``read_completions``."""
    ids = _ids_of(prompts)
    n, counts = _scan_matrix(path, "generate", ids, "n_tokens")
    return CompletionIndex(path, ids, n, counts)


def _ids_of(prompts: Sequence[Prompt] | pa.Array) -> pa.Array:
    if isinstance(prompts, pa.Array):
        return prompts
    return pa.array([p.prompt_id for p in prompts], pa.string())


class RowReader:
    """Rows of some columns of a Parquet file, read forward in batches as asked.

    Reading forward (shard after shard, gaps allowed) decodes the file once; asking for an earlier
    row starts over. Only the rows between the last request and the next stay in memory.
    """

    def __init__(self, path: Path, columns: Sequence[str], batch_rows: int = 4096) -> None:
        self.path, self.columns, self.batch_rows = path, list(columns), max(1, batch_rows)
        self._file: pq.ParquetFile | None = None
        self._batches: Iterator[pa.RecordBatch] = iter(())
        self._buffer: pa.Table | None = None
        self._start = 0  # row of the file at self._buffer[0]

    def take(self, begin: int, end: int) -> pa.Table:
        """Rows ``begin`` .. ``end - 1`` (fewer where the file ends)."""
        self._reach(begin, end)
        assert self._buffer is not None
        return self._buffer.slice(0, end - begin)

    def at(self, rows: npt.ArrayLike) -> dict[int, dict[str, Any]]:
        """The rows at these row numbers (in any order, repeats allowed), reading forward once."""
        wanted = np.unique(np.asarray(rows, dtype=np.int64))
        out: dict[int, dict[str, Any]] = {}
        k = 0
        while k < len(wanted):
            self._reach(int(wanted[k]), int(wanted[k]) + 1)
            assert self._buffer is not None
            stop = int(np.searchsorted(wanted, self._start + self._buffer.num_rows))
            if stop == k:
                raise RsftError(f"{self.path}: has no row {int(wanted[k])}")
            picked = self._buffer.take(pa.array(wanted[k:stop] - self._start)).to_pylist()
            out.update(zip(wanted[k:stop].tolist(), picked, strict=True))
            k = stop
        return out

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        self._file, self._batches, self._buffer = None, iter(()), None

    def _reach(self, begin: int, end: int) -> None:
        """Make the buffer start at ``begin`` and hold rows up to ``end`` (or the file's end)."""
        if self._buffer is None or begin < self._start:
            self._restart()
        assert self._buffer is not None
        try:
            while self._start + self._buffer.num_rows < end:
                batch = next(self._batches, None)
                if batch is None:
                    break
                if self._start + self._buffer.num_rows + batch.num_rows <= begin:  # skipped rows: drop them
                    self._start += self._buffer.num_rows + batch.num_rows
                    self._buffer = self._buffer.slice(self._buffer.num_rows)
                    continue
                self._buffer = pa.concat_tables([self._buffer, pa.Table.from_batches([batch])])
        except (pa.ArrowInvalid, OSError) as e:
            raise RsftError(f"{self.path}: not a readable Parquet file: {e}") from e
        skip = min(max(0, begin - self._start), self._buffer.num_rows)
        self._buffer = self._buffer.slice(skip)
        self._start += skip

    def _restart(self) -> None:
        self.close()
        try:
            self._file = pq.ParquetFile(self.path)
            self._batches = self._file.iter_batches(batch_size=self.batch_rows, columns=self.columns)
            self._buffer = self._file.schema_arrow.empty_table().select(self.columns)
        except (pa.ArrowInvalid, OSError, KeyError) as e:
            raise RsftError(f"{self.path}: not a readable Parquet file: {e}") from e
        self._start = 0


class CompletionTexts:
    """Texts of consecutive prompts' rows, read from ``completions.parquet`` in batches as asked
    (a ``RowReader`` of its ``text`` column)."""

    def __init__(self, index: CompletionIndex, batch_rows: int = 4096) -> None:
        self.index = index
        self._rows = RowReader(index.path, ["text"], batch_rows)

    def rows(self, first: int, stop: int) -> list[list[str]]:
        """Texts of prompts ``first`` .. ``stop - 1`` (a list of N texts each)."""
        n = self.index.n
        texts = self._rows.take(first * n, stop * n).column(0).to_pylist()
        return [texts[i * n : (i + 1) * n] for i in range(stop - first)]

    def at(self, rows: npt.ArrayLike) -> dict[int, str]:
        """Texts at these row numbers of the file (in any order), reading it once."""
        return {k: row["text"] for k, row in self._rows.at(rows).items()}

    def close(self) -> None:
        self._rows.close()


def read_columns(path: Path, stage_hint: str, columns: list[str]) -> pa.Table:
    """``artifacts.read_table`` (same errors) for some columns only."""
    if not path.exists():
        return artifacts.read_table(path, stage_hint)  # raises its "missing (run ...)" error
    try:
        with pq.ParquetFile(path) as file:
            _check_columns(file, columns)
            return file.read(columns=columns)
    except (pa.ArrowInvalid, OSError) as e:
        raise RsftError(f"{path}: not a readable Parquet file: {e}") from e


def iter_columns(path: Path, stage_hint: str, columns: list[str], batch_rows: int = 8192) -> Iterator[pa.RecordBatch]:
    """``read_columns`` a batch of rows at a time (same errors)."""
    if not path.exists():
        artifacts.read_table(path, stage_hint)  # raises its "missing (run ...)" error
    try:
        with pq.ParquetFile(path) as file:
            _check_columns(file, columns)
            yield from file.iter_batches(batch_rows, columns=columns)
    except (pa.ArrowInvalid, OSError) as e:
        raise RsftError(f"{path}: not a readable Parquet file: {e}") from e


def _check_columns(file: pq.ParquetFile, columns: Sequence[str]) -> None:
    """Raise ArrowInvalid for a missing column (``ParquetFile`` reads would silently skip it)."""
    missing = [c for c in columns if c not in file.schema_arrow.names]
    if missing:
        raise pa.ArrowInvalid(f"no column {missing[0]!r}")


def _token_counts(table: pa.Table) -> np.ndarray:
    """The ``n_tokens`` column as floats, NaN where null."""
    counts = table.column("n_tokens").cast(pa.float64()).fill_null(np.nan)
    return np.asarray(counts.to_numpy(), dtype=float)


def _check_long_form(table: pa.Table, prompt_ids: Sequence[str], path: Path) -> int:
    """Check rows are prompt-major with sample_idx 0..N-1 for every prompt; return N."""
    m = len(prompt_ids)
    if m == 0 or table.num_rows % m:
        raise RsftError(f"{path}: {table.num_rows} rows do not form a matrix over {m} prompts")
    n = table.num_rows // m
    got_ids = table.column("prompt_id")
    got_idx = table.column("sample_idx").to_numpy()
    expected_ids = pa.array(prompt_ids, pa.string()).take(pa.array(np.repeat(np.arange(m), n)))
    if not got_ids.equals(pa.chunked_array([expected_ids])) or not np.array_equal(got_idx, np.tile(np.arange(n), m)):
        raise RsftError(f"{path}: rows do not match prompts.parquet (regenerate this round)")
    return n


def _scan_matrix(path: Path, stage_hint: str, prompt_ids: pa.Array, column: str) -> tuple[int, np.ndarray]:
    """``_check_long_form`` a batch at a time, and ``column`` as the M×N float matrix (NaN where null):
    the file's ids and texts are never all in memory."""
    if not path.exists():
        artifacts.read_table(path, stage_hint)  # raises its "missing (run ...)" error
    m = len(prompt_ids)
    try:
        with pq.ParquetFile(path) as file:
            _check_columns(file, ["prompt_id", "sample_idx", column])
            rows = file.metadata.num_rows
            if m == 0 or rows % m:
                raise RsftError(f"{path}: {rows} rows do not form a matrix over {m} prompts")
            n = rows // m
            values = np.empty(rows, dtype=float)
            start = 0
            for batch in file.iter_batches(8192, columns=["prompt_id", "sample_idx", column]):
                at = np.arange(start, start + batch.num_rows)
                ids, idx = batch.column(0), batch.column(1).to_numpy(zero_copy_only=False)
                if not ids.equals(prompt_ids.take(pa.array(at // n))) or not np.array_equal(idx, at % n):
                    raise RsftError(f"{path}: rows do not match prompts.parquet (regenerate this round)")
                values[start : start + batch.num_rows] = _floats(batch.column(2))
                start += batch.num_rows
    except (pa.ArrowInvalid, OSError) as e:
        raise RsftError(f"{path}: not a readable Parquet file: {e}") from e
    return n, values.reshape(m, n)


def _floats(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A numeric column as floats, NaN where null."""
    return np.asarray(column.cast(pa.float64()).fill_null(np.nan).to_numpy(), dtype=float)


# --- rewards -------------------------------------------------------------------------------------


def read_rewards(path: Path, prompt_ids: Sequence[str]) -> tuple[np.ndarray, pa.Table]:
    """The reward matrix R (M×N float64, NaN for failed pairs) and the raw table."""
    table = artifacts.read_table(path, "score")
    n = _check_long_form(table, prompt_ids, path)
    rewards = table.column("reward").to_numpy(zero_copy_only=False).astype(float)
    return rewards.reshape(len(prompt_ids), n), table


def read_reward_matrix(path: Path, prompt_ids: Sequence[str] | pa.Array) -> np.ndarray:
    """The reward matrix R of ``read_rewards``, streaming only its ids, indices and rewards."""
    ids = prompt_ids if isinstance(prompt_ids, pa.Array) else pa.array(list(prompt_ids), pa.string())
    return _scan_matrix(path, "score", ids, "reward")[1]
