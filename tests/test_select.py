"""Selection over the reward matrix, checked against slow pure-Python references."""

from __future__ import annotations

import math

import numpy as np
import pytest

import rsft.select
import rsft.select.core
from rsft.errors import RsftError
from rsft.select import (
    STRATEGIES,
    Selection,
    apply_mask,
    as_reward_matrix,
    best_per_prompt,
    dedup_mask,
    dpo_pairs,
    k_per_prompt,
    keep_above,
    nan_count,
    rso_per_prompt,
    select,
    top_k_overall,
)

NAN, INF = float("nan"), float("inf")


# --- pure-Python references: NaN is -inf, ties to the first index, strict comparisons ----------


def _v(x: float) -> float:
    return -INF if math.isnan(x) else float(x)


def ref_best(R: np.ndarray) -> list[int]:
    out = []
    for row in R.tolist():
        best_j, best = 0, _v(row[0])
        for j, x in enumerate(row):
            if _v(x) > best:
                best_j, best = j, _v(x)
        out.append(best_j)
    return out


def ref_top_k(R: np.ndarray, k: int) -> list[int]:
    flat = R.ravel().tolist()
    order = sorted(range(len(flat)), key=lambda f: (-_v(flat[f]), f))
    return order[: max(k, 0)]


def ref_keep_above(R: np.ndarray, t: float) -> list[tuple[int, int]]:
    rows = R.tolist()
    return [(i, j) for i, j in enumerate(ref_best(R)) if _v(rows[i][j]) > -INF and _v(rows[i][j]) >= t]


def ref_k_per_prompt(R: np.ndarray, k: int, t: float | None) -> list[tuple[int, int]]:
    out = []
    for i, row in enumerate(R.tolist()):
        ranked = sorted(range(len(row)), key=lambda j: (-_v(row[j]), j))[: max(k, 0)]
        out += [(i, j) for j in ranked if _v(row[j]) > -INF and (t is None or row[j] >= t)]
    return out


def ref_dpo(R: np.ndarray, min_margin: float) -> list[tuple[int, int, int]]:
    out = []
    for i, row in enumerate(R.tolist()):
        finite = [j for j, x in enumerate(row) if math.isfinite(x)]
        if not finite:
            continue
        hi = lo = finite[0]
        for j in finite:
            if row[j] > row[hi]:
                hi = j
            if row[j] < row[lo]:
                lo = j
        margin = row[hi] - row[lo]
        if margin > 0 and margin >= min_margin:
            out.append((i, hi, lo))
    return out


# --- random matrices with the awkward cases ---------------------------------------------------


def random_matrix(rng: np.random.Generator) -> np.ndarray:
    M = int(rng.choice([1, 2, 3, 7, 20]))
    N = int(rng.choice([1, 2, 4, 8, 13]))
    kind = rng.integers(4)
    if kind == 0:
        R = rng.standard_normal((M, N))
    elif kind == 1:
        R = rng.integers(0, 3, (M, N)).astype(np.float64)  # many ties
    elif kind == 2:
        R = rng.integers(-2, 3, (M, N))  # an integer dtype, no NaN possible
        return R
    else:
        R = rng.integers(0, 2, (M, N)).astype(np.float32)
    R[rng.random((M, N)) < 0.15] = NAN
    R[rng.random((M, N)) < 0.05] = -INF
    if M > 2:
        R[rng.integers(M)] = NAN  # an all-NaN row
        R[rng.integers(M)] = 1.0  # an all-tie row
    return R


MATRICES = [random_matrix(np.random.default_rng(seed)) for seed in range(200)]
FIXED = [
    np.array([[5.0]]),
    np.array([[NAN]]),
    np.array([[NAN], [1.0], [-INF], [2.0]]),  # M x 1
    np.array([[NAN, NAN, NAN], [-INF, NAN, -INF], [3.0, 3.0, 3.0]]),
    np.array([[NAN, 2.0, 2.0, NAN], [-INF, -INF, 0.0, 0.0]]),
    np.array([[INF, 1.0, INF], [0.0, -1.0, -1.0]]),
]
ALL = FIXED + MATRICES


@pytest.mark.parametrize("R", ALL)
def test_best_per_prompt_matches_reference(R):
    got = best_per_prompt(R)
    assert got.shape == (R.shape[0],)
    assert got.tolist() == ref_best(R)


@pytest.mark.parametrize("R", ALL)
def test_top_k_overall_matches_reference(R):
    n = R.size
    for k in {0, -3, 1, 2, n // 2, n - 1, n, n + 5, 10 * n}:
        got = top_k_overall(R, k)
        assert got.dtype == np.intp
        assert got.tolist() == ref_top_k(R, k), k


@pytest.mark.parametrize("R", ALL)
def test_keep_above_matches_reference(R):
    for t in (-INF, -1.0, 0.0, 0.5, 1.0, 2.0):
        assert keep_above(R, t) == ref_keep_above(R, t), t


@pytest.mark.parametrize("R", ALL)
def test_k_per_prompt_matches_reference(R):
    for k in (0, 1, 2, 3, R.shape[1], R.shape[1] + 2):
        for t in (None, 0.0, 1.0):
            assert k_per_prompt(R, k, threshold=t) == ref_k_per_prompt(R, k, t), (k, t)


@pytest.mark.parametrize("R", ALL)
def test_dpo_pairs_match_reference(R):
    for m in (-1.0, 0.0, 0.5, 1.0, 2.0):
        assert dpo_pairs(R, min_margin=m) == ref_dpo(R, m), m


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("block", [1, 7, 64])
def test_many_row_blocks_give_the_same_answers(seed, block, monkeypatch):
    monkeypatch.setattr(rsft.select.core, "_BLOCK_ELEMS", block)
    rng = np.random.default_rng(1000 + seed)
    R = rng.integers(0, 4, (150, 8)).astype(np.float32)
    R[rng.random(R.shape) < 0.1] = NAN
    R[rng.integers(150, size=5)] = NAN
    for k in (1, 3, 20, 75, 76, 300, 1200):  # both the streaming (16k <= n) and the partition path
        assert top_k_overall(R, k).tolist() == ref_top_k(R, k), k
    assert best_per_prompt(R).tolist() == ref_best(R)
    assert keep_above(R, 2.0) == ref_keep_above(R, 2.0)
    assert k_per_prompt(R, 3, threshold=1.0) == ref_k_per_prompt(R, 3, 1.0)
    assert dpo_pairs(R, 2.0) == ref_dpo(R, 2.0)
    assert nan_count(R) == int(np.isnan(R).sum())


@pytest.mark.parametrize("R", ALL[:60])
def test_nan_count(R):
    assert nan_count(R) == sum(math.isnan(x) for x in R.ravel().tolist())


def test_ties_go_to_first_index():
    R = np.array([[1.0, 3.0, 3.0], [3.0, 1.0, 3.0]])
    assert best_per_prompt(R).tolist() == [1, 0]
    assert top_k_overall(R, 4).tolist() == [1, 2, 3, 5]
    assert k_per_prompt(R, 2) == [(0, 1), (0, 2), (1, 0), (1, 2)]


def test_all_nan_row_is_returned_but_never_kept():
    R = np.array([[NAN, NAN], [NAN, 1.0]])
    assert best_per_prompt(R).tolist() == [0, 1]
    assert keep_above(R, -INF) == [(1, 1)]
    assert k_per_prompt(R, 2) == [(1, 1)]


def test_nan_ranks_with_minus_inf_in_top_k():
    R = np.array([[NAN, -INF, 0.0]])
    assert top_k_overall(R, 3).tolist() == [2, 0, 1]  # NaN == -inf: tie, lower index first


def test_unsigned_and_bool_matrices():
    U = np.array([[0, 255, 7], [255, 0, 0]], dtype=np.uint8)
    assert top_k_overall(U, 6).tolist() == [1, 3, 2, 0, 4, 5]
    assert dpo_pairs(U) == [(0, 1, 0), (1, 0, 1)]
    B = np.array([[False, True], [True, True]])
    assert best_per_prompt(B).tolist() == [1, 0]
    assert top_k_overall(B, 2).tolist() == [1, 2]


def test_top_k_overall_on_a_large_matrix():
    n = 1_000_000 * 64
    h = np.arange(n, dtype=np.uint32)
    h *= np.uint32(2654435761)  # a multiplicative hash: scrambled, fast to build, deterministic
    h %= np.uint32(4001)
    R = h.astype(np.float32).reshape(1_000_000, 64)
    del h
    R /= 100  # 4001 distinct values, ~16,000 copies of each: ties at every value, the k-th too
    rng = np.random.default_rng(0)
    R[rng.integers(0, 1_000_000, 5000), rng.integers(0, 64, 5000)] = NAN
    k = 100_000
    got = top_k_overall(R, k)
    assert got.shape == (k,) and len(np.unique(got)) == k
    flat = R.ravel()
    vals = flat[got]
    assert not np.isnan(vals).any()
    assert (np.diff(vals) <= 0).all()
    same = np.diff(vals) == 0
    assert (np.diff(got)[same] > 0).all()  # ties in index order
    v = vals[-1]
    assert np.count_nonzero(flat > v) == np.count_nonzero(vals > v)  # everything above v taken
    assert got[vals == v].tolist() == np.flatnonzero(flat == v)[: np.count_nonzero(vals == v)].tolist()
    # a sample of rows, against the pure-Python reference
    sub = R[123_456 : 123_456 + 1500]
    assert top_k_overall(sub, 2000).tolist() == ref_top_k(sub, 2000)


def test_non_contiguous_input():
    R = np.random.default_rng(1).integers(0, 4, (9, 12)).astype(np.float64)[:, ::2].T
    assert top_k_overall(R, 20).tolist() == ref_top_k(R, 20)
    assert best_per_prompt(R).tolist() == ref_best(R)


def test_dpo_margin():
    R = np.array([[0.1, 0.9, 0.5], [0.4, 0.4, 0.4], [NAN, 0.2, 0.8], [0.3, NAN, NAN], [1.0, 0.0, 1.0]])
    assert dpo_pairs(R) == [(0, 1, 0), (2, 2, 1), (4, 0, 1)]
    assert dpo_pairs(R, min_margin=0.7) == [(0, 1, 0), (4, 0, 1)]
    assert dpo_pairs(R, min_margin=0.8) == [(0, 1, 0), (4, 0, 1)]  # margin == min_margin is kept
    assert dpo_pairs(R, min_margin=0.85) == [(4, 0, 1)]
    assert dpo_pairs(R, min_margin=1.5) == []
    assert dpo_pairs(np.array([[NAN, -INF, 2.0, INF, 1.0]])) == [(0, 2, 4)]  # finite entries only


def test_dedup_mask_and_apply_mask():
    texts = [["a", "b", "a", "c"], ["x", "x", "x", "x"], ["p", "q", "q", "p"]]
    mask = dedup_mask(texts)
    assert mask.tolist() == [
        [True, True, False, True],
        [True, False, False, False],
        [True, True, False, False],
    ]
    R = np.array([[1, 2, 9, 0], [5, 7, 8, 9], [3, 1, 4, 6]])
    D = apply_mask(R, mask)
    assert D.dtype == np.float64 and R.dtype.kind == "i"  # a float copy, R untouched
    assert D.tolist() == [[1, 2, -INF, 0], [5, -INF, -INF, -INF], [3, 1, -INF, -INF]]
    assert k_per_prompt(D, 3) == [(0, 1), (0, 0), (0, 3), (1, 0), (2, 0), (2, 1)]
    assert dedup_mask([]).shape == (0, 0)


def test_dedup_mask_rejects_bad_texts():
    with pytest.raises(RsftError, match=r"texts\[1\]"):
        dedup_mask([["a", "b"], ["a"]])
    with pytest.raises(RsftError, match="string"):
        dedup_mask([["a", None]])
    with pytest.raises(RsftError, match="shape"):
        apply_mask(np.zeros((2, 2)), np.ones((2, 3), dtype=bool))


def test_select_strategies():
    R = np.array([[0.2, 0.9, 0.9], [NAN, NAN, NAN], [0.7, 0.1, 0.8], [0.3, 0.4, 0.1]])
    s = select(R, "best")
    assert s == Selection([(0, 1), (2, 2), (3, 1)], "best", 3, 1)
    assert select(R, "threshold", threshold=0.5).pairs == [(0, 1), (2, 2)]
    assert select(R, "threshold", threshold=0.5).n_rows_without_pick == 2
    assert select(R, "top_k", k=4).pairs == [(0, 1), (0, 2), (2, 2), (2, 0)]
    assert len(select(R, "top_k", k=100).pairs) == 9  # NaN entries dropped
    assert select(R, "top_k", k=4, threshold=0.75).pairs == [(0, 1), (0, 2), (2, 2)]
    assert select(R, "k_per_prompt", k=2).pairs == [(0, 1), (0, 2), (2, 2), (2, 0), (3, 1), (3, 0)]
    assert select(R, "k_per_prompt", k=2, threshold=0.35).pairs == [(0, 1), (0, 2), (2, 2), (2, 0), (3, 1)]
    assert set(STRATEGIES) == {"best", "top_k", "threshold", "k_per_prompt", "rso"}


def test_select_with_dedup():
    R = np.array([[0.9, 0.9, 0.1], [0.5, 0.6, 0.6]])
    texts = [["same", "same", "other"], ["a", "b", "b"]]
    assert select(R, "k_per_prompt", k=2).pairs == [(0, 0), (0, 1), (1, 1), (1, 2)]
    assert select(R, "k_per_prompt", k=2, texts=texts, dedup=True).pairs == [(0, 0), (0, 2), (1, 1), (1, 0)]
    assert select(R, "top_k", k=10, texts=texts, dedup=True).pairs == [(0, 0), (1, 1), (1, 0), (0, 2)]
    with pytest.raises(RsftError, match="texts"):
        select(R, "best", dedup=True)


def test_select_errors_are_one_line():
    R = np.zeros((2, 3))
    cases = [
        (lambda: select(R, "argmax"), "unknown selection strategy 'argmax'; valid: best, top_k"),
        (lambda: select(R, "top_k"), "needs k"),
        (lambda: select(R, "k_per_prompt"), "needs k"),
        (lambda: select(R, "top_k", k=0), "positive integer"),
        (lambda: select(R, "threshold"), "needs a threshold"),
        (lambda: select(R, "threshold", threshold=NAN), "threshold must be a number"),
        (lambda: select(np.zeros(3), "best"), "must be 2-D"),
        (lambda: best_per_prompt(np.zeros((2, 2, 2))), "must be 2-D"),
        (lambda: top_k_overall(np.zeros((3, 0)), 1), "no samples"),
        (lambda: as_reward_matrix([[1.0, 2.0], [3.0]]), "not numeric"),
        (lambda: as_reward_matrix([["a"]]), "real numbers"),
        (lambda: dpo_pairs(R, min_margin="x"), "min_margin"),
    ]
    for call, message in cases:
        with pytest.raises(RsftError) as err:
            call()
        assert message in str(err.value)
        assert "\n" not in str(err.value)


def test_none_in_lists_is_nan():
    R = as_reward_matrix([[1.0, None], [None, None]])
    assert nan_count(R) == 3
    assert keep_above(R, 0.0) == [(0, 0)]


def test_empty_matrix():
    R = np.zeros((0, 4))
    assert best_per_prompt(R).shape == (0,)
    assert top_k_overall(R, 5).size == 0
    assert keep_above(R, 0.0) == [] and k_per_prompt(R, 2) == [] and dpo_pairs(R) == []
    assert select(R, "top_k", k=3) == Selection([], "top_k", 0, 0)


# --- RSO: statistical rejection sampling ---------------------------------------------------------

CHI2_999 = {3: 16.27, 5: 20.52}
"""Chi-square critical values at p = 0.001 by degrees of freedom (no scipy here)."""


def chi_square(counts: np.ndarray, expected: np.ndarray) -> float:
    return float(((counts - expected) ** 2 / expected).sum())


def test_rso_accepts_pi_times_exp_r_over_beta_on_a_finite_support():
    """Samples y ~ pi from a 4-point support; the accepted y follow pi(y) exp(r(y)/beta), normalised."""
    pi = np.array([0.4, 0.3, 0.2, 0.1])
    r = np.array([0.0, 0.5, 1.0, 2.0])
    beta, M, N = 0.5, 4000, 256
    y = np.random.default_rng(1).choice(4, size=(M, N), p=pi)
    R = r[y]
    pairs = rso_per_prompt(R, k=1, beta=beta, seed=7)
    assert [i for i, _ in pairs] == list(range(M))  # one per prompt
    accepted = np.bincount([y[i, j] for i, j in pairs], minlength=4)

    # exact given R: the first acceptance picks column j with probability exp(R_ij/beta) / sum_j
    w = np.exp(R / beta)
    w /= w.sum(axis=1, keepdims=True)
    expected = np.array([w[y == v].sum() for v in range(4)])
    assert chi_square(accepted, expected) < CHI2_999[3]

    # the population target, up to the O(1/N) bias of normalising by the sample's own sum
    target = pi * np.exp(r / beta)
    target /= target.sum()
    assert 0.5 * np.abs(accepted / M - target).sum() < 0.02
    assert 0.5 * np.abs(accepted / M - pi).sum() > 0.5  # far from the policy itself: selection happened


def test_rso_later_picks_are_sequential_draws_without_replacement():
    """k=2: (first, second) follow exp(r/beta) over the pool, then over what remains (max recomputed)."""
    reps, beta = 20000, 1.0
    R = np.tile([0.0, 1.0, 2.0], (reps, 1))
    pairs = rso_per_prompt(R, k=2, beta=beta, seed=3)
    assert len(pairs) == 2 * reps
    firsts, seconds = [j for _, j in pairs[::2]], [j for _, j in pairs[1::2]]
    w = np.exp(np.array([0.0, 1.0, 2.0]) / beta)
    orders = [(a, b) for a in range(3) for b in range(3) if a != b]
    expected = np.array([w[a] / w.sum() * w[b] / (w.sum() - w[a]) for a, b in orders]) * reps
    counts = np.array([sum(1 for f, s2 in zip(firsts, seconds, strict=True) if (f, s2) == o) for o in orders])
    assert chi_square(counts, expected) < CHI2_999[5]


def test_rso_is_deterministic_under_a_seed():
    R = np.random.default_rng(0).normal(size=(50, 8))
    a = select(R, "rso", k=3, beta=0.5, seed=11)
    assert a == select(R, "rso", k=3, beta=0.5, seed=11) and len(a.pairs) == 150
    assert a.pairs != select(R, "rso", k=3, beta=0.5, seed=12).pairs
    assert rso_per_prompt(R, 3, 0.5, 11) == a.pairs  # select adds nothing to the draws
    # each row's picks are distinct columns
    assert all(len({j for i, j in a.pairs if i == row}) == 3 for row in range(50))


def test_rso_never_accepts_nan_or_minus_inf():
    R = np.array([[NAN, 0.1, -INF, 5.0, NAN], [NAN, NAN, NAN, NAN, NAN], [-INF, 1.0, NAN, -3.0, 2.0]])
    for seed in range(20):
        pairs = rso_per_prompt(R, k=5, beta=0.3, seed=seed)
        assert sorted(pairs) == [(0, 1), (0, 3), (2, 1), (2, 3), (2, 4)]  # every finite entry, no other
    s = select(R, "rso", beta=0.3)
    assert len(s.pairs) == 2 and s.nan_count == 8 and s.n_rows_without_pick == 1


def test_rso_limits_and_edge_cases():
    R = np.array([[0.0, 10.0, 0.5], [1.0, 1.0, 1.0]])
    assert rso_per_prompt(R, k=1, beta=1e-3, seed=0)[0] == (0, 1)  # tiny beta: the best
    assert [p[0] for p in rso_per_prompt(R, k=0)] == []
    assert len(rso_per_prompt(R, k=10, seed=0)) == 6  # k above N: every candidate
    assert select(R, "rso", beta=1.0).pairs[0][0] == 0 and len(select(R, "rso", beta=1.0).pairs) == 2
    assert rso_per_prompt(R, k=3, beta=1.0, threshold=0.4, seed=0)[:2] in ([(0, 1), (0, 2)], [(0, 2), (0, 1)])
    assert rso_per_prompt(np.zeros((0, 3)), k=2) == []
    assert rso_per_prompt(np.array([[True, False]]), k=1, beta=0.01) == [(0, 0)]  # booleans and ints
    assert rso_per_prompt(np.array([[3, 7]], dtype=np.uint8), k=1, beta=0.01) == [(0, 1)]
    assert rso_per_prompt(np.array([[1.0, INF, 2.0]]), k=1) == [(0, 1)]  # +inf outranks everything
    # a large beta approaches uniform draws among the row's samples
    cols = np.bincount([j for _, j in rso_per_prompt(np.tile([0.0, 1.0, 2.0, 3.0], (8000, 1)), beta=1e6)])
    assert np.abs(cols / 8000 - 0.25).max() < 0.02
    texts = [["a", "a", "b"], ["x", "y", "z"]]
    assert (0, 1) not in select(np.ones((2, 3)), "rso", k=3, beta=1.0, texts=texts, dedup=True).pairs


def test_rso_errors_are_one_line():
    R = np.zeros((2, 3))
    cases = [
        (lambda: select(R, "rso"), "selection strategy 'rso' needs beta"),
        (lambda: select(R, "rso", beta=0.0), "beta must be a positive finite number"),
        (lambda: select(R, "rso", beta=-1.0), "beta must be a positive finite number"),
        (lambda: select(R, "rso", beta=INF), "beta must be a positive finite number"),
        (lambda: select(R, "rso", beta=NAN), "beta must be a number"),
        (lambda: select(R, "rso", beta="x"), "beta must be a number"),
        (lambda: select(R, "rso", beta=1.0, k=0), "k must be a positive integer"),
        (lambda: select(R, "rso", beta=1.0, seed=1.5), "seed must be an integer"),
    ]
    for call, message in cases:
        with pytest.raises(RsftError) as err:
            call()
        assert message in str(err.value) and "\n" not in str(err.value)


def test_rso_in_the_config_and_the_select_flags():
    from rsft.cli import build_parser
    from rsft.cli.options import config_from
    from rsft.config import SelectionConfig, field_docs, from_dict

    args = build_parser().parse_args(["select", "round", "--strategy", "rso", "--beta", "0.25", "-k", "2"])
    sel = config_from(args).selection
    assert (sel.strategy, sel.beta, sel.k, sel.seed) == ("rso", 0.25, 2, 0)
    assert config_from(build_parser().parse_args(["select", "round"])).selection.beta == 0.5
    sel = from_dict(SelectionConfig, {"strategy": "rso", "beta": 1, "seed": 3}, "config.yaml: selection")
    assert (sel.beta, sel.seed) == (1.0, 3) and isinstance(sel.beta, float)
    with pytest.raises(RsftError, match="seed: expected int"):
        from_dict(SelectionConfig, {"seed": 0.5}, "config.yaml: selection")
    assert "exp(r(y) / beta)" in field_docs(SelectionConfig)["beta"]
    help_text = " ".join(build_parser()._subparsers._group_actions[0].choices["select"].format_help().split())
    assert "rso: statistical rejection sampling at beta" in help_text  # the help line of the registry


class _ListGenerator:
    name = "list"

    def generate(self, prompts, n, sampling):
        from rsft.types import Completion

        return [[Completion(f"{p} {j}", 1, "stop") for j in range(n)] for p in prompts]


def test_rso_through_the_select_stage(tmp_path):
    from rsft import stages
    from rsft.config import GenerationConfig, ScoringConfig, SelectionConfig
    from rsft.score import as_scorer
    from rsft.types import Prompt

    prompts = [Prompt(f"p{i}", f"prompt {i}", {}) for i in range(6)]
    stages.generate(tmp_path, GenerationConfig(n=4), _ListGenerator, prompts=prompts)
    stages.score(tmp_path, ScoringConfig(), as_scorer(lambda p, c: float(c[-1])))
    counts = stages.select_completions(tmp_path, SelectionConfig(strategy="rso", k=2, beta=0.5, seed=1))
    assert counts["selected"] == 12 and counts["prompts_with_pick"] == 6
