"""rsft.demos.compare: RSFT, the control, GRPO and the base on one budget, with a tiny model end to end,
and the study's statistics on numbers worked by hand."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from rsft import artifacts
from rsft.demos.compare import Study, grpo_round_dir, main, mean_ci, paired_test, run, truncate_tokens

# peft and TRL still call transformers' deprecated gradient-checkpointing names while rsft loads, trains and
# samples LoRA adapters; rsft silences those notices (rsft.models.quiet_checkpointing_notices), so one is a failure
pytestmark = pytest.mark.filterwarnings("error:.*gradient_checkpointing:FutureWarning")


@pytest.fixture(scope="module")
def study(tiny_lm, tmp_path_factory):
    s = Study(out=tmp_path_factory.mktemp("compare") / "study", model=str(tiny_lm), scorer="plugin_scorers:even_length",
              seeds=(0, 1), rounds=1, prompts_per_round=4, n=2, eval_prompts=6, budget=6, long_budget=12, kl_prompts=2,
              grpo_generation_batch=8)
    return s, run(s)


def test_every_arm_is_trained_and_evaluated_per_seed(study):
    s, summary = study
    assert set(summary["arms"]) == {"base", "rsft", "control", "grpo"}
    for row in summary["arms"].values():
        assert row["seeds"] == [0, 1]
        for budget in ("budget", "long_budget"):
            values = row[budget]["accuracy"]["values"]
            assert len(values) == 2 and all(0.0 <= v <= 1.0 for v in values)
            assert row[budget]["accuracy"]["mean"] == pytest.approx(sum(values) / 2)
    base = summary["arms"]["base"]["long_budget"]["accuracy"]["values"]
    assert base[0] == base[1]  # greedy: one eval of the base serves every seed
    for name in ("compare.json", "compare.md", "compare.png"):
        assert (s.out / name).stat().st_size > 0
    md = (s.out / "compare.md").read_text()
    assert "| grpo |" in md and "vs control" in md and "vs grpo" in md and "does not bind, 12 tokens" in md


def test_compare_json_keeps_each_seeds_answers_so_any_pair_can_be_tested_later(study):
    s, summary = study
    saved = json.loads((s.out / "compare.json").read_text())["arms"]
    for row in saved.values():
        for budget in ("budget", "long_budget"):
            answers = np.array(row["correct"][budget])
            assert answers.shape == (2, s.eval_prompts) and set(np.unique(answers)) <= {0, 1}
            assert answers.mean(axis=1).tolist() == pytest.approx(row[budget]["accuracy"]["values"])
    rsft, grpo = (np.array(saved[a]["correct"]["long_budget"]) for a in ("rsft", "grpo"))
    assert saved["rsft"]["vs_grpo"]["long_budget"] == paired_test(rsft, grpo)
    assert "vs_grpo" not in saved["grpo"]


def test_rsft_and_grpo_generate_the_same_number_of_samples(study):
    s, summary = study
    for seed in s.seeds:
        rsft_round = s.out / f"seed-{seed}" / "rsft" / "round-000"
        grpo_round = grpo_round_dir(s, seed, 0)
        assert grpo_round == s.out / f"seed-{seed}" / "grpo" / "round-000"
        grpo_info = json.loads((grpo_round / artifacts.CHECKPOINT / artifacts.TRAIN_INFO).read_text())
        assert grpo_info["samples"] == s.prompts_per_round * s.n == 8
        assert grpo_info["steps"] >= 1 and grpo_info["completion_tokens"] > 0
        assert grpo_info["sampler"] == "rsft" and grpo_info["sampling_s"] > 0
        kept = sum(1 for _ in artifacts.read_jsonl(rsft_round / artifacts.SELECTED))
        control = sum(1 for _ in artifacts.read_jsonl(rsft_round / artifacts.CONTROL / artifacts.SELECTED))
        assert control == kept  # the control trains on as many rows as RSFT kept
        log = [json.loads(line) for line in (grpo_round / artifacts.TRAIN_LOG).open()]
        assert log and all("reward" in r for r in log)
        assert 0 < summary["arms"]["grpo"]["cost"]["sampling_s"]["values"][0] <= grpo_info["wall_s"]
    cost = summary["arms"]
    assert cost["rsft"]["cost"]["samples"]["values"] == [8.0, 8.0]
    assert cost["grpo"]["cost"]["samples"]["values"] == [8.0, 8.0]


def test_the_training_budget_is_read_from_the_first_tokens_of_the_long_answer(study):
    s, _ = study
    ev = json.loads((s.out / "seed-0" / "eval" / "rsft" / artifacts.EVAL).read_text())
    assert ev["budget"]["tokens"] == 6 and ev["long_budget"]["tokens"] == 12
    assert ev["budget"]["accuracy"] == pytest.approx(np.mean(ev["budget"]["correct"]))
    assert ev["budget"]["finished"] <= ev["long_budget"]["finished"]
    assert math.isfinite(ev["kl"]["mean"]) and ev["kl"]["n"] == 2
    base = json.loads((s.out / "base" / artifacts.EVAL).read_text())
    assert base["kl"]["mean"] == 0.0  # the base against itself: exactly 0


def test_truncate_tokens_cuts_at_the_budget(tiny_lm):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_lm))
    text = "the cat sat on the mat and then it sat again"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert truncate_tokens(tok, text, len(ids)) == text
    short = truncate_tokens(tok, text, 3)
    assert tok(short, add_special_tokens=False)["input_ids"] == ids[:3]


def test_a_rerun_reuses_every_checkpoint_and_eval(study):
    s, summary = study
    ckpt = grpo_round_dir(s, 0, 0) / artifacts.CHECKPOINT / artifacts.TRAIN_INFO
    before = ckpt.stat().st_mtime_ns
    again = run(s)
    assert ckpt.stat().st_mtime_ns == before
    timed = {k for k in _leaves(summary["arms"]) if "/wall_s/" in k}  # the cheap select/export stages rerun
    assert {k: v for k, v in _leaves(again["arms"]).items() if k not in timed} == \
        {k: v for k, v in _leaves(summary["arms"]).items() if k not in timed}


def _leaves(tree, path=""):
    """``{path: value}`` of a nested dict, so a failed comparison names the values that differ."""
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in _leaves(sub, f"{path}/{key}").items()}
    return {path: tree}


def test_mean_ci_uses_student_t_across_seeds():
    ci = mean_ci([0.4, 0.5, 0.6])
    assert ci["mean"] == pytest.approx(0.5)
    assert ci["ci_high"] - ci["mean"] == pytest.approx(4.303 * 0.1 / math.sqrt(3))
    assert mean_ci([0.3])["ci_low"] is None


def test_paired_test_on_hand_worked_cases():
    same = np.array([[1, 0, 1, 0]])
    assert paired_test(same, same)["p_value"] == 1.0
    better = np.array([[1, 1, 1, 1, 1, 0]])
    worse = np.array([[0, 0, 0, 0, 0, 0]])
    t = paired_test(better, worse)
    assert t["difference"] == pytest.approx(5 / 6)
    assert t["p_value"] == pytest.approx(2 / 32)  # 5 questions differ, all one way: 2 of 2^5 sign patterns
    assert (t["a_only"], t["b_only"]) == (5, 0)
    # two seeds: a question's differences are averaged first (here +1 and 0 -> +0.5)
    a = np.array([[1, 1], [0, 1]])
    b = np.array([[0, 1], [0, 1]])
    two = paired_test(a, b)
    assert two["difference"] == pytest.approx(0.25) and two["p_value"] == 1.0  # one question differs: p = 2/2
    many = paired_test(np.ones((1, 40)), np.zeros((1, 40)))
    assert many["p_value"] < 1e-4  # Monte Carlo: 40 of 40 one way


def test_bad_budgets_exit_2_with_one_line(tmp_path, capsys):
    assert main(["--out", str(tmp_path / "s"), "--budget", "20", "--long-budget", "10"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "rsft compare: --long-budget (10) must be above --budget (20)"
    assert not (tmp_path / "s").exists()


def test_grpo_generation_batch_must_fit_the_steps_and_groups(tmp_path, tiny_lm):
    from rsft.config import SamplingConfig, TrainConfig
    from rsft.errors import RsftError
    from rsft.train.sft import train_grpo

    with pytest.raises(RsftError, match=r"generation batch \(6\) must be a multiple of the completions per optimizer "
                                        r"step \(8\)"):
        train_grpo(tmp_path / "g", [], "math", TrainConfig(batch_size=4, grad_accum=2), SamplingConfig(), 2,
                   str(tiny_lm), generation_batch=6)
    assert not (tmp_path / "g").exists()
