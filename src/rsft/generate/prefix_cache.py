"""Shared-prefix KV caching: prompts that start with the same tokens (a task's few-shot examples)
run that prefix through the model once, and its KV cache is repeated for every row of a batch.

Used by generation (``rsft.generate.hf``: one batch of prompts, then N samples each) and by
log-prob scoring for KL (``rsft.train.logprobs``: every batch of completions over the same prompts), so
both take the same prefix and the same fallbacks. torch is imported inside the functions.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Sequence
from typing import Any

MIN_SHARED_PREFIX = 8
"""Shortest common token prefix worth running once and sharing through the KV cache."""


def cache_keyword(model: Any) -> str | None:
    """The keyword ``model.forward`` takes a KV cache by: ``cache`` (transformers 5.x renamed it),
    ``past_key_values``, or None when it takes neither."""
    params = inspect.signature(model.forward).parameters
    return next((k for k in ("cache", "past_key_values") if k in params), None)


def cache_of(output: Any) -> Any:
    """The KV cache a forward pass returned (under either name), or None."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else getattr(output, "past_key_values", None)


def shared_prefix_length(sequences: Sequence[Sequence[int]]) -> int:
    """How many leading tokens every sequence shares, leaving each at least one token of its own
    (its suffix run decides its first prediction); 0 for fewer than two sequences or a shared
    prefix shorter than ``MIN_SHARED_PREFIX``."""
    if len(sequences) < 2:
        return 0
    first, shared = sequences[0], min(len(s) for s in sequences) - 1
    for ids in sequences[1:]:
        shared = next((k for k in range(shared) if ids[k] != first[k]), shared)
    return shared if shared >= MIN_SHARED_PREFIX else 0


def prefix_cache(model: Any, sequences: Sequence[Sequence[int]], device: Any) -> tuple[int, Any]:
    """The sequences' shared prefix (``shared_prefix_length``) run through ``model`` once:
    ``(length, KV cache with one row)``, or ``(0, None)`` when there is no such prefix or the
    model's cache cannot be repeated per row (no ``batch_repeat_interleave``)."""
    import torch

    shared = shared_prefix_length(sequences)
    if not shared:
        return 0, None
    with torch.inference_mode():
        out = model(input_ids=torch.tensor([list(sequences[0][:shared])], device=device), use_cache=True)
    cache = cache_of(out)
    if not hasattr(cache, "batch_repeat_interleave"):
        return 0, None
    return shared, cache


def repeated(cache: Any, rows: int, in_place: bool = False) -> Any:
    """``cache`` (one row) repeated to ``rows`` rows: a copy, so the prefix serves later batches
    too, unless ``in_place`` (the caller's last use of it)."""
    out = cache if in_place else copy.deepcopy(cache)
    out.batch_repeat_interleave(rows)
    return out
