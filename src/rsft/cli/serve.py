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
    scorer_from_args,
)
from rsft.cli.options import Command, Section, add_config_flags, apply_flags
from rsft.config import RewardServerConfig, RunConfig, ServeConfig
from rsft.errors import RsftError
from rsft.generate import generator_from_config
from rsft.registry import SCORERS

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
    from rsft.bon.infer import answer_extractor, resolve_equivalence

    try:
        import uvicorn
    except ImportError as e:
        raise RsftError(f"rsft serve needs the 'server' extra: pip install 'rsft[server]' ({e})") from None
    from rsft.serve.app import create_app

    server = apply_flags(args, ServeConfig())
    api_key = _api_key(server.api_key_env)
    model = apply_flags(args, RunConfig()).generation.generator
    scorer, selector = scorer_from_args(args)
    extract, equivalence = answer_extractor(args.answer), resolve_equivalence(args.equivalence)
    adaptive = adaptive_policy(args, budget=server.max_n)
    _log_to_stderr()
    generator = generator_from_config(model)
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


def add_reward_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``rsft serve-reward``: the run config's scorer and the server's limits."""
    add_config_flags(parser, [Section("scorer", ("scoring.scorer", "scoring.options"),
                                      help={"scoring.scorer": f"scorer spec to serve: {SCORERS.help()} "
                                                              "or pkg.module:name"})])
    add_config_flags(parser, [Section("server", ("",))], root=RewardServerConfig)


def reward_main(args: argparse.Namespace) -> None:
    """``rsft serve-reward``: build the scorer and serve it until interrupted."""
    try:
        import uvicorn
    except ImportError as e:
        raise RsftError(f"rsft serve-reward needs the 'server' extra: pip install 'rsft[server]' ({e})") from None
    from rsft.serve.reward import create_reward_app

    server = apply_flags(args, RewardServerConfig())
    scoring = apply_flags(args, RunConfig()).scoring
    if not isinstance(scoring.scorer, str):
        raise RsftError("--scorer: give a scorer spec (a gate mapping goes in a YAML run config, not here)")
    api_key = _api_key(server.api_key_env)
    app = create_reward_app(scoring.scorer, options=scoring.options, api_key=api_key, max_pairs=server.max_pairs,
                            max_queue=server.max_queue, max_body_bytes=server.max_body_bytes,
                            request_timeout=server.request_timeout)
    _log_to_stderr()
    print(f"rsft: serving scorer {scoring.scorer} on http://{server.host}:{server.port} (/get_reward, /score)"
          f"{' (auth on)' if api_key else ''}", file=sys.stderr)
    uvicorn.run(app, host=server.host, port=server.port, log_level="warning", access_log=False)


def _api_key(env: str | None) -> str | None:
    """The key in environment variable ``env`` (None: no auth); an unset variable is an error."""
    if not env:
        return None
    key = os.environ.get(env)
    if not key:
        raise RsftError(f"--api-key-env {env}: that environment variable is unset or empty")
    return key


COMMANDS = {"serve": Command("serve Best-of-N over the OpenAI API (/v1/completions, /v1/chat/completions)",
                             add_arguments, main),
            "serve-reward": Command("serve a scorer over HTTP: OpenRLHF's remote reward protocol (/get_reward) "
                                    "and rsft's (/score)", add_reward_arguments, reward_main)}
