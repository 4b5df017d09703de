"""rsft scorers as TRL ``GRPOTrainer`` rewards, and TRL reward functions as rsft scorers.

A checker that filters completions for RSFT is the same function an RL trainer wants as its reward,
so one definition serves both (nanochat's task ``reward`` is its ``evaluate``):

    from trl import GRPOTrainer
    from rsft.train.grpo import as_grpo_reward, grpo_rows
    rows = grpo_rows(pipeline.load_prompt_set(config.prompts))   # prompt + the metadata checkers need
    GRPOTrainer(model, reward_funcs=as_grpo_reward("task"), train_dataset=Dataset.from_list(rows), ...)

TRL calls a reward function as ``f(prompts=..., completions=..., completion_ids=..., trainer_state=...,
log_extra=..., log_metric=..., **dataset_columns)`` with one list entry per completion; prompts and
completions are strings, or chat message lists for conversational datasets. It returns one float
per completion, or None where the reward does not apply (TRL then leaves that reward out of the sum).

The other way, ``from_trl_reward(fn)`` (spec ``trl:pkg.module:name``, or ``trl:NAME`` for the rewards
TRL ships in ``trl.rewards``) scores rsft rounds with any TRL reward function; it lives in
``rsft.score.trl_reward`` (the ``trl`` scorer) and is importable from here too.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from rsft.errors import RsftError, first_line
from rsft.score import Scorer, as_scorer
from rsft.score.pairs import score_batch, score_each
from rsft.score.trl_reward import TrlRewardScorer as TrlRewardScorer
from rsft.score.trl_reward import from_trl_reward as from_trl_reward
from rsft.score.trl_reward import trl_reward_scorer as trl_reward_scorer
from rsft.types import Prompt, PromptValue, unwrap_verdict

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
            return score_batch(self.scorer, prompts, texts, metadata)
        except Exception:
            if self.on_error == "raise":
                raise
        out = []
        for value, error in score_each(self.scorer, prompts, texts, metadata):
            if error is not None:  # TRL's convention: None where the reward does not apply
                self._warn(error)
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
    value, _ = unwrap_verdict(value)
    if value is None or isinstance(value, bool):
        return None if value is None else float(value)
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) else value


class RsftRollout:
    """A TRL ``rollout_func`` that samples GRPO's completions with rsft's own decoding loop
    (``rsft.generate.hf``) on the policy being trained, LoRA adapters unmerged: each prompt is prefilled
    once for its whole group, finished rows leave the batch, and dropout is off while sampling. On a
    CPU this decodes about 4x faster than ``model.generate`` on a peft model, which is TRL's own path.

    TRL passes the prompts of one generation batch, each repeated once per completion; consecutive
    repeats form a group sampled together. Each call draws from a fresh seed (the sampling's seed + the call's number), so
    batches differ. ``calls`` and ``wall_s`` count the sampling."""

    def __init__(self, tokenizer: Any, sampling: Any, batch_size: int | None = None) -> None:
        self.tokenizer, self.sampling, self.batch_size = tokenizer, sampling, batch_size
        self.calls = 0
        self.wall_s = 0.0

    def __call__(self, prompts: list[Any], trainer: Any) -> dict[str, Any]:
        import dataclasses
        import time

        from rsft.generate.hf import HFGenerator

        started = time.time()
        groups = _runs(prompts)
        sizes = {size for _, size in groups}
        distinct, n = ([p for p, _ in groups], sizes.pop()) if len(sizes) == 1 else (list(prompts), 1)
        model = trainer.accelerator.unwrap_model(trainer.model)
        generator = HFGenerator.from_model(model, self.tokenizer, name="grpo-policy", batch_size=self.batch_size)
        params = dataclasses.replace(self.sampling, seed=self.sampling.seed + self.calls)
        was_training = model.training
        model.eval()  # no LoRA dropout while sampling, and the KV cache stays on under activation checkpointing
        try:
            prompt_ids, completion_ids = generator.sample_ids(distinct, n, params)
        finally:
            model.train(was_training)
        self.calls += 1
        self.wall_s += time.time() - started
        return {"prompt_ids": [ids for ids in prompt_ids for _ in range(n)], "completion_ids": completion_ids,
                "logprobs": None}


def _runs(items: Sequence[Any]) -> list[tuple[Any, int]]:
    """Consecutive equal items as (item, count)."""
    runs: list[tuple[Any, int]] = []
    for item in items:
        if runs and runs[-1][0] == item:
            runs[-1] = (item, runs[-1][1] + 1)
        else:
            runs.append((item, 1))
    return runs
