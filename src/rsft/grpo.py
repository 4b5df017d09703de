"""rsft scorers as TRL ``GRPOTrainer`` rewards, and TRL reward functions as rsft scorers.

A checker that filters completions for RSFT is the same function an RL trainer wants as its reward,
so one definition serves both (nanochat's task ``reward`` is its ``evaluate``):

    from trl import GRPOTrainer
    from rsft.grpo import as_grpo_reward, grpo_rows
    rows = grpo_rows(pipeline.load_prompt_set(config.prompts))   # prompt + the metadata checkers need
    GRPOTrainer(model, reward_funcs=as_grpo_reward("task"), train_dataset=Dataset.from_list(rows), ...)

TRL calls a reward function as ``f(prompts=..., completions=..., completion_ids=..., trainer_state=...,
log_extra=..., log_metric=..., **dataset_columns)`` with one list entry per completion; prompts and
completions are strings, or chat message lists for conversational datasets. It returns one float
per completion, or None where the reward does not apply (TRL then leaves that reward out of the sum).

The other way, ``from_trl_reward(fn)`` (spec ``trl:pkg.module:name``, or ``trl:NAME`` for the rewards
TRL ships in ``trl.rewards``) scores rsft rounds with any TRL reward function.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import math
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from rsft.errors import RsftError, first_line
from rsft.score import Scorer, as_scorer, load_object
from rsft.types import Prompt, PromptValue, Verdict

TRL_ARGS = frozenset({"prompts", "completions", "completion_ids", "trainer_state", "log_extra", "log_metric",
                      "environments"})
"""Keyword arguments TRL adds beside the dataset columns; they are never prompt metadata."""

METADATA_COLUMN = "rsft_metadata"
"""Dataset column (JSON text) carrying an rsft prompt's metadata whole: nested values such as a
reasoning-gym ``entry`` survive Arrow, which cannot hold dicts of differing shapes in one column."""


def message_text(content: Any) -> str:
    """The text of a chat message's ``content``: a string, or a list of ``{"type": "text", "text": ...}`` parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, Mapping))
    return "" if content is None else str(content)


def completion_text(completion: Any) -> str:
    """A TRL completion as text: the string itself, or the content of its (assistant) messages."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Mapping):
        return message_text(completion.get("content"))
    if isinstance(completion, Sequence):
        return "".join(message_text(m.get("content")) for m in completion if isinstance(m, Mapping))
    raise RsftError(f"grpo: a completion must be text or chat messages, got {type(completion).__name__}")


def row_metadata(count: int, columns: Mapping[str, Any], rename: Mapping[str, str]) -> list[dict[str, Any]]:
    """Per-completion metadata from TRL's column lists: each dataset column (renamed by ``rename``)
    becomes a field; an ``rsft_metadata`` JSON column is unpacked into fields."""
    rows: list[dict[str, Any]] = [{} for _ in range(count)]
    for key, values in columns.items():
        if key in TRL_ARGS:
            continue
        if not isinstance(values, Sequence) or isinstance(values, str) or len(values) != count:
            raise RsftError(f"grpo: dataset column {key!r} must hold one value per completion ({count})")
        for row, value in zip(rows, values, strict=True):
            if key == METADATA_COLUMN:
                row.update(json.loads(value) if isinstance(value, str) and value else dict(value or {}))
            else:
                row[rename.get(key, key)] = value
    return rows


def grpo_rows(prompts: Sequence[Prompt]) -> list[dict[str, Any]]:
    """TRL rows for rsft prompts (a file or a reasoning-gym task): the prompt (text or messages) and
    the metadata as one JSON column that ``as_grpo_reward`` unpacks, so every checker finds its fields."""
    return [{"prompt": p.prompt if isinstance(p.prompt, str) else [dict(m) for m in p.prompt],
             METADATA_COLUMN: json.dumps(dict(p.metadata), ensure_ascii=False, default=str)} for p in prompts]


def _reward_name(scorer_name: str) -> str:
    """A name TRL can log under (``rewards/<name>/mean``): letters, digits, ``_``, ``-`` and ``.``."""
    return "rsft_" + (re.sub(r"[^A-Za-z0-9_.-]+", "_", scorer_name).strip("_") or "scorer")


class GrpoReward:
    """A TRL reward function backed by an rsft scorer (see :func:`as_grpo_reward`)."""

    def __init__(self, scorer: Any, options: Mapping[str, Any] | None = None,
                 columns: Mapping[str, str] | None = None, on_error: str = "none", name: str | None = None) -> None:
        if on_error not in ("none", "raise"):
            raise RsftError(f"grpo: on_error must be 'none' or 'raise', got {on_error!r}")
        self.scorer: Scorer = as_scorer(scorer, options)
        self.columns = dict(columns or {})
        self.on_error = on_error
        self.__name__ = name or _reward_name(self.scorer.name)  # TRL logs rewards/<__name__>/mean
        self.calls = 0
        self.unscorable = 0
        self._warned = False

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float | None]:
        texts = [completion_text(c) for c in completions]
        metadata = row_metadata(len(texts), kwargs, self.columns)
        values = self._score(list(prompts), texts, metadata)
        rewards = [_reward(v) for v in values]
        self.calls += 1
        missing = sum(r is None for r in rewards)
        self.unscorable += missing
        log_metric = kwargs.get("log_metric")
        if callable(log_metric) and rewards:
            log_metric(f"{self.__name__}/unscorable", missing / len(rewards))
        return rewards

    def _score(self, prompts: list[PromptValue], texts: list[str], metadata: list[dict[str, Any]]) -> list[Any]:
        """The whole batch at once; on an error (``on_error="none"``) pair by pair, failures as None."""
        try:
            out = list(self.scorer.score(prompts, texts, metadata))
            if len(out) != len(texts):
                raise RsftError(f"scorer {self.scorer.name!r} returned {len(out)} scores for {len(texts)} pairs")
            return out
        except Exception:
            if self.on_error == "raise":
                raise
        out = []
        for prompt, text, meta in zip(prompts, texts, metadata, strict=True):
            try:
                (value,) = self.scorer.score([prompt], [text], [meta])
            except Exception as e:  # noqa: BLE001 - TRL's convention: None where the reward does not apply
                self._warn(e)
                value = None
            out.append(value)
        return out

    def _warn(self, error: BaseException) -> None:
        if not self._warned:
            self._warned = True
            warnings.warn(f"{self.__name__}: unscorable completions get None (first error: {first_line(error)})",
                          stacklevel=3)


def as_grpo_reward(scorer: Any, options: Mapping[str, Any] | None = None, *,
                   columns: Mapping[str, str] | None = None, on_error: str = "none",
                   name: str | None = None) -> GrpoReward:
    """Any rsft scorer as a TRL ``GRPOTrainer`` reward function.

    Args:
        scorer: a spec (``math``, ``task``, ``code``, ``rm:PATH``, ``pkg.mod:fn``), a Scorer or a callable.
        options: scorer options, as in ``scoring.options``.
        columns: dataset column -> metadata field, e.g. ``{"solution": "answer"}`` for a dataset whose
            gold answer column is ``solution``; other columns keep their names (``answer`` is ``answer``).
        on_error: ``none``: a completion the scorer cannot score (it raises, or the row lacks a field)
            gets None, which TRL leaves out of the reward; ``raise``: the error stops training.
        name: the name TRL logs the reward under (default ``rsft_<scorer name>``).

    Verdicts become their score; NaN becomes None.
    """
    return GrpoReward(scorer, options, columns=columns, on_error=on_error, name=name)


def _reward(value: Any) -> float | None:
    if isinstance(value, Verdict):
        value = value.score
    if value is None or isinstance(value, bool):
        return None if value is None else float(value)
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) else value


# --- the other way: a TRL reward function as an rsft scorer --------------------------------------------


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
