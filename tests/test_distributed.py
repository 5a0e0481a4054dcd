"""Distributed data-parallel training with torchrun on CPU (gloo, 2 processes)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from reste import engine
from reste.checkpoint import load_checkpoint

ARGS = ["--epochs", "6", "--seed", "3", "--no-progress", "--device", "cpu"]
ENV = dict(os.environ, OMP_NUM_THREADS="1")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
            "--master-port", str(_free_port()), "-m", "reste.cli", "train", *args]


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """One uninterrupted 2-process run, shared by the tests below: (run directory, stdout)."""
    out = tmp_path_factory.mktemp("ddp") / "full"
    proc = subprocess.run(_torchrun(*ARGS, "--out", str(out)), capture_output=True, text=True, env=ENV, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc.stdout


def test_torchrun_two_processes_train_and_evaluate_in_one(full_run):
    out, stdout = full_run
    # rank 0 alone logs and writes
    assert stdout.count("done: best test acc") == 1
    assert "2 processes (synchronised BatchNorm)" in stdout  # on by default
    metrics = engine.read_metrics(out)
    assert [m["epoch"] for m in metrics] == [1, 2, 3, 4, 5, 6]
    # the checkpoint evaluates in a single process to the accuracy the 2 processes measured
    result = engine.evaluate_checkpoint(out / "last.pt")
    assert abs(result["top1"] - metrics[-1]["test_acc"]) < 1e-9
    assert result["top1"] > 40.0


def test_torchrun_killed_then_resumed_matches_an_uninterrupted_run(full_run, tmp_path):
    """kill -9 of every process mid-run, then ``torchrun ... --resume``: the same weights, optimizer
    state and metrics as the 2-process run that was never interrupted."""
    full, cut = full_run[0], tmp_path / "cut"
    proc = subprocess.Popen(_torchrun(*ARGS, "--out", str(cut)), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=ENV, start_new_session=True)
    try:
        metrics = cut / "metrics.jsonl"
        start = time.time()
        while not (metrics.exists() and metrics.read_text().strip()):
            assert time.time() - start < 240 and proc.poll() is None, "the run did not finish an epoch"
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both workers
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    done = load_checkpoint(cut / "last.pt")["epoch"]
    assert 1 <= done < 6, "the kill should land before the run finished"
    resumed = subprocess.run(_torchrun("--resume", str(cut), "--no-progress"), capture_output=True, text=True,
                             env=ENV, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    a, b = load_checkpoint(full / "last.pt"), load_checkpoint(cut / "last.pt")
    assert a["epoch"] == b["epoch"] == 6
    for key, value in a["model"].items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, b["model"][key]), key
    sa = [s.get("momentum_buffer") for s in a["optimizer"]["state"].values()]
    sb = [s.get("momentum_buffer") for s in b["optimizer"]["state"].values()]
    assert all((x is None and y is None) or torch.equal(x, y) for x, y in zip(sa, sb))
    strip = lambda ms: [{k: v for k, v in m.items() if k != "time"} for m in ms]  # noqa: E731
    assert strip(engine.read_metrics(full)) == strip(engine.read_metrics(cut))


def test_no_sync_bn_keeps_batch_norm_per_process(full_run, tmp_path):
    out = tmp_path / "per-process"
    proc = subprocess.run(_torchrun(*ARGS, "--no-sync-bn", "--out", str(out)), capture_output=True, text=True,
                          env=ENV, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 processes (BatchNorm per process)" in proc.stdout
    assert engine.saved_config(out).sync_bn is False
    # the same run with synchronised statistics normalised differently, so it trained differently
    synced, alone = load_checkpoint(full_run[0] / "last.pt")["model"], load_checkpoint(out / "last.pt")["model"]
    means = [k for k in synced if k.endswith("running_mean")]
    assert means and any(not torch.equal(synced[k], alone[k]) for k in means)
    assert engine.evaluate_checkpoint(out / "last.pt")["top1"] > 40.0
