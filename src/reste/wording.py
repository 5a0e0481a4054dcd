"""How reste's lines word a number of things: a duration (``42s``, ``5m``, ``26h00m``) and a count with its noun
(``1 epoch``, ``3 epochs``)."""

from __future__ import annotations


def duration(seconds: float) -> str:
    """``42s`` under a minute, ``5m`` under an hour, else ``26h00m``: a 1000-epoch run reads ``26h00m``, not
    ``93612s``."""
    if seconds < 59.5:
        return f"{seconds:.0f}s"
    minutes = round(seconds / 60)
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m"


def count(n: int, noun: str) -> str:
    """``1 epoch``, ``2 epochs``, ``0 epochs`` (a regular noun: an ``s`` for any number but one)."""
    return f"{n} {noun}{'s' * (n != 1)}"
