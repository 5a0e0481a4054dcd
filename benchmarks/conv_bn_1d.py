"""Packed latency of a 1-D BNN whose binary convs are each followed straight by a batch norm (no ReLU).

Float conv -> BN, then four binary ``Conv1d`` (32, 16, 64, 64 channels, kernel 3) each followed by a
``BatchNorm1d`` and read by the next, on signals of length 1024: the shape of many user models
(``tests/test_conv1d.py``'s ``cnn1d``, Bi-Real-style blocks). Prints how many ``affine`` steps the engine
runs on their own, whether its predictions are the float model's, and the median latency of
``PackedModel`` at each batch size (one thread). ``--unfused`` keeps every batch norm a step of its own
(``reste.export.runtime.FUSE_BARE_AFFINE = False``, where the runtime has that switch) and ``--float-outputs``
keeps every binary conv's float output (``fuse_signs=False``: no sign bits written for the next conv), so one
tree can be timed each way; an older tree is timed by running this file with that tree on ``PYTHONPATH``.

    python benchmarks/conv_bn_1d.py
    python benchmarks/conv_bn_1d.py --unfused --float-outputs --batches 64
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from reste import BinaryConv1d
from reste.export import PackedModel, export_model
from reste.export import runtime


def build(length: int) -> nn.Module:
    """The model, its batch-norm statistics from one random batch, in eval mode (seeded)."""
    torch.manual_seed(0)
    widths = (32, 32, 16, 64, 64)
    layers: list[nn.Module] = [nn.Conv1d(1, widths[0], 5, padding=2), nn.BatchNorm1d(widths[0])]
    for cin, cout in zip(widths, widths[1:]):
        layers += [BinaryConv1d(cin, cout, 3, padding=1), nn.BatchNorm1d(cout)]
    model = nn.Sequential(*layers, nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(widths[-1], 10))
    model.train()
    with torch.no_grad():
        model(torch.randn(32, 1, length))
    return model.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 64])
    ap.add_argument("--length", type=int, default=1024)
    ap.add_argument("--runs", type=int, default=21, help="timed calls per batch size (the median is printed)")
    ap.add_argument("--unfused", action="store_true", help="every batch norm a separate affine step")
    ap.add_argument("--float-outputs", action="store_true", help="no sign bits written for the next conv")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.unfused:
        runtime.FUSE_BARE_AFFINE = False
    model = build(args.length)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "conv_bn_1d.rbnn"
        export_model(model, path, input_size=(1, args.length), verify=False)
        packed = PackedModel.load(path, threads=1, fuse_signs=not args.float_outputs)
    affine_steps = sum(1 for target, _, fn in packed._steps
                       if packed.header["nodes"][target]["op"] == "affine" and not isinstance(fn, runtime._BinaryConv))
    x = torch.randn(max(args.batches), 1, args.length, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        same = float((packed(x).argmax(1) == model(x).argmax(1)).double().mean())
    print(f"{packed!r}: {affine_steps} affine steps of their own, predictions as the float model's: {same:.3f}")
    for batch in args.batches:
        xb = x[:batch]
        packed(xb)  # (warm: the kernels' arguments are made at the first call of a size)
        times = []
        for _ in range(args.runs):
            start = time.perf_counter()
            packed(xb)
            times.append(time.perf_counter() - start)
        print(f"batch {batch}: {statistics.median(times) * 1e3:.2f} ms (median of {args.runs})")


if __name__ == "__main__":
    main()
