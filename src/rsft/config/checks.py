"""Every check of a config value, in one place: ``check_run`` checks each section of a ``RunConfig``
with the function of that section, each failing with one line ``section.field: ...`` (exit 2).

``load_config`` runs ``check_run`` on a YAML file, and the command line runs it after applying its
flags over that file or the defaults (``cli.options.config_from``), so a flag fails as the YAML key
would. The library functions that take a section check it too (``stages.generate``:
``check_generation``; ``train``: ``check_train``; ``rounds.run_rounds``: ``check_run``), so a config
built or changed in code fails with the same line. Names are checked against the registries of
``rsft.registry``.

What needs more than the config is checked where that is known: an installed package
(``train.report_to``'s library, a tracker's extra), user code (``pkg.module:name`` is imported when
used), the data (eval questions that are also training prompts), and what one command needs
(``rsft sweep``'s settings, the rounds' held-out prompts, the reward model ``rounds.rm_check`` checks).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from rsft.config.schema import (
    CONTROL_MODES,
    EXECUTORS,
    MIXED_PRECISION,
    ON_ERROR,
    REFRESH,
    REPORT_TO,
    STOP_RULES,
    EvalConfig,
    GenerationConfig,
    PromptsConfig,
    RoundsConfig,
    RunConfig,
    SamplingConfig,
    ScoringConfig,
    SelectionConfig,
    TrackingConfig,
    TrainConfig,
    sampling_of,
)
from rsft.errors import RsftError
from rsft.registry import ANSWERS, BACKENDS, EQUIVALENCES, SCORERS, STRATEGIES, TRACKERS


def check_run(config: RunConfig) -> RunConfig:
    """Check every section of ``config``; returns it."""
    check_prompts(config.prompts)
    check_generation(config.generation)
    check_scoring(config.scoring)
    check_selection(config.selection)
    check_train(config.train)
    check_eval(config.eval)
    check_rounds(config.rounds)
    check_tracking(config.tracking)
    check_executor(config.executor)
    return config


def check_executor(name: str, where: str = "executor") -> None:
    if name not in EXECUTORS:
        raise RsftError(f"{where}: unknown executor {name!r}; choose one of {', '.join(EXECUTORS)}")


def check_prompts(config: PromptsConfig, where: str = "prompts") -> None:
    """Not both a file and a task; a task of at least one prompt. (Neither is checked where prompts
    are read: a command that reads none needs none.)"""
    if config.task is not None and config.path is not None:
        raise RsftError(f"{where}: give either 'path' or 'task', not both")
    if config.task is not None and config.task.size < 1:
        raise RsftError(f"{where}.task.size: must be >= 1, got {config.task.size}")


def check_generation(config: GenerationConfig, where: str = "generation") -> None:
    """Registered backends, valid sampling, N >= 1, a mix whose shares sum to N, adaptive N's settings."""
    for g in config.mix or [config.generator]:
        BACKENDS.get(g.backend, f"{where}: ")
    check_sampling(config.sampling, f"{where}.sampling")
    if config.n < 1:
        raise RsftError(f"{where}.n: must be >= 1, got {config.n}")
    shares = [g.n for g in config.mix]
    if shares and (any(k < 1 for k in shares) or sum(shares) != config.n):
        raise RsftError(f"{where}.mix: each entry needs n >= 1 and they must sum to {where}.n={config.n}, "
                        f"got {shares}")
    a = config.adaptive
    if not a.enabled:
        return
    if config.mix:
        raise RsftError(f"{where}.adaptive: not with {where}.mix (each generator owns fixed columns)")
    try:
        check_adaptive_policy(config.n, a.min_n, a.supermajority, a.growth, a.rule, a.confidence)
        for name, registry in ((a.answer, ANSWERS), (a.equivalence, EQUIVALENCES)):
            if name not in registry and ":" not in name:  # pkg.module:name is imported when used
                raise registry.unknown(name)
    except RsftError as e:
        raise RsftError(f"{where}.adaptive: {e}") from None


def check_sampling(config: SamplingConfig, where: str) -> None:
    """What ``SamplingParams`` accepts."""
    try:
        sampling_of(config)
    except ValueError as e:
        raise RsftError(f"{where}: {e}") from None


def check_adaptive_policy(budget: Any, min_n: Any, supermajority: float, growth: float, rule: str,
                          confidence: float) -> None:
    """The settings of adaptive N (``AdaptivePolicy``, ``generation.adaptive``)."""
    for name, value in (("budget", budget), ("min_n", min_n)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise RsftError(f"adaptive {name} must be a positive integer, got {value!r}")
    if not supermajority > 0:  # also NaN
        raise RsftError(f"adaptive supermajority must be > 0, got {supermajority!r}")
    if not (growth >= 1 and math.isfinite(growth)):
        raise RsftError(f"adaptive growth must be a finite number >= 1, got {growth!r}")
    if rule not in STOP_RULES:
        raise RsftError(f"adaptive rule {rule!r} is unknown; choose {' or '.join(STOP_RULES)}")
    if not 0 < confidence < 1:
        raise RsftError(f"adaptive confidence must be in (0, 1), got {confidence!r}")


def check_scorer_spec(spec: Any, where: str) -> None:
    """A registered scorer name, ``pkg.module:name`` (imported when used) or a ``gate`` mapping."""
    if isinstance(spec, Mapping):
        return
    if not isinstance(spec, str):
        raise RsftError(f"{where}: expected a name or a mapping, got {spec!r}")
    if ":" not in spec and spec not in SCORERS:
        raise SCORERS.unknown(spec, f"{where}: ")


def check_scoring(config: ScoringConfig, where: str = "scoring") -> None:
    check_scorer_spec(config.scorer, f"{where}.scorer")
    check_on_error(config, where)


def check_on_error(config: ScoringConfig, where: str = "scoring") -> None:
    if config.on_error not in ON_ERROR:
        raise RsftError(f"{where}.on_error: expected 'fail' or 'record', got {config.on_error!r}")


def check_selection(config: SelectionConfig, where: str = "selection") -> None:
    STRATEGIES.get(config.strategy, f"{where}.strategy: ")


def check_train(config: TrainConfig, where: str = "train") -> None:
    """Values that would fail deep inside the trainer."""
    positive = {"learning_rate": config.learning_rate, "epochs": config.epochs, "batch_size": config.batch_size,
                "grad_accum": config.grad_accum, "logging_steps": config.logging_steps}
    if config.lora:
        positive.update(lora_r=config.lora_r, lora_alpha=config.lora_alpha)
    for name, value in (("max_steps", config.max_steps), ("max_length", config.max_length)):
        if value is not None:
            positive[name] = value
    for name, value in positive.items():
        if not value > 0:
            raise RsftError(f"{where}.{name}: must be positive, got {value!r}")
    if not 0 <= config.lora_dropout < 1:
        raise RsftError(f"{where}.lora_dropout: must be in [0, 1), got {config.lora_dropout!r}")
    if config.mixed_precision not in MIXED_PRECISION:
        raise RsftError(f"{where}.mixed_precision: expected one of {', '.join(MIXED_PRECISION)}, "
                        f"got {config.mixed_precision!r}")
    if config.report_to not in REPORT_TO:
        raise RsftError(f"{where}.report_to: expected one of {', '.join(REPORT_TO)}, got {config.report_to!r}")


def check_eval(config: EvalConfig, where: str = "eval") -> None:
    if config.prompts is not None:
        check_prompts(config.prompts, f"{where}.prompts")
    check_scorer_spec(config.scorer, f"{where}.scorer")
    check_sampling(config.sampling, f"{where}.sampling")
    if config.kl_samples >= 1 and config.kl_prompts is not None and config.kl_prompts < 1:
        raise RsftError(f"{where}.kl_prompts: must be >= 1 (or null for all), got {config.kl_prompts}")


def check_rounds(config: RoundsConfig, where: str = "rounds") -> None:
    if config.refresh not in REFRESH:
        raise RsftError(f"{where}.refresh: expected 'subsample' or 'rotate', got {config.refresh!r}")
    if config.control and config.control_mode not in CONTROL_MODES:
        raise RsftError(f"{where}.control_mode: expected 'round' or 'chain', got {config.control_mode!r}")
    if config.rm_check is not None and not config.rm_check.pairs:
        raise RsftError(f"{where}.rm_check.pairs: give a chosen/rejected JSONL file")


def tracker_names(config: TrackingConfig, where: str = "tracking") -> list[str]:
    """``report_to`` as a list of registered trackers (``a,b`` entries split), checked."""
    names = [n.strip() for entry in config.report_to for n in entry.split(",") if n.strip()]
    for name in names:
        TRACKERS.get(name, f"{where}.report_to: ")
    return list(dict.fromkeys(names))


def check_tracking(config: TrackingConfig, where: str = "tracking") -> None:
    tracker_names(config, where)
