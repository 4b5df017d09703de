"""The FastAPI app of ``rsft serve``: routes that read the body, call ``Handlers`` and write the answer.

fastapi is imported only when an app is built (the ``server`` extra).
"""

# No ``from __future__ import annotations``: FastAPI reads the routes' annotations at runtime, and
# ``Request`` is imported inside ``_add_routes``.
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from rsft.bon.adaptive import AdaptivePolicy
from rsft.bon.infer import Extract, KeyFn, answer_extractor, check_selector, resolve_equivalence
from rsft.config import ServeConfig
from rsft.generate import Generator
from rsft.score import as_scorer
from rsft.serve.batcher import BoNService, serve_config
from rsft.serve.handlers import ChecksAuth, Handlers
from rsft.serve.schemas import HTTPError

if TYPE_CHECKING:
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

LOG = logging.getLogger("rsft.serve")
"""One JSON line per request: method, path, status, n, latency_ms, batch_size."""


def create_app(
    generator: Generator,
    scorer: Any = None,
    selector: str = "argmax",
    *,
    model_name: str = "rsft",
    api_key: str | None = None,
    config: ServeConfig | None = None,
    extract: Extract | str | None = None,
    equivalence: str | KeyFn = "exact",
    adaptive: AdaptivePolicy | None = None,
    **limits: Any,
) -> "FastAPI":
    """Build the Best-of-N server.

    Args:
        generator: samples the candidates (any ``Generator``).
        scorer: anything ``rsft.score.as_scorer`` accepts, or None (then use ``majority``).
        selector: ``argmax``, ``majority`` or ``weighted_majority`` (see ``rsft.bon.infer``).
        model_name: the id reported by ``/v1/models`` and in responses.
        api_key: when set, every ``/v1`` request needs ``Authorization: Bearer <api_key>``.
        config: the server's limits (``rsft.config.ServeConfig``, whose defaults are the server's):
            ``n`` (N of a request that gives neither ``n`` nor ``best_of``; None: 8, at most
            ``max_n``), ``max_n`` (422 above it),
            ``max_tokens`` (422 above; also the default), ``max_body_bytes`` (413 above), ``max_queue``
            (503 with ``Retry-After`` above), ``batch_window_ms``, ``max_batch_prompts`` and
            ``request_timeout`` (504 after); its ``host``, ``port`` and ``model_name`` are not read here.
        extract: the answer a completion votes for (majority selectors): ``first_line`` (also None),
            ``boxed``, ``pkg.module:name`` or a callable.
        equivalence: which answers vote together (majority selectors): ``exact``, ``math`` or a key
            function (see ``rsft.bon.answers.answer_groups``).
        adaptive: settings of requests that send ``budget`` (adaptive N; each request's budget, and
            its ``min_n``/``supermajority`` when given, replace these); None: ``AdaptivePolicy``'s defaults.
        limits: keyword arguments named as ``ServeConfig`` fields (``max_n=8``), replacing those of ``config``.
    """
    from fastapi import FastAPI

    scorer_obj = as_scorer(scorer) if scorer is not None else None
    config = serve_config(config, limits)
    service = BoNService(generator, scorer_obj, selector, config=config, extract=answer_extractor(extract),
                         equivalence=resolve_equivalence(equivalence), adaptive=adaptive)
    check_selector(selector, scorer_obj is not None)
    handlers = Handlers(service, model_name=model_name, api_key=api_key)

    @contextlib.asynccontextmanager
    async def lifespan(app: "FastAPI") -> Any:
        yield
        await service.close()

    app = FastAPI(title="rsft Best-of-N", lifespan=lifespan)
    app.state.service = service
    app.state.handlers = handlers
    app.add_middleware(AccessLog)
    _add_routes(app, handlers, config.max_body_bytes)
    return app


def _add_routes(app: "FastAPI", handlers: Handlers, max_body_bytes: int) -> None:
    """The OpenAI routes (``/v1/completions``, ``/v1/chat/completions``, ``/v1/models``) and ``/health``."""
    from fastapi import Request

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        """OpenAI text completion; ``choices[0]`` is the best of N candidates."""
        return await post_route(request, handlers, handlers.completions, max_body_bytes)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        """OpenAI chat completion; ``choices[0]`` is the best of N candidates."""
        return await post_route(request, handlers, handlers.chat_completions, max_body_bytes)

    @app.get("/v1/models")
    async def models(request: Request) -> Any:
        async def answer() -> Any:
            return handlers.models()

        return await _guarded(request, handlers, answer)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return handlers.health()


async def post_route(request: "Request", handlers: ChecksAuth, handle: Callable[[Any, dict[str, Any]], Awaitable[Any]],
                max_body_bytes: int) -> Any:
    """A POST route: auth, the JSON body, then ``handle(body, log fields)``."""

    async def answer() -> Any:
        body = await _read_json(request, max_body_bytes)
        return await handle(body, request.scope.setdefault("state", {}))

    return await _guarded(request, handlers, answer)


async def _guarded(request: "Request", handlers: ChecksAuth, answer: Callable[[], Awaitable[Any]]) -> Any:
    """Check the API key, then answer; an ``HTTPError`` becomes its JSON error (and the log's ``error``)."""
    try:
        handlers.check_auth(request.headers.get("authorization", ""))
        return await answer()
    except HTTPError as e:
        request.state.error = e.message
        return _error_response(e)


async def _read_json(request: "Request", max_body_bytes: int) -> Any:
    """The request body as JSON, read in chunks so that a body past ``max_body_bytes`` stops with 413."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > max_body_bytes:
        raise HTTPError(413, f"request body of {length} bytes exceeds the limit of {max_body_bytes} bytes",
                        code="request_too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_body_bytes:
            raise HTTPError(413, f"request body exceeds the limit of {max_body_bytes} bytes",
                            code="request_too_large")
        chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise HTTPError(422, f"malformed JSON body: {e}") from None


def _error_response(e: HTTPError) -> "JSONResponse":
    from fastapi.responses import JSONResponse

    return JSONResponse(e.body(), status_code=e.status, headers=e.headers)


class AccessLog:
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
