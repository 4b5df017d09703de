"""TRL reward functions as rsft scorers: spec ``trl:pkg.module:name``, or ``trl:NAME`` for the rewards
TRL ships in ``trl.rewards`` (the other way, rsft scorers as TRL rewards, is ``rsft.train.grpo``).

TRL calls a reward function as ``f(prompts=..., completions=..., completion_ids=..., trainer_state=...,
log_extra=..., log_metric=..., **dataset_columns)`` with one list entry per completion and takes one
float per completion back, or None where the reward does not apply.
"""

from __future__ import annotations

import asyncio
import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from rsft.errors import RsftError, first_line
from rsft.registry import load_object
from rsft.types import PromptValue, Verdict


def _noop(*args: Any, **kwargs: Any) -> None:
    return None


class TrlRewardScorer:
    """An rsft Scorer calling a TRL reward function ``f(prompts, completions, **columns) -> list[float | None]``.

    Metadata fields become the column keyword arguments (renamed by ``columns``); ``trainer_state`` is
    None and ``log_extra``/``log_metric`` do nothing (there is no trainer); ``completion_ids`` are the
    completions tokenized by ``tokenizer`` (a path; the policy's, for rewards that count tokens), else None.
    Completions of chat prompts are passed as ``[{"role": "assistant", "content": text}]``, as TRL does
    for conversational datasets (``conversational`` forces one form). A None reward becomes NaN, with
    details saying so, which rsft counts as unscored.
    """

    def __init__(self, fn: Callable[..., Any], name: str | None = None, columns: Mapping[str, str] | None = None,
                 conversational: bool | None = None, tokenizer: str | None = None) -> None:
        if not callable(fn):
            raise RsftError(f"trl: {fn!r} is not a reward function")
        self.fn = fn
        self.tokenizer = _load_tokenizer(tokenizer) if tokenizer else None
        self.name = name or f"trl:{getattr(fn, '__name__', type(fn).__name__)}"
        self.columns = dict(columns or {})
        self.conversational = conversational
        params = inspect.signature(fn).parameters.values()
        self._takes_all = any(p.kind is p.VAR_KEYWORD for p in params)
        self._named = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}

    def score(self, prompts: Sequence[PromptValue], completions: Sequence[str],
              metadata: Sequence[Mapping[str, Any]]) -> list[float | Verdict]:
        chat = [self.conversational if self.conversational is not None else not isinstance(p, str) for p in prompts]
        kwargs: dict[str, Any] = {
            "prompts": list(prompts),
            "completions": [[{"role": "assistant", "content": c}] if is_chat else c
                            for c, is_chat in zip(completions, chat, strict=True)],
            "completion_ids": None, "trainer_state": None, "log_extra": _noop, "log_metric": _noop,
        }
        if self.tokenizer is not None:
            kwargs["completion_ids"] = self.tokenizer(list(completions), add_special_tokens=False)["input_ids"]
        keys = dict.fromkeys(k for meta in metadata for k in meta)
        for key in keys:
            kwargs.setdefault(self.columns.get(key, key), [meta.get(key) for meta in metadata])
        if not self._takes_all:
            kwargs = {k: v for k, v in kwargs.items() if k in self._named}
        out = self.fn(**kwargs)
        if inspect.isawaitable(out):
            out = asyncio.run(_awaited(out))
        out = list(out)
        if len(out) != len(completions):
            raise RsftError(f"{self.name}: returned {len(out)} rewards for {len(completions)} completions")
        return [Verdict(math.nan, "the TRL reward returned None (not applicable)") if v is None else v for v in out]


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


def _load_tokenizer(path: str) -> Any:
    from transformers import AutoTokenizer

    from rsft.models import resolve_model_path

    try:
        return AutoTokenizer.from_pretrained(resolve_model_path(path))
    except (OSError, ValueError) as e:
        raise RsftError(f"trl: cannot load a tokenizer from {path}: {first_line(e)}") from None


def from_trl_reward(fn: Callable[..., Any], *, name: str | None = None, columns: Mapping[str, str] | None = None,
                    conversational: bool | None = None, tokenizer: str | None = None) -> TrlRewardScorer:
    """A TRL reward function (sync or async) as an rsft scorer; ``columns`` maps metadata field ->
    the keyword TRL's function expects, e.g. ``{"answer": "solution"}`` for ``trl.rewards.accuracy_reward``;
    ``tokenizer`` (a model path) gives rewards that read ``completion_ids`` their token ids."""
    return TrlRewardScorer(fn, name=name, columns=columns, conversational=conversational, tokenizer=tokenizer)


def trl_reward_scorer(arg: str, columns: Mapping[str, str] | None = None, conversational: bool | None = None,
                      init: Mapping[str, Any] | None = None, tokenizer: str | None = None) -> TrlRewardScorer:
    """The scorer of spec ``trl:pkg.module:name`` or ``trl:NAME`` (a function of ``trl.rewards``);
    ``init`` calls the object first with these keyword arguments (TRL's reward factories such as
    ``get_repetition_penalty_reward(ngram_size=3)`` return the reward function)."""
    if not arg:
        raise RsftError("scorer 'trl' needs a reward function: 'trl:pkg.module:name' or 'trl:NAME' (trl.rewards)")
    if ":" in arg:
        fn = load_object(arg)
    else:
        try:
            import trl.rewards
        except ImportError as e:
            raise RsftError(f"scorer 'trl:{arg}' needs the trl package: pip install 'rsft[train]' ({e})") from e
        fn = getattr(trl.rewards, arg, None)
        if fn is None:
            raise RsftError(f"scorer 'trl:{arg}': trl.rewards has no {arg!r}; user code goes as 'trl:pkg.module:name'")
    if init is not None:
        fn = fn(**dict(init))
    return from_trl_reward(fn, name=f"trl:{arg}", columns=columns, conversational=conversational, tokenizer=tokenizer)
