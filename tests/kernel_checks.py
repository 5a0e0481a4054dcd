"""Inputs, PyTorch references and tolerances shared by the tests of the fused GPU kernels: the Triton
kernels (``test_gpu_kernels.py``, under Triton's interpreter) and the compiled extension
(``test_cuda_ext.py``, its CPU loops). Both compute what the PyTorch expressions of
``reste.estimators`` compute, so both are held to the same per-element bounds, derived below from
the operations each performs.
"""

from __future__ import annotations

import math

import torch

from reste import estimators, fused
from reste.estimators import _compute_dtype, get_estimator

ULP32 = 2.0**-23  # float32 spacing at 1: a relative ulp is between ULP32 / 2 and ULP32
ULP16 = {torch.float32: 0.0, torch.bfloat16: 2.0**-7, torch.float16: 2.0**-10}  # one 16-bit ulp, relative
DTYPES = (torch.float32, torch.bfloat16, torch.float16)
SHAPE = (2, 5, 13, 17)  # 2210 elements: three programs of 1024, the last one partial

# each estimator with a schedule moved off its start, so every parameter is a generic number
ESTIMATORS = {
    "ste": lambda: get_estimator("ste"),
    "reste": lambda: _moved(get_estimator("reste", o_end=3.0)),
    "approx_sign": lambda: get_estimator("approx_sign"),
    "sign_swish": lambda: get_estimator("sign_swish"),
    "ede": lambda: _moved(get_estimator("ede")),
    "rbnn": lambda: _moved(get_estimator("rbnn")),
    "dsq": lambda: _moved(get_estimator("dsq")),
    "fda": lambda: _moved(get_estimator("fda")),
}


def _moved(est):
    est.set_progress(7, 10)
    return est


# ------------------------------------------------------------------------ inputs


def _bounds(est) -> list[float]:
    """The points where est's g changes its formula."""
    p = est.params()
    name = est.name
    if name == "ste":
        return [p["clip"]]
    if name == "reste":
        return [p["t"], p["m"]]
    if name == "rbnn":
        return [math.sqrt(2.0) / p["t"]]
    if name in ("approx_sign", "dsq", "fda"):
        return [1.0]
    return []


def _neighbours(values: torch.Tensor) -> torch.Tensor:
    """The values and the floats just below and above each (of their own dtype), both signs; nonzero finite."""
    bits = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16}[values.dtype]
    raw = values.view(bits)
    near = torch.cat([(raw - 1).view(values.dtype), values, (raw + 1).view(values.dtype)])
    return torch.cat([near, -near])


def edge_values(dtype: torch.dtype, bounds: list[float]) -> torch.Tensor:
    """Every edge: the bounds and their neighbours, +-0, +-inf, NaN, subnormals, tiny and huge values."""
    tiny = torch.finfo(dtype).tiny  # smallest normal
    points = [*bounds, 1.0, 0.5, tiny, tiny * 0.5, tiny * 2.0**-5, 1e-30, 3.0e38 if dtype == torch.float32 else 6e4]
    finite = _neighbours(torch.tensor(points, dtype=torch.float32).to(dtype))
    special = torch.tensor([0.0, -0.0, math.inf, -math.inf, math.nan], dtype=dtype)
    return torch.cat([finite, special])


def inputs(dtype: torch.dtype, bounds: list[float], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, grad) of SHAPE, contiguous: the edges first, then normal values of scale 1.2; grad normal."""
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(SHAPE, generator=g) * 1.2).to(dtype)
    edges = edge_values(dtype, bounds)
    x.view(-1)[: edges.numel()] = edges
    grad = torch.randn(SHAPE, generator=g).to(dtype)
    return x, grad


def layouts(x: torch.Tensor, grad: torch.Tensor, layout: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The same values in a memory layout: contiguous, channels_last (grad too), mixed (grad contiguous),
    strided (a non-dense view of a larger tensor) or permuted (dense in another order of its dimensions, grad
    contiguous: a transposed Linear input)."""
    if layout == "permuted":
        order = (2, 0, 3, 1)[:x.dim()] if x.dim() == 4 else tuple(reversed(range(x.dim())))
        inverse = sorted(range(x.dim()), key=order.__getitem__)
        return x.permute(order).contiguous().permute(inverse), grad
    if layout == "channels_last":
        cl = torch.channels_last
        return x.contiguous(memory_format=cl), grad.contiguous(memory_format=cl)
    if layout == "mixed":
        return x.contiguous(memory_format=torch.channels_last), grad
    if layout == "strided":
        big = torch.zeros(x.shape[:-1] + (2 * x.shape[-1],), dtype=x.dtype)
        big[..., ::2] = x
        return big[..., ::2], grad
    return x, grad


# --------------------------------------------------------------------- references


def torch_sign(x: torch.Tensor) -> torch.Tensor:
    """``reste.estimators.sign`` on its PyTorch-op path."""
    fused.set_enabled(False)
    try:
        return estimators.sign(x)
    finally:
        fused.set_enabled(None)


def torch_backward(est, x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """What ``_SignFunction.backward`` computes on the PyTorch path: grad * g(x), g in float32 for 16-bit x."""
    g = est._g(_compute_dtype(x), **est.params())
    return g.mul_(grad) if g.dtype == grad.dtype else (g * grad).to(grad.dtype)


def tolerance(est, x: torch.Tensor, grad: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Per element, how far the kernel may be from ``torch_backward`` (0: bit for bit).

    * ste, approx_sign, rbnn: a comparison, abs, at most a multiply and a subtract, and the product
      with grad, each correctly rounded in both, in the same order: equal.
    * reste: c^p, c = max(a, m) in [m, t], p = (1 - o)/o, as exp2(p log2 c), on each side: log2 c
      within 1 ulp (at most L ulp32 absolutely, L = max |log2 c|), the product with p rounded (half
      an ulp), so the argument of exp2 is off by 1.5 |p| L ulp32 absolutely, which exp2 turns into
      1.5 |p| L ln 2 ulp32 relative, plus its own error (2 ulp: CUDA's exp2f; 1 elsewhere). Both
      implementations err so: (3 |p| L ln 2 + 4) ulp32 relative, before the products below.
    * sign_swish: s = sigmoid(u) within an ulp; s (1 - s) <= 1/4 off by about ulp32 absolutely,
      (2 + u (1 - 2 s)) by about |u| ulp32: 2 beta (2 + |u|) 4 ulp32 absolutely, times |grad|.
    * ede, dsq: 1 - tanh(z)^2 cancels: tanh within an ulp leaves 1 - tanh^2 off by 2 ulp32 absolutely,
      plus the rounding of each step: scale 4 ulp32 absolutely, times |grad|.
    * fda: n + 1 cosines each within an ulp, their arguments rounded (|(2i+1) w x| ulp32 / 2, a cosine
      moving by at most that), and a running sum whose every addition rounds (below (n + 1) ulp32 / 2):
      scale (n + 1)(n + 3) ulp32 absolutely, times |grad|.
    Every product and the final one with grad round once more: 2 ulp32 of the result (on both sides). 16-bit results
    then add one 16-bit ulp of the result (its smallest subnormal where the result is that small).
    """
    p = est.params()
    xf, gf, rf = x.float(), grad.float().abs(), ref.float().abs()
    if est.name in ("ste", "approx_sign", "rbnn"):
        tol = torch.zeros_like(rf)
    elif est.name == "reste":
        q = abs(1 - p["o"]) / p["o"]
        span = max(abs(math.log2(p["m"])), abs(math.log2(p["t"])))
        tol = (3 * q * span * math.log(2) + 4) * ULP32 * rf
    elif est.name == "sign_swish":
        beta = p["beta"]
        tol = 2 * beta * (2 + (beta * xf).abs()) * 4 * ULP32 * gf
    elif est.name in ("ede", "dsq"):
        scale = p["k"] * p["t"] if est.name == "ede" else 1 / (1 - p["alpha"]) * math.log(2 / p["alpha"] - 1) / 2
        tol = scale * 4 * ULP32 * gf + 4 * ULP32 * rf
    else:  # fda
        n = p["n"]
        tol = 4 * p["w"] / math.pi * (n + 1) * (n + 3) * ULP32 * gf
    if est.name not in ("ste", "approx_sign", "rbnn"):
        tol = tol + 2 * ULP32 * rf
    return tol + _rounded_once(x.dtype, rf)


def _smallest_subnormal(dtype: torch.dtype) -> float:
    info = torch.finfo(dtype)
    return info.tiny * info.eps


def assert_within(out: torch.Tensor, ref: torch.Tensor, tol: torch.Tensor) -> None:
    """Same dtype and shape; NaN exactly where ref has NaN; infinities equal; elsewhere |out - ref| <= tol."""
    assert out.dtype == ref.dtype and out.shape == ref.shape
    o, r = out.float(), ref.float()
    assert torch.equal(o.isnan(), r.isnan()), "NaN on different elements"
    finite = r.isfinite()
    assert torch.equal(o[~finite & ~r.isnan()], r[~finite & ~r.isnan()])
    if not finite.any():  # (an empty tensor, or no finite element: nothing more to compare)
        return
    err = (o - r).abs()[finite]
    excess = err - tol[finite]
    worst = int(excess.argmax())
    assert excess.max() <= 0, (f"|out - ref| = {err[worst]:.3e} > tol {tol[finite][worst]:.3e} at "
                               f"ref {r[finite][worst]:.6e}")


def weight(shape, layout: str, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g) * 0.05
    w.view(-1)[:6] = torch.tensor([0.0, -0.0, 1e-40, -1e-40, 0.1, -0.1])  # sign(0) = +1, abs'(0) = 0, subnormals
    if layout == "input_major":  # dense, but each output channel's elements lie apart in memory
        return w.transpose(0, 1).contiguous().transpose(0, 1)
    return w.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else w


def torch_scaled_sign(est, w: torch.Tensor, groups: int, upstream: torch.Tensor):
    """(sign(w) alpha, dL/dw) by the layers' PyTorch path (a 16-bit w in float32, rounded once at the end)."""
    fused.set_enabled(False)
    try:
        w = w.detach().clone().requires_grad_(True)
        z = _compute_dtype(w)
        alpha = z.abs().mean() if groups == 1 else z.abs().mean(dim=tuple(range(1, z.dim())), keepdim=True)
        y = (est(z) * alpha).to(w.dtype)
        y.backward(upstream)
        return y.detach(), w.grad
    finally:
        fused.set_enabled(None)


def assert_scaled_sign_within(est, w: torch.Tensor, groups: int, upstream: torch.Tensor,
                              out: tuple[torch.Tensor, torch.Tensor], ref: tuple[torch.Tensor, torch.Tensor]) -> None:
    """A fused binary weight and its gradient ``out = (y, dw)`` against the layers' ``ref`` (torch_scaled_sign).

    alpha = a sum of N = numel / groups positive terms in another order: each order is within
    (N - 1) ulp32 / 2 of the exact sum, so the two within N ulp32 of each other, relatively.
    dW = g(w) grad alpha + sgn(w) d_alpha / N: the first term within the kernel's tolerance plus
    alpha's; d_alpha = sum(grad sign(w)) of N signed terms, within N ulp32 of sum(|grad|) absolutely.
    A 16-bit w: both sides compute in float32 and round once, so one 16-bit ulp of the result more.
    """
    (y, dw), (ref_y, ref_dw) = out, ref
    n = w.numel() // groups
    y32, up32 = ref_y.float().abs(), upstream.float()
    assert_within(y, ref_y, n * ULP32 * y32 + _rounded_once(ref_y.dtype, y32))
    first = torch_backward(est, w.float(), up32 * y32)
    abs_sum = up32.abs().reshape(groups, -1).sum(dim=1)  # per group (output channels lead in both layouts)
    second = (ULP32 * abs_sum).repeat_interleave(n).reshape(w.shape)  # N ulp32 sum(|grad|) / N
    tol = tolerance(est, w.float(), up32 * y32, first) + n * ULP32 * first.abs() + second
    assert_within(dw, ref_dw, tol + _rounded_once(ref_dw.dtype, ref_dw.float().abs()))


def _rounded_once(dtype: torch.dtype, magnitude: torch.Tensor) -> torch.Tensor | float:
    """One ulp of a 16-bit result of that ``magnitude`` (its smallest subnormal where it is that small); 0 for
    float32."""
    if dtype == torch.float32:
        return 0.0
    return torch.maximum(ULP16[dtype] * magnitude, torch.tensor(_smallest_subnormal(dtype)))


def assert_sign_matches(out: torch.Tensor, x: torch.Tensor) -> None:
    """A fused ``sign(x)``: bit for bit the PyTorch path's (NaN where x is NaN, else exactly +-1, +1 at +-0),
    in x's dtype, shape and (contiguous or channels_last) strides."""
    ref = torch_sign(x)
    assert out.dtype == x.dtype and out.shape == x.shape
    assert torch.equal(out.isnan(), ref.isnan())
    assert torch.equal(out[~ref.isnan()], ref[~ref.isnan()])
    assert set(out[~out.isnan()].unique().tolist()) == {-1.0, 1.0}
    assert out[x == 0].eq(1).all()  # sign(+-0) = +1
    if x.is_contiguous() or (x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)):
        assert out.stride() == x.stride()

