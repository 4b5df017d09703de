"""The training stage on the tiny random Llama: files written, numbers logged, loss going down.

Each run is a handful of optimizer steps over 8 rows (a few seconds on CPU). The loss check is
ours, not the trainer's: the summed log-probability of the training completions under the saved
checkpoint is compared with the base model's.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from pathlib import Path

import pytest

from rsft.cli import stages as stages_cli
from rsft.cli.options import apply_flags
from rsft.config import RunConfig, from_dict
from rsft.errors import RsftError
from rsft.train import sft as train_mod
from rsft.train.logprobs import sequence_logprobs
from rsft.train.sft import TrainConfig, train

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")
pytest.importorskip("trl")

TEXT_ROWS = [{"prompt": f"Q: What is {a} + {b}?\nA:", "completion": f" {a + b}"}
             for a, b in [(2, 3), (1, 1), (4, 5), (3, 3), (7, 2), (0, 6), (5, 1), (2, 2)]]
CHAT_ROWS = [{"prompt": [{"role": "user", "content": r["prompt"]}],
              "completion": [{"role": "assistant", "content": r["completion"]}]} for r in TEXT_ROWS]
TOKENIZER_FILES = {"chat_template.jinja", "tokenizer.json", "tokenizer_config.json"}
MODEL_FILES = {"config.json", "generation_config.json", "model.safetensors"}
ADAPTER_FILES = {"adapter_config.json", "adapter_model.safetensors"}
INFO_KEYS = {"base_model", "base_model_path", "data", "rows", "steps", "epochs", "epochs_done", "final_loss",
             "tail_loss", "train_loss", "train_s", "wall_s", "lora", "merged", "device", "dtype",
             "mixed_precision", "peak_rss_mb", "config", "versions"}
# 8 rows, batch 4, 2 epochs: 4 optimizer steps per run.
FAST = {"batch_size": 4, "epochs": 2.0, "max_length": 64}


def _round(tmp_path: Path, rows: list[dict], name: str = "round-000") -> Path:
    round_dir = tmp_path / name
    round_dir.mkdir()
    (round_dir / "selected.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return round_dir


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def _log(round_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (round_dir / "train_log.jsonl").read_text().splitlines()]


def _completion_logprob(model_dir: Path, rows: list[dict]) -> float:
    tok = transformers.AutoTokenizer.from_pretrained(str(model_dir))
    model = transformers.AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    return sum(sequence_logprobs(model, tok, [r["prompt"] for r in rows], [r["completion"] for r in rows]))


def _check_info_and_log(round_dir: Path, info: dict, summary: dict, steps: int) -> None:
    assert set(info) == INFO_KEYS
    assert info["steps"] == summary["steps"] == steps
    assert info["rows"] == info["data"]["rows"] == 8
    from rsft.artifacts import file_sha256

    assert info["data"]["sha256"] == file_sha256(round_dir / "selected.jsonl")
    assert info["device"] == "cpu" and info["dtype"] == "float32" and info["mixed_precision"] == "no"
    assert {"trl", "transformers", "torch", "peft"} <= set(info["versions"])
    assert math.isfinite(info["final_loss"]) and math.isfinite(info["tail_loss"])
    assert info["wall_s"] >= info["train_s"] > 0
    log = _log(round_dir)
    assert [r["step"] for r in log] == list(range(1, steps + 1))  # logging_steps=1: one line per step
    assert all(set(r) == {"step", "loss", "learning_rate", "epoch", "grad_norm", "elapsed_s"} for r in log)
    assert all(math.isfinite(r["loss"]) for r in log)
    assert log[-1]["loss"] == info["final_loss"] == summary["final_loss"]
    assert log[-1]["epoch"] == pytest.approx(info["epochs_done"])
    assert info["tail_loss"] == log[-1]["loss"]  # 10% of 4 steps rounds up to the last one
    assert log[0]["learning_rate"] == pytest.approx(info["config"]["learning_rate"])
    assert set(p.name for p in round_dir.iterdir()) == {"selected.jsonl", "checkpoint", "train_log.jsonl",
                                                         "manifest.json"}  # no temp folders left
    entry = json.loads((round_dir / "manifest.json").read_text())["stages"]["train"]
    assert entry["counts"] == {"rows": 8, "steps": steps}


def test_lora_merged_checkpoint(tiny_lm, tmp_path):
    round_dir = _round(tmp_path, TEXT_ROWS)
    config = TrainConfig(lora=True, lora_r=8, lora_alpha=16, learning_rate=2e-2, **FAST)
    summary = train(round_dir, config, str(tiny_lm))

    ckpt = round_dir / "checkpoint"
    assert summary["checkpoint"] == str(ckpt)
    assert _files(ckpt) == MODEL_FILES | TOKENIZER_FILES | {"rsft_train.json"} | {
        f"adapter/{f}" for f in ADAPTER_FILES}
    info = json.loads((ckpt / "rsft_train.json").read_text())
    _check_info_and_log(round_dir, info, summary, steps=4)
    assert info["base_model"] == str(tiny_lm) and info["merged"] is True
    assert info["lora"] == {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": "all-linear"}
    assert info["config"] == {**TrainConfig().__dict__, **config.__dict__}

    assert _completion_logprob(ckpt, TEXT_ROWS) > _completion_logprob(tiny_lm, TEXT_ROWS) + 1.0

    # The merged folder is a plain checkpoint: rsft's loader takes it and it generates.
    from rsft.models import load_causal_lm

    model, tok = load_causal_lm(str(ckpt), device="cpu")
    assert model.config.use_cache is True
    ids = tok(["Q: What is 2 + 3?\nA:"], return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=4, do_sample=False)
    assert out.shape[1] > ids["input_ids"].shape[1]

    # The adapter on the base model gives the merged model's logits.
    base = transformers.AutoModelForCausalLM.from_pretrained(str(tiny_lm), dtype=torch.float32)
    adapted = peft.PeftModel.from_pretrained(base, str(ckpt / "adapter")).eval()
    with torch.no_grad():
        want = model(**ids).logits
        got = adapted(**ids).logits
    assert torch.allclose(got, want, atol=1e-4)


def test_full_finetune_checkpoint(tiny_lm, tmp_path):
    round_dir = _round(tmp_path, TEXT_ROWS)
    summary = train(round_dir, TrainConfig(lora=False, learning_rate=5e-3, **FAST), str(tiny_lm))
    ckpt = round_dir / "checkpoint"
    assert _files(ckpt) == MODEL_FILES | TOKENIZER_FILES | {"rsft_train.json"}
    info = json.loads((ckpt / "rsft_train.json").read_text())
    _check_info_and_log(round_dir, info, summary, steps=4)
    assert info["lora"] is None and info["merged"] is False
    assert _completion_logprob(ckpt, TEXT_ROWS) > _completion_logprob(tiny_lm, TEXT_ROWS) + 1.0


def test_lora_without_merge_saves_the_adapter_only(tiny_lm, tmp_path):
    round_dir = _round(tmp_path, TEXT_ROWS)
    train(round_dir, TrainConfig(lora=True, merge=False, lora_r=4, learning_rate=2e-2, max_steps=2,
                                 **FAST), str(tiny_lm))
    ckpt = round_dir / "checkpoint"
    assert _files(ckpt) == ADAPTER_FILES | TOKENIZER_FILES | {"rsft_train.json"}
    assert len(_log(round_dir)) == 2  # max_steps wins over epochs
    model = peft.AutoPeftModelForCausalLM.from_pretrained(str(ckpt)).eval()
    base = transformers.AutoModelForCausalLM.from_pretrained(str(tiny_lm)).eval()
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        assert not torch.allclose(model(input_ids=ids).logits, base(input_ids=ids).logits)


def test_conversational_rows_train(tiny_lm, tmp_path):
    round_dir = _round(tmp_path, CHAT_ROWS)
    summary = train(round_dir, TrainConfig(lora=True, learning_rate=2e-2, **FAST), str(tiny_lm))
    info = json.loads((round_dir / "checkpoint" / "rsft_train.json").read_text())
    _check_info_and_log(round_dir, info, summary, steps=4)
    assert info["data"]["format"] == "conversational"
    transformers.AutoModelForCausalLM.from_pretrained(str(round_dir / "checkpoint"))


def test_chat_rows_need_a_chat_template(tiny_lm_no_template, tmp_path):
    round_dir = _round(tmp_path, CHAT_ROWS)
    with pytest.raises(RsftError, match="chat rows need a tokenizer with a chat template"):
        train(round_dir, TrainConfig(**FAST), str(tiny_lm_no_template))
    assert set(p.name for p in round_dir.iterdir()) == {"selected.jsonl"}


@pytest.mark.parametrize("content, message", [
    ("", "selected.jsonl is empty: no completion was kept; lower the selection threshold or raise N"),
    ("\n\n", "selected.jsonl is empty: no completion was kept"),
    (None, "selected.jsonl: missing"),
    ('{"prompt": "a", "completion": "b"}\n{"prompt": "a",\n', "selected.jsonl:2: malformed JSON"),
    ('{"prompt": "a", "chosen": "b", "rejected": "c"}\n', "selected.jsonl:1: a preference pair"),
    ('{"prompt": "a", "completion": [{"role": "assistant", "content": "b"}]}\n', "must both be strings"),
    ('{"question": "a"}\n', "expected 'prompt' and 'completion'"),
    ('{"prompt": "a", "completion": "b"}\n{"text": "c"}\n', "rows mix formats"),
])
def test_bad_selected_file_fails_clearly_and_writes_nothing(tiny_lm, tmp_path, content, message):
    round_dir = tmp_path / "round-000"
    round_dir.mkdir()
    if content is not None:
        (round_dir / "selected.jsonl").write_text(content)
    with pytest.raises(RsftError, match=message.replace("(", r"\(")):
        train(round_dir, TrainConfig(), str(tiny_lm))
    assert set(p.name for p in round_dir.iterdir()) <= {"selected.jsonl"}


def test_bad_config_values_are_named():
    for bad, field in [({"learning_rate": 0.0}, "learning_rate"), ({"lora_r": 0}, "lora_r"),
                       ({"batch_size": 0}, "batch_size"), ({"report_to": "neptune"}, "report_to"),
                       ({"lora_dropout": 1.0}, "lora_dropout"), ({"max_steps": 0}, "max_steps")]:
        with pytest.raises(RsftError, match=f"train.{field}"):
            train_mod.check_config(TrainConfig(**bad))
    train_mod.check_config(TrainConfig(lora=False, lora_r=0))  # LoRA fields don't matter without LoRA


def test_config_from_yaml_mapping_and_flags():
    config = from_dict(TrainConfig, {"lora": False, "learning_rate": 1e-5, "epochs": 3,
                                     "lora_target_modules": ["q_proj", "v_proj"]}, "train")
    assert config == TrainConfig(lora=False, learning_rate=1e-5, epochs=3.0,
                                 lora_target_modules=["q_proj", "v_proj"])
    with pytest.raises(RsftError, match="did you mean 'epochs'"):
        from_dict(TrainConfig, {"epoch": 2}, "train")

    parser = argparse.ArgumentParser()
    stages_cli.add_train_arguments(parser)
    args = parser.parse_args(["runs/x/round-000", "--no-lora", "--lr", "3e-5", "--batch-size", "2"])
    applied = apply_flags(args, RunConfig(train=config))
    assert args.round_dir == Path("runs/x/round-000")
    assert applied.generation.generator.model == RunConfig().generation.generator.model  # no --model given
    assert applied.train == TrainConfig(lora=False, learning_rate=3e-5, epochs=3.0,
                                        batch_size=2, lora_target_modules=["q_proj", "v_proj"])
    assert apply_flags(parser.parse_args(["r"]), RunConfig()).train == TrainConfig()
    assert "LoRA rank" in parser.format_help()
    given = parser.parse_args(["r", "--merge", "--report-to", "tensorboard"])
    assert apply_flags(given, RunConfig(train=TrainConfig(merge=False))).train.merge is True


def test_cli_main_trains_and_a_failed_retrain_keeps_the_checkpoint(tiny_lm, tmp_path, capsys, monkeypatch):
    round_dir = _round(tmp_path, TEXT_ROWS)
    parser = argparse.ArgumentParser()
    stages_cli.add_train_arguments(parser)
    args = parser.parse_args([str(round_dir), "--model", str(tiny_lm), "--no-lora", "--epochs", "1",
                              "--batch-size", "4", "--grad-accum", "2", "--lr", "1e-3", "--max-length", "64",
                              "--seed", "3"])
    stages_cli.cmd_train(args)
    out, err = capsys.readouterr()
    summary = json.loads(out)  # stdout is the JSON summary and nothing else
    assert err.startswith(f"rsft: no --config and no {tmp_path / 'config.yaml'}: training {tiny_lm} with the "
                          "default train settings and the flags given\n")
    assert summary["steps"] == 1 and summary["rows"] == 8  # 8 rows / (4 x 2 accumulated)
    info = json.loads((round_dir / "checkpoint" / "rsft_train.json").read_text())
    assert info["config"]["grad_accum"] == 2 and info["config"]["seed"] == 3 and info["lora"] is None

    def broken_save(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(train_mod, "_save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        stages_cli.cmd_train(parser.parse_args([str(round_dir), "--model", str(tiny_lm), "--max-steps", "1"]))
    assert json.loads((round_dir / "checkpoint" / "rsft_train.json").read_text()) == info
    assert set(p.name for p in round_dir.iterdir()) == {"selected.jsonl", "checkpoint", "train_log.jsonl",
                                                         "manifest.json"}


def test_cli_train_without_config_reads_the_runs_config_yaml(tiny_lm, tmp_path, capsys):
    from rsft.config import GenerationConfig, GeneratorConfig, dump_config

    run = tmp_path / "runs" / "r"  # as rsft run leaves it: config.yaml beside the round folders
    run.mkdir(parents=True)
    round_dir = _round(run, TEXT_ROWS)
    config = RunConfig(generation=GenerationConfig(generator=GeneratorConfig(model=str(tiny_lm))),
                       train=TrainConfig(lora=False, learning_rate=1e-3, epochs=1.0, batch_size=8, max_length=64))
    (run / "config.yaml").write_text(dump_config(config))
    parser = argparse.ArgumentParser()
    stages_cli.add_train_arguments(parser)
    stages_cli.cmd_train(parser.parse_args([str(round_dir), "--seed", "5"]))  # a flag still overrides it
    out, err = capsys.readouterr()
    assert "rsft: no " not in err and json.loads(out)["steps"] == 1  # 8 rows, batch 8, 1 epoch
    info = json.loads((round_dir / "checkpoint" / "rsft_train.json").read_text())
    assert info["base_model"] == str(tiny_lm) and info["lora"] is None  # the run's model, full fine-tuning
    assert info["config"] == {**dataclasses.asdict(config.train), "seed": 5}


def test_missing_tracker_package_is_named(monkeypatch):
    monkeypatch.setattr(train_mod.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(RsftError, match="report_to 'tensorboard' needs the tensorboard package"):
        train_mod.check_config(TrainConfig(report_to="tensorboard"))
