"""Where the eager host time of a binary ResNet-20 step goes: per phase, per op, per node (diagnosis only)."""
import collections
import contextlib
import statistics
import sys
import time

import torch
import torch.nn.functional as F

import reste
from reste import cuda_ext, fused, models

dev = torch.device(sys.argv[1] if len(sys.argv) > 1 else "cuda")
amps = sys.argv[2].split(",") if len(sys.argv) > 2 else ["fp32", "bf16"]
batch = int(sys.argv[3]) if len(sys.argv) > 3 else 256
torch.manual_seed(0)
if dev.type == "cpu":
    torch.set_num_threads(1)
print("ext:", cuda_ext.build(), flush=True)


def sync():
    if dev.type == "cuda":
        torch.cuda.synchronize()


def make(name, amp, ext, **kw):
    cl = amp == "bf16"
    fmt = torch.channels_last if cl else torch.contiguous_format
    model = models.create(name, **kw).to(device=dev, memory_format=fmt).train()
    if "estimator" in kw:
        reste.set_progress(model, 900, 1000)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    x = torch.randn(batch, 3, 32, 32, device=dev).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (batch,), device=dev)
    ctx = (lambda: torch.autocast(dev.type, dtype=torch.bfloat16)) if amp == "bf16" else contextlib.nullcontext
    phases = collections.defaultdict(list)

    def step(record=False):
        cuda_ext.set_enabled(ext)
        fused.set_enabled(True)
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with ctx():
            out = model(x)
            loss = F.cross_entropy(out, y)
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        opt.step()
        t3 = time.perf_counter()
        if record:
            phases["forward"].append(t1 - t0)
            phases["backward"].append(t2 - t1)
            phases["opt"].append(t3 - t2)
    return step, phases


for amp in amps:
    variants = {"fp": make("resnet20", amp, False), "reste_ext": make("resnet20_1w1a", amp, True, estimator="reste"),
                "reste_py": make("resnet20_1w1a", amp, False, estimator="reste")}
    for step, _ in variants.values():
        for _ in range(5):
            step()
    sync()
    walls = collections.defaultdict(list)
    for r in range(15):
        for k, (step, _) in variants.items():
            sync()
            t0 = time.perf_counter()
            for _ in range(4):
                step(record=True)
            sync()
            walls[k].append((time.perf_counter() - t0) / 4)
    print(f"\n=== {amp} batch {batch}: ms per step (median), host ms per phase (median)")
    for k, (step, phases) in variants.items():
        ph = "  ".join(f"{p} {statistics.median(v) * 1e3:6.2f}" for p, v in phases.items())
        print(f"  {k:10s} wall {statistics.median(walls[k]) * 1e3:6.2f}   host: {ph}")
    # profile: op counts per step and self CPU time per op name
    acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    tables = {}
    for k, (step, _) in variants.items():
        if k == "reste_py" and amp != amps[0]:
            continue
        n = 3
        with torch.profiler.profile(activities=acts) as prof:
            for _ in range(n):
                step()
            sync()
        rows = {}
        for e in prof.key_averages():
            rows[e.key] = (e.count / n, e.self_cpu_time_total / n, e.cpu_time_total / n)
        tables[k] = rows
    launches = {k: sum(v[0] for name, v in rows.items() if "LaunchKernel" in name or name.startswith("cuLaunch"))
                for k, rows in tables.items()}
    print("  kernel launches per step:", {k: round(v, 1) for k, v in launches.items()})
    for k in [v for v in tables if v != "fp"]:
        print(f"  --- {k} minus fp: ops whose count per step differs (count, self cpu us per step, total cpu us)")
        names = set(tables[k]) | set(tables["fp"])
        diffs = []
        for name in names:
            a = tables[k].get(name, (0, 0, 0))
            b = tables["fp"].get(name, (0, 0, 0))
            if abs(a[0] - b[0]) > 0.01 or abs(a[1] - b[1]) > 30:
                diffs.append((a[1] - b[1], name, a, b))
        for d, name, a, b in sorted(diffs, key=lambda t: -abs(t[0]))[:40]:
            print(f"    {name[:60]:60s} count {b[0]:6.1f} -> {a[0]:6.1f}  self {b[1]:8.1f} -> {a[1]:8.1f}  "
                  f"total {b[2]:8.1f} -> {a[2]:8.1f}")
