"""The ``hf`` backend: a transformers causal LM on CPU or CUDA, with rsft's own decoding loop.

Prompts are tokenized once and batched with left padding. Each prompt is prefilled ONCE and its KV
cache copied to its N sample rows (``generate(num_return_sequences=N)`` would prefill it N times,
which dominates the cost of few-shot prompts). Sampling applies temperature, top-k and top-p
without sorting the vocabulary when top-k is set (``rsft.generate.sampling``). Each sampled
token's log-probability under the model's own distribution (temperature 1, no filters) is kept
for KL estimates.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import Any

from rsft.errors import RsftError
from rsft.generate.prefix_cache import cache_keyword, cache_of, prefix_cache, repeated
from rsft.generate.sampling import sample_next
from rsft.models import keep_onednn
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
        truncate: a prompt longer than the model's context minus ``max_new_tokens``: ``error``
            (the default: stop, naming the prompt and its token count) or ``left`` (drop its first
            tokens, keeping the end next to the answer; a warning counts them).
    """

    def __init__(
        self,
        model: str,
        batch_size: int | None = None,
        dtype: str = "auto",
        device: str = "auto",
        chat_template: str | None = None,
        name: str | None = None,
        truncate: str = "error",
    ) -> None:
        from rsft.models import load_causal_lm

        if truncate not in ("error", "left"):
            raise RsftError(f"hf backend: truncate must be 'error' or 'left', got {truncate!r}")
        loaded, tokenizer = load_causal_lm(model, dtype=dtype, device=device)
        if chat_template:
            tokenizer.chat_template = PLAIN_CHAT_TEMPLATE if chat_template == "plain" else chat_template
        self._setup(loaded, tokenizer, model, name or f"hf:{model}", batch_size, truncate)

    @classmethod
    def from_model(cls, model: Any, tokenizer: Any, name: str = "hf:policy", batch_size: int | None = None) -> HFGenerator:
        """Generate with a model already in memory, as it is (e.g. the policy a trainer is training,
        LoRA adapters and all): nothing is loaded or copied."""
        self = cls.__new__(cls)
        self._setup(model, tokenizer, name, name, batch_size, "error")
        return self

    def _setup(self, model: Any, tokenizer: Any, spec: str, name: str, batch_size: int | None, truncate: str) -> None:
        self.model, self.tokenizer, self.model_spec, self.name = model, tokenizer, spec, name
        self.batch_size = batch_size
        self.truncate = truncate
        self._keep_tokens: int | None = None
        self.eos_ids = _eos_ids(model, tokenizer)
        self._stop_ids: dict[tuple[str, ...], frozenset[int]] = {}
        self.calls = 0
        inner = model.get_base_model() if hasattr(model, "get_base_model") else model  # a peft wrapper takes **kwargs
        self._cache_kw = cache_keyword(inner) or "past_key_values"

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

    def count_tokens(self, prompt: PromptValue) -> int:
        """Tokens of the rendered prompt, as the model sees it."""
        text = self.render(prompt)
        return len(self.tokenizer(text, add_special_tokens=adds_bos(self.tokenizer, [text]))["input_ids"])

    def sequence_logprobs(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        """``log p(completion | prompt)`` of each pair under this model (``rsft.train.logprobs``)."""
        from rsft.train.logprobs import sequence_logprobs

        return sequence_logprobs(self.model, self.tokenizer, prompts, completions)

    def generate(self, prompts: Sequence[PromptValue], n: int, sampling: SamplingParams) -> list[list[Completion]]:
        texts, per_call = self._begin(prompts, n, sampling)
        out: list[list[Completion]] = []
        bar = progress(len(texts), "  batch", unit="prompt", position=1)
        started, done_tokens = time.time(), 0
        with bar:
            for start in range(0, len(texts), per_call):
                batch = self._generate_batch(texts[start : start + per_call], n, sampling)
                out.extend(batch)
                done_tokens += sum(c.n_tokens or 0 for row in batch for c in row)
                bar.update(len(batch))
                bar.set_postfix(tok_s=f"{done_tokens / max(time.time() - started, 1e-9):.1f}")
        return out

    def sample_ids(self, prompts: Sequence[PromptValue], n: int, sampling: SamplingParams) -> tuple[list[list[int]], list[list[int]]]:
        """Token ids for trainers that work on ids (GRPO's rollouts): each prompt's ids as the model is
        conditioned on them, and ``n`` completions per prompt (prompt-major) up to and including the end
        token where one was sampled. The same decoding as :meth:`generate`, without stop strings."""
        if sampling.stop:
            raise RsftError("sample_ids: stop strings are not supported (a completion ends at EOS or max_new_tokens)")
        texts, per_call = self._begin(prompts, n, sampling)
        prompt_ids: list[list[int]] = []
        completions: list[list[int]] = []
        for start in range(0, len(texts), per_call):
            encoded, tokens, _ = self._sample(texts[start : start + per_call], n, sampling, frozenset())
            prompt_ids.extend(encoded)
            rows = [_until_end(row.tolist(), self.eos_ids) for row in tokens]
            completions.extend(row for group in _by_prompt(rows, len(encoded), n) for row in group)
        return prompt_ids, completions

    def _begin(self, prompts: Sequence[PromptValue], n: int, sampling: SamplingParams) -> tuple[list[str], int]:
        """What every call does first: the rendered prompts, checked against the context, the RNG
        seeded, oneDNN on; returns the texts and the prompts per batch."""
        import torch

        if n < 1:
            raise RsftError(f"n must be >= 1, got {n}")
        keep_onednn()
        texts = [self.render(p) for p in prompts]
        self._keep_tokens = self._fit_context(prompts, texts, sampling.max_new_tokens)
        self._rng = torch.Generator(device=self.model.device).manual_seed(sampling.seed)
        return texts, self.batch_size or max(1, 64 // n)

    def _sample(self, texts: list[str], n: int, sampling: SamplingParams, stop_ids: frozenset[int]) -> tuple[Any, Any, Any]:
        """Prefill the batch once, copy each prompt's KV cache to its N rows (one row when greedy: the
        rows would be identical), decode the unfinished rows; returns the prompts' token ids and the
        sampled tokens and log-probs (rows prompt-major)."""
        import torch

        copies = 1 if sampling.temperature == 0 else n
        with torch.inference_mode():
            state = self._prefill(texts, copies)
            tokens, logprobs = self._decode(state, sampling, stop_ids)
        self.calls += 1
        self.last_tokens = tokens  # the sampled ids of the last batch (rows = prompt-major), for inspection
        return state["encoded"], tokens, logprobs

    def _generate_batch(self, texts: list[str], n: int, sampling: SamplingParams) -> list[list[Completion]]:
        stop_ids = self.stop_token_ids(sampling.stop)
        _, tokens, logprobs = self._sample(texts, n, sampling, stop_ids)
        ends = self.eos_ids | stop_ids
        rows = [self._completion(tokens[k], logprobs[k], sampling.stop, ends) for k in range(tokens.shape[0])]
        return _by_prompt(rows, len(texts), n)

    def _prefill(self, texts: list[str], copies: int) -> dict[str, Any]:
        """Run the prompts through the model once; returns the decoding state with ``copies`` rows each.

        Prompts that share a token prefix (the few-shot examples of a task) encode that prefix once:
        its KV cache is copied to every prompt, then only the differing suffixes are run, left-padded
        after the prefix (the attention mask hides the pads; position ids continue past the prefix).
        """
        import torch

        tok, device = self.tokenizer, self.model.device
        encoded = [tok(t, add_special_tokens=adds_bos(tok, texts))["input_ids"] for t in texts]
        if self._keep_tokens:  # truncate="left": the prompts' last tokens that fit the context
            encoded = [e[-self._keep_tokens :] for e in encoded]
        shared, cache = prefix_cache(self.model, encoded, device)
        if cache is not None:
            cache = repeated(cache, len(texts), in_place=True)
        suffixes = [e[shared:] for e in encoded]
        width = max(len(x) for x in suffixes)
        ids = torch.full((len(texts), width), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(texts), shared + width), dtype=torch.long)
        mask[:, :shared] = 1
        for i, x in enumerate(suffixes):
            ids[i, width - len(x):] = torch.tensor(x)
            mask[i, shared + width - len(x):] = 1
        ids, mask = ids.to(device), mask.to(device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, shared:]
        kwargs = {self._cache_kw: cache} if cache is not None else {}
        # the last position as an index, not logits_to_keep=1: transformers then copies the hidden states
        # instead of slicing a strided view, which oneDNN's bf16 matmul handles by copying the output
        # weights once per row (26 GB at 96 rows of Qwen2.5-0.5B); when that allocation fails torch turns
        # oneDNN off for the whole process and every later matmul runs 10-20x slower
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                         logits_to_keep=torch.tensor([width - 1], device=device), **kwargs)
        cache = cache_of(out)
        logits = out.logits[:, -1].float()
        if copies > 1:
            cache.batch_repeat_interleave(copies)
            logits, mask = logits.repeat_interleave(copies, 0), mask.repeat_interleave(copies, 0)
            positions = positions.repeat_interleave(copies, 0)
        return {"cache": cache, "logits": logits, "mask": mask, "position": positions[:, -1], "encoded": encoded}

    def _decode(self, state: dict[str, Any], sampling: SamplingParams, stop_ids: frozenset[int]) -> tuple[Any, Any]:
        """Sample token by token; finished rows leave the batch (their cache rows are dropped)."""
        import torch

        cache, logits, mask, position = state["cache"], state["logits"], state["mask"], state["position"]
        rows, steps = logits.shape[0], sampling.max_new_tokens
        tokens = torch.full((rows, steps), self.tokenizer.pad_token_id, dtype=torch.long)
        logprobs = torch.zeros((rows, steps), dtype=torch.float32)
        ends = torch.tensor(sorted(self.eos_ids | stop_ids), device=logits.device)
        check_strings = bool(sampling.stop) and not stop_ids  # multi-character stops: decode and look
        active = torch.arange(rows)
        for step in range(steps):
            nxt = sample_next(logits, sampling, self._rng)
            lp = logits.gather(1, nxt[:, None]).squeeze(1) - torch.logsumexp(logits, dim=-1)
            tokens[active, step], logprobs[active, step] = nxt.cpu(), lp.cpu()
            finished = torch.isin(nxt, ends)
            if check_strings:
                finished |= self._hit_stop_string(tokens[active, : step + 1], sampling.stop).to(finished.device)
            if step == steps - 1 or bool(finished.all()):
                break
            if bool(finished.any()):
                keep = (~finished).nonzero().flatten()
                cache.batch_select_indices(keep)
                active, nxt, mask, position = active[keep.cpu()], nxt[keep], mask[keep], position[keep]
            mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
            position = position + 1
            out = self.model(input_ids=nxt[:, None], attention_mask=mask, position_ids=position[:, None],
                             use_cache=True, **{self._cache_kw: cache})
            logits = out.logits[:, -1].float()
        return tokens, logprobs

    def _fit_context(self, prompts: Sequence[PromptValue], texts: list[str], max_new_tokens: int) -> int | None:
        """Check every prompt fits the context with ``max_new_tokens`` after it.

        Returns None when all fit (or the model states no context length), else the prompt token
        budget for ``truncate="left"``; with ``truncate="error"`` the first prompt too long is an error.
        """
        context = _context_length(self.model, self.tokenizer)
        if context is None:
            return None
        budget = context - max_new_tokens
        if budget < 1:
            raise RsftError(f"max_new_tokens={max_new_tokens} leaves no room for a prompt in model "
                            f"{self.model_spec!r}'s context of {context} tokens")
        lengths = [len(ids) for ids in self.tokenizer(texts, add_special_tokens=adds_bos(self.tokenizer, texts))["input_ids"]]
        too_long = [i for i, length in enumerate(lengths) if length > budget]
        if not too_long:
            return None
        if self.truncate == "left":
            print(f"rsft: warning: {len(too_long)} prompts are longer than {budget} tokens (context {context} - "
                  f"max_new_tokens {max_new_tokens}); their first tokens are cut (truncate=left)", file=sys.stderr)
            return budget
        from rsft.prompts import prompt_id

        i = too_long[0]
        raise RsftError(f"prompt {prompt_id(prompts[i])} is {lengths[i]} tokens, but model {self.model_spec!r} has a "
                        f"context of {context} and max_new_tokens={max_new_tokens} leaves {budget} "
                        f"({len(too_long)} of {len(texts)} prompts too long); shorten them, lower max_new_tokens, "
                        "or cut their start with the backend option truncate=left")

    def _hit_stop_string(self, tokens: Any, stop: tuple[str, ...]) -> Any:
        import torch

        return torch.tensor([_first_stop(self._decode_ids(row.tolist()), stop) is not None for row in tokens])

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
        ids_list = _until_end(ids.tolist(), ends)
        length = len(ids_list)
        finish = "stop" if ids_list and ids_list[-1] in ends else "length"
        text = self._decode_ids(ids_list)
        if stop:
            cut = _first_stop(text, stop)
            if cut is not None:
                length = self._tokens_until_stop(ids_list[:length], stop)
                text, finish = text[:cut], "stop"
        logprob = float(logprobs[:length].sum()) if length else 0.0
        return Completion(text=text, n_tokens=length, finish_reason=finish, logprob=logprob, generator=self.name)

    def _decode_ids(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def _tokens_until_stop(self, ids: list[int], stop: tuple[str, ...]) -> int:
        """Smallest token count whose decoded text already contains a stop string (binary search)."""
        lo, hi = 1, len(ids)
        while lo < hi:
            mid = (lo + hi) // 2
            if _first_stop(self._decode_ids(ids[:mid]), stop) is None:
                lo = mid + 1
            else:
                hi = mid
        return lo


def _context_length(model: Any, tokenizer: Any) -> int | None:
    """The model's context length in tokens: ``max_position_embeddings``, else the tokenizer's limit."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    length = getattr(config, "max_position_embeddings", None)
    if isinstance(length, int) and length > 0:
        return length
    length = getattr(tokenizer, "model_max_length", None)
    return length if isinstance(length, int) and 0 < length < 10**8 else None


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    ids = model.generation_config.eos_token_id if model.generation_config is not None else None
    if ids is None:
        ids = tokenizer.eos_token_id
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    if not ids:
        raise RsftError("model has no EOS token id (set eos_token in its tokenizer or generation config)")
    return set(ids)


def adds_bos(tokenizer: Any, texts: Sequence[str]) -> bool:
    """Add special tokens unless the texts (e.g. from a chat template) already start with BOS."""
    bos = tokenizer.bos_token
    return not (bos and all(t.startswith(bos) for t in texts))


def _by_prompt(rows: list[Any], prompts: int, n: int) -> list[list[Any]]:
    """Prompt-major rows grouped ``n`` per prompt; a prompt decoded as one row (greedy) has it repeated."""
    copies = len(rows) // prompts
    return [[rows[i * copies + (j if copies > 1 else 0)] for j in range(n)] for i in range(prompts)]


def _until_end(ids: list[int], ends: set[int] | frozenset[int]) -> list[int]:
    """``ids`` up to and including the first end token (all of them when none was sampled)."""
    for pos, tok in enumerate(ids):
        if tok in ends:
            return ids[: pos + 1]
    return ids


def _first_stop(text: str, stop: tuple[str, ...]) -> int | None:
    hits = [i for i in (text.find(s) for s in stop) if i >= 0]
    return min(hits) if hits else None

