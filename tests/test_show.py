"""reste show RUN_DIR: a run's settings, progress, best and last accuracy and indicators, from its files alone."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
from pathlib import Path

import pytest

from reste.cli import main
from reste.errors import UsageError
from reste import rundir
from reste.rundir import METRICS, RunDirectory
from cli_checks import one_line_error


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("show") / "digits"
    assert main(["train", "--epochs", "2", "--indicators", "--threads", "1", "--no-progress", "--out", str(out)]) == 0
    return out


def test_show_names_the_estimators_settings_apart_from_the_models_options(run, tmp_path):
    """(review newuser3) `width=8` read as one of the estimator's hyper-parameters, in one list with them."""
    from reste.runinfo import show_run

    other = tmp_path / "w8"
    shutil.copytree(run, other)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "model_options": {"width": 8}}))
    assert "reste: interval=0.1 o=1.0 o_end=3.0 schedule=cosine t=1.5   model: width=8" in show_run(other)


def test_show_of_a_full_precision_run_gives_no_estimator_settings(tmp_path, capsys):
    """(review mut7 #11) config.json records the estimator's options of a float model's run too; they train nothing,
    and show leaves them out (as --print-config's note says)."""
    from reste.runinfo import show_run

    assert main(["train", "--model", "digits", "--epochs", "1", "--threads", "1", "--no-progress", "--out",
                 str(tmp_path / "float")]) == 0
    assert json.loads((tmp_path / "float" / "config.json").read_text())["estimator_options"]  # recorded
    shown = show_run(tmp_path / "float")
    assert "digits (full precision) on digits" in shown and "o_end" not in shown and "reste:" not in shown


@pytest.mark.parametrize("key, name, plugins", [("estimator", "nosuch", []), ("model", "mine", ["my_plugin.py"])])
def test_show_notes_an_estimator_or_model_no_module_here_registers(run, tmp_path, capsys, key, name, plugins):
    """(review clifuzz #5) A name edited into config.json, or a plugin's (show imports no plugin), was shown as any
    other: a resume then refuses it. The note says so and what a resume needs."""
    other = tmp_path / "other"
    shutil.copytree(run, other)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, key: name, "plugins": plugins}))
    capsys.readouterr()
    assert main(["show", str(other)]) == 0
    out = capsys.readouterr().out
    note = [line for line in out.splitlines() if line.startswith("note")]
    if plugins:  # a plugin's (show loads none): the resume command names it, no note
        assert not note
    else:
        assert len(note) == 1 and f"{key} {name!r} is registered by no module here" in note[0]
        assert "a resume refuses it" in note[0]
    assert main(["show", str(other), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["unregistered"] == f"{key} {name!r}"
    assert main(["show", str(run), "--json"]) == 0 and json.loads(capsys.readouterr().out)["unregistered"] is None


def test_show_gives_the_settings_the_best_and_last_epochs_and_the_indicators(run, capsys):
    capsys.readouterr()
    assert main(["show", str(run)]) == 0
    text = capsys.readouterr().out
    metrics = [json.loads(line) for line in (run / METRICS).read_text().splitlines()]
    best = max(metrics, key=lambda m: (m["test_acc"], -m["epoch"]))
    assert "digits_1w1a (reste) on digits: 2 epochs, batch 64, sgd lr 0.1, seed 0" in text
    assert "o_end=3.0" in text and "finished: 2 of 2 epochs" in text
    assert "           reste: interval=0.1 o=1.0 o_end=3.0 schedule=cosine t=1.5\n" in text  # (no model option)
    assert (f"best       test top-1 {best['test_acc']:.2f}%, top-5 {best['test_top5']:.2f}% at epoch {best['epoch']}"
            in text)
    assert f"last       test top-1 {metrics[-1]['test_acc']:.2f}%, top-5 {metrics[-1]['test_top5']:.2f}% at epoch 2" \
        in text
    mean_error = sum(m["estimating_error"] for m in metrics) / 2
    assert f"indicators (general mode, 2 epochs): estimating error {mean_error:.4g} (mean over epochs)" in text


def test_show_json_gives_the_same_figures_as_one_object(run, tmp_path, capsys):
    """reste show --json: the figures of the lines as one JSON object, for scripts (CLI review 6)."""
    capsys.readouterr()
    assert main(["show", str(run), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    metrics = [json.loads(line) for line in (run / METRICS).read_text().splitlines()]
    best = max(metrics, key=lambda m: (m["test_acc"], -m["epoch"]))
    assert got["config"] == json.loads((run / "config.json").read_text())
    assert (got["run_dir"], got["epochs_done"], got["finished"]) == (str(run), 2, True)
    assert (got["state"], got["pid"]) == ("finished" if os.path.exists("/proc/locks") else None, None)
    assert got["best"] == {k: best[k] for k in ("epoch", "test_acc", "test_top5")}
    assert got["last"]["epoch"] == 2 and got["last"]["schedule"] == {"o": metrics[-1]["o"]}
    assert got["train_seconds"] == pytest.approx(sum(m["time"] for m in metrics))
    assert got["indicators"] == {"mode": "general", "o_end": None, "epochs": 2, "unmeasured": 0, "first_epoch": 1,
                                 "estimating_error": pytest.approx(sum(m["estimating_error"] for m in metrics) / 2),
                                 "gradient_stability": pytest.approx(sum(m["gradient_stability"] for m in metrics) / 2)}
    part = tmp_path / "part"  # no epoch yet
    part.mkdir()
    (part / "config.json").write_text((run / "config.json").read_text())
    assert main(["show", str(part), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert (got["epochs_done"], got["finished"], got["best"], got["last"], got["indicators"]) == (0, False, None, None,
                                                                                                  None)


@pytest.mark.skipif(not os.path.exists("/proc/locks"), reason="which process holds a folder: Linux's /proc/locks")
def test_show_of_an_unfinished_run_says_whether_it_trains_and_how_to_continue_it(run, tmp_path, capsys, monkeypatch):
    part = tmp_path / "part"  # a run stopped after epoch 1 of 2 (its last.pt holds that epoch: chaos3 #1)
    assert main(["train", "--epochs", "1", "--threads", "1", "--no-progress", "--out", str(part)]) == 0
    (part / "config.json").write_text((run / "config.json").read_text())
    capsys.readouterr()
    assert main(["show", str(part)]) == 0
    text = capsys.readouterr().out
    assert "1 of 2 epochs: stopped (no process on this machine holds it; `reste train --resume" in text, text
    assert "at epoch 1" in text
    with RunDirectory.open(part, fresh=False):  # as a run training in it holds it
        assert main(["show", str(part)]) == 0
        assert f"progress   1 of 2 epochs: training now (pid {os.getpid()})" in capsys.readouterr().out
        assert main(["show", str(part), "--json"]) == 0
        assert {k: v for k, v in json.loads(capsys.readouterr().out).items() if k in ("state", "pid")} == {
            "state": "training", "pid": os.getpid()}
        (part / ".lock").unlink()  # (review userD #6) removed by hand: the folder's own lock still tells
        assert main(["show", str(part)]) == 0
        assert f"progress   1 of 2 epochs: training now (pid {os.getpid()})" in capsys.readouterr().out
    assert main(["show", str(part)]) == 0 and ": stopped (" in capsys.readouterr().out  # released
    mounts = tmp_path / "mounts"  # the folder on NFS: a run on another machine holds it out of sight
    mounts.write_text(f"/dev/vda / ext4 rw 0 0\nserver:/export {tmp_path} nfs4 rw 0 0\n")
    monkeypatch.setattr(rundir, "_MOUNTS", str(mounts))
    assert main(["show", str(part)]) == 0
    assert "1 of 2 epochs (training, or stopped: `reste train --resume" in capsys.readouterr().out
    mounts.write_text(f"/dev/vda / ext4 rw 0 0\n/dev/vdb {tmp_path.parent} ext4 rw 0 0\n")
    assert main(["show", str(part)]) == 0 and ": stopped (" in capsys.readouterr().out
    monkeypatch.setattr(rundir, "_PROC_LOCKS", str(tmp_path / "none"))  # not Linux: it cannot be told
    assert main(["show", str(part)]) == 0
    assert "1 of 2 epochs (training, or stopped: `reste train --resume" in capsys.readouterr().out
    monkeypatch.delattr(os, "major")  # (review portable #2) Windows has no device numbers: it raised there
    monkeypatch.delattr(os, "minor")
    assert main(["show", str(part)]) == 0
    assert "1 of 2 epochs (training, or stopped: `reste train --resume" in capsys.readouterr().out
    (part / METRICS).unlink()  # started, no epoch finished yet
    assert main(["show", str(part)]) == 0
    assert "0 of 2 epochs" in capsys.readouterr().out


def test_show_of_a_folder_that_holds_no_run_is_one_line(tmp_path, capsys):
    line = one_line_error(capsys, "show", str(tmp_path))
    assert line.endswith("holds no run (no config.json); pass a run's folder (its --out)")
    assert "does not exist" in one_line_error(capsys, "show", str(tmp_path / "nope"))
    run = tmp_path / "runs" / "ste-0123456789" / "seed0"  # a sweep's runs folder, or a setting's: one of its runs
    run.mkdir(parents=True)
    (run / "config.json").write_text("{}")
    for folder in (tmp_path / "runs", run.parent):
        assert one_line_error(capsys, "show", str(folder)).endswith(
            f"holds no run (no config.json); pass a run's folder (its --out), e.g. {run} (a run this folder holds)")
    (run / "top").mkdir()  # (review newuser suggestion) a folder inside a run: that run named
    assert one_line_error(capsys, "show", str(run / "top")).endswith(
        f"holds no run (no config.json); pass a run's folder (its --out): {run}, the run it is in")
    (tmp_path / "config.json").write_text("{")
    assert "is corrupted" in one_line_error(capsys, "show", str(tmp_path))


def test_show_of_a_file_of_the_run_points_to_its_folder(run, capsys):
    line = one_line_error(capsys, "show", str(run / "last.pt"))
    assert f"{run / 'last.pt'} is a file; pass the run's folder" in line and f"reste show {run}" in line, line


def test_show_of_a_file_outside_a_run_suggests_no_folder(tmp_path, capsys):
    """(review user9 #12) an exported model's folder was offered as the run's, though it holds none."""
    model = tmp_path / "digits.rbnn"
    model.write_bytes(b"x")
    line = one_line_error(capsys, "show", str(model))
    assert line.endswith("is a file; pass the run's folder (the one holding config.json)"), line


def test_show_of_a_sweep_gives_each_runs_state(tmp_path, capsys):
    """reste show SWEEP_DIR: a line per run (finished with its best, training now with its pid, stopped, diverged,
    damaged, not started), whether a sweep process holds the folder, and how to continue; --json the same."""
    import shutil

    from reste.rundir import SWEEP_LOCK

    out = tmp_path / "s"
    assert main(["sweep", "--grid", "lr=0.05,0.1,0.2", "--seeds", "0,1", "--epochs", "1", "--threads", "1",
                 "--no-report", "--out", str(out)]) == 0
    capsys.readouterr()
    runs = {(s["label"], int(seed)): out / rel for s in json.loads((out / "sweep.json").read_text())["settings"]
            for seed, rel in s["runs"].items()}
    best = json.loads((runs["lr=0.05", 0] / METRICS).read_text().splitlines()[0])["test_acc"]
    (runs["lr=0.05", 1] / METRICS).write_text("")  # stopped before its first epoch ended
    shutil.rmtree(runs["lr=0.1", 0])  # not started
    (runs["lr=0.1", 1] / METRICS).write_text("")  # diverged inside its first epoch (a finished run's record is stray)
    rundir.record_divergence(runs["lr=0.1", 1], 1, 7)
    (runs["lr=0.2", 0] / "config.json").write_text("{")
    rundir.record_failure(runs["lr=0.2", 1], "an earlier try failed")  # a run training again is training (mut6 #5)
    with rundir.folder_lock(runs["lr=0.2", 1], rundir.LOCK_NAME, "a run", "wait"), \
            rundir.folder_lock(out, SWEEP_LOCK, "a sweep", "wait"):
        assert main(["show", str(out)]) == 0
        text = capsys.readouterr().out
        assert main(["show", str(out), "--json"]) == 0
        status = json.loads(capsys.readouterr().out)
    lines = text.splitlines()
    assert lines[0] == f"sweep      {out}: 3 settings, 6 runs; a sweep process runs it now (pid {os.getpid()})"
    assert lines[1] == ("progress   1 finished, 1 training, 1 stopped, 1 diverged, 1 damaged, 1 not started")
    assert lines[2] == f"  lr=0.05  seed 0: finished, best {best:.2f}% at epoch 1"
    assert lines[3] == "           seed 1: 0 of 1 epochs: stopped"
    assert lines[4] == "  lr=0.1   seed 0: not started"
    assert lines[5] == "           seed 1: it diverged (non-finite loss at epoch 1, step 7) after 0 of 1 epochs"
    assert lines[6].startswith("  lr=0.2   seed 0: damaged: ") and "config.json is corrupted" in lines[6]
    assert lines[7].startswith(f"           seed 1: 1 of 1 epochs: training now (pid {os.getpid()})")
    assert not any(line.startswith("continue") for line in lines)  # the sweep runs: it continues them itself
    assert status["running"] == os.getpid() and status["counts"]["not started"] == 1
    assert [r["state"] for s in status["settings"] for r in s["runs"]] == [
        "finished", "stopped", "not started", "diverged", "damaged", "training"]
    assert main(["show", str(out)]) == 0  # no sweep process: say how to continue
    text = capsys.readouterr().out
    assert ("continue   the same `reste sweep` command trains the 2 runs left (finished runs are skipped, stopped "
            "ones resume)") in text
    assert f"tables     `reste report {out}` writes them (also while it runs); one run: " in text  # (--no-report)
    assert main(["report", str(out)]) == 0
    capsys.readouterr()
    assert main(["show", str(out)]) == 0  # (review newuser5) tables written: named, not "writes them"
    assert f"tables     {out / 'results.md'} (`reste report {out}` writes them again, also while it runs); one run: " \
        in capsys.readouterr().out


def test_show_of_a_sweep_says_a_gone_run_keeps_its_reported_row(tmp_path, capsys):
    """(review userB #2) A run whose folder was deleted after a report: `reste report` keeps its row, so `show`
    says so beside 'not started' (the sweep would train it again) rather than 'not started' alone."""
    import shutil

    out = tmp_path / "s"
    assert main(["sweep", "--grid", "lr=0.05,0.1", "--epochs", "1", "--threads", "1", "--out", str(out)]) == 0
    settings = json.loads((out / "sweep.json").read_text())["settings"]
    shutil.rmtree(out / settings[0]["runs"]["0"])
    capsys.readouterr()
    assert main(["show", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    row = next(r for r in csv.DictReader(open(out / "runs.csv")) if r["setting"] == "lr=0.05")
    assert lines[2] == (f"  lr=0.05  seed 0: not started: its folder is gone, and the row an earlier report wrote is "
                        f"kept (best {float(row['best_acc']):.2f}% at epoch 1); the sweep would train it again")
    assert lines[3].startswith("  lr=0.1   seed 0: finished")
    assert main(["show", str(out), "--json"]) == 0
    runs = [s["runs"][0] for s in json.loads(capsys.readouterr().out)["settings"]]
    assert runs[0]["state"] == "not started" and runs[0]["reported"]["best_epoch"] == 1
    assert runs[1]["reported"] is None


def test_show_of_a_sweep_names_a_run_that_diverged_in_its_first_epoch(tmp_path, capsys):
    """Such a run leaves no settings nor checkpoint, only the sweep's record of the divergence: it is diverged
    (not 'not started', which the sweep would not train again), with the epochs the sweep planned for it."""
    out = tmp_path / "s"
    assert main(["sweep", "--grid", "lr=1e30,0.1", "--epochs", "1", "--threads", "1", "--no-report",
                 "--estimator", "ste", "--out", str(out)]) == 1
    capsys.readouterr()
    assert main(["show", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == "progress   1 finished, 1 diverged"
    assert lines[2].startswith("  lr=1e+30  seed 0: it diverged (non-finite loss at epoch 1, step ")
    assert lines[2].endswith(" after 0 of 1 epochs")
    assert not any(line.startswith("continue") for line in lines)  # nothing left that a rerun would train
    good = json.loads((out / "sweep.json").read_text())["settings"][1]["runs"]["0"]
    assert lines[-1].endswith(f"one run: `reste show {out / good}`")  # one that can be shown
    assert main(["show", str(out), "--json"]) == 0
    runs = [s["runs"][0] for s in json.loads(capsys.readouterr().out)["settings"]]
    assert [(r["state"], r["epochs_done"], r["epochs"]) for r in runs] == [("diverged", 0, 1), ("finished", 1, 1)]


@pytest.mark.parametrize("line", ['{"epoch": 1}', '{"epoch": 1, "test_acc": "90"}',
                                  '{"epoch": 1, "test_acc": 9, "time": []}'])
def test_show_of_a_metrics_line_without_numbers_is_damage(run, capsys, tmp_path, line):
    """A metrics line whose test top-1 (or another value) is no number: a one-line error naming the file and the
    epoch, not 'KeyError: test_acc' or a TypeError; in a sweep, that run is damaged and the others are shown."""
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / METRICS).write_text(line + "\n" + (copy / METRICS).read_text())
    error = one_line_error(capsys, "show", str(copy))
    assert f"{copy / METRICS} line 1 (epoch 1) has no number as its " in error and "mend or delete" in error
    out = tmp_path / "s"
    assert main(["sweep", "--grid", "lr=0.05,0.1", "--epochs", "1", "--threads", "1", "--no-report",
                 "--out", str(out)]) == 0
    first = out / json.loads((out / "sweep.json").read_text())["settings"][0]["runs"]["0"]
    (first / METRICS).write_text(line + "\n" + (first / METRICS).read_text())
    capsys.readouterr()
    assert main(["show", str(out)]) == 0
    assert capsys.readouterr().out.splitlines()[1] == "progress   1 finished, 1 damaged"
    # (review sweeps #1) the report and the sweep, even a dry run, name the damage: not a TypeError of the whole
    assert main(["report", str(out), "--no-plots"]) == 0
    assert f"{first / METRICS} line 1 (epoch 1) has no number" in capsys.readouterr().out
    assert main(["sweep", "--grid", "lr=0.05,0.1", "--epochs", "1", "--out", str(out), "--dry-run"]) == 0
    assert f"{first / METRICS} line 1 (epoch 1) has no number" in capsys.readouterr().out


def test_a_sweep_folder_moved_away_from_its_outside_runs_still_finds_them(tmp_path, capsys):
    """The manifest keeps each run's folder relative to the sweep (a sweep moved with its runs) and where it was
    written: a sweep folder moved away from its --runs-dir still shows, reports and draws its finished runs."""
    from reste.experiments import collect, sweep_run_dirs

    root = tmp_path / "root"
    out, runs_dir = root / "a" / "s", root / "shared-runs"
    assert main(["sweep", "--grid", "lr=0.05,0.1", "--epochs", "1", "--threads", "1", "--no-report", "--out",
                 str(out), "--runs-dir", str(runs_dir)]) == 0
    moved = tmp_path / "archive" / "s"
    moved.parent.mkdir()
    out.rename(moved)
    capsys.readouterr()
    assert main(["show", str(moved), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["counts"]["finished"] == 2
    assert all(r["run_dir"].startswith(str(runs_dir)) for s in status["settings"] for r in s["runs"]), status
    assert [d.parent.parent for d in sweep_run_dirs(moved)] == [runs_dir, runs_dir]
    assert len(collect(moved)[1]) == 2  # the tables' rows
    # moved back, then the whole tree moved: the relative folders, not the old absolute ones
    moved.rename(out)
    root.rename(tmp_path / "root2")
    found = sweep_run_dirs(tmp_path / "root2" / "a" / "s")
    assert [d.resolve().parent.parent for d in found] == [(tmp_path / "root2" / "shared-runs").resolve()] * 2


def test_show_of_a_run_stopped_inside_an_epoch_gives_the_steps_last_pt_holds(tmp_path, capsys, monkeypatch):
    """(review user9 #11) `reste eval` said how far into the epoch last.pt is, `reste show` did not."""
    from reste.config import TrainConfig
    from run_checks import stop_in_epoch_2

    stop_in_epoch_2(TrainConfig(epochs=2, threads=1), tmp_path / "cut", lambda _m: None, step=10, steps=23)
    capsys.readouterr()
    assert main(["show", str(tmp_path / "cut"), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert (got["epochs_done"], got["saved_step"]) == (1, 10)
    assert main(["show", str(tmp_path / "cut")]) == 0
    assert "progress   1 of 2 epochs, and 10 steps of epoch 2" in capsys.readouterr().out
    # (review imgdist #2) taken by 2 torchrun processes: they continue it, not `reste train --resume` (one process,
    # refused for it); a stopped run's own line under torchrun says the same
    from reste.checkpoint import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(tmp_path / "cut" / "last.pt")
    save_checkpoint({**ckpt, "world_size": 2}, tmp_path / "cut" / "last.pt")
    assert main(["show", str(tmp_path / "cut"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["saved_processes"] == 2
    assert main(["show", str(tmp_path / "cut")]) == 0
    from reste.errors import shell_word

    word = shell_word(tmp_path / "cut")
    assert (f"stopped (no process on this machine holds it; torchrun again, 2 processes, running `-m reste.cli train "
            f"--resume {word}` continues it)") in capsys.readouterr().out
    # (review rev13 #6) on a shared file system, where the lock table cannot tell whether it runs
    from reste import rundir

    monkeypatch.setattr(rundir, "_shared_file_system", lambda _path: True)
    assert main(["show", str(tmp_path / "cut")]) == 0
    assert (f"(training, or stopped: torchrun again, 2 processes, running `-m reste.cli train --resume {word}` "
            "continues it)") in capsys.readouterr().out


def test_show_refuses_metrics_of_more_epochs_than_the_config_plans(run, tmp_path, capsys):
    """(review user9 #13) another run's config.json over these metrics showed 'finished: 4 of 2 epochs'."""
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "config.json").write_text(json.dumps({**json.loads((run / "config.json").read_text()), "epochs": 1}))
    (mixed / METRICS).write_text((run / METRICS).read_text())
    line = one_line_error(capsys, "show", str(mixed))
    assert "holds 2 epochs, more than the 1 that" in line and "not one run's" in line


def test_show_counts_a_runs_epochs_not_its_lines(run, capsys, tmp_path):
    """(review sweeps #2) `reste show` counted metrics lines: a line deleted in the middle read as a run stopped
    an epoch short (which the sweep leaves out as damaged), and a repeated line standing in for a lost last one as
    a finished run (which the report leaves out as unfinished). It now counts the set of epochs, as they do."""
    import shutil

    from reste.runinfo import run_summary

    lines = (run / METRICS).read_text().splitlines()
    gap, repeated = tmp_path / "gap", tmp_path / "repeated"
    shutil.copytree(run, gap)
    shutil.copytree(run, repeated)
    (gap / METRICS).write_text(lines[1] + "\n")  # epoch 2 without epoch 1
    assert main(["show", str(gap)]) == 0  # (review rev12 #6) a resume goes on without it, saying so: shown, not refused
    text = capsys.readouterr().out
    assert f"lost       {METRICS} has no line for epoch 1 (damaged, then left out by a resume)" in text
    assert "progress   finished: 2 of 2 epochs" in text
    # (review combos #1) the best of the lines kept need not be the run's
    assert f"at epoch 2 (of the epochs {METRICS} holds; best.pt holds the run's best)" in text
    (repeated / METRICS).write_text(lines[0] + "\n" + lines[0] + "\n")  # epoch 1 twice, epoch 2 lost
    with pytest.raises(UsageError, match="lines 1 and 2 both hold epoch 1; the file is corrupted"):  # (chaos3 #2)
        run_summary(repeated, steps=False)


@pytest.mark.parametrize("key, value", [("epochs", "1"), ("lr", "0.05")])
def test_a_config_json_value_of_another_type_is_that_runs_damage(tmp_path, capsys, key, value):
    """(review sweeps #13) A run's config.json with "epochs": "1": `reste show` ended in a TypeError, and the report
    and the sweep (even --dry-run) in "--epochs must be int" for the whole sweep, naming neither the file nor
    the run; the file is now named as damaged, and the other runs are shown, reported and kept."""
    out = tmp_path / "s"
    assert main(["sweep", "--grid", "lr=0.05,0.1", "--epochs", "1", "--threads", "1", "--no-report",
                 "--out", str(out)]) == 0
    first = out / json.loads((out / "sweep.json").read_text())["settings"][0]["runs"]["0"]
    config = json.loads((first / "config.json").read_text())
    (first / "config.json").write_text(json.dumps({**config, key: value}))
    capsys.readouterr()
    error = one_line_error(capsys, "show", str(first))
    assert f"{first / 'config.json'} is corrupted ({key} must be " in error and "delete it: --resume" in error
    assert main(["show", str(out)]) == 0
    assert capsys.readouterr().out.splitlines()[1] == "progress   1 finished, 1 damaged"
    assert main(["report", str(out), "--no-plots"]) == 0
    assert f"{first / 'config.json'} is corrupted ({key} must be " in capsys.readouterr().out
    assert main(["sweep", "--grid", "lr=0.05,0.1", "--epochs", "1", "--out", str(out), "--dry-run"]) == 0
    assert f"{first / 'config.json'} is corrupted ({key} must be " in capsys.readouterr().out


def test_a_failed_sweep_run_is_named_by_show_and_report_until_it_trains_again(tmp_path, capsys, monkeypatch):
    """(review sweeps #3) A run that failed (here: a model that does not fit the data) was told only in the
    sweep's own output: `reste show` said "not started", and the report's table showed 0/1 without a word."""
    import shutil

    from reste import engine, rundir
    out = tmp_path / "s"
    monkeypatch.setattr(engine, "check_model_fits", lambda *a, **k: None)  # (the sweep's own check: the run fails)
    assert main(["sweep", "--grid", "model=digits_1w1a,resnet20_1w1a", "--epochs", "1", "--threads", "1",
                 "--no-report", "--out", str(out)]) == 1
    failed = out / json.loads((out / "sweep.json").read_text())["settings"][1]["runs"]["0"]
    capsys.readouterr()
    assert main(["show", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == "progress   1 finished, 1 failed"
    # (review chaos4, suggestion) a bad input's line without Python's class name, as the sweep's other lines
    assert lines[3].startswith("  model=resnet20_1w1a  seed 0: it failed (model 'resnet20_1w1a' ")
    assert lines[3].endswith(f"; its traceback is in {failed / 'train.log'}")
    assert lines[4].startswith("continue   the same `reste sweep` command trains the 1 run left")
    assert main(["report", str(out), "--no-plots"]) == 0
    assert "report: model=resnet20_1w1a seed 0 is left out: it failed (model 'resnet20_1w1a' " in \
        capsys.readouterr().out
    # (review rev12 #4) `reste show RUN_DIR` of it too: failed at its start, or stopped by the failure
    line = one_line_error(capsys, "show", str(failed))
    assert line.startswith(f"reste: error: {failed} holds no run: it failed (model 'resnet20_1w1a' ")
    assert line.endswith("; the sweep trains it again")
    good = out / json.loads((out / "sweep.json").read_text())["settings"][0]["runs"]["0"]
    stopped = tmp_path / "stopped"
    shutil.copytree(good, stopped)
    (stopped / "metrics.jsonl").write_text("")
    rundir.record_failure(stopped, "RuntimeError: CUDA error: an illegal memory access")
    assert main(["show", str(stopped)]) == 0
    progress = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("progress"))
    if Path("/proc/locks").exists():
        assert progress.startswith("progress   0 of 1 epoch: stopped: it failed (RuntimeError: CUDA error: an illegal "
                                   "memory access); its traceback is in ")
    rundir.record_failure(good, "UsageError: it already holds a run")  # (review rev12 #7) a second sweep's start
    assert main(["show", str(out)]) == 0  # on a run another sweep (a shared --runs-dir) had just finished
    assert capsys.readouterr().out.splitlines()[1] == "progress   1 finished, 1 failed"
    (good / "diverged.json").write_text("[1,2")  # (review chaos2 #6) a damaged record beside a finished run: show
    assert main(["show", str(out)]) == 0  # called it diverged, the sweep and the report finished
    assert capsys.readouterr().out.splitlines()[1] == "progress   1 finished, 1 failed"
    assert main(["report", str(out), "--no-plots"]) == 0
    assert "model=digits_1w1a seed 0" not in capsys.readouterr().out  # (not left out)
    assert main(["train", "--out", str(failed), "--epochs", "1", "--threads", "1", "--no-progress"]) == 0
    assert not (failed / "failed.json").exists()  # the record goes where the run starts again (a sweep too)


@pytest.mark.skipif(not Path("/proc/locks").exists(), reason="tells stopped from training by /proc/locks")
def test_show_of_a_stopped_run_whose_last_checkpoint_is_damaged_does_not_say_resume(run, capsys, tmp_path):
    """(review newuser #8) `reste show` told to `--resume` a run whose last.pt is truncated, which the resume
    refuses."""
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / METRICS).write_text((copy / METRICS).read_text().splitlines()[0] + "\n")  # stopped after epoch 1
    (copy / "last.pt").write_bytes((copy / "last.pt").read_bytes()[:5000])
    capsys.readouterr()
    assert main(["show", str(copy)]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("progress"))
    assert line.startswith("progress   1 of 2 epochs: stopped, and its last.pt is damaged (") and "--resume" not in line
    assert line.endswith("the run cannot continue from it; evaluate its best.pt with reste eval, or start a new run")
    (copy / "last.pt").unlink()  # gone after a finished epoch: the resume refuses it too (review chaos3 #1)
    assert main(["show", str(copy)]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("progress"))
    assert line.startswith("progress   1 of 2 epochs: stopped, and its last.pt is gone (deleted or lost): the run "
                           "cannot continue from it")
    assert main(["show", str(copy), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["last_damaged"] == "missing"
    # one line and nothing else: a crash between epoch 1's line and its first last.pt, which a resume trains again
    # (review chaos4 #10: it said to start a new run)
    (copy / "best.pt").unlink()
    shutil.rmtree(copy / "top", ignore_errors=True)
    assert main(["show", str(copy)]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("progress"))
    assert line.startswith("progress   1 of 2 epochs: stopped (") and "--resume" in line, line


def test_show_of_a_run_whose_config_json_is_gone_reads_last_pts_copy(run, capsys, tmp_path):
    """(review rev12 suggestion) config.json deleted (the remedy of a damaged one): `reste show` said the folder
    holds no run, while a sweep counts it finished and a resume writes the file again from last.pt."""
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / "config.json").unlink()
    assert main(["show", str(copy)]) == 0
    assert "progress   finished: 2 of 2 epochs" in capsys.readouterr().out


def test_show_of_a_run_whose_metrics_lost_lines_says_what_last_pt_holds(tmp_path, capsys):
    """(review combos #1) metrics.jsonl deleted: show said "0 of 2 epochs: stopped" of a last.pt holding an epoch
    and steps; after the resume wrote the last line back, its best was the lines' best, not the run's."""
    from reste.config import TrainConfig
    from run_checks import stop_in_epoch_2

    stop_in_epoch_2(TrainConfig(epochs=2, threads=1), tmp_path / "cut", lambda _m: None, step=10, steps=23)
    (tmp_path / "cut" / METRICS).unlink()
    capsys.readouterr()
    assert main(["show", str(tmp_path / "cut")]) == 0
    out = capsys.readouterr().out
    assert (f"progress   0 of 2 epochs logged, but last.pt holds 1 epoch and 10 steps of epoch 2 ({METRICS} lost "
            "lines): stopped; `reste train --resume") in out, out
    assert main(["show", str(tmp_path / "cut"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["unlogged"] == [1, 10]


def test_shows_help_names_every_state_of_a_sweeps_run(capsys):
    """(review docs #3) `reste show --help` named five of the states its sweep lines use."""
    from reste.experiments.status import STATES

    with pytest.raises(SystemExit):
        main(["show", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for state in STATES:
        assert all(word in text for word in state.split(" or ")), state


@pytest.mark.skipif(not Path("/proc/locks").exists(), reason="tells stopped from training by /proc/locks")
def test_a_checkpoint_that_cannot_be_read_is_not_called_damaged(run, capsys, tmp_path, monkeypatch):
    """(review chaos4 #3) A last.pt or config.json that only cannot be read (its mode, its owner): show called last.pt
    damaged and said to start a new run, the config.json line said both to make it readable and to delete it, and
    a resume removed an unreadable top/ file. Each says to make it readable, and nothing is removed."""
    import errno
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / METRICS).write_text((copy / METRICS).read_text().splitlines()[0] + "\n")  # stopped after epoch 1
    refused = {copy / "last.pt", copy / "config.json"}
    real = Path.read_bytes

    def read_bytes(path):  # (as root, no mode refuses a read: the file system's answer stands in)
        if path in refused:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    with pytest.raises(UsageError) as err:
        rundir.run_config(copy)
    assert str(err.value) == (f"cannot read {copy / 'config.json'} (Permission denied); make it readable (its mode, "
                              "its owner) and run the command again")
    refused.discard(copy / "config.json")
    capsys.readouterr()
    assert main(["show", str(copy)]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("progress"))
    assert line.startswith("progress   1 of 2 epochs: stopped, and its last.pt cannot be read (Permission denied): "
                           "make it readable (its mode, its owner), then `reste train --resume")
    assert "damaged" not in line
    messages = []
    top = copy / "top" / rundir.top_name(1, 50.0)
    top.parent.mkdir(exist_ok=True)
    shutil.copy(copy / "best.pt", top)
    refused.add(top)
    from reste.checkpoint import load_checkpoint

    rundir.check_kept(copy, load_checkpoint(copy / "best.pt")["epoch"], messages.append)
    assert top.exists() and messages == [f"warning: {top} cannot be read (Permission denied); make it readable (its "
                                         "mode, its owner)"]


@pytest.mark.skipif(not Path("/proc/locks").exists(), reason="tells stopped from training by /proc/locks")
def test_another_runs_last_pt_put_back_is_named(run, capsys, tmp_path):
    """(review chaos4 #1) A last.pt put back from another run (a backup into the wrong folder) was trained on as the
    run's own: show said --resume continues it, and the resume dropped the run's own lines. Its last line, which
    the checkpoint keeps, differs from metrics.jsonl's: show, the resume and a sweep's plan say so."""
    import shutil

    import torch

    from reste.checkpoint import load_checkpoint, save_checkpoint

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / METRICS).write_text((copy / METRICS).read_text().splitlines()[0] + "\n")  # stopped after epoch 1
    ckpt = load_checkpoint(copy / "last.pt")
    other = {**ckpt, "epoch": 1, "metrics": {**ckpt["metrics"], "epoch": 1, "test_acc": 12.5}}
    save_checkpoint(other, copy / "last.pt")
    first = json.loads((copy / METRICS).read_text())["test_acc"]
    why = (f"{copy / 'last.pt'} is not this run's: its epoch 1 scored test top-1 12.50%, where metrics.jsonl says "
           f"{first:.2f}% (a checkpoint put back from another run?); put this run's own back, or delete the folder to "
           "train the run again")
    capsys.readouterr()
    assert main(["show", str(copy)]) == 0
    assert f"progress   1 of 2 epochs: stopped, but {why}" in capsys.readouterr().out
    assert main(["train", "--resume", str(copy)]) == 2
    assert capsys.readouterr().err.strip() == f"reste: error: {why}"
    assert torch.equal(load_checkpoint(copy / "last.pt")["model"][next(iter(ckpt["model"]))],
                       ckpt["model"][next(iter(ckpt["model"]))])  # untouched


def test_show_of_a_start_that_saved_nothing_says_to_run_it_again(tmp_path, capsys):
    """(review chaos4, suggestion) A start killed while it loaded its data leaves its lock file alone: show said to
    pass a run's folder; running the same command again is what to do, and it works."""
    folder = tmp_path / "r"
    folder.mkdir()
    (folder / ".lock").touch()
    assert main(["show", str(folder)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"reste: error: {folder} holds no run: a start was stopped before it saved anything (its lock file alone is "
        f"left); run the same `reste train --out {folder}` command again")
    assert main(["train", "--model", "digits_1w1a", "--epochs", "1", "--threads", "1", "--out", str(folder)]) == 0


def test_a_failed_sweep_run_says_the_epochs_it_kept():
    """(review mut6 #6) A sweep's run that failed after some epochs says how many it kept; one that failed before
    any, the failure alone."""
    from reste.experiments.status import _run_line

    run = {"state": "failed", "epochs_done": 2, "epochs": 5, "best": None, "why": "it failed: OSError: disk"}
    assert _run_line(run) == "2 of 5 epochs: it failed: OSError: disk"
    assert _run_line({**run, "epochs_done": 0}) == "it failed: OSError: disk"


@pytest.mark.parametrize("running", [None, 0, 4242])
def test_a_sweep_whose_holder_cannot_be_told_is_not_said_to_be_free(monkeypatch, tmp_path, running):
    """(review mut10 #9, S3/S8) Where the lock's holder cannot be told (None: not Linux, a shared file system), show
    says so and gives no `continue` line: a second sweep beside a live one would write into its runs. Only a free
    folder (0) gets it; a held one names its process."""
    from reste.experiments import status

    states = dict.fromkeys(status.STATES, 0)
    states["stopped"] = 1
    run = {"seed": 0, "run_dir": str(tmp_path / "x"), "state": "stopped", "epochs_done": 1, "epochs": 3,
           "best": None, "pid": None, "why": None, "reported": None}
    monkeypatch.setattr(status, "sweep_status", lambda out: {
        "sweep_dir": str(out), "running": running, "counts": states,
        "settings": [{"label": "o_end=3", "values": {}, "runs": [run]}]})
    text = status.show_sweep(tmp_path)
    said = {None: "whether a sweep process runs it cannot be told here", 0: "no sweep process runs it now",
            4242: "a sweep process runs it now (pid 4242)"}[running]
    assert text.splitlines()[0].endswith(f"1 setting, 1 run; {said}"), text
    assert ("continue   the same `reste sweep` command trains the 1 run left" in text) == (running == 0), text


def test_show_says_an_unmeasured_epoch_is_left_out_of_the_indicators(tmp_path):
    """(review diff26 #5, diff27 suggestion 1) an epoch of which nothing was measured (every step skipped: NaN) is
    left out of the run's values: show counts the epochs the values are made of, and says the one left out."""
    from reste import engine
    from reste.config import TrainConfig
    from reste.runinfo import show_run

    out = tmp_path / "run"
    engine.train(TrainConfig(epochs=2, threads=1, indicators="general"), out, progress=False, log=lambda _m: None)
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    lines[0]["estimating_error"] = lines[0]["gradient_stability"] = float("nan")
    (out / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    shown = show_run(out).splitlines()[-1]
    assert shown.startswith("indicators (general mode, 1 epoch, 1 epoch unmeasured left out): estimating error "
                            f"{lines[1]['estimating_error']:.4g} (mean over epochs)"), shown


def test_values_that_are_not_finite_are_written_null_and_read_back_as_nan(tmp_path, capsys):
    """(review formats1 #3) an unmeasured epoch's indicators (NaN) were written to metrics.jsonl and `reste show
    --json` as bare NaN, which is not JSON (JavaScript's JSON.parse refuses it, jq reads null). They are written
    null, and read back as NaN (files of before, with NaN, still read: the test above)."""
    from reste import engine, rundir
    from reste.cli import main
    from reste.config import TrainConfig
    from reste.runinfo import show_run

    def strict(text):
        return json.loads(text, parse_constant=lambda token: pytest.fail(f"{token} in {text}"))

    out = tmp_path / "run"
    engine.train(TrainConfig(epochs=2, threads=1, indicators="general"), out, progress=False, log=lambda _m: None)
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    lines[0].update(estimating_error=float("nan"), gradient_stability=float("nan"), test_loss=float("inf"))
    (out / "metrics.jsonl").unlink()
    for line in lines:
        rundir.append_metrics(out, line)
    written = [strict(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [written[0][k] for k in ("estimating_error", "gradient_stability", "test_loss")] == [None] * 3
    read = rundir.read_metrics(out)
    # (review mut11 #11) the test loss written null as well: read back as NaN, as read_metrics says
    assert all(math.isnan(read[0][k]) for k in ("estimating_error", "gradient_stability", "test_loss"))
    assert read[1] == lines[1]
    assert "1 epoch unmeasured left out" in show_run(out)
    capsys.readouterr()
    assert main(["show", str(out), "--json"]) == 0
    assert strict(capsys.readouterr().out)["indicators"]["unmeasured"] == 1
    # a file of before, with bare NaN, is written strict where a resume puts it in order (review diff28, sugg. 2)
    (out / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert "NaN" in (out / "metrics.jsonl").read_text()
    rundir.truncate_metrics(out, 2)
    assert [strict(line) for line in (out / "metrics.jsonl").read_text().splitlines()] == written


def test_show_says_a_resume_imports_the_runs_plugin_files_again(tmp_path, capsys, isolated):
    """(review sec3 #8) `reste show` of a received stopped run gave a resume command whose --plugin imports a .py
    file that came with the folder, without the caveat the resume's own refusal gives. It says so now."""
    from reste.cli import main

    run = tmp_path / "run"
    run.mkdir()
    (run / "helper.py").write_text("import reste\n\n\n@reste.register_estimator\nclass Helper(reste.STE):\n"
                                   "    name = 'helper_show_test'\n")
    assert main(["train", "--plugin", str(run / "helper.py"), "--estimator", "helper_show_test", "--epochs", "1",
                 "--out", str(run / "r"), "--threads", "1", "--no-progress"]) == 0
    config = json.loads((run / "r" / "config.json").read_text())
    (run / "r" / "config.json").write_text(json.dumps({**config, "epochs": 3}))
    capsys.readouterr()
    assert main(["show", str(run / "r")]) == 0
    text = capsys.readouterr().out
    assert "a resume imports the run's plugins again (--plugin below): code that runs as you" in text
    assert f"--plugin {run / 'helper.py'}" in text
