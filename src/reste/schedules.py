"""Schedules over training progress.

Everything here is a pure function of ``(epoch, epochs)``: the estimators and the
training engine call them once per epoch, so a resumed run recomputes exactly the
values an uninterrupted run would have used.

* ``ramp(kind, start, end, epoch, epochs)``: the estimator hyper-parameter ramps
  (``"cosine"`` is the ReSTE paper's progressive schedule, ``"linear"``,
  ``"constant"``, and ``"log"``, the geometric ramp of IR-Net's EDE).
* ``learning_rate(...)``: linear warm-up followed by cosine decay to zero.
"""

from __future__ import annotations

import math
import numbers

RAMPS = ("cosine", "linear", "constant", "log")


def check_progress(epoch: float, epochs: int) -> None:
    """Raise ValueError unless 0 <= epoch and 0 < epochs, both finite numbers (a NaN would make every schedule
    value, and so every gradient, NaN)."""
    for name, value in (("epochs", epochs), ("epoch", epoch)):
        if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:  # a 0-d tensor or NumPy scalar
            value = value.item()
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ValueError(f"{name} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise ValueError(f"{name} must be finite, got {value}")
    if epochs <= 0:
        raise ValueError(f"epochs must be positive, got {epochs}")
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0, got {epoch}")


def ramp(kind: str, start: float, end: float, epoch: float, epochs: int) -> float:
    """Value of a ramp from ``start`` (epoch 0) towards ``end`` (epoch ``epochs``).

    ``cosine``:   start + (1 - cos(pi/2 * e/E)) * (end - start)   (ReSTE, slow start)
    ``linear``:   start + e/E * (end - start)
    ``log``:      start * (end/start) ** (e/E)                     (IR-Net's EDE t)
    ``constant``: start

    The ramp is evaluated at e/E, so like the paper it never quite reaches ``end``
    within ``epochs`` epochs (ReSTE: E = 1000 gives o(999) = 2.99686 for end 3). Past ``epochs`` (a
    training loop that runs longer than it said) it holds ``end``.
    """
    check_progress(epoch, epochs)
    r = min(epoch / epochs, 1.0)
    if kind == "cosine":
        return start + (1.0 - math.cos(math.pi / 2 * r)) * (end - start)
    if kind == "linear":
        return start + r * (end - start)
    if kind == "log":
        if start <= 0 or end <= 0:
            raise ValueError(f"a log ramp needs positive ends, got {start} and {end}")
        return start * (end / start) ** r
    if kind == "constant":
        return start
    raise ValueError(f"unknown schedule {kind!r}; valid: {', '.join(RAMPS)}")


def learning_rate(base_lr: float, epoch: int, epochs: int, warm_up: int = 0) -> float:
    """Learning rate for ``epoch`` (0-based), constant within an epoch.

    ``warm_up`` epochs of linear warm-up, lr * (e + 1) / warm_up (warm_up = 5 gives
    0.02, 0.04, 0.06, 0.08, 0.10 for lr 0.1), then a cosine decay over the remaining
    epochs that starts at ``base_lr`` and reaches 0 after the last epoch:
    lr * (1 + cos(pi * k / K)) / 2 with k = e - warm_up and K = epochs - warm_up. Past ``epochs`` (a loop that
    runs longer than it said) it stays at 0, as the estimators' ramps hold their end (the cosine came back up to
    ``base_lr``: review api #4).
    """
    check_progress(epoch, epochs)
    if base_lr <= 0:
        raise ValueError(f"lr must be positive, got {base_lr}")
    if isinstance(warm_up, bool) or not isinstance(warm_up, numbers.Integral) or not 0 <= warm_up < epochs:
        raise ValueError(f"warm_up must be an integer in [0, epochs), got {warm_up!r} for {epochs} epochs")
    if epoch < warm_up:
        return base_lr * (epoch + 1) / warm_up
    return 0.5 * base_lr * (1.0 + math.cos(math.pi * min(epoch - warm_up, epochs - warm_up) / (epochs - warm_up)))


def length_change(trained: int, epochs: int, done: int, what: str = "the learning rate and the estimators' "
                  "schedules (ReSTE's o, say)") -> str:
    """What changes when a run that trained on a ``trained``-epoch schedule continues on an ``epochs``-epoch one
    after ``done`` finished epochs (a resume's note; the Lightning callback's warning, whose ``what`` is the
    estimators' schedules alone: the learning rate is the user's scheduler's)."""
    return (f"the run trained on a {trained}-epoch schedule and continues on a {epochs}-epoch one: from epoch "
            f"{done + 1} {what} stand where a {epochs}-epoch run puts them, not where the {trained}-epoch run left "
            "them")
