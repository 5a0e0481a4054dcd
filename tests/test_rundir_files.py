"""reste.rundir's files: config.json and metrics.jsonl, with one rule for a torn last line."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from reste import rundir
from reste.config import TrainConfig
from reste.errors import UsageError


def _lines(*records: dict, torn: str = "") -> str:
    return "".join(json.dumps(r) + "\n" for r in records) + torn


def test_config_round_trips(tmp_path):
    config = TrainConfig(dataset="digits", epochs=3, estimator_options={"o_end": 2.0}).resolve()
    rundir.write_config(tmp_path, config)
    assert rundir.saved_config(tmp_path) == config
    (tmp_path / rundir.CONFIG).write_text("{")
    with pytest.raises(UsageError, match="corrupted"):
        rundir.saved_config(tmp_path)
    with pytest.raises(UsageError, match="does not exist"):
        rundir.saved_config(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="no config.json"):
        rundir.saved_config(tmp_path / "empty")
    (tmp_path / "sweep").mkdir()
    (tmp_path / "sweep" / rundir.SWEEP_MANIFEST).write_text("{}")
    for read in (rundir.saved_config, rundir.read_metrics):
        with pytest.raises(UsageError, match="is a sweep's folder, not a run's: .*reste report"):
            read(tmp_path / "sweep")


def test_every_reader_and_the_truncation_leave_out_a_torn_last_line(tmp_path):
    rundir.start_metrics(tmp_path)
    assert rundir.read_metrics(tmp_path) == [] and rundir.finished_epochs(tmp_path) == 0
    for epoch in (1, 2, 3):
        rundir.append_metrics(tmp_path, {"epoch": epoch, "test_acc": 10.0 * epoch})
    with open(tmp_path / rundir.METRICS, "a") as f:
        f.write('{"epoch": 4, "test_a')  # a crash in the middle of the write
    assert [m["epoch"] for m in rundir.read_metrics(tmp_path)] == [1, 2, 3]
    assert rundir.finished_epochs(tmp_path) == 3
    rundir.truncate_metrics(tmp_path, 2)  # resume from a checkpoint of epoch 2
    assert (tmp_path / rundir.METRICS).read_text() == _lines({"epoch": 1, "test_acc": 10.0},
                                                             {"epoch": 2, "test_acc": 20.0})


def test_the_truncation_keeps_the_measure_a_line_states(tmp_path):
    """(review mut11 #12) ``measured`` is given to the lines with indicators that do not say how they were measured
    (a version before ``indicators_o_end``); a line that says keeps its own."""
    for record in ({"epoch": 1, "test_acc": 50.0, "estimating_error": 0.1},
                   {"epoch": 2, "test_acc": 60.0, "estimating_error": 0.2, "indicators_o_end": 0.9}):
        rundir.append_metrics(tmp_path, record)
    rundir.truncate_metrics(tmp_path, 2, measured=(2, 1.0))
    assert [m["indicators_o_end"] for m in rundir.read_metrics(tmp_path)] == [1.0, 0.9]


def test_a_value_not_finite_inside_a_list_or_tuple_is_written_null():
    """(review mut11 #13) metrics lines are strict JSON: a NaN or inf is null inside a tuple as inside a list."""
    from reste.errors import json_line

    assert json_line({"a": (1.0, float("nan")), "b": [float("inf"), 2]}) == '{"a": [1.0, null], "b": [null, 2]}'


@pytest.mark.parametrize("text,line", [
    (_lines({"epoch": 1, "test_acc": 1.0}, torn="not json\n") + _lines({"epoch": 2, "test_acc": 2.0}),
     "line 2 is not JSON"),
    (_lines({"epoch": 1, "test_acc": 1.0}, [1, 2]), "line 2 is not a metrics record"),
    (_lines({"lr": 0.1}), "line 1 is not a metrics record"),
    # (review sweeps #1) values every reader computes with: a string, a null test top-1, none at all
    (_lines({"epoch": 1, "test_acc": "90"}, {"epoch": 2, "test_acc": 2.0}), r"line 1 \(epoch 1\) has no number as its "
                                                                             "test_acc"),
    (_lines({"epoch": 1, "test_acc": 1.0, "time": []}, {"epoch": 2, "test_acc": 2.0}), "no number as its time"),
    (_lines({"epoch": 1}, {"epoch": 2, "test_acc": 2.0}), "no number as its test_acc"),
    # (review chaos4 #4) Python's json reads NaN and Infinity: an accuracy never is one, a loss may be
    ('{"epoch": 1, "test_acc": NaN}\n' + _lines({"epoch": 2, "test_acc": 2.0}), "no number as its test_acc"),
    ('{"epoch": 1, "test_acc": 1.0, "train_acc": Infinity}\n' + _lines({"epoch": 2, "test_acc": 2.0}),
     "no number as its train_acc"),
    # (review chaos3 #2) an epoch number changed: counted as that many epochs, the lines between as lost; a line
    # repeated out of its place: read as a second run of its epoch. Each line is written after the epoch before it
    (_lines(*({"epoch": e, "test_acc": 1.0} for e in (1, 9, 3, 4))),
     r"lines 2 and 3 are out of order \(epoch 9, then 3\); the file is corrupted: mend the wrong epoch number"),
    (_lines(*({"epoch": e, "test_acc": 1.0} for e in (1, 2, 3, 2))), r"lines 3 and 4 are out of order \(epoch 3, "
                                                                      r"then 2\)"),
    (_lines(*({"epoch": e, "test_acc": 1.0} for e in (1, 2, 2, 3))), r"lines 2 and 3 both hold epoch 2; the file "
                                                                      "is corrupted"),
])
def test_damage_before_the_last_line_is_a_one_line_error(tmp_path, text, line):
    (tmp_path / rundir.METRICS).write_text(text)
    for call in (lambda: rundir.read_metrics(tmp_path), lambda: rundir.truncate_metrics(tmp_path, 5)):
        with pytest.raises(UsageError, match=line):
            call()
    assert rundir.finished_epochs(tmp_path) == 0  # a sweep counts a damaged run as unfinished


def test_a_missing_metrics_file(tmp_path):
    with pytest.raises(UsageError, match="no metrics.jsonl"):
        rundir.read_metrics(tmp_path)
    assert rundir.read_metrics(tmp_path, missing_ok=True) == [] and rundir.finished_epochs(tmp_path) == 0
    assert rundir.last_checkpoint(tmp_path) == tmp_path / "last.pt"
    assert rundir.best_checkpoint(tmp_path) == tmp_path / "best.pt"


def test_a_forked_process_does_not_keep_the_run_locked(tmp_path):
    """A DataLoader worker is a fork of the run: its copy of the lock's descriptor kept the folder locked after
    the run released it, as long as the worker lived (review JJ: a resume in the same process was refused)."""
    import os
    import signal
    import time

    run = rundir.RunDirectory.open(tmp_path / "run", fresh=True)
    ready, told = os.pipe()
    child = os.fork()
    if child == 0:  # the worker (its fork handlers have run when fork returns here): outlives the run's lock
        mine = os.open(os.devnull, os.O_RDONLY)  # takes the lowest free number: likely a closed lock's
        run.close()  # the fork's copy of the object: closes nothing (the number may be this file's now)
        try:
            os.fstat(mine)
            os.write(told, b"x")
        except OSError:
            os.write(told, b"!")
        time.sleep(30)
        os._exit(0)
    try:
        assert os.read(ready, 1) == b"x"
        run.close()
        again = rundir.RunDirectory.open(tmp_path / "run", fresh=True)  # before: RunInUse, held by the child
        again.close()
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
        os.close(ready)
        os.close(told)


def test_the_lock_records_the_torchrun_job_and_still_names_its_pid(tmp_path):
    """(review dist #3) rank 0 writes its job's line after its pid; a process of that job reads it (held_by), and a
    second opener still reads the pid."""
    import os

    run = rundir.RunDirectory.open(tmp_path / "run", fresh=True, job="MASTER_PORT=1 job a")
    try:
        assert (tmp_path / "run" / rundir.LOCK_NAME).read_text() == \
            f"{os.getpid()}\nMASTER_PORT=1 job a\n{os.readlink('/proc/self/ns/pid')}\n"  # (its PID namespace)
        assert rundir.held_by(tmp_path / "run", "MASTER_PORT=1 job a")
        assert not rundir.held_by(tmp_path / "run", "MASTER_PORT=2 job b")  # another job's rank 0 holds it
        assert not rundir.held_by(tmp_path / "run", "")
        with pytest.raises(rundir.RunInUse, match=f"in use by pid {os.getpid()} "):
            rundir.RunDirectory.open(tmp_path / "run", fresh=False)
    finally:
        run.close()
    # another job that takes the folder next writes its own line: while anyone holds the lock, the line is theirs
    with rundir.RunDirectory.open(tmp_path / "run", fresh=True, job="MASTER_PORT=2 job b"):
        assert not rundir.held_by(tmp_path / "run", "MASTER_PORT=1 job a")


def test_a_file_system_without_locks_runs_unlocked_with_one_warning(tmp_path, monkeypatch):
    """(review portable #10) Lustre mounted without -o flock answers flock with ENOSYS (NFSv3 without its lock
    daemon: ENOLCK): no run or sweep could start there. It now goes on unlocked, as where the platform has no
    locks, and says so once per file system."""
    import errno
    import os
    import warnings

    def flock(fd, op):
        raise OSError(errno.ENOSYS, os.strerror(errno.ENOSYS))

    monkeypatch.setattr(rundir.fcntl, "flock", flock)
    monkeypatch.setattr(rundir, "_TOLD_UNLOCKED", set())
    with pytest.warns(UserWarning, match="cannot lock files .*two runs given the same folder are not kept apart"):
        run = rundir.RunDirectory.open(tmp_path / "a", fresh=True)
    run.close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per file system
        rundir.RunDirectory.open(tmp_path / "b", fresh=True).close()


def test_a_loss_may_be_nan(tmp_path: Path):
    """A diverged epoch's loss is NaN or infinite (json writes both): its line is read, not taken for damage."""
    (tmp_path / rundir.METRICS).write_text('{"epoch": 1, "test_acc": 10.0, "train_loss": NaN}\n')
    assert math.isnan(rundir.read_metrics(tmp_path)[0]["train_loss"])


@pytest.mark.skipif(not hasattr(__import__("os"), "umask") or __import__("os").name == "nt", reason="POSIX modes")
@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_a_runs_files_get_the_mode_an_ordinary_open_gives(tmp_path, umask):
    """(review tests2 #7) atomic_write's temporary file is made 0600 (mkstemp); without its chmod a run's
    checkpoints and metrics in a shared project folder were unreadable to the group, and every test passed."""
    import os
    import stat

    import torch

    from reste.checkpoint import atomic_write, save_checkpoint

    old = os.umask(umask)  # (no cache to clear: Linux gives the umask of the moment)
    try:
        atomic_write(tmp_path / "a.json", lambda f: f.write(b"{}"))
        save_checkpoint({"epoch": 1, "model": {"w": torch.zeros(2)}}, tmp_path / "last.pt")
        with open(tmp_path / "plain", "wb"):
            pass
    finally:
        os.umask(old)
    want = 0o666 & ~umask
    assert stat.S_IMODE((tmp_path / "plain").stat().st_mode) == want
    for name in ("a.json", "last.pt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == want, name


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="Linux's /proc")
def test_the_umask_is_the_one_of_the_moment(monkeypatch):
    """The mode reste gives a run's files follows a umask the caller changed after reste first read it (it was read
    once a process); where /proc has no Umask line, it is read once with os.umask, and is still right."""
    import os

    from reste import files

    old = os.umask(0o022)
    try:
        assert files._umask() == 0o022
        os.umask(0o077)
        assert files._umask() == 0o077
        monkeypatch.setattr(files, "_PROC_STATUS", "/nonexistent/status")
        files._umask_once.cache_clear()
        assert files._umask() == 0o077 and os.umask(0o077) == 0o077  # read, and left as it was
    finally:
        os.umask(old)
        files._umask_once.cache_clear()
