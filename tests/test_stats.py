"""Reward statistics against hand-computed values."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from rsft.errors import RsftError
from rsft.stats import format_stats, reward_stats

NAN, INF = float("nan"), float("inf")


def test_small_matrix_by_hand():
    R = [[1.0, 0.0, NAN], [0.0, 0.0, 0.0], [1.0, 1.0, 0.5]]
    s = reward_stats(R)
    # finite: 1, 0, 0, 0, 0, 1, 1, 0.5 -> sum 3.5 over 8; sum of squares 3.25
    assert (s["M"], s["N"], s["nan_count"], s["n_finite"]) == (3, 3, 1, 8)
    assert s["mean"] == pytest.approx(3.5 / 8)
    assert s["std"] == pytest.approx(math.sqrt(3.25 / 8 - (3.5 / 8) ** 2))
    assert (s["min"], s["max"]) == (0.0, 1.0)
    assert s["best_of_n_mean"] == pytest.approx((1 + 0 + 1) / 3)
    assert s["per_prompt_mean"] == pytest.approx((0.5 + 0.0 + 2.5 / 3) / 3)
    # passes (>= 0.5): row 0 one of three (NaN fails), row 1 none, row 2 all three
    assert s["pass_at_1"] == pytest.approx(4 / 9)
    assert s["frac_no_pass"] == pytest.approx(1 / 3)
    assert s["frac_all_pass"] == pytest.approx(1 / 3)
    assert s["pass_at_n"] == pytest.approx(2 / 3)
    assert s["length_reward_corr"] is None
    assert len(s["warnings"]) == 2
    assert s["warnings"][0].startswith("N=3 samples per prompt is below 10")
    assert "1 of 9 rewards are NaN" in s["warnings"][1]
    json.dumps(s, allow_nan=False)


def test_pass_threshold_and_integer_rewards():
    R = np.array([[0, 1, 2, 3], [2, 2, 2, 2]])
    s = reward_stats(R, pass_threshold=2)
    assert s["pass_at_1"] == pytest.approx(6 / 8)
    assert s["frac_all_pass"] == 0.5 and s["frac_no_pass"] == 0.0
    assert s["best_of_n_mean"] == 2.5 and s["per_prompt_mean"] == 1.75
    assert isinstance(s["mean"], float) and isinstance(s["M"], int)


def test_length_reward_correlation():
    R = np.array([[1.0, 2.0, 3.0], [NAN, 4.0, 0.0]])
    lengths = [[10, 20, 30], [5, 40, None]]
    # pairs with both known: (1,10) (2,20) (3,30) (4,40) -> exactly linear
    assert reward_stats(R, n_tokens=lengths)["length_reward_corr"] == pytest.approx(1.0)
    assert reward_stats(R, n_tokens=[[30, 20, 10], [1, 0, None]])["length_reward_corr"] == pytest.approx(-1.0)
    # hand-computed: x = 1, 2, 3, 0 ; y = 1, 3, 2, 2 (means 1.5, 2)
    # sxy = (-.5)(-1) + (.5)(1) + (1.5)(0) + (-1.5)(0) = 1 ; sxx = 5 ; syy = 2
    s = reward_stats([[1.0, 2.0], [3.0, 0.0]], n_tokens=[[1, 3], [2, 2]])
    assert s["length_reward_corr"] == pytest.approx(1 / math.sqrt(10))
    assert reward_stats(R, n_tokens=[[7, 7, 7], [7, 7, 7]])["length_reward_corr"] is None  # constant
    assert reward_stats([[1.0, 1.0]], n_tokens=[[3, 9]])["length_reward_corr"] is None
    assert reward_stats(R, n_tokens=[[None] * 3] * 2)["length_reward_corr"] is None
    with pytest.raises(RsftError, match="shape"):
        reward_stats(R, n_tokens=[[1, 2, 3]])


def test_non_finite_values_become_none():
    s = reward_stats([[NAN, NAN], [NAN, -INF]])
    assert s["mean"] is None and s["std"] is None and s["min"] is None and s["max"] is None
    assert s["best_of_n_mean"] is None and s["per_prompt_mean"] is None
    assert s["frac_no_pass"] == 1.0 and s["pass_at_1"] == 0.0
    assert s["nan_count"] == 3
    warnings = " | ".join(s["warnings"])
    assert "3 of 4 rewards are NaN" in warnings and "1 rewards are +inf or -inf" in warnings
    assert "no prompt has a completion with reward >= 0.5" in warnings
    json.dumps(s, allow_nan=False)


def test_inf_left_out_of_the_distribution():
    s = reward_stats([[INF, 1.0, 3.0]] * 10)
    assert (s["mean"], s["min"], s["max"]) == (2.0, 1.0, 3.0)
    assert s["best_of_n_mean"] == 3.0


def test_no_sample_size_warning_at_ten():
    R = np.linspace(0, 1, 40).reshape(4, 10)
    assert reward_stats(R)["warnings"] == []
    assert reward_stats(np.zeros((0, 3)))["warnings"] == []


def test_empty_matrix():
    s = reward_stats(np.zeros((0, 5)))
    assert s["M"] == 0 and s["mean"] is None and s["frac_no_pass"] is None
    json.dumps(s, allow_nan=False)


def test_bad_arguments():
    with pytest.raises(RsftError, match="2-D"):
        reward_stats([1.0, 2.0])
    with pytest.raises(RsftError, match="pass_threshold"):
        reward_stats([[1.0]], pass_threshold=NAN)


def test_format_stats():
    s = reward_stats([[1.0, 0.0, NAN], [0.0, 0.0, 0.0], [1.0, 1.0, 0.5]], n_tokens=[[3, 1, 2]] * 3)
    text = format_stats(s)
    lines = text.splitlines()
    assert lines[0] == "rewards: 3 prompts x 3 samples, 1 NaN"
    assert lines[1] == "  mean 0.4375  std 0.4635  min 0  max 1"
    assert lines[2] == "  best-of-N mean 0.6667  vs per-prompt mean 0.4444"
    assert lines[3] == "  pass (reward >= 0.5): pass@1 0.4444, prompts with none 33.3%, with all 33.3%"
    assert lines[4].startswith("  length-reward correlation ")
    assert sum(line.startswith("  warning: ") for line in lines) == 2
    assert "n/a" in format_stats(reward_stats(np.zeros((0, 2))))
