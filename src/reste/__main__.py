"""``python -m reste``: the same as the ``reste`` command."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
