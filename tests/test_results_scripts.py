"""The analysis scripts of docs/results on synthetic sweeps whose answer is known."""

import csv
import importlib.util
import math
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "docs" / "results" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _sweep(path, value, o_ends=(1, 1.5, 2, 3, 5, 10), seeds=(0, 1, 2)):
    """A sweep folder with a runs.csv whose final_acc is value(seed, o_end)."""
    path.mkdir()
    with open(path / "runs.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["setting", "o_end", "seed", "final_acc", "run_dir"])
        for o in o_ends:
            for s in seeds:
                w.writerow([f"o_end={o:g}", o, s, value(s, o), f"runs/o{o:g}/seed{s}"])
    return path


# deterministic "noise" of about 0.1 points, different for every run
def _wiggle(s, o):
    return 0.1 * math.sin(7.3 * s + 11.1 * o)


def test_inverted_u_finds_a_known_top(tmp_path, capsys):
    iu = _script("o_end")
    top = 3.0
    sweep = _sweep(tmp_path / "s", lambda s, o: 85 + 0.5 * s - 0.8 * (math.log(o) - math.log(top)) ** 2 + _wiggle(s, o))
    r = iu.fit(iu.read_runs([str(sweep)], "final_acc"))
    assert r["b_hi"] < 0 and r["b_lo"] < -0.8 < r["b_hi"]
    assert math.exp(r["top_lo"]) < top < math.exp(r["top_hi"])
    assert abs(math.exp(r["top"]) - top) < 0.3
    iu.main([str(sweep)])
    out = capsys.readouterr().out
    assert "an inverted U" in out and "inside the tested range" in out


def test_inverted_u_says_so_when_there_is_no_top(tmp_path, capsys):
    iu = _script("o_end")
    sweep = _sweep(tmp_path / "s", lambda s, o: 80 + s + 2 * math.log(o) + _wiggle(s, o))  # rises all the way
    r = iu.fit(iu.read_runs([str(sweep)], "final_acc"))
    assert not r["b_hi"] < 0
    iu.main([str(sweep)])
    out = capsys.readouterr().out
    assert "an inverted U" not in out and "do not locate a top" in out


def test_inverted_u_counts_a_shared_run_once(tmp_path):
    iu = _script("o_end")
    value = lambda s, o: 85 - (math.log(o) - 1) ** 2 + _wiggle(s, o)  # noqa: E731
    a = _sweep(tmp_path / "a", value)
    b = _sweep(tmp_path / "b", value, o_ends=(2, 3, 5), seeds=(0, 1, 2, 3, 4))
    # b's own runs.csv names the same run folders for seeds 0-2 (relative to b), so make them the same runs
    rows = list(csv.reader(open(b / "runs.csv")))
    with open(b / "runs.csv", "w", newline="") as f:
        w = csv.writer(f)
        for row in rows:
            w.writerow(row[:-1] + [row[-1] if row[0] == "setting" else "../a/" + row[-1]])
    assert len(iu.read_runs([str(a), str(b)], "final_acc")) == 18 + 3 * 2


def test_inverted_u_refuses_a_folder_without_runs(tmp_path):
    iu = _script("o_end")
    with pytest.raises(SystemExit):
        iu.main([str(tmp_path)])


def test_indicator_steps_follow_each_seed(tmp_path):
    iu = _script("o_end")
    # the error halves at every step in seeds 0 and 1 and doubles in seed 2
    rows = [(s, o, (0.5 if s < 2 else 2.0) ** i) for i, o in enumerate((1, 2, 3)) for s in range(3)]
    steps = iu.indicator_steps(rows)
    assert [(a, b) for a, b, _ in steps] == [(1, 2), (2, 3)]
    for _, _, ratios in steps:
        assert sorted(ratios) == [0.5, 0.5, 2.0]


def _fake_tools(tmp_path):
    """A PATH whose reste and python only append their arguments to calls.log (one line a call)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("reste", "python"):
        (bin_dir / tool).write_text(f'#!/bin/sh\necho "{tool} $*" >> "{tmp_path}/calls.log"\n')
        (bin_dir / tool).chmod(0o755)
    return bin_dir


@pytest.mark.parametrize("script", ["run_study.sh", "summarize.sh"])
def test_study_scripts_run_only_the_sweeps_asked_for(tmp_path, script):
    env = dict(os.environ, PATH=f"{_fake_tools(tmp_path)}:{os.environ['PATH']}", OUT=str(tmp_path / "out"),
               RUNS=str(tmp_path / "runs"), EPOCHS="64", SWEEPS="leaders")
    (tmp_path / "out" / "leaders").mkdir(parents=True)  # (summarize.sh reads a study that ran)
    path = ROOT / "docs" / "results" / "converged" / script
    done = subprocess.run(["bash", str(path)], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    calls = (tmp_path / "calls.log").read_text().splitlines()
    sweeps = [c for c in calls if c.startswith("reste sweep")]
    if script == "run_study.sh":  # one sweep: the leading group, 3 seeds, the recipe at 64 epochs
        assert len(sweeps) == 1 and "--grid estimator=ste,reste,approx_sign,dsq,fda --seeds 0,1,2" in sweeps[0]
        assert f"--out {tmp_path}/out/leaders " in sweeps[0] and "--epochs 64 " in sweeps[0]
        assert f"--runs-dir {tmp_path}/runs" in sweeps[0]
    else:  # paired against ReSTE for both metrics; no o_end fit without the o_end sweeps
        assert not sweeps and not any("o_end" in c for c in calls)
        assert [c.split()[-1] for c in calls if "paired.py" in c] == ["final_acc", "best_acc"]
    assert [c for c in calls if "curves.py" in c] == [
        f"python docs/results/curves.py {tmp_path}/out/leaders --out {tmp_path}/out/leaders/learning_curves.png"]


def test_summarize_fits_o_end_over_the_o_end_sweeps_that_ran(tmp_path):
    """The 64-epoch study ran o_end without o_end_5seeds: the fit takes the one sweep there is."""
    env = dict(os.environ, PATH=f"{_fake_tools(tmp_path)}:{os.environ['PATH']}", OUT=str(tmp_path / "out"),
               SWEEPS="estimators o_end")
    (tmp_path / "out").mkdir()
    done = subprocess.run(["bash", str(ROOT / "docs" / "results" / "converged" / "summarize.sh")], env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    fits = [c for c in (tmp_path / "calls.log").read_text().splitlines() if "o_end.py" in c]
    assert fits == [f"python docs/results/o_end.py {tmp_path}/out/o_end --metric final_acc",
                    f"python docs/results/o_end.py {tmp_path}/out/o_end --metric best_acc --no-indicators"]


def test_run_study_refuses_an_unknown_sweep(tmp_path):
    env = dict(os.environ, PATH=f"{_fake_tools(tmp_path)}:{os.environ['PATH']}", SWEEPS="leaders estimator")
    done = subprocess.run(["bash", str(ROOT / "docs" / "results" / "converged" / "run_study.sh")], env=env,
                          capture_output=True, text=True)
    assert done.returncode == 2 and "unknown sweep 'estimator'" in done.stderr
    assert not (tmp_path / "calls.log").exists()


def test_trend_reads_the_gain_of_the_last_fifth_from_a_line():
    curves = _script("curves")
    ramp = [80.0 + 0.1 * e for e in range(20)]  # rises 0.1 a epoch: 0.4 over the last 4 epochs
    assert curves.trend(ramp, 4) == pytest.approx(0.4)
    zigzag = [88.0 + (0.3 if e % 2 else -0.3) for e in range(21)]  # no rise; the endpoints differ by 0.6
    assert abs(curves.trend(zigzag, 4)) < 0.2 and zigzag[-1] - zigzag[-5] == 0.0
    wobble = zigzag[:-1] + [88.3]
    assert wobble[-1] - wobble[-5] == pytest.approx(0.6) and abs(curves.trend(wobble, 4)) < 0.5
    assert math.isnan(curves.trend([1.0, 2.0], 4))
