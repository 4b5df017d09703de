"""The export stage: the selected completions as TRL-ready JSONL (``selected.jsonl``).

The rows themselves (SFT or preference, text or chat) are built by ``rsft.export``. They are made
``EXPORT_BLOCK`` selected rows at a time: only those rows' prompts and texts are read (forward
through ``prompts.parquet`` and ``completions.parquet``), so memory does not grow with the round.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rsft import artifacts, matrix
from rsft.errors import RsftError
from rsft.export import preference_row, sft_row

EXPORT_BLOCK = 4096
"""Selected rows whose prompts and texts are in memory at once."""


def export_selected(round_dir: Path) -> dict[str, Any]:
    """Write the selected completions as TRL-ready JSONL (``selected.jsonl``)."""
    started = time.time()
    ids = matrix.read_prompt_ids(round_dir / artifacts.PROMPTS)
    comps = matrix.read_completion_index(round_dir / artifacts.COMPLETIONS, ids)
    selection = artifacts.read_table(round_dir / artifacts.SELECTION, "select")
    prompt_rows, text_rows = _rows_of(round_dir / artifacts.SELECTION, selection, ids, comps.n)
    roles = selection.column("role")
    prompts = matrix.PromptReader(round_dir / artifacts.PROMPTS)
    texts = matrix.CompletionTexts(comps)
    try:
        if pc.any(pc.fill_null(pc.not_equal(roles, "keep"), True)).as_py():
            chosen, rejected = _pairs(round_dir / artifacts.SELECTION, roles, selection.column("pair"))
            rows = _rows(prompts, texts, prompt_rows[chosen], [text_rows[chosen], text_rows[rejected]],
                         preference_row)
            kind = "preference"
        else:
            rows = _rows(prompts, texts, prompt_rows, [text_rows], sft_row)
            kind = "sft"
        written = artifacts.write_jsonl(round_dir / artifacts.SELECTED, rows)
    finally:
        prompts.close()
        texts.close()
    artifacts.record_stage(round_dir, "export", config={"format": kind}, inputs=[artifacts.SELECTION],
                           outputs=[artifacts.SELECTED], started=started, counts={"rows": written})
    return {"rows": written, "format": kind, "path": str(round_dir / artifacts.SELECTED)}


def _rows_of(path: Path, selection: pa.Table, ids: pa.Array, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Each selected row's prompt row (the last prompt with its id) and its row of ``completions.parquet``;
    the first row naming a sample or prompt the round lacks is an error."""
    m = len(ids)
    picked = selection.column("prompt_id")
    found = pc.index_in(picked, value_set=ids.take(pa.array(np.arange(m - 1, -1, -1))))  # last occurrence wins
    unknown = found.is_null().to_numpy(zero_copy_only=False)
    prompt_rows = m - 1 - found.fill_null(m - 1).to_numpy(zero_copy_only=False).astype(np.int64)
    samples = selection.column("sample_idx").to_numpy(zero_copy_only=False)
    bad_sample = ~((samples >= 0) & (samples < n))
    bad = np.flatnonzero(bad_sample | unknown)
    if len(bad):
        k = int(bad[0])
        pid = picked[k].as_py()
        if bad_sample[k]:
            raise RsftError(f"{path}: sample_idx {samples[k]} is not one of the {n} samples of prompt {pid}")
        raise RsftError(f"{path}: prompt_id {pid} is not in {artifacts.PROMPTS}")
    return prompt_rows, prompt_rows * n + samples.astype(np.int64)


def _pairs(path: Path, roles: pa.ChunkedArray, pair_of: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """The selection rows of each pair's chosen and rejected completion (the last such row of the pair),
    pairs in the order they first appear."""
    pairs = pair_of.to_numpy(zero_copy_only=False)
    unique, first = np.unique(pairs, return_index=True)
    order = np.argsort(first)
    out = []
    for role in ("chosen", "rejected"):
        ks = np.flatnonzero(pc.fill_null(pc.equal(roles, role), False).to_numpy(zero_copy_only=False))
        last = np.full(len(unique), -1, dtype=np.int64)
        np.maximum.at(last, np.searchsorted(unique, pairs[ks]), ks)
        last = last[order]
        if (last < 0).any():
            raise RsftError(f"{path}: pair {unique[order][np.argmax(last < 0)]} has no {role} row")
        out.append(last)
    return out[0], out[1]


def _rows(prompts: matrix.PromptReader, texts: matrix.CompletionTexts, prompt_rows: np.ndarray,
          text_rows: list[np.ndarray], make: Callable[..., dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """``make(prompt, *texts)`` for each selected row, ``EXPORT_BLOCK`` rows read at a time."""
    for a in range(0, len(prompt_rows), EXPORT_BLOCK):
        block = slice(a, a + EXPORT_BLOCK)
        prompt_of = prompts.at(prompt_rows[block])
        text_of = texts.at(np.concatenate([rows[block] for rows in text_rows]))
        for k in range(a, min(a + EXPORT_BLOCK, len(prompt_rows))):
            yield make(prompt_of[int(prompt_rows[k])], *(text_of[int(rows[k])] for rows in text_rows))
