"""rsft: rejection-sampling fine-tuning and Best-of-N for LLMs.

Importing the package is cheap: heavy modules (torch, transformers) load only when used.

Modules that moved into the sub-packages keep their old import paths. ``MOVED`` maps each old path
to the module's home: ``import rsft.grpo`` gives the module ``rsft.train.grpo`` itself (one module
under two names, so its state and classes are shared) and ``python -m rsft.demo`` runs
``rsft.demos.demo``. A package that took the name of the module it grew from (``rsft.bon``,
``rsft.train``, ``rsft.rounds``, ``rsft.report``) answers for that module's names through
``forward_names``: ``from rsft.bon import best_of_n`` is ``rsft.bon.infer.best_of_n``.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from collections.abc import Callable, Sequence
from types import CodeType, ModuleType
from typing import Any

__version__ = "0.1.0"

_LAZY = {"best_of_n": "rsft.bon.infer", "BoNResult": "rsft.bon.infer", "run_round": "rsft.pipeline"}

MOVED = {
    "rsft.adaptive": "rsft.bon.adaptive",
    "rsft.answers": "rsft.bon.answers",
    "rsft.bon_stats": "rsft.bon.stats",
    "rsft.bon_report": "rsft.bon.report",
    "rsft.export": "rsft.train.rows",
    "rsft.grpo": "rsft.train.grpo",
    "rsft.logprobs": "rsft.train.logprobs",
    "rsft.rm_train": "rsft.train.rm",
    "rsft.rm": "rsft.rounds.rm_check",
    "rsft.sweep": "rsft.rounds.sweep",
    "rsft.tables": "rsft.report.tables",
    "rsft.status": "rsft.report.status",
    "rsft.executor": "rsft.stages.executor",
    "rsft.ray_executor": "rsft.stages.ray_executor",
    "rsft.shard_job": "rsft.stages.shard_job",
    "rsft.demo": "rsft.demos.demo",
    "rsft.demo_real": "rsft.demos.demo_real",
}
"""Old module path -> where the module lives now."""


class MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """The import hook behind ``MOVED``: it finds an old path and loads it as the new module itself."""

    def __init__(self) -> None:
        self.specs: dict[str, importlib.machinery.ModuleSpec | None] = {}

    def find_spec(self, fullname: str, path: Sequence[str] | None = None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MOVED:
            return None
        home = importlib.util.find_spec(MOVED[fullname])
        return importlib.util.spec_from_loader(fullname, self, origin=home.origin if home else None)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        module = importlib.import_module(MOVED[spec.name])
        self.specs[module.__name__] = module.__spec__  # the import system sets __spec__ to the old path's
        return module

    def exec_module(self, module: ModuleType) -> None:
        module.__spec__ = self.specs.pop(module.__name__, module.__spec__)  # it ran when it was imported

    def get_code(self, fullname: str) -> CodeType | None:
        """The new module's code, for ``python -m OLD_PATH`` (runpy asks the loader for it)."""
        home = importlib.util.find_spec(MOVED[fullname])
        loader = home.loader if home else None
        return loader.get_code(MOVED[fullname]) if isinstance(loader, importlib.abc.InspectLoader) else None


if not any(isinstance(finder, MovedModules) for finder in sys.meta_path):
    sys.meta_path.append(MovedModules())


def forward_names(package: str, module: str) -> Callable[[str], Any]:
    """The module ``__getattr__`` of ``package``, which took the name of ``module`` (the module it grew
    from): the package answers for that module's names and imports it when one is first asked for.
    Its own submodules are left to the import system, so importing one never loads ``module``."""

    def __getattr__(name: str) -> Any:
        if name.startswith("__") or importlib.util.find_spec(f"{package}.{name}") is not None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(module), name)

    return __getattr__


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if f"rsft.{name}" in MOVED:
        return importlib.import_module(f"rsft.{name}")
    raise AttributeError(f"module 'rsft' has no attribute {name!r}")
