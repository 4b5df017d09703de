"""What each ``rsft serve`` endpoint does, without HTTP: a decoded JSON body in, a response dict out.

Every handler returns the OpenAI response body or raises ``HTTPError`` (status, message, code), so
the request logic can be called and tested directly; ``rsft.serve.app`` only reads request bodies,
calls these and writes the responses.
"""

import asyncio
import dataclasses
import hmac
import time
from typing import Any, Protocol

from rsft.bon.adaptive import AdaptivePolicy
from rsft.config import ServeConfig
from rsft.errors import RsftError
from rsft.serve.batcher import BoNService, Job, serve_config
from rsft.serve.schemas import HTTPError, completion_response, message_text, parse_request, request_models
from rsft.types import PromptValue, SamplingParams


class ChecksAuth(Protocol):
    """What the routes of ``rsft.serve.app`` need of a server's handlers: the bearer check."""

    def check_auth(self, authorization: str) -> None: ...


def check_bearer(api_key: str | None, authorization: str) -> None:
    """401 unless ``authorization`` (the header's value) is ``Bearer <api_key>``; no key: open."""
    if api_key is None:
        return
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
        raise HTTPError(401, "Incorrect or missing API key: send 'Authorization: Bearer <key>'.",
                        "authentication_error", "invalid_api_key")


def queue_full(max_queue: int) -> HTTPError:
    """The 503 of a server whose ``max_queue`` requests are already waiting (clients retry after 1 s)."""
    return HTTPError(503, f"server busy: {max_queue} requests already waiting; retry shortly",
                     "server_error", "queue_full", headers={"Retry-After": "1"})


async def answer_within(awaitable: Any, timeout: float) -> Any:
    """The result of ``awaitable`` (a job's future); its failure as an ``HTTPError``: 504 after
    ``timeout`` seconds, 400 for an ``RsftError`` (bad input), 500 for anything else."""
    try:
        return await asyncio.wait_for(awaitable, timeout)
    except HTTPError:
        raise
    except asyncio.TimeoutError:
        raise HTTPError(504, f"no answer within {timeout:g} s", "server_error", "timeout") from None
    except RsftError as e:
        raise HTTPError(400, str(e)) from None
    except Exception as e:  # noqa: BLE001 - a generator or scorer bug: report, keep serving
        raise HTTPError(500, f"{type(e).__name__}: {e}", "server_error") from None


class Handlers:
    """The endpoints' logic over one ``BoNService``, with the server's limits.

    Args:
        service: the queue and worker that answer Best-of-N jobs.
        model_name: the id reported by ``/v1/models`` and in responses.
        api_key: when set, ``check_auth`` needs ``Bearer <api_key>``.
        config: the limits (default: the service's ``config``): ``default_n`` (N of a request that
            gives neither ``n`` nor ``best_of``), ``max_n`` (422 above it), ``max_tokens`` (422 above; also
            the default) and ``request_timeout`` (seconds before 504).
        limits: keyword arguments named as ``ServeConfig`` fields, replacing those of ``config``.
    """

    def __init__(self, service: BoNService, *, model_name: str = "rsft", api_key: str | None = None,
                 config: ServeConfig | None = None, **limits: Any) -> None:
        self.service = service
        self.model_name = model_name
        self.api_key = api_key
        self.config = serve_config(config or service.config, limits)
        self.n, self.max_n, self.max_tokens = self.config.default_n, self.config.max_n, self.config.max_tokens
        self.request_timeout = self.config.request_timeout
        self.created = int(time.time())

    def check_auth(self, authorization: str) -> None:
        """401 unless the ``Authorization`` header's value is ``Bearer <api_key>`` (no key set: open)."""
        check_bearer(self.api_key, authorization)

    async def completions(self, body: Any, log: dict[str, Any] | None = None) -> dict[str, Any]:
        """``POST /v1/completions``: ``choices[0]`` is the best of N candidates for the one prompt.

        ``log`` (optional) receives the access log's ``n`` and ``batch_size``.
        """
        req = parse_request(request_models()[0], body)
        if isinstance(req.prompt, list) and len(req.prompt) != 1:
            raise HTTPError(422, f"prompt: give one prompt (a string), got a list of {len(req.prompt)}")
        prompt = req.prompt[0] if isinstance(req.prompt, list) else req.prompt
        return await self._answer(self.make_job(req, prompt, req.max_tokens), False, log)

    async def chat_completions(self, body: Any, log: dict[str, Any] | None = None) -> dict[str, Any]:
        """``POST /v1/chat/completions``: ``choices[0]`` is the best of N candidates (see ``completions``)."""
        req = parse_request(request_models()[1], body)
        prompt: PromptValue = [{"role": m.role, "content": message_text(m.content)} for m in req.messages]
        job = self.make_job(req, prompt, req.max_completion_tokens or req.max_tokens)
        return await self._answer(job, True, log)

    def models(self) -> dict[str, Any]:
        """``GET /v1/models``: the one model this server answers as."""
        return {"object": "list", "data": [{"id": self.model_name, "object": "model", "created": self.created,
                                            "owned_by": "rsft"}]}

    def health(self) -> dict[str, Any]:
        """``GET /health``: liveness and the queue's state (no auth)."""
        service = self.service
        return {"status": "ok", "model": self.model_name, "selector": service.selector, "waiting": service.waiting,
                "max_queue": service.max_queue, "batches": service.batches}

    def make_job(self, req: Any, prompt: PromptValue, limit: int | None) -> Job:
        """The job for a parsed request, after the server's limits (call it inside the event loop)."""
        if req.stream:
            raise HTTPError(422, "stream=true is not supported: Best-of-N picks after all candidates finish",
                            code="unsupported")
        n = req.budget if req.budget is not None else req.best_of if req.best_of is not None else (req.n or self.n)
        if n > self.max_n:
            raise HTTPError(422, f"N={n} (n, best_of or budget) exceeds this server's max_n={self.max_n}",
                            code="n_too_large")
        adaptive = self.adaptive_policy(req, n)
        tokens = limit if limit is not None else self.max_tokens
        if tokens > self.max_tokens:
            raise HTTPError(422, f"max_tokens={tokens} exceeds this server's limit of {self.max_tokens}",
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
            raise HTTPError(422, str(e)) from None
        future = asyncio.get_running_loop().create_future()
        return Job(prompt, n, sampling, req.seed is not None, future, dict(req.metadata or {}), adaptive)

    def adaptive_policy(self, req: Any, n: int) -> AdaptivePolicy | None:
        """The policy of a request with ``budget`` (the server's settings, the request's overrides); else None."""
        overrides = {k: v for k in ("min_n", "supermajority") if (v := getattr(req, k)) is not None}
        if req.budget is None:
            if overrides:
                raise HTTPError(422, f"{' and '.join(overrides)}: only with budget (adaptive N)")
            return None
        try:
            base = self.service.adaptive or AdaptivePolicy(budget=n)
            return dataclasses.replace(base, budget=n, **overrides)
        except RsftError as e:
            raise HTTPError(422, str(e)) from None

    async def _answer(self, job: Job, chat: bool, log: dict[str, Any] | None) -> dict[str, Any]:
        """Queue ``job``, wait for its result and turn it, or its failure, into a response or an ``HTTPError``."""
        log = {} if log is None else log
        log["n"] = job.n
        try:
            self.service.submit(job)
        except asyncio.QueueFull:
            raise queue_full(self.service.max_queue) from None
        result, batch_size, prompt_tokens = await answer_within(job.future, self.request_timeout)
        log["batch_size"] = batch_size
        budget = job.adaptive.budget if job.adaptive is not None else None
        return completion_response(result, chat, self.model_name, prompt_tokens, budget)
