"""``python -m reste`` and the ``reste`` command (``run``): the command line of :mod:`reste.cli`."""

import signal
import sys


def run() -> int:
    """The ``reste`` command. Its first seconds import torch: a Ctrl-C then is the one line a later one is.

    During that import a first Ctrl-C is only noted, and acted on once it is done: a KeyboardInterrupt raised inside
    the import could land in a callback of torch's C++ (which aborted the process) or of Python's import machinery
    (which printed it and went on: the command then ran to its end; review combos #3). A second one stops it at
    once, as in training (an import that hangs: review rev13 #9)."""
    noted: list[int] = []

    def note(signum: int, _frame: object) -> None:
        noted.append(signum)
        signal.signal(signal.SIGINT, signal.default_int_handler)  # the next Ctrl-C raises

    default = signal.getsignal(signal.SIGINT) is signal.default_int_handler  # (an ignored one stays ignored)
    if default:
        signal.signal(signal.SIGINT, note)
    try:
        from .cli import command
    except KeyboardInterrupt:
        noted.append(signal.SIGINT)
    finally:
        if default:
            signal.signal(signal.SIGINT, signal.default_int_handler)
    if noted:
        print("reste: interrupted", file=sys.stderr)
        return 130
    return command()


if __name__ == "__main__":
    sys.exit(run())
