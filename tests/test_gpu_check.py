"""benchmarks/gpu_check.sh without a GPU: the script parses, its Python parts compile, it says
plainly that it checked nothing where no GPU is visible (exit 77), and its target report reads the
benchmarks' JSON files as they write them: MET / NOT MET from the numbers, NOT MEASURED (not a
traceback) where a benchmark did not run. The numbers fed to the report here are made up for the
test; no GPU figure comes from this file.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh"
# the GPU as the suite has it (conftest.py hides it): an environment made afresh must say so too, or the script
# would find the GPU and run for real
HIDDEN = {"CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES", "")}


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
                          env={**HIDDEN, "PATH": "/usr/bin:/bin", "PYTHON": sys.executable})
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


def _verdict(line: str) -> str:
    """A target line's verdict: MET, NOT MET, NOT MEASURED or NOT BUILT (``endswith(" MET")`` holds for NOT MET too)."""
    found = re.search(r"\(target [<>]= [^)]*\)\s+(MET|NOT MET|NOT MEASURED|NOT BUILT)\b", line)
    assert found, line
    return found.group(1)


def _lines(out: str):
    lines = out.splitlines()

    def line(label: str, row_name: str = "") -> str:
        return next(x for x in lines if label in x and row_name in x)

    return line


def test_the_report_marks_each_target_from_the_numbers(tmp_path):
    row = {"ratios": {"reste/fp": 1.10, "reste/ste": 1.20, "reference/reste": 3.5,
                      "reste_ext/fp": 1.05, "reste_ext/ste_ext": 1.02, "reference/reste_ext": 3.2},
           "median_ms": {"fp": 10.0, "reste": 11.0, "reste_graphed": 5.5, "reste_ext_graphed": 7.0}}
    slow = {"ratios": {"reste/fp": 2.0, "reste/ste": 1.01, "reference/reste": 1.9,
                       "reste_ext/fp": 1.30, "reste_ext/ste_ext": 1.20, "reference/reste_ext": 2.5},
            "median_ms": {"fp": 1.0}}
    epoch = {"epoch_over_step": 0.80, "epoch_images_per_s": 40000.0, "bare_step": {"images_per_s": 50000.0},
             "kernel_path": "C++ extension"}
    out = _report(tmp_path, {"resnet20-bf16-cl": row, "resnet20-fp32": slow}, epoch)
    line = _lines(out)
    assert "a made-up GPU" in out
    assert _verdict(line("ReSTE / FP, eager, Python", "resnet20-bf16-cl")) == "MET"
    assert _verdict(line("ReSTE / FP, eager, Python", "resnet20-fp32")) == "NOT MET"
    assert _verdict(line("ReSTE / STE, eager, Python", "resnet20-bf16-cl")) == "NOT MET"
    assert _verdict(line("ReSTE / STE, eager, Python", "resnet20-fp32")) == "MET"
    assert _verdict(line("reference / ReSTE, eager, Python", "resnet20-bf16-cl")) == "MET"
    assert _verdict(line("reference / ReSTE, eager, Python", "resnet20-fp32")) == "NOT MET"
    # the C++ nodes' lines (the default where nvcc is found), from their own ratios: each verdict differs from the
    # Python nodes' line of the same row
    assert _verdict(line("ReSTE / FP, eager, C++ nodes", "resnet20-fp32")) == "NOT MET"
    assert _verdict(line("ReSTE / STE, eager, C++ nodes", "resnet20-bf16-cl")) == "MET"
    assert _verdict(line("ReSTE / STE, eager, C++ nodes", "resnet20-fp32")) == "NOT MET"
    assert _verdict(line("reference / ReSTE, eager, C++ nodes", "resnet20-fp32")) == "NOT MET"
    assert _verdict(line("reference / ReSTE, eager, C++ nodes", "resnet20-bf16-cl")) == "MET"
    assert "1.020x" in line("ReSTE / STE, eager, C++ nodes", "resnet20-bf16-cl")  # its own figure
    graphed = line("--cuda-graphs, Python nodes")
    assert "5.500 ms  (target <= 6 ms)" in graphed and _verdict(graphed) == "MET"
    graphed = line("--cuda-graphs, C++ nodes")
    assert "7.000 ms  (target <= 6 ms)" in graphed and _verdict(graphed) == "NOT MET"
    epoch_line = line("whole-epoch")
    assert "C++ extension" in epoch_line and "0.800  (target >= 0.85)" in epoch_line
    assert _verdict(epoch_line) == "NOT MET"
    # where a row's C++ nodes were not timed, their lines say so
    del row["ratios"]["reste_ext/fp"], row["median_ms"]["reste_ext_graphed"]
    row["ext_error"] = "it did not build (RuntimeError: made up)"
    line = _lines(_report(tmp_path, {"resnet20-bf16-cl": row}, epoch))
    assert _verdict(line("ReSTE / FP, eager, C++ nodes", "resnet20-bf16-cl")) == "NOT MEASURED"
    assert line("--cuda-graphs, C++ nodes").endswith("NOT MEASURED (it did not build (RuntimeError: made up))")


@pytest.mark.parametrize("side", ["at", "beyond"])
def test_each_bound_is_the_issues_and_a_value_at_it_meets_it(tmp_path, side):
    """Each target's bound and direction: the value at the bound meets it, one a thousandth beyond does not (the
    report prints 3 decimals, so 1.151 does not read 1.15 beside NOT MET)."""
    d = 0.001 if side == "beyond" else 0.0
    ratios = {"reste/fp": 1.15 + d, "reste/ste": 1.05 + d, "reference/reste": 3.0 - d,
              "reste_ext/fp": 1.15 + d, "reste_ext/ste_ext": 1.05 + d, "reference/reste_ext": 3.0 - d}
    row = {"ratios": ratios, "median_ms": {"reste_graphed": 6.0 + d, "reste_ext_graphed": 6.0 + d}}
    epoch = {"epoch_over_step": 0.85 - d, "epoch_images_per_s": 1.0, "bare_step": {"images_per_s": 1.0}}
    out = _report(tmp_path, {"resnet20-bf16-cl": row}, epoch)
    verdicts = [_verdict(x) for x in out.splitlines() if "(target" in x]
    assert len(verdicts) == 9 and set(verdicts) == {"MET" if side == "at" else "NOT MET"}, out
    assert f"{1.15 + d:.3f}x" in out and f"{0.85 - d:.3f}" in out


def test_a_value_within_a_thousandth_of_its_bound_is_printed_on_the_side_of_its_verdict(tmp_path):
    """(review gpu3, suggestion 3) 1.1504 against <= 1.15 is NOT MET: it read 1.150x beside NOT MET; 3.0 - 4e-5
    against >= 3 read 3.000x. Each is printed with the digits that show it (a value that rounds onto its own side
    keeps 3)."""
    row = {"ratios": {"reste/fp": 1.1504, "reste/ste": 1.0496, "reference/reste": 3.0 - 4e-5,
                      "reste_ext/fp": 1.1496, "reste_ext/ste_ext": 1.05, "reference/reste_ext": 3.0004},
           "median_ms": {"reste_graphed": 6.00001, "reste_ext_graphed": 5.9996}}
    line = _lines(_report(tmp_path, {"resnet20-bf16-cl": row}, None))
    for label, shown, verdict in [("ReSTE / FP, eager, Python", "1.1504x", "NOT MET"),
                                  ("ReSTE / STE, eager, Python", "1.050x", "MET"),
                                  ("reference / ReSTE, eager, Python", "2.99996x", "NOT MET"),
                                  ("ReSTE / FP, eager, C++", "1.150x", "MET"),
                                  ("ReSTE / STE, eager, C++", "1.050x", "MET"),
                                  ("reference / ReSTE, eager, C++", "3.000x", "MET"),
                                  ("--cuda-graphs, Python", "6.00001 ms", "NOT MET"),
                                  ("--cuda-graphs, C++", "6.000 ms", "MET")]:
        assert f" {shown}  (target" in line(label) and _verdict(line(label)) == verdict, line(label)
    # (review gpu3, suggestion 4) Triton's error marks the step the Python nodes captured, not the C++ nodes'; that
    # step timed PyTorch ops, no figure of the fused kernels: NOT MEASURED, as the row's eager lines (review kern1)
    line = _lines(_report(tmp_path, {"resnet20-bf16-cl": {**row, "kernels_error": "made up"}}, None))
    assert line("--cuda-graphs, Python").endswith("NOT MEASURED (the fused kernels were off: made up; train_step.py's "
                                                  "GraphedStep replay of the step: 6.00 ms)")
    assert line("--cuda-graphs, C++").endswith("6.000 ms  (target <= 6 ms)  MET")


def test_a_budget_too_small_for_every_section_is_said_at_the_start(tmp_path):
    """(review gpu3 #1) Section 3 keeps 150 s for sections 4 and 5: under 330 s its later steps may not run, which
    the run says before it starts rather than as NOT RUN lines at its end."""
    rc, out = _fake_run(tmp_path, FAKE_HANG_KERNELS="1", GPU_CHECK_BUDGET="37", GPU_CHECK_SAVE=str(tmp_path / "s"))
    said = "GPU_CHECK_BUDGET=37 s is under the 330 s this script needs"
    assert said in out.splitlines()[0], out
    assert said in (tmp_path / "s" / "gpu_check.log").read_text().splitlines()[0]  # (review diff23 #4)
    rc, out = _fake_run(tmp_path)  # the default, 500
    assert "is under the" not in out


def test_a_reference_that_is_not_resTE_is_not_timed_against_it(tmp_path):
    """train_step.py checks the reference's backward against ReSTE's: where they differ, the reference is some
    other function, and its time is no measure of the authors' algorithm."""
    ratios = {"reste/fp": 1.1, "reste/ste": 1.0, "reference/reste": 3.5, "reste_ext/fp": 1.1,
              "reste_ext/ste_ext": 1.0, "reference/reste_ext": 3.5}
    row = {"ratios": ratios, "median_ms": {}, "check": 0.25}
    line = _lines(_report(tmp_path, {"resnet20-fp32": row}, None))
    for path in ("Python nodes", "C++ nodes"):
        assert line(f"reference / ReSTE, eager, {path}").endswith(
            "NOT MEASURED (the reference's backward differs from ReSTE's by 2.5e-01)")
    assert _verdict(line("ReSTE / FP, eager, Python")) == "MET"
    row["check"] = 3e-7  # float rounding
    assert _verdict(_lines(_report(tmp_path, {"resnet20-fp32": row}, None))("reference / ReSTE, eager, C")) == "MET"


def test_the_report_says_not_measured_where_a_benchmark_did_not_run(tmp_path):
    out = _report(tmp_path, None, None)
    assert "training-step rows did not run" in out
    assert "NOT MEASURED" in out and "whole-epoch" in out
    assert {_verdict(x) for x in out.splitlines() if "(target" in x} == {"NOT MEASURED"}


def test_a_row_that_failed_is_not_measured_and_the_others_count(tmp_path):
    row = {"ratios": {"reste/fp": 1.10, "reste/ste": 1.02, "reference/reste": 3.5},
           "median_ms": {"fp": 1.0}}
    out = _report(tmp_path, {"resnet20-fp32": row}, None,
                  failed={"resnet20-bf16-cl": "OutOfMemoryError: CUDA out of memory"})
    lines = out.splitlines()
    assert "row resnet20-bf16-cl failed (OutOfMemoryError: CUDA out of memory)" in out
    for label in ("ReSTE / FP, eager, Python", "ReSTE / STE, eager, Python", "reference / ReSTE, eager, Python"):
        assert _verdict(next(x for x in lines if label in x and "resnet20-fp32" in x)) == "MET"
        assert _verdict(next(x for x in lines if label in x and "resnet20-bf16-cl" in x)) == "NOT MEASURED"
    for path in ("Python nodes", "C++ nodes"):
        graphed = next(x for x in lines if f"--cuda-graphs, {path}" in x)
        assert graphed.endswith("NOT MEASURED (its row failed; see above)")


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
            assert _verdict(next(x for x in lines if label in x and name in x)) == "NOT MEASURED"
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
                          env={**HIDDEN, "PATH": "/usr/bin:/bin", "PYTHON": str(FAKE),
                               "FAKE_REAL_PYTHON": sys.executable,
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
    assert "ReSTE / FP, eager" in summary and summary.count("  MET") >= 5
    # where section 3 passed, section 4 times the C++ nodes and section 5 runs the default path: them
    bench = next(x for x in out.splitlines() if x.startswith("(fake) train_step.py"))
    assert "--no-ext" not in bench and "RESTE_CUDA_EXT=unset" in out
    # (a graphed run under the default takes the Triton kernels: the H100 run of 2026-12-06)
    epoch = next(x for x in summary.splitlines() if "whole-epoch" in x)
    assert "Triton kernels" in epoch and "(fake) train_epoch.py through the Triton kernels, RESTE_CUDA_EXT=unset" in out
    assert _verdict(next(x for x in summary.splitlines() if "--cuda-graphs, C++ nodes" in x)) == "MET"


def test_an_extension_that_fails_section_3_is_not_timed_and_fails_the_run(tmp_path):
    """The default not taking the C++ nodes: section 4 leaves the C++ rows out (--no-ext), section 5 runs the Python
    nodes, and the run fails."""
    rc, out = _fake_run(tmp_path, FAKE_DEFAULT_RC="1")
    assert rc == 1, out
    summary = out[out.index("== Summary"):]
    assert "3. the default takes the C++ nodes: FAILED (exit 1)" in summary
    assert "--no-ext" in next(x for x in out.splitlines() if x.startswith("(fake) train_step.py"))
    assert "RESTE_CUDA_EXT=0" in out and "Triton kernels" in summary
    assert "4. training-step rows: ok" in summary and "5. whole epoch: ok" in summary
    assert next(x for x in summary.splitlines() if "--cuda-graphs, C++ nodes" in x).endswith(
        "NOT MEASURED (the C++ nodes were not timed (--no-ext: see section 3))")
    assert "7. node overhead" not in summary and "not run: the extension did not pass section 3" in out


@pytest.mark.parametrize("rc_nodes,run_rc,said", [("1", 1, "FAILED (exit 1)"), ("124", 0, "TIMED OUT")])
def test_node_overhead_runs_last_and_fails_the_run_by_a_crash_not_by_the_time_left(tmp_path, rc_nodes, run_rc, said):
    """node_overhead.py (no target) runs after the targets, in what the budget leaves: it cannot cost the C++ nodes'
    figures (review gpuready1: in section 3, with sections 15 % slower than the H200's, its timeout left every C++
    target NOT MEASURED). A crash of its C++ nodes still fails the run; running out of time does not."""
    rc, out = _fake_run(tmp_path, FAKE_NODES_RC=rc_nodes)
    assert rc == run_rc, out
    summary = out[out.index("== Summary"):]
    assert f"7. node overhead (no target): {said}" in summary
    assert out.index("(fake) node table") > out.index("== 6. Targets")
    assert "--no-ext" not in next(x for x in out.splitlines() if x.startswith("(fake) train_step.py"))
    assert "RESTE_CUDA_EXT=unset" in out
    assert _verdict(next(x for x in summary.splitlines() if "--cuda-graphs, C++ nodes" in x)) == "MET"


def test_a_hung_build_leaves_the_timed_sections_their_time(tmp_path):
    """The extension builds in the background from the start under a limit that leaves sections 4 and 5 their
    time (and section 3's tests their minimum), whatever GPU_CHECK_BUDGET is: 200 s gives it 15 s."""
    rc, out = _fake_run(tmp_path, FAKE_HANG_BUILD="1", GPU_CHECK_BUDGET="200")
    assert rc == 1, out
    summary = out[out.index("== Summary"):]
    assert "3. extension build: TIMED OUT" in summary and "ran out of time" in out
    assert "4. training-step rows: ok" in summary and "5. whole epoch: ok" in summary


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
    hang 175 s)."""
    rc, out = _fake_run(tmp_path, FAKE_HANG_PYTEST="1", GPU_CHECK_BUDGET="200")
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
                              env={**HIDDEN, "PATH": "/usr/bin:/bin", "PYTHON": sys.executable})
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


def test_the_suite_hides_the_gpu_and_runs_its_gpu_tests_alone_when_asked(monkeypatch):
    """(an H100, 2026-12-06) where torch saw the GPU, runs of device "auto" trained on it and 120 tests that expect
    the CPU path failed: conftest.py hides it from the suite and the processes it starts; RESTE_TEST_DEVICE=cuda
    shows it and skips every test not marked gpu, and is refused where torch sees no GPU (review diff35)."""
    import conftest

    assert os.environ.get("CUDA_VISIBLE_DEVICES") == "" and not torch.cuda.is_available()
    root = SCRIPT.parents[1]
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_flip_ratio.py"],
                          cwd=root, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "RESTE_TEST_DEVICE": "cuda"})
    assert done.returncode == 4 and " passed" not in done.stdout, done.stdout + done.stderr
    assert "RESTE_TEST_DEVICE=cuda, but torch sees no GPU here (CUDA_VISIBLE_DEVICES='')" in done.stderr, done.stderr

    class Item:  # a collected test, as the hook sees it
        def __init__(self, gpu: bool) -> None:
            self.gpu, self.marks = gpu, []

        def get_closest_marker(self, name: str):
            return object() if name == "gpu" and self.gpu else None

        def add_marker(self, mark) -> None:
            self.marks.append(mark)

    items = [Item(gpu=True), Item(gpu=False)]
    conftest.pytest_collection_modifyitems(None, items)
    assert items[0].marks == items[1].marks == []  # the default run: nothing skipped by the hook
    monkeypatch.setattr(conftest, "GPU_RUN", True)
    conftest.pytest_collection_modifyitems(None, items)
    assert items[0].marks == [] and "runs the tests marked gpu alone" in items[1].marks[0].kwargs["reason"]


def test_the_suites_gpu_tests_run_in_section_2_and_a_failure_fails_the_run(tmp_path):
    """Section 2 runs the suite's tests marked gpu (a resume on the GPU, which crashed until 2026-12-06): a failure
    among them fails the run and is named in the summary."""
    rc, out = _fake_run(tmp_path)
    assert rc == 0 and "(fake) the suite's gpu tests" in out and "2. the suite's gpu tests: ok" in out, out
    rc, out = _fake_run(tmp_path, FAKE_GPU_TESTS_RC="1")
    assert rc == 1 and "2. the suite's gpu tests: FAILED (exit 1)" in out[out.index("== Summary"):], out
