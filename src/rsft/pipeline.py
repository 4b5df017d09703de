"""The main flow of one RSFT round, top to bottom:

    prompts -> generate (M×N completions) -> score (M×N rewards R) -> select -> export (TRL JSONL)

Every arrow is a stage in ``rsft.stages`` that reads the previous stage's files from the round
folder and writes its own; this module only wires them together from a ``RunConfig``.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rsft import artifacts, stages, stats
from rsft.config import (
    GenerationConfig,
    GeneratorConfig,
    PromptsConfig,
    RunConfig,
    ScoringConfig,
    dump_config,
)
from rsft.config.checks import check_generation, check_prompts, check_run, check_scorer_spec
from rsft.errors import RsftError
from rsft.generate import Generator, generator_from_config
from rsft.prompts import FieldMap, TaskSpec, open_prompts, task_prompts
from rsft.registry import SCORERS
from rsft.score import Scorer, as_scorer
from rsft.stages.executor import Executor, make_executor
from rsft.types import Prompt


def round_dir(config: RunConfig, index: int = 0) -> Path:
    return config.run_dir / f"round-{index:03d}"


def load_prompt_set(config: PromptsConfig) -> list[Prompt]:
    """The prompts of a run: a reasoning-gym task, or a file/folder with a field mapping."""
    return list(open_prompt_set(config))


def open_prompt_set(config: PromptsConfig) -> Iterable[Prompt]:
    """``load_prompt_set``, with a file's prompts read as they are used (``rsft.prompts.open_prompts``):
    the config and the file are checked now, each row when it is reached."""
    check_prompts(config)
    if config.task is not None:
        t = config.task
        return task_prompts(TaskSpec(name=t.name, size=t.size, seed=t.seed, shot_seed=t.shot_seed, shots=t.shots,
                                     options=t.options, template=t.template, chat=t.chat))
    if config.path is None:
        raise RsftError("prompts: give a 'path' (JSONL/Parquet/CSV/datasets folder) or a reasoning-gym 'task'")
    fields = FieldMap(prompt=config.prompt_field, messages=config.messages_field, answer=config.answer_field)
    return open_prompts(config.path, fields, split=config.split)


def build_generator(config: GenerationConfig, round_dir: Path | None = None) -> Generator:
    """One generator, or a ``MixedGenerator`` when ``mix`` lists several.

    Given the ``round_dir``, an ``openai`` generator journals the responses it receives under the
    round's ``.shards/`` (unless its options name a ``journal``), so a rerun after a server failure
    asks only for what is missing; the journal goes once the generate stage is recorded.
    """
    def one(g: GeneratorConfig) -> Generator:
        if g.backend != "openai" or round_dir is None or "journal" in g.options:
            return generator_from_config(g)
        name = f"journal-{artifacts.config_hash(g.model)}.jsonl"  # not the address: a restarted server may move
        return generator_from_config(g, journal=str((Path(round_dir) / artifacts.SHARDS / name).absolute()))  # Ray too

    check_generation(config)
    if not config.mix:
        return one(config.generator)
    from rsft.generate.mixed import MixedGenerator

    return MixedGenerator([(one(g), g.n) for g in config.mix])


def build_scorer(config: ScoringConfig, round_dir: Path | None = None) -> Scorer:
    """A scorer from a spec string (``task``, ``math``, ``rm:PATH``, ``pkg.mod:fn``...) or a ``gate`` mapping.

    Given the ``round_dir``, an ``http:URL`` scorer journals the answers it receives under the
    round's ``.shards/`` (unless its options name a ``journal``), like the ``openai`` generator.
    """
    if isinstance(config.scorer, Mapping):
        return as_scorer("gate", {**config.scorer, **config.options})
    check_scorer_spec(config.scorer, "scoring.scorer")
    options = dict(config.options)
    if round_dir is not None and journals(config):
        name = f"{artifacts.JOURNALS['score']}{artifacts.config_hash(config.scorer)}.jsonl"
        options["journal"] = str((Path(round_dir) / artifacts.SHARDS / name).absolute())
    return as_scorer(config.scorer, options)


def journals(config: ScoringConfig) -> bool:
    """Whether the scorer keeps a journal in the round (an ``http:URL`` scorer without its own ``journal``)."""
    entry, _ = SCORERS.split(config.scorer)
    return entry is not None and entry.journal and "journal" not in config.options


def scorer_factory(config: ScoringConfig, executor: Executor,
                   round_dir: Path | None = None) -> Callable[[], Scorer] | None:
    """How remote workers build their own scorer (on their own device); None when the executor's
    jobs run in this process and can use the driver's scorer. ``round_dir``: see ``build_scorer``."""
    if executor.in_process:
        return None
    if round_dir is not None and journals(config):
        return functools.partial(build_scorer, config, round_dir=round_dir)
    return functools.partial(build_scorer, config)


@dataclass
class RoundResult:
    round_dir: Path
    generation: dict[str, Any]
    reward_stats: dict[str, Any]
    selection: dict[str, Any]
    export: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)


def run_round(
    config: RunConfig,
    index: int = 0,
    generator: Generator | None = None,
    scorer: Any = None,
    prompts: Iterable[Prompt] | None = None,
    quiet: bool = False,
    write_config: bool = True,
    new_version: bool = False,
) -> RoundResult:
    """Run one round end to end into ``<out>/<name>/round-<index>/``. Finished shards are reused.

    With ``config.executor: ray`` the shards run on Ray actor pools, and with ``ray.overlap``
    generation and scoring form one streaming pipeline; the files written are the same.
    """
    check_run(config)  # a config built or changed in code fails as its YAML would, before anything is written
    config.run_dir.mkdir(parents=True, exist_ok=True)
    if write_config:
        artifacts.write_text(config.run_dir / artifacts.CONFIG, dump_config(config))
    out = round_dir(config, index)

    prompts = prompts if prompts is not None else open_prompt_set(config.prompts)  # streamed into prompts.parquet
    executor = make_executor(config.executor, config.ray)
    make_scorer = None if scorer is not None else scorer_factory(config.scoring, executor, round_dir=out)
    scorer = scorer or build_scorer(config.scoring, round_dir=out)  # before generating: a bad scorer fails fast
    make_gen = (lambda: generator) if generator is not None else functools.partial(build_generator, config.generation, round_dir=out)
    if config.executor == "ray" and config.ray.overlap:  # score shard k while shard k+1 generates
        generation, reward_stats = stages.generate_and_score(out, config.generation, make_gen, prompts, config.scoring,
                                                             scorer, executor, make_scorer, new_version=new_version)
    else:
        generation = stages.generate(out, config.generation, make_gen, prompts, new_version=new_version,
                                     executor=executor)
        reward_stats = stages.score(out, config.scoring, scorer, shard_size=config.generation.shard_size,
                                    new_version=new_version, executor=executor, make_scorer=make_scorer)
    if not quiet:
        print(stats.format_stats(reward_stats), file=sys.stderr)

    selection = stages.select_completions(out, config.selection)
    exported = stages.export_selected(out)
    if exported["rows"] == 0:
        stages.warn("no completion was selected: lower the threshold or raise N")
    return RoundResult(out, generation, reward_stats, selection, exported)
