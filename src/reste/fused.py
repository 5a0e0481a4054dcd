"""Fused CPU kernels for the hot elementwise work of binary training.

On a CPU every binarized activation costs a forward ``sign`` and a backward
``grad * g(x)``. Written as PyTorch ops, ReSTE's backward is about sixteen passes
over memory (abs, two step functions, log2, exp2, products); here it is one C
loop that reads ``x`` and ``grad`` once and writes the result once, vectorised
by the compiler. The same goes for the sign forward (one pass instead of five)
and the STE backward.

The kernels compute what the PyTorch expressions in :mod:`reste.estimators`
compute: the sign and the STE backward bit for bit, and ReSTE's power law to
float32 rounding (within a few units in the last place; log2 and exp2 are
evaluated with short polynomials), with the regions decided by the same float32
comparisons, so the zeros and the constant near 0 land on the same elements.
A NaN input gives a NaN sign and a NaN (ReSTE) or 0 (STE) gradient.

Large tensors are split over ``torch.get_num_threads()`` threads of torch's own
OpenMP runtime (where torch runs GNU OpenMP, as the Linux wheels do; elsewhere the
kernels run on one thread rather than start a second pool that would fight
torch's). They are used for float32 CPU tensors that are dense with matching strides
(contiguous or channels_last), outside ``torch.compile`` tracing (Inductor fuses
the PyTorch expressions itself) and outside double backward. Everything else,
and every machine without a C compiler, takes the PyTorch path. ``RESTE_FUSED=0``
in the environment, or ``set_enabled(False)``, turns the kernels off.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

from .native import F32, I32, I64, PTR, NativeLibrary

__all__ = ["available", "enabled", "error", "reste_backward", "set_enabled", "sign", "ste_backward"]

_SOURCE = r"""
#include <stdint.h>
#include <string.h>

static inline float as_f(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
static inline uint32_t as_u(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static inline float absf(float x) { return as_f(as_u(x) & 0x7fffffffu); }

/* ReSTE's power law w = inv_o * c^p for c in [m, t] (positive, normal) is 2^(p log2 c), computed in
   blocks of BLOCK elements in three short passes (log2, exp2, select and multiply): each pass is a
   short dependency chain, so the CPU overlaps many iterations of it (one long pass is about 1.5x
   slower).
   log2: c = 2^e * r with r in [sqrt(1/2), sqrt(2)) taken from the bits; log2(r) = z * P(z), z = r - 1,
   P of degree 8 fitted at Chebyshev nodes (error < 1.4e-8).
   exp2: y = k + f, k the nearest integer, |f| <= 1/2; 2^f by a degree-6 Chebyshev fit (relative
   error < 2.6e-9), 2^k put in the exponent bits. */
#define BLOCK 256

static inline float log2_pos(float c) {
    uint32_t b = as_u(c);
    int32_t e = (int32_t)(b - 0x3f3504f3u) >> 23;          /* 0x3f3504f3 = sqrt(1/2) */
    float z = as_f(b - ((uint32_t)e << 23)) - 1.0f;
    float q = 1.4426950037552788f + z * (-0.72134733327414691f + z * (0.480910612331234f +
              z * (-0.36070483806035292f + z * (0.28791824350826672f + z * (-0.23892004127401462f +
              z * (0.21567042727175798f + z * (-0.20742355133111878f + z * 0.1261500206583295f)))))));
    return (float)e + z * q;
}

static inline float exp2_mid(float y) {                    /* |y| <= 125 */
    int32_t k = (int32_t)(y + 128.5f) - 128;                /* y + 128.5 > 0: truncation rounds */
    float f = y - (float)k;
    float q = 0.9999999999595288f + f * (0.693147206721803f + f * (0.240226512137884f +
              f * (0.05550327190351017f + f * (0.009618025577148914f + f * (0.001340044170874983f +
              f * 0.00015469740243467884f)))));
    return q * as_f((uint32_t)(k + 127) << 23);
}

/* y = +1 where x >= 0 (-0 included), -1 where x < 0, NaN where x is NaN. */
static void sign_range(const float *x, float *y, int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; i++) {
        float v = x[i];
        float s = v < 0.0f ? -1.0f : 1.0f;
        y[i] = v == v ? s : v;
    }
}

/* STE: out = g * (|x| <= clip). */
static void ste_range(const float *x, const float *g, float *out, float clip, int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; i++) out[i] = g[i] * (absf(x[i]) <= clip ? 1.0f : 0.0f);
}

/* ReSTE: out = g * (c0 on |x| <= m; inv_o |x|^p on m < |x| <= t; 0 beyond t; NaN for NaN x). */
static void reste_range(const float *x, const float *g, float *out, float p, float inv_o, float t, float m,
                        float c0, int64_t lo, int64_t hi) {
    float w[BLOCK];
    for (int64_t s = lo; s < hi; s += BLOCK) {
        int64_t n = hi - s < BLOCK ? hi - s : BLOCK;
        const float *xs = x + s;
        for (int64_t i = 0; i < n; i++) {
            float a = absf(xs[i]);
            float c = a < m ? m : (a > t ? t : a);
            float y = p * log2_pos(c);
            w[i] = y < -125.0f ? -125.0f : (y > 125.0f ? 125.0f : y);
        }
        for (int64_t i = 0; i < n; i++) w[i] = inv_o * exp2_mid(w[i]);
        for (int64_t i = 0; i < n; i++) {
            float v = xs[i];
            float a = absf(v);
            float r = a <= m ? c0 : (a <= t ? w[i] : 0.0f);
            r = v == v ? r : v;
            out[s + i] = g[s + i] * r;
        }
    }
}

/* The entry points split [0, n) into chunks over `threads` OpenMP threads (built with -fopenmp: the
   runtime is torch's own, so its already running workers take the chunks); built without OpenMP the
   pragma is ignored and one thread does all. */
#define CHUNK 16384
#define SPLIT(n, threads, call)                                                                   \
    int64_t chunks = ((n) + CHUNK - 1) / CHUNK;                                                   \
    _Pragma("omp parallel for num_threads(threads) schedule(static) if(threads > 1 && chunks > 3)") \
    for (int64_t c = 0; c < chunks; c++) {                                                        \
        int64_t lo = c * CHUNK, hi = lo + CHUNK < (n) ? lo + CHUNK : (n);                         \
        call;                                                                                     \
    }

void reste_sign_f32(const float *x, float *y, int64_t n, int32_t threads) {
    SPLIT(n, threads, sign_range(x, y, lo, hi))
}

void reste_ste_bwd_f32(const float *x, const float *g, float *out, float clip, int64_t n, int32_t threads) {
    SPLIT(n, threads, ste_range(x, g, out, clip, lo, hi))
}

void reste_reste_bwd_f32(const float *x, const float *g, float *out, float p, float inv_o, float t, float m,
                         float c0, int64_t n, int32_t threads) {
    SPLIT(n, threads, reste_range(x, g, out, p, inv_o, t, m, c0, lo, hi))
}
"""


def _torch_runs_gnu_openmp() -> bool:
    """Whether this process has loaded a GNU OpenMP runtime named ``libgomp.so.1`` (torch's, on Linux
    wheels). A kernel built with ``-fopenmp`` then binds to that same runtime and shares its threads;
    anywhere else it would start a second thread pool fighting torch's, so the kernels stay serial."""
    if not torch.__config__.parallel_info().count("OpenMP"):
        return False
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as f:
            return any(line.rstrip().endswith("/libgomp.so.1") for line in f)
    except OSError:
        return False


_OPENMP = _torch_runs_gnu_openmp()
_FAST = ("-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math")

_LIB = NativeLibrary("fused", _SOURCE, {
    "reste_sign_f32": ([PTR, PTR, I64, I32], None),
    "reste_ste_bwd_f32": ([PTR, PTR, PTR, F32, I64, I32], None),
    "reste_reste_bwd_f32": ([PTR, PTR, PTR, F32, F32, F32, F32, F32, I64, I32], None),
}, flag_sets=((*_FAST, "-fopenmp"), _FAST, ("-O3",)) if _OPENMP else (_FAST, ("-O3",)))
_ENABLED: list[bool] = []


def enabled() -> bool:
    """Whether the kernels may be used (``set_enabled``, else ``RESTE_FUSED`` != 0/off/false/no)."""
    if _ENABLED:
        return _ENABLED[0]
    return os.environ.get("RESTE_FUSED", "1").strip().lower() not in ("0", "off", "false", "no")


def set_enabled(flag: bool | None) -> None:
    """Turn the kernels on or off for this process; ``None`` goes back to ``RESTE_FUSED``."""
    _ENABLED.clear()
    if flag is not None:
        _ENABLED.append(bool(flag))


def available() -> bool:
    """Whether the kernels are built (compiling them now if needed)."""
    return _LIB.get() is not None


def error() -> str | None:
    """Why the kernels are unavailable (``None`` when they build)."""
    return _LIB.error()


def _lib_for(x: Tensor, *others: Tensor):
    """The library when ``x`` (and ``others``, same layout) can go through the kernels, else ``None``."""
    if x.device.type != "cpu" or x.dtype != torch.float32 or not enabled():
        return None
    if not (x.is_contiguous() or (x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last))):
        return None
    for t in others:
        if t.device.type != "cpu" or t.dtype != torch.float32 or t.shape != x.shape or t.stride() != x.stride():
            return None
    if torch.compiler.is_compiling():
        return None
    return _LIB.get()


def _threads() -> int:
    return torch.get_num_threads() if _OPENMP else 1


def sign(x: Tensor) -> Tensor | None:
    """``sign`` with sign(0) = +1 by the kernel, or ``None`` where it does not apply."""
    if x.requires_grad and torch.is_grad_enabled():
        return None
    lib = _lib_for(x)
    if lib is None:
        return None
    y = torch.empty_like(x)
    lib.reste_sign_f32(x.data_ptr(), y.data_ptr(), x.numel(), _threads())
    return y


def _backward_ready(x: Tensor, grad: Tensor):
    if torch.is_grad_enabled() and (x.requires_grad or grad.requires_grad):
        return None  # double backward: keep the differentiable PyTorch expression
    return _lib_for(x, grad)


def ste_backward(x: Tensor, grad: Tensor, clip: float) -> Tensor | None:
    """``grad * (abs(x) <= clip)`` by the kernel, or ``None`` where it does not apply."""
    lib = _backward_ready(x, grad)
    if lib is None:
        return None
    out = torch.empty_like(x)
    lib.reste_ste_bwd_f32(x.data_ptr(), grad.data_ptr(), out.data_ptr(), clip, x.numel(), _threads())
    return out


def reste_backward(x: Tensor, grad: Tensor, o: float, t: float, m: float) -> Tensor | None:
    """``grad * reste_g(x, o, t, m)`` by the kernel, or ``None`` where it does not apply."""
    lib = _backward_ready(x, grad)
    if lib is None:
        return None
    out = torch.empty_like(x)
    p, inv_o, c0 = (1.0 - o) / o, 1.0 / o, m ** (1.0 / o) / m
    lib.reste_reste_bwd_f32(x.data_ptr(), grad.data_ptr(), out.data_ptr(), p, inv_o, t, m, c0, x.numel(), _threads())
    return out
