"""What the tests of runs share: a run stopped by a real signal inside an epoch."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any, Callable

import pytest

from reste import engine
from reste.checkpoint import load_checkpoint
from reste.config import TrainConfig


def stop_in_epoch_2(cfg: TrainConfig, out: Path, log: Callable[[str], Any], step: int, steps: int,
                    sig: signal.Signals = signal.SIGUSR1) -> None:
    """Train ``cfg`` into ``out`` (``steps`` steps an epoch) and send this process ``sig`` at ``step`` (1-based) of
    epoch 2: the run saves that step in ``last.pt`` and stops (``Preempted``)."""
    original = engine._Run._checkpoint_due

    def signal_in_epoch_2(self, at, *rest):
        if self.saved == (1, 0) and at == step - 1:
            os.kill(os.getpid(), sig)
        return original(self, at, *rest)

    engine._Run._checkpoint_due = signal_in_epoch_2
    try:
        with pytest.raises(engine.Preempted, match=f"stopped by {sig.name} at epoch 2, step {step}/{steps}"):
            engine.train(cfg, out, progress=False, log=log)
    finally:
        engine._Run._checkpoint_due = original
    assert load_checkpoint(out / "last.pt")["step"] == step
