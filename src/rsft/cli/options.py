"""Command-line flags generated from the config dataclasses, so each option is declared once.

A flag's name, type, choices, default and help all come from the dataclass field it sets: the
annotation (``int``, ``float | None``, ``bool``, ``list[str]``, ``dict``), the field's ``choices``
metadata and its attribute docstring (``rsft.config.field_docs``). ``SPELLINGS`` holds the few flags
whose name differs from their field's (``-n``, ``--lr``, ``--task``) or that set several fields at
once (``--actors``: both Ray pools). A command picks the fields it offers with ``Section``s.

Every generated flag defaults to None and ``apply_flags`` writes back only the flags given, so a
YAML config loaded first keeps everything the command line does not mention.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from rsft.config import RunConfig, check_run, field_docs, key_value, load_config

FLAGS = "_config_flags"
"""Namespace attribute listing the generated flags of a parser (set as a parser default)."""


class Command(NamedTuple):
    """One ``rsft`` sub-command: its one-line help, its flags and its body."""

    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    main: Callable[[argparse.Namespace], None]


def unescape(text: str) -> str:
    """``\\n``, ``\\t`` and the like typed on a command line become the characters they name."""
    return text.encode().decode("unicode_escape")


@dataclass(frozen=True)
class Spelling:
    """How a field's flag differs from the default ``--field-name`` that sets that one field."""

    names: tuple[str, ...]
    also: tuple[str, ...] = ()
    """More fields that get the same value."""
    sets: tuple[tuple[str, Any], ...] = ()
    """Fields set to a constant when the flag is given (before any flag's value is applied): what the
    flag replaces, e.g. ``--prompts`` clears ``prompts.task``."""
    creates: bool = False
    """Build the optional section holding the field when it is None (``--task`` makes a TaskConfig);
    the flags of a section that is None are otherwise ignored."""
    type: Callable[[str], Any] | None = None
    """Parser of one value, instead of the annotation's type."""
    help_prefix: str = ""


SPELLINGS: dict[str, Spelling] = {
    "prompts.path": Spelling(("--prompts",), sets=(("prompts.task", None),)),
    "prompts.task.name": Spelling(("--task",), sets=(("prompts.path", None), ("prompts.task", None)), creates=True),
    "prompts.task.seed": Spelling(("--task-seed",)),
    "prompts.task.options": Spelling(("--task-option",)),
    "generation.n": Spelling(("-n",)),
    "generation.generator.options": Spelling(("--option",)),
    "generation.sampling.stop": Spelling(("--stop",), type=unescape),
    "generation.adaptive.enabled": Spelling(("--adaptive",)),
    "generation.adaptive.rule": Spelling(("--stop-rule",)),
    "scoring.options": Spelling(("--scorer-option",)),
    "selection.k": Spelling(("-k",)),
    "ray.address": Spelling(("--ray-address",)),
    "ray.generate.actors": Spelling(("--actors",), also=("ray.score.actors",), help_prefix="ray, each pool: "),
    "ray.generate.num_cpus": Spelling(("--actor-cpus",), also=("ray.score.num_cpus",), help_prefix="ray: "),
    "ray.generate.num_gpus": Spelling(("--actor-gpus",), also=("ray.score.num_gpus",), help_prefix="ray: "),
    "train.learning_rate": Spelling(("--learning-rate", "--lr")),
    "rounds.rounds": Spelling(("--rounds",), sets=(("rounds.train", True),)),
}
"""Flags of ``RunConfig`` fields not spelled ``--field-name``, by field path."""


@dataclass(frozen=True)
class Section:
    """A titled group of a command's flags: the fields under ``include`` (field paths, or section
    paths meaning every field below) except those under ``exclude``."""

    title: str
    include: tuple[str, ...]
    exclude: tuple[str, ...] = ()
    help: Mapping[str, str] = field(default_factory=dict)
    """This command's own help for a field, where the field's docstring does not say what the flag does."""
    description: str | None = None


@dataclass(frozen=True)
class Flag:
    """A generated flag: the field path it sets (in a ``root`` dataclass) and how its values are
    parsed and applied."""

    root: type
    path: str
    kind: str
    """``value``, ``bool``, ``list`` (the flag repeats) or ``dict`` (repeated ``KEY=VALUE``, merged)."""
    spelling: Spelling

    @property
    def dest(self) -> str:
        return f"{self.root.__name__}.{self.path}"


class Leaf(NamedTuple):
    path: str
    name: str
    hint: Any
    owner: type
    field: dataclasses.Field[Any]


def leaves(cls: type, prefix: str = "") -> Iterator[Leaf]:
    """Every non-dataclass field under ``cls`` with its dotted path; nested and optional dataclass
    sections are walked into."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        path, hint = prefix + f.name, hints[f.name]
        section = _section_type(hint)
        if section is not None:
            yield from leaves(section, path + ".")
        else:
            yield Leaf(path, f.name, hint, cls, f)


def _section_type(hint: Any) -> type | None:
    """The dataclass a field holds (``X`` or ``X | None``), else None."""
    args = [a for a in typing.get_args(hint) if a is not type(None)] if _is_union(hint) else [hint]
    return args[0] if len(args) == 1 and dataclasses.is_dataclass(args[0]) else None


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


def _under(path: str, prefixes: Sequence[str]) -> bool:
    return any(p == "" or path == p or path.startswith(p + ".") for p in prefixes)


def select(root: type, section: Section) -> list[Leaf]:
    """The fields ``section`` offers, in ``include`` order (each in field order); an include that
    names no field is a programming error."""
    out: list[Leaf] = []
    everything = list(leaves(root))
    for pattern in section.include:
        matched = [leaf for leaf in everything if _under(leaf.path, [pattern])]
        if not matched:
            raise ValueError(f"{root.__name__} has no field or section {pattern!r}")
        taken = {leaf.path for leaf in out}
        out += [leaf for leaf in matched if not _under(leaf.path, section.exclude) and leaf.path not in taken]
    return out


def _value_type(hint: Any, path: str) -> tuple[str, Any]:
    """``(kind, item type)`` of a field's flag from its annotation (Optional unwrapped; Any is str)."""
    if _is_union(hint):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"{path}: no flag for a field of type {hint}")
        hint = args[0]
    origin = typing.get_origin(hint)
    if origin is dict:
        return "dict", key_value
    if origin is list:
        (item,) = typing.get_args(hint) or (str,)
        return "list", _value_type(item, path)[1]
    if hint is bool:
        return "bool", None
    if hint is Any:
        return "value", str
    if hint in (int, float, str, Path):
        return "value", hint
    raise TypeError(f"{path}: no flag for a field of type {hint}")


def _default(root: Any, path: str) -> Any:
    """The field's value in a default ``root``, building optional sections that default to None."""
    *parents, name = path.split(".")
    obj = root
    for part in parents:
        obj = getattr(obj, part) if getattr(obj, part) is not None else _new_section(obj, part)
    return getattr(obj, name)


def _new_section(obj: Any, name: str) -> Any:
    """A default instance of the optional dataclass section ``obj.name`` (which is None)."""
    section = _section_type(typing.get_type_hints(type(obj))[name])
    assert section is not None
    return section()


def _help(leaf: Leaf, spelling: Spelling, override: str | None, default: Any) -> str:
    """The field's docstring (or ``override``), the names of its registry (each with its help line,
    or just the names for a long list) and its default."""
    text = override if override is not None else spelling.help_prefix + field_docs(leaf.owner).get(leaf.name, "")
    text = text.replace("``", "").rstrip().removesuffix(".")
    registry = leaf.field.metadata.get("registry")
    if registry is not None and override is None:
        text += f" ({registry.describe()})" if len(registry) <= 10 else f" (built in: {registry.help()})"
    if default is not None and default != [] and default != {} and "(default" not in text:
        shown = str(default).lower() if isinstance(default, bool) else default
        text += f" (default: {shown})"
    return text.replace("%", "%%")


def add_config_flags(parser: argparse.ArgumentParser, sections: Sequence[Section], root: type = RunConfig, *,
                     spellings: Mapping[str, Spelling] | None = None,
                     defaults: Any = None) -> list[argparse._ArgumentGroup]:
    """Add a flag for every field the ``sections`` select from ``root``, each section as an argument
    group (returned, for a command's own flags); ``apply_flags`` later writes the given ones into a
    ``root`` instance. ``spellings`` defaults to ``SPELLINGS`` for ``RunConfig`` (else every flag is
    ``--field-name``); ``defaults`` (the help's defaults) to ``root()``."""
    flags = list(parser.get_default(FLAGS) or [])
    defaults = defaults if defaults is not None else root()
    if spellings is None:
        spellings = SPELLINGS if root is RunConfig else {}
    groups = []
    for section in sections:
        groups.append(parser.add_argument_group(section.title, section.description))
        for leaf in select(root, section):
            spelling = spellings.get(leaf.path) or Spelling(("--" + leaf.name.replace("_", "-"),))
            help_text = _help(leaf, spelling, section.help.get(leaf.path), _default(defaults, leaf.path))
            flags.append(_add_flag(groups[-1], root, leaf, spelling, help_text))
    parser.set_defaults(**{FLAGS: flags})
    return groups


def _add_flag(group: argparse._ArgumentGroup, root: type, leaf: Leaf, spelling: Spelling, help_text: str) -> Flag:
    kind, item = _value_type(leaf.hint, leaf.path)
    flag = Flag(root, leaf.path, kind, spelling)
    kwargs: dict[str, Any] = {"dest": flag.dest, "default": None, "help": help_text}
    if kind == "bool":
        kwargs["action"] = argparse.BooleanOptionalAction
    else:
        kwargs["type"] = spelling.type or item
        kwargs["metavar"] = "KEY=VALUE" if kind == "dict" else spelling.names[0].lstrip("-").replace("-", "_").upper()
        if kind in ("list", "dict"):
            kwargs["action"] = "append"
        if leaf.field.metadata.get("choices"):
            kwargs["choices"] = leaf.field.metadata["choices"]
            del kwargs["metavar"]
    group.add_argument(*spelling.names, **kwargs)
    return flag


def _given(args: argparse.Namespace, root: type) -> list[tuple[Flag, Any]]:
    return [(flag, getattr(args, flag.dest)) for flag in getattr(args, FLAGS, ())
            if issubclass(root, flag.root) and getattr(args, flag.dest, None) is not None]


def given_flags(args: argparse.Namespace, root: type) -> list[str]:
    """The generated flags of ``root`` given on the command line, as spelled in ``--help``."""
    return [flag.spelling.names[0] for flag, _ in _given(args, root)]


def apply_flags(args: argparse.Namespace, config: Any) -> Any:
    """Write every generated flag of ``config``'s class given in ``args`` into ``config`` and return
    it (changed in place; a frozen dataclass is replaced, so its ``__post_init__`` checks each value).

    First the ``sets`` of every given flag (what it replaces), then the values: a list replaces the
    field's list, ``KEY=VALUE`` pairs update its mapping, anything else replaces the value.
    """
    given = _given(args, type(config))
    for flag, _ in given:
        for path, value in flag.spelling.sets:
            config = _assigned(config, path.split("."), value, kind="value", create=False)
    for flag, value in given:
        for path in (flag.path, *flag.spelling.also):
            config = _assigned(config, path.split("."), value, flag.kind, flag.spelling.creates)
    return config


def _assigned(obj: Any, path: list[str], value: Any, kind: str, create: bool) -> Any:
    """``obj`` with the field at ``path`` set; a missing optional section on the way is built only
    with ``create`` (else the flag is ignored: e.g. --size without a task)."""
    name = path[0]
    if len(path) > 1:
        child = getattr(obj, name)
        if child is None and not create:
            return obj
        value = _assigned(child if child is not None else _new_section(obj, name), path[1:], value, kind, create)
    elif kind == "dict":
        value = {**getattr(obj, name), **dict(value)}
    elif kind == "list":
        value = list(value)
    if type(obj).__dataclass_params__.frozen:  # type: ignore[attr-defined]
        return dataclasses.replace(obj, **{name: value})
    setattr(obj, name, value)
    return obj


def add_config_argument(parser: argparse.ArgumentParser, **kwargs: Any) -> None:
    """``--config FILE``: the YAML run config the flags override."""
    kwargs.setdefault("help", "YAML run config; flags override its values")
    parser.add_argument("--config", type=Path, **kwargs)


def config_from(args: argparse.Namespace) -> RunConfig:
    """The ``--config`` file (or the defaults) with every given flag applied on top."""
    config = load_config(args.config) if getattr(args, "config", None) else RunConfig()
    return check_run(apply_flags(args, config))
