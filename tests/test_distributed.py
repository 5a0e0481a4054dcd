"""Distributed data-parallel training with torchrun on CPU (gloo, 2 processes)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import warnings

import pytest
import torch

from reste import engine, rundir
from reste.checkpoint import load_checkpoint

ARGS = ["--epochs", "6", "--seed", "3", "--no-progress", "--device", "cpu"]
ENV = dict(os.environ, OMP_NUM_THREADS="1")


def _torchrun(*args: str, program: tuple[str, ...] = ("-m", "reste.cli")) -> list[str]:
    """torchrun with 2 processes on this machine. ``--standalone``: the launcher's store listens on a port the
    system gives it when it binds (``localhost:0``), and the workers join through that store. A port picked
    beforehand (bind port 0, close, pass the number) could be taken by another process before torchrun bound it
    again: a rare EADDRINUSE in CI."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *program,
            "train", *args]


#: What a process prints when C++ aborts it (std::terminate, e.g. a thread still joinable while the
#: interpreter tears down). Seen twice in CI and once in 93 runs of the 2-process training here, each
#: time in rank 1 after rank 0 had printed its result, so at exit. Then the gloo group was left to
#: the interpreter's teardown with its threads running (torch.distributed.nn, imported after
#: init_process_group, held it: reste.distributed._import_before_the_group, and the test below); that
#: is fixed, and the rerun stays until CI has shown the abort gone.
TEARDOWN_ABORT = "terminate called without an active exception"


def _run_fresh(args_for, tries: int = 2, program: tuple[str, ...] = ("-m", "reste.cli")
               ) -> tuple[subprocess.CompletedProcess, int]:
    """torchrun with ``args_for(attempt)``, run again (into a fresh run directory, which ``args_for``
    names) only when an attempt died of the teardown abort above; any other failure is final.
    Returns the last process and its attempt number."""
    for attempt in range(tries):
        proc = subprocess.run(_torchrun(*args_for(attempt), program=program), capture_output=True, text=True, env=ENV,
                              timeout=300)
        if proc.returncode == 0 or TEARDOWN_ABORT not in proc.stderr:
            break
        # visible in the run's warnings summary: the fix above should make this never happen
        warnings.warn(f"torchrun died of the teardown abort ({TEARDOWN_ABORT!r}); running it once more",
                      stacklevel=2)
    return proc, attempt


_THREADS_AFTER_MAIN = """
import os, sys
from pathlib import Path
from reste import cli
status = cli.main(sys.argv[1:])
names = sorted(open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task"))
(Path(__file__).parent / f"threads{os.environ['RANK']}.txt").write_text(" ".join(names))
sys.exit(status)
"""


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="reads thread names from Linux's /proc")
def test_leaving_the_group_frees_it_and_stops_its_threads(tmp_path):
    """After the CLI returns, no gloo thread is left (the group was freed, not left to the interpreter's
    teardown): torch.distributed.nn, imported lazily after init_process_group, used to hold it."""
    script = tmp_path / "main.py"
    script.write_text(_THREADS_AFTER_MAIN)
    cmd = _torchrun("--epochs", "1", "--seed", "3", "--no-progress", "--device", "cpu", "--out", str(tmp_path / "run"),
                    program=(str(script),))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    threads = [(tmp_path / f"threads{rank}.txt").read_text() for rank in (0, 1)]
    assert not any("gloo" in names for names in threads), threads


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """One uninterrupted 2-process run, shared by the tests below: (run directory, stdout)."""
    base = tmp_path_factory.mktemp("ddp")
    proc, attempt = _run_fresh(lambda attempt: (*ARGS, "--out", str(base / f"full{attempt}")))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return base / f"full{attempt}", proc.stdout


def test_torchrun_two_processes_train_and_evaluate_in_one(full_run, tmp_path):
    out, stdout = full_run
    # rank 0 alone logs and writes
    assert stdout.count("done: best test acc") == 1
    assert "2 processes (synchronised BatchNorm)" in stdout  # on by default
    metrics = rundir.read_metrics(out)
    assert [m["epoch"] for m in metrics] == [1, 2, 3, 4, 5, 6]
    # the accuracy the 2 processes measured adds up each one's images, each once: exactly their own
    # batches' predictions, replayed here; the checkpoint evaluates in a single process to it, but for
    # the images that its other batches predict otherwise within rounding (none, mostly)
    two, otherwise = _two_processes_replayed(out / "last.pt", tmp_path)
    assert abs(two - metrics[-1]["test_acc"]) < 1e-9
    result = engine.evaluate_checkpoint(out / "last.pt")
    assert abs(result["top1"] - metrics[-1]["test_acc"]) <= 100.0 * otherwise / result["images"] + 1e-9
    assert result["top1"] > 40.0


def _two_processes_replayed(checkpoint, folder) -> tuple[float, int]:
    """The test accuracy of ``checkpoint`` as 2 processes measure it, and how many images one process
    predicts otherwise.

    Each process took every other image, in batches of its own; one process takes them all, in other
    batches. A float32 kernel can round another batch shape otherwise (oneDNN picks its kernels by shape
    and by CPU: AVX2, AVX-512), and in a binary network a sign input within rounding of zero then flips,
    and the prediction may follow it. Replayed here, on this CPU, with the run's loaders and thread
    count, each process's batches give the float32 sums that process got (equal, not close: the same
    kernels on the same shapes). An image the two batchings predict otherwise must be one whose
    prediction rounding can change by the float64 reference (reste.export.reference, which bounds the
    error of any float32 evaluation): a sign input, or its top two logits, within that bound. An image
    whose prediction changes with the batches beyond that is not rounding but a bug."""
    from reste.data import load_datasets
    from reste.data.loaders import _test_loader
    from reste.export import export_model
    from reste.export.reference import compare, graph_reference, trace_model

    ckpt = load_checkpoint(checkpoint)
    config, model = ckpt["config"], engine.model_from_checkpoint(ckpt)
    assert config["amp"] == "none" and config["threads"]  # float32, the thread count of the run
    _, test_ds, _ = load_datasets(config["dataset"], train=False)

    def evaluated(rank: int, world: int) -> list[torch.Tensor]:  # images, labels, predictions
        loader = _test_loader(test_ds, config["eval_batch_size"], 0, config["seed"], False, rank, world)
        with torch.no_grad():
            return [torch.cat(parts) for parts in zip(*((x, y, model(x).argmax(1)) for x, y in loader))]

    before = torch.get_num_threads()
    torch.set_num_threads(config["threads"])
    try:
        images, labels, one = evaluated(0, 1)
        two = torch.empty_like(one)
        for rank in (0, 1):  # rank r takes images r, r + 2, ...
            two[rank::2] = evaluated(rank, 2)[2]
        logits, sites = trace_model(model, images)
    finally:
        torch.set_num_threads(before)
    export_model(model, folder / "model.rbnn", verify=False)
    ref = graph_reference(folder / "model.rbnn", images)
    check = compare(ref, logits, sites)
    assert check.traced and check.mismatch == 0, check.problems  # the reference holds for this CPU's float32
    near = torch.tensor([ref.near_ties(i) > 0 for i in range(len(labels))]) | ref.argmax_ties()
    otherwise = one != two
    assert not (otherwise & ~near).any(), f"images {(otherwise & ~near).nonzero().flatten().tolist()}"
    return 100.0 * float((two == labels).sum()) / len(labels), int(otherwise.sum())


def test_a_resume_with_another_process_count_says_the_global_batch_changes(full_run, tmp_path, command):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(full_run[0], run)
    (run / ".lock").unlink(missing_ok=True)
    r = command("train", "--resume", str(run), "--epochs", "7", "--force", "--batch-size", "32", "--no-progress",
                cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    # the images a step took before: the batch it trained with (64) times 2, not the new one's
    assert ("trained with 2 process(es) and continues with 1: --batch-size 32 is per process, so each step now "
            "takes 32 images instead of 128") in r.stdout, r.stdout
    assert [m["epoch"] for m in rundir.read_metrics(run)] == [1, 2, 3, 4, 5, 6, 7]


def test_torchrun_killed_then_resumed_matches_an_uninterrupted_run(full_run, tmp_path):
    """kill -9 of every process mid-run, then ``torchrun ... --resume``: the same weights, optimizer
    state and metrics as the 2-process run that was never interrupted."""
    full, cut = full_run[0], tmp_path / "cut"
    proc = subprocess.Popen(_torchrun(*ARGS, "--out", str(cut)), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=ENV, start_new_session=True)
    try:
        start = time.time()
        while not (cut / "last.pt").exists():  # an epoch's checkpoint (written after its metrics line)
            assert time.time() - start < 240 and proc.poll() is None, "the run did not finish an epoch"
            time.sleep(0.02)
        workers = _descendants(proc.pid)  # torchrun starts each in a session of its own: killpg misses them
        assert len(workers) >= 2
        for pid in [proc.pid, *workers]:
            _kill(pid)
        proc.wait(timeout=30)
        for pid in workers:
            _wait_gone(pid)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    done = load_checkpoint(cut / "last.pt")["epoch"]
    assert 1 <= done < 6, "the kill should land before the run finished"
    resumed = subprocess.run(_torchrun("--resume", str(cut), "--no-progress"), capture_output=True, text=True,
                             env=ENV, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "nothing to do" not in resumed.stdout  # the resume trained the epochs the kill cut off

    a, b = _assert_same_end(full, cut, epochs=6)
    sa = [s.get("momentum_buffer") for s in a["optimizer"]["state"].values()]
    sb = [s.get("momentum_buffer") for s in b["optimizer"]["state"].values()]
    assert all((x is None and y is None) or torch.equal(x, y) for x, y in zip(sa, sb))


def test_a_rank_waiting_to_join_ends_on_the_launchers_sigterm(full_run):
    """Rank 0 refuses a folder that holds a run before it joins the group; the launcher then sends SIGTERM to
    rank 1, which waits in C++ for the group, where a Python handler cannot run. It ends at once: the stop
    signals keep their default action while a process joins (it ignored them and was SIGKILLed 30 s later)."""
    _refused_then_stopped(_torchrun(*ARGS, "--out", str(full_run[0])))


def test_a_resume_of_a_folder_another_job_holds_is_rank_0s_line_alone(full_run):
    """(review dist #3) rank 1 read a held folder before rank 0's verdict and printed its own error about what it
    read (here the settings differ) beside rank 0's "in use" line: it now waits for its own rank 0's lock, and the
    launcher stops it when rank 0 refuses."""
    with rundir.RunDirectory.open(full_run[0], fresh=False, job="another job"):
        proc = subprocess.run(_torchrun("--resume", str(full_run[0]), "--epochs", "9", "--lr", "0.5", "--no-progress"),
                              capture_output=True, text=True, env=ENV, timeout=300)
    assert proc.returncode != 0
    assert f"reste: error: {full_run[0]} is in use by pid {os.getpid()} " in proc.stderr, proc.stderr[-3000:]
    assert "(rank 1)" not in proc.stderr and "settings differ" not in proc.stderr, proc.stderr[-3000:]
    assert "closing signal SIGTERM" in proc.stderr and "forcefully exiting via 9" not in proc.stderr


def test_the_step_lines_under_torchrun_say_they_are_rank_0s_shard(tmp_path):
    """(review imgdist #3) the lines inside an epoch gave rank 0's loss, accuracy and images/s as the job's."""
    script = tmp_path / "main.py"
    script.write_text("import sys\nfrom reste import cli, engine\nengine.STEP_LINE_EVERY = 0.0\n"
                      "sys.exit(cli.main(sys.argv[1:]))\n")
    proc, _ = _run_fresh(lambda attempt: ("--epochs", "1", "--no-progress", "--device", "cpu", "--batch-size", "128",
                                          "--eval-batch-size", "60", "--out", str(tmp_path / f"run{attempt}")),
                          program=(str(script),))
    assert proc.returncode == 0, proc.stderr[-3000:]
    steps = [line for line in proc.stdout.splitlines() if line.startswith("  epoch 1/1  step ")]
    assert steps and all("(rank 0's shard; " in line and " images/s here, about " in line and line.endswith(" in all)")
                         for line in steps), proc.stdout
    # (review rev13 #7) and the evaluation's lines at the epoch's end
    evals = [line for line in proc.stdout.splitlines() if line.startswith("  evaluating: batch ")]
    assert evals and all("(rank 0's shard; " in line for line in evals), proc.stdout


_STOP_BEFORE_THE_JOIN = """
import os, sys, time
from reste import cli, distributed, engine

stops = []
handling = engine.StopRequest.handling
def noting(self):
    stops.append(self)
    return handling(self)
engine.StopRequest.handling = noting

before = distributed._import_before_the_group
def after_the_stop():  # rank 1, between its stop handler and its join, waits for the launcher's SIGTERM
    before()
    if os.environ["RANK"] == "1":
        start = time.monotonic()
        while not stops[-1].signum and time.monotonic() - start < 120:
            time.sleep(0.01)
        print(f"rank 1 noted signal {stops[-1].signum} before its join", file=sys.stderr, flush=True)
distributed._import_before_the_group = after_the_stop
sys.exit(cli.main(sys.argv[1:]))
"""


def test_a_stop_noted_just_before_the_join_ends_the_process_there(full_run, tmp_path):
    """The race of the test above, made certain: rank 1 installs its stop handler 2 to 3 ms before it joins,
    and rank 0's refusal can bring the launcher's SIGTERM in between. The handler notes it (for a checkpoint
    after the join); the join then ends the process on it, instead of waiting for a rank 0 that never comes
    until the launcher's SIGKILL 30 s later."""
    script = tmp_path / "main.py"
    script.write_text(_STOP_BEFORE_THE_JOIN)
    err = _refused_then_stopped(_torchrun(*ARGS, "--out", str(full_run[0]), program=(str(script),)))
    assert f"rank 1 noted signal {int(signal.SIGTERM)} before its join" in err, err[-3000:]


def _refused_then_stopped(cmd: list[str]) -> str:
    """Runs ``cmd``, a torchrun whose rank 0 refuses its folder, and checks that the launcher stopped rank 1
    with SIGTERM, not with SIGKILL after 30 s; returns its stderr."""
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=300)
    assert proc.returncode != 0 and "already holds a run" in proc.stderr, proc.stderr[-3000:]
    assert "closing signal SIGTERM" in proc.stderr  # the launcher did stop rank 1 ...
    assert "forcefully exiting via 9" not in proc.stderr, proc.stderr[-3000:]  # ... with SIGTERM, not SIGKILL
    return proc.stderr


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _wait_gone(pid: int, seconds: float = 10.0) -> None:
    """Until ``pid`` no longer runs (a zombie, dead but not yet reaped by its parent, counts as gone)."""
    for _ in range(int(seconds / 0.02)):
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return
        except OSError:
            return
        time.sleep(0.02)
    raise AssertionError(f"process {pid} still runs after {seconds:g} s")


def _assert_same_end(full, cut, epochs: int):
    """The resumed run ``cut`` ended as the uninterrupted ``full``: epochs, weights, metrics (not
    times). Returns both last checkpoints.

    Equal, not close, on any CPU: both runs ran here, with the same process count, thread count (the
    resume takes the recorded one), batches and kernels, so every float32 sum is taken in the same order;
    the sum of 2 processes' gradients rounds alike in either order (a + b == b + a). Bit-exact resumption is
    the promise these tests keep."""
    a, b = load_checkpoint(full / "last.pt"), load_checkpoint(cut / "last.pt")
    assert a["epoch"] == b["epoch"] == epochs
    for key, value in a["model"].items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, b["model"][key]), key
    strip = lambda ms: [{k: v for k, v in m.items() if k != "time"} for m in ms]  # noqa: E731
    assert strip(rundir.read_metrics(full)) == strip(rundir.read_metrics(cut))
    return a, b


def test_no_sync_bn_keeps_batch_norm_per_process(full_run, tmp_path):
    proc, attempt = _run_fresh(
        lambda attempt: (*ARGS, "--no-sync-bn", "--out", str(tmp_path / f"per-process{attempt}")))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / f"per-process{attempt}"
    assert "2 processes (BatchNorm per process)" in proc.stdout
    assert rundir.saved_config(out).sync_bn is False
    # the same run with synchronised statistics normalised differently, so it trained differently
    synced, alone = load_checkpoint(full_run[0] / "last.pt")["model"], load_checkpoint(out / "last.pt")["model"]
    means = [k for k in synced if k.endswith("running_mean")]
    assert means and any(not torch.equal(synced[k], alone[k]) for k in means)
    assert engine.evaluate_checkpoint(out / "last.pt")["top1"] > 40.0


# ---------------------------------------------------- preemption of a 2-process run
# SIGTERM to every process (as SLURM sends it), a mid-epoch checkpoint agreed by both processes,
# and a resume that ends bit-exactly like an uninterrupted 2-process run.

PREEMPT_ARGS = ["--epochs", "3", "--seed", "4", "--batch-size", "16", "--no-progress", "--device", "cpu"]


@pytest.mark.slow  # three 2-process runs: about a minute on 2 cores
def test_sigterm_to_a_two_process_run_then_resume_is_exact(tmp_path):
    full, cut = tmp_path / "full", tmp_path / "cut"
    done = subprocess.run(_torchrun(*PREEMPT_ARGS, "--out", str(full)), capture_output=True, text=True, env=ENV)
    assert done.returncode == 0, done.stderr[-3000:]

    proc = subprocess.Popen(_torchrun(*PREEMPT_ARGS, "--out", str(cut)), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=ENV, start_new_session=True)
    try:
        metrics = cut / "metrics.jsonl"
        while not (metrics.exists() and metrics.read_text().strip()):
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.02)
        # into epoch 2 (where exactly does not matter), a tenth of epoch 1's time: epochs 2 and 3 are left, which
        # even on a loaded machine take more (review tests, suggestion 3: 0.4 of it could reach the run's end)
        time.sleep(0.1 * rundir.read_metrics(cut)[0]["time"])
        os.killpg(proc.pid, signal.SIGTERM)  # the launcher and both workers, like a cluster's preemption
        _, err = proc.communicate()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    stops = [ln for ln in err.splitlines() if ln.startswith("reste: stopped by SIGTERM at ")]
    assert len(stops) == 1, err[-3000:]  # one line, from rank 0
    # (review dist #1) how to go on under torchrun: `reste train --resume` alone is one process, refused mid-epoch
    assert stops[0].endswith(f"continue with torchrun again, 2 processes, running `-m reste.cli train --resume {cut}`")
    ckpt = load_checkpoint(cut / "last.pt")
    assert ckpt["world_size"] == 2
    if ckpt["step"]:  # inside an epoch: both processes' running sums are kept
        assert len(ckpt["partial"]["ranks"]) == 2 and ckpt["step"] % 10 == 0  # they agree every 10 steps
    assert (ckpt["epoch"], ckpt["step"]) != (3, 0), "the signal should land before the run finished"

    resumed = subprocess.run(_torchrun("--resume", str(cut), "--no-progress"), capture_output=True, text=True,
                             env=ENV)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _assert_same_end(full, cut, epochs=3)


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="finds the workers through Linux's /proc")
def test_workers_whose_torchrun_was_killed_save_their_step_and_stop(tmp_path):
    """(review mp1, suggestion 1) torchrun killed with SIGKILL (a scheduler's hard kill, the out-of-memory killer):
    its two processes trained on, holding the run's lock. They stop at their next agreement, as on SIGTERM: their
    step saved, a note saying why, the lock free for a requeued job."""
    cut = tmp_path / "cut"
    proc = subprocess.Popen(_torchrun(*PREEMPT_ARGS, "--epochs", "20", "--out", str(cut)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV, start_new_session=True)
    workers = []
    try:
        metrics = cut / "metrics.jsonl"
        while not (metrics.exists() and metrics.read_text().strip()):
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.02)
        workers = _descendants(proc.pid)
        assert len(workers) >= 2
        _kill(proc.pid)
        for pid in workers:
            _wait_gone(pid, seconds=120)  # (their next agreement: within 10 steps of a few milliseconds each)
        out, err = proc.communicate(timeout=30)  # (the workers held the pipes open: the output is whole)
    finally:
        for pid in [proc.pid, *workers]:
            _kill(pid)
    assert "the process that started this run (pid " in out and "is gone; the processes stop as on SIGTERM" in out, \
        out[-3000:]
    # (inside an epoch, or at its end where the next agreement fell there: seen on a loaded machine)
    assert re.search(r"reste: stopped by SIGTERM at (the end of )?epoch ", err), err[-3000:]
    ckpt = load_checkpoint(cut / "last.pt")
    assert ckpt["epoch"] < 20 and ckpt["world_size"] == 2
    rundir.RunDirectory.open(cut, fresh=False).close()  # the lock is free: a requeued job takes the run


_EACH_RANKS_EPOCHS = """
import hashlib, json, os, sys
from pathlib import Path
from reste import cli, engine

trained = engine._Run.train_epoch
def noted(self, epoch, *args, **kwargs):  # each rank's train metrics and a hash of its weights, per epoch
    metrics = trained(self, epoch, *args, **kwargs)
    weights = hashlib.sha1(b"".join(p.detach().cpu().numpy().tobytes() for p in self.model.parameters()))
    with open(Path(__file__).parent / f"rank{os.environ['RANK']}.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps({"epoch": epoch, **metrics, "weights": weights.hexdigest()}) + "\\n")
    return metrics
engine._Run.train_epoch = noted
sys.exit(cli.main(sys.argv[1:]))
"""


def test_torchrun_accumulates_micro_batches_with_synchronised_batchnorm(tmp_path):
    """--accumulate 2 under two processes: each micro-batch's forward synchronises BatchNorm across them (a
    collective per micro-batch, the same count on each rank), the backward all-reduces once a step; the run
    finishes and says how it splits the batch. (review mut10 #2, #3) After each epoch both ranks hold the same
    weights, bit for bit (all-reducing another micro-batch than the last left the others' gradients local, and the
    ranks apart), and the same train loss and accuracy, the whole training set's (not each one's shard)."""
    script = tmp_path / "main.py"
    script.write_text(_EACH_RANKS_EPOCHS)
    proc, attempt = _run_fresh(lambda attempt: (*ARGS[2:], "--epochs", "2", "--accumulate", "2", "--out",
                                                str(tmp_path / f"run{attempt}")), program=(str(script),))
    assert proc.returncode == 0, proc.stderr
    assert "batch 64 per process (128 in all), in 2 micro-batches of 32" in proc.stdout
    assert "BatchNorm normalises over each micro-batch of 32 images per process (64 in all)" in proc.stdout
    ranks = [[json.loads(line) for line in (tmp_path / f"rank{r}.jsonl").read_text().splitlines()][-2:]
             for r in (0, 1)]
    assert [e["epoch"] for e in ranks[0]] == [0, 1] and ranks[0] == ranks[1], ranks
    logged = rundir.read_metrics(tmp_path / f"run{attempt}")
    assert [(m["train_loss"], m["train_acc"]) for m in logged] == [(e["train_loss"], e["train_acc"]) for e in ranks[0]]


_RANK_1_DIVERGES = """
import os, sys
from pathlib import Path
from reste import cli, engine

real = engine._Run.step
calls = []
def step(self, images, target):  # rank 1's loss is NaN at step 3 of epoch 1; every step is counted
    loss, logits = real(self, images, target)
    calls.append(1)
    if os.environ["RANK"] == "1" and len(calls) == 3:
        loss = loss * float("nan")
    (Path(__file__).parent / f"steps{os.environ['RANK']}.txt").write_text(str(len(calls)))
    return loss, logits
engine._Run.step = step
sys.exit(cli.main(sys.argv[1:]))
"""


def test_torchrun_stops_a_diverged_run_at_the_next_agreement(tmp_path):
    """(review mp1, suggestion 2) Under torchrun, whether a loss was not finite was agreed at a checkpoint or at the
    epoch's end alone: both processes trained on to the end of the epoch. It rides on the agreement every 10 steps
    (one collective, as before): both stop at step 10 of 45, with one line naming rank 1's step."""
    script = tmp_path / "main.py"
    script.write_text(_RANK_1_DIVERGES)
    proc, attempt = _run_fresh(lambda attempt: (*ARGS[2:], "--epochs", "1", "--batch-size", "16", "--out",
                                                str(tmp_path / f"run{attempt}")), program=(str(script),))
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "non-finite loss at epoch 1, step 3;" in proc.stderr
    assert [(tmp_path / f"steps{r}.txt").read_text() for r in (0, 1)] == ["10", "10"]


_RANK_1_STATISTICS_DIVERGE = """
import os, sys, torch
from reste import cli, engine

real = engine._Run.step
calls = []
def step(self, images, target):  # rank 1 alone: a BatchNorm variance inf after its 45th step (epoch 1's last)
    out = real(self, images, target)
    calls.append(1)
    if os.environ["RANK"] == "1" and len(calls) == 45:
        with torch.no_grad():
            next(t for n, t in self.model.named_buffers() if n.endswith("running_var")).fill_(float("inf"))
    return out
engine._Run.step = step
sys.exit(cli.main(sys.argv[1:]))
"""


def test_torchrun_agrees_on_one_processs_non_finite_weights(tmp_path):
    """(review mut11 #8) the processes agree on whether the weights are finite before a save (under --no-sync-bn a
    BatchNorm statistic is one process's own): rank 0 stops naming another process's weights, not at the closed
    connection of the next collective, and no checkpoint is written."""
    script = tmp_path / "main.py"
    script.write_text(_RANK_1_STATISTICS_DIVERGE)
    proc, attempt = _run_fresh(lambda attempt: (*ARGS[2:], "--epochs", "2", "--batch-size", "16", "--no-sync-bn",
                                                "--out", str(tmp_path / f"run{attempt}")), program=(str(script),))
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "error: non-finite weights (another process's) after step 45 of epoch 1" in proc.stderr, proc.stderr[-3000:]
    assert not (tmp_path / f"run{attempt}" / "last.pt").exists()


def test_torchrun_trains_with_bop(tmp_path):
    """--optimizer bop under two processes: Bop steps on the all-reduced gradients in each (its flips agree), rank 0
    saves its state beside Adam's, and the binary weights it saves are +-1."""
    proc, attempt = _run_fresh(lambda attempt: (*ARGS[2:], "--epochs", "2", "--optimizer", "bop", "--estimator", "ste",
                                                "--scaling", "none", "--bop-gamma", "1e-3", "--out",
                                                str(tmp_path / f"run{attempt}")))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / f"run{attempt}"
    flips = [m["bop_flips"] for m in rundir.read_metrics(out)]
    ckpt = load_checkpoint(out / "last.pt")
    assert flips[0] > 0 and ckpt["optimizer"]["optimizers"][0]["flipped"] == sum(flips)
    from reste.layers import binary_layers
    from reste.models import create

    names = [f"{name}.weight" for name, _ in binary_layers(create(ckpt["model_name"], **ckpt["model_options"]))]
    assert names and all(set(ckpt["model"][k].unique().tolist()) == {-1.0, 1.0} for k in names)


_EACH_RANKS_BATCHES = """
import os, sys
from pathlib import Path
from reste import cli, engine

real = engine._Run.step
def step(self, images, target):  # each rank writes the size of each batch it trains
    with open(Path(__file__).parent / f"batches{os.environ['RANK']}.txt", "a", encoding="utf-8") as f:
        f.write(f"{len(target)}\\n")
    return real(self, images, target)
engine._Run.step = step
sys.exit(cli.main(sys.argv[1:]))
"""


def test_synchronised_batchnorm_trains_a_last_batch_of_one_sample_per_process(tmp_path):
    """(review mp1, suggestion 3) digits' 1437 images on 2 processes are 719 each (one padded), 2 batches of 359 and
    one of 1: synchronised BatchNorm normalises that one over both processes' samples, so it is trained, not left
    out as it is where BatchNorm sees one process alone (test_resume_guards: a last batch of one sample)."""
    script = tmp_path / "main.py"
    script.write_text(_EACH_RANKS_BATCHES)
    proc, attempt = _run_fresh(lambda attempt: (*ARGS[2:], "--epochs", "1", "--batch-size", "359", "--out",
                                                str(tmp_path / f"run{attempt}")), program=(str(script),))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "left out" not in proc.stdout, proc.stdout
    for rank in (0, 1):
        assert (tmp_path / f"batches{rank}.txt").read_text().split() == ["359", "359", "1"]
