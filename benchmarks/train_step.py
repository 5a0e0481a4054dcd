"""Benchmark: one training step of ResNet-20 (CIFAR shapes), float vs binary estimators.

One step is: forward, cross-entropy, backward, SGD step (momentum 0.9, weight decay
1e-4). Four models, timed side by side in one run with interleaved rounds (the order
rotates every round):

* fp:        ``resnet20``, the full-precision twin;
* ste:       ``resnet20_1w1a`` with the clipped STE;
* reste:     ``resnet20_1w1a`` with ReSTE at a late-training o
             (``reste.set_progress(model, 900, 1000)``: o = 2.687; the cost does not
             depend on o, except that the PyTorch-op path takes a cheaper route at o = 1);
* ste/reste, PyTorch ops: the same two models with the fused CPU kernels of
             ``reste.fused`` switched off (``RESTE_FUSED=0``), to show what they buy
             (CPU only; on other devices the kernels are never used);
* reference: the same ReSTE model whose estimators are swapped for a module calling a
             ReSTE ``autograd.Function`` written in the authors' style (written here
             from SPEC section 2): ``torch.sign`` forward; a backward with
             ``zeros_like``, boolean masks, indexed gathers, ``pow`` on the gathered
             values, indexed scatters, the chord constant computed in Python from the
             tensor ``o`` and a clone of the incoming gradient (as the authors' code
             does). Scaling stays the layer's mean(abs(W)), so
             the architecture and the arithmetic are those of the ``reste`` model.

Targets (ratios of medians): reste/fp <= 1.3, reste/ste <= 1.05, reference/reste >= 2.

With ``--loader`` it also times the data pipelines alone (images/s), to compare with the
step's images/s (batch / step time): the CIFAR-10 train pipeline of ``reste.data``
(pickle batches written to a temporary folder, RandomCrop + flip + normalize, 0 and 2
workers) and the in-memory ``TensorLoader`` on Fashion-MNIST shapes (60000x1x28x28).

    python benchmarks/train_step.py --threads 1 --loader

On a CPU shared with other processes use ``--threads 1``: with more threads than idle
cores the OpenMP workers wait on each other and every step gets several times slower.

GPU rows. ``--device cuda`` runs the rows of issue 11 (``--rows`` picks some), each
timing fp, ste, reste, the reference and ste/reste with the fused kernels off (there
the Triton kernels of ``reste.triton_kernels``):

* ``resnet20-fp32``: resnet20 / resnet20_1w1a, batch 256, 3x32x32, float32;
* ``resnet20-bf16-cl``: the same in bf16 autocast + channels_last;
* ``resnet18-224-bf16-cl``: imagenet_resnet18 / imagenet_resnet18_1w1a, batch 256,
  3x224x224, bf16 autocast + channels_last.

GPU targets (issue 11): reste/fp <= 1.15 per row, reste/ste <= 1.05, reference/reste >= 3.
``--graphs`` also times fp, ste and reste (and reste through the C++ nodes, where they are timed) with each
step captured as one CUDA graph and replayed by ``reste.cudagraph.GraphedStep``, as ``reste train
--cuda-graphs`` does (o frozen at capture).
``--json FILE`` writes every row's medians and ratios (``benchmarks/gpu_check.sh`` reads it).

    python benchmarks/train_step.py --device cuda --json gpu_rows.json
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import gc
import json
import math
import os
import pickle
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import reste
from reste import cuda_ext, fused, models, triton_dispatch
from reste.cudagraph import CudaGraphs, GraphedStep
from reste.engine import tune_convolutions
from reste.estimators import ReSTE

VARIANTS = ("fp", "ste", "reste", "reference", "ste_ops", "reste_ops", "ste_ext", "reste_ext", "fp_graphed",
            "ste_graphed", "reste_graphed", "reste_ext_graphed")
#: the variants --graphs also times as one CUDA graph per step (each as VARIANT_graphed)
GRAPHED = ("fp", "ste", "reste", "reste_ext")
LABELS = {
    "fp": "(1) resnet20, full precision",
    "ste": "(2) resnet20_1w1a, STE, Python nodes",
    "reste": "(3) resnet20_1w1a, ReSTE, Python nodes",
    "reference": "(4) reference ReSTE (mask backward)",
    "ste_ops": "(2') STE, PyTorch ops (no fused)",
    "reste_ops": "(3') ReSTE, PyTorch ops (no fused)",
    "ste_ext": "(2x) STE, C++ nodes",
    "reste_ext": "(3x) ReSTE, C++ nodes",
    "fp_graphed": "(1g) full precision, one CUDA graph",
    "ste_graphed": "(2g) STE, one CUDA graph",
    "reste_graphed": "(3g) ReSTE, one CUDA graph",
    "reste_ext_graphed": "(3xg) ReSTE, C++ nodes, one CUDA graph",
}


# the GPU rows of issue 11: (binary model, full-precision twin, batch, image size, amp, channels_last)
GPU_ROWS = {
    "resnet20-fp32": ("resnet20_1w1a", "resnet20", 256, 32, "none", False),
    "resnet20-bf16-cl": ("resnet20_1w1a", "resnet20", 256, 32, "bf16", True),
    "resnet18-224-bf16-cl": ("imagenet_resnet18_1w1a", "imagenet_resnet18", 256, 224, "bf16", True),
}
GPU_TARGETS = {"reste/fp": ("<=", 1.15), "reste/ste": ("<=", 1.05), "reference/reste": (">=", 3.0)}
# the same ratios with ReSTE and STE through the compiled extension's C++ nodes
EXT_RATIOS = {"reste/fp": "reste_ext/fp", "reste/ste": "reste_ext/ste_ext", "reference/reste": "reference/reste_ext"}


# --------------------------------------------------------------------------- reference


class MaskedReSTEFunction(torch.autograd.Function):
    """ReSTE as the authors write it: torch.sign forward, a boolean-mask backward.

    ``o`` and ``t`` arrive as 0-dim tensors (as in the authors' code); ``m`` is the
    interval around zero. g = (1/o)|x|^((1-o)/o) on m < |x| <= t, the chord slope
    m^(1/o)/m on |x| <= m, 0 beyond t. Like the authors' backward, it computes the
    chord constant in Python from the tensor ``o`` (a host-device synchronisation
    on a GPU) and multiplies by a clone of the incoming gradient.
    """

    @staticmethod
    def forward(ctx, x, o, t, m: float):
        ctx.save_for_backward(x, o, t)
        ctx.m = m
        return torch.sign(x)

    @staticmethod
    def backward(ctx, grad_output):
        x, o, t = ctx.saved_tensors
        m = ctx.m
        exponent = (1 - o) / o
        g = torch.zeros_like(x)
        right = (x > m) & (x <= t)
        g[right] = (1 / o) * torch.pow(x[right], exponent)
        left = (x < -m) & (x >= -t)
        g[left] = (1 / o) * torch.pow(-x[left], exponent)
        g[(x >= 0) & (x <= m)] = math.pow(m, float(1 / o)) / m
        g[(x < 0) & (x >= -m)] = math.pow(m, float(1 / o)) / m
        return g * grad_output.clone(), None, None, None


class MaskedReSTE(nn.Module):
    """Drop-in for a layer's estimator: applies :class:`MaskedReSTEFunction`."""

    def __init__(self, o: float, t: float, m: float) -> None:
        super().__init__()
        self.register_buffer("o", torch.tensor(float(o)))
        self.register_buffer("t", torch.tensor(float(t)))
        self.m = float(m)

    def forward(self, x):
        return MaskedReSTEFunction.apply(x, self.o, self.t, self.m)

    def extra_repr(self) -> str:
        return f"o={float(self.o):g}, t={float(self.t):g}, m={self.m:g}"


def reference_from(model: nn.Module) -> nn.Module:
    """A copy of a ReSTE ``resnet20_1w1a`` with every estimator replaced by :class:`MaskedReSTE`."""
    ref = copy.deepcopy(model)
    swapped = 0
    for layer in ref.modules():
        for attr in ("weight_estimator", "input_estimator"):
            est = getattr(layer, attr, None)
            if isinstance(est, ReSTE):
                setattr(layer, attr, MaskedReSTE(est.o, est.t, est.interval).to(layer.weight.device))
                swapped += 1
    if swapped == 0:
        raise RuntimeError("no ReSTE estimator found to replace")
    return ref


# --------------------------------------------------------------------------- steps


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=20, help="timed rounds (each round runs every variant once)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: leave the default)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                    help="cpu or cuda (default: cuda if available)")
    ap.add_argument("--amp", choices=("none", "bf16", "fp16"), default="none", help="autocast dtype")
    ap.add_argument("--channels-last", action="store_true", help="channels_last model and input")
    ap.add_argument("--loader", action="store_true", help="also time the data loaders alone (images/s)")
    ap.add_argument("--loader-only", action="store_true",
                    help="time the data loaders alone, no training step (seconds, not minutes: review perf4)")
    ap.add_argument("--loader-images", type=int, default=5000, help="CIFAR-10 train images written for --loader")
    ap.add_argument("--epoch", type=float, default=900, help="ReSTE progress: set_progress(model, epoch, epochs)")
    ap.add_argument("--epochs", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rows", default=None,
                    help=f"GPU rows, comma-separated or 'all' (default with --device cuda): {', '.join(GPU_ROWS)}; "
                         "'' times the one configuration of --batch-size, --amp and --channels-last")
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    ap.add_argument("--no-ext", dest="ext", action="store_false",
                    help="on a GPU, do not build and time the compiled extension's C++ nodes")
    ap.add_argument("--graphs", action="store_true",
                    help="cuda: also time fp, ste and reste captured as one CUDA graph per step")
    return ap.parse_args()


def ext_nodes(model: nn.Module, x: torch.Tensor) -> int:
    """How many of the compiled extension's C++ autograd nodes one forward of ``model`` on ``x`` records with
    the extension asked for: 0 where the extension takes none of its binary layers (its rows would then time
    the Triton path under another name)."""
    fused.set_enabled(True)
    cuda_ext.set_enabled(True)
    try:
        stack, seen, count = [model(x).sum().grad_fn], set(), 0
        while stack:
            node = stack.pop()
            if node is None or node in seen:
                continue
            seen.add(node)
            count += node.name().startswith("reste_ext::")
            stack.extend(child for child, _ in node.next_functions)
        return count
    finally:
        fused.set_enabled(None)
        cuda_ext.set_enabled(None)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast_of(device: torch.device, amp: str, **kw) -> contextlib.AbstractContextManager:
    """The autocast of a step in ``amp`` ("none", "bf16", "fp16") on ``device``."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    return contextlib.nullcontext() if dtype is None else torch.autocast(device_type=device.type, dtype=dtype, **kw)


def make_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device, amp: str,
              use_fused: bool = True, use_ext: bool = False) -> Callable[[], None]:
    """A closure running one full training step of ``model`` on (x, y), with or without the fused kernels,
    and with or without the compiled extension's C++ nodes (``RESTE_CUDA_EXT``)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    scaler = torch.amp.GradScaler(device.type) if amp == "fp16" else None

    def step() -> None:
        fused.set_enabled(use_fused)
        cuda_ext.set_enabled(use_ext)
        opt.zero_grad(set_to_none=True)
        with autocast_of(device, amp):
            loss = F.cross_entropy(model(x), y)
        if scaler is None:
            loss.backward()
            opt.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()

    return step


def make_graphed_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, amp: str,
                      use_ext: bool = False) -> Callable[[], None]:
    """The same training step as ``reste train --cuda-graphs`` replays (``reste.cudagraph``):
    forward, loss, backward and SGD step captured as one CUDA graph after two eager warm-up
    steps, through the C++ nodes with ``use_ext`` (the Python nodes without). The schedule (o) is
    frozen at capture, which is all a benchmark needs. Raises where the step cannot be captured."""
    if amp == "fp16":
        raise RuntimeError("fp16 needs a GradScaler, which reads the gradients on the host")
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    autocast = functools.partial(autocast_of, x.device, amp, cache_enabled=False)
    fused.set_enabled(True)
    cuda_ext.set_enabled(use_ext)  # (what is captured; a replay asks no switch)
    try:
        step = GraphedStep(model, opt, autocast=autocast, backend=CudaGraphs(x.device), warmup=3)
        for _ in range(step.warmup + 1):  # the warm-up steps, then the capture and its first replay
            step(x, y)
    finally:
        cuda_ext.set_enabled(None)
    return lambda: step(x, y)


def estimator_check(o: float, t: float, m: float, device: torch.device) -> float:
    """Largest |g_reference - g_reste| of the two ReSTE backwards (random points and the edges)."""
    g = torch.Generator().manual_seed(1)
    edges = torch.tensor([0.0, m, -m, t, -t, 0.5, -0.5])
    up = torch.nextafter(edges, torch.full_like(edges, float("inf")))
    down = torch.nextafter(edges, torch.full_like(edges, -float("inf")))
    x0 = torch.cat([torch.randn(1 << 16, generator=g) * 0.8, edges, up, down]).to(device)
    upstream = torch.randn(x0.shape, generator=g).to(device)
    est = ReSTE(o=o, t=t, interval=m, o_end=o, schedule="constant")
    ref = MaskedReSTE(o, t, m).to(device)
    grads = []
    for fn in (est, ref):
        x = x0.clone().requires_grad_(True)
        fn(x).backward(upstream)
        grads.append(x.grad)
    return (grads[0] - grads[1]).abs().max().item()


def time_steps(steps: dict[str, Callable[[], None]], repeats: int, warmup: int,
               device: torch.device) -> dict[str, list[float]]:
    names = list(steps)
    for _ in range(warmup):
        for k in names:
            steps[k]()
    sync(device)
    times: dict[str, list[float]] = {k: [] for k in names}
    for r in range(repeats):
        order = names[r % len(names):] + names[: r % len(names)]  # rotate to spread drift
        for k in order:
            sync(device)
            start = time.perf_counter()
            steps[k]()
            sync(device)
            times[k].append(time.perf_counter() - start)
    return times


# --------------------------------------------------------------------------- loaders


def write_cifar_folder(root: Path, n_train: int, n_test: int, seed: int) -> None:
    """A small CIFAR-10 folder in the real python-pickle format (5 train batches + test_batch)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    sizes = [n_train // 5 + (1 if i < n_train % 5 else 0) for i in range(5)]
    for name, n in [(f"data_batch_{i + 1}", s) for i, s in enumerate(sizes)] + [("test_batch", n_test)]:
        entry = {
            "batch_label": name,
            "labels": rng.integers(0, 10, n).tolist(),
            "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            "filenames": [f"img_{i}.png" for i in range(n)],
        }
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f, protocol=2)


def time_loader(loader, epochs: int) -> tuple[float, float]:
    """(median, best) images/s over ``epochs`` timed passes, after one untimed pass."""
    rates = []
    for e in range(epochs + 1):
        loader.set_epoch(e)
        start = time.perf_counter()
        n = 0
        for images, _ in loader:
            n += len(images)
        dt = time.perf_counter() - start
        if e > 0:  # the first pass starts the workers and warms the caches
            rates.append(n / dt)
    return statistics.median(rates), max(rates)


def loader_rates(batch_size: int, n_images: int, seed: int) -> list[tuple[str, float, float]]:
    from reste import data

    rows = []
    with tempfile.TemporaryDirectory(prefix="reste-bench-") as tmp:
        write_cifar_folder(Path(tmp), n_images, 500, seed)
        train, test, _ = data.load_datasets("cifar10", tmp)
        for workers in (0, 2):
            loader, _ = data.make_loaders(train, test, batch_size=batch_size, eval_batch_size=batch_size,
                                          workers=workers, seed=seed)
            med, best = time_loader(loader, epochs=3)
            rows.append((f"CIFAR-10 train pipeline, {n_images} images, workers {workers}", med, best))
            del loader  # stops the persistent workers

    g = torch.Generator().manual_seed(seed)
    images = torch.randn(60000, 1, 28, 28, generator=g)
    labels = torch.randint(0, 10, (60000,), generator=g)
    fill = (0.0 - data.FASHION_MNIST_MEAN) / data.FASHION_MNIST_STD
    loader = data.TensorLoader(images, labels, batch_size=batch_size, shuffle=True, seed=seed,
                               augment=data.RandomCropFlip(28, 2, fill=fill))
    med, best = time_loader(loader, epochs=3)
    rows.append(("TensorLoader, 60000x1x28x28, crop+flip", med, best))
    return rows


# --------------------------------------------------------------------------- main


def classes_of(model: nn.Module) -> int:
    """The number of outputs of the model's last linear layer."""
    return [m for m in model.modules() if isinstance(m, nn.Linear)][-1].out_features


_EXT_BUILD: list[str | None] = []  # the extension's build in this process: [None] built, [why] failed


def ext_build() -> str | None:
    """Build the compiled extension once per process; None when it built, else why not (a failed build is not
    tried again for every row)."""
    if not _EXT_BUILD:
        try:
            cuda_ext.build()
            _EXT_BUILD.append(None)
        except Exception as err:  # report and go on: the other variants still count
            last = str(err).strip().splitlines()[-1] if str(err).strip() else ""
            _EXT_BUILD.append(f"it did not build ({type(err).__name__}: {last})")
    return _EXT_BUILD[0]


def measure(binary: str, float_name: str, batch: int, size: int, amp: str, channels_last: bool,
            args: argparse.Namespace, device: torch.device) -> dict:
    """Time one configuration: every variant, interleaved. Returns medians, minima and context."""
    torch.manual_seed(args.seed)
    fmt = torch.channels_last if channels_last else torch.contiguous_format

    def build(name: str, **kw) -> nn.Module:
        return models.create(name, **kw).to(device=device, memory_format=fmt).train()

    nets = {
        "fp": build(float_name),
        "ste": build(binary, estimator="ste"),
        "reste": build(binary, estimator="reste"),
    }
    o = reste.set_progress(nets["reste"], args.epoch, args.epochs)["o"]
    nets["reference"] = reference_from(nets["reste"])
    reference_modules = sum(isinstance(m, MaskedReSTE) for m in nets["reference"].modules())
    with_ops = fused.available() if device.type == "cpu" else triton_dispatch.available()
    if with_ops:
        nets["ste_ops"] = copy.deepcopy(nets["ste"])
        nets["reste_ops"] = copy.deepcopy(nets["reste"])
    ext_error = None
    if device.type == "cuda" and args.ext:
        ext_error = ext_build()
        if ext_error is None:
            nets["ste_ext"] = copy.deepcopy(nets["ste"])
            nets["reste_ext"] = copy.deepcopy(nets["reste"])
    variants = [k for k in VARIANTS if k in nets]

    g = torch.Generator().manual_seed(args.seed)
    x = torch.randn(batch, 3, size, size, generator=g).to(device).contiguous(memory_format=fmt)
    y = torch.randint(0, classes_of(nets["fp"]), (batch,), generator=g).to(device)
    # (under the row's autocast: a bf16 layer that fell back to the Python nodes would be timed as C++ ones)
    if "reste_ext" in nets:
        with autocast_of(device, amp):
            taken = min(ext_nodes(nets["ste_ext"], x), ext_nodes(nets["reste_ext"], x))
        if not taken:
            ext_error = "it built, but took none of the binary layers (no C++ node in the graph); rows left out"
            del nets["ste_ext"], nets["reste_ext"]
            variants = [k for k in VARIANTS if k in nets]
    # the reference backward must compute what ReSTE's does (the forwards differ only at
    # sign(0): torch.sign gives 0 where reste gives +1)
    est = next(e for e in reste.estimators_of(nets["reste"]) if isinstance(e, ReSTE))
    check = estimator_check(est.o, est.t, est.interval, device)
    steps = {k: make_step(nets[k], x, y, device, amp, use_fused=not k.endswith("_ops"), use_ext=k.endswith("_ext"))
             for k in variants}
    graph_errors = {}
    if args.graphs and device.type == "cuda":
        for k in GRAPHED:
            if k not in nets:
                continue
            try:
                steps[f"{k}_graphed"] = make_graphed_step(copy.deepcopy(nets[k]), x, y, amp,
                                                          use_ext=k.endswith("_ext"))
            except Exception as err:  # report and go on: the eager rows still count
                graph_errors[k] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        variants = [k for k in VARIANTS if k in steps]

    t0 = time.perf_counter()
    times = time_steps(steps, args.repeats, args.warmup, device)
    fused.set_enabled(None)
    cuda_ext.set_enabled(None)
    return {
        "model": binary, "batch": batch, "size": size, "amp": amp, "channels_last": channels_last,
        "o": o, "check": check, "reference_modules": reference_modules, "wall": time.perf_counter() - t0,
        "variants": variants,
        "graph_errors": graph_errors, "ext_error": ext_error,
        # the fused kernels turned off (a launch failed while timing: the rest ran as PyTorch ops), or None
        "kernels_error": (triton_dispatch.error() if device.type == "cuda" else
                          fused.error() if fused.enabled() else None),
        "classes": classes_of(nets["fp"]),
        "median_ms": {k: statistics.median(v) * 1e3 for k, v in times.items()},
        "min_ms": {k: min(v) * 1e3 for k, v in times.items()},
    }


def ratios(r: dict) -> dict[str, float]:
    """The target ratios of one measurement (medians), and without the fused kernels where timed."""
    med = r["median_ms"]
    out = {"reste/fp": med["reste"] / med["fp"], "reste/ste": med["reste"] / med["ste"],
           "reference/reste": med["reference"] / med["reste"]}
    if "reste_ops" in med:
        out.update({"reste_ops/fp": med["reste_ops"] / med["fp"],
                    "reste_ops/ste_ops": med["reste_ops"] / med["ste_ops"],
                    "reference/reste_ops": med["reference"] / med["reste_ops"]})
    if "reste_ext" in med:
        out.update({"reste_ext/fp": med["reste_ext"] / med["fp"],
                    "reste_ext/ste_ext": med["reste_ext"] / med["ste_ext"],
                    "reference/reste_ext": med["reference"] / med["reste_ext"]})
    if "reste_graphed" in med and "fp_graphed" in med and "ste_graphed" in med:
        out.update({"reste_graphed/fp_graphed": med["reste_graphed"] / med["fp_graphed"],
                    "reste_graphed/ste_graphed": med["reste_graphed"] / med["ste_graphed"]})
    if "reste_ext_graphed" in med and "fp_graphed" in med:
        out["reste_ext_graphed/fp_graphed"] = med["reste_ext_graphed"] / med["fp_graphed"]
    return out


def kernels_line(device: torch.device) -> str:
    if device.type == "cpu":
        state = "on" if fused.available() else f"unavailable ({fused.error()})"
        return f"  fused CPU kernels (reste.fused): {state}"
    state = "on" if triton_dispatch.available() else f"unavailable ({triton_dispatch.error()})"
    return f"  fused GPU kernels (reste.triton_kernels, Triton): {state}"


def print_single(r: dict, args: argparse.Namespace, device: torch.device) -> None:
    """The detailed report of one configuration (the CPU benchmark's format)."""
    med, best = r["median_ms"], r["min_ms"]
    batch = r["batch"]
    print("ResNet-20 training-step benchmark (forward, cross-entropy, backward, SGD momentum step)")
    print(f"  torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, "
          f"amp {r['amp']}, channels_last {r['channels_last']}")
    print(f"  batch {batch} x 3x{r['size']}x{r['size']}, {r['classes']} classes; ReSTE o = {r['o']:.4f} "
          f"(set_progress({args.epoch:g}, {args.epochs}))")
    print(f"  {args.repeats} interleaved rounds (rotating order) after {args.warmup} warm-up rounds; "
          f"timing took {r['wall']:.0f} s")
    print(f"  reference vs reste.ReSTE backward (65,536 random points + the edges): max |diff| {r['check']:.2e}")
    print(kernels_line(device))
    print()
    print(f"  {'variant':<40}{'median ms':>11}{'min ms':>10}{'images/s':>10}{'vs fp':>8}")
    for k in r["variants"]:
        ips = batch / (med[k] / 1e3)
        print(f"  {LABELS[k]:<40}{med[k]:>11.1f}{best[k]:>10.1f}{ips:>10.0f}"
              f"{med[k] / med['fp']:>7.2f}x")
    print("  (images/s = batch / median step time)")
    print()

    targets = [
        ("ReSTE / FP", "reste", "fp", "<=", 1.3),
        ("ReSTE / STE", "reste", "ste", "<=", 1.05),
        ("reference / ReSTE", "reference", "reste", ">=", 2.0),
    ]
    print(f"  {'ratio (of medians)':<22}{'value':>8}{'best-of':>9}   target")
    for label, a, b, op, bound in targets:
        q = med[a] / med[b]
        qb = best[a] / best[b]
        ok = q <= bound if op == "<=" else q >= bound
        print(f"  {label:<22}{q:>7.2f}x{qb:>8.2f}x   {op} {bound:g}x  {'MET' if ok else 'NOT MET'}")
    if "reste_ops" in med:
        print("  without the fused kernels (PyTorch ops only):")
        for label, a, b in [("ReSTE / FP", "reste_ops", "fp"), ("ReSTE / STE", "reste_ops", "ste_ops"),
                            ("reference / ReSTE", "reference", "reste_ops")]:
            print(f"  {label:<22}{med[a] / med[b]:>7.2f}x{best[a] / best[b]:>8.2f}x")


def print_rows(results: dict[str, dict], args: argparse.Namespace, device: torch.device) -> None:
    """One table line per GPU row: median ms of each variant, the ratios, and MET / NOT MET per target."""
    print("Training-step benchmark, GPU rows (forward, cross-entropy, backward, SGD momentum step)")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)
    print(f"  torch {torch.__version__}, triton {_triton_version()}, {name}")
    print(f"  median ms of {args.repeats} interleaved rounds (rotating order) after {args.warmup} warm-up rounds; "
          f"ReSTE at set_progress({args.epoch:g}, {args.epochs})")
    print(kernels_line(device))
    print()
    cols = [k for k in VARIANTS if any(k in r["median_ms"] for r in results.values())]
    print(f"  {'row':<22}" + "".join(f"{k:>11}" for k in cols)
          + f"{'reste/fp':>10}{'reste/ste':>10}{'ref/reste':>10}")
    for row, r in results.items():
        q = ratios(r)
        print(f"  {row:<22}" + "".join(f"{r['median_ms'].get(k, math.nan):>11.2f}" for k in cols)
              + f"{q['reste/fp']:>9.2f}x{q['reste/ste']:>9.2f}x{q['reference/reste']:>9.2f}x")
    print("  (*_ops: the same model with the fused kernels off, RESTE_FUSED=0: the PyTorch-op path;")
    print("   *_ext: the same model through the compiled extension's C++ autograd nodes, which the default,")
    print("   RESTE_CUDA_EXT=auto, takes where nvcc is found; ste and reste: its Python nodes, RESTE_CUDA_EXT=0;")
    print("   *_graphed: the step captured as one CUDA graph and replayed by reste.cudagraph.GraphedStep, as")
    print("   reste train --cuda-graphs does, o frozen; the reference cannot be captured: its backward reads o")
    print("   on the host)")
    print()
    for row, r in results.items():
        q = ratios(r)
        marks = []
        for key, (op, bound) in GPU_TARGETS.items():
            ok = q[key] <= bound if op == "<=" else q[key] >= bound
            marks.append(f"{key} {q[key]:.2f}x ({op} {bound:g}x: {'MET' if ok else 'NOT MET'})")
        print(f"  {row}: " + "; ".join(marks))
        print(f"  {'':<{len(row)}}  reference vs reste backward max |diff| {r['check']:.2e}")
        if "reste_ext/fp" in q:
            marks = []
            for key, (op, bound) in GPU_TARGETS.items():
                key = EXT_RATIOS[key]
                ok = q[key] <= bound if op == "<=" else q[key] >= bound
                marks.append(f"{key} {q[key]:.2f}x ({op} {bound:g}x: {'MET' if ok else 'NOT MET'})")
            print(f"  {'':<{len(row)}}  C++ nodes: " + "; ".join(marks))
        if r.get("ext_error"):
            print(f"  {'':<{len(row)}}  the compiled extension's rows are not measured: {r['ext_error']}")
        if "reste_graphed/fp_graphed" in q:
            ext = (f", through the C++ nodes reste/fp {q['reste_ext_graphed/fp_graphed']:.2f}x"
                   if "reste_ext_graphed/fp_graphed" in q else "")
            print(f"  {'':<{len(row)}}  graphed: reste/fp {q['reste_graphed/fp_graphed']:.2f}x, "
                  f"reste/ste {q['reste_graphed/ste_graphed']:.2f}x{ext}")
        for k, err in r.get("graph_errors", {}).items():
            print(f"  {'':<{len(row)}}  {k}: not captured as a CUDA graph: {err}")


def _triton_version() -> str:
    try:
        import triton
    except ImportError:
        return "not installed"
    return triton.__version__


def write_json(path: str | None, results: dict[str, dict], failed: dict[str, str], device: torch.device,
               planned: list[str]) -> None:
    """The rows measured so far (with their ratios), the rows that failed and every row this run means to
    measure (a run cut short by its time limit: the rows it did not reach are in neither), to ``path``
    (atomically)."""
    if not path:
        return
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    rows_out = {n: {**r, "ratios": ratios(r)} for n, r in results.items()}
    payload = {"torch": torch.__version__, "device": gpu, "rows": rows_out, "failed": failed, "planned": planned}
    part = f"{path}.part"
    with open(part, "w", encoding="utf-8") as f:
        json.dump(payload, f, indent=1)
    os.replace(part, path)


def print_loaders(args: argparse.Namespace, med: dict[str, float] | None) -> None:
    """The data loaders' images/s (``loader_rates``), and, with the step's medians ``med``, what the step takes."""
    print()
    print(f"  data loaders alone (batch {args.batch_size}; median of 3 epochs after 1 untimed epoch)")
    print(f"  {'loader':<52}{'images/s':>10}{'best':>10}")
    for label, m, b in loader_rates(args.batch_size, args.loader_images, args.seed):
        print(f"  {label:<52}{m:>10.0f}{b:>10.0f}")
    if med:
        slowest, fastest = max(med.values()) / 1e3, min(med.values()) / 1e3
        print(f"  step consumes {args.batch_size / slowest:.0f}-{args.batch_size / fastest:.0f} images/s "
              f"(slowest-fastest variant above); a loader below that starves the step")


def main() -> None:
    args = parse_args()
    if args.batch_size < 1 or args.repeats < 1 or args.warmup < 0:
        raise SystemExit("--batch-size and --repeats must be positive, --warmup >= 0")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    tune_convolutions(device)  # every variant's convolutions as `reste train` runs them (cuDNN's autotuner on CUDA)
    rows = args.rows if args.rows is not None else ("all" if device.type == "cuda" else "")
    names = list(GPU_ROWS) if rows == "all" else [n for n in rows.split(",") if n]
    unknown = [n for n in names if n not in GPU_ROWS]
    if unknown:
        raise SystemExit(f"unknown row(s) {', '.join(unknown)}; valid: {', '.join(GPU_ROWS)}, all")

    failed: dict[str, str] = {}
    if args.loader_only:
        print_loaders(args, None)
        return
    if names:
        results = {}
        write_json(args.json, results, failed, device, names)  # before the first: what a run killed in it missed
        for n in names:
            try:
                try:
                    results[n] = measure(*GPU_ROWS[n], args=args, device=device)
                    crowded = False
                except torch.OutOfMemoryError:
                    if not args.graphs:
                        raise
                    crowded = True  # (the retry comes after this clause: its traceback holds the models and graphs)
                if crowded:
                    # each graph keeps its step's memory beside the eager models (review gpu3: ImageNet's row may
                    # not fit a 80 GB GPU with four): the eager figures, the row's targets, without the graphs
                    gc.collect()
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
                    print(f"  row {n}: out of memory with its CUDA graphs; timed again without them", file=sys.stderr,
                          flush=True)
                    results[n] = measure(*GPU_ROWS[n], args=argparse.Namespace(**{**vars(args), "graphs": False}),
                                         device=device)
                    results[n]["graph_errors"] = {k: "out of memory beside the row's eager models: timed without "
                                                  "graphs" for k in GRAPHED if k in results[n].get("variants", GRAPHED)}
            except Exception as err:  # an out-of-memory, a failed capture: the other rows still count
                text = str(err).strip()
                failed[n] = f"{type(err).__name__}: {text.splitlines()[0][:200] if text else ''}"
                print(f"  row {n} failed: {failed[n]}", file=sys.stderr, flush=True)
            if device.type == "cuda":
                try:
                    torch.cuda.empty_cache()
                except RuntimeError as err:  # a sticky CUDA error (an illegal access): no later row can run
                    print(f"  the CUDA context is broken ({str(err).splitlines()[0][:200]}); the rows after {n} "
                          "are not measured", file=sys.stderr, flush=True)
                    write_json(args.json, results, {**failed, **{m: "not run (broken CUDA context)"
                                                                for m in names[names.index(n) + 1:]}}, device,
                               names)
                    raise SystemExit(f"train_step.py: stopped after row {n}: the CUDA context is broken")
            write_json(args.json, results, failed, device, names)  # after each row: a run cut short keeps its rows
        if results:
            print_rows(results, args, device)
    else:
        r = measure("resnet20_1w1a", "resnet20", args.batch_size, 32, args.amp, args.channels_last, args, device)
        results = {"single": r}
        print_single(r, args, device)
        write_json(args.json, results, failed, device, ["single"])

    if args.loader and results:
        print_loaders(args, results[next(iter(results))]["median_ms"])
    if failed:
        raise SystemExit(f"train_step.py: {len(failed)} row(s) failed: {', '.join(failed)} (see above)")


if __name__ == "__main__":
    main()
