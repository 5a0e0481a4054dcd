"""DSQ's constants, derived from its hyper-parameters: one definition for the estimator
(:mod:`reste.estimators`) and its Triton kernel (:mod:`reste.triton_kernels`), so both compute
the same numbers and neither imports the other."""

from __future__ import annotations

import math


def dsq_consts(alpha: float, lower: float, upper: float) -> tuple[float, float, float]:
    """``(m, k, s)`` of DSQ (1 bit on [lower, upper]): m = (l + u)/2, k = ln(2/alpha - 1)/(u - l),
    s = 1/(1 - alpha)."""
    delta = upper - lower
    ratio = 2.0 / alpha - 1.0
    # (an alpha below 2/DBL_MAX, a subnormal, makes 2/alpha inf, k inf and every g NaN: there ln(2 - alpha) - ln(alpha),
    # the same number, stays finite; review numerics1 #3)
    log_ratio = math.log(ratio) if math.isfinite(ratio) else math.log(2.0 - alpha) - math.log(alpha)
    return (lower + upper) / 2.0, log_ratio / delta, 1.0 / (1.0 - alpha)
