"""``rsft bon``: Best-of-N over a prompt file or stdin (``rsft.bon``)."""

from __future__ import annotations

from rsft import bon
from rsft.cli.options import Command

COMMANDS = {"bon": Command("Best-of-N at inference: N candidates per prompt, scored, the best one per JSON line",
                           bon.add_arguments, bon.main)}
