"""What the scorer modules share: the ``Scorer`` protocol and plain callables as scorers (and
``load_object`` for user code named ``"pkg.module:name"``, from ``rsft.registry``). It imports no
other scorer module, so every one can import it."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from rsft.errors import RsftError
from rsft.registry import load_object as load_object
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
