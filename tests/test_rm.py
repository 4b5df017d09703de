"""RM re-validation (rsft rm-check, the round gate) and RM training (rsft rm-train) on tiny models."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
from digits_run import rsft_cli, write_run

from rsft import artifacts, matrix
from rsft.config import RmCheckConfig, RunConfig, load_config
from rsft.errors import RsftError
from rsft.prompts import prompt_id
from rsft.rounds.rm_check import (
    Pair,
    RmGateError,
    accuracy_summary,
    check_pairs,
    check_round,
    format_report,
    gate_round,
    read_pairs,
    round_verdicts,
    sample_pairs,
)
from rsft.score import CallableScorer
from rsft.types import Completion, Prompt

WORDS = ["the quick fox", "lazy dog", "hello world", "brown fox jumps", "over the dog", "the answer is"]


def sum_pairs(seed: int, count: int) -> list[dict]:
    """Preference rows a tiny RM can learn: the digits of the sum are chosen over a few words."""
    r = random.Random(seed)
    rows = []
    for _ in range(count):
        a, b = r.randrange(10), r.randrange(10)
        rows.append({"prompt": f"Q: What is {a} + {b}?\nA:", "chosen": f" {a + b}", "rejected": " " + r.choice(WORDS),
                     "answer": str(a + b)})
    return rows


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def length_rm() -> CallableScorer:
    """A stand-in RM with known scores: the completion's length."""
    return CallableScorer(lambda prompt, completion: float(len(completion)), name="length")


# --- reading pairs -------------------------------------------------------------------------------


def test_read_pairs_text_conversational_and_implicit(tmp_path):
    user = [{"role": "user", "content": "2+3?"}]
    path = write_jsonl(tmp_path / "p.jsonl", [
        {"prompt": "Q: 2+3?", "chosen": "5", "rejected": "6", "answer": "5"},
        {"prompt": user, "chosen": [{"role": "assistant", "content": "5"}],
         "rejected": [{"role": "assistant", "content": [{"type": "text", "text": "6"}]}]},
        {"chosen": user + [{"role": "assistant", "content": "5"}], "rejected": user + [{"role": "assistant", "content": "7"}]},
        "",
    ])
    pairs = read_pairs(path)
    assert [(p.chosen, p.rejected) for p in pairs] == [("5", "6"), ("5", "6"), ("5", "7")]
    assert pairs[0].prompt == "Q: 2+3?" and pairs[0].metadata == {"answer": "5"}
    assert pairs[1].prompt == user and pairs[2].prompt == user
    assert pairs[2].source == f"{path}:3"


@pytest.mark.parametrize(("row", "message"), [
    ('{"prompt": "q", "chosen": "a"}', "p.jsonl:2: missing field 'rejected'"),
    ('{"prompt": "q", "chosen": "a", ', "p.jsonl:2: malformed JSON"),
    ('{"prompt": 3, "chosen": "a", "rejected": "b"}', "p.jsonl:2: field 'prompt' must be text"),
    ('{"prompt": "q", "chosen": [{"role": "user", "content": "a"}], "rejected": "b"}',
     "p.jsonl:2: field 'chosen' must be one assistant message"),
    ('{"chosen": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "x"}], '
     '"rejected": [{"role": "user", "content": "b"}, {"role": "assistant", "content": "y"}]}',
     "p.jsonl:2: without 'prompt', chosen and rejected must be conversations sharing"),
    ('{"prompt": "q", "chosen": [1], "rejected": "b"}', "p.jsonl:2: field 'chosen' must be text or a list"),
])
def test_read_pairs_bad_rows_name_file_and_line(tmp_path, row, message):
    path = write_jsonl(tmp_path / "p.jsonl", ['{"prompt": "q", "chosen": "a", "rejected": "b"}', row])
    with pytest.raises(RsftError, match=message.replace("(", r"\(").replace("[", r"\[")):
        read_pairs(path)


def test_read_pairs_empty_or_missing(tmp_path):
    with pytest.raises(RsftError, match="no pairs"):
        read_pairs(write_jsonl(tmp_path / "e.jsonl", [""]))
    with pytest.raises(RsftError, match="no such pairs file"):
        read_pairs(tmp_path / "nope.jsonl")


# --- figures -------------------------------------------------------------------------------------


def test_accuracy_summary_counts_ties_and_wilson():
    a = accuracy_summary(np.array([3.0, 2.0, 1.0, 5.0, 1.0]), np.array([1.0, 2.0, 2.0, 0.0, math.nan]))
    assert {k: a[k] for k in ("n", "wins", "losses", "ties", "unscored")} == \
        {"n": 4, "wins": 2, "losses": 1, "ties": 1, "unscored": 1}
    assert a["accuracy"] == 0.5 and a["accuracy_ties_half"] == 0.625 and a["mean_margin"] == 1.5
    # Wilson 95% for 2 of 4: centre (0.5 + z^2/8) / (1 + z^2/4) = 0.5, half-width 0.3848
    assert a["ci_low"] == pytest.approx(0.1500, abs=1e-4) and a["ci_high"] == pytest.approx(0.8500, abs=1e-4)
    empty = accuracy_summary(np.zeros(0), np.zeros(0))
    assert empty["accuracy"] is None and empty["ci_low"] is None


def test_check_pairs_with_checker_agreement():
    # chosen/rejected as labelled; the exact checker (gold 5) decides pairs 0, 1 and 3 (pair 1 backwards)
    pairs = [Pair("q", "5", "66", "a", {"answer": "5"}), Pair("q", "777", "5", "b", {"answer": "5"}),
             Pair("q", "88", "9", "c", {"answer": "5"}), Pair("q", "5", "4", "d", {"answer": "5"})]
    rep = check_pairs(length_rm(), pairs, checker="exact")
    assert rep["pairs"]["wins"] == 2 and rep["pairs"]["losses"] == 1 and rep["pairs"]["ties"] == 1
    c = rep["checker"]
    assert c["decided"] == 3 and c["agrees_with_labels"] == 2
    # RM (length) vs the checker's pick: pair 0 "5"<"66" wrong, pair 1 "5"<"777" wrong, pair 3 tie
    assert c["agreement"]["n"] == 3 and c["agreement"]["wins"] == 0 and c["agreement"]["ties"] == 1
    text = format_report(rep)
    assert text.splitlines()[1].split()[:2] == ["accuracy", "50.0%"] and "decides 3 of 4 pairs" in text


# --- pairs from a round --------------------------------------------------------------------------


def write_round(round_dir: Path, rows: list[tuple[str, str, list[str]]], rewards: list[list[float]] | None = None):
    """A round folder: prompts (with gold answers), completions and optionally rewards, as the stages write them."""
    prompts = [Prompt(prompt_id(p), p, {"answer": a}) for p, a, _ in rows]
    matrix.write_prompts(round_dir / artifacts.PROMPTS, prompts)
    comps = [[Completion(t, len(t), "stop") for t in texts] for _, _, texts in rows]
    artifacts.write_table(round_dir / artifacts.COMPLETIONS, matrix.completion_columns(prompts, comps, 0),
                          matrix.COMPLETIONS_SCHEMA)
    if rewards is not None:
        flat = [(p.prompt_id, j, r) for p, row in zip(prompts, rewards, strict=True) for j, r in enumerate(row)]
        artifacts.write_table(round_dir / artifacts.REWARDS, {
            "prompt_id": [f[0] for f in flat], "sample_idx": [f[1] for f in flat], "reward": [f[2] for f in flat],
            "scorer": ["exact"] * len(flat), "details": [None] * len(flat), "failed": [False] * len(flat),
        }, matrix.REWARDS_SCHEMA)
    return prompts


ROUND_ROWS = [
    ("Q: 2+3?", "5", ["5", "66", "5", "7"]),      # 2 pass, 2 fail
    ("Q: 1+1?", "2", ["2", "2", "2", "2"]),       # all pass: no pair
    ("Q: 4+4?", "8", ["9", "8888", "8", "10"]),   # 1 pass ("8"), 3 fail
]


def test_round_pairs_and_figures(tmp_path):
    write_round(tmp_path, ROUND_ROWS)
    v = round_verdicts(tmp_path, "exact")
    assert v.passed.tolist() == [[1, 0, 1, 0], [1, 1, 1, 1], [0, 0, 1, 0]]
    assert len(sample_pairs(v, 0)) == 4 + 3 and len(sample_pairs(v, 1)) == 2
    assert sample_pairs(v, 1, seed=3) == sample_pairs(v, 1, seed=3)
    rep = check_round(length_rm(), v, per_prompt=0)
    # by length: prompt 0: "5" vs "66" wrong, vs "7" tie (x2); prompt 2: "8" vs "9" tie, "8888" wrong, "10" wrong
    assert (rep["pairs"]["wins"], rep["pairs"]["ties"], rep["pairs"]["n"]) == (0, 3, 7)
    assert rep["round"]["mixed_prompts"] == 2 and rep["round"]["passing"] == 7 and rep["round"]["failing"] == 5
    p = rep["all_pairs"]
    assert p["accuracy"] == pytest.approx(np.mean([0.25, 1 / 6]))
    assert p["top1_pass_rate"] == 0.0  # the longest is "66" and "8888": both fail
    assert p["random_pass_rate"] == pytest.approx(np.mean([0.5, 0.25]))
    assert "2 prompts with both" in format_report(rep)


def test_round_rewards_as_verdicts(tmp_path):
    write_round(tmp_path, ROUND_ROWS[:1], rewards=[[1.0, 0.0, 0.5, math.nan]])
    v = round_verdicts(tmp_path, None, pass_threshold=0.5)
    assert np.array_equal(v.passed, [[1, 0, 1, math.nan]], equal_nan=True)
    assert v.checker == "rewards.parquet (exact)"


# --- the gate ------------------------------------------------------------------------------------


def test_gate_writes_report_refuses_and_reuses(tmp_path, tiny_rm, monkeypatch):
    pairs = write_jsonl(tmp_path / "held.jsonl", sum_pairs(1, 6))
    config = RunConfig()
    assert gate_round(config, tmp_path / "r0") is None  # no rm_check configured: nothing runs
    config.scoring.scorer = f"rm:{tiny_rm}"
    config.rounds.rm_check = RmCheckConfig(pairs=str(pairs), min_accuracy=0.0)
    rep = gate_round(config, tmp_path / "r0")
    saved = json.loads((tmp_path / "r0" / "rm_check.json").read_text())
    assert saved["gate"]["passed"] and saved["pairs"]["n"] == 6 and saved["rm"] == f"rm:{tiny_rm}"
    assert rep["key"] == saved["key"]
    with monkeypatch.context() as m:  # same RM files, pairs and settings: the saved check is reused
        m.setattr("rsft.rounds.rm_check.load_rm", lambda *a: pytest.fail("the RM was loaded again"))
        assert gate_round(config, tmp_path / "r0") == saved
    (tmp_path / "r0" / "rm_check.json").write_text("{not json")
    assert gate_round(config, tmp_path / "r0")["key"] == saved["key"]  # an unreadable file: checked again
    config.rounds.rm_check = RmCheckConfig(pairs=str(pairs), min_accuracy=1.01, model=str(tiny_rm))
    with pytest.raises(RmGateError, match=r"r1: refused: reward model .* below rounds.rm_check.min_accuracy 101.0%"):
        gate_round(config, tmp_path / "r1")
    assert not json.loads((tmp_path / "r1" / "rm_check.json").read_text())["gate"]["passed"]
    config.scoring.scorer, config.rounds.rm_check.model = "task", None
    with pytest.raises(RsftError, match="rounds.rm_check.model"):
        gate_round(config, tmp_path / "r2")


def test_rm_check_config_from_yaml(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("rounds: {rm_check: {pairs: held.jsonl, min_accuracy: 0.7, use_ci_low: true}}\n")
    c = load_config(cfg).rounds.rm_check
    assert c == RmCheckConfig(pairs="held.jsonl", min_accuracy=0.7, use_ci_low=True)
    cfg.write_text("rounds: {rm_check: {pairs: held.jsonl, min_acuracy: 0.7}}\n")
    with pytest.raises(RsftError, match="c.yaml: rounds: rm_check: expected"):
        load_config(cfg)


# --- the CLI -------------------------------------------------------------------------------------


def test_cli_rm_train_then_rm_check(tmp_path, tiny_lm):
    """rm-train a tiny RM for a few steps, then rm-check it on held-out pairs: it learned the signal."""
    train = write_jsonl(tmp_path / "train.jsonl", sum_pairs(0, 24))
    held = write_jsonl(tmp_path / "held.jsonl", sum_pairs(1, 16))
    out = tmp_path / "rm"
    r = rsft_cli("rm-train", "--pairs", str(train), "--base", str(tiny_lm), "--out", str(out),
                 "--max-steps", "10", "--learning-rate", "1e-3", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["steps"] == 10 and summary["pairs"] == 24 and summary["rm"] == f"rm:{out}"
    assert json.loads((out / "rsft_rm_train.json").read_text())["source"]["kind"] == "file"
    r = rsft_cli("rm-check", f"rm:{out}", "--pairs", str(held), "--checker", "exact", "--json",
                 "--out", str(tmp_path / "check.json"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep == json.loads((tmp_path / "check.json").read_text())
    assert rep["pairs"]["n"] == 16 and rep["pairs"]["accuracy"] >= 0.9  # untrained: ~0.5
    assert rep["checker"]["decided"] == 16 and rep["checker"]["agreement"]["wins"] == rep["pairs"]["wins"]
    r = rsft_cli("rm-check", str(out), "--pairs", str(held), "--min-accuracy", "1.01", cwd=tmp_path)
    assert r.returncode == 1 and "accuracy" in r.stdout and "gate          REFUSED" in r.stdout
    assert r.stderr.strip().splitlines()[-1].startswith("rsft: error: reward model accuracy")


def test_cli_rm_check_and_train_from_round(tmp_path, tiny_rm, tiny_lm):
    write_round(tmp_path / "round-000", ROUND_ROWS)
    r = rsft_cli("rm-check", str(tiny_rm), "--from-round", str(tmp_path / "round-000"), "--checker", "exact",
                 cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "checker exact (pass >= 1)" in r.stdout and "2 prompts with both" in r.stdout
    write_round(tmp_path / "round-001", ROUND_ROWS)
    r = rsft_cli("rm-train", "--from-round", str(tmp_path / "round-000"), "--from-round", str(tmp_path / "round-001"),
                 "--checker", "exact", "--pairs-per-prompt", "0", "--base", str(tiny_lm), "--out", str(tmp_path / "rm"),
                 "--max-steps", "1", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["pairs"] == 14  # 7 from each round
    info = json.loads((tmp_path / "rm" / "rsft_rm_train.json").read_text())
    assert info["source"]["round_dir"] == [str(tmp_path / "round-000"), str(tmp_path / "round-001")]


@pytest.mark.parametrize(("args", "message"), [
    (["--pairs", "{bad}"], "bad.jsonl:2: missing field 'chosen'"),
    (["--from-round", "round-000"], "--from-round needs --checker SPEC"),
    (["--pairs", "{good}", "--round-rewards"], "--round-rewards applies to --from-round"),
    (["--from-round", "a", "--from-round", "b", "--round-rewards"], "rm-check takes one --from-round"),
])
def test_cli_bad_input_one_line_exit_2(tmp_path, tiny_rm, args, message):
    write_jsonl(tmp_path / "bad.jsonl", ['{"prompt": "q", "chosen": "a", "rejected": "b"}', '{"prompt": "q"}'])
    write_jsonl(tmp_path / "good.jsonl", ['{"prompt": "q", "chosen": "a", "rejected": "b"}'])
    args = [a.format(bad=tmp_path / "bad.jsonl", good=tmp_path / "good.jsonl") for a in args]
    r = rsft_cli("rm-check", str(tiny_rm), *args, cwd=tmp_path)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rsft: error: ") and message in lines[0]


def test_cli_rm_train_refuses_foreign_out(tmp_path, tiny_lm):
    train = write_jsonl(tmp_path / "train.jsonl", sum_pairs(0, 2))
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    r = rsft_cli("rm-train", "--pairs", str(train), "--base", str(tiny_lm), "--out", str(tmp_path / "mine"),
                 cwd=tmp_path)
    assert r.returncode == 2 and "not an earlier rm-train output" in r.stderr
    assert (tmp_path / "mine" / "notes.txt").exists()


def test_run_rounds_gate_refuses_round(tmp_path, tiny_lm, tiny_rm):
    """`rsft run --rounds 1` with rounds.rm_check: the round is refused before it generates anything."""
    held = write_jsonl(tmp_path / "held.jsonl", sum_pairs(1, 4))
    cfg = write_run(tmp_path, tiny_lm, "gated", eval_prompts=2, eval_n=1, kl_samples=0, extra=f"""
        rounds: {{rm_check: {{pairs: {held}, model: "rm:{tiny_rm}", min_accuracy: 1.01}}}}
    """)
    r = rsft_cli("run", "--config", str(cfg), "--rounds", "1", cwd=tmp_path)
    assert r.returncode == 1, r.stderr
    assert "refused: reward model" in r.stderr.strip().splitlines()[-1]
    round_dir = tmp_path / "runs" / "gated" / "round-000"
    assert (round_dir / "rm_check.json").exists() and not (round_dir / artifacts.COMPLETIONS).exists()
