"""benchmarks/train_step.py still runs on the CPU (one short round), and its GPU-only guard works: the rows
timed "through the C++ nodes" are left out where the extension takes none of the binary layers."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from reste import cuda_ext, models
from reste.layers import binary_layers

SCRIPT = Path(__file__).parent.parent / "benchmarks" / "train_step.py"


def _bench():
    spec = importlib.util.spec_from_file_location("train_step_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_training_step_benchmark_runs_and_writes_its_ratios(tmp_path):
    out = tmp_path / "rows.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--batch-size", "4", "--repeats", "1",
                           "--warmup", "0", "--threads", "1", "--json", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    row = json.loads(out.read_text())["rows"]["single"]
    assert {"fp", "ste", "reste", "reference"} <= set(row["median_ms"])
    assert all(v > 0 for v in row["ratios"].values()) and row["check"] < 1e-5  # the reference's backward agrees


@pytest.mark.skipif(not (shutil.which("c++") or shutil.which("g++")), reason="no C++ compiler for the extension")
def test_ext_rows_are_kept_only_where_the_cpp_nodes_take_the_layers(monkeypatch):
    bench = _bench()
    cuda_ext.build()
    model = models.create("resnet20_1w1a").train()
    x = torch.randn(2, 3, 32, 32)
    with cuda_ext.forced():  # CPU tensors through the extension's CPU loops, as CUDA ones on a GPU
        taken = bench.ext_nodes(model, x)
        assert taken == len(binary_layers(model))  # one node a layer: the sign of the input and the scaled weight
        monkeypatch.setattr(cuda_ext, "_STATE", [None])  # as after a failed build: the Triton path runs
        assert bench.ext_nodes(model, x) == 0


def test_a_failed_row_leaves_the_measured_ones_in_the_json(tmp_path, monkeypatch):
    """The rows are written as each one ends, and a row that fails (an out-of-memory on a GPU) is recorded as
    failed while the others still count; the script then exits non-zero."""
    bench = _bench()
    out = tmp_path / "rows.json"
    first, second = list(bench.GPU_ROWS)[:2]

    calls = []

    def measure(*row, args, device):
        calls.append(row)
        if len(calls) == 2:
            raise RuntimeError("CUDA out of memory (made up)")
        return {"median_ms": {"fp": 1.0, "ste": 1.1, "reste": 1.2, "reference": 3.0}}

    monkeypatch.setattr(bench, "measure", measure)
    monkeypatch.setattr(bench, "print_rows", lambda *a: None)
    monkeypatch.setattr(sys, "argv", ["train_step.py", "--device", "cpu", "--rows", f"{first},{second}",
                                      "--json", str(out)])
    with pytest.raises(SystemExit, match=f"1 row\\(s\\) failed: {second}"):
        bench.main()
    written = json.loads(out.read_text())
    assert list(written["rows"]) == [first] and written["rows"][first]["ratios"]["reste/fp"] == pytest.approx(1.2)
    assert written["failed"] == {second: "RuntimeError: CUDA out of memory (made up)"}
