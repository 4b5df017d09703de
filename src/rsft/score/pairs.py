"""Scoring a flat batch of pairs with any scorer, locating the pairs a scorer fails on.

Used by the score stage (one shard at a time) and by Best-of-N at inference (``rsft.bon``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from rsft.errors import RsftError
from rsft.types import Verdict

if TYPE_CHECKING:
    from rsft.score import Scorer


class PairFailed(Exception):
    """A scorer's way to fail a pair with the exact text to record (after ``error: ``): a remote
    scorer passes on the server's own ``ValueError: ...``, so both record the same details."""


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
        raw = list(scorer.score(prompts, completions, metadata))
        if len(raw) != len(prompts):
            raise RsftError(f"scorer {scorer.name!r} returned {len(raw)} scores for {len(prompts)} pairs")
        return _unpack(raw, scorer.name, labels, on_error)
    except RsftError:
        raise
    except Exception:  # noqa: BLE001 - locate the failing pair(s) below
        pass
    values: list[float] = []
    details: list[str | None] = []
    failed: list[bool] = []
    for k in range(len(prompts)):
        try:
            out = list(scorer.score([prompts[k]], [completions[k]], [metadata[k]]))
            if len(out) != 1:
                raise RsftError(f"scorer {scorer.name!r} returned {len(out)} scores for 1 pair")
            v, d, f = _unpack(out, scorer.name, [labels[k]], on_error)
        except RsftError:
            raise
        except Exception as e:  # noqa: BLE001 - user code may raise anything
            message = str(e) if isinstance(e, PairFailed) else \
                f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}".rstrip(": ")
            if on_error == "fail":
                raise RsftError(f"scorer {scorer.name!r} failed on {labels[k]}: {message} "
                                "(scoring.on_error: record keeps going)") from e
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
        detail = None
        if isinstance(value, Verdict):
            value, detail = value.score, value.details
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
