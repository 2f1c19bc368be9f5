"""``python -m connectivity.cli``: the same as the ``connectivity`` command."""

import sys

from connectivity.cli import main

sys.exit(main())
