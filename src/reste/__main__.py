"""``python -m reste`` and the ``reste`` command (``run``): the command line of :mod:`reste.cli`."""

import sys


def run() -> int:
    """The ``reste`` command. Its first seconds import torch: a Ctrl-C then is the one line a later one is."""
    try:
        from .cli import main, one_line_warnings
    except KeyboardInterrupt:
        print("reste: interrupted", file=sys.stderr)
        return 130
    if "--debug" not in sys.argv[1:]:
        one_line_warnings()
    return main()


if __name__ == "__main__":
    sys.exit(run())
