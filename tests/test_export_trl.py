"""The exported ``selected.jsonl`` loads with ``datasets`` and trains unchanged in TRL.

Rows are built through the real stages (generate -> score -> select -> export) with a fake
generator that returns known texts, then fed as-is to ``trl.SFTTrainer`` (text and chat forms)
and ``trl.DPOTrainer`` (preference pairs) on the tiny random Llama from ``conftest``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from rsft import stages
from rsft.config import GenerationConfig, ScoringConfig, SelectionConfig
from rsft.prompts import prompt_id
from rsft.score import as_scorer
from rsft.types import Completion, Prompt

torch = pytest.importorskip("torch")
datasets = pytest.importorskip("datasets")
trl = pytest.importorskip("trl")
transformers = pytest.importorskip("transformers")

# question -> (gold answer, the N=3 completions the fake generator returns; exactly one is right)
QA = {
    "What is 2 + 3?": ("5", [" 4", " 5", " 6"]),
    "What is 7 - 4?": ("3", [" 3", " 2", " 8"]),
    "What is 1 + 1?": ("2", [" 7", " 9", " 2"]),
    "What is 9 - 5?": ("4", [" 4", " 1", " 0"]),
}


CPU_TRAINING = dict(
    per_device_train_batch_size=2,
    bf16=False,
    activation_checkpointing=False,  # transformers 5: gradient_checkpointing is a deprecated alias
    learning_rate=1e-3,
    report_to=[],
    logging_steps=1,
    save_strategy="no",
    use_cpu=True,
)
"""Trainer settings shared by the SFT and DPO checks: tiny, CPU, no checkpoints, no trackers."""


def _text(question: str) -> str:
    return f"Q: {question}\nA:"


def _chat(question: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": question}]


class FakeGenerator:
    """Returns the known completions of each question, whatever the prompt form."""

    name = "fake"

    def generate(self, prompts, n, sampling):
        out = []
        for p in prompts:
            question = p if isinstance(p, str) else p[-1]["content"]
            question = question.removeprefix("Q: ").removesuffix("\nA:")
            texts = QA[question][1][:n]
            out.append([Completion(t, 1, "stop", generator=self.name) for t in texts])
        return out


def right_answer(prompt, completion, answer):
    return 1.0 if completion.strip() == answer else 0.0


def _export(round_dir: Path, chat: bool, strategy: str) -> tuple[Path, list[Prompt]]:
    prompts = []
    for question, (answer, _) in QA.items():
        value = _chat(question) if chat else _text(question)
        prompts.append(Prompt(prompt_id(value), value, {"answer": answer}))
    stages.generate(round_dir, GenerationConfig(n=3, shard_size=2), FakeGenerator, prompts=prompts)
    stages.score(round_dir, ScoringConfig(), as_scorer(right_answer))
    stages.select_completions(round_dir, SelectionConfig(strategy=strategy))
    info = stages.export_selected(round_dir)
    path = Path(info["path"])
    assert path == round_dir / "selected.jsonl" and path.exists()
    assert info["rows"] == len(QA)
    return path, prompts


def _load(path: Path):
    ds = datasets.load_dataset("json", data_files=str(path), split="train")
    assert len(ds) == len(QA)
    return ds


def _sft_trainer(tiny_lm: Path, ds, out: Path, steps: int = 3):
    tok = transformers.AutoTokenizer.from_pretrained(str(tiny_lm))
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_pretrained(str(tiny_lm))
    args = trl.SFTConfig(
        output_dir=str(out),
        max_steps=steps,
        **CPU_TRAINING,
        dataloader_num_workers=0,
        dataset_num_proc=None,
    )
    return trl.SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok), tok


def _train_and_check(trainer, steps: int = 3) -> list[float]:
    before = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}
    result = trainer.train()
    assert trainer.state.global_step == steps
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert len(losses) == steps
    assert all(math.isfinite(x) for x in losses), losses
    assert math.isfinite(result.training_loss)
    after = dict(trainer.model.named_parameters())
    changed = [k for k, v in before.items() if not torch.equal(v, after[k].detach())]
    assert changed, "no parameter changed after training"
    return losses


def test_text_rows_load_and_train_in_sft_trainer(tiny_lm, tmp_path):
    path, prompts = _export(tmp_path / "round-000", chat=False, strategy="best")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    expected = [{"prompt": _text(q), "completion": " " + a} for q, (a, _) in QA.items()]
    assert rows == expected  # the best completion per prompt, plain text, nothing else

    ds = _load(path)
    assert ds.column_names == ["prompt", "completion"]
    assert ds.to_list() == expected

    trainer, tok = _sft_trainer(tiny_lm, ds, tmp_path / "sft")

    # Completion-only loss: TRL 1.16 tokenizes prompt and prompt+completion, appends EOS to the
    # completion, and folds its completion_mask into `labels` (-100 on the prompt).
    train = trainer.train_dataset
    assert "input_ids" in train.column_names and "labels" in train.column_names
    assert "completion_mask" not in train.column_names
    for k, row in enumerate(expected):
        input_ids, labels = train[k]["input_ids"], train[k]["labels"]
        prompt_ids = tok(row["prompt"])["input_ids"]
        full_ids = tok(row["prompt"] + row["completion"] + tok.eos_token)["input_ids"]
        n_prompt = len(prompt_ids)
        assert input_ids == full_ids
        assert input_ids[:n_prompt] == prompt_ids
        assert input_ids[-1] == tok.eos_token_id  # EOS appended to the completion
        assert n_prompt < len(input_ids) - 1  # at least one completion token besides EOS
        assert labels[:n_prompt] == [-100] * n_prompt
        assert labels[n_prompt:] == input_ids[n_prompt:]
        assert tok.decode(input_ids[n_prompt:]) == row["completion"] + tok.eos_token

    # The collator keeps those labels and pads on the right with -100.
    batch = trainer.data_collator([train[0], train[1]])
    width = max(len(train[0]["input_ids"]), len(train[1]["input_ids"]))
    assert batch["input_ids"].shape == batch["labels"].shape == (2, width)
    for b in range(2):
        ids = train[b]["input_ids"]
        n_prompt = len(tok(expected[b]["prompt"])["input_ids"])
        assert batch["input_ids"][b, : len(ids)].tolist() == ids
        assert batch["attention_mask"][b].tolist() == [1] * len(ids) + [0] * (width - len(ids))
        got = batch["labels"][b].tolist()
        assert got[:n_prompt] == [-100] * n_prompt
        assert got[n_prompt : len(ids)] == ids[n_prompt:]
        assert got[len(ids) :] == [-100] * (width - len(ids))

    _train_and_check(trainer)


def test_chat_rows_load_and_train_in_sft_trainer(tiny_lm, tmp_path):
    path, _ = _export(tmp_path / "round-000", chat=True, strategy="best")
    expected = [
        {"prompt": _chat(q), "completion": [{"role": "assistant", "content": " " + a}]}
        for q, (a, _) in QA.items()
    ]
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert rows == expected

    ds = _load(path)
    assert ds.to_list() == expected
    assert trl.data_utils.is_conversational(ds[0])

    trainer, tok = _sft_trainer(tiny_lm, ds, tmp_path / "sft")
    # Conversational prompt-completion: the chat-templated prompt (with generation prompt) is masked.
    row, train = expected[0], trainer.train_dataset[0]
    prompt_ids = tok.apply_chat_template(
        row["prompt"], add_generation_prompt=True, tokenize=True, return_dict=True
    )["input_ids"]
    n_prompt = len(prompt_ids)
    assert train["input_ids"][:n_prompt] == prompt_ids
    assert train["labels"][:n_prompt] == [-100] * n_prompt
    assert train["labels"][n_prompt:] == train["input_ids"][n_prompt:]
    assert tok.decode(train["input_ids"][n_prompt:]).startswith(row["completion"][0]["content"])

    _train_and_check(trainer)


def test_preference_rows_load_and_train_in_dpo_trainer(tiny_lm, tmp_path):
    path, _ = _export(tmp_path / "round-000", chat=False, strategy="dpo_pairs")
    ds = _load(path)
    assert sorted(ds.column_names) == ["chosen", "prompt", "rejected"]
    by_prompt = {r["prompt"]: r for r in ds.to_list()}
    assert set(by_prompt) == {_text(q) for q in QA}
    for q, (answer, texts) in QA.items():
        r = by_prompt[_text(q)]
        assert isinstance(r["chosen"], str) and isinstance(r["rejected"], str)
        assert r["chosen"] == " " + answer
        assert r["rejected"] in texts and r["rejected"] != r["chosen"]

    tok = transformers.AutoTokenizer.from_pretrained(str(tiny_lm))
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_pretrained(str(tiny_lm))
    args = trl.DPOConfig(
        output_dir=str(tmp_path / "dpo"),
        max_steps=2,
        **CPU_TRAINING,
    )
    trainer = trl.DPOTrainer(model=model, args=args, train_dataset=ds, processing_class=tok)
    _train_and_check(trainer, steps=2)
