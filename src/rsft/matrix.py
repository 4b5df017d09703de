"""The round's tables in long form, and their M×N views.

``prompts.parquet``      prompt_id, prompt (text, or JSON of messages), is_chat, metadata (JSON)
``completions.parquet``  prompt_id, sample_idx, text, n_tokens, finish_reason, logprob, generator, seed
``rewards.parquet``      prompt_id, sample_idx, reward, scorer, details, failed
``selection.parquet``    prompt_id, sample_idx, reward, rank, role, pair
Rows are ordered by prompt order, then sample index, so reshaping gives the M×N matrices.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

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
    table = artifacts.read_table(path, "generate")
    ids = [p.prompt_id for p in prompts]
    n = _check_long_form(table, ids, path)
    texts = table.column("text").to_pylist()
    tokens = np.array([np.nan if t is None else t for t in table.column("n_tokens").to_pylist()], dtype=float)
    return CompletionMatrix(
        prompt_ids=ids,
        texts=[texts[i * n : (i + 1) * n] for i in range(len(ids))],
        n_tokens=tokens.reshape(len(ids), n),
        table=table,
    )


def _check_long_form(table: pa.Table, prompt_ids: Sequence[str], path: Path) -> int:
    """Check rows are prompt-major with sample_idx 0..N-1 for every prompt; return N."""
    m = len(prompt_ids)
    if m == 0 or table.num_rows % m:
        raise RsftError(f"{path}: {table.num_rows} rows do not form a matrix over {m} prompts")
    n = table.num_rows // m
    got_ids = table.column("prompt_id").to_pylist()
    got_idx = table.column("sample_idx").to_numpy()
    expected_ids = [pid for pid in prompt_ids for _ in range(n)]
    if got_ids != expected_ids or not np.array_equal(got_idx, np.tile(np.arange(n), m)):
        raise RsftError(f"{path}: rows do not match prompts.parquet (regenerate this round)")
    return n


# --- rewards -------------------------------------------------------------------------------------


def read_rewards(path: Path, prompt_ids: Sequence[str]) -> tuple[np.ndarray, pa.Table]:
    """The reward matrix R (M×N float64, NaN for failed pairs) and the raw table."""
    table = artifacts.read_table(path, "score")
    n = _check_long_form(table, prompt_ids, path)
    rewards = table.column("reward").to_numpy(zero_copy_only=False).astype(float)
    return rewards.reshape(len(prompt_ids), n), table
