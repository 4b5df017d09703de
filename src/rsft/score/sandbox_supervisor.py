"""The sandbox's supervisor: the program that runs in the child process of every ``run_program``.

``rsft.score.sandbox`` starts this file by its path as ``__main__`` (``python -I -S -c`` with a
one-line loader that reuses its cached bytecode), in a new session inside the sandbox directory,
with the run's settings as ``key=value`` arguments. It sets up the isolation (namespaces, filesystem,
uid, rlimits, cgroup), forks the init that forks the program, enforces the wall-clock limit, kills
what is left and writes ``layers=...`` and ``outcome=...`` to the report fd. ``-I -S`` leaves rsft
and every installed package off ``sys.path``, so this file imports only the standard library, and
only cheap modules (dataclasses, json or subprocess would double its start-up). rsft imports it as
a module too (``PROGRAM_NAME``), which also caches its bytecode before the first run.
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
