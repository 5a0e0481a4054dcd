"""User-facing errors.

``UsageError`` is raised for bad input that the user can fix (an unknown name, a
missing data set, a corrupted checkpoint, ...). Its message is one line that
says what is wrong and what to do; the command line prints it on stderr and
exits with status 2, without a traceback. It subclasses ``ValueError`` so
library callers can catch it either way.
"""

import contextlib
import contextvars
import errno as errno_module
import json
import math
import operator
import re
import sys
import warnings
from pathlib import Path
from typing import Any


EX_TEMPFAIL = 75  # sysexits.h: the exit status when the run folder is held by another job; a requeue may try later


class UsageError(ValueError):
    """Bad input the user can fix; the message is one self-contained line."""


class ModelOptionError(UsageError):
    """A model factory refused its options (``reste.models.create``); ``reason`` is the factory's own first line,
    for a caller that words the error another way (a run resumed or a checkpoint loaded with code that changed)."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


_COMMAND_LINE = contextvars.ContextVar("reste_command_line", default=False)


def option(flag: str, keyword: str) -> str:
    """How a message names a setting: as the ``reste`` command's ``flag`` inside :func:`command_line` (``--download``),
    else as the Python keyword a library caller passes (``download=True``)."""
    return flag if _COMMAND_LINE.get() else keyword


def on_command_line() -> bool:
    """Whether messages now name settings by their flags (inside :func:`command_line`)."""
    return _COMMAND_LINE.get()


def join_command_line() -> None:
    """Name settings by their flags for the rest of this context: a worker process the command started."""
    _COMMAND_LINE.set(True)


@contextlib.contextmanager
def command_line():
    """Messages raised inside name settings by their flags (:func:`option`); ``reste.cli.main`` runs in it."""
    token = _COMMAND_LINE.set(True)
    try:
        yield
    finally:
        _COMMAND_LINE.reset(token)


def one_line(err: BaseException) -> str:
    """The one line of a UsageError. One that a DataLoader worker raised comes back with the worker's traceback
    around it ("Caught UsageError in DataLoader worker process 0." first, the message last)."""
    text = str(err).strip()
    if "\n" not in text:
        return text
    last = text.splitlines()[-1].strip()
    return last.split("UsageError: ", 1)[-1] if "UsageError" in last else text.splitlines()[0]


def checked_flags(who: str, **flags: Any) -> None:
    """Refuse, in one line naming ``who``, a keyword meant as True or False that is something else (``None`` is
    left to the caller where it means "the default"): ``inplace="no"`` converted the user's own model and
    ``download="no"`` went to the network, both strings being true (review apifuzz1). NumPy's bool, a 0-dim bool
    tensor and the integers 0 and 1 are taken."""
    for name, value in flags.items():
        if value is None or isinstance(value, bool) or type(value).__name__ in ("bool", "bool_"):
            continue
        if getattr(value, "ndim", None) == 0 and str(getattr(value, "dtype", "")) in ("torch.bool", "bool"):
            continue  # a 0-dim bool tensor or array
        if type(value) is int and value in (0, 1):  # (0 and 1 were taken as False and True: review diff34)
            continue
        raise UsageError(f"{who}: {name} must be True or False, got {value!r}"[:200])


def usable_device(who: str, device: Any, default: str) -> Any:
    """``device`` as a ``torch.device``, refused in one line naming ``who`` where torch does not know it (its list of
    every device type) or where it is a CUDA device on a machine without one ("Found no NVIDIA driver" from deep
    inside, review api3 #4 and apifuzz1); ``default`` says what to pass instead ("device='cpu' (the default)")."""
    import torch

    if device is None:  # (the CPU, as torch's own device=None: review diff34)
        return torch.device("cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise UsageError(f"{who}: unknown device {device!r}; pass cpu, cuda or cuda:N ({default})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"{who}: device {str(device)!r}, but torch finds no CUDA GPU here; pass {default}")
    return device


def checked_input_size(input_size: Any) -> tuple[int, ...] | None:
    """``input_size``, one input's shape ((C, H, W); (features,) for an MLP), refused with one line unless
    positive integers (``None`` stays ``None``)."""
    if input_size is None:
        return None
    try:
        size = tuple(operator.index(v) for v in input_size)  # Python's or NumPy's integers, not floats or bools
    except TypeError:
        size = ()
    if not size or any(v <= 0 for v in size) or any(isinstance(v, bool) for v in input_size):
        raise UsageError(f"input_size must be one input's shape, positive integers such as (C, H, W), got "
                         f"{input_size!r}")
    return size


def did_you_mean(name: object, choices) -> str:
    """``"did you mean 'resnet20'? "`` for an unknown name close to one of ``choices`` (a typo, another case, a
    name inside one: ``mnist`` for ``fashion-mnist``), to go before a message's list of the valid names; else ``""``."""
    import difflib

    if not isinstance(name, str) or not name:
        return ""
    choices = [str(c) for c in choices]
    folded = {c.lower(): c for c in choices}
    if name.lower() in folded:  # another case of a name (ResNet20): that name (review diff29 #1)
        return f"did you mean {folded[name.lower()]!r}? "
    begun = [c for c in folded if c.startswith(name.lower())]
    if len(begun) > 1:  # the start of several (a preset's model without its variant: review newuser4, suggestion 5)
        shown = ", ".join(repr(folded[c]) for c in begun[:4]) + (", ..." if len(begun) > 4 else "")
        return f"did you mean one of {shown}? "
    close = difflib.get_close_matches(name.lower(), list(folded), n=1)
    close = close or [c for c in folded if name.lower() in c][:1]
    return f"did you mean {folded[close[0]]!r}? " if close else ""


def unknown_choice(what: str, value: object, choices) -> str:
    """``unknown WHAT 'value'; did you mean ...? valid: a, b, c``: the one wording of a value none of ``choices``
    is (the suggestion from :func:`did_you_mean`)."""
    return f"unknown {what} {value!r}; {did_you_mean(value, choices)}valid: {', '.join(map(str, choices))}"


#: The errnos of a write that found no room (a full disk, a quota, a file size limit): the machine's, not the
#: command line's; the same command works once there is room.
NO_ROOM = tuple(getattr(errno_module, name) for name in ("ENOSPC", "EDQUOT", "EFBIG") if hasattr(errno_module, name))
#: The errnos of a file system that stopped taking writes during a run (permissions changed, remounted read-only, a
#: failing disk): what the run saved until then stays.
WRITES_REFUSED = tuple(getattr(errno_module, name) for name in ("EACCES", "EPERM", "EROFS", "EIO")
                       if hasattr(errno_module, name))


def cannot_write(err: OSError, path: Any, remedy: str) -> Exception:
    """What a write of ``path`` that failed with ``err`` raises: no room (:data:`NO_ROOM`) as the OSError, naming
    ``path``, which the command says as the machine's (free some space, status 1: review chaos #4, rev16 #5); any
    other as a one-line ``UsageError`` ending in ``remedy`` (status 2)."""
    if err.errno in NO_ROOM:
        return OSError(err.errno, err.strerror, str(path))
    return UsageError(f"cannot write {path} ({err.strerror or err}); {remedy}")


def machine_cause(err: BaseException) -> str | None:
    """What an error of the machine rather than the settings comes to, in one line with its remedy, where reste
    knows it: torch.compile's Inductor without a C++ compiler. None otherwise. (``reste train`` and each run of a
    sweep say it so: review portable, suggestion; rev15 #13.)"""
    if "InvalidCxxCompiler" in f"{type(err).__name__} {err}":
        return ("--compile on the CPU needs a C++ compiler (torch's Inductor found none: install g++, or clang on "
                "macOS), or drop --compile")
    return None


def shell_word(path) -> str:
    """A path as one word of a command a message suggests, quoted for the shell where it must be (a folder with
    a space), so the command can be copied as it is."""
    import os
    import shlex

    text = os.fspath(path)
    if os.name == "nt":  # cmd.exe keeps single quotes as part of the word: double quotes (review portable #7), which
        # cmd.exe and PowerShell both read, around any path with more than letters, digits and _-.:\/ (& ; ' $ and
        # the rest mean something to one shell or the other: rev14 #3); a Windows path holds no double quote. (Inside
        # them cmd.exe still expands %VAR% and PowerShell $name and backticks: such a folder name is left to the user.)
        if text and re.fullmatch(r"[\w\-.:\\/]+", text, re.ASCII):
            return text
        tail = len(text) - len(text.rstrip("\\"))  # a backslash before the closing quote would escape it: doubled
        return '"' + text + "\\" * tail + '"'
    return shlex.quote(text)


def read_user_file(path, missing: str) -> bytes:
    """The bytes of a file the user named; a :class:`UsageError` when it is a folder, is not there
    (``missing``: the whole message) or cannot be read (the OS's reason)."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{path} is a folder; pass a file")
    if not path.is_file():
        if path.exists():  # (review fuzz1, suggestion 5: a FIFO "did not exist")
            raise UsageError(f"{path} is not a regular file (a FIFO, a socket or a device); pass a file")
        raise UsageError(missing)
    try:
        return path.read_bytes()
    except OSError as err:
        raise UsageError(f"cannot read {path} ({err.strerror})") from None


def strict_json(value: Any) -> Any:
    """``value`` with every float that is not finite (NaN, inf) made ``None``, in its dicts, lists and tuples: JSON
    has no NaN, and ``json.dumps`` writes a bare ``NaN`` that strict readers (JavaScript's JSON.parse, jq) refuse
    or read as another value (review formats1 #3)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return value


def json_line(value: Any) -> str:
    """``value`` as strict JSON on one line (:func:`strict_json`)."""
    return json.dumps(strict_json(value), allow_nan=False)


#: the deepest nesting of lists and objects ``parse_json`` takes: reste's own files nest a few levels, and code
#: that walks a value recursively (``dataclasses.asdict``, ``copy.deepcopy``, ``json.dumps``) takes two or more
#: frames a level, so a value the parser took (up to about 1000 levels) could still end in a ``RecursionError``
JSON_DEPTH = 100


def parse_json(text: str | bytes) -> Any:
    """``json.loads``, where nesting too deep (a damaged or crafted file: past the parser's recursion limit, or past
    :data:`JSON_DEPTH`) is a ``json.JSONDecodeError`` like any other damage, which the callers already word, not a
    ``RecursionError`` (in the parser, or later in code that walks the value)."""
    try:
        value = json.loads(text)
        too_deep = _deeper_than(value, JSON_DEPTH)
    except RecursionError:
        too_deep = True
    if too_deep:
        err = json.JSONDecodeError("nested too deeply", text if isinstance(text, str) else "", 0)
        err.args = ("its JSON is nested too deeply",)  # no position: the parser gave none
        raise err from None
    return value


def _deeper_than(value: Any, depth: int) -> bool:
    """Whether lists and objects nest in ``value`` more than ``depth`` levels (walked without recursion)."""
    stack = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, (dict, list)):
            if level > depth:
                return True
            stack.extend((child, level + 1) for child in (item.values() if isinstance(item, dict) else item))
    return False


def one_line_warnings() -> None:
    """Show warnings as ``reste: warning: ...``, one line each and each once (Python's format takes two lines,
    with the source line, and a check repeated by the config and the model printed it twice). For the ``reste``
    command (``reste.__main__.run``) and a sweep's workers; the library and ``reste.cli.main`` leave warnings to
    Python. Installed once: again, it keeps what it has shown (the ``reste`` command installs it before its import,
    review install1 #3, and again in ``reste.cli.command``)."""
    if getattr(warnings.showwarning, "reste_one_line", False):
        return
    shown: set[str] = set()

    def show(message, category, filename, lineno, file=None, line=None):  # noqa: ARG001 - warnings' signature
        text = " ".join(str(message).split())
        stream = sys.stderr if file is None else file
        if text in shown or stream is None:  # as Python's own: no stderr, no warning
            return
        shown.add(text)
        try:
            stream.write(f"reste: warning: {text}\n")
        except OSError:  # a closed stderr: the warning is lost, the run goes on
            pass

    show.reste_one_line = True  # type: ignore[attr-defined]  (a sweep's workers show theirs so too)
    warnings.showwarning = show


def stderr_is_terminal() -> bool:
    """Whether stderr is a terminal, where a progress bar is drawn (a log file or a pipe would fill with its
    frames): the library's rule (``reste.engine``) and the command's (``reste.flags``)."""
    return sys.stderr is not None and hasattr(sys.stderr, "isatty") and sys.stderr.isatty()


def print_line(message: str) -> None:
    """The library's default ``log``: ``print`` with a flush, so each line is on disk when stdout is a file (a
    cluster job's log), not in a buffer that a kill -9 loses."""
    print(message, flush=True)
