"""Distributed data-parallel training with torchrun on CPU (gloo, 2 processes)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from reste import engine


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_processes_train_and_evaluate_in_one(tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
           "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
           "-m", "reste.cli", "train", "--epochs", "2", "--out", str(out), "--no-progress", "--device", "cpu"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # rank 0 alone logs and writes
    assert proc.stdout.count("done: best test acc") == 1
    assert "2 processes" in proc.stdout
    metrics = engine.read_metrics(out)
    assert [m["epoch"] for m in metrics] == [1, 2]
    # the checkpoint evaluates in a single process to the accuracy the 2 processes measured
    result = engine.evaluate_checkpoint(out / "last.pt")
    assert abs(result["top1"] - metrics[-1]["test_acc"]) < 1e-9
    assert result["top1"] > 40.0
