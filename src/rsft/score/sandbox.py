"""Run an untrusted Python program in a throwaway process with limits: ``run_program``.

A run writes the program into a fresh temporary directory (removed afterwards) and starts a small
*supervisor* (the first half of this file, run as ``__main__`` by ``python -I -S``) in a new session
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

import ctypes
import errno
import os
import resource
import select
import stat
import sys
import time

# ---- supervisor -----------------------------------------------------------------------------------
# Runs as ``__main__`` in a ``python -I -S`` of its own in every run, so it imports only cheap modules
# (dataclasses, json or subprocess would double its start-up); the rsft side starts further below.

PROGRAM_NAME = "main.py"
"""The file the program is written to, in the sandbox directory."""

_CLONE_NEWNS, _CLONE_NEWIPC, _CLONE_NEWUSER = 0x00020000, 0x08000000, 0x10000000
_CLONE_NEWPID, _CLONE_NEWNET = 0x20000000, 0x40000000
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 0x1, 0x2, 0x4, 0x8
_MS_REMOUNT, _MS_BIND, _MS_REC, _MS_PRIVATE = 0x20, 0x1000, 0x4000, 0x40000
_PR_SET_PDEATHSIG, _PR_SET_NO_NEW_PRIVS = 1, 38
_SIGKILL = 9
_WORLD_WRITABLE = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")
_NOBODY = 65534
_PROGRAM_STUB = (
    f"import sys; sys.path += sys.argv[1:]; sys.argv = [{PROGRAM_NAME!r}]; del sys; "
    f"__file__ = __import__('posix').getcwd() + '/' + {PROGRAM_NAME!r}; "
    "exec(compile(open(__file__, 'rb').read(), __file__, 'exec'))"
)
"""Runs ``main.py`` as ``__main__`` (as ``python main.py`` would, but for one more traceback frame,
``<string>``) with the import paths, its arguments, after the standard library."""


def _libc_call(name: str, *args: object) -> None:
    """Call a libc function that returns 0 on success, raising ``OSError`` otherwise."""
    fn = getattr(ctypes.CDLL(None, use_errno=True), name, None)
    if fn is None:
        raise OSError(errno.ENOSYS, f"{name}: not available on this system")
    if fn(*args) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{name}: {os.strerror(err)}")


def _unshare(flags: int) -> None:
    _libc_call("unshare", ctypes.c_int(flags))


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    def arg(s: str | None) -> ctypes.c_char_p:
        return ctypes.c_char_p(None if s is None else s.encode())

    _libc_call("mount", arg(source), arg(target), arg(fstype), ctypes.c_ulong(flags), arg(data))


def _prctl(option: int, value: int) -> None:
    zero = ctypes.c_ulong(0)
    _libc_call("prctl", ctypes.c_int(option), ctypes.c_ulong(value), zero, zero, zero)


def _blocked(path: str) -> list[str]:
    """Components of ``path`` that an unrelated uid cannot use: ancestors without o+x, path without o+rx."""
    out = []
    parts = path.strip("/").split("/")
    for i in range(1, len(parts) + 1):
        part = "/" + "/".join(parts[:i])
        need = stat.S_IXOTH | (stat.S_IROTH if i == len(parts) else 0)
        try:
            if os.stat(part).st_mode & need != need:
                out.append(part)
        except OSError:
            out.append(part)
    return out


def _uid_is_mapped(uid: int) -> bool:
    try:
        with open("/proc/self/uid_map") as f:
            rows = [tuple(int(x) for x in line.split()) for line in f if line.strip()]
    except OSError:
        return True
    return any(inside <= uid < inside + count for inside, _, count in rows)


def _choose_uid(requested: int, mount_ns: bool, python_dirs: list[str]) -> int | None:
    """The uid to drop to (root only), or None when the interpreter would be out of its reach."""
    if os.geteuid() != 0 or requested < 0:
        return None
    for dirpath in python_dirs:
        blocked = _blocked(dirpath)
        if blocked and (not mount_ns or dirpath in blocked):
            return None
    for uid in (requested, _NOBODY):
        if _uid_is_mapped(uid):
            return uid
    return None


def _unshare_namespaces(network: bool, layers: list[str]) -> None:
    """Enter what namespaces this process may; the next fork is the PID namespace's init."""
    if os.geteuid() != 0:
        uid, gid = os.geteuid(), os.getegid()
        try:
            _unshare(_CLONE_NEWUSER)
            for name, text in (
                ("setgroups", "deny"),
                ("uid_map", f"{uid} {uid} 1"),
                ("gid_map", f"{gid} {gid} 1"),
            ):
                with open(f"/proc/self/{name}", "w") as f:
                    f.write(text)
        except OSError:
            return
        layers.append("userns")
    wanted = [(_CLONE_NEWNS, "mountns"), (_CLONE_NEWPID, "pidns"), (_CLONE_NEWIPC, "ipcns")]
    if not network:
        wanted.append((_CLONE_NEWNET, "netns"))
    for flag, name in wanted:
        try:
            _unshare(flag)
            layers.append(name)
        except OSError:
            pass


def _hide_blocking_dirs(python_dirs: list[str]) -> None:
    """Cover each directory that keeps other uids from the interpreter (``/root``) with an empty tmpfs."""
    covered: list[str] = []
    for d in python_dirs:
        blocked = _blocked(d)
        top = blocked[0] if blocked else None
        if top and not any(top == c or top.startswith(c + "/") for c in covered):
            _mount("tmpfs", top, "tmpfs", _MS_NOSUID | _MS_NODEV, "mode=755,size=1m")
            covered.append(top)


def _rebind_read_only(fds: dict[str, int], always: set[str]) -> None:
    """Bind back, read-only, each directory that a tmpfs mounted since now hides, and those in ``always``.

    ``fds`` (opened before the tmpfs mounts) must list parents before their sub-directories.
    """
    for d, fd in fds.items():
        try:
            visible = os.path.samestat(os.stat(d), os.fstat(fd))
        except OSError:
            visible = False
        if not visible or d in always:
            os.makedirs(d, 0o755, exist_ok=True)
            _mount(f"/proc/self/fd/{fd}", d, None, _MS_BIND | _MS_REC)
            keep = _MS_NOEXEC if os.statvfs(d).f_flag & os.ST_NOEXEC else 0  # a userns may not clear it
            _mount(None, d, None, _MS_REMOUNT | _MS_BIND | _MS_RDONLY | _MS_NOSUID | _MS_NODEV | keep)
        os.close(fd)


def _setup_filesystem(cfg: dict[str, str], uid: int | None, pid_ns: bool) -> None:
    """In the private mount namespace: fresh tmpfs for the sandbox and world-writable dirs, own /proc."""
    _mount(None, "/", None, _MS_REC | _MS_PRIVATE)
    workdir = os.getcwd()
    files = {}
    for name in os.listdir("."):
        with open(name, "rb") as f:
            files[name] = f.read()
    import_paths = _paths(cfg, "import_paths")
    dirs = sorted({*_paths(cfg, "python_dirs"), *import_paths}, key=lambda d: d.count("/"))
    fds = {d: os.open(d, os.O_RDONLY | os.O_DIRECTORY) for d in dirs}
    if uid is not None:
        _hide_blocking_dirs(dirs)
    size = f"size={int(cfg['fsize_mb'])}m"
    for d in _WORLD_WRITABLE:
        if os.path.isdir(d) and not os.path.islink(d):
            _mount("tmpfs", d, "tmpfs", _MS_NOSUID | _MS_NODEV, f"mode=1777,{size},nr_inodes=1024")
    _rebind_read_only(fds, set(import_paths))  # the interpreter may live under /root (pyenv) or /tmp
    os.makedirs(workdir, exist_ok=True)
    owner = "" if uid is None else f",uid={uid},gid={uid}"
    _mount("tmpfs", workdir, "tmpfs", _MS_NOSUID | _MS_NODEV, f"mode=700,{size},nr_inodes=4096{owner}")
    os.chdir(workdir)
    for name, data in files.items():
        with open(name, "wb") as f:
            f.write(data)
        if uid is not None:
            os.chown(name, uid, uid)
    if pid_ns:
        _mount("proc", "/proc", "proc", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC)


def _paths(cfg: dict[str, str], key: str) -> list[str]:
    return [d for d in cfg[key].split(os.pathsep) if d]


def _readable_import_paths(paths: list[str], uid: int | None, mount_ns: bool) -> list[str]:
    """The import paths that ``uid`` will be able to read: the others are left out.

    Unlike the interpreter's own directories they never keep the program as root.
    """
    if uid is None:
        return paths
    return [p for p in paths if not _blocked(p) or (mount_ns and p not in _blocked(p))]


def _set_rlimits(cfg: dict[str, str]) -> None:
    mb = 1024 * 1024
    cpu = int(cfg["cpu_s"])
    limits = [
        (resource.RLIMIT_CORE, 0, 0),
        (resource.RLIMIT_CPU, cpu, cpu + 1),
        (resource.RLIMIT_AS, int(cfg["memory_mb"]) * mb, int(cfg["memory_mb"]) * mb),
        (resource.RLIMIT_FSIZE, int(cfg["fsize_mb"]) * mb, int(cfg["fsize_mb"]) * mb),
        (resource.RLIMIT_NPROC, int(cfg["nproc"]), int(cfg["nproc"])),
    ]
    for res, soft, hard in limits:
        cur_hard = resource.getrlimit(res)[1]
        if cur_hard != resource.RLIM_INFINITY:
            soft, hard = min(soft, cur_hard), min(hard, cur_hard)
        resource.setrlimit(res, (soft, hard))


def _exec_program(cfg: dict[str, str], layers: list[str], uid: int | None) -> None:
    """In the program's process: join the cgroup, build the filesystem, limit, drop privileges, exec."""
    if cfg["cgroup"]:
        with open(os.path.join(cfg["cgroup"], "cgroup.procs"), "w") as f:
            f.write("0")
    if "mountns" in layers:
        _setup_filesystem(cfg, uid, "pidns" in layers)
    _set_rlimits(cfg)
    if uid is not None:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    _prctl(_PR_SET_NO_NEW_PRIVS, 1)
    _prctl(_PR_SET_PDEATHSIG, _SIGKILL)
    paths = _paths(cfg, "import_paths")
    run = ["-c", _PROGRAM_STUB, *paths] if paths else [PROGRAM_NAME]
    os.execve(cfg["python"], [cfg["python"], "-I", "-S", *run], dict(os.environ))


def _init(cfg: dict[str, str], layers: list[str], uid: int | None, channel: int) -> None:
    """The sandbox's first process (pid 1 of its PID namespace, if any): start the program, reap, report.

    The program is not pid 1 itself because Linux ignores default-action signals to a namespace's
    init, ``SIGXCPU`` of ``RLIMIT_CPU`` included. Writes ``exit:N`` or ``signal:N`` to ``channel``
    (the program's process writes ``error:...`` there instead when its setup fails).
    """
    os.setsid()  # one process group for the whole sandbox, apart from the supervisor
    pid = os.fork()
    if pid == 0:
        try:
            _exec_program(cfg, layers, uid)
        except BaseException as e:  # never run the program unconfined: report and give up
            os.write(
                channel, f"error:sandbox setup failed: {type(e).__name__}: {e}\n".encode(errors="replace")
            )
        os._exit(127)
    while True:
        done, status = os.wait()  # also reaps orphans re-parented to us
        if done == pid:
            break
    if os.WIFSIGNALED(status):
        os.write(channel, f"signal:{os.WTERMSIG(status)}\n".encode())
    else:
        os.write(channel, f"exit:{os.WEXITSTATUS(status)}\n".encode())


def _wait(pid: int, timeout: float) -> bool:
    """Wait for ``pid`` up to ``timeout`` seconds and SIGKILL it past that; True when it timed out."""
    deadline = time.monotonic() + timeout
    exited = False
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        pidfd = -1
    if pidfd >= 0:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        exited = bool(poller.poll(min(max(0.0, timeout), 1e6) * 1000))
        os.close(pidfd)
    else:
        while not exited and time.monotonic() < deadline:
            exited = os.waitpid(pid, os.WNOHANG)[0] != 0
            if not exited:
                time.sleep(0.005)
    if not exited:
        os.kill(pid, _SIGKILL)
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass
    return not exited


def _kill_leftovers(pgid: int, uid: int | None, cgroup: str) -> None:
    """Kill what the program left behind: the sandbox's process group, its cgroup, its uid's processes."""
    try:
        os.killpg(pgid, _SIGKILL)
    except OSError:
        pass
    for _ in range(10 if cgroup else 0):
        try:
            with open(os.path.join(cgroup, "cgroup.procs")) as f:
                pids = [int(pid) for pid in f.read().split()]
        except OSError:
            break
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, _SIGKILL)
            except OSError:
                pass
    if uid is None or uid == _NOBODY:  # a shared uid: its other processes and files are not ours
        return
    helper = os.fork()
    if helper == 0:
        try:
            os.setuid(uid)
            for _ in range(100):  # kill(-1) spares the caller; repeat while a fork bomb races it
                os.kill(-1, _SIGKILL)
        except OSError:
            pass
        os._exit(0)
    os.waitpid(helper, 0)
    workdir = os.path.realpath(os.getcwd())
    for d in _WORLD_WRITABLE:  # without a mount namespace the uid could write where everyone may
        try:
            entries = os.listdir(d)
        except OSError:
            continue
        for name in entries:
            path = os.path.join(d, name)
            try:
                if os.lstat(path).st_uid == uid and os.path.realpath(path) != workdir:
                    if stat.S_ISDIR(os.lstat(path).st_mode):
                        _remove_tree(path)
                    else:
                        os.unlink(path)
            except OSError:
                pass


def _remove_tree(path: str) -> None:
    for root, dirs, files in os.walk(path, topdown=False):
        for name in files:
            os.unlink(os.path.join(root, name))
        for name in dirs:
            full = os.path.join(root, name)
            if os.path.islink(full):
                os.unlink(full)
            else:
                os.rmdir(full)
    os.rmdir(path)


def _supervise(argv: list[str]) -> int:
    """The supervisor's main: run the program once, write ``layers=...`` and ``outcome=...`` to the report fd."""
    cfg = dict(arg.split("=", 1) for arg in argv)
    report_fd = int(cfg["report_fd"])
    os.set_inheritable(report_fd, False)
    layers = ["rlimits"]
    try:
        if cfg["namespaces"] == "1":
            _unshare_namespaces(cfg["network"] == "1", layers)
        uid = _choose_uid(int(cfg["uid"]), "mountns" in layers, _paths(cfg, "python_dirs"))
        if uid is not None:
            layers.append("uid")
        paths = _readable_import_paths(_paths(cfg, "import_paths"), uid, "mountns" in layers)
        cfg["import_paths"] = os.pathsep.join(paths)
        if cfg["cgroup"]:
            layers.append("pids_cgroup")
        chan_r, chan_w = os.pipe()
        init = os.fork()
        if init == 0:
            os.close(chan_r)
            try:
                _init(cfg, layers, uid, chan_w)
            finally:
                os._exit(0)
        os.close(chan_w)
        timed_out = _wait(init, float(cfg["timeout"]))
        if "pidns" not in layers:
            _kill_leftovers(init, uid, cfg["cgroup"])
        with os.fdopen(chan_r, "rb") as f:
            said = f.read().decode(errors="replace").split("\n")
        errors = [line for line in said if line.startswith("error:")]
        if errors:
            outcome = errors[0]
        elif timed_out:
            outcome = "timeout"
        else:
            outcome = next((line for line in said if line), "error:the sandbox's init died without a word")
    except Exception as e:
        outcome = f"error:supervisor failed: {type(e).__name__}: {e}"
    report = f"layers={','.join(layers)}\noutcome={outcome}"
    os.write(report_fd, report.encode(errors="replace"))
    return 0


if __name__ == "__main__":
    sys.exit(_supervise(sys.argv[1:]))


# ---- rsft side ------------------------------------------------------------------------------------

import functools  # noqa: E402
import logging  # noqa: E402
import secrets  # noqa: E402
import selectors  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
from collections.abc import Mapping  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Literal  # noqa: E402

from rsft.score.pids_cgroup import new_pids_cgroup, remove_cgroup  # noqa: E402

log = logging.getLogger(__name__)

Status = Literal["ok", "failed", "timeout", "killed", "error"]

_SUPERVISOR = os.path.abspath(__file__)
_SUPERVISOR_STUB = (
    "import sys; from importlib.machinery import SourceFileLoader as L; p = sys.argv[1]; "
    "c = L('__main__', p).get_code('__main__'); sys.argv = sys.argv[1:]; "
    "exec(c, {'__name__': '__main__', '__file__': p, '__builtins__': __builtins__})"
)
"""Runs this file as ``__main__`` from its cached bytecode: compiling it each run would cost ~20 ms."""
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
