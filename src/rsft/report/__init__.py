"""What a run shows afterwards (layer 3).

- ``runs``: ``rsft report RUN``, the table of a run's rounds and its HTML report.
- ``tables``: the table cells and the sweep table that ``runs`` and ``rsft.rounds.sweep`` both print.
- ``status``: ``rsft status RUN``, each round's stages as done, partial or missing.

This package answers for the names of ``runs`` (``from rsft.report import write_report``), the module
``rsft.report`` was before it became a package.
"""

from __future__ import annotations

from rsft import forward_names

__getattr__ = forward_names(__name__, "rsft.report.runs")
