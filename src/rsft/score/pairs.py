"""Scoring a flat batch of pairs with any scorer, locating the pairs a scorer fails on.

Used by the score stage (one shard at a time), by Best-of-N at inference (``rsft.bon.infer``) and, through
``score_batch`` and ``score_each``, by the combined scorers and the GRPO reward (``rsft.train.grpo``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from rsft.errors import RsftError
from rsft.types import unwrap_verdict

if TYPE_CHECKING:
    from rsft.score.base import Scorer


class PairFailed(Exception):
    """A scorer's way to fail a pair with the exact text to record (after ``error: ``): a remote
    scorer passes on the server's own ``ValueError: ...``, so both record the same details."""


def _checked(raw: Any, name: str, count: int, pairs: str) -> list[Any]:
    out = list(raw)
    if len(out) != count:
        raise RsftError(f"scorer {name!r} returned {len(out)} scores for {pairs}")
    return out


def score_batch(
    scorer: Scorer, prompts: Sequence[Any], completions: Sequence[str], metadata: Sequence[Mapping[str, Any]]
) -> list[Any]:
    """``scorer.score`` over a flat batch as a list, an ``RsftError`` when it has not one value per pair."""
    return _checked(scorer.score(prompts, completions, metadata), scorer.name, len(prompts), f"{len(prompts)} pairs")


def score_each(
    scorer: Scorer, prompts: Sequence[Any], completions: Sequence[str], metadata: Sequence[Mapping[str, Any]]
) -> Iterator[tuple[Any, Exception | None]]:
    """Each pair scored alone, lazily and in order, to find the pairs a scorer fails on once the whole
    batch failed: ``(value, None)``, or ``(None, error)`` where the call raised (or gave not one value)."""
    for k in range(len(prompts)):
        try:
            out = _checked(scorer.score([prompts[k]], [completions[k]], [metadata[k]]), scorer.name, 1, "1 pair")
        except Exception as e:  # noqa: BLE001 - user code may raise anything; the caller decides
            yield None, e
        else:
            yield out[0], None


def score_pairs(
    scorer: Scorer,
    prompts: Sequence[Any],
    completions: Sequence[str],
    metadata: Sequence[Mapping[str, Any]],
    on_error: str = "fail",
    labels: Sequence[str] | None = None,
) -> tuple[list[float], list[str | None], list[bool]]:
    """Score a flat batch; returns (rewards, details, failed).

    A scorer that raises or returns a non-number is retried pair by pair to find the culprits:
    with ``on_error="fail"`` the first one stops the stage naming the pair; with ``"record"`` each
    failing pair gets NaN and ``failed=True`` (counted in the statistics).
    """
    labels = labels or [f"pair {k}" for k in range(len(prompts))]
    try:
        raw = score_batch(scorer, prompts, completions, metadata)
    except RsftError:
        raise
    except Exception:  # noqa: BLE001 - locate the failing pair(s) below
        pass
    else:
        return _unpack(raw, scorer.name, labels, on_error)
    values: list[float] = []
    details: list[str | None] = []
    failed: list[bool] = []
    for k, (value, error) in enumerate(score_each(scorer, prompts, completions, metadata)):
        if error is None:
            v, d, f = _unpack([value], scorer.name, [labels[k]], on_error)
        elif isinstance(error, RsftError):
            raise error
        else:
            message = str(error) if isinstance(error, PairFailed) else \
                f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}".rstrip(": ")
            if on_error == "fail":
                raise RsftError(f"scorer {scorer.name!r} failed on {labels[k]}: {message} "
                                "(scoring.on_error: record keeps going)") from error
            v, d, f = [math.nan], [f"error: {message}"], [True]
        values += v
        details += d
        failed += f
    return values, details, failed


def _unpack(
    raw: Sequence[Any], name: str, labels: Sequence[str], on_error: str
) -> tuple[list[float], list[str | None], list[bool]]:
    values: list[float] = []
    details: list[str | None] = []
    failed: list[bool] = []
    for value, label in zip(raw, labels, strict=True):
        value, detail = unwrap_verdict(value)
        if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
            if on_error == "fail":
                raise RsftError(f"scorer {name!r} returned {value!r} (not a number) for {label}")
            values.append(math.nan)
            details.append(f"error: not a number: {value!r}"[:200])
            failed.append(True)
            continue
        values.append(float(value))
        details.append(detail)
        failed.append(False)
    return values, details, failed
