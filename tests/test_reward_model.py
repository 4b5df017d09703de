"""The reward model scorer on a tiny random RM: batching, ordering, padding efficiency, errors."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from rsft.errors import RsftError
from rsft.score import as_scorer
from rsft.score.reward_model import RewardModelScorer, make_batches, padding_efficiency

WORDS = "the quick brown fox jumps over the lazy dog and the answer is 42".split()


def long_tailed_pairs(n: int, seed: int = 0) -> tuple[list, list[str]]:
    """Mostly short completions, a few very long ones; prompts mix plain text and chat messages."""
    rng = random.Random(seed)
    prompts: list = []
    completions = []
    for i in range(n):
        q = f"Q: What is {i} + {i % 7}?"
        prompts.append(
            q if i % 2 else [{"role": "system", "content": "Be brief."}, {"role": "user", "content": q}]
        )
        n_words = min(int(rng.paretovariate(1.2)), 120)
        completions.append(" ".join(rng.choice(WORDS) for _ in range(n_words)))
    return prompts, completions


def one_at_a_time(scorer: RewardModelScorer, prompts: list, completions: list[str]) -> list[float]:
    return [scorer.score([p], [c], [{}])[0] for p, c in zip(prompts, completions, strict=True)]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """A 32-wide model gains nothing from threads, and on a busy CPU OpenMP threads slow it 100x."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def rm(tiny_rm: Path) -> RewardModelScorer:
    return RewardModelScorer(tiny_rm, batch_size=4)


@pytest.fixture(scope="module")
def pairs() -> tuple[list, list[str]]:
    return long_tailed_pairs(24)


@pytest.fixture(scope="module")
def reference(rm: RewardModelScorer, pairs) -> list[float]:
    """Each pair scored on its own: no batching, no padding."""
    return one_at_a_time(rm, *pairs)


# --- padding efficiency on its own -------------------------------------------------------------


@pytest.mark.parametrize(
    ("lengths", "batch_size", "sort", "expected"),
    [
        ([1, 10, 1, 10], 2, False, 22 / 40),
        ([1, 10, 1, 10], 2, True, 1.0),
        ([5, 1, 1, 1], 4, False, 8 / 20),
        ([5, 1, 1, 1], 4, True, 8 / 20),
        ([5, 1, 1, 1], 1, False, 1.0),
        ([2, 8, 4, 6], 2, False, 20 / 28),  # [2, 8] [4, 6] -> 16 + 12
        ([2, 8, 4, 6], 2, True, 20 / 24),  # [8, 6] [4, 2] -> 16 + 8
        ([3, 3, 3], 2, False, 1.0),
        ([], 8, True, 1.0),
    ],
)
def test_padding_efficiency_by_hand(lengths: list[int], batch_size: int, sort: bool, expected: float) -> None:
    assert padding_efficiency(lengths, batch_size, sort) == pytest.approx(expected)


def test_make_batches_longest_first_and_stable() -> None:
    assert make_batches([2, 8, 4, 8, 1], 2, True) == [[1, 3], [2, 0], [4]]
    assert make_batches([2, 8, 4, 8, 1], 2, False) == [[0, 1], [2, 3], [4]]
    with pytest.raises(RsftError):
        make_batches([1], 0, True)


def test_token_budget_batches_by_hand() -> None:
    lengths = [10, 9, 3, 3, 3, 3, 1]
    # sorted: 10 alone (10 + 9 would pad to 20 > 19), then 9 with one 3 (18), then four 3s (cap 4 rows)
    assert make_batches(lengths, 4, True, max_batch_tokens=19) == [[0], [1, 2], [3, 4, 5, 6]]
    assert make_batches(lengths, 4, True) == [[0, 1, 2, 3], [4, 5, 6]]
    assert make_batches([50, 2, 2], 8, True, max_batch_tokens=10) == [[0], [1, 2]]  # too long: alone
    assert make_batches([2, 8, 2, 8], 4, False, max_batch_tokens=16) == [[0, 1], [2, 3]]  # width grows
    assert padding_efficiency(lengths, 4, True, max_batch_tokens=19) == pytest.approx(32 / (10 + 18 + 12))
    with pytest.raises(RsftError, match="max_batch_tokens"):
        make_batches([1], 4, True, max_batch_tokens=0)


def test_token_budget_lifts_efficiency_on_a_long_tail() -> None:
    rng = random.Random(1)
    lengths = [20 + min(int(6 * rng.paretovariate(1.1)), 400) for _ in range(512)]
    fixed = padding_efficiency(lengths, 8, True)
    budget = padding_efficiency(lengths, 64, True, max_batch_tokens=512)
    assert budget > 0.9 and budget > fixed
    assert all(
        len(b) == 1 or max(lengths[i] for i in b) * len(b) <= 512
        for b in make_batches(lengths, 64, True, max_batch_tokens=512)
    )


# --- scores --------------------------------------------------------------------------------------


@pytest.mark.parametrize("sort_by_length", [True, False])
def test_batched_scores_equal_one_at_a_time_in_original_order(
    rm: RewardModelScorer, pairs, reference, sort_by_length
) -> None:
    prompts, completions = pairs
    rm.sort_by_length = sort_by_length
    try:
        batched = rm.score(prompts, completions, [{}] * len(prompts))
        assert rm.last_stats["batches"] == 6 and rm.last_stats["n_pairs"] == 24
    finally:
        rm.sort_by_length = True
    np.testing.assert_allclose(batched, reference, atol=1e-4)
    assert len(set(np.round(reference, 6))) > 12  # the scores differ per pair: the order check has teeth


@pytest.mark.parametrize("sort_by_length", [True, False])
def test_token_budget_scores_equal_one_at_a_time(rm: RewardModelScorer, pairs, reference, sort_by_length) -> None:
    prompts, completions = pairs
    lengths = [len(x) for x in rm.encode(prompts, completions)]
    budget = 2 * max(lengths)  # long pairs go two at a time, short ones up to batch_size
    rm.sort_by_length, rm.max_batch_tokens, rm.batch_size = sort_by_length, budget, 8
    try:
        batched = rm.score(prompts, completions, [{}] * len(prompts))
        stats = dict(rm.last_stats)
    finally:
        rm.sort_by_length, rm.max_batch_tokens, rm.batch_size = True, None, 4
    np.testing.assert_allclose(batched, reference, atol=1e-4)
    assert stats["batches"] == len(make_batches(lengths, 8, sort_by_length, budget))
    assert stats["efficiency"] == pytest.approx(padding_efficiency(lengths, 8, sort_by_length, budget))
    assert stats["max_batch_tokens"] == budget and stats["real_tokens"] == sum(lengths)


def test_sorting_raises_padding_efficiency(rm: RewardModelScorer, pairs) -> None:
    prompts, completions = pairs
    lengths = [len(x) for x in rm.encode(prompts, completions)]
    stats = {}
    for sort in (False, True):
        rm.sort_by_length = sort
        rm.score(prompts, completions, [{}] * len(prompts))
        stats[sort] = dict(rm.last_stats)
        assert rm.last_efficiency == pytest.approx(padding_efficiency(lengths, 4, sort))
        assert stats[sort]["real_tokens"] == sum(lengths)
    rm.sort_by_length = True
    assert stats[True]["efficiency"] > stats[False]["efficiency"]
    assert stats[True]["padded_tokens"] < stats[False]["padded_tokens"]


def test_chat_template_is_the_rms_own(rm: RewardModelScorer) -> None:
    ids = rm.encode([[{"role": "user", "content": "hi"}], "hi"], ["yo", "yo"])
    expected = rm.tokenizer("<|user|>hi\n<|assistant|>yo\n", add_special_tokens=False)["input_ids"]
    assert ids == [expected, expected]


def test_max_length_keeps_the_end(tiny_rm: Path, rm: RewardModelScorer) -> None:
    short = RewardModelScorer(tiny_rm, max_length=5)
    full = rm.encode(["What is 2 + 3?"], ["the answer is 5"])[0]
    assert len(full) > 5
    assert short.encode(["What is 2 + 3?"], ["the answer is 5"])[0] == full[-5:]


def test_no_chat_template_no_pad_token(tiny_rm: Path, tmp_path: Path) -> None:
    """An RM without chat template, pad token or config pad id: plain concatenation, pad = eos."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(tiny_rm)
    model.config.pad_token_id = None
    model.save_pretrained(tmp_path)
    tok = AutoTokenizer.from_pretrained(tiny_rm)
    tok.chat_template = None
    tok.pad_token = None
    tok.save_pretrained(tmp_path)

    scorer = RewardModelScorer(tmp_path, batch_size=3)
    assert scorer.tokenizer.pad_token == scorer.tokenizer.eos_token
    assert scorer.model.config.pad_token_id == scorer.tokenizer.eos_token_id
    prompts, completions = long_tailed_pairs(7, seed=3)
    assert scorer.encode(["Q: 1?"], [" A: 1"]) == [scorer.tokenizer("Q: 1? A: 1")["input_ids"]]
    np.testing.assert_allclose(
        scorer.score(prompts, completions), one_at_a_time(scorer, prompts, completions), atol=1e-4
    )


def test_cuda_oom_halves_the_batch_size(rm: RewardModelScorer, pairs, reference, monkeypatch) -> None:
    prompts, completions = pairs
    real_forward = rm.model.forward
    sizes: list[int] = []

    def forward_fitting_two(input_ids=None, **kw):
        sizes.append(input_ids.shape[0])
        if input_ids.shape[0] > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_forward(input_ids=input_ids, **kw)

    monkeypatch.setattr(rm.model, "forward", forward_fitting_two)
    got = rm.score(prompts, completions)
    np.testing.assert_allclose(got, reference, atol=1e-4)
    assert sizes[:3] == [4, 2, 2] and set(sizes[3:]) == {2}
    assert rm.last_stats["batch_size"] == 2 and rm.last_stats["batches"] == 12
    assert rm.batch_size == 4  # the next call tries the configured size again

    def forward_never_fits(input_ids=None, **kw):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(rm.model, "forward", forward_never_fits)
    with pytest.raises(RsftError, match="out of memory at batch size 1"):
        rm.score(prompts, completions)


def test_cuda_oom_with_a_token_budget_halves_the_budget(rm: RewardModelScorer, pairs, reference, monkeypatch) -> None:
    prompts, completions = pairs
    lengths = [len(x) for x in rm.encode(prompts, completions)]
    real_forward = rm.model.forward
    limit = max(lengths) + 1  # fits the longest pair alone, nothing larger
    shapes: list[tuple[int, int]] = []

    def forward_with_limit(input_ids=None, **kw):
        shapes.append(tuple(input_ids.shape))
        if input_ids.shape[0] * input_ids.shape[1] > limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_forward(input_ids=input_ids, **kw)

    monkeypatch.setattr(rm.model, "forward", forward_with_limit)
    rm.max_batch_tokens, rm.batch_size = 4 * max(lengths), 8
    try:
        got = rm.score(prompts, completions)
        stats = dict(rm.last_stats)
    finally:
        rm.max_batch_tokens, rm.batch_size = None, 4
    np.testing.assert_allclose(got, reference, atol=1e-4)
    assert stats["max_batch_tokens"] <= limit and stats["batch_size"] == 8  # the budget shrank, not the rows
    assert rm.max_batch_tokens is None  # restored above; the scorer's own setting is untouched by OOM


def test_bad_max_batch_tokens(tiny_rm: Path) -> None:
    for bad in (0, -5, True):
        with pytest.raises(RsftError, match="max_batch_tokens"):
            RewardModelScorer(tiny_rm, max_batch_tokens=bad)
    assert RewardModelScorer(tiny_rm, batch_size=32, max_batch_tokens=256).max_batch_tokens == 256


# --- loading -------------------------------------------------------------------------------------


def test_num_labels_must_be_one(tiny_rm: Path, tmp_path: Path) -> None:
    from transformers import AutoConfig, AutoModelForSequenceClassification

    config = AutoConfig.from_pretrained(tiny_rm)
    config.num_labels = 2
    AutoModelForSequenceClassification.from_config(config).save_pretrained(tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_rm / name, tmp_path / name)
    with pytest.raises(RsftError, match="num_labels=2") as e:
        RewardModelScorer(tmp_path)
    assert "\n" not in str(e.value)


def test_load_errors(tiny_rm: Path, tmp_path: Path) -> None:
    with pytest.raises(RsftError, match="cannot load"):
        RewardModelScorer(tmp_path / "missing")
    with pytest.raises(RsftError, match="dtype"):
        RewardModelScorer(tiny_rm, dtype="float13")
    with pytest.raises(RsftError, match="needs a model path"):
        as_scorer("rm")
    with pytest.raises(RsftError, match="unknown option"):
        as_scorer(f"rm:{tiny_rm}", {"batchsize": 2})


def test_rm_spec_through_as_scorer(tiny_rm: Path, pairs, reference) -> None:
    s = as_scorer("rm:" + str(tiny_rm), {"batch_size": 8, "sort_by_length": False, "dtype": "float32"})
    assert isinstance(s, RewardModelScorer) and s.batch_size == 8 and not s.sort_by_length
    assert s.name == f"rm:{tiny_rm}" and s.device == ("cuda" if torch.cuda.is_available() else "cpu")
    prompts, completions = pairs
    np.testing.assert_allclose(s.score(prompts, completions, [{}] * 24), reference, atol=1e-4)


def test_token_budget_through_the_rm_spec(tiny_rm: Path, pairs, reference) -> None:
    s = as_scorer("rm:" + str(tiny_rm), {"batch_size": 8, "max_batch_tokens": 64, "dtype": "float32"})
    assert isinstance(s, RewardModelScorer) and s.max_batch_tokens == 64
    prompts, completions = pairs
    np.testing.assert_allclose(s.score(prompts, completions, [{}] * 24), reference, atol=1e-4)
    assert as_scorer("rm:" + str(tiny_rm), {"dtype": "float32"}).max_batch_tokens is None
