"""``Param``: one hyper-parameter of an estimator, as its class declares it.

An estimator class lists its hyper-parameters once, in a ``hyperparameters`` table of
``Param``; :mod:`reste.estimators` makes the constructor's checks, ``config()`` /
``spec()`` and the schedule state from it, :mod:`reste.cli` the ``reste train`` flags
and :mod:`reste.experiments.sweep` the grid axes.

Two helpers for what a user hands the library: :func:`real_number` (a number given as a Python, NumPy or 0-dim tensor
value: the hyper-parameters', ``clip_weights``' bound, Bop's settings) and :func:`outside_reste` (the ``stacklevel``
of a warning that names the user's line, however deep inside reste it is given).

>>> Param("o_end", float, 3.0, "final o", "[1, inf)").check(0.5, "--o-end")
Traceback (most recent call last):
ValueError: --o-end must be >= 1, got 0.5
"""

from __future__ import annotations

import math
import numbers
import os
import sys
from dataclasses import dataclass
from typing import Any

from .errors import did_you_mean


def real_number(value: Any) -> int | float | None:
    """``value`` as a Python ``int`` or ``float`` where it is a real number: Python's, NumPy's (a sweep over
    ``np.arange``, a value read from a table) or a 0-dim real tensor or array (``.item()``); ``None`` for anything else,
    a bool (or a bool tensor) included, so that the caller says what it takes."""
    if not isinstance(value, numbers.Number) and getattr(value, "ndim", None) == 0 and hasattr(value, "item"):
        value = value.item()  # a 0-dim tensor or array: its Python number (a complex one stays refused below)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    return int(value) if isinstance(value, numbers.Integral) else float(value)


def outside_reste(*libraries: str) -> int:
    """The ``stacklevel`` of a warning given by this function's caller that names the first frame outside reste: the
    user's line, however deep inside reste it was given (``binarize(model, "reste", o_end=1.0)`` builds the estimator
    in ``get_estimator``; a constructor called directly is its caller's line). ``libraries``: the imported packages
    (``"torch"``) whose frames are passed over too, as a layer's forward is called through ``nn.Module``'s."""
    roots = [os.path.dirname(os.path.abspath(__file__)) + os.sep]
    for name in libraries:
        where = getattr(sys.modules.get(name), "__file__", None)
        if where:
            roots.append(os.path.dirname(os.path.abspath(where)) + os.sep)
    level, frame = 2, sys._getframe(2)  # the frame that called the warning's function (stacklevel 2)
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(tuple(roots)):
        frame, level = frame.f_back, level + 1
    return level


@dataclass(frozen=True)
class Param:
    """One hyper-parameter of an estimator, declared once in its class's ``hyperparameters`` table.

    The table gives the constructor's keywords and defaults, the checks (``check_hyperparameters``),
    ``config()`` / ``spec()``, the ``reste train`` flags and the ``reste sweep`` axes.

    Args:
        name: the constructor keyword (and the attribute holding the current value).
        type: ``float``, ``int`` or ``str``.
        default: the value when the keyword is left out.
        help: a few words for ``reste train --help``.
        range: the valid numbers as an interval, ``"(0, inf)"`` or ``"[1, inf)"``, or ``""`` (or ``None``) for any.
        choices: the valid strings of a ``str`` parameter.
        scheduled: a schedule moves it during training (``set_progress``); its current value is
            saved in the ``state_dict``, while ``config()`` keeps the value it started from.
        flag: the ``reste train`` flag (as a dest, ``fda_n`` is ``--fda-n``) when it is not ``name``.
    """

    name: str
    type: type
    default: Any
    help: str = ""
    range: str = ""
    choices: tuple[str, ...] = ()
    scheduled: bool = False
    flag: str = ""

    def __post_init__(self) -> None:
        if self.type not in (float, int, str):
            raise ValueError(f"hyper-parameter {self.name!r}: type must be float, int or str, got {self.type!r}")
        if self.scheduled and self.type is str:  # a schedule's value is saved as a number in the state_dict
            raise ValueError(f"hyper-parameter {self.name!r}: a scheduled one must be a float or an int (its current "
                             "value is saved as a number); schedule a number and derive the string from it")
        if self.range is None:  # "any", as before the check
            object.__setattr__(self, "range", "")
        if not isinstance(self.range, str):
            hint = "; give the valid strings of a str as choices=(...)" if isinstance(self.range, (tuple, list)) else ""
            raise ValueError(f"hyper-parameter {self.name!r}: range (the 5th argument) must be a string such as "
                             f"'(0, inf)', got {self.range!r}{hint}")
        if not isinstance(self.choices, (tuple, list)) or not all(isinstance(c, str) for c in self.choices):
            raise ValueError(f"hyper-parameter {self.name!r}: choices must be a tuple of strings, got {self.choices!r}")
        if self.range:
            self.bounds()  # a malformed range fails here, where the class is written
        if not self.name.isidentifier() or (self.flag and not self.flag.isidentifier()):
            raise ValueError(f"hyper-parameter {self.name!r}: name and flag must be Python identifiers")

    @property
    def dest(self) -> str:
        """The ``reste train`` flag as an argparse dest (``o_end`` is ``--o-end``)."""
        return self.flag or self.name

    @property
    def option(self) -> str:
        return "--" + self.dest.replace("_", "-")

    def bounds(self) -> tuple[float, bool, float, bool]:
        """(low, low included, high, high included) of ``range``."""
        text = self.range.strip()
        low, sep, high = text[1:-1].partition(",")
        if not sep or text[0] not in "([" or text[-1] not in ")]":
            raise ValueError(f"hyper-parameter {self.name!r}: range must look like '(0, inf)', got {self.range!r}")
        return float(low), text[0] == "[", float(high), text[-1] == "]"

    def range_text(self) -> str:
        """``">= 1"``, ``"> 0"`` or ``"in (0, 1)"``; ``""`` without a range."""
        if not self.range:
            return ""
        low, low_in, high, high_in = self.bounds()
        if math.isinf(high) and not math.isinf(low):
            return f"{'>=' if low_in else '>'} {low:g}"
        if math.isinf(low) and not math.isinf(high):
            return f"{'<=' if high_in else '<'} {high:g}"
        return f"in {self.range.strip()}"

    def check(self, value: Any, label: str = "") -> Any:
        """``value`` in this parameter's type, or a ``ValueError`` naming ``label`` and the valid range."""
        label = label or self.name
        if self.type is str:
            if not isinstance(value, str) or (self.choices and value not in self.choices):
                raise ValueError(f"unknown {label} {value!r}; {did_you_mean(value, self.choices)}valid: "
                                 f"{', '.join(self.choices) or 'a string'}")
            return value
        rng = self.range_text()
        kind = "an integer" if self.type is int else "a number"
        number = real_number(value)  # a NumPy number or a 0-dim tensor as Python's own (review api #9, ownmodel #1)
        if number is None:
            raise ValueError(f"{label} must be {kind}{' ' + rng if rng else ''}, got {value!r}")
        value = number
        if not math.isfinite(value):
            where = f" ({label})" if label != self.name else ""
            raise ValueError(f"estimator option {self.name} must be a finite number{' ' + rng if rng else ''}"
                             f"{where}, got {value}")
        if self.type is int and int(value) != value:
            raise ValueError(f"{label} must be {kind}{' ' + rng if rng else ''}, got {value}")
        value = self.type(value)
        if self.range:
            low, low_in, high, high_in = self.bounds()
            if not ((low <= value if low_in else low < value) and (value <= high if high_in else value < high)):
                raise ValueError(f"{label} must be {rng}, got {value}")
        return value

    def default_text(self) -> str:
        return f"{self.default:g}" if isinstance(self.default, float) else str(self.default)


# The names of a run's settings (``TrainConfig``'s fields): a hyper-parameter cannot have one as its name, whatever
# its flag (``register_estimator`` refuses it): ``--grid NAME=...`` takes a setting's name for the setting, and the
# plots and tables name settings by it (review user3 #1). Written out here, as RESERVED_FLAGS is; tests/
# test_plugin_review.py compares it with TrainConfig.
SETTINGS: frozenset[str] = frozenset((
    "a32", "accumulate", "amp", "augment", "batch_size", "bop_gamma", "bop_threshold", "channels_last", "compile",
    "cuda_graphs", "data_device", "data_path", "dataset", "device", "download", "epochs", "estimator",
    "estimator_options", "eval_batch_size", "indicators", "keep_top", "lr", "model", "model_options", "momentum",
    "optimizer", "plugins", "preset", "save_every", "scaling", "seed", "sync_bn", "tensorboard", "threads", "warm_up",
    "weight_decay", "workers",
))


# The option strings and dests of `reste train` and `reste sweep` themselves (no estimator flags), with the dests
# the command line sets besides (``command``, the subcommand; ``func``, its function: review extend #1): a
# hyper-parameter cannot take one as its flag (``register_estimator`` refuses it). Written out here, not read from
# the parsers, so that registering an estimator imports no command-line code; tests/test_plugin_review.py compares
# it with them.
RESERVED_FLAGS: frozenset[str] = frozenset((
    "--a32", "--accumulate", "--amp", "--augment", "--auto-resume", "--batch-size", "--batch_size", "--batch_size_test",
    "--bop-gamma", "--bop-threshold",
    "--cal-ind", "--cal_ind", "--channels-last", "--compile", "--cuda-graphs", "--data-device", "--data-path",
    "--data_path", "--dataset", "--debug", "--device", "--devices", "--download", "--dry-run", "--epochs",
    "--estimator",
    "--eval-batch-size", "--force", "--grid", "--help", "--indicators", "--jobs", "--keep-top", "--lr", "--model",
    "--model-option", "--momentum", "--no-augment", "--no-cuda-graphs", "--no-progress", "--no-report", "--no-sync-bn",
    "--optimizer", "--out", "--plugin", "--preset", "--print-config", "--resume", "--runs-dir", "--save-every",
    "--scaling", "--seed", "--seeds", "--tensorboard", "--threads", "--warm-up", "--warm_up", "--weight-decay",
    "--weight_decay", "--workers",
    "-b", "-h", "-j", "-m",
    "a32", "accumulate", "amp", "augment", "auto_resume", "batch_size", "bop_gamma", "bop_threshold", "channels_last",
    "command", "compile", "cuda_graphs",
    "data_device", "data_path", "dataset", "debug", "device", "devices", "download", "dry_run", "epochs", "estimator",
    "eval_batch_size", "force", "func", "grid", "help", "indicators", "jobs", "keep_top", "lr", "model",
    "model_options", "momentum", "optimizer", "out", "plugins", "preset", "print_config", "progress", "report",
    "resume", "runs_dir",
    "save_every", "scaling", "seed", "seeds", "sync_bn", "tensorboard", "threads", "warm_up", "weight_decay", "workers",
))
