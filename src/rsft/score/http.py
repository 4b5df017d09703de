"""``http:URL``: score through a remote reward service (``rsft serve-reward``, or any server that
speaks OpenRLHF's remote reward protocol).

The pairs go in batches of ``batch_size``, ``concurrency`` batches at a time. ``protocol: rsft``
(the default) posts ``{"prompts", "completions", "metadata"}`` to ``/score`` and reads back
``rewards``, ``details`` and ``failed``; ``protocol: openrlhf`` posts ``{"query", "prompts",
"labels"}`` (query = prompt + completion, label = the row's ``answer``) to ``/get_reward`` and
reads ``rewards``. A URL without a path gets the protocol's route.

HTTP is ``OpenAIGenerator``'s: bearer key, retries with backoff on 429, 5xx (honouring
``Retry-After``) and connection errors. With a ``journal`` (the round's ``.shards/`` when a round
builds the scorer) every answer received is appended to a JSONL file under a hash of its request,
so a rerun after a crash asks the server only for the batches it never answered. A pair the server
reports as failed makes the batch raise: the score stage then asks pair by pair and records or
stops on the failing one (``scoring.on_error``), exactly as with the scorer in-process.
"""

from __future__ import annotations

import math
import os
import urllib.parse
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from rsft.artifacts import config_hash
from rsft.errors import RsftError
from rsft.score.pairs import PairFailed
from rsft.types import PromptValue, Verdict

ROUTES = {"rsft": "/score", "openrlhf": "/get_reward"}
"""The route each protocol posts to when the URL has no path (``rsft serve-reward`` serves both)."""


class HttpScorer:
    """Scores pairs by POSTing them to a reward server.

    Args:
        url: the server, ``http://HOST:PORT`` (the protocol's route is added) or a full route.
        protocol: ``rsft`` (prompts, completions and metadata; rewards, details, failed) or
            ``openrlhf`` (query, prompts, labels; rewards).
        api_key / api_key_env: the bearer key, or the environment variable holding it.
        batch_size: pairs per request; concurrency: requests in flight.
        timeout, max_retries, backoff: per request, as in ``OpenAIGenerator``.
        journal: JSONL file of every answer received (see ``rsft.generate.openai.Journal``).
    """

    def __init__(self, url: str, *, protocol: str = "rsft", api_key: str | None = None,
                 api_key_env: str = "RSFT_REWARD_API_KEY", batch_size: int = 256, concurrency: int = 4,
                 timeout: float = 120.0, max_retries: int = 5, backoff: float = 0.5,
                 journal: str | os.PathLike[str] | None = None) -> None:
        from rsft.generate.openai import OpenAIGenerator

        if protocol not in ROUTES:
            raise RsftError(f"scorer 'http': protocol must be one of {', '.join(ROUTES)}, got {protocol!r}")
        if batch_size < 1 or concurrency < 1:
            raise RsftError(f"scorer 'http': batch_size and concurrency must be >= 1, got {batch_size}, {concurrency}")
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise RsftError(f"scorer 'http': expected http://HOST:PORT[/route], got {url!r}")
        self.url = url.rstrip("/") + ROUTES[protocol] if parts.path in ("", "/") else url
        self.protocol = protocol
        self.batch_size, self.concurrency = batch_size, concurrency
        self.client = OpenAIGenerator(model="", base_url=self.url, api_key=api_key, api_key_env=api_key_env,
                                      concurrency=1, timeout=timeout, max_retries=max_retries, backoff=backoff,
                                      name=f"http:{url}", journal=journal)
        self.name = f"http:{url}"
        self.last_stats: dict[str, Any] = {}

    def score(self, prompts: Sequence[PromptValue], completions: Sequence[str],
              metadata: Sequence[Mapping[str, Any]] | None = None) -> list[Verdict]:
        metadata = metadata if metadata is not None else [{}] * len(prompts)
        starts = range(0, len(prompts), self.batch_size)
        batches = [(list(prompts[i : i + self.batch_size]), list(completions[i : i + self.batch_size]),
                    list(metadata[i : i + self.batch_size])) for i in starts]
        journal = self.client.journal
        reused_before = journal.reused if journal is not None else 0
        with ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="rsft-http-score") as pool:
            answers = list(pool.map(lambda b: self._batch(*b), batches))
        self.last_stats = {"requests": len(batches),
                           "journal_reused": (journal.reused - reused_before) if journal is not None else 0}
        verdicts = [v for batch in answers for v in batch]
        failed = [(k, v.details) for k, v in enumerate(verdicts) if v.details and v.details.startswith("error: ")]
        if failed:  # the score stage asks again pair by pair and records (or stops on) each failed one
            k, why = failed[0]
            raise PairFailed(why.removeprefix("error: ") if len(verdicts) == 1 else
                             f"{len(failed)} of {len(verdicts)} pairs failed on the server; pair {k}: {why}")
        return verdicts

    def body(self, prompts: list[PromptValue], completions: list[str],
             metadata: list[Mapping[str, Any]]) -> dict[str, Any]:
        """The JSON request for one batch."""
        if self.protocol == "rsft":
            return {"prompts": prompts, "completions": completions, "metadata": [dict(m) for m in metadata]}
        if any(not isinstance(p, str) for p in prompts):
            raise RsftError(f"scorer {self.name!r}: the openrlhf protocol takes text prompts; "
                            "chat prompts need protocol: rsft")
        labels = [None if m.get("answer") is None else str(m["answer"]) for m in metadata]
        return {"query": [p + c for p, c in zip(prompts, completions, strict=True)], "prompts": prompts,
                "labels": labels}

    def _batch(self, prompts: list[PromptValue], completions: list[str],
               metadata: list[Mapping[str, Any]]) -> list[Verdict]:
        body = self.body(prompts, completions, metadata)
        journal = self.client.journal
        key = config_hash({"url": urllib.parse.urlsplit(self.url).path, "body": body}) if journal else ""
        kept = journal.get(key) if journal is not None else None
        if kept is None:
            kept = self._parse(self.client.post_json(self.url, _jsonable(body)), len(prompts))
            if journal is not None:
                journal.put(key, kept)
        return [Verdict(math.nan if k["reward"] is None else float(k["reward"]), k.get("details")) for k in kept]

    def _parse(self, answer: Mapping[str, Any], n: int) -> list[dict[str, Any]]:
        """``[{"reward", "details"}]`` from a response; a failed pair's details start with ``error: ``."""
        rewards = answer.get("rewards")
        if not isinstance(rewards, list) or len(rewards) != n:
            got = f"{len(rewards)} rewards" if isinstance(rewards, list) else "no 'rewards' list"
            raise RsftError(f"{self.url}: expected {n} rewards, got {got}")
        if any(r is not None and (isinstance(r, bool) or not isinstance(r, int | float)) for r in rewards):
            raise RsftError(f"{self.url}: 'rewards' must be numbers (or null), got {rewards[:5]!r}")
        details = answer.get("details") if isinstance(answer.get("details"), list) else [None] * n
        failed = answer.get("failed") if isinstance(answer.get("failed"), list) else [False] * n
        out = []
        for r, d, f in zip(rewards, details, failed, strict=False):
            d = None if d is None else str(d)
            if f and not (d or "").startswith("error: "):
                d = f"error: {d or 'failed on the server'}"
            out.append({"reward": r, "details": d})
        return out


def _jsonable(obj: Any) -> Any:
    """Metadata as JSON: values JSON cannot hold (dates, numpy numbers) as text."""
    import json

    return json.loads(json.dumps(obj, default=str))
