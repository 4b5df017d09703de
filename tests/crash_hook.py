"""Run the real ``rsft`` CLI with a hook that stops it at an exact point of an atomic write.

Every rsft write goes ``temp file -> os.replace(temp, target)``. With ``RSFT_TEST_HANG`` set to
``before:REGEX`` or ``after:REGEX``, the first ``os.replace`` whose target path matches REGEX
(searched in the POSIX path) pauses the process forever:

- ``before``: the temp file is first cut to half its size, so the process is caught in the middle
  of writing that file (a truncated temp file on disk, the target not yet there);
- ``after``: the target is in place, and the process stops before its next step.

Before pausing, the hook creates the file named by ``RSFT_TEST_HANG_MARKER``, so a test knows the
process reached the point and can ``kill -9`` it there. Nothing else changes: the process runs
``rsft.cli.main`` exactly as the console script does.

Usage: ``python tests/crash_hook.py ARGS...`` (the same arguments as ``rsft``).
"""

from __future__ import annotations

import os
import re
import sys
import time

_real_replace = os.replace


def _install(spec: str, marker: str) -> None:
    when, _, pattern = spec.partition(":")
    if when not in ("before", "after") or not pattern:
        raise SystemExit(f"RSFT_TEST_HANG must be before:REGEX or after:REGEX, got {spec!r}")
    regex = re.compile(pattern)

    def pause() -> None:
        with open(marker, "w") as f:
            f.write(str(os.getpid()))
        while True:
            time.sleep(60)

    def replace(src, dst, *args, **kwargs):
        hit = regex.search(os.fspath(dst).replace(os.sep, "/"))
        if hit and when == "before":
            size = os.path.getsize(src)
            with open(src, "r+b") as f:
                f.truncate(size // 2)
            pause()
        out = _real_replace(src, dst, *args, **kwargs)
        if hit:
            pause()
        return out

    os.replace = replace


if __name__ == "__main__":
    if os.environ.get("RSFT_TEST_HANG"):
        _install(os.environ["RSFT_TEST_HANG"], os.environ["RSFT_TEST_HANG_MARKER"])
    from rsft.cli import main

    sys.exit(main(sys.argv[1:]))
