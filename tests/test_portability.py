"""What Windows and macOS do differently, simulated on Linux: no fcntl (Windows locks with msvcrt), an open file
that cannot be removed, a file browser's litter in --out, a target that cannot be replaced for a moment, text
files in the locale's code page with CRLF line ends, '\\' in relative paths, and $CC with arguments."""

from __future__ import annotations

import contextlib
import csv
import errno
import json
import ntpath
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path, PureWindowsPath

import pytest

import reste
from reste import files, native, rundir
from reste.cli import main
from reste.errors import UsageError
from reste.experiments import report
from reste.rundir import RunDirectory

SRC = str(Path(reste.__file__).resolve().parent.parent)
TINY = ["--dataset", "digits", "--model", "digits_1w1a", "--epochs", "1", "--threads", "1", "--no-progress"]

# sitecustomize of a process that has no fcntl (as on Windows) and a stand-in for msvcrt.locking: byte-range
# locks that refuse another process (POSIX record locks) and another descriptor of this one, as Windows does
WINDOWS_LOCKS = '''
import errno, os, subprocess, sys, types  # subprocess first: it takes a process with msvcrt for Windows
import fcntl as _fcntl

sys.modules["fcntl"] = None  # "import fcntl" raises ImportError
_held = {}


def locking(fd, mode, nbytes):
    offset = os.lseek(fd, 0, os.SEEK_CUR)
    info = os.fstat(fd)
    key = (info.st_dev, info.st_ino, offset)
    if mode == 0:  # LK_UNLCK
        _held.pop(key, None)
        _fcntl.lockf(fd, _fcntl.LOCK_UN, nbytes, offset)
        return
    if _held.get(key, fd) != fd:
        raise OSError(errno.EACCES, "Permission denied")
    try:
        _fcntl.lockf(fd, _fcntl.LOCK_EX | _fcntl.LOCK_NB, nbytes, offset)
    except OSError:
        raise OSError(errno.EACCES, "Permission denied") from None
    _held[key] = fd
    with open(os.environ["FAKE_MSVCRT_LOG"], "a") as log:
        log.write(f"{offset} {nbytes}\\n")


msvcrt = types.ModuleType("msvcrt")
msvcrt.locking, msvcrt.LK_UNLCK, msvcrt.LK_LOCK, msvcrt.LK_NBLCK = locking, 0, 1, 2
sys.modules["msvcrt"] = msvcrt
'''


def _shim_env(tmp_path: Path, code: str) -> dict[str, str]:
    shim = tmp_path / "shim"
    shim.mkdir(exist_ok=True)
    (shim / "sitecustomize.py").write_text(code)
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(shim), SRC]),
                FAKE_MSVCRT_LOG=str(tmp_path / "locks.log"))


def _reste(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "reste.cli", *argv], capture_output=True, text=True, env=env,
                          timeout=300)


def test_without_fcntl_reste_runs_and_locks_its_run_directory_with_msvcrt(tmp_path):
    env = _shim_env(tmp_path, WINDOWS_LOCKS)
    probe = subprocess.run([sys.executable, "-c", "import fcntl"], capture_output=True, text=True, env=env)
    assert probe.returncode == 1 and "ModuleNotFoundError" in probe.stderr  # the shim works
    proc = _reste(env, "--help")
    assert proc.returncode == 0 and "train" in proc.stdout, proc.stderr
    proc = _reste(env, "train", *TINY, "--out", str(tmp_path / "run"))
    assert proc.returncode == 0, proc.stderr
    assert "done: best test acc" in proc.stdout and rundir.read_metrics(tmp_path / "run")
    # the lock is on one byte past the PID text, which stays readable at the start of .lock
    assert (tmp_path / "locks.log").read_text().split() == [str(1 << 20), "1"]
    assert (tmp_path / "run" / ".lock").stat().st_size < 100

    # a process holds a run directory: a second start on it is refused with one line naming that process
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys\nfrom reste.rundir import RunDirectory\n"
         f"run = RunDirectory.open({str(tmp_path / 'held')!r}, fresh=True)\nprint('ready', flush=True)\n"
         "sys.stdin.read()\nrun.close()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert holder.stdout.readline().strip() == "ready"
        proc = _reste(env, "train", *TINY, "--out", str(tmp_path / "held"))
        assert proc.returncode == 75  # EX_TEMPFAIL: held by another job
        assert proc.stderr.strip().splitlines() == [
            f"reste: error: {tmp_path / 'held'} is in use by pid {holder.pid} (a run is writing to it); wait for it "
            "to finish, or use another folder"]
    finally:
        holder.communicate("", timeout=60)
    assert holder.returncode == 0
    proc = _reste(env, "train", *TINY, "--out", str(tmp_path / "held"))  # released: the folder is free again
    assert proc.returncode == 0, proc.stderr


def test_a_lock_module_that_is_missing_gives_no_lock_but_the_run_goes_on(tmp_path, monkeypatch):
    monkeypatch.setattr(rundir, "fcntl", None)
    monkeypatch.setattr(rundir, "msvcrt", None)
    with RunDirectory.open(tmp_path / "run", fresh=True) as run:
        assert (tmp_path / "run" / ".lock").read_text().splitlines()[0] == str(os.getpid())
        assert run._folder_fd is None
        with RunDirectory.open(tmp_path / "run", fresh=True):  # not refused: there is nothing to lock with
            pass


def test_an_engine_that_cannot_be_imported_is_one_line_not_a_second_traceback(tmp_path):
    env = _shim_env(tmp_path, 'import sys\nsys.modules["reste.engine"] = None\n')
    proc = _reste(env, "train", *TINY, "--out", str(tmp_path / "run"))
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "reste: error: ModuleNotFoundError: import of reste.engine halted; None in sys.modules (run with --debug for "
        "the traceback)"]


# ------------------------------------------------------------------- Windows: an open file cannot be removed


@pytest.fixture
def windows_files(monkeypatch):
    """Windows' rule in this process: removing a file that is open here fails (WinError 32); rundir takes its
    Windows order."""
    unlink = os.unlink

    def open_here() -> set[str]:
        found = set()
        for fd in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError):  # the listing's own descriptor is gone
                found.add(os.readlink(f"/proc/self/fd/{fd}"))
        return found

    def unlink_unless_open(path, *args, **kwargs):
        if os.path.realpath(path) in open_here():
            raise PermissionError(errno.EACCES, "The process cannot access the file because it is being used by "
                                  "another process", str(path))
        unlink(path, *args, **kwargs)

    monkeypatch.setattr(os, "unlink", unlink_unless_open)
    monkeypatch.setattr(rundir, "_WINDOWS", True)


def test_a_refused_start_removes_its_lock_file_where_open_files_cannot_be_removed(tmp_path, windows_files):
    folder = tmp_path / "full"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match="is not empty"):
        RunDirectory.open(folder, fresh=True)
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]


def test_a_discarded_run_goes_with_its_lock_file_where_open_files_cannot_be_removed(tmp_path, windows_files):
    run = RunDirectory.open(tmp_path / "a" / "run", fresh=True)
    (run.path / rundir.CONFIG).write_text("{}")
    run.discard()
    assert not (tmp_path / "a").exists()


def test_a_folder_lock_refused_removes_the_lock_file_made_for_it(tmp_path, windows_files, monkeypatch):
    def refused(path):
        raise rundir.RunInUse(f"{path} is in use by another process")

    monkeypatch.setattr(RunDirectory, "_lock_folder", staticmethod(refused))
    (tmp_path / "run").mkdir()
    with pytest.raises(rundir.RunInUse):
        RunDirectory.open(tmp_path / "run", fresh=True)
    assert not (tmp_path / "run" / ".lock").exists()


def test_a_lock_file_that_cannot_be_written_is_removed(tmp_path, windows_files, monkeypatch):
    def full(fd, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "ftruncate", full)
    (tmp_path / "run").mkdir()
    with pytest.raises(UsageError, match="free some space"):
        RunDirectory.open(tmp_path / "run", fresh=True)
    assert not (tmp_path / "run" / ".lock").exists()


# ------------------------------------------------------------------------- a file browser's litter in --out

LITTER = (".DS_Store", "._notes", "Thumbs.db", "desktop.ini")


def test_a_folder_holding_only_a_file_browsers_litter_is_empty(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    for name in LITTER:
        (out / name).write_bytes(b"\0")
    assert main(["train", *TINY, "--out", str(out)]) == 0, capsys.readouterr().err
    assert rundir.read_metrics(out)
    assert all((out / name).exists() for name in LITTER)  # the user's folder keeps them
    # a failed start in a folder it made removes it, even when Finder wrote a .DS_Store into it meanwhile
    run = RunDirectory.open(tmp_path / "new" / "run", fresh=True)
    (run.path / ".DS_Store").write_bytes(b"\0")
    run.discard()
    assert not (tmp_path / "new").exists()
    # other files still make a folder not empty
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "DS_Store").write_bytes(b"\0")
    with pytest.raises(UsageError, match=r"not empty \(DS_Store\)"):
        RunDirectory.open(tmp_path / "other", fresh=True)


# ---------------------------------------------------------- Windows: a target open elsewhere cannot be replaced


def _replace_failing(monkeypatch, times: int) -> list[str]:
    calls = []
    replace = os.replace

    def flaky(src, dst):
        calls.append(str(dst))
        if len(calls) <= times:
            raise PermissionError(errno.EACCES, "Access is denied", str(dst))
        replace(src, dst)

    monkeypatch.setattr(os, "replace", flaky)
    monkeypatch.setattr(files.time, "sleep", lambda s: None)
    return calls


def test_atomic_write_retries_a_replace_refused_for_a_moment_on_windows(tmp_path, monkeypatch):
    target = tmp_path / "last.pt"
    target.write_bytes(b"old")
    monkeypatch.setattr(files, "_WINDOWS", True)
    calls = _replace_failing(monkeypatch, 2)
    files.atomic_write(target, lambda f: f.write(b"new"))
    assert target.read_bytes() == b"new" and len(calls) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_atomic_write_gives_up_with_the_original_error(tmp_path, monkeypatch):
    target = tmp_path / "last.pt"
    target.write_bytes(b"old")
    monkeypatch.setattr(files, "_WINDOWS", True)
    calls = _replace_failing(monkeypatch, 1000)
    with pytest.raises(PermissionError, match="Access is denied"):
        files.atomic_write(target, lambda f: f.write(b"new"))
    assert 1 < len(calls) < 20
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]
    monkeypatch.setattr(files, "_WINDOWS", False)  # elsewhere the first failure is final
    calls.clear()
    with pytest.raises(PermissionError):
        files.atomic_write(target, lambda f: f.write(b"new"))
    assert len(calls) == 1


# --------------------------------------------------------------- sweep folders moved between OSes


def test_run_folders_are_stored_with_slashes(monkeypatch):
    with monkeypatch.context() as m:  # os.path and Path as on Windows, for this one call
        m.setattr(report.os, "path", ntpath)
        m.setattr(report, "Path", PureWindowsPath)
        rel = report._rel(PureWindowsPath(r"C:\study\runs\ste-ab12\seed0"), PureWindowsPath(r"C:\study"))
    assert rel == "runs/ste-ab12/seed0"


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep") / "s"
    assert main(["sweep", "--grid", "estimator=ste", "--seeds", "0", *TINY, "--out", str(out)]) == 0
    return out


def _to_windows_separators(out: Path) -> None:
    """The sweep's manifest and runs.csv as a version that stored os.path.relpath wrote them on Windows."""
    manifest = json.loads((out / "sweep.json").read_text())
    for s in manifest["settings"]:
        s["runs"] = {seed: rel.replace("/", "\\") for seed, rel in s["runs"].items()}
    (out / "sweep.json").write_text(json.dumps(manifest, indent=2))
    with open(out / "runs.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows and all("/" in row["run_dir"] for row in rows)
    with open(out / "runs.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({**row, "run_dir": row["run_dir"].replace("/", "\\")} for row in rows)


def test_a_sweep_written_on_windows_is_reported_elsewhere(sweep, tmp_path):
    out = tmp_path / "s"
    shutil.copytree(sweep, out)
    before = (out / "runs.csv").read_text()
    _to_windows_separators(out)
    lines: list[str] = []
    _, runs, _ = report.collect(out, log=lines.append)
    assert [r["run_dir"] for r in runs] == ["runs/" + next((out / "runs").iterdir()).name + "/seed0"]
    assert runs[0]["best_acc"] is not None and not lines
    report.summarize(out, log=lines.append)
    assert (out / "runs.csv").read_text() == before  # written again with '/'
    # the row of a run whose folder is gone is still found by its folder's name
    _to_windows_separators(out)
    shutil.rmtree(out / "runs")
    report.summarize(out, log=lines.append)
    assert (out / "runs.csv").read_text() == before
    assert any("its run folder is gone; the row an earlier report wrote is kept" in line for line in lines)


# ------------------------------------------------------------------ text files: UTF-8 and LF on every OS


def test_text_files_are_utf8_and_metrics_lines_end_in_lf(tmp_path, monkeypatch):
    """Windows' defaults for a text file (the locale's code page, CRLF line ends) applied to what rundir opens:
    a resumed metrics.jsonl must still be the bytes of an uninterrupted one."""
    def windows_open(file, mode="r", buffering=-1, encoding=None, errors=None, newline=None, **kw):
        if "b" not in mode:
            encoding = encoding or "cp1252"
            newline = "\r\n" if newline is None and mode[0] in "wax" else newline
        return open(file, mode, buffering, encoding, errors, newline, **kw)

    monkeypatch.setattr(rundir, "open", windows_open, raising=False)
    rundir.start_metrics(tmp_path)
    rundir.append_metrics(tmp_path, {"epoch": 1, "test_acc": 50.0, "±": 1.0})  # (a plugin's schedule value's name)
    rundir.append_metrics(tmp_path, {"epoch": 2, "test_acc": 60.0, "±": 2.0})
    whole = (tmp_path / rundir.METRICS).read_bytes()
    assert b"\r" not in whole and "±".encode() not in whole  # json.dumps writes it as \u00b1
    rundir.truncate_metrics(tmp_path, 1)
    rundir.append_metrics(tmp_path, {"epoch": 2, "test_acc": 60.0, "±": 2.0})
    assert (tmp_path / rundir.METRICS).read_bytes() == whole


def test_no_text_file_is_opened_in_the_locales_encoding(sweep, tmp_path):
    """PEP 597's warning names each open() or read_text() without an encoding: none in the files of a run, a
    sweep's tables and its jobs' train.log, the report's reading of them, or a resume's reading of its plugins."""
    out = tmp_path / "s"
    shutil.copytree(sweep, out)
    run = next((out / "runs").iterdir()) / "seed0"
    script = textwrap.dedent(f"""
        import io, sys, warnings
        from reste import plugins, rundir
        from reste.experiments import cli, report, sweep
        warnings.simplefilter("always", EncodingWarning)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", EncodingWarning)
            rundir.append_metrics({str(tmp_path)!r}, {{"epoch": 1}})
            rundir.divergence({str(run)!r}); rundir.record_divergence({str(run)!r}, 1, 2)
            rundir.divergence({str(run)!r}); rundir.forget_divergence({str(run)!r})
            rundir.config_keys({str(run)!r})
            plugins.plugins_in_argv(["train", "--resume", {str(run)!r}])
            sweep._file_log({str(tmp_path / "train.log")!r})("-> ±")  # a sweep job's train.log
            sys.stdout = io.StringIO()
            class Args: sweep_dir, plots = {str(out)!r}, False
            cli.cmd_report(Args)  # the report's tables, written and read
            sys.stdout = sys.__stdout__
        for w in caught:
            if issubclass(w.category, EncodingWarning) and "reste" in w.filename:
                print(f"{{w.filename}}:{{w.lineno}}")
    """)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=SRC)
    proc = subprocess.run([sys.executable, "-X", "warn_default_encoding", "-c", script], capture_output=True,
                          text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""


# ------------------------------------------------------------------------------------ the C compiler


needs_cc = pytest.mark.skipif(not shutil.which("cc"), reason="no C compiler")
SOURCE = "int seven(void) { return SEVEN; }\n"


@needs_cc
def test_cc_with_arguments_is_split_into_words(tmp_path, monkeypatch):
    monkeypatch.setenv("RESTE_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", f"{shutil.which('cc')} -DSEVEN=7")
    lib = native.compile_library("cc_words", SOURCE, [["-O1"]])
    assert lib.seven() == 7


@needs_cc
def test_a_build_that_another_process_put_in_place_first_is_loaded(tmp_path, monkeypatch):
    """Windows: the library another process built and loaded cannot be replaced; that one is loaded."""
    monkeypatch.setenv("RESTE_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", shutil.which("cc"))

    def taken(src, dst):
        shutil.copy(src, dst)  # the other process's build, the same bytes
        raise PermissionError(errno.EACCES, "Access is denied", str(dst))

    monkeypatch.setattr(native.os, "replace", taken)
    lib = native.compile_library("cc_taken", SOURCE.replace("SEVEN", "7"), [["-O1"]])
    assert lib.seven() == 7


def test_windows_limits_the_sweep_s_jobs_and_takes_ctrl_break_as_a_stop(monkeypatch, tmp_path):
    """(review portable, suggestions) a process pool on Windows waits on at most 61 processes: --jobs 64 ended in
    its ValueError; Ctrl-Break (SIGBREAK, Windows's alone) ended a run without a save."""
    import os
    import signal

    from reste import distributed
    from reste.config import TrainConfig
    from reste.errors import UsageError
    from reste.experiments import sweep

    monkeypatch.setattr(os, "name", "nt")
    with pytest.raises(UsageError, match="Windows runs at most 61 worker processes"):
        sweep.run_sweep(TrainConfig(), {"estimator": ["ste"]}, [0], tmp_path / "sw", jobs=64)
    monkeypatch.setattr(signal, "SIGBREAK", 21, raising=False)
    assert 21 in distributed.stop_signals()


def test_ctrl_break_is_answered_as_ctrl_c_is(monkeypatch, capfd):
    """(review rev15 #15) Ctrl-Break (Windows's SIGBREAK, simulated by SIGUSR2) stopped a run without Ctrl-C's line,
    and a second press waited for the save."""
    import os
    import signal

    from reste import engine

    if not hasattr(signal, "SIGUSR2"):
        pytest.skip("no SIGUSR2 to stand for SIGBREAK")
    monkeypatch.setattr(signal, "SIGBREAK", signal.SIGUSR2, raising=False)
    before = signal.getsignal(signal.SIGUSR2)
    stop = engine.StopRequest()
    with stop.handling():
        os.kill(os.getpid(), signal.SIGUSR2)
        assert stop.signum == signal.SIGUSR2
        assert signal.getsignal(signal.SIGUSR2) == before  # a second press: the handler from before
    assert "reste: Ctrl-Break: stopping after saving the current step" in capfd.readouterr().err


def test_a_cc_naming_no_program_is_no_compiler(monkeypatch):
    """(review diff21 #8) $CC set to a program that is not here counted as a compiler: the kernels' tests then
    failed, "a C compiler (nosuchcc) is here", where nothing can compile."""
    from reste.native import compiler_found

    monkeypatch.setenv("CC", "nosuch_cc_reste_test")
    assert not compiler_found()
    monkeypatch.setenv("CC", "nosuch_ccache_reste_test gcc")
    assert not compiler_found()
    monkeypatch.setenv("CC", f"{sys.executable} -m64")  # (a command line whose program is here)
    assert compiler_found()
