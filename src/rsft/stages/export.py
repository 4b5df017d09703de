"""The export stage: the selected completions as TRL-ready JSONL (``selected.jsonl``).

The rows themselves (SFT or preference, text or chat) are built by ``rsft.export``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rsft import artifacts, matrix
from rsft.errors import RsftError
from rsft.export import preference_row, sft_row


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
        rows = (preference_row(by_id[ids[p["chosen"]]], text(p["chosen"]), text(p["rejected"]))
                for p in pairs.values())
        kind = "preference"
    else:
        rows = (sft_row(by_id[ids[k]], text(k)) for k in range(len(ids)))
        kind = "sft"
    written = artifacts.write_jsonl(round_dir / artifacts.SELECTED, rows)
    artifacts.record_stage(round_dir, "export", config={"format": kind}, inputs=[artifacts.SELECTION],
                           outputs=[artifacts.SELECTED], started=started, counts={"rows": written})
    return {"rows": written, "format": kind, "path": str(round_dir / artifacts.SELECTED)}
