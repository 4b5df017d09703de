"""Rule-based checkers: exact match, regex, maths answers (math-verify), reasoning-gym task scoring.

Each checker scores 1.0 (right) or 0.0 (wrong), except ``TaskScorer``, which returns whatever the
task's own scorer says (some reasoning-gym tasks give partial credit). Every score comes as a
``Verdict`` whose details name the answer the checker extracted, so a reader of ``rewards.parquet``
sees why a completion passed or failed.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from rsft.errors import RsftError
from rsft.types import PromptValue, Verdict

EXTRACT_MODES: tuple[str, ...] = ("first_line", "last_line", "full")

MATH_TIMEOUT_S = 5
"""math-verify's own per-call limit, applied only in the main thread (it uses ``signal.alarm``)."""


def extract_answer(text: str, mode: str = "first_line") -> str:
    """The answer part of a completion: its first or last non-empty line, or the whole text, stripped."""
    if mode not in EXTRACT_MODES:
        raise RsftError(f"extract must be one of {', '.join(EXTRACT_MODES)}, got {mode!r}")
    if mode == "full":
        return text.strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return ""
    return lines[0] if mode == "first_line" else lines[-1]


def _require(meta: Mapping[str, Any], key: str, scorer: str) -> Any:
    if key not in meta or meta[key] is None:
        raise RsftError(f"scorer {scorer!r} needs the metadata field {key!r} in every prompt row")
    return meta[key]


class ExactMatchScorer:
    """1.0 when the extracted answer equals the row's gold ``answer`` (both stripped)."""

    def __init__(self, extract: str = "first_line", case_sensitive: bool = False) -> None:
        extract_answer("", extract)  # validates the mode
        self.extract = extract
        self.case_sensitive = case_sensitive
        self.name = "exact"

    def _norm(self, s: str) -> str:
        s = s.strip()
        return s if self.case_sensitive else s.casefold()

    def score(
        self,
        prompts: Sequence[PromptValue],
        completions: Sequence[str],
        metadata: Sequence[Mapping[str, Any]],
    ) -> list[Verdict]:
        out = []
        for completion, meta in zip(completions, metadata, strict=True):
            gold = str(_require(meta, "answer", self.name))
            answer = extract_answer(completion, self.extract)
            out.append(Verdict(float(self._norm(answer) == self._norm(gold)), f"answer: {answer!r}"))
        return out


class RegexScorer:
    """``re.search`` over the whole completion.

    With a capture group and a gold ``answer`` in the row: 1.0 when ``group(1).strip() == answer``.
    Otherwise: 1.0 when the pattern matches at all.
    """

    def __init__(self, pattern: str) -> None:
        if not pattern:
            raise RsftError("scorer 'regex' needs a pattern: 'regex:PATTERN'")
        try:
            self.regex = re.compile(pattern)
        except re.error as e:
            raise RsftError(f"scorer 'regex': bad pattern {pattern!r}: {e}") from None
        self.name = f"regex:{pattern}"

    def score(
        self,
        prompts: Sequence[PromptValue],
        completions: Sequence[str],
        metadata: Sequence[Mapping[str, Any]],
    ) -> list[Verdict]:
        out = []
        for completion, meta in zip(completions, metadata, strict=True):
            m = self.regex.search(completion)
            if m is None:
                out.append(Verdict(0.0, "no match"))
            elif self.regex.groups and meta.get("answer") is not None:
                captured = (m.group(1) or "").strip()
                out.append(Verdict(float(captured == str(meta["answer"]).strip()), f"answer: {captured!r}"))
            else:
                out.append(Verdict(1.0, f"match: {m.group(0)!r}"))
        return out


_GSM8K = re.compile(r"####\s*(.+)")
_NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?(?:\s*/\s*\d+)?|-?\.\d+")


def boxed_content(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``), braces balanced and stripped; None
    when there is none or it is not closed."""
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    i = text.index("{", start) + 1
    depth = 1
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i:j].strip()
    return None


def extract_math_answer(text: str) -> str | None:
    """The final answer of a maths solution: the last ``\\boxed{}``, else ``#### x``, else the last number."""
    boxed = boxed_content(text)
    if boxed:
        return boxed
    gsm = _GSM8K.findall(text)
    if gsm:
        return gsm[-1].strip().rstrip(".").replace(",", "")
    numbers = _NUMBER.findall(text)
    if numbers:
        return numbers[-1].replace(",", "").replace(" ", "")
    return None


def _gold_answer(gold: str) -> str:
    """A gold answer as given, or the final answer when the gold is a whole worked solution."""
    if "\\boxed" in gold or "####" in gold:
        return extract_math_answer(gold) or gold
    return gold


def as_latex(s: str) -> str:
    """``s`` as math-verify parses it: wrapped in ``$...$`` unless it already has maths delimiters."""
    return s if "$" in s or "\\(" in s or "\\[" in s else f"${s}$"


class MathScorer:
    """Maths answers checked with math-verify: ``verify(gold, answer)`` on the parsed expressions.

    The answer is the last ``\\boxed{...}``, else a GSM8K-style ``#### x``, else the last number in
    the completion. The gold is the row's ``answer`` (the same extraction applies when it is a whole
    solution). math-verify bounds its own time with ``signal.alarm``, which works only in the main
    thread; elsewhere it runs without a limit (bound the time outside, e.g. a process pool).
    """

    def __init__(self) -> None:
        self.name = "math"

    def score(
        self,
        prompts: Sequence[PromptValue],
        completions: Sequence[str],
        metadata: Sequence[Mapping[str, Any]],
    ) -> list[Verdict]:
        from math_verify import parse, verify

        timeout = MATH_TIMEOUT_S if threading.current_thread() is threading.main_thread() else None
        golds: dict[str, Any] = {}
        out = []
        for completion, meta in zip(completions, metadata, strict=True):
            gold_text = str(_require(meta, "answer", self.name)).strip()
            if gold_text not in golds:
                golds[gold_text] = parse(as_latex(_gold_answer(gold_text)), parsing_timeout=timeout)
            gold = golds[gold_text]
            answer = extract_math_answer(completion)
            if answer is None:
                out.append(Verdict(0.0, "no answer found"))
                continue
            parsed = parse(as_latex(answer), parsing_timeout=timeout)
            ok = bool(gold) and bool(parsed) and verify(gold, parsed, timeout_seconds=timeout)
            out.append(Verdict(float(ok), f"answer: {answer!r}"))
        return out


class TaskScorer:
    """reasoning-gym's own scorer for the row's task: ``score_answer(answer, entry)``.

    Needs the row's ``entry`` (the reasoning-gym entry dict: question, answer, metadata with
    ``source_dataset``). The answer is extracted from the completion (first line by default).
    """

    def __init__(self, extract: str = "first_line") -> None:
        extract_answer("", extract)
        self.extract = extract
        self.name = "task"
        self._fns: dict[str, Callable[[str | None, dict[str, Any]], float]] = {}

    def _score_fn(self, dataset: str) -> Callable[[str | None, dict[str, Any]], float]:
        if dataset not in self._fns:
            import reasoning_gym

            try:
                self._fns[dataset] = reasoning_gym.get_score_answer_fn(dataset)
            except ValueError as e:
                raise RsftError(f"scorer 'task': {e}") from None
        return self._fns[dataset]

    def score(
        self,
        prompts: Sequence[PromptValue],
        completions: Sequence[str],
        metadata: Sequence[Mapping[str, Any]],
    ) -> list[Verdict]:
        out = []
        for completion, meta in zip(completions, metadata, strict=True):
            entry = _require(meta, "entry", self.name)
            if isinstance(entry, str):
                entry = json.loads(entry)
            try:
                dataset = entry["metadata"]["source_dataset"]
            except (KeyError, TypeError):
                raise RsftError("scorer 'task': field 'entry' has no metadata.source_dataset") from None
            answer = extract_answer(completion, self.extract)
            try:
                value = float(self._score_fn(dataset)(answer, dict(entry)))
            except RsftError:
                raise
            except Exception as e:  # a task's scorer choking on a malformed answer is a wrong answer
                out.append(
                    Verdict(0.0, f"answer: {answer!r}; {dataset} scorer failed: {type(e).__name__}: {e}")
                )
                continue
            out.append(Verdict(value, f"answer: {answer!r}"))
        return out
