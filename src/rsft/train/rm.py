"""``rsft rm-train``: a reward model from preference pairs with TRL's ``RewardTrainer``.

For a user without an RM: pairs from a file, or built from a round's checker verdicts (see
``rsft.rounds.rm_check``), train a sequence classifier with one output (Bradley-Terry loss,
``-log sigmoid(r_chosen - r_rejected)``). Every pair is tokenized exactly as the ``rm:PATH`` scorer
reads a pair (``rsft.score.reward_model.encode_pairs``: the tokenizer's chat template, else plain
concatenation), so the saved folder scores the way it learned. The folder is written beside ``--out``
and renamed into place; ``rsft_rm_train.json`` in it says what made it.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rsft import artifacts
from rsft.errors import RsftError, one_line
from rsft.rounds.rm_check import Pair
from rsft.train.sft import checkpointing_argument

TRAIN_INFO = "rsft_rm_train.json"


@dataclass
class RmTrainConfig:
    """How to train the reward model (TRL RewardTrainer, all weights)."""

    epochs: float = 1.0
    """Passes over the pairs."""
    max_steps: int | None = None
    """Stop after this many optimizer steps (overrides ``epochs``)."""
    batch_size: int = 8
    """Pairs per device per step."""
    learning_rate: float = 1e-4
    """Peak learning rate (linear decay)."""
    max_length: int = 1024
    """Tokens per pair at most (longer ones keep their end, as the rm scorer does)."""
    center_rewards_coefficient: float | None = None
    """Pull the rewards towards mean zero (TRL; e.g. 0.01); None: off."""
    seed: int = 0
    """Seed of the new score head and the data order."""


def _load_tokenizer(base: str) -> tuple[str, Any]:
    """The base model's path and its tokenizer (with a pad token: batches of pairs are padded)."""
    from transformers import AutoTokenizer

    from rsft.models import ensure_pad_token, resolve_model_path

    path = resolve_model_path(base)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except Exception as e:  # any failure becomes one line for the user
        raise RsftError(f"--base {base!r}: cannot load its tokenizer: {one_line(e)}") from e
    ensure_pad_token(tokenizer, f"--base {base!r}")
    return path, tokenizer


def _build_trainer(model_path: str, tokenizer: Any, pairs: Sequence[Pair], config: RmTrainConfig, work: Path) -> Any:
    """TRL's RewardTrainer on pre-tokenized pairs. TRL loads the model itself (float32, one output,
    a new score head on a causal LM without the warning about it) and sets its pad token id."""
    import datasets
    import torch
    from transformers import PrinterCallback, ProgressCallback
    from trl import RewardConfig, RewardTrainer

    from rsft.score.reward_model import encode_pairs

    prompts = [p.prompt for p in pairs]
    chosen = encode_pairs(tokenizer, prompts, [p.chosen for p in pairs], config.max_length)
    rejected = encode_pairs(tokenizer, prompts, [p.rejected for p in pairs], config.max_length)
    data = datasets.Dataset.from_dict({"chosen_ids": chosen, "rejected_ids": rejected})  # pre-tokenized
    cuda = torch.cuda.is_available()
    args = RewardConfig(
        output_dir=str(work / "trainer"), num_train_epochs=config.epochs, max_steps=config.max_steps or -1,
        per_device_train_batch_size=config.batch_size, learning_rate=config.learning_rate,
        max_length=None, center_rewards_coefficient=config.center_rewards_coefficient,
        bf16=cuda and torch.cuda.is_bf16_supported(), **checkpointing_argument(RewardConfig, False), use_cpu=not cuda,
        logging_steps=1, save_strategy="no", report_to=[], seed=config.seed, data_seed=config.seed,
        dataloader_num_workers=0,
    )
    try:
        trainer = RewardTrainer(model=model_path, args=args, train_dataset=data, processing_class=tokenizer)
    except (OSError, ValueError) as e:
        raise RsftError(f"--base {model_path}: cannot train it as a reward model: {one_line(e)}") from e
    trainer.remove_callback(ProgressCallback)  # stdout stays for the command's JSON summary
    trainer.remove_callback(PrinterCallback)
    return trainer


def _check_out(out: Path) -> None:
    """Refuse to replace a folder that rm-train did not write."""
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / TRAIN_INFO).exists())):
        raise RsftError(f"--out {out}: exists and is not an earlier rm-train output; choose a new folder")


def train_rm(pairs: Sequence[Pair], base: str, out: Path, config: RmTrainConfig | None = None,
             source: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train a reward model from ``base`` on ``pairs`` into ``out`` (loadable as ``rm:out``).

    Returns the summary also written to ``out/rsft_rm_train.json``: steps, losses, the trainer's
    accuracy on its own training pairs (not an eval: run ``rsft rm-check`` on held-out pairs)."""
    config = config or RmTrainConfig()
    if not pairs:
        raise RsftError("rm-train: no pairs to train on")
    if config.batch_size < 1 or config.max_length < 1:
        raise RsftError(f"rm-train: batch size and max length must be >= 1, got {config.batch_size}, "
                        f"{config.max_length}")
    out = Path(out)
    _check_out(out)
    try:
        import datasets
        import trl  # noqa: F401
    except ImportError as e:
        raise RsftError(f"rm-train needs the 'train' extra: pip install 'rsft[train]' ({e})") from e
    datasets.disable_progress_bars()
    started = time.time()
    model_path, tokenizer = _load_tokenizer(base)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        trainer = _build_trainer(model_path, tokenizer, pairs, config, work)
        result = trainer.train()
        staged = work / "model"
        trainer.model.save_pretrained(str(staged))
        tokenizer.save_pretrained(str(staged))
        info = _info(base, pairs, config, trainer, result, source, time.time() - started)
        artifacts.write_json(staged / TRAIN_INFO, info)
        if out.exists():
            shutil.rmtree(out)
        os.replace(staged, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"rm": f"rm:{out}", **{k: info[k] for k in ("pairs", "steps", "final_loss", "train_accuracy", "wall_s")}}


def _info(base: str, pairs: Sequence[Pair], config: RmTrainConfig, trainer: Any, result: Any,
          source: dict[str, Any] | None, wall_s: float) -> dict[str, Any]:
    logs = [r for r in trainer.state.log_history if "loss" in r]
    last = logs[-1] if logs else {}
    return {"base_model": base, "pairs": len(pairs), "source": source or {}, "steps": trainer.state.global_step,
            "final_loss": last.get("loss"), "train_loss": result.training_loss,
            "train_accuracy": last.get("accuracy"), "log": logs, "config": dataclasses.asdict(config),
            "versions": artifacts.package_versions(), "wall_s": round(wall_s, 3)}


# --- CLI -----------------------------------------------------------------------------------------
