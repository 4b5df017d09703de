"""The factories of the built-in scorers of ``rsft.registry.SCORERS``, and ``as_scorer``.

A factory gets the spec's ``arg`` (the text after ``:`` in ``"regex:PATTERN"`` or ``"rm:PATH"``)
when its entry takes one, and every option of the entry, defaults filled in (``as_scorer`` rejects
an unknown option first, so a typo does not silently fall back to a default). ``as_scorer``
(importable from ``rsft.score``) lives here because ``gate`` and ``sum`` build their parts with it.
The options of each scorer, with their defaults, are the keyword arguments of its class.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from rsft.errors import RsftError
from rsft.registry import SCORERS, load_object
from rsft.score.base import CallableScorer, Scorer
from rsft.score.checkers import ExactMatchScorer, MathScorer, RegexScorer, TaskScorer

REGISTRY = SCORERS
"""The built-in scorers: ``rsft.registry.SCORERS`` (the name this module had for them)."""


def exact(*, extract: str, case_sensitive: Any) -> Scorer:
    return ExactMatchScorer(extract=extract, case_sensitive=bool(case_sensitive))


def regex(arg: str) -> Scorer:
    return RegexScorer(arg)


def math() -> Scorer:
    return MathScorer()


def task(*, extract: str) -> Scorer:
    return TaskScorer(extract=extract)


def code(*, timeout: Any, memory_mb: Any, workers: Any, site_packages: Any) -> Scorer:
    from rsft.score.code import CodeScorer

    if not isinstance(site_packages, bool):
        raise RsftError(f"scorer 'code': site_packages must be true or false, got {site_packages!r}")
    return CodeScorer(timeout=float(timeout), memory_mb=int(memory_mb), workers=int(workers),
                      site_packages=site_packages)


def reward_model(arg: str, *, batch_size: Any, max_length: Any, device: Any, dtype: Any, sort_by_length: Any,
                 max_batch_tokens: Any) -> Scorer:
    from rsft.score.reward_model import RewardModelScorer

    return RewardModelScorer(
        arg,
        batch_size=int(batch_size),
        max_length=int(max_length),
        device=str(device),
        dtype=str(dtype),
        sort_by_length=bool(sort_by_length),
        max_batch_tokens=None if max_batch_tokens is None else int(max_batch_tokens),
    )


def gate(*, gate: Any, inner: Any, gate_options: Any, inner_options: Any, fail_value: Any, pass_offset: Any,
         threshold: Any) -> Scorer:
    from rsft.score.combine import GatedScorer

    if not gate or not inner:
        raise RsftError(
            "scorer 'gate' needs the options 'gate' (a checker spec) and 'inner' (e.g. 'rm:PATH')"
        )
    return GatedScorer(
        as_scorer(gate, gate_options),
        as_scorer(inner, inner_options),
        fail_value=float(fail_value),
        pass_offset=float(pass_offset),
        threshold=float(threshold),
    )


def weighted_sum(*, terms: Any) -> Scorer:
    from rsft.score.combine import WeightedSum

    if isinstance(terms, Mapping):
        terms = list(terms.items())
    if not terms:
        raise RsftError("scorer 'sum' needs the option 'terms': {spec: weight, ...}")
    built = []
    for term in terms:
        if not isinstance(term, list | tuple) or len(term) not in (2, 3):
            raise RsftError(
                f"scorer 'sum': each term is [spec, weight] or [spec, weight, options], got {term!r}"
            )
        spec, weight, *rest = term
        built.append((as_scorer(spec, rest[0] if rest else None), float(weight)))
    return WeightedSum(built)


def judge(arg: str, **options: Any) -> Scorer:
    from rsft.score.judge import JudgeScorer

    defaults = SCORERS["judge"].option_defaults()
    try:  # YAML/CLI values as the types the defaults have (concurrency=8.0 -> 8)
        o = {k: type(defaults[k])(v) if type(defaults[k]) in (int, float) and v is not None else v
             for k, v in options.items()}
    except (TypeError, ValueError) as e:
        raise RsftError(f"scorer 'judge': bad option value: {e}") from None
    return JudgeScorer(arg, **o)


def prm(arg: str, *, split: Any, aggregate: Any, **options: Any) -> Scorer:
    from rsft.score.prm import ModelStepScorer, ProcessRewardScorer

    split, how = str(split), str(aggregate)
    ProcessRewardScorer.check(split, how)  # before loading a model
    for key in ("batch_size", "max_length"):
        options[key] = int(options[key])
    return ProcessRewardScorer(ModelStepScorer(arg, **options), split=split, aggregate=how)


def prm_fn(arg: str, *, split: Any, aggregate: Any) -> Scorer:
    from rsft.score.prm import CallableStepScorer, ProcessRewardScorer

    fn = load_object(arg)
    return ProcessRewardScorer(CallableStepScorer(fn, name=f"prm-fn:{arg}"), split=str(split),
                               aggregate=str(aggregate))


def http(arg: str, scheme: str = "http", **options: Any) -> Scorer:
    from rsft.score.http import HttpScorer

    for key in ("batch_size", "concurrency", "max_retries"):
        options[key] = int(options[key])
    return HttpScorer(f"{scheme}:{arg}", **options)


def https(arg: str, **options: Any) -> Scorer:
    return http(arg, scheme="https", **options)


def trl_reward(arg: str, **options: Any) -> Scorer:
    """``trl:pkg.module:name`` or ``trl:NAME`` (``trl.rewards``): a TRL reward function as a scorer.
    Options: ``columns`` (metadata field -> the function's keyword, e.g. ``{answer: solution}``),
    ``conversational`` (pass completions as messages; default: when the prompt is chat), ``init``
    (keyword arguments of a reward factory such as ``get_repetition_penalty_reward``), ``tokenizer`` (a
    model path: its token ids go to rewards that read ``completion_ids``)."""
    from rsft.score.trl_reward import trl_reward_scorer

    return trl_reward_scorer(arg, **options)


def builtin_names() -> list[str]:
    """The built-in scorers' names, sorted."""
    return sorted(SCORERS)


def as_scorer(obj: Any, options: Mapping[str, Any] | None = None) -> Scorer:
    """Turn a spec string, a Scorer, a class or a plain callable into a ``Scorer``."""
    options = dict(options or {})
    if isinstance(obj, str):
        entry, arg = SCORERS.split(obj)
        if entry is not None:
            if arg and not entry.arg:
                raise RsftError(f"scorer {entry.name!r} takes no ':' argument, got {obj}")
            o = entry.check_options(options, "scorer")
            factory = entry.load()
            return factory(arg, **o) if entry.arg else factory(**o)
        if ":" in obj:
            obj = load_object(obj)
            if inspect.isclass(obj):
                obj = obj(**options)
            return as_scorer(obj)
        raise SCORERS.unknown(obj)
    if isinstance(obj, Scorer) and not inspect.isclass(obj):
        return obj
    if callable(obj):
        return CallableScorer(obj)
    raise RsftError(f"not a scorer: {obj!r}")
