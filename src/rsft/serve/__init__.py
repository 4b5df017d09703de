"""``rsft serve``: an OpenAI-compatible HTTP server that answers with the Best-of-N completion.

``POST /v1/completions`` and ``POST /v1/chat/completions`` take the usual OpenAI request; its ``n``
(or the extension field ``best_of``, which wins when both are given) is the number of candidates N.
The answer holds the best candidate as the one ordinary ``choices[0]`` and an extension field
``rsft`` with every candidate, its score and the chosen index.

Adaptive N: a request with the extension field ``budget`` (wins over ``n`` and ``best_of``) samples
in growing batches of at most ``budget`` candidates and stops once their answers agree
(``rsft.bon.adaptive``; the server's ``--min-n``/``--supermajority``/... settings, which the request
may override with ``min_n`` and ``supermajority``); its ``rsft.bon.adaptive`` field reports the budget,
the samples used and the samples saved.

Requests are batched dynamically: they wait in a bounded queue; one worker takes what arrived
within ``batch_window_ms`` (at most ``max_batch_prompts``), groups requests with the same N and
sampling settings, and calls ``generator.generate`` once per group in a worker thread (generation
blocks), then scores and selects. A full queue answers 503 with ``Retry-After``.

fastapi, uvicorn and pydantic are imported only when a server is built (the ``server`` extra).

The package: ``schemas`` (request models, the typed ``HTTPError``, the response body), ``batcher``
(``BoNService``: the queue and the batching worker), ``handlers`` (each endpoint's logic without
HTTP: a decoded body in, a response dict out or an ``HTTPError``), ``app`` (``create_app``: the
FastAPI routes and the access log). The ``rsft serve`` flags and ``main`` are in ``rsft.cli.serve``.
"""

from rsft.serve.app import create_app
from rsft.serve.batcher import BoNService
from rsft.serve.handlers import Handlers
from rsft.serve.schemas import ROLES, HTTPError, request_models

__all__ = ["ROLES", "BoNService", "HTTPError", "Handlers", "create_app", "request_models"]
