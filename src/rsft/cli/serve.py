"""``rsft serve`` (and ``python -m rsft.serve``): Best-of-N over the OpenAI API (``rsft.serve``).

The model flags are the run config's generator fields; scorer, selector and voting flags are
``rsft bon``'s.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import TYPE_CHECKING

from rsft.cli.bon import (
    MODEL,
    adaptive_policy,
    add_adaptive_arguments,
    add_selection_arguments,
    add_voting_arguments,
    build_generator,
    scorer_from_args,
)
from rsft.cli.options import Command, add_config_flags, apply_flags
from rsft.config import RunConfig
from rsft.errors import RsftError

if TYPE_CHECKING:
    from rsft.generate import Generator


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``rsft serve``."""
    add_config_flags(parser, [MODEL])
    add_selection_arguments(parser)
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
    add_voting_arguments(parser)
    add_adaptive_arguments(parser, budget=False)  # requests send their budget


def main(args: argparse.Namespace) -> None:
    """``rsft serve``: load the model and serve Best-of-N until interrupted."""
    from rsft.bon import answer_extractor, resolve_equivalence

    try:
        import uvicorn
    except ImportError as e:
        raise RsftError(f"rsft serve needs the 'server' extra: pip install 'rsft[server]' ({e})") from None
    from rsft.serve.app import create_app

    api_key = None
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            raise RsftError(f"--api-key-env {args.api_key_env}: that environment variable is unset or empty")
    for flag in ("max_n", "max_tokens", "max_queue", "max_batch_prompts", "max_body_bytes"):
        if getattr(args, flag) < 1:
            raise RsftError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    model = apply_flags(args, RunConfig()).generation.generator
    scorer, selector = scorer_from_args(args)
    extract, equivalence = answer_extractor(args.answer), resolve_equivalence(args.equivalence)
    adaptive = adaptive_policy(args, budget=args.max_n)
    _log_to_stderr()
    generator = build_generator(model)
    _plain_chat_template_if_missing(generator)
    app = create_app(generator, scorer, selector, model_name=args.model_name or model.model, api_key=api_key,
                     max_n=args.max_n, max_tokens=args.max_tokens, max_body_bytes=args.max_body_bytes,
                     max_queue=args.max_queue, batch_window_ms=args.batch_window_ms,
                     max_batch_prompts=args.max_batch_prompts, request_timeout=args.request_timeout,
                     extract=extract, equivalence=equivalence, adaptive=adaptive)
    print(f"rsft: serving {model.model} ({selector}, N <= {args.max_n}) on http://{args.host}:{args.port}/v1"
          f"{' (auth on)' if api_key else ''}", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)


def _log_to_stderr() -> None:
    from rsft.serve.app import LOG

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


COMMANDS = {"serve": Command("serve Best-of-N over the OpenAI API (/v1/completions, /v1/chat/completions)",
                             add_arguments, main)}
