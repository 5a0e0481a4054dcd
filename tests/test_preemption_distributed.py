"""Preemption of a 2-process torchrun run: SIGTERM to every process (as SLURM sends it), a
mid-epoch checkpoint agreed by both processes, and a resume that ends bit-exactly like an
uninterrupted 2-process run."""

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

ARGS = ["--epochs", "3", "--seed", "4", "--batch-size", "16", "--no-progress", "--device", "cpu"]
ENV = dict(os.environ, OMP_NUM_THREADS="1")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
            "--master-port", str(_free_port()), "-m", "reste.cli", "train", *args]


@pytest.mark.slow  # three 2-process runs: about a minute on 2 cores
def test_sigterm_to_a_two_process_run_then_resume_is_exact(tmp_path):
    full, cut = tmp_path / "full", tmp_path / "cut"
    done = subprocess.run(_torchrun(*ARGS, "--out", str(full)), capture_output=True, text=True, env=ENV)
    assert done.returncode == 0, done.stderr[-3000:]

    proc = subprocess.Popen(_torchrun(*ARGS, "--out", str(cut)), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=ENV, start_new_session=True)
    try:
        metrics = cut / "metrics.jsonl"
        while not (metrics.exists() and metrics.read_text().strip()):
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.02)
        time.sleep(0.4 * engine.read_metrics(cut)[0]["time"])  # into epoch 2 (where exactly does not matter)
        os.killpg(proc.pid, signal.SIGTERM)  # the launcher and both workers, like a cluster's preemption
        _, err = proc.communicate()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    stops = [ln for ln in err.splitlines() if ln.startswith("reste: stopped by SIGTERM at ")]
    assert len(stops) == 1, err[-3000:]  # one line, from rank 0
    ckpt = load_checkpoint(cut / "last.pt")
    assert ckpt["world_size"] == 2
    if ckpt["step"]:  # inside an epoch: both processes' running sums are kept
        assert len(ckpt["partial"]["ranks"]) == 2 and ckpt["step"] % 10 == 0  # they agree every 10 steps
    assert (ckpt["epoch"], ckpt["step"]) != (3, 0), "the signal should land before the run finished"

    resumed = subprocess.run(_torchrun("--resume", str(cut), "--no-progress"), capture_output=True, text=True,
                             env=ENV)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = load_checkpoint(full / "last.pt"), load_checkpoint(cut / "last.pt")
    assert a["epoch"] == b["epoch"] == 3
    for key, value in a["model"].items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, b["model"][key]), key
    strip = lambda ms: [{k: v for k, v in m.items() if k != "time"} for m in ms]  # noqa: E731
    assert strip(engine.read_metrics(full)) == strip(engine.read_metrics(cut))
