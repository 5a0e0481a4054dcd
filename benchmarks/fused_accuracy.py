"""How far the fused C kernel of ReSTE's backward is from the PyTorch expression, and both from float64.

For each (o, t, interval): a million float32 inputs, log-uniform in magnitude over [interval, t] (where g is
neither zero nor its constant; random signs), and a gradient of ones. Printed per setting: the largest distance
between the kernel's and the PyTorch path's float32 results in units in the last place (the distance of their
bit patterns), the share of elements more than 2 apart, and each path's largest relative error against g in
float64. The README's accuracy sentence quotes this output.

    python benchmarks/fused_accuracy.py                 # o 1.5, 2, 3 at the default t and interval; the extremes
    python benchmarks/fused_accuracy.py --n 100000      # quicker
"""

from __future__ import annotations

import argparse
import math

import torch

from reste import fused
from reste.estimators import ReSTE, reste_g

DEFAULT = ReSTE.hyperparameters  # (Param o, t, interval, o_end, schedule), each with its default


def _default(name: str) -> float:
    return next(float(p.default) for p in DEFAULT if p.name == name)


def settings() -> list[tuple[float, float, float]]:
    t, m = _default("t"), _default("interval")
    return [(1.5, t, m), (2.0, t, m), (3.0, t, m), (3.0, t, 1e-30), (3.0, 1e30, 1e-30)]


def measure(o: float, t: float, m: float, n: int, seed: int = 0) -> dict[str, float]:
    gen = torch.Generator().manual_seed(seed)
    magnitude = torch.empty(n, dtype=torch.float64).uniform_(math.log(m), math.log(t), generator=gen).exp()
    sign = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0).double()
    x = (magnitude * sign).float()
    grad = torch.ones_like(x)
    kernel = fused.reste_backward(x, grad, o, t, m)
    if kernel is None:
        raise SystemExit("fused_accuracy.py: the fused C kernels are not available here (no C compiler?)")
    fused.set_enabled(False)
    try:
        leaf = x.clone().requires_grad_()
        ReSTE(o=o, o_end=o, t=t, interval=m, schedule="constant")(leaf).backward(grad)
        torch_path = leaf.grad
    finally:
        fused.set_enabled(None)
    exact = reste_g(x.double(), o, t, m)
    ulps = (kernel.view(torch.int32).long() - torch_path.view(torch.int32).long()).abs()
    rel = lambda got: ((got.double() - exact).abs() / exact.abs()).max().item()  # noqa: E731
    return {"max_ulps": int(ulps.max()), "over_2": (ulps > 2).double().mean().item(),
            "kernel_rel": rel(kernel), "torch_rel": rel(torch_path)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=1_000_000, help="inputs per setting (default 1000000)")
    args = p.parse_args()
    print(f"{'o':>4} {'t':>8} {'interval':>9}  {'max ulps':>8} {'> 2 ulps':>9}  {'kernel rel':>10} {'torch rel':>10}")
    for o, t, m in settings():
        r = measure(o, t, m, args.n)
        print(f"{o:>4g} {t:>8g} {m:>9g}  {r['max_ulps']:>8d} {r['over_2']:>9.2e}  {r['kernel_rel']:>10.2e} "
              f"{r['torch_rel']:>10.2e}")


if __name__ == "__main__":
    main()
