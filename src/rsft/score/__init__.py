"""Scorers: ``score(prompts, completions, metadata) -> list[float | Verdict]`` over a flat batch.

Anything below is accepted where a scorer is expected (see ``as_scorer``):
- an object with that ``score`` method (the ``Scorer`` protocol);
- a plain callable ``f(prompt, completion) -> float`` (TRL's reward-function shape), optionally
  taking metadata fields as keyword arguments (``f(prompt, completion, answer) -> float`` or ``**kw``);
- a spec string: a built-in name (``math``, ``exact``, ``regex:PATTERN``, ``task``, ``rm:PATH``)
  or user code as ``"pkg.module:name"``.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from rsft.errors import RsftError
from rsft.score.pairs import score_pairs as score_pairs
from rsft.types import PromptValue, Verdict

ScoreValue = float | Verdict


@runtime_checkable
class Scorer(Protocol):
    """Scores a flat batch of (prompt, completion) pairs; ``metadata[i]`` holds row i's extra fields."""

    name: str

    def score(
        self,
        prompts: Sequence[PromptValue],
        completions: Sequence[str],
        metadata: Sequence[Mapping[str, Any]],
    ) -> Sequence[ScoreValue]: ...


@runtime_checkable
class ReportsStats(Protocol):
    """A scorer that reports counters of its last ``score`` call: a reward model's ``real_tokens``
    and ``padded_tokens`` (its padding waste), summed over shards into the score stage's stats."""

    last_stats: Mapping[str, Any]


class CallableScorer:
    """Adapts a per-pair function ``f(prompt, completion, **metadata) -> float`` to ``Scorer``."""

    def __init__(self, fn: Callable[..., Any], name: str | None = None) -> None:
        self.fn = fn
        self.name = name or getattr(fn, "__qualname__", None) or type(fn).__name__
        params = inspect.signature(fn).parameters.values()
        self._takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
        positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        if len(positional) < 2 and not any(p.kind is p.VAR_POSITIONAL for p in params):
            raise RsftError(f"scorer {self.name!r} must take (prompt, completion), it takes {inspect.signature(fn)}")
        self._extra = {p.name for p in positional[2:]} | {p.name for p in params if p.kind is p.KEYWORD_ONLY}

    def score(
        self,
        prompts: Sequence[PromptValue],
        completions: Sequence[str],
        metadata: Sequence[Mapping[str, Any]],
    ) -> list[Any]:
        out = []
        for prompt, completion, meta in zip(prompts, completions, metadata, strict=True):
            kwargs = dict(meta) if self._takes_all else {k: v for k, v in meta.items() if k in self._extra}
            out.append(self.fn(prompt, completion, **kwargs))
        return out


def load_object(spec: str) -> Any:
    """Import ``"pkg.module:name"`` (``name`` may be dotted) and return the object."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise RsftError(f"scorer {spec!r}: expected 'pkg.module:name'")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as e:
        raise RsftError(f"scorer {spec!r}: cannot import {module_name!r}: {e}") from e
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise RsftError(f"scorer {spec!r}: {module_name!r} has no attribute {attr!r}") from None
    return obj


def _builtin(name: str) -> Callable[[str, Mapping[str, Any]], Scorer]:
    """Factories for built-in scorers, imported lazily (the RM pulls in torch)."""
    from rsft.score import builtin

    return builtin.REGISTRY[name]


def builtin_names() -> list[str]:
    from rsft.score import builtin

    return sorted(builtin.REGISTRY)


GPU_SCORERS: dict[str, float] = {"rm": 1.0, "prm": 1.0}
"""GPUs one built-in scorer wants where the cluster has them (a reward model, a process reward
model); the others use CPUs."""


def scorer_gpus(spec: Any) -> float:
    """GPUs a scorer built from ``spec`` wants: a spec string (``rm:PATH`` -> 1), or a mapping or list
    of specs (a ``gate``'s ``inner``, a ``sum``'s terms) -> the most any of them wants."""
    if isinstance(spec, str):
        head, sep, _ = spec.partition(":")
        return GPU_SCORERS.get(head, 0.0) if sep else 0.0
    if isinstance(spec, Mapping):
        return max((scorer_gpus(part) for item in spec.items() for part in item), default=0.0)
    if isinstance(spec, list | tuple):
        return max((scorer_gpus(part) for part in spec), default=0.0)
    return 0.0


def as_scorer(obj: Any, options: Mapping[str, Any] | None = None) -> Scorer:
    """Turn a spec string, a Scorer, a class or a plain callable into a ``Scorer``."""
    options = dict(options or {})
    if isinstance(obj, str):
        head, sep, arg = obj.partition(":")
        if head in builtin_names():
            return _builtin(head)(arg, options)
        if sep:
            obj = load_object(obj)
            if inspect.isclass(obj):
                obj = obj(**options)
            return as_scorer(obj)
        raise RsftError(
            f"unknown scorer {obj!r}; built in: {', '.join(builtin_names())}, or user code as 'pkg.module:name'"
        )
    if isinstance(obj, Scorer) and not inspect.isclass(obj):
        return obj
    if callable(obj):
        return CallableScorer(obj)
    raise RsftError(f"not a scorer: {obj!r}")
