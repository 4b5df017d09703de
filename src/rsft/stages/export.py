"""The export stage: the selected completions as TRL-ready JSONL (``selected.jsonl``).

The rows themselves (SFT or preference, text or chat) are built by ``rsft.train.rows``. They are made
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
from rsft.train.rows import preference_row, sft_row

EXPORT_BLOCK = 4096
"""Selected rows whose prompts and texts are in memory at once."""


def export_selected(round_dir: Path) -> dict[str, Any]:
    """Write the selected completions as TRL-ready JSONL (``selected.jsonl``)."""
    started = time.time()
    path = round_dir / artifacts.SELECTION
    ids = matrix.read_prompt_ids(round_dir / artifacts.PROMPTS)
    comps = matrix.read_completion_index(round_dir / artifacts.COMPLETIONS, ids)
    prompt_rows, text_rows, roles, pair_of = _selected_rows(path, ids, comps.n)
    del ids
    if (roles != ROLES.index("keep")).any():
        chosen, rejected = _pairs(path, roles, pair_of)
        kind, make = "preference", preference_row
        prompt_rows, text_rows_of = prompt_rows[chosen], [text_rows[chosen], text_rows[rejected]]
    else:
        kind, make, text_rows_of = "sft", sft_row, [text_rows]
    del roles, pair_of, text_rows
    matrix.release_memory()  # from here on: a block of rows at a time
    prompts = matrix.PromptReader(round_dir / artifacts.PROMPTS)
    texts = matrix.CompletionTexts(comps)
    try:
        written = artifacts.write_jsonl(round_dir / artifacts.SELECTED,
                                        _rows(prompts, texts, prompt_rows, text_rows_of, make))
    finally:
        prompts.close()
        texts.close()
    artifacts.record_stage(round_dir, "export", config={"format": kind}, inputs=[artifacts.SELECTION],
                           outputs=[artifacts.SELECTED], started=started, counts={"rows": written})
    return {"rows": written, "format": kind, "path": str(round_dir / artifacts.SELECTED)}


ROLES = ("keep", "chosen", "rejected")
"""Selection roles as codes (``len(ROLES)``: any other, or none)."""


def _selected_rows(path: Path, ids: pa.Array, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For each row of ``selection.parquet``: its prompt's row (the last prompt with its id), its row of
    ``completions.parquet``, its role code and pair, read a batch at a time; the first row naming a
    sample or prompt the round lacks is an error."""
    parts: list[tuple[np.ndarray, ...]] = []
    for batch in matrix.iter_columns(path, "select", ["prompt_id", "sample_idx", "role", "pair"], 16384):
        picked, role = batch.column(0), batch.column(2)
        prompt_rows = matrix.rows_of_ids(ids, picked)
        samples = batch.column(1).to_numpy(zero_copy_only=False)
        bad_sample = ~((samples >= 0) & (samples < n))
        bad = np.flatnonzero(bad_sample | (prompt_rows < 0))
        if len(bad):
            k = int(bad[0])
            pid = picked[k].as_py()
            if bad_sample[k]:
                raise RsftError(f"{path}: sample_idx {samples[k]} is not one of the {n} samples of prompt {pid}")
            raise RsftError(f"{path}: prompt_id {pid} is not in {artifacts.PROMPTS}")
        codes = pc.index_in(role, value_set=pa.array(ROLES)).fill_null(len(ROLES)).to_numpy(zero_copy_only=False)
        parts.append((prompt_rows, prompt_rows * n + samples.astype(np.int64), codes.astype(np.int8),
                      batch.column(3).to_numpy(zero_copy_only=False)))
    if not parts:
        return tuple(np.zeros(0, dtype=t) for t in (np.int64, np.int64, np.int8, np.int64))  # type: ignore[return-value]
    prompt_rows, text_rows, roles, pair_of = (np.concatenate(c) for c in zip(*parts, strict=True))
    return prompt_rows, text_rows, roles, pair_of


def _pairs(path: Path, roles: np.ndarray, pairs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The selection rows of each pair's chosen and rejected completion (the last such row of the pair),
    pairs in the order they first appear."""
    unique, first = np.unique(pairs, return_index=True)
    order = np.argsort(first)
    out = []
    for role in ("chosen", "rejected"):
        ks = np.flatnonzero(roles == ROLES.index(role))
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
