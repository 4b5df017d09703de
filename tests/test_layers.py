"""The import layers of docs/architecture.md: a module imports only from its own layer or below.

The check reads every ``import`` in the package with ast (at module level and inside functions
alike), so the table in the docs stays true; a new module must be given a layer here.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"

LAYERS: dict[str, int] = {
    # 0: foundations: plain data, errors, options, file names and writes
    "rsft": 0, "rsft.types": 0, "rsft.errors": 0, "rsft.config": 0, "rsft.artifacts": 0,
    "rsft.progress": 0, "rsft.shard_job": 0,
    # 1: building blocks: no flow, no CLI
    "rsft.select": 1, "rsft.stats": 1, "rsft.bon_stats": 1, "rsft.matrix": 1, "rsft.export": 1, "rsft.prompts": 1,
    "rsft.models": 1, "rsft.logprobs": 1, "rsft.generate": 1, "rsft.score": 1, "rsft.grpo": 1,
    "rsft.answers": 1, "rsft.adaptive": 1,
    # 2: running a stage over shards
    "rsft.executor": 2, "rsft.ray_executor": 2, "rsft.stages": 2,
    # 3: rounds and runs
    "rsft.pipeline": 3, "rsft.rounds": 3, "rsft.train": 3, "rsft.rm": 3, "rsft.rm_train": 3,
    "rsft.sweep": 3, "rsft.report": 3, "rsft.status": 3, "rsft.bon_report": 3, "rsft.tracking": 3,
    # 4: Best-of-N at inference (beside layer 3, not above it)
    "rsft.bon": 4, "rsft.serve": 4,
    # 5: the command line
    "rsft.cli": 5,
    # 6: programs built on everything
    "rsft.demo": 6, "rsft.demo_real": 6,
}
"""Each module's layer, by the longest listed prefix of its name (a package gives its modules its layer)."""

SIBLINGS = {(3, 4), (4, 3)}
"""Layers that may not import each other although one number is lower."""

ALLOWED = {
    ("rsft.config.schema", "rsft.select"): "SelectionConfig's choices are select's strategy names (select imports only errors)",
    ("rsft.serve.__main__", "rsft.cli"): "python -m rsft.serve is an entry point: it runs the rsft serve command",
}
"""Imports across the rule, each with its reason."""


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int:
    """The layer of ``module``: that of the longest prefix listed in ``LAYERS``."""
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in LAYERS:
            return LAYERS[".".join(parts[:end])]
    raise KeyError(f"{module} has no layer in tests/test_layers.py")


def rsft_imports(path: Path) -> set[str]:
    """The ``rsft`` modules ``path`` imports (``from rsft import x`` names ``rsft.x``)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == "rsft")
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "rsft":
                out.update(f"rsft.{a.name}" for a in node.names)
            elif node.module.startswith("rsft."):
                out.add(node.module)
    return out


def test_every_module_has_a_layer() -> None:
    for path in SRC.rglob("*.py"):
        layer_of(_module_name(path))


def test_imports_go_down_the_layers() -> None:
    wrong = []
    for path in sorted(SRC.rglob("*.py")):
        module = _module_name(path)
        for imported in sorted(rsft_imports(path)):
            if (module, imported) in ALLOWED or imported.startswith(module + "."):
                continue
            a, b = layer_of(module), layer_of(imported)
            if b > a or (a, b) in SIBLINGS:
                wrong.append(f"{module} (layer {a}) imports {imported} (layer {b})")
    assert not wrong, wrong
