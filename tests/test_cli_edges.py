"""What a new user runs into at the edges of the CLI and the Python API: a schedule driven past its end,
a conversion that converts nothing, flags that a data set or a command would silently ignore, and output
piped into a reader that stops early."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import warnings

import pytest
from torch import nn

import reste
from reste import cli
from reste.cli import main
from reste.config import TrainConfig

from cli_checks import one_line_error


def _one_line(capsys, argv, code=2) -> str:
    assert main(list(argv)) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_a_schedule_past_its_end_holds_its_end():
    # a loop that runs longer than it said (Lightning stopped by max_steps) must not push o past o_end
    for name, key, end in (("reste", "o", 3.0), ("ede", "t", 10.0)):
        est = reste.get_estimator(name)
        est.set_progress(3, 3)
        assert getattr(est, key) == pytest.approx(end)
        est.set_progress(5, 3)
        assert getattr(est, key) == pytest.approx(end)


def test_binarize_says_when_it_converts_nothing():
    small = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3))
    with pytest.warns(UserWarning, match="no layer of the model was converted.*keep_first/keep_last"):
        out = reste.binarize(small, "reste")
    assert not reste.binary_layers(out)
    deeper = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3), nn.Conv2d(8, 8, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(reste.binary_layers(reste.binarize(deeper, "reste"))) == 1


def test_data_path_for_a_data_set_that_reads_no_files(capsys, tmp_path):
    line = _one_line(capsys, ["train", "--data-path", str(tmp_path), "--out", str(tmp_path / "r"), "--no-progress"])
    assert "digits reads no files" in line and "drop --data-path" in line
    assert not (tmp_path / "r").exists()
    # a run saved with one (older reste accepted it) still resumes and evaluates: the path is dropped
    assert TrainConfig.from_saved({"dataset": "digits", "data_path": "/x"}).data_path is None


def test_sweep_help_shows_a_sweeps_flags(capsys):
    with pytest.raises(SystemExit):
        main(["sweep", "--help"])
    text = capsys.readouterr().out
    assert "the sweep's folder" in text and "--resume" not in text and "--force" not in text


def test_a_closed_pipe_ends_quietly(capsys, monkeypatch, tmp_path):
    def presets(_args):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(cli, "cmd_presets", presets)
    assert main(["presets"]) == 141
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(cli, "cmd_train", presets)  # a run stopped with its output says how to go on
    assert main(["train"]) == 141
    assert "its finished epochs at least (continue it with --resume RUN_DIR)" in capsys.readouterr().err
    assert main(["train", "--out", str(tmp_path / "none")]) == 141  # (review userD #7) no run there: not resumed
    assert f"nothing was saved in {tmp_path / 'none'} (a new run's folder goes with it): run the command again" \
        in capsys.readouterr().err
    run = tmp_path / "my run"
    monkeypatch.undo()
    assert main(["train", "--epochs", "2", "--out", str(run), "--no-progress", "--threads", "1"]) == 0
    (run / "metrics.jsonl").write_text((run / "metrics.jsonl").read_text().splitlines()[0] + "\n")
    monkeypatch.setattr(cli, "cmd_train", presets)
    assert main(["train", "--out", str(run)]) == 141  # the folder named, quoted for the shell
    assert f"{run} keeps what the run saved, its finished epochs at least (continue it with `reste train --resume " \
        f"'{run}'`)" in capsys.readouterr().err
    assert main(["train", "--print-config"]) == 141  # nothing trained: nothing to say
    assert capsys.readouterr().err == ""


def test_a_closed_pipe_after_the_last_epoch_says_the_run_finished(capsys, monkeypatch, tmp_path):
    """`reste train --epochs 3 | head -3`: only the done line met the closed pipe; the line said to continue it."""
    run = tmp_path / "r"
    assert main(["train", "--epochs", "1", "--out", str(run), "--no-progress", "--threads", "1"]) == 0
    capsys.readouterr()

    def closed(_args):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(cli, "cmd_train", closed)
    assert main(["train", "--epochs", "1", "--out", str(run)]) == 141
    assert capsys.readouterr().err == (f"reste: stopped: its output's reader went away; the run had finished: {run} "
                                       "holds it whole\n")


def test_a_finished_run_stopped_before_its_last_top_copy_is_told_to_resume(capsys, monkeypatch, tmp_path):
    """(review combos #4) a second Ctrl-C (or a crash) between the last epoch's last.pt and its top/ copy or best.pt:
    the line said the folder held the run whole, so nothing prompted the resume that writes them."""
    from reste.rundir import top_checkpoints

    run = tmp_path / "r"
    flags = ["train", "--epochs", "2", "--keep-top", "2", "--out", str(run), "--no-progress", "--threads", "1"]
    assert main(flags) == 0
    capsys.readouterr()
    top_checkpoints(run)[2].unlink()  # both epochs are among the 2 best: epoch 2's copy is what the stop left out

    def closed(_args):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(cli, "cmd_train", closed)
    assert main(flags) == 141
    assert capsys.readouterr().err == ("reste: stopped: its output's reader went away; the run had finished, but its "
                                       f"best.pt or top/ were not yet written: `reste train --resume {run}` writes "
                                       "them\n")
    monkeypatch.undo()
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert sorted(top_checkpoints(run)) == [1, 2]


def test_a_run_whose_last_checkpoint_write_failed_is_not_told_finished(capsys, monkeypatch, tmp_path):
    """(review userD #1) A full disk at the last epoch's last.pt: metrics.jsonl (written first) holds every epoch,
    last.pt one fewer. The failure's line said 'the run had finished ... holds it whole', and `reste show` said
    finished: both now say it is stopped, and how to continue."""
    import shutil

    from reste import runinfo

    run = tmp_path / "r"
    assert main(["train", "--epochs", "1", "--out", str(tmp_path / "one"), "--no-progress", "--threads", "1"]) == 0
    assert main(["train", "--epochs", "2", "--out", str(run), "--no-progress", "--threads", "1"]) == 0
    capsys.readouterr()
    shutil.copy(tmp_path / "one" / "last.pt", run / "last.pt")  # the epoch-1 checkpoint, as the failed write left it
    older = (run / "metrics.jsonl").stat().st_mtime_ns - 10**9  # (written before the last metrics line, as then)
    os.utime(run / "last.pt", ns=(older, older))

    def full(_args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cli, "cmd_train", full)
    main(["train", "--epochs", "2", "--out", str(run)])
    err = capsys.readouterr().err
    assert "had finished" not in err and f"continue it with `reste train --resume {run}`" in err, err
    summary = runinfo.run_summary(run)
    assert not summary["finished"] and summary["saved_epoch"] == 1 and summary["state"] == "stopped"
    assert "progress   2 of 2 epochs logged, but last.pt holds 1 epoch (its last write failed, or a crash cut it): " \
        "stopped" in runinfo.show_run(run)
    # (review chaos5 #1) a copy of the folder (cp -r), or a clock step, gives last.pt the later time: the same
    newer = (run / "metrics.jsonl").stat().st_mtime_ns + 10**9
    os.utime(run / "last.pt", ns=(newer, newer))
    for steps in (True, False):  # (False: a line per run of `reste show SWEEP_DIR`)
        summary = runinfo.run_summary(run, steps=steps)
        assert not summary["finished"] and summary["saved_epoch"] == 1 and summary["state"] == "stopped", steps
    assert "2 of 2 epochs logged, but last.pt holds 1 epoch" in runinfo.show_run(run)
    # (review chaos #6) a run not at its end, cut between an epoch's metrics line and its last.pt: that epoch was
    # shown done (and best), while the resume trains it again
    import json

    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "epochs": 3}))
    os.utime(run / "last.pt", ns=(older, older))
    summary = runinfo.run_summary(run)
    assert summary["saved_epoch"] == 1 and summary["state"] == "stopped" and not summary["finished"]
    assert "progress   2 of 3 epochs logged, but last.pt holds 1 epoch" in runinfo.show_run(run)


def test_under_torchrun_a_process_left_by_another_says_so(monkeypatch, capsys, tmp_path):
    """(review userD) A rank whose collective failed because another rank ended first printed gloo's own words
    ("Connection closed by peer ... GLHF!") as its error, which a job log read first; it now says another process
    stopped first, with gloo's line in brackets. Alone, the same error is the error it is."""
    gone = RuntimeError("[/__w/pytorch/third_party/gloo/transport/tcp/pair.cc:561] Connection closed by peer "
                        "[127.0.0.1]:48332\nmore")
    assert cli._unexpected(gone, False, "eval", ["eval", "RUN"]) == 1
    assert "RuntimeError: [/__w/pytorch" in capsys.readouterr().err  # one process: no other to blame
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29500")
    assert cli._unexpected(gone, False, "eval", ["eval", "RUN"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("reste: error: another process of this run stopped first (its own `reste: error` line "
                          "says why; one killed by a signal, torchrun's report), so this one cannot go on "
                          "([/__w/pytorch") and err.count("\n") == 1, err  # (review dist #2: SIGKILL leaves no line)
    assert cli._unexpected(RuntimeError("CUDA out of memory"), False, "eval", []) == 1  # other errors: as they are
    assert "RuntimeError: CUDA out of memory" in capsys.readouterr().err


def test_under_torchrun_a_failing_process_other_than_the_first_names_its_rank(monkeypatch, capsys):
    assert main(["train", "--model", "nope"]) == 2
    assert capsys.readouterr().err.startswith("reste: error: unknown model 'nope'")
    for name, value in (("RANK", "1"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "1")):
        monkeypatch.setenv(name, value)  # (RANK alone, without a WORLD_SIZE > 1, is one process: review dist #4)
    assert main(["train", "--model", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("reste: error (rank 1): unknown model 'nope'") and err.count("\n") == 1


def test_boolean_settings_must_be_booleans():
    from reste.errors import UsageError

    for field, flag in (("augment", "--augment"), ("cuda_graphs", "--cuda-graphs")):
        with pytest.raises(UsageError, match=f"{flag} must be bool, got 'false'"):
            TrainConfig(dataset="fashion-mnist", **{field: "false"}).resolve()


def test_python_m_reste_cli_is_the_reste_command(tmp_path):
    """`python -m reste.cli` (the form torchrun runs) printed Python's two-line warnings, each twice; it now runs
    as the reste command does: one `reste: warning:` line."""
    proc = subprocess.run([sys.executable, "-m", "reste.cli", "train", "--epochs", "1", "--o-end", "1",
                           "--no-progress", "--threads", "1", "--out", str(tmp_path / "r")],
                          capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines() == ["reste: warning: ReSTE o schedule 'cosine' never changes (o = o_end = 1.0); "
                                        "pass --o-end > o or --o-schedule constant"], proc.stderr


def test_the_commands_leave_no_error_to_finalizers_and_no_file_open(tmp_path):
    """(review compat3 #1) Each checkpoint's writer object flushed its closed file when freed: Python 3.13 printed
    "Exception ignored ... ValueError: flush of closed file" after every write, earlier Pythons under ``-X dev``
    alone. Under ``-X dev`` (finalizers' errors and unclosed files reported) train, show, eval, plot, export,
    predict and a sweep report neither."""
    code = textwrap.dedent("""
        import gc, sys
        from reste.cli import main
        out = sys.argv[1]
        for argv in (["train", "--epochs", "2", "--o-end", "2", "--out", f"{out}/run"], ["show", f"{out}/run"],
                     ["eval", f"{out}/run/best.pt"], ["plot", f"{out}/run"],
                     ["export", f"{out}/run/best.pt", f"{out}/m.rbnn"], ["predict", f"{out}/m.rbnn"],
                     ["sweep", "--grid", "estimator=ste,reste", "--epochs", "1", "--out", f"{out}/sweep"]):
            argv += ["--threads", "1"] if argv[0] in ("train", "eval", "predict", "sweep") else []
            assert main(argv + (["--no-progress"] if argv[0] in ("train", "sweep") else [])) == 0, argv
        gc.collect()
    """)
    proc = subprocess.run([sys.executable, "-X", "dev", "-c", code, str(tmp_path)], capture_output=True, text=True,
                          env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for sign in ("Exception ignored", "ResourceWarning", "Traceback"):
        assert sign not in proc.stderr, proc.stderr[-3000:]


def test_a_ctrl_c_while_the_command_exits_ends_it_without_a_traceback():
    """Once the command is done, a Ctrl-C during Python's shutdown (a second one after a stopped run: atexit
    callbacks, torch's among them) printed a KeyboardInterrupt traceback; SIGINT now ends the process as Ctrl-C does.
    One the process was started with ignored (nohup, a background job) stays ignored."""
    code = textwrap.dedent("""
        import signal, sys
        from reste.cli import command
        # (set either way: a test run as a background job starts its children with SIGINT ignored)
        signal.signal(signal.SIGINT, signal.SIG_IGN if sys.argv[1] == "ignored" else signal.default_int_handler)
        sys.argv = ["reste", "presets"]
        command()
        print({signal.SIG_DFL: "default", signal.SIG_IGN: "ignored"}.get(signal.getsignal(signal.SIGINT), "python's"))
    """)
    for start, after in (("python's", "default"), ("ignored", "ignored")):
        proc = subprocess.run([sys.executable, "-c", code, start], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0 and proc.stdout.splitlines()[-1] == after, (start, proc.stdout, proc.stderr)


def test_a_character_the_output_cannot_encode_is_escaped_not_a_crash(tmp_path, capsys):
    """`reste report` printed `±` and failed (exit 1, after writing its files) where stdout is ASCII
    (PYTHONIOENCODING=ascii, a serial console); any such character is now written as \\xb1."""
    run = tmp_path / "r±é"
    assert main(["train", "--epochs", "1", "--out", str(run), "--no-progress", "--threads", "1"]) == 0
    capsys.readouterr()
    proc = subprocess.run([sys.executable, "-m", "reste", "show", str(run)], capture_output=True,
                          env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONIOENCODING="ascii"), timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == b"run        " + str(tmp_path).encode() + b"/r\\xb1\\xe9"


def test_a_sweep_run_log_takes_a_path_the_file_system_could_not_decode(tmp_path):
    """Under a non-UTF-8 file-system encoding (PYTHONUTF8=0 with an ASCII locale) a non-ASCII --out reaches
    Python as surrogates; each run of the sweep failed writing it to its train.log. Its bytes go back as they were."""
    from reste.experiments.sweep import _file_log

    log = tmp_path / "train.log"
    _file_log(log)("run -> sw\udcc3\udca9/estimator=ste")
    assert log.read_bytes() == "run -> swé/estimator=ste\n".encode()


def test_suggested_commands_quote_a_folder_with_a_space(tmp_path, capsys):
    """A command a message suggests can be copied as it is: `--resume dir with spaces/my run` was two arguments."""
    import shlex
    from types import SimpleNamespace

    from reste import engine

    run = tmp_path / "my run"
    word = shlex.quote(str(run))
    assert main(["train", "--epochs", "1", "--out", str(run), "--no-progress", "--threads", "1"]) == 0
    assert f"continue it with --resume {word} or" in _one_line(capsys, ["train", "--out", str(run)])
    assert f"see it with `reste show {word}`" in _one_line(capsys, ["report", str(run)])
    assert f"e.g. reste show {word}" in _one_line(capsys, ["show", str(run / "last.pt")])
    (run / "metrics.jsonl").write_text("")  # no epoch finished: show says how to continue it
    assert main(["show", str(run)]) == 0
    assert f"`reste train --resume {word}` continues it" in capsys.readouterr().out
    stopped = SimpleNamespace(run_dir=run, dist=SimpleNamespace(world_size=1))
    with pytest.raises(engine.Preempted, match=f"continue with `reste train --resume {re.escape(word)}`$"):
        engine._Run._preempted(stopped, "stopped by SIGTERM", 15)
    err = cli.UsageError("a file is damaged")
    engine._Run._tell_kept(stopped, err, "last.pt keeps epoch 1")
    assert f"continue with `reste train --resume {word}` once the data is mended" in str(err)
    assert engine.resume_command(run, 2) == f"torchrun again, 2 processes, running `-m reste.cli train --resume {word}`"
    empty = tmp_path / "empty folder"
    empty.mkdir()
    assert f"run `reste sweep --out {shlex.quote(str(empty))}` first" in _one_line(capsys, ["report", str(empty)])
    (empty / "runs.csv").write_text("setting,seed,best_acc\n")  # (review repro2, suggestion 3) a joined study's
    # folder: sweeping into it would train every run again
    joined = _one_line(capsys, ["report", str(empty)])
    assert "holds tables but no sweep.json: it was joined from other sweeps' tables" in joined
    assert "reste sweep" not in joined
    assert _one_line(capsys, ["report", str(tmp_path / "nothere")]).endswith(
        "nothere does not exist; pass a sweep's folder (its --out)")


def test_a_full_stdout_is_named_not_the_disk(tmp_path):
    """`reste presets > /dev/full` said "No space left on device; free some space": the disk was not full,
    the output was."""
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full here")
    with open("/dev/full", "w") as full:
        proc = subprocess.run([sys.executable, "-m", "reste", "presets"], stdout=full, stderr=subprocess.PIPE,
                              text=True, env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=300)
    assert proc.returncode == 1
    assert proc.stderr == ("reste: error: cannot write the output (stdout): No space left on device; send the "
                           "output elsewhere and run it again\n")


def test_each_setting_is_blamed_alone(capsys):
    assert _one_line(capsys, ["train", "--momentum", "1.5", "--print-config"]).endswith(
        "--momentum must be in [0, 1), got 1.5")
    assert _one_line(capsys, ["train", "--momentum", "1", "--print-config"]).endswith(  # (a velocity never decaying)
        "--momentum must be in [0, 1), got 1.0")
    assert _one_line(capsys, ["train", "--weight-decay", "-1", "--print-config"]).endswith(
        "--weight-decay must be >= 0, got -1.0")


def test_a_missing_data_path_is_quoted_and_located(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    line = _one_line(capsys, ["train", "--dataset", "cifar10", "--out", "r", "--no-progress"])
    assert f"CIFAR-10 data path 'data' (the default, {tmp_path / 'data'}) does not exist;" in line
    line = _one_line(capsys, ["train", "--dataset", "cifar10", "--data-path", "cif", "--no-progress"])
    assert f"CIFAR-10 data path '{tmp_path / 'cif'}' does not exist;" in line  # the flag's path made absolute


def test_amp_is_named_by_its_flag_in_eval_as_in_train(capsys, tmp_path):
    run = tmp_path / "r"
    assert main(["train", "--epochs", "1", "--out", str(run), "--no-progress", "--threads", "1"]) == 0
    capsys.readouterr()
    assert "unknown --amp 'bf17'; valid:" in _one_line(capsys, ["eval", str(run), "--amp", "bf17"])
    assert "unknown --amp 'fp32'; valid:" in _one_line(capsys, ["train", "--amp", "fp32", "--print-config"])


def test_an_unknown_name_gets_the_closest_valid_one_first(capsys):
    """The flags had "did you mean"; a sub-command's name and the model, data set and estimator names (a list
    of ~600 characters for the models) now have it too, before the list."""
    assert "invalid choice: 'traim'; did you mean 'train'? (choose from " in _one_line(capsys, ["traim"])
    # (review newuser5 #1) the last choice in the list too: the help pointer after the list is no part of it
    assert "invalid choice: 'plots'; did you mean 'plot'? (choose from " in _one_line(capsys, ["plots"])
    line = _one_line(capsys, ["predict", "x.rbnn", "--backend", "nump"])
    assert "invalid choice: 'nump'; did you mean 'numpy'? (choose from 'auto', 'c', 'numpy') (see `reste predict " \
        "--help`)" in line, line
    for flag, typo, meant, then in (("--model", "resnet2O", "resnet20", "valid: "),
                                    ("--dataset", "mnist", "fashion-mnist", "choose one of: "),
                                    ("--estimator", "rest", "reste", "valid: ")):
        line = _one_line(capsys, ["train", flag, typo, "--print-config"])
        assert f"unknown {flag[2:]} {typo!r}; did you mean {meant!r}? {then}" in line, line
    line = _one_line(capsys, ["train", "--estimator", "zzz", "--print-config"])
    assert "unknown estimator 'zzz'; valid: " in line  # nothing close: no guess
    with pytest.raises(cli.UsageError, match="unknown estimator 'rest'; did you mean 'reste'[?] valid: "):
        reste.get_estimator("rest")  # the Python API's error too (the registry owns the hint)
    # (review newuser5, suggestions) a preset and a grid axis too
    line = _one_line(capsys, ["train", "--preset", "cifar10-resnet20-1wa", "--print-config"])
    assert "unknown preset 'cifar10-resnet20-1wa'; did you mean 'cifar10-resnet20-1w1a'? valid: " in line, line
    line = _one_line(capsys, ["sweep", "--grid", "o_ed=2,3", "--dataset", "digits", "--out", "x", "--dry-run"])
    assert "unknown grid axis 'o_ed'; did you mean 'o_end'? valid: " in line, line
    line = _one_line(capsys, ["sweep", "--grid", "qqqq=2,3", "--dataset", "digits", "--out", "x", "--dry-run"])
    assert "unknown grid axis 'qqqq'; valid: " in line, line


def test_durations_and_counts_read_as_words():
    """The done line and `reste show` said `93612s`; a sweep's lines already said `26h00m`. And `1 epochs`,
    `1 batch norms folded`."""
    from reste import engine
    from reste.export.exporter import format_report
    from reste.wording import count, duration, taken_at

    assert [duration(s) for s in (0.4, 42, 59.4, 60, 599, 3600, 93612)] == ["0s", "42s", "59s", "1m", "10m", "1h00m",
                                                                          "26h00m"]
    assert (count(0, "epoch"), count(1, "epoch"), count(2, "epoch")) == ("0 epochs", "1 epoch", "2 epochs")
    # (review dist) `reste eval` of a checkpoint inside the first epoch said "epoch 0 + 10 steps"
    assert (taken_at(3, 0), taken_at(3, None), taken_at(0, 10)) == ("epoch 3", "epoch 3", "step 10 of epoch 1")
    result = {"best_acc": 93.1, "best_epoch": 900, "best_top5": None, "final_acc": 92.9, "epochs": 1000,
              "seconds": 93612.0, "run_dir": "r"}
    assert engine.format_result(result).endswith("after 1000 epochs, 26h00m -> r")
    report = {"params": 1, "binary_params": 1, "float_bytes": 4, "file_bytes": 1, "binary_bytes": 1, "fp_bytes": 0,
              "header_bytes": 0, "ratio": 4.0, "bound": 4.0, "gap": 0.0, "param_bound": 4.0, "binary_layers": 2,
              "folded_batch_norms": 1, "affine_ops": 0}
    assert "2 binary layers, 1 batch norm folded, 0 kept as affine" in format_report(report)


def test_show_counts_one_epoch_as_one(tmp_path, capsys):
    run = tmp_path / "r"
    assert main(["train", "--epochs", "1", "--out", str(run), "--no-progress", "--threads", "1"]) == 0
    capsys.readouterr()
    assert main(["show", str(run)]) == 0
    text = capsys.readouterr().out
    assert "on digits: 1 epoch, batch 64" in text and "progress   finished: 1 of 1 epoch\n" in text, text
    assert re.search(r", \d+s of training\n", text), text


def test_eval_json_is_one_object(capsys, tmp_path):
    run = tmp_path / "r"
    assert main(["train", "--epochs", "1", "--out", str(run), "--no-progress", "--threads", "1"]) == 0
    capsys.readouterr()
    assert main(["eval", str(run), "--json"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    r = json.loads(out)
    assert (r["model"], r["dataset"], r["epoch"], r["step"], r["amp"]) == ("digits_1w1a", "digits", 1, 0, "none")
    assert r["images"] == 360 and r["top1"] == r["stored_top1"] and 0 <= r["top5"] <= 100 and r["seconds"] >= 0
    assert r["loss"] > 0


def test_presets_align_their_numbers_and_summary_list_has_a_header(capsys):
    assert main(["presets"]) == 0
    rows = capsys.readouterr().out.splitlines()
    header = rows[0]
    table = rows[1:rows.index("")]
    for column in ("epochs", "batch"):  # right-aligned: each number's last digit under the header's last letter
        end = header.index(column) + len(column)
        assert all(row[end - 1].isdigit() and row[end] == " " for row in table), (column, table)
    assert main(["summary", "--list"]) == 0
    assert capsys.readouterr().out.splitlines()[0].split() == ["model", "data", "set", "precision"]


def test_predict_says_when_it_replaces_a_file(capsys, tmp_path):
    import numpy as np

    run = tmp_path / "r"
    assert main(["train", "--epochs", "1", "--out", str(run), "--no-progress", "--threads", "1"]) == 0
    assert main(["export", str(run), str(tmp_path / "m.rbnn")]) == 0
    np.save(tmp_path / "x.npy", np.zeros((2, 1, 8, 8), np.float32))
    capsys.readouterr()
    for again in ("", " (replacing the file that was there)"):
        assert main(["predict", str(tmp_path / "m.rbnn"), str(tmp_path / "x.npy")]) == 0
        out = capsys.readouterr().out
        assert f"written to {tmp_path / 'x.pred.npy'}{again} (" in out
        assert re.search(r" \(\d+\.\d\ds, [\w/]+ kernels\)$", out.strip()), out  # seconds as the epoch line writes them


def test_a_closed_pipe_at_an_epochs_line_still_writes_its_best(tmp_path):
    """(review docs #2) `reste train | head -2`: the epoch's line, printed once last.pt holds the epoch, met the
    closed pipe, and the run ended before best.pt (and top/) took that epoch: `reste show` said epoch 2 was the
    best, best.pt held epoch 1."""
    import torch

    from reste.config import TrainConfig
    from reste.engine import train
    from reste.rundir import top_checkpoints

    lines: list[str] = []

    def log(line: str) -> None:
        if line.startswith("epoch 2/"):
            raise BrokenPipeError(32, "Broken pipe")
        lines.append(line)

    run = tmp_path / "r"
    config = TrainConfig(epochs=3, threads=1, keep_top=2, estimator_options={"o_end": 1.5})
    with pytest.raises(BrokenPipeError):
        train(config, run, progress=False, log=log)
    assert [json.loads(x)["epoch"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    best = max(json.loads(x)["test_acc"] for x in (run / "metrics.jsonl").read_text().splitlines())
    saved = torch.load(run / "best.pt", weights_only=False)
    assert saved["epoch"] == 2 and best == json.loads((run / "metrics.jsonl").read_text().splitlines()[1])["test_acc"]
    assert sorted(top_checkpoints(run)) == [1, 2]


def test_a_path_argument_starting_with_a_tilde_is_the_home_folder(tmp_path, monkeypatch):
    """(review newuser #12) `--out=~/a` (which the shell leaves as it is) made a folder named `~` in the current
    one, which `rm -rf ~` would then "clean up"."""
    home, here = tmp_path / "home", tmp_path / "here"
    home.mkdir()
    here.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(here)
    assert main(["train", "--epochs", "1", "--out=~/run", "--no-progress", "--threads", "1"]) == 0
    assert (home / "run" / "last.pt").is_file() and not (here / "~").exists()
    assert main(["export", "~/run", "~/m.rbnn"]) == 0
    assert (home / "m.rbnn").is_file() and main(["show", "~/run"]) == 0 and not (here / "~").exists()
    (home / "noop.py").write_text("")  # (review rev12 #3) the flags a type= or the plugin loader reads first
    with pytest.warns(UserWarning, match="registered no estimator, model or data set"):
        assert main(["train", "--epochs", "1", "--out=~/run2", "--no-progress", "--threads", "1",
                     "--tensorboard=~/tb", "--plugin=~/noop.py"]) == 0
    assert list((home / "tb").glob("events.out.tfevents.*")) and not (here / "~").exists()


_CTRL_C_IN_THE_IMPORT = """
import os, signal, sys

class Bomb:
    def __del__(self):  # a Ctrl-C arriving here raises where Python only prints it ("Exception ignored")
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(10000):
            pass

NTH = int(sys.argv[2])


class Finder:
    seen = 0

    def find_spec(self, name, path=None, target=None):
        if name == "reste.cli":
            Finder.seen += 1
            if Finder.seen == NTH:  # (python -m reste.cli finds it once before it runs)
                Bomb()
        return None

sys.meta_path.insert(0, Finder())
if sys.argv[1] == "reste":
    from reste.__main__ import run
    sys.argv = ["reste", "summary", "digits"]
    sys.exit(run())
import runpy  # python -m reste.cli, torchrun's form (review rev13 #4)
sys.argv = ["reste.cli", "summary", "digits"]
runpy.run_module("reste.cli", run_name="__main__", alter_sys=True)
"""


def test_a_ctrl_c_while_the_command_imports_torch_ends_it(tmp_path):
    """(review combos #3) a Ctrl-C in the first seconds (torch's import) was raised inside callbacks: one was
    printed as "Exception ignored" and the command ran to its end; another aborted the process in C++. It is noted
    during the import and ends the command after it, with the one line."""
    import signal
    import subprocess

    script = tmp_path / "c.py"
    script.write_text(_CTRL_C_IN_THE_IMPORT)
    for form, nth in (("reste", "1"), ("-m", "2")):
        proc = subprocess.run([sys.executable, str(script), form, nth], capture_output=True, text=True, timeout=120,
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # (CI ignores it)
        assert proc.returncode == 130 and proc.stderr == "reste: interrupted\n", (form, proc.returncode, proc.stderr)
        assert "digits" not in proc.stdout


_IMPORT_THAT_HANGS = """
import os, signal, sys, threading, time

class Finder:
    def find_spec(self, name, path=None, target=None):
        if name == "reste.cli":
            def ctrl_c_twice():
                for _ in range(2):
                    time.sleep(1.0)
                    os.kill(os.getpid(), signal.SIGINT)
            threading.Thread(target=ctrl_c_twice, daemon=True).start()
            time.sleep(600)  # an import that hangs (a stalled network file system)
        return None

sys.meta_path.insert(0, Finder())
from reste.__main__ import run
sys.argv = ["reste", "summary", "digits"]
sys.exit(run())
"""


def test_a_second_ctrl_c_ends_an_import_that_hangs(tmp_path):
    """(review rev13 #9) every Ctrl-C during the import was only noted: one that hangs could not be stopped."""
    import signal
    import subprocess

    script = tmp_path / "h.py"
    script.write_text(_IMPORT_THAT_HANGS)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # (CI ignores it)
    assert proc.returncode == 130 and proc.stderr == "reste: interrupted\n", (proc.returncode, proc.stderr)


def test_a_stray_rank_without_a_world_is_one_process_that_locks_its_folder(capsys, monkeypatch, tmp_path):
    """A job's leftover RANK without WORLD_SIZE > 1: the run has one process, which creates and locks the folder it
    writes (before, no process created or locked it, and the run ended on a FileNotFoundError: review dist #4)."""
    from reste.distributed import env_rank
    from reste.rundir import LOCK_NAME

    for name in ("WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RANK", "1")
    assert env_rank() == 0
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert env_rank() == 0
    out = tmp_path / "run"
    assert main(["train", "--epochs", "1", "--threads", "1", "--no-progress", "--out", str(out)]) == 0
    assert (out / "config.json").is_file() and (out / "last.pt").is_file() and (out / LOCK_NAME).is_file()
    assert "error" not in capsys.readouterr().err


_SIGNAL_IN_THE_COMMAND = """
import os, signal, sys
from reste import cli

sig = getattr(signal, sys.argv[1])
real = cli._expand_home

def then_a_signal(args):  # every command passes here once its flags are read
    os.kill(os.getpid(), sig)
    return real(args)

cli._expand_home = then_a_signal
from reste.__main__ import run
sys.argv = ["reste", *sys.argv[2:]]
sys.exit(run())
"""


@pytest.mark.skipif(os.name == "nt", reason="POSIX signals")
def test_a_stop_signal_in_a_command_without_handlers_of_its_own_ends_it_with_one_line(tmp_path):
    """(review chaos2, suggestion) SIGTERM in `reste report`, `eval` or `export` took Python's default action: exit
    143 without a word (and its temporary files left). One line now; an ignored SIGHUP (nohup) stays ignored."""
    import signal

    script = tmp_path / "s.py"
    script.write_text(_SIGNAL_IN_THE_COMMAND)

    def run(*argv, ignore_hup=False):
        def setup():
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.signal(signal.SIGHUP, signal.SIG_IGN if ignore_hup else signal.SIG_DFL)

        return subprocess.run([sys.executable, str(script), *argv], capture_output=True, text=True, timeout=300,
                              preexec_fn=setup, cwd=tmp_path)

    proc = run("SIGTERM", "eval", "nowhere")
    assert (proc.returncode, proc.stderr) == (143, "reste: stopped by SIGTERM; run the same command again\n")
    proc = run("SIGHUP", "eval", "nowhere")
    assert proc.returncode == 129
    assert proc.stderr == "reste: stopped by SIGHUP (its terminal closed); run the same command again\n"
    proc = run("SIGHUP", "eval", "nowhere", ignore_hup=True)  # (nohup's)
    assert proc.returncode == 2 and proc.stderr.startswith("reste: error: "), proc.stderr
    proc = run("SIGTERM", "train", "--out", "r", "--epochs", "1", "--no-progress")
    assert proc.returncode == 143 and proc.stderr.startswith("reste: stopped by SIGTERM; nothing was saved in r"), \
        proc.stderr
    assert not (tmp_path / "r").exists()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork")
def test_a_process_forked_from_the_command_gets_the_default_stop_back():
    """A DataLoader worker forked from `reste eval` must not raise the command's stop in its own loop (a traceback
    from the worker as the loader ends it with SIGTERM)."""
    code = textwrap.dedent("""
        import os, signal
        from reste import cli
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        cli._stops_raise()
        assert signal.getsignal(signal.SIGTERM) is cli._raise_stopped
        pid = os.fork()
        if pid == 0:
            os._exit(0 if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL else 3)
        print(os.waitpid(pid, 0)[1] >> 8)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == "0", proc.stderr


_STOP_AT_EXIT = """
import atexit, os, signal, sys
atexit.register(lambda: os.kill(os.getpid(), signal.SIGTERM))  # a stop while Python runs its exit callbacks
from reste.__main__ import run
sys.argv = ["reste", "presets"]
sys.exit(run())
"""

_STOP_IN_A_FINALIZER = """
import os, signal, sys
from reste import cli

class Finalized:
    def __del__(self):  # a stop raised here is only printed by Python ("Exception ignored"), and the command goes on
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(10000):
            pass

real = cli._expand_home

def with_a_finalizer(args):
    Finalized()
    return real(args)

cli._expand_home = with_a_finalizer
from reste.__main__ import run
sys.argv = ["reste", "presets"]
sys.exit(run())
"""


@pytest.mark.skipif(os.name == "nt", reason="POSIX signals")
@pytest.mark.parametrize("script", ["at_exit", "in_a_finalizer"])
def test_a_stop_the_command_cannot_raise_where_it_lands_still_stops_it(tmp_path, script):
    """(review chaos6 #2, #4) A SIGTERM in Python's exit callbacks, or in a finalizer, raised the command's stop
    where Python only prints an exception: a traceback, and exit status 0 for a stopped command."""
    import signal

    (tmp_path / "s.py").write_text(_STOP_AT_EXIT if script == "at_exit" else _STOP_IN_A_FINALIZER)
    proc = subprocess.run([sys.executable, str(tmp_path / "s.py")], capture_output=True, text=True, timeout=300,
                          preexec_fn=lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL))
    if script == "at_exit":  # the default action: killed by it, without a word
        assert proc.returncode == -signal.SIGTERM and "Traceback" not in proc.stderr, (proc.returncode, proc.stderr)
    else:  # it ran to its end: said stopped all the same
        assert proc.returncode == 143, (proc.returncode, proc.stderr)
        assert proc.stderr.endswith("reste: stopped by SIGTERM; run the same command again\n"), proc.stderr


def test_a_print_config_stopped_gets_no_run_folders_advice():
    """(review chaos6 #6) --print-config makes no run."""
    assert cli._kept(["train", "--print-config", "--out", "x"]) == ""
    assert cli._kept(["train", "--out", "x"]).startswith("nothing was saved in x")


def test_a_stopped_resume_that_extends_a_finished_run_is_not_called_finished(tmp_path):
    """(review chaos6 #7) `--resume R --epochs 4 --force` stopped before its first step: R's settings still plan the
    epochs it finished."""
    run = tmp_path / "r"
    assert main(["train", "--epochs", "1", "--threads", "1", "--no-progress", "--out", str(run)]) == 0
    assert cli._kept(["train", "--resume", str(run)]) == f"the run had finished: {run} holds it whole"
    assert cli._kept(["train", "--resume", str(run), "--epochs", "4", "--force"]) == (
        f"{run} keeps what the run saved, its finished epochs at least: run the same command again")


def test_a_warning_while_the_command_imports_is_one_line(monkeypatch, capsys):
    """(review install1 #3) The one-line format was installed once reste.cli was imported: a warning given during
    that import (the kernel cache refused, a bad RESTE_FUSED) came in Python's two-line form, with reste's source
    line, and then again as `reste: warning:` where the same check ran once more."""
    import warnings

    from reste import _startup

    monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)  # (restored after the test)
    monkeypatch.setattr(sys, "argv", ["reste", "--version"])

    def load():
        warnings.warn("the cache is refused", RuntimeWarning)

        def command():
            from reste.errors import one_line_warnings

            one_line_warnings()  # (as reste.cli.command does: again, it keeps what it has shown)
            warnings.warn("the cache is refused", UserWarning)
            return 0
        return command

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        assert _startup.run(load) == 0
    assert capsys.readouterr().err == "reste: warning: the cache is refused\n"


_WARNING_IN_THE_IMPORT = """
import sys, warnings

class Finder:
    def find_spec(self, name, path=None, target=None):
        if name == "reste.cli":
            warnings.warn("the kernel cache is refused", RuntimeWarning)
        return None

sys.meta_path.insert(0, Finder())
from reste.__main__ import run
sys.argv = ["reste", "--version"]
sys.exit(run())
"""


def test_a_warning_while_the_command_imports_is_one_line_in_a_new_process(tmp_path):
    """(review install1 #3) The same, as the command meets it: Python's own warning format, not pytest's."""
    import subprocess

    script = tmp_path / "w.py"
    script.write_text(_WARNING_IN_THE_IMPORT)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stderr == "reste: warning: the kernel cache is refused\n", proc.stderr


@pytest.mark.parametrize("ending", ["stopped", "refused", "failed", "returned"])
def test_the_process_group_is_left_however_the_command_ends(tmp_path, monkeypatch, capsys, ending):
    """(review mp1 #1) Only a command that returned left its process group: after a stop (Preempted), a usage error
    or a failure each torchrun worker exited with its gloo group alive, which can abort a process at exit ("terminate
    called without an active exception")."""
    import signal

    import torch.distributed as dist

    from reste import cli, engine
    from reste.errors import UsageError

    def then(args):
        dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
        if ending == "stopped":
            raise engine.Preempted("stopped by SIGTERM at epoch 1, step 3/45; last.pt holds it", signal.SIGTERM)
        if ending == "refused":
            raise UsageError("a bad setting")
        if ending == "failed":
            raise RuntimeError("a collective failed")

    monkeypatch.setattr(cli, "_expand_home", then)
    try:
        status = main(["summary", "digits"])
    finally:
        left = not dist.is_initialized()
        if not left:
            dist.destroy_process_group()
    assert left, ending
    assert status == {"stopped": 143, "refused": 2, "failed": 1, "returned": 0}[ending], capsys.readouterr().err


@pytest.mark.skipif(not hasattr(__import__("signal"), "SIGUSR1"), reason="POSIX signals")
@pytest.mark.parametrize("world", ["2", None])
def test_a_torchrun_worker_ignores_stop_signals_once_its_command_has_ended(monkeypatch, world):
    """(review mp1 #2) torchrun SIGTERMs the other workers once one has ended: after a stop they all agreed on, one
    still exiting died of it, reported -15 (SIGTERM) instead of its 143 or 138. A worker whose command has ended
    ignores the stop signals; one process takes their default action back, as before (review chaos6 #2)."""
    import signal

    from reste import cli

    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT, signal.SIGHUP)}
    for name, value in (("WORLD_SIZE", world), ("RANK", "1" if world else None), ("MASTER_ADDR", "127.0.0.1"),
                        ("MASTER_PORT", "29500")):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    monkeypatch.setattr(cli, "main", lambda: 143)
    monkeypatch.setattr(sys, "argv", ["reste", "train", "--debug"])  # (warnings left as they are)
    try:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        assert cli.command() == 143
        after = {sig: signal.getsignal(sig) for sig in saved}
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
    # (torchrun's SIGTERM alone: a Ctrl-C still ends a worker that hangs in its exit, review diff25, suggestion 3)
    assert after[signal.SIGTERM] == (signal.SIG_IGN if world else signal.SIG_DFL), after
    assert after[signal.SIGINT] == signal.SIG_DFL and after[signal.SIGUSR1] == saved[signal.SIGUSR1], after


def test_ux1_a_missing_value_a_dry_runs_pipe_and_debug_keep_one_line_and_the_status(capsys, monkeypatch):
    """(review ux1 #1) --resume or --plugin without a value printed a hidden pre-parser's usage and error before
    reste's line; (#3) `reste sweep --dry-run | head` said a sweep stopped, though nothing trained; (#4) --debug
    turned bad input's status 2 (and a folder in use's 75) into a traceback's 1."""
    from reste.experiments import cli as experiments_cli

    for argv in (["train", "--resume"], ["eval", "--plugin"], ["sweep", "--out", "x", "--plugin"]):
        assert main(argv) == 2
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 1 and err[0].startswith("reste: error: argument") and "expected one argument" in err[0]

    def closed(_args):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(experiments_cli, "cmd_sweep", closed)
    assert main(["sweep", "--out", "z", "--grid", "batch-size=32,64", "--dry-run"]) == 141
    assert capsys.readouterr().err == ""
    assert main(["sweep", "--out", "z", "--grid", "batch-size=32,64"]) == 141
    assert "run the same command again to continue" in capsys.readouterr().err
    assert main(["--debug", "train", "--estimator", "rste", "--print-config"]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and err.splitlines()[-1].startswith(
        "reste: error: unknown estimator 'rste'")


def test_predictions_on_a_raw_stdout_are_written_whole(monkeypatch):
    """(review ux1 #2) under python -u (PYTHONUNBUFFERED=1) stdout's buffer is a raw stream whose write takes what
    the pipe takes and returns the count: one write cut the predictions and said all were written."""
    import io

    from reste.export.cli import _write_stdout

    class Raw(io.RawIOBase):
        def __init__(self):
            self.got, self.calls = bytearray(), 0

        def writable(self):
            return True

        def write(self, data):
            self.calls += 1
            if self.calls % 3 == 0:
                return None  # a non-blocking pipe that is full now
            chunk = bytes(data[:7])
            self.got += chunk
            return len(chunk)

    raw = Raw()

    class Out:
        buffer = raw

        @staticmethod
        def flush():
            pass

    monkeypatch.setattr(sys, "stdout", Out)
    text = "file,class,name\n" + "".join(f"img{i}.png,{i % 10},c{i % 10}\n" for i in range(50))
    _write_stdout(text)
    assert bytes(raw.got) == text.encode()


@pytest.mark.parametrize("flag, typo, meant", [("--optimizer", "adm", "adam"), ("--scaling", "chanel", "channel"),
                                               ("--amp", "bf61", "bf16"), ("--o-schedule", "cosin", "cosine"),
                                               ("--indicators", "paperr", "paper"), ("--data-device", "cppu", "cpu")])
def test_a_typo_in_a_choice_the_config_checks_gets_a_suggestion(capsys, flag, typo, meant):
    """(review ux1 #6) typos in an estimator, model, data set or preset name got "did you mean", these did not."""
    line = one_line_error(capsys, "train", flag, typo, "--print-config")
    assert f"{typo!r}; did you mean {meant!r}? valid: " in line


def test_the_help_of_plot_estimators_gives_the_librarys_defaults(capsys):
    """(review arch3 #4) `reste plot estimators` passed its own copies of plot_estimators' defaults (the file's name
    and the progress): it now passes only what was given, and its help, which cannot import matplotlib to ask, is
    tied to the library's by this test."""
    import inspect

    from reste.experiments.plots import plot_estimators

    with pytest.raises(SystemExit):
        main(["plot", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    defaults = inspect.signature(plot_estimators).parameters
    assert f"(default {defaults['out'].default};" in text
    assert f"(default {defaults['progress'].default})" in text


def test_text_from_received_files_reaches_the_terminal_escaped(tmp_path, capsys):
    """(review sec3 #6) a received sweep.json's label (and a packed model's name, an image file's name) went to the
    terminal as it was: ESC sequences set the window's title and erased lines. They are escaped as repr does."""
    from reste.experiments import sweep as sw
    from reste.wording import printable

    assert printable("a\x1b]0;T\x07\x1b[2K\rB") == "a\\x1b]0;T\\x07\\x1b[2K\\rB"
    assert printable("café 鳥") == "café 鳥"
    # (review diff28, suggestion 5) every kind of space stays
    assert printable("photo\u00a0001.png 写真\u3000一") == "photo\u00a0001.png 写真\u3000一"
    assert printable("a\u2028b\u200e") == "a\\u2028b\\u200e"
    assert printable("a\u2029b") == "a\\u2029b"  # (review mut11 #14) the paragraph separator too (Zp, as Zl)
    out = tmp_path / "sw"
    sw.run_sweep(TrainConfig(dataset="digits", epochs=1, threads=1), {"estimator": ["ste"]}, [0], out, report=False,
                 log=lambda _m: None)
    manifest = json.loads((out / "sweep.json").read_text())
    manifest["settings"][0]["label"] = "\x1b]0;TITLE\x07\x1b[2K\rFAKE=1"
    (out / "sweep.json").write_text(json.dumps(manifest))
    capsys.readouterr()
    for argv in (["show", str(out)], ["report", str(out), "--no-plots"]):
        main(argv)
        said = capsys.readouterr()
        assert "\x1b" not in said.out + said.err and "x1b]0;TITLE" in said.out, said
    assert "\x1b" not in (out / "results.md").read_text()
    # (review diff28 #4) and in the report's own lines: a run left out, named by its setting's label
    from reste import rundir

    run = out / manifest["settings"][0]["runs"]["0"]
    (run / "metrics.jsonl").unlink()
    (run / "last.pt").unlink()
    (out / "runs.csv").unlink()
    rundir.record_divergence(run, 1, 3)
    main(["report", str(out), "--no-plots"])
    said = capsys.readouterr()
    assert "is left out: it diverged" in said.out + said.err and "\x1b" not in said.out + said.err, said
    # (review sec3 #7) a grid axis is a header of results.csv and runs.csv: one that names no setting (a formula)
    # makes the manifest damaged, in one line
    manifest["grid"] = {'=HYPERLINK("http://x","y")': manifest["grid"]["estimator"]}
    (out / "sweep.json").write_text(json.dumps(manifest))
    assert main(["report", str(out), "--no-plots"]) == 2
    assert "its grid has an axis '=HYPERLINK(" in capsys.readouterr().err


def test_a_flag_of_another_command_names_that_command(capsys):
    """(review ux1, suggestion 4) `reste train --grid ...` said only that a plugin's flags need --plugin, and
    `reste train --seeds` suggested --seed: a flag that another command takes names it."""
    assert one_line_error(capsys, "train", "--grid", "estimator=ste,reste").endswith(
        "(--grid is a flag of reste sweep; see `reste train --help`)")
    line = one_line_error(capsys, "train", "--grid", "a=1", "--seeds", "0")
    assert "(did you mean --seed? --grid and --seeds are flags of reste sweep;" in line  # (both: diff29, sugg. 1)
    assert "(--json is a flag of reste eval, show and predict;" in one_line_error(capsys, "train", "--json")
    assert "did you mean --threads?" in one_line_error(capsys, "train", "--threds", "1")  # (its own flags first)
    # (review mut11 #15) an owner is named only where every unknown flag has one
    line = one_line_error(capsys, "train", "--grid", "a=1", "--zzzz-nonsense")
    assert "flag of reste sweep" not in line, line


def test_the_start_of_several_names_lists_them():
    """(review newuser4, suggestion 5) `--preset cifar10-resnet20` suggested the -ste row of the nine that start so;
    the start of several names lists them (the first four)."""
    from reste.errors import did_you_mean

    assert did_you_mean("cifar10-resnet20", ["cifar10-resnet20-1w1a", "cifar10-resnet20-ste", "imagenet-resnet18"]) \
        == "did you mean one of 'cifar10-resnet20-1w1a', 'cifar10-resnet20-ste'? "
    assert did_you_mean("r", ["ste", "reste", "rbnn", "a", "rb", "rc", "rd"]).endswith("'rc', ...? ")
    # (review mut11 #15) exactly four are listed whole
    assert did_you_mean("a", ["ab", "ac", "ad", "ae"]) == "did you mean one of 'ab', 'ac', 'ad', 'ae'? "
    assert did_you_mean("digit", ["digits", "fashion-mnist"]) == "did you mean 'digits'? "  # one: the close one
    # (review diff29 #1) another case of a name is that name, though longer ones start with it
    assert did_you_mean("ResNet20", ["resnet20", "resnet20_1w1a", "resnet20_bireal"]) == "did you mean 'resnet20'? "


def test_debug_keeps_the_status_of_an_unexpected_error(capsys, monkeypatch):
    """(review diff28 #7) --debug re-raised what _unexpected words: a refused read's status 2 became a traceback's 1.
    The traceback comes first, then the same line and status."""
    def unreadable(_args):
        raise PermissionError(13, "Permission denied", "sw/runs")

    monkeypatch.setattr(cli, "cmd_presets", unreadable)
    assert main(["presets"]) == 2
    plain = capsys.readouterr().err
    assert main(["--debug", "presets"]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and err.endswith(plain) and "cannot read sw/runs" in plain

    def broken(_args):
        raise RuntimeError("boom")

    monkeypatch.setattr(cli, "cmd_presets", broken)
    assert main(["--debug", "presets"]) == 1
    assert capsys.readouterr().err.splitlines()[-1] == "reste: error: RuntimeError: boom"
