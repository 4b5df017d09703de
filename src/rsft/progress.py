"""Progress bars for long stages: shown on a terminal, silent when output is piped or logged."""

from __future__ import annotations

import os
import sys
from typing import Any


def progress(total: int, desc: str, unit: str = "it", enabled: bool | None = None, position: int = 0) -> Any:
    """A tqdm bar on stderr (rate and ETA included) that is disabled unless stderr is a terminal.

    ``RSFT_PROGRESS=1`` forces it on, ``RSFT_PROGRESS=0`` off. ``position=1`` draws a bar below a
    stage's own (a backend's finer progress inside a shard).
    """
    from tqdm.auto import tqdm

    if enabled is None:
        forced = os.environ.get("RSFT_PROGRESS")
        enabled = forced == "1" if forced in ("0", "1") else sys.stderr.isatty()
    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, dynamic_ncols=True, leave=False,
                position=position)
