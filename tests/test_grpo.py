"""rsft scorers as TRL GRPO rewards (one real GRPOTrainer step) and TRL rewards as rsft scorers."""

from __future__ import annotations

import json
import math
import warnings

import pytest

from rsft.errors import RsftError
from rsft.prompts import TaskSpec, task_prompts
from rsft.score import as_scorer
from rsft.train.grpo import GrpoReward, as_grpo_reward, completion_text, from_trl_reward, grpo_rows
from rsft.types import Verdict


def trl_call(reward, prompts, completions, **columns):
    """Call a reward function the way GRPOTrainer._calculate_rewards does (trl 1.16)."""
    logged: dict[str, list[float]] = {}
    out = reward(prompts=prompts, completions=completions, completion_ids=[[1]] * len(completions),
                 trainer_state=None, log_extra=lambda column, values: None,
                 log_metric=lambda name, value: logged.setdefault(name, []).append(value), **columns)
    return out, logged


def test_checker_as_reward_text_and_chat():
    reward = as_grpo_reward("exact")
    assert reward.__name__ == "rsft_exact"
    out, logged = trl_call(reward, ["Q: 2+3?", "Q: 7-4?"], [" 5\n", "4"], answer=["5", "3"])
    assert out == [1.0, 0.0]
    assert logged == {"rsft_exact/unscorable": [0.0]}
    chat_prompts = [[{"role": "user", "content": "2+3?"}]] * 2
    chat_completions = [[{"role": "assistant", "content": "5"}],
                        [{"role": "assistant", "content": [{"type": "text", "text": "6"}]}]]
    out, _ = trl_call(reward, chat_prompts, chat_completions, answer=["5", "5"])
    assert out == [1.0, 0.0]


def test_missing_field_is_none_or_raises():
    reward = as_grpo_reward("exact")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out, logged = trl_call(reward, ["q", "q"], ["5", "5"], answer=["5", None])
    assert out == [1.0, None]
    assert logged["rsft_exact/unscorable"] == [0.5]
    assert reward.unscorable == 1
    assert any("needs the metadata field 'answer'" in str(w.message) for w in caught)
    strict = as_grpo_reward("exact", on_error="raise")
    with pytest.raises(RsftError, match="answer"):
        trl_call(strict, ["q"], ["5"])


def test_column_rename_and_nan_is_none():
    reward = as_grpo_reward("exact", columns={"solution": "answer"})
    out, _ = trl_call(reward, ["q", "q"], ["x", "y"], solution=["x", "x"])
    assert out == [1.0, 0.0]
    nan_reward = as_grpo_reward(lambda prompt, completion: math.nan if completion == "?" else 0.25)
    out, _ = trl_call(nan_reward, ["q", "q"], ["?", "ok"])
    assert out == [None, 0.25]


def test_task_checker_through_grpo_rows():
    """A reasoning-gym prompt set as TRL rows: the nested entry reaches the task checker unchanged."""
    prompts = task_prompts(TaskSpec(name="chain_sum", size=3, shots=0, seed=5))
    rows = grpo_rows(prompts)
    assert set(rows[0]) == {"prompt", "rsft_metadata"}
    assert json.loads(rows[0]["rsft_metadata"])["answer"] == prompts[0].metadata["answer"]
    answers = [str(p.metadata["answer"]) for p in prompts]
    completions = [f" {answers[0]}\n", " nonsense", f"{answers[2]}"]
    out, _ = trl_call(as_grpo_reward("task"), [r["prompt"] for r in rows], completions,
                      rsft_metadata=[r["rsft_metadata"] for r in rows])
    assert out == [1.0, 0.0, 1.0]


def test_completion_text_rejects_other_types():
    assert completion_text({"role": "assistant", "content": "hi"}) == "hi"
    with pytest.raises(RsftError, match="completion"):
        completion_text(42)


# --- TRL rewards as rsft scorers -----------------------------------------------------------------


def test_trl_builtin_spec_plain_and_chat():
    scorer = as_scorer("trl:think_format_reward")
    assert scorer.name == "trl:think_format_reward"
    chat = [[{"role": "user", "content": "q"}]] * 2
    good, bad = "<think>\nhmm\n</think>\n5", "5"
    assert scorer.score(chat, [good, bad], [{}, {}]) == [1.0, 0.0]
    # think_format_reward indexes completion[0]["content"]: plain prompts need conversational=True
    forced = as_scorer("trl:think_format_reward", {"conversational": True})
    assert forced.score(["q", "q"], [good, bad], [{}, {}]) == [1.0, 0.0]


def test_trl_accuracy_reward_with_column_mapping():
    scorer = as_scorer("trl:accuracy_reward", {"columns": {"answer": "solution"}})
    chat = [[{"role": "user", "content": "2+3?"}]] * 2
    out = scorer.score(chat, ["\\boxed{5}", "\\boxed{4}"], [{"answer": "$5$"}, {"answer": "$5$"}])
    assert out == [1.0, 0.0]


def test_trl_factory_and_user_function(tiny_lm, tmp_path, monkeypatch):
    """A reward factory that counts token n-grams gets completion_ids from the given tokenizer."""
    penalty = as_scorer("trl:get_repetition_penalty_reward",
                        {"init": {"ngram_size": 2, "max_penalty": -1.0}, "tokenizer": str(tiny_lm)})
    out = penalty.score(["q", "q"], ["0 0 0 0 0 0 0 0", "0 1 2 3 4 5 6 7"], [{}, {}])
    assert out[0] < 0 and out[1] == 0.0
    (tmp_path / "my_rewards.py").write_text(
        "def length(prompts, completions, answer, **kwargs):\n"
        "    return [None if a is None else float(len(c) == int(a)) for c, a in zip(completions, answer)]\n"
        "async def shout(completions, **kwargs):\n"
        "    return [float(c.isupper()) for c in completions]\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    scorer = as_scorer("trl:my_rewards:length")
    out = scorer.score(["q"] * 3, ["abc", "ab", "x"], [{"answer": 3}, {"answer": 3}, {}])
    assert out[:2] == [1.0, 0.0]
    assert isinstance(out[2], Verdict) and math.isnan(out[2].score) and "None" in out[2].details
    assert as_scorer("trl:my_rewards:shout").score(["q", "q"], ["HI", "hi"], [{}, {}]) == [1.0, 0.0]


def test_round_trip_and_bad_specs():
    def contains_five(prompts, completions, **kwargs):
        return [float("5" in c) for c in completions]

    reward = as_grpo_reward(from_trl_reward(contains_five))
    out, _ = trl_call(reward, ["q", "q"], ["15", "4"])
    assert out == [1.0, 0.0]
    with pytest.raises(RsftError, match="trl.rewards has no 'nope'"):
        as_scorer("trl:nope")
    with pytest.raises(RsftError, match="needs a reward function"):
        as_scorer("trl")
    with pytest.raises(RsftError, match="unknown option"):
        as_scorer("trl:think_format_reward", {"colums": {}})
    with pytest.raises(RsftError, match="on_error"):
        GrpoReward("exact", on_error="skip")


# --- one real GRPOTrainer step -------------------------------------------------------------------


class RecordingReward(GrpoReward):
    """The adapter, also keeping what it returned so the test can compare it with TRL's log."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.returned: list[float | None] = []
        self.columns_seen: set[str] = set()

    def __call__(self, prompts, completions, **kwargs):
        out = super().__call__(prompts, completions, **kwargs)
        self.returned += out
        self.columns_seen |= set(kwargs)
        return out


def test_grpo_trainer_step_with_rsft_checker(tiny_lm, tmp_path):
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    rows = [{"prompt": "Q: What is 2 + 3?\nA:", "answer": "5"}, {"prompt": "Q: What is 7 - 4?\nA:", "answer": "3"}]
    reward = RecordingReward("regex:(\\d)")  # group(1) == the row's answer: needs the answer column
    args = GRPOConfig(output_dir=str(tmp_path / "grpo"), max_steps=1, per_device_train_batch_size=2,
                      num_generations=2, max_completion_length=6, use_cpu=True, bf16=False, report_to=[],
                      logging_steps=1, save_strategy="no", dataloader_num_workers=0, seed=0)
    trainer = GRPOTrainer(model=str(tiny_lm), reward_funcs=reward, args=args, train_dataset=Dataset.from_list(rows))
    trainer.train()
    assert reward.calls == 1 and len(reward.returned) == 2
    assert reward.unscorable == 0 and None not in reward.returned
    assert "answer" in reward.columns_seen
    log = trainer.state.log_history[0]
    assert log["rewards/rsft_regex_d/mean"] == pytest.approx(sum(reward.returned) / 2)
    assert log["rsft_regex_d/unscorable"] == 0.0


def test_rsft_rollout_samples_each_group_on_the_live_policy(tiny_lm):
    """The rollout TRL calls gets each prompt once per completion; it returns ids for every entry, in
    order, puts the policy back in training mode, and draws new samples on every call."""
    from types import SimpleNamespace

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rsft.train.grpo import RsftRollout
    from rsft.types import SamplingParams

    model = AutoModelForCausalLM.from_pretrained(str(tiny_lm))
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_lm))
    model.train()
    trainer = SimpleNamespace(model=model, accelerator=SimpleNamespace(unwrap_model=lambda m: m))
    rollout = RsftRollout(tokenizer, SamplingParams(max_new_tokens=8, seed=3))
    prompts = ["Q: 2 + 3?", "Q: 2 + 3?", "Q: 2 + 3?", "Q: 7 - 4?", "Q: 7 - 4?", "Q: 7 - 4?"]
    first = rollout(prompts, trainer)
    assert model.training
    assert set(first) == {"prompt_ids", "completion_ids", "logprobs"}
    assert len(first["prompt_ids"]) == len(first["completion_ids"]) == 6
    ids_a, ids_b = (tokenizer(p)["input_ids"] for p in ("Q: 2 + 3?", "Q: 7 - 4?"))
    assert first["prompt_ids"] == [ids_a] * 3 + [ids_b] * 3
    assert all(1 <= len(c) <= 8 for c in first["completion_ids"])
    second = rollout(prompts, trainer)
    assert second["completion_ids"] != first["completion_ids"]  # the seed moves with each call
    assert rollout.calls == 2 and rollout.wall_s > 0
    uneven = rollout(prompts[:4], trainer)  # groups of unequal size: one completion per entry
    assert len(uneven["completion_ids"]) == 4 and uneven["prompt_ids"][3] == ids_b


@pytest.mark.parametrize("sampler", ["rsft", "trl"])
def test_train_grpo_with_either_sampler(tiny_lm, tmp_path, sampler):
    from rsft.config import SamplingConfig, TrainConfig
    from rsft.train.sft import train_grpo
    from rsft.types import Prompt

    prompts = [Prompt(prompt_id=f"q{i}", prompt=f"Q: What is {i} + 1?\nA:", metadata={"answer": str(i + 1)})
               for i in range(4)]
    config = TrainConfig(lora=True, batch_size=4, grad_accum=1, epochs=1, max_steps=1, seed=0)
    info = train_grpo(tmp_path / "g", prompts, "regex:(\\d)", config, SamplingConfig(max_new_tokens=6, temperature=1.0),
                      2, str(tiny_lm), sampler=sampler)
    assert info["sampler"] == sampler and info["steps"] == 1 and info["samples"] == 4
    assert (info["sampling_s"] > 0) if sampler == "rsft" else info["sampling_s"] is None
    assert (tmp_path / "g" / "checkpoint" / "rsft_train.json").is_file()
    with pytest.raises(RsftError, match="sampler must be one of rsft, trl"):
        train_grpo(tmp_path / "h", prompts, "regex:(\\d)", config, SamplingConfig(), 2, str(tiny_lm), sampler="vllm")
