"""``rsft serve-reward``: any rsft scorer behind HTTP, for RL trainers and for rounds on other machines.

Two protocols over one scorer:

- ``POST /get_reward``, OpenRLHF's remote reward protocol (``--remote_rm_url``): ``{"query": [...],
  "prompts": [...], "labels": [...]}`` -> ``{"rewards": [...], "scores": [...]}``. A query is the
  prompt followed by the completion; the completion is the query after its prompt (the whole query
  without ``prompts``). A label is the row's gold ``answer``, or, when it is a JSON object, the
  row's metadata itself (``{"entry": {...}}`` for ``task``, ``{"tests": ...}`` for ``code``). A pair
  the scorer fails on gets 0.0 (OpenRLHF needs numbers) and its error under ``details``.
- ``POST /score``, rsft's own: ``{"prompts": [...], "completions": [...], "metadata": [{...}]}``, or
  metadata as columns (any other key holding one value per pair, e.g. ``"answer": [...]``) ->
  ``{"rewards": [...], "details": [...], "failed": [...]}``; a failed pair's reward is null.
  Prompts are text or chat message lists. The ``http:URL`` scorer speaks both.

The limits are ``rsft serve``'s, from the same code: a bearer key, a body-size limit (413), at most
``max_pairs`` pairs a request (422), one-line JSON errors, a bounded queue (503 with ``Retry-After``
when ``max_queue`` requests already wait) and a per-request timeout (504). Requests are scored one
at a time, in order, by one worker thread (scorers such as a reward model or the sandbox are not
thread-safe); each request is a batch already.
"""

# No ``from __future__ import annotations``: FastAPI reads the routes' annotations at runtime.
import asyncio
import contextlib
import json
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from rsft.bon.infer import json_number
from rsft.score import Scorer, as_scorer, score_pairs
from rsft.serve.handlers import answer_within, check_bearer, queue_full
from rsft.serve.schemas import HTTPError

if TYPE_CHECKING:
    from fastapi import FastAPI

Scored = tuple[list[float], list[str | None], list[bool]]


class RewardService:
    """The bounded queue and the one worker thread that scores requests in order."""

    def __init__(self, scorer: Scorer, *, max_queue: int = 64) -> None:
        self.scorer = scorer
        self.max_queue = max_queue
        self.waiting = 0
        """Requests queued and not yet started."""
        self.scored = 0
        """Requests scored so far."""
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rsft-reward")

    def submit(self, prompts: list[Any], completions: list[str], metadata: list[Mapping[str, Any]]) -> Future[Scored]:
        """Queue one request's pairs; 503 when ``max_queue`` requests already wait."""
        with self._lock:
            if self.waiting >= self.max_queue:
                raise queue_full(self.max_queue)
            self.waiting += 1
        return self._executor.submit(self._score, prompts, completions, metadata)

    def _score(self, prompts: list[Any], completions: list[str], metadata: list[Mapping[str, Any]]) -> Scored:
        with self._lock:
            self.waiting -= 1
        try:
            return score_pairs(self.scorer, prompts, completions, metadata, on_error="record")
        finally:
            self.scored += 1

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


class RewardHandlers:
    """The routes' logic without HTTP: a decoded body in, a response dict out or an ``HTTPError``."""

    def __init__(self, service: RewardService, *, api_key: str | None = None, max_pairs: int = 4096,
                 request_timeout: float = 300.0) -> None:
        self.service, self.api_key = service, api_key
        self.max_pairs, self.request_timeout = max_pairs, request_timeout

    def check_auth(self, authorization: str) -> None:
        check_bearer(self.api_key, authorization)

    async def openrlhf(self, body: Any, log: dict[str, Any] | None = None) -> dict[str, Any]:
        """``POST /get_reward``: OpenRLHF's ``query``/``prompts``/``labels`` -> ``rewards``."""
        body = _object(body)
        queries = _strings(body, "query")
        n = len(queries)
        prompts = _strings(body, "prompts", n) if body.get("prompts") is not None else [""] * n
        labels = _column(body, "labels", n) if body.get("labels") is not None else [None] * n
        completions = [q[len(p):] if q.startswith(p) else q for q, p in zip(queries, prompts, strict=True)]
        rewards, details, failed = await self._score(prompts, completions, [_label(x) for x in labels], log)
        values = [0.0 if f else json_number(r) for r, f in zip(rewards, failed, strict=True)]
        return {"rewards": values, "scores": values, "details": details}

    async def score(self, body: Any, log: dict[str, Any] | None = None) -> dict[str, Any]:
        """``POST /score``: ``prompts``, ``completions`` and metadata -> ``rewards``, ``details``, ``failed``."""
        body = _object(body)
        completions = _strings(body, "completions")
        n = len(completions)
        prompts = _column(body, "prompts", n)
        for i, p in enumerate(prompts):
            if not isinstance(p, str) and not _is_messages(p):
                raise HTTPError(422, f"prompts[{i}]: expected a string or a list of chat messages")
        metadata: list[dict[str, Any]] = [{} for _ in range(n)]
        if body.get("metadata") is not None:
            for i, m in enumerate(_column(body, "metadata", n)):
                if not isinstance(m, dict):
                    raise HTTPError(422, f"metadata[{i}]: expected an object")
                metadata[i].update(m)
        for key in sorted(set(body) - {"prompts", "completions", "metadata"}):
            for i, value in enumerate(_column(body, key, n)):
                metadata[i][key] = value
        rewards, details, failed = await self._score(prompts, completions, metadata, log)
        return {"rewards": [json_number(r) for r in rewards], "details": details, "failed": failed,
                "scorer": self.service.scorer.name}

    def health(self) -> dict[str, Any]:
        s = self.service
        return {"status": "ok", "scorer": s.scorer.name, "waiting": s.waiting, "max_queue": s.max_queue,
                "scored": s.scored}

    async def _score(self, prompts: list[Any], completions: list[str], metadata: list[Mapping[str, Any]],
                     log: dict[str, Any] | None) -> Scored:
        if len(completions) > self.max_pairs:
            raise HTTPError(422, f"{len(completions)} pairs exceed this server's max_pairs={self.max_pairs}",
                            code="too_many_pairs")
        if log is not None:
            log["n"] = len(completions)
        future = self.service.submit(prompts, completions, metadata)
        return await answer_within(asyncio.wrap_future(future), self.request_timeout)


def create_reward_app(scorer: Any, *, api_key: str | None = None, max_pairs: int = 4096, max_queue: int = 64,
                      max_body_bytes: int = 16_000_000, request_timeout: float = 300.0,
                      options: Mapping[str, Any] | None = None) -> "FastAPI":
    """The reward server over ``scorer`` (anything ``rsft.score.as_scorer`` takes, with ``options``)."""
    from fastapi import FastAPI, Request

    from rsft.serve.app import AccessLog, post_route

    service = RewardService(as_scorer(scorer, options), max_queue=max_queue)
    handlers = RewardHandlers(service, api_key=api_key, max_pairs=max_pairs, request_timeout=request_timeout)

    @contextlib.asynccontextmanager
    async def lifespan(app: "FastAPI") -> Any:
        yield
        service.close()

    app = FastAPI(title="rsft reward server", lifespan=lifespan)
    app.state.handlers = handlers
    app.add_middleware(AccessLog)

    @app.post("/get_reward")
    async def get_reward(request: Request) -> Any:
        """OpenRLHF's remote reward protocol."""
        return await post_route(request, handlers, handlers.openrlhf, max_body_bytes)

    @app.post("/score")
    async def score(request: Request) -> Any:
        """rsft's plain protocol: rewards, details and failed flags."""
        return await post_route(request, handlers, handlers.score, max_body_bytes)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return handlers.health()

    return app


def _object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise HTTPError(422, f"body: expected a JSON object, got {type(body).__name__}")
    return body


def _column(body: Mapping[str, Any], key: str, n: int | None = None) -> list[Any]:
    value = body.get(key)
    if not isinstance(value, list):
        raise HTTPError(422, f"{key}: expected a list" + (f" of {n} values" if n is not None else ""))
    if n is not None and len(value) != n:
        raise HTTPError(422, f"{key}: expected {n} values (one per pair), got {len(value)}")
    return value


def _strings(body: Mapping[str, Any], key: str, n: int | None = None) -> list[str]:
    values = _column(body, key, n)
    bad = next((i for i, v in enumerate(values) if not isinstance(v, str)), None)
    if bad is not None:
        raise HTTPError(422, f"{key}[{bad}]: expected a string, got {type(values[bad]).__name__}")
    return values


def _label(label: Any) -> dict[str, Any]:
    """One OpenRLHF label as scorer metadata: a JSON object is the metadata, anything else the answer."""
    if isinstance(label, dict):
        return dict(label)
    if isinstance(label, str) and label.lstrip().startswith("{"):
        with contextlib.suppress(ValueError):
            parsed = json.loads(label)
            if isinstance(parsed, dict):
                return parsed
    return {} if label is None else {"answer": label}


def _is_messages(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(
        isinstance(m, Mapping) and isinstance(m.get("role"), str) and "content" in m for m in value)


__all__: Sequence[str] = ("RewardHandlers", "RewardService", "create_reward_app")
