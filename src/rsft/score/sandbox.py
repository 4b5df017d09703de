"""Run an untrusted Python program in a throwaway process with limits: ``run_program``.

A run writes the program into a fresh temporary directory (removed afterwards) and starts a small
*supervisor* (``sandbox_supervisor.py``, run as ``__main__`` by ``python -I -S``) in a new session
with a scrubbed, constant environment (only ``PATH=/usr/bin:/bin``, ``LANG``, ``HOME`` and ``TMPDIR``
set to the sandbox directory, and ``OPENBLAS/OMP/MKL_NUM_THREADS=1``) and stdin on ``/dev/null``.
The supervisor sets up the isolation below, forks a tiny init process that forks the program's
process (``python -I -S`` running ``main.py`` in the sandbox directory), enforces the wall-clock
limit, cleans up and reports on a pipe. The rsft process never runs untrusted code and only reads
the capped output, so the program cannot kill it or make it hang. ``SandboxResult.isolation`` names the layers a run actually got:

- ``rlimits`` (always): ``RLIMIT_CPU`` (SIGXCPU, reported as a timeout), ``RLIMIT_AS``
  (``memory_mb``), ``RLIMIT_FSIZE``, ``RLIMIT_NPROC`` (``max_processes``), ``RLIMIT_CORE=0``.
  Linux does not enforce ``RLIMIT_NPROC`` for root, and for another user it counts *all* of that
  user's processes and threads.
- ``uid`` (rsft runs as root): the program runs as a throwaway uid, drawn at random per run from a
  range no account uses (``nobody`` if that range is not mapped in this user namespace), with no
  groups and ``no_new_privs`` (setuid binaries gain nothing). It owns nothing outside its directory
  (no writes or deletes there), cannot signal rsft, its supervisor or other sandboxes, and
  ``RLIMIT_NPROC`` counts only its own processes; after the run every process of that uid is killed.
  Root keeps the program as root (warning logged once) only when the interpreter is out of the uid's
  reach and no mount namespace can fix that.
- ``pids_cgroup`` (root with a writable cgroup-v1 ``pids`` hierarchy, or v2 with ``pids`` delegated
  to rsft's cgroup): a per-run cgroup with ``pids.max = max_processes``, whatever the uid.
- ``mountns``: a private mount namespace where the sandbox directory, ``/tmp``, ``/var/tmp``,
  ``/dev/shm`` and ``/run/lock`` are fresh tmpfs of ``max_file_mb`` each (the program cannot fill the
  disk, see other runs or leave files behind) and ``/proc`` shows only the sandbox's processes. When
  the interpreter lives under a directory the throwaway uid cannot enter (pyenv under ``/root``),
  that directory is replaced by an empty tmpfs with only the interpreter bound back read-only, which
  also hides the rest of it. Without a mount namespace the uid can write where everyone may
  (``/tmp``...) during the run; what it left there is deleted afterwards.
- ``pidns``: a PID namespace: the init is pid 1 (root, or unkillable from inside), the program
  pid 2, ``kill(-1)`` reaches only the sandbox, and everything in it dies with the init.
- ``netns``: a new network namespace with only a down loopback: no connection succeeds, not even to
  127.0.0.1. Without it (``network_isolated=False``: no ``CAP_SYS_ADMIN`` and no user namespaces, as
  in a default Docker container) the program has the host's network; a warning is logged once.
- ``ipcns``: System V IPC and POSIX message queues of its own.
- ``userns`` (not root): an unprivileged user namespace, which makes the namespaces above possible
  without root. The uid stays the caller's: ``RLIMIT_NPROC`` counts the caller's processes too.

Installed packages (``site_packages=True``, the default) are importable, read-only. rsft asks each
interpreter once what ``site`` would add to its ``sys.path`` (its site-packages, purelib and platlib,
and the directories their ``.pth`` files name, such as editable installs), and the program gets
exactly that fixed list after the standard library: it still starts with ``-I -S`` (no user site,
no ``PYTHON*`` variables, no current directory), and a one-line ``-c`` bootstrap appends the list and
runs ``main.py`` as ``__main__``. So no ``.pth`` code runs in the sandbox, and a start costs ~1 ms
more (the first ``compile()`` of a process), where running ``site`` would cost ~3 ms; tracebacks
show one more frame, ``<string>``. With a mount namespace each of these directories is bind-mounted read-only (also in a
user namespace, where the program keeps the caller's uid), after being hidden and bound back like
the interpreter's when it lies under ``/root``; without one the throwaway uid cannot write there
because it owns nothing. A directory the uid could not read is left off the list: unlike the
interpreter's own, it never keeps the program as root. One BLAS/OpenMP thread (the environment
above) keeps numpy (~0.1 s and ~100 MB of address space to import) within ``memory_mb`` and
``max_processes`` on any core count.

Not root and no user namespaces leaves ``rlimits`` and the cleanup of the process group: the program
then runs as the calling user, can read and write what that user can and signal that user's
processes; its parent is the init process, so ``os.kill(os.getppid(), 9)`` does not reach rsft.
Output goes through pipes that rsft drains, keeping the head and the tail of each stream
(``max_output_bytes`` in all), so huge output neither blocks the program nor fills memory.
"""

from __future__ import annotations

import functools
import logging
import os
import secrets
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from rsft.score import sandbox_supervisor
from rsft.score.pids_cgroup import new_pids_cgroup, remove_cgroup
from rsft.score.sandbox_supervisor import PROGRAM_NAME

log = logging.getLogger(__name__)

Status = Literal["ok", "failed", "timeout", "killed", "error"]

_SUPERVISOR = os.path.abspath(sandbox_supervisor.__file__)
"""The supervisor is started by path (``-I -S`` cannot import rsft), wherever rsft is installed."""
_SUPERVISOR_STUB = (
    "import sys; from importlib.machinery import SourceFileLoader as L; p = sys.argv[1]; "
    "c = L('__main__', p).get_code('__main__'); sys.argv = sys.argv[1:]; "
    "exec(c, {'__name__': '__main__', '__file__': p, '__builtins__': __builtins__})"
)
"""Runs the supervisor file as ``__main__`` from its cached bytecode: compiling it each run would cost ~20 ms."""
_GRACE_S = 5.0
"""How long past ``timeout`` rsft waits for the supervisor before killing its whole process group."""
_UID_BASE, _UID_SPAN = 1_800_000_000, 1 << 20
"""Throwaway uids come from this range; one is drawn at random per run and checked to be no account."""
_BASE_ENV = {
    "PATH": "/usr/bin:/bin",
    "LANG": "C.UTF-8",
    **dict.fromkeys(("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"), "1"),
}
"""The sandbox's whole environment, with ``HOME`` and ``TMPDIR``: one BLAS/OpenMP thread each, so numpy
fits ``memory_mb`` and ``max_processes`` whatever the machine's core count."""
_warned: set[str] = set()


@dataclass(frozen=True)
class SandboxResult:
    """What happened to one program."""

    status: Status
    """``ok`` (exit 0), ``failed`` (non-zero exit), ``timeout`` (wall-clock or CPU limit), ``killed``
    (another signal: segfault, file-size limit, ...), ``error`` (the sandbox itself could not run it)."""
    returncode: int | None
    """The exit code, ``-N`` when killed by signal N, None on timeout or error."""
    stdout: str
    """Captured output; past ``max_output_bytes`` only its head and tail are kept."""
    stderr: str
    wall_s: float
    """Seconds from start to cleanup, as seen by rsft (interpreter start-up included)."""
    network_isolated: bool = False
    """True when the program ran in its own network namespace (no network at all)."""
    isolation: tuple[str, ...] = ()
    """The isolation layers this run got (see the module docstring)."""
    message: str = ""
    """Why the sandbox stopped or failed the program, when it did (e.g. ``wall-clock limit 1.0 s``)."""
    stdout_truncated: bool = False
    stderr_truncated: bool = False

    @property
    def ok(self) -> bool:
        return self.status == "ok"


class _CappedBuffer:
    """Keeps the first and the last bytes of a stream, ``cap`` in all, and counts what it dropped."""

    def __init__(self, cap: int) -> None:
        self.head_cap = cap // 2
        self.tail_cap = cap - self.head_cap
        self.head = bytearray()
        self.tail = bytearray()
        self.dropped = 0

    def add(self, data: bytes) -> None:
        room = self.head_cap - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
        if not data:
            return
        self.tail += data
        excess = len(self.tail) - self.tail_cap
        if excess > 0:
            self.dropped += excess
            del self.tail[:excess]

    def text(self) -> str:
        if not self.dropped:
            return (self.head + self.tail).decode("utf-8", errors="replace")
        gap = f"\n[... {self.dropped} bytes dropped ...]\n"
        return self.head.decode("utf-8", errors="replace") + gap + self.tail.decode("utf-8", errors="replace")


def run_program(
    source: str,
    *,
    timeout: float = 5.0,
    cpu_seconds: int = 5,
    memory_mb: int = 512,
    max_file_mb: int = 16,
    max_processes: int = 32,
    max_output_bytes: int = 65536,
    network: bool = False,
    files: Mapping[str, str | bytes] | None = None,
    python: str | None = None,
    namespaces: bool = True,
    site_packages: bool = True,
) -> SandboxResult:
    """Run ``source`` with this interpreter (``-I -S``, installed packages importable) in a fresh sandbox.

    Args:
        source: the program, written to ``main.py`` in the sandbox directory (its cwd, HOME, TMPDIR).
        timeout: wall-clock seconds before the program and everything it started are killed.
        cpu_seconds: ``RLIMIT_CPU`` (per process).
        memory_mb: ``RLIMIT_AS`` (address space per process).
        max_file_mb: ``RLIMIT_FSIZE``, and the size of each tmpfs where a mount namespace is available.
        max_processes: processes and threads the program may have at once (see ``isolation``).
        max_output_bytes: stdout and stderr each keep at most this much (head and tail).
        network: False runs the program without network where a network namespace is available.
        files: extra files for the sandbox directory, by plain file name.
        python: the interpreter for the program (default: this one, ``sys.executable``).
        namespaces: False skips every namespace (to test the fallback layers, or where they misbehave).
        site_packages: False leaves the interpreter's site-packages (and ``.pth`` paths) off ``sys.path``:
            only the standard library is importable.
    """
    if not sys.platform.startswith("linux"):
        raise RuntimeError("rsft's sandbox needs Linux (namespaces, prctl, /proc)")
    if timeout <= 0 or cpu_seconds < 1 or memory_mb < 1 or max_file_mb < 1 or max_processes < 1:
        raise ValueError("timeout, cpu_seconds, memory_mb, max_file_mb and max_processes must be positive")
    start = time.monotonic()
    workdir = tempfile.mkdtemp(prefix="rsft-sandbox-")
    cgroup = None
    try:
        _write_files(workdir, {PROGRAM_NAME: source, **(files or {})})
        uid = _throwaway_uid() if os.geteuid() == 0 else -1
        if uid >= 0:
            os.chown(workdir, uid, uid)  # for the case without a mount namespace
        cgroup = new_pids_cgroup(max_processes)
        python = python or sys.executable
        cfg = {
            "python": python,
            "python_dirs": os.pathsep.join(_python_dirs_of(python)),
            "import_paths": os.pathsep.join(
                p for p in (_site_paths_of(python) if site_packages else ()) if os.path.isdir(p)
            ),
            "namespaces": "1" if namespaces else "0",
            "timeout": repr(float(timeout)),
            "cpu_s": str(int(cpu_seconds)),
            "memory_mb": str(int(memory_mb)),
            "fsize_mb": str(int(max_file_mb)),
            "nproc": str(int(max_processes)),
            "network": "1" if network else "0",
            "uid": str(uid),
            "cgroup": cgroup or "",
        }
        return _supervise_run(cfg, workdir, timeout, max_output_bytes, start)
    finally:
        if cgroup:
            remove_cgroup(cgroup)
        _remove_workdir(workdir)


def _write_files(workdir: str, files: Mapping[str, str | bytes]) -> None:
    for name, content in files.items():
        if not name or "/" in name or name in (".", ".."):
            raise ValueError(f"sandbox files need plain names, got {name!r}")
        data = content.encode() if isinstance(content, str) else content
        with open(os.path.join(workdir, name), "wb") as f:
            f.write(data)


@functools.lru_cache(maxsize=8)
def _python_dirs_of(python: str) -> tuple[str, ...]:
    """Directories ``python`` needs: its prefixes (base and venv) and the folders of its binary and link."""
    if python == sys.executable:
        prefixes = [sys.base_prefix, sys.prefix]
    else:
        code = "import sys; print(sys.base_prefix); print(sys.prefix)"
        run = subprocess.run([python, "-I", "-S", "-c", code], capture_output=True, text=True, timeout=30)
        if run.returncode != 0:
            raise ValueError(f"cannot run the sandbox interpreter {python!r}: {run.stderr.strip()[-200:]}")
        prefixes = run.stdout.split("\n")[:2]
    dirs = {os.path.realpath(p) for p in prefixes if p}
    dirs |= {os.path.dirname(os.path.realpath(python)), os.path.dirname(os.path.abspath(python))}
    return tuple(sorted(d for d in dirs if not any(d.startswith(o + "/") for o in dirs if o != d)))


@functools.lru_cache(maxsize=8)
def _site_paths_of(python: str) -> tuple[str, ...]:
    """What ``site`` adds to ``python``'s ``sys.path``: site-packages and what their ``.pth`` files name.

    Asked once per interpreter, of a ``python -I -S`` that runs ``site`` itself (``-I``: no user site,
    no ``PYTHON*`` variables, not the current directory), so the list does not depend on rsft's own flags.
    """
    code = (
        "import sys; before = set(sys.path); import site; site.main(); "
        "print('\\n'.join(p for p in sys.path if p not in before))"
    )
    run = subprocess.run(
        [python, "-I", "-S", "-c", code],
        capture_output=True,
        text=True,
        timeout=30,
        cwd="/",
        env=_BASE_ENV,
    )
    if run.returncode != 0:
        raise ValueError(f"cannot run the sandbox interpreter {python!r}: {run.stderr.strip()[-200:]}")
    paths = (os.path.normpath(p) for p in run.stdout.splitlines() if os.path.isabs(p))
    return tuple(dict.fromkeys(p for p in paths if os.pathsep not in p))


def _throwaway_uid() -> int:
    import pwd

    while True:
        uid = _UID_BASE + secrets.randbelow(_UID_SPAN)
        try:
            pwd.getpwuid(uid)
        except KeyError:
            return uid


def _supervise_run(
    cfg: dict[str, str], workdir: str, timeout: float, cap: int, start: float
) -> SandboxResult:
    """Start the supervisor, drain its pipes (capped) until it is done or overdue, then build the result."""
    env = {**_BASE_ENV, "HOME": workdir, "TMPDIR": workdir}
    report_r, report_w = os.pipe()
    try:
        args = (f"{k}={v}" for k, v in cfg.items())
        argv = [sys.executable, "-I", "-S", "-c", _SUPERVISOR_STUB, _SUPERVISOR, *args]
        proc = subprocess.Popen(
            [*argv, f"report_fd={report_w}"],
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            pass_fds=(report_w,),
            start_new_session=True,
        )
    except OSError as e:
        os.close(report_r)
        return SandboxResult("error", None, "", "", time.monotonic() - start, message=f"cannot start: {e}")
    finally:
        os.close(report_w)
    assert proc.stdout is not None and proc.stderr is not None
    out, err, report = _CappedBuffer(cap), _CappedBuffer(cap), _CappedBuffer(8192)
    sinks = {proc.stdout.fileno(): out, proc.stderr.fileno(): err, report_r: report}
    overdue = _drain(sinks, start + timeout + _GRACE_S)
    _kill_group(proc.pid)
    if overdue:
        _drain(sinks, time.monotonic() + 1.0)
    proc.wait()
    proc.stdout.close()
    proc.stderr.close()
    os.close(report_r)
    fields = dict(line.split("=", 1) for line in report.text().splitlines() if "=" in line)
    layers = tuple(x for x in fields.get("layers", "").split(",") if x)
    status, returncode, message = _outcome(fields.get("outcome", ""), overdue, timeout)
    _warn_once(cfg, layers)
    return SandboxResult(
        status=status,
        returncode=returncode,
        stdout=out.text(),
        stderr=err.text(),
        wall_s=time.monotonic() - start,
        network_isolated="netns" in layers,
        isolation=layers,
        message=message,
        stdout_truncated=out.dropped > 0,
        stderr_truncated=err.dropped > 0,
    )


def _drain(sinks: dict[int, _CappedBuffer], deadline: float) -> bool:
    """Read every fd into its sink until all are at EOF; True when ``deadline`` came first."""
    with selectors.DefaultSelector() as sel:
        for fd in sinks:
            try:
                sel.register(fd, selectors.EVENT_READ)
            except (KeyError, ValueError):
                pass  # closed in an earlier call
        while sel.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                return True
            for key, _ in sel.select(left):
                data = os.read(key.fd, 65536)
                if data:
                    sinks[key.fd].add(data)
                else:
                    sel.unregister(key.fd)
    return False


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass


def _outcome(outcome: str, overdue: bool, timeout: float) -> tuple[Status, int | None, str]:
    kind, _, value = outcome.partition(":")
    if overdue or kind == "timeout":
        return "timeout", None, f"wall-clock limit {timeout:g} s"
    if kind == "exit":
        code = int(value)
        return ("ok" if code == 0 else "failed"), code, ""
    if kind == "signal":
        sig = int(value)
        if sig == signal.SIGXCPU:
            return "timeout", -sig, "CPU time limit"
        name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
        extra = " (file size limit)" if sig == signal.SIGXFSZ else ""
        return "killed", -sig, f"killed by {name}{extra}"
    if kind == "error":
        return "error", None, value
    return "error", None, "the supervisor died without a report"


def _warn_once(cfg: dict[str, str], layers: tuple[str, ...]) -> None:
    warnings = []
    if cfg["network"] == "0" and "netns" not in layers:
        warnings.append("no network namespace available: sandboxed programs can use the network")
    if cfg["uid"] != "-1" and "uid" not in layers:
        warnings.append("running as root without a throwaway uid: the program runs as root")
    for text in warnings:
        if text not in _warned:
            _warned.add(text)
            log.warning("rsft sandbox: %s", text)


def _remove_workdir(workdir: str) -> None:
    """Delete the sandbox directory, also when the program left sub-directories without permissions.

    Only paths strictly inside ``workdir`` are ever chmod-ed, and only real directories (no symlinks).
    """

    def fix_and_retry(func: object, path: str, exc_info: object) -> None:
        if not path.startswith(workdir + os.sep) or not os.path.lexists(path):
            return
        try:
            parent = os.path.dirname(path)
            if stat.S_ISDIR(os.lstat(parent).st_mode):
                os.chmod(parent, 0o700)
            if stat.S_ISDIR(os.lstat(path).st_mode):
                os.chmod(path, 0o700)
                shutil.rmtree(path, ignore_errors=True)
            else:
                os.unlink(path)
        except OSError:
            pass

    shutil.rmtree(workdir, onerror=fix_and_retry)
