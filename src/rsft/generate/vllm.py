"""The ``vllm`` backend: vLLM's offline ``LLM`` engine (CUDA only, optional extra ``rsft[vllm]``).

``SamplingParams(n=N)`` samples all N completions of a prompt in one request, sharing its prefill;
prefix caching shares the few-shot prefix across prompts. ``logprobs=0`` makes vLLM return the
sampled token's log-probability, whose sum is ``cumulative_logprob``.

Scale: ``tensor_parallel_size`` shards one engine over that many GPUs; data parallelism is the
``ray`` executor's generator pool (``rsft generate --executor ray --actors K``): K engines, one per
actor, each actor holding ``tensor_parallel_size`` GPUs (one engine per GPU group).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rsft.errors import RsftError
from rsft.types import Completion, PromptValue, SamplingParams


def _import_vllm() -> Any:
    try:
        import vllm
    except ImportError as e:
        raise RsftError(
            "backend 'vllm' needs vLLM and a CUDA GPU: pip install 'rsft[vllm]' (or use --backend hf)"
        ) from e
    return vllm


class VLLMGenerator:
    """Generate with a vLLM engine.

    Args:
        model: local path or hub id (``gemma3-270m`` resolves to the embedded default's float32 copy).
        tensor_parallel_size: GPUs the engine shards the model over.
        enable_prefix_caching: reuse KV blocks of shared prefixes (few-shot prompts, the N samples).
        distributed_executor_backend: how a tensor-parallel engine runs its GPU workers (None: ``mp``,
            processes on this node, when ``tensor_parallel_size > 1``: this works inside a Ray actor
            that holds the GPUs, where vLLM's ``ray`` backend would look for a placement group).
        gpu_memory_utilization: fraction of GPU memory vLLM may take.
        dtype: ``auto``, ``bfloat16``, ``float16`` or ``float32``.
        max_model_len: context length cap (None: the model's).
        name: label stored with each completion (default ``vllm:<model>``).
    """

    def __init__(
        self,
        model: str,
        tensor_parallel_size: int = 1,
        enable_prefix_caching: bool = True,
        gpu_memory_utilization: float = 0.85,
        dtype: str = "auto",
        max_model_len: int | None = None,
        name: str | None = None,
        distributed_executor_backend: str | None = None,
        **engine_options: Any,
    ) -> None:
        from rsft.models import resolve_model_path

        if tensor_parallel_size < 1:
            raise RsftError(f"vllm: tensor_parallel_size must be >= 1, got {tensor_parallel_size}")
        vllm = _import_vllm()
        if distributed_executor_backend is None and tensor_parallel_size > 1:
            distributed_executor_backend = "mp"
        if distributed_executor_backend is not None:
            engine_options["distributed_executor_backend"] = distributed_executor_backend
        self.model_spec = model
        self.name = name or f"vllm:{model}"
        self.llm = vllm.LLM(
            model=resolve_model_path(model),
            tensor_parallel_size=tensor_parallel_size,
            enable_prefix_caching=enable_prefix_caching,
            gpu_memory_utilization=gpu_memory_utilization,
            dtype=dtype,
            max_model_len=max_model_len,
            **engine_options,
        )
        self.calls = 0

    def sampling_params(self, n: int, sampling: SamplingParams) -> Any:
        vllm = _import_vllm()
        greedy = sampling.temperature == 0
        return vllm.SamplingParams(
            n=1 if greedy else n,
            temperature=sampling.temperature,
            top_p=1.0 if greedy else sampling.top_p,
            top_k=0 if greedy or not sampling.top_k else sampling.top_k,
            max_tokens=sampling.max_new_tokens,
            stop=list(sampling.stop) or None,
            seed=sampling.seed,
            logprobs=0,
        )

    def generate(self, prompts: Sequence[PromptValue], n: int, sampling: SamplingParams) -> list[list[Completion]]:
        if n < 1:
            raise RsftError(f"n must be >= 1, got {n}")
        params = self.sampling_params(n, sampling)
        chat = [i for i, p in enumerate(prompts) if not isinstance(p, str)]
        text = [i for i, p in enumerate(prompts) if isinstance(p, str)]
        outputs: dict[int, Any] = {}
        if text:
            for i, out in zip(text, self.llm.generate([prompts[i] for i in text], params, use_tqdm=False), strict=True):
                outputs[i] = out
        if chat:
            messages = [[dict(m) for m in prompts[i]] for i in chat]
            for i, out in zip(chat, self.llm.chat(messages, params, use_tqdm=False), strict=True):
                outputs[i] = out
        self.calls += 1
        return [self._completions(outputs[i], n) for i in range(len(prompts))]

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
