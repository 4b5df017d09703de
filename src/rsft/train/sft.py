"""The training stage: instruction-tune a model on a round's ``selected.jsonl`` with TRL's SFTTrainer.

Reads ``ROUND_DIR/selected.jsonl`` and writes ``ROUND_DIR/checkpoint/`` plus
``ROUND_DIR/train_log.jsonl`` (one line per logged optimizer step). Prompt/completion rows train on
the completion only (TRL masks the prompt and appends EOS); conversational rows go through the
tokenizer's chat template. Full fine-tuning or LoRA.

The checkpoint folder holds, besides ``rsft_train.json`` (what was trained, on what, how it went):

- LoRA with ``merge`` (the default): the merged full model and tokenizer at the top, so the folder
  loads with ``AutoModelForCausalLM.from_pretrained`` and serves as the next round's policy, and
  the adapter alone under ``adapter/`` (loadable with peft on the base model).
- LoRA without ``merge``: the adapter and tokenizer only (load with ``peft.AutoPeftModelForCausalLM``).
  Training from such a folder trains the same adapter further, so every round's policy is the
  original base plus one adapter (what the ``vllm`` backend serves as a ``LoRARequest`` on one
  engine), and no round writes a full copy of the model.
- Full fine-tuning: the full model and tokenizer.

Training happens in a temporary folder beside the checkpoint that is renamed into place at the
end, so a failed or interrupted run leaves the previous checkpoint (or none), never half of one.
Weights stay float32 (the master copy); the maths runs in bf16 autocast where
``train.mixed_precision`` says so (by default on a CUDA GPU with bf16, and on a CPU with native
bf16 for the embedded Qwen). torch, transformers, trl and peft are imported only inside functions.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rsft import artifacts
from rsft.config import SamplingConfig, TrainConfig
from rsft.config.checks import check_train
from rsft.errors import RsftError, one_line
from rsft.models import quiet_checkpointing_notices
from rsft.types import Prompt

ADAPTER = "adapter"
_REPORT_PACKAGES = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",), "mlflow": ("mlflow",)}


def read_selected(path: Path) -> tuple[list[dict[str, Any]], str]:
    """The rows of ``selected.jsonl`` and their format: ``prompt_completion``, ``conversational``,
    ``messages`` or ``text``. Raises :class:`RsftError` on a missing, empty or malformed file."""
    if not path.is_file():
        raise RsftError(f"{path}: missing (run `rsft export` on this round first)")
    rows, kinds = [], set()
    for line_no, raw in artifacts.read_jsonl(path):
        kind, row = _row_kind(raw, f"{path}:{line_no}")
        kinds.add(kind)
        rows.append(row)
    if not rows:
        raise RsftError(f"{path} is empty: no completion was kept; lower the selection threshold or raise N")
    if len(kinds) > 1:
        raise RsftError(f"{path}: rows mix formats ({', '.join(sorted(kinds))}); use one")
    return rows, kinds.pop()


def _row_kind(row: dict[str, Any], where: str) -> tuple[str, dict[str, Any]]:
    if "chosen" in row or "rejected" in row:
        raise RsftError(f"{where}: a preference pair (chosen/rejected) is DPO data; rsft train does SFT: "
                        "select with another strategy than dpo_pairs")
    if "prompt" in row and "completion" in row:
        prompt, completion = row["prompt"], row["completion"]
        if isinstance(prompt, str) and isinstance(completion, str):
            return "prompt_completion", {"prompt": prompt, "completion": completion}
        if _is_messages(prompt) and _is_messages(completion):
            return "conversational", {"prompt": prompt, "completion": completion}
        raise RsftError(f"{where}: 'prompt' and 'completion' must both be strings or both message lists")
    if "messages" in row and _is_messages(row["messages"]):
        return "messages", {"messages": row["messages"]}
    if isinstance(row.get("text"), str):
        return "text", {"text": row["text"]}
    raise RsftError(f"{where}: expected 'prompt' and 'completion' (or 'messages', or 'text'); got keys "
                    f"{', '.join(map(repr, row)) or 'none'}")


def _is_messages(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and "content" in m for m in value)


def check_config(config: TrainConfig) -> None:
    """Reject values that would fail deep inside the trainer, naming the field (``check_train``), and a
    ``report_to`` whose library is not installed."""
    check_train(config)
    packages = _REPORT_PACKAGES.get(config.report_to, ())
    if packages and not any(importlib.util.find_spec(p) for p in packages):
        raise RsftError(f"train.report_to {config.report_to!r} needs the {packages[0]} package: "
                        f"pip install {packages[0]}")


def train(round_dir: Path, config: TrainConfig, base_model: str, out_dir: Path | None = None) -> dict[str, Any]:
    """Fine-tune ``base_model`` on ``round_dir/selected.jsonl``; save to ``out_dir`` (default
    ``round_dir/checkpoint``) and log to ``round_dir/train_log.jsonl``.

    ``base_model`` is a model folder, a locally cached hub id, or ``gemma3-270m`` (the embedded
    default). Returns ``{"checkpoint", "rows", "steps", "final_loss", "tail_loss", "wall_s", ...}``.
    """
    started = time.time()
    round_dir = Path(round_dir)
    out_dir = Path(out_dir) if out_dir is not None else round_dir / artifacts.CHECKPOINT
    data_path = round_dir / artifacts.SELECTED
    rows, data_format = read_selected(data_path)
    data = {"path": str(data_path), "sha256": artifacts.file_sha256(data_path), "rows": len(rows),
            "format": data_format}
    check_config(config)
    try:
        import datasets

        datasets.disable_progress_bars()  # its per-map bars; rsft shows training progress itself
        import torch
        import trl  # noqa: F401
        if config.lora:
            import peft  # noqa: F401
    except ImportError as e:
        raise RsftError(f"training needs the 'train' extra: pip install 'rsft[train]' ({e})") from e

    model, tokenizer, model_path = _load_base(base_model)
    if data_format in ("conversational", "messages") and not tokenizer.chat_template:
        raise RsftError(f"{data_path}: chat rows need a tokenizer with a chat template; {base_model!r} has none "
                        "(use plain-text prompts with a base model)")
    cuda = torch.cuda.is_available()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        work.chmod(0o755)
        with quiet_checkpointing_notices():
            bf16 = use_bf16(config, base_model, cuda)
            trainer = _build_trainer(model, tokenizer, datasets.Dataset.from_list(rows), config, work, cuda, bf16)
            log = _attach_logger(trainer, work / artifacts.TRAIN_LOG)
            train_started = time.time()
            result = trainer.train()
        train_s = time.time() - train_started
        staged = work / artifacts.CHECKPOINT
        _save(trainer.model, tokenizer, staged, config)
        info = _train_info(base_model, model_path, data, config, trainer, result, log.records, cuda, bf16)
        info["train_s"], info["wall_s"] = round(train_s, 3), round(time.time() - started, 3)
        artifacts.write_json(staged / artifacts.TRAIN_INFO, info)
        os.replace(work / artifacts.TRAIN_LOG, round_dir / artifacts.TRAIN_LOG)
        if (work / "trainer" / "runs").is_dir():
            _swap_in(work / "trainer" / "runs", round_dir / "tensorboard")
        _swap_in(staged, out_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    _record_manifest(round_dir, out_dir, base_model, config, info, started)
    return {"checkpoint": str(out_dir), "rows": info["rows"], "steps": info["steps"],
            "final_loss": info["final_loss"], "tail_loss": info["tail_loss"], "train_s": info["train_s"],
            "wall_s": info["wall_s"], "log": str(round_dir / artifacts.TRAIN_LOG)}


def _train_info(base_model: str, model_path: str, data: dict[str, Any], config: TrainConfig, trainer: Any,
                result: Any, records: list[dict[str, Any]], cuda: bool, bf16: bool) -> dict[str, Any]:
    """The contents of ``rsft_train.json`` (the caller adds ``train_s`` and ``wall_s``)."""
    return {
        "base_model": base_model,
        "base_model_path": model_path,
        "data": data,
        "rows": data["rows"],
        "steps": trainer.state.global_step,
        "epochs_done": trainer.state.epoch,
        "final_loss": records[-1]["loss"] if records else None,
        "tail_loss": _tail_mean([r["loss"] for r in records]),
        "train_loss": result.training_loss,
        "dtype": "float32",
        **_run_info(config, cuda, bf16),
    }


def _load_base(base_model: str) -> tuple[Any, Any, str]:
    """The base model in float32 and its tokenizer (with a pad token), via rsft.models."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rsft.models import adapter_base, ensure_pad_token, resolve_model_path

    path = resolve_model_path(base_model)
    base_path = adapter_base(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(base_path or path, dtype=torch.float32)
        if base_path is not None:  # a LoRA policy (train.merge: false): train the same adapter further
            from peft import PeftModel

            with quiet_checkpointing_notices():
                model = PeftModel.from_pretrained(model, path, is_trainable=True)
    except Exception as e:  # any failure becomes one line for the user
        raise RsftError(f"model {base_model!r}: cannot load: {one_line(e)}") from e
    ensure_pad_token(tokenizer, f"model {base_model!r}")
    return model, tokenizer, path


def use_bf16(config: TrainConfig, base_model: str, cuda: bool) -> bool:
    """Whether training runs in bf16 autocast: ``train.mixed_precision``, with ``auto`` following
    what ``dtype: auto`` picks for the model on this device (rsft.models.auto_dtype)."""
    if config.mixed_precision != "auto":
        return config.mixed_precision == "bf16"
    from rsft.models import auto_dtype

    return auto_dtype(base_model, "cuda" if cuda else "cpu") == "bfloat16"


def _build_trainer(model: Any, tokenizer: Any, dataset: Any, config: TrainConfig, work: Path, cuda: bool,
                   bf16: bool) -> Any:
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(
        output_dir=str(work / "trainer"),
        num_train_epochs=config.epochs,
        max_steps=config.max_steps or -1,
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum,
        learning_rate=config.learning_rate,
        max_length=config.max_length,
        bf16=bf16,
        **checkpointing_argument(SFTConfig, config.activation_checkpointing),
        use_cpu=not cuda,
        logging_steps=config.logging_steps,
        save_strategy="no",
        report_to=[] if config.report_to == "none" else [config.report_to],
        seed=config.seed,
        data_seed=config.seed,
        dataloader_num_workers=0,
        dataset_num_proc=None,
    )
    try:
        trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                             peft_config=_lora_config(config, model))
    except ValueError as e:
        raise RsftError(f"cannot set up training: {e}") from e
    _quiet(trainer)
    return trainer


def _lora_config(config: TrainConfig, model: Any) -> Any:
    """peft's LoraConfig for ``train.lora``; None for full fine-tuning or a LoRA policy (it carries its adapter)."""
    if not config.lora or _is_peft(model):
        return None
    from peft import LoraConfig

    return LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=config.lora_target_modules, task_type="CAUSAL_LM")


def _quiet(trainer: Any) -> None:
    """Progress goes to stderr through rsft's bar; stdout stays for the command's JSON summary."""
    from transformers import PrinterCallback, ProgressCallback

    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)


def checkpointing_argument(args_class: Any, enabled: bool) -> dict[str, bool]:
    """The training-arguments keyword for activation checkpointing: ``activation_checkpointing`` in
    transformers' newer releases, ``gradient_checkpointing`` before (vLLM 0.32 pins transformers < 5.20)."""
    names = {f.name for f in dataclasses.fields(args_class)}
    return {"activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing": enabled}


def _attach_logger(trainer: Any, path: Path, extra: tuple[str, ...] = ()) -> Any:
    """A callback that appends each logged step to ``path`` (flushed, so it can be tailed live); the
    trainer's logged values named in ``extra`` (e.g. GRPO's ``reward``) are kept beside the loss."""
    from transformers import TrainerCallback

    from rsft.progress import progress

    class LossLog(TrainerCallback):
        def __init__(self) -> None:
            self.records: list[dict[str, Any]] = []
            self.bar: Any = None
            self.started = time.time()

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.started = time.time()
            self.bar = progress(state.max_steps, "train", unit="step")

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.bar.update(1)

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None,
                   **kwargs: Any) -> None:
            if not logs or "loss" not in logs:
                return
            record = {"step": state.global_step, "loss": float(logs["loss"]),
                      "learning_rate": logs.get("learning_rate"), "epoch": logs.get("epoch"),
                      "grad_norm": _float_or_none(logs.get("grad_norm")),
                      "elapsed_s": round(time.time() - self.started, 3)}
            record.update({key: _float_or_none(logs.get(key)) for key in extra if key in logs})
            self.records.append(record)
            with open(path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
            self.bar.set_postfix(loss=f"{record['loss']:.4f}")

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.bar.close()

    path.touch()
    logger = LossLog()
    trainer.add_callback(logger)
    return logger


def peak_rss_mb() -> float | None:
    """This process's peak resident memory so far (VmHWM), in MB; None where /proc is missing."""
    try:
        with open("/proc/self/status", encoding="utf-8") as f:
            line = next((x for x in f if x.startswith("VmHWM:")), None)
    except OSError:
        return None
    return round(int(line.split()[1]) / 1024, 1) if line else None


def _float_or_none(value: Any) -> float | None:
    return None if value is None else float(value)


def _tail_mean(losses: list[float]) -> float | None:
    """Mean of the last 10% of the logged losses (at least one): less noisy than the last one."""
    if not losses:
        return None
    k = max(1, math.ceil(0.1 * len(losses)))
    return sum(losses[-k:]) / k


def _save(model: Any, tokenizer: Any, target: Path, config: TrainConfig) -> None:
    """Write the adapter and/or full model and the tokenizer to ``target``."""
    target.mkdir()
    if _is_peft(model):
        adapter_dir = target / ADAPTER if config.merge else target
        model.save_pretrained(str(adapter_dir))
        (adapter_dir / "README.md").unlink(missing_ok=True)  # peft's model-card stub
        if config.merge:
            model = model.merge_and_unload()
    if not _is_peft(model):
        model.config.use_cache = True  # the trainer turns the KV cache off; generation wants it
        model.save_pretrained(str(target))
    tokenizer.save_pretrained(str(target))


def _is_peft(model: Any) -> bool:
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)


def _swap_in(new: Path, target: Path) -> None:
    """Rename ``new`` onto ``target``, replacing an existing folder."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
    os.replace(new, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _lora_info(config: TrainConfig) -> dict[str, Any] | None:
    if not config.lora:
        return None
    return {"r": config.lora_r, "alpha": config.lora_alpha, "dropout": config.lora_dropout,
            "target_modules": config.lora_target_modules}


def _versions() -> dict[str, str]:
    from importlib import metadata

    versions = artifacts.package_versions()
    for name in ("peft", "accelerate", "datasets"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def _record_manifest(round_dir: Path, out_dir: Path, base_model: str, config: TrainConfig,
                     info: dict[str, Any], started: float) -> None:
    """Add the ``train`` entry to the round's manifest (when the checkpoint lives in the round)."""
    try:
        info_name = str((out_dir / artifacts.TRAIN_INFO).relative_to(round_dir))
    except ValueError:
        return
    artifacts.record_stage(round_dir, "train", config={"base_model": base_model, **dataclasses.asdict(config)},
                           inputs=[artifacts.SELECTED], outputs=[artifacts.TRAIN_LOG, info_name],
                           started=started, counts={"rows": info["rows"], "steps": info["steps"]},
                           extra={"final_loss": info["final_loss"], "tail_loss": info["tail_loss"]})


# --- GRPO ----------------------------------------------------------------------------------------

GRPO_LOGGED = ("reward", "reward_std", "completions/mean_length", "completions/clipped_ratio", "kl", "entropy")
"""Values of GRPOTrainer's log kept in ``train_log.jsonl`` beside the loss."""


GRPO_SAMPLERS = ("rsft", "trl")
"""What samples GRPO's completions: ``rsft`` (rsft's decoding loop on the policy being trained, through
TRL's ``rollout_func``; about 4x faster on a CPU) or ``trl`` (TRL's own ``model.generate``)."""


def grpo_key(prompts: Sequence[Prompt], scorer: str, config: TrainConfig, sampling: SamplingConfig,
             num_generations: int, base_model: str, generation_batch: int | None = None, sampler: str = "rsft") -> str:
    """What a GRPO checkpoint was trained from and how: equal keys mean the checkpoint can be reused."""
    return artifacts.config_hash({"base_model": base_model, "scorer": scorer, "train": dataclasses.asdict(config),
                                  "sampling": dataclasses.asdict(sampling), "num_generations": num_generations,
                                  "generation_batch": generation_batch, "sampler": sampler,
                                  "prompts": [p.prompt_id for p in prompts]})


def train_grpo(out_dir: Path, prompts: Sequence[Prompt], scorer: str, config: TrainConfig, sampling: SamplingConfig,
               num_generations: int, base_model: str, generation_batch: int | None = None,
               sampler: str = "rsft") -> dict[str, Any]:
    """GRPO with TRL's ``GRPOTrainer``: ``base_model`` samples ``num_generations`` completions per
    prompt with ``sampling`` (temperature, top-k, top-p, ``max_new_tokens``), the rsft ``scorer``
    (a spec such as ``math``) is the reward, and ``config`` gives the rest as for SFT (LoRA, learning
    rate, batch and accumulation, epochs over the prompts, precision, activation checkpointing,
    seed); everything else is TRL's default (no KL penalty, the ``dapo`` loss, group-scaled
    advantages). ``batch_size`` and ``grad_accum`` count completions. ``generation_batch``
    completions are sampled at once and feed ``generation_batch / (batch_size * grad_accum)``
    optimizer steps (PPO-style, TRL's clipped importance ratio); by default one step, fully
    on-policy. On a CPU, sampling 8 rows at a time wastes most of the decoding: a larger batch is
    several times faster. ``sampler`` picks what samples (:data:`GRPO_SAMPLERS`); either way the
    completions come from the policy as it is at that step, so the training is TRL's unchanged.

    Writes ``out_dir/checkpoint`` (with ``rsft_train.json``: steps, samples, completion tokens, the
    reward per step) and ``out_dir/train_log.jsonl`` atomically, like :func:`train`. An intact
    checkpoint trained with the same key (:func:`grpo_key`) is reused."""
    started = time.time()
    out_dir = Path(out_dir)
    checkpoint = out_dir / artifacts.CHECKPOINT
    if sampler not in GRPO_SAMPLERS:
        raise RsftError(f"grpo: sampler must be one of {', '.join(GRPO_SAMPLERS)}, got {sampler!r}")
    key = grpo_key(prompts, scorer, config, sampling, num_generations, base_model, generation_batch, sampler)
    reused = artifacts.read_if_key(checkpoint / artifacts.TRAIN_INFO, key)
    if reused is not None:
        return reused
    check_config(config)
    generation_batch = _grpo_generation_batch(config, sampling, num_generations, generation_batch)
    try:
        import datasets
        import torch
        from trl import GRPOConfig, GRPOTrainer
    except ImportError as e:
        raise RsftError(f"GRPO needs the 'train' extra: pip install 'rsft[train]' ({e})") from e
    from rsft.config.schema import sampling_of
    from rsft.train.grpo import RsftRollout, as_grpo_reward, grpo_rows

    datasets.disable_progress_bars()
    reward, counts = _counted(as_grpo_reward(scorer))
    model, tokenizer, model_path = _load_base(base_model)
    cuda = torch.cuda.is_available()
    bf16 = use_bf16(config, base_model, cuda)
    if bf16 and not cuda:
        _freeze_in_bf16(model, torch)
    args = _grpo_args(GRPOConfig, out_dir, config, sampling, num_generations, generation_batch, bf16, cuda)
    rollout = (RsftRollout(tokenizer, sampling_of(sampling), batch_size=generation_batch // num_generations)
               if sampler == "rsft" else None)
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{checkpoint.name}.tmp-", dir=out_dir))
    try:
        with quiet_checkpointing_notices(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*'rollout_func'.*experimental.*", category=UserWarning)
            trainer = GRPOTrainer(model=model, reward_funcs=reward, args=args,
                                  train_dataset=datasets.Dataset.from_list(grpo_rows(list(prompts))),
                                  processing_class=tokenizer, peft_config=_lora_config(config, model),
                                  rollout_func=rollout)
            _quiet(trainer)
            log = _attach_logger(trainer, work / artifacts.TRAIN_LOG, extra=GRPO_LOGGED)
            train_started = time.time()
            result = trainer.train()
        train_s = time.time() - train_started
        staged = work / artifacts.CHECKPOINT
        _save(trainer.model, tokenizer, staged, config)
        rewards = [r["reward"] for r in log.records if r.get("reward") is not None]
        info = {"method": "grpo", "key": key, "base_model": base_model, "base_model_path": model_path,
                "rows": len(prompts), "num_generations": num_generations, "generation_batch": generation_batch,
                "sampler": sampler, "sampling_s": round(rollout.wall_s, 3) if rollout else None,
                **counts, "steps": trainer.state.global_step, "train_loss": result.training_loss,
                **_reward_summary(rewards), "loss_type": args.loss_type, "beta": args.beta,
                "sampling": dataclasses.asdict(sampling), **_run_info(config, cuda, bf16),
                "train_s": round(train_s, 3), "wall_s": round(time.time() - started, 3)}
        artifacts.write_json(staged / artifacts.TRAIN_INFO, info)
        os.replace(work / artifacts.TRAIN_LOG, out_dir / artifacts.TRAIN_LOG)
        _swap_in(staged, checkpoint)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(out_dir / ".grpo-trainer", ignore_errors=True)
    return info


def _grpo_args(grpo_config: type, out_dir: Path, config: TrainConfig, sampling: SamplingConfig, num_generations: int,
               generation_batch: int, bf16: bool, cuda: bool) -> Any:
    """TRL's ``GRPOConfig`` for rsft's train and sampling settings; TRL's defaults for everything else."""
    return grpo_config(
        output_dir=str(out_dir / ".grpo-trainer"), num_train_epochs=config.epochs, max_steps=config.max_steps or -1,
        per_device_train_batch_size=config.batch_size, gradient_accumulation_steps=config.grad_accum,
        generation_batch_size=generation_batch, num_generations=num_generations,
        max_completion_length=sampling.max_new_tokens, temperature=sampling.temperature, top_k=sampling.top_k,
        top_p=sampling.top_p, learning_rate=config.learning_rate, bf16=bf16, use_cpu=not cuda,
        **checkpointing_argument(grpo_config, config.activation_checkpointing), logging_steps=1, save_strategy="no",
        report_to=[], seed=config.seed, data_seed=config.seed, dataloader_num_workers=0)


def _reward_summary(rewards: list[float]) -> dict[str, float | None]:
    """The mean reward of the first and last logged GRPO steps, and over all of them."""
    return {"reward_first": rewards[0] if rewards else None, "reward_last": rewards[-1] if rewards else None,
            "reward_mean": sum(rewards) / len(rewards) if rewards else None}


def _run_info(config: TrainConfig, cuda: bool, bf16: bool) -> dict[str, Any]:
    """How a training run (SFT or GRPO) trained: epochs, LoRA, device, precision, memory, the config and
    the library versions."""
    return {"epochs": config.epochs, "lora": _lora_info(config), "merged": bool(config.lora and config.merge),
            "device": "cuda" if cuda else "cpu", "mixed_precision": "bf16" if bf16 else "no",
            "peak_rss_mb": peak_rss_mb(), "config": dataclasses.asdict(config), "versions": _versions()}


def _grpo_generation_batch(config: TrainConfig, sampling: SamplingConfig, num_generations: int,
                           generation_batch: int | None) -> int:
    """The checked generation batch (default: one optimizer step's completions, a multiple of the group)."""
    if sampling.temperature <= 0 or num_generations < 2:
        raise RsftError("grpo: needs sampling (temperature > 0) and at least 2 generations per prompt to compare")
    if sampling.stop:
        raise RsftError("grpo: stop strings are not supported; the completion ends at EOS or max_new_tokens")
    per_step = config.batch_size * config.grad_accum
    batch = generation_batch or math.lcm(per_step, num_generations)
    if batch % per_step or batch % num_generations:
        raise RsftError(f"grpo: the generation batch ({batch}) must be a multiple of the completions per "
                        f"optimizer step ({per_step}) and of the generations per prompt ({num_generations})")
    return batch


def _counted(reward: Any) -> tuple[Any, dict[str, int]]:
    """``reward`` wrapped to count the completions it scores and their tokens (TRL passes their ids)."""
    counts = {"samples": 0, "completion_tokens": 0}

    def counted(prompts: Any, completions: Any, **kwargs: Any) -> list[float | None]:
        counts["samples"] += len(completions)
        counts["completion_tokens"] += sum(len(ids) for ids in kwargs.get("completion_ids") or [])
        return reward(prompts, completions, **kwargs)

    counted.__name__ = reward.__name__  # TRL logs rewards/<__name__>/mean
    return counted, counts


def _freeze_in_bf16(model: Any, torch: Any) -> None:
    """The frozen weights in bf16, the trained ones (a LoRA policy's adapter) in float32. TRL samples
    with the training model, and on a CPU bf16 decodes about twice as fast as float32 (their matmuls
    run in bf16 under autocast anyway)."""
    model.to(torch.bfloat16)
    for param in model.parameters():
        if param.requires_grad:
            param.data = param.data.float()
