"""The analysis scripts of docs/results on synthetic sweeps whose answer is known."""

import csv
import json
import importlib.util
import math
import os
import statistics
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


def _study_script(name, env, cwd=None):
    """Run docs/results/converged/NAME with env; the finished process."""
    return subprocess.run(["bash", str(ROOT / "docs" / "results" / "converged" / name)], env=env,
                          capture_output=True, text=True, cwd=cwd)


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
    done = _study_script(script, env)
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
    assert [c.rsplit(" --previous ", 1)[0] for c in calls if "curves.py" in c] == [
        f"python docs/results/curves.py {tmp_path}/out/leaders --out {tmp_path}/out/leaders/learning_curves.png"]


def _summarize_with_fake_tools(tmp_path, sweeps):
    """summarize.sh on SWEEPS with the fake reste and python: the calls it made, one line each."""
    env = dict(os.environ, PATH=f"{_fake_tools(tmp_path)}:{os.environ['PATH']}", OUT=str(tmp_path / "out"),
               SWEEPS=sweeps)
    (tmp_path / "out").mkdir()
    done = _study_script("summarize.sh", env)
    assert done.returncode == 0, done.stderr
    return (tmp_path / "calls.log").read_text().splitlines()


def test_summarize_fits_o_end_over_the_o_end_sweeps_that_ran(tmp_path):
    """The 64-epoch study ran o_end without o_end_5seeds: the fit takes the one sweep there is."""
    fits = [c for c in _summarize_with_fake_tools(tmp_path, "estimators o_end") if "o_end.py" in c]
    assert fits == [f"python docs/results/o_end.py {tmp_path}/out/o_end --metric final_acc",
                    f"python docs/results/o_end.py {tmp_path}/out/o_end --metric best_acc --no-indicators"]


def test_run_study_trains_the_rising_settings_longer_with_the_seeds_asked_for(tmp_path):
    """rising and o_end_rising: the settings still rising at 128 epochs; SEEDS and the two lists can be narrowed."""
    tools = _fake_tools(tmp_path)

    def sweeps(**extra):
        env = dict(os.environ, PATH=f"{tools}:{os.environ['PATH']}", OUT=str(tmp_path / "out"),
                   RUNS=str(tmp_path / "runs"), EPOCHS="256", SWEEPS="rising o_end_rising", **extra)
        (tmp_path / "calls.log").unlink(missing_ok=True)
        done = _study_script("run_study.sh", env)
        assert done.returncode == 0, done.stderr
        return [c for c in (tmp_path / "calls.log").read_text().splitlines() if c.startswith("reste sweep")]

    default = sweeps()
    assert len(default) == 2 and all("--epochs 256 " in c for c in default)
    assert "--grid estimator=reste,sign_swish,ede,ste,dsq,approx_sign --seeds 0,1,2 " in default[0]
    assert f"--out {tmp_path}/out/rising " in default[0]
    assert "--estimator reste --grid o_end=1,10 --seeds 0,1,2 " in default[1]
    assert f"--out {tmp_path}/out/o_end_rising " in default[1]
    narrowed = sweeps(SEEDS="0", RISING="sign_swish,ede", O_ENDS_RISING="1")
    assert "--grid estimator=sign_swish,ede --seeds 0 " in narrowed[0]
    assert "--grid o_end=1 --seeds 0 " in narrowed[1]


def test_run_study_refuses_an_unknown_sweep(tmp_path):
    env = dict(os.environ, PATH=f"{_fake_tools(tmp_path)}:{os.environ['PATH']}", SWEEPS="leaders estimator")
    done = _study_script("run_study.sh", env)
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


def _runs_csv(path, rows, axis="estimator"):
    """A sweep folder whose runs.csv holds rows of (setting, seed, final_acc, run_dir); the run folders are in
    a runs folder beside the sweeps (../r/...), as the study's --runs-dir: sweeps that share a run name one folder."""
    path.mkdir(parents=True)
    with open(path / "runs.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["setting", axis, "seed", "best_acc", "final_acc", "estimating_error", "gradient_stability",
                    "run_dir"])
        for setting, seed, acc, run_dir in rows:
            w.writerow([setting, setting.split("=")[1], seed, acc + 0.1, acc, 400.0, 1e-6, run_dir])
    return path


def _five_seed_study(out):
    """estimators (seeds 0-2), o_end_5seeds (ReSTE at o_end 3 is the estimators sweep's ReSTE) and the
    strongest two at seeds 3 and 4; ReSTE is 0.5 ahead of dsq and 1.0 ahead of fda in every seed."""
    reste = {s: 88.0 + 0.1 * s for s in range(5)}
    _runs_csv(out / "estimators", [(f"estimator={e}", s, reste[s] - d, f"../r/{e}/seed{s}")
                                   for e, d in (("reste", 0), ("dsq", 0.5), ("fda", 1.0), ("ste", 2.0))
                                   for s in range(3)])
    _runs_csv(out / "o_end_5seeds", [(f"o_end={o}", s, reste[s] - (0 if o == 3 else 0.3),
                                      f"../r/reste/seed{s}" if o == 3 else f"../r/reste-o{o}/seed{s}")
                                     for o in (2, 3) for s in range(5)], axis="o_end")
    _runs_csv(out / "strongest_seeds34", [(f"estimator={e}", s, reste[s] - d, f"../r/{e}/seed{s}")
                                          for e, d in (("dsq", 0.5), ("fda", 1.0)) for s in (3, 4)])


def test_combine_joins_the_runs_that_sweeps_share(tmp_path):
    combine = _script("combine")
    _five_seed_study(tmp_path)
    combine.main([str(tmp_path / "joined"), *(str(tmp_path / d) for d in ("estimators", "o_end_5seeds",
                                                                          "strongest_seeds34")),
                  "--settings", "estimator=reste,estimator=dsq", "--alias", "o_end=3", "estimator=reste"])
    rows = list(csv.DictReader(open(tmp_path / "joined" / "runs.csv")))
    assert [(r["setting"], r["seed"]) for r in rows] == [("estimator=reste", str(s)) for s in range(5)] + \
        [("estimator=dsq", str(s)) for s in range(5)]
    results = {r["setting"]: r for r in csv.DictReader(open(tmp_path / "joined" / "results.csv"))}
    assert results["estimator=reste"]["n"] == "5"
    assert float(results["estimator=reste"]["final_acc_mean"]) == pytest.approx(88.2)
    assert float(results["estimator=dsq"]["final_acc_mean"]) == pytest.approx(87.7)
    assert "| estimator=dsq | 87.80 ± 0.16 | 87.70 ± 0.16 |" in (tmp_path / "joined" / "results.md").read_text()


def test_combine_refuses_an_alias_that_joins_two_different_runs(tmp_path, capsys):
    combine = _script("combine")
    _five_seed_study(tmp_path)
    with pytest.raises(SystemExit, match="estimator=reste seed 0 is a different run"):
        combine.main([str(tmp_path / "joined"), str(tmp_path / "estimators"), str(tmp_path / "o_end_5seeds"),
                      "--settings", "estimator=reste", "--alias", "o_end=2", "estimator=reste"])
    with pytest.raises(SystemExit, match="no run of estimator=rbnn"):
        combine.main([str(tmp_path / "joined"), str(tmp_path / "estimators"), "--settings", "estimator=rbnn"])


def test_summarize_compares_the_joined_five_seeds(tmp_path):
    """SWEEPS=strongest_seeds34: estimators_5seeds is joined, then compared pairwise over 5 seeds;
    the run folders are not here, so the curves are not redrawn and no figure is written."""
    _five_seed_study(tmp_path / "out")
    summary = tmp_path / "summary.txt"
    env = dict(os.environ, OUT=str(tmp_path / "out"), SWEEPS="strongest_seeds34", SUMMARY=str(summary))
    done = _study_script("summarize.sh", env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    text = summary.read_text()
    assert "none of the run folders" in text and not (tmp_path / "out" / "strongest_seeds34" / "learning_curves.png"
                                                     ).exists()
    final = text.split("== paired differences, final_acc")[1].split("==")[0]
    assert "vs estimator=dsq" in final and "+0.50" in final and "ahead in 5/5" in final
    assert "vs estimator=fda" in final and "+1.00" in final
    assert "estimator=ste" not in final  # joined folder: ReSTE and the strongest only
    assert "== estimators_5seeds: convergence" not in text  # the 64-epoch sweeps kept no epochs.csv


def test_run_study_runs_seeds_3_and_4_of_the_strongest_alone(tmp_path):
    out = tmp_path / "out"
    _runs_csv(out / "estimators", [])
    with open(out / "estimators" / "results.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["setting", "estimator", "final_acc_mean"])
        for e, acc in (("ste", 87.6), ("reste", 88.5), ("dsq", 88.1), ("fda", 88.0), ("rbnn", 84.6),
                       ("approx_sign", 88.2)):
            w.writerow([f"estimator={e}", e, acc])
    bin_dir = _fake_tools(tmp_path)
    (bin_dir / "python").unlink()  # the real python ranks the estimators; reste only logs
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", OUT=str(out), RUNS=str(tmp_path / "runs"),
               EPOCHS="64", SWEEPS="strongest_seeds34")
    done = _study_script("run_study.sh", env)
    # (curves.py then finds no runs.csv in the sweep the fake reste did not write)
    calls = (tmp_path / "calls.log").read_text().splitlines()
    assert len(calls) == 1 and "--grid estimator=approx_sign,dsq,fda --seeds 3,4 " in calls[0], done.stderr
    assert f"--out {out}/strongest_seeds34 " in calls[0]


def test_a_summary_rewritten_keeps_the_convergence_it_cannot_compute_again(tmp_path):
    """(review repro2 #1) The sweeps before 2026-12-01 kept no epochs.csv, and a clone has no run folders: their
    convergence lines (the published "still rising" counts) were replaced by "cannot be redrawn" each time the
    documented command rewrote the summary. They are kept; the rest is computed again."""
    _five_seed_study(tmp_path / "out")
    summary = tmp_path / "summary.txt"
    kept = ["estimator=reste               64 epochs  final  88.46  gain over the last 13 epochs +0.62  STILL RISING",
            "wrote out/estimators/learning_curves.png"]
    summary.write_text("\n".join(["== estimators: convergence", *kept, "== paired differences, final_acc",
                                   "stale"]) + "\n")
    env = dict(os.environ, OUT=str(tmp_path / "out"), SWEEPS="estimators", SUMMARY=str(summary))
    done = _study_script("summarize.sh", env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    text = summary.read_text()
    assert text.startswith("\n".join(["== estimators: convergence", *kept, "== paired differences, final_acc"]))
    assert "stale" not in text and "vs estimator=dsq" in text  # the paired differences computed again
    assert "its convergence lines are kept from the summary before" in done.stderr
    summary.unlink()  # no summary before: said, as before
    done = _study_script("summarize.sh", env, cwd=tmp_path)
    assert done.returncode == 0 and "none of the run folders" in summary.read_text()


def test_curves_read_epochs_csv_when_the_run_folders_are_gone(tmp_path, capsys, monkeypatch):
    curves = _script("curves")
    sweep = _runs_csv(tmp_path / "s", [("estimator=reste", s, 88.0, f"gone/seed{s}") for s in (0, 1)])
    with open(sweep / "epochs.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["setting", "seed", "epoch", "test_acc"])
        for s in (0, 1):
            for e in range(1, 11):  # seed 0 rises 0.1 an epoch, seed 1 0.2: the mean 0.15
                w.writerow(["estimator=reste", s, e, 80 + (0.1 if s == 0 else 0.2) * e])
    per_setting, listed = curves.read_runs(sweep)
    assert listed == {"estimator=reste": 2} and len(per_setting["estimator=reste"]) == 2
    mean = curves.mean_curves(per_setting)["estimator=reste"]
    assert mean[-1] == pytest.approx(81.5) and mean[0] == pytest.approx(80.15)
    monkeypatch.setattr("sys.argv", ["curves.py", str(sweep)])
    curves.main()
    out = capsys.readouterr().out
    assert "gain over the last 2 epochs +0.30  STILL RISING" in out and _png(sweep / "learning_curves.png")
    assert "se 0.10 over 2 seeds" in out  # the two runs gain 0.2 and 0.4 over the last 2 epochs


def _png(path):
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_longer_pairs_each_setting_over_the_seeds_both_finished(tmp_path, capsys):
    longer = _script("longer")
    short = _runs_csv(tmp_path / "e64", [(f"estimator={e}", s, 88.0 + 0.1 * s, f"../r/{e}/seed{s}")
                                         for e in ("ste", "reste") for s in range(3)])
    # 128 epochs: ste gains 0.5 in every seed, reste 0.0, 0.2 and -0.2; reste seed 2 has not finished
    long = _runs_csv(tmp_path / "e128", [("estimator=ste", s, 88.5 + 0.1 * s, f"q/ste/seed{s}") for s in range(3)]
                     + [("estimator=reste", s, 88.0 + 0.3 * s, f"q/reste/seed{s}") for s in range(2)])
    longer.main(["longer.py", str(short), str(long)])
    out = capsys.readouterr().out.splitlines()
    ste = next(line for line in out if "estimator=ste" in line)
    reste = next(line for line in out if "estimator=reste" in line)
    assert "+0.50" in ste and "higher in 3/3" in ste
    assert "+0.10" in reste and "+0.00, +0.20" in reste and "higher in 1/2" in reste
    longer.main(["longer.py", str(short), str(_runs_csv(tmp_path / "e256", [("estimator=ste", 0, 89.0, "x/seed0")]))])
    one = capsys.readouterr().out.splitlines()[1]  # one seed: the gain, and no interval rather than nan
    assert "+1.00" in one and "no 95% CI from 1 seed" in one and "nan" not in one


def _epochs_csv(sweep, settings, seeds=(0, 1, 2), epochs=5):
    """An epochs.csv whose test_acc of (setting i, seed, epoch) is 80 + i + 0.1 seed + epoch / 10."""
    with open(sweep / "epochs.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["setting", "seed", "epoch", "test_acc"])
        for i, setting in enumerate(settings):
            for s in seeds:
                for e in range(1, epochs + 1):
                    w.writerow([setting, s, e, 80 + i + 0.1 * s + e / 10])


def test_combine_joins_an_o_end_axis_with_its_epochs(tmp_path):
    """The 128-epoch study: ReSTE's runs of leaders are o_end = 3 of the o_end study (its default)."""
    combine, o_end = _script("combine"), _script("o_end")
    leaders = _runs_csv(tmp_path / "leaders", [(f"estimator={e}", s, 88.0 + 0.1 * s, f"../r/{e}/seed{s}")
                                               for e in ("ste", "reste") for s in range(3)])
    _epochs_csv(leaders, ["estimator=ste", "estimator=reste"])
    others = _runs_csv(tmp_path / "o_end_others", [(f"o_end={o}", s, 87.0 + 0.1 * s, f"../r/o{o}/seed{s}")
                                                   for o in (2, 5) for s in range(3)], axis="o_end")
    _epochs_csv(others, ["o_end=2", "o_end=5"])
    combine.main([str(tmp_path / "o_end"), str(others), str(leaders), "--settings", "o_end=2,o_end=3,o_end=5",
                  "--alias", "estimator=reste", "o_end=3"])
    rows = list(csv.DictReader(open(tmp_path / "o_end" / "runs.csv")))
    assert [(r["setting"], r["o_end"], r["estimator"], r["seed"]) for r in rows[3:6]] == \
        [("o_end=3", "3", "reste", str(s)) for s in range(3)]
    assert sorted({o for _, o, _ in o_end.read_runs([str(tmp_path / "o_end")], "final_acc")}) == [2.0, 3.0, 5.0]
    epochs = list(csv.DictReader(open(tmp_path / "o_end" / "epochs.csv")))
    assert len(epochs) == 3 * 3 * 5
    reste = [float(e["test_acc"]) for e in epochs if e["setting"] == "o_end=3" and e["seed"] == "2"]
    assert reste == pytest.approx([81.2 + e / 10 for e in range(1, 6)])  # leaders' second setting, seed 2
    assert "o_end=3" in (tmp_path / "o_end" / "results.md").read_text()
    assert _png(tmp_path / "o_end" / "accuracy_vs_o_end.png") and _png(tmp_path / "o_end" / "error_vs_stability.png")


def test_combine_writes_no_partial_curves(tmp_path, capsys):
    combine = _script("combine")
    leaders = _runs_csv(tmp_path / "leaders", [("estimator=reste", s, 88.0, f"../r/reste/seed{s}") for s in range(3)])
    _epochs_csv(leaders, ["estimator=reste"], seeds=(0, 1))  # seed 2 has no epochs
    others = _runs_csv(tmp_path / "others", [("estimator=rbnn", s, 80.0, f"../r/rbnn/seed{s}") for s in range(3)])
    _epochs_csv(others, ["estimator=rbnn"])
    combine.main([str(tmp_path / "joined"), str(leaders), str(others), "--settings", "estimator=reste,estimator=rbnn"])
    assert "no lines in their sweep's epochs.csv (first: estimator=reste seed 2)" in capsys.readouterr().out
    assert not (tmp_path / "joined" / "epochs.csv").exists() and (tmp_path / "joined" / "runs.csv").is_file()


@pytest.mark.parametrize("seeds34", [False, True])
def test_summarize_joins_the_rest_of_the_study_with_leaders(tmp_path, seeds34):
    """SWEEPS="others o_end_others" (the 128-epoch study): the eight estimators and the six o_end values are
    joined from the three sweeps, with their curves, and compared against ReSTE and o_end 3. With o_end_seeds34
    and strongest_seeds34 too, o_end_5seeds and estimators_5seeds are joined from them and the first joins."""
    out = tmp_path / "out"
    leaders = ("ste", "reste", "approx_sign", "dsq", "fda")
    _epochs_csv(_runs_csv(out / "leaders", [(f"estimator={e}", s, 88.0 + 0.1 * s - 0.2 * (e != "reste"),
                                              f"../r/{e}/seed{s}") for e in leaders for s in range(3)]),
                [f"estimator={e}" for e in leaders])
    _epochs_csv(_runs_csv(out / "others", [(f"estimator={e}", s, 85.0 + 0.1 * s, f"../r/{e}/seed{s}")
                                           for e in ("sign_swish", "ede", "rbnn") for s in range(3)]),
                [f"estimator={e}" for e in ("sign_swish", "ede", "rbnn")])
    o_ends = (1, 1.5, 2, 5, 10)
    _epochs_csv(_runs_csv(out / "o_end_others", [(f"o_end={o:g}", s, 88.0 + 0.1 * s - abs(math.log(o / 3)),
                                                  f"../r/o{o:g}/seed{s}") for o in o_ends for s in range(3)],
                          axis="o_end"), [f"o_end={o:g}" for o in o_ends])
    sweeps = "others o_end_others"
    if seeds34:  # o_end 3 at seeds 3 and 4 is 0.3 above o_end 2 and 5; the strongest two 0.2 below it
        _epochs_csv(_runs_csv(out / "o_end_seeds34", [(f"o_end={o}", s, 88.0 + 0.1 * s - 0.3 * (o != 3),
                                                       f"../r/o{o}/seed{s}") for o in (2, 3, 5) for s in (3, 4)],
                              axis="o_end"), ["o_end=2", "o_end=3", "o_end=5"], seeds=(3, 4))
        _epochs_csv(_runs_csv(out / "strongest_seeds34", [(f"estimator={e}", s, 87.8 + 0.1 * s, f"../r/{e}/seed{s}")
                                                          for e in ("ste", "fda") for s in (3, 4)]),
                    ["estimator=ste", "estimator=fda"], seeds=(3, 4))
        sweeps += " o_end_seeds34 strongest_seeds34"
    env = dict(os.environ, OUT=str(out), SWEEPS=sweeps)
    done = _study_script("summarize.sh", env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    text = (out / "summary.txt").read_text()
    assert "== estimators: convergence" in text and "== o_end: convergence" in text
    assert _png(out / "estimators" / "learning_curves.png") and _png(out / "o_end" / "learning_curves.png")
    final = text.split("== paired differences, final_acc")[1].split("== paired differences")[0]
    assert "vs estimator=rbnn" in final and "+3.00" in final and "vs o_end=10" in final
    assert "an inverted U" in text
    if seeds34:
        assert _png(out / "o_end_5seeds" / "learning_curves.png")
        assert _png(out / "estimators_5seeds" / "learning_curves.png")  # joined with its epochs: the 5-seed test
        five = text.split("== estimators_5seeds: convergence")[1].split("==")[0]
        assert [line.split()[0] for line in five.splitlines() if "epochs" in line] == [
            "estimator=reste", "estimator=ste", "estimator=fda"]
        runs = list(csv.DictReader(open(out / "estimators_5seeds" / "runs.csv")))
        assert [(r["setting"], r["seed"]) for r in runs] == [(f"estimator={e}", str(s)) for e in ("reste", "ste", "fda")
                                                             for s in range(5)]
        assert "ahead in 5/5" in final  # ReSTE over STE and FDA, seeds 0-4
        assert len(list(csv.DictReader(open(out / "o_end_5seeds" / "runs.csv")))) == 15


@pytest.mark.parametrize("sweep, grid", [
    ("o_end_seeds34", "--estimator reste --grid o_end=2,3,5 --seeds 3,4 "),
    ("others", "--grid estimator=sign_swish,ede,rbnn --seeds 0,1,2 "),
    ("o_end_others", "--estimator reste --grid o_end=1,1.5,2,5,10 --seeds 0,1,2 ")])
def test_run_study_runs_the_parts_that_join_with_leaders(tmp_path, sweep, grid):
    env = dict(os.environ, PATH=f"{_fake_tools(tmp_path)}:{os.environ['PATH']}", OUT=str(tmp_path / "out"),
               RUNS=str(tmp_path / "runs"), EPOCHS="128", SWEEPS=sweep)
    done = _study_script("run_study.sh", env)
    assert done.returncode == 0, done.stderr
    calls = [c for c in (tmp_path / "calls.log").read_text().splitlines() if c.startswith("reste sweep")]
    assert len(calls) == 1 and grid in calls[0] and f"--out {tmp_path}/out/{sweep} " in calls[0]


def test_summarize_keeps_leaders_when_only_o_end_is_joined(tmp_path):
    calls = _summarize_with_fake_tools(tmp_path, "leaders o_end_others")
    joins = [c for c in calls if "combine.py" in c]
    assert len(joins) == 1 and f"combine.py {tmp_path}/out/o_end {tmp_path}/out/o_end_others" in joins[0]
    assert [c.split()[2].rsplit("/", 1)[1] for c in calls if "curves.py" in c] == ["leaders", "o_end"]
    assert [c.split()[2].rsplit("/", 1)[1] for c in calls if "paired.py" in c] == ["leaders", "o_end"] * 2


def test_paired_says_what_it_needs(tmp_path, capsys):
    paired = _script("paired")
    with pytest.raises(SystemExit) as stop:
        paired.main(["paired.py"])
    assert stop.value.code == 2 and "required: sweep, reference" in capsys.readouterr().err
    sweep = _sweep(tmp_path / "s", lambda s, o: 85 + o + 0.1 * s, o_ends=(2, 3))  # o_end 3 one point ahead
    paired.main(["paired.py", str(sweep), "o_end=3", "final_acc"])
    out = capsys.readouterr().out
    assert "vs o_end=2" in out and "+1.00" in out and "ahead in 3/3" in out


def _study_sweep(path, rows, epochs, mode=None, axis="o_end", planned=None):
    """A sweep folder as `reste sweep` leaves it: runs.csv rows of (setting, seed, final_acc, run_dir) of
    ``epochs`` epochs; with ``mode``, a sweep.json whose settings train with that indicator mode (``planned``:
    setting -> its seeds, default those of the rows)."""
    path.mkdir(parents=True)
    with open(path / "runs.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["setting", axis, "seed", "best_acc", "final_acc", "epochs", "estimating_error",
                    "gradient_stability", "run_dir"])
        for setting, seed, acc, run_dir in rows:
            w.writerow([setting, setting.split("=")[1], seed, acc + 0.1, acc, epochs,
                        400.0 + 10 * float(setting.split("=")[1] != "ste") + 0.123 * seed, 1e-6 * (1 + seed), run_dir])
    if mode:
        seeds = planned or {}
        for setting, seed, _, _ in rows:
            seeds.setdefault(setting, [])
            if seed not in seeds[setting]:
                seeds[setting].append(seed)
        settings = [{"label": label, "values": {}, "key": label, "config": {"indicators": mode, "epochs": epochs},
                     "runs": {str(s): f"runs/{label}/seed{s}" for s in ss}} for label, ss in seeds.items()]
        (path / "sweep.json").write_text(json.dumps({"base": {"indicators": mode}, "grid": {}, "seeds": [],
                                                     "settings": settings}))
    return path


def test_combine_refuses_runs_of_other_epochs_or_indicator_modes_and_names_the_mode(tmp_path, capsys):
    """(review sweep M2) a 20-epoch paper-mode sweep and a 3-epoch general-mode one do not join into one row;
    the joined results.md names the real indicator mode."""
    combine = _script("combine")
    rows = [("o_end=3", s, 88.0, f"../runs/reste-a/seed{s}") for s in range(2)]
    long_paper = _study_sweep(tmp_path / "s2", rows, 20, "paper")
    short_general = _study_sweep(tmp_path / "s6", [("o_end=3", 2, 80.0, "../runs/reste-b/seed2")], 3, "general")
    with pytest.raises(SystemExit, match="do not compare: other numbers of epochs"):
        combine.main([str(tmp_path / "comb"), str(long_paper), str(short_general), "--settings", "o_end=3"])
    general20 = _study_sweep(tmp_path / "s7", [("o_end=3", 2, 80.0, "../runs/reste-c/seed2")], 20, "general")
    with pytest.raises(SystemExit, match="do not compare: other indicator modes"):
        combine.main([str(tmp_path / "comb"), str(long_paper), str(general20), "--settings", "o_end=3"])
    paper20 = _study_sweep(tmp_path / "s8", [("o_end=3", 2, 80.0, "../runs/reste-d/seed2")], 20, "paper")
    combine.main([str(tmp_path / "comb"), str(long_paper), str(paper20), "--settings", "o_end=3"])
    head = (tmp_path / "comb" / "results.md").read_text().splitlines()[0]
    assert "20 epochs" in head and "indicators (paper mode)" in head and "sum over epochs" in head
    assert "410.12 ± 0.12 |" in (tmp_path / "comb" / "results.md").read_text()  # the std as `reste sweep` writes it


def test_a_joined_folder_names_its_runs_relative_to_itself_so_o_end_counts_them_once(tmp_path):
    """(review sweep M3) a joined folder deeper than its sources: o_end.py over a source and the joined folder
    counts each run once; and by the run folders' names even when a runs.csv names them from elsewhere."""
    combine, o_end = _script("combine"), _script("o_end")
    s2 = _study_sweep(tmp_path / "s2", [(f"o_end={o}", s, 85.0 + o + 0.1 * s, f"runs/reste-o{o}/seed{s}")
                                        for o in (1, 2, 3) for s in range(2)], 20, "general")
    combine.main([str(tmp_path / "deep" / "comb"), str(s2), "--settings", "o_end=1,o_end=2,o_end=3"])
    rows = list(csv.DictReader(open(tmp_path / "deep" / "comb" / "runs.csv")))
    assert rows[0]["run_dir"] == "../../s2/runs/reste-o1/seed0"
    assert len(o_end.read_runs([str(s2), str(tmp_path / "deep" / "comb")], "final_acc")) == 6
    moved = _study_sweep(tmp_path / "elsewhere", [("o_end=3", 0, 88.0, "/somewhere/reste-o3/seed0")], 20, "general")
    assert len(o_end.read_runs([str(s2), str(moved)], "final_acc")) == 6


def test_o_end_refuses_runs_of_other_epochs_or_two_runs_at_one_point(tmp_path):
    """(review sweep M2) 3- and 6-epoch runs are not one parabola; two different runs at one (seed, o_end) are
    not silently one."""
    o_end = _script("o_end")
    e6 = _study_sweep(tmp_path / "e6", [(f"o_end={o}", s, 85.0, f"../r/o{o}e6/seed{s}") for o in (1, 2, 3)
                                        for s in range(2)], 6, "general")
    e3 = _study_sweep(tmp_path / "e3", [(f"o_end={o}", s, 80.0, f"../r/o{o}e3/seed{s}") for o in (1, 2, 3)
                                        for s in range(2)], 3, "general")
    with pytest.raises(SystemExit, match="do not compare: epochs 6"):
        o_end.read_runs([str(e6), str(e3)], "final_acc")
    other = _study_sweep(tmp_path / "lr", [("o_end=3", 0, 70.0, "../rlr/o3/seed0x")], 6, "general")
    with pytest.raises(SystemExit, match="o_end 3 seed 0 is two different runs"):
        o_end.read_runs([str(e6), str(other)], "estimating_error")
    paper = _study_sweep(tmp_path / "p", [("o_end=5", 0, 70.0, "../rp/o5/seed0")], 6, "paper")
    assert len(o_end.read_runs([str(e6), str(paper)], "final_acc")) == 7  # accuracy does not depend on the mode
    with pytest.raises(SystemExit, match="do not compare: indicator mode general"):
        o_end.read_runs([str(e6), str(paper)], "estimating_error")


def test_curves_refuse_a_setting_whose_runs_have_other_numbers_of_epochs():
    curves = _script("curves")
    assert curves.mean_curves({"a": [[1.0, 2.0], [3.0, 4.0]]}) == {"a": [2.0, 3.0]}
    with pytest.raises(SystemExit, match="the runs of o_end=3 have 3 and 20 epochs: they do not compare"):
        curves.mean_curves({"o_end=3": [[1.0] * 20, [1.0] * 3]})


def test_combine_carries_the_runs_planned_and_diverged(tmp_path):
    """(review sweep L3) a seed that diverged in a source is counted in the joined table ('2/3, 1 diverged')."""
    combine = _script("combine")
    src = _study_sweep(tmp_path / "a", [("estimator=ste", s, 80.0, f"../r/ste/seed{s}") for s in range(2)]
                       + [("estimator=reste", s, 82.0, f"../r/reste/seed{s}") for s in range(3)], 6, "general",
                       axis="estimator", planned={"estimator=ste": [0, 1, 2]})
    with open(src / "results.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["setting", "n", "n_runs", "n_diverged"])
        w.writerows([["estimator=ste", 2, 3, 1], ["estimator=reste", 3, 3, 0]])
    combine.main([str(tmp_path / "j"), str(src), "--settings", "estimator=reste,estimator=ste"])
    text = (tmp_path / "j" / "results.md").read_text()
    assert "| 2/3, 1 diverged | 0 1 |" in text and "| 3 | 0 1 2 |" in text
    table = {r["setting"]: r for r in csv.DictReader(open(tmp_path / "j" / "results.csv"))}
    assert (table["estimator=ste"]["n_runs"], table["estimator=ste"]["missing_seeds"]) == ("3", "2")
    combine.main([str(tmp_path / "j2"), str(tmp_path / "j"), "--settings", "estimator=ste"])  # a joined source
    assert "| 2/3, 1 diverged |" in (tmp_path / "j2" / "results.md").read_text()


def test_paired_names_what_is_wrong_and_equal_differences_are_not_an_absurd_t(tmp_path, capsys):
    """(review sweep L1) no common seed: one line; an unknown column is named; differences that are all equal
    (accuracies move in steps of one test image) give t inf, 'identical differences', not t 1e14."""
    paired = _script("paired")
    apart = tmp_path / "pp"
    apart.mkdir()
    (apart / "runs.csv").write_text("setting,seed,best_acc\na,0,90\nb,1,91\n")
    paired.main(["paired.py", str(apart), "a"])
    assert "vs b                        no seed that both finished (a: 0; b: 1)" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="has no column 'nosuchcol'; give one of setting, seed, best_acc"):
        paired.main(["paired.py", str(apart), "a", "nosuchcol"])
    ref, other = [91.38888888888889, 86.66666666666667, 77.5], [90.0, 85.27777777777777, 76.11111111111111]
    assert statistics.stdev([a - b for a, b in zip(ref, other)]) > 0  # 8e-15: five test images each, in floats
    steps = _sweep(tmp_path / "s", lambda s, o: (ref if o == 3 else other)[s], o_ends=(1, 3))
    r = paired.paired(ref, other)
    assert r["std"] == 0 and r["t"] == math.inf
    paired.main(["paired.py", str(steps), "o_end=3", "final_acc"])
    out = capsys.readouterr().out
    assert "+1.39 ±  0.00  identical differences  t inf" in out


def test_paired_says_when_a_setting_lacks_planned_or_diverged_runs(tmp_path, capsys):
    """(review sweep L3) 'ahead in 2/2' says that a third run of the other setting diverged."""
    paired = _script("paired")
    sweep = _runs_csv(tmp_path / "s", [("estimator=reste", s, 88.0, f"../r/reste/seed{s}") for s in range(3)]
                      + [("estimator=ste", s, 87.0, f"../r/ste/seed{s}") for s in range(2)])
    (sweep / "results.csv").write_text("setting,n,n_runs,n_diverged\nestimator=reste,3,3,0\nestimator=ste,2,3,1\n")
    paired.main(["paired.py", str(sweep), "estimator=reste", "final_acc"])
    line = next(x for x in capsys.readouterr().out.splitlines() if "vs estimator=ste" in x)
    assert "ahead in 2/2; estimator=ste has 2 of 3 runs, 1 diverged)" in line
    # (review stats1 #3) a setting none of whose runs finished has no row in runs.csv: it was left out unsaid
    (sweep / "results.csv").write_text("setting,n,n_runs,n_diverged\nestimator=reste,3,3,0\nestimator=ste,2,3,1\n"
                                       "estimator=rbnn,0,3,3\n")
    paired.main(["paired.py", str(sweep), "estimator=reste", "final_acc"])
    line = next(x for x in capsys.readouterr().out.splitlines() if "vs estimator=rbnn" in x)
    assert line.endswith("no seed that both finished (estimator=reste: 0 1 2; estimator=rbnn: none); estimator=rbnn "
                         "has 0 of 3 runs, 3 diverged"), line
    longer = _script("longer")
    longer.main(["longer.py", str(sweep), str(sweep)])
    assert "  estimator=rbnn" in capsys.readouterr().out


def test_the_t_values_in_the_results_readme_are_those_paired_prints(capsys):
    """(review sweep L2) the 6-epoch table's t and the o_end sentence's, as paired.py prints them."""
    paired = _script("paired")
    text = (ROOT / "docs" / "results" / "README.md").read_text()
    names = {"STE": "ste", "ApproxSign": "approx_sign", "SignSwish": "sign_swish", "EDE": "ede", "RBNN": "rbnn",
             "DSQ": "dsq", "FDA": "fda"}
    paired.main(["paired.py", str(ROOT / "docs/results/epochs6/estimators"), "estimator=reste"])
    printed = {line.split()[1]: line.split(" t ")[1].split()[0] for line in capsys.readouterr().out.splitlines()
               if line.startswith("  vs ")}
    for name, key in names.items():
        row = next(line for line in text.splitlines() if line.startswith(f"| {name} | +"))
        assert row.split(" | ")[4] == printed[f"estimator={key}"], name
    paired.main(["paired.py", str(ROOT / "docs/results/epochs6/o_end"), "o_end=3"])
    sentence = " ".join(text.split("`o_end = 3` minus the other `o_end` values")[1].split("\n\n")[0].split())
    for line in capsys.readouterr().out.splitlines()[1:]:
        assert f"t = {line.split(' t ')[1].split()[0]})" in sentence, line


def test_o_end_reads_indicator_modes_without_torch_or_reste():
    """(review rev3 M1) o_end.py loads combine.py for indicator_modes alone: neither torch nor reste comes with it."""
    code = (f"import runpy, sys; sys.argv = ['o_end.py', '--help']\n"
            f"try:\n    runpy.run_path({str(ROOT / 'docs' / 'results' / 'o_end.py')!r}, run_name='__main__')\n"
            f"except SystemExit:\n    pass\n"
            f"print(sorted(m for m in ('torch', 'reste') if m in sys.modules))")
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    done = subprocess.run(["python", "-c", code], capture_output=True, text=True, env=env, check=True)
    assert done.stdout.splitlines()[-1] == "[]"


def test_combine_joins_runs_without_indicators_to_any_mode_and_warns_of_paper_mode_estimators(tmp_path):
    """(review rev3 L7) a sweep trained without indicators joins a general-mode one (its accuracy compares); joined
    paper-mode runs of several estimators carry report.paper_warning in results.md."""
    combine = _script("combine")
    general = _study_sweep(tmp_path / "g", [("o_end=3", s, 88.0, f"../runs/g/seed{s}") for s in range(2)], 6, "general")
    off = _study_sweep(tmp_path / "off", [("o_end=2", 0, 87.0, "../runs/off/seed0")], 6, "general")
    manifest = json.loads((off / "sweep.json").read_text())
    manifest["settings"][0]["config"]["indicators"] = None
    (off / "sweep.json").write_text(json.dumps(manifest))
    combine.main([str(tmp_path / "j"), str(general), str(off), "--settings", "o_end=2,o_end=3"])
    text = (tmp_path / "j" / "results.md").read_text()
    assert "indicators (general mode)" in text.splitlines()[0] and "WARNING" not in text
    rows = [(f"estimator={e}", s, 88.0, f"../runs/{e}/seed{s}") for e in ("reste", "ste") for s in range(2)]
    paper = _study_sweep(tmp_path / "p", rows, 6, "paper", axis="estimator")
    combine.main([str(tmp_path / "pj"), str(paper), "--settings", "estimator=reste,estimator=ste"])
    assert "**WARNING (reste, ste): paper-mode estimating error" in (tmp_path / "pj" / "results.md").read_text()


def test_every_sweep_of_the_study_script_is_one_reste_accepts(tmp_path, capsys):
    """(review docs2, suggestion) The README gives the study's commands as indented code, which test_docs does not
    read: each sweep run_study.sh runs, at each documented EPOCHS, must still parse and plan (--dry-run)."""
    import shlex

    from reste.cli import main

    tools = _fake_tools(tmp_path)
    (tools / "python").write_text(f'#!/bin/sh\necho "python $*" >> "{tmp_path}/calls.log"\necho ste,approx_sign,fda\n')
    everything = ("estimators o_end o_end_5seeds estimators_5seeds strongest_seeds34 leaders others o_end_others "
                  "o_end_seeds34 rising o_end_rising")
    env = dict(os.environ, PATH=f"{tools}:{os.environ['PATH']}", OUT=str(tmp_path / "out"),
               RUNS=str(tmp_path / "runs"), EPOCHS="128", SWEEPS=everything)
    done = _study_script("run_study.sh", env)
    assert done.returncode == 0, done.stderr
    sweeps = [c for c in (tmp_path / "calls.log").read_text().splitlines() if c.startswith("reste sweep")]
    assert len(sweeps) == len(everything.split())
    for line in sweeps:
        assert main([*shlex.split(line)[1:], "--dry-run"]) == 0, (line, capsys.readouterr().err)
        assert "sweep (dry run" in capsys.readouterr().out
    assert not (tmp_path / "out").exists() and not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_the_committed_studies_come_out_the_same_when_reported_again(tmp_path):
    """(review repro2, suggestion 2) The published tables are what the documented commands write from the committed
    data: `reste report` on each committed sweep folder and summarize.sh on three studies, run on a copy, leave every
    table, CSV and summary as committed (the figures are not compared: another matplotlib draws other bytes)."""
    import shutil
    import sys

    copy = tmp_path / "results"
    shutil.copytree(ROOT / "docs" / "results", copy)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    for manifest in sorted(copy.glob("**/sweep.json")):
        done = subprocess.run([sys.executable, "-m", "reste", "report", str(manifest.parent), "--no-plots"],
                              capture_output=True, text=True, env=env)
        assert done.returncode == 0, (manifest, done.stderr[-2000:])
    for study, sweeps in (("epochs64", "estimators o_end o_end_5seeds"), ("converged", ""), ("epochs16", "")):
        extra = {"SWEEPS": sweeps} if sweeps else {}
        done = _study_script("summarize.sh", {**env, "OUT": str(copy / study), **extra}, cwd=ROOT)
        assert done.returncode == 0, (study, done.stderr[-2000:])
    changed = [str(path.relative_to(copy)) for path in sorted(copy.rglob("*"))
               if path.suffix in (".csv", ".md", ".txt") and path.is_file()
               and path.read_bytes() != (ROOT / "docs" / "results" / path.relative_to(copy)).read_bytes()]
    assert changed == []


def test_combines_o_end_figure_says_the_joined_studys_indicator_mode(tmp_path, monkeypatch):
    """(review diff26 #3) combine.py drew a paper-mode study's o_end figure with the general mode's panel titles
    (stability as a mean over epochs where its values are sums)."""
    from reste.experiments import plots

    combine = _script("combine")
    seen = []
    monkeypatch.setattr(plots, "o_end_figure", lambda *a, **kw: seen.append(kw.get("mode")))
    monkeypatch.setattr(plots, "error_vs_stability_figure", lambda *a, **kw: None)
    table = [{"o_end": o, "estimating_error_mean": 1.0} for o in (1, 3)]
    for mode in ("paper", "general", None):
        combine.figures(tmp_path, table, ["o_end"], mode)
    assert seen == ["paper", "general", None]  # (diff27, suggestion 3: None, "each setting's mode", as its text)
