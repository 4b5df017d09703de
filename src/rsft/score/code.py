"""The ``code`` scorer: run each completion's code against its row's tests in the sandbox.

A row's metadata holds the tests in one of two shapes:

- HumanEval: ``test`` (source defining ``check(candidate)``) and ``entry_point`` (the function's
  name); the harness runs ``check(<entry_point>)``. When the prompt is Python that defines the entry
  point (HumanEval's prompts are the signature and docstring, completions continue them), the prompt
  is put in front of the completion's code, which then either continues it or redefines the function.
- ``tests``: a list of statements (usually ``assert f(1) == 2``), run after the code (MBPP style).

An optional ``code_prefix`` (source placed before the completion's code) serves chat prompts: the
instruct model answers a message with a whole function, and HumanEval's prompt (imports, helper
functions, the signature) goes in front, so the answer's ``def`` replaces the stub.

The code is the first fenced ```` ```python ```` block of the completion (else the first bare fenced
block, else the whole text). A completion scores 1.0 when the program exits 0 within the limits *and*
printed a random token that the harness writes only after the tests returned, else 0.0: exiting early
(``os._exit(0)``, ``sys.exit(0)`` in the solution) fails. The token is read from a file that the
harness deletes before any solution code runs and is kept out of the solution's namespace; a program
that deliberately introspects the interpreter (frames, ``gc``) could still find it, as it could
replace builtins the tests use: checks inside one process cannot stop that.

The code may import what is installed for rsft's interpreter (numpy, ...), read-only; the option
``site_packages: false`` leaves it only the standard library (see ``rsft.score.sandbox``).
"""

from __future__ import annotations

import math
import re
import secrets
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from rsft.errors import RsftError
from rsft.score.sandbox import SandboxResult, run_program
from rsft.types import PromptValue, Verdict

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
_PYTHON_TAGS = {"python", "py", "python3"}
_DETAILS_CHARS = 200

_HARNESS = """\
import os as _os
import sys as _sys


def _rsft_main():
    with open("rsft_token", "rb") as f:
        token = f.read()
    _os.remove("rsft_token")
    ns = {"__name__": "solution", "__builtins__": __builtins__}
    for path in ("solution.py", "tests.py"):
        with open(path, encoding="utf-8") as f:
            code = compile(f.read(), path, "exec")
        exec(code, ns)
    entry_point = ENTRY_POINT
    if entry_point is not None:
        if entry_point not in ns:
            raise NameError("the solution does not define " + repr(entry_point))
        if "check" not in ns:
            raise NameError("the tests do not define check(candidate)")
        ns["check"](ns[entry_point])
    _sys.stdout.flush()
    _sys.stderr.flush()
    _os.write(1, b"\\n" + token + b"\\n")
    _os._exit(0)


try:
    _rsft_main()
except BaseException:
    import traceback

    traceback.print_exc()
    _sys.stderr.flush()
    _os._exit(1)
"""


@dataclass(frozen=True)
class CodeProgram:
    """The pieces of one sandboxed check."""

    solution: str
    """The code under test (with the prompt in front when it continues the prompt)."""
    tests: str
    """Test source run after the solution, in the same namespace."""
    entry_point: str | None
    """Name passed to ``check``; None for plain test statements."""


def extract_code(text: str) -> str:
    """The first ```` ```python ```` block of ``text``, else its first bare fenced block, else all of it.

    An unterminated fence (generation cut off) counts up to the end of the text.
    """
    blocks = [(m.group(1).lower(), m.group(2)) for m in _FENCE.finditer(text)]
    for tag, body in blocks:
        if tag in _PYTHON_TAGS:
            return body
    for tag, body in blocks:
        if not tag:
            return body
    return text


def _is_python(text: str) -> bool:
    try:
        compile(text, "<prompt>", "exec")  # compiles only: nothing of the prompt runs here
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False
    return True


def build_program(prompt: PromptValue, completion: str, meta: Mapping[str, Any], row: int = 0) -> CodeProgram:
    """Turn one (prompt, completion, metadata) row into a ``CodeProgram``; ``RsftError`` when it has no tests."""
    code = extract_code(completion)
    test, entry_point, tests = meta.get("test"), meta.get("entry_point"), meta.get("tests")
    prefix = meta.get("code_prefix")
    if isinstance(prefix, str) and prefix:  # e.g. HumanEval's prompt when the prompt is a chat message
        code = prefix + ("" if prefix.endswith("\n") else "\n") + code
    if test is not None and entry_point:
        entry_point = str(entry_point)
        if (
            prefix is None
            and isinstance(prompt, str)
            and re.search(rf"^\s*def\s+{re.escape(entry_point)}\s*\(", prompt, re.MULTILINE)
            and _is_python(prompt)
        ):
            code = prompt + ("" if prompt.endswith("\n") else "\n") + code
        return CodeProgram(code, str(test), entry_point)
    if tests is not None:
        lines = [tests] if isinstance(tests, str) else [str(t) for t in tests]
        return CodeProgram(code, "\n".join(lines) + "\n", None)
    raise RsftError(
        f"scorer 'code': row {row} needs metadata 'test' and 'entry_point' (HumanEval style) "
        f"or 'tests' (a list of assert statements)"
    )


class CodeScorer:
    """1.0 when the completion's code passes its row's tests in the sandbox, else 0.0.

    ``site_packages`` (default True) lets the code import the installed packages (read-only).
    Each pair runs in its own sandboxed process (``rsft.score.sandbox.run_program``); ``workers``
    of them at a time, from a thread pool (the work happens in subprocesses).
    """

    def __init__(
        self,
        timeout: float = 5.0,
        memory_mb: int = 512,
        workers: int = 2,
        max_processes: int = 32,
        network: bool = False,
        site_packages: bool = True,
    ) -> None:
        if timeout <= 0 or memory_mb < 1 or workers < 1:
            raise RsftError(
                f"scorer 'code': timeout, memory_mb and workers must be positive, "
                f"got {timeout}, {memory_mb}, {workers}"
            )
        self.timeout = float(timeout)
        self.memory_mb = int(memory_mb)
        self.workers = int(workers)
        self.max_processes = int(max_processes)
        self.network = bool(network)
        self.site_packages = bool(site_packages)
        self.name = "code"

    def score(
        self,
        prompts: Sequence[PromptValue],
        completions: Sequence[str],
        metadata: Sequence[Mapping[str, Any]],
    ) -> list[Verdict]:
        programs = [
            build_program(p, c, m, i)
            for i, (p, c, m) in enumerate(zip(prompts, completions, metadata, strict=True))
        ]
        if len(programs) <= 1 or self.workers == 1:
            return [self.check(p) for p in programs]
        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="rsft-code") as pool:
            return list(pool.map(self.check, programs))

    def check(self, program: CodeProgram) -> Verdict:
        """Run one program; the verdict's details are ``ok`` or the status and stderr's last line."""
        token = secrets.token_hex(16)
        result = self.run(program, token)
        if result.ok and token in result.stdout:
            return Verdict(1.0, "ok")
        return Verdict(0.0, _details(result))

    def run(self, program: CodeProgram, token: str) -> SandboxResult:
        """Run one program in the sandbox; the harness prints ``token`` once the tests have returned."""
        harness = _HARNESS.replace("ENTRY_POINT", repr(program.entry_point))
        return run_program(
            harness,
            timeout=self.timeout,
            cpu_seconds=max(1, math.ceil(self.timeout)),
            memory_mb=self.memory_mb,
            max_processes=self.max_processes,
            network=self.network,
            site_packages=self.site_packages,
            files={"solution.py": program.solution, "tests.py": program.tests, "rsft_token": token},
        )


def _details(result: SandboxResult) -> str:
    if result.ok:
        return "failed: exited before the tests finished"
    lines = [line.strip() for line in result.stderr.splitlines() if line.strip()]
    why = result.message if result.message and result.status != "failed" else (lines[-1] if lines else "")
    text = result.status + (f": {why}" if why else "")
    return text if len(text) <= _DETAILS_CHARS else text[: _DETAILS_CHARS - 3] + "..."
