"""Built-in checkers (exact, regex, math, task), the registry, and the combined scorers."""

from __future__ import annotations

import json
import math
from concurrent.futures import ThreadPoolExecutor

import pytest
import reasoning_gym

from rsft.errors import RsftError
from rsft.score import Scorer, as_scorer, builtin
from rsft.score.checkers import (
    ExactMatchScorer,
    MathScorer,
    RegexScorer,
    TaskScorer,
    extract_answer,
    extract_math_answer,
)
from rsft.score.combine import GatedScorer, WeightedSum, score_value, sigmoid
from rsft.types import Verdict


def scores(scorer: Scorer, completions: list[str], metadata: list[dict]) -> list[float]:
    out = scorer.score(["q"] * len(completions), completions, metadata)
    return [score_value(v) for v in out]


# --- exact -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "mode", "expected"),
    [
        ("\n  42 \nbecause\n", "first_line", "42"),
        ("work\n\nanswer: 42\n\n", "last_line", "answer: 42"),
        ("  a\nb  ", "full", "a\nb"),
        ("", "first_line", ""),
    ],
)
def test_extract_answer(text: str, mode: str, expected: str) -> None:
    assert extract_answer(text, mode) == expected


def test_exact_match_first_line_case_insensitive_by_default() -> None:
    s = ExactMatchScorer()
    got = scores(s, ["Paris\nbecause...", " paris ", "London", "because\nParis"], [{"answer": "Paris"}] * 4)
    assert got == [1.0, 1.0, 0.0, 0.0]
    assert s.score(["q"], ["Paris"], [{"answer": "Paris"}])[0] == Verdict(1.0, "answer: 'Paris'")


def test_exact_match_options() -> None:
    cs = ExactMatchScorer(case_sensitive=True)
    assert scores(cs, ["Paris", "paris"], [{"answer": "Paris"}] * 2) == [1.0, 0.0]
    last = ExactMatchScorer(extract="last_line")
    assert scores(last, ["thinking...\n7", "7\nthinking"], [{"answer": 7}] * 2) == [1.0, 0.0]
    full = ExactMatchScorer(extract="full")
    assert scores(full, ["a b\n", "a b\nc"], [{"answer": "a b"}] * 2) == [1.0, 0.0]
    with pytest.raises(RsftError, match="extract"):
        ExactMatchScorer(extract="middle")


def test_exact_match_missing_answer_names_the_field() -> None:
    with pytest.raises(RsftError, match="'answer'") as e:
        ExactMatchScorer().score(["q"], ["x"], [{}])
    assert "\n" not in str(e.value)


# --- regex -------------------------------------------------------------------------------------


def test_regex_with_group_compares_to_answer() -> None:
    s = RegexScorer(r"answer is (\d+)")
    got = s.score(["q"] * 3, ["the answer is 12.", "the answer is 13", "no idea"], [{"answer": "12"}] * 3)
    assert [v.score for v in got] == [1.0, 0.0, 0.0]
    assert got[0].details == "answer: '12'"


def test_regex_without_answer_or_group_is_a_match_test() -> None:
    assert scores(RegexScorer(r"(\d+)"), ["x 5", "none"], [{}, {}]) == [1.0, 0.0]
    assert scores(RegexScorer(r"^Answer:"), ["Answer: 3", "answer: 3"], [{"answer": "3"}] * 2) == [1.0, 0.0]


def test_regex_bad_pattern() -> None:
    with pytest.raises(RsftError, match="bad pattern"):
        RegexScorer("(unclosed")
    with pytest.raises(RsftError, match="needs a pattern"):
        as_scorer("regex")


# --- math --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("so \\boxed{\\frac{1}{2}} done", "\\frac{1}{2}"),
        ("first \\boxed{1} then \\boxed{2}", "2"),
        ("Natalia sold 48 clips.\n#### 1,000", "1000"),
        ("the answer is 7.", "7"),
        ("-3 and 2.5", "2.5"),
        ("no digits here", None),
    ],
)
def test_extract_math_answer(text: str, expected: str | None) -> None:
    assert extract_math_answer(text) == expected


@pytest.mark.parametrize(
    ("completion", "gold", "expected"),
    [
        ("We get \\boxed{1/2}.", "0.5", 1.0),
        ("We get \\boxed{\\frac{1}{2}}.", "0.5", 1.0),
        ("\\boxed{0.5}", "\\frac{1}{2}", 1.0),
        ("She has 6 * 7 = 42 apples.\n#### 42", "42", 1.0),
        ("the answer is 7.", "7", 1.0),
        ("3 + 4 = 7, so 1,000 in all", "1000", 1.0),
        ("\\boxed{x^2 + 1}", "1 + x^2", 1.0),
        ("We get \\boxed{1/3}.", "0.5", 0.0),
        ("#### 41", "42", 0.0),
        ("the answer is 8.", "7", 0.0),
        ("I don't know", "7", 0.0),
        ("7 apples, so \\boxed{8}", "7", 0.0),
        ("\\boxed{5}", "Tom has 2 + 3 = 5.\n#### 5", 1.0),
    ],
)
def test_math_scorer(completion: str, gold: str, expected: float) -> None:
    assert scores(MathScorer(), [completion], [{"answer": gold}]) == [expected]


def test_math_details_name_the_extracted_answer() -> None:
    out = MathScorer().score(["q", "q"], ["so \\boxed{1/2}", "hmm"], [{"answer": "0.5"}] * 2)
    assert out == [Verdict(1.0, "answer: '1/2'"), Verdict(0.0, "no answer found")]


def test_math_scorer_works_from_a_worker_thread() -> None:
    completions = ["\\boxed{1/2}", "#### 42", "the answer is 7.", "\\boxed{3}"]
    metadata = [{"answer": "0.5"}, {"answer": "42"}, {"answer": "7"}, {"answer": "4"}]
    scorer = MathScorer()
    with ThreadPoolExecutor(max_workers=2) as pool:
        got = pool.submit(scores, scorer, completions, metadata).result(timeout=60)
    assert got == [1.0, 1.0, 1.0, 0.0]


def test_math_missing_answer() -> None:
    with pytest.raises(RsftError, match="'answer'"):
        MathScorer().score(["q"], ["\\boxed{1}"], [{"entry": {}}])


# --- task (reasoning-gym) ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def chain_sum_entries() -> list[dict]:
    return list(reasoning_gym.create_dataset("chain_sum", size=5, seed=1))


def test_task_scorer_right_and_wrong(chain_sum_entries: list[dict]) -> None:
    s = TaskScorer()
    meta = [{"entry": e} for e in chain_sum_entries]
    right = [f"{e['answer']}\nbecause I added them up" for e in chain_sum_entries]
    wrong = [f"{int(e['answer']) + 1}" for e in chain_sum_entries]
    assert scores(s, right, meta) == [1.0] * 5
    assert scores(s, wrong, meta) == [0.0] * 5
    assert s.score(["q"], ["-4"], [{"entry": chain_sum_entries[0]}])[0] == Verdict(1.0, "answer: '-4'")


def test_task_scorer_accepts_json_entries_and_last_line(chain_sum_entries: list[dict]) -> None:
    e = chain_sum_entries[1]
    s = TaskScorer(extract="last_line")
    assert scores(s, [f"1 + 5 is\n{e['answer']}"], [{"entry": json.dumps(e)}]) == [1.0]


def test_task_scorer_errors(chain_sum_entries: list[dict]) -> None:
    with pytest.raises(RsftError, match="'entry'"):
        TaskScorer().score(["q"], ["1"], [{"answer": "1"}])
    with pytest.raises(RsftError, match="source_dataset"):
        TaskScorer().score(["q"], ["1"], [{"entry": {"question": "?", "answer": "1"}}])
    bogus = {**chain_sum_entries[0], "metadata": {"source_dataset": "no_such_task"}}
    with pytest.raises(RsftError, match="no_such_task"):
        TaskScorer().score(["q"], ["1"], [{"entry": bogus}])


# --- registry ----------------------------------------------------------------------------------


def test_specs_go_through_as_scorer() -> None:
    m = as_scorer("math")
    assert isinstance(m, Scorer) and m.name == "math"
    assert scores(m, ["\\boxed{2}"], [{"answer": "2"}]) == [1.0]
    r = as_scorer("regex:(\\d+)")
    assert r.name == "regex:(\\d+)"
    assert scores(r, ["it is 12", "it is 13"], [{"answer": "12"}] * 2) == [1.0, 0.0]
    e = as_scorer("exact", {"extract": "last_line", "case_sensitive": True})
    assert scores(e, ["x\nYes", "x\nyes"], [{"answer": "Yes"}] * 2) == [1.0, 0.0]
    assert as_scorer("task", {"extract": "full"}).name == "task"


def test_registry_rejects_unknown_options_and_stray_args() -> None:
    assert {"exact", "regex", "math", "task", "rm", "gate", "sum"} <= set(builtin.REGISTRY)
    with pytest.raises(RsftError, match="unknown option.*extrakt"):
        as_scorer("exact", {"extrakt": "full"})
    with pytest.raises(RsftError, match="takes no ':' argument"):
        as_scorer("math:x")


def test_weighted_sum() -> None:
    s = as_scorer("sum", {"terms": {"math": 1.0, "regex:boxed": 0.25}})
    got = s.score(["q"] * 3, ["\\boxed{3}", "\\boxed{4}", "3"], [{"answer": "3"}] * 3)
    assert [v.score for v in got] == [1.25, 0.25, 1.0]
    assert WeightedSum([(MathScorer(), 2.0)]).score(["q"], ["3"], [{"answer": "3"}])[0].score == 2.0
    with pytest.raises(RsftError):
        WeightedSum([])


# --- gate: a checker gating a reward model ------------------------------------------------------


class CountingScorer:
    """Wraps a scorer and records every pair it is asked to score."""

    def __init__(self, inner: Scorer) -> None:
        self.inner, self.name, self.seen = inner, inner.name, []

    def score(self, prompts, completions, metadata):
        self.seen.extend(completions)
        return self.inner.score(prompts, completions, metadata)


def test_gate_skips_failing_pairs_and_orders_passing_ones_by_the_rm(tiny_rm) -> None:
    rm = as_scorer(f"rm:{tiny_rm}")
    counting = CountingScorer(rm)
    gated = GatedScorer(MathScorer(), counting, fail_value=-1.0)
    prompts = ["What is 2 + 3?"] * 6
    completions = [
        "2 + 3 = 5",
        "The answer is 4",
        "#### 5",
        "Adding the numbers 2 and 3 gives \\boxed{5}",
        "6",
        "It is 5, the quick brown fox",
    ]
    out = gated.score(prompts, completions, [{"answer": "5"}] * 6)
    passing = [0, 2, 3, 5]
    assert counting.seen == [completions[i] for i in passing]  # the RM never saw a wrong answer
    assert [out[i].score for i in (1, 4)] == [-1.0, -1.0]
    rm_scores = rm.score([prompts[i] for i in passing], [completions[i] for i in passing], [{}] * 4)
    for i, r in zip(passing, rm_scores, strict=True):
        assert out[i].score == pytest.approx(1.0 + sigmoid(r), abs=1e-6)
        assert 1.0 < out[i].score < 2.0
    by_gate = sorted(passing, key=lambda i: out[i].score)
    by_rm = [passing[j] for j in sorted(range(4), key=lambda j: rm_scores[j])]
    assert by_gate == by_rm
    assert out[0].details.startswith("math=1 (answer: '5'); rm:")


def test_gate_spec_through_as_scorer(tiny_rm) -> None:
    g = as_scorer("gate", {"gate": "exact", "inner": f"rm:{tiny_rm}", "inner_options": {"batch_size": 2}})
    out = g.score(["q", "q", "q"], ["5", "6", "5\nbecause"], [{"answer": "5"}] * 3)
    assert out[1].score == 0.0
    assert out[0].score > 1.0 and out[2].score > 1.0
    assert g.name == f"gate(exact,rm:{tiny_rm})"


def test_gate_with_no_passing_pair_never_calls_inner() -> None:
    class Boom:
        name = "boom"

        def score(self, prompts, completions, metadata):
            raise AssertionError("inner scorer called")

    out = GatedScorer(MathScorer(), Boom()).score(["q", "q"], ["1", "2"], [{"answer": "3"}] * 2)
    assert [v.score for v in out] == [0.0, 0.0]


def test_gate_rejects_fail_value_above_pass_offset() -> None:
    with pytest.raises(RsftError, match="fail_value"):
        GatedScorer(MathScorer(), MathScorer(), fail_value=2.0, pass_offset=1.0)
    with pytest.raises(RsftError, match="'gate'"):
        as_scorer("gate", {"gate": "math"})


def test_sigmoid_is_stable() -> None:
    assert sigmoid(0.0) == 0.5
    assert sigmoid(-1000.0) == 0.0 and sigmoid(1000.0) == 1.0
    assert math.isclose(sigmoid(2.0) + sigmoid(-2.0), 1.0)
