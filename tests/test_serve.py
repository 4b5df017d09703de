"""``rsft serve`` for real on 127.0.0.1: the official openai client, auth, limits, queueing, batching.

A deterministic fake generator is used where exact outputs matter; the tiny random Llama where the
real hf path matters (batching, the subprocess entry point).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import uvicorn
from fake_openai_server import FakeServer

from rsft.config import ServeConfig
from rsft.errors import RsftError
from rsft.generate.hf import HFGenerator
from rsft.score import as_scorer
from rsft.serve import BoNService, Handlers, HTTPError, create_app
from rsft.types import Completion, PromptValue, SamplingParams

KEY = "sk-test-123"


def length(prompt: Any, completion: str) -> float:
    """The scorer of these tests: longer is better."""
    return float(len(completion))


class FakeGenerator:
    """Candidate j of a prompt is ``"<key>:<j>" + "x" * (3j mod n)``: distinct lengths, longest not first.

    ``key`` is the text prompt or the last chat message. With ``block`` set, every call waits for
    it, so tests can hold the worker busy and fill the queue deterministically.
    """

    name = "fake"

    def __init__(self, block: threading.Event | None = None) -> None:
        self.block = block
        self.started = threading.Event()
        self.batches: list[int] = []
        self.samplings: list[SamplingParams] = []

    @property
    def calls(self) -> int:
        return len(self.batches)

    def generate(self, prompts: Sequence[PromptValue], n: int, sampling: SamplingParams) -> list[list[Completion]]:
        self.batches.append(len(prompts))
        self.samplings.append(sampling)
        self.started.set()
        if self.block is not None:
            self.block.wait(10)
        out = []
        for p in prompts:
            key = p if isinstance(p, str) else p[-1]["content"]
            out.append([Completion(f"{key}:{j}" + "x" * ((3 * j) % n), j + 1, "length" if j % 2 else "stop")
                        for j in range(n)])
        return out


class Running:
    """Serve an app with uvicorn on a free 127.0.0.1 port in a background thread."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        port = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self._server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=1))
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True)

    def __enter__(self) -> Running:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            assert self._thread.is_alive() and time.monotonic() < deadline, "server did not start"
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._sock.close()

    def client(self, api_key: str = KEY) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=api_key, max_retries=0, timeout=30)

    def post(self, path: str, body: Any = None, key: str | None = KEY, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        headers.update(kwargs.pop("headers", {}))
        if body is not None:
            kwargs["json"] = body
        return httpx.post(self.url + path, headers=headers, timeout=30, **kwargs)


@pytest.fixture
def fake_server() -> Iterator[tuple[Running, FakeGenerator]]:
    gen = FakeGenerator()
    app = create_app(gen, length, "argmax", model_name="bon-test", max_n=8, max_tokens=32, max_body_bytes=20_000)
    with Running(app) as server:
        yield server, gen


def rsft_field(response: Any) -> dict[str, Any]:
    return response.model_extra["rsft"]


# --- the OpenAI client -----------------------------------------------------------------------------


def test_completions_return_the_longest_candidate(fake_server):
    server, gen = fake_server
    r = server.client().completions.create(model="bon-test", prompt="hi", n=4, max_tokens=5, temperature=0.5,
                                           top_p=0.9, stop=["\n\n"], seed=7)
    assert len(r.choices) == 1 and r.choices[0].index == 0
    ext = rsft_field(r)
    texts = [c["text"] for c in ext["candidates"]]
    assert texts == ["hi:0", "hi:1xxx", "hi:2xx", "hi:3x"]
    assert r.choices[0].text == "hi:1xxx" == max(texts, key=len)
    assert r.choices[0].finish_reason == "length"  # candidate 1 of the fake ran out of tokens
    assert ext == {"selector": "argmax", "n": 4, "score": 7.0, "scores": [4.0, 7.0, 6.0, 5.0],
                   "candidates": [{"text": t, "score": float(len(t))} for t in texts], "chosen_index": 1}
    assert r.usage.completion_tokens == 1 + 2 + 3 + 4 and r.usage.prompt_tokens == 0
    assert r.model == "bon-test" and r.object == "text_completion"
    assert gen.samplings[-1] == SamplingParams(temperature=0.5, top_p=0.9, top_k=0, max_new_tokens=5,
                                               stop=("\n\n",), seed=7)


def test_chat_completions_and_best_of_wins_over_n(fake_server):
    server, gen = fake_server
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "yo"}]
    r = server.client().chat.completions.create(model="x", messages=messages, n=2, extra_body={"best_of": 5})
    ext = rsft_field(r)
    assert ext["n"] == 5 and ext["chosen_index"] == 3
    assert r.choices[0].message.content == "yo:3xxxx" and r.choices[0].message.role == "assistant"
    assert ext["scores"] == [float(len(c["text"])) for c in ext["candidates"]]
    assert r.object == "chat.completion" and len(r.choices) == 1
    assert gen.samplings[-1].max_new_tokens == 32  # no max_tokens: the server's limit


def test_models_and_health(fake_server):
    server, _ = fake_server
    assert [m.id for m in server.client().models.list().data] == ["bon-test"]
    health = httpx.get(server.url + "/health").json()
    assert health["status"] == "ok" and health["waiting"] == 0 and health["selector"] == "argmax"


def test_a_request_without_n_gets_the_servers_n_and_its_own_n_or_best_of_wins():
    gen = FakeGenerator()
    with Running(create_app(gen, length, "argmax")) as server:  # the default: ServeConfig's n
        r = server.post("/v1/completions", {"prompt": "hi", "max_tokens": 4})
        assert r.status_code == 200 and r.json()["rsft"]["n"] == ServeConfig().default_n == 8
        assert len(r.json()["rsft"]["candidates"]) == 8
    with Running(create_app(gen, length, "argmax", n=3, max_n=4)) as server:
        def ext(body: dict[str, Any]) -> dict[str, Any]:
            r = server.post("/v1/completions", body)
            assert r.status_code == 200, r.text
            return r.json()["rsft"]

        plain = ext({"prompt": "hi"})
        assert plain["n"] == 3 and [c["text"] for c in plain["candidates"]] == ["hi:0", "hi:1", "hi:2"]
        chat = server.client().chat.completions.create(model="m", messages=[{"role": "user", "content": "yo"}])
        assert rsft_field(chat)["n"] == 3
        assert ext({"prompt": "hi", "n": 2})["n"] == 2 and ext({"prompt": "hi", "best_of": 4})["n"] == 4
        r = server.post("/v1/completions", {"prompt": "hi", "n": 5})  # the cap still holds
        assert r.status_code == 422 and "max_n=4" in r.json()["error"]["message"]


def test_the_servers_n_is_capped_by_max_n_and_an_explicit_one_must_fit(capsys):
    with Running(create_app(FakeGenerator(), length, "argmax", max_n=2)) as server:  # 8 capped at max_n
        assert server.post("/v1/completions", {"prompt": "hi"}).json()["rsft"]["n"] == 2
    with pytest.raises(RsftError, match="serve.n: 5 exceeds serve.max_n 4"):
        create_app(FakeGenerator(), length, n=5, max_n=4)
    from rsft.cli import main

    assert main(["serve", "--n", "5", "--max-n", "4", "--model", "no-such-model"]) == 2  # before loading a model
    assert capsys.readouterr().err == "rsft: error: serve.n: 5 exceeds serve.max_n 4\n"


# --- auth and request limits -----------------------------------------------------------------------


def test_api_key_required_when_set():
    app = create_app(FakeGenerator(), length, api_key=KEY)
    with Running(app) as server:
        with pytest.raises(openai.AuthenticationError):
            server.client(api_key="wrong").completions.create(model="m", prompt="hi")
        r = server.post("/v1/completions", {"prompt": "hi"}, key=None)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert httpx.get(server.url + "/v1/models").status_code == 401
        assert httpx.get(server.url + "/health").status_code == 200  # health stays open
        assert server.client().completions.create(model="m", prompt="hi", n=2).choices[0].text == "hi:1x"


def test_huge_body_413(fake_server):
    server, _ = fake_server
    r = server.post("/v1/completions", {"prompt": "x" * 50_000})
    assert r.status_code == 413 and "exceeds" in r.json()["error"]["message"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: the server counts the bytes it reads
        yield b'{"prompt": "'
        for _ in range(50):
            yield b"y" * 1000
        yield b'"}'

    assert server.post("/v1/completions", content=chunks()).status_code == 413


@pytest.mark.parametrize("body, message", [
    ({"prompt": "hi", "n": 9}, "max_n=8"),
    ({"prompt": "hi", "n": 2, "best_of": 9}, "max_n=8"),
    ({"prompt": "hi", "max_tokens": 33}, "limit of 32"),
    ({"prompt": "hi", "n": 0}, "n"),
    ({"prompt": "hi", "temperature": -1}, "temperature"),
    ({"prompt": "hi", "stream": True}, "stream"),
    ({"prompt": ["a", "b"]}, "one prompt"),
    ({"n": 2}, "prompt"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "role"),
])
def test_invalid_requests_422(fake_server, body, message):
    server, gen = fake_server
    path = "/v1/chat/completions" if "messages" in body else "/v1/completions"
    r = server.post(path, body)
    assert r.status_code == 422, r.text
    assert message in r.json()["error"]["message"]
    assert gen.calls == 0


def test_malformed_json_422(fake_server):
    server, _ = fake_server
    r = server.post("/v1/chat/completions", content=b'{"messages": [', headers={"content-type": "application/json"})
    assert r.status_code == 422 and "malformed JSON" in r.json()["error"]["message"]


# --- queueing and batching -------------------------------------------------------------------------


def _post_in_thread(server: Running, prompt: str, results: dict[str, int]) -> threading.Thread:
    def run() -> None:
        results[prompt] = server.post("/v1/completions", {"prompt": prompt, "n": 2}).status_code

    t = threading.Thread(target=run)
    t.start()
    return t


def _wait_for(condition: Any, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_full_queue_503_then_everyone_answered():
    release = threading.Event()
    gen = FakeGenerator(block=release)
    app = create_app(gen, length, max_queue=2, batch_window_ms=0)
    with Running(app) as server:
        results: dict[str, int] = {}
        try:
            threads = [_post_in_thread(server, "a", results)]
            assert gen.started.wait(10)  # "a" holds the worker
            threads += [_post_in_thread(server, p, results) for p in ("b", "c")]
            _wait_for(lambda: httpx.get(server.url + "/health").json()["waiting"] == 2)
            r = server.post("/v1/completions", {"prompt": "d"})
            assert r.status_code == 503 and r.headers["retry-after"] == "1"
            assert r.json()["error"]["code"] == "queue_full"
        finally:
            release.set()
        for t in threads:
            t.join(10)
    assert results == {"a": 200, "b": 200, "c": 200}
    assert gen.batches == [1, 2]  # b and c waited together and went out in one call


def test_request_timeout_504():
    release = threading.Event()
    gen = FakeGenerator(block=release)
    with Running(create_app(gen, length, request_timeout=0.3)) as server:
        try:
            r = server.post("/v1/completions", {"prompt": "slow"})
            assert r.status_code == 504 and r.json()["error"]["code"] == "timeout"
        finally:
            release.set()


def test_generator_error_fails_only_its_request():
    class Picky(FakeGenerator):
        def generate(self, prompts, n, sampling):
            if any(p == "bad" for p in prompts):
                raise ValueError("cannot do 'bad'")
            return super().generate(prompts, n, sampling)

    gen = Picky()
    with Running(create_app(gen, length, batch_window_ms=200)) as server:
        results: dict[str, int] = {}
        threads = [_post_in_thread(server, p, results) for p in ("ok1", "bad", "ok2")]
        for t in threads:
            t.join(10)
    assert results == {"ok1": 200, "bad": 500, "ok2": 200}


@pytest.fixture(scope="module")
def tiny_generator(tiny_lm: Path) -> HFGenerator:
    return HFGenerator(str(tiny_lm))


def test_fifty_concurrent_requests_are_batched(tiny_generator, caplog):
    caplog.set_level(logging.INFO, logger="rsft.serve")
    calls_before = tiny_generator.calls
    app = create_app(tiny_generator, length, batch_window_ms=50, max_tokens=4)
    statuses: list[int] = []
    with Running(app) as server:
        def one(i: int) -> None:
            body = {"prompt": f"Q: What is {i} + 1?\nA:", "n": 2, "max_tokens": 4, "top_k": 20}
            statuses.append(server.post("/v1/completions", body).status_code)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(50)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert statuses == [200] * 50
    calls = tiny_generator.calls - calls_before
    assert 1 <= calls <= 10, calls
    logs = [json.loads(r.getMessage()) for r in caplog.records if r.name == "rsft.serve"]
    posts = [e for e in logs if e["path"] == "/v1/completions"]
    assert len(posts) == 50 and all(e["status"] == 200 and e["n"] == 2 and e["latency_ms"] > 0 for e in posts)
    assert sum(e["batch_size"] for e in posts) > 50  # most requests shared their batch


def test_tiny_model_best_candidate_by_openai_client(tiny_generator):
    with Running(create_app(tiny_generator, length, max_tokens=6)) as server:
        client = server.client()
        r = client.completions.create(model="tiny", prompt="The quick brown", n=4, max_tokens=6, seed=3)
        ext = rsft_field(r)
        lengths = [len(c["text"]) for c in ext["candidates"]]
        assert ext["chosen_index"] == lengths.index(max(lengths))
        assert r.choices[0].text == ext["candidates"][ext["chosen_index"]]["text"]
        assert r.usage.prompt_tokens > 0 and 4 <= r.usage.completion_tokens <= 24
        chat = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hello"}],
                                              n=3, max_tokens=6)
        ext = rsft_field(chat)
        assert ext["n"] == 3 and chat.choices[0].message.content == max(
            (c["text"] for c in ext["candidates"]), key=len)


# --- the entry point -------------------------------------------------------------------------------


def test_python_m_rsft_serve_in_front_of_another_openai_server(tmp_path):
    """The entry point with real flags, proxying a (fake) llama.cpp-style server: light, no torch."""
    (tmp_path / "my_scorers.py").write_text("def likes_c2(prompt, completion):\n"
                                            "    return float(completion.endswith('c2'))\n")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "RSFT_TEST_KEY": KEY, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    with FakeServer() as upstream:
        cmd = [sys.executable, "-m", "rsft.serve", "--backend", "openai", "--model", "fake-model",
               "--option", f"base_url={upstream.base_url}", "--scorer", "my_scorers:likes_c2",
               "--port", str(port), "--n", "3", "--max-n", "4", "--api-key-env", "RSFT_TEST_KEY", "--model-name", "proxy"]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_for_health(proc, url)
            client = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)
            r = client.chat.completions.create(model="proxy", messages=[{"role": "user", "content": "hi"}], n=4)
            ext = rsft_field(r)
            assert ext["selector"] == "argmax" and ext["chosen_index"] == 2
            assert ext["scores"] == [0.0, 0.0, 1.0, 0.0]
            assert r.choices[0].message.content.startswith("hi s") and r.choices[0].message.content.endswith("c2")
            assert upstream.stats.bodies[-1]["n"] == 4 and r.model == "proxy"
            plain = httpx.post(url + "/v1/completions", json={"prompt": "hi"}, headers={"Authorization": f"Bearer {KEY}"})
            assert plain.status_code == 200 and plain.json()["rsft"]["n"] == 3  # no n: the server's --n
            assert httpx.post(url + "/v1/completions", json={"prompt": "hi", "n": 5},
                              headers={"Authorization": f"Bearer {KEY}"}).status_code == 422
            assert httpx.post(url + "/v1/completions", json={"prompt": "hi"}).status_code == 401
        finally:
            proc.terminate()
            _, err = proc.communicate(timeout=20)
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert [(e["path"], e["status"]) for e in lines] == [
        ("/health", 200), ("/v1/chat/completions", 200), ("/v1/completions", 200), ("/v1/completions", 422),
        ("/v1/completions", 401)]


def _wait_for_health(proc: subprocess.Popen, url: str) -> None:
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, proc.communicate()[1]
        try:
            if httpx.get(url + "/health").status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "server did not come up"
        time.sleep(0.1)


def test_a_checker_gets_the_gold_answer_from_the_metadata_extension():
    """`rsft serve --scorer exact`: the client sends the gold answer in `metadata`; the right candidate wins."""
    from rsft.score import as_scorer

    gen = FakeGenerator()
    app = create_app(gen, as_scorer("exact", {"extract": "full"}), "argmax", model_name="bon-test", max_n=8)
    with Running(app) as server:
        r = server.client().completions.create(model="bon-test", prompt="hi", n=4, max_tokens=5,
                                               extra_body={"metadata": {"answer": "hi:2xx"}})
        assert r.choices[0].text == "hi:2xx"
        assert rsft_field(r)["scores"] == [0.0, 0.0, 1.0, 0.0]
        missing = server.post("/v1/completions", {"prompt": "hi", "n": 2, "max_tokens": 5})
        assert missing.status_code == 400 and "answer" in missing.json()["error"]["message"]


# --- the handlers, called without HTTP --------------------------------------------------------------


def run_handler(gen: Any, call: Any, **limits: Any) -> Any:
    """``await call(handlers)`` in a fresh event loop (no server, no HTTP), then close the service."""
    service = BoNService(gen, as_scorer(length), "argmax", batch_window_ms=0)
    handlers = Handlers(service, model_name="bon-test", max_n=8, max_tokens=32, **limits)

    async def main() -> Any:
        try:
            return await call(handlers)
        finally:
            await service.close()

    return asyncio.run(main())


def test_handler_answers_a_completion_and_fills_the_log_fields():
    gen, log = FakeGenerator(), {}
    body = run_handler(gen, lambda h: h.completions({"prompt": ["hi"], "n": 4, "max_tokens": 5, "seed": 7}, log))
    assert body["object"] == "text_completion" and body["model"] == "bon-test"
    assert body["choices"][0]["text"] == "hi:1xxx" and body["choices"][0]["finish_reason"] == "length"
    assert body["rsft"]["scores"] == [4.0, 7.0, 6.0, 5.0] and body["rsft"]["chosen_index"] == 1
    assert body["usage"] == {"prompt_tokens": 0, "completion_tokens": 10, "total_tokens": 10}
    assert log == {"n": 4, "batch_size": 1}
    assert gen.samplings == [SamplingParams(temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=5, stop=(), seed=7)]


@pytest.mark.parametrize("body, status, code, message", [
    ({"prompt": "hi", "n": 9}, 422, "n_too_large", "max_n=8"),
    ({"prompt": "hi", "max_tokens": 33}, 422, "max_tokens_too_large", "limit of 32"),
    ({"prompt": "hi", "stream": True}, 422, "unsupported", "stream"),
    ({"prompt": ["a", "b"]}, 422, None, "one prompt"),
    ({"n": 2}, 422, None, "prompt"),
])
def test_handler_bad_request_raises_the_typed_error(body, status, code, message):
    gen = FakeGenerator()
    with pytest.raises(HTTPError) as caught:
        run_handler(gen, lambda h: h.completions(body))
    e = caught.value
    assert (e.status, e.code) == (status, code) and message in e.message
    assert e.body() == {"error": {"message": e.message, "type": "invalid_request_error", "param": None, "code": code}}
    assert gen.calls == 0


def test_handler_generator_failure_is_a_500_and_timeout_a_504():
    class Broken(FakeGenerator):
        def generate(self, prompts, n, sampling):
            raise ValueError("boom")

    with pytest.raises(HTTPError) as caught:
        run_handler(Broken(), lambda h: h.completions({"prompt": "hi"}))
    assert caught.value.status == 500 and caught.value.message == "ValueError: boom"
    release = threading.Event()
    try:
        with pytest.raises(HTTPError) as caught:
            run_handler(FakeGenerator(block=release), lambda h: h.completions({"prompt": "hi"}), request_timeout=0.1)
    finally:
        release.set()
    assert (caught.value.status, caught.value.code) == (504, "timeout")


def test_handler_auth_models_and_health_without_http():
    service = BoNService(FakeGenerator(), None, "majority", max_queue=5)
    handlers = Handlers(service, model_name="m", api_key=KEY)
    handlers.check_auth(f"Bearer {KEY}")
    handlers.check_auth(f"bearer {KEY} ")
    for header in ("", KEY, "Bearer wrong", f"Basic {KEY}"):
        with pytest.raises(HTTPError) as caught:
            handlers.check_auth(header)
        assert (caught.value.status, caught.value.code) == (401, "invalid_api_key")
    assert [m["id"] for m in handlers.models()["data"]] == ["m"]
    assert handlers.health() == {"status": "ok", "model": "m", "selector": "majority", "waiting": 0,
                                 "max_queue": 5, "batches": 0}


def test_handler_chat_with_the_tiny_model(tiny_generator):
    chat = {"messages": [{"role": "user", "content": [{"type": "text", "text": "hel"}, {"type": "text", "text": "lo"}]}],
            "n": 3, "max_completion_tokens": 4}
    body = run_handler(tiny_generator, lambda h: h.chat_completions(chat))
    ext = body["rsft"]
    assert body["object"] == "chat.completion" and ext["n"] == 3
    assert body["choices"][0]["message"] == {"role": "assistant",
                                             "content": ext["candidates"][ext["chosen_index"]]["text"]}
    assert ext["scores"] == [float(len(c["text"])) for c in ext["candidates"]]
    assert body["usage"]["prompt_tokens"] > 0 and body["usage"]["completion_tokens"] <= 12


# --- adaptive N (the budget extension) and equivalence-aware voting --------------------------------


def test_budget_request_stops_early_and_reports_samples_saved():
    from test_adaptive import SCRIPT, ScriptedGenerator

    from rsft.bon.adaptive import AdaptivePolicy

    gen = ScriptedGenerator(SCRIPT)
    app = create_app(gen, None, "majority", max_n=8, adaptive=AdaptivePolicy(8, min_n=2))
    with Running(app) as server:
        client = server.client()

        def ask(prompt: str, **extra: Any) -> dict[str, Any]:
            r = client.completions.create(model="m", prompt=prompt, seed=0, extra_body=extra)
            ext = rsft_field(r)
            assert r.choices[0].text == ext["candidates"][ext["chosen_index"]]["text"]
            assert r.usage.completion_tokens == ext["n"]  # one token per scripted candidate
            return ext

        easy = ask("easy", budget=8)
        assert easy["adaptive"] == {"budget": 8, "samples": 2, "saved": 6} and easy["n"] == 2
        assert ask("late", budget=8)["adaptive"] == {"budget": 8, "samples": 8, "saved": 0}
        assert gen.calls[-3:] == [(["late"], 2, 0), (["late"], 2, 2), (["late"], 4, 4)]
        assert ask("late", budget=8, supermajority=0.5)["adaptive"]["samples"] == 2  # "1", "2": 1/2
        assert ask("easy", budget=6, min_n=4)["adaptive"] == {"budget": 6, "samples": 4, "saved": 2}
        assert "adaptive" not in ask("easy", n=3)
        calls = len(gen.calls)
        for body, message in [({"budget": 9}, "max_n=8"), ({"n": 2, "min_n": 2}, "min_n: only with budget"),
                              ({"budget": 4, "supermajority": 0}, "supermajority"),
                              ({"budget": 4, "min_n": 0}, "min_n")]:
            r = server.post("/v1/completions", {"prompt": "easy", **body})
            assert r.status_code == 422 and message in r.json()["error"]["message"], r.text
        assert len(gen.calls) == calls


def test_tiny_model_budget_request(tiny_generator):
    app = create_app(tiny_generator, None, "majority", max_tokens=4)
    with Running(app) as server:
        client = server.client()
        greedy = client.completions.create(model="tiny", prompt="The quick brown", max_tokens=4, temperature=0,
                                           extra_body={"budget": 16})
        ext = rsft_field(greedy)
        assert ext["adaptive"] == {"budget": 16, "samples": 4, "saved": 12}  # 4 identical: the default min_n
        assert len({c["text"] for c in ext["candidates"]}) == 1
        full = client.completions.create(model="tiny", prompt="The quick brown", max_tokens=4, seed=3,
                                         extra_body={"budget": 6, "supermajority": 1.5})
        ext = rsft_field(full)
        assert ext["adaptive"] == {"budget": 6, "samples": 6, "saved": 0} and len(ext["candidates"]) == 6
        assert 6 <= full.usage.completion_tokens <= 24
        again = client.completions.create(model="tiny", prompt="The quick brown", max_tokens=4, seed=3,
                                          extra_body={"budget": 6, "supermajority": 1.5})
        assert rsft_field(again)["candidates"] == ext["candidates"]  # seeded: the same batches


def test_the_server_votes_with_its_equivalence():
    from test_bon import ListGenerator

    from rsft.bon.infer import answer_extractor

    texts = ["\\boxed{3}", "\\boxed{1/2}", "\\boxed{0.5}"]
    for equivalence, index in [("exact", 0), ("math", 1)]:
        service = BoNService(ListGenerator(texts), None, "majority", batch_window_ms=0,
                             extract=answer_extractor("boxed"), equivalence=equivalence)
        handlers = Handlers(service, max_n=8)

        async def main(h: Handlers = handlers, s: BoNService = service) -> Any:
            try:
                return await h.completions({"prompt": "q", "n": 3})
            finally:
                await s.close()

        assert asyncio.run(main())["rsft"]["chosen_index"] == index


def test_python_m_rsft_serve_voting_and_adaptive_flags(tmp_path):
    """`rsft serve --selector majority --equivalence KEY_FN --min-n 2` in front of the fake OpenAI server."""
    (tmp_path / "serve_keys.py").write_text("def first_word(answer):\n    return answer.split()[0]\n")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    with FakeServer() as upstream:
        cmd = [sys.executable, "-m", "rsft.serve", "--backend", "openai", "--model", "fake-model",
               "--option", f"base_url={upstream.base_url}", "--selector", "majority", "--port", str(port),
               "--max-n", "8", "--equivalence", "serve_keys:first_word", "--min-n", "2", "--supermajority", "0.9"]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_for_health(proc, url)
            r = httpx.post(url + "/v1/completions", json={"prompt": "hi", "budget": 8, "seed": 5}).json()
            assert r["rsft"]["adaptive"] == {"budget": 8, "samples": 2, "saved": 6}  # every "hi s5 c<j>" votes "hi"
            assert r["rsft"]["score"] == 1.0 and upstream.stats.bodies[-1]["n"] == 2
            assert upstream.stats.bodies[-1]["seed"] == 5
        finally:
            proc.terminate()
            proc.communicate(timeout=20)
