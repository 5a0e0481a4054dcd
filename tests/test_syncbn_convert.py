"""ProcessGroupBatchNorm.convert takes over the BatchNorm's own Parameters and buffers, as
nn.SyncBatchNorm.convert_sync_batchnorm does (review dist #1): it built new ones, so a frozen BatchNorm became
trainable and an optimizer built before convert no longer reached the converted layers."""

from __future__ import annotations

import inspect
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from reste.syncbn import ProcessGroupBatchNorm

# BatchNorm's bias= keyword came after reste's torch floor (torch 2.11 has none: the suite on a GPU machine's torch)
needs_bias_keyword = pytest.mark.skipif("bias" not in inspect.signature(nn.BatchNorm2d.__init__).parameters,
                                        reason="this torch's BatchNorm has no bias= keyword")


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 3 * 3, 2))


def test_a_frozen_batch_norm_stays_frozen():
    m = _model()
    m[1].requires_grad_(False)
    old = dict(m[1].named_parameters())
    m = ProcessGroupBatchNorm.convert(m)
    assert isinstance(m[1], ProcessGroupBatchNorm)
    assert [p.requires_grad for p in m[1].parameters()] == [False, False]
    assert all(getattr(m[1], k) is v for k, v in old.items())
    m(torch.randn(2, 1, 5, 5)).sum().backward()
    assert m[1].weight.grad is None and m[0].weight.grad is not None


def test_an_optimizer_built_before_convert_still_updates_the_converted_layer():
    m = _model()
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    m = ProcessGroupBatchNorm.convert(m)
    before = m[1].weight.detach().clone()
    m(torch.randn(4, 1, 5, 5)).square().sum().backward()
    opt.step()
    assert m[1].weight.grad is not None and not torch.equal(m[1].weight, before)
    assert any(p is m[1].weight for p in opt.param_groups[0]["params"])


def test_buffers_mode_and_qconfig_carry_over():
    bn = nn.BatchNorm1d(3).double().eval()
    with torch.no_grad():
        bn.running_mean.fill_(0.25)
    bn.num_batches_tracked.fill_(7)
    bn.qconfig = "marker"
    new = ProcessGroupBatchNorm.convert(bn)
    for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
        assert getattr(new, name) is getattr(bn, name), name
    assert new.training is False and new.qconfig == "marker" and new.weight.dtype == torch.float64
    assert ProcessGroupBatchNorm.convert(nn.BatchNorm1d(3).train()).training is True


@needs_bias_keyword
def test_a_batch_norm_without_bias_or_statistics_converts():
    a = nn.BatchNorm2d(3, bias=False)
    b = ProcessGroupBatchNorm.convert(nn.BatchNorm2d(3, track_running_stats=False))
    c = ProcessGroupBatchNorm.convert(nn.BatchNorm2d(3, affine=False))
    a2 = ProcessGroupBatchNorm.convert(a)
    assert a2.bias is None and a2.weight is a.weight and set(a2.state_dict()) == set(a.state_dict())
    assert b.running_mean is None and c.weight is None and c.bias is None
    x = torch.randn(4, 3, 2, 2)
    torch.testing.assert_close(a2(x), a(x))


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _no_bias_worker(rank: int, world: int, port: int, x: torch.Tensor, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        bn = ProcessGroupBatchNorm.convert(nn.BatchNorm2d(3, bias=False))
        with torch.no_grad():
            bn.weight.copy_(torch.tensor([1.0, 2.0, 0.5]))
        torch.save(bn(x.chunk(world)[rank]).detach(), f"{out_dir}/{rank}.pt")
    finally:
        dist.destroy_process_group()


@needs_bias_keyword
def test_a_batch_norm_without_bias_runs_synchronised(tmp_path):
    """The synchronised forward added a bias it took to exist (a converted bias=False BatchNorm has none)."""
    torch.manual_seed(1)
    x = torch.randn(8, 3, 2, 2)
    mp.spawn(_no_bias_worker, args=(2, _port(), x, str(tmp_path)), nprocs=2, join=True)
    ref = nn.BatchNorm2d(3, bias=False)
    with torch.no_grad():
        ref.weight.copy_(torch.tensor([1.0, 2.0, 0.5]))
    got = torch.cat([torch.load(tmp_path / f"{r}.pt") for r in range(2)])
    torch.testing.assert_close(got, ref(x).detach(), atol=1e-5, rtol=1e-5)
