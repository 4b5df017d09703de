"""The round's tables in long form, and their M×N views.

``prompts.parquet``      prompt_id, prompt (text, or JSON of messages), is_chat, metadata (JSON)
``completions.parquet``  prompt_id, sample_idx, text, n_tokens, finish_reason, logprob, generator, seed
``rewards.parquet``      prompt_id, sample_idx, reward, scorer, details, failed
``selection.parquet``    prompt_id, sample_idx, reward, rank, role, pair
Rows are ordered by prompt order, then sample index, so reshaping gives the M×N matrices.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
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
    artifacts.write_table(
        path,
        {
            "prompt_id": [p.prompt_id for p in prompts],
            "prompt": [json.dumps(list(p.prompt)) if p.is_chat else p.prompt for p in prompts],
            "is_chat": [p.is_chat for p in prompts],
            "metadata": [json.dumps(dict(p.metadata), ensure_ascii=False, default=str) for p in prompts],
        },
        PROMPTS_SCHEMA,
    )


def _prompt_key(p: Prompt) -> tuple[str, str]:
    return p.prompt_id, json.dumps(dict(p.metadata), ensure_ascii=False, default=str, sort_keys=True)


def same_prompts(path: Path, prompts: Sequence[Prompt]) -> bool:
    """True when ``path`` already holds exactly these prompts (so it need not be rewritten)."""
    if not path.exists():
        return False
    try:
        return [_prompt_key(p) for p in read_prompts(path)] == [_prompt_key(p) for p in prompts]
    except RsftError:
        return False


def read_prompts(path: Path) -> list[Prompt]:
    table = artifacts.read_table(path, "generate")
    out = []
    for row in table.to_pylist():
        value = json.loads(row["prompt"]) if row["is_chat"] else row["prompt"]
        out.append(Prompt(row["prompt_id"], value, json.loads(row["metadata"] or "{}")))
    return out


# --- completions ---------------------------------------------------------------------------------


def completion_columns(
    prompts: Sequence[Prompt], rows: Sequence[Sequence[Completion]], seed: int
) -> dict[str, list[Any]]:
    cols: dict[str, list[Any]] = {name: [] for name in COMPLETIONS_SCHEMA.names}
    for prompt, row in zip(prompts, rows, strict=True):
        for j, c in enumerate(row):
            cols["prompt_id"].append(prompt.prompt_id)
            cols["sample_idx"].append(j)
            cols["text"].append(c.text)
            cols["n_tokens"].append(c.n_tokens)
            cols["finish_reason"].append(c.finish_reason)
            cols["logprob"].append(c.logprob)
            cols["generator"].append(c.generator)
            cols["seed"].append(seed)
    return cols


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
    prompt_ids: list[str]
    n: int
    n_tokens: np.ndarray
    """M×N float array; NaN where the backend did not report a count."""

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.prompt_ids), self.n


def read_completion_index(path: Path, prompts: Sequence[Prompt]) -> CompletionIndex:
    """Check ``path`` forms the M×N matrix over ``prompts`` reading only its small columns; same
    errors as ``read_completions``."""
    table = _read_columns(path, "generate", ["prompt_id", "sample_idx", "n_tokens"])
    ids = [p.prompt_id for p in prompts]
    n = _check_long_form(table, ids, path)
    return CompletionIndex(path, ids, n, _token_counts(table).reshape(len(ids), n))


class CompletionTexts:
    """Texts of consecutive prompts' rows, read from ``completions.parquet`` in batches as asked.

    Reading forward (shard after shard, gaps allowed) decodes the file once; asking for an earlier
    row starts over. Only the rows between the last request and the next stay in memory.
    """

    def __init__(self, index: CompletionIndex, batch_rows: int = 4096) -> None:
        self.index, self.batch_rows = index, max(1, batch_rows)
        self._file: pq.ParquetFile | None = None
        self._batches: Iterator[pa.RecordBatch] = iter(())
        self._buffer: pa.Array = pa.array([], pa.string())
        self._start = 0  # row of the file at self._buffer[0]

    def rows(self, first: int, stop: int) -> list[list[str]]:
        """Texts of prompts ``first`` .. ``stop - 1`` (a list of N texts each)."""
        n = self.index.n
        texts = self._take(first * n, stop * n)
        return [texts[i * n : (i + 1) * n] for i in range(stop - first)]

    def at(self, rows: Sequence[int]) -> dict[int, str]:
        """Texts at these row numbers of the file (in any order), reading it once."""
        out: dict[int, str] = {}
        for row in sorted(set(rows)):
            out[row] = self._take(row, row + 1)[0]
        return out

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        self._file, self._batches = None, iter(())

    def _take(self, begin: int, end: int) -> list[Any]:
        if begin < self._start or self._file is None:
            self._restart()
        try:
            while self._start + len(self._buffer) < end:
                batch = next(self._batches, None)
                if batch is None:
                    break
                self._buffer = pa.concat_arrays([self._buffer, batch.column(0)])
                if self._start + len(self._buffer) <= begin:  # skipped rows: drop them as we go
                    self._start += len(self._buffer)
                    self._buffer = self._buffer.slice(len(self._buffer))
        except (pa.ArrowInvalid, OSError) as e:
            raise RsftError(f"{self.index.path}: not a readable Parquet file: {e}") from e
        self._buffer = self._buffer.slice(begin - self._start)
        self._start = begin
        return self._buffer.slice(0, end - begin).to_pylist()

    def _restart(self) -> None:
        self.close()
        try:
            self._file = pq.ParquetFile(self.index.path)
            self._batches = self._file.iter_batches(batch_size=self.batch_rows, columns=["text"])
        except (pa.ArrowInvalid, OSError) as e:
            raise RsftError(f"{self.index.path}: not a readable Parquet file: {e}") from e
        self._buffer, self._start = pa.array([], pa.string()), 0


def _read_columns(path: Path, stage_hint: str, columns: list[str]) -> pa.Table:
    """``artifacts.read_table`` (same errors) for some columns only."""
    if not path.exists():
        return artifacts.read_table(path, stage_hint)  # raises its "missing (run ...)" error
    try:
        return pq.read_table(path, columns=columns)
    except (pa.ArrowInvalid, OSError) as e:
        raise RsftError(f"{path}: not a readable Parquet file: {e}") from e


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


# --- rewards -------------------------------------------------------------------------------------


def read_rewards(path: Path, prompt_ids: Sequence[str]) -> tuple[np.ndarray, pa.Table]:
    """The reward matrix R (M×N float64, NaN for failed pairs) and the raw table."""
    table = artifacts.read_table(path, "score")
    n = _check_long_form(table, prompt_ids, path)
    rewards = table.column("reward").to_numpy(zero_copy_only=False).astype(float)
    return rewards.reshape(len(prompt_ids), n), table
