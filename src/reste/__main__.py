"""``python -m reste`` and the ``reste`` command (``run``): the command line of :mod:`reste.cli`."""

import sys


def run() -> int:
    """The ``reste`` command. Its first seconds import torch: a Ctrl-C then is the one line a later one is."""
    try:
        from .cli import command
    except KeyboardInterrupt:
        print("reste: interrupted", file=sys.stderr)
        return 130
    return command()


if __name__ == "__main__":
    sys.exit(run())
