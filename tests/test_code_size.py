"""Size limits of the package (the project's style rules): no module over 600 lines, no function over 80.

A module or function past the limit is a sign it holds more than one job; split it rather than
raise the limit. Functions are measured from ``def`` to their last line (decorators not counted),
nested ones on their own as well as inside their parent.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "rsft"
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _function_lengths(path: Path) -> list[tuple[str, int, int]]:
    """``(qualified name, first line, length)`` of every function in ``path``."""
    out: list[tuple[str, int, int]] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = f"{prefix}{child.name}"
                out.append((name, child.lineno, (child.end_lineno or child.lineno) - child.lineno + 1))
                visit(child, f"{name}.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")
            else:
                visit(child, prefix)

    visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)), "")
    return out


def test_the_package_is_found() -> None:
    assert (PACKAGE / "__init__.py").is_file() and len(_modules()) > 20


def test_no_module_over_600_lines() -> None:
    too_long = {
        str(p.relative_to(PACKAGE)): n
        for p in _modules()
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES
    }
    assert not too_long, f"modules over {MAX_MODULE_LINES} lines: {too_long}"


def test_no_function_over_80_lines() -> None:
    too_long = [
        f"{p.relative_to(PACKAGE)}:{line} {name} ({n} lines)"
        for p in _modules()
        for name, line, n in _function_lengths(p)
        if n > MAX_FUNCTION_LINES
    ]
    assert not too_long, f"functions over {MAX_FUNCTION_LINES} lines: {too_long}"


def test_the_measure_counts_def_to_last_line(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text("@staticmethod\ndef f():\n    x = 1\n\n    return x\n\n\nclass C:\n    def g(self):\n"
                      "        def h():\n            pass\n        return h\n")
    assert _function_lengths(source) == [("f", 2, 4), ("C.g", 9, 4), ("C.g.h", 10, 2)]
