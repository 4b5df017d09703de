"""The built-in scorers by name: ``REGISTRY[name](arg, options) -> Scorer``.

``arg`` is the text after ``:`` in a spec such as ``"regex:PATTERN"`` or ``"rm:/path/to/model"``
(empty when there is none); ``options`` are keyword options from the config. Unknown options are
an error, so a typo does not silently fall back to a default. ``as_scorer`` (importable from
``rsft.score``) looks a spec up here; it lives beside ``REGISTRY`` because ``gate`` and ``sum`` build
their parts with it.

- ``exact``: extracted answer == gold ``answer``. Options: ``extract`` (``first_line`` | ``last_line``
  | ``full``), ``case_sensitive`` (False).
- ``regex:PATTERN``: ``group(1)`` == gold ``answer`` when the pattern has a group and the row an
  answer, else "the pattern matches".
- ``math``: maths answers with math-verify (``\\boxed{}``, ``#### x`` or the last number).
- ``task``: reasoning-gym's own scorer for the row's ``entry``. Options: ``extract``.
- ``code``: the row's tests run against the completion's code in the sandbox. Options: ``timeout``,
  ``memory_mb``, ``workers``, ``site_packages`` (True: installed packages importable, read-only).
- ``rm:PATH``: a reward model. Options: ``batch_size``, ``max_length``, ``device``, ``dtype``,
  ``sort_by_length``, ``max_batch_tokens`` (cap on each batch's padded tokens: long pairs go in
  smaller batches).
- ``gate``: ``gate`` checker, ``inner`` scorer as tie-breaker. Options: ``gate``, ``inner`` (specs),
  ``gate_options``, ``inner_options``, ``fail_value``, ``pass_offset``, ``threshold``.
- ``judge:MODEL``: an LLM judge over an OpenAI-compatible chat endpoint, score parsed from its reply
  and normalised to [0, 1]. Options: ``base_url``, ``api_key``, ``api_key_env``, ``rubric``,
  ``rubric_file``, ``system``, ``scale``, ``temperature``, ``retry_temperature``, ``max_tokens``,
  ``seed``, ``parse_retries``, ``concurrency``, ``timeout``, ``max_retries``, ``backoff``, ``journal``.
- ``prm:PATH``: a process reward model: the completion split into steps, each scored, the step
  scores aggregated. Options: ``split`` (``lines`` | ``paragraphs`` | ``regex:PATTERN``),
  ``aggregate`` (``min`` | ``prod`` | ``last`` | ``mean``), ``kind`` (``auto`` | ``token`` | ``tag``),
  ``step_tag``, ``step_sep``, ``good_token``, ``bad_token``, ``positive_label``, and the ``rm``
  batching options.
- ``prm-fn:pkg.module:name``: the same with step scores from ``name(prompt, steps) -> list[float]``.
  Options: ``split``, ``aggregate``.
- ``http:URL`` (also ``https:URL``): a remote reward service (``rsft serve-reward``, or OpenRLHF's
  remote reward protocol). Options: ``protocol`` (``rsft`` | ``openrlhf``), ``api_key``,
  ``api_key_env``, ``batch_size``, ``concurrency``, ``timeout``, ``max_retries``, ``backoff``, ``journal``.
- ``sum``: weighted sum. Option ``terms``: ``{spec: weight}`` or a list of ``[spec, weight]`` or
  ``[spec, weight, options]``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from rsft.errors import RsftError
from rsft.score.base import CallableScorer, Scorer, load_object
from rsft.score.checkers import ExactMatchScorer, MathScorer, RegexScorer, TaskScorer


def _options(name: str, options: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        known = ", ".join(defaults) or "none"
        raise RsftError(f"scorer {name!r}: unknown option(s) {', '.join(unknown)}; known: {known}")
    return {**defaults, **options}


def _no_arg(name: str, arg: str) -> None:
    if arg:
        raise RsftError(f"scorer {name!r} takes no ':' argument, got {name}:{arg}")


def exact(arg: str, options: Mapping[str, Any]) -> Scorer:
    _no_arg("exact", arg)
    o = _options("exact", options, {"extract": "first_line", "case_sensitive": False})
    return ExactMatchScorer(extract=o["extract"], case_sensitive=bool(o["case_sensitive"]))


def regex(arg: str, options: Mapping[str, Any]) -> Scorer:
    _options("regex", options, {})
    return RegexScorer(arg)


def math(arg: str, options: Mapping[str, Any]) -> Scorer:
    _no_arg("math", arg)
    _options("math", options, {})
    return MathScorer()


def task(arg: str, options: Mapping[str, Any]) -> Scorer:
    _no_arg("task", arg)
    o = _options("task", options, {"extract": "first_line"})
    return TaskScorer(extract=o["extract"])


def code(arg: str, options: Mapping[str, Any]) -> Scorer:
    from rsft.score.code import CodeScorer

    _no_arg("code", arg)
    o = _options("code", options, {"timeout": 5.0, "memory_mb": 512, "workers": 2, "site_packages": True})
    if not isinstance(o["site_packages"], bool):
        raise RsftError(f"scorer 'code': site_packages must be true or false, got {o['site_packages']!r}")
    return CodeScorer(
        timeout=float(o["timeout"]),
        memory_mb=int(o["memory_mb"]),
        workers=int(o["workers"]),
        site_packages=o["site_packages"],
    )


def reward_model(arg: str, options: Mapping[str, Any]) -> Scorer:
    from rsft.score.reward_model import RewardModelScorer

    o = _options(
        "rm",
        options,
        {"batch_size": 16, "max_length": 1024, "device": "auto", "dtype": "auto", "sort_by_length": True,
         "max_batch_tokens": None},
    )
    return RewardModelScorer(
        arg,
        batch_size=int(o["batch_size"]),
        max_length=int(o["max_length"]),
        device=str(o["device"]),
        dtype=str(o["dtype"]),
        sort_by_length=bool(o["sort_by_length"]),
        max_batch_tokens=None if o["max_batch_tokens"] is None else int(o["max_batch_tokens"]),
    )


def gate(arg: str, options: Mapping[str, Any]) -> Scorer:
    from rsft.score.combine import GatedScorer

    _no_arg("gate", arg)
    o = _options(
        "gate",
        options,
        {
            "gate": None,
            "inner": None,
            "gate_options": {},
            "inner_options": {},
            "fail_value": 0.0,
            "pass_offset": 1.0,
            "threshold": 1.0,
        },
    )
    if not o["gate"] or not o["inner"]:
        raise RsftError(
            "scorer 'gate' needs the options 'gate' (a checker spec) and 'inner' (e.g. 'rm:PATH')"
        )
    return GatedScorer(
        as_scorer(o["gate"], o["gate_options"]),
        as_scorer(o["inner"], o["inner_options"]),
        fail_value=float(o["fail_value"]),
        pass_offset=float(o["pass_offset"]),
        threshold=float(o["threshold"]),
    )


def weighted_sum(arg: str, options: Mapping[str, Any]) -> Scorer:
    from rsft.score.combine import WeightedSum

    _no_arg("sum", arg)
    terms = _options("sum", options, {"terms": None})["terms"]
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


def judge(arg: str, options: Mapping[str, Any]) -> Scorer:
    from rsft.score.judge import JudgeScorer

    params = inspect.signature(JudgeScorer).parameters  # its keyword arguments are the options
    defaults = {k: p.default for k, p in params.items() if p.kind is p.KEYWORD_ONLY}
    o = _options("judge", options, defaults)
    try:  # YAML/CLI values as the types the defaults have (concurrency=8.0 -> 8)
        o = {k: type(defaults[k])(v) if type(defaults[k]) in (int, float) and v is not None else v
             for k, v in o.items()}
    except (TypeError, ValueError) as e:
        raise RsftError(f"scorer 'judge': bad option value: {e}") from None
    return JudgeScorer(arg, **o)


def prm(arg: str, options: Mapping[str, Any]) -> Scorer:
    from rsft.score.prm import ModelStepScorer, ProcessRewardScorer

    o = _options(
        "prm",
        options,
        {"split": "lines", "aggregate": "min", "kind": "auto", "step_tag": None, "step_sep": "\n",
         "good_token": "+", "bad_token": "-", "positive_label": None, "batch_size": 8, "max_length": 4096,
         "device": "auto", "dtype": "auto", "sort_by_length": True, "max_batch_tokens": None},
    )
    split, how = str(o.pop("split")), str(o.pop("aggregate"))
    ProcessRewardScorer.check(split, how)  # before loading a model
    for key in ("batch_size", "max_length"):
        o[key] = int(o[key])
    return ProcessRewardScorer(ModelStepScorer(arg, **o), split=split, aggregate=how)


def prm_fn(arg: str, options: Mapping[str, Any]) -> Scorer:
    from rsft.score.prm import CallableStepScorer, ProcessRewardScorer

    o = _options("prm-fn", options, {"split": "lines", "aggregate": "min"})
    fn = load_object(arg)
    return ProcessRewardScorer(CallableStepScorer(fn, name=f"prm-fn:{arg}"), split=str(o["split"]),
                               aggregate=str(o["aggregate"]))


def http(arg: str, options: Mapping[str, Any], scheme: str = "http") -> Scorer:
    from rsft.score.http import HttpScorer

    params = inspect.signature(HttpScorer).parameters
    defaults = {k: p.default for k, p in params.items() if p.kind is p.KEYWORD_ONLY}
    o = _options(scheme, options, defaults)
    for key in ("batch_size", "concurrency", "max_retries"):
        o[key] = int(o[key])
    return HttpScorer(f"{scheme}:{arg}", **o)


def https(arg: str, options: Mapping[str, Any]) -> Scorer:
    return http(arg, options, scheme="https")


REGISTRY: dict[str, Callable[[str, Mapping[str, Any]], Scorer]] = {
    "http": http,
    "https": https,
    "exact": exact,
    "regex": regex,
    "math": math,
    "task": task,
    "code": code,
    "rm": reward_model,
    "gate": gate,
    "sum": weighted_sum,
    "judge": judge,
    "prm": prm,
    "prm-fn": prm_fn,
}


def trl_reward(arg: str, options: Mapping[str, Any]) -> Scorer:
    """``trl:pkg.module:name`` or ``trl:NAME`` (``trl.rewards``): a TRL reward function as a scorer.
    Options: ``columns`` (metadata field -> the function's keyword, e.g. ``{answer: solution}``),
    ``conversational`` (pass completions as messages; default: when the prompt is chat), ``init``
    (keyword arguments of a reward factory such as ``get_repetition_penalty_reward``), ``tokenizer`` (a
    model path: its token ids go to rewards that read ``completion_ids``)."""
    from rsft.score.trl_reward import trl_reward_scorer

    o = _options("trl", options, {"columns": None, "conversational": None, "init": None, "tokenizer": None})
    return trl_reward_scorer(arg, **o)


REGISTRY["trl"] = trl_reward


def builtin_names() -> list[str]:
    """The built-in scorers' names, sorted."""
    return sorted(REGISTRY)


def as_scorer(obj: Any, options: Mapping[str, Any] | None = None) -> Scorer:
    """Turn a spec string, a Scorer, a class or a plain callable into a ``Scorer``."""
    options = dict(options or {})
    if isinstance(obj, str):
        head, sep, arg = obj.partition(":")
        if head in REGISTRY:
            return REGISTRY[head](arg, options)
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
