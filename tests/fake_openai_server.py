"""A small OpenAI-compatible server for tests: deterministic texts, configurable misbehaviour.

Texts are ``"<key> s<seed> c<index>" + suffix`` where ``key`` is the text prompt or the last chat
message's content, so tests can assert exact outputs. Misbehaviour is real, at the HTTP level: error
statuses, stalls that outlast the client's timeout, and connections dropped in the middle of a
response body (the client sees the peer close the connection). Tokens are whitespace-delimited pieces of
the text, each with logprob ``TOKEN_LOGPROB``. Configure a test through ``app.state.cfg`` and read
what the server saw from ``app.state.stats``; ``FakeServer`` runs the app with uvicorn in a thread.
"""

from __future__ import annotations

import asyncio
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

TOKEN_LOGPROB = -0.25


@dataclass
class FakeConfig:
    """How the server behaves; tests mutate this between runs."""

    max_choices: int | None = None
    """Return at most this many choices per request (llama.cpp: 1); None honours ``n``."""
    fail_first: int = 0
    """Fail this many requests (counted across all endpoints) before answering normally."""
    fail_status: int = 500
    retry_after: str | None = None
    """``Retry-After`` header sent with failures."""
    api_key: str | None = None
    """Require ``Authorization: Bearer <api_key>`` (401 otherwise)."""
    delay: float = 0.0
    """Seconds to sleep inside every request (to observe concurrency)."""
    hang_first: int = 0
    """Sleep ``hang_seconds`` in this many first requests (to trigger client timeouts)."""
    hang_seconds: float = 0.0
    suffix: str = ""
    """Appended to every text, e.g. to test client-side stop strings (the server ignores ``stop``)."""
    finish_reason: str | None = "stop"
    usage: bool = True
    script: list[str] = field(default_factory=list)
    """What request k (1-based) gets, for k up to its length: ``ok``, ``drop`` (the connection is
    closed halfway through the response body), ``stall`` (sleep ``hang_seconds`` first) or an
    HTTP status such as ``"429"``; later requests follow the other settings."""
    fail_after: int | None = None
    """Answer this many requests normally, then fail every later one with ``fail_status`` (a server
    that dies for good)."""
    reply: Callable[[dict[str, Any]], str] | None = None
    """The text of every choice as a function of the request body, instead of the echo (a judge's reply)."""


@dataclass
class FakeStats:
    """What the server saw."""

    requests: int = 0
    bodies: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    served: int = 0
    """Requests answered with choices."""


def _tokens(text: str) -> list[str]:
    return re.findall(r"\s*\S+|\s+", text)


def _key(body: dict[str, Any], chat: bool) -> str:
    if chat:
        return str(body["messages"][-1]["content"])
    return str(body["prompt"])


def _choice(body: dict[str, Any], chat: bool, index: int, cfg: FakeConfig) -> dict[str, Any]:
    text = cfg.reply(body) if cfg.reply else f"{_key(body, chat)} s{body.get('seed')} c{index}{cfg.suffix}"
    tokens = _tokens(text)
    choice: dict[str, Any] = {"index": index, "finish_reason": cfg.finish_reason}
    if chat:
        choice["message"] = {"role": "assistant", "content": text}
        if body.get("logprobs"):
            choice["logprobs"] = {"content": [{"token": t, "logprob": TOKEN_LOGPROB} for t in tokens]}
    else:
        choice["text"] = text
        if body.get("logprobs") is not None:
            choice["logprobs"] = {"tokens": tokens, "token_logprobs": [TOKEN_LOGPROB] * len(tokens)}
    return choice


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": "invalid_request_error", "code": status}}
    return JSONResponse(body, status_code=status, headers=headers)


async def _dropped_body():
    yield b'{"id": "cmpl-dropped", "choices": ['
    raise ConnectionAbortedError("fake server drops the connection mid-response (on purpose)")


async def _handle(request: Request, chat: bool) -> Response:
    app = request.app
    cfg: FakeConfig = app.state.cfg
    stats: FakeStats = app.state.stats
    stats.requests += 1
    number = stats.requests
    stats.paths.append(request.url.path)
    stats.headers.append(dict(request.headers))
    stats.in_flight += 1
    stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
    try:
        body = await request.json()
        stats.bodies.append(body)
        if cfg.api_key and request.headers.get("authorization") != f"Bearer {cfg.api_key}":
            return _error(401, "Incorrect API key provided.")
        if not isinstance(body.get("model"), str) or ("messages" if chat else "prompt") not in body:
            return _error(400, "missing required field\nmodel or prompt")
        if cfg.delay:
            await asyncio.sleep(cfg.delay)
        action = cfg.script[number - 1] if number <= len(cfg.script) else "ok"
        if number <= cfg.hang_first or action == "stall":
            await asyncio.sleep(cfg.hang_seconds)
        if action == "drop":
            return StreamingResponse(_dropped_body(), media_type="application/json")
        if action.isdigit():
            return _error(int(action), f"simulated failure {number}")
        if number <= cfg.fail_first or (cfg.fail_after is not None and number > cfg.fail_after):
            headers = {"Retry-After": cfg.retry_after} if cfg.retry_after else None
            return _error(cfg.fail_status, f"simulated failure {number}", headers)
        stats.served += 1
        n = int(body.get("n") or 1)
        count = n if cfg.max_choices is None else min(n, cfg.max_choices)
        choices = [_choice(body, chat, i, cfg) for i in range(count)]
        out: dict[str, Any] = {
            "id": f"cmpl-{number}",
            "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()),
            "model": body["model"],
            "choices": choices,
        }
        if cfg.usage:
            texts = [c["message"]["content"] if chat else c["text"] for c in choices]
            completion_tokens = sum(len(_tokens(t)) for t in texts)
            out["usage"] = {
                "prompt_tokens": 3,
                "completion_tokens": completion_tokens,
                "total_tokens": 3 + completion_tokens,
            }
        return JSONResponse(out)
    finally:
        stats.in_flight -= 1


def make_app() -> FastAPI:
    """A fresh app with default config and empty stats."""
    app = FastAPI()
    app.state.cfg = FakeConfig()
    app.state.stats = FakeStats()

    @app.post("/v1/completions")
    async def completions(request: Request) -> JSONResponse:
        return await _handle(request, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> JSONResponse:
        return await _handle(request, chat=True)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": "fake-model", "object": "model", "owned_by": "rsft"}]}

    return app


class FakeServer:
    """Run ``make_app()`` with uvicorn on a free 127.0.0.1 port in a background thread."""

    def __init__(self, port: int = 0) -> None:
        """``port``: 0 for a free one; a given port lets a test restart a server at the same address."""
        self.app = make_app()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", port))
        self.port: int = self._sock.getsockname()[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        config = uvicorn.Config(self.app, log_level="warning", lifespan="off", timeout_graceful_shutdown=1)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )

    def start(self) -> FakeServer:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("fake OpenAI server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._sock.close()

    def reset(self) -> None:
        """Default config and empty stats, for the next test."""
        self.app.state.cfg = FakeConfig()
        self.app.state.stats = FakeStats()

    @property
    def cfg(self) -> FakeConfig:
        return self.app.state.cfg

    @property
    def stats(self) -> FakeStats:
        return self.app.state.stats

    def __enter__(self) -> FakeServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
