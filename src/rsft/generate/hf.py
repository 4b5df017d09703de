"""The ``hf`` backend: transformers ``generate`` on CPU or CUDA.

Prompts are tokenized once and batched with left padding; ``num_return_sequences=n`` samples all N
completions of a batch in one call. A logits processor records each sampled token's log-probability
under the model's own distribution (before temperature/top-k/top-p), needed later for KL estimates.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from rsft.errors import RsftError
from rsft.progress import progress
from rsft.types import Completion, PromptValue, SamplingParams

PLAIN_CHAT_TEMPLATE = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
"""``chat_template="plain"``: messages joined by newlines, for base models without a template."""


class HFGenerator:
    """Generate with a transformers causal LM.

    Args:
        model: local path, hub id (loaded offline) or ``gemma3-270m`` (the embedded default).
        batch_size: prompts per ``generate`` call; default keeps about 64 sequences per call.
        dtype: ``auto`` (bf16 on CUDA that supports it, else float32), ``float32``, ``bfloat16``.
        device: ``auto``, ``cpu`` or ``cuda``.
        chat_template: a Jinja template for chat prompts when the tokenizer has none, or ``plain``.
        name: label stored with each completion (default ``hf:<model>``).
    """

    def __init__(
        self,
        model: str,
        batch_size: int | None = None,
        dtype: str = "auto",
        device: str = "auto",
        chat_template: str | None = None,
        name: str | None = None,
    ) -> None:
        from rsft.models import load_causal_lm

        self.model_spec = model
        self.model, self.tokenizer = load_causal_lm(model, dtype=dtype, device=device)
        if chat_template:
            self.tokenizer.chat_template = PLAIN_CHAT_TEMPLATE if chat_template == "plain" else chat_template
        self.batch_size = batch_size
        self.name = name or f"hf:{model}"
        self.eos_ids = _eos_ids(self.model, self.tokenizer)
        self._stop_ids: dict[tuple[str, ...], frozenset[int]] = {}
        self.calls = 0

    def render(self, prompt: PromptValue) -> str:
        """The exact text the model is conditioned on (chat prompts go through the chat template)."""
        if isinstance(prompt, str):
            return prompt
        if not self.tokenizer.chat_template:
            raise RsftError(
                f"model {self.model_spec!r} has no chat template for chat prompts; "
                "give one with chat_template=... (a Jinja template, or 'plain')"
            )
        return self.tokenizer.apply_chat_template(list(prompt), tokenize=False, add_generation_prompt=True)

    def generate(self, prompts: Sequence[PromptValue], n: int, sampling: SamplingParams) -> list[list[Completion]]:
        import torch

        if n < 1:
            raise RsftError(f"n must be >= 1, got {n}")
        texts = [self.render(p) for p in prompts]
        per_call = self.batch_size or max(1, 64 // n)
        torch.manual_seed(sampling.seed)
        out: list[list[Completion]] = []
        bar = progress(len(texts), "generate", unit="prompt")
        started, done_tokens = time.time(), 0
        with bar:
            for start in range(0, len(texts), per_call):
                batch = self._generate_batch(texts[start : start + per_call], n, sampling)
                out.extend(batch)
                done_tokens += sum(c.n_tokens or 0 for row in batch for c in row)
                bar.update(len(batch))
                bar.set_postfix(tok_s=f"{done_tokens / max(time.time() - started, 1e-9):.1f}")
        return out

    def _generate_batch(self, texts: list[str], n: int, sampling: SamplingParams) -> list[list[Completion]]:
        import torch
        from transformers import LogitsProcessorList

        greedy = sampling.temperature == 0
        copies = 1 if greedy else n
        enc = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=_adds_bos(self.tokenizer, texts))
        enc = enc.to(self.model.device)
        recorder = _LogprobRecorder()
        kwargs: dict[str, Any] = dict(
            max_new_tokens=sampling.max_new_tokens,
            num_return_sequences=copies,
            do_sample=not greedy,
            logits_processor=LogitsProcessorList([recorder]),
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=sorted(self.eos_ids),
            return_dict_in_generate=True,
        )
        if not greedy:
            kwargs.update(temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k or None)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        stop_ids = self.stop_token_ids(sampling.stop)
        if stop_ids:
            kwargs["eos_token_id"] = sorted(self.eos_ids | stop_ids)
        elif sampling.stop:
            kwargs.update(stop_strings=list(sampling.stop), tokenizer=self.tokenizer)
        with torch.inference_mode():
            result = self.model.generate(**enc, **kwargs)
        self.calls += 1
        new_tokens = result.sequences[:, enc["input_ids"].shape[1] :]
        token_logprobs = recorder.finish(new_tokens)
        ends = self.eos_ids | stop_ids
        rows = [self._completion(new_tokens[k], token_logprobs[k], sampling.stop, ends) for k in range(len(new_tokens))]
        return [[rows[i * copies + (0 if greedy else j)] for j in range(n)] for i in range(len(texts))]

    def stop_token_ids(self, stop: tuple[str, ...]) -> frozenset[int]:
        """Tokens whose text contains a one-character stop string (e.g. ``\\n``), found once per stop set.

        Stopping on these ids is exactly "stop at the first occurrence" for one-character stops and
        much cheaper than transformers' stop-string criteria on a large vocabulary; longer stop
        strings (which may span tokens) use the criteria instead.
        """
        if not stop or any(len(s) != 1 for s in stop):
            return frozenset()
        if stop not in self._stop_ids:
            pieces = self.tokenizer.batch_decode([[i] for i in range(len(self.tokenizer))])
            self._stop_ids[stop] = frozenset(i for i, p in enumerate(pieces) if any(s in p for s in stop))
        return self._stop_ids[stop]

    def _completion(self, ids: Any, logprobs: Any, stop: tuple[str, ...], ends: set[int] | frozenset[int]) -> Completion:
        ids_list = ids.tolist()
        length, finish = len(ids_list), "length"
        for pos, tok in enumerate(ids_list):
            if tok in ends:
                length, finish = pos + 1, "stop"
                break
        text = self._decode(ids_list[:length])
        if stop:
            cut = _first_stop(text, stop)
            if cut is not None:
                length = self._tokens_until_stop(ids_list[:length], stop)
                text, finish = text[:cut], "stop"
        logprob = float(logprobs[:length].sum()) if length else 0.0
        return Completion(text=text, n_tokens=length, finish_reason=finish, logprob=logprob, generator=self.name)

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def _tokens_until_stop(self, ids: list[int], stop: tuple[str, ...]) -> int:
        """Smallest token count whose decoded text already contains a stop string (binary search)."""
        lo, hi = 1, len(ids)
        while lo < hi:
            mid = (lo + hi) // 2
            if _first_stop(self._decode(ids[:mid]), stop) is None:
                lo = mid + 1
            else:
                hi = mid
        return lo


class _LogprobRecorder:
    """Logits processor that keeps log p(token) of each sampled token, from the unwarped logits.

    transformers runs custom processors before the sampling warpers (temperature, top-k, top-p), so
    the scores seen here are the model's own. Step t's token is only known at step t+1 (it is the
    last column of ``input_ids`` then), so one step of log-probabilities is kept in flight.
    """

    def __init__(self) -> None:
        self.pending: Any = None
        self.steps: list[Any] = []

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        if self.pending is not None:
            self.steps.append(self.pending.gather(1, input_ids[:, -1:]).squeeze(1))
        self.pending = torch.log_softmax(scores.float(), dim=-1)
        return scores

    def finish(self, new_tokens: Any) -> Any:
        """(batch, generated) tensor of per-token log-probabilities (0 beyond a sequence's end)."""
        import torch

        if self.pending is not None:
            self.steps.append(self.pending.gather(1, new_tokens[:, len(self.steps) : len(self.steps) + 1]).squeeze(1))
            self.pending = None
        if not self.steps:
            return torch.zeros(new_tokens.shape, dtype=torch.float32)
        return torch.stack(self.steps, dim=1).cpu()


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    ids = model.generation_config.eos_token_id if model.generation_config is not None else None
    if ids is None:
        ids = tokenizer.eos_token_id
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    if not ids:
        raise RsftError("model has no EOS token id (set eos_token in its tokenizer or generation config)")
    return set(ids)


def _adds_bos(tokenizer: Any, texts: Sequence[str]) -> bool:
    """Add special tokens unless the texts (e.g. from a chat template) already start with BOS."""
    bos = tokenizer.bos_token
    return not (bos and all(t.startswith(bos) for t in texts))


def _first_stop(text: str, stop: tuple[str, ...]) -> int | None:
    hits = [i for i in (text.find(s) for s in stop) if i >= 0]
    return min(hits) if hits else None

