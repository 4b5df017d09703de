"""The import layers of docs/architecture.md: a module imports only from its own layer or below,
no import circle (same layer included), and no module uses another's private (``_name``) names.

The checks read every ``import`` in the package with ast (at module level, inside functions and
under ``TYPE_CHECKING`` alike), so the table in the docs stays true; a new module must be given a
layer here.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"

LAYERS: dict[str, int] = {
    # 0: foundations: plain data, errors, options, file names and writes
    "rsft": 0, "rsft.types": 0, "rsft.errors": 0, "rsft.config": 0, "rsft.artifacts": 0, "rsft.progress": 0,
    "rsft.registry": 0,
    # 1: building blocks: no flow, no CLI
    "rsft.select": 1, "rsft.stats": 1, "rsft.matrix": 1, "rsft.prompts": 1, "rsft.models": 1,
    "rsft.generate": 1, "rsft.score": 1,
    "rsft.bon.answers": 1, "rsft.bon.adaptive": 1, "rsft.bon.stats": 1,
    "rsft.train.rows": 1, "rsft.train.logprobs": 1, "rsft.train.grpo": 1,
    # 2: running a stage over shards
    "rsft.stages": 2,
    # 3: rounds and runs
    "rsft.pipeline": 3, "rsft.rounds": 3, "rsft.train": 3, "rsft.report": 3, "rsft.bon.report": 3,
    "rsft.tracking": 3,
    # 4: Best-of-N at inference (beside layer 3, not above it)
    "rsft.bon": 4, "rsft.serve": 4,
    # 5: the command line
    "rsft.cli": 5,
    # 6: programs built on everything
    "rsft.demos": 6,
}
"""Each module's layer, by the longest listed prefix of its name (a package gives its modules its layer)."""

SIBLINGS = {(3, 4), (4, 3)}
"""Layers that may not import each other although one number is lower."""

ALLOWED = {
    ("rsft.serve.__main__", "rsft.cli"): "python -m rsft.serve is an entry point: it runs the rsft serve command",
}
"""Imports across the rule, each with its reason."""


PRIVATE_ALLOWED: dict[tuple[str, str], str] = {}
"""``(module, private name it uses)`` pairs allowed, each with its reason (none so far)."""


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p) for p in SRC.rglob("*.py")}
"""Every module of the package; a package is its ``__init__``."""


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def layer_of(module: str) -> int:
    """The layer of ``module``: that of the longest prefix listed in ``LAYERS``."""
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in LAYERS:
            return LAYERS[".".join(parts[:end])]
    raise KeyError(f"{module} has no layer in tests/test_layers.py")


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    return [node for node in ast.walk(tree) if isinstance(node, ast.Import | ast.ImportFrom)]


def _module_level_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """The imports that run when the module is imported: not those inside functions or under
    ``if TYPE_CHECKING``."""
    out: list[ast.Import | ast.ImportFrom] = []

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.Import | ast.ImportFrom):
                out.append(node)
            elif isinstance(node, ast.If) and not (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"):
                visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                for part in (node.body, *(h.body for h in node.handlers), node.orelse, node.finalbody):
                    visit(part)
            elif isinstance(node, ast.ClassDef):
                visit(node.body)

    visit(tree.body)
    return out


def rsft_imports(path: Path, module_level: bool = False) -> set[str]:
    """The ``rsft`` modules ``path`` imports: ``from rsft.p import x`` names ``rsft.p.x`` when that is a
    module (``from rsft import x`` always names ``rsft.x``), else ``rsft.p``. ``module_level``: only
    the imports that run when ``path`` is imported."""
    out: set[str] = set()
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in _module_level_imports(tree) if module_level else _imports(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == "rsft")
        elif node.level == 0 and node.module:
            if node.module == "rsft":
                out.update(f"rsft.{a.name}" for a in node.names)
            elif node.module.startswith("rsft."):
                for a in node.names:
                    sub = f"{node.module}.{a.name}"
                    out.add(sub if sub in MODULES else node.module)
    return out


def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports (itself left out)."""
    graph = {}
    for path in sorted(SRC.rglob("*.py")):
        module = _module_name(path)
        graph[module] = {m for m in rsft_imports(path) if m in MODULES and m != module}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of ``graph`` as ``[a, b, ..., a]``, or None (depth-first, in sorted order)."""
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> list[str] | None:
        for nxt in sorted(graph.get(node, ())):
            if nxt in path:
                return path[path.index(nxt):] + [nxt]
            if nxt not in done and (cycle := visit(nxt, [*path, nxt])):
                return cycle
        done.add(node)
        return None

    for start in sorted(graph):
        if start not in done and (cycle := visit(start, [start])):
            return cycle
    return None


def private_uses(path: Path, module: str | None = None) -> set[str]:
    """Private names of other rsft modules that ``path`` (module ``module``) uses: ``from rsft.x import
    _name``, or ``x._name`` where ``x`` is bound to an rsft module (``import rsft.x``, ``from rsft import x``,
    ``import ... as x``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    module = module or _module_name(path)
    out: set[str] = set()
    bound: dict[str, str] = {}  # local name -> the module it is bound to
    for node in _imports(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "rsft":
                    bound[a.asname or "rsft"] = a.name if a.asname else "rsft"
        elif node.level == 0 and node.module and node.module.split(".")[0] == "rsft":
            for a in node.names:
                if f"{node.module}.{a.name}" in MODULES:
                    bound[a.asname or a.name] = f"{node.module}.{a.name}"
                elif _is_private(a.name) and node.module != module:
                    out.add(f"{node.module}.{a.name}")
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _is_private(node.attr):
            chain, value = [], node.value
            while isinstance(value, ast.Attribute):
                chain.append(value.attr)
                value = value.value
            if isinstance(value, ast.Name) and value.id in bound:
                target = ".".join([bound[value.id], *reversed(chain)])
                if target in MODULES and target != module:
                    out.add(f"{target}.{node.attr}")
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


def test_the_top_level_holds_at_most_12_modules() -> None:
    top = sorted(p.name for p in (SRC / "rsft").glob("*.py"))
    assert len(top) <= 12, f"{len(top)} modules directly in src/rsft (a sub-package is the place): {top}"


def test_a_package_init_loads_nothing_above_its_lowest_module() -> None:
    """Importing ``rsft.bon.answers`` (layer 1) runs ``rsft/bon/__init__.py`` first: a package whose
    modules span layers imports, when imported, nothing above the lowest of them (its re-exports are
    lazy), so a low module never drags a higher layer in."""
    wrong = []
    for init in sorted(SRC.rglob("__init__.py")):
        package = _module_name(init)
        lowest = min(layer_of(m) for m in MODULES if m == package or m.startswith(package + "."))
        for imported in sorted(rsft_imports(init, module_level=True)):
            if layer_of(imported) > lowest:
                wrong.append(f"{package} (lowest module: layer {lowest}) imports {imported} (layer {layer_of(imported)})")
    assert not wrong, wrong


def test_the_package_imports_no_old_path() -> None:
    """The old paths of ``rsft.MOVED`` are for users; the package itself names each module's home."""
    from rsft import MOVED

    wrong = sorted(f"{_module_name(path)} imports {m}" for path in SRC.rglob("*.py")
                   for m in rsft_imports(path) if m in MOVED)
    assert not wrong, wrong


def test_no_import_circles() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, f"import circle: {' -> '.join(cycle or [])}"


def test_the_cycle_finder_finds_circles() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"b"}, "d": set()}) == ["b", "c", "b"]
    assert find_cycle({"x": {"y", "z"}, "y": {"z"}, "z": {"x"}}) == ["x", "y", "z", "x"]


def test_no_private_names_of_other_modules() -> None:
    wrong = sorted(f"{_module_name(path)} uses {name}" for path in SRC.rglob("*.py")
                   for name in private_uses(path) if (_module_name(path), name) not in PRIVATE_ALLOWED)
    assert not wrong, wrong


def test_private_uses_sees_both_spellings(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text("from rsft.score.checkers import _last_boxed, MATH_TIMEOUT_S, __doc__\n"
                      "import rsft.rounds\nfrom rsft import report as r\n"
                      "def f():\n    return rsft.rounds._fmt, r._num, r.format_kl, rsft.rounds.x\n")
    assert private_uses(source, "rsft.probe") == {"rsft.score.checkers._last_boxed", "rsft.rounds._fmt",
                                                  "rsft.report._num"}
    assert private_uses(source, "rsft.rounds") == {"rsft.score.checkers._last_boxed", "rsft.report._num"}
