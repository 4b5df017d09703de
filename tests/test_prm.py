"""Process rewards: step splitting, the aggregation maths, and model step scores checked against a
direct forward pass of the tiny random token classifier and causal LM."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import tiny_models
import torch

from rsft.errors import RsftError
from rsft.score import as_scorer
from rsft.score.prm import (
    CallableStepScorer,
    ModelStepScorer,
    ProcessRewardScorer,
    aggregate,
    split_steps,
)
from rsft.types import Verdict

PROMPTS = ["Q: What is 2 + 3?\nA:", "Q: What is 7 - 4?", "hello"]
COMPLETIONS = [
    "2 + 3 = 5\nThe answer is 5.",
    "Start from 7.\n\nTake away 4: the fox jumps.\nSo 3.\n",
    "one",
]


def step_lengths(prompt, steps):
    """A step scorer for the ``prm-fn`` spec: step k of n scores len(step) / 100."""
    return [len(s) / 100 for s in steps]


@pytest.fixture(scope="module")
def tiny_prm(tmp_path_factory) -> Path:
    return tiny_models.build_token_classifier(tmp_path_factory.mktemp("tiny_prm"))


# --- splitting and aggregation -------------------------------------------------------------------


def test_split_steps() -> None:
    text = "Step 1: a\n\n  Step 2: b\nstill b\n\n\n \nStep 3: c\n"
    assert split_steps(text, "lines") == ["Step 1: a", "Step 2: b", "still b", "Step 3: c"]
    assert split_steps(text, "paragraphs") == ["Step 1: a", "Step 2: b\nstill b", "Step 3: c"]
    assert split_steps(text, r"regex:(?=Step \d)") == ["Step 1: a", "Step 2: b\nstill b", "Step 3: c"]
    assert split_steps("a; b;; c", "regex:(;)") == ["a", "b", "c"]  # a capture group is no step
    assert split_steps("   \n\n", "lines") == []
    for bad in ("sentences", "regex:", "regex:(unclosed"):
        with pytest.raises(RsftError, match="prm: split"):
            split_steps("x", bad)


def test_aggregate_exactly() -> None:
    steps = [0.5, 0.25, 0.75]
    assert aggregate(steps, "min") == 0.25
    assert aggregate(steps, "prod") == 0.09375
    assert aggregate(steps, "last") == 0.75
    assert aggregate(steps, "mean") == 0.5
    assert all(math.isnan(aggregate([], how)) for how in ("min", "prod", "last", "mean"))
    cut = [math.nan, 0.5]  # a step cut off by max_length
    assert aggregate(cut, "last") == 0.5 and all(math.isnan(aggregate(cut, h)) for h in ("min", "prod", "mean"))
    with pytest.raises(RsftError, match="aggregate must be one of min, prod, last, mean"):
        aggregate(steps, "max")


def test_callable_prm_by_spec() -> None:
    scorer = as_scorer("prm-fn:test_prm:step_lengths", {"aggregate": "mean"})
    assert scorer.name == "prm-fn:test_prm:step_lengths"
    steps = scorer.score_steps(PROMPTS + ["q"], COMPLETIONS + ["\n \n"])
    assert steps == [[0.09, 0.16], [0.13, 0.27, 0.05], [0.03], []]
    out = scorer.score(PROMPTS + ["q"], COMPLETIONS + ["\n \n"], [{}] * 4)
    assert [v.score for v in out[:3]] == [aggregate(s, "mean") for s in steps[:3]]
    assert out[0] == Verdict((0.09 + 0.16) / 2, "mean of steps [0.09, 0.16]")
    assert math.isnan(out[3].score) and out[3].details == "no steps"
    by_paragraph = as_scorer("prm-fn:test_prm:step_lengths", {"split": "paragraphs", "aggregate": "prod"})
    assert by_paragraph.score_steps(PROMPTS[1:2], COMPLETIONS[1:2]) == [[0.13, 0.33]]
    wrong = ProcessRewardScorer(CallableStepScorer(lambda p, s: [1.0], name="one"))
    with pytest.raises(RsftError, match="prm-fn 'one' returned 1 scores for 2 steps"):
        wrong.score(PROMPTS[:1], COMPLETIONS[:1], [{}])
    with pytest.raises(RsftError, match="unknown option"):
        as_scorer("prm-fn:test_prm:step_lengths", {"step_tag": "x"})


# --- model PRMs ----------------------------------------------------------------------------------


def direct(model: ModelStepScorer, prompt, steps: list[str]) -> tuple[torch.Tensor, list[int]]:
    """The logits of one unpadded pair, alone in its batch, and where its steps are read."""
    ids, positions = model.encode(prompt, steps)
    with torch.inference_mode():
        logits = model.model(input_ids=torch.tensor([ids])).logits[0].float()
    return logits, positions


def test_token_classifier_scores_match_a_direct_forward_pass(tiny_prm: Path) -> None:
    scorer = as_scorer(f"prm:{tiny_prm}", {"batch_size": 2})
    model = scorer.step_scorer
    assert model.kind == "token" and model.positive == 1 and model.step_tag == ""
    got = scorer.score_steps(PROMPTS, COMPLETIONS)
    assert [len(s) for s in got] == [2, 3, 1]
    for prompt, completion, scores in zip(PROMPTS, COMPLETIONS, got, strict=True):
        steps = scorer.steps(completion)
        ids, positions = model.encode(prompt, steps)
        assert model.tokenizer.decode(ids) == prompt + "".join("\n" + s for s in steps)
        for step, p in zip(steps, positions, strict=True):
            assert model.tokenizer.decode(ids[: p + 1]).endswith("\n" + step)  # read at the step's last token
        logits, _ = direct(model, prompt, steps)
        expected = logits[positions].softmax(-1)[:, 1].tolist()
        assert scores == pytest.approx(expected, abs=1e-5)
        assert all(0 < s < 1 for s in scores)
    verdicts = scorer.score(PROMPTS, COMPLETIONS, [{}] * 3)
    assert [v.score for v in verdicts] == [min(s) for s in got]
    assert scorer.last_stats["real_tokens"] == sum(len(model.encode(p, scorer.steps(c))[0])
                                                   for p, c in zip(PROMPTS, COMPLETIONS, strict=True))
    assert scorer.last_stats["padded_tokens"] >= scorer.last_stats["real_tokens"]


def test_token_classifier_options(tiny_prm: Path) -> None:
    base = as_scorer(f"prm:{tiny_prm}", {"aggregate": "last"}).score_steps(PROMPTS, COMPLETIONS)
    one_by_one = as_scorer(f"prm:{tiny_prm}", {"batch_size": 1, "sort_by_length": False})
    assert one_by_one.score_steps(PROMPTS, COMPLETIONS) == [pytest.approx(s, abs=1e-5) for s in base]
    negative = as_scorer(f"prm:{tiny_prm}", {"positive_label": "LABEL_0"}).score_steps(PROMPTS, COMPLETIONS)
    assert [[1 - x for x in s] for s in negative] == [pytest.approx(s, abs=1e-5) for s in base]
    tagged = as_scorer(f"prm:{tiny_prm}", {"step_tag": " <step>", "split": "paragraphs"})
    steps = tagged.steps(COMPLETIONS[1])
    ids, positions = tagged.step_scorer.encode(PROMPTS[1], steps)
    assert tagged.step_scorer.tokenizer.decode(ids[: positions[0] + 1]).endswith("Start from 7. <step>")
    logits, _ = direct(tagged.step_scorer, PROMPTS[1], steps)
    assert tagged.score_steps(PROMPTS[1:2], COMPLETIONS[1:2])[0] == pytest.approx(
        logits[positions].softmax(-1)[:, 1].tolist(), abs=1e-5)
    with pytest.raises(RsftError, match="positive_label 'good' is not a label"):
        as_scorer(f"prm:{tiny_prm}", {"positive_label": "good"})
    with pytest.raises(RsftError, match="positive_label 2 is out of range"):
        as_scorer(f"prm:{tiny_prm}", {"positive_label": 2})


def test_max_length_cuts_the_start_and_the_steps_in_it(tiny_prm: Path) -> None:
    full = as_scorer(f"prm:{tiny_prm}")
    steps = full.steps(COMPLETIONS[1])
    ids, positions = full.step_scorer.encode(PROMPTS[1], steps)
    keep = len(ids) - positions[0] - 1  # the first step's last token is the last one cut
    short = as_scorer(f"prm:{tiny_prm}", {"max_length": keep, "aggregate": "last"})
    short_ids, short_positions = short.step_scorer.encode(PROMPTS[1], steps)
    assert short_ids == ids[-keep:] and short_positions == [-1] + [p - positions[0] - 1 for p in positions[1:]]
    got = short.score_steps(PROMPTS[1:2], COMPLETIONS[1:2])[0]
    logits, _ = direct(short.step_scorer, PROMPTS[1], steps)
    assert math.isnan(got[0]) and got[1:] == pytest.approx(
        logits[short_positions[1:]].softmax(-1)[:, 1].tolist(), abs=1e-5)
    out = short.score(PROMPTS[1:2], COMPLETIONS[1:2], [{}])[0]
    assert out.score == got[-1] and out.details.startswith("last of steps [NaN, ")


def test_step_tag_causal_lm_matches_a_direct_forward_pass(tiny_lm: Path) -> None:
    scorer = as_scorer(f"prm:{tiny_lm}", {"aggregate": "prod", "batch_size": 3})
    model = scorer.step_scorer
    assert model.kind == "tag" and model.step_tag == " ки"
    good, bad = model.good, model.bad
    assert model.tokenizer.decode([good]) == "+" and model.tokenizer.decode([bad]) == "-"
    got = scorer.score_steps(PROMPTS, COMPLETIONS)
    for prompt, completion, scores in zip(PROMPTS, COMPLETIONS, got, strict=True):
        steps = scorer.steps(completion)
        logits, positions = direct(model, prompt, steps)
        ids, _ = model.encode(prompt, steps)
        for step, p in zip(steps, positions, strict=True):
            assert model.tokenizer.decode(ids[: p + 1]).endswith(step + " ки")  # read after the tag
        pair = logits[positions][:, [good, bad]]
        assert scores == pytest.approx(pair.softmax(-1)[:, 0].tolist(), abs=1e-5)
    verdicts = scorer.score(PROMPTS, COMPLETIONS, [{}] * 3)
    assert [v.score for v in verdicts] == [math.prod(s) for s in got]
    vocab = as_scorer(f"prm:{tiny_lm}", {"bad_token": None, "good_token": "5", "step_tag": "!"})
    steps = vocab.steps(COMPLETIONS[0])
    logits, positions = direct(vocab.step_scorer, PROMPTS[0], steps)
    five = vocab.step_scorer.good
    assert vocab.score_steps(PROMPTS[:1], COMPLETIONS[:1])[0] == pytest.approx(
        logits[positions].softmax(-1)[:, five].tolist(), abs=1e-6)


def test_chat_prompts_use_the_chat_template(tiny_lm: Path) -> None:
    scorer = as_scorer(f"prm:{tiny_lm}", {"kind": "tag"})
    chat = [{"role": "user", "content": "What is 2 + 3?"}]
    ids, _ = scorer.step_scorer.encode(chat, ["5"])
    assert scorer.step_scorer.tokenizer.decode(ids) == "<|user|>What is 2 + 3?\n<|assistant|>\n5 ки"


def test_bad_model_options(tiny_lm: Path, tiny_prm: Path, tmp_path: Path) -> None:
    with pytest.raises(RsftError, match=r"good_token 'Q: ' is \d tokens.*must be one"):
        as_scorer(f"prm:{tiny_lm}", {"good_token": "Q: "})
    with pytest.raises(RsftError, match="aggregate must be one of"):
        as_scorer(f"prm:{tmp_path / 'not-loaded'}", {"aggregate": "median"})
    with pytest.raises(RsftError, match="prm: cannot load"):
        as_scorer(f"prm:{tmp_path / 'missing'}")
    with pytest.raises(RsftError, match="kind must be"):
        as_scorer(f"prm:{tiny_prm}", {"kind": "sequence"})
    with pytest.raises(RsftError, match="needs a model path"):
        as_scorer("prm")


def test_rsft_bon_weighted_by_a_prm_from_the_cli(tiny_lm: Path, tiny_prm: Path, tmp_path: Path) -> None:
    (tmp_path / "p.jsonl").write_text(json.dumps({"prompt": PROMPTS[0]}) + "\n")
    cmd = [sys.executable, "-m", "rsft.cli", "bon", "--prompts", "p.jsonl", "--model", str(tiny_lm), "-n", "3",
           "--max-new-tokens", "8", "--scorer", f"prm:{tiny_prm}", "--scorer-option", "aggregate=prod",
           "--selector", "weighted_majority", "--output", "out.jsonl"]
    r = subprocess.run(cmd, cwd=tmp_path, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    row = json.loads((tmp_path / "out.jsonl").read_text())
    texts = [c["text"] for c in row["candidates"]]
    expected = as_scorer(f"prm:{tiny_prm}", {"aggregate": "prod"}).score([PROMPTS[0]] * 3, texts, [{}] * 3)
    got = [c["score"] for c in row["candidates"]]
    assert [math.isnan(g) if g is not None else True for g in got] == [math.isnan(v.score) for v in expected]
    assert [g for g in got if g is not None and not math.isnan(g)] == pytest.approx(
        [v.score for v in expected if not math.isnan(v.score)], abs=1e-5)
