"""``python -m rsft.cli``: the same as the ``rsft`` console script."""

import sys

from rsft.cli import main

sys.exit(main())
