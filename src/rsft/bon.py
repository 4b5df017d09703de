"""Best-of-N at inference: sample N completions per prompt, score them, return the best one.

No weights change: this is the serving half of the flow (``rsft bon`` on files, ``rsft serve`` over
HTTP). Three selectors pick one completion per prompt:

- ``argmax``: the highest reward (needs a scorer); ties go to the FIRST index, NaN counts as -inf
  (``rsft.select.best_per_prompt``).
- ``majority``: self-consistency. Each completion votes for its extracted answer; the answer with
  the most votes wins, ties going to the answer that appeared first. The chosen completion is the
  first one holding the winning answer; its score is the winning answer's vote share.
- ``weighted_majority``: like ``majority``, but each vote weighs the completion's reward (needs a
  scorer); the score is the winning answer's summed reward.

The voting selectors group answers before counting (``equivalence``): ``exact`` (equal texts),
``math`` (math-verify equivalence, so ``1/2``, ``0.5`` and ``\\frac{1}{2}`` vote together) or a
user key function. The answer a completion votes for comes from ``first_line`` (default), ``boxed``
(the last ``\\boxed{...}``) or a user function.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from rsft.errors import RsftError
from rsft.generate import Generator
from rsft.score import Scorer, as_scorer, score_pairs
from rsft.types import Completion, Prompt, PromptValue, SamplingParams

SELECTORS = ("argmax", "majority", "weighted_majority")
"""Selector names accepted by ``best_of_n``."""

Extract = Callable[[str], "str | None"]
"""Maps a completion to the answer it votes for; ``None`` abstains."""


@dataclass(frozen=True)
class BoNResult:
    """The completion picked for one prompt, with every candidate and its score."""

    prompt: PromptValue
    chosen: str
    """Text of the picked completion."""
    score: float | None
    """argmax: its reward; majority: the winning answer's vote share; weighted_majority: its summed reward."""
    index: int
    """Position of the picked completion among the N candidates."""
    candidates: list[tuple[str, float | None]]
    """Every candidate ``(text, reward)`` in sample order (reward None when there is no scorer)."""
    selector: str
    completions: list[Completion] = field(default_factory=list, repr=False, compare=False)
    """The generator's completions behind ``candidates`` (token counts, finish reasons)."""

    @property
    def finish_reason(self) -> str:
        return self.completions[self.index].finish_reason if self.completions else "stop"


def first_line(text: str) -> str | None:
    """The default answer extractor: the first non-blank line, stripped; None for a blank text."""
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return None


# --- answers and their groups (the voting selectors) --------------------------------------------

ANSWERS = ("first_line", "boxed")
"""Built-in answer extractors (``--answer``); ``pkg.module:name`` loads a user function."""

EQUIVALENCES = ("exact", "math")
"""Built-in answer groupings (``--equivalence``); ``pkg.module:name`` loads a user key function."""

KeyFn = Callable[[str], Hashable]
"""Maps an answer to its group key: answers with equal keys vote together; a None key abstains."""


def last_boxed(text: str) -> str | None:
    """The ``boxed`` extractor: the content of the last ``\\boxed{...}``; None when there is none."""
    from rsft.score.checkers import _last_boxed

    return _last_boxed(text) or None


def _load_function(spec: str, what: str) -> Callable[..., Any]:
    """Import a user function ``"pkg.module:name"`` named by option ``what``."""
    import importlib

    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise RsftError(f"{what} {spec!r}: expected 'pkg.module:name'")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except ImportError as e:
        raise RsftError(f"{what} {spec!r}: cannot import {module_name!r}: {e}") from None
    except AttributeError:
        raise RsftError(f"{what} {spec!r}: {module_name!r} has no attribute {attr!r}") from None
    if not callable(obj):
        raise RsftError(f"{what} {spec!r}: {attr!r} is not callable")
    return obj


def answer_extractor(spec: str | Extract | None = None) -> Extract:
    """The extractor named by ``spec``: ``first_line`` (also None), ``boxed``, ``pkg.module:name``, a callable."""
    if spec is None or spec == "first_line":
        return first_line
    if callable(spec):
        return spec
    if spec == "boxed":
        return last_boxed
    if ":" in spec:
        return _load_function(spec, "answer extractor")
    raise RsftError(f"unknown answer extractor {spec!r}; choose {', '.join(ANSWERS)} or pkg.module:name")


def resolve_equivalence(spec: str | KeyFn) -> str | KeyFn:
    """``exact`` or ``math`` as is, a ``pkg.module:name`` key function loaded, a callable as is."""
    if callable(spec) or spec in EQUIVALENCES:
        return spec
    if isinstance(spec, str) and ":" in spec:
        return _load_function(spec, "equivalence")
    raise RsftError(f"unknown equivalence {spec!r}; choose {', '.join(EQUIVALENCES)} or pkg.module:name")


def answer_groups(answers: Sequence[str | None], equivalence: str | KeyFn = "exact") -> list[int | None]:
    """The group of each answer, labelled by the index of the group's first member; None abstains.

    ``exact``: equal texts. ``math``: see ``_math_groups``. A key function: equal keys.
    """
    equivalence = resolve_equivalence(equivalence)
    if equivalence == "math":
        return _math_groups(answers)
    key: KeyFn = (lambda a: a) if equivalence == "exact" else equivalence  # type: ignore[assignment]
    first: dict[Hashable, int] = {}
    out: list[int | None] = []
    for j, answer in enumerate(answers):
        k = None if answer is None else key(answer)
        try:
            out.append(None if k is None else first.setdefault(k, j))
        except TypeError:
            raise RsftError(f"equivalence key of answer {answer!r} is not hashable: {k!r}") from None
    return out


def _math_groups(answers: Sequence[str | None]) -> list[int | None]:
    """Groups by math-verify equivalence: ``verify(a, b) or verify(b, a)`` on the parsed answers.

    Each distinct text is parsed once and compared with the representative (first member) of each
    group so far, joining the first group it matches: O(groups x distinct answers) comparisons.
    Equal texts always share a group; a text math-verify cannot parse only groups with itself.
    """
    import threading

    from math_verify import parse, verify

    from rsft.score.checkers import MATH_TIMEOUT_S, _as_latex

    timeout = MATH_TIMEOUT_S if threading.current_thread() is threading.main_thread() else None

    def same(a: Any, b: Any) -> bool:
        return bool(verify(a, b, timeout_seconds=timeout) or verify(b, a, timeout_seconds=timeout))

    label: dict[str, int] = {}
    reps: list[tuple[int, Any]] = []  # (label, parsed first member) of each group that parses
    out: list[int | None] = []
    for j, answer in enumerate(answers):
        if answer is None:
            out.append(None)
            continue
        if answer not in label:
            parsed = parse(_as_latex(answer), parsing_timeout=timeout) if answer.strip() else []
            group = next((g for g, rep in reps if parsed and same(rep, parsed)), None)
            if group is None:
                group = j
                if parsed:
                    reps.append((j, parsed))
            label[answer] = group
        out.append(label[answer])
    return out


# --- selectors on one row ------------------------------------------------------------------------


def argmax_indices(scores: Sequence[Sequence[float]]) -> list[int]:
    """Index of each row's highest score: ties to the first, NaN as -inf."""
    from rsft.select import best_per_prompt

    return best_per_prompt(scores).tolist() if scores else []


def vote(
    answers: Sequence[str | None],
    weights: Sequence[float] | None = None,
    equivalence: str | KeyFn = "exact",
) -> tuple[int, float]:
    """(index of the first completion in the winning group, the group's total weight).

    Answers are grouped by ``equivalence`` (``answer_groups``). Each non-None answer adds its weight
    (1 without ``weights``; a NaN weight adds nothing) to its group's total. The highest total wins;
    ties go to the group whose first member appears first. When every completion abstains the
    result is ``(0, 0.0)``.
    """
    totals: dict[int, float] = {}  # group label (its first member's index) -> total weight
    for j, group in enumerate(answer_groups(answers, equivalence)):
        if group is None:
            continue
        w = 1.0 if weights is None else float(weights[j])
        total = totals.get(group, 0.0) + (0.0 if math.isnan(w) else w)
        totals[group] = -math.inf if math.isnan(total) else total  # inf + -inf
    best: int | None = None
    for group, total in totals.items():  # insertion order = order of first appearance
        if best is None or total > totals[best]:
            best = group
    return (0, 0.0) if best is None else (best, totals[best])


def choose(
    selector: str,
    texts: Sequence[str],
    scores: Sequence[float] | None,
    extract: Extract = first_line,
    equivalence: str | KeyFn = "exact",
) -> tuple[int, float | None]:
    """Pick one of a prompt's candidates: ``(index, score)`` as described in the module docstring.

    ``extract`` and ``equivalence`` only matter to the voting selectors.
    """
    if selector == "argmax":
        if scores is None:
            raise RsftError("selector 'argmax' needs a scorer")
        index = argmax_indices([scores])[0]
        return index, float(scores[index])
    if selector in ("majority", "weighted_majority"):
        answers = [extract(t) for t in texts]
        if selector == "majority":
            index, votes = vote(answers, None, equivalence)
            return index, votes / len(texts)
        if scores is None:
            raise RsftError("selector 'weighted_majority' needs a scorer")
        return vote(answers, scores, equivalence)
    raise RsftError(f"unknown selector {selector!r}; choose one of {', '.join(SELECTORS)}")


# --- the library function ------------------------------------------------------------------------


def check_selector(selector: str, has_scorer: bool) -> None:
    """Fail early on an unknown selector, or one that needs a scorer when none is given."""
    if selector not in SELECTORS:
        raise RsftError(f"unknown selector {selector!r}; choose one of {', '.join(SELECTORS)}")
    if selector != "majority" and not has_scorer:
        raise RsftError(f"selector {selector!r} needs a scorer (--scorer); 'majority' works without one")


def select_best(
    prompts: Sequence[PromptValue],
    rows: Sequence[Sequence[Completion]],
    scorer: Scorer | None,
    selector: str = "argmax",
    metadata: Sequence[Mapping[str, Any]] | None = None,
    extract: Extract | str | None = None,
    equivalence: str | KeyFn = "exact",
) -> list[BoNResult]:
    """Score already generated candidates (one row of N per prompt) and pick one per row."""
    check_selector(selector, scorer is not None)
    extract_fn, equivalence = answer_extractor(extract), resolve_equivalence(equivalence)
    metadata = list(metadata) if metadata is not None else [{} for _ in prompts]
    if len(metadata) != len(prompts):
        raise RsftError(f"metadata has {len(metadata)} entries for {len(prompts)} prompts")
    scores = score_rows(prompts, rows, scorer, metadata) if scorer is not None else None
    return [pick(prompt, row, scores[i] if scores is not None else None, selector, extract_fn, equivalence)
            for i, (prompt, row) in enumerate(zip(prompts, rows, strict=True))]


def score_rows(
    prompts: Sequence[PromptValue],
    rows: Sequence[Sequence[Completion]],
    scorer: Scorer,
    metadata: Sequence[Mapping[str, Any]],
    *,
    indices: Sequence[int] | None = None,
    first_sample: int = 0,
) -> list[list[float]]:
    """Every candidate's reward, row by row, in one scorer batch (a failure names its pair).

    ``indices`` (each row's prompt number) and ``first_sample`` (the first candidate's sample
    index) only label errors, for callers that score a slice of the prompts or of the samples.
    """
    flat = [(i, j) for i, row in enumerate(rows) for j in range(len(row))]
    number = indices if indices is not None else range(len(rows))
    values, _, _ = score_pairs(
        scorer,
        [prompts[i] for i, _ in flat],
        [rows[i][j].text for i, j in flat],
        [metadata[i] for i, _ in flat],
        on_error="fail",
        labels=[f"prompt {number[i]} sample {first_sample + j}" for i, j in flat],
    )
    it = iter(values)
    return [[next(it) for _ in row] for row in rows]


def pick(
    prompt: PromptValue,
    row: Sequence[Completion],
    scores: Sequence[float] | None,
    selector: str,
    extract: Extract = first_line,
    equivalence: str | KeyFn = "exact",
) -> BoNResult:
    """The ``BoNResult`` of one prompt's candidates (``choose`` on their texts and rewards)."""
    texts = [c.text for c in row]
    index, score = choose(selector, texts, scores, extract, equivalence)
    candidates = list(zip(texts, scores if scores is not None else [None] * len(row), strict=True))
    return BoNResult(prompt, texts[index], score, index, candidates, selector, list(row))


def best_of_n(
    prompts: Sequence[PromptValue | Prompt],
    n: int,
    generator: Generator,
    scorer: Any = None,
    selector: str = "argmax",
    sampling: SamplingParams | None = None,
    metadata: Sequence[Mapping[str, Any]] | None = None,
    extract: Extract | str | None = None,
    equivalence: str | KeyFn = "exact",
) -> list[BoNResult]:
    """Sample ``n`` completions per prompt with ``generator`` and return the best one of each.

    Args:
        prompts: texts, chat message lists, or ``Prompt`` rows (whose metadata is used when
            ``metadata`` is not given).
        n: candidates per prompt (N).
        generator: any ``Generator`` (e.g. ``make_generator("hf", {"model": ...})``).
        scorer: anything ``rsft.score.as_scorer`` accepts (a spec string such as ``"math"``, a
            ``Scorer``, or a plain ``f(prompt, completion) -> float``); None for ``majority``.
        selector: ``argmax``, ``majority`` or ``weighted_majority`` (see the module docstring).
        sampling: how to sample (default ``SamplingParams()``).
        metadata: per-prompt fields passed to the scorer (e.g. the gold ``answer``).
        extract: the answer a completion votes for (voting selectors): ``first_line`` (default),
            ``boxed``, ``"pkg.module:name"`` or a callable returning the answer (None abstains).
        equivalence: which answers vote together: ``exact`` (default), ``math`` (math-verify), or
            a key function (``"pkg.module:name"`` or a callable) mapping an answer to a hashable key.

    Raises:
        RsftError: bad ``n``/selector/extract/equivalence, a selector that needs a missing scorer,
            a generator that returns the wrong number of completions, or a scorer failure.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise RsftError(f"n must be a positive integer, got {n!r}")
    scorer_obj = as_scorer(scorer) if scorer is not None else None
    check_selector(selector, scorer_obj is not None)
    extract, equivalence = answer_extractor(extract), resolve_equivalence(equivalence)  # fail before sampling
    values = [p.prompt if isinstance(p, Prompt) else p for p in prompts]
    if metadata is None:
        metadata = [p.metadata if isinstance(p, Prompt) else {} for p in prompts]
    if not values:
        return []
    rows = generator.generate(values, n, sampling or SamplingParams())
    if len(rows) != len(values) or any(len(r) != n for r in rows):
        got = sorted({len(r) for r in rows})
        raise RsftError(f"generator {generator.name!r} returned {len(rows)} rows of {got} completions; "
                        f"expected {len(values)} of {n}")
    return select_best(values, rows, scorer_obj, selector, metadata, extract, equivalence)


def read_prompt_lines(stream: TextIO, source: str = "<stdin>") -> list[Prompt]:
    """Prompts from text lines: a JSON object is a prompt row (``prompt`` or ``messages``, other
    fields become metadata); any other non-blank line is a plain-text prompt."""
    from rsft.prompts import FieldMap, prompt_id, row_to_prompt

    out = []
    for line_no, line in enumerate(stream, start=1):
        text = line.rstrip("\r\n")
        if not text.strip():
            continue
        row = None
        if text.lstrip().startswith("{"):
            try:
                row = json.loads(text)
            except json.JSONDecodeError:
                row = None
        if isinstance(row, dict):
            out.append(row_to_prompt(row, FieldMap(), Path(source), line_no))
        else:
            out.append(Prompt(prompt_id(text), text, {}))
    if not out:
        raise RsftError(f"{source}: no prompts")
    return out


def result_row(prompt: Prompt, result: BoNResult) -> dict[str, Any]:
    """One output line of ``rsft bon``."""
    return {
        "prompt_id": prompt.prompt_id,
        "prompt": prompt.prompt,
        "completion": result.chosen,
        "score": json_number(result.score),
        "index": result.index,
        "selector": result.selector,
        "candidates": [{"text": t, "score": json_number(s)} for t, s in result.candidates],
    }


def json_number(value: float | None) -> float | None:
    """JSON has no NaN or infinity: those become null."""
    return value if value is not None and math.isfinite(value) else None
