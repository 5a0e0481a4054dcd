"""What the tests of users' own estimators share: an estimator the registry cannot build from a spec."""

from __future__ import annotations

import reste


class TableLess(reste.Estimator):
    """A clipped identity (g = 1 on [-width, width]) with a constructor of its own and no hyper-parameter table, so
    the registry cannot rebuild it from a spec and ``binarize`` wants an instance. Subclass it with a ``name`` of its
    own to register it."""

    name = "table_less_tests"

    def __init__(self, width: float = 1.0) -> None:
        super().__init__()
        self.width = width

    def _g(self, x, **p):
        return (x.abs() <= self.width).to(x.dtype)

    def _f(self, x, **p):
        return x.clamp(-self.width, self.width)
