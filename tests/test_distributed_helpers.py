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
    monkeypatch.setenv("RANK", "3")
    assert distributed.env_rank() == 3
    monkeypatch.setenv("RANK", "not a number")
    assert distributed.env_rank() == 0


def test_rank_and_world_size_needs_a_process_group():
    with pytest.raises(UsageError, match="torchrun"):
        distributed.rank_and_world_size()
