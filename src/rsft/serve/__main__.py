"""``python -m rsft.serve``: the same as ``rsft serve``."""

import sys

from rsft.cli import main

sys.exit(main(["serve", *sys.argv[1:]]))
