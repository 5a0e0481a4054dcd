"""benchmarks/gpu_check.sh without a GPU: the script parses, its Python parts compile, it says
plainly that it checked nothing where no GPU is visible (exit 77), and its target report reads the
benchmarks' JSON files as they write them: MET / NOT MET from the numbers, NOT MEASURED (not a
traceback) where a benchmark did not run. The numbers fed to the report here are made up for the
test; no GPU figure comes from this file.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh"


def _python_parts() -> list[str]:
    return re.findall(r"<<'PY'[^\n]*\n(.*?)\nPY\n", SCRIPT.read_text(), re.S)


def test_the_script_parses_and_its_python_compiles():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    parts = _python_parts()
    assert len(parts) == 4  # kernels, CUDA graphs, the default's C++ nodes, the target report
    for i, code in enumerate(parts):
        compile(code, f"gpu_check.sh, Python part {i}", "exec")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible: the script would run for real")
def test_without_a_gpu_it_checks_nothing_and_says_so():
    done = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable})
    assert done.returncode == 77
    assert "no CUDA GPU is visible" in done.stderr and "nothing was checked" in done.stderr
    assert done.stdout == ""


def _report(tmp_path: Path, rows: dict | None, epoch: dict | None, failed: dict | None = None,
            planned: list[str] | None = None) -> str:
    report = _python_parts()[-1]
    rows_json, epoch_json = tmp_path / "rows.json", tmp_path / "epoch.json"
    if rows is not None:
        measured = {"torch": "x", "device": "a made-up GPU", "rows": rows}
        if failed is not None:  # train_step.py writes it since the rows are written one by one
            measured["failed"] = failed
        if planned is not None:  # train_step.py writes the rows it means to measure before the first
            measured["planned"] = planned
        rows_json.write_text(json.dumps(measured))
    if epoch is not None:
        epoch_json.write_text(json.dumps(epoch))
    done = subprocess.run([sys.executable, "-c", report, str(rows_json), "yes", "benchmarks/train_epoch.py",
                           str(epoch_json)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_report_marks_each_target_from_the_numbers(tmp_path):
    row = {"ratios": {"reste/fp": 1.10, "reste/ste": 1.20, "reference/reste": 3.5,
                      "reste_ext/fp": 1.05, "reste_ext/ste_ext": 1.10, "reference/reste_ext": 3.2},
           "median_ms": {"fp": 10.0, "reste": 11.0, "reste_graphed": 5.5}}
    slow = {"ratios": {"reste/fp": 2.0, "reste/ste": 1.01, "reference/reste": 1.9}, "median_ms": {"fp": 1.0}}
    epoch = {"epoch_over_step": 0.80, "epoch_images_per_s": 40000.0, "bare_step": {"images_per_s": 50000.0}}
    out = _report(tmp_path, {"resnet20-bf16-cl": row, "resnet20-fp32": slow}, epoch)
    lines = out.splitlines()

    def line(label: str, row_name: str = "") -> str:
        return next(x for x in lines if label in x and row_name in x)

    assert "a made-up GPU" in out
    assert line("ReSTE / FP, eager", "resnet20-bf16-cl").endswith(" MET")
    assert line("ReSTE / FP, eager", "resnet20-fp32").endswith("NOT MET")
    assert line("ReSTE / STE, eager", "resnet20-bf16-cl").endswith("NOT MET")
    assert line("ReSTE / STE, eager", "resnet20-fp32").endswith(" MET")
    assert line("reference / ReSTE", "resnet20-bf16-cl").endswith(" MET")
    assert line("reference / ReSTE", "resnet20-fp32").endswith("NOT MET")
    # the C++ nodes' lines (the default where nvcc is found): marked where measured, NOT MEASURED where not
    assert line("ReSTE / FP, eager, C++ nodes", "resnet20-bf16-cl").endswith(" MET")
    assert line("ReSTE / STE, eager, C++ nodes", "resnet20-bf16-cl").endswith("NOT MET")
    assert line("reference / ReSTE, eager, C++ nodes", "resnet20-bf16-cl").endswith(" MET")
    assert line("ReSTE / FP, eager, C++ nodes", "resnet20-fp32").endswith("NOT MEASURED")
    assert "5.50 ms (target <= 6 ms)  MET" in line("--cuda-graphs")
    assert "0.80   (target >= 0.85)  NOT MET" in line("whole-epoch")


def test_the_report_says_not_measured_where_a_benchmark_did_not_run(tmp_path):
    out = _report(tmp_path, None, None)
    assert "training-step rows did not run" in out
    assert "NOT MEASURED" in out and "whole-epoch" in out
    assert " MET" not in out.replace("NOT MET", "")


def test_a_row_that_failed_is_not_measured_and_the_others_count(tmp_path):
    row = {"ratios": {"reste/fp": 1.10, "reste/ste": 1.02, "reference/reste": 3.5},
           "median_ms": {"fp": 1.0}}
    out = _report(tmp_path, {"resnet20-fp32": row}, None,
                  failed={"resnet20-bf16-cl": "OutOfMemoryError: CUDA out of memory"})
    lines = out.splitlines()
    assert "row resnet20-bf16-cl failed (OutOfMemoryError: CUDA out of memory)" in out
    for label in ("ReSTE / FP, eager, Python", "ReSTE / STE, eager, Python", "reference / ReSTE, eager, Python"):
        assert next(x for x in lines if label in x and "resnet20-fp32" in x).endswith(" MET")
        assert next(x for x in lines if label in x and "resnet20-bf16-cl" in x).endswith("NOT MEASURED")
    assert next(x for x in lines if "--cuda-graphs" in x).endswith("NOT MEASURED (its row failed; see above)")


def test_rows_that_section_4_did_not_reach_are_not_measured_and_named(tmp_path):
    """train_step.py writes its file after each row: one cut by its time limit leaves the rows not reached out of
    both ``rows`` and ``failed``. Each still gets its NOT MEASURED lines, and the graphed target says that its row
    was never tried, not that the capture failed (review gpudry #1)."""
    row = {"ratios": {"reste/fp": 1.10, "reste/ste": 1.02, "reference/reste": 3.5}, "median_ms": {"fp": 1.0}}
    planned = ["resnet20-fp32", "resnet20-bf16-cl", "resnet18-224-bf16-cl"]
    out = _report(tmp_path, {"resnet20-fp32": row}, None, failed={}, planned=planned)
    lines = out.splitlines()
    for name in planned[1:]:
        assert f"row {name} was not reached" in out
        for label in ("ReSTE / FP, eager, Python", "ReSTE / STE, eager, Python", "reference / ReSTE, eager, Python",
                      "ReSTE / FP, eager, C++ nodes"):
            assert next(x for x in lines if label in x and name in x).endswith("NOT MEASURED")
    graphed = next(x for x in lines if "--cuda-graphs" in x)
    assert graphed.endswith("NOT MEASURED (section 4 did not reach row resnet20-bf16-cl)")
    # a row that ran but whose capture raised says so, with the error
    row2 = {**row, "graph_errors": {"reste": "RuntimeError: capture failed"}}
    out = _report(tmp_path, {"resnet20-bf16-cl": row2}, None, failed={}, planned=planned[1:2])
    assert "could not be captured: RuntimeError: capture failed" in out


FAKE = Path(__file__).resolve().parent / "fixtures" / "fake_gpu_python"


def _fake_run(tmp_path: Path, **env: str) -> tuple[int, str]:
    """gpu_check.sh with python3 replaced by tests/fixtures/fake_gpu_python (which claims a GPU)."""
    done = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "PYTHON": str(FAKE), "FAKE_REAL_PYTHON": sys.executable,
                               "TMPDIR": str(tmp_path), **env})
    return done.returncode, done.stdout + done.stderr


def test_the_run_keeps_its_log_and_figures_and_ends_with_a_summary(tmp_path):
    """The device tool returns only the output's tail and the files under $OUT: GPU_CHECK_SAVE keeps the whole
    log and the JSON figures there, and the tail holds every section's status and every target line."""
    rc, out = _fake_run(tmp_path, GPU_CHECK_SAVE=str(tmp_path / "save"))
    assert rc == 0, out
    kept = {p.name for p in (tmp_path / "save").iterdir()}
    # the figures, and the full outputs the log shows only the end of (the extension's tests: review KK)
    assert kept == {"epoch.json", "rows.json", "gpu_check.log", "ext-build.txt", "ext-tests.txt", "nodes.txt",
                    "targets.txt"}
    assert len(kept) <= 8  # the device tool brings back at most 8 files from $OUT and leaves the rest out silently
    log = (tmp_path / "save" / "gpu_check.log").read_text()
    assert "== 6. Targets" in log and log.rstrip().endswith(out.rstrip().splitlines()[-1])  # whole to its end
    summary = out[out.index("== Summary"):]
    assert "1. Triton kernels: ok" in summary and "5. whole epoch: ok" in summary
    assert "ReSTE / FP, eager" in summary and summary.count("MET") >= 5


def test_a_section_that_hangs_costs_itself_and_the_budget_not_the_report(tmp_path):
    # 25 s are kept for the report and a section needs 10 s left to start: 37 leaves section 1 its 10 s even when
    # bash's SECONDS (whole seconds of the clock) has ticked once or twice since the script took START; with 35 a
    # tick in those few milliseconds left it 9 s, and it was NOT RUN instead of TIMED OUT
    rc, out = _fake_run(tmp_path, FAKE_HANG_KERNELS="1", GPU_CHECK_BUDGET="37")
    assert rc == 1, out
    # what the section printed before it hung is in the log: Python writes into the pipe unbuffered (held back,
    # it died with the process)
    assert "(fake) kernels: started" in out
    summary = out[out.index("== Summary"):]
    assert "1. Triton kernels: TIMED OUT" in summary
    assert "4. training-step rows: NOT RUN (out of time)" in summary
    assert "NOT MEASURED" in summary and "6. target report: ok" in summary


def test_the_extension_section_leaves_the_timed_sections_their_time(tmp_path):
    """The extension's build and tests (limits 300 and 240 s) come before the timed rows: a hang there is cut so
    that sections 4 and 5, the targets' figures, keep 150 s of the budget (without it the fake tests here would
    hang 165 s)."""
    rc, out = _fake_run(tmp_path, FAKE_HANG_PYTEST="1", GPU_CHECK_BUDGET="190")
    assert rc == 1, out
    summary = out[out.index("== Summary"):]
    assert "3. extension tests on CUDA: TIMED OUT" in summary
    assert "4. training-step rows: ok" in summary and "5. whole epoch: ok" in summary
    assert "NOT MEASURED" not in summary.split("C++ nodes")[0]  # the rows' own targets were measured


def test_an_extension_that_fails_its_checks_is_not_timed_and_no_nvcc_is_the_environment(tmp_path):
    rc, out = _fake_run(tmp_path, FAKE_PYTEST_RC="1")
    assert rc == 1 and "3. extension tests on CUDA: FAILED (exit 1)" in out
    assert re.search(r"\(fake\) train_step\.py .*--no-ext", out)  # a fault there would cost every row
    rc, out = _fake_run(tmp_path, FAKE_NO_NVCC="1")
    assert rc == 2 and "3. extension build: FAILED (exit 1)" in out and "no CUDA toolkit" in out
    rc, out = _fake_run(tmp_path, FAKE_NO_NVCC="kernels.cu(88): error: identifier undefined")
    assert rc == 1 and "the extension's sources did not compile" in out  # the code's fault, not the machine's
    assert re.search(r"\(fake\) train_step\.py .*--no-ext", out)
    rc, out = _fake_run(tmp_path)
    assert rc == 0 and "--no-ext" not in out


def test_a_timed_section_that_fails_or_hangs_is_exit_status_1(tmp_path):
    """Whoever reads only the status of the one GPU run must not take a failed or cut benchmark for a clean pass
    (review gpudry #2). (A section that runs out of time sets the same status, 124: the hang tests above.)"""
    rc, out = _fake_run(tmp_path, FAKE_BENCH_RC="1")
    assert rc == 1, out
    assert "4. training-step rows: FAILED (exit 1)" in out and "5. whole epoch: FAILED (exit 1)" in out
    assert "1. Triton kernels: ok" in out and "2. CUDA graphs: ok" in out  # the correctness checks passed


PRESETS = SCRIPT.with_name("preset_epochs.sh")


def test_the_preset_epochs_script_parses_refuses_without_a_gpu_and_summarises_its_figures(tmp_path):
    """benchmarks/preset_epochs.sh: exit 77 where no GPU is visible; its summary reads train_epoch.py's JSON (the
    figures here are made up for the test)."""
    subprocess.run(["bash", "-n", str(PRESETS)], check=True)
    if not torch.cuda.is_available():
        done = subprocess.run(["bash", str(PRESETS)], capture_output=True, text=True, timeout=120,
                              env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable})
        assert done.returncode == 77 and "nothing was timed" in done.stderr and done.stdout == ""
    summary = re.search(r"<<'PY'\n(.*?)\nPY\n", PRESETS.read_text(), re.S).group(1)
    for name, graphed, hours in (("epoch-resnet20_1w1a.json", False, {"cifar10-resnet20-1w1a": 1.25,
                                                                       "cifar10-resnet20-ste": 1.25}),
                                 ("epoch-resnet20_1w1a-graphed.json", True, {"cifar10-resnet20-1w1a": 0.5})):
        (tmp_path / name).write_text(json.dumps({"args": {"cuda_graphs": graphed}, "implied_hours": hours,
                                                 "bare_step": {"median_s": 0.0123}}))
    done = subprocess.run([sys.executable, "-c", summary, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "cifar10-resnet20-1w1a" in lines[0] and "graphed" in lines[0] and "0.50 h" in lines[0]
    assert "cifar10-resnet20-1w1a and 1 more" in lines[1] and "eager" in lines[1] and "1.25 h" in lines[1]
    assert "12.30 ms" in lines[1]
