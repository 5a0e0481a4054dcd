"""reste train --tensorboard (events read back and compared with metrics.jsonl) and --keep-top K."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from reste import engine, rundir
from reste.indicators import MEASURE
from reste.checkpoint import load_checkpoint, model_from_checkpoint
from reste.cli import main
from reste.config import TrainConfig
from reste.indicators import estimating_error, indicator_layers
from reste.rundir import keep_top, top_checkpoints

TRAIN = ["train", "--no-progress", "--threads", "1"]
METRIC_TAGS = {"train_loss": "train/loss", "train_acc": "train/acc", "test_loss": "test/loss",
               "test_acc": "test/acc", "test_top5": "test/top5", "lr": "epoch/lr", "time": "epoch/time",
               "o": "schedule/o", "estimating_error": "indicators/estimating_error",
               "gradient_stability": "indicators/gradient_stability"}


def train(capsys, *argv):
    code = main([*TRAIN, *argv])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...]} of every scalar event in ``folder``, in the order written
    (read raw, so an epoch logged twice shows twice)."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    def opened_at(path: Path) -> float:
        # the first event's time: the names sort by whole seconds, then by PID and a per-process writer count as
        # text ("...10" before "...9"), not in the order written when two writers open in one second
        return next(iter(EventFileLoader(str(path)).Load())).wall_time

    out: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(folder.glob("events.out.tfevents.*"), key=opened_at):
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:  # the loader turns simple values into scalar tensors
                if value.metadata.plugin_data.plugin_name == "scalars":
                    out.setdefault(value.tag, []).append((event.step, value.tensor.float_val[0]))
    return out


@pytest.fixture(scope="module")
def logged(tmp_path_factory, one_thread_module):
    """A 2-epoch digits run with --tensorboard --indicators."""
    pytest.importorskip("tensorboard")
    run = tmp_path_factory.mktemp("tb") / "run"
    assert main([*TRAIN, "--epochs", "2", "--out", str(run), "--tensorboard", "--indicators"]) == 0
    return run


def test_every_metric_is_logged_at_its_epoch(logged):
    events = scalars(logged / "tensorboard")
    lines = metrics(logged)
    assert set(lines[0]) - {"epoch", MEASURE} == set(METRIC_TAGS)  # the table above covers the whole line
    for key, tag in METRIC_TAGS.items():
        assert [s for s, _ in events[tag]] == [1, 2], tag
        for (_, value), line in zip(events[tag], lines):
            assert value == pytest.approx(line[key], rel=1e-6, abs=1e-12), tag  # events hold float32


def test_the_schedule_is_logged_per_layer(logged):
    events = scalars(logged / "tensorboard")
    o = events["schedule/conv1.weight_estimator/o"]
    assert [s for s, _ in o] == [1, 2]
    assert o[1][1] > o[0][1]  # o moved between the epochs
    assert [v for _, v in o] == pytest.approx([m["o"] for m in metrics(logged)])
    for layer in ("conv1", "conv2"):
        for role in ("weight_estimator", "input_estimator"):
            assert f"schedule/{layer}.{role}/o" in events


def test_the_indicators_are_logged_per_layer(logged):
    events = scalars(logged / "tensorboard")
    ckpt = load_checkpoint(logged / "last.pt")
    model = model_from_checkpoint(ckpt)  # the weights after epoch 2, with their schedule state
    layers = indicator_layers(model)
    assert layers
    for name, layer in layers:
        error = events[f"indicators/{name}/estimating_error"]
        assert [s for s, _ in error] == [1, 2]
        assert error[-1][1] == pytest.approx(float(estimating_error(layer)), rel=1e-5)
        stability = events[f"indicators/{name}/gradient_stability"]
        assert [s for s, _ in stability] == [1, 2] and all(v >= 0 for _, v in stability)


def test_the_config_goes_in_as_hparams(logged):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    events = EventAccumulator(str(logged / "tensorboard"))
    events.Reload()
    content = events.PluginTagToContent("hparams")
    start = HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["epochs"].number_value == 2
    assert start.hparams["estimator"].string_value == "reste"
    assert start.hparams["indicators"].string_value == "general"
    assert start.hparams["tensorboard"].string_value == "tensorboard"
    assert not any(k.endswith("_options") for k in start.hparams)  # nested dicts are flattened


def test_resume_logs_no_epoch_twice(capsys, tmp_path, logged):
    run = tmp_path / "run"
    shutil.copytree(logged, run)
    train(capsys, "--resume", str(run), "--epochs", "3", "--force")
    events = scalars(run / "tensorboard")
    for tag in ("test/acc", "schedule/o", "schedule/conv2.input_estimator/o", "indicators/conv1/estimating_error"):
        assert [s for s, _ in events[tag]] == [1, 2, 3], tag
    assert [v for _, v in events["test/acc"]] == pytest.approx([m["test_acc"] for m in metrics(run)], rel=1e-6)
    assert _hparams_sessions(run / "tensorboard") == 1  # (review mut6 #7: a resume wrote them again)


def _hparams_sessions(folder: Path) -> int:
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    return sum(value.metadata.plugin_data.plugin_name == "hparams" and value.tag == "_hparams_/session_start_info"
               for path in folder.glob("events.out.tfevents.*") for event in EventFileLoader(str(path)).Load()
               for value in event.summary.value)


def test_the_paper_modes_measure_is_no_curve(capsys, tmp_path, one_thread_module):
    """(review mut6 #7) A paper-mode run's o_end (how its indicators were measured, in each metrics line) is a
    setting, not a curve: no epoch/indicators_o_end tag."""
    pytest.importorskip("tensorboard")
    run = tmp_path / "run"
    train(capsys, "--epochs", "1", "--out", str(run), "--tensorboard", "--indicators", "paper")
    assert "indicators_o_end" in metrics(run)[0]
    tags = scalars(run / "tensorboard")
    assert "indicators/estimating_error" in tags and not [t for t in tags if "o_end" in t], sorted(tags)


def test_tensorboard_given_on_resume_logs_the_finished_epochs_from_metrics(capsys, tmp_path, one_thread_module):
    pytest.importorskip("tensorboard")
    run = tmp_path / "run"
    train(capsys, "--epochs", "1", "--out", str(run))
    train(capsys, "--resume", str(run), "--epochs", "2", "--force", "--tensorboard")  # tensorboard is free
    events = scalars(run / "tensorboard")
    assert [s for s, _ in events["train/loss"]] == [1, 2]
    assert [v for _, v in events["train/loss"]] == pytest.approx([m["train_loss"] for m in metrics(run)], rel=1e-6)
    assert [s for s, _ in events["schedule/conv1.weight_estimator/o"]] == [2]  # per layer: from now on
    assert json.loads((run / "config.json").read_text())["tensorboard"] == "tensorboard"


def test_a_crash_before_an_epoch_is_logged_is_filled_in_on_resume(capsys, tmp_path, monkeypatch, one_thread_module):
    pytest.importorskip("tensorboard")
    from reste.integrations.tensorboard import TensorBoardLog

    log_epoch = TensorBoardLog.log_epoch

    def dies_at_epoch_2(self, metrics, *args, **kwargs):
        if metrics["epoch"] == 2:
            raise RuntimeError("killed after last.pt, before the events")
        log_epoch(self, metrics, *args, **kwargs)

    run = tmp_path / "run"
    monkeypatch.setattr(TensorBoardLog, "log_epoch", dies_at_epoch_2)
    assert main([*TRAIN, "--epochs", "3", "--out", str(run), "--tensorboard"]) == 1
    assert load_checkpoint(run / "last.pt")["epoch"] == 2
    monkeypatch.setattr(TensorBoardLog, "log_epoch", log_epoch)
    train(capsys, "--resume", str(run))
    events = scalars(run / "tensorboard")
    assert [s for s, _ in events["test/loss"]] == [1, 2, 3]  # epoch 2 from metrics.jsonl
    assert [v for _, v in events["test/loss"]] == pytest.approx([m["test_loss"] for m in metrics(run)], rel=1e-6)
    assert [s for s, _ in events["schedule/conv1.weight_estimator/o"]] == [1, 3]


def test_under_torchrun_only_rank_0_writes(tmp_path):
    pytest.importorskip("tensorboard")
    from test_distributed import _run_fresh

    proc, attempt = _run_fresh(lambda attempt: ("--epochs", "3", "--seed", "3", "--no-progress", "--device", "cpu",
                                                "--indicators", "--tensorboard", "--keep-top", "2",
                                                "--out", str(tmp_path / f"ddp{attempt}")))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / f"ddp{attempt}"
    assert len(list((out / "tensorboard").glob("events.out.tfevents.*"))) == 1
    events = scalars(out / "tensorboard")
    assert "indicators/conv1/gradient_stability" in events
    assert all([s for s, _ in steps] == [1, 2, 3] for steps in events.values())
    assert sorted(top_checkpoints(out)) == _best(metrics(out), 2)


def test_tensorboard_dir_and_a_folder_of_another_run(capsys, tmp_path, one_thread_module):
    pytest.importorskip("tensorboard")
    board = tmp_path / "board"
    train(capsys, "--epochs", "1", "--out", str(tmp_path / "a"), "--tensorboard", str(board))
    assert scalars(board)["test/acc"][0][0] == 1
    assert not (tmp_path / "a" / "tensorboard").exists()
    code = main([*TRAIN, "--epochs", "1", "--out", str(tmp_path / "b"), "--tensorboard", str(board)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "already holds TensorBoard events" in err[0]
    assert not (tmp_path / "b").exists()
    # (review userE #2) a resume checked nothing: another run's events were mixed in, its own epochs hidden; a new
    # run could write into another run's folder
    assert (board / "reste-run.txt").read_text().strip() == str((tmp_path / "a").resolve())
    train(capsys, "--epochs", "1", "--out", str(tmp_path / "c"))
    code = main(["train", "--resume", str(tmp_path / "c"), "--epochs", "2", "--force", "--tensorboard", str(board),
                 "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and f"{board} holds TensorBoard events of another run ({(tmp_path / 'a').resolve()})" in err
    assert len(rundir.read_metrics(tmp_path / "c")) == 1
    code = main([*TRAIN, "--epochs", "1", "--out", str(tmp_path / "d"), "--tensorboard", str(tmp_path / "c")])
    assert code == 2 and "is in another run's folder" in capsys.readouterr().err
    train(capsys, "--epochs", "1", "--out", str(tmp_path / "e"), "--tensorboard")  # its events inside it
    code = main(["train", "--resume", str(tmp_path / "c"), "--epochs", "2", "--force", "--tensorboard",
                 str(tmp_path / "e" / "tensorboard"), "--no-progress"])  # (review rev11 #4: it was taken)
    assert code == 2 and f"is in another run's folder ({(tmp_path / 'e').resolve()})" in capsys.readouterr().err
    project = tmp_path / "project"  # a project's own config.json above the folder: no run's
    project.mkdir()
    (project / "config.json").write_text("{}")
    train(capsys, "--epochs", "1", "--out", str(tmp_path / "f"), "--tensorboard", str(project / "tb"))
    code = main(["train", "--resume", str(tmp_path / "a"), "--epochs", "2", "--force", "--tensorboard", str(board),
                 "--no-progress"])
    assert code == 0, capsys.readouterr().err  # its own folder
    assert [step for step, _ in scalars(board)["test/acc"]] == [1, 2]


def test_without_the_package_one_line_and_exit_2_before_any_data(capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # `import tensorboard` raises ImportError
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)

    def no_data(*args, **kwargs):
        raise AssertionError("data loaded before the tensorboard check")

    monkeypatch.setattr(engine, "load_datasets", no_data)
    code = main([*TRAIN, "--epochs", "1", "--out", str(tmp_path / "run"), "--tensorboard"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("reste: error: ") and "pip install 'reste[tensorboard]'" in err[0]
    assert not (tmp_path / "run").exists()


def test_configs_saved_before_the_fields_still_load():
    data = TrainConfig(epochs=1).resolve().to_dict()
    del data["tensorboard"], data["keep_top"]
    config = TrainConfig.from_dict(data)
    assert config.tensorboard is None and config.keep_top == 0


def test_keep_top_negative_is_one_line(capsys, tmp_path):
    code = main([*TRAIN, "--epochs", "1", "--out", str(tmp_path / "run"), "--keep-top", "-1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--keep-top must be >= 0" in err[0]


# ------------------------------------------------------------------ --keep-top


def _best(lines: list[dict], k: int, upto: int | None = None) -> list[int]:
    kept = [m for m in lines if upto is None or m["epoch"] <= upto]
    return sorted(m["epoch"] for m in sorted(kept, key=lambda m: (-m["test_acc"], m["epoch"]))[:k])


def test_keep_top_2_over_4_epochs(capsys, tmp_path, one_thread_module):
    run = tmp_path / "run"
    train(capsys, "--epochs", "4", "--out", str(run), "--keep-top", "2")
    lines = metrics(run)
    files = top_checkpoints(run)
    assert sorted(files) == _best(lines, 2)
    assert sorted(p.name for p in (run / "top").iterdir()) == sorted(p.name for p in files.values())
    for epoch, path in files.items():
        acc = lines[epoch - 1]["test_acc"]
        assert path.name == f"epoch{epoch:04d}-acc{acc:.2f}.pt"
        ckpt = load_checkpoint(path)  # checks the SHA-256
        assert ckpt["epoch"] == epoch and ckpt["metrics"]["test_acc"] == acc
        result = engine.evaluate_checkpoint(path, device="cpu")
        assert result["top1"] == pytest.approx(acc)

    # a crash after last.pt, before its copy in top/ (and a stray copy of a later epoch): resume repairs
    last = max(files)
    files[last].unlink()
    shutil.copy(run / "last.pt", run / "top" / "epoch0009-acc99.99.pt")
    train(capsys, "--resume", str(run))  # nothing to train; the top set is put right
    assert sorted(top_checkpoints(run)) == _best(lines, 2)
    assert load_checkpoint(top_checkpoints(run)[last])["epoch"] == last

    train(capsys, "--resume", str(run), "--keep-top", "1")  # free to change: the set shrinks to 1
    assert sorted(top_checkpoints(run)) == _best(lines, 1)
    assert json.loads((run / "config.json").read_text())["keep_top"] == 1


# One child imports reste once, runs `reste train --keep-top 2` uninterrupted, then forks one
# grandchild per crash point; each dies with os._exit(137), like kill -9, at its point of the keep-top
# writes of the first epoch whose copy enters the top 2 while an older one drops out: the new copy
# complete but not renamed, renamed, or the old one removed.
_CRASHER = textwrap.dedent("""
    import json, os, pathlib, sys
    from reste import engine, rundir
    from reste.cli import main

    import torch._dynamo  # imported lazily by the first optimizer: here once, not in every child
    from reste.data import load_datasets
    load_datasets("digits")  # imports scikit-learn once too

    base, points, argv = pathlib.Path(sys.argv[1]), sys.argv[2].split(","), sys.argv[3:]
    state = {"epoch": 0, "crash": 0, "point": ""}
    save, replace, unlink = engine._Run.save, os.replace, pathlib.Path.unlink

    def saving(self, e, *args):
        state["epoch"] = e
        return save(self, e, *args)

    def here(point, path):
        return state["epoch"] == state["crash"] and state["point"] == point and path.parent.name == "top"

    def crashing_replace(src, dst):
        if here("tmp-top", pathlib.Path(dst)):
            os._exit(137)
        replace(src, dst)
        if here("after-top", pathlib.Path(dst)):
            os._exit(137)

    def crashing_unlink(self, missing_ok=False):
        unlink(self, missing_ok=missing_ok)
        if here("after-removal", self):
            os._exit(137)

    engine._Run.save, os.replace, pathlib.Path.unlink = saving, crashing_replace, crashing_unlink

    def child(point, crash):
        pid = os.fork()
        if pid == 0:
            state.update(point=point, crash=crash)
            os._exit(main([*argv, "--out", str(base / point)]))
        return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])

    codes = {"full": child("full", 0)}
    acc = [m["test_acc"] for m in rundir.read_metrics(base / "full")]
    ranked = lambda n: sorted(range(1, n + 1), key=lambda e: (-acc[e - 1], e))[:2]
    crash = next(e for e in range(3, len(acc) + 1) if e in ranked(e))
    codes.update({point: child(point, crash) for point in points})
    print(json.dumps({"crash": crash, "codes": codes}))
""")
TOP_CRASHES = ["tmp-top", "after-top", "after-removal"]


@pytest.fixture(scope="module")
def top_crashes(tmp_path_factory):
    """(uninterrupted run, crash epoch, {point: run that died there}), all from one child."""
    base = tmp_path_factory.mktemp("top")
    proc = subprocess.run([sys.executable, "-c", _CRASHER, str(base), ",".join(TOP_CRASHES), *TRAIN, "--epochs", "4",
                           "--keep-top", "2", "--seed", "3"],
                          env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["codes"] == {"full": 0, **{point: 137 for point in TOP_CRASHES}}, (report, proc.stderr)
    return base / "full", report["crash"], {point: base / point for point in TOP_CRASHES}


@pytest.mark.parametrize("point", TOP_CRASHES)
def test_keep_top_after_a_crash_at_each_write_then_resume(top_crashes, point, one_thread):
    full, crash, cuts = top_crashes
    cut = cuts[point]
    assert load_checkpoint(cut / "last.pt")["epoch"] == crash
    engine.resume(cut, progress=False, log=lambda _msg: None)
    kept, wanted = top_checkpoints(cut), top_checkpoints(full)
    assert sorted(kept) == sorted(wanted) == _best(metrics(full), 2)
    assert sorted(p.name for p in (cut / "top").iterdir()) == sorted(p.name for p in wanted.values())
    for e, path in kept.items():
        a, b = load_checkpoint(path), load_checkpoint(wanted[e])
        assert a["epoch"] == e and all(torch.equal(v, b["model"][k]) for k, v in a["model"].items()
                                       if isinstance(v, torch.Tensor))


def test_keep_top_ranks_by_metrics_and_keeps_the_earlier_of_a_tie(tmp_path):
    accs = [50.0, 70.0, 60.0, 70.0, 40.0]
    with open(tmp_path / "metrics.jsonl", "w") as f:
        for epoch, acc in enumerate(accs, 1):
            f.write(json.dumps({"epoch": epoch, "test_acc": acc}) + "\n")
            f.flush()
            keep_top(tmp_path, 2, epoch, f"epoch {epoch}".encode())
            expected = _best([{"epoch": e, "test_acc": a} for e, a in enumerate(accs[:epoch], 1)], 2)
            assert sorted(top_checkpoints(tmp_path)) == expected
    assert (tmp_path / "top" / "epoch0004-acc70.00.pt").read_bytes() == b"epoch 4"
    keep_top(tmp_path, 1, 5, None)  # K smaller, no checkpoint of the epoch (a mid-epoch last.pt)
    assert sorted(top_checkpoints(tmp_path)) == [2]
    keep_top(tmp_path, 3, 1, None)  # resumed from epoch 1: later copies belong to another future
    assert top_checkpoints(tmp_path) == {}


def test_a_full_disk_in_tensorboards_writer_thread_is_one_warning_not_a_traceback(capsys, monkeypatch):
    """(review chaos #7) a disk that filled between two epochs failed TensorBoard's own writer thread, whose
    traceback (threading's excepthook) came before reste's one-line error. It is one warning; another thread's
    exception still goes to the hook there was."""
    import threading
    import warnings

    from reste.integrations import tensorboard

    seen = []
    monkeypatch.setattr(threading, "excepthook", lambda args: seen.append(args.exc_type))
    tensorboard._quiet_writer_thread()
    tensorboard._quiet_writer_thread()  # (once: the hook is not wrapped twice)
    code = compile("def write():\n    raise OSError(28, 'No space left on device')\n",
                   os.path.join(os.sep, "site", "tensorboard", "summary", "writer", "event_file_writer.py"), "exec")
    space: dict = {}
    exec(code, space)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for target in (space["write"], lambda: 1 / 0):
            thread = threading.Thread(target=target)
            thread.start()
            thread.join()
    assert [str(w.message) for w in caught] == [
        "TensorBoard's event writer failed (No space left on device); a resume with --tensorboard writes the missing "
        "events from metrics.jsonl"]
    assert seen == [ZeroDivisionError] and "Traceback" not in capsys.readouterr().err


def test_tensorboard_true_in_python_is_the_bare_flag():
    """(review api, suggestion) TrainConfig(tensorboard=True), the natural spelling of the bare flag in Python, was
    refused ("--tensorboard must be str"); False is off."""
    from reste.errors import UsageError

    assert TrainConfig(tensorboard=True).resolve().tensorboard == rundir.TENSORBOARD_DIR
    assert TrainConfig(tensorboard=False).resolve().tensorboard is None
    with pytest.raises(UsageError, match="^tensorboard is empty; pass a folder, or True for the run's own$"):
        TrainConfig(tensorboard=" ").resolve()
