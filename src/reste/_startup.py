"""The first seconds of the ``reste`` command, which import torch: a Ctrl-C then is the one line a later one is.

During that import a first Ctrl-C is only noted, and acted on once the import is done: a KeyboardInterrupt raised
inside it could land in a callback of torch's C++ (which aborted the process) or of Python's import machinery (which
printed it and went on: the command then ran to its end; review combos #3). A second one stops it at once, as in
training (an import that hangs: review rev13 #9). Both entry points run through here: ``reste`` and
``python -m reste`` (:mod:`reste.__main__`), and ``python -m reste.cli``, torchrun's form (review rev13 #4).
"""

import signal
import sys
from typing import Callable


def run(load: Callable[[], Callable[[], int]]) -> int:
    """``load()`` (the import, which returns the command), then the command; 130 with one line on a Ctrl-C during
    the import."""
    if "--debug" not in sys.argv[1:]:  # (a warning while reste imports, as the command's own: review install1 #3)
        from .errors import one_line_warnings

        one_line_warnings()
    noted: list[int] = []

    def note(signum: int, _frame: object) -> None:
        noted.append(signum)
        signal.signal(signal.SIGINT, signal.default_int_handler)  # the next Ctrl-C raises

    default = signal.getsignal(signal.SIGINT) is signal.default_int_handler  # (an ignored one stays ignored)
    if default:
        signal.signal(signal.SIGINT, note)
    try:
        command = load()
    except KeyboardInterrupt:
        noted.append(signal.SIGINT)
    finally:
        if default:
            signal.signal(signal.SIGINT, signal.default_int_handler)
    if noted:
        print("reste: interrupted", file=sys.stderr)
        return 130
    return command()
