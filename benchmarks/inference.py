"""Packed 1-bit inference (reste.export.PackedModel) vs the float PyTorch model, on the CPU.

For each model: the size report of the packed file, a correctness check (same
predictions, max logit difference), then per batch size the latency (median of
the runs), the throughput, the weights each engine holds and the peak memory of a
fresh process that loads one engine and runs one batch (peak RSS over the RSS after
the imports), side by side with the ratios.

Two float baselines, both printed with their ratio: "float" is the training-time model in
eval mode, whose binary layers re-derive sign(W) * alpha from the latent weights at every
forward; "float*" is the same network as a deployer would run it in PyTorch: each binary
layer replaced by its input's sign (the model's own sign op) and a plain nn.Conv2d /
nn.Linear holding sign(W) * alpha computed once (``precomputed``; checked to give the same
logits). float* is the fair baseline: at batch 1 the re-derivation is a large part of
"float"'s time. (``reste.export.deploy_model``, what ONNX gets, signs with ``torch.where``,
slower than the model's sign at batch 64: not a fair baseline either.) Weights
are random with batch-norm statistics from random batches (speed and size do not depend on
training).

Before the models, a per-layer microbenchmark (``--layers``): one binary 3x3 convolution on
packed bits (sign bits in, float32 out, as in the engine) against ``torch.nn.functional.conv2d``
in float32, at 64->64 on 32x32 and 256->256 on 8x8, batch 64. The packed kernels' instruction-set
variant is printed (``--isa`` or ``$RESTE_PACKED_ISA`` forces one).

    python benchmarks/inference.py                       # resnet20_1w1a, resnet18_1w1a; batch 1, 64
    python benchmarks/inference.py --threads 2 --models resnet20_1w1a --batches 1 8 64
    python benchmarks/inference.py --isa avx2 --no-memory    # any of reste.export.kernels.ISAS
    python benchmarks/inference.py --scaling 2 --batches 64   # packed engine, 1 vs 2 threads
    python benchmarks/inference.py --packed-only --budget 6   # the packed engine alone: no float runs between
                                                              # its runs (two trees compared run by run)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _status_mb(field: str) -> float | None:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    """Reset the peak RSS (VmHWM) of this process (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def _build(name: str, seed: int = 0):
    import torch

    from reste import models

    torch.manual_seed(seed)
    model = models.create(name)
    size = tuple(models.model_info(name)["input_size"])
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(16, *size))
    return model.eval(), size


def precomputed(model):
    """An eval-mode copy of ``model`` whose binary layers are their input's sign (the layer's own input
    estimator, none for real inputs) followed by a plain float ``nn.Conv2d`` / ``nn.Linear`` holding
    sign(W) * alpha, computed once: the float network a deployer runs, with nothing re-derived per call."""
    import copy

    from torch import nn

    from reste.export.onnx_export import OnnxSign, deploy_model

    fair = deploy_model(model)  # the float layers; its signs (torch.where, ONNX's op) become the model's own
    estimators = {name: m.input_estimator for name, m in model.named_modules() if getattr(m, "precision", 32) == 1}
    for name, estimator in estimators.items():
        layer = fair.get_submodule(name)
        if isinstance(layer, nn.Sequential):  # (sign, float layer): binary inputs
            layer[0] = copy.deepcopy(estimator).eval()
    if any(isinstance(m, OnnxSign) for m in fair.modules()):  # a sign outside a binary layer: not this model's op
        raise SystemExit("the float* baseline keeps an ONNX sign op: a model with signs outside its binary layers")
    return fair.eval()


def child(args: argparse.Namespace) -> None:
    """Load one engine, run one batch, print the memory figures as JSON."""
    import numpy as np  # noqa: F401 - count the library imports in the baseline
    import torch

    import reste.export  # noqa: F401
    from reste import models

    torch.set_num_threads(args.threads)
    if _reset_peak() and _status_mb("VmRSS") is not None:
        base, peak = _status_mb("VmRSS"), lambda: _status_mb("VmHWM")
    else:  # peak since the start (includes the imports' own peak)
        base, peak = _peak_rss_mb(), _peak_rss_mb
    size = tuple(models.model_info(args.model)["input_size"])
    x = torch.randn(args.batch, *size)
    if args.child == "float":
        model = models.create(args.model)
        model.load_state_dict(torch.load(args.weights, weights_only=True))
        model.eval()
        with torch.no_grad():
            model(x)
    else:
        from reste.export import PackedModel

        PackedModel.load(args.weights, backend=args.backend, threads=args.threads, isa=args.isa, pool=args.pool)(x)
    print(json.dumps({"base_mb": base, "peak_mb": peak()}))


def _memory(kind: str, name: str, batch: int, weights: Path, args: argparse.Namespace) -> float | None:
    cmd = [sys.executable, __file__, "--child", kind, "--models", name, "--weights", str(weights),
           "--batch", str(batch), "--threads", str(args.threads), "--backend", args.backend]
    if args.isa:
        cmd += ["--isa", args.isa]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=True)
        got = json.loads(proc.stdout.strip().splitlines()[-1])
        return got["peak_mb"] - got["base_mb"]
    except (subprocess.SubprocessError, ValueError, IndexError) as err:
        print(f"  (memory measurement failed: {type(err).__name__})")
        return None


#: Timed rounds at the least, whatever the budget: a median of 3 (what a 4 s budget gave resnet18 at
#: batch 64) moves with one slow run on a shared machine.
MIN_ROUNDS = 5


def _time(fns: dict, budget: float) -> dict[str, list[float]]:
    """Interleaved runs of each function (one warm-up each), about ``budget`` seconds in all, and at least
    ``MIN_ROUNDS`` + 1 runs each."""
    for fn in fns.values():
        fn()
    first = {}
    for key, fn in fns.items():
        t = time.perf_counter()
        fn()
        first[key] = time.perf_counter() - t
    repeats = int(max(MIN_ROUNDS, min(50, budget / max(sum(first.values()), 1e-6))))
    times = {key: [first[key]] for key in fns}
    for _ in range(repeats):
        for key, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - t)
    return times


def _exported(name: str, args: argparse.Namespace, tmp: Path):
    """Zoo model ``name`` (random weights, BN statistics of random batches), its input size, its packed file in
    ``tmp``, the export's report and the file loaded as ``args`` say."""
    from reste.export import PackedModel, export_model

    model, size = _build(name)
    packed_path = tmp / f"{name}.rbnn"
    report = export_model(model, packed_path, input_size=size, meta={"model_name": name}, verify=False)
    packed = PackedModel.load(packed_path, backend=args.backend, threads=args.threads, isa=args.isa, pool=args.pool)
    return model, size, packed_path, report, packed


def bench_model(name: str, args: argparse.Namespace, tmp: Path) -> list[dict]:
    import torch

    from reste.export import format_report

    model, size, packed_path, report, packed = _exported(name, args, tmp)
    float_path = tmp / f"{name}.pt"
    torch.save(model.state_dict(), float_path)
    deploy = precomputed(model)  # float layers with sign(W) * alpha precomputed, the model's sign op
    float_weights = sum(t.numel() * t.element_size() for t in model.state_dict().values()
                        if isinstance(t, torch.Tensor))

    variant = f"{packed.backend}/{packed.isa}" if packed.isa else packed.backend
    print(f"\n== {name} ({size[0]}x{size[1]}x{size[2]}), packed kernels: {variant}, "
          f"{args.threads} thread(s)")
    print(format_report(report))
    x = torch.randn(64, *size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref, fair = model(x), deploy(x)
    if not bool((ref.argmax(1) == fair.argmax(1)).all()):  # float* must be the same network, else no baseline
        raise SystemExit(f"{name}: the float* baseline predicts otherwise than the model")
    fair_diff = "identical logits" if torch.equal(ref, fair) else \
        f"same predictions, max |logit diff| {float((ref - fair).abs().max()):.2e}"
    print(f"check float*    64 random images: {fair_diff} (float* against float)")
    got = packed(x)
    same = bool((ref.argmax(1) == got.argmax(1)).all())
    print(f"check           64 random images: predictions {'identical' if same else 'DIFFERENT'}, "
          f"max |logit diff| {float((ref - got).abs().max()):.2e}")

    rows = []
    for batch in args.batches:
        xb = torch.randn(batch, *size)

        def run_float(xb=xb):
            with torch.no_grad():
                model(xb)

        def run_deploy(xb=xb):
            with torch.no_grad():
                deploy(xb)

        times = _time({"float": run_float, "deploy": run_deploy, "packed": lambda xb=xb: packed(xb)}, args.budget)
        row = {"model": name, "batch": batch}
        for key in ("float", "deploy", "packed"):
            med = statistics.median(times[key])
            row[f"{key}_ms"] = 1000 * med
            row[f"{key}_ips"] = batch / med
            row[f"{key}_runs"] = len(times[key])
        row["float_weights_mb"] = float_weights / 2**20
        row["packed_weights_mb"] = packed.weight_bytes / 2**20
        if not args.no_memory:
            row["float_peak_mb"] = _memory("float", name, batch, float_path, args)
            row["packed_peak_mb"] = _memory("packed", name, batch, packed_path, args)
        rows.append(row)
    return rows


def bench_packed(names: list[str], args: argparse.Namespace, tmp: Path) -> None:
    """The packed engine's latency alone per model and batch (median of about ``--budget`` seconds of runs):
    float runs between its own, as the full table has, move a shared machine's caches and clocks, which hides
    a change of a few percent when two trees are compared."""
    import torch

    for name in names:
        _, size, _, _, packed = _exported(name, args, tmp)
        variant = f"{packed.backend}/{packed.isa}" if packed.isa else packed.backend
        for batch in args.batches:
            x = torch.randn(batch, *size, generator=torch.Generator().manual_seed(0))
            runs = _time({"packed": lambda x=x: packed(x)}, args.budget)["packed"]
            print(f"{name:15s} batch {batch:3d}: packed {1000 * statistics.median(runs):8.3f} ms "
                  f"(median of {len(runs)} runs, {variant}, {args.threads} thread(s))")


def bench_threads(names: list[str], args: argparse.Namespace, tmp: Path) -> None:
    """The packed engine with 1 thread and with ``--scaling`` threads, side by side (interleaved), at
    the largest batch: the throughput ratio (issue 17's target: at least 1.7x with 2 threads)."""
    import torch

    from reste.export import PackedModel, export_model
    from reste.export.kernels import choose_pool

    batch, n = max(args.batches), args.scaling
    pool = choose_pool(args.pool)
    where = {"openmp": "the worker threads of torch's OpenMP runtime", "posix": "POSIX threads started per call"}
    print(f"\n== thread scaling of the packed engine: 1 vs {n} threads, batch {batch} "
          f"(pool {pool}: pieces run on {where[pool]})")
    for name in names:
        model, size = _build(name)
        path = tmp / f"{name}-threads.rbnn"
        export_model(model, path, input_size=size, meta={"model_name": name}, verify=False)
        engines = {k: PackedModel.load(path, backend=args.backend, threads=k, isa=args.isa, pool=args.pool)
                   for k in (1, n)}
        x = torch.randn(batch, *size, generator=torch.Generator().manual_seed(3))
        if not torch.equal(engines[1](x), engines[n](x)):
            raise SystemExit(f"{name}: {n} threads give other logits than 1 thread")
        # a control on the same cores, interleaved: torch's float conv2d (256->256 at 8x8, batch 64), whose
        # 2-thread scaling shows what the machine gives a compute-bound kernel at that moment (a second
        # vCPU that is a hyperthread of the first, or busy with another guest, caps both)
        xc = torch.randn(64, 256, 8, 8, generator=torch.Generator().manual_seed(4))
        wc = torch.randn(256, 256, 3, 3, generator=torch.Generator().manual_seed(5))

        def run(k: int) -> None:  # the engine's float parts (torch ops) get the same threads
            torch.set_num_threads(k)
            engines[k](x)

        def control(k: int) -> None:
            torch.set_num_threads(k)
            torch.nn.functional.conv2d(xc, wc, None, 1, 1)

        fns = {**{k: (lambda k=k: run(k)) for k in engines}, **{("conv", k): (lambda k=k: control(k)) for k in (1, n)}}
        with torch.no_grad():
            times = _time(fns, args.budget)
        med = {k: statistics.median(v) for k, v in times.items()}
        ratio, control_ratio = med[1] / med[n], med["conv", 1] / med["conv", n]
        verdict = f"  (target >= 1.7x with 2 threads: {'MET' if ratio >= 1.7 else 'NOT MET'})" if n == 2 else ""
        print(f"{name:15s} 1 thread {batch / med[1]:8.1f} images/s, {n} threads {batch / med[n]:8.1f} images/s: "
              f"{ratio:.2f}x{verdict}; control, float conv2d: {control_ratio:.2f}x")


LAYERS = ((64, 32), (256, 8))  # (channels, height = width): 3x3, stride 1, padding 1


def bench_layers(args: argparse.Namespace) -> None:
    """One binary 3x3 conv on packed bits against F.conv2d in float32, batch 64."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from reste.export.kernels import get_kernels
    from reste.export.runtime import PackedActivation, _BinaryConv

    kernels = get_kernels(args.backend, args.threads, args.isa, args.pool)
    variant = f"{kernels.name}/{kernels.isa}" if getattr(kernels, "isa", None) else kernels.name
    print(f"\n== one binary 3x3 conv, batch 64, packed kernels: {variant}, {args.threads} thread(s)")
    print(f"{'layer':22s} | {'float conv2d ms':>15s} {'packed ms':>10s} {'x':>6s} | {'fused ms':>10s} {'x':>6s}"
          f" | {'kernel ms':>10s} {'x':>6s} | {'layout':8s}")
    gen = torch.Generator().manual_seed(2)
    for c, hw in LAYERS:
        w = torch.randn(c, c, 3, 3, generator=gen)
        ws = torch.where(w < 0, -1.0, 1.0)
        signs = ws.numpy().astype(np.int8)
        node = {"stride": [1, 1], "pad": [1, 1, 1, 1], "dil": [1, 1]}
        layer = _BinaryConv(node, signs, np.ones(c, np.float32), np.zeros(c, np.float32), None, kernels)
        x = torch.randn(64, c, hw, hw, generator=gen).contiguous(memory_format=torch.channels_last)
        xs = torch.where(x < 0, -1.0, 1.0)
        if not torch.equal(layer(x), F.conv2d(xs, ws, None, 1, 1)):
            raise SystemExit(f"packed conv {c}->{c} differs from the float conv of the signs")
        fns = {"float": lambda x=x, ws=ws: F.conv2d(x, ws, None, 1, 1), "packed": lambda x=x, layer=layer: layer(x)}
        if layer.fast:  # the XOR/popcount kernel alone, on the packed input it reads (int32 dot products)
            xp, h, wd = layer._packed_input(x)
            src, rows = layer._rows(xp, (h, wd))
            corr = layer._correction(h, wd)
            fns["kernel"] = lambda src=src, rows=rows, layer=layer, corr=corr: layer.kernels.bconv(
                src, rows, layer.blocked, c, layer.k, corr, None)
            # fused: a binary conv inside the engine, sign bits in and the next binary conv's sign bits out
            nxt = _BinaryConv(node, signs, np.ones(c, np.float32), np.zeros(c, np.float32), None, kernels)
            if layer.fuse_next(nxt):
                act = PackedActivation(xp, (h, wd))
                if not np.array_equal(layer.to_bits(act).data, nxt._packed_input(F.conv2d(xs, ws, None, 1, 1))[0]):
                    raise SystemExit(f"fused packed conv {c}->{c}: its sign bits differ from the float conv's")
                fns["fused"] = lambda layer=layer, act=act: layer.to_bits(act)
        with torch.no_grad():
            times = _time(fns, args.budget)
        med = {k: 1000 * statistics.median(v) for k, v in times.items()}
        kern, fused = (f"{med[k]:10.2f} {med['float'] / med[k]:5.1f}x" if k in med else f"{'n/a':>10s} {'':6s}"
                       for k in ("kernel", "fused"))
        layout = ("implicit" if layer.implicit else "narrow" if layer.narrow else "im2col") if layer.fast else "numpy"
        print(f"{f'{c}->{c} at {hw}x{hw}':22s} | {med['float']:15.2f} {med['packed']:10.2f} "
              f"{med['float'] / med['packed']:5.1f}x | {fused} | {kern} | {layout}")
    print("packed: float32 in and out (sign bits packed from the float input, XOR/popcount, float32 output); "
          "fused: sign bits in, the next binary conv's packed sign bits out (a binary conv between two others "
          "in the engine: integer thresholds, no floats); kernel: the popcount kernel alone on the packed "
          "input, int32 output. x = float / that.")


def _fmt(v, spec: str) -> str:
    return "n/a" if v is None else format(v, spec)


def print_table(rows: list[dict], memory: bool) -> None:
    head = (f"{'model':15s} {'batch':>5s} | {'latency ms (median)':>32s} | {'packed faster than':>17s} | "
            f"{'images/s':>19s} | {'runs':>4s} | {'weights MB':>15s} {'x':>6s}"
            + (f" | {'peak MB':>15s} {'x':>6s}" if memory else ""))
    sub = (f"{'':15s} {'':5s} | {'float':>10s} {'float*':>10s} {'packed':>10s} | {'float':>8s} {'float*':>8s} | "
           f"{'float*':>9s} {'packed':>9s} | {'':4s} | {'float':>7s} {'packed':>7s} {'':6s}"
           + (f" | {'float':>7s} {'packed':>7s} {'':6s}" if memory else ""))
    print("\n" + head + "\n" + sub + "\n" + "-" * len(head))
    for r in rows:
        runs = min(r[f"{k}_runs"] for k in ("float", "deploy", "packed"))
        vs_float, vs_fair = r["float_ms"] / r["packed_ms"], r["deploy_ms"] / r["packed_ms"]
        line = (f"{r['model']:15s} {r['batch']:5d} | {r['float_ms']:10.2f} {r['deploy_ms']:10.2f} "
                f"{r['packed_ms']:10.2f} | {vs_float:7.1f}x {vs_fair:7.1f}x | {r['deploy_ips']:9.1f} "
                f"{r['packed_ips']:9.1f} | {runs:4d} | "
                f"{r['float_weights_mb']:7.2f} {r['packed_weights_mb']:7.2f} "
                f"{r['float_weights_mb'] / r['packed_weights_mb']:5.1f}x")
        if memory:
            fp, pp = r.get("float_peak_mb"), r.get("packed_peak_mb")
            ratio = f"{fp / pp:5.1f}x" if fp and pp else "  n/a "
            line += f" | {_fmt(fp, '7.1f')} {_fmt(pp, '7.1f')} {ratio}"
        print(line)
    print("packed faster than: float / packed and float* / packed latency. float: the training-time model in eval "
          "mode (re-derives sign(W) * alpha at every forward); float*: the same network with sign(W) * alpha "
          "precomputed as plain float conv/linear weights (the fair baseline). Latency: median of `runs` timed "
          "runs per engine, interleaved. Weights and peak MB: the training-time model's. Peak MB: peak RSS of a "
          "fresh process while it loads the engine and runs one batch, over its RSS after the imports.")


def _load() -> str:
    """The 1-minute load average (the runs' times and ratios move with it on a shared machine), or n/a."""
    try:
        return f"{os.getloadavg()[0]:.1f}"
    except (OSError, AttributeError):  # not available on this platform (Windows has no getloadavg)
        return "n/a"


def main() -> None:
    from reste.export.kernels import ISAS

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["resnet20_1w1a", "resnet18_1w1a"])
    p.add_argument("--batches", nargs="+", type=int, default=[1, 64])
    p.add_argument("--threads", type=int, default=1,
                   help="threads for both engines (default 1: stable numbers on a shared machine)")
    p.add_argument("--backend", default="auto", choices=("auto", "c", "numpy"))
    p.add_argument("--isa", choices=ISAS,
                   help="force a variant of the C kernels (default: the fastest this CPU runs)")
    p.add_argument("--pool", choices=("openmp", "posix"),
                   help="where the C kernels run their threads (default: torch's OpenMP workers where found)")
    p.add_argument("--budget", type=float, default=4.0, help="seconds of timed runs per model and batch size")
    p.add_argument("--no-layers", action="store_true", help="skip the per-layer microbenchmark")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    p.add_argument("--packed-only", action="store_true",
                   help="time the packed engine alone (no float baselines, layers or memory)")
    p.add_argument("--scaling", type=int, metavar="N",
                   help="only the thread scaling: the packed engine with 1 and with N threads, largest batch")
    p.add_argument("--child", choices=("float", "packed"), help=argparse.SUPPRESS)
    p.add_argument("--weights", help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        args.model = args.models[0]
        child(args)
        return

    import torch

    torch.set_num_threads(args.threads)
    start, load = time.time(), _load()
    if args.scaling or args.packed_only:
        with tempfile.TemporaryDirectory() as tmp:
            (bench_threads if args.scaling else bench_packed)(args.models, args, Path(tmp))
        print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, {time.time() - start:.0f} s, "
              f"load average {load} at the start and {_load()} at the end (1 min)")
        return
    if not args.no_layers:
        bench_layers(args)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            rows += bench_model(name, args, Path(tmp))
    print_table(rows, not args.no_memory)
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, {time.time() - start:.0f} s, "
          f"load average {load} at the start and {_load()} at the end (1 min)")


if __name__ == "__main__":
    main()
