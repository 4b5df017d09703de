"""Adaptive N: scripted answers through the real ``rsft.bon.infer`` path, the stopping rules, seeds, samples saved."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import pytest

from rsft.bon.adaptive import AdaptivePolicy, leader_probability, should_stop, vote_totals
from rsft.bon.infer import adaptive_best_of_n, best_of_n
from rsft.errors import RsftError
from rsft.types import Completion, Prompt, PromptValue, SamplingParams


class ScriptedGenerator:
    """Sample ``t`` of a call with seed ``s`` is ``script[prompt][s + t]``: sample j is seeded ``seed + j``.

    That is how a generator that seeds each sample index behaves (the openai backend with
    ``max_n_per_request=1``), so an adaptive run's samples are a full run's first ones.
    """

    name = "scripted"

    def __init__(self, script: dict[str, list[str]]) -> None:
        self.script = script
        self.calls: list[tuple[list[str], int, int]] = []

    def generate(self, prompts: Sequence[PromptValue], n: int, sampling: SamplingParams) -> list[list[Completion]]:
        self.calls.append((list(prompts), n, sampling.seed))  # type: ignore[arg-type]
        return [[Completion(self.script[p][sampling.seed + t], 1, "stop") for t in range(n)]  # type: ignore[index]
                for p in prompts]


SCRIPT = {
    "easy": ["7", "7", "7", "7", "1", "7", "7", "7"],
    "split": ["1", "2", "1", "2", "3", "1", "1", "1"],
    "late": ["1", "2", "3", "4", "5", "5", "5", "5"],
}


def test_prompts_stop_when_they_agree_and_the_rest_continue_alone():
    gen = ScriptedGenerator(SCRIPT)
    run = adaptive_best_of_n(list(SCRIPT), AdaptivePolicy(budget=8, min_n=2, supermajority=0.6), gen)
    # schedule 2, 4, 8: "easy" agrees at 2; "split" is 2/4 at 4, then 5/8 at 8; "late" never agrees
    assert gen.calls == [(["easy", "split", "late"], 2, 0), (["split", "late"], 2, 2), (["split", "late"], 4, 4)]
    assert run.samples == [2, 8, 8] and run.used == 18 and run.saved == 24 - 18 and run.batches == 3
    assert [r.chosen for r in run.results] == ["7", "1", "5"]
    assert [r.score for r in run.results] == [1.0, 5 / 8, 4 / 8]
    assert [len(r.completions) for r in run.results] == [2, 8, 8]
    assert run.summary() == {"prompts": 3, "budget": 8, "samples": 18, "saved": 6, "saved_fraction": 0.25,
                             "batches": 3, "stopped_early": 1}


def test_deterministic_and_the_first_samples_of_a_full_run():
    policy = AdaptivePolicy(budget=8, min_n=3, supermajority=0.7, growth=1.5)
    assert policy.schedule() == [3, 5, 8]
    a = adaptive_best_of_n(list(SCRIPT), policy, ScriptedGenerator(SCRIPT))
    b = adaptive_best_of_n(list(SCRIPT), policy, ScriptedGenerator(SCRIPT))
    assert a == b and a.samples == [3, 8, 8]
    full = best_of_n(list(SCRIPT), 8, ScriptedGenerator(SCRIPT), selector="majority")
    for r, f in zip(a.results, full, strict=True):
        assert r.candidates == f.candidates[: len(r.candidates)]


def length(prompt: object, completion: str) -> float:
    return float(len(completion))


@pytest.mark.parametrize("selector, scorer", [("majority", None), ("weighted_majority", length), ("argmax", length)])
@pytest.mark.parametrize("growth", [2.0, 1.0, 3.5])
def test_no_early_stop_equals_a_non_adaptive_run(selector, scorer, growth):
    script = {"a": ["x", "yy", "x", "zzz", "x", "x", "yy", "x"], "b": ["1"] * 8}
    policy = AdaptivePolicy(budget=8, min_n=2, supermajority=1.01, growth=growth)
    gen = ScriptedGenerator(script)
    run = adaptive_best_of_n(["a", "b"], policy, gen, scorer, selector)
    assert run.samples == [8, 8] and run.saved == 0 and run.batches == len(policy.schedule()) == len(gen.calls)
    full = best_of_n(["a", "b"], 8, ScriptedGenerator(script), scorer, selector)
    assert run.results == full
    assert [(r.index, r.score, r.candidates) for r in run.results] == [(f.index, f.score, f.candidates) for f in full]


def test_supermajority_one_stops_only_when_unanimous():
    script = {"u": ["4"] * 8, "m": ["4", "4", "4", "5", "4", "4", "4", "4"]}
    run = adaptive_best_of_n(["u", "m"], AdaptivePolicy(8, min_n=4, supermajority=1.0), ScriptedGenerator(script))
    assert run.samples == [4, 8]


def test_budget_below_min_n_is_one_batch_and_prompt_rows_keep_their_metadata():
    seen: list[dict] = []

    def gold(prompt: object, completion: str, answer: str = "") -> float:
        seen.append({"answer": answer})
        return float(completion == answer)

    gen = ScriptedGenerator(SCRIPT)
    run = adaptive_best_of_n([Prompt("id", "split", {"answer": "2"})], AdaptivePolicy(3, min_n=4), gen, gold,
                             "argmax")
    assert gen.calls == [(["split"], 3, 0)] and run.samples == [3] and run.saved == 0
    assert (run.results[0].index, run.results[0].score) == (1, 1.0) and seen[0] == {"answer": "2"}


def test_equivalence_and_extract_group_answers_like_the_vote():
    script = {"q": ["\\boxed{1/2}", "\\boxed{0.5}", "\\boxed{3}", "\\boxed{\\frac{1}{2}}"] + ["\\boxed{9}"] * 4}
    policy = AdaptivePolicy(8, min_n=4, supermajority=0.7)
    exact = adaptive_best_of_n(["q"], policy, ScriptedGenerator(script), extract="boxed")
    assert exact.samples == [8] and exact.results[0].chosen == "\\boxed{9}"  # 1/4 each, then 9 has 4/8
    maths = adaptive_best_of_n(["q"], policy, ScriptedGenerator(script), extract="boxed", equivalence="math")
    assert maths.samples == [4] and (maths.results[0].index, maths.results[0].score) == (0, 0.75)


def test_weighted_majority_stops_on_reward_weighted_votes():
    script = {"q": ["aaaaa", "b", "c", "b", "b", "b", "b", "b"]}
    policy = AdaptivePolicy(8, min_n=4, supermajority=0.6)
    assert adaptive_best_of_n(["q"], policy, ScriptedGenerator(script), length, "weighted_majority").samples == [4]
    assert adaptive_best_of_n(["q"], policy, ScriptedGenerator(script), length, "majority").samples == [8]
    # majority: "b" holds 2/4 then 6/8; weighted: "aaaaa" holds 5/8 of the reward at 4 samples


def test_vote_totals_clip_weights_and_count_abstentions():
    assert vote_totals(["a", None, "b", "a"]) == (2.0, 1.0, 4.0)
    assert vote_totals(["a", "b", "a"], [1.0, -5.0, math.nan]) == (1.0, 0.0, 1.0)
    assert vote_totals([None, None]) == (0.0, 0.0, 2.0)
    policy = AdaptivePolicy(4, min_n=2)
    assert not should_stop(policy, [None, None]) and not should_stop(policy, ["a"])
    assert should_stop(policy, ["a", "a"]) and not should_stop(policy, ["a", None])


def test_beta_rule_is_adaptive_consistency():
    # P(p1 > p2) for Beta(v1 + 1, v2 + 1) equals P(Binomial(v1 + v2 + 1, 1/2) <= v1) for integer votes
    for v1 in range(0, 40, 3):
        for v2 in range(0, 40, 5):
            exact = sum(math.comb(v1 + v2 + 1, k) for k in range(v1 + 1)) / 2 ** (v1 + v2 + 1)
            assert leader_probability(v1, v2) == pytest.approx(exact, abs=1e-12)
    assert leader_probability(2.5, 2.5) == pytest.approx(0.5, abs=1e-12)
    assert leader_probability(4, 0) == 1 - 1 / 32
    policy = AdaptivePolicy(16, min_n=4, rule="beta", confidence=0.95)
    assert should_stop(policy, list("aaaa"))  # 31/32 >= 0.95
    assert not should_stop(policy, list("aaab"))  # 13/16
    assert should_stop(policy, list("aaaaaaab"))  # 1 - 10/512
    assert not should_stop(policy, list("aaaaabbb"))
    script = {"q": ["5", "5", "5", "6", "5", "5", "5", "5"], "r": ["5"] * 8}
    run = adaptive_best_of_n(["q", "r"], policy, ScriptedGenerator({k: v * 2 for k, v in script.items()}))
    assert run.samples == [8, 4]


@pytest.mark.parametrize("kwargs, message", [
    ({"budget": 0}, "budget must be a positive integer"),
    ({"budget": True}, "budget must be a positive integer"),
    ({"budget": 4, "min_n": 0}, "min_n must be a positive integer"),
    ({"budget": 4, "supermajority": 0.0}, "supermajority must be > 0"),
    ({"budget": 4, "supermajority": math.nan}, "supermajority must be > 0"),
    ({"budget": 4, "growth": 0.5}, "growth must be a finite number >= 1"),
    ({"budget": 4, "rule": "sprt"}, "rule 'sprt' is unknown"),
    ({"budget": 4, "confidence": 1.0}, "confidence must be in"),
])
def test_bad_policies(kwargs, message):
    with pytest.raises(RsftError, match=message):
        AdaptivePolicy(**kwargs)


def test_bad_generators_selectors_and_scorers_fail_clearly():
    class Short(ScriptedGenerator):
        def generate(self, prompts, n, sampling):
            return super().generate(prompts, n, sampling)[:-1]

    with pytest.raises(RsftError, match="returned 1 rows of \\[2\\] completions; expected 2 of 2"):
        adaptive_best_of_n(["easy", "split"], AdaptivePolicy(4, min_n=2), Short(SCRIPT))
    gen = ScriptedGenerator(SCRIPT)
    with pytest.raises(RsftError, match="needs a scorer"):
        adaptive_best_of_n(["easy"], 4, gen, selector="argmax")
    with pytest.raises(RsftError, match="unknown equivalence"):
        adaptive_best_of_n(["easy"], 4, gen, equivalence="nope")
    assert gen.calls == []

    def picky(prompt: object, completion: str) -> float:
        if completion == "3":
            raise ValueError("no threes")
        return 1.0

    with pytest.raises(RsftError, match="prompt 1 sample 4"):  # the global prompt and sample index
        adaptive_best_of_n(["easy", "split"], AdaptivePolicy(8, min_n=4), ScriptedGenerator(SCRIPT), picky,
                           "weighted_majority")


def test_tiny_model_greedy_stops_at_min_n_and_the_first_batch_is_a_plain_run(tiny_lm: Path):
    from rsft.generate.hf import HFGenerator

    gen = HFGenerator(str(tiny_lm))
    greedy = SamplingParams(temperature=0, max_new_tokens=4)
    run = adaptive_best_of_n(["The quick", "Q: 2+2?\nA:"], AdaptivePolicy(16, min_n=3), gen, sampling=greedy)
    assert run.samples == [3, 3] and run.saved == 26 and run.batches == 1
    sampling = SamplingParams(temperature=1.0, max_new_tokens=4, seed=5)
    policy = AdaptivePolicy(4, min_n=4)
    run = adaptive_best_of_n(["The quick", "hello"], policy, gen, sampling=sampling)
    assert run.results == best_of_n(["The quick", "hello"], 4, gen, sampling=sampling, selector="majority")
    twice = [adaptive_best_of_n(["The quick"], AdaptivePolicy(8, min_n=2, supermajority=1.5), gen, sampling=sampling)
             for _ in range(2)]
    assert twice[0] == twice[1] and twice[0].samples == [8] and twice[0].batches == 3


def test_openai_backend_one_sample_per_request_gives_a_full_runs_first_samples():
    """The real openai generator against the fake server: sample j is requested with seed + j."""
    from fake_openai_server import FakeServer

    from rsft.generate.openai import OpenAIGenerator

    with FakeServer() as server:
        gen = OpenAIGenerator(model="m", base_url=server.base_url, max_n_per_request=1)
        sampling = SamplingParams(seed=11, max_new_tokens=4)
        never = AdaptivePolicy(6, min_n=2, supermajority=1.5)
        run = adaptive_best_of_n(["hi", "yo"], never, gen, sampling=sampling)
        full = best_of_n(["hi", "yo"], 6, gen, sampling=sampling, selector="majority")
        assert [r.candidates for r in run.results] == [f.candidates for f in full]
        assert run.results[0].candidates[5] == ("hi s16 c0", None) and run.batches == 3
        agree = adaptive_best_of_n(["hi"], AdaptivePolicy(6, min_n=2), gen, sampling=sampling,
                                   equivalence=lambda answer: answer.split()[0])
        assert agree.samples == [2] and agree.results[0].candidates == full[0].candidates[:2]
