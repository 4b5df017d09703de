"""A reward model scorer: ``AutoModelForSequenceClassification`` with one output.

Each (prompt, completion) pair is formatted with the RM's own chat template (plain concatenation when
it has none), tokenized, and scored in batches. Pairs are sorted by token length (longest first)
before batching so each batch pads to a similar length: padding is compute spent on nothing, and
``last_stats`` reports how much of it there was. Longest first also means a CUDA out-of-memory
error shows up on the first batch; the batch size is then halved for the rest of the call.

With a long tail of lengths, batches of a fixed count still pad a lot where the lengths thin out
(a 400-token pair next to 150-token ones). ``max_batch_tokens`` caps each batch's padded size
(rows x its longest row) instead, so long pairs go in small batches and short ones in large ones
(at most ``batch_size`` rows): the padded-token efficiency rises from ~0.6 to above 0.9 on such
data (bench/reward_scoring.py).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rsft.errors import RsftError, first_line
from rsft.types import PromptValue


def length_order(lengths: Sequence[int], sort_by_length: bool) -> list[int]:
    """Indices in the order they are batched: longest first (stable) when sorting, else as given."""
    if not sort_by_length:
        return list(range(len(lengths)))
    return sorted(range(len(lengths)), key=lambda i: -lengths[i])


def next_batch(
    order: Sequence[int], start: int, lengths: Sequence[int], batch_size: int, max_batch_tokens: int | None = None
) -> list[int]:
    """The batch that starts at ``order[start]``: consecutive indices, at most ``batch_size`` of them and,
    with ``max_batch_tokens``, at most that many padded tokens (rows x longest row); always >= 1 row."""
    batch = [order[start]]
    width = lengths[order[start]]
    for i in order[start + 1 : start + batch_size]:
        width = max(width, lengths[i])
        if max_batch_tokens is not None and width * (len(batch) + 1) > max_batch_tokens:
            break
        batch.append(i)
    return batch


def make_batches(
    lengths: Sequence[int], batch_size: int, sort_by_length: bool, max_batch_tokens: int | None = None
) -> list[list[int]]:
    """Groups of at most ``batch_size`` indices (and ``max_batch_tokens`` padded tokens), in the order
    ``length_order`` gives."""
    if batch_size < 1:
        raise RsftError(f"rm: batch_size must be >= 1, got {batch_size}")
    if max_batch_tokens is not None and max_batch_tokens < 1:
        raise RsftError(f"rm: max_batch_tokens must be >= 1, got {max_batch_tokens}")
    order = length_order(lengths, sort_by_length)
    batches, pos = [], 0
    while pos < len(order):
        batches.append(next_batch(order, pos, lengths, batch_size, max_batch_tokens))
        pos += len(batches[-1])
    return batches


def padding_efficiency(
    lengths: Sequence[int], batch_size: int, sort_by_length: bool = True, max_batch_tokens: int | None = None
) -> float:
    """Real tokens / tokens processed when each batch pads to its longest sequence (1.0 = no padding).

    Example: lengths ``[1, 10, 1, 10]``, batch size 2: as given, two batches of ``[1, 10]`` process
    40 tokens for 22 real ones (0.55); sorted, ``[10, 10]`` and ``[1, 1]`` waste nothing (1.0).
    """
    padded = sum(
        max(lengths[i] for i in b) * len(b)
        for b in make_batches(lengths, batch_size, sort_by_length, max_batch_tokens)
    )
    return sum(lengths) / padded if padded else 1.0


def encode_pairs(tokenizer: Any, prompts: Sequence[PromptValue], completions: Sequence[str],
                 max_length: int) -> list[list[int]]:
    """Token ids of each (prompt, completion) as a reward model reads it: the tokenizer's chat template
    (plain concatenation without one), truncated on the left to ``max_length``. ``rsft rm-train``
    trains on exactly these ids, so a trained RM is scored the way it learned."""
    tok = tokenizer
    if tok.chat_template:
        texts = []
        for prompt, completion in zip(prompts, completions, strict=True):
            messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else [dict(m) for m in prompt]
            messages.append({"role": "assistant", "content": completion})
            texts.append(tok.apply_chat_template(messages, tokenize=False))
        ids = tok(texts, add_special_tokens=False)["input_ids"]  # the template has its own specials
    else:
        texts = [
            (p if isinstance(p, str) else "\n\n".join(str(m["content"]) for m in p)) + c
            for p, c in zip(prompts, completions, strict=True)
        ]
        ids = tok(texts)["input_ids"]
    return [list(x[-max_length:]) for x in ids]


def check_model_options(who: str, path: str, batch_size: int, max_length: int, max_batch_tokens: int | None,
                        dtype: str) -> None:
    """Raise ``RsftError`` naming ``who`` (``rm``, ``prm``) on an option a model scorer cannot use."""
    import torch

    if not path:
        raise RsftError(f"scorer {who!r} needs a model path: '{who}:PATH'")
    if batch_size < 1 or max_length < 1:
        raise RsftError(f"{who}: batch_size and max_length must be >= 1, got {batch_size} and {max_length}")
    if max_batch_tokens is not None and (isinstance(max_batch_tokens, bool) or max_batch_tokens < 1):
        raise RsftError(f"{who}: max_batch_tokens must be >= 1 (or None), got {max_batch_tokens!r}")
    if dtype != "auto" and not isinstance(getattr(torch, dtype, None), torch.dtype):
        raise RsftError(f"{who}: unknown dtype {dtype!r}; use 'auto', 'float32', 'bfloat16' or 'float16'")


def right_padded(batch: Sequence[Sequence[int]], pad_id: int) -> tuple[Any, Any]:
    """``input_ids`` and ``attention_mask`` of a batch, right-padded with ``pad_id`` (positions match
    the unpadded sequences, so a causal model reads each row as it would alone)."""
    import torch

    width = max(len(ids) for ids in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, ids in enumerate(batch):
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, : len(ids)] = 1
    return input_ids, attention_mask


@dataclass
class BatchRun:
    """What ``run_in_batches`` did: one output per input, and the batches it took."""

    outputs: list[Any]
    batches: int
    batch_size: int
    """The row limit it ended with (halved on CUDA out-of-memory)."""
    max_batch_tokens: int | None
    """The padded-token limit it ended with (halved instead of the rows when set)."""
    padded_tokens: int


def run_in_batches(who: str, lengths: Sequence[int], forward: Callable[[list[int]], Sequence[Any]],
                   batch_size: int, max_batch_tokens: int | None, sort_by_length: bool) -> BatchRun:
    """``forward(indices)`` over length-ordered batches (``next_batch``), one output per index.

    On CUDA out-of-memory the batch is retried smaller: memory grows with rows x longest row, so
    whichever limits it is halved (the rows, or ``max_batch_tokens`` when set); a single row that
    does not fit is an ``RsftError`` naming ``who``.
    """
    import torch

    order = length_order(lengths, sort_by_length)
    outputs: list[Any] = [None] * len(lengths)
    pos = batches = padded = 0
    while pos < len(order):
        index = next_batch(order, pos, lengths, batch_size, max_batch_tokens)
        try:
            values = forward(index)
        except torch.cuda.OutOfMemoryError as e:
            if len(index) == 1:
                raise RsftError(f"{who}: CUDA out of memory at batch size 1 ({lengths[index[0]]} tokens)") from e
            torch.cuda.empty_cache()
            if max_batch_tokens is None:
                batch_size = len(index) // 2
            else:
                max_batch_tokens = max(lengths[i] for i in index) * len(index) // 2
            continue
        for i, value in zip(index, values, strict=True):
            outputs[i] = value
        batches += 1
        padded += max(lengths[i] for i in index) * len(index)
        pos += len(index)
    return BatchRun(outputs, batches, batch_size, max_batch_tokens, padded)


class RewardModelScorer:
    """Scores pairs with a sequence-classification reward model (``num_labels == 1``).

    Args:
        path: a local model folder (or a hub id already in the local cache).
        batch_size: pairs per forward pass (at most); halved on CUDA out-of-memory, down to 1.
        max_length: longer pairs keep their last ``max_length`` tokens (the end of the completion is
            what the reward head reads).
        device: ``"auto"`` (CUDA when available, else CPU) or a torch device string.
        dtype: ``"auto"`` (the checkpoint's dtype) or a torch dtype name such as ``"bfloat16"``.
        sort_by_length: batch pairs of similar token length together (less padding).
        max_batch_tokens: also cap each batch at this many padded tokens (rows x longest row), so
            long pairs go in small batches and short ones in batches of up to ``batch_size``; a pair
            longer than the cap is a batch of its own. None: batches of ``batch_size`` rows. Try a
            large ``batch_size`` (e.g. 64) with a cap near 8 x a typical pair's length. Halved with
            the batch on CUDA out-of-memory (the cap is halved then, not the row count).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        batch_size: int = 16,
        max_length: int = 1024,
        device: str = "auto",
        dtype: str = "auto",
        sort_by_length: bool = True,
        max_batch_tokens: int | None = None,
    ) -> None:
        import torch
        from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

        from rsft.models import ensure_pad_token

        path = str(path)
        check_model_options("rm", path, batch_size, max_length, max_batch_tokens, dtype)
        self.name = f"rm:{path}"
        self.batch_size = batch_size
        self.max_length = max_length
        self.sort_by_length = sort_by_length
        self.max_batch_tokens = max_batch_tokens
        self.device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        try:
            config = AutoConfig.from_pretrained(path)
            if config.num_labels != 1:
                raise RsftError(
                    f"rm: {path} has num_labels={config.num_labels}; a reward model must have exactly 1 output"
                )
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            model = AutoModelForSequenceClassification.from_pretrained(
                path, dtype=dtype if dtype == "auto" else getattr(torch, dtype)
            )
        except (OSError, ValueError) as e:
            raise RsftError(f"rm: cannot load a reward model from {path}: {first_line(e)}") from None
        ensure_pad_token(self.tokenizer, f"rm: {path}")
        text_config = model.config.get_text_config()
        if text_config.pad_token_id is None:  # the head finds each row's last token by it
            text_config.pad_token_id = self.tokenizer.pad_token_id
        self.pad_id = int(text_config.pad_token_id)
        self.model = model.to(self.device).eval()
        self.last_stats: dict[str, Any] = {}

    @property
    def last_efficiency(self) -> float | None:
        """Real tokens / padded tokens processed in the last ``score`` call."""
        return self.last_stats.get("efficiency")

    def encode(self, prompts: Sequence[PromptValue], completions: Sequence[str]) -> list[list[int]]:
        """Token ids of each pair as the RM sees it, truncated on the left to ``max_length``."""
        return encode_pairs(self.tokenizer, prompts, completions, self.max_length)

    def _forward(self, batch: Sequence[Sequence[int]]) -> list[float]:
        """One padded forward pass (right padding: positions match the unpadded sequences)."""
        import torch

        input_ids, attention_mask = right_padded(batch, self.pad_id)
        with torch.inference_mode():
            logits = self.model(
                input_ids=input_ids.to(self.device), attention_mask=attention_mask.to(self.device)
            ).logits
        return logits[:, 0].float().cpu().tolist()

    def score(
        self,
        prompts: Sequence[PromptValue],
        completions: Sequence[str],
        metadata: Sequence[Mapping[str, Any]] | None = None,
    ) -> list[float]:
        ids = self.encode(prompts, completions)
        lengths = [len(x) for x in ids]
        run = run_in_batches("rm", lengths, lambda index: self._forward([ids[i] for i in index]),
                             self.batch_size, self.max_batch_tokens, self.sort_by_length)
        real = sum(lengths)
        self.last_stats = {
            "n_pairs": len(ids),
            "batches": run.batches,
            "batch_size": run.batch_size,
            "max_batch_tokens": run.max_batch_tokens,
            "real_tokens": real,
            "padded_tokens": run.padded_tokens,
            "efficiency": real / run.padded_tokens if run.padded_tokens else 1.0,
        }
        return [float(x) for x in run.outputs]
