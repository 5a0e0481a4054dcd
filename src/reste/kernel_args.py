"""The scalar arguments of the fused GPU kernels, from an estimator's ``params()``.

Both GPU paths take them: the Triton kernels (:mod:`reste.triton_kernels`) and the compiled
extension (:mod:`reste.cuda_ext`). Each kernel receives five float32 scalars ``s0..s4`` and
one integer ``count`` per estimator, the constants of its ``g`` computed here in Python
(float64) exactly as the estimator's PyTorch expression computes them, so both round the same
float64 numbers to float32. This module imports neither Triton nor the extension.
"""

from __future__ import annotations

import math
import struct
from typing import Any

import torch
from torch import Tensor

from ._dsq import dsq_consts

__all__ = ["KINDS", "MAX_GROUPS", "autocast_dtype", "f32", "kernel_scalars"]

# every estimator a fused kernel computes, in the order the kernels number them
KINDS = ("ste", "reste", "approx_sign", "sign_swish", "ede", "rbnn", "dsq", "fda")
#: the most groups (a binary weight's scales: 1 per layer, or one per output channel) the GPU kernels take: one per
#: program row of the grid, CUDA's limit on a grid's second dimension
MAX_GROUPS = 65535


def f32(v: float) -> float:
    """A Python float as a kernel receives it (rounded to float32, to nearest even)."""
    return struct.unpack("f", struct.pack("f", v))[0]


def kernel_scalars(kind: str, params: dict[str, Any]) -> tuple[tuple[float, ...], int, Tensor | None]:
    """(s0..s4, count, o tensor or None) of ``kind``'s kernel from its estimator's ``params()``.

    ReSTE's ``o`` may be a one-element tensor on the device: it is then returned as the third item
    (the Triton kernel reads it there) and s0..s2 are left 0. FDA's ``w`` is passed as its float32
    value and the rest (``w - f32(w)``, exact in float64), so a kernel can rebuild it in float64: the C++
    extension takes the rest as a double, whole; Triton rounds it to float32 (w to about 48 bits).
    """
    z = 0.0
    if kind == "ste":
        return (float(params["clip"]), z, z, z, z), 0, None
    if kind == "reste":
        o, t, m = params["o"], float(params["t"]), float(params["m"])
        if isinstance(o, Tensor):
            return (z, z, z, t, m), 0, o
        o = float(o)
        return ((1.0 - o) / o, 1.0 / o, 1.0 - 1.0 / o, t, m), 0, None
    if kind == "approx_sign":
        return (z, z, z, z, z), 0, None
    if kind == "sign_swish":
        beta = float(params["beta"])
        return (beta, 2.0 * beta, z, z, z), 0, None
    if kind == "ede":
        t, k = float(params["t"]), float(params["k"])
        return (t, k * t, z, z, z), 0, None
    if kind == "rbnn":
        t, k = float(params["t"]), float(params["k"])
        return (k * (math.sqrt(2.0) * t), k * t * t, z, z, z), 0, None
    if kind == "dsq":
        lower, upper = float(params.get("lower", -1.0)), float(params.get("upper", 1.0))
        mid, k, s = dsq_consts(params["alpha"], lower, upper)
        return (float(mid), float(k), float(s * k), lower, upper), 0, None
    if kind == "fda":
        w = float(params["w"])
        w_hi = f32(w)
        return (w_hi, w - w_hi, 4.0 * w / math.pi, z, z), int(params["n"]), None
    raise ValueError(f"no fused kernel for estimator {kind!r}; valid: {', '.join(KINDS)}")


def autocast_dtype(w: Tensor) -> torch.dtype:
    """The dtype a binary layer's conv or linear will use the weight in: autocast's 16-bit dtype when
    autocast is on for w's device and w is float32 (the kernel then writes it directly, rounding once as
    autocast's cast would, and saves that cast and its backward), else w's own."""
    device = "cuda" if w.is_cuda else w.device.type  # (is_cuda: no device object built on the hot path)
    if w.dtype == torch.float32 and torch.is_autocast_enabled(device):
        dtype = torch.get_autocast_dtype(device)
        if dtype in (torch.bfloat16, torch.float16):
            return dtype
    return w.dtype
