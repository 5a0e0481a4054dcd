"""Benchmark: the ReSTE backward kernel against a boolean-mask formulation and a bandwidth floor.

Four variants, timed side by side in one run with interleaved repetitions:

* ours:      ``reste.ReSTE`` through autograd (a leaf ``x`` requiring grad,
             ``y = est(x)``, ``y.backward(grad)``), with its fused CPU kernel
             (``reste.fused``; the PyTorch expression where the kernel is unavailable);
* ops:       the same with the fused kernel switched off: the branch-free PyTorch
             expression that runs on every other device and dtype;
* mask:      the boolean-mask formulation of the authors' code, written here from
             SPEC section 2 as a ``torch.autograd.Function``: ``zeros_like``, four
             boolean masks, indexed gathers, ``pow`` on the gathered values,
             indexed scatters, multiply by the incoming gradient;
* floor:     one elementwise multiply of two tensors of the same size (what any
             backward must at least do: read x-sized data twice, write once).

o = 3 (late training, every region of g is exercised). The reported numbers are
medians; the ratios are mask/ours (the target: at least 4x) and ours/floor.

    python benchmarks/estimator_kernel.py --size 16777216 --repeats 7
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import reste
from reste import fused


class MaskReSTE(torch.autograd.Function):
    """ReSTE with a boolean-mask backward (four masks, gather, pow, scatter)."""

    @staticmethod
    def forward(ctx, x, o, t, m):
        ctx.save_for_backward(x)
        ctx.o, ctx.t, ctx.m = o, t, m
        return torch.where(x < 0, -1.0, 1.0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        o, t, m = ctx.o, ctx.t, ctx.m
        p = (1.0 - o) / o
        g = torch.zeros_like(x)
        pos_power = (x > m) & (x <= t)
        neg_power = (x < -m) & (x >= -t)
        pos_inner = (x >= 0) & (x <= m)
        neg_inner = (x < 0) & (x >= -m)
        g[pos_power] = (1.0 / o) * x[pos_power].pow(p)
        g[neg_power] = (1.0 / o) * (-x[neg_power]).pow(p)
        chord = m ** (1.0 / o) / m
        g[pos_inner] = chord
        g[neg_inner] = chord
        return g * grad, None, None, None


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=16 * 1024 * 1024, help="number of float32 elements (default 16M)")
    ap.add_argument("--repeats", type=int, default=7, help="timed repetitions per variant (interleaved)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed repetitions per variant first")
    ap.add_argument("--o", type=float, default=3.0, help="ReSTE exponent (default 3, late training)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    ap.add_argument("--seed", type=int, default=0)
    return ap.parse_args()


def main() -> None:
    args = parse_args()
    if args.size <= 0 or args.repeats <= 0 or args.warmup < 0:
        raise SystemExit("--size and --repeats must be positive, --warmup >= 0")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    n = args.size
    t, m = 1.5, 0.1
    x0 = torch.randn(n) * 0.8  # weight-like spread: chord, power-law and zero regions all populated
    upstream = torch.randn(n)
    other = torch.randn(n)
    est = reste.ReSTE(o=args.o, t=t, interval=m, o_end=args.o, schedule="constant")

    def run_ours(use_fused: bool = True) -> tuple[float, torch.Tensor]:
        fused.set_enabled(use_fused)
        x = x0.detach().requires_grad_(True)
        y = est(x)
        start = time.perf_counter()
        y.backward(upstream)
        elapsed = time.perf_counter() - start
        fused.set_enabled(None)
        return elapsed, x.grad

    def run_ops() -> tuple[float, torch.Tensor]:
        return run_ours(use_fused=False)

    def run_mask() -> tuple[float, torch.Tensor]:
        x = x0.detach().requires_grad_(True)
        y = MaskReSTE.apply(x, args.o, t, m)
        start = time.perf_counter()
        y.backward(upstream)
        return time.perf_counter() - start, x.grad

    def run_floor() -> tuple[float, torch.Tensor]:
        start = time.perf_counter()
        out = upstream * other
        return time.perf_counter() - start, out

    # correctness first: the two backward formulations must agree
    _, g_ours = run_ours()
    _, g_ops = run_ops()
    _, g_mask = run_mask()
    max_err = max((g_ours - g_mask).abs().max().item(), (g_ops - g_mask).abs().max().item())
    agree = torch.allclose(g_ours, g_mask, rtol=1e-5, atol=1e-6) and torch.allclose(g_ops, g_mask, rtol=1e-5, atol=1e-6)
    del g_ours, g_ops, g_mask

    variants = {"ours": run_ours, "ops": run_ops, "mask": run_mask, "floor": run_floor}
    for _ in range(args.warmup):
        for fn in variants.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in variants}
    names = list(variants)
    for r in range(args.repeats):
        order = names[r % len(names):] + names[: r % len(names)]  # rotate to spread drift
        for k in order:
            dt, _ = variants[k]()
            times[k].append(dt)

    med = {k: statistics.median(v) for k, v in times.items()}
    best = {k: min(v) for k, v in times.items()}
    mb = n * 4 / 2**20
    print("ReSTE backward kernel benchmark")
    print(f"  torch {torch.__version__}, device cpu, threads {torch.get_num_threads()}")
    print(f"  elements {n:,} float32 ({mb:.0f} MiB per tensor), o = {args.o:g}, t = {t}, interval = {m}")
    print(f"  repeats {args.repeats} (interleaved, after {args.warmup} warm-up), times are medians")
    print(f"  fused CPU kernel: {'on' if fused.available() else 'unavailable (' + str(fused.error()) + ')'}")
    print("  timed: y.backward(grad) only (ours, ops, mask); out = a * b (floor)")
    print(f"  ours and ops vs mask gradients agree: {agree} (max abs diff {max_err:.3g})")
    print()
    labels = {
        "ours": "ours  (reste.ReSTE, fused kernel)",
        "ops": "ours  (reste.ReSTE, PyTorch ops)",
        "mask": "(a)   boolean-mask backward (Function)",
        "floor": "(b)   elementwise multiply (floor)",
    }
    print(f"  {'variant':<42}{'median ms':>11}{'min ms':>10}{'GB/s*':>9}")
    for k in ("ours", "ops", "mask", "floor"):
        gbs = 3 * n * 4 / med[k] / 1e9  # read two tensors, write one
        print(f"  {labels[k]:<42}{med[k] * 1e3:>11.2f}{best[k] * 1e3:>10.2f}{gbs:>9.1f}")
    print("  * GB/s counts the minimal traffic of 3 tensors (2 reads, 1 write) for every variant")
    print()
    speedup = med["mask"] / med["ours"]
    over_floor = med["ours"] / med["floor"]
    print(f"  ratio reference/ours (mask / ours): {speedup:.2f}x")
    print(f"  ratio ours/floor     (ours / mul) : {over_floor:.2f}x")
    print(f"  ratio ops/ours (what the fused kernel buys): {med['ops'] / med['ours']:.2f}x; "
          f"mask/ops {med['mask'] / med['ops']:.2f}x")
    print(f"  (best-of-{args.repeats} ratios, less sensitive to a busy machine: "
          f"mask/ours {best['mask'] / best['ours']:.2f}x, ours/floor {best['ours'] / best['floor']:.2f}x)")
    verdict = "MET" if speedup >= 4.0 else "NOT MET"
    print(f"  target: ours at least 4x faster than the boolean-mask backward -> {verdict} ({speedup:.2f}x)")


if __name__ == "__main__":
    main()
