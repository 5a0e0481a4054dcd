"""Which tensors take the Triton kernels of :mod:`reste.triton_kernels`.

The rule: CUDA tensors of float32, bfloat16 or float16 go through the fused Triton
kernels when Triton is importable and the fused kernels are enabled
(``RESTE_FUSED`` != 0, or :func:`reste.fused.set_enabled`, the switch the CPU
kernels share). Everything else returns ``None`` here and the caller computes the
PyTorch expression: CPU tensors (the C kernels of :mod:`reste.fused` or PyTorch ops,
unchanged), float64, ``torch.compile`` tracing (Inductor fuses the expressions
itself), double backward (the PyTorch expression is differentiable, the kernel is
not), a machine without Triton.

Triton is imported on the first CUDA tensor, not when reste is imported.

For tests without a GPU, :func:`forced` routes tensors on any device through a
given kernels module (one built under ``TRITON_INTERPRET=1`` runs on CPU tensors);
production code never sets it.
"""

from __future__ import annotations

import contextlib
import re
import warnings
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import torch
from torch import Tensor

from . import fused
from .kernel_args import MAX_GROUPS, autocast_dtype

__all__ = ["available", "backward", "error", "forced", "may_take", "scaled_sign", "sign"]

_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_MODULE: list[ModuleType | None] = []  # the imported kernels module (None: Triton missing), once tried
_ERROR: list[str] = []
_FORCED: list[ModuleType] = []


def _load() -> ModuleType | None:
    """:mod:`reste.triton_kernels`, imported on first use (``None`` where Triton does not import)."""
    if not _MODULE:
        try:
            from . import triton_kernels
        except Exception as err:  # ImportError, or a Triton that fails while initialising
            _ERROR.append(f"{type(err).__name__}: {err}")
            _MODULE.append(None)
        else:
            _MODULE.append(triton_kernels)
    return _MODULE[0]


def _disable(err: Exception) -> None:
    """Turn the Triton path off for this process after ``err``, with one warning."""
    text = str(err).strip()
    message = f"{type(err).__name__}: {text.splitlines()[0] if text else ''}"
    _MODULE[:] = [None]
    _ERROR[:] = [message]
    warnings.warn(f"reste: the Triton GPU kernels failed ({message}); using PyTorch ops instead",
                  RuntimeWarning, stacklevel=4)


def _launch(run: Callable[[], Tensor], x: Tensor) -> Tensor | None:
    """``run()`` (kernel launches on ``x``'s device); if it raises (Triton cannot compile or launch here:
    no C compiler for its launcher, an unsupported GPU), the Triton path is turned off (:func:`_disable`)
    and the result is ``None``, so the caller computes the PyTorch expression. An out-of-memory error, an
    error inside a CUDA graph capture and forced (test) kernels raise.

    Triton launches on the current CUDA device, on its current stream: where ``x`` is on another (a model
    moved to ``cuda:1`` with ``cuda:0`` current), that device is made current for the launch."""
    if x.is_cuda and x.get_device() != torch.cuda.current_device():
        with torch.cuda.device(x.device):
            return _launch(run, x)
    if _FORCED:
        return run()
    try:
        return run()
    except torch.cuda.OutOfMemoryError:
        raise  # the GPU's memory, not Triton: the PyTorch ops would need it too
    except Exception as err:
        if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
            raise  # inside a CUDA graph capture the fallback would run into a capture already broken
        if _context_lost(err):
            raise  # an earlier kernel's fault, reported at this launch: not Triton's, and the fallback would fail too
        _disable(err)
        return None


# What CUDA reports once its context is lost (a kernel's bad address or failed assert, whichever kernel it was): the
# error sticks to every later call, so it is no sign that Triton cannot run here.
_STICKY = re.compile(r"illegal memory access|illegal address|device-side assert|unspecified launch failure|"
                     r"misaligned address|illegal instruction|hardware stack error", re.IGNORECASE)


def _context_lost(err: Exception) -> bool:
    """Whether ``err`` says the CUDA context is lost (``torch.AcceleratorError``, or Triton's launcher quoting
    such an error), rather than that Triton cannot compile or launch."""
    accelerator = getattr(torch, "AcceleratorError", None)  # (torch >= 2.8)
    return (accelerator is not None and isinstance(err, accelerator)) or bool(_STICKY.search(str(err)))


def available() -> bool:
    """Whether the Triton kernels can be used here (Triton imports; a CUDA device is present)."""
    return torch.cuda.is_available() and _load() is not None


def error() -> str | None:
    """Why the Triton kernels are not used (Triton did not import, or a kernel failed); ``None`` when
    they are, or were not tried."""
    if torch.cuda.is_available():
        _load()
    return _ERROR[0] if _ERROR else None


@contextlib.contextmanager
def forced(kernels: ModuleType) -> Iterator[None]:
    """Inside the block, tensors on every device take ``kernels`` (a :mod:`reste.triton_kernels` module,
    e.g. one imported under ``TRITON_INTERPRET=1``; a stand-in gives its ``KINDS`` and the ``*_trusted`` launchers,
    which the dispatcher calls); for tests. The other conditions still apply."""
    _FORCED.append(kernels)
    try:
        yield
    finally:
        _FORCED.pop()


def may_take(x: Tensor) -> bool:
    """A cheap first test: whether ``x``'s device can take the Triton path at all (CUDA, or forced)."""
    return x.is_cuda or bool(_FORCED)


def _kernels_for(x: Tensor, *others: Tensor) -> ModuleType | None:
    """The kernels module when ``x`` (and ``others``, same shape, dtype and device) take the Triton path."""
    if not may_take(x):
        return None
    if x.dtype not in _DTYPES or torch.compiler.is_compiling() or torch.jit.is_tracing() or not fused.enabled():
        return None
    if not fused.plain(x, *others):  # a wrapper subclass's data_ptr() is 0: a launch would fault the GPU
        return None
    for t in others:
        if t.device != x.device or t.dtype != x.dtype or t.shape != x.shape:
            return None
    return _FORCED[-1] if _FORCED else _load()


def _no_double_backward(*tensors: Tensor) -> bool:
    return not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))


def sign(x: Tensor) -> Tensor | None:
    """``sign`` with sign(0) = +1 by the Triton kernel, or ``None`` where it does not apply."""
    if x.requires_grad and torch.is_grad_enabled():
        return None
    k = _kernels_for(x)
    return None if k is None else _launch(lambda: k.sign_trusted(x), x)


def _tensor_params_ok(x: Tensor, params: dict[str, Any]) -> bool:
    """Schedule values held as tensors are read by the kernel only as ReSTE's one-element ``o`` on x's device."""
    for key, v in params.items():
        if isinstance(v, Tensor) and (key != "o" or v.numel() != 1 or v.device != x.device or v.requires_grad):
            return False
    return True


def backward(kind: str, x: Tensor, grad: Tensor, **params: Any) -> Tensor | None:
    """``grad * g(x)`` of estimator ``kind`` by the Triton kernel, or ``None`` where it does not apply."""
    if not _no_double_backward(x, grad) or not _tensor_params_ok(x, params):
        return None
    k = _kernels_for(x, grad)
    if k is None or kind not in k.KINDS:
        return None
    return _launch(lambda: k.backward_trusted(kind, x, grad, **params), x)


# ----------------------------------------------------------- binary weights, fused


class _ScaledSign(torch.autograd.Function):
    """sign(W) * alpha, alpha = mean(abs(W)) per group, forward and backward by the Triton kernels.

    A double backward (``create_graph=True``) differentiates ``reference`` (the same value by PyTorch
    ops, with the estimator's autograd function) instead, so the first backward stays differentiable.
    """

    @staticmethod
    def forward(ctx: Any, w: Tensor, kernels: ModuleType, kind: str, groups: int, params: dict,
                reference: Callable[[Tensor], Tensor], dtype: torch.dtype) -> Tensor:
        y, partials = kernels.scaled_sign_trusted(w, groups, dtype)
        ctx.save_for_backward(w, partials)
        ctx.kernels, ctx.kind, ctx.groups, ctx.params, ctx.reference = kernels, kind, groups, params, reference
        return y

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, None, None, None, None, None, None]:
        w, partials = ctx.saved_tensors
        dw = None
        # (create_graph: the PyTorch expression, which is differentiable; a batched grad, is_grads_batched=True: it
        # has no memory for the kernels to read, review triton #6)
        if not torch.is_grad_enabled() and fused.plain(grad):
            k = ctx.kernels
            dw = _launch(lambda: k.scaled_sign_backward_trusted(ctx.kind, w, grad, partials, ctx.groups, ctx.params), w)
        if dw is None:
            create_graph = torch.is_grad_enabled()
            with torch.enable_grad():
                y = ctx.reference(w)
                (dw,) = torch.autograd.grad(y, w, grad.to(y.dtype), create_graph=create_graph)
        return dw, None, None, None, None, None, None


def scaled_sign(w: Tensor, kind: str, groups: int, reference: Callable[[Tensor], Tensor],
                params: dict[str, Any]) -> Tensor | None:
    """The binary weight sign(w) * mean(abs(w)) (per layer: ``groups=1``; per output channel:
    ``groups=w.shape[0]``) with estimator ``kind``'s backward (with its ``params()``) for the sign,
    by the Triton kernels (two launches forward, two backward), or ``None`` where they do not apply.
    Under autocast the result is already in autocast's dtype (see :func:`reste.kernel_args.autocast_dtype`).
    ``reference(w)`` computes the same by PyTorch ops (used for a double backward)."""
    k = _kernels_for(w)
    if k is None or kind not in k.KINDS or not _tensor_params_ok(w, params):
        return None
    if not 1 <= groups <= MAX_GROUPS or w.numel() % groups:
        return None  # one group per program row of the grid: at most 65,535
    if torch.is_grad_enabled() and w.grad_fn is not None:
        return None  # w is computed from other tensors: keep the plain autograd graph
    dtype = autocast_dtype(w)
    if not (torch.is_grad_enabled() and w.requires_grad):
        return _launch(lambda: k.scaled_sign_trusted(w, groups, dtype)[0], w)
    return _launch(lambda: _ScaledSign.apply(w, k, kind, groups, params, reference, dtype), w)
