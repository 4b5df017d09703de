"""The docs agree with the code: README.md and docs/*.md checked against the real parser, config
loader and package.

- every `rsft ...` command in a fenced block (also `python -m rsft.cli|rsft.serve|rsft.demo|
  rsft.demo_real|rsft.demos.compare ...`) parses with that command's own argparse parser; nothing is executed.
  Line continuations are joined, comments dropped, pipelines and `&&`/`;`/`&` lists split, and
  environment prefixes (`OMP_NUM_THREADS=1 rsft ...`) and redirections skipped. Placeholders such
  as ROUND_DIR pass as positional values.
- every fenced YAML block with a top-level key of the run config loads through `rsft.config`
  (unknown keys and wrong types fail there).
- every `import rsft...` / `from rsft... import ...` in a fenced Python block imports, and every
  dotted name `rsft.x.y` the docs mention resolves (a module, or a name in one): the old flat paths
  included (`rsft.grpo`, `rsft.bon_stats.pass_at_k`, ...).
- no doc points outside the repository, and every repository path a doc names exists.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import functools
import io
import re
import shlex
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import pytest
import yaml

from rsft.config import RunConfig, load_config

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL = {"", "bash", "sh", "shell", "console"}
SEPARATORS = {"|", "||", "&", "&&", ";", ";;", "(", ")"}
REDIRECTS = re.compile(r"^(<|>|>>|<<|>&|&>)$")
ENV_PREFIX = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


class Block(NamedTuple):
    doc: Path
    line: int
    """1-based line of the opening fence."""
    lang: str
    text: str

    @property
    def where(self) -> str:
        return f"{self.doc.relative_to(ROOT)}:{self.line}"


def fenced_blocks(doc: Path) -> Iterator[Block]:
    """The fenced code blocks of a Markdown file (``` or ~~~ fences, any indentation)."""
    lines = doc.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        m = re.match(r"^\s*(`{3,}|~{3,})\s*([\w+-]*)", lines[i])
        if not m:
            i += 1
            continue
        fence, start, body = m.group(1), i, []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            body.append(lines[i])
            i += 1
        yield Block(doc, start + 1, m.group(2).lower(), "\n".join(body))
        i += 1


BLOCKS = [b for doc in DOCS for b in fenced_blocks(doc)]


# --- commands ---------------------------------------------------------------------------------------


@functools.cache
def _rsft_parser() -> Callable[[list[str]], object]:
    from rsft.cli import build_parser

    return build_parser().parse_args


@functools.cache
def _module_parsers() -> dict[str, Callable[[list[str]], object]]:
    from rsft.demos import compare, demo, demo_real

    rsft = _rsft_parser()
    return {
        "rsft.cli": rsft,
        "rsft.serve": lambda argv: rsft(["serve", *argv]),
        "rsft.demo": demo._parser().parse_args,
        "rsft.demo_real": demo_real._parser().parse_args,
        "rsft.demos.compare": compare._parser().parse_args,
    }


def logical_lines(text: str) -> Iterator[tuple[int, str]]:
    """(offset of the first line, the line with its backslash continuations joined)."""
    lines, i = text.splitlines(), 0
    while i < len(lines):
        start, line = i, lines[i]
        while line.rstrip().endswith("\\") and i + 1 < len(lines):
            i += 1
            line = line.rstrip()[:-1] + " " + lines[i]
        yield start, line
        i += 1


def simple_commands(line: str) -> list[list[str]]:
    """The simple commands of a shell line: words split by pipes and lists, env prefixes and
    redirections removed, comments dropped."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    tokens = list(lexer)
    commands, words, i = [], [], 0
    while i < len(tokens):
        token = tokens[i]
        if token.isdigit() and i + 1 < len(tokens) and tokens[i + 1].startswith(">"):
            i += 3  # 2> FILE: the descriptor, the operator and its target
            continue
        if REDIRECTS.match(token):
            i += 2  # the operator and the file name that follows
            continue
        if token in SEPARATORS:
            commands.append(words)
            words = []
        elif words or not ENV_PREFIX.match(token):
            words.append(token)
        i += 1
    commands.append(words)
    return [c for c in commands if c]


def rsft_invocation(words: list[str]) -> tuple[str, list[str]] | None:
    """("rsft" or "python -m MODULE", its arguments) when ``words`` runs rsft, else None."""
    program = words[0].rsplit("/", 1)[-1]
    if program == "rsft":
        return "rsft", words[1:]
    if re.fullmatch(r"python[\d.]*", program) and len(words) > 2 and words[1] == "-m" and words[2].startswith("rsft"):
        return words[2], words[3:]
    return None


def doc_commands() -> list[tuple[str, str, list[str]]]:
    out = []
    for block in BLOCKS:
        if block.lang not in SHELL:
            continue
        for offset, line in logical_lines(block.text):
            if "rsft" not in line:
                continue
            try:
                commands = simple_commands(line)
            except ValueError:  # not shell (a plain-text block): only lines that start like a command count
                assert not re.match(r"^\s*(\S*/)?rsft\s", line), f"{block.where}+{offset + 1}: cannot split {line!r}"
                continue
            for words in commands:
                found = rsft_invocation(words)
                if found is not None:
                    out.append((f"{block.where}+{offset + 1}", *found))
    return out


COMMANDS = doc_commands()


def test_the_docs_have_commands_to_check():
    programs = {program for _, program, _ in COMMANDS}
    assert len(COMMANDS) >= 20 and {"rsft", "rsft.demo"} <= programs


@pytest.mark.parametrize("where, program, argv", COMMANDS, ids=[f"{w} {p} {' '.join(a)[:50]}" for w, p, a in COMMANDS])
def test_every_documented_command_parses(where, program, argv):
    parse = _rsft_parser() if program == "rsft" else _module_parsers().get(program)
    assert parse is not None, f"{where}: python -m {program} is not a documented entry point"
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            parse(argv)
        except SystemExit as e:
            if e.code not in (0, None):  # --help exits 0
                pytest.fail(f"{where}: {program} {shlex.join(argv)}\n{err.getvalue().strip()}")


def test_command_splitting():
    line = "OMP_NUM_THREADS=1 rsft bon -n 4 < q.jsonl > out.jsonl 2> log && echo '# not a comment' | rsft stats r  # x"
    assert simple_commands(line) == [["rsft", "bon", "-n", "4"], ["echo", "# not a comment"], ["rsft", "stats", "r"]]
    assert list(logical_lines("rsft a \\\n  --b c\nrsft d")) == [(0, "rsft a    --b c"), (2, "rsft d")]
    assert rsft_invocation([".venv/bin/python", "-m", "rsft.demo", "-n", "16"]) == ("rsft.demo", ["-n", "16"])
    assert rsft_invocation(["pip", "install", "rsft"]) is None


# --- YAML run configs ---------------------------------------------------------------------------------

RUN_KEYS = {f.name for f in dataclasses.fields(RunConfig)}


def run_config_blocks() -> list[Block]:
    out = []
    for block in BLOCKS:
        if block.lang not in ("yaml", "yml"):
            continue
        data = yaml.safe_load(block.text)
        if isinstance(data, dict) and RUN_KEYS & set(data):
            out.append(block)
    return out


YAML_BLOCKS = run_config_blocks()


def test_the_docs_have_run_configs_to_check():
    assert len(YAML_BLOCKS) >= 2


@pytest.mark.parametrize("block", YAML_BLOCKS, ids=[b.where for b in YAML_BLOCKS])
def test_every_documented_run_config_loads(block, tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(block.text, encoding="utf-8")
    load_config(path)  # an RsftError names the key


# --- Python imports -----------------------------------------------------------------------------------


def rsft_imports(block: Block) -> list[ast.stmt]:
    try:
        tree = ast.parse(block.text)
        nodes = [n for n in ast.walk(tree) if isinstance(n, ast.Import | ast.ImportFrom)]
    except SyntaxError:  # a sketch: take its import lines one by one
        nodes = []
        for line in block.text.splitlines():
            if re.match(r"^\s*(from|import)\s+rsft\b", line):
                nodes += ast.parse(line.strip()).body
    return [n for n in nodes if _is_rsft(n)]


def _is_rsft(node: ast.stmt) -> bool:
    if isinstance(node, ast.ImportFrom):
        return node.level == 0 and (node.module or "").split(".")[0] == "rsft"
    return any(a.name.split(".")[0] == "rsft" for a in node.names)  # type: ignore[attr-defined]


IMPORTS = [(b.where, ast.unparse(n)) for b in BLOCKS if b.lang in ("python", "py") for n in rsft_imports(b)]


def test_the_docs_have_imports_to_check():
    assert len(IMPORTS) >= 4


@pytest.mark.parametrize("where, statement", IMPORTS, ids=[f"{w} {s}" for w, s in IMPORTS])
def test_every_documented_import_works(where, statement):
    try:
        exec(statement, {})
    except ImportError as e:
        pytest.fail(f"{where}: {statement}: {e}")


NOT_PYTHON = {"rsft.config_hash": "the tag a tracker gets",
              "rsft.select.first_pass": "the module docs/architecture.md's worked example adds (test_registry runs it)"}
"""Dotted ``rsft.`` words in the docs that are no Python name, each with what it is."""
DOTTED = re.compile(r"(?<![\w/.-])rsft(?:\.[A-Za-z_]\w*)+")


def doc_names() -> list[str]:
    found = {m.group(0) for doc in DOCS for m in DOTTED.finditer(doc.read_text(encoding="utf-8"))}
    return sorted(n for n in found if n not in NOT_PYTHON and not n.endswith((".yaml", ".yml", ".jsonl", ".json")))


DOC_NAMES = doc_names()


def test_the_docs_have_names_to_check():
    assert {"rsft.bon_stats.pass_at_k", "rsft.logprobs", "rsft.sweep.run_sweep"} <= set(DOC_NAMES)


@pytest.mark.parametrize("name", DOC_NAMES)
def test_every_documented_name_resolves(name):
    import importlib

    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:end]))
        except ModuleNotFoundError:
            continue
        for attr in parts[end:]:
            assert hasattr(obj, attr), f"{name}: {'.'.join(parts[:end])} has no {attr}"
            obj = getattr(obj, attr)
        return
    pytest.fail(f"{name} names no module")


# --- paths ------------------------------------------------------------------------------------------

OUTSIDE = re.compile(r"(?<![\w.])/(?:work|home|root)/|\.\.[/]shared|\bshared[/](?:DESIGN|STYLE)")
"""A path of the machine the docs were written on, or the team's notes beside the repository."""
REPO_PATH = re.compile(r"(?<![\w./-])((?:docs|bench|configs|tests|src)/[\w./-]*\w)")


@pytest.mark.parametrize("doc", DOCS, ids=[str(d.relative_to(ROOT)) for d in DOCS])
def test_docs_point_only_inside_the_repository(doc):
    text = doc.read_text(encoding="utf-8")
    outside = [f"{doc.name}:{text.count(chr(10), 0, m.start()) + 1}: {m.group(0)}" for m in OUTSIDE.finditer(text)]
    assert not outside, outside
    missing = sorted({m.group(1) for m in REPO_PATH.finditer(text) if not (ROOT / m.group(1)).exists()})
    assert not missing, f"{doc.name} names paths that do not exist: {missing}"
