"""Scorers: ``score(prompts, completions, metadata) -> list[float | Verdict]`` over a flat batch.

Anything below is accepted where a scorer is expected (see ``as_scorer``):
- an object with that ``score`` method (the ``Scorer`` protocol);
- a plain callable ``f(prompt, completion) -> float`` (TRL's reward-function shape), optionally
  taking metadata fields as keyword arguments (``f(prompt, completion, answer) -> float`` or ``**kw``);
- a spec string: a built-in name of ``rsft.registry.SCORERS`` (``math``, ``exact``, ``regex:PATTERN``,
  ``task``, ``rm:PATH``, ...) or user code as ``"pkg.module:name"``.

The protocols and the callable adapter live in ``score/base.py``, the spec lookup (``as_scorer``)
beside the built-in factories in ``score/builtin.py``, so no scorer module imports this package
back; every name is importable from here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rsft.registry import SCORERS
from rsft.score.base import CallableScorer as CallableScorer
from rsft.score.base import ReportsStats as ReportsStats
from rsft.score.base import Scorer as Scorer
from rsft.score.base import ScoreValue as ScoreValue
from rsft.score.base import load_object as load_object
from rsft.score.builtin import as_scorer as as_scorer
from rsft.score.builtin import builtin_names as builtin_names
from rsft.score.pairs import score_pairs as score_pairs


def scorer_gpus(spec: Any) -> float:
    """GPUs a scorer built from ``spec`` wants: a spec string (``rm:PATH`` -> 1), or a mapping or list
    of specs (a ``gate``'s ``inner``, a ``sum``'s terms) -> the most any of them wants."""
    if isinstance(spec, str):
        entry, _ = SCORERS.split(spec)
        return entry.gpus if entry is not None and ":" in spec else 0.0
    if isinstance(spec, Mapping):
        return max((scorer_gpus(part) for item in spec.items() for part in item), default=0.0)
    if isinstance(spec, list | tuple):
        return max((scorer_gpus(part) for part in spec), default=0.0)
    return 0.0
