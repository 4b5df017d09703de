"""The registries of ``rsft.registry``: every entry loads and says what it is, the docs' tables are
the registries', and the worked example of docs/architecture.md (adding a selection strategy) runs
as written: its file, its registry line, then the library, the config, the command line and the
select stage with it."""

from __future__ import annotations

import importlib.util
import math
import re
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from test_bon_stats import write_round
from test_docs import fenced_blocks

from rsft import artifacts, registry
from rsft.cli import build_parser
from rsft.cli.options import config_from
from rsft.config import SelectionConfig, from_dict
from rsft.errors import RsftError
from rsft.score import as_scorer, scorer_gpus
from rsft.select import select
from rsft.stages import select_completions

ROOT = Path(__file__).resolve().parent.parent
ARCHITECTURE = ROOT / "docs" / "architecture.md"
EXAMPLE = "### A selection strategy (worked example)"
NAN = math.nan


@pytest.mark.parametrize("title", list(registry.REGISTRIES))
def test_every_entry_loads_and_has_one_line_of_help(title):
    reg = registry.REGISTRIES[title]
    assert len(reg) >= 2
    for name in reg:
        entry = reg[name]
        assert entry.name == name and callable(entry.load())
        assert entry.help and "\n" not in entry.help and not entry.help.endswith(".")
        assert isinstance(entry.option_defaults(), dict) and isinstance(entry.option_names(), list)


def test_the_architecture_doc_shows_the_registries():
    assert registry.tables() in ARCHITECTURE.read_text(encoding="utf-8"), (
        "docs/architecture.md's tables differ from the registries: paste `python -m rsft.registry`")


@pytest.mark.parametrize("section, reg", [("## Generation backends", registry.BACKENDS),
                                          ("## Scorers", registry.SCORERS)])
def test_the_reference_names_every_entry(section, reg):
    text = (ROOT / "docs" / "reference.md").read_text(encoding="utf-8")
    part = text[text.index(section):]
    part = part[:part.index("\n## ", 1)]
    missing = [e.usage for e in reg.entries.values() if not re.search(rf"`[^`]*\b{re.escape(e.name)}\b", part)]
    assert not missing, f"docs/reference.md {section} does not name {missing}"


def test_an_unknown_name_is_one_line_naming_the_registered_ones():
    err = registry.BACKENDS.unknown("nope", "generation: ")
    assert str(err) == "generation: unknown backend 'nope'; choose one of hf, openai, vllm"
    with pytest.raises(RsftError, match="registered already"):
        registry.BACKENDS.add(registry.Backend("hf", "x:y", "again"))
    assert registry.SCORERS.split("rm:/models/a") == (registry.SCORERS["rm"], "/models/a")
    assert registry.SCORERS.split("mypkg.mod:fn") == (None, "fn") and registry.SCORERS.split({}) == (None, "")


def test_a_registered_scorer_is_offered_everywhere(tmp_path):
    """One line (here at run time) and a scorer class: ``--scorer``'s help lists it, ``as_scorer``
    builds it with its options checked, and its GPUs count."""
    entry = registry.Scorer("shout", "rsft_test_shout:Shout", "the share of upper-case letters", arg="WORD",
                            gpus=0.5)
    (tmp_path / "rsft_test_shout.py").write_text(
        "class Shout:\n"
        "    def __init__(self, word, *, weight=1.0):\n"
        "        self.name, self.word, self.weight = f'shout:{word}', word, weight\n"
        "    def score(self, prompts, completions, metadata):\n"
        "        return [self.weight * (self.word in c.upper()) for c in completions]\n")
    sys.path.insert(0, str(tmp_path))
    registry.SCORERS.add(entry)
    try:
        scorer = as_scorer("shout:HI", {"weight": 2.0})
        assert scorer.score(["p", "p"], ["hi there", "no"], [{}, {}]) == [2.0, 0.0]
        with pytest.raises(RsftError, match=r"scorer 'shout': unknown option\(s\) wieght; known: weight"):
            as_scorer("shout:HI", {"wieght": 2.0})
        assert scorer_gpus({"gate": "math", "inner": "shout:HI"}) == 0.5
        assert "shout:WORD" in _help(["bon"])
    finally:
        registry.SCORERS.remove("shout")
        sys.path.remove(str(tmp_path))
        sys.modules.pop("rsft_test_shout", None)


def _help(argv: list[str]) -> str:
    parser = build_parser()
    sub = parser._subparsers._group_actions[0].choices[argv[0]]  # type: ignore[union-attr]
    return " ".join(sub.format_help().split())


# --- the worked example -------------------------------------------------------------------------


def example() -> tuple[str, str]:
    """The new file and the registry line of the worked example, as docs/architecture.md has them."""
    blocks = [b.text for b in fenced_blocks(ARCHITECTURE) if b.lang == "python"]
    text = ARCHITECTURE.read_text(encoding="utf-8")
    start = text.index(EXAMPLE)
    line_of = {b.text: b.line for b in fenced_blocks(ARCHITECTURE)}
    first = text.count("\n", 0, start) + 1
    source, line = [b for b in blocks if line_of[b] > first][:2]
    return source, line


@pytest.fixture
def first_pass(tmp_path):
    source, line = example()
    entry = eval(line.strip().rstrip(","), {"Strategy": registry.Strategy})  # the registry line as written
    module_name = entry.factory.partition(":")[0]
    path = tmp_path / "first_pass.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    registry.STRATEGIES.add(entry)
    try:
        yield entry
    finally:
        registry.STRATEGIES.remove(entry.name)
        sys.modules.pop(module_name, None)


R = [[0.1, 0.7, 0.9], [NAN, 0.2, 0.3], [0.6, NAN, 1.0], [NAN, 0.8, 0.5]]


def test_the_worked_example_is_refused_before_it_is_registered():
    assert "first_pass" not in registry.STRATEGIES
    with pytest.raises(SystemExit):
        build_parser().parse_args(["select", "ROUND", "--strategy", "first_pass"])
    with pytest.raises(RsftError, match="unknown selection strategy 'first_pass'"):
        select(R, "first_pass", threshold=0.5)


def test_the_worked_example_runs_as_written(first_pass, tmp_path):
    assert first_pass.name == "first_pass" and first_pass.row_wise
    picked = select(R, "first_pass", threshold=0.5)
    assert picked.pairs == [(0, 1), (2, 0), (3, 1)] and picked.n_rows_without_pick == 1
    assert select(R, "first_pass").pairs == [(0, 0), (1, 1), (2, 0), (3, 1)]  # NaN is never picked

    assert from_dict(SelectionConfig, {"strategy": "first_pass", "threshold": 0.5}, "x").strategy == "first_pass"
    args = build_parser().parse_args(["select", "ROUND", "--strategy", "first_pass", "--threshold", "0.5"])
    assert config_from(args).selection.strategy == "first_pass"
    assert "first_pass: each prompt's first sample at or above threshold" in _help(["select"])
    assert re.search(r"\| `first_pass` \| `threshold` \|", registry.STRATEGIES.markdown())

    round_dir = tmp_path / "round-000"
    round_dir.mkdir()
    write_round(round_dir, R)
    counts = select_completions(round_dir, SelectionConfig(strategy="first_pass", threshold=0.5))
    table = pq.read_table(round_dir / artifacts.SELECTION)
    assert list(zip(table["prompt_id"].to_pylist(), table["sample_idx"].to_pylist(), strict=True)) == [
        ("p0", 1), ("p2", 0), ("p3", 1)]
    assert counts["selected"] == 3 and counts["prompts_with_pick"] == 3
