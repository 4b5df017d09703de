"""What a completion votes for and which answers are the same: the voting half of Best-of-N.

An extractor maps a completion to its answer (``first_line``, ``boxed`` or a user function; None
abstains); ``answer_groups`` puts equivalent answers in one group: ``exact`` (equal texts), ``math``
(math-verify equivalence, so ``1/2``, ``0.5`` and ``\\frac{1}{2}`` vote together) or a user key
function. Used by the voting selectors of ``rsft.bon.infer`` and by adaptive N (``rsft.bon.adaptive``), which
the generate stage runs too.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Any

from rsft import registry
from rsft.errors import RsftError

Extract = Callable[[str], "str | None"]
"""Maps a completion to the answer it votes for; ``None`` abstains."""


def first_line(text: str) -> str | None:
    """The default answer extractor: the first non-blank line, stripped; None for a blank text."""
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return None


ANSWERS = registry.ANSWERS
"""Built-in answer extractors (``--answer``); ``pkg.module:name`` loads a user function."""

EQUIVALENCES = registry.EQUIVALENCES
"""Built-in answer groupings (``--equivalence``); ``pkg.module:name`` loads a user key function."""

KeyFn = Callable[[str], Hashable]
"""Maps an answer to its group key: answers with equal keys vote together; a None key abstains."""


def last_boxed(text: str) -> str | None:
    """The ``boxed`` extractor: the content of the last ``\\boxed{...}``; None when there is none."""
    from rsft.score.checkers import boxed_content

    return boxed_content(text) or None


def _load_function(spec: str, what: str) -> Callable[..., Any]:
    """Import a user function ``"pkg.module:name"`` named by option ``what``."""
    obj = registry.load_object(spec, what)
    if not callable(obj):
        raise RsftError(f"{what} {spec!r}: {spec.partition(':')[2]!r} is not callable")
    return obj


def answer_extractor(spec: str | Extract | None = None) -> Extract:
    """The extractor named by ``spec``: ``first_line`` (also None), ``boxed``, ``pkg.module:name``, a callable."""
    if spec is None:
        return first_line
    if callable(spec):
        return spec
    if spec in ANSWERS:
        return ANSWERS[spec].load()
    if ":" in spec:
        return _load_function(spec, "answer extractor")
    raise ANSWERS.unknown(spec)


def resolve_equivalence(spec: str | KeyFn) -> str | KeyFn:
    """``exact`` or ``math`` as is, a ``pkg.module:name`` key function loaded, a callable as is."""
    if callable(spec) or spec in EQUIVALENCES:
        return spec
    if isinstance(spec, str) and ":" in spec:
        return _load_function(spec, "equivalence")
    raise EQUIVALENCES.unknown(spec)


def answer_groups(answers: Sequence[str | None], equivalence: str | KeyFn = "exact") -> list[int | None]:
    """The group of each answer, labelled by the index of the group's first member; None abstains.

    A name of ``EQUIVALENCES`` (``exact``: equal texts, ``math``: see ``math_groups``) groups the
    answers itself; a key function puts answers with equal keys together (``key_groups``).
    """
    equivalence = resolve_equivalence(equivalence)
    if isinstance(equivalence, str):
        return EQUIVALENCES[equivalence].load()(answers)
    return key_groups(answers, equivalence)


def exact_groups(answers: Sequence[str | None]) -> list[int | None]:
    """Groups of equal texts."""
    return key_groups(answers, lambda a: a)


def key_groups(answers: Sequence[str | None], key: KeyFn) -> list[int | None]:
    """Groups of answers whose ``key`` is equal; a None key abstains."""
    first: dict[Hashable, int] = {}
    out: list[int | None] = []
    for j, answer in enumerate(answers):
        k = None if answer is None else key(answer)
        try:
            out.append(None if k is None else first.setdefault(k, j))
        except TypeError:
            raise RsftError(f"equivalence key of answer {answer!r} is not hashable: {k!r}") from None
    return out


def math_groups(answers: Sequence[str | None]) -> list[int | None]:
    """Groups by math-verify equivalence: ``verify(a, b) or verify(b, a)`` on the parsed answers.

    Each distinct text is parsed once and compared with the representative (first member) of each
    group so far, joining the first group it matches: O(groups x distinct answers) comparisons.
    Equal texts always share a group; a text math-verify cannot parse only groups with itself.
    """
    import threading

    from math_verify import parse, verify

    from rsft.score.checkers import MATH_TIMEOUT_S, as_latex

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
            parsed = parse(as_latex(answer), parsing_timeout=timeout) if answer.strip() else []
            group = next((g for g, rep in reps if parsed and same(rep, parsed)), None)
            if group is None:
                group = j
                if parsed:
                    reps.append((j, parsed))
            label[answer] = group
        out.append(label[answer])
    return out
