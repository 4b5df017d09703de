"""Per-run ``pids`` cgroups for the sandbox (``rsft.score.sandbox``): ``pids.max`` caps its processes.

Used where rsft is root with a writable cgroup-v1 ``pids`` hierarchy, or cgroup v2 with ``pids``
delegated to rsft's own cgroup. After the first failure no more are tried in this process.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import time

log = logging.getLogger("rsft.score.sandbox")

_broken = False
"""Set once making a cgroup failed: the sandbox then runs without one."""


def _parent() -> str | None:
    """The cgroup directory (ours) under which a child with ``pids.max`` can be made, if any."""
    try:
        with open("/proc/self/mounts") as f:
            mounts = [line.split() for line in f]
        with open("/proc/self/cgroup") as f:
            own = [line.strip().split(":", 2) for line in f if line.count(":") >= 2]
    except OSError:
        return None
    for _dev, mnt, fstype, opts, *_ in mounts:
        if fstype == "cgroup" and "pids" in opts.split(","):
            rel = next((p for _, ctl, p in own if "pids" in ctl.split(",")), None)
        elif fstype == "cgroup2":
            rel = next((p for hid, ctl, p in own if hid == "0" and ctl == ""), None)
            try:
                with open(os.path.join(mnt + (rel or ""), "cgroup.subtree_control")) as f:
                    if "pids" not in f.read().split():
                        continue
            except OSError:
                continue
        else:
            continue
        if rel is not None:
            return os.path.normpath(mnt + rel)
    return None


def new_pids_cgroup(max_processes: int) -> str | None:
    """A fresh cgroup with ``pids.max = max_processes`` (its path), or None where none can be made."""
    global _broken
    if _broken:
        return None
    parent = _parent()
    if parent is None:
        _broken = True
        return None
    path = os.path.join(parent, f"rsft-sandbox-{secrets.token_hex(8)}")
    try:
        os.mkdir(path)
    except OSError:
        _broken = True
        return None
    try:
        with open(os.path.join(path, "pids.max"), "w") as f:
            f.write(str(max_processes))
    except OSError:
        _broken = True
        os.rmdir(path)
        return None
    return path


def remove_cgroup(path: str) -> None:
    """Kill what is left in the cgroup and remove it (retries for ~2 s while processes exit)."""
    for _ in range(200):
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError:
            try:
                with open(os.path.join(path, "cgroup.procs")) as f:
                    for pid in f.read().split():
                        try:
                            os.kill(int(pid), signal.SIGKILL)
                        except OSError:
                            pass
            except OSError:
                pass
            time.sleep(0.01)
    log.warning("rsft sandbox: could not remove cgroup %s", path)
