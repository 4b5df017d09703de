"""The select stage: completions picked from the reward matrix into ``selection.parquet`` (no model calls)."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from rsft import artifacts, matrix
from rsft import select as selectors
from rsft.config import SelectionConfig


def select_completions(round_dir: Path, config: SelectionConfig) -> dict[str, Any]:
    """Pick completions from the reward matrix into ``selection.parquet`` (no model calls)."""
    started = time.time()
    prompts = matrix.read_prompts(round_dir / artifacts.PROMPTS)
    ids = [p.prompt_id for p in prompts]
    R, _ = matrix.read_rewards(round_dir / artifacts.REWARDS, ids)
    R, nans, infs = selectors.mask_non_finite(R)  # NaN and +-inf from a scorer are never picked: counted
    no_finite = int(np.count_nonzero(~(R > -np.inf).any(axis=1))) if R.shape[1] else len(prompts)
    texts = matrix.read_completions(round_dir / artifacts.COMPLETIONS, prompts).texts if config.dedup else None
    cols: dict[str, list[Any]] = {name: [] for name in matrix.SELECTION_SCHEMA.names}

    def add(i: int, j: int, rank: int, role: str, pair: int) -> None:
        for key, value in zip(cols, (ids[i], j, float(R[i, j]), rank, role, pair), strict=True):
            cols[key].append(value)

    if config.strategy == "dpo_pairs":
        Rs = selectors.apply_mask(R, selectors.dedup_mask(texts)) if texts is not None else R
        for p, (i, chosen, rejected) in enumerate(selectors.dpo_pairs(Rs, min_margin=config.threshold or 0.0)):
            add(i, chosen, 2 * p, "chosen", p)
            add(i, rejected, 2 * p + 1, "rejected", p)
        kept_rows = len(set(cols["prompt_id"]))
    else:
        picked = selectors.select(R, config.strategy, k=config.k, threshold=config.threshold, texts=texts,
                                  dedup=config.dedup, beta=config.beta, seed=config.seed)
        for rank, (i, j) in enumerate(picked.pairs):
            add(i, j, rank, "keep", rank)
        kept_rows = len(prompts) - picked.n_rows_without_pick
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


def _mean(values: Sequence[float]) -> float | None:
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else None


def warn(message: str) -> None:
    print(f"rsft: warning: {message}", file=sys.stderr)
