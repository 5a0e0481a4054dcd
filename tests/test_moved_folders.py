"""Run and sweep folders moved or deleted while a process writes there (review chaos5 #2, #9): a run follows a
folder renamed under it, a deleted one stops it without a write to what its path names now, and a sweep stops
before its next run, naming where its folder went."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from reste import engine, rundir
from reste.config import TrainConfig
from reste.errors import UsageError
from reste.experiments import sweep
from reste.rundir import FolderGone, Place, RunDirectory

LINUX = sys.platform.startswith("linux")
CONFIG = dict(dataset="digits", epochs=3, batch_size=64, threads=1)


def _in_epoch(n: int, monkeypatch, action) -> None:
    """Call ``action()`` as epoch ``n`` (1-based) starts training, once."""
    train_epoch = engine._Run.train_epoch
    done = []

    def wrapped(self, epoch, *a, **kw):
        if epoch + 1 == n and not done:
            done.append(True)
            action()
        return train_epoch(self, epoch, *a, **kw)

    monkeypatch.setattr(engine._Run, "train_epoch", wrapped)


# ------------------------------------------------------------------ Place


def test_place_tells_here_moved_and_deleted(tmp_path):
    folder = tmp_path / "a"
    folder.mkdir()
    place = Place(folder)
    try:
        assert place.locate() == (Place.HERE, folder)
        folder.rename(tmp_path / "b")
        if LINUX:
            assert place.locate() == (Place.MOVED, tmp_path / "b")
        else:
            assert place.locate()[0] == Place.LOST
        folder.mkdir()  # another folder at the old path is not this one
        assert place.locate()[0] != Place.HERE
        shutil.rmtree(tmp_path / "b")
        assert place.locate() == ((Place.DELETED if LINUX else Place.LOST), None)
    finally:
        place.close()


def test_place_keeps_a_relative_path_relative(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("a").mkdir()
    place = Place(Path("a"))
    try:
        Path("a").rename("b")
        if LINUX:
            assert place.locate() == (Place.MOVED, Path("b"))
    finally:
        place.close()


def test_place_without_the_kernels_word_says_lost(tmp_path, monkeypatch):
    """Where the OS cannot say where a folder went (not Linux), a moved folder is neither followed nor called
    deleted."""
    folder = tmp_path / "a"
    folder.mkdir()
    place = Place(folder)
    real = os.readlink
    monkeypatch.setattr(os, "readlink", lambda p, *a, **kw: (_ for _ in ()).throw(OSError("no /proc"))
                        if str(p).startswith("/proc/self/fd/") else real(p, *a, **kw))
    try:
        folder.rename(tmp_path / "b")
        assert place.locate() == (Place.LOST, None)
    finally:
        place.close()


# ------------------------------------------------------------------ a run


@pytest.mark.skipif(not LINUX, reason="following a moved folder needs /proc (Linux)")
def test_a_run_follows_its_folder_renamed_while_it_trains(tmp_path, monkeypatch):
    lines: list[str] = []
    _in_epoch(2, monkeypatch, lambda: (tmp_path / "run").rename(tmp_path / "moved"))
    result = engine.train(TrainConfig(**CONFIG), tmp_path / "run", log=lines.append)
    moved = tmp_path / "moved"
    assert result["run_dir"] == str(moved)
    assert not (tmp_path / "run").exists()  # not made again at the old path
    assert [m["epoch"] for m in rundir.read_metrics(moved)] == [1, 2, 3]
    assert engine.resume(moved, log=lines.append)["epochs"] == 3  # a whole run, resumable where it went
    assert any(f"{tmp_path / 'run'} was moved to {moved}" in line for line in lines), lines
    assert lines[-1].endswith(f"-> {moved}") or any(f"-> {moved}" in line for line in lines)


def test_a_run_whose_folder_is_deleted_and_made_again_stops_without_writing_there(tmp_path, monkeypatch):
    """Review chaos5 #9: another run started at the path of a run folder deleted while it trained. The first run
    wrote on into it (a mix of the two); now it stops at its next write and leaves the new folder alone."""
    run = tmp_path / "run"
    other = {"config.json": b'{"other": 1}\n', "metrics.jsonl": b'{"epoch": 1}\n'}

    def replace() -> None:
        shutil.rmtree(run)
        run.mkdir()
        for name, data in other.items():
            (run / name).write_bytes(data)

    _in_epoch(2, monkeypatch, replace)
    with pytest.raises(FolderGone, match="deleted and a folder made again at its path") as caught:
        engine.train(TrainConfig(**CONFIG), run, log=lambda _m: None)
    if not LINUX:
        assert "moved or deleted" in str(caught.value)
    assert sorted(p.name for p in run.iterdir()) == sorted(other)  # nothing written, nothing removed
    assert all((run / name).read_bytes() == data for name, data in other.items())


def test_the_cli_says_a_deleted_run_folder_in_one_line(tmp_path, monkeypatch, capsys):
    from reste.cli import main

    run = tmp_path / "run"
    _in_epoch(2, monkeypatch, lambda: shutil.rmtree(run))
    code = main(["train", "--dataset", "digits", "--epochs", "3", "--threads", "1", "--no-progress", "--out", str(run)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("reste: error: ") and "was deleted while its run held it" in err[-1], err
    assert not run.exists()  # not made again


def test_a_failed_start_whose_folder_was_replaced_removes_nothing_of_the_new_one(tmp_path):
    run = tmp_path / "run"
    folder = RunDirectory.open(run, fresh=True)
    (run / "config.json").write_text("{}")
    shutil.rmtree(run)
    run.mkdir()
    (run / "config.json").write_text('{"theirs": 1}')
    assert folder.discard() == []
    assert (run / "config.json").read_text() == '{"theirs": 1}'


def test_a_failure_record_makes_no_folder_above_the_run(tmp_path):
    with pytest.raises(FileNotFoundError):
        rundir.record_failure(tmp_path / "gone" / "run", "boom")
    assert not (tmp_path / "gone").exists()
    rundir.record_failure(tmp_path / "run", "boom")  # the run's own folder, as before
    assert "boom" in rundir.failure(tmp_path / "run")


def test_a_sweep_run_log_follows_its_folder(tmp_path):
    log = sweep._file_log(tmp_path / "a" / "train.log")
    (tmp_path / "a").mkdir()
    log("one")
    (tmp_path / "a").rename(tmp_path / "b")
    log("two")
    log.close()
    assert (tmp_path / "b" / "train.log").read_text() == "one\ntwo\n"


# ------------------------------------------------------------------ a sweep


def _sweep_args(out: Path) -> tuple:
    base = TrainConfig(dataset="digits", epochs=1, batch_size=64, threads=1)
    return base, {"estimator": ["ste", "reste"]}, [0], out


@pytest.mark.parametrize("how", ["moved", "deleted"])
def test_a_sweep_stops_before_its_next_run_where_its_folder_went(tmp_path, monkeypatch, how):
    """Review chaos5 #2: the runs after a move trained in full into a folder the sweep made again at the old path,
    and its last line called them failed."""
    out, moved = tmp_path / "sw", tmp_path / "sw2"
    execute = sweep._execute
    calls = []

    def first_then_move(job, stop=None):
        calls.append(job["run_dir"])
        outcome = execute(job, stop)
        if how == "moved":
            out.rename(moved)
        else:
            shutil.rmtree(out)
        return outcome

    monkeypatch.setattr(sweep, "_execute", first_then_move)
    lines: list[str] = []
    with pytest.raises(UsageError) as caught:
        sweep.run_sweep(*_sweep_args(out), log=lines.append)
    assert len(calls) == 1
    assert not out.exists()  # nothing made again at the old path
    if not LINUX:  # (where the kernel cannot tell a deleted folder from a moved one)
        assert "was deleted while the sweep ran" in str(caught.value) or "moved or deleted" in str(caught.value)
        return
    if how == "deleted":  # Linux tells it was deleted (review mut6 #2: either message passed)
        assert str(caught.value) == (f"the sweep folder {out} was deleted while the sweep ran: the sweep stops; the "
                                     "same command starts it again")
        return
    assert str(caught.value) == (f"the sweep folder {out} was moved to {moved} while the sweep ran: the sweep stops; "
                                 f"run the same command with --out {moved} to continue there")
    assert not (moved / rundir.SWEEP_LOCK).exists()  # its lock file went with it, and was removed there
    monkeypatch.setattr(sweep, "_execute", execute)
    rows = sweep.run_sweep(*_sweep_args(moved), log=lines.append)  # the command it names goes on
    assert any("1 already finished" in line for line in lines), lines
    assert len(rows) == 2 and all(r["n"] == 1 for r in rows), rows
    assert json.loads((moved / "sweep.json").read_text())


def test_a_sweep_run_does_not_make_its_runs_folder_again(tmp_path):
    run_dir = tmp_path / "runs" / "ste-x" / "seed0"
    job = {"run_dir": str(run_dir), "config": TrainConfig(dataset="digits", epochs=1).to_dict(), "resume": False}
    outcome = sweep._execute(job)
    assert outcome["status"] == "failed" and "No such file or directory" in outcome["error"]
    assert not (tmp_path / "runs").exists()


# ------------------------------------------------------------------ review diff19


def _after_the_start(monkeypatch, action) -> None:
    """Call ``action()`` once the run's data is loaded (``_Run`` built), before its first write."""
    init = engine._Run.__init__

    def wrapped(self, *a, **kw):
        init(self, *a, **kw)
        action()

    monkeypatch.setattr(engine._Run, "__init__", wrapped)


@pytest.mark.skipif(not LINUX, reason="following a moved folder needs /proc (Linux)")
def test_a_folder_renamed_while_the_data_loads_is_followed(tmp_path, monkeypatch):
    """Review diff19 #1: the start's config.json and metrics.jsonl went by the path given, after the data's loading
    (minutes on ImageNet): a rename then failed the run on a raw FileNotFoundError."""
    with pytest.MonkeyPatch.context() as m:
        _after_the_start(m, lambda: (tmp_path / "run").rename(tmp_path / "moved"))
        result = engine.train(TrainConfig(**CONFIG), tmp_path / "run", log=lambda _m: None)
    assert result["run_dir"] == str(tmp_path / "moved") and not (tmp_path / "run").exists()
    assert [m["epoch"] for m in rundir.read_metrics(tmp_path / "moved")] == [1, 2, 3]
    engine.train(TrainConfig(**CONFIG), tmp_path / "again", log=lambda _m: None)  # a resume's start too
    _after_the_start(monkeypatch, lambda: (tmp_path / "again").rename(tmp_path / "again2"))
    result = engine.resume(tmp_path / "again", {"epochs": 4}, force=True, log=lambda _m: None)
    assert result["run_dir"] == str(tmp_path / "again2")
    assert [m["epoch"] for m in rundir.read_metrics(result["run_dir"])] == [1, 2, 3, 4]


def test_a_folder_made_again_while_the_data_loads_gets_no_start_files(tmp_path, monkeypatch):
    run = tmp_path / "run"

    def replace() -> None:
        shutil.rmtree(run)
        run.mkdir()

    _after_the_start(monkeypatch, replace)
    with pytest.raises(FolderGone):
        engine.train(TrainConfig(**CONFIG), run, log=lambda _m: None)
    assert list(run.iterdir()) == []  # no config.json, no emptied metrics.jsonl: another run may start there


def test_a_folder_made_again_while_a_checkpoint_is_written_gets_no_later_file(tmp_path, monkeypatch):
    """Review diff19 #4: one check before an epoch's several writes; best.pt (after last.pt's seconds) went into a
    folder made again meanwhile. Each file asks again."""
    from reste import checkpoint

    run, real, calls = tmp_path / "run", checkpoint.save_checkpoint, []

    def then_replaced(state, path, *a, **kw):
        blob = real(state, path, *a, **kw)
        calls.append(path)
        if len(calls) == 1:  # epoch 1's last.pt written; its best.pt is next
            shutil.rmtree(run)
            run.mkdir()
            (run / "other.txt").write_text("another run's\n")
        return blob

    monkeypatch.setattr(checkpoint, "save_checkpoint", then_replaced)
    with pytest.raises(FolderGone):
        engine.train(TrainConfig(**CONFIG), run, log=lambda _m: None)
    assert sorted(p.name for p in run.iterdir()) == ["other.txt"]


@pytest.mark.skipif(not LINUX, reason="following a moved folder needs /proc (Linux)")
def test_a_run_with_tensorboard_follows_its_folder(tmp_path, monkeypatch):
    """Review diff19 #2: TensorBoard's writer opens its event file by path at each flush: the run said it went on in
    the new folder, then failed at its next epoch."""
    pytest.importorskip("tensorboard")
    _in_epoch(2, monkeypatch, lambda: (tmp_path / "run").rename(tmp_path / "moved"))
    result = engine.train(TrainConfig(**CONFIG, tensorboard="tensorboard"), tmp_path / "run", log=lambda _m: None)
    assert result["run_dir"] == str(tmp_path / "moved") and not (tmp_path / "run").exists()
    assert len(list((tmp_path / "moved" / "tensorboard").glob("events.out.tfevents.*"))) == 2  # before and after


@pytest.mark.skipif(not LINUX, reason="following a moved folder needs /proc (Linux)")
def test_a_sweep_stopped_after_its_folder_moved_names_where_it_went(tmp_path, monkeypatch):
    """Review diff19 #3: "run the same command again" started the sweep anew at the old path."""
    import signal

    out, moved = tmp_path / "sw", tmp_path / "sw2"

    def moved_then_stopped(job, stop=None):
        out.rename(moved)
        raise engine.Preempted("stopped", signal.SIGTERM)

    monkeypatch.setattr(sweep, "_execute", moved_then_stopped)
    with pytest.raises(engine.Preempted) as caught:
        sweep.run_sweep(*_sweep_args(out), log=lambda _m: None)
    assert str(caught.value).startswith(f"sweep stopped by SIGTERM; the sweep folder {out} was moved to {moved} while "
                                        f"the sweep ran: run the same command with --out {moved} to continue there")


def test_a_sweep_worker_makes_no_run_in_a_runs_folder_made_again(tmp_path):
    """Review diff19 #5: a worker starts seconds after the sweep's check; a runs folder made again at its path
    meanwhile (another sweep's) got the dead sweep's runs."""
    (tmp_path / "runs").mkdir()
    st = os.stat(tmp_path / "runs")
    shutil.rmtree(tmp_path / "runs")
    (tmp_path / "runs" / "ste-x").mkdir(parents=True)  # another sweep's, its inode another
    run_dir = tmp_path / "runs" / "ste-x" / "seed0"
    job = {"run_dir": str(run_dir), "config": TrainConfig(dataset="digits", epochs=1).to_dict(), "resume": False,
           "runs_id": [st.st_dev, st.st_ino + 10**9]}
    outcome = sweep._execute(job)
    assert outcome["status"] == "failed" and "was moved or deleted while the sweep ran" in outcome["error"]
    assert not run_dir.exists()  # no folder, no train.log, no failed.json


@pytest.mark.skipif(not LINUX, reason="/proc (Linux)")
def test_a_folder_the_kernel_places_at_its_path_is_here_whatever_its_inode_number(tmp_path, monkeypatch):
    """A file system whose inode numbers are not fixed (FUSE without them) gives the folder another st_ino at a later
    stat: where the kernel says the open folder is at its path, it is there, and the run goes on."""
    place = Place(tmp_path)
    try:
        monkeypatch.setattr(place, "_id", (place._id[0], place._id[1] + 10**9))
        assert place.locate() == (Place.HERE, tmp_path)
    finally:
        place.close()


@pytest.mark.skipif(not LINUX, reason="/proc (Linux)")
def test_a_run_in_the_working_folder_deleted_under_it_stops_with_its_line(tmp_path, monkeypatch):
    """(review diff20 #2) `reste train --out .`: the path reaches the deleted folder through the working folder,
    whose inode it still is; the run ended on a raw FileNotFoundError."""
    run = tmp_path / "rd"
    run.mkdir()
    monkeypatch.chdir(run)
    _in_epoch(2, monkeypatch, lambda: shutil.rmtree(run))
    with pytest.raises(FolderGone, match=r"^\. was deleted while its run held it"):
        engine.train(TrainConfig(**CONFIG), Path("."), log=lambda _m: None)


def test_where_a_folder_went_is_asked_of_macos_too(tmp_path, monkeypatch):
    """Without /proc, macOS's fcntl F_GETPATH says where an open folder is: a renamed one is followed there (it
    stopped the run). The stand-in answers from Linux's /proc, which the code is then refused."""
    if not LINUX:
        pytest.skip("the stand-in reads Linux's /proc")
    from reste import rundir as rd

    real = os.readlink

    class FakeFcntl:
        F_GETPATH = 50

        @staticmethod
        def fcntl(fd, cmd, buf):
            assert cmd == 50 and len(buf) == 1024
            return os.fsencode(real(f"/proc/self/fd/{fd}")) + b"\0" * 8

    def no_proc(path, *a, **kw):
        if str(path).startswith("/proc/self/fd/"):
            raise OSError("no /proc")
        return real(path, *a, **kw)

    monkeypatch.setattr(rd, "fcntl", FakeFcntl)
    monkeypatch.setattr(os, "readlink", no_proc)
    folder = tmp_path / "a"
    folder.mkdir()
    place = Place(folder)
    try:
        folder.rename(tmp_path / "b")
        assert place.locate() == (Place.MOVED, tmp_path / "b")
    finally:
        place.close()
