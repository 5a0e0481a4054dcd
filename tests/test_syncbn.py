"""BatchNorm synchronised over gloo processes equals one BatchNorm over the whole batch."""

from __future__ import annotations

import os
import socket
import warnings

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from reste.syncbn import ProcessGroupBatchNorm


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, x: torch.Tensor, upstream: torch.Tensor, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    warnings.simplefilter("error", FutureWarning)  # no deprecated collective on the way
    try:
        torch.manual_seed(0)
        bn = ProcessGroupBatchNorm.convert(nn.Sequential(nn.BatchNorm2d(3)))[0]
        with torch.no_grad():
            bn.weight.copy_(torch.tensor([1.0, 2.0, 0.5]))
            bn.bias.copy_(torch.tensor([0.0, -1.0, 0.3]))
        part = x.chunk(world)[rank].clone().requires_grad_(True)
        y = bn(part)
        (y * upstream.chunk(world)[rank]).sum().backward()
        torch.save({"y": y.detach(), "grad": part.grad, "running_mean": bn.running_mean,
                    "running_var": bn.running_var, "weight_grad": bn.weight.grad}, f"{out_dir}/{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_processes_match_one_batch_norm_over_the_whole_batch(tmp_path):
    torch.manual_seed(1)
    x = torch.randn(8, 3, 5, 5) * 3 + 1
    upstream = torch.randn(8, 3, 5, 5)
    mp.spawn(_worker, args=(2, _port(), x, upstream, str(tmp_path)), nprocs=2, join=True)
    parts = [torch.load(tmp_path / f"{r}.pt") for r in range(2)]

    ref = nn.BatchNorm2d(3)
    with torch.no_grad():
        ref.weight.copy_(torch.tensor([1.0, 2.0, 0.5]))
        ref.bias.copy_(torch.tensor([0.0, -1.0, 0.3]))
    xr = x.clone().requires_grad_(True)
    yr = ref(xr)
    (yr * upstream).sum().backward()

    torch.testing.assert_close(torch.cat([p["y"] for p in parts]), yr.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.cat([p["grad"] for p in parts]), xr.grad, atol=1e-5, rtol=1e-4)
    for p in parts:  # every process holds the statistics of the whole batch
        torch.testing.assert_close(p["running_mean"], ref.running_mean, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(p["running_var"], ref.running_var, atol=1e-6, rtol=1e-5)
    # the affine parameters' gradient is the sum over processes (as DDP's all-reduce makes it)
    torch.testing.assert_close(parts[0]["weight_grad"] + parts[1]["weight_grad"], ref.weight.grad,
                               atol=1e-4, rtol=1e-4)


def test_single_process_is_a_plain_batch_norm():
    torch.manual_seed(0)
    x = torch.randn(4, 3, 2, 2)
    a, b = nn.BatchNorm2d(3), ProcessGroupBatchNorm.convert(nn.BatchNorm2d(3))
    torch.testing.assert_close(a(x), b(x))
    assert isinstance(b, ProcessGroupBatchNorm) and set(a.state_dict()) == set(b.state_dict())
