"""Best-of-N statistics against exact references: closed forms, brute force over subsets, Monte Carlo."""

from __future__ import annotations

import argparse
import itertools
import json
import math
import struct

import numpy as np
import pytest

from rsft import artifacts, matrix
from rsft.bon import stats as bon_stats
from rsft.bon.stats import (
    bon_curve,
    bon_distribution,
    bon_kl_bound,
    expected_best_of_n,
    format_bon_curve,
    kl,
    pass_at_k,
)
from rsft.cli import stats as stats_cli
from rsft.errors import RsftError
from rsft.types import Prompt

NAN, INF = float("nan"), float("inf")

# --- exact distribution and KL -------------------------------------------------------------------

GRID = 10_000
TIES_P = np.array([0.1, 0.2, 0.05, 0.15, 0.3, 0.2])
TIES_R = np.array([1.0, 0.0, 1.0, 2.0, 0.0, 1.0])  # levels 0 (mass .5), 1 (.35), 2 (.15)


def test_kl_bound_values():
    assert bon_kl_bound(1) == 0.0
    assert bon_kl_bound(2) == pytest.approx(math.log(2) - 0.5)
    assert bon_kl_bound(16) == pytest.approx(math.log(16) - 15 / 16)


@pytest.mark.parametrize("n", [2, 4, 8, 16])
def test_continuous_rewards_reach_the_bound_from_below(n):
    p = np.full(GRID, 1 / GRID)
    q = bon_distribution(p, np.arange(GRID, dtype=float), n)
    assert q.sum() == pytest.approx(1.0, abs=1e-9)
    # on distinct rewards q_i = (i/G)^n - ((i-1)/G)^n
    i = np.arange(1, GRID + 1)
    np.testing.assert_allclose(q, (i / GRID) ** n - ((i - 1) / GRID) ** n, rtol=1e-9, atol=1e-15)
    gap = bon_kl_bound(n) - kl(q, p)
    assert 0 <= gap < 5e-3


def test_order_of_the_support_does_not_matter():
    rng = np.random.default_rng(3)
    perm = rng.permutation(len(TIES_P))
    q = bon_distribution(TIES_P, TIES_R, 5)
    np.testing.assert_allclose(bon_distribution(TIES_P[perm], TIES_R[perm], 5), q[perm], atol=1e-15)


def test_ties_by_hand_and_strictly_below_the_bound():
    n = 3
    q = bon_distribution(TIES_P, TIES_R, n)
    level = {0.0: 0.5**3, 1.0: 0.85**3 - 0.5**3, 2.0: 1 - 0.85**3}
    mass = {0.0: 0.5, 1.0: 0.35, 2.0: 0.15}
    expected = [TIES_P[i] * level[r] / mass[r] for i, r in enumerate(TIES_R)]
    np.testing.assert_allclose(q, expected, atol=1e-15)
    for n in (2, 3, 8, 32):
        assert kl(bon_distribution(TIES_P, TIES_R, n), TIES_P) < bon_kl_bound(n) - 1e-3


@pytest.mark.parametrize("p,r", [(TIES_P, TIES_R), (np.full(50, 0.02), np.arange(50.0))])
def test_n1_is_the_base_and_kl_grows_with_n(p, r):
    np.testing.assert_allclose(bon_distribution(p, r, 1), p, atol=1e-15)
    assert kl(bon_distribution(p, r, 1), p) == pytest.approx(0.0, abs=1e-15)
    kls = [kl(bon_distribution(p, r, n), p) for n in range(1, 40)]
    assert all(b >= a for a, b in itertools.pairwise(kls))
    assert all(k <= bon_kl_bound(n) + 1e-12 for n, k in enumerate(kls, start=1))


def test_distribution_matches_monte_carlo():
    p = np.array([0.1, 0.2, 0.05, 0.15, 0.3, 0.0, 0.2])
    r = np.array([1.0, 0.0, 1.0, 2.0, 0.0, 5.0, 1.0])  # a zero-probability top outcome, ties
    n, draws = 3, 200_000
    rng = np.random.default_rng(7)
    idx = rng.choice(len(p), size=(draws, n), p=p)
    chosen = idx[np.arange(draws), np.argmax(r[idx], axis=1)]  # ties: the first draw
    freq = np.bincount(chosen, minlength=len(p)) / draws
    q = bon_distribution(p, r, n)
    assert q.sum() == pytest.approx(1.0, abs=1e-12) and q[5] == 0.0
    np.testing.assert_allclose(freq, q, atol=5e-3)


def test_kl_edge_cases():
    assert kl([0.5, 0.5], [0.5, 0.5]) == 0.0
    assert kl([1.0, 0.0], [0.5, 0.5]) == pytest.approx(math.log(2))
    assert kl([0.5, 0.5], [1.0, 0.0]) == INF


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: bon_kl_bound(0), "positive integer"),
        (lambda: bon_kl_bound(2.0), "positive integer"),
        (lambda: bon_kl_bound(True), "positive integer"),
        (lambda: bon_distribution([0.5, 0.6], [0, 1], 2), "sum to 1"),
        (lambda: bon_distribution([1.5, -0.5], [0, 1], 2), "non-negative"),
        (lambda: bon_distribution([0.5, 0.5], [0, 1, 2], 2), "shape"),
        (lambda: bon_distribution([0.5, 0.5], [0, NAN], 2), "finite rewards"),
        (lambda: bon_distribution([[0.5, 0.5]], [[0, 1]], 2), "1-D"),
        (lambda: bon_distribution([0.5, 0.5], [0, 1], 0), "positive integer"),
        (lambda: kl([0.5, 0.5], [1.0]), "shape"),
        (lambda: kl([0.5, 0.5], [0.5, NAN]), "finite"),
    ],
)
def test_distribution_input_validation(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# --- estimates from an M x N round ---------------------------------------------------------------

ROWS = np.array(
    [
        [0.3, 1.0, -2.0, 0.5, 0.5, 4.0, 0.0, 1.0],
        [1.0, 1.0, 1.0, 0.0, 0.0, 1.0, 0.0, 1.0],  # 0/1 with ties
        [2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0],  # all tied
        [NAN, 0.7, NAN, 0.2, 0.9, -1.0, 0.9, 0.1],  # failed scorings
        [NAN, NAN, NAN, NAN, NAN, NAN, NAN, NAN],  # all failed
    ]
)


def brute_best(R: np.ndarray, n: int) -> float:
    """Mean over prompts of the mean over all n-subsets of the subset's best, failures worst."""
    floor = np.nanmin(R)
    out = []
    for row in R:
        bests = []
        for subset in itertools.combinations(row, n):
            best = max(-INF if np.isnan(x) else x for x in subset)
            bests.append(floor if best == -INF else best)
        out.append(np.mean(bests))
    return float(np.mean(out))


def brute_pass(R: np.ndarray, k: int, t: float) -> float:
    return float(np.mean([np.mean([any(x >= t for x in s) for s in itertools.combinations(row, k)]) for row in R]))


@pytest.mark.parametrize("N", [1, 2, 5, 8])
def test_expected_best_and_pass_match_brute_force(N):
    R = ROWS[:, :N]
    for n in range(1, N + 1):
        assert expected_best_of_n(R, n) == pytest.approx(brute_best(R, n), rel=1e-12, abs=1e-12)
        for t in (0.5, 1.0, -5.0):
            assert pass_at_k(R, n, threshold=t) == pytest.approx(brute_pass(R, n, t), abs=1e-12)


def test_ends_of_the_curve_are_mean_and_max():
    rng = np.random.default_rng(0)
    R = rng.normal(size=(20, 13))
    assert expected_best_of_n(R, 1) == pytest.approx(R.mean())
    assert expected_best_of_n(R, 13) == pytest.approx(R.max(axis=1).mean())
    assert pass_at_k(R, 13, threshold=1.0) == pytest.approx(np.mean((R >= 1.0).any(axis=1)))
    assert pass_at_k(R, 1, threshold=1.0) == pytest.approx(np.mean(R >= 1.0))


def test_large_n_is_stable():
    N = 3000
    R = np.arange(N, dtype=float)[None, :]  # E[max of an n-subset of 1..N] = n (N+1) / (n+1)
    for n in (1, 2, 700, 1500, 2999, 3000):
        assert expected_best_of_n(R, n) == pytest.approx(n * (N + 1) / (n + 1) - 1, rel=1e-10)
    R = (np.arange(N) >= N - 40)[None, :].astype(float)  # 40 passes
    for k in (1, 10, 100, 1000, 2960):
        log_miss = (math.lgamma(N - 40 + 1) - math.lgamma(N - 40 - k + 1)) - (math.lgamma(N + 1) - math.lgamma(N - k + 1))
        assert pass_at_k(R, k) == pytest.approx(1 - math.exp(log_miss), rel=1e-9)
    assert pass_at_k(R, 2961) == 1.0 and pass_at_k(R, 3000) == 1.0


def test_curve_rows_and_kl_estimate():
    rows = bon_curve(ROWS[:4, :8])
    assert [r["n"] for r in rows] == [1, 2, 4, 8]
    assert [r["n"] for r in bon_curve(np.zeros((2, 6)))] == [1, 2, 4, 6]
    assert [r["n"] for r in bon_curve(np.zeros((2, 6)), ns=[3, 1, 3])] == [1, 3]
    for r in rows:
        n = r["n"]
        assert r["expected_max_reward"] == pytest.approx(expected_best_of_n(ROWS[:4], n))
        assert r["pass_at_n"] == pytest.approx(pass_at_k(ROWS[:4], n))
        assert r["kl_bound"] == bon_kl_bound(n)
    # the estimate is the exact BoN KL over each row's samples taken as equally likely outcomes
    R = np.array([[0.3, 1.0, -2.0, 0.5, 0.5, 4.0, 0.0, 1.0], [1, 1, 1, 0, 0, 1, 0, 1], [2.0] * 8])
    for r in bon_curve(R):
        u = np.full(8, 1 / 8)
        ref = np.mean([kl(bon_distribution(u, row, r["n"]), u) for row in R])
        assert r["kl_estimate"] == pytest.approx(ref, abs=1e-12)
        assert r["kl_estimate"] <= r["kl_bound"]
    assert bon_curve(R)[0]["kl_estimate"] == 0.0


def brute_curve_row(R: np.ndarray, n: int, t: float) -> dict[str, float]:
    """``bon_curve``'s numbers for one n by enumeration: every n-subset for E[max] and pass@n, every
    ordered n-tuple of draws (the first best one picked) for the KL. NaN and -inf count as the
    lowest finite reward of R."""
    finite = R[np.isfinite(R)]
    F = np.where(np.isnan(R) | (R == -INF), finite.min(), R)
    N = R.shape[1]
    kls = []
    for row in F:
        picks = np.zeros(N)
        for draw in itertools.product(range(N), repeat=n):
            picks[max(draw, key=lambda i: row[i])] += 1  # max keeps the first of equal keys
        q = picks / N**n
        kls.append(sum(x * math.log(x * N) for x in q if x > 0))
    return {"expected_max_reward": brute_best(F, n), "pass_at_n": brute_pass(R, n, t), "kl_estimate": float(np.mean(kls))}


@pytest.mark.parametrize("dense", [True, False])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_curve_matches_brute_force_with_ties_and_nan(dtype, dense, monkeypatch):
    if not dense:  # count tied runs per block (the path for N > 255) on small N
        monkeypatch.setattr(bon_stats, "_DENSE_RUN_CODES", 0)
    rng = np.random.default_rng(7)
    levels = np.array([0.0, 0.5, 1.0, NAN, -INF, -0.25])
    for N in (1, 2, 3, 5):
        for _ in range(4):
            R = np.where(rng.random((4, N)) < 0.5, rng.choice(levels, (4, N)), rng.normal(size=(4, N)))
            R[0, 0] = 0.75  # at least one finite reward
            R = R.astype(dtype)
            for row in bon_curve(R, ns=list(range(1, N + 1)), threshold=0.5):
                ref = brute_curve_row(R.astype(np.float64), row["n"], 0.5)
                for key, value in ref.items():
                    assert row[key] == pytest.approx(value, rel=1e-12, abs=1e-12), (N, row["n"], key, R)


def test_curve_above_n_255_counts_runs_per_block():
    rng = np.random.default_rng(8)
    N = 300
    R = np.round(rng.normal(size=(3, N)), 1)
    R[rng.random(R.shape) < 0.1] = NAN
    F = np.sort(np.where(np.isnan(R), np.nanmin(R), R), axis=1)
    u = np.full(N, 1 / N)
    for row in bon_curve(R, ns=[1, 2, 17, N]):
        n = row["n"]
        weights = np.array([math.comb(i, n - 1) / math.comb(N, n) for i in range(N)])
        assert row["expected_max_reward"] == pytest.approx(float(np.mean(F @ weights)), rel=1e-12)
        ref = np.mean([kl(bon_distribution(u, r, n), u) for r in F])
        assert row["kl_estimate"] == pytest.approx(ref, rel=1e-12, abs=1e-12)


def test_curve_is_json_safe_when_undefined():
    rows = bon_curve(ROWS[4:])  # every scoring failed: no finite reward
    assert rows[0]["expected_max_reward"] is None and rows[0]["pass_at_n"] == 0.0
    assert bon_curve([[1.0, INF]])[0]["expected_max_reward"] is None
    assert bon_curve(np.zeros((0, 4)))[0]["pass_at_n"] is None
    json.dumps(rows + bon_curve(np.zeros((0, 4))), allow_nan=False)
    assert math.isnan(expected_best_of_n(ROWS[4:], 2))


def test_format_table():
    text = format_bon_curve(bon_curve([[0.0, 1.0, 1.0, 0.0]]), threshold=0.5)
    lines = text.splitlines()
    assert lines[0].split() == ["n", "E[max", "reward]", "pass@n", "(r>=0.5)", "KL", "bound", "KL", "est."]
    assert lines[1].split() == ["1", "0.5", "0.5", "0", "0"]
    assert lines[3].split()[:3] == ["4", "1", "1"]
    assert len({len(line) for line in lines}) == 1


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: expected_best_of_n([[1.0, 2.0]], 3), "above N=2"),
        (lambda: expected_best_of_n([[1.0, 2.0]], 0), "positive integer"),
        (lambda: expected_best_of_n([1.0, 2.0], 1), "2-D"),
        (lambda: pass_at_k([[1.0, 2.0]], 3), "above N=2"),
        (lambda: pass_at_k([[1.0, 2.0]], 1, threshold=NAN), "finite number"),
        (lambda: bon_curve([[1.0, 2.0]], ns=[4]), "above N=2"),
        (lambda: bon_curve([["a", "b"]]), "real numbers"),
    ],
)
def test_matrix_input_validation(call, match):
    with pytest.raises(RsftError, match=match):
        call()


# --- rsft stats ----------------------------------------------------------------------------------


def write_round(round_dir, R):
    prompts = [Prompt(f"p{i}", f"question {i}") for i in range(len(R))]
    matrix.write_prompts(round_dir / artifacts.PROMPTS, prompts)
    M, N = len(R), len(R[0])
    artifacts.write_table(
        round_dir / artifacts.REWARDS,
        {
            "prompt_id": [p.prompt_id for p in prompts for _ in range(N)],
            "sample_idx": [j for _ in range(M) for j in range(N)],
            "reward": [x for row in R for x in row],
            "scorer": ["test"] * (M * N),
            "details": [None] * (M * N),
            "failed": [math.isnan(x) for row in R for x in row],
        },
        matrix.REWARDS_SCHEMA,
    )


def stats_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    stats_cli.add_arguments(parser)
    return parser.parse_args(argv)


@pytest.fixture
def run_dir(tmp_path):
    run = tmp_path / "run"
    write_round(run / "round-000", [[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    write_round(run / "round-001", [[1.0, 0.0, NAN, 1.0], [0.0, 0.0, 0.0, 1.0]])
    (run / "round-002").mkdir()  # generated, not scored yet
    return run


def test_stats_table_for_the_latest_scored_round(run_dir, capsys):
    stats_cli.main(stats_args(str(run_dir)))
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == f"{run_dir / 'round-001'}: 2 prompts x 4 samples, 1 NaN"
    # n=1: E = mean of [1,0,0,1] and [0,0,0,1] (the NaN counts as the lowest reward, 0) = 0.375;
    # pass@1 = (2/4 + 1/4) / 2; n=2: pass = (1 - C(2,2)/C(4,2) + 1 - C(3,2)/C(4,2)) / 2 = 2/3
    assert lines[2].split() == ["1", "0.375", "0.375", "0", "0"]
    assert lines[3].split()[:4] == ["2", "0.6667", "0.6667", "0.1931"]
    assert lines[4].split()[:3] == ["4", "1", "1"]
    assert "1 NaN rewards" in out


def test_stats_json_round_option_and_plot(run_dir, tmp_path, capsys):
    png = tmp_path / "plots" / "bon.png"
    stats_cli.main(stats_args(str(run_dir), "--round", "0", "--json", "--plot", str(png), "--threshold", "1"))
    rep = json.loads(capsys.readouterr().out)
    assert rep["round_dir"] == str(run_dir / "round-000") and (rep["M"], rep["N"], rep["nan_count"]) == (2, 4, 0)
    assert [r["n"] for r in rep["curve"]] == [1, 2, 4]
    assert rep["curve"][0]["expected_max_reward"] == pytest.approx(3 / 8)
    assert rep["curve"][1]["pass_at_n"] == pytest.approx((0.5 + 5 / 6) / 2)
    assert rep["plot"] == str(png)
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    assert struct.unpack(">II", data[16:24]) == (1200, 360)
    assert [p.name for p in png.parent.iterdir()] == ["bon.png"]  # no temp file left


def test_stats_on_a_round_folder(run_dir, capsys):
    stats_cli.main(stats_args(str(run_dir / "round-000")))
    assert capsys.readouterr().out.startswith(f"{run_dir / 'round-000'}: 2 prompts x 4 samples, 0 NaN")


@pytest.mark.parametrize(
    "argv, match",
    [
        (["{run}/missing"], "no such folder"),
        (["{run}", "--round", "2"], r"round-002/rewards.parquet: missing \(run `rsft score` first\)"),
        (["{run}", "--round", "7"], "no round-007 folder"),
        (["{run}/round-000", "--round", "0"], "--round applies to a run folder"),
        (["{run}/round-002"], "no round-XXX folder"),
        (["{run}", "--threshold", "nan"], "threshold must be a finite number"),
    ],
)
def test_stats_errors(run_dir, argv, match):
    with pytest.raises(RsftError, match=match):
        stats_cli.main(stats_args(*(a.format(run=run_dir) for a in argv)))


def test_stats_run_without_scored_rounds(tmp_path):
    (tmp_path / "round-000").mkdir()
    with pytest.raises(RsftError, match="no round with rewards.parquet"):
        stats_cli.main(stats_args(str(tmp_path)))


def test_stats_counts_only_full_credit_as_a_pass_by_default(tmp_path, capsys):
    write_round(tmp_path / "round-000", [[0.5, 0.5], [1.0, 0.0]])  # partial credit is not a pass, as in rm-check
    stats_cli.main(stats_args(str(tmp_path / "round-000"), "--json"))
    rep = json.loads(capsys.readouterr().out)
    assert rep["threshold"] == 1.0 and rep["curve"][0]["pass_at_n"] == pytest.approx(0.25)
