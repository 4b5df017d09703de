"""The process sandbox: limits, isolation, and a hostile suite that must not touch the host.

Hostile tests that need a guarantee run in two modes: ``namespaces`` (everything this machine allows)
and ``fallback`` (no namespaces: throwaway uid, rlimits and the pids cgroup only, as in a container
without ``CAP_SYS_ADMIN``). The fallback runs a system Python that other uids can execute, and only
when the sandbox confirms it dropped privileges, so a broken sandbox never runs these as root.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import stat
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import pytest

from rsft.score import sandbox, sandbox_supervisor
from rsft.score.sandbox import SandboxResult, run_program

IS_ROOT = os.geteuid() == 0


def run(source: str, **kwargs) -> SandboxResult:
    return run_program(textwrap.dedent(source), **kwargs)


def _system_python() -> str | None:
    """A Python that a throwaway uid can run without a mount namespace (for the fallback mode)."""
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if os.path.exists(candidate):
            try:
                dirs = sandbox._python_dirs_of(candidate)
            except (OSError, ValueError):
                continue
            if not any(sandbox_supervisor._blocked(d) for d in dirs):
                return candidate
    return None


@pytest.fixture(scope="module", params=["namespaces", "fallback"])
def mode(request) -> dict:
    """Keyword arguments for ``run_program`` in each isolation mode."""
    if request.param == "namespaces":
        return {}
    python = _system_python() if IS_ROOT else None
    if python is None:
        pytest.skip("fallback mode needs root and a system Python that other uids can run")
    kwargs = {"namespaces": False, "python": python}
    probe = run("import os; print(os.getuid())", **kwargs)
    if probe.status != "ok" or "uid" not in probe.isolation or probe.stdout.strip() == "0":
        pytest.skip(f"fallback mode could not drop privileges here: {probe}")
    return kwargs


def live_processes_named(comm: str) -> list[int]:
    """Pids of non-zombie processes whose name is ``comm``."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
        if fields.get("Name", "").strip() == comm and not fields.get("State", "").startswith("Z"):
            found.append(int(pid))
    return found


@pytest.fixture
def visible_dir():
    """A root-owned directory under /tmp that other uids can enter and read but not write."""
    path = Path(tempfile.mkdtemp(prefix="rsft-test-visible-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


# --- basics ---------------------------------------------------------------------------------------


def test_ok_program_output_and_result_fields():
    r = run(
        """
        import sys
        print("hello")
        print("to stderr", file=sys.stderr)
        """
    )
    assert r.status == "ok" and r.ok and r.returncode == 0
    assert r.stdout == "hello\n" and r.stderr == "to stderr\n"
    assert 0 < r.wall_s < 30
    assert "rlimits" in r.isolation
    assert not r.stdout_truncated and not r.stderr_truncated


def test_failed_program_gives_exit_code_and_traceback():
    r = run("import sys\nprint('partial')\nraise ValueError('boom')\n")
    assert r.status == "failed" and r.returncode == 1
    assert r.stdout == "partial\n"
    assert r.stderr.strip().splitlines()[-1] == "ValueError: boom"
    assert run("import os\nos._exit(7)\n").returncode == 7


def test_supervisor_runs_by_path_from_a_read_only_copy_outside_the_package(tmp_path, monkeypatch):
    """The child starts the supervisor by file path under ``-I -S`` (no rsft on ``sys.path``), so it
    must stand alone: a copy in a read-only directory with nothing beside it runs programs as well."""
    folder = tmp_path / "ro"
    folder.mkdir()
    shutil.copy(sandbox_supervisor.__file__, folder / "sandbox_supervisor.py")
    folder.chmod(0o555)
    monkeypatch.setattr(sandbox, "_SUPERVISOR", str(folder / "sandbox_supervisor.py"))
    try:
        r = run("print('hello')")
    finally:
        folder.chmod(0o755)
    assert r.ok and r.stdout == "hello\n", r
    assert "rlimits" in r.isolation


def test_workdir_is_fresh_private_and_removed():
    r = run(
        """
        import os
        print(os.getcwd())
        print(sorted(os.listdir(".")))
        print(os.environ["HOME"] == os.getcwd() == os.environ["TMPDIR"])
        open("left-behind.txt", "w").write("x")
        """
    )
    cwd, listing, same = r.stdout.splitlines()
    assert listing == "['main.py']" and same == "True"
    assert not os.path.exists(cwd)
    again = run("import os; print(sorted(os.listdir('.')))")
    assert again.stdout.strip() == "['main.py']"


def test_extra_files_and_empty_stdin():
    r = run(
        """
        print(open("data.txt").read())
        try:
            input()
        except EOFError:
            print("stdin is empty")
        """,
        files={"data.txt": "payload", "blob.bin": b"\x00\x01"},
    )
    assert r.stdout.splitlines() == ["payload", "stdin is empty"]


def test_rejects_bad_arguments():
    with pytest.raises(ValueError):
        run_program("pass", timeout=0)
    with pytest.raises(ValueError):
        run_program("pass", files={"../escape.py": "x"})


def test_capped_buffer_keeps_head_and_tail():
    buf = sandbox._CappedBuffer(10)
    for chunk in (b"abc", b"defgh", b"ijklmnop", b"qrstuvwxyz"):
        buf.add(chunk)
    assert buf.head == b"abcde" and buf.tail == b"vwxyz" and buf.dropped == 16
    assert buf.text() == "abcde\n[... 16 bytes dropped ...]\nvwxyz"
    small = sandbox._CappedBuffer(10)
    small.add(b"short")
    assert small.text() == "short" and small.dropped == 0


@pytest.mark.skipif(not IS_ROOT, reason="privileges are dropped only when rsft runs as root")
def test_runs_as_a_throwaway_uid_with_no_new_privileges():
    r = run(
        """
        import os
        print(os.getuid(), os.geteuid(), os.getgid(), os.getgroups())
        print([l.split()[1] for l in open("/proc/self/status") if l.startswith("NoNewPrivs")][0])
        """
    )
    ids, no_new_privs = r.stdout.splitlines()
    uid, euid, gid, groups = ids.split(" ", 3)
    assert "uid" in r.isolation
    assert uid == euid == gid and int(uid) != 0 and groups == "[]"
    assert no_new_privs == "1"


def test_parallel_runs_do_not_interfere():
    results: list[SandboxResult] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        r = run(
            f"import os\nopen('mine', 'w').write('{i}')\nprint(open('mine').read(), sorted(os.listdir('.')))"
        )
        with lock:
            results.append(r)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r.stdout.split()[0] for r in results) == ["0", "1", "2", "3"]
    assert all(r.stdout.split(" ", 1)[1].strip() == "['main.py', 'mine']" for r in results)


# --- hostile programs -----------------------------------------------------------------------------


def test_fork_bomb_is_bounded_and_cleaned_up(mode):
    marker = "rsftbomb" + secrets.token_hex(3)
    r = run(
        f"""
        import os, sys, time
        forked = 0
        for _ in range(10000):
            try:
                pid = os.fork()
            except OSError:
                break
            if pid == 0:
                try:
                    open("/proc/self/comm", "w").write("{marker}")
                except OSError:
                    pass
                time.sleep(30)
                os._exit(0)
            forked += 1
            if forked >= 64:  # safety valve: never more than 64 even if every limit failed
                break
        print(forked)
        sys.exit(3)
        """,
        max_processes=8,
        timeout=10,
        **mode,
    )
    assert r.status == "failed" and r.returncode == 3
    assert 0 < int(r.stdout) < 8
    assert live_processes_named(marker) == []


def test_memory_hog_fails_fast():
    r = run("b = bytearray(4 * 1024 ** 3)\nprint('allocated')\n", memory_mb=256)
    assert r.status == "failed"
    assert r.stderr.strip().endswith("MemoryError")
    assert "allocated" not in r.stdout


def test_infinite_loop_hits_the_wall_clock_limit():
    t0 = time.monotonic()
    r = run("while True:\n    pass\n", timeout=1.0)
    assert r.status == "timeout" and r.returncode is None
    assert "wall-clock" in r.message
    assert time.monotonic() - t0 < 8


def test_cpu_limit_kills_a_busy_program():
    r = run("while True:\n    pass\n", cpu_seconds=1, timeout=20)
    assert r.status == "timeout" and r.returncode == -signal.SIGXCPU
    assert r.message == "CPU time limit"


def test_sleeping_program_with_sleeping_children_times_out_and_dies(mode):
    marker = "rsftnap" + secrets.token_hex(3)
    r = run(
        f"""
        import os, time
        if os.fork() == 0:
            open("/proc/self/comm", "w").write("{marker}")
        time.sleep(60)
        """,
        timeout=1.0,
        **mode,
    )
    assert r.status == "timeout"
    assert live_processes_named(marker) == []


def test_deep_recursion_fails_cleanly():
    python_level = run("def f(n):\n    return f(n + 1)\nf(0)\n")
    assert python_level.status == "failed"
    assert "RecursionError" in python_level.stderr.strip().splitlines()[-1]
    c_level = run(
        """
        import json, sys
        sys.setrecursionlimit(10 ** 7)
        x = []
        for _ in range(10 ** 6):
            x = [x]
        print(len(json.dumps(x)))
        """,
        memory_mb=256,
        timeout=20,
    )
    assert c_level.status in ("killed", "failed")
    assert c_level.stdout == ""


def test_huge_output_is_capped_without_hanging():
    t0 = time.monotonic()
    r = run(
        """
        import sys
        chunk = "x" * 999_999 + "\\n"
        for i in range(100):
            sys.stdout.write(chunk)
            if i % 5 == 0:
                sys.stderr.write(chunk)
        print("END")
        """,
        max_output_bytes=4096,
        timeout=30,
    )
    assert r.status == "ok"
    assert r.stdout_truncated and r.stderr_truncated
    assert len(r.stdout) < 4096 + 100 and len(r.stderr) < 4096 + 100
    assert r.stdout.startswith("xxx") and r.stdout.endswith("END\n")
    assert "bytes dropped" in r.stdout
    assert time.monotonic() - t0 < 20


def test_file_size_limit():
    r = run("open('big', 'wb').write(b'x' * (8 * 1024 * 1024))\nprint('wrote')\n", max_file_mb=2)
    assert r.status in ("failed", "killed")
    assert "wrote" not in r.stdout


def test_cannot_write_outside_its_directory(mode, tmp_path, visible_dir):
    token = secrets.token_hex(6)
    targets = [
        tmp_path / "escaped.txt",
        visible_dir / "escaped.txt",
        Path(f"/tmp/rsft-escape-{token}"),
        Path(f"/var/tmp/rsft-escape-{token}"),
        Path(f"/dev/shm/rsft-escape-{token}"),
    ]
    try:
        r = run(
            f"""
            for path in {[str(t) for t in targets]!r}:
                try:
                    with open(path, "w") as f:
                        f.write("escaped")
                    print("wrote", path)
                except OSError as e:
                    print("refused", path, type(e).__name__)
            """,
            **mode,
        )
        assert r.status == "ok"
        assert "refused" in r.stdout
        assert [str(t) for t in targets if t.exists()] == []
    finally:
        for t in targets:
            if t.exists():
                t.unlink()


def test_cannot_delete_or_change_files_outside(mode, tmp_path, visible_dir):
    canaries = [tmp_path / "canary.txt", visible_dir / "canary.txt"]
    for c in canaries:
        c.write_text("alive")
        c.chmod(0o644)
    r = run(
        f"""
        import os, shutil
        for path in {[str(c) for c in canaries]!r}:
            for attempt in (os.remove, lambda p: open(p, "w").write("dead"),
                            lambda p: os.rename(p, p + ".moved"), lambda p: os.chmod(p, 0o777),
                            lambda p: shutil.rmtree(os.path.dirname(p))):
                try:
                    attempt(path)
                    print("did something to", path)
                except OSError as e:
                    print("refused", type(e).__name__)
        """,
        **mode,
    )
    assert r.status == "ok" and "refused" in r.stdout
    for c in canaries:
        assert c.read_text() == "alive"
        assert stat.S_IMODE(c.stat().st_mode) == 0o644


def test_cannot_kill_its_parent_or_the_host(mode):
    host = os.getpid()
    r = run(
        f"""
        import os, signal
        for pid in (os.getppid(), {host}):
            try:
                os.kill(pid, signal.SIGKILL)
                print("signalled", pid)
            except OSError as e:
                print("refused", pid, type(e).__name__)
        print("survived")
        """,
        **mode,
    )
    assert os.getpid() == host  # we are still here
    assert r.status == "ok", r
    assert r.stdout.splitlines()[-1] == "survived"
    if "uid" in r.isolation:
        assert f"refused {host}" in r.stdout


def test_cannot_read_the_hosts_secrets(mode, monkeypatch):
    secret = "rsft-fake-secret-" + secrets.token_hex(8)
    monkeypatch.setenv("RSFT_TEST_SECRET", secret)
    r = run(
        f"""
        import os
        print(dict(os.environ))
        for pid in ("self", "1", str(os.getppid()), "{os.getpid()}"):
            try:
                print(pid, open(f"/proc/{{pid}}/environ", "rb").read())
            except OSError as e:
                print(pid, type(e).__name__)
        """,
        **mode,
    )
    assert r.status == "ok"
    assert secret not in r.stdout + r.stderr
    assert "RSFT_TEST_SECRET" not in r.stdout


def test_no_network_even_to_localhost():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        r = run(
            f"""
            import socket
            try:
                socket.create_connection(("127.0.0.1", {port}), timeout=2).close()
                print("connected")
            except OSError as e:
                print("refused", type(e).__name__)
            """
        )
        if not r.network_isolated:
            pytest.skip(f"no network namespace on this machine (isolation: {r.isolation})")
        assert r.stdout.startswith("refused")
        server.settimeout(0)
        with pytest.raises(BlockingIOError):
            server.accept()


def test_network_flag_keeps_the_network():
    r = run("print('hi')", network=True)
    assert r.status == "ok" and not r.network_isolated and "netns" not in r.isolation


def test_leftover_daemons_are_killed(mode):
    marker = "rsftdmn" + secrets.token_hex(3)
    r = run(
        f"""
        import os, time
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                open("/proc/self/comm", "w").write("{marker}")
                time.sleep(30)
            os._exit(0)
        time.sleep(0.2)
        print("parent done")
        """,
        **mode,
    )
    assert r.status == "ok" and r.stdout == "parent done\n"
    assert live_processes_named(marker) == []


def test_cleanup_never_touches_anything_outside_the_sandbox(mode, tmp_path):
    tmp_dir = tempfile.gettempdir()
    before = os.stat(tmp_dir).st_mode
    run("open('f', 'w').write('x')", **mode)
    assert os.stat(tmp_dir).st_mode == before
    parent = tmp_path / "parent"
    parent.mkdir(mode=0o755)
    sandbox._remove_workdir(str(parent / "gone"))  # already deleted: must not chmod its parent
    assert stat.S_IMODE(parent.stat().st_mode) == 0o755
    locked = parent / "work"
    (locked / "sub").mkdir(parents=True)
    (locked / "sub" / "file").write_text("x")
    (locked / "sub").chmod(0)
    sandbox._remove_workdir(str(locked))
    assert not locked.exists() and stat.S_IMODE(parent.stat().st_mode) == 0o755


# --- installed packages ---------------------------------------------------------------------------


def test_installed_packages_import_and_stay_read_only(mode):
    """site-packages (and numpy's own directory, where installed) are importable but not writable."""
    python = mode.get("python", sys.executable)
    site_dirs = [d for d in sandbox._site_paths_of(python) if os.path.isdir(d)]
    if not site_dirs:
        pytest.skip(f"{python} has no site-packages")
    name = f"rsft_planted_{secrets.token_hex(4)}.py"
    numpy_init = None
    if python == sys.executable:
        numpy_init = Path(pytest.importorskip("numpy").__file__)
    before = numpy_init.read_bytes() if numpy_init else b""
    planted = [Path(d) / name for d in site_dirs]
    if numpy_init:
        planted.append(numpy_init.parent / name)
    try:
        r = run(
            f"""
            import sys
            print(all(d in sys.path for d in {site_dirs!r}))
            targets = {[str(p) for p in planted]!r}
            try:
                import numpy as np
                print("numpy", int(np.arange(5).sum()))
                targets.append(np.__file__)
            except ModuleNotFoundError:
                pass
            for path in targets:
                try:
                    with open(path, "a") as f:
                        f.write("planted = True\\n")
                    print("wrote", path)
                except OSError as e:
                    print("refused", type(e).__name__, e.errno)
            """,
            **mode,
        )
        assert r.status == "ok", r
        lines = r.stdout.splitlines()
        assert lines[0] == "True" and "wrote" not in r.stdout
        assert sum(line.startswith("refused") for line in lines) == len(planted) + bool(numpy_init)
        if numpy_init:
            assert "numpy 10" in lines
            assert numpy_init.read_bytes() == before
        assert [str(p) for p in planted if p.exists()] == []
    finally:
        for p in planted:
            if p.exists():
                p.unlink()


def test_site_packages_off_leaves_only_the_standard_library():
    pytest.importorskip("numpy")
    r = run("import json, sys\nprint(json.dumps(sys.path))\nimport numpy\n", site_packages=False)
    assert r.status == "failed"
    assert r.stderr.strip().splitlines()[-1] == "ModuleNotFoundError: No module named 'numpy'"
    assert not any("-packages" in p for p in json.loads(r.stdout))


def test_numpy_fits_the_limits_with_one_blas_thread():
    pytest.importorskip("numpy")
    r = run(
        """
        import os, threading
        import numpy as np
        a = np.ones((300, 300))
        print(float((a @ a).sum()), threading.active_count(), os.environ["OPENBLAS_NUM_THREADS"])
        print([l.split()[1] for l in open("/proc/self/status") if l.startswith("Threads")][0])
        """,
        memory_mb=256,
        max_processes=4,
    )
    assert r.status == "ok", r
    assert r.stdout.split() == ["27000000.0", "1", "1", "1"]


def test_the_bootstrap_runs_main_like_a_script():
    """With import paths, main.py still runs as __main__, its own file, no names leaked in."""
    r = run(
        """
        print(sorted(k for k in globals() if not k.startswith("__")))
        import json, os, sys
        print(__name__, __file__ == os.path.join(os.getcwd(), "main.py"), sys.argv)
        print(json.dumps(sys.path))
        raise ValueError("boom")
        """
    )
    assert r.status == "failed" and r.returncode == 1
    names, main, path = r.stdout.splitlines()
    assert names == "[]" and main == "__main__ True ['main.py']"
    site = [d for d in sandbox._site_paths_of(sys.executable) if os.path.isdir(d)]
    assert site and json.loads(path)[-len(site) :] == site  # after the standard library
    assert 'main.py", line 6, in <module>' in r.stderr
    assert r.stderr.strip().splitlines()[-1] == "ValueError: boom"


def test_hidden_import_dirs_are_bound_back_or_left_out(mode, tmp_path, monkeypatch):
    """An import dir under a directory the uid cannot enter: bound back read-only in a mount namespace,
    left off sys.path without one; either way the program keeps the throwaway uid."""
    if not IS_ROOT:
        pytest.skip("the throwaway uid exists only when rsft runs as root")
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "rsft_probe_mod.py").write_text("VALUE = 42\n")
    (tmp_path / "secret.txt").write_text("hidden")
    lib.chmod(0o755)
    (lib / "rsft_probe_mod.py").chmod(0o644)
    tmp_path.chmod(0o700)
    assert sandbox_supervisor._blocked(str(lib)), "the test needs lib/ behind a directory others cannot enter"
    monkeypatch.setattr(sandbox, "_site_paths_of", lambda python: (str(lib),))
    r = run(
        f"""
        try:
            import rsft_probe_mod
            print("imported", rsft_probe_mod.VALUE)
        except ModuleNotFoundError:
            print("not importable")
        for path in ({str(lib / "new.py")!r}, {str(tmp_path / "secret.txt")!r}):
            try:
                open(path, "a").write("x")
                print("wrote", path)
            except OSError as e:
                print("refused", type(e).__name__)
        """,
        **mode,
    )
    assert r.status == "ok", r
    assert "uid" in r.isolation
    first = "imported 42" if "mountns" in r.isolation else "not importable"
    lines = r.stdout.splitlines()
    assert lines[0] == first and [line.split()[0] for line in lines[1:]] == ["refused", "refused"]
    assert not (lib / "new.py").exists() and (tmp_path / "secret.txt").read_text() == "hidden"


def test_readable_import_paths_never_keep_root(tmp_path):
    tmp_path.chmod(0o700)
    inner, closed = tmp_path / "inner", tmp_path / "closed"
    inner.mkdir(mode=0o755)
    closed.mkdir(mode=0o700)
    paths = ["/usr/lib", str(inner), str(closed)]
    assert sandbox_supervisor._readable_import_paths(paths, None, False) == paths
    assert sandbox_supervisor._readable_import_paths(paths, 12345, True) == ["/usr/lib", str(inner)]
    assert sandbox_supervisor._readable_import_paths(paths, 12345, False) == ["/usr/lib"]
    assert sandbox_supervisor._choose_uid(12345, True, ["/usr"]) == (12345 if IS_ROOT else None)
