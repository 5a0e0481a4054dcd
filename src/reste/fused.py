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

import torch
from torch import Tensor

from .native import F32, I32, I64, PTR, EnvSwitch, NativeLibrary, c_source

__all__ = ["available", "enabled", "error", "reste_backward", "set_enabled", "sign", "ste_backward"]

_SOURCE = c_source("reste", "fused.c")


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
# no FMA contraction: the kernels' float32 results are then the same on every x86 CPU, whatever -march=native picks
_FAST = ("-O3", "-march=native", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math")

_LIB = NativeLibrary("fused", _SOURCE, {
    "reste_sign_f32": ([PTR, PTR, I64, I32], None),
    "reste_ste_bwd_f32": ([PTR, PTR, PTR, F32, I64, I32], None),
    "reste_reste_bwd_f32": ([PTR, PTR, PTR, F32, F32, F32, F32, F32, I64, I32], None),
}, flag_sets=(((*_FAST, "-fopenmp"),) if _OPENMP else ()) + (_FAST, ("-O3", "-ffp-contract=off")))
_ENABLED = EnvSwitch("RESTE_FUSED", default=True)


def enabled() -> bool:
    """Whether the kernels may be used: ``set_enabled``'s flag, else ``RESTE_FUSED`` != 0/off/false/no, read at
    the first call and kept (:class:`reste.native.EnvSwitch`); ``set_enabled(None)`` reads it again."""
    return _ENABLED()


def set_enabled(flag: bool | None) -> None:
    """Turn the kernels on or off for this process; ``None`` goes back to ``RESTE_FUSED`` (read again)."""
    _ENABLED.set(flag)


def available() -> bool:
    """Whether the kernels are built (compiling them now if needed)."""
    return _LIB.get() is not None


def error() -> str | None:
    """Why the kernels are unavailable (``None`` when they build)."""
    return _LIB.error()


PLAIN = (Tensor, torch.nn.Parameter)  # the types whose memory a kernel may take (see plain)


def plain(*tensors: Tensor) -> bool:
    """Whether each tensor is a plain one (or a Parameter) whose memory a kernel may take by ``data_ptr()``, and
    may be written there. A subclass may be a wrapper without memory of its own (DTensor, torch's TwoTensor,
    quantisation wrappers: ``data_ptr()`` 0, and the numel of the whole, not of a shard), and so is the batched
    gradient of ``autograd.grad(..., is_grads_batched=True)`` (legacy vmap); an active ``TorchDispatchMode`` must
    see each op and may hand out tensors without memory (``FakeTensorMode``: review api #15, and for the GPU
    kernels review triton #4, #6): these take the PyTorch ops, which dispatch them."""
    if not _plain_types(tensors):
        return False
    if torch.compiler.is_compiling():  # (no kernel runs in a compiled graph, whose callers ask is_compiling too;
        return True  # the checks below do not trace: review ownmodel's run of test_convert)
    return owns_memory(*tensors)


def _plain_types(tensors: tuple[Tensor, ...]) -> bool:
    """The first of :func:`plain`'s tests: each a plain tensor or Parameter, no subclass."""
    return all(type(t) in PLAIN for t in tensors)


def owns_memory(*tensors: Tensor) -> bool:
    """The part of :func:`plain` after its type test, for callers that know no compiler is tracing."""
    return not under_dispatch_mode() and (_LEGACY_BATCHED is None or not any(map(_LEGACY_BATCHED, tensors)))


_LEGACY_BATCHED = getattr(getattr(torch._C, "_functorch", None), "is_legacy_batchedtensor", None)


def _lib_for(x: Tensor, *others: Tensor):
    """The library when ``x`` (and ``others``, same layout) can go through the kernels, else ``None``."""
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        return None  # the kernels write through data_ptr(), which a trace would not record
    if x.device.type != "cpu" or x.dtype != torch.float32 or not enabled():
        return None
    tensors = (x, *others)
    if not _plain_types(tensors) or not owns_memory(*tensors):
        return None  # (plain's tests, without its second question to the compiler)
    if not (x.is_contiguous() or (x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last))):
        return None
    for t in others:
        if t.device.type != "cpu" or t.dtype != torch.float32 or t.shape != x.shape or t.stride() != x.stride():
            return None
    # (torch.func's wrapped tensors, which have no data, never come here: the estimators test under_functorch)
    return _LIB.get()


def under_functorch() -> bool:
    """Whether a ``torch.func`` transform (``vmap``, ``grad``) runs, whose tensors are wrappers without a data
    pointer (never while compiling: the compiler cannot trace the test, and its tensors are its own)."""
    return _TRANSFORMS_ACTIVE is not None and not torch.compiler.is_compiling() and _TRANSFORMS_ACTIVE()


_TRANSFORMS_ACTIVE = getattr(torch._C, "_are_functorch_transforms_active", None)  # one global flag: cheap


def under_dispatch_mode() -> bool:
    """Whether a ``TorchDispatchMode`` is active (``FakeTensorMode``, a flop counter), which must see each op: the
    kernels' writes through ``data_ptr()`` would go past it, and its tensors may have no memory."""
    return _DISPATCH_MODES is not None and _DISPATCH_MODES() > 0


_DISPATCH_MODES = getattr(torch._C, "_len_torch_dispatch_stack", None)  # how many are active: one call, cheap


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
    if o == 1.0:  # g is STE's window on [-t, t] (as in reste_g; a NaN input gets 0 there, as on every path)
        return ste_backward(x, grad, t)
    lib = _backward_ready(x, grad)
    if lib is None:
        return None
    out = torch.empty_like(x)
    p, inv_o, c0 = (1.0 - o) / o, 1.0 / o, m ** (1.0 / o) / m
    lib.reste_reste_bwd_f32(x.data_ptr(), grad.data_ptr(), out.data_ptr(), p, inv_o, t, m, c0, x.numel(), _threads())
    return out
