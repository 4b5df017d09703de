"""LLM-as-judge: another model, behind any OpenAI-compatible endpoint, grades each pair with a rubric.

Each (prompt, completion) pair becomes one chat request: the rubric template with the pair filled in.
The reply's score is the number after the last ``Score:`` (or, without one, the last number in the
``scale`` range), normalised to [0, 1] by the scale. An unparseable reply is asked again with a new
seed (and ``retry_temperature``: at temperature 0 the same request would get the same reply); when
every attempt fails to parse, the pair scores NaN (never selected) and a warning counts such pairs.

HTTP is ``OpenAIGenerator``'s: retries with backoff on 429, 5xx and connection errors, and the same
``journal`` (one fsynced JSON line per reply, keyed by a hash of the request), so a rerun after a
crash replays what was already paid for, unparseable replies and retries included, and asks the
server only for the rest. Pairs are judged concurrently by a thread pool of ``concurrency`` workers.
"""

from __future__ import annotations

import math
import os
import re
import sys
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from rsft.errors import RsftError
from rsft.types import PromptValue, SamplingParams, Verdict

DEFAULT_RUBRIC = """\
You are a strict grader. Read the request and the response below, then rate how well the response \
answers the request: correctness first, then completeness, then clarity.

[Request]
{prompt}

[Reference answer (may be empty)]
{answer}

[Response]
{completion}

Explain your judgement in one or two sentences, then end with a line of the form \
"Score: N", where N is an integer from {low} to {high} ({high} is best)."""

_PLACEHOLDER = re.compile(r"\{(prompt|completion|answer|low|high)\}")
_SCORE_LABEL = re.compile(r"score\s*(?:\*\*)?\s*[:=]?\s*(?:\*\*)?\s*(-?\d+(?:\.\d+)?)", re.IGNORECASE)
_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?!\w|\.\d)")


def parse_score(reply: str, low: float, high: float) -> float | None:
    """The judge's score in ``reply``, or None: the last ``Score: N`` in range, else the last number in range.

    ``"Score: 7/10"`` gives 7; ``"I'd say 8."`` gives 8; ``"step 12 of 3"`` with range [1, 10] gives None.
    """
    for pattern in (_SCORE_LABEL, _NUMBER):
        values = [float(m.group(1) if m.groups() else m.group(0)) for m in pattern.finditer(reply)]
        in_range = [v for v in values if low <= v <= high]
        if in_range:
            return in_range[-1]
    return None


def render_prompt(prompt: PromptValue) -> str:
    """A prompt as text for the judge: chat messages as ``role: content`` lines."""
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"{m.get('role', 'user')}: {m.get('content', '')}" for m in prompt)


def fill_rubric(template: str, values: Mapping[str, str]) -> str:
    """Replace ``{prompt}``, ``{completion}``, ``{answer}``, ``{low}``, ``{high}`` in one pass (so a
    completion that itself contains ``{prompt}`` is left alone; other braces are kept as written)."""
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


def _scale(value: Any) -> tuple[float, float]:
    """``scale``: a number ``hi`` (range 0..hi) or a pair ``[lo, hi]``."""
    try:
        low, high = (0.0, float(value)) if isinstance(value, int | float) else (float(value[0]), float(value[1]))
        if isinstance(value, list | tuple) and len(value) != 2:
            raise ValueError
    except (TypeError, ValueError, IndexError, KeyError):
        raise RsftError(f"judge: scale must be a number or [low, high], got {value!r}") from None
    if not high > low:
        raise RsftError(f"judge: scale needs low < high, got [{low:g}, {high:g}]")
    return low, high


class JudgeScorer:
    """Scores pairs by asking a judge model over an OpenAI-compatible chat endpoint.

    Args:
        model: the judge's model name, sent in every request.
        base_url: the server root including ``/v1``.
        api_key: the key itself; else read from the ``api_key_env`` variable (default
            ``OPENAI_API_KEY``); none: no ``Authorization`` header.
        rubric: the user message template; ``{prompt}`` and ``{completion}`` are the pair,
            ``{answer}`` the row's gold ``answer`` (empty without one), ``{low}``/``{high}`` the scale.
            Default ``DEFAULT_RUBRIC``. ``rubric_file``: read the template from a file instead.
        system: an optional system message sent before it.
        scale: the judge's score range, ``[low, high]`` (or just ``high``: from 0); scores are
            reported as ``(x - low) / (high - low)``, in [0, 1].
        temperature, max_tokens, seed: sampling of the first attempt; retries after an unparseable
            reply use ``retry_temperature`` and seeds ``seed + 1``, ``seed + 2``, ...
        parse_retries: extra attempts after a reply without a score in range.
        concurrency: pairs judged at once (threads, one request in flight each).
        timeout, max_retries, backoff: per request, as in ``OpenAIGenerator`` (429/5xx/connection
            errors; a request still failing after them stops the scoring: rerun to resume).
        journal: JSONL file of every reply received (see ``rsft.generate.openai.Journal``).
    """

    def __init__(
        self,
        model: str,
        *,
        base_url: str = "http://127.0.0.1:8000/v1",
        api_key: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        rubric: str | None = None,
        rubric_file: str | os.PathLike[str] | None = None,
        system: str | None = None,
        scale: Any = (1, 10),
        temperature: float = 0.0,
        retry_temperature: float = 0.7,
        max_tokens: int = 256,
        seed: int = 0,
        parse_retries: int = 2,
        concurrency: int = 8,
        timeout: float = 60.0,
        max_retries: int = 5,
        backoff: float = 0.5,
        journal: str | os.PathLike[str] | None = None,
    ) -> None:
        from rsft.generate.openai import OpenAIGenerator

        if not model:
            raise RsftError("scorer 'judge' needs the judge's model name: 'judge:MODEL'")
        if concurrency < 1:
            raise RsftError(f"judge: concurrency must be >= 1, got {concurrency}")
        if parse_retries < 0:
            raise RsftError(f"judge: parse_retries must be >= 0, got {parse_retries}")
        self.rubric = _load_rubric(rubric, rubric_file)
        self.low, self.high = _scale(scale)
        self.system = system
        self.concurrency = concurrency
        self.parse_retries = parse_retries
        try:
            self.first = SamplingParams(temperature=temperature, max_new_tokens=max_tokens, seed=seed)
            self.retry = SamplingParams(temperature=retry_temperature, max_new_tokens=max_tokens, seed=seed)
        except ValueError as e:
            raise RsftError(f"judge: {e}") from None
        self.client = OpenAIGenerator(
            model=model, base_url=base_url, api_key=api_key, api_key_env=api_key_env, concurrency=1,
            timeout=timeout, max_retries=max_retries, backoff=backoff, name=f"judge:{model}", journal=journal,
        )
        self.name = f"judge:{model}"
        self.last_stats: dict[str, Any] = {}

    def messages(self, prompt: PromptValue, completion: str, metadata: Mapping[str, Any]) -> list[dict[str, str]]:
        """The chat request for one pair."""
        answer = metadata.get("answer")
        text = fill_rubric(self.rubric, {
            "prompt": render_prompt(prompt), "completion": completion,
            "answer": "" if answer is None else str(answer), "low": f"{self.low:g}", "high": f"{self.high:g}",
        })
        head = [{"role": "system", "content": self.system}] if self.system else []
        return [*head, {"role": "user", "content": text}]

    def judge(self, prompt: PromptValue, completion: str, metadata: Mapping[str, Any]) -> Verdict:
        """Ask until a reply parses (at most ``1 + parse_retries`` times); NaN when none does."""
        messages = self.messages(prompt, completion, metadata)
        reply = ""
        for attempt in range(self.parse_retries + 1):
            sampling = self.first if attempt == 0 else SamplingParams(
                temperature=self.retry.temperature, max_new_tokens=self.retry.max_new_tokens,
                seed=self.retry.seed + attempt)
            reply = self.client.generate([messages], 1, sampling)[0][0].text
            value = parse_score(reply, self.low, self.high)
            if value is not None:
                return Verdict((value - self.low) / (self.high - self.low), f"judge {value:g}")
        return Verdict(math.nan, f"unparseable after {self.parse_retries + 1} tries: {' '.join(reply.split())[:200]}")

    def score(
        self,
        prompts: Sequence[PromptValue],
        completions: Sequence[str],
        metadata: Sequence[Mapping[str, Any]] | None = None,
    ) -> list[Verdict]:
        metadata = metadata if metadata is not None else [{}] * len(prompts)
        journal = self.client.journal
        reused_before = journal.reused if journal is not None else 0
        with ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="rsft-judge") as pool:
            futures = [pool.submit(self.judge, p, c, m) for p, c, m in zip(prompts, completions, metadata, strict=True)]
            try:
                verdicts = [f.result() for f in futures]
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise
        unparseable = sum(math.isnan(v.score) for v in verdicts)
        self.last_stats = {"pairs": len(verdicts), "unparseable": unparseable,
                           "journal_reused": (journal.reused - reused_before) if journal is not None else 0}
        if unparseable:
            print(f"rsft: warning: {self.name}: {unparseable} of {len(verdicts)} replies had no score in "
                  f"[{self.low:g}, {self.high:g}] after {self.parse_retries + 1} tries; those pairs score NaN",
                  file=sys.stderr)
        return verdicts


def _load_rubric(rubric: str | None, rubric_file: str | os.PathLike[str] | None) -> str:
    if rubric is not None and rubric_file is not None:
        raise RsftError("judge: give 'rubric' or 'rubric_file', not both")
    if rubric_file is not None:
        try:
            rubric = Path(rubric_file).read_text(encoding="utf-8")
        except OSError as e:
            raise RsftError(f"judge: rubric_file {rubric_file}: {e.strerror or e}") from None
    rubric = DEFAULT_RUBRIC if rubric is None else rubric
    if "{completion}" not in rubric:
        raise RsftError("judge: the rubric must contain {completion} (where the graded response goes)")
    return rubric
