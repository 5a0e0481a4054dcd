"""Host time of the binary autograd nodes: the compiled extension's C++ nodes against the Python ones.

A binary layer's forward and backward on tiny tensors cost almost nothing but host time (Python,
the dispatcher, the autograd engine, kernel launches), which is what bounds an eager GPU step.
This times, interleaved in rounds, one estimator's forward and backward and one small
``BinaryConv2d``'s, through

* ``cpp``: the C++ nodes of ``reste.cuda_ext`` (built on first use; on the CPU its serial loops),
* ``python``: the Python nodes with the fused kernels (the C kernels on the CPU, Triton on a GPU),
* ``ops``: the Python nodes with PyTorch ops (``RESTE_FUSED=0``),

and prints the median microseconds of each, with the same float ``nn.Conv2d`` timed in the same rounds:
what a binary layer adds over a float one is the figure an eager GPU step pays per binary layer. On
the CPU it measures the host cost of the node machinery, not any GPU figure.

    python benchmarks/node_overhead.py                  # CPU, one thread
    python benchmarks/node_overhead.py --device cuda    # a GPU (cpp: the CUDA kernels, python: Triton)
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch

from reste import cuda_ext, estimators, fused
from reste.layers import BinaryConv2d


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--rounds", type=int, default=7, help="interleaved rounds (the median is printed)")
    ap.add_argument("--calls", type=int, default=500, help="forward and backward calls timed per round")
    args = ap.parse_args()
    torch.set_num_threads(1)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    print(f"built the extension: {cuda_ext.build()}")

    est = estimators.get_estimator("reste", o_end=3.0)
    est.set_progress(7, 10)
    x = torch.randn(16, device=device, requires_grad=True)
    ones = torch.ones(16, device=device)
    conv = BinaryConv2d(4, 4, 3, padding=1, weight_estimator=est).to(device)
    float_conv = torch.nn.Conv2d(4, 4, 3, padding=1).to(device)
    xi = torch.randn(1, 4, 4, 4, device=device, requires_grad=True)
    cases = {"estimator forward+backward": lambda: est(x).backward(ones),
             "BinaryConv2d 4->4 forward": lambda: conv(xi),
             "BinaryConv2d 4->4 forward+backward": lambda: conv(xi).sum().backward()}
    float_cases = {"forward": lambda: float_conv(xi), "forward+backward": lambda: float_conv(xi).sum().backward()}

    @contextlib.contextmanager
    def path(name: str):
        cuda_ext.set_enabled(name == "cpp")
        fused.set_enabled(name != "ops")
        ctx = cuda_ext.forced() if name == "cpp" and device.type == "cpu" else contextlib.nullcontext()
        try:
            with ctx:
                yield
        finally:
            fused.set_enabled(None)
            cuda_ext.set_enabled(None)

    def timed(fn) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(args.calls):
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - start) / args.calls * 1e6

    paths = ("cpp", "python", "ops")
    times: dict[tuple[str, str], list[float]] = {(c, p): [] for c in cases for p in paths}
    float_times: dict[str, list[float]] = {c: [] for c in float_cases}
    for r in range(args.rounds + 1):  # round 0 warms up
        for p in paths[r % 3:] + paths[:r % 3]:
            with path(p):
                for c, fn in cases.items():
                    t = timed(fn)
                    if r:
                        times[c, p].append(t)
        for c, fn in float_cases.items():
            t = timed(fn)
            if r:
                float_times[c].append(t)
    print(f"host microseconds per call, median of {args.rounds} rounds of {args.calls} calls; "
          f"device {device}, torch {torch.__version__}, 1 thread")
    print(f"  {'':<38}" + "".join(f"{p:>10}" for p in paths))
    for c in cases:
        print(f"  {c:<38}" + "".join(f"{statistics.median(times[c, p]):>10.1f}" for p in paths))
    for c, values in float_times.items():
        print(f"  {'nn.Conv2d 4->4 ' + c:<38}{statistics.median(values):>10.1f}  (float, the same rounds)")
    for c, values in float_times.items():
        base = statistics.median(values)
        print(f"  {'binary minus float, ' + c:<38}"
              + "".join(f"{statistics.median(times['BinaryConv2d 4->4 ' + c, p]) - base:>10.1f}" for p in paths))


if __name__ == "__main__":
    main()
