"""``python -m reste`` and the ``reste`` command (``run``): the command line of :mod:`reste.cli`."""

import sys
from typing import Callable

from ._startup import run as _start


def _load() -> Callable[[], int]:
    from .cli import command

    return command


def run() -> int:
    """The ``reste`` command: :mod:`reste.cli` imported (a Ctrl-C meanwhile: :mod:`reste._startup`), then run."""
    return _start(_load)


if __name__ == "__main__":
    sys.exit(run())
