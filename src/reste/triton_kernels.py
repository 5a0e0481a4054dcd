"""Fused GPU kernels (Triton) for sign and every estimator's backward.

On a GPU the PyTorch expressions of :mod:`reste.estimators` are chains of small
elementwise kernels: sign with its NaN handling is five launches, ReSTE's backward
about sixteen, each a full pass over memory. Here each is one Triton kernel that
reads ``x`` (and ``grad``) once and writes the result once:

* ``sign(x)``: +1 where x >= 0 (-0 included), -1 where x < 0, NaN where x is NaN;
* ``backward(kind, x, grad, **params)``: ``grad * g(x)`` for ``kind`` one of
  :data:`KINDS` (every registered estimator), g as in :mod:`reste.estimators`;
* ``scaled_sign(w, groups)`` / ``scaled_sign_backward(...)``: a binary weight
  sign(W) * alpha with alpha = mean(abs(W)) per group (one group: the layer's
  scale; one per output channel) in two launches forward and two backward,
  where the PyTorch-op path launches one kernel per op, several each way.

They compute what the PyTorch expressions compute, in float32 (16-bit inputs are
loaded, computed in float32 and rounded once when stored, as the PyTorch path's
``(g * grad).to(dtype)``), with the same float32 comparisons deciding the regions,
so the zeros, the clipping and ReSTE's constant near 0 land on the same elements.
Compiled, Triton may contract a * b + c into one fused multiply-add (the C++ extension is
built with ``--fmad=false``), so a value may differ from the PyTorch path's in its last bits.
Compiled for a GPU, the transcendental functions (log2, exp2, exp, cos) are
CUDA's libdevice ones, as accurate as the ``torch`` CUDA kernels; under Triton's
interpreter (``TRITON_INTERPRET=1``, how the tests run them on the CPU) they are
Triton's portable ``tl.*`` functions, evaluated by NumPy. Triton compiles libdevice
flushing subnormals (``.ftz``): where exp or cos gives a number below 1.2e-38 (EDE's
exp(-2|z|) for |z| in about (43.7, 51.9)) the kernel's is 0, a gradient of that size
0 where PyTorch's is not (not checked on a GPU: review compat4, suggestion 3).

Scalars (o, t, the interval, every other hyper-parameter) are kernel arguments,
never compile-time constants: moving a schedule neither recompiles nor synchronises
with the host. Floats are never specialised by Triton; the one integer (FDA's n)
is marked ``do_not_specialize``. ReSTE's ``o`` may also be a one-element tensor on
the device (the kernel then reads it, with no ``.item()``).

The launchers here run on whatever device the tensors are on (the interpreter
takes CPU tensors); which tensors take them is decided in
:mod:`reste.triton_dispatch`. Importing this module imports Triton.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .kernel_args import KINDS, MAX_GROUPS, kernel_scalars

try:  # CUDA's accurate math library; the interpreter has no implementation of it
    from triton.language.extra import libdevice
except ImportError:  # pragma: no cover - every Triton 3 ships it
    libdevice = None

__all__ = ["DTYPES", "INTERPRETED", "KINDS", "backward", "backward_trusted", "scaled_sign", "scaled_sign_backward",
           "scaled_sign_backward_trusted", "scaled_sign_trusted", "sign", "sign_trusted"]

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
BLOCK = 1024  # elements per program (8 per thread of 4 warps)
_REDUCE_BLOCK = 2048  # elements per block of the weight-scale reductions
_MAX_PARTIALS = 1024  # partial sums per group at most (each program of the second pass loads them all)
PRECISE_PTX = tl.constexpr(2)  # the kernels' PRECISE on an NVIDIA GPU (see _PRECISE)


# ------------------------------------------------------------------ math helpers


@triton.jit
def _log2(x, PRECISE: tl.constexpr):
    if PRECISE:
        return libdevice.log2(x)
    else:
        return tl.log2(x)


@triton.jit
def _exp2(x, PRECISE: tl.constexpr):
    if PRECISE:
        return libdevice.exp2(x)
    else:
        return tl.exp2(x)


@triton.jit
def _exp(x, PRECISE: tl.constexpr):
    if PRECISE:
        return libdevice.exp(x)
    else:
        return tl.exp(x)


@triton.jit
def _cos(x, PRECISE: tl.constexpr):
    if PRECISE:
        return libdevice.cos(x)
    else:
        return tl.cos(x)


@triton.jit
def _div(a, b, PRECISE: tl.constexpr):
    """a / b correctly rounded, as PyTorch's and the C++ extension's: a GPU's plain float32 ``/`` in Triton
    is its approximate division (up to 2 ulp off); the interpreter's is NumPy's, exact. The PTX instruction is
    written out: Triton 3.4 and 3.5 (torch 2.8, 2.9) compile ``tl.math.div_rn`` to ``div.rn.ftz.f32``, which
    flushes subnormals to 0 (SignSwish's q for abs(beta x) in (87.3, 88.7]), where PyTorch keeps them."""
    if PRECISE == PRECISE_PTX:
        return tl.inline_asm_elementwise("div.rn.f32 $0, $1, $2;", "=r,r,r", [a, b], dtype=tl.float32,
                                         is_pure=True, pack=1)
    elif PRECISE:
        return tl.math.div_rn(a, b)  # (not an NVIDIA GPU: AMD's, whose Triton takes no PTX)
    else:
        return a / b


@triton.jit
def _load_f32(ptr, offs, mask):
    """Elements of ``ptr`` as float32 (exact). bfloat16 is widened by its bits (the upper half of a float32),
    which is also exact for its subnormals under the interpreter, whose own conversion flushes them."""
    if ptr.dtype.element_ty == tl.bfloat16:
        bits = tl.load(ptr.to(tl.pointer_type(tl.uint16)) + offs, mask=mask, other=0)
        return (bits.to(tl.uint32) << 16).to(tl.float32, bitcast=True)
    else:
        return tl.load(ptr + offs, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _store_f32(ptr, offs, value, mask):
    """Store float32 ``value`` in ``ptr``'s dtype, rounded to nearest even (bfloat16 by its bits, as
    PyTorch does, NaN as 0x7fc0; subnormal results included)."""
    if ptr.dtype.element_ty == tl.bfloat16:
        bits = value.to(tl.uint32, bitcast=True)
        rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        tl.store(ptr.to(tl.pointer_type(tl.uint16)) + offs, tl.where(value != value, 0x7FC0, rounded).to(tl.uint16),
                 mask=mask)
    else:
        tl.store(ptr + offs, value.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def _le(a, bound):
    """1.0 where a <= bound, else 0.0 (NaN: 0.0), as the PyTorch path's float step."""
    return tl.where(a <= bound, 1.0, 0.0)


@triton.jit
def _clamp_min(v, lo):
    """max(v, lo) with NaN kept, as ``torch.clamp(min=)``."""
    return tl.maximum(v, lo, propagate_nan=tl.PropagateNan.ALL)


# ------------------------------------------------------------------- g(x) per kind


@triton.jit
def _reste_g(x, p, inv_o, c1, t, m, o_ptr, O_PTR: tl.constexpr, PRECISE: tl.constexpr):
    """g = max(a, m)^p ((a <= m)(1 - 1/o) + 1/o)(a <= t), a = abs(x), p = (1 - o)/o; at o = 1 the
    step (a <= t), as ``reste_g``."""
    if O_PTR:  # o read on the device: the constants in float64, rounded once, as Python computes them
        o = tl.load(o_ptr).to(tl.float64)
        p = ((1.0 - o) / o).to(tl.float32)
        inv_o = (1.0 / o).to(tl.float32)
        c1 = (1.0 - 1.0 / o).to(tl.float32)
    a = tl.abs(x)
    inside_t = _le(a, t)
    factor = (_le(a, m) * c1 + inv_o) * inside_t
    w = _exp2(p * _log2(_clamp_min(a, m), PRECISE), PRECISE) * factor
    return tl.where(p == 0.0, inside_t, w)


_FLOAT32_MAX = tl.constexpr(3.4028234663852886e38)


@triton.jit
def _finite(u):
    """u with +-inf replaced by the largest float32 of its sign; NaN kept."""
    return tl.where(u > _FLOAT32_MAX, _FLOAT32_MAX, tl.where(u < -_FLOAT32_MAX, -_FLOAT32_MAX, u))


@triton.jit
def _sign_swish_g(x, beta, two_beta, PRECISE: tl.constexpr):
    """g = 2 beta q (1 - q)(2 - v (1 - 2 q)), v = abs(beta x) clamped to the finite floats (g = 0 at +-inf),
    q = sigmoid(-v): g is even, and this form has no 1 - sigmoid(v) that cancels (see estimators.sign_swish_g)."""
    v = _finite(tl.abs(beta * x))
    q = _div(1.0, 1.0 + _exp(v, PRECISE), PRECISE)
    return two_beta * q * (1.0 - q) * (2.0 - v * (1.0 - 2.0 * q))


@triton.jit
def _tanh_bump(z, scale, PRECISE: tl.constexpr):
    """scale (1 - tanh(z)^2), as scale 4e / (1 + e)^2 with e = exp(-2 abs(z)): no cancellation where tanh is near
    1 (estimators._tanh_bump)."""
    e = _exp(-2.0 * tl.abs(z), PRECISE)
    return scale * _div(4.0 * e, (1.0 + e) * (1.0 + e), PRECISE)


@triton.jit
def _fda_g(x, w_hi, w_lo, scale, n, PRECISE: tl.constexpr):
    """g = scale sum_{i<=n} cos((2i+1) w x) (abs(x) <= 1); (2i+1) w in float64 (w = w_hi + w_lo), rounded once to
    float32. Triton takes a Python float argument as float32, so w_lo is itself rounded: w is rebuilt to about 48
    bits, not Python's 53 (the C++ extension gets it whole). The coefficient can then differ from Python's only
    where (2i+1) w lies within 2^-48 of a float32 rounding boundary (review gpucode, suggestion 3)."""
    w64 = tl.cast(w_hi, tl.float64) + tl.cast(w_lo, tl.float64)
    c = tl.where(x > 1.0, 1.0, tl.where(x < -1.0, -1.0, x))  # finite outside [-1, 1], where g is 0; NaN kept
    acc = tl.zeros_like(x)
    for i in range(n + 1):
        coef = ((2 * i + 1) * w64).to(tl.float32)
        acc += _cos(coef * c, PRECISE)
    return acc * scale * _le(tl.abs(x), 1.0)


@triton.jit
def _g(x, s0, s1, s2, s3, s4, count, o_ptr, KIND: tl.constexpr, O_PTR: tl.constexpr, PRECISE: tl.constexpr):
    """g(x) of estimator KIND (an index into KINDS) in float32; the scalars per kind as ``_scalars`` sets them."""
    if KIND == 0:  # ste: (a <= clip)
        g = _le(tl.abs(x), s0)
    elif KIND == 1:  # reste
        g = _reste_g(x, s0, s1, s2, s3, s4, o_ptr, O_PTR, PRECISE)
    elif KIND == 2:  # approx_sign: max(2 - 2a, 0)
        g = _clamp_min(2.0 - 2.0 * tl.abs(x), 0.0)
    elif KIND == 3:  # sign_swish
        g = _sign_swish_g(x, s0, s1, PRECISE)
    elif KIND == 4:  # ede: k t (1 - tanh(t x)^2)
        g = _tanh_bump(s0 * x, s1, PRECISE)
    elif KIND == 5:  # rbnn: max(k sqrt(2) t - k t^2 a, 0)
        g = _clamp_min(s0 - s1 * tl.abs(x), 0.0)
    elif KIND == 6:  # dsq: s k (1 - tanh(k (x - mid))^2) (l <= x <= u)
        g = _tanh_bump(s1 * (x - s0), s2, PRECISE) * tl.where((x >= s3) & (x <= s4), 1.0, 0.0)
    else:  # fda
        g = _fda_g(x, s0, s1, s2, count, PRECISE)
    return g


# ----------------------------------------------------------------------- kernels


@triton.jit
def _offsets(n, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    return offs, offs < n


@triton.jit
def _sign_kernel(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    offs, mask = _offsets(n, BLOCK)
    x = _load_f32(x_ptr, offs, mask)
    y = tl.where(x < 0.0, -1.0, 1.0)
    y = tl.where(x != x, x, y)
    _store_f32(y_ptr, offs, y, mask)


@triton.jit(do_not_specialize=["count"])
def _backward_kernel(x_ptr, grad_ptr, out_ptr, n, s0, s1, s2, s3, s4, count, o_ptr,
                     KIND: tl.constexpr, O_PTR: tl.constexpr, PRECISE: tl.constexpr, BLOCK: tl.constexpr):
    """out = grad * g(x), computed in float32; the scalars s0..s4 and count per KIND (see _scalars)."""
    offs, mask = _offsets(n, BLOCK)
    x = _load_f32(x_ptr, offs, mask)
    grad = _load_f32(grad_ptr, offs, mask)
    g = _g(x, s0, s1, s2, s3, s4, count, o_ptr, KIND, O_PTR, PRECISE)
    _store_f32(out_ptr, offs, g * grad, mask)


@triton.jit
def _group_total(partials_ptr, group, nblocks, NB: tl.constexpr):
    """The sum of a group's ``nblocks`` partial sums, always in the same order (deterministic)."""
    i = tl.arange(0, NB)
    return tl.sum(tl.load(partials_ptr + group * nblocks + i, mask=i < nblocks, other=0.0), axis=0)


@triton.jit
def _chunk(group_size, chunks, c, BLOCK: tl.constexpr):
    """(offsets in w's memory, mask, group) of block ``c`` of the ``chunks`` consecutive blocks that program
    program_id(0) of group program_id(1) covers (``chunks=1, c=0``: block program_id(0) of the group)."""
    group = tl.program_id(1).to(tl.int64)
    offs = (tl.program_id(0).to(tl.int64) * chunks + c) * BLOCK + tl.arange(0, BLOCK)
    return group * group_size + offs, offs < group_size, group


@triton.jit
def _abs_partial_kernel(w_ptr, partials_ptr, group_size, chunks, BLOCK: tl.constexpr):
    """partials[group, program] = sum(abs(w)) over ``chunks`` consecutive blocks of a group (in one order)."""
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for c in range(0, chunks):
        offs, mask, group = _chunk(group_size, chunks, c, BLOCK)
        acc += tl.abs(_load_f32(w_ptr, offs, mask))
    group = tl.program_id(1).to(tl.int64)
    tl.store(partials_ptr + group * tl.num_programs(0) + tl.program_id(0), tl.sum(acc, axis=0))


@triton.jit
def _scaled_sign_kernel(w_ptr, partials_ptr, y_ptr, group_size, nblocks,
                        PRECISE: tl.constexpr, NB: tl.constexpr, BLOCK: tl.constexpr):
    """y = sign(w) alpha (sign(0) = +1, NaN kept), alpha = sum(abs(w)) / size of w's group."""
    offs, mask, group = _chunk(group_size, 1, 0, BLOCK)
    w = _load_f32(w_ptr, offs, mask)
    alpha = _div(_group_total(partials_ptr, group, nblocks, NB), group_size * 1.0, PRECISE)
    s = tl.where(w < 0.0, -1.0, 1.0)
    s = tl.where(w != w, w, s)
    _store_f32(y_ptr, offs, s * alpha, mask)


@triton.jit
def _dot_sign_partial_kernel(w_ptr, grad_ptr, partials_ptr, group_size, chunks, BLOCK: tl.constexpr):
    """partials[group, program] = sum(grad sign(w)) over ``chunks`` consecutive blocks of a group (sign(0) = +1,
    NaN kept)."""
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for c in range(0, chunks):
        offs, mask, group = _chunk(group_size, chunks, c, BLOCK)
        w = _load_f32(w_ptr, offs, mask)
        s = tl.where(w < 0.0, -1.0, 1.0)
        s = tl.where(w != w, w, s)
        acc += _load_f32(grad_ptr, offs, mask) * s
    group = tl.program_id(1).to(tl.int64)
    tl.store(partials_ptr + group * tl.num_programs(0) + tl.program_id(0), tl.sum(acc, axis=0))


@triton.jit(do_not_specialize=["count"])
def _scaled_sign_backward_kernel(w_ptr, grad_ptr, abs_ptr, dot_ptr, out_ptr, group_size, nblocks,
                                 s0, s1, s2, s3, s4, count, o_ptr,
                                 KIND: tl.constexpr, O_PTR: tl.constexpr, PRECISE: tl.constexpr,
                                 NB: tl.constexpr, BLOCK: tl.constexpr):
    """dW = g(w) (grad alpha) + sgn(w) d_alpha / size: the estimator's backward through sign(w) alpha
    plus that of alpha = mean(abs(w)) (d_alpha = sum(grad sign(w)); sgn(0) = 0, ``abs``'s derivative)."""
    offs, mask, group = _chunk(group_size, 1, 0, BLOCK)
    w = _load_f32(w_ptr, offs, mask)
    grad = _load_f32(grad_ptr, offs, mask)
    size = group_size * 1.0
    alpha = _div(_group_total(abs_ptr, group, nblocks, NB), size, PRECISE)
    d_alpha = _div(_group_total(dot_ptr, group, nblocks, NB), size, PRECISE)
    g = _g(w, s0, s1, s2, s3, s4, count, o_ptr, KIND, O_PTR, PRECISE)
    sgn = tl.where(w > 0.0, 1.0, tl.where(w < 0.0, -1.0, 0.0))
    sgn = tl.where(w != w, w, sgn)
    _store_f32(out_ptr, offs, g * (grad * alpha) + sgn * d_alpha, mask)


INTERPRETED = not isinstance(_sign_kernel, triton.runtime.JITFunction)
# the kernels' PRECISE: 0 under the interpreter (NumPy's math, exact division), else libdevice's math, and the
# division as NVIDIA's PTX div.rn.f32 (PRECISE_PTX) where PyTorch is built for CUDA, tl.math.div_rn elsewhere (ROCm)
_PRECISE = 0 if INTERPRETED or libdevice is None else 1 if torch.version.hip else PRECISE_PTX.value


# --------------------------------------------------------------------- launchers


def _scalars(kind: str, params: dict) -> tuple[tuple[float, ...], int, Tensor | None]:
    """:func:`reste.kernel_args.kernel_scalars`, every scalar a Python float (an int would make Triton
    compile an integer-typed variant of the kernel)."""
    return kernel_scalars(kind, params)


def _dense(x: Tensor) -> bool:
    """Whether ``x``'s elements fill its memory in one block with dim 0 outermost (contiguous or channels_last):
    what the weight-scale kernels, whose groups are consecutive blocks of dim 0, take as it is."""
    if x.is_contiguous():
        return True
    if x.dim() == 4:
        return x.is_contiguous(memory_format=torch.channels_last)
    if x.dim() == 5:
        return x.is_contiguous(memory_format=torch.channels_last_3d)
    return False


def _fills_memory(x: Tensor) -> bool:
    """Whether ``x``'s elements fill its memory in one block in any order of its dimensions (a transposed Linear
    input, a Conv1d activation stored (N, L, C)): what the elementwise kernels take as it is, as the compiled
    extension does (review kern1, suggestion 2: a copy before each launch). The common layouts are asked first,
    in C++."""
    if _dense(x):
        return True
    expected = 1
    for stride, size in sorted((st, sz) for sz, st in zip(x.shape, x.stride()) if sz != 1):
        if stride != expected:  # (innermost first: each stride the product of the sizes inside it)
            return False
        expected *= size
    return True


def _like(x: Tensor, other: Tensor) -> Tensor:
    """``other`` with ``x``'s strides (a copy only when they differ), so both are walked in one order."""
    if other.stride() == x.stride():
        return other
    return torch.empty_like(x, dtype=other.dtype).copy_(other)


def _check(who: str, x: Tensor, grad: Tensor | None = None, groups: int | None = None) -> None:
    """Refuse, as the compiled extension does, what the kernels would narrow (float64: a tiny negative value's sign),
    read past (a smaller grad, whose strides may still match) or leave unwritten (groups that do not divide the
    weight). The dispatcher never passes these; a direct caller may (review triton #1, #2)."""
    if x.dtype not in DTYPES:
        raise TypeError(f"triton_kernels.{who} takes float32, bfloat16 or float16 tensors, got {x.dtype}")
    if grad is not None and (grad.shape != x.shape or grad.device != x.device or grad.dtype not in DTYPES):
        raise ValueError(f"triton_kernels.{who}: grad must be a float tensor of shape {tuple(x.shape)} on {x.device},"
                         f" got {tuple(grad.shape)} of {grad.dtype} on {grad.device}")
    if groups is not None and (isinstance(groups, bool) or not isinstance(groups, int) or not 1 <= groups <= MAX_GROUPS
                               or x.numel() % groups):
        raise ValueError(f"triton_kernels.{who}: groups must divide the weight's {x.numel()} elements (1 to "
                         f"{MAX_GROUPS}), got {groups!r}")


def sign(x: Tensor) -> Tensor:
    """sign(x) with sign(0) = +1 and NaN kept, one pass; any float dtype of :data:`DTYPES`, any layout."""
    _check("sign", x)
    return sign_trusted(x)


def sign_trusted(x: Tensor) -> Tensor:
    """:func:`sign` without its checks of the input, for :mod:`reste.triton_dispatch`, which made them already (each
    ``*_trusted`` entry saves about a microsecond per launch on the host-bound eager GPU step)."""
    if not _fills_memory(x):
        x = x.contiguous()
    y = torch.empty_like(x)
    n = x.numel()
    if n:
        _sign_kernel[(triton.cdiv(n, BLOCK),)](x, y, n, BLOCK=BLOCK)
    return y


def backward(kind: str, x: Tensor, grad: Tensor, **params) -> Tensor:
    """``grad * g(x)`` of estimator ``kind`` with its ``params()``, one pass, in x's dtype and layout."""
    _check("backward", x, grad)
    return backward_trusted(kind, x, grad, **params)


def backward_trusted(kind: str, x: Tensor, grad: Tensor, **params) -> Tensor:
    """:func:`backward` without its checks of the inputs (see :func:`sign_trusted`)."""
    scalars, count, o = _scalars(kind, params)
    if not _fills_memory(x):
        x = x.contiguous()
    grad = _like(x, grad)
    out = torch.empty_like(x)
    n = x.numel()
    if n:
        _backward_kernel[(triton.cdiv(n, BLOCK),)](
            x, grad, out, n, *scalars, count, x if o is None else o,
            KIND=KINDS.index(kind), O_PTR=o is not None, PRECISE=_PRECISE, BLOCK=BLOCK)
    return out


def _partials(w: Tensor, groups: int) -> tuple[Tensor, int, int, int]:
    """An uninitialised float32 buffer for the partial sums of each group: (buffer, group size, partial sums
    per group, blocks of _REDUCE_BLOCK elements per partial sum). Every program of the second kernel adds up
    its group's partial sums, so a large group (a big fully connected layer) sums several blocks per partial
    sum to keep them at most _MAX_PARTIALS."""
    size = w.numel() // groups
    chunks = max(1, triton.cdiv(triton.cdiv(size, _REDUCE_BLOCK), _MAX_PARTIALS))
    nblocks = triton.cdiv(size, _REDUCE_BLOCK * chunks)
    return torch.empty(groups * nblocks, dtype=torch.float32, device=w.device), size, nblocks, chunks


def scaled_sign(w: Tensor, groups: int, dtype: torch.dtype | None = None) -> tuple[Tensor, Tensor]:
    """(sign(w) * alpha, partials): alpha = mean(abs(w)) over each of ``groups`` equal, consecutive blocks
    of ``w``'s memory (1: the layer's scale; out_channels: per channel, which is consecutive in both the
    contiguous and the channels_last layouts), sign(0) = +1; two launches. The result is computed in
    float32 and rounded once to ``dtype`` (default: w's). ``partials`` (the sums of abs(w) by block) is
    what :func:`scaled_sign_backward` needs."""
    _check("scaled_sign", w, groups=groups)
    return scaled_sign_trusted(w, groups, dtype)


def scaled_sign_trusted(w: Tensor, groups: int, dtype: torch.dtype | None = None) -> tuple[Tensor, Tensor]:
    """:func:`scaled_sign` without its checks of the inputs (see :func:`sign_trusted`)."""
    if not _dense(w):
        w = w.contiguous()
    partials, size, nblocks, chunks = _partials(w, groups)
    y = torch.empty_like(w, dtype=dtype)
    if size:
        nb = triton.next_power_of_2(nblocks)
        _abs_partial_kernel[(nblocks, groups)](w, partials, size, chunks, BLOCK=_REDUCE_BLOCK)
        _scaled_sign_kernel[(triton.cdiv(size, BLOCK), groups)](w, partials, y, size, nblocks, PRECISE=_PRECISE,
                                                                 NB=nb, BLOCK=BLOCK)
    return y, partials


def scaled_sign_backward(kind: str, w: Tensor, grad: Tensor, partials: Tensor, groups: int, params: dict) -> Tensor:
    """dL/dw of ``sign(w) * alpha`` (estimator ``kind``'s g with its ``params()`` for the sign, alpha =
    mean(abs(w)) per group): g(w) grad alpha + sgn(w) sum(grad sign(w)) / size, in two launches, in w's
    dtype; ``grad`` may be of another float dtype (the 16-bit one of autocast)."""
    _check("scaled_sign_backward", w, grad, groups)
    return scaled_sign_backward_trusted(kind, w, grad, partials, groups, params)


def scaled_sign_backward_trusted(kind: str, w: Tensor, grad: Tensor, partials: Tensor, groups: int,
                                 params: dict) -> Tensor:
    """:func:`scaled_sign_backward` without the checks of :func:`_check` (see :func:`sign_trusted`); ``partials``
    is still checked, as it is cheap next to the two launches."""
    scalars, count, o = _scalars(kind, params)
    if not _dense(w):
        w = w.contiguous()
    grad = _like(w, grad)
    dots, size, nblocks, chunks = _partials(w, groups)
    if partials.numel() != dots.numel() or partials.dtype != torch.float32 or partials.device != w.device:
        raise ValueError(f"triton_kernels.scaled_sign_backward: partials must be what scaled_sign(w, {groups}) gave "
                         f"({dots.numel()} float32 sums on {w.device}), got {partials.numel()} of {partials.dtype} "
                         f"on {partials.device} (review triton #3)")
    out = torch.empty_like(w)
    if size:
        nb = triton.next_power_of_2(nblocks)
        _dot_sign_partial_kernel[(nblocks, groups)](w, grad, dots, size, chunks, BLOCK=_REDUCE_BLOCK)
        _scaled_sign_backward_kernel[(triton.cdiv(size, BLOCK), groups)](
            w, grad, partials, dots, out, size, nblocks, *scalars, count, w if o is None else o,
            KIND=KINDS.index(kind), O_PTR=o is not None, PRECISE=_PRECISE, NB=nb, BLOCK=BLOCK)
    return out
