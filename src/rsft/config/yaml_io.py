"""A YAML file onto ``RunConfig`` and back: unknown keys are rejected with the nearest valid name,
and values are type-checked, so a typo never silently falls back to a default."""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import textwrap
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rsft.config.checks import check_run
from rsft.config.schema import RunConfig
from rsft.errors import RsftError


def load_config(path: str | Path) -> RunConfig:
    import yaml

    path = Path(path)
    if not path.exists():
        raise RsftError(f"{path}: no such config file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise RsftError(f"{path}{line}: invalid YAML: {getattr(e, 'problem', e)}") from None
    config = from_dict(RunConfig, data, str(path))
    try:
        return check_run(config)
    except RsftError as e:
        raise RsftError(f"{path}: {e}") from None


def from_dict(cls: type, data: Any, where: str) -> Any:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and wrong types."""
    if not isinstance(data, Mapping):
        raise RsftError(f"{where}: expected a mapping for {cls.__name__}, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            near = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean {near[0]!r}?" if near else f"; valid keys: {', '.join(names)}"
            raise RsftError(f"{where}: unknown key {key!r}{hint}")
        kwargs[key] = _convert(hints[key], _yes_no(cls, key, value), f"{where}: {key}")
    try:
        return cls(**kwargs)
    except RsftError as e:  # a __post_init__ check: name the file and section
        raise RsftError(f"{where}: {e}") from None


def _yes_no(cls: type, key: str, value: Any) -> Any:
    """YAML reads an unquoted ``no``/``yes`` as a boolean: back to the word where the field's choices have it."""
    word = {False: "no", True: "yes"}.get(value) if isinstance(value, bool) else None
    field_choices = next(f.metadata.get("choices", ()) for f in dataclasses.fields(cls) if f.name == key)
    return word if word in field_choices else value


def _convert(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, where)
            except RsftError:
                continue
        raise RsftError(f"{where}: expected {_type_name(hint)}, got {value!r}{_quote_hint(hint, value)}")
    if hint is Any:
        return value
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, where)
    if origin is list:
        if not isinstance(value, list):
            raise RsftError(f"{where}: expected a list, got {value!r}")
        (item,) = typing.get_args(hint) or (Any,)
        return [_convert(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise RsftError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if hint in (int, str, bool) and type(value) is hint:
        return value
    raise RsftError(f"{where}: expected {_type_name(hint)}, got {value!r}{_quote_hint(hint, value)}")


def _quote_hint(hint: Any, value: Any) -> str:
    if isinstance(value, bool) and (hint is str or str in typing.get_args(hint)):
        return " (YAML reads unquoted yes/no/on/off as a boolean: quote the value)"
    return ""


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def dump_config(config: RunConfig) -> str:
    import yaml

    from rsft.artifacts import redact

    return yaml.safe_dump(redact(to_dict(config)), sort_keys=False)


def key_value(text: str) -> tuple[str, Any]:
    """Parse a ``KEY=VALUE`` command-line option; the value is YAML (``batch_size=8`` gives the int 8)."""
    import argparse

    import yaml

    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, yaml.safe_load(value)


def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings of a dataclass (the string literal right after each field)."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))  # dedent: a class defined in a function
    except (OSError, TypeError):
        return {}
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    docs = {}
    for stmt, nxt in zip(body, body[1:], strict=False):
        if (
            isinstance(stmt, ast.AnnAssign)
            and isinstance(stmt.target, ast.Name)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            docs[stmt.target.id] = " ".join(nxt.value.value.split())
    return docs
