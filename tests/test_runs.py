"""Runs that cannot be corrupted: the run-directory lock, consistent checkpoints at every crash
point of an epoch's save sequence, mid-epoch checkpoints (SIGTERM, SIGUSR1, --save-every) and
their exact resume."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from reste import engine, rundir
from reste.checkpoint import load_checkpoint, save_checkpoint
from reste.cli import main
from reste.config import TrainConfig
from reste.datasets import SPECS
from reste.errors import UsageError, command_line
from reste.rundir import RunDirectory
from run_checks import stop_in_epoch_2

ENV = dict(os.environ, OMP_NUM_THREADS="1")
ARGS = ["--epochs", "3", "--seed", "5", "--no-progress"]


def quiet(_msg: str) -> None:
    pass


def _cli(*argv: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "reste.cli", *argv], capture_output=True, text=True, env=ENV,
                          **kw)


def _strip(metrics: list[dict]) -> list[dict]:
    return [{k: v for k, v in m.items() if k != "time"} for m in metrics]


def assert_same_run(full: Path, other: Path) -> None:
    """The same metrics lines, the same last.pt (weights, optimizer) and the same best.pt."""
    assert _strip(rundir.read_metrics(full)) == _strip(rundir.read_metrics(other))
    for name in ("last.pt", "best.pt"):
        a, b = load_checkpoint(full / name), load_checkpoint(other / name)
        assert (a["epoch"], a["best_epoch"], a["best_acc"]) == (b["epoch"], b["best_epoch"], b["best_acc"]), name
        assert a["step"] == b["step"] == 0
        for key, value in a["model"].items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(value, b["model"][key]), (name, key)
        for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
            assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"]), name
    best = load_checkpoint(other / "best.pt")
    assert best["epoch"] == load_checkpoint(other / "last.pt")["best_epoch"]
    assert not [p.name for p in other.iterdir() if p.name.endswith(".tmp")]


def _one_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    return lines[0]



def _resume_here(run_dir: Path) -> str:
    """``reste train --resume`` in this process; returns its stdout."""
    lines: list[str] = []
    engine.resume(run_dir, progress=False, log=lines.append)
    return "\n".join(lines)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """An uninterrupted 3-epoch digits run (subprocess, like the interrupted ones)."""
    out = tmp_path_factory.mktemp("full") / "run"
    proc = _cli("train", *ARGS, "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    return out, proc.stdout


# ------------------------------------------------------------------------- the lock


def test_a_locked_run_directory_is_refused_naming_the_pid(capsys, tmp_path, full_run):
    run = tmp_path / "run"
    with RunDirectory.open(run, fresh=True):
        assert (run / ".lock").read_text().splitlines()[0] == str(os.getpid())
        assert main(["train", *ARGS, "--out", str(run)]) == 75  # EX_TEMPFAIL: busy, try later; not a usage error
        line = _one_line(capsys.readouterr().err)
        assert line.startswith("reste: error: ") and f"in use by pid {os.getpid()}" in line
    # the lock of a finished run: resume and a second train are refused while it is held
    with RunDirectory.open(full_run[0], fresh=False):
        for argv in (["train", "--resume", str(full_run[0]), "--no-progress"],
                     ["train", *ARGS, "--out", str(full_run[0])]):
            assert main(argv) == 75
            assert f"in use by pid {os.getpid()}" in _one_line(capsys.readouterr().err)
    # a failed start that created the folder removes it, the lock file included
    assert main(["train", "--out", str(tmp_path / "new"), "--model", "resnet20_1w1a", "--no-progress"]) == 2
    assert not (tmp_path / "new").exists()


def test_the_os_releases_the_lock_of_a_dead_process(tmp_path):
    run = tmp_path / "run"
    pid = os.fork()
    if pid == 0:  # the child takes the lock and dies without releasing it
        RunDirectory.open(run, fresh=True)
        os._exit(9)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 9
    assert (run / ".lock").read_text().splitlines()[0] == str(pid)
    RunDirectory.open(run, fresh=True).close()  # no one holds it any more


def test_a_holder_in_another_pid_namespace_is_not_told_free(tmp_path):
    """(review portable #11) From another container on the same volume (another PID namespace), /proc/locks leaves
    the holder out (or gives pid 0 on older kernels): `reste show` called a training run stopped and suggested the
    resume it then refused. The lock file records its holder's namespace; another one's is "cannot tell"."""
    import subprocess
    import sys

    run = tmp_path / "run"
    with RunDirectory.open(run, fresh=True):
        lines = (run / ".lock").read_text().split("\n")
        assert lines[0] == str(os.getpid()) and lines[1] == "" and lines[2] == os.readlink("/proc/self/ns/pid")
        assert rundir.lock_holder(run) == os.getpid()
        probe = [sys.executable, "-c", f"from reste.rundir import lock_holder; print(lock_holder({str(run)!r}))"]
        try:
            seen = subprocess.run(["unshare", "-p", "-f", "--mount-proc", *probe], capture_output=True, text=True,
                                  timeout=120)
        except FileNotFoundError:
            seen = None
        if seen is not None and seen.returncode == 0:  # (unshare needs the right: else only the files below)
            assert seen.stdout.strip() == "None"
    assert rundir.lock_holder(run) == 0  # released: free, from here
    (run / ".lock").write_text("12345\n\npid:[1]\n")  # last taken in another namespace, and no holder in sight
    assert rundir.lock_holder(run) is None
    (run / ".lock").write_text(f"12345\n\n{os.readlink('/proc/self/ns/pid')}\n")  # in this one: free
    assert rundir.lock_holder(run) == 0
    (run / ".lock").write_text("12345\n")  # a lock file of an older reste: as before
    assert rundir.lock_holder(run) == 0


def test_the_refusal_waits_briefly_for_the_holders_pid(tmp_path, monkeypatch):
    """The holder writes its pid just after it takes the lock: a refusal that reads the file in between reads
    it again, and names "another process" only when it stays empty."""
    lock = tmp_path / ".lock"
    lock.write_text("")
    naps: list[float] = []

    def nap(seconds: float) -> None:  # the holder writes its pid during the refusal's second wait
        naps.append(seconds)
        if len(naps) == 2:
            lock.write_text("4242\n")

    monkeypatch.setattr(rundir.time, "sleep", nap)
    fd = os.open(lock, os.O_RDONLY)
    try:
        assert rundir._holder(fd) == "pid 4242" and len(naps) == 2
        monkeypatch.setattr(rundir.time, "sleep", naps.append)  # no holder writes now
        os.truncate(lock, 0)
        naps.clear()
        assert rundir._holder(fd, tries=3) == "another process" and len(naps) == 2
    finally:
        os.close(fd)


@pytest.mark.parametrize("kind", ["symlink", "dangling", "fifo", "folder"])
def test_a_lock_file_that_is_not_a_plain_file_is_refused_and_left_alone(tmp_path, kind):
    """sec2 2: the pid is written over the lock file, so a .lock (or sweep.lock) planted in a received or shared
    folder as a link to another file would have truncated that file; it, and a FIFO (opening one can block), is
    refused with one line, and the file it names is not touched (nor, when dangling, made)."""
    victim, run = tmp_path / "victim.txt", tmp_path / "run"
    victim.write_text("precious\n")
    run.mkdir()
    lock = run / ".lock"
    {"symlink": lambda: lock.symlink_to(victim), "dangling": lambda: lock.symlink_to(tmp_path / "made"),
     "fifo": lambda: os.mkfifo(lock), "folder": lock.mkdir}[kind]()
    for opening in (lambda: RunDirectory.open(run, fresh=True),
                    lambda: rundir.folder_lock(run, ".lock", "a sweep", "use another folder").__enter__()):
        with pytest.raises(UsageError, match=r"\.lock is not a plain file .* remove it and run again"):
            opening()
    assert victim.read_text() == "precious\n" and not (tmp_path / "made").exists()
    assert os.path.lexists(lock)  # left for the user to look at


def test_a_lock_file_with_another_name_is_replaced_not_written(tmp_path):
    """A .lock that is a hard link (a run folder copied with cp -al, or a link planted to another file) gets a file
    of its own; the other name's file is left as it was (rev5: such a copy could not be resumed)."""
    victim, run = tmp_path / "victim.txt", tmp_path / "run"
    victim.write_text("precious\n")
    run.mkdir()
    os.link(victim, run / ".lock")
    with RunDirectory.open(run, fresh=True):
        assert (run / ".lock").read_text().splitlines()[0] == f"{os.getpid()}" and os.stat(run / ".lock").st_nlink == 1
    os.link(victim, run / "sweep.lock")
    with rundir.folder_lock(run, "sweep.lock", "a sweep", "use another folder"):
        assert os.stat(run / "sweep.lock").st_nlink == 1
    assert victim.read_text() == "precious\n" and os.stat(victim).st_nlink == 1


def test_two_runs_started_together_on_one_folder(tmp_path):
    """Exactly one of two runs started at the same moment on the same --out trains; the other is refused
    with one line and exit 75 (held by the other) or 2 (the other's run is there already) and leaves the first
    one's files alone."""
    run = tmp_path / "run"
    procs = [subprocess.Popen([sys.executable, "-m", "reste.cli", "train", "--epochs", "2", "--seed", str(seed),
                               "--no-progress", "--out", str(run)], env=ENV, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for seed in (1, 2)]
    results = [(p.wait(timeout=600), *p.communicate()) for p in procs]
    codes = sorted(r[0] for r in results)
    assert codes in ([0, 2], [0, 75]), results
    loser = next(r for r in results if r[0] != 0)
    # the winner writes its pid just after it takes the lock; a loser slower to read than _holder's retries
    # waits for is told "another process" (a loaded machine)
    expected = r"in use by (pid \d+|another process) " if loser[0] == 75 else "already holds a run"
    assert re.search(expected, _one_line(loser[2])), results
    winner_seed = json.loads((run / "config.json").read_text())["seed"]
    assert [m["epoch"] for m in rundir.read_metrics(run)] == [1, 2]
    assert load_checkpoint(run / "last.pt")["config"]["seed"] == winner_seed


def test_only_rank_0_touches_the_run_directory(tmp_path, monkeypatch, full_run):
    """Under torchrun every rank used to create and probe the folder (``.write-test``) at the same
    moment, and one rank's unlink could remove the other's probe: "not writable", exit 2, under
    load. Now the other ranks leave the folder to rank 0."""
    for name, value in (("RANK", "1"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "1")):
        monkeypatch.setenv(name, value)  # (RANK alone, without a WORLD_SIZE > 1, is one process: review dist #4)
    monkeypatch.setattr(engine, "_train_locked", lambda *a: {"ran": True})
    monkeypatch.setattr(engine, "_resume_locked", lambda *a: {"ran": True})
    assert engine.train(TrainConfig(epochs=1), tmp_path / "new", progress=False, log=quiet) == {"ran": True}
    assert not (tmp_path / "new").exists()
    from reste.distributed import job_token

    # rank 0 of this job holds the lock: rank 1 goes on (at once: another job's lock it would wait for, 300 s)
    with RunDirectory.open(full_run[0], fresh=False, job=job_token()):
        assert engine.resume(full_run[0], progress=False, log=quiet) == {"ran": True}


def test_a_resume_of_a_folder_that_is_not_writable_is_refused_up_front(capsys, tmp_path, monkeypatch, full_run):
    """(review chaos #2) a run folder made read-only was probed for a new run alone: a resume failed at its first
    write, exit 1, naming a temporary file. It is refused in one line, status 2, as a new run's folder is."""
    from pathlib import Path

    real = Path.write_bytes

    def refused(self, data):
        if self.name == ".write-test.tmp":
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", refused)
    assert main(["train", "--resume", str(full_run[0]), "--no-progress"]) == 2
    assert _one_line(capsys.readouterr().err) == (f"reste: error: run directory {full_run[0]} is not writable "
                                                  "(Permission denied); make it writable again (its mode, a "
                                                  "read-only mount)")


def test_a_probe_left_by_a_kill_does_not_block_the_next_start(tmp_path):
    """(review chaos3 #4) a SIGKILL between the write probe's two calls left `.write-test`, which the next start's
    "is the folder empty" check refused for good (exit 2). The probe is named as a temporary now, and an old one's
    name is passed over."""
    for left in (".write-test.tmp", ".write-test"):
        folder = tmp_path / left.strip(".")
        folder.mkdir()
        (folder / left).write_bytes(b"")
        assert main(["train", "--epochs", "1", "--threads", "1", "--no-progress", "--out", str(folder)]) == 0
        assert (folder / "last.pt").is_file()


def test_a_resume_refuses_a_run_file_that_is_a_fifo_or_a_folder(capsys, tmp_path, full_run):
    """(review chaos #5) a metrics.jsonl that is a FIFO blocked the resume's first read for ever, deaf to SIGTERM,
    with the folder locked. A run file that is no regular file is refused in one line."""
    import shutil

    for name, make in (("best.pt", os.mkdir), ("metrics.jsonl", os.mkfifo)):  # (the FIFO last: it would block)
        run = tmp_path / name
        shutil.copytree(full_run[0], run)
        (run / name).unlink()
        make(run / name)
        assert main(["train", "--resume", str(run), "--epochs", "3", "--force", "--no-progress"]) == 2
        assert _one_line(capsys.readouterr().err) == (f"reste: error: {run / name} is not a file (a FIFO, a device or "
                                                      f"a folder): a run's {name} is one; move it away, or restore "
                                                      "the run's own")
    # (review rev16 #3) a FIFO config.json: read for its plugins before anything else; in a process of its own,
    # which a read that waits for ever would not end
    run = tmp_path / "config"
    shutil.copytree(full_run[0], run)
    (run / "config.json").unlink()
    os.mkfifo(run / "config.json")
    for argv in (["train", "--resume", str(run), "--epochs", "4", "--force"], ["show", str(run)]):
        done = _cli(*argv, timeout=120)
        assert done.returncode == 2 and _one_line(done.stderr) == (
            f"reste: error: {run / 'config.json'} is not a file (a FIFO, a device or a folder): a run's config.json "
            "is one; move it away (a resume writes it again from last.pt), or restore the run's own"), done.stderr


def test_a_config_json_edited_away_from_last_pt_is_named_in_the_refusal(full_run):
    """(review chaos #8) config.json edited to another data set gave a line about class folders; to fewer epochs,
    "--epochs 1 is fewer" though no --epochs was given. The refusals name config.json."""
    import dataclasses

    from reste import resumption
    from reste.checkpoint import load_checkpoint

    last = full_run[0] / "last.pt"
    ckpt = load_checkpoint(last)
    config = rundir.run_config(full_run[0])
    with pytest.raises(UsageError, match=f"^{full_run[0] / 'config.json'} names data set fashion-mnist, but {last} "
                                         "trained on digits: restore config.json, or delete it"):
        resumption.check_checkpoint(ckpt, dataclasses.replace(config, dataset="fashion-mnist"), last)
    fewer = dataclasses.replace(config, epochs=1)
    # (review chaos4 #5) the run's own schedule, which last.pt keeps, named: not the least that would do
    with pytest.raises(UsageError, match="already finished 3 epochs of the 3 its last.pt planned, and its config.json "
                                         "plans 1: restore config.json .or delete it: --resume writes it again from "
                                         "last.pt., or pass overrides=.'epochs': 3. with force=True"):
        resumption.check_checkpoint(ckpt, fewer, last)
    with command_line(), pytest.raises(UsageError, match="or pass --epochs 3 with --force"):  # diff10 #3
        resumption.check_checkpoint(ckpt, fewer, last)
    unplanned = {**ckpt, "config": {k: v for k, v in ckpt["config"].items() if k != "epochs"}}
    with pytest.raises(UsageError, match="already finished 3 epochs, and its config.json plans 1: restore "
                                         "config.json, or pass overrides=.'epochs': 3. or more with force=True"):
        resumption.check_checkpoint(unplanned, fewer, last)
    with pytest.raises(UsageError, match="overrides=.'epochs': 1. is fewer: pass at least 3"):  # given
        resumption.check_checkpoint(ckpt, fewer, last, given={"epochs": 1})
    resumption.check_checkpoint(ckpt, config, last)


def test_a_last_pt_that_cannot_be_read_for_its_mode_is_not_given_up(capsys, tmp_path, full_run, monkeypatch):
    """(review chaos #2) a last.pt this user cannot read (its mode) was "the run cannot continue from it: evaluate its
    best.pt, or start a new run": the run is whole; its mode is what to mend."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(full_run[0], run)
    real = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: (False if str(path).endswith("last.pt")
                                                                 and mode == os.R_OK else real(path, mode, **kw)))
    assert main(["train", "--resume", str(run), "--epochs", "4", "--force", "--no-progress"]) == 2
    assert _one_line(capsys.readouterr().err) == (f"reste: error: cannot read {run / 'last.pt'} (Permission "
                                                  "denied); make it readable (its mode, its owner) and resume again")


def test_a_folder_that_is_not_a_run_is_refused(capsys, tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    assert main(["train", *ARGS, "--out", str(folder)]) == 2
    assert "not empty (notes.txt)" in _one_line(capsys.readouterr().err)
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]
    assert main(["train", *ARGS, "--out", ""]) == 2
    assert "empty" in _one_line(capsys.readouterr().err)


# --------------------------------------------------- crashes in an epoch's save sequence

# One child imports reste once, then forks one grandchild per crash point; each runs `reste train`
# and dies with os._exit(137), like kill -9, at its point of the save sequence of epoch CRASH_EPOCH:
# metrics line, last.pt (written to a temporary file, then renamed), best.pt (the same).
_CRASHER = textwrap.dedent("""
    import json, os, sys
    from reste import engine, checkpoint
    from reste.cli import main

    import torch._dynamo  # imported lazily by the first optimizer: here once, not in every child
    from reste.data import load_datasets
    load_datasets("digits")  # imports scikit-learn once too

    epoch, base, points = int(sys.argv[1]), sys.argv[2], sys.argv[3].split(",")
    argv = sys.argv[4:]

    def crash():
        os._exit(137)

    def arm(point):
        state = {"epoch": 0}
        save, real_replace, real_save = engine._Run.save, os.replace, checkpoint.save_checkpoint

        def saving(self, e, metrics, is_best, *told):
            state["epoch"] = e
            if e == epoch and point == "before-metrics":
                crash()
            if e == epoch and point == "torn-metrics":
                with open(self.run_dir / "metrics.jsonl", "a") as f:
                    f.write('{"epoch": %d, "lr": 0.' % e)
                crash()
            return save(self, e, metrics, is_best, *told)

        def replace(src, dst):
            name = os.path.basename(str(dst))
            if state["epoch"] == epoch and point == "tmp-" + name:
                crash()  # the temporary file is complete, the rename never happens
            real_replace(src, dst)
            if state["epoch"] == epoch and point == "after-" + name:
                crash()

        def save_checkpoint(st, path):
            if state["epoch"] == epoch and point == "after-metrics" and os.path.basename(str(path)) == "last.pt":
                crash()
            return real_save(st, path)

        engine._Run.save = saving
        os.replace = replace
        checkpoint.save_checkpoint = save_checkpoint

    codes = {}
    for point in points:
        pid = os.fork()
        if pid == 0:
            arm(point)
            os._exit(main([*argv, "--out", os.path.join(base, point)]))
        codes[point] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    print(json.dumps(codes))
""")

CRASH_POINTS = ["before-metrics", "torn-metrics", "after-metrics", "tmp-last.pt", "after-last.pt",
                "tmp-best.pt", "after-best.pt"]


def _crash_epoch(full: Path) -> int:
    """The first epoch after epoch 1 that is the best so far, so its save sequence writes best.pt."""
    acc = [m["test_acc"] for m in rundir.read_metrics(full)]
    epoch = next((e for e in range(2, len(acc) + 1) if acc[e - 1] > max(acc[:e - 1])), None)
    if epoch is None:  # this CPU's rounding made epoch 1 the best: no later epoch writes best.pt
        pytest.skip(f"no epoch after the first beats it here ({acc}); the crash points need one that writes best.pt")
    return epoch


@pytest.fixture(scope="module")
def crashed_runs(full_run, tmp_path_factory):
    """{crash point: run directory} of runs that died at that point of the epoch that wrote the
    uninterrupted run's best.pt; checked for the temporary file the tmp-* points leave."""
    full, _ = full_run
    base = tmp_path_factory.mktemp("crashed")
    proc = subprocess.run([sys.executable, "-c", _CRASHER, str(_crash_epoch(full)), str(base), ",".join(CRASH_POINTS),
                           "train", *ARGS], env=ENV, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    codes = json.loads(proc.stdout.strip().splitlines()[-1])
    assert codes == {point: 137 for point in CRASH_POINTS}, (codes, proc.stderr)
    for point in CRASH_POINTS:
        tmps = [p.name for p in (base / point).iterdir() if p.name.endswith(".tmp")]
        assert bool(tmps) == point.startswith("tmp-"), (point, tmps)
    return {point: base / point for point in CRASH_POINTS}


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_a_crash_at_each_write_of_an_epoch_then_resume_matches(full_run, crashed_runs, point, one_thread):
    full, _ = full_run
    cut = crashed_runs[point]
    crashed = load_checkpoint(cut / "last.pt")["epoch"]
    before_last = CRASH_POINTS.index(point) <= CRASH_POINTS.index("tmp-last.pt")
    assert crashed == _crash_epoch(full) - before_last  # the crash came in that epoch's save sequence
    resumed = _resume_here(cut)
    assert_same_run(full, cut)
    # the final line agrees with best.pt and with the uninterrupted run
    best = load_checkpoint(cut / "best.pt")
    final = resumed.strip().splitlines()[-1]
    assert f"best test acc {best['metrics']['test_acc']:.2f}% (epoch {best['epoch']}, top-5 " in final
    assert best["epoch"] == load_checkpoint(full / "best.pt")["epoch"]


def test_resume_repairs_a_stale_best_pt(tmp_path, full_run):
    """The issue's case: last.pt of the best epoch written, best.pt not (still an older epoch)."""
    out = tmp_path / "run"
    out.mkdir()
    for name in ("config.json", "metrics.jsonl", "last.pt"):
        (out / name).write_bytes((full_run[0] / name).read_bytes())
    last = load_checkpoint(out / "last.pt")
    assert last["best_epoch"] == last["epoch"] == 3
    stale = {k: v for k, v in last.items() if k not in ("format", "version")}
    save_checkpoint(dict(stale, epoch=2, best_epoch=2), out / "best.pt")
    assert rundir.repair_best(out, last)
    assert (out / "best.pt").read_bytes() == (out / "last.pt").read_bytes()
    assert not rundir.repair_best(out, last)
    (out / "best.pt").unlink()  # a missing best.pt is written too
    assert rundir.repair_best(out, last) and load_checkpoint(out / "best.pt")["epoch"] == 3


# ------------------------------------------------------------------ preemption


def _signalled_run(out: Path, sig: str, ignore: bool = False) -> subprocess.CompletedProcess:
    """A 3-epoch digits run that sends itself ``sig`` at step 7 of epoch 2 (with ``ignore``: a run started with that
    signal ignored, as nohup starts one with SIGHUP). Without, the signal gets its usual handler first: the tests
    themselves may run with it ignored (a CI script started with nohup, or as a background job: SIGINT)."""
    code = textwrap.dedent(f"""
        import os, signal, sys
        from reste import engine
        from reste.cli import main
        usual = signal.default_int_handler if signal.{sig} == signal.SIGINT else signal.SIG_DFL
        signal.signal(signal.{sig}, signal.SIG_IGN if {ignore} else usual)
        due = engine._Run._checkpoint_due
        def checkpoint_due(self, step, *rest):
            if self.saved == (1, 0) and step == 6:
                os.kill(os.getpid(), signal.{sig})
            return due(self, step, *rest)
        engine._Run._checkpoint_due = checkpoint_due
        sys.exit(main(sys.argv[1:]))
    """)
    return subprocess.run([sys.executable, "-c", code, "train", *ARGS, "--out", str(out)], env=ENV,
                          capture_output=True, text=True)


def test_sigterm_mid_epoch_saves_then_resume_is_exact(tmp_path, full_run, one_thread):
    """SIGTERM inside epoch 2 checkpoints at the current step and exits with one line and 143;
    --resume continues inside the epoch and ends with the uninterrupted run's files."""
    full, _ = full_run
    sig = "SIGTERM"
    cut = tmp_path / "cut"
    proc = _signalled_run(cut, sig)  # a real signal, at a known step
    signum = getattr(signal, sig)
    assert proc.returncode == 128 + signum, proc.stderr
    line = _one_line(proc.stderr)
    assert line.startswith(f"reste: stopped by {sig} at epoch 2, step 7/23") and "--resume" in line
    ckpt = load_checkpoint(cut / "last.pt")
    assert (ckpt["epoch"], ckpt["step"]) == (1, 7)
    assert [m["epoch"] for m in rundir.read_metrics(cut)] == [1]
    evaluated = engine.evaluate_checkpoint(cut / "last.pt")
    assert (evaluated["epoch"], evaluated["step"], evaluated["stored_top1"]) == (1, 7, None)
    # the epoch's time counts the part before the stop: made 1000 s longer here, its line must say so (review mut4
    # #8: with it dropped, every figure of the run's time was short by that part)
    save_checkpoint({**ckpt, "partial": {**ckpt["partial"], "time": ckpt["partial"]["time"] + 1000.0}},
                    cut / "last.pt")
    resumed = _resume_here(cut)
    assert "at epoch 2/3, step 8/23" in resumed
    assert_same_run(full, cut)
    assert rundir.read_metrics(cut)[1]["time"] >= 1000.0 + ckpt["partial"]["time"]
    final, full_final = resumed.strip().splitlines()[-1], full_run[1].strip().splitlines()[-1]
    assert final.split(" after")[0] == full_final.split(" after")[0]  # the same best and final accuracy


@pytest.mark.parametrize("sig, named", [("SIGINT", "Ctrl-C (SIGINT)"), ("SIGHUP", "SIGHUP (its terminal closed)")])
def test_ctrl_c_and_a_closed_terminal_save_the_step_as_sigterm_does(tmp_path, sig, named):
    """Ctrl-C and SIGHUP (a closed terminal, a dropped ssh) lost the epoch in progress: Ctrl-C kept the last
    finished epoch only, SIGHUP killed the run without a line. Both now checkpoint the step and stop with the
    stop line and 128 + the signal, and a run started with the signal ignored (nohup) keeps running."""
    run = tmp_path / "run"
    proc = _signalled_run(run, sig)
    assert proc.returncode == 128 + getattr(signal, sig), proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith(f"reste: stopped by {named} at epoch 2, step 7/23; ") and "--resume" in lines[-1]
    assert len(lines) == (2 if sig == "SIGINT" else 1), lines  # Ctrl-C says at once what it does
    assert sig != "SIGINT" or lines[0] == ("reste: Ctrl-C: stopping after saving the current step (press it again "
                                           "to stop at once, without saving)")
    ckpt = load_checkpoint(run / "last.pt")
    assert (ckpt["epoch"], ckpt["step"]) == (1, 7)
    kept = _signalled_run(tmp_path / "nohup", sig, ignore=True)
    assert kept.returncode == 0 and kept.stderr == "", kept.stderr
    assert [m["epoch"] for m in rundir.read_metrics(tmp_path / "nohup")] == [1, 2, 3]


def test_a_second_ctrl_c_stops_at_once():
    """The first Ctrl-C asks for the checkpoint; the second gets Python's handler back: KeyboardInterrupt at once
    (a save that hangs, a slow file system), and the handlers are the ones before the block after it."""
    # Python's own handler, as an interactive run has it (tests run as a background job have SIGINT ignored)
    outer = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        asked = []
        with pytest.raises(KeyboardInterrupt):
            with engine.StopRequest().handling() as stop:
                os.kill(os.getpid(), signal.SIGINT)
                asked.append(stop.signum)
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(5)  # not reached
        assert asked == [signal.SIGINT] and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, outer)


def test_save_every_then_kill_9_mid_epoch_resumes_exactly(tmp_path, full_run, one_thread):
    """--save-every writes mid-epoch checkpoints (here at every step); kill -9 after one and resume."""
    full, _ = full_run
    cut = tmp_path / "cut"
    # the child kills itself (SIGKILL) just after its checkpoint at step 5 of epoch 2: polling last.pt from here for
    # that window missed it on a loaded machine (the run went past epoch 2, then ended)
    code = textwrap.dedent("""
        import os, signal, sys
        from reste import engine
        from reste.cli import main
        save = engine._Run.save_partial
        def save_partial(self, epoch, step, sums):
            save(self, epoch, step, sums)
            if (epoch, step) == (1, 5):
                os.kill(os.getpid(), signal.SIGKILL)
        engine._Run.save_partial = save_partial
        sys.exit(main(sys.argv[1:]))
    """)
    proc = subprocess.run([sys.executable, "-c", code, "train", *ARGS, "--save-every", "1e-9", "--out", str(cut)],
                          env=ENV, capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    ckpt = load_checkpoint(cut / "last.pt")
    assert (ckpt["epoch"], ckpt["step"]) == (1, 5)
    _resume_here(cut)
    assert_same_run(full, cut)


def test_sigusr1_mid_epoch_with_indicators_in_process(tmp_path, one_thread):
    """A real SIGUSR1 to this process; the meter's running sums and the epoch's loss sums travel in
    the mid-epoch checkpoint."""
    cfg = TrainConfig(epochs=2, seed=2, indicators="general", estimator="ede", batch_size=256)
    engine.train(cfg, tmp_path / "full", progress=False, log=quiet)
    stop_in_epoch_2(cfg, tmp_path / "cut", quiet, step=3, steps=6)
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL  # the handler is gone with the run
    engine.resume(tmp_path / "cut", progress=False, log=quiet)
    a, b = rundir.read_metrics(tmp_path / "full"), rundir.read_metrics(tmp_path / "cut")
    assert _strip(a) == _strip(b)
    assert "estimating_error" in b[-1]


def _write_cifar(root: Path, per_batch: int, n_test: int) -> None:
    """A tiny CIFAR-10 in its python-batch format (random images)."""
    import pickle

    import numpy as np

    rng = np.random.default_rng(0)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        n = n_test if name == "test_batch" else per_batch
        entry = {b"labels": [int(v) for v in rng.integers(0, 10, n)],
                 b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8)}
        (folder / name).write_bytes(pickle.dumps(entry, protocol=2))


def test_mid_epoch_resume_of_in_memory_cifar10(tmp_path, one_thread):
    """CIFAR-10 (written in its real pickle format) is held in memory as uint8 and cropped and
    flipped batched, with draws keyed by (seed, epoch): a mid-epoch checkpoint resumes exactly there
    too. (Only ImageNet still goes through DataLoader workers; this test no longer covers that
    path.)"""
    _write_cifar(tmp_path / "cifar", per_batch=16, n_test=16)
    cfg = TrainConfig(dataset="cifar10", data_path=str(tmp_path / "cifar"), epochs=2, batch_size=16,
                      eval_batch_size=16, seed=3)
    engine.train(cfg, tmp_path / "full", progress=False, log=quiet)
    stop_in_epoch_2(cfg, tmp_path / "cut", quiet, step=2, steps=5, sig=signal.SIGTERM)
    engine.resume(tmp_path / "cut", progress=False, log=quiet)
    assert_same_run(tmp_path / "full", tmp_path / "cut")


def test_augment_switch_reaches_the_train_loader(tmp_path):
    """``--augment`` / ``--no-augment`` is a config field with the data set's default; a
    config.json written before the field existed reads as augmented (how those runs trained)."""
    _write_cifar(tmp_path / "cifar", per_batch=2, n_test=2)
    base = dict(dataset="cifar10", data_path=str(tmp_path / "cifar"), epochs=1, batch_size=4, device="cpu")
    assert TrainConfig(**base).resolve().augment is True
    for augment in (True, False):
        run = engine._Run(TrainConfig(**base, augment=augment).resolve(), tmp_path / f"r{augment}", quiet, False)
        assert (run.train_loader.augment is not None) is augment
    old = TrainConfig(**base).resolve().to_dict()
    del old["augment"]
    assert TrainConfig.from_saved(old).augment is True
    assert TrainConfig(dataset="digits").resolve().augment is False
    # the command line leaves it to the data set's recipe (a flag not given is not a saved config)
    from reste.cli import build_parser, config_from_args

    args = build_parser().parse_args(["train", "--dataset", "fashion-mnist"])
    assert config_from_args(args).resolve().augment is SPECS["fashion-mnist"].defaults["augment"]
    args = build_parser().parse_args(["train", "--dataset", "fashion-mnist", "--augment"])
    assert config_from_args(args).resolve().augment is True


def test_a_relative_data_path_is_recorded_as_an_absolute_one(tmp_path, monkeypatch):
    """config.json records where the data was, not how it was typed: ``reste eval RUN_DIR`` and ``--resume RUN_DIR``
    from another folder find it. A resume may give another path, relative to where it is given; no path: the
    default data root, ./data where the run starts (review docs #1: it stayed None, read from the folder of each
    later command)."""
    _write_cifar(tmp_path / "work" / "cifar", per_batch=2, n_test=4)
    _write_cifar(tmp_path / "other" / "cifar", per_batch=2, n_test=4)
    monkeypatch.chdir(tmp_path / "work")
    cfg = TrainConfig(dataset="cifar10", data_path="cifar", epochs=1, batch_size=4, eval_batch_size=4)
    engine.train(cfg, tmp_path / "run", progress=False, log=quiet)
    assert rundir.run_config(tmp_path / "run").data_path == str(tmp_path / "work" / "cifar")
    monkeypatch.chdir(tmp_path)
    result = engine.evaluate_checkpoint(tmp_path / "run" / "best.pt")
    assert result["top1"] == result["stored_top1"]
    engine.resume(tmp_path / "run", {"epochs": 2}, force=True, progress=False, log=quiet)
    monkeypatch.chdir(tmp_path / "other")
    engine.resume(tmp_path / "run", {"epochs": 3, "data_path": "cifar"}, force=True, progress=False, log=quiet)
    assert rundir.run_config(tmp_path / "run").data_path == str(tmp_path / "other" / "cifar")
    assert TrainConfig(dataset="cifar10").resolve().data_path == str(tmp_path / "other" / "data")  # (the default)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert TrainConfig(dataset="cifar10", data_path="~/cifar").resolve().data_path == str(tmp_path / "cifar")


def test_a_failed_starts_cleanup_that_fails_leaves_the_original_error_and_a_note(capsys, tmp_path, monkeypatch):
    """The folder turned unwritable before the first checkpoint: the checkpoint's error is the one reported, the
    cleanup's failure a note naming what it left; the lock is released."""
    import errno

    run = tmp_path / "run"

    def no_room(_state, path):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    unlink = Path.unlink

    def stuck(self, missing_ok=False):
        if self.name == "config.json":
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(engine.ckpt_io, "save_checkpoint", no_room)
    monkeypatch.setattr(Path, "unlink", stuck)
    assert main(["train", *ARGS, "--out", str(run)]) == 1
    out, err = capsys.readouterr()
    assert "last.pt" in _one_line(err) and "config.json" not in err, err
    assert "note: the failed start's cleanup could not remove config.json" in out, out
    monkeypatch.undo()
    assert not (run / ".lock").exists() and (run / "config.json").exists()
    RunDirectory.open(run, fresh=False).close()  # the lock was released


def _sigterm_in_epoch_2(monkeypatch):
    original = engine._Run._checkpoint_due

    def sigterm_at_step_3_of_epoch_2(self, step, *rest):
        if self.saved == (1, 0) and step == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, step, *rest)

    monkeypatch.setattr(engine._Run, "_checkpoint_due", sigterm_at_step_3_of_epoch_2)


def test_a_preemption_whose_checkpoint_fails_is_still_a_preemption(capsys, tmp_path, monkeypatch, one_thread):
    """The folder turned unwritable (or the disk full) when the scheduler's SIGTERM came: exit 143 as any
    preemption (a requeue continues), saying the stop and that the earlier last.pt is intact."""
    import errno

    run = tmp_path / "run"
    _sigterm_in_epoch_2(monkeypatch)
    real = engine._Run.save_partial

    def unwritable(self, *args):
        raise PermissionError(errno.EACCES, "Permission denied", str(run / "last.pt"))

    monkeypatch.setattr(engine._Run, "save_partial", unwritable)
    assert main(["train", *ARGS, "--batch-size", "256", "--out", str(run)]) == 128 + signal.SIGTERM
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("reste: stopped by SIGTERM (a preemption) at epoch 2, step 3/"), line
    assert "its checkpoint failed (PermissionError: " in line and "last.pt is intact and keeps epoch 1" in line
    assert f"`reste train --resume {run}`" in line
    monkeypatch.setattr(engine._Run, "save_partial", real)
    assert load_checkpoint(run / "last.pt")["epoch"] == 1 and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_the_stop_line_of_an_auto_resumed_run_says_to_run_the_command_again(capsys, tmp_path, monkeypatch,
                                                                            one_thread):
    run = tmp_path / "run"
    _sigterm_in_epoch_2(monkeypatch)
    assert main(["train", *ARGS, "--batch-size", "256", "--out", str(run), "--auto-resume"]) == 128 + signal.SIGTERM
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("reste: stopped by SIGTERM at epoch 2, step 3/"), line
    assert line.endswith("holds it: run the same command again to continue") and "--resume" not in line, line


def test_the_default_folder_taken_by_another_run_of_the_same_second_gets_a_suffix(tmp_path, monkeypatch):
    """(review newuser #1) `reste train` twice at once without --out: both named runs/MODEL-ESTIMATOR-TIME, and
    the second was refused a folder its user never chose (in use, or already holding a run)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(engine, "default_run_dir", lambda config: Path("runs") / "same-second")
    config = TrainConfig(epochs=1, threads=1)
    first = engine.train(config, progress=False, log=lambda _m: None)
    assert first["run_dir"] == str(Path("runs") / "same-second")
    second = engine.train(config, progress=False, log=lambda _m: None)  # the folder holds a run
    assert second["run_dir"] == str(Path("runs") / "same-second-2")
    with RunDirectory.open(tmp_path / "runs" / "same-second-3", fresh=True):  # another run is writing there
        third = engine.train(config, progress=False, log=lambda _m: None)
    assert third["run_dir"] == str(Path("runs") / "same-second-4")
    assert not (tmp_path / "runs" / "same-second-3" / "config.json").exists()
    with pytest.raises(UsageError, match="already holds a run"):  # a folder the user chose is refused, as before
        engine.train(config, Path("runs") / "same-second", progress=False, log=lambda _m: None)
