"""The Best-of-N worker behind ``rsft serve``: requests wait in a bounded queue and are batched.

One worker takes what arrived within ``batch_window_ms`` (at most ``max_batch_prompts``), groups
requests with the same N and sampling settings, and calls ``generator.generate`` once per group in a
worker thread (generation blocks), then scores and selects. Adaptive requests (a ``budget``) with the
same policy form a group too, sampled by ``rsft.bon.infer.adaptive_best_of_n``: one ``generate``
call per batch over the group's prompts still open.
"""

import asyncio
import contextlib
import dataclasses
import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from rsft.bon.adaptive import AdaptivePolicy
from rsft.bon.infer import BoNResult, Extract, KeyFn, adaptive_best_of_n, select_best
from rsft.config import ServeConfig
from rsft.errors import RsftError
from rsft.generate import Generator, LocalModel
from rsft.score import Scorer
from rsft.serve.schemas import HTTPError
from rsft.types import PromptValue, SamplingParams


def serve_config(config: ServeConfig | None, limits: dict[str, Any]) -> ServeConfig:
    """``config`` (None: ``ServeConfig()``, which holds the server's defaults) with ``limits``, keyword
    arguments named as its fields, replacing its values."""
    return dataclasses.replace(config or ServeConfig(), **limits)


@dataclass
class Job:
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
    adaptive: AdaptivePolicy | None = None
    """Adaptive N (the ``budget`` extension): sample in growing batches up to ``n``; None: exactly ``n``."""

    @property
    def key(self) -> tuple[Any, ...]:
        """Requests with equal keys share one ``generate`` call (adaptive: one adaptive run)."""
        seed = self.sampling.seed if self.seeded else None
        return self.n, dataclasses.replace(self.sampling, seed=0), seed, self.adaptive


class BoNService:
    """The queue, the single batching worker and the thread that runs generation and scoring.

    ``config`` (or keyword arguments named as its fields) gives ``max_queue``, ``batch_window_ms`` and
    ``max_batch_prompts``; ``Handlers`` takes the request limits from the same ``config``.
    """

    def __init__(
        self,
        generator: Generator,
        scorer: Scorer | None,
        selector: str,
        *,
        config: ServeConfig | None = None,
        extract: Extract | None = None,
        equivalence: str | KeyFn = "exact",
        adaptive: AdaptivePolicy | None = None,
        **limits: Any,
    ) -> None:
        self.config = serve_config(config, limits)
        self.generator = generator
        self.scorer = scorer
        self.selector = selector
        self.extract = extract
        self.equivalence = equivalence
        self.adaptive = adaptive
        """Settings of adaptive requests (each request's ``budget`` replaces its budget); None: the defaults."""
        self.max_queue = self.config.max_queue
        self.batch_window = max(0.0, self.config.batch_window_ms / 1000)
        self.max_batch_prompts = self.config.max_batch_prompts
        self.queue: asyncio.Queue[Job] | None = None
        self.worker: asyncio.Task[None] | None = None
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rsft-serve")
        self.in_flight: list[Job] = []
        self.batches = 0
        """Groups sent to ``generate`` so far."""

    def submit(self, job: Job) -> None:
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
                job.future.set_exception(HTTPError(503, "server shutting down", "server_error", "shutdown"))
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def _run(self) -> None:
        assert self.queue is not None
        while True:
            jobs = [await self.queue.get()]
            if self.batch_window:
                await asyncio.sleep(self.batch_window)
            while len(jobs) < self.max_batch_prompts and not self.queue.empty():
                jobs.append(self.queue.get_nowait())
            groups: dict[tuple[Any, ...], list[Job]] = {}
            for job in jobs:
                if not job.future.done():  # a request that timed out in the queue is skipped
                    groups.setdefault(job.key, []).append(job)
            for group in groups.values():
                await self._run_group([j for j in group if not j.future.done()])

    async def _run_group(self, group: list[Job]) -> None:
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

    def _process(self, group: list[Job]) -> list[tuple[BoNResult, int, int] | Exception]:
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

    def _generate_and_select(self, group: list[Job]) -> list[tuple[BoNResult, int, int] | Exception]:
        first = group[0]
        sampling = first.sampling if first.seeded else dataclasses.replace(
            first.sampling, seed=random.randrange(2**31))
        prompts = [j.prompt for j in group]
        metadata = [j.metadata for j in group]
        if first.adaptive is not None:
            run = adaptive_best_of_n(prompts, first.adaptive, self.generator, self.scorer, self.selector, sampling,
                                     metadata, self.extract, self.equivalence)
            self.batches += run.batches
            results = run.results
        else:
            self.batches += 1
            rows = self.generator.generate(prompts, first.n, sampling)
            if len(rows) != len(prompts) or any(len(r) != first.n for r in rows):
                raise RsftError(f"generator {self.generator.name!r} returned {len(rows)} rows for {len(prompts)} "
                                f"prompts (expected {first.n} completions each)")
            results = select_best(prompts, rows, self.scorer, self.selector, metadata=metadata,
                                  extract=self.extract, equivalence=self.equivalence)
        return [(r, len(group), self._prompt_tokens(p)) for r, p in zip(results, prompts, strict=True)]

    def _prompt_tokens(self, prompt: PromptValue) -> int:
        """Prompt length in tokens when the generator runs its model here (hf, vllm), else 0."""
        if not isinstance(self.generator, LocalModel):
            return 0
        try:
            return self.generator.count_tokens(prompt)
        except Exception:  # noqa: BLE001 - usage is informative only
            return 0
