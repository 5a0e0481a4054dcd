"""benchmarks/inference.py still runs and checks what it times: one short run (a tiny time budget); so does
benchmarks/conv_bn_1d.py, its batch norms in the binary convs' epilogues unless told not to."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from reste.export import kernels as K
from build_checks import require_built

SCRIPT = Path(__file__).parent.parent / "benchmarks" / "inference.py"
CONV_BN = SCRIPT.parent / "conv_bn_1d.py"


def test_the_inference_benchmark_runs_its_checks_and_prints_its_tables():
    require_built(K.c_kernel_error(), "the packed C kernels")  # (without them the packed kernels are NumPy's)
    proc = subprocess.run([sys.executable, str(SCRIPT), "--models", "resnet20_1w1a", "--batches", "1",
                           "--no-memory", "--budget", "0.05", "--threads", "1"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    out = proc.stdout
    # the per-layer table: each layer was checked against the float conv (else the script exits) and timed
    for layer in ("64->64 at 32x32", "256->256 at 8x8"):
        row = next(line for line in out.splitlines() if line.startswith(layer))
        assert row.count("x |") == 3 and row.rstrip().endswith("implicit"), row
    assert "predictions identical" in out
    # both baselines, each with its ratio: the training-time model and the same network with its binary weights
    # precomputed (checked to be the same network), each engine timed at least MIN_ROUNDS + 1 times
    assert "check float*    64 random images: identical logits" in out or "same predictions" in out
    row = next(line for line in out.splitlines() if line.startswith("resnet20_1w1a       1 |"))
    latency, ratios, _ips, runs = (part.split() for part in row.split("|")[1:5])
    assert len(latency) == 3 and len(ratios) == 2 and all(r.endswith("x") for r in ratios), row
    assert int(runs[0]) >= 6, row
    assert "packed faster than: float / packed and float* / packed" in out
    # the load average, without which a ratio measured on a shared machine cannot be judged
    assert "load average" in out.splitlines()[-1], out.splitlines()[-1]


@pytest.mark.parametrize("flags, affine_steps", [([], 0), (["--unfused", "--float-outputs"], 4)])
def test_the_conv_bn_benchmark_runs_and_says_how_many_affine_steps_it_keeps(flags, affine_steps):
    proc = subprocess.run([sys.executable, str(CONV_BN), "--length", "64", "--runs", "1", "--batches", "1", "3",
                           *flags], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert f": {affine_steps} affine steps of their own, predictions as the float model's: " in proc.stdout
    assert "batch 1: " in proc.stdout and "batch 3: " in proc.stdout


def test_packed_only_times_the_packed_engine_alone():
    require_built(K.c_kernel_error(), "the packed C kernels")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--packed-only", "--models", "resnet20_1w1a", "--batches",
                           "1", "2", "--budget", "0.05"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("resnet20_1w1a")]
    assert [line.split()[2] for line in rows] == ["1:", "2:"], proc.stdout
    assert all(" ms (median of " in line and "runs, c/" in line for line in rows), rows
    assert "float*" not in proc.stdout and "latency ms" not in proc.stdout  # no baselines, no table
    assert "load average" in proc.stdout.splitlines()[-1]
