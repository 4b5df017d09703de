"""``python -m rsft.serve``: the same as ``rsft serve``."""

import sys

from rsft.serve.cli import _cli

sys.exit(_cli())
