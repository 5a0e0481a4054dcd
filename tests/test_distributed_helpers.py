"""reste.distributed without torchrun: one process, rank 0 of 1, no process group."""

import pytest
import torch

from reste import distributed
from reste.errors import UsageError


def test_without_torchrun(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert distributed.env_rank() == 0 and distributed.env_world_size() == 1
    ctx, device = distributed.init_distributed(torch.device("cpu"))
    assert (ctx.rank, ctx.world_size, ctx.enabled, ctx.main) == (0, 1, False, True)
    assert device == torch.device("cpu")
    assert not distributed.is_distributed()
    distributed.leave_process_group()  # nothing to leave: no error


def test_env_rank_reads_torchrun(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    assert distributed.env_rank() == 3
    monkeypatch.setenv("RANK", "not a number")
    assert distributed.env_rank() == 0


def test_rank_and_world_size_needs_a_process_group():
    with pytest.raises(UsageError, match="torchrun"):
        distributed.rank_and_world_size()


def _in_order(rank: int, store: str, log: str) -> None:
    import time

    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        d = distributed.Dist(rank=rank, world_size=2, local_rank=rank)
        with distributed.local_rank_first(d):
            with open(log, "a") as f:
                f.write(f"{rank} in\n")
            time.sleep(0.3 if rank == 0 else 0.0)
            with open(log, "a") as f:
                f.write(f"{rank} out\n")
        with distributed.local_rank_first(d, needed=False):  # not needed: no barrier, nothing waits
            pass
    finally:
        dist.destroy_process_group()


def _two_processes(target, tmp_path) -> tuple[list[int | None], str]:
    """``target(rank, store, log)`` in two forked processes (rank 1 started first): their exit codes and the
    log they wrote."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    log = tmp_path / "log"
    procs = [ctx.Process(target=target, args=(r, str(tmp_path / "store"), str(log))) for r in (1, 0)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    return [p.exitcode for p in procs], log.read_text()


def test_local_rank_first_runs_the_block_on_local_rank_0_before_the_others(tmp_path):
    """A --download under torchrun: local rank 0 fetches, the others read what it fetched."""
    codes, log = _two_processes(_in_order, tmp_path)
    assert codes == [0, 0]
    assert log.split("\n")[:4] == ["0 in", "0 out", "1 in", "1 out"]
    with distributed.local_rank_first(distributed.Dist()):  # one process: just the block
        pass


def _first_fails(rank: int, store: str, log: str) -> None:
    import os

    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    # Both joined before rank 0 fails: its init can return while rank 1's is still connecting, and an exit then
    # fails rank 1's init (under load), not the barrier this test is about.
    dist.barrier()
    d = distributed.Dist(rank=rank, world_size=2, local_rank=rank)
    try:
        with distributed.local_rank_first(d):
            if rank == 0:
                raise RuntimeError("no network")
    except UsageError as err:
        with open(log, "a") as f:
            f.write(f"{rank}: {err}\n")
    except RuntimeError:
        os._exit(0)  # rank 0: its own error; it leaves without the barrier


def test_local_rank_first_says_why_the_others_stop_when_the_first_fails(tmp_path):
    _, log = _two_processes(_first_fails, tmp_path)
    assert log == "1: the first process of this node could not prepare the data; see its error\n"


def _stop_agreed(rank: int, store: str, log: str) -> None:
    import signal
    import types

    import torch.distributed as dist

    from reste import engine

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:  # SIGUSR1 came to rank 1 only; rank 0 has a --save-every checkpoint due
        run = types.SimpleNamespace(dist=distributed.Dist(rank=rank, world_size=2, local_rank=rank),
                                    device=torch.device("cpu"),
                                    stop=types.SimpleNamespace(signum=signal.SIGUSR1 if rank else 0))
        flag = engine._Run._agree_stop(run, 2 if run.stop.signum else 1)
        with open(log, "a") as f:
            f.write(f"{rank} {flag} {int(run.stop.signum)}\n")
    finally:
        dist.destroy_process_group()


def test_the_processes_agree_on_the_stop_signal_so_rank_0_names_the_one_that_came(tmp_path):
    import signal

    codes, log = _two_processes(_stop_agreed, tmp_path)
    assert codes == [0, 0], log
    assert sorted(log.splitlines()) == [f"0 2 {int(signal.SIGUSR1)}", f"1 2 {int(signal.SIGUSR1)}"]


@pytest.mark.parametrize("env, needle", [
    ({"WORLD_SIZE": "2"}, "WORLD_SIZE=2 is set but RANK is not: launch with torchrun, or unset WORLD_SIZE"),
    ({"WORLD_SIZE": "abc"}, "WORLD_SIZE='abc' is not a number: launch with torchrun, or unset it"),
    ({"WORLD_SIZE": "2", "RANK": "0"}, "WORLD_SIZE=2 is set but MASTER_ADDR is not"),
    ({"WORLD_SIZE": "2", "RANK": "x", "MASTER_ADDR": "h", "MASTER_PORT": "1"}, "RANK='x' is not a process of"),
    # (review mut6 #4) no MASTER_PORT was torch's ValueError
    ({"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "h"}, "WORLD_SIZE=2 is set but MASTER_PORT is not: launch with "
                                                           "torchrun, or unset WORLD_SIZE"),
])
def test_stray_launcher_variables_are_one_line(capsys, monkeypatch, tmp_path, env, needle):
    """A job script's WORLD_SIZE without torchrun: one line saying so, not a KeyError or ValueError."""
    from cli_checks import one_line_error

    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    line = one_line_error(capsys, "train", "--epochs", "1", "--threads", "1", "--no-progress", "--out",
                          str(tmp_path / "r"))
    assert needle in line, line
    assert not (tmp_path / "r").exists()


def test_a_rank_just_past_the_last_is_one_line(capsys, monkeypatch, tmp_path):
    """(review mut6 #3) RANK equal to WORLD_SIZE (ranks count from 0) waited in the join for ever where `>` stood for
    `>=`; it is one line, which names the rank."""
    from reste.cli import main

    for name, value in {"WORLD_SIZE": "2", "RANK": "2", "MASTER_ADDR": "h", "MASTER_PORT": "1"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert main(["train", "--epochs", "1", "--threads", "1", "--no-progress", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err == ("reste: error (rank 2): RANK='2' is not a process of WORLD_SIZE=2: launch with torchrun, or unset "
                   "them\n"), err


_JOIN_AFTER_A_STOP = """
import os, signal, sys, time
from reste import distributed, engine

with engine.StopRequest().handling() as stop:  # the run's handler, installed explicitly (nohup leaves SIGTERM alone)
    if sys.argv[1] == "stopped":
        os.kill(os.getpid(), signal.SIGTERM)
        while not stop.signum:  # the handler runs between bytecodes, soon after the kill
            time.sleep(0.001)
    with distributed._stop_signals_kill(lambda: stop.signum):
        # stands for the join's wait in C++ for a rank that never comes: a noted signal ends the process as the
        # block starts, so its length shows nothing either way (it was 5 s, each "not stopped" run's cost)
        time.sleep(0.2)
print("joined")
"""


@pytest.mark.parametrize("before", ["stopped", "not stopped"])
def test_a_stop_signal_noted_before_the_join_ends_the_process_there(tmp_path, before):
    """The run's handler only notes a stop signal (for a checkpoint after the join); one noted before the join
    ends the process at the join, as if it had come a moment later, not after a wait for the group."""
    import signal
    import subprocess
    import sys

    script = tmp_path / "join.py"
    script.write_text(_JOIN_AFTER_A_STOP)
    proc = subprocess.run([sys.executable, str(script), before], capture_output=True, text=True, timeout=120)
    if before == "stopped":
        assert proc.returncode == -signal.SIGTERM and "joined" not in proc.stdout, (proc.returncode, proc.stderr)
    else:
        assert proc.returncode == 0 and proc.stdout == "joined\n", proc.stderr


def test_the_job_token_is_one_line_alike_in_every_process_of_a_job(monkeypatch):
    """(review dist #3) what rank 0 writes in the run's lock and the other processes look for: the same in each
    rank of one job, another for another rendezvous or restart round, empty without torchrun."""
    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID",
                 "TORCHELASTIC_RESTART_COUNT"):
        monkeypatch.delenv(name, raising=False)
    assert distributed.job_token() == ""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("MASTER_ADDR", "localhost")
    monkeypatch.setenv("MASTER_PORT", "29500")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "a\nb")
    tokens = []
    for rank in ("0", "1"):
        monkeypatch.setenv("RANK", rank)
        tokens.append(distributed.job_token())
    assert tokens[0] == tokens[1] and "\n" not in tokens[0] and "29500" in tokens[0]
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    assert distributed.job_token() != tokens[0]
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "")
    monkeypatch.setenv("MASTER_PORT", "29501")
    assert distributed.job_token() != tokens[0]


def test_await_main_waits_for_ready_or_its_timeout():
    calls = []
    assert distributed.await_main(lambda: calls.append(1) or len(calls) >= 3, timeout=60, poll=0.001)
    assert len(calls) == 3
    assert not distributed.await_main(lambda: False, timeout=0.05, poll=0.01)


def test_eval_under_torchrun_is_refused_in_one_line(capsys, monkeypatch, tmp_path):
    """(review dist) `reste eval` under torchrun evaluated the whole test set in every process, each printing its
    line; it is one process's work (the README says so), refused before any checkpoint is read."""
    from cli_checks import one_line_error

    for name, value in (("WORLD_SIZE", "2"), ("RANK", "0"), ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "29500")):
        monkeypatch.setenv(name, value)
    line = one_line_error(capsys, "eval", str(tmp_path / "missing.pt"))
    assert line == ("reste: error: reste eval runs in one process (under torchrun each would evaluate the "
                    "whole test set): run it without torchrun"), line
    # (review rev13 #3) its twin, predict: each process predicted, and wrote the same output file
    line = one_line_error(capsys, "predict", str(tmp_path / "m.rbnn"))
    assert line.startswith("reste: error: reste predict runs in one process (under torchrun each would predict "), line
    line = one_line_error(capsys, "export", str(tmp_path / "missing.pt"), str(tmp_path / "m.rbnn"))
    assert line.startswith("reste: error: reste export runs in one process (under torchrun each would write "), line
    # (review rev13 #2) a job script's stray WORLD_SIZE is no torchrun: eval ran, and is not refused for it
    monkeypatch.delenv("RANK")
    line = one_line_error(capsys, "eval", str(tmp_path / "missing.pt"))
    assert "runs in one process" not in line and "launch with torchrun" not in line, line


def test_a_stopped_torchrun_runs_line_says_to_run_torchrun_again(monkeypatch, tmp_path):
    """(review imgdist #2) a rank's error line under torchrun said `reste train --resume DIR`, one process, which a
    checkpoint taken inside an epoch by 2 refuses."""
    from reste import cli, rundir
    from reste.config import TrainConfig
    from reste.errors import shell_word

    (tmp_path / "run").mkdir()
    rundir.write_config(tmp_path / "run", TrainConfig(epochs=2).resolve())
    for name, value in (("WORLD_SIZE", "2"), ("RANK", "1"), ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "29500")):
        monkeypatch.setenv(name, value)
    line = cli._run_kept(["train", "--out", str(tmp_path / "run")])
    assert (f"continue it with torchrun again, 2 processes, running `-m reste.cli train --resume "
            f"{shell_word(tmp_path / 'run')}`" in line), line
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert f"continue it with `reste train --resume {shell_word(tmp_path / 'run')}`" in cli._run_kept(
        ["train", "--out", str(tmp_path / "run")])
