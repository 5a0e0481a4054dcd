"""A run folder given as a file, and a torchrun run stopped at an epoch's end (review dist #2, #3).

* ``reste train --resume FILE`` (its last.pt, a Lightning .ckpt, any file) said the run "failed (its record
  FILE/failed.json is damaged); the sweep trains it again": it is refused as ``reste show FILE`` is.
* ``reste show`` of a run that 2 torchrun processes trained, stopped at an epoch's end, said to continue it with
  ``reste train --resume`` (one process) and gave the per-process batch as the run's.
"""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch

from cli_checks import one_line_error
from reste import engine
from reste.checkpoint import load_checkpoint, save_checkpoint
from reste.cli import main
from reste.config import TrainConfig
from reste.errors import shell_word
from reste.rundir import divergence, failure


@pytest.fixture(scope="module")
def stopped(tmp_path_factory):
    """A run of 2 epochs stopped (SIGUSR1) at the end of its first, as a preempted torchrun job is."""
    out = tmp_path_factory.mktemp("world") / "run"

    def log(line: str) -> None:
        if line.startswith("epoch 1/2"):  # logged once last.pt holds the epoch
            os.kill(os.getpid(), signal.SIGUSR1)

    with pytest.raises(engine.Preempted, match="at the end of epoch 1;"):
        engine.train(TrainConfig(epochs=2, threads=1), out, progress=False, log=log)
    return out


def test_show_of_a_torchrun_run_stopped_at_an_epochs_end_says_torchrun_and_the_whole_batch(stopped, capsys, tmp_path):
    batch = TrainConfig.from_saved(json.loads((stopped / "config.json").read_text())).batch_size
    assert main(["show", str(stopped)]) == 0  # one process: as before
    out = capsys.readouterr().out
    assert f"batch {batch}, " in out and "per process" not in out, out
    assert "1 of 2 epochs: stopped (no process on this machine holds it; `reste train --resume " in out, out

    run = tmp_path / "two"  # the same run, as 2 torchrun processes wrote it (last.pt records world_size)
    run.mkdir()
    for f in stopped.iterdir():
        if f.is_file():
            (run / f.name).write_bytes(f.read_bytes())
    save_checkpoint({**load_checkpoint(run / "last.pt"), "world_size": 2}, run / "last.pt")
    word = shell_word(run)
    assert main(["show", str(run)]) == 0
    out = capsys.readouterr().out
    assert f"batch {batch} per process ({2 * batch} in all, 2 processes, synchronised BatchNorm), " in out, out
    assert (f"1 of 2 epochs: stopped (no process on this machine holds it; torchrun again, 2 processes, running "
            f"`-m reste.cli train --resume {word}` continues it)") in out, out
    assert main(["show", str(run), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert (got["saved_step"], got["saved_processes"]) == (None, 2)


def test_resume_of_a_file_is_refused_as_show_refuses_it(stopped, capsys, tmp_path):
    word = shell_word(stopped)
    for name in ("last.pt", "best.pt", "metrics.jsonl"):
        line = one_line_error(capsys, "train", "--resume", str(stopped / name))
        assert f"{stopped / name} is a file; pass the run's folder (the one holding config.json), e.g. --resume " \
            f"{word}" in line, line
        assert "failed" not in line, line
        line = one_line_error(capsys, "show", str(stopped / name))  # the same line, with show's example
        assert line.endswith(f"{stopped / name} is a file; pass the run's folder (the one holding config.json), "
                             f"e.g. reste show {word}"), line
    plain = tmp_path / "plain.txt"
    plain.write_text("hi")
    assert one_line_error(capsys, "train", "--resume", str(plain)).endswith(
        f"{plain} is a file; pass the run's folder (the one holding config.json)")
    assert failure(plain) is None and divergence(plain) is None  # no record, not a damaged one


def test_resume_of_a_lightning_checkpoint_gives_the_lightning_hint(capsys, tmp_path):
    ckpt = tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "epoch=1-step=24.ckpt"
    ckpt.parent.mkdir(parents=True)
    torch.save({"pytorch-lightning_version": "2.4.0", "state_dict": {"w": torch.zeros(2)}}, ckpt)
    for argv in (("train", "--resume"), ("show",)):
        line = one_line_error(capsys, *argv, str(ckpt))
        assert f"{ckpt} is a file; pass the run's folder (the one holding config.json); it is a PyTorch Lightning " \
            "checkpoint: load your LightningModule from it (load_from_checkpoint)" in line, line


def test_a_finished_torchrun_runs_show_gives_its_whole_batch(tmp_path):
    """(review diff11 #3) a finished run's last.pt was not read: its batch read as one process's."""
    from reste.runinfo import run_summary, show_run

    out = tmp_path / "run"
    engine.train(TrainConfig(epochs=1, threads=1), out, progress=False, log=lambda _m: None)
    last = out / "last.pt"
    save_checkpoint({**load_checkpoint(last), "world_size": 2}, last)  # as 2 torchrun processes leave it
    assert run_summary(out)["state"] == "finished" and run_summary(out)["saved_processes"] == 2
    assert "batch 64 per process (128 in all, 2 processes, synchronised BatchNorm)" in show_run(out)
    # (review mp1, suggestion 4) a run trained with --no-sync-bn says so, as its first line did
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, "sync_bn": False}))
    assert "batch 64 per process (128 in all, 2 processes, BatchNorm per process)" in show_run(out)
    # a sweep's listing reads last.pt's header alone, where the run looks finished (review chaos5 #1)
    assert run_summary(out, steps=False)["saved_processes"] == 2
