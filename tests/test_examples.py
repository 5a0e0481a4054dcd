"""The examples run as their docstrings say (with their quick setting)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import reste

ROOT = Path(__file__).resolve().parents[1]


def run_example(name: str, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """``examples/<name>`` run with this checkout's reste, one thread, UserWarnings as errors; it must succeed."""
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(reste.__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-W", "error::UserWarning", str(ROOT / "examples" / name), *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_own_model_trains_exports_and_the_packed_file_scores_as_the_model(tmp_path):
    done = run_example("own_model.py", tmp_path, "--epochs", "1")
    assert re.search(r"^epoch 1/1  loss \S+  test acc \S+  estimating error", done.stdout, re.M), done.stdout
    packed, torch_acc = re.search(r"packed own_model.rbnn: test acc (\S+) \(PyTorch model (\S+)\)",
                                  done.stdout).groups()
    # the same network: the packed engine's sums are exact, PyTorch's float32 ones may tip a near-tie pre-activation
    # the other way on another CPU, so a test image or two (of digits' 360: 0.28 points each) may change class
    assert abs(float(packed) - float(torch_acc)) <= 2 * 100 / 360 + 1e-9, done.stdout
    assert (tmp_path / "own_model.rbnn").is_file()
    # (review newuser2 #4) the file records digits' pixel scale (16, not 255): raw test pixels score as the model
    from reste.data import load_datasets
    from reste.export import PackedModel

    _, test, _ = load_datasets("digits", in_memory=True, train=False)
    raw = PackedModel.load(tmp_path / "own_model.rbnn").predict(test.data.numpy())  # uint8 0..16
    assert abs(100 * float((raw == test.labels.numpy()).mean()) - float(packed)) <= 2 * 100 / 360 + 1e-9


def test_bop_example_trains_the_three_ways_and_reports_bops_flips(tmp_path):
    done = run_example("bop.py", tmp_path, "--epochs", "1")
    rows = dict(re.findall(r"^(ste|reste|bop) +test acc (\S+)", done.stdout, re.M))
    assert set(rows) == {"ste", "reste", "bop"}, done.stdout
    # one epoch on digits: each far above chance (10 %); 83, 83 and 92 on the machine that wrote this
    assert all(float(acc) > 60 for acc in rows.values()), done.stdout
    flips = re.search(r"^bop .*\((\d+) weight flips in the last epoch\)", done.stdout, re.M)
    assert flips and int(flips.group(1)) > 0, done.stdout
