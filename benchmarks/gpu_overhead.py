"""Where an eager GPU training step of a binary network spends its host time.

On a fast GPU an eager ResNet-20 step is bound by the CPU that launches its kernels, not by the
GPU: each PyTorch op or Triton launch costs microseconds of Python and driver time, and the
binary layers add launches (sign, the weight scale, the estimators' backwards). This script
measures those costs, so that work on the eager path aims at what dominates:

1. host microseconds per call (mean over many calls on a small tensor, synchronised once at the
   end, so the GPU's own time is negligible): a plain PyTorch op, a raw Triton launch, each
   layer of reste's sign path, and the launch of an already compiled Triton kernel;
2. host time of one small binary conv's forward and backward against a float conv's;
3. a torch.profiler table of one eager resnet20_1w1a step (STE) and one resnet20 step: the
   operators with the most host time and the number of kernels launched.

    python benchmarks/gpu_overhead.py            # needs a CUDA GPU
"""

from __future__ import annotations

import argparse
import time
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from reste import models, triton_dispatch
from reste.estimators import get_estimator, sign
from reste.layers import BinaryConv2d


def host_us(fn: Callable[[], object], calls: int) -> float:
    """Mean host microseconds per call of ``fn`` (after 20 warm-up calls), synchronised at the end only."""
    for _ in range(20):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / calls * 1e6


def per_call(calls: int) -> None:
    from reste import triton_kernels as K

    dev = torch.device("cuda")
    x = torch.randn(4096, device=dev)
    y = torch.empty_like(x)
    n = x.numel()
    grid = (K.triton.cdiv(n, K.BLOCK),)  # the kernels module's own Triton
    est = get_estimator("reste")
    est.set_progress(7, 10)
    p = est.params()
    xg = x.clone().requires_grad_(True)
    grad = torch.randn_like(x)
    rows: list[tuple[str, Callable[[], object]]] = [
        ("torch.neg(x)", lambda: torch.neg(x)),
        ("torch.empty_like(x)", lambda: torch.empty_like(x)),
        ("Triton _sign_kernel[grid](...)", lambda: K._sign_kernel[grid](x, y, n, BLOCK=K.BLOCK)),
        ("triton_kernels.sign(x)", lambda: K.sign(x)),
        ("triton_dispatch.sign(x)", lambda: triton_dispatch.sign(x)),
        ("estimators.sign(x)", lambda: sign(x)),
        ("triton_kernels.backward('reste', ...)", lambda: K.backward("reste", x, grad, **p)),
        ("triton_dispatch.backward('reste', ...)", lambda: triton_dispatch.backward("reste", x, grad, **p)),
        ("est(x), x.requires_grad (autograd forward)", lambda: est(xg)),
        ("est.params()", est.params),
        ("triton_kernels.scaled_sign(w, 1)", lambda: K.scaled_sign(x, 1)),
    ]
    compiled = K._sign_kernel[grid](x, y, n, BLOCK=K.BLOCK)
    for label, args in (("compiled[grid](x, y, n)", (x, y, n)), ("compiled[grid](x, y, n, BLOCK)", (x, y, n, K.BLOCK))):
        try:
            compiled[(grid[0], 1, 1)](*args)
            torch.cuda.synchronize()
            rows.append((label, lambda a=args: compiled[(grid[0], 1, 1)](*a)))
        except Exception as err:  # the call form differs between Triton versions
            print(f"  {label}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
    print(f"1. host microseconds per call (mean of {calls} calls, 4096 float32 elements)")
    for label, fn in rows:
        try:
            print(f"  {label:<48} {host_us(fn, calls):8.1f}")
        except Exception as err:  # a probe, not a check: report and go on
            print(f"  {label:<48} failed: {type(err).__name__}: {err}")


def layer_step(calls: int) -> None:
    dev = torch.device("cuda")
    x = torch.randn(8, 16, 8, 8, device=dev, requires_grad=True)
    for label, layer in (("nn.Conv2d 16->16", nn.Conv2d(16, 16, 3, padding=1, bias=False)),
                         ("BinaryConv2d STE", BinaryConv2d(16, 16, 3, padding=1, bias=False, weight_estimator="ste")),
                         ("BinaryConv2d ReSTE", BinaryConv2d(16, 16, 3, padding=1, bias=False))):
        layer = layer.to(dev)

        def fwd_bwd(layer=layer):
            layer(x).sum().backward()

        def fwd(layer=layer):
            return layer(x)

        print(f"  {label:<24} forward {host_us(fwd, calls):7.1f} us   "
              f"forward+backward {host_us(fwd_bwd, calls):7.1f} us")


class _Identity(torch.autograd.Function):
    """A Python autograd node that launches nothing in its backward."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad


def backward_nodes(calls: int) -> None:
    """Host time of a forward and backward through one node of each kind (the same sum-and-backward around
    each), and of a Triton launch from another thread (the autograd engine runs a CUDA backward on its own
    thread)."""
    import threading

    from reste import triton_kernels as K

    dev = torch.device("cuda")
    est = get_estimator("reste")
    est.set_progress(7, 10)
    x = torch.randn(4096, device=dev, requires_grad=True)
    w = torch.randn(64, 64, device=dev, requires_grad=True)
    rows = [("torch.neg (C++ node)", lambda: torch.neg(x).sum().backward()),
            ("Python Function, no launch", lambda: _Identity.apply(x).sum().backward()),
            ("est(x): sign forward, ReSTE backward", lambda: est(x).sum().backward()),
            ("est.scaled_sign(w, 1)", lambda: est.scaled_sign(w, 1).sum().backward()),
            ("est(x) and est.scaled_sign(w, 1)", lambda: (est(x).sum() + est.scaled_sign(w, 1).sum()).backward()),
            ("w.abs().mean() * est(w) (PyTorch ops)", lambda: (w.abs().mean() * est(w)).sum().backward())]
    print("\n4. host microseconds of a forward and backward through one node")
    for label, fn in rows:
        try:
            print(f"  {label:<48} {host_us(fn, calls):8.1f}")
        except Exception as err:
            print(f"  {label:<48} failed: {type(err).__name__}: {err}")
    g = torch.randn_like(x)
    xd = x.detach()
    p = est.params()
    out: list[float] = []

    def in_thread():
        out.append(host_us(lambda: K.backward("reste", xd, g, **p), calls))

    t = threading.Thread(target=in_thread)
    t.start()
    t.join()
    print(f"  {'K.backward from another thread':<48} {out[0]:8.1f}")
    print(f"  {'K.backward from the main thread':<48} {host_us(lambda: K.backward('reste', xd, g, **p), calls):8.1f}")


def backward_thread_costs(calls: int) -> None:
    """Host microseconds of the calls an estimator's backward makes, timed inside a backward (on the
    autograd engine's CUDA thread) and on the main thread."""
    import threading

    from triton.runtime import driver

    from reste import fused
    from reste import triton_kernels as K

    dev = torch.device("cuda")
    est = get_estimator("reste")
    est.set_progress(7, 10)
    p = est.params()
    x = torch.randn(4096, device=dev)
    g = torch.randn(4096, device=dev)
    scalars, count, _ = K._scalars("reste", p)
    n = x.numel()
    out = torch.empty_like(x)
    grid = (K.triton.cdiv(n, K.BLOCK),)  # the kernels module's own Triton
    probes = {
        "torch.is_grad_enabled()": torch.is_grad_enabled,
        "torch.compiler.is_compiling()": torch.compiler.is_compiling,
        "torch.jit.is_tracing()": torch.jit.is_tracing,
        "fused.enabled()": fused.enabled,
        "driver.active.get_current_device()": lambda: driver.active.get_current_device(),
        "driver.active.get_current_stream(0)": lambda: driver.active.get_current_stream(0),
        "torch.empty_like(x)": lambda: torch.empty_like(x),
        "triton_dispatch._kernels_for(x, g)": lambda: triton_dispatch._kernels_for(x, g),
        "raw _backward_kernel[grid](...)": lambda: K._backward_kernel[grid](
            x, g, out, n, *scalars, count, x, KIND=1, O_PTR=False, PRECISE=K._PRECISE, BLOCK=K.BLOCK),
        "K.backward('reste', ...)": lambda: K.backward("reste", x, g, **p),
        "triton_dispatch.backward('reste', ...)": lambda: triton_dispatch.backward("reste", x, g, **p),
    }
    inside = dict.fromkeys(probes, 0.0)
    idents: set[int] = set()

    class Probe(_Identity):
        @staticmethod
        def backward(ctx, grad):
            idents.add(threading.get_ident())
            for label, fn in probes.items():
                t0 = time.perf_counter()
                fn()
                inside[label] += time.perf_counter() - t0
            return grad

    xr = torch.randn(4096, device=dev, requires_grad=True)
    for _ in range(20):
        Probe.apply(xr).sum().backward()
    inside.update(dict.fromkeys(probes, 0.0))  # the warm-up's times dropped
    for _ in range(calls):
        Probe.apply(xr).sum().backward()
    torch.cuda.synchronize()
    print(f"\n5. host microseconds per call inside a backward ({len(idents)} thread id(s) seen) and on the main thread")
    for label, fn in probes.items():
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        main_us = (time.perf_counter() - t0) / calls * 1e6
        print(f"  {label:<44} backward {inside[label] / calls * 1e6:8.1f}   main {main_us:8.1f}")


def profile_step() -> None:
    dev = torch.device("cuda")
    from torch.profiler import ProfilerActivity, profile

    for name in ("resnet20", "resnet20_1w1a"):
        kw = {} if name == "resnet20" else {"estimator": "ste"}
        model = models.create(name, num_classes=10, **kw).to(dev)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
        x = torch.randn(256, 3, 32, 32, device=dev)
        y = torch.randint(0, 10, (256,), device=dev)

        def step():
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            opt.step()

        for _ in range(3):
            step()
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(10):
            step()
        torch.cuda.synchronize()
        wall = (time.perf_counter() - start) / 10 * 1e3
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            step()
            torch.cuda.synchronize()
        events = prof.key_averages()
        launches = sum(e.count for e in events if e.key in ("cudaLaunchKernel", "cuLaunchKernel", "cuLaunchKernelEx",
                                                             "cudaLaunchKernelExC"))
        print(f"\n3. {name}{' (STE)' if kw else ''}: {wall:.2f} ms per step unprofiled; {launches} kernel launches")
        print(events.table(sort_by="self_cpu_time_total", row_limit=22, max_name_column_width=48))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--no-profile", action="store_true")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_overhead.py: no CUDA GPU is visible to torch here")
    if not triton_dispatch.available():
        raise SystemExit(f"gpu_overhead.py: the Triton kernels are unavailable: {triton_dispatch.error()}")
    per_call(args.calls)
    print("\n2. host time of one small layer (8x16x8x8 input)")
    layer_step(args.calls // 4)
    backward_nodes(args.calls // 2)
    backward_thread_costs(args.calls // 4)
    if not args.no_profile:
        profile_step()


if __name__ == "__main__":
    main()
