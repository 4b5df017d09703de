"""Best-of-N at inference: the selectors against slow references, ``best_of_n``, and ``rsft bon``."""

from __future__ import annotations

import argparse
import io
import json
import math
import random
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from rsft.bon import answers as rsft_answers
from rsft.bon.infer import BoNResult, best_of_n, choose, first_line, vote
from rsft.cli import bon as bon_cli
from rsft.errors import RsftError
from rsft.types import Completion, Prompt, PromptValue, SamplingParams

# --- slow pure-Python references -----------------------------------------------------------------


def ref_argmax(scores: Sequence[float]) -> int:
    best = 0
    for j, s in enumerate(scores):
        v = -math.inf if math.isnan(s) else s
        b = -math.inf if math.isnan(scores[best]) else scores[best]
        if v > b:
            best = j
    return best


def ref_vote(answers: Sequence[str | None], weights: Sequence[float] | None) -> tuple[int, float]:
    """Winner = highest total; among equal totals, the answer whose first occurrence is earliest."""
    seen = [a for a in dict.fromkeys(answers) if a is not None]
    if not seen:
        return 0, 0.0

    def total(a: str) -> float:
        ws = [1.0 if weights is None else weights[j] for j, x in enumerate(answers) if x == a]
        return sum(0.0 if math.isnan(w) else w for w in ws)

    best = seen[0]
    for a in seen[1:]:
        if total(a) > total(best):
            best = a
    return answers.index(best), total(best)


def random_row(rng: random.Random, n: int) -> tuple[list[str], list[float]]:
    """Texts whose first lines repeat (few answers) and scores with many ties and some NaN."""
    kind = rng.random()
    texts = [f"{rng.choice('abc')}\nnoise {rng.random()}" for _ in range(n)]
    if kind < 0.15:  # all tied
        scores = [1.0] * n
    elif kind < 0.25:  # all NaN
        scores = [math.nan] * n
    else:
        scores = [rng.choice([0.0, 0.5, 1.0, 2.0, math.nan, -math.inf]) for _ in range(n)]
    return texts, scores


@pytest.mark.parametrize("seed", range(5))
def test_selectors_match_references_on_random_rows(seed):
    rng = random.Random(seed)
    for _ in range(200):
        n = rng.choice([1, 2, 3, 5, 8])
        texts, scores = random_row(rng, n)
        answers = [first_line(t) for t in texts]
        assert choose("argmax", texts, scores)[0] == ref_argmax(scores)
        index, share = choose("majority", texts, None)
        ref_index, votes = ref_vote(answers, None)
        assert (index, share) == (ref_index, votes / n)
        index, total = choose("weighted_majority", texts, [s if s != -math.inf else 0.0 for s in scores])
        assert (index, total) == ref_vote(answers, [s if s != -math.inf else 0.0 for s in scores])
        if n == 1:  # one candidate: every selector returns it
            assert choose("argmax", texts, scores)[0] == index == 0


def test_argmax_ties_go_to_the_first_and_nan_is_minus_inf():
    assert choose("argmax", ["a", "b", "c"], [1.0, 3.0, 3.0]) == (1, 3.0)
    assert choose("argmax", ["a", "b", "c"], [math.nan, -1.0, math.nan]) == (1, -1.0)
    index, score = choose("argmax", ["a", "b"], [math.nan, math.nan])
    assert index == 0 and math.isnan(score)


def test_majority_ties_go_to_the_answer_seen_first():
    texts = ["b\nwhy", "a", "a\nbecause", "  b  ", "c"]
    assert choose("majority", texts, None) == (0, 0.4)  # b and a have 2 votes each; b came first
    assert choose("majority", ["x", "y", "y"], None) == (1, 2 / 3)  # chosen: the FIRST completion with "y"
    assert choose("majority", ["", "\n ", "z"], None) == (2, 1 / 3)  # blank completions abstain
    assert choose("majority", ["", ""], None) == (0, 0.0)


def test_weighted_majority_sums_rewards_ties_to_earliest():
    texts = ["a", "b", "b", "a", "c"]
    assert choose("weighted_majority", texts, [1.0, 0.5, 0.5, 0.0, 0.9]) == (0, 1.0)  # a=1.0 ties b=1.0
    assert choose("weighted_majority", texts, [0.2, 0.5, 0.5, 0.2, 0.9]) == (1, 1.0)
    assert choose("weighted_majority", texts, [0.1, math.nan, 0.0, 0.1, 0.3]) == (4, 0.3)  # NaN adds nothing
    assert vote(["a", "b"], [math.inf, -math.inf]) == (0, math.inf)


def test_unknown_selector_and_missing_scorer():
    with pytest.raises(RsftError, match="unknown selector"):
        choose("best", ["a"], [1.0])
    with pytest.raises(RsftError, match="needs a scorer"):
        best_of_n(["p"], 2, FakeGenerator(), None, "argmax")
    with pytest.raises(RsftError, match="needs a scorer"):
        best_of_n(["p"], 2, FakeGenerator(), None, "weighted_majority")
    with pytest.raises(RsftError, match="positive integer"):
        best_of_n(["p"], 0, FakeGenerator(), len, "majority")


# --- best_of_n -----------------------------------------------------------------------------------


class FakeGenerator:
    """Candidate j of prompt p is ``"<p>|<answers[j]>"`` (answer = ``ANSWERS[j % 4]``)."""

    name = "fake"
    ANSWERS = ["7", "42", "7", "x"]

    def __init__(self, short_by: int = 0) -> None:
        self.calls: list[tuple[list[PromptValue], int, SamplingParams]] = []
        self.short_by = short_by

    def generate(self, prompts: Sequence[PromptValue], n: int, sampling: SamplingParams) -> list[list[Completion]]:
        self.calls.append((list(prompts), n, sampling))
        key = [p if isinstance(p, str) else p[-1]["content"] for p in prompts]
        return [[Completion(f"{self.ANSWERS[j % 4]}\n{k}|{j}", j + 1, "stop") for j in range(n - self.short_by)]
                for k in key]


def test_best_of_n_with_a_callable_scorer_and_metadata():
    gen = FakeGenerator()
    seen: list[tuple[str, str]] = []

    def correct(prompt: str, completion: str, answer: str) -> float:
        seen.append((prompt, answer))
        return float(first_line(completion) == answer) + 0.01 * len(completion)

    prompts = [Prompt("id1", "p1", {"answer": "42"}), Prompt("id2", "p2", {"answer": "x"})]
    sampling = SamplingParams(temperature=0.7, max_new_tokens=5, seed=3)
    out = best_of_n(prompts, 4, gen, correct, "argmax", sampling)
    assert gen.calls == [(["p1", "p2"], 4, sampling)]  # one call for every prompt
    assert [r.index for r in out] == [1, 3] and [r.chosen for r in out] == ["42\np1|1", "x\np2|3"]
    assert out[0].score == pytest.approx(1.07) and out[0].selector == "argmax"
    assert out[0].candidates[0] == ("7\np1|0", pytest.approx(0.06))
    assert len(seen) == 8 and seen[0] == ("p1", "42") and seen[-1] == ("p2", "x")

    votes = best_of_n(prompts, 4, gen, selector="majority")
    assert [(r.index, r.score) for r in votes] == [(0, 0.5), (0, 0.5)]
    assert all(s is None for r in votes for _, s in r.candidates)

    weighted = best_of_n(prompts, 4, gen, correct, "weighted_majority")
    assert [r.index for r in weighted] == [1, 3]  # the correct answer outweighs two wrong "7"s


def test_best_of_n_with_n_1_is_the_generator_itself():
    gen = FakeGenerator()
    for selector in ("argmax", "majority", "weighted_majority"):
        out = best_of_n(["q"], 1, gen, lambda p, c: 0.0, selector)
        assert out[0].index == 0 and out[0].chosen == "7\nq|0" and len(out[0].candidates) == 1


def test_best_of_n_checks_the_generator_and_reports_scorer_failures():
    with pytest.raises(RsftError, match="returned 1 rows of \\[3\\] completions; expected 1 of 4"):
        best_of_n(["q"], 4, FakeGenerator(short_by=1), selector="majority")

    def broken(prompt: str, completion: str) -> float:
        raise ValueError("boom")

    with pytest.raises(RsftError, match="boom"):
        best_of_n(["q"], 2, FakeGenerator(), broken)
    assert best_of_n([], 2, FakeGenerator(), selector="majority") == []


def test_result_is_frozen():
    r = BoNResult("p", "c", 1.0, 0, [("c", 1.0)], "argmax")
    with pytest.raises(AttributeError):
        r.index = 1  # type: ignore[misc]
    assert r.finish_reason == "stop"


# --- rsft bon -------------------------------------------------------------------------------------


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="rsft bon")
    bon_cli.add_arguments(parser)
    return parser.parse_args(argv)


@pytest.fixture
def scorer_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (tmp_path / "bon_scorers.py").write_text("def longest(prompt, completion):\n    return float(len(completion))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return "bon_scorers:longest"


def test_rsft_bon_reads_a_prompt_file_and_writes_jsonl(tiny_lm, tmp_path, scorer_module):
    rows = [{"prompt": "Q: What is 2 + 3?\nA:", "answer": "5"}, {"messages": [{"role": "user", "content": "hi"}]}]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out.jsonl"
    args = parse(["--prompts", str(tmp_path / "p.jsonl"), "--model", str(tiny_lm), "-n", "3",
                  "--max-new-tokens", "5", "--seed", "1", "--scorer", scorer_module, "--output", str(out),
                  "--option", "batch_size=2"])
    bon_cli.main(args)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["prompt"] for line in lines] == [rows[0]["prompt"], rows[1]["messages"]]
    for line in lines:
        assert set(line) == {"prompt_id", "prompt", "completion", "score", "index", "selector", "candidates"}
        lengths = [len(c["text"]) for c in line["candidates"]]
        assert len(lengths) == 3 and line["selector"] == "argmax"
        assert line["index"] == lengths.index(max(lengths)) and line["score"] == max(lengths)
        assert line["completion"] == line["candidates"][line["index"]]["text"]
        assert [c["score"] for c in line["candidates"]] == [float(n) for n in lengths]


def test_rsft_bon_reads_stdin_and_defaults_to_majority(tiny_lm, monkeypatch, capsys):
    stdin = 'The quick brown fox\n\n{"prompt": "Q: What is 7 - 4?\\nA:", "answer": "3"}\n42\n'
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    bon_cli.main(parse(["--model", str(tiny_lm), "-n", "4", "--max-new-tokens", "4", "--temperature", "0"]))
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["prompt"] for line in lines] == ["The quick brown fox", "Q: What is 7 - 4?\nA:", "42"]
    for line in lines:
        assert line["selector"] == "majority" and line["index"] == 0
        texts = {c["text"] for c in line["candidates"]}
        assert len(texts) == 1  # greedy: N identical candidates...
        assert line["score"] == (1.0 if first_line(line["completion"]) else 0.0)  # ...all voting together
        assert all(c["score"] is None for c in line["candidates"])


def test_rsft_bon_errors_are_rsft_errors(tiny_lm, tmp_path, monkeypatch):
    with pytest.raises(RsftError, match="needs a scorer"):
        bon_cli.main(parse(["--prompts", str(tmp_path / "missing.jsonl"), "--selector", "argmax"]))
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n \n"))
    with pytest.raises(RsftError, match="no prompts"):
        bon_cli.main(parse(["--prompts", "-", "--model", str(tiny_lm)]))
    with pytest.raises(RsftError, match="top_p"):
        bon_cli.main(parse(["--top-p", "0"]))
    with pytest.raises(RsftError, match="no such file"):
        bon_cli.main(parse(["--prompts", str(tmp_path / "missing.jsonl"), "--model", str(tiny_lm)]))


# --- answer extraction and equivalence-aware voting -----------------------------------------------

HALF = ["1/2", "0.5", "\\frac{1}{2}", "2/4", ".5"]
TWO = ["2", "2.0", "4/2", "\\frac{6}{3}"]
OTHER = ["3", "-1", "x+1", "1+x"]
VALUE = {**dict.fromkeys(HALF, "1/2"), **dict.fromkeys(TWO, "2"), "3": "3", "-1": "-1", "x+1": "x+1", "1+x": "x+1"}


def test_math_equivalence_votes_equal_values_together():
    answers = ["3", "1/2", "0.5", "\\frac{1}{2}", "3"]
    assert vote(answers) == (0, 2.0)  # exact: "3" twice
    assert vote(answers, equivalence="math") == (1, 3.0)  # 1/2 = 0.5 = \frac{1}{2}: first member wins
    assert vote(["0.5", "3", "1/2", "3"], equivalence="math") == (0, 2.0)  # 2-2 tie: the group seen first
    assert vote(["3", "0.5", "1/2", "3"], equivalence="math") == (0, 2.0)
    # weighted: the group's summed reward; the index stays the group's FIRST member, not its best
    assert vote(["3", "1/2", "0.5"], [1.0, 0.2, 1.5], equivalence="math") == (1, pytest.approx(1.7))
    assert vote(["3", "1/2", "0.5"], [1.5, 0.2, math.nan], equivalence="math") == (0, 1.5)
    assert vote([None, None], equivalence="math") == (0, 0.0)


def test_answer_groups_labels_and_unparseable_answers():
    answers = ["x+1", None, "hello", "1+x", "hello", "", "2", "", "4/2"]
    assert rsft_answers.answer_groups(answers, "math") == [0, None, 2, 0, 2, 5, 6, 5, 6]
    assert rsft_answers.answer_groups(answers, "exact") == [0, None, 2, 3, 2, 5, 6, 5, 8]
    assert rsft_answers.answer_groups([]) == []


@pytest.mark.parametrize("seed", range(3))
def test_math_and_key_equivalence_match_a_reference_on_random_rows(seed):
    rng = random.Random(seed)
    pool = HALF + TWO + OTHER
    for _ in range(40):
        n = rng.choice([1, 2, 4, 8])
        answers = [rng.choice(pool + [None]) for _ in range(n)]
        weights = [rng.choice([0.0, 0.5, 1.0, math.nan]) for _ in range(n)]
        keys = [None if a is None else VALUE[a] for a in answers]
        assert vote(answers, equivalence="math") == ref_vote(keys, None)
        assert vote(answers, weights, equivalence="math") == ref_vote(keys, weights)
        assert vote(answers, weights, equivalence=VALUE.__getitem__) == ref_vote(keys, weights)


def test_key_function_equivalence_and_errors():
    answers = ["Paris", "paris ", "Rome", "ROME", "rome", "?"]
    fold = lambda a: None if a == "?" else a.strip().casefold()  # noqa: E731
    assert vote(answers, equivalence=fold) == (2, 3.0)
    assert rsft_answers.answer_groups(answers, fold) == [0, 0, 2, 2, 2, None]  # a None key abstains
    assert choose("majority", answers, None, equivalence=fold) == (2, 0.5)
    with pytest.raises(RsftError, match="not hashable"):
        vote(["a"], equivalence=lambda a: [a])
    with pytest.raises(RsftError, match="unknown equivalence 'fuzzy'"):
        vote(["a"], equivalence="fuzzy")
    with pytest.raises(RsftError, match="equivalence 'no_such_module_xyz:key': cannot import"):
        rsft_answers.resolve_equivalence("no_such_module_xyz:key")


def test_answer_extractors():
    text = "so \\boxed{\\frac{1}{2}} or maybe \\boxed{ \\{1, 2\\} }\nend"
    assert rsft_answers.answer_extractor("boxed")(text) == "\\{1, 2\\}"
    assert rsft_answers.answer_extractor("boxed")("no box") is None
    assert rsft_answers.answer_extractor("boxed")("\\boxed{}") is None  # an empty box abstains
    assert rsft_answers.answer_extractor(None) is rsft_answers.answer_extractor("first_line") is first_line
    assert rsft_answers.answer_extractor(str.upper) is str.upper
    with pytest.raises(RsftError, match="unknown answer extractor 'last'"):
        rsft_answers.answer_extractor("last")
    with pytest.raises(RsftError, match="answer extractor 'os:nope': 'os' has no attribute 'nope'"):
        rsft_answers.answer_extractor("os:nope")
    with pytest.raises(RsftError, match="is not callable"):
        rsft_answers.answer_extractor("os:sep")


class ListGenerator:
    """Every prompt gets the same candidates."""

    name = "list"

    def __init__(self, texts: list[str]) -> None:
        self.texts = texts
        self.calls = 0

    def generate(self, prompts: Sequence[PromptValue], n: int, sampling: SamplingParams) -> list[list[Completion]]:
        self.calls += 1
        return [[Completion(t, 1, "stop") for t in self.texts[:n]] for _ in prompts]


BOXED = ["I think \\boxed{3}", "\\boxed{1/2}", "so \\boxed{0.5}.", "\\boxed{\\frac{1}{2}}", "\\boxed{3} again"]


def test_best_of_n_with_boxed_answers_and_math_equivalence():
    gen = ListGenerator(BOXED)
    assert best_of_n(["q"], 5, gen, selector="majority")[0].index == 0  # first lines all differ
    out = best_of_n(["q"], 5, gen, selector="majority", extract="boxed")[0]
    assert (out.index, out.score) == (0, 0.4)
    out = best_of_n(["q"], 5, gen, selector="majority", extract="boxed", equivalence="math")[0]
    assert (out.index, out.score, out.chosen) == (1, 0.6, "\\boxed{1/2}")
    reward = {t: r for t, r in zip(BOXED, [2.0, 0.1, 0.1, 0.1, 0.0], strict=True)}
    out = best_of_n(["q"], 5, gen, lambda p, c: reward[c], "weighted_majority", extract="boxed",
                    equivalence="math")[0]
    assert (out.index, out.score) == (0, 2.0)  # 2.0 for "3" beats 0.3 for the three halves
    with pytest.raises(RsftError, match="unknown equivalence"):
        best_of_n(["q"], 5, gen, selector="majority", equivalence="nope")
    assert gen.calls == 4  # the bad option failed before sampling


def test_rsft_bon_answer_and_equivalence_flags(monkeypatch, capsys, tmp_path):
    (tmp_path / "bon_keys.py").write_text("def parity(answer):\n    return answer.strip().isdigit() and int(answer) % 2\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    gen = ListGenerator(["\\boxed{3}", "\\boxed{4}", "\\boxed{6}", "\\boxed{1/2}", "\\boxed{0.5}", "\\boxed{0.50}"])
    monkeypatch.setattr(bon_cli, "generator_from_config", lambda config: gen)

    def run(*flags: str) -> dict:
        monkeypatch.setattr(sys, "stdin", io.StringIO("q\n"))
        bon_cli.main(parse(["-n", "6", *flags]))
        (line,) = capsys.readouterr().out.splitlines()
        return json.loads(line)

    assert run()["index"] == 0  # first_line, exact: six different answers
    assert run("--answer", "boxed", "--equivalence", "math")["index"] == 3
    line = run("--answer", "boxed", "--equivalence", "bon_keys:parity")
    assert (line["index"], line["score"]) == (1, pytest.approx(5 / 6))  # even 4, 6 and non-integers (False == 0)
    assert set(line) == {"prompt_id", "prompt", "completion", "score", "index", "selector", "candidates"}
    with pytest.raises(RsftError, match="unknown answer extractor"):
        run("--answer", "second_line")


# --- rsft bon --adaptive --------------------------------------------------------------------------


def test_rsft_bon_adaptive_reports_samples_used_and_saved(monkeypatch, capsys):
    from test_adaptive import SCRIPT, ScriptedGenerator

    gen = ScriptedGenerator(SCRIPT)
    monkeypatch.setattr(bon_cli, "generator_from_config", lambda config: gen)
    monkeypatch.setattr(sys, "stdin", io.StringIO("easy\nsplit\nlate\n"))
    bon_cli.main(parse(["--adaptive", "--budget", "8", "--min-n", "2", "--supermajority", "0.6", "--seed", "0"]))
    out = capsys.readouterr()
    lines = [json.loads(line) for line in out.out.splitlines()]
    assert [(line["completion"], line["samples"], len(line["candidates"])) for line in lines] == [
        ("7", 2, 2), ("1", 8, 8), ("5", 8, 8)]
    assert set(lines[0]) == {"prompt_id", "prompt", "completion", "score", "index", "selector", "candidates", "samples"}
    assert "adaptive N: 18 of 24 samples (6 saved, 25%; 1 of 3 prompts stopped early) in 3 batches" in out.err
    assert [n for _, n, _ in gen.calls] == [2, 2, 4]
    monkeypatch.setattr(sys, "stdin", io.StringIO("easy\n"))
    bon_cli.main(parse(["--adaptive", "-n", "4", "--stop-rule", "beta"]))  # -n is the budget; 4 sevens: 31/32
    assert json.loads(capsys.readouterr().out)["samples"] == 4


def test_rsft_bon_adaptive_flag_errors(tiny_lm):
    with pytest.raises(RsftError, match="--budget, --min-n need --adaptive"):
        bon_cli.main(parse(["--budget", "8", "--min-n", "2", "--model", str(tiny_lm)]))
    with pytest.raises(RsftError, match="adaptive min_n must be a positive integer"):
        bon_cli.main(parse(["--adaptive", "--min-n", "0", "--model", str(tiny_lm)]))
    with pytest.raises(SystemExit):
        parse(["--adaptive", "--stop-rule", "sprt"])


def test_rsft_bon_adaptive_on_the_tiny_model(tiny_lm, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("The quick brown fox\nWhat is 7 - 4?\n"))
    bon_cli.main(parse(["--model", str(tiny_lm), "--adaptive", "-n", "8", "--min-n", "2", "--max-new-tokens", "3",
                    "--temperature", "0"]))
    out = capsys.readouterr()
    lines = [json.loads(line) for line in out.out.splitlines()]
    assert [line["samples"] for line in lines] == [2, 2] and all(line["score"] in (0.0, 1.0) for line in lines)
    assert "4 of 16 samples (12 saved, 75%" in out.err
