"""The ``hf`` backend: a transformers causal LM on CPU or CUDA, with rsft's own decoding loop.

Prompts are tokenized once and batched with left padding. Each prompt is prefilled ONCE and its KV
cache copied to its N sample rows (``generate(num_return_sequences=N)`` would prefill it N times,
which dominates the cost of few-shot prompts). Sampling applies temperature, top-k and top-p
without sorting the vocabulary when top-k is set (``rsft.generate.sampling``). Each sampled
token's log-probability under the model's own distribution (temperature 1, no filters) is kept
for KL estimates.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Sequence
from typing import Any

from rsft.errors import RsftError
from rsft.generate.sampling import sample_next
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
        # transformers renamed `past_key_values` to `cache` (5.x); use whichever this version takes
        self._cache_kw = "cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values"

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
        self._rng = torch.Generator(device=self.model.device).manual_seed(sampling.seed)
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
        """Prefill each prompt once, copy its KV cache to its N rows, then decode all rows together."""
        import torch

        copies = 1 if sampling.temperature == 0 else n  # greedy rows would all be identical
        tok = self.tokenizer
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=_adds_bos(tok, texts))
        ids, mask = enc["input_ids"].to(self.model.device), enc["attention_mask"].to(self.model.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        stop_ids = self.stop_token_ids(sampling.stop)
        ends = torch.tensor(sorted(self.eos_ids | stop_ids), device=ids.device)
        check_strings = bool(sampling.stop) and not stop_ids  # multi-character stops: decode and look
        with torch.inference_mode():
            out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                             logits_to_keep=1)
            cache = _cache_of(out)
            if copies > 1:
                if hasattr(cache, "batch_repeat_interleave"):
                    cache.batch_repeat_interleave(copies)
                else:  # a cache type that cannot be copied: prefill every row instead
                    out = self.model(input_ids=ids.repeat_interleave(copies, 0),
                                     attention_mask=mask.repeat_interleave(copies, 0),
                                     position_ids=positions.repeat_interleave(copies, 0), use_cache=True,
                                     logits_to_keep=1)
                    cache = _cache_of(out)
            logits = out.logits[:, -1].float()
            logits = logits.repeat_interleave(copies, 0) if logits.shape[0] != ids.shape[0] * copies else logits
            mask = mask.repeat_interleave(copies, 0)
            position = positions[:, -1].repeat_interleave(copies, 0)
            rows = logits.shape[0]
            done = torch.zeros(rows, dtype=torch.bool, device=ids.device)
            steps, logprobs = [], []
            for step in range(sampling.max_new_tokens):
                nxt = sample_next(logits, sampling, self._rng)
                lp = logits.gather(1, nxt[:, None]).squeeze(1) - torch.logsumexp(logits, dim=-1)
                nxt = nxt.masked_fill(done, tok.pad_token_id)
                steps.append(nxt)
                logprobs.append(lp.masked_fill(done, 0.0))
                done |= torch.isin(nxt, ends)
                if check_strings:
                    done |= self._hit_stop_string(torch.stack(steps, 1), done, sampling.stop)
                if bool(done.all()) or step == sampling.max_new_tokens - 1:
                    break
                mask = torch.cat([mask, mask.new_ones(rows, 1)], dim=1)
                position = position + 1
                out = self.model(input_ids=nxt[:, None], attention_mask=mask, position_ids=position[:, None],
                                 use_cache=True, **{self._cache_kw: cache})
                logits = out.logits[:, -1].float()
        self.calls += 1
        new_tokens, token_logprobs = torch.stack(steps, 1).cpu(), torch.stack(logprobs, 1).cpu()
        self.last_tokens = new_tokens  # the sampled ids of the last batch (rows = prompt-major), for inspection
        ends_set = self.eos_ids | stop_ids
        done_rows = [self._completion(new_tokens[k], token_logprobs[k], sampling.stop, ends_set) for k in range(rows)]
        return [[done_rows[i * copies + (j if copies > 1 else 0)] for j in range(n)] for i in range(len(texts))]

    def _hit_stop_string(self, tokens: Any, done: Any, stop: tuple[str, ...]) -> Any:
        import torch

        hit = torch.zeros_like(done)
        for k in (~done).nonzero().flatten().tolist():
            if _first_stop(self._decode(tokens[k].tolist()), stop) is not None:
                hit[k] = True
        return hit

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


def _cache_of(output: Any) -> Any:
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


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

