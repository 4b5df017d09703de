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
from rsft.cli.options import Command, Section, add_config_flags, apply_flags
from rsft.config import RunConfig, ServeConfig
from rsft.errors import RsftError

if TYPE_CHECKING:
    from rsft.generate import Generator


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``rsft serve``."""
    add_config_flags(parser, [MODEL])
    add_selection_arguments(parser)
    add_config_flags(parser, [Section("server", ("",))], root=ServeConfig)
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

    server = apply_flags(args, ServeConfig())
    api_key = None
    if server.api_key_env:
        api_key = os.environ.get(server.api_key_env)
        if not api_key:
            raise RsftError(f"--api-key-env {server.api_key_env}: that environment variable is unset or empty")
    model = apply_flags(args, RunConfig()).generation.generator
    scorer, selector = scorer_from_args(args)
    extract, equivalence = answer_extractor(args.answer), resolve_equivalence(args.equivalence)
    adaptive = adaptive_policy(args, budget=server.max_n)
    _log_to_stderr()
    generator = build_generator(model)
    _plain_chat_template_if_missing(generator)
    app = create_app(generator, scorer, selector, model_name=server.model_name or model.model, api_key=api_key,
                     config=server, extract=extract, equivalence=equivalence, adaptive=adaptive)
    print(f"rsft: serving {model.model} ({selector}, N {server.default_n} unless a request asks, at most {server.max_n}) "
          f"on http://{server.host}:{server.port}/v1"
          f"{' (auth on)' if api_key else ''}", file=sys.stderr)
    uvicorn.run(app, host=server.host, port=server.port, log_level="warning", access_log=False)


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
    from rsft.generate import LocalModel

    tokenizer = generator.tokenizer if isinstance(generator, LocalModel) else None
    if tokenizer is not None and not getattr(tokenizer, "chat_template", None):
        from rsft.generate.hf import PLAIN_CHAT_TEMPLATE

        tokenizer.chat_template = PLAIN_CHAT_TEMPLATE
        print("rsft: the model has no chat template; chat messages are joined as plain text", file=sys.stderr)


COMMANDS = {"serve": Command("serve Best-of-N over the OpenAI API (/v1/completions, /v1/chat/completions)",
                             add_arguments, main)}
