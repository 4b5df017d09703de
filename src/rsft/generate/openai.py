"""OpenAI-compatible HTTP backend: vLLM serve, llama.cpp server, SGLang, TGI, OpenAI itself.

Text prompts go to ``/completions``, chat prompts to ``/chat/completions``. Requests for all prompts
run concurrently on one ``httpx.AsyncClient`` (bounded by a semaphore), with retry and exponential
backoff on 429, 5xx and transport errors. Servers that return fewer than ``n`` choices (llama.cpp
ignores ``n``) are topped up with further requests, each with its own seed.

With a ``journal`` file, every response received is appended to it (one JSON line, fsynced) under a
hash of its request (endpoint, model, prompt, sampling settings, seed, ``n``). A later run with the
same journal replays the same requests from it, so when a server dies halfway through a shard, the
rerun asks the server only for what it never answered and gets the same completions as a run that
never failed. The stages put the journal under the round's ``.shards/`` and drop it once the
generation stage is recorded.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import json
import os
import random
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import httpx

from rsft.errors import RsftError
from rsft.types import Completion, PromptValue, SamplingParams

T = TypeVar("T")

MAX_DELAY = 30.0
"""Upper bound (seconds) on one backoff sleep, including a server's ``Retry-After``."""

_FINISH_REASONS = {"stop": "stop", "eos": "stop", None: "stop", "length": "length"}


class OpenAIGenerator:
    """Sample from any OpenAI-compatible server over HTTP (httpx only, no ``openai`` package).

    Args:
        model: Model name sent in every request.
        base_url: Server root including ``/v1``.
        api_key_env: Environment variable holding the API key, read once here; sent as
            ``Authorization: Bearer`` only when set.
        api_key: The key itself; takes precedence over ``api_key_env``.
        concurrency: Most HTTP requests in flight at once.
        timeout: Seconds allowed per request.
        max_retries: Retries per request after the first attempt (429, 5xx, connection errors,
            timeouts); also how many rounds returning no choices at all are tolerated.
        backoff: Base of the exponential backoff in seconds (jittered, capped at ``MAX_DELAY``).
        logprobs: Ask for token logprobs; ``Completion.logprob`` is then their sum and
            ``n_tokens`` their count.
        name: ``Completion.generator`` label; defaults to ``openai:<model>``.
        max_n_per_request: Split ``n`` into requests of at most this many choices.
        journal: JSONL file where each response received is kept (appended, fsynced) and from
            which a rerun takes the responses it already has instead of asking again.
        extra_body: Further fields sent in every request body, for a server's own sampling settings
            (llama.cpp samples with ``min_p=0.05`` and ``repeat_penalty=1.1`` unless told otherwise;
            vLLM takes ``min_p``, ``repetition_penalty``, ...). Fields rsft sets itself win.
    """

    def __init__(
        self,
        *,
        model: str,
        base_url: str = "http://127.0.0.1:8000/v1",
        api_key_env: str = "OPENAI_API_KEY",
        concurrency: int = 8,
        timeout: float = 60.0,
        max_retries: int = 5,
        backoff: float = 0.5,
        logprobs: bool = False,
        name: str | None = None,
        max_n_per_request: int | None = None,
        journal: str | os.PathLike[str] | None = None,
        api_key: str | None = None,
        extra_body: Mapping[str, Any] | None = None,
    ) -> None:
        if concurrency < 1:
            raise RsftError(f"openai backend: concurrency must be >= 1, got {concurrency}")
        if max_retries < 0:
            raise RsftError(f"openai backend: max_retries must be >= 0, got {max_retries}")
        if max_n_per_request is not None and max_n_per_request < 1:
            raise RsftError(f"openai backend: max_n_per_request must be >= 1, got {max_n_per_request}")
        if extra_body is not None and not isinstance(extra_body, Mapping):
            raise RsftError(f"openai backend: extra_body must be a mapping of fields, got {extra_body!r}")
        self.model = model
        self.base_url = base_url.rstrip("/")
        self.concurrency = concurrency
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.logprobs = logprobs
        self.name = name or f"openai:{model}"
        self.max_n_per_request = max_n_per_request
        self._api_key = api_key or os.environ.get(api_key_env) or None
        self._rng = random.Random()
        self.journal = Journal(Path(journal)) if journal else None
        self.extra_body = dict(extra_body or {})

    def generate(
        self, prompts: Sequence[PromptValue], n: int, sampling: SamplingParams
    ) -> list[list[Completion]]:
        """Return exactly ``n`` completions per prompt, in prompt order."""
        if n < 0:
            raise RsftError(f"n must be >= 0, got {n}")
        if not prompts or n == 0:
            return [[] for _ in prompts]
        return _run_sync(lambda: self._generate_all(list(prompts), n, sampling))

    async def _generate_all(
        self, prompts: list[PromptValue], n: int, sampling: SamplingParams
    ) -> list[list[Completion]]:
        async with self._client() as client:
            sem = asyncio.Semaphore(self.concurrency)
            tasks = [asyncio.create_task(self._sample_prompt(client, sem, p, n, sampling)) for p in prompts]
            try:
                return list(await asyncio.gather(*tasks))
            except BaseException:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                raise

    def _client(self) -> httpx.AsyncClient:
        """An HTTP client with this backend's key, timeout and connection limit."""
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
        return httpx.AsyncClient(headers=headers, timeout=httpx.Timeout(self.timeout), limits=limits)

    def post_json(self, url: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST ``body`` to ``url`` with this backend's key, retries and backoff (blocking); the
        decoded JSON object, or ``RsftError`` (a 4xx, or still failing after ``max_retries``)."""
        async def post() -> dict[str, Any]:
            async with self._client() as client:
                return await self._post(client, asyncio.Semaphore(1), url, body)

        return _run_sync(post)

    async def _sample_prompt(
        self,
        client: httpx.AsyncClient,
        sem: asyncio.Semaphore,
        prompt: PromptValue,
        n: int,
        sampling: SamplingParams,
    ) -> list[Completion]:
        """Collect ``n`` completions for one prompt, issuing follow-up requests for missing choices."""
        url, body = self._request(prompt, sampling)
        chat = url.endswith("/chat/completions")
        per_request = self.max_n_per_request or n
        collected: list[Completion] = []
        n_requests = 0
        empty_rounds = 0
        while len(collected) < n:
            missing = n - len(collected)
            asks = [min(per_request, missing - i) for i in range(0, missing, per_request)]
            bodies = [
                {**body, "n": ask, "seed": sampling.seed + n_requests + i} for i, ask in enumerate(asks)
            ]
            n_requests += len(bodies)
            responses = await asyncio.gather(*(self._fetch(client, sem, url, chat, b, sampling.stop) for b in bodies))
            got = 0
            for completions, ask in zip(responses, asks, strict=True):
                collected.extend(completions[:ask])
                got += len(completions)
                if 0 < len(completions) < ask:  # the server caps n: ask for that many from now on
                    per_request = min(per_request, len(completions))
            if got == 0:
                empty_rounds += 1
                if empty_rounds > self.max_retries:
                    raise RsftError(
                        f"{url}: server returned no choices {empty_rounds} times "
                        f"({len(collected)} of {n} collected)"
                    )
        return collected[:n]

    async def _fetch(
        self,
        client: httpx.AsyncClient,
        sem: asyncio.Semaphore,
        url: str,
        chat: bool,
        body: dict[str, Any],
        stop: Sequence[str],
    ) -> list[Completion]:
        """One request's completions: from the journal when it holds them, else from the server
        (and then journaled at once, before anything else can fail)."""
        journal = self.journal
        key = _request_key(url[len(self.base_url) :], body) if journal is not None else ""
        kept = journal.get(key) if journal is not None else None
        if kept is not None:
            return [Completion(**c, generator=self.name) for c in kept]
        completions = self._parse(await self._post(client, sem, url, body), url, chat, stop)
        if journal is not None and completions:
            journal.add(key, completions)
        return completions

    def _request(self, prompt: PromptValue, sampling: SamplingParams) -> tuple[str, dict[str, Any]]:
        """The URL and JSON body (without ``n`` and ``seed``) for one prompt."""
        body: dict[str, Any] = {
            **self.extra_body,
            "model": self.model,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "max_tokens": sampling.max_new_tokens,
        }
        if sampling.stop:
            body["stop"] = list(sampling.stop)
        if sampling.top_k > 0:
            body["top_k"] = sampling.top_k
        if isinstance(prompt, str):
            body["prompt"] = prompt
            if self.logprobs:
                body["logprobs"] = 1
            return f"{self.base_url}/completions", body
        body["messages"] = [dict(m) for m in prompt]
        if self.logprobs:
            body["logprobs"] = True
        return f"{self.base_url}/chat/completions", body

    async def _post(
        self, client: httpx.AsyncClient, sem: asyncio.Semaphore, url: str, body: dict[str, Any]
    ) -> dict[str, Any]:
        """POST with retries; return the decoded JSON response or raise ``RsftError``."""
        last = ""
        delay = 0.0
        for attempt in range(self.max_retries + 1):
            if attempt:
                await asyncio.sleep(delay)
            try:
                async with sem:
                    resp = await client.post(url, json=body)
            except httpx.TransportError as e:  # connection errors, timeouts, protocol errors
                last = _one_line(f"{type(e).__name__}: {e}" if str(e) else type(e).__name__)
                delay = self._delay(attempt, None)
                continue
            status = resp.status_code
            if status == 429 or status >= 500:
                last = f"HTTP {status}: {_error_message(resp)}"
                retry_after = resp.headers.get("retry-after") if status in (429, 503) else None
                delay = self._delay(attempt, retry_after)
                continue
            if status >= 400:
                raise RsftError(f"{url}: HTTP {status}: {_error_message(resp)}")
            try:
                data = resp.json()
            except ValueError:
                raise RsftError(f"{url}: response is not JSON: {_one_line(resp.text)}") from None
            if not isinstance(data, dict):
                raise RsftError(f"{url}: expected a JSON object, got {_one_line(resp.text)}")
            return data
        raise RsftError(f"{url}: failed after {self.max_retries + 1} attempts; last error: {last}")

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        """Seconds to wait before the next attempt: ``Retry-After`` if given, else jittered backoff."""
        server_delay = _parse_retry_after(retry_after)
        if server_delay is not None:
            return min(server_delay, MAX_DELAY)
        return min(self.backoff * 2**attempt * (0.5 + self._rng.random()), MAX_DELAY)

    def _parse(
        self, response: Mapping[str, Any], url: str, chat: bool, stop: Sequence[str]
    ) -> list[Completion]:
        """Turn one response's choices into Completions (sorted by choice index)."""
        choices = response.get("choices")
        if not isinstance(choices, list):
            raise RsftError(f"{url}: response has no 'choices' list: {_one_line(json.dumps(response))}")
        choices = sorted(choices, key=lambda c: c.get("index", 0) if isinstance(c, dict) else 0)
        usage = response.get("usage") or {}
        usage_tokens = usage.get("completion_tokens") if len(choices) == 1 else None
        return [self._completion(c, chat, usage_tokens, stop) for c in choices]

    def _completion(
        self, choice: Mapping[str, Any], chat: bool, usage_tokens: int | None, stop: Sequence[str]
    ) -> Completion:
        """One choice -> Completion, cutting at a stop string the server may have ignored."""
        text = ((choice.get("message") or {}).get("content") if chat else choice.get("text")) or ""
        reason = choice.get("finish_reason")
        finish = _FINISH_REASONS.get(reason, reason)
        tokens = _token_logprobs(choice, chat) if self.logprobs else None
        n_tokens = len(tokens) if tokens is not None else usage_tokens
        cut = _first_stop(text, stop)
        if cut is not None:
            index, stop_str = cut
            tokens = _tokens_through(tokens, text, index + len(stop_str)) if tokens is not None else None
            n_tokens = len(tokens) if tokens is not None else None
            text, finish = text[:index], "stop"
        logprob = _sum_logprobs(tokens) if tokens is not None else None
        return Completion(
            text=text, n_tokens=n_tokens, finish_reason=finish, logprob=logprob, generator=self.name
        )


class Journal:
    """Responses received so far, one JSON line each (``{"key", "choices"}``), appended and fsynced
    as they arrive; loaded again by the next run. A line cut short by a kill is ignored."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: dict[str, list[dict[str, Any]]] = {}
        self.reused = 0
        """Responses answered from the journal in this process."""
        self._torn = False
        """The file ends in a line cut short (a kill mid-append): the next append starts a new line."""
        if path.exists():
            with open(path, encoding="utf-8") as f:
                for line in f:
                    self._torn = not line.endswith("\n")
                    try:
                        entry = json.loads(line)
                        self.entries[str(entry["key"])] = list(entry["choices"])
                    except (ValueError, KeyError, TypeError):
                        continue  # the torn last line of a killed run

    def get(self, key: str) -> list[dict[str, Any]] | None:
        kept = self.entries.get(key)
        if kept is not None:
            self.reused += 1
        return kept

    def add(self, key: str, completions: Sequence[Completion]) -> None:
        self.put(key, [{"text": c.text, "n_tokens": c.n_tokens, "finish_reason": c.finish_reason,
                        "logprob": c.logprob} for c in completions])

    def put(self, key: str, choices: list[dict[str, Any]]) -> None:
        """Append one response's items (JSON objects) under ``key``, fsynced."""
        line = ("\n" if self._torn else "") + json.dumps({"key": key, "choices": choices}, ensure_ascii=False) + "\n"
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line.encode("utf-8"))  # one write: concurrent appenders do not interleave
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as e:
            raise RsftError(f"{self.path}: cannot write the request journal: {e.strerror or e}") from e
        self.entries[key] = choices
        self._torn = False


def _request_key(endpoint: str, body: Mapping[str, Any]) -> str:
    """Hash of what decides a response: endpoint and body (model, prompt, sampling, seed, n), not the host."""
    blob = json.dumps({"endpoint": endpoint, "body": body}, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def _token_logprobs(choice: Mapping[str, Any], chat: bool) -> list[tuple[str, float | None]] | None:
    """``(token, logprob)`` pairs from a choice, or None when the server sent no logprobs."""
    lp = choice.get("logprobs")
    if not isinstance(lp, dict):
        return None
    if chat:
        content = lp.get("content")
        if not isinstance(content, list):
            return None
        return [(str(t.get("token", "")), t.get("logprob")) for t in content]
    tokens, values = lp.get("tokens"), lp.get("token_logprobs")
    if not isinstance(tokens, list) or not isinstance(values, list) or len(tokens) != len(values):
        return None
    return [(str(t), v) for t, v in zip(tokens, values, strict=True)]


def _tokens_through(
    tokens: list[tuple[str, float | None]], text: str, end: int
) -> list[tuple[str, float | None]] | None:
    """The leading tokens that cover ``text[:end]``; None if the tokens do not spell ``text``."""
    if "".join(tok for tok, _ in tokens) != text:
        return None
    length = 0
    for i, (tok, _) in enumerate(tokens):
        length += len(tok)
        if length >= end:
            return tokens[: i + 1]
    return tokens


def _sum_logprobs(tokens: list[tuple[str, float | None]]) -> float | None:
    values = [v for _, v in tokens if v is not None]
    return float(sum(values)) if values else None


def _first_stop(text: str, stop: Sequence[str]) -> tuple[int, str] | None:
    """Index and string of the earliest stop string in ``text``, or None."""
    hits = [(text.find(s), s) for s in stop if s and s in text]
    return min(hits, key=lambda h: h[0]) if hits else None


def _parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` as seconds: a number or an HTTP date; None if absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _error_message(resp: httpx.Response) -> str:
    """The server's error message, one line: OpenAI ``error.message``, FastAPI ``detail``, or the body."""
    try:
        data = resp.json()
    except ValueError:
        return _one_line(resp.text) or resp.reason_phrase
    message: Any = data
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict) and "message" in error:
            message = error["message"]
        else:
            message = error or data.get("detail") or data.get("message") or data
    return _one_line(message if isinstance(message, str) else json.dumps(message))


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _run_sync(make_coro: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion from sync code, even when this thread already runs a loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make_coro())
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(make_coro())).result()
