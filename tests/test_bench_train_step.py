"""benchmarks/train_step.py still runs on the CPU (one short round), and its GPU-only guard works: the rows
timed "through the C++ nodes" are left out where the extension takes none of the binary layers."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import weakref
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
    # the reference timed is the ReSTE model with every estimator swapped for the mask backward
    assert row["reference_modules"] == 2 * len(binary_layers(models.create("resnet20_1w1a")))


def test_the_loaders_alone_are_timed_without_a_training_step(monkeypatch, capsys):
    """(review perf4, suggestion 3) --loader-only: the loader figures in seconds, not after the minute-long steps."""
    bench = _bench()
    monkeypatch.setattr(bench, "measure", lambda *a, **k: pytest.fail("--loader-only timed a training step"))
    monkeypatch.setattr(bench, "loader_rates", lambda batch, n, seed: [(f"pipeline of {n} images", 10.0, 12.0)])
    monkeypatch.setattr(sys, "argv", ["train_step.py", "--device", "cpu", "--loader-only", "--loader-images", "64"])
    bench.main()
    out = capsys.readouterr().out
    assert "pipeline of 64 images" in out and "step consumes" not in out


def test_each_ratio_divides_the_right_medians_and_each_target_reads_the_issue():
    bench = _bench()
    med = {"fp": 10.0, "ste": 11.0, "reste": 12.0, "reference": 40.0, "ste_ops": 13.0, "reste_ops": 14.0,
           "ste_ext": 10.5, "reste_ext": 10.8, "fp_graphed": 4.0, "ste_graphed": 4.1, "reste_graphed": 4.2,
           "reste_ext_graphed": 4.4}
    assert bench.ratios({"median_ms": med}) == pytest.approx({
        "reste/fp": 1.2, "reste/ste": 12 / 11, "reference/reste": 40 / 12,
        "reste_ops/fp": 1.4, "reste_ops/ste_ops": 14 / 13, "reference/reste_ops": 40 / 14,
        "reste_ext/fp": 1.08, "reste_ext/ste_ext": 10.8 / 10.5, "reference/reste_ext": 40 / 10.8,
        "reste_graphed/fp_graphed": 4.2 / 4.0, "reste_graphed/ste_graphed": 4.2 / 4.1,
        "reste_ext_graphed/fp_graphed": 1.1})
    assert bench.GPU_TARGETS == {"reste/fp": ("<=", 1.15), "reste/ste": ("<=", 1.05), "reference/reste": (">=", 3.0)}
    assert {k: bench.EXT_RATIOS[k] for k in bench.GPU_TARGETS} == {
        "reste/fp": "reste_ext/fp", "reste/ste": "reste_ext/ste_ext", "reference/reste": "reference/reste_ext"}


def test_the_rows_table_marks_each_row_from_its_ratios(capsys):
    bench = _bench()
    fast = {"fp": 10.0, "ste": 11.0, "reste": 11.2, "reference": 40.0, "ste_ext": 10.0, "reste_ext": 12.0}
    slow = {"fp": 10.0, "ste": 10.0, "reste": 20.0, "reference": 50.0}
    results = {name: {"median_ms": med, "check": 1e-7} for name, med in (("a-row", fast), ("b-row", slow))}
    args = type("Args", (), {"repeats": 3, "warmup": 1, "epoch": 900, "epochs": 1000})()
    bench.print_rows(results, args, torch.device("cpu"))
    out = capsys.readouterr().out
    assert ("a-row: reste/fp 1.12x (<= 1.15x: MET); reste/ste 1.02x (<= 1.05x: MET); reference/reste 3.57x (>= 3x: "
            "MET)") in out
    assert "C++ nodes: reste_ext/fp 1.20x (<= 1.15x: NOT MET); reste_ext/ste_ext 1.20x (<= 1.05x: NOT MET)" in out
    assert ("b-row: reste/fp 2.00x (<= 1.15x: NOT MET); reste/ste 2.00x (<= 1.05x: NOT MET); reference/reste 2.50x "
            "(>= 3x: NOT MET)") in out


def test_each_timed_step_is_synchronised_and_the_warm_up_is_not_timed(monkeypatch):
    """A GPU step is asynchronous: the device is synchronised before and after each timed step, the warm-up rounds
    run first and untimed, and the order rotates every round."""
    bench = _bench()
    log = []
    monkeypatch.setattr(bench, "sync", lambda device: log.append("sync"))
    steps = {name: (lambda name=name: log.append(name)) for name in ("a", "b")}
    times = bench.time_steps(steps, repeats=2, warmup=1, device=torch.device("cpu"))
    assert log == ["a", "b", "sync", "sync", "a", "sync", "sync", "b", "sync", "sync", "b", "sync", "sync", "a", "sync"]
    assert {k: len(v) for k, v in times.items()} == {"a": 2, "b": 2}


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


def test_a_row_whose_graphs_do_not_fit_is_timed_again_without_them(tmp_path, monkeypatch):
    """(review gpu3, suggestion 1) Each CUDA graph keeps its step's memory beside the row's eager models: the ImageNet
    row's four may not fit a 80 GB GPU. An out-of-memory with --graphs times the row again without them (its eager
    figures are its targets), and says why its graphs are missing; one without --graphs is a failed row."""
    bench = _bench()
    out = tmp_path / "rows.json"
    row = list(bench.GPU_ROWS)[-1]
    calls = []

    class Held:  # what the failed attempt held (its models, its graphs)
        pass

    held = []

    def measure(*shape, args, device):
        calls.append((args.graphs, sum(ref() is not None for ref in held)))
        if args.graphs:
            models = Held()
            held.append(weakref.ref(models))
            raise torch.OutOfMemoryError("CUDA out of memory (made up)")
        return {"median_ms": {"fp": 1.0, "ste": 1.1, "reste": 1.2, "reference": 3.0}, "graph_errors": {},
                "variants": ["fp", "ste", "reste", "reference"]}

    monkeypatch.setattr(bench, "measure", measure)
    monkeypatch.setattr(bench, "print_rows", lambda *a: None)
    monkeypatch.setattr(sys, "argv", ["train_step.py", "--device", "cpu", "--rows", row, "--graphs", "--json",
                                      str(out)])
    bench.main()
    written = json.loads(out.read_text())
    # (review diff24 #2) the retry starts once the failed attempt's models are gone (in its exception's traceback,
    # they held their memory)
    assert calls == [(True, 0), (False, 0)] and written["failed"] == {}
    assert written["rows"][row]["graph_errors"] == dict.fromkeys(
        ("fp", "ste", "reste"), "out of memory beside the row's eager models: timed without graphs")
    monkeypatch.setattr(sys, "argv", ["train_step.py", "--device", "cpu", "--rows", row, "--json", str(out)])
    monkeypatch.setattr(bench, "measure", lambda *shape, args, device: (_ for _ in ()).throw(
        torch.OutOfMemoryError("CUDA out of memory (made up)")))
    with pytest.raises(SystemExit, match=f"1 row\\(s\\) failed: {row}"):
        bench.main()
