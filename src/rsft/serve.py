"""``rsft serve``: an OpenAI-compatible HTTP server that answers with the Best-of-N completion.

``POST /v1/completions`` and ``POST /v1/chat/completions`` take the usual OpenAI request; its ``n``
(or the extension field ``best_of``, which wins when both are given) is the number of candidates N.
The answer holds the best candidate as the one ordinary ``choices[0]`` and an extension field
``rsft`` with every candidate, its score and the chosen index.

Requests are batched dynamically: they wait in a bounded queue; one worker takes what arrived
within ``batch_window_ms`` (at most ``max_batch_prompts``), groups requests with the same N and
sampling settings, and calls ``generator.generate`` once per group in a worker thread (generation
blocks), then scores and selects. A full queue answers 503 with ``Retry-After``.

fastapi, uvicorn and pydantic are imported only when a server is built (the ``server`` extra).
"""

# No ``from __future__ import annotations``: FastAPI reads the handlers' annotations at runtime, and
# ``Request`` is imported inside ``create_app``.
import argparse
import asyncio
import contextlib
import dataclasses
import functools
import hmac
import json
import logging
import os
import random
import sys
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rsft.bon import (
    BoNResult,
    Extract,
    add_model_arguments,
    check_selector,
    generator_from_args,
    json_number,
    scorer_from_args,
    select_best,
)
from rsft.errors import RsftError
from rsft.generate import Generator
from rsft.score import Scorer, as_scorer
from rsft.types import PromptValue, SamplingParams

if TYPE_CHECKING:
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

LOG = logging.getLogger("rsft.serve")
"""One JSON line per request: method, path, status, n, latency_ms, batch_size."""

ROLES = ("system", "user", "assistant", "tool", "developer")


# --- request schemas -------------------------------------------------------------------------------


@functools.cache
def request_models() -> tuple[type, type]:
    """The pydantic models of the two POST bodies (built on first use: pydantic is optional)."""
    from typing import Literal

    from pydantic import BaseModel, ConfigDict, Field

    class _Request(BaseModel):
        # Unknown OpenAI fields (user, frequency_penalty, ...) are accepted and ignored.
        model_config = ConfigDict(extra="ignore")

        model: str | None = None
        n: int | None = Field(None, ge=1)
        best_of: int | None = Field(None, ge=1, description="rsft extension: candidates per prompt; wins over n")
        max_tokens: int | None = Field(None, ge=1)
        temperature: float | None = Field(None, ge=0, le=2)
        top_p: float | None = Field(None, gt=0, le=1)
        top_k: int | None = Field(None, ge=-1, description="vLLM-style extension; -1 or 0 disables")
        stop: str | list[str] | None = Field(None, max_length=16)
        seed: int | None = None
        stream: bool | None = False
        metadata: dict[str, Any] | None = Field(
            None, description="rsft extension: fields for the scorer, e.g. the gold 'answer' a checker needs")

    class CompletionRequest(_Request):
        prompt: str | list[str] = Field(..., description="one prompt (a list must hold exactly one)")

    class TextPart(BaseModel):
        model_config = ConfigDict(extra="ignore")
        type: Literal["text"]
        text: str

    class ChatMessage(BaseModel):
        model_config = ConfigDict(extra="ignore")
        role: Literal[ROLES]  # type: ignore[valid-type]
        content: str | list[TextPart] | None = None

    class ChatRequest(_Request):
        messages: list[ChatMessage] = Field(..., min_length=1)
        max_completion_tokens: int | None = Field(None, ge=1)

    return CompletionRequest, ChatRequest


# --- the batching worker ---------------------------------------------------------------------------


@dataclass
class _Job:
    """One request waiting for its Best-of-N answer."""

    prompt: PromptValue
    n: int
    sampling: SamplingParams
    """Sampling settings; ``seed`` is replaced per batch when ``seeded`` is False."""
    seeded: bool
    future: asyncio.Future[tuple[BoNResult, int, int]]
    """Resolves to (result, batch size, prompt tokens)."""
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Scorer fields sent by the client (the ``metadata`` extension), e.g. a gold answer."""

    @property
    def key(self) -> tuple[Any, ...]:
        """Requests with equal keys share one ``generate`` call."""
        seed = self.sampling.seed if self.seeded else None
        return self.n, dataclasses.replace(self.sampling, seed=0), seed


class BoNService:
    """The queue, the single batching worker and the thread that runs generation and scoring."""

    def __init__(
        self,
        generator: Generator,
        scorer: Scorer | None,
        selector: str,
        *,
        max_queue: int = 64,
        batch_window_ms: float = 10,
        max_batch_prompts: int = 32,
        extract: Extract | None = None,
    ) -> None:
        self.generator = generator
        self.scorer = scorer
        self.selector = selector
        self.extract = extract
        self.max_queue = max_queue
        self.batch_window = max(0.0, batch_window_ms / 1000)
        self.max_batch_prompts = max(1, max_batch_prompts)
        self.queue: asyncio.Queue[_Job] | None = None
        self.worker: asyncio.Task[None] | None = None
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rsft-serve")
        self.in_flight: list[_Job] = []
        self.batches = 0
        """Groups sent to ``generate`` so far."""

    def submit(self, job: _Job) -> None:
        """Queue a job; raises ``asyncio.QueueFull`` when ``max_queue`` jobs are already waiting."""
        if self.queue is None:
            self.queue = asyncio.Queue(maxsize=self.max_queue)
        if self.worker is None or self.worker.done():
            self.worker = asyncio.get_running_loop().create_task(self._run())
        self.queue.put_nowait(job)

    @property
    def waiting(self) -> int:
        return self.queue.qsize() if self.queue is not None else 0

    async def close(self) -> None:
        """Stop the worker; requests still waiting or in flight get 503."""
        if self.worker is not None:
            self.worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.worker
        pending = list(self.in_flight)
        while self.queue is not None and not self.queue.empty():
            pending.append(self.queue.get_nowait())
        for job in pending:
            if not job.future.done():
                job.future.set_exception(_HTTPError(503, "server shutting down", "server_error", "shutdown"))
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def _run(self) -> None:
        assert self.queue is not None
        while True:
            jobs = [await self.queue.get()]
            if self.batch_window:
                await asyncio.sleep(self.batch_window)
            while len(jobs) < self.max_batch_prompts and not self.queue.empty():
                jobs.append(self.queue.get_nowait())
            groups: dict[tuple[Any, ...], list[_Job]] = {}
            for job in jobs:
                if not job.future.done():  # a request that timed out in the queue is skipped
                    groups.setdefault(job.key, []).append(job)
            for group in groups.values():
                await self._run_group([j for j in group if not j.future.done()])

    async def _run_group(self, group: list[_Job]) -> None:
        if not group:
            return
        loop = asyncio.get_running_loop()
        self.in_flight = group
        try:
            outcomes = await loop.run_in_executor(self.executor, self._process, group)
        except Exception as e:  # noqa: BLE001 - _process catches; this is a last resort
            outcomes = [e] * len(group)
        finally:
            self.in_flight = []
        for job, outcome in zip(group, outcomes, strict=True):
            if job.future.done():
                continue
            if isinstance(outcome, BaseException):
                job.future.set_exception(outcome)
            else:
                job.future.set_result(outcome)

    def _process(self, group: list[_Job]) -> list[tuple[BoNResult, int, int] | Exception]:
        """Generate, score and select for one group (blocking, in the worker thread).

        When the group fails and holds several requests, each is retried alone, so one bad
        request (e.g. a chat prompt for a model without a chat template) fails only itself.
        """
        try:
            return self._generate_and_select(group)
        except Exception as e:  # noqa: BLE001 - reported to the waiting requests
            if len(group) == 1:
                return [e]
        out: list[tuple[BoNResult, int, int] | Exception] = []
        for job in group:
            try:
                out.extend(self._generate_and_select([job]))
            except Exception as e:  # noqa: BLE001
                out.append(e)
        return out

    def _generate_and_select(self, group: list[_Job]) -> list[tuple[BoNResult, int, int] | Exception]:
        first = group[0]
        sampling = first.sampling if first.seeded else dataclasses.replace(
            first.sampling, seed=random.randrange(2**31))
        prompts = [j.prompt for j in group]
        self.batches += 1
        rows = self.generator.generate(prompts, first.n, sampling)
        if len(rows) != len(prompts) or any(len(r) != first.n for r in rows):
            raise RsftError(f"generator {self.generator.name!r} returned {len(rows)} rows for {len(prompts)} prompts "
                            f"(expected {first.n} completions each)")
        results = select_best(prompts, rows, self.scorer, self.selector, metadata=[j.metadata for j in group],
                              extract=self.extract)
        return [(r, len(group), self._prompt_tokens(p)) for r, p in zip(results, prompts, strict=True)]

    def _prompt_tokens(self, prompt: PromptValue) -> int:
        """Prompt length in tokens when the generator exposes its tokenizer (hf), else 0."""
        tokenizer, render = getattr(self.generator, "tokenizer", None), getattr(self.generator, "render", None)
        if tokenizer is None or render is None:
            return 0
        try:
            return len(tokenizer(render(prompt))["input_ids"])
        except Exception:  # noqa: BLE001 - usage is informative only
            return 0


# --- HTTP ------------------------------------------------------------------------------------------


class _HTTPError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error",
                 code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.code, self.headers = status, message, kind, code, headers


def _error_response(e: _HTTPError) -> "JSONResponse":
    from fastapi.responses import JSONResponse

    body = {"error": {"message": e.message, "type": e.kind, "param": None, "code": e.code}}
    return JSONResponse(body, status_code=e.status, headers=e.headers)


class _AccessLog:
    """ASGI middleware: one JSON log line per HTTP request (handlers add ``n`` and ``batch_size``)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        state = scope.setdefault("state", {})

        async def send_and_record(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            record = {"method": scope.get("method"), "path": scope.get("path"), "status": status,
                      "n": state.get("n"), "latency_ms": round((time.perf_counter() - started) * 1000, 2),
                      "batch_size": state.get("batch_size")}
            if state.get("error"):
                record["error"] = state["error"]
            LOG.info(json.dumps(record))


def create_app(
    generator: Generator,
    scorer: Any = None,
    selector: str = "argmax",
    *,
    model_name: str = "rsft",
    api_key: str | None = None,
    max_n: int = 16,
    max_tokens: int = 256,
    max_body_bytes: int = 1_000_000,
    max_queue: int = 64,
    batch_window_ms: float = 10,
    max_batch_prompts: int = 32,
    request_timeout: float = 120.0,
    extract: Extract | None = None,
) -> "FastAPI":
    """Build the Best-of-N server.

    Args:
        generator: samples the candidates (any ``Generator``).
        scorer: anything ``rsft.score.as_scorer`` accepts, or None (then use ``majority``).
        selector: ``argmax``, ``majority`` or ``weighted_majority`` (see ``rsft.bon``).
        model_name: the id reported by ``/v1/models`` and in responses.
        api_key: when set, every ``/v1`` request needs ``Authorization: Bearer <api_key>``.
        max_n: largest N a request may ask for (422 above it).
        max_tokens: largest ``max_tokens`` a request may ask for (422 above); also the default.
        max_body_bytes: larger request bodies get 413.
        max_queue: requests allowed to wait; more get 503 with ``Retry-After``.
        batch_window_ms: how long the worker waits for more requests before generating.
        max_batch_prompts: requests (prompts) per batch at most.
        request_timeout: seconds a request may wait for its answer (504 after).
        extract: the answer a completion votes for (majority selectors); default first line.
    """
    from fastapi import FastAPI, Request

    scorer_obj = as_scorer(scorer) if scorer is not None else None
    service = BoNService(generator, scorer_obj, selector, max_queue=max_queue, batch_window_ms=batch_window_ms,
                         max_batch_prompts=max_batch_prompts, extract=extract)
    check_selector(selector, scorer_obj is not None)
    completion_model, chat_model = request_models()
    created = int(time.time())

    @contextlib.asynccontextmanager
    async def lifespan(app: "FastAPI") -> Any:
        yield
        await service.close()

    app = FastAPI(title="rsft Best-of-N", lifespan=lifespan)
    app.state.service = service
    app.add_middleware(_AccessLog)

    def check_auth(request: Request) -> None:
        if api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
            raise _HTTPError(401, "Incorrect or missing API key: send 'Authorization: Bearer <key>'.",
                             "authentication_error", "invalid_api_key")

    async def read_json(request: Request) -> Any:
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > max_body_bytes:
            raise _HTTPError(413, f"request body of {length} bytes exceeds the limit of {max_body_bytes} bytes",
                             code="request_too_large")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_body_bytes:
                raise _HTTPError(413, f"request body exceeds the limit of {max_body_bytes} bytes",
                                 code="request_too_large")
            chunks.append(chunk)
        try:
            return json.loads(b"".join(chunks))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise _HTTPError(422, f"malformed JSON body: {e}") from None

    def parse(model: type, body: Any) -> Any:
        from pydantic import ValidationError

        try:
            return model.model_validate(body)
        except ValidationError as e:
            problems = "; ".join(f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}"
                                 for err in e.errors()[:5])
            raise _HTTPError(422, f"invalid request: {problems}") from None

    def make_job(req: Any, prompt: PromptValue, limit: int | None) -> _Job:
        if req.stream:
            raise _HTTPError(422, "stream=true is not supported: Best-of-N picks after all candidates finish",
                             code="unsupported")
        n = req.best_of if req.best_of is not None else (req.n or 1)
        if n > max_n:
            raise _HTTPError(422, f"N={n} (n or best_of) exceeds this server's max_n={max_n}", code="n_too_large")
        tokens = limit if limit is not None else max_tokens
        if tokens > max_tokens:
            raise _HTTPError(422, f"max_tokens={tokens} exceeds this server's limit of {max_tokens}",
                             code="max_tokens_too_large")
        stop = (req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ())
        try:
            sampling = SamplingParams(
                temperature=1.0 if req.temperature is None else req.temperature,
                top_p=1.0 if req.top_p is None else req.top_p,
                top_k=max(0, req.top_k or 0),
                max_new_tokens=tokens,
                stop=stop,
                seed=req.seed or 0,
            )
        except ValueError as e:
            raise _HTTPError(422, str(e)) from None
        future = asyncio.get_running_loop().create_future()
        return _Job(prompt, n, sampling, req.seed is not None, future, dict(req.metadata or {}))

    async def answer(request: Request, chat: bool) -> dict[str, Any]:
        check_auth(request)
        body = await read_json(request)
        if chat:
            req = parse(chat_model, body)
            prompt: PromptValue = [{"role": m.role, "content": _content(m.content)} for m in req.messages]
            limit = req.max_completion_tokens or req.max_tokens
        else:
            req = parse(completion_model, body)
            if isinstance(req.prompt, list) and len(req.prompt) != 1:
                raise _HTTPError(422, f"prompt: give one prompt (a string), got a list of {len(req.prompt)}")
            prompt = req.prompt[0] if isinstance(req.prompt, list) else req.prompt
            limit = req.max_tokens
        job = make_job(req, prompt, limit)
        request.state.n = job.n
        try:
            service.submit(job)
        except asyncio.QueueFull:
            raise _HTTPError(503, f"server busy: {max_queue} requests already waiting; retry shortly",
                             "server_error", "queue_full", headers={"Retry-After": "1"}) from None
        try:
            result, batch_size, prompt_tokens = await asyncio.wait_for(job.future, request_timeout)
        except _HTTPError:
            raise
        except asyncio.TimeoutError:
            raise _HTTPError(504, f"no answer within {request_timeout:g} s", "server_error", "timeout") from None
        except RsftError as e:
            raise _HTTPError(400, str(e)) from None
        except Exception as e:  # noqa: BLE001 - a generator or scorer bug: report, keep serving
            raise _HTTPError(500, f"{type(e).__name__}: {e}", "server_error") from None
        request.state.batch_size = batch_size
        return _response(result, chat, model_name, prompt_tokens)

    async def endpoint(request: Request, chat: bool) -> Any:
        try:
            return await answer(request, chat)
        except _HTTPError as e:
            request.state.error = e.message
            return _error_response(e)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        """OpenAI text completion; ``choices[0]`` is the best of N candidates."""
        return await endpoint(request, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        """OpenAI chat completion; ``choices[0]`` is the best of N candidates."""
        return await endpoint(request, chat=True)

    @app.get("/v1/models")
    async def models(request: Request) -> Any:
        try:
            check_auth(request)
        except _HTTPError as e:
            request.state.error = e.message
            return _error_response(e)
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": created,
                                            "owned_by": "rsft"}]}

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": model_name, "selector": selector, "waiting": service.waiting,
                "max_queue": max_queue, "batches": service.batches}

    return app


def _content(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(part.text for part in content)


def _response(result: BoNResult, chat: bool, model_name: str, prompt_tokens: int) -> dict[str, Any]:
    completion_tokens = sum(c.n_tokens or 0 for c in result.completions)
    choice: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": result.finish_reason}
    if chat:
        choice["message"] = {"role": "assistant", "content": result.chosen}
    else:
        choice["text"] = result.chosen
    scores = [json_number(s) for _, s in result.candidates]
    return {
        "id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}",
        "object": "chat.completion" if chat else "text_completion",
        "created": int(time.time()),
        "model": model_name,
        "choices": [choice],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
        "rsft": {
            "selector": result.selector,
            "n": len(result.candidates),
            "score": json_number(result.score),
            "scores": scores,
            "candidates": [{"text": t, "score": s} for (t, _), s in zip(result.candidates, scores, strict=True)],
            "chosen_index": result.index,
        },
    }


# --- ``rsft serve`` --------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``rsft serve``."""
    add_model_arguments(parser)
    g = parser.add_argument_group("server")
    g.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    g.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    g.add_argument("--model-name", help="model id reported to clients (default: --model)")
    g.add_argument("--api-key-env", metavar="VAR",
                   help="require 'Authorization: Bearer <key>' with the key read from this environment variable "
                        "(default: no auth)")
    g.add_argument("--max-n", type=int, default=16, help="largest N (n or best_of) a request may ask (default: 16)")
    g.add_argument("--max-tokens", type=int, default=256,
                   help="largest max_tokens a request may ask, and the default (default: 256)")
    g.add_argument("--max-queue", type=int, default=64, help="requests allowed to wait; more get 503 (default: 64)")
    g.add_argument("--batch-window-ms", type=float, default=10,
                   help="how long to gather requests into one batch (default: 10)")
    g.add_argument("--max-batch-prompts", type=int, default=32, help="requests per batch at most (default: 32)")
    g.add_argument("--max-body-bytes", type=int, default=1_000_000, help="larger bodies get 413 (default: 1000000)")
    g.add_argument("--request-timeout", type=float, default=120.0, help="seconds before 504 (default: 120)")


def main(args: argparse.Namespace) -> None:
    """``rsft serve``: load the model and serve Best-of-N until interrupted."""
    try:
        import uvicorn
    except ImportError as e:
        raise RsftError(f"rsft serve needs the 'server' extra: pip install 'rsft[server]' ({e})") from None
    api_key = None
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            raise RsftError(f"--api-key-env {args.api_key_env}: that environment variable is unset or empty")
    for flag in ("max_n", "max_tokens", "max_queue", "max_batch_prompts", "max_body_bytes"):
        if getattr(args, flag) < 1:
            raise RsftError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    _log_to_stderr()
    scorer, selector = scorer_from_args(args)
    generator = generator_from_args(args)
    _plain_chat_template_if_missing(generator)
    app = create_app(generator, scorer, selector, model_name=args.model_name or args.model, api_key=api_key,
                     max_n=args.max_n, max_tokens=args.max_tokens, max_body_bytes=args.max_body_bytes,
                     max_queue=args.max_queue, batch_window_ms=args.batch_window_ms,
                     max_batch_prompts=args.max_batch_prompts, request_timeout=args.request_timeout)
    print(f"rsft: serving {args.model} ({selector}, N <= {args.max_n}) on http://{args.host}:{args.port}/v1"
          f"{' (auth on)' if api_key else ''}", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)


def _log_to_stderr() -> None:
    if not LOG.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        LOG.addHandler(handler)
    LOG.setLevel(logging.INFO)
    LOG.propagate = False


def _plain_chat_template_if_missing(generator: Generator) -> None:
    """Base models (the embedded Gemma default) have no chat template: join messages as plain text."""
    tokenizer = getattr(generator, "tokenizer", None)
    if tokenizer is not None and not getattr(tokenizer, "chat_template", None):
        from rsft.generate.hf import PLAIN_CHAT_TEMPLATE

        tokenizer.chat_template = PLAIN_CHAT_TEMPLATE
        print("rsft: the model has no chat template; chat messages are joined as plain text", file=sys.stderr)


def _cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rsft serve", description="Serve Best-of-N over the OpenAI API.")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        main(args)
    except RsftError as e:
        print(f"rsft: error: {e}", file=sys.stderr)
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(_cli())
