"""Gradient estimators for the sign function.

Every estimator's forward pass is ``sign`` with sign(0) = +1, so the output is
strictly +-1. The backward pass multiplies the incoming gradient by the
estimator's pseudo-derivative ``g(x)``. Each estimator is a triple:

* ``forward_equivalent(x)``: the continuous function F whose derivative is g
  (for plots and the estimating-error indicator);
* ``derivative(x)``: g itself;
* a schedule: ``set_progress(epoch, epochs)`` moves the hyper-parameters that
  change during training (ReSTE's o, EDE/RBNN's t and k, DSQ's alpha, FDA's n).

The math lives in the small ``*_g`` / ``*_f`` functions below; the classes declare
their hyper-parameters once, in a ``hyperparameters`` table of :class:`Param`
(type, default, valid range, help, scheduled or not), from which the constructor's
checks, ``config()`` / ``spec()``, the ``reste train`` flags and the ``reste sweep``
axes are made. They show them in ``extra_repr`` and save their schedule state in
the model's ``state_dict`` (``get_extra_state``), so resuming is exact.
``@register_estimator`` adds a class to the live registry (``list_estimators()``);
an estimator of your own, in your own module, then works everywhere.

The backward is one elementwise expression (``torch.where`` and arithmetic, no
boolean-mask gathers or scatters, no host-device synchronisation); 16-bit
inputs are computed in float32 and cast back. On the CPU, float32 sign and the
STE and ReSTE backward run as fused C kernels (:mod:`reste.fused`) that compute
the same values in one pass; on CUDA, sign, every built-in estimator's backward
and a binary weight sign(W) * mean(abs(W)) run as fused Triton kernels
(:mod:`reste.triton_kernels`, chosen by :mod:`reste.triton_dispatch`).
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import operator
import os
import sys
import types
import warnings
import weakref
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Callable

import torch
from torch import Tensor, nn

from . import cuda_ext, fused, plugins, schedules, triton_dispatch
from ._dsq import dsq_consts
from .errors import UsageError, did_you_mean, option
from .hparams import RESERVED_FLAGS, SETTINGS, Param, outside_reste, real_number

__all__ = [
    "ESTIMATORS",
    "ScheduleWarning",
    "Estimator",
    "STE",
    "ReSTE",
    "ApproxSign",
    "SignSwish",
    "EDE",
    "RBNN",
    "DSQ",
    "FDA",
    "Param",
    "estimator_class",
    "estimator_flags",
    "get_estimator",
    "list_estimators",
    "register",
    "register_estimator",
    "sign",
]


# --------------------------------------------------------------------------- math


def sign(x: Tensor) -> Tensor:
    """sign with sign(0) = sign(-0) = +1: every output is exactly +1 or -1, and NaN stays NaN.

    CUDA tensors go through a fused Triton kernel (:mod:`reste.triton_dispatch`),
    float32 CPU tensors through a fused C kernel (:mod:`reste.fused`); elsewhere
    it is computed branch-free as sign(sign(x) + 1/2), several times faster on
    CPUs than a ``torch.where`` on data whose signs are random, plus
    clamp(x, 0, 0) (0, or NaN for NaN: ``torch.sign`` maps NaN to 0, which would
    turn a diverged activation into +1).
    """
    _floating_only(x, "sign", "its +-1 and NaN are floats")
    if not fused.under_functorch():  # torch.func's tensors are wrappers that no kernel can read
        y = cuda_ext.sign(x)  # None unless the compiled extension takes x (RESTE_CUDA_EXT)
        if y is None:
            y = triton_dispatch.sign(x)
        if y is None:
            y = fused.sign(x)
        if y is not None:
            return y
    if torch.compiler.is_compiling():  # out of place: torch 2.11's compiler traced these in-place ops inside the
        # estimators' autograd Function into a backward that lost their input's gradient (the compile tests on 2.11)
        return torch.sign(x).add(0.5).sign().add(x.clamp(0.0, 0.0))
    return torch.sign(x).add_(0.5).sign_().add_(x.clamp(0.0, 0.0))


def _floating_only(x: Any, what: str, why: str) -> None:
    """A one-line ``TypeError`` for a tensor that is not floating point (an integer or bool tensor): ``what`` takes
    floating-point tensors (``why``). An fx Proxy passes: its dtype is not known."""
    if isinstance(x, Tensor) and not x.is_floating_point():
        raise TypeError(f"{what} takes floating-point tensors ({why}), got {x.dtype}; convert with x.float()")
    if not isinstance(x, (Tensor, torch.fx.Proxy)):  # (a list or an array: an AttributeError deep inside before,
        raise TypeError(f"{what} takes a torch tensor, got {type(x).__name__}; convert it with "  # review api3, s. 2)
                        "torch.as_tensor(x, dtype=torch.float32)")


_MANTISSA_BITS = {torch.float64: 53, torch.float32: 24, torch.float16: 11, torch.bfloat16: 8}


def _next_up(value: float, dtype: torch.dtype) -> float:
    """The next ``dtype`` number above ``value`` (as ``dtype`` rounds it), for a positive normal value (a subnormal
    one would get a unit too fine: POSITIVE_RANGE keeps the bounds that come here normal, review kern1).

    Plain float arithmetic (``torch.compile`` folds it into a constant; nothing to trace): ``value``
    rounded to the dtype's mantissa, half to even as IEEE does, plus one unit in its last place.
    """
    frac, exp = math.frexp(value)  # value = frac * 2**exp, 0.5 <= frac < 1
    bits = _MANTISSA_BITS[dtype]
    units = round(math.ldexp(frac, bits))
    if units == 1 << bits:  # rounded up to the next power of two: its unit is twice as large
        units, exp = units >> 1, exp + 1
    return math.ldexp(units + 1, exp - bits)


def _step_le(a: Tensor, bound: float) -> Tensor:
    """1 where a <= bound, else 0, for a >= 0; branch-free (no masks or where)."""
    return (_next_up(bound, a.dtype) - a).clamp_(min=0.0).sign_()


def ste_g(x: Tensor, clip: float) -> Tensor:
    """STE: g = 1 on abs(x) <= clip, else 0."""
    return (x.abs() <= clip).to(x.dtype)


def ste_f(x: Tensor, clip: float) -> Tensor:
    """STE: F = clamp(x, -clip, clip)."""
    return x.clamp(-clip, clip)


def reste_g(x: Tensor, o: float, t: float, m: float) -> Tensor:
    """ReSTE (Wu et al., ICCV 2023).

    g = (1/o) abs(x)^((1-o)/o) on m < abs(x) <= t; m^(1/o)/m on abs(x) <= m (the
    chord slope, which avoids the pole at 0); 0 beyond t.
    """
    a = x.abs()
    if not isinstance(o, Tensor) and o == 1.0:  # (an o held in a device tensor: no host read, which a CUDA graph
        return _step_le(a, t)                     # capture refuses; the expression below is the step at o = 1)
    # g = max(a, m)^p * factor, p = (1 - o)/o, with factor 1 on [0, m] (there
    # m^p = m^(1/o)/m), 1/o on (m, t] and 0 beyond t; all arithmetic, no branches.
    p = (1.0 - o) / o
    inside_t = _step_le(a, t)
    factor = _step_le(a, m).mul_(1.0 - 1.0 / o).add_(1.0 / o).mul_(inside_t)
    g = a.clamp_(min=m).log2_().mul_(p).exp2_() * factor  # (not in place: exp2's backward reads its result)
    if isinstance(o, Tensor):  # at o = 1 the step, as the kernels give it: 0 * log2(inf) made +-inf and NaN inputs
        g = torch.where(p == 0, inside_t, g)  # NaN here (review math #5)
    return g


def reste_f(x: Tensor, o: float, t: float, m: float) -> Tensor:
    """ReSTE: F = (m^(1/o)/m) x on abs(x) <= m, else sign(x) min(abs(x), t)^(1/o)."""
    a = x.abs()
    outer = sign(x) * a.clamp(max=t).pow(1.0 / o)
    return torch.where(a <= m, x * (m ** (1.0 / o) / m), outer)


def approx_sign_g(x: Tensor) -> Tensor:
    """ApproxSign (Bi-Real Net): g = 2 - 2 abs(x) on abs(x) <= 1, else 0."""
    return (2.0 - 2.0 * x.abs()).clamp_(min=0.0)


def approx_sign_f(x: Tensor) -> Tensor:
    """ApproxSign: F = 2x - x abs(x) on abs(x) <= 1, else sign(x)."""
    c = x.clamp(-1.0, 1.0)
    return 2.0 * c - c * c.abs()


def sign_swish_g(x: Tensor, beta: float) -> Tensor:
    """SignSwish (BNN+): g = beta (2 - beta x tanh(beta x / 2)) / (1 + cosh(beta x)).

    g is even, so it is computed at v = abs(beta x), in the equivalent, overflow-free form
    2 beta q (1-q) (2 - v (1-2q)) with q = sigmoid(-v): no 1 - sigmoid(v) that cancels to 0 for v > 0 (in
    float32 that made g(3) 17% off and g(3.5) = 0, while g(-x) was exact), and g(-x) == g(x) exactly.
    v is clamped to the finite floats, so that g is 0 at x = +-inf (its limit) instead of 0 * inf = NaN.
    """
    v = (beta * x).abs_().clamp_(max=torch.finfo(x.dtype).max)
    q = torch.sigmoid(-v)
    return (2.0 * beta) * q * (1.0 - q) * (2.0 - v * (1.0 - 2.0 * q))


def sign_swish_f(x: Tensor, beta: float) -> Tensor:
    """SignSwish: F = 2 sigmoid(beta x) (1 + beta x (1 - sigmoid(beta x))) - 1.

    F is odd: computed at v = abs(beta x) as 2 (1-q) (1 + v q) - 1 with q = sigmoid(-v) (as :func:`sign_swish_g`)
    and given x's sign; v is clamped to the finite floats, so that F(+-inf) = +-1 (its limit), not inf * 0 = NaN.
    """
    v = (beta * x).abs_().clamp_(max=torch.finfo(x.dtype).max)
    q = torch.sigmoid(-v)
    return torch.copysign(2.0 * (1.0 - q) * (1.0 + v * q) - 1.0, x)


def _tanh_bump(z: Tensor, scale: float) -> Tensor:
    """scale (1 - tanh(z)^2), computed as scale 4e / (1 + e)^2 with e = exp(-2 abs(z)), which is the same: the
    difference 1 - tanh^2 cancels in float32 once tanh is within a few ulps of 1 (review math #2: g 96% off at
    t x = 9, and exactly 0 beyond). abs(z) is clamped to the finite floats, so that an infinite z gives 0."""
    e = torch.exp(z.abs().clamp(max=torch.finfo(z.dtype).max) * -2.0)  # (out of place: vmap has no in-place
    return scale * (4.0 * e / (1.0 + e).square())                      # batching rule for clamp_, rev14)


def ede_g(x: Tensor, t: float, k: float) -> Tensor:
    """EDE (IR-Net): g = k t (1 - tanh(t x)^2) (:func:`_tanh_bump`)."""
    return _tanh_bump(t * x, k * t)


def ede_f(x: Tensor, t: float, k: float) -> Tensor:
    """EDE: F = k tanh(t x)."""
    return k * torch.tanh(t * x)


def rbnn_g(x: Tensor, t: float, k: float) -> Tensor:
    """RBNN training-aware approximation: g = k max(sqrt(2) t - t^2 abs(x), 0)."""
    return (k * (math.sqrt(2.0) * t) - (k * t * t) * x.abs()).clamp_(min=0.0)


def rbnn_f(x: Tensor, t: float, k: float) -> Tensor:
    """RBNN: F = k (-sign(x) t^2 x^2 / 2 + sqrt(2) t x) on abs(x) < sqrt(2)/t, else k sign(x)."""
    c = x.clamp(-math.sqrt(2.0) / t, math.sqrt(2.0) / t)
    return k * (-(t * t / 2.0) * c * c.abs() + math.sqrt(2.0) * t * c)


def dsq_g(x: Tensor, alpha: float, lower: float = -1.0, upper: float = 1.0) -> Tensor:
    """DSQ (1 bit on [l, u]): g = s k (1 - tanh(k (x - m))^2) inside [l, u], else 0.

    m = (l + u)/2, k = ln(2/alpha - 1)/(u - l), s = 1/(1 - alpha).
    """
    m, k, s = dsq_consts(alpha, lower, upper)
    g = _tanh_bump(k * (x - m), s * k)
    return g * ((x >= lower) & (x <= upper)).to(x.dtype)


def dsq_f(x: Tensor, alpha: float, lower: float = -1.0, upper: float = 1.0) -> Tensor:
    """DSQ: F = s tanh(k (clamp(x, l, u) - m))."""
    m, k, s = dsq_consts(alpha, lower, upper)
    return s * torch.tanh(k * (x.clamp(lower, upper) - m))


def fda_g(x: Tensor, n: int, w: float) -> Tensor:
    """FDA (Fourier series): g = (4 w / pi) sum_{i=0..n} cos((2i+1) w x) on abs(x) <= 1.

    The cosines take x clamped to [-1, 1] (the same inside, and finite outside), so that g is 0 at
    x = +-inf instead of cos(inf) * 0 = NaN.
    """
    c = x.clamp(-1.0, 1.0)
    acc = torch.zeros_like(x)
    for i in range(int(n) + 1):
        acc.add_(torch.cos(((2 * i + 1) * w) * c))
    return acc.mul_(4.0 * w / math.pi) * (x.abs() <= 1.0).to(x.dtype)


def fda_f(x: Tensor, n: int, w: float) -> Tensor:
    """FDA: F = (4 / pi) sum_{i=0..n} sin((2i+1) w c) / (2i+1), c = clamp(x, -1, 1)."""
    c = x.clamp(-1.0, 1.0)
    acc = torch.zeros_like(x)
    for i in range(int(n) + 1):
        acc.add_(torch.sin(((2 * i + 1) * w) * c) / (2 * i + 1))
    return acc.mul_(4.0 / math.pi)


# --------------------------------------------------------------------- autograd


# 16-bit floats, which reste computes in float32 and rounds once (an estimator's g, a binary weight, Bop's average)
SIXTEEN_BIT = (torch.float16, torch.bfloat16)


def _compute_dtype(x: Tensor) -> Tensor:
    return x.float() if x.dtype in SIXTEEN_BIT else x


FusedBackward = Callable[[Tensor, Tensor], "Tensor | None"]


def _fast_backward(kind: str | None, cpu: Callable[..., "Tensor | None"] | None,
                   p: dict[str, float]) -> FusedBackward | None:
    """grad * g(x) by a fused kernel: Triton's ``kind`` kernel (CUDA tensors), else ``cpu`` (the C kernels);
    it returns ``None`` where neither applies."""
    if kind is None and cpu is None:
        return None

    def run(x: Tensor, grad: Tensor) -> Tensor | None:
        out = None if kind is None else triton_dispatch.backward(kind, x, grad, **p)
        if out is None and cpu is not None:
            out = cpu(x, grad, **p)
        return out

    return run


def _sign_backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
    """grad * g(x), by ``ctx.fast`` where it takes the tensors (a fused kernel), else by the PyTorch expression."""
    (x,) = ctx.saved_tensors
    if ctx.fast is not None:
        out = ctx.fast(x, grad)
        if out is not None:
            return out, None, None
    g = ctx.g(_compute_dtype(x))  # a fresh tensor: safe to update in place (not under vmap, nor for
    # is_grads_batched's grad: both batched, review triton #6)
    if g.dtype == grad.dtype and not fused.under_functorch() and fused.plain(grad):
        return g.mul_(grad), None, None
    return (g * grad).to(grad.dtype), None, None


class _SignFunction(torch.autograd.Function):
    """Forward sign (0 -> +1); backward grad * g(x) with g frozen at forward time.

    ``fast(x, grad)``, where given, is a fused kernel for the same product; it
    returns ``None`` for inputs it does not take (the PyTorch expression runs).
    This is the eager node: its forward takes ``ctx``, because for a Function with ``setup_context`` apart PyTorch
    binds the arguments through ``inspect.signature`` at every call, about 13 µs of host time per node (a binary
    layer has two), which bounds an eager GPU step. Under ``torch.func`` and the compiler,
    :class:`_SignFunctionSplit` runs instead.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, g: Callable[[Tensor], Tensor], fast: FusedBackward | None) -> Tensor:
        ctx.g, ctx.fast = g, fast
        ctx.save_for_backward(x)
        return sign(x)

    backward = staticmethod(_sign_backward)


class _SignFunctionSplit(torch.autograd.Function):
    """:class:`_SignFunction` with ``setup_context`` apart from ``forward``, so it also runs under ``torch.func``
    (``grad``, ``vmap``: per-sample gradients), where the fused kernels step aside, and is traced by the compiler."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor, g: Callable[[Tensor], Tensor], fast: FusedBackward | None) -> Tensor:
        return sign(x)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        x, ctx.g, ctx.fast = inputs
        ctx.save_for_backward(x)

    backward = staticmethod(_sign_backward)


class _SignFunctionForward(_SignFunctionSplit):
    """:class:`_SignFunctionSplit` with forward mode too (``torch.func.jvp``, ``jacfwd``, ``forward_ad``): the tangent
    times g(x), the derivative the backward uses (review math #6: it was sign's own, 0). A class apart: torch.compile
    does not trace a Function that defines ``jvp``."""

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        _SignFunctionSplit.setup_context(ctx, inputs, output)
        ctx.save_for_forward(inputs[0])

    @staticmethod
    def jvp(ctx: Any, tangent: Tensor, _g: Any, _fast: Any) -> Tensor:
        (x,) = ctx.saved_tensors
        return (ctx.g(_compute_dtype(x)) * tangent).to(tangent.dtype)


def _forward_mode() -> bool:
    """Whether forward-mode differentiation may be running (a dual level is open: ``forward_ad``, ``torch.func.jvp``
    and ``jacfwd``): its tangents do not make the input require grad, so sign's own derivative (0) would be taken."""
    return getattr(torch.autograd.forward_ad, "_current_level", -1) >= 0 or fused.under_functorch()


_EXT_FORMS: weakref.WeakKeyDictionary[Estimator, tuple[tuple[Any, ...], Any]] = weakref.WeakKeyDictionary()
_HOOKS = torch.nn.modules.module  # (its tables of hooks on every module)


def _module_hooks() -> bool:
    """Whether a hook registered for every module (``nn.modules.module.register_module_forward_hook`` and the
    like) would see an estimator's call."""
    return bool(_HOOKS._global_forward_hooks or _HOOKS._global_forward_pre_hooks or _HOOKS._global_backward_hooks
                or _HOOKS._global_backward_pre_hooks)


def layer_forms(input_estimator: Any, weight_estimator: Any) -> tuple[Any, Any] | None:
    """A binary layer's two estimators as the compiled extension's one-call forward takes them (the input's
    ``None`` for real inputs), or ``None`` where the layer must call them as modules (see ``Estimator._ext_form``),
    or where forward-mode differentiation may run (the extension's nodes carry no tangent)."""
    if not isinstance(weight_estimator, Estimator) or _forward_mode():
        return None
    w = weight_estimator._ext_form()
    if w is None:
        return None
    if input_estimator is None:
        return None, w
    x = input_estimator._ext_form() if isinstance(input_estimator, Estimator) else None
    return None if x is None else (x, w)


def reference_backward(kind: str, x: Tensor, grad: Tensor, groups: int, params: dict[str, Any]) -> Tensor:
    """The gradient a fused kernel of estimator ``kind`` computes, as the differentiable PyTorch expression
    (what a double backward through the compiled extension runs): ``groups=0``, the activation's
    ``grad * g(x)``; ``groups >= 1``, dL/dw of the binary weight sign(w) * mean(abs(w)) over ``groups``
    (1: the whole tensor; ``w.shape[0]``: per output channel) for upstream gradient ``grad``."""
    g = _KERNEL_G[kind]
    if groups == 0:
        return (g(_compute_dtype(x), **params) * grad).to(grad.dtype)
    create_graph = torch.is_grad_enabled() and x.requires_grad
    with torch.enable_grad():
        w = x if x.requires_grad else x.detach().requires_grad_()
        y = scaled_sign_reference(w, lambda v: g(v, **params), groups)
        (dw,) = torch.autograd.grad(y, w, grad.to(y.dtype), create_graph=create_graph)
    return dw


def scaled_sign_reference(w: Tensor, g: Callable[[Tensor], Tensor], groups: int) -> Tensor:
    """sign(w) * mean(abs(w)) over ``groups`` by PyTorch ops, the sign with backward ``grad * g(w)``: the value
    and gradient the fused kernels compute. A 16-bit w is computed in float32 and rounded once at the end, as
    they do (in 16 bits, dW's two terms were each rounded before they cancel: review kern1, suggestion 3)."""
    z = _compute_dtype(w)
    dims = tuple(range(z.dim())) if groups == 1 else tuple(range(1, z.dim()))
    return (_SignFunctionSplit.apply(z, g, None) * z.abs().mean(dim=dims, keepdim=groups > 1)).to(w.dtype)


cuda_ext.set_reference(reference_backward)  # the compiled extension's double backward runs it


_RELATIONS = {">": ("larger than the", lambda a, b: a > b), ">=": ("at least", lambda a, b: a >= b)}


# ---------------------------------------------------------------------- classes


class ScheduleWarning(UserWarning):
    """An estimator's settings that move its schedule oddly (o never moves, falls, or a constant schedule's end that
    is never reached): said when a run builds it; a model rebuilt from a checkpoint to evaluate or export says
    nothing (its training is done)."""


class Estimator(nn.Module):
    """Base class: sign in the forward pass, ``derivative`` in the backward pass.

    A subclass gives ``name``, its ``hyperparameters`` table (:class:`Param`), ``_g(x, **p)``
    and ``_f(x, **p)``; the constructor takes the table's keywords (checked against it) and
    sets one attribute per hyper-parameter. ``params()`` gives the keywords of ``_g``/``_f``
    (by default every hyper-parameter's current value). Where something changes over
    training it also gives ``set_progress(epoch, epochs)``; the state saved in the
    ``state_dict`` is the table's ``scheduled`` parameters (or ``_state_keys``). Register it
    with :func:`register_estimator` and every entry point knows it.
    """

    name: str = ""
    hyperparameters: tuple[Param, ...] = ()
    # constraints between two hyper-parameters, (a, ">" or ">=", b): "a must be larger than the b" / "at least b"
    relations: tuple[tuple[str, str, str], ...] = ()
    # the schedule state saved in the state_dict; None: the scheduled hyper-parameters
    _state_keys: tuple[str, ...] | None = None
    # Optional fused kernel for grad * g(x): (x, grad, **params()) -> Tensor, or None where it does not apply.
    _fused: Callable[..., "Tensor | None"] | None = None
    # The Triton kernel computing this class's g (reste.triton_kernels.KINDS), for GPU tensors; used only
    # while ``_g`` is that estimator's function (a subclass with its own g takes the PyTorch path).
    _kernel: str | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__init__" not in cls.__dict__:  # help() and inspect show the table's keywords
            cls.__signature__ = inspect.Signature([  # type: ignore[attr-defined]
                inspect.Parameter(p.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=p.default)
                for p in cls.hyperparameters
            ])

    def __init__(self, *args: Any, **hyperparameters: Any) -> None:
        super().__init__()
        table = self.hyperparameters
        if len(args) > len(table):
            raise TypeError(f"{type(self).__name__} takes at most {len(table)} positional arguments, got {len(args)}")
        for p, value in zip(table, args):
            if p.name in hyperparameters:
                raise TypeError(f"{type(self).__name__} got {p.name!r} twice")
            hyperparameters[p.name] = value
        self._config = self.check_hyperparameters(hyperparameters)
        for key, value in self._config.items():
            setattr(self, key, value)
        self._setup()
        self._warn_end_unused()  # every estimator with a ramp, a plugin's too (review extend1 #10: ReSTE's and DSQ's)

    def _setup(self) -> None:
        """Derived state, after the hyper-parameters are set (a hook for subclasses)."""

    #: (start, end) of the hyper-parameter that its ``schedule`` option ramps (ReSTE's o to o_end): a constant
    #: schedule holds the start all run long, and leaves the end without effect
    ramped: tuple[str, str] | None = None

    def unused_hyperparameters(self) -> frozenset[str]:
        """The hyper-parameters that these settings leave without effect on training (a constant schedule's end
        value): a sweep refuses a grid axis over one, whose runs would all train the same network."""
        if self.ramped is not None and getattr(self, "schedule", None) == "constant":
            return frozenset({self.ramped[1]})
        return frozenset()

    def _warn_end_unused(self) -> None:
        """After ``_setup``: warn of a constant schedule given an end value it never reaches, as one changed for a run
        would change nothing (a sweep over it refuses: ``unused_hyperparameters``). Not for an end at its default or
        equal to the start: a constant schedule is the way to hold o at a value (``ReSTE(o=2,
        schedule="constant")``)."""
        if not self.unused_hyperparameters():
            return
        name, end_name = self.ramped
        start, end = getattr(self, name), getattr(self, end_name)
        if end in (start, self._defaults().get(end_name)):
            return
        flags = {p.name: p.option for p in self.hyperparameters}
        hold = option(f"{flags[name]} {end:g} {flags[end_name]} {end:g}", f"{name}={end:g}, {end_name}={end:g}")
        move = option(f"{flags['schedule']} cosine", repr("cosine") + " as schedule")
        warnings.warn(
            f"{type(self).__name__}'s constant schedule holds {name} at {start:g} for the whole run: {end_name} = "
            f"{end:g} is never reached; pass {hold} to hold {name} there, or {move} (or linear) to move it",
            ScheduleWarning, stacklevel=outside_reste(),  # the user's line (a constructor, get_estimator, binarize)
        )

    @classmethod
    def check_hyperparameters(cls, values: dict[str, Any], flags: bool = False) -> dict[str, Any]:
        """Every hyper-parameter of the table (defaults filled in), checked and in its type.

        Raises ``ValueError`` naming the keyword, or with ``flags`` the ``reste train`` flag,
        and the valid range.
        """
        if not cls.hyperparameters and cls.__init__ is not Estimator.__init__:
            return dict(values)  # a class with a constructor of its own and no table checks its keywords itself
        table = {p.name: p for p in cls.hyperparameters}
        unknown = sorted(set(values) - set(table))
        if unknown:
            raise ValueError(f"bad hyper-parameters for estimator {cls.name!r}: no {', '.join(unknown)}; "
                             f"valid: {', '.join(table) or 'none'}")

        def label(key: str) -> str:
            return table[key].option if flags else key

        out = {key: p.check(values.get(key, p.default), label(key)) for key, p in table.items()}
        for a, op, b in cls.relations:
            words, holds = _RELATIONS[op]
            if not holds(out[a], out[b]):
                raise ValueError(f"{label(a)} must be {words} {b} ({out[b]}), got {out[a]}")
        return out

    def params(self) -> dict[str, float]:
        """The keywords of ``_g`` and ``_f``: by default every hyper-parameter's current value."""
        return {p.name: getattr(self, p.name) for p in self.hyperparameters}

    def _g(self, x: Tensor, **p: float) -> Tensor:
        raise NotImplementedError(f"estimator {self.name!r} ({type(self).__name__}) defines no _g (g(x), the factor "
                                  "its backward multiplies the gradient by), which training needs: define _g(self, x, "
                                  "**params)")

    def _f(self, x: Tensor, **p: float) -> Tensor:
        raise NotImplementedError(f"estimator {self.name!r} defines no _f (F(x), the antiderivative of its g), which "
                                  "forward_equivalent, the general indicators and `reste plot estimators` need")

    @classmethod
    def defines_f(cls) -> bool:
        """Whether the class has its own F(x), as ``_f`` or as an override of ``forward_equivalent``; the general
        indicators and the F plot need it."""
        return cls._f is not Estimator._f or cls.forward_equivalent is not Estimator.forward_equivalent

    def forward_is_sign(self) -> bool:
        """Whether this estimator's forward is sign(x), as every built-in's is: no ``forward`` or ``scaled_sign`` of
        its own (a plugin's, on its class or this instance), which may compute something else (and may read its
        schedule). A packed or ONNX export computes sign in its place, so it refuses the others."""
        cls = type(self)
        return (cls.forward is Estimator.forward and cls.scaled_sign is Estimator.scaled_sign
                and "forward" not in self.__dict__ and "scaled_sign" not in self.__dict__)

    def _kernel_kind(self) -> str | None:
        kind = self._kernel
        return kind if kind is not None and type(self)._g is _KERNEL_G.get(kind) else None

    def forward(self, x: Tensor) -> Tensor:
        if isinstance(x, torch.fx.Proxy):  # torch.fx tracing (torchvision's create_feature_extractor): the graph
            tracer = x.tracer            # calls this module, which keeps its backward, as it calls a leaf module
            return tracer.create_proxy("call_module", tracer.path_of_module(self), (x,), {})
        if not isinstance(x, Tensor):  # (a list, an array, a float: "no attribute 'requires_grad'", review apifuzz1)
            _floating_only(x, f"{type(self).__name__}(x)", "its +-1 and NaN are floats")
        if (not torch.is_grad_enabled() or not x.requires_grad) and not _forward_mode():
            return sign(x)
        p, kind = self.params(), self._kernel_kind()
        if torch.compiler.is_compiling():  # the compiler fuses the PyTorch expression itself
            return _SignFunctionSplit.apply(x, lambda z: self._g(z, **p), None)
        if _forward_mode():  # torch.func's wrappers, forward_ad's duals: no kernel
            return _SignFunctionForward.apply(x, lambda z: self._g(z, **p), None)
        y = cuda_ext.binary_sign(kind, x, p)  # the extension's C++ node
        if y is not None:
            return y
        # the C kernels compute the built-in's g: not a subclass's own _g (review api #14)
        return _SignFunction.apply(x, lambda z: self._g(z, **p), _fast_backward(kind, self._fused if kind else None, p))

    def scaled_sign(self, w: Tensor, groups: int) -> Tensor | None:
        """sign(w) * mean(abs(w)) over ``groups`` (1: the whole tensor; w.shape[0]: per output channel), with
        this estimator's backward for the sign, by fused GPU kernels (two launches forward, two backward);
        ``None`` where they do not apply (the caller computes it with PyTorch ops)."""
        if not (triton_dispatch.may_take(w) or cuda_ext.may_take(w)) or _forward_mode():
            return None  # (forward mode: the kernels carry no tangent, the PyTorch path does: review triton #5)
        kind = self._kernel_kind()
        if kind is None or self._forward_pre_hooks or self._forward_hooks:
            return None  # hooks expect this module to be called on the weight
        p = self.params()
        y = cuda_ext.scaled_sign(w, kind, groups, p)  # one C++ autograd node
        if y is not None:
            return y

        def reference(z: Tensor) -> Tensor:
            return scaled_sign_reference(z, lambda v: self._g(v, **p), groups)

        return triton_dispatch.scaled_sign(w, kind, groups, reference, p)

    def _ext_form(self) -> Any:
        """This estimator as the compiled extension's one-call layer takes it (:func:`reste.cuda_ext.form`), or
        ``None`` where calling this module must stay a module call: its own ``forward`` or ``scaled_sign``, a hook on
        it (or on every module), no kernel for its ``g``, a parameter that is no number. Kept per estimator while
        ``params()`` gives the same objects (the schedule sets new ones once per epoch)."""
        cls = type(self)  # (its own forward, or its own binary weight, which a layer's module path calls)
        if cls.forward is not Estimator.forward or cls.scaled_sign is not Estimator.scaled_sign:
            return None
        if self._forward_hooks or self._forward_pre_hooks or self._backward_hooks or self._backward_pre_hooks:
            return None
        if _module_hooks() or "forward" in self.__dict__ or "scaled_sign" in self.__dict__:  # (one instance's own)
            return None
        p = self.params()
        values = tuple(p.values())
        kept = _EXT_FORMS.get(self)
        if kept is not None and len(kept[0]) == len(values) and all(map(operator.is_, kept[0], values)):
            return kept[1]  # (the same objects: no number compared with a tensor, which would read it back)
        kind = self._kernel_kind()
        form = None if kind is None else cuda_ext.form(kind, p)
        _EXT_FORMS[self] = (values, form)  # (values kept alive with it: their ids are not reused meanwhile)
        return form

    def derivative(self, x: Tensor) -> Tensor:
        """g(x): the factor the backward multiplies the incoming gradient by."""
        _floating_only(x, "derivative", "g is computed and returned in x's dtype")
        return self._g(_compute_dtype(x), **self.params()).to(x.dtype)

    def forward_equivalent(self, x: Tensor) -> Tensor:
        """F(x): the continuous function whose derivative is g."""
        _floating_only(x, "forward_equivalent", "F is computed and returned in x's dtype")
        return self._f(_compute_dtype(x), **self.params()).to(x.dtype)

    def set_progress(self, epoch: float, epochs: int) -> None:
        """Move the schedule to ``epoch`` of ``epochs``; a no-op for fixed estimators."""
        schedules.check_progress(epoch, epochs)

    def _state_names(self) -> tuple[str, ...]:
        if self._state_keys is not None:
            return self._state_keys
        return tuple(p.name for p in self.hyperparameters if p.scheduled)

    def schedule_values(self) -> dict[str, float]:
        """The values that change over training (logged per epoch), as Python numbers: a plugin's ``set_progress``
        may hold one as a 0-dim tensor or a NumPy number (``torch.linspace(c, c_end, epochs + 1)[epoch]``)."""
        values = {}
        for k in self._state_names():
            held = getattr(self, k)
            number = real_number(held)
            if number is None and held is not None:  # (None: until a set_progress of its own sets it)
                raise ValueError(f"estimator {self.name!r}: its scheduled value {k} is {held!r}, not a number; "
                                 "set_progress must set each scheduled value to a real number")
            values[k] = number
        return values

    def get_extra_state(self) -> dict[str, Any]:
        """The schedule's state, the estimator's name and its hyper-parameters (a state loads into an estimator of
        that name and those hyper-parameters only)."""
        state: dict[str, Any] = {"estimator": self.name, **{k: None if v is None else float(v)
                                                            for k, v in self.schedule_values().items()}}
        try:
            state["config"] = self.config()
        except NotImplementedError:  # a plugin's constructor that declares nothing: its name alone is checked
            pass
        return state

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, local_metadata: dict[str, Any],
                              strict: bool, missing_keys: list[str], unexpected_keys: list[str],
                              error_msgs: list[str]) -> None:
        # another estimator's state (o of a ReSTE into an STE) would load nothing, silently: refuse it by name,
        # as torch refuses a weight of another shape (a state saved before names were kept loads as before)
        state = state_dict.get(prefix + "_extra_state")
        saved = state.get("estimator") if isinstance(state, dict) else None
        if saved is not None and saved != self.name:
            error_msgs.append(
                f"{prefix}_extra_state: the state of a {saved!r} estimator cannot load into a {self.name!r} one "
                f"(build the model with estimator {saved!r}, or leave out the keys ending in '_extra_state' to "
                "load the weights alone)")
            return
        # and one of other hyper-parameters (a ReSTE of o_end 5 into one of o_end 3) would train on with the model's
        # own, silently (a state saved before they were kept loads as before)
        config = state.get("config") if isinstance(state, dict) else None
        if isinstance(config, dict):
            try:
                own = self.config()
            except NotImplementedError:
                own = config
            # a hyper-parameter the saved state does not name was added to the class since (a plugin's new
            # version, or reste's): the state trained with what its default gives, so only another value differs
            defaults = self._defaults()
            trained = {k: config.get(k, defaults.get(k)) for k in set(config) | set(own)}
            differ = sorted(k for k, v in trained.items() if v != own.get(k))
            if differ:
                saved_values = ", ".join(f"{k}={trained[k]!r}" for k in differ)
                own_values = ", ".join(f"{k}={own.get(k)!r}" for k in differ)
                error_msgs.append(
                    f"{prefix}_extra_state: the state of a {self.name!r} estimator with {saved_values} cannot load "
                    f"into one with {own_values} (build the model with the saved hyper-parameters, or leave out the "
                    "keys ending in '_extra_state' to load the weights alone, the schedule from its start)")
                return
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    @classmethod
    def _defaults(cls) -> dict[str, Any]:
        """Each hyper-parameter's default, checked as the constructor checks it (``{}`` where none is declared)."""
        try:
            return {p.name: p.check(p.default, p.name) for p in cls.hyperparameters}
        except ValueError:  # a default outside its own range: no default to stand in for a missing value
            return {}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        # each value as its hyper-parameter's type (int or float), else as it is held now: one held as a tensor
        # (a plugin's) comes back as a Python number, which set_progress replaces as it moves on
        declared = {p.name: p.type for p in self.hyperparameters}
        if not isinstance(state, Mapping):  # (review apifuzz1: "'str' object has no attribute 'get'")
            raise ValueError(f"{type(self).__name__}: the state's estimator entry (its _extra_state) is a "
                             f"{type(state).__name__}, not reste's dict of hyper-parameters; the state_dict is "
                             "damaged or not of a reste model")
        for k in self._state_names():
            if state.get(k) is None:  # (not in it, or saved before a set_progress of its own set it)
                continue
            value = real_number(state[k])
            if value is None or not math.isfinite(value):  # (review apifuzz1: o=nan loaded without a word)
                raise ValueError(f"{type(self).__name__}: the state gives {k}={state[k]!r}, not a finite number; the "
                                 "state_dict is damaged or not of a reste model")
            if k in self._buffers and isinstance(self._buffers[k], Tensor):  # (a buffer: its tensor keeps the value)
                with torch.no_grad():
                    self._buffers[k].fill_(state[k])
                continue
            now = real_number(getattr(self, k))
            setattr(self, k, declared.get(k, int if isinstance(now, int) else float)(state[k]))

    def config(self) -> dict[str, Any]:
        """Constructor arguments (a scheduled one as it started); ``get_estimator(name, **config())`` rebuilds it."""
        if not self.hyperparameters and type(self).__init__ is not Estimator.__init__:
            raise NotImplementedError(f"{type(self).__name__} has a constructor of its own: declare its "
                                      "hyper-parameters in `hyperparameters` or override config()")
        return dict(self._config)

    def spec(self) -> dict[str, Any]:
        """``{"name": ..., **config()}``: plain data that :meth:`from_spec` turns back into an estimator."""
        return {"name": self.name, **self.config()}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> "Estimator":
        """A new estimator from :meth:`spec`'s dict (any registered estimator when called on ``Estimator``)."""
        if not isinstance(spec, Mapping):  # (a name gave "dictionary update sequence element #0 ...": review apifuzz1)
            raise ValueError(f"an estimator spec is a dict such as {{'name': 'reste', 'o_end': 3.0}} (what spec() "
                             f"returns), got {spec!r}"[:200] + "; for a name, use reste.get_estimator(name)")
        data = dict(spec)
        name = data.pop("name", None)
        if not isinstance(name, str):
            raise ValueError(f"an estimator spec needs a 'name', got {spec!r}")
        est = get_estimator(name, **data)
        if not isinstance(est, cls):
            raise ValueError(f"spec {name!r} is not a {cls.__name__}")
        return est

    def extra_repr(self) -> str:
        """The settings it was built with, and where its schedule stands now: ``o=1, ..., now: o=2.69``."""
        show = lambda items: ", ".join(  # noqa: E731
            f"{k}={v:g}" if isinstance(v, float) else f"{k}={v!r}" for k, v in items)
        try:
            text = show(self.config().items())
        except NotImplementedError:  # a constructor of its own that declares nothing: its name alone (review models
            text = f"name={self.name!r}"  # #7: print(model) raised)
        now = self.schedule_values()
        return f"{text}, now: {show(now.items())}" if now else text


# A positive bound, width or rate: kept to normal float32 numbers, where the float32 kernels and the PyTorch path
# agree (below 1.2e-38 or above 3.4e38 each went wrong in its own way: a subnormal interval m, a clip of 1e39).
# _next_up, which ReSTE's t and m go through, is right for normal numbers alone: widen this and it must change too.
POSITIVE_RANGE = "[1e-30, 1e30]"


def _positive(name: str, help: str, default: float, flag: str = "", scheduled: bool = False) -> Param:
    return Param(name, float, default, help, POSITIVE_RANGE, scheduled=scheduled, flag=flag)


class STE(Estimator):
    """Clipped straight-through estimator (BinaryConnect / BNN): g = 1 on abs(x) <= clip."""

    name = "ste"
    hyperparameters = (_positive("clip", "clip", 1.0),)

    _g = staticmethod(ste_g)
    _kernel = "ste"
    _f = staticmethod(ste_f)
    _fused = staticmethod(fused.ste_backward)


class ReSTE(Estimator):
    """Rectified straight-through estimator (Wu et al., ICCV 2023, arXiv 2308.06689).

    F(z) = sign(z) abs(z)^(1/o); g(z) = (1/o) abs(z)^((1-o)/o) on interval < abs(z) <= t,
    the chord slope interval^(1/o)/interval on abs(z) <= interval, 0 beyond t.

    ``o`` is the exponent now (``o=1`` is a clipped STE with clip ``t``). During
    training ``set_progress`` moves it from ``o`` to ``o_end`` along ``schedule``
    (``"cosine"``, the paper's progressive ramp; ``"linear"``; ``"constant"``).

    The bounds are those of the dtype g is computed in: ``interval=0.1`` means float32(0.1) for a float32 input
    (slightly above 0.1), on every path alike, so an input equal to it is inside the interval. A bfloat16 or float16
    input is widened to float32 first and compared with the float32 bounds, not its own dtype's: bfloat16(0.1)
    (0.10009765625) is above float32(0.1), so outside the interval (review api #16). A NaN input gets gradient
    NaN, except at ``o=1`` (a clipped STE, as ``ste``), where it gets 0.
    """

    name = "reste"
    hyperparameters = (
        Param("o", float, 1.0, "initial exponent o, 1 is a clipped STE", "[1, inf)", scheduled=True),
        _positive("t", "threshold t", 1.5),
        _positive("interval", "interval m around 0", 0.1),
        Param("o_end", float, 3.0, "final o", "[1, inf)"),
        Param("schedule", str, "cosine", "schedule of o", choices=("cosine", "linear", "constant"),
              flag="o_schedule"),
    )
    relations = (("t", ">", "interval"),)

    ramped = ("o", "o_end")

    def _setup(self) -> None:
        if self.schedule != "constant" and self.o_end == self.o:
            warnings.warn(
                f"ReSTE o schedule {self.schedule!r} never changes (o = o_end = {self.o}); "
                f"pass {option('--o-end', 'o_end')} > o or "
                f"{option('--o-schedule constant', 'schedule=' + repr('constant'))}",
                ScheduleWarning, stacklevel=outside_reste(),  # the user's line (ReSTE(...), binarize(...))
            )
        elif self.schedule != "constant" and self.o_end < self.o:
            warnings.warn(
                f"ReSTE o falls over training, from o = {self.o} to o_end = {self.o_end}; the paper's schedule "
                f"rises from 1: pass {option('--o-end', 'o_end')} > o if that was meant",
                ScheduleWarning, stacklevel=outside_reste(),
            )

    def params(self) -> dict[str, float]:
        return {"o": self.o, "t": self.t, "m": self.interval}

    _g = staticmethod(reste_g)
    _kernel = "reste"
    _f = staticmethod(reste_f)
    _fused = staticmethod(fused.reste_backward)

    def set_progress(self, epoch: float, epochs: int) -> None:
        self.o = schedules.ramp(self.schedule, self._config["o"], self.o_end, epoch, epochs)


class ApproxSign(Estimator):
    """ApproxSign (Liu et al., Bi-Real Net, ECCV 2018): g = max(2 - 2 abs(x), 0)."""

    name = "approx_sign"

    _g = staticmethod(approx_sign_g)
    _kernel = "approx_sign"
    _f = staticmethod(approx_sign_f)


class SignSwish(Estimator):
    """SignSwish (Darabi et al., BNN+, 2018): the derivative of 2 sigmoid(bx)(1 + bx(1 - sigmoid(bx))) - 1."""

    name = "sign_swish"
    hyperparameters = (_positive("beta", "beta", 5.0),)

    _g = staticmethod(sign_swish_g)
    _kernel = "sign_swish"
    _f = staticmethod(sign_swish_f)


class EDE(Estimator):
    """Error decay estimator (Qin et al., IR-Net, CVPR 2020): F = k tanh(t x).

    Per epoch i of N: t = t_min * 10^((i/N) log10(t_max/t_min)), k = max(1/t, 1).
    The paper uses t_min = 0.1, t_max = 10 (the IR-Net CIFAR code uses 1e-3).
    """

    name = "ede"
    hyperparameters = (_positive("t_min", "initial t", 0.1), _positive("t_max", "final t", 10.0))
    _state_keys = ("t", "k")

    def _setup(self) -> None:
        if self.t_max < self.t_min:
            warnings.warn(
                f"{type(self).__name__} t falls over training, from t_min = {self.t_min} to t_max = {self.t_max} "
                "(the estimator moves away from sign); the paper's schedule rises: pass t_max > t_min if that was "
                "meant",
                ScheduleWarning, stacklevel=outside_reste(),  # the user's line (EDE(...), binarize(...))
            )
        self.set_progress(0, 1)

    def params(self) -> dict[str, float]:
        return {"t": self.t, "k": self.k}

    _g = staticmethod(ede_g)
    _kernel = "ede"
    _f = staticmethod(ede_f)

    def set_progress(self, epoch: float, epochs: int) -> None:
        self.t = schedules.ramp("log", self.t_min, self.t_max, epoch, epochs)
        self.k = max(1.0 / self.t, 1.0)


class RBNN(EDE):
    """RBNN training-aware approximation (Lin et al., NeurIPS 2020).

    F = k(-sign(x) t^2 x^2/2 + sqrt(2) t x) on abs(x) < sqrt(2)/t, else k sign(x);
    g = k max(sqrt(2) t - t^2 abs(x), 0); t and k follow EDE's schedule with
    t_min = 1e-2, t_max = 10.
    """

    name = "rbnn"
    # t^2 stays a float32 number (t up to 1.8e19): past it g was NaN at 0 and F -inf (review math #4)
    hyperparameters = (dataclasses.replace(EDE.hyperparameters[0], default=1e-2, range="[1e-19, 1e19]"),
                       dataclasses.replace(EDE.hyperparameters[1], range="[1e-19, 1e19]"))

    _g = staticmethod(rbnn_g)
    _kernel = "rbnn"
    _f = staticmethod(rbnn_f)


class DSQ(Estimator):
    """Differentiable soft quantization (Gong et al., ICCV 2019), one bit on [-1, 1].

    phi(x) = s tanh(k (x - m)) with k = ln(2/alpha - 1)/(u - l), s = 1/(1 - alpha).
    alpha moves from ``alpha`` to ``alpha_end`` along ``schedule`` (``"linear"`` by
    default; ``"constant"`` keeps it fixed). Smaller alpha is closer to sign.
    """

    name = "dsq"
    hyperparameters = (
        Param("alpha", float, 0.2, "initial alpha", "(0, 1)", scheduled=True),
        Param("alpha_end", float, 0.05, "final alpha", "(0, 1)"),
        Param("schedule", str, "linear", "schedule of alpha", choices=schedules.RAMPS, flag="alpha_schedule"),
    )

    ramped = ("alpha", "alpha_end")

    def params(self) -> dict[str, float]:
        return {"alpha": self.alpha}

    _g = staticmethod(dsq_g)
    _kernel = "dsq"
    _f = staticmethod(dsq_f)

    def set_progress(self, epoch: float, epochs: int) -> None:
        self.alpha = schedules.ramp(self.schedule, self._config["alpha"], self.alpha_end, epoch, epochs)


FDA_TERMS = 1000  # the largest n of FDA's series, which sums n + 1 terms (its defaults grow from 9 to 18)


class FDA(Estimator):
    """Fourier-series approximation of sign (Xu et al., NeurIPS 2021).

    g = (4 w / pi) sum_{i=0..n} cos((2i+1) w x) on abs(x) <= 1, else 0; n grows
    linearly (rounded down) from ``n`` towards ``n_end`` over training. Like every ramp it is
    evaluated at e/E, so ``n_end`` is its limit, reached only past E: over E epochs the last epoch
    uses n = floor(n + (E - 1)/E (n_end - n)) = n_end - ceil((n_end - n)/E), n_end - 1 once
    E >= n_end - n (for the defaults, 9 to 18: 9 for E = 1, 13 for 2, 16 for 5, 17 from 9 on); the
    series then sums n + 1 terms.
    """

    name = "fda"
    hyperparameters = (
        # (at most FDA_TERMS: each term is a cosine of every weight and activation, in each step; review fuzz1 #1:
        # 10^8 passed every check, and the run then hung in its first step, where no stop signal is taken)
        Param("n", int, 9, "initial n, the last term's index (n + 1 terms)", f"[0, {FDA_TERMS}]", scheduled=True,
              flag="fda_n"),
        Param("n_end", int, 18, "final n", f"[0, {FDA_TERMS}]", flag="fda_n_end"),
        _positive("w", "frequency w", 0.1, flag="fda_w"),
    )
    relations = (("n_end", ">=", "n"),)

    def params(self) -> dict[str, float]:
        return {"n": self.n, "w": self.w}

    _g = staticmethod(fda_g)
    _kernel = "fda"
    _f = staticmethod(fda_f)

    def set_progress(self, epoch: float, epochs: int) -> None:
        start = self._config["n"]
        self.n = int(math.floor(schedules.ramp("linear", start, self.n_end, epoch, epochs) + 1e-9))


# The PyTorch expression each Triton kernel computes (Estimator._kernel_kind checks a class still uses it).
_KERNEL_G: dict[str, Callable[..., Tensor]] = {
    "ste": ste_g, "reste": reste_g, "approx_sign": approx_sign_g, "sign_swish": sign_swish_g,
    "ede": ede_g, "rbnn": rbnn_g, "dsq": dsq_g, "fda": fda_g,
}

# --------------------------------------------------------------------- registry

_REGISTRY: dict[str, type[Estimator]] = {}
#: larq's names of the same estimators (``ste_sign``: clip 1; ``swish_sign``: beta 5, as here)
ALIASES = {"ste_sign": "ste", "swish_sign": "sign_swish"}
LARQ_KEYWORDS = {"clip_value": "clip"}  # larq's quantizers' keywords (ste_sign(clip_value=...)): reste's names


def _key(name: str) -> str:
    return name.lower().replace("-", "_")


def register_estimator(cls: type[Estimator]) -> type[Estimator]:
    """Class decorator: register an estimator under ``cls.name``, live for every entry point.

    ``get_estimator``, ``binarize``, the zoo's ``estimator=``, ``TrainConfig``, checkpoints,
    ``reste sweep`` and ``reste train --estimator NAME`` (with one flag per hyper-parameter)
    know it from then on. Raises ``ValueError`` for a class without a name or without ``_g``, a name taken
    by another class, bad defaults, a hyper-parameter named as a run's setting (``hparams.SETTINGS``) or flagged as
    a flag of ``reste train`` or ``reste sweep``, a flag that another estimator uses with another meaning, or a
    ``_g`` or ``_f`` that, tried at the defaults, cannot take what ``params()`` gives or returns no tensor shaped
    like x.
    """
    if not (isinstance(cls, type) and issubclass(cls, Estimator)):
        raise ValueError(f"register_estimator takes an Estimator subclass, got {cls!r}")
    if not isinstance(cls.name, str) or not cls.name.isidentifier() or _key(cls.name) != cls.name:
        raise ValueError(f"{cls.__name__} needs a name that is a lower-case Python identifier (letters, digits and "
                         f"_, as in 'my_est'), got {cls.name!r}")
    old = _REGISTRY.get(cls.name)
    if old is not None and _origin(old) != _origin(cls):
        raise ValueError(f"estimator name {cls.name!r} is already registered by {old.__module__}.{old.__qualname__}")
    reads_as = _lookup(cls.name) or cls.name  # names match without underscores, larq's too: SignSwish, ste_sign
    taken = _REGISTRY.get(reads_as)
    if reads_as != cls.name and taken is not None and _origin(taken) != _origin(cls):
        raise ValueError(f"estimator name {cls.name!r} reads as {reads_as!r} (names are matched without "
                         "underscores, larq's names included); choose another name")
    try:
        cls.check_hyperparameters({})
    except ValueError as err:
        raise ValueError(f"estimator {cls.name!r}: a default is not valid: {err}") from None
    except KeyError as err:
        raise ValueError(f"estimator {cls.name!r}: its relations name {err}, which is neither a hyper-parameter "
                         f"nor one of {', '.join(_RELATIONS)}") from None
    taken_names = set(dir(Estimator)) | set(vars(nn.Module()))  # (training, params, name, forward, ...)
    flags_here: dict[str, str] = {}
    for p in cls.hyperparameters:  # (reste train's and sweep's own flags: RESERVED_FLAGS, no CLI import)
        # (review extend1 #3: each is set as an attribute of the estimator, so `training` was overwritten by
        # .train(), and `params` or `name` broke the run)
        if p.name in taken_names:
            raise ValueError(f"estimator {cls.name!r}: its hyper-parameter {p.name!r} has the name of an attribute "
                             "every estimator has (an nn.Module's or reste.Estimator's); give it another name")
        # (review diff30 #4: a method of the class's own; diff31 #3: not the metaclass's `mro`, nor a class held)
        holder = next((c for c in cls.__mro__ if p.name in vars(c)), None)
        if holder is not None and isinstance(vars(holder)[p.name], (types.FunctionType, property, staticmethod,
                                                                     classmethod)):
            raise ValueError(f"estimator {cls.name!r}: its hyper-parameter {p.name!r} has the name of a method of "
                             f"{holder.__name__}, which its value would hide; give one of them another name")
        if p.name.startswith("_"):
            raise ValueError(f"estimator {cls.name!r}: its hyper-parameter {p.name!r} starts with _, as the "
                             "estimator's own attributes do; give it a name that starts with a letter")
        for flag in dict.fromkeys((p.dest, p.name)):  # (review extend1 #7: a flag two of them share set one alone)
            if flags_here.get(flag, p.name) != p.name:
                raise ValueError(f"estimator {cls.name!r}: its hyper-parameters {flags_here[flag]!r} and {p.name!r} "
                                 f"both answer to {'--' + flag.replace('_', '-')}; give one another flag= in its "
                                 "Param")
            flags_here[flag] = p.name
        if p.name in SETTINGS:  # (a grid axis or a plot label could not tell them apart)
            raise ValueError(f"estimator {cls.name!r}: its hyper-parameter {p.name!r} has the name of a run's "
                             "setting (--grid, the tables and the plots name settings by it); give it another name")
        if p.dest in RESERVED_FLAGS or p.option in RESERVED_FLAGS or "--" + p.dest in RESERVED_FLAGS:
            raise ValueError(f"estimator {cls.name!r}: the flag {p.option} of its hyper-parameter {p.name!r} is taken "
                             "by `reste train` or `reste sweep`; give it another flag= in its Param")
        for other, q in estimator_flags().get(p.dest, ()):
            if other != cls.name and (q.name, q.type) != (p.name, p.type):
                raise ValueError(f"estimator {cls.name!r}: flag {p.option} means {q.type.__name__} {q.name!r} of "
                                 f"{other!r}; give {p.name!r} another flag= in its Param")
    if cls.ramped is not None:  # (review extend1, suggestion 3: a ramp whose schedule had another name was ignored)
        names = {p.name for p in cls.hyperparameters}
        ramp = tuple(cls.ramped) if isinstance(cls.ramped, (tuple, list)) and len(cls.ramped) == 2 else ()
        missing = [n for n in (*ramp, "schedule") if n not in names]
        if not ramp or missing:
            raise ValueError(f"estimator {cls.name!r}: ramped = {cls.ramped!r} names (start, end) of a hyper-parameter "
                             "that one called schedule ramps (its 'constant' holds the start); "
                             + (f"it has no {', '.join(map(repr, missing))}" if ramp else "give a tuple of two names")
                             + " (a schedule of another flag: Param('schedule', ..., flag='k_schedule'))")
    if cls._g is Estimator._g:  # training would fail at its first backward (a typo: def g, _G; derivative alone)
        alone = ", which the backward calls and an override of derivative() does not replace" \
            if cls.derivative is not Estimator.derivative else ""
        raise ValueError(f"estimator {cls.name!r} ({cls.__name__}) defines no _g (g(x), the factor its backward "
                         f"multiplies the gradient by){alone}: define _g(self, x, **params)")
    _check_returns_tensors(cls)
    _REGISTRY[cls.name] = cls
    return cls


def _check_returns_tensors(cls: type[Estimator]) -> None:
    """``_g`` and ``_f`` of ``cls``, tried once at its defaults on a few numbers, return tensors that fit x (review
    extend #11: a ``_g`` giving the number 1.0, the unclipped STE as one would write it, failed at the first
    backward with "'float' object has no attribute 'dtype'", naming neither). One that raises is left to its use,
    whose error names it, as is a class that cannot be built without arguments."""
    try:
        est = cls()
        params = est.params()
    except Exception:  # noqa: BLE001 - a constructor of its own
        return
    # (of several dimensions: one's size is no other's; in float64, which the fused C kernels never take, so that
    # importing reste builds none of them: review install1, suggestion 1)
    x = torch.linspace(-2.0, 2.0, 24, dtype=torch.float64).reshape(2, 3, 4)
    for hook in ("_g", "_f"):
        if hook == "_f" and cls._f is Estimator._f:
            continue
        function = getattr(est, hook)
        try:
            out = function(x, **params)
        except TypeError as err:  # (review user3, suggestion 5: it failed at the run's first step, after "training")
            _refuse_signature(cls, hook, function, params, err)
            continue  # its own error, at its use
        except Exception:  # noqa: BLE001 - its own error, at its use
            continue
        got = f"a {type(out).__name__}" if not isinstance(out, Tensor) else \
            None if _fits(out.shape, x.shape) else f"a tensor of shape {tuple(out.shape)} for x of {tuple(x.shape)}"
        if got:  # (review diff21 #7: one of another shape failed at the first backward too)
            raise ValueError(f"estimator {cls.name!r} ({cls.__name__}): {hook} returned {got}; it must return a "
                             f"tensor shaped like x (for a constant, e.g. torch.ones_like(x))")
        if out.is_floating_point() and not bool(torch.isfinite(out).all()):
            # (review research1: a g of NaN at ordinary inputs trained one step, then stopped the run with "non-finite
            # loss ...; lower --lr or check the data", which names neither)
            at = x[(~torch.isfinite(out)).expand(x.shape)][0]
            warnings.warn(f"estimator {cls.name!r} ({cls.__name__}): {hook} returned NaN or inf at its defaults "
                          f"(at x = {float(at):.4g}, tried on [-2, 2]); "
                          + ("a NaN g turns the gradients and then the weights NaN, and a run stops at its next "
                             "step with 'non-finite loss'" if hook == "_g" else
                             "the general indicators and the F plot read it") + f"; check {hook}",
                          UserWarning, stacklevel=outside_reste())


def _refuse_signature(cls: type[Estimator], hook: str, function: Callable[..., Any], params: dict[str, Any],
                      err: TypeError) -> None:
    """Refuse ``cls`` where the TypeError its ``hook`` raised is that the hook cannot take ``params()``'s keywords
    (its signature cannot bind them); any other TypeError is its own, left to its use."""
    try:
        signature = inspect.signature(function)
        signature.bind(torch.zeros(1), **params)
        return
    except ValueError:  # (a signature Python cannot read)
        return
    except TypeError as why:
        bound = why
    raw = getattr(function, "__func__", None)  # a method: its function, whose first parameter gets the estimator
    if inspect.ismethod(function) and isinstance(raw, types.FunctionType):
        try:  # (review research1: `def _g(x, p)` without @staticmethod was told to override params())
            inspect.signature(raw).bind(torch.zeros(1), **params)
        except (TypeError, ValueError):
            pass
        else:
            first = next(iter(inspect.signature(raw).parameters))
            raise ValueError(f"estimator {cls.name!r} ({cls.__name__}): {hook} is a method whose first parameter, "
                             f"{first}, receives the estimator: put @staticmethod above it, or write "
                             f"{hook}(self, {first}, ...)") from err
    takes = ", ".join(list(signature.parameters)[1:]) or "x alone"
    raise ValueError(f"estimator {cls.name!r} ({cls.__name__}): {hook} cannot take what params() gives "
                     f"({', '.join(params) or 'nothing'}; {hook} takes {takes}: {bound}); override params() to "
                     "return what _g and _f read") from err


def _fits(shape: torch.Size, like: torch.Size) -> bool:
    """Whether a tensor of ``shape`` broadcasts to ``like`` and no further: each trailing size 1 or ``like``'s. (In
    Python: torch.broadcast_shapes imports sympy, 0.3 to 0.8 s of every command, as the built-ins register at import;
    review perf2 #1.)"""
    return len(shape) <= len(like) and all(a in (1, b) for a, b in zip(reversed(shape), reversed(like)))


register = register_estimator  # the earlier name


def _origin(cls: type) -> tuple[str, str]:
    """Where a class is written: the same file imported twice (as a module and as a path) is the same class."""
    module = sys.modules.get(cls.__module__)
    where = getattr(module, "__file__", None)
    return (os.path.realpath(where) if where else cls.__module__), cls.__qualname__


def list_estimators() -> tuple[str, ...]:
    """The registered estimator names, now (the estimators of installed plugins included)."""
    plugins.load_entry_points()
    return tuple(_REGISTRY)


class _LiveNames(Sequence):
    """``ESTIMATORS``: a read-only view of the registered names that follows the registry."""

    def __getitem__(self, index: Any) -> Any:
        return list_estimators()[index]

    def __len__(self) -> int:
        return len(list_estimators())

    def __iter__(self) -> Iterator[str]:
        return iter(list_estimators())

    def __contains__(self, name: object) -> bool:
        return name in list_estimators()

    def __eq__(self, other: object) -> bool:
        return tuple(self) == (tuple(other) if isinstance(other, (tuple, list, _LiveNames)) else other)

    def __hash__(self) -> int:
        return id(self)

    def __repr__(self) -> str:
        return repr(list_estimators())


ESTIMATORS: Sequence[str] = _LiveNames()


def _lookup(key: str) -> str | None:
    """The registered name for ``key``: itself, or the one it spells without underscores
    (``SignSwish``), or a larq name's."""
    if key in _REGISTRY:
        return key
    bare = key.replace("_", "")
    for known in (*_REGISTRY, *ALIASES):
        if known.replace("_", "") == bare:
            return ALIASES.get(known, known)
    return None


def estimator_class(name: str) -> type[Estimator]:
    """The class registered as ``name`` (case-insensitive; dashes, underscores and larq's names allowed:
    ``SignSwish``, ``swish_sign``); ``UsageError`` listing the valid names."""
    key = _lookup(_key(name))
    if key is None:
        plugins.load_entry_points()
        key = _lookup(_key(name))
    if key is None:
        raise UsageError(f"unknown estimator {name!r}; {did_you_mean(name, _REGISTRY)}valid: {', '.join(_REGISTRY)} "
                         "(an estimator of your own: "
                         f"register it with @reste.register_estimator in a module you import, load it with "
                         f"--plugin MODULE (in Python: import MODULE, or reste.plugins.load_plugins(['MODULE'])), or "
                         f"name it in the {plugins.GROUP!r} entry point){plugins.broken_note()}")
    return _REGISTRY[key]


def estimator_flags() -> dict[str, list[tuple[str, Param]]]:
    """The ``reste train`` flags (as dests) of every registered estimator's hyper-parameters,
    each with the (estimator, Param) pairs that take it (``t_min``: ede and rbnn)."""
    flags: dict[str, list[tuple[str, Param]]] = {}
    for name, cls in _REGISTRY.items():
        for p in cls.hyperparameters:
            flags.setdefault(p.dest, []).append((name, p))
    return flags


def get_estimator(name_or_instance: str | Estimator, **hyperparameters: Any) -> Estimator:
    """An estimator from its registered name (case-insensitive) or an instance. larq's keyword ``clip_value`` is
    taken as ``clip`` (``get_estimator("ste_sign", clip_value=1.25)``, as larq's ``SteSign(clip_value=1.25)``).

    >>> get_estimator("reste", o_end=3.0)
    ReSTE(o=1, t=1.5, interval=0.1, o_end=3, schedule='cosine', now: o=1)
    """
    if isinstance(name_or_instance, Estimator):
        if hyperparameters:
            raise ValueError("hyper-parameters can only be given with an estimator name, not an instance")
        return name_or_instance
    if isinstance(name_or_instance, type) and issubclass(name_or_instance, Estimator):
        cls = name_or_instance
        raise ValueError(f"expected an estimator name or instance, got the class {cls.__name__}: pass its name "
                         f"({cls.name!r}, with hyper-parameters as keywords) or an instance ({cls.__name__}(...))")
    if not isinstance(name_or_instance, str):
        raise ValueError(f"expected an estimator name or instance, got {type(name_or_instance).__name__}")
    cls = estimator_class(name_or_instance)
    table = {p.name for p in cls.hyperparameters}
    for larq, ours in LARQ_KEYWORDS.items():  # a larq keyword, where the estimator takes ours and it is not given too
        if larq in hyperparameters and larq not in table and ours in table:
            if ours in hyperparameters:  # (review diff34: "unexpected keyword clip_value")
                raise ValueError(f"{larq} is larq's name for {ours}: give one of them, not both")
            hyperparameters[ours] = hyperparameters.pop(larq)
    try:
        return cls(**hyperparameters)
    except TypeError as err:
        raise ValueError(f"bad hyper-parameters for estimator {cls.name!r}: {err}") from None


for _cls in (STE, ReSTE, ApproxSign, SignSwish, EDE, RBNN, DSQ, FDA):
    register_estimator(_cls)

