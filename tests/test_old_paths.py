"""Modules that moved into the sub-packages stay importable under their old paths (``rsft.MOVED``),
and a package that took a module's name answers for that module's names, so user code written for
the flat layout keeps working. (The paths README.md and docs/ name are checked in test_docs.)"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

import rsft

SRC = Path(__file__).resolve().parent.parent / "src"

OLD_NAMES = {
    "rsft.adaptive": "AdaptivePolicy", "rsft.answers": "answer_extractor", "rsft.bon_stats": "pass_at_k",
    "rsft.bon_report": "format_report", "rsft.export": "sft_row", "rsft.grpo": "as_grpo_reward",
    "rsft.logprobs": "sequence_logprobs", "rsft.rm_train": "train_rm", "rsft.rm": "gate_round",
    "rsft.sweep": "run_sweep", "rsft.tables": "format_metric", "rsft.status": "run_status",
    "rsft.executor": "make_executor", "rsft.ray_executor": "RayExecutor", "rsft.shard_job": "ShardJob",
    "rsft.demo": "train_summary", "rsft.demo_real": "MODEL",
    # packages that took the name of the module they grew from
    "rsft.bon": "adaptive_best_of_n", "rsft.train": "train", "rsft.rounds": "run_rounds",
    "rsft.report": "write_report",
}
"""Every module path of the flat layout that is no longer a file, with one public name it had."""

FORWARDED = {"rsft.bon": "rsft.bon.infer", "rsft.train": "rsft.train.sft", "rsft.rounds": "rsft.rounds.loop",
             "rsft.report": "rsft.report.runs"}


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
            "HF_HUB_OFFLINE": "1"}


def test_every_moved_module_is_listed() -> None:
    assert set(rsft.MOVED) | set(FORWARDED) == set(OLD_NAMES)
    for old in rsft.MOVED:
        assert not (SRC / (old.replace(".", "/") + ".py")).exists(), old


@pytest.mark.parametrize("old", sorted(OLD_NAMES))
def test_the_old_path_imports_with_its_names(old: str) -> None:
    module = importlib.import_module(old)
    name = OLD_NAMES[old]
    exec(f"from {old} import {name}", {})
    home = rsft.MOVED.get(old) or FORWARDED[old]
    assert getattr(module, name) is getattr(importlib.import_module(home), name)


def test_an_old_path_is_the_module_itself() -> None:
    import rsft.grpo
    from rsft.grpo import as_grpo_reward

    import rsft.train.grpo

    assert rsft.grpo is rsft.train.grpo and as_grpo_reward is rsft.train.grpo.as_grpo_reward
    assert rsft.grpo.__name__ == rsft.grpo.__spec__.name == "rsft.train.grpo"
    assert rsft.bon_stats is sys.modules["rsft.bon.stats"]  # attribute access on the package works too


def test_old_paths_load_nothing_heavy() -> None:
    code = ("import sys, rsft, rsft.grpo, rsft.logprobs, rsft.bon, rsft.train, rsft.rounds, rsft.report\n"
            "from rsft.grpo import as_grpo_reward\nfrom rsft.bon import answers\n"
            "heavy = {'torch', 'transformers', 'trl', 'vllm', 'ray'} & set(sys.modules)\n"
            "assert not heavy, heavy\n"
            "assert 'rsft.bon.infer' not in sys.modules, 'a submodule of rsft.bon loaded rsft.bon.infer'\n")
    r = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("old", ["rsft.demo", "rsft.demo_real"])
def test_python_m_runs_an_old_path(old: str) -> None:
    r = subprocess.run([sys.executable, "-m", old, "--help"], env=_env(), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert f"usage: python -m {old}" in r.stdout


def test_a_package_answers_only_for_its_module_names() -> None:
    import rsft.bon

    with pytest.raises(AttributeError):
        rsft.bon.no_such_name  # noqa: B018
    assert rsft.bon.SELECTORS == ("argmax", "majority", "weighted_majority")
