"""The ``vllm`` backend on a CUDA GPU: one engine, tensor parallel, and data-parallel replicas as Ray actors.

Marked ``gpu`` (deselected by default; run with ``pytest -m gpu tests/test_vllm.py`` on a CUDA
machine with ``pip install 'rsft[vllm,ray]'``). The model is a small random Llama built here with
64-dimensional attention heads (what vLLM's attention kernels expect), so no download is needed.
"""

from __future__ import annotations

import math
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from rsft import stages
from rsft.artifacts import file_sha256
from rsft.config import ActorPoolConfig, GenerationConfig, GeneratorConfig, RayConfig, SamplingConfig
from rsft.types import Prompt, SamplingParams

pytestmark = pytest.mark.gpu

PROMPTS = [Prompt(f"p{i}", f"Q: What is {i} + {i}?\nA:", {"answer": str(2 * i)}) for i in range(6)]


def _cuda_devices() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@pytest.fixture(scope="module")
def vllm_model(tmp_path_factory) -> Path:
    pytest.importorskip("vllm", reason="needs vLLM: pip install 'rsft[vllm]'")
    if _cuda_devices() < 1:
        pytest.skip("needs a CUDA GPU")
    import tiny_models
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("vllm_llama")
    tok = tiny_models.build_tokenizer(out)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                         tie_word_embeddings=False)
    LlamaForCausalLM(config).save_pretrained(out)
    return out


def _options(tp: int = 1) -> dict:
    return {"dtype": "float16", "gpu_memory_utilization": 0.25, "max_model_len": 256,
            "tensor_parallel_size": tp, "enable_prefix_caching": True}


def _generation(model: Path, tp: int = 1) -> GenerationConfig:
    return GenerationConfig(n=4, shard_size=2, generator=GeneratorConfig(backend="vllm", model=str(model),
                                                                        options=_options(tp)),
                            sampling=SamplingConfig(temperature=1.0, top_k=50, max_new_tokens=8, seed=3))


def test_one_engine_samples_n_per_prompt_reproducibly(vllm_model):
    from rsft.generate.vllm import VLLMGenerator

    gen = VLLMGenerator(model=str(vllm_model), **_options())
    sampling = SamplingParams(temperature=1.0, top_k=50, max_new_tokens=8, seed=7)
    prompts = [p.prompt for p in PROMPTS[:3]]
    rows = gen.generate(prompts, 4, sampling)
    assert [len(r) for r in rows] == [4, 4, 4]
    for row in rows:
        for c in row:
            assert 1 <= c.n_tokens <= 8 and c.finish_reason in ("stop", "length")
            assert math.isfinite(c.logprob) and c.logprob <= 0 and c.generator == f"vllm:{vllm_model}"
    again = gen.generate(prompts, 4, sampling)
    assert [[c.text for c in r] for r in again] == [[c.text for c in r] for r in rows]
    greedy = gen.generate(prompts, 3, SamplingParams(temperature=0.0, max_new_tokens=8))
    assert all(len({c.text for c in r}) == 1 and len(r) == 3 for r in greedy)
    del gen


def test_ray_replicas_write_the_same_completions_as_one_local_engine(vllm_model, tmp_path):
    import ray

    from rsft import pipeline
    from rsft.ray_executor import RayExecutor

    config = _generation(vllm_model)
    local = tmp_path / "local" / "round-000"
    stages.generate(local, config, lambda: pipeline.build_generator(config), PROMPTS)
    import gc

    gc.collect()
    replicas = min(2, _cuda_devices())
    ray.init(include_dashboard=False, _temp_dir=str(tmp_path / "ray"))
    try:
        executor = RayExecutor(RayConfig(generate=ActorPoolConfig(actors=replicas, num_cpus=1)))
        counts = stages.generate(tmp_path / "ray" / "round-000", config, lambda: pipeline.build_generator(config),
                                 PROMPTS, executor=executor)
    finally:
        ray.shutdown()
    assert counts["shards_generated"] == 3
    remote = tmp_path / "ray" / "round-000"
    assert pq.read_table(remote / "completions.parquet").equals(pq.read_table(local / "completions.parquet"))
    assert file_sha256(remote / "completions.parquet") == file_sha256(local / "completions.parquet")


def test_tensor_parallel_engine_in_a_ray_actor_holding_two_gpus(vllm_model, tmp_path):
    if _cuda_devices() < 2:
        pytest.skip("needs 2 CUDA GPUs")
    import ray

    from rsft import pipeline
    from rsft.ray_executor import RayExecutor

    config = _generation(vllm_model, tp=2)
    assert stages.generation_gpus(config) == 2.0
    ray.init(include_dashboard=False, _temp_dir=str(tmp_path / "ray"))
    try:
        executor = RayExecutor(RayConfig(generate=ActorPoolConfig(actors=1, num_cpus=1)))
        assert executor.pool_options(stages.GenerationShards(lambda: None, 4, gpus=2.0), 1, 1)["num_gpus"] == 2.0
        counts = stages.generate(tmp_path / "round-000", config, lambda: pipeline.build_generator(config), PROMPTS,
                                 executor=executor)
    finally:
        ray.shutdown()
    assert counts["completions"] == len(PROMPTS) * 4
    table = pq.read_table(tmp_path / "round-000" / "completions.parquet")
    assert set(table.column("generator").to_pylist()) == {f"vllm:{vllm_model}"}
