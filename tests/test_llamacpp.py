"""rsft's openai generator and ``rsft serve --backend openai`` against a real llama.cpp server.

llama-cpp-python's OpenAI-compatible server (``python -m llama_cpp.server``, the ``llamacpp`` extra)
serves the embedded Gemma-3-270M GGUF on 127.0.0.1. It ignores ``n`` (one choice per request), so
the generator must top every prompt up with further requests, each with its own seed; the Best-of-N
proxy sits in front of it and must answer with the best-scored of the candidates. Slow: the server
loads the model (seconds) and samples on the CPU.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.slow
pytest.importorskip("llama_cpp.server.app", reason="needs llama-cpp-python[server]: pip install 'rsft[llamacpp]'")

from rsft.generate.openai import OpenAIGenerator  # noqa: E402
from rsft.types import SamplingParams  # noqa: E402

ALIAS = "gemma3-270m"
PLAIN_SAMPLING = {"min_p": 0.0, "repeat_penalty": 1.0}
"""llama.cpp's own defaults (min_p 0.05, repeat_penalty 1.1) turned off: plain temperature sampling."""
PROMPTS = ["The capital of France is", "def fibonacci(n):"]
TESTS = Path(__file__).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(proc: subprocess.Popen, url: str, timeout: float = 180) -> None:
    """Until ``GET url`` answers 200; fails with the process's stderr if it exits first."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            pytest.fail(f"{proc.args[:3]} exited {proc.returncode}: {proc.communicate()[1][-2000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"{url} did not come up in {timeout:g} s"
        time.sleep(0.2)


def stop(proc: subprocess.Popen) -> str:
    """Terminate ``proc`` and return its stderr."""
    proc.terminate()
    try:
        return proc.communicate(timeout=30)[1]
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.communicate()[1]


@pytest.fixture(scope="module")
def llama_server() -> Iterator[str]:
    """``python -m llama_cpp.server`` on the Gemma GGUF; yields its ``/v1`` base URL."""
    from rsft.errors import RsftError
    from rsft.models import EMBEDDED

    try:
        gguf = EMBEDDED["gemma3-270m"].assemble()
    except RsftError as e:
        pytest.skip(str(e))
    port = free_port()
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", ALIAS,
           "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--n_threads", "2",
           "--n_threads_batch", "2", "--verbose", "False"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_ready(proc, f"http://127.0.0.1:{port}/v1/models")
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        stop(proc)


def generator(base_url: str, **options) -> OpenAIGenerator:
    return OpenAIGenerator(model=ALIAS, base_url=base_url, extra_body=PLAIN_SAMPLING, timeout=120, **options)


def test_generator_samples_n_per_prompt_from_llama_cpp(llama_server: str, tmp_path: Path) -> None:
    """n=4 from a server that returns one choice a request: 4 requests per prompt, distinct seeds, seeds replay."""
    journal = tmp_path / "journal.jsonl"
    sampling = SamplingParams(temperature=1.0, top_k=50, max_new_tokens=12, seed=7)
    rows = generator(llama_server, journal=journal).generate(PROMPTS, 4, sampling)
    assert [len(row) for row in rows] == [4, 4]
    for row in rows:
        for c in row:
            assert c.text.strip() and c.generator == f"openai:{ALIAS}"
            assert c.finish_reason in ("stop", "length") and 1 <= (c.n_tokens or 0) <= 12
        assert len({c.text for c in row}) > 1  # seeds 7..10: different samples
    # llama.cpp ignores n: one choice per response, so a probe (n=4) and three top-ups per prompt
    responses = [json.loads(line) for line in journal.read_text().splitlines()]
    assert len(responses) == 8 and all(len(r["choices"]) == 1 for r in responses)
    # the same seeds give the same samples (concurrency 1: the server's prompt cache sees the same order)
    first = generator(llama_server, concurrency=1).generate(PROMPTS, 4, sampling)
    again = generator(llama_server, concurrency=1).generate(PROMPTS, 4, sampling)
    assert [[c.text for c in row] for row in again] == [[c.text for c in row] for row in first]


def test_generator_temperature_zero_is_greedy_and_stop_is_honoured(llama_server: str) -> None:
    sampling = SamplingParams(temperature=0.0, max_new_tokens=16, stop=("\n",), seed=1)
    rows = generator(llama_server).generate(PROMPTS[:1], 3, sampling)
    texts = [c.text for c in rows[0]]
    assert len(set(texts)) == 1 and texts[0].strip() and "\n" not in texts[0]


def test_rsft_serve_proxies_llama_cpp_and_returns_the_best_candidate(llama_server: str) -> None:
    """`rsft serve --backend openai` in front of llama.cpp: n candidates, scored, the argmax as choices[0]."""
    port = free_port()
    rsft = Path(sys.executable).with_name("rsft")
    entry = [str(rsft)] if rsft.exists() else [sys.executable, "-m", "rsft.cli"]
    cmd = [*entry, "serve", "--backend", "openai", "--model", ALIAS, "--option", f"base_url={llama_server}",
           "--option", "extra_body={min_p: 0.0, repeat_penalty: 1.0}", "--option", "timeout=120",
           "--scorer", "plugin_scorers:length", "--port", str(port), "--max-n", "4", "--max-tokens", "24"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, url + "/health", timeout=120)
        r = httpx.post(url + "/v1/completions", timeout=300, json={
            "model": ALIAS, "prompt": PROMPTS[0], "n": 4, "max_tokens": 16, "temperature": 1.0, "seed": 3})
        assert r.status_code == 200, r.text
        body = r.json()
        ext = body["rsft"]
        assert ext["selector"] == "argmax" and ext["n"] == 4 and len(ext["candidates"]) == 4
        texts = [c["text"] for c in ext["candidates"]]
        assert all(t.strip() for t in texts) and len(set(texts)) > 1
        assert ext["scores"] == [float(len(t)) for t in texts]  # plugin_scorers.length
        best = max(range(4), key=lambda i: (ext["scores"][i], -i))  # ties: the first
        assert ext["chosen_index"] == best and ext["score"] == ext["scores"][best]
        assert body["choices"][0]["text"] == texts[best]
        assert body["choices"][0]["finish_reason"] in ("stop", "length")
        assert 4 <= body["usage"]["completion_tokens"] <= 64
        too_many = httpx.post(url + "/v1/completions", json={"prompt": "hi", "n": 5}, timeout=30)
        assert too_many.status_code == 422
    finally:
        err = stop(proc)
    assert "rsft: serving gemma3-270m (argmax, N <= 4)" in err
