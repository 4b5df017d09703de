"""Plain data shared by every stage: prompts, sampling settings, completions, verdicts."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

Message = Mapping[str, Any]
"""One chat message: ``{"role": ..., "content": ...}``."""

PromptValue = str | Sequence[Message]
"""What a generator sees: plain text, or a list of chat messages."""


@dataclass(frozen=True)
class Prompt:
    """One row of the prompt set."""

    prompt_id: str
    """Stable content hash of ``prompt`` (see ``rsft.prompts.prompt_id``)."""
    prompt: PromptValue
    """Plain text, or chat ``messages``."""
    metadata: Mapping[str, Any] = field(default_factory=dict)
    """Anything a scorer needs, e.g. the gold ``answer``; passed to scorers as keyword arguments."""

    @property
    def is_chat(self) -> bool:
        return not isinstance(self.prompt, str)


@dataclass(frozen=True)
class SamplingParams:
    """How to sample. ``temperature == 0`` means greedy."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    """0 disables the top-k filter. The library default filters nothing, so code that builds
    ``SamplingParams`` itself (``best_of_n`` without settings, the judge scorer, ``rsft serve`` requests
    without ``top_k``) samples the whole distribution; run configs and the CLI default to
    ``SamplingConfig.top_k`` (50)."""
    max_new_tokens: int = 64
    stop: tuple[str, ...] = ()
    """Strings that end a completion; the completion is cut before the first one."""
    seed: int = 0

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")


@dataclass(frozen=True)
class Completion:
    """One sampled completion of one prompt."""

    text: str
    n_tokens: int | None
    """Generated tokens kept (up to and including EOS or the stop string); None if the backend did not say."""
    finish_reason: str
    """``"stop"`` (EOS or a stop string) or ``"length"`` (ran into max_new_tokens)."""
    logprob: float | None = None
    """Sum of token log-probabilities under the model's own distribution (temperature 1, no filters)."""
    generator: str = ""
    """Which generator produced it, for heterogeneous matrices."""


@dataclass(frozen=True)
class Verdict:
    """A score with an optional explanation; scorers may return these instead of bare floats."""

    score: float
    details: str | None = None


def unwrap_verdict(value: Any) -> tuple[Any, str | None]:
    """A scorer's output as ``(score, details)``: a ``Verdict``'s two fields, anything else (a float,
    or a bad value the caller reports) as it is, without details."""
    if isinstance(value, Verdict):
        return value.score, value.details
    return value, None
