"""BatchNorm synchronised across processes on any backend (gloo on CPU included).

PyTorch's ``nn.SyncBatchNorm`` runs on CUDA only. ``ProcessGroupBatchNorm``
computes each process's per-channel count, mean and sum of squared deviations (M2),
gathers them (with gradient) over the default process group and combines them with
the parallel formula of Chan, Golub and LeVeque (1979), as ``nn.SyncBatchNorm`` does,
so N processes with batch B normalise as one process with batch N*B, to float
rounding. The training engine uses ``nn.SyncBatchNorm`` on GPUs and this module on CPUs.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from .distributed import all_reduce, is_distributed


class ProcessGroupBatchNorm(_BatchNorm):
    """BatchNorm (1d, 2d or 3d inputs) whose training statistics cover every process."""

    def _check_input_dim(self, x: Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected an input with a channel dimension, got shape {tuple(x.shape)}")

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and is_distributed()):
            return super().forward(x)
        channels = x.shape[1]
        dims = [0, *range(2, x.dim())]
        # half inputs get float32 statistics; float64 ones keep float64 (a float32 path would cap their precision)
        xf = x.to(torch.promote_types(x.dtype, torch.float32))
        mean_here, m2_here, count_here = local_moments(xf, dims)
        # One collective in the forward (and one in the backward): a differentiable all-gather made of the
        # all_reduce, each process filling its own row of zeros (adding zeros is exact). It carries
        # world * (2C + 1) numbers instead of the 2C + 1 sums, which cannot be combined without cancellation.
        rows = xf.new_zeros(dist.get_world_size(), 2 * channels + 1)
        rows[dist.get_rank()] = torch.cat([mean_here, m2_here, count_here.view(1)])
        mean, var, n = combine_moments(all_reduce(rows))
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean.detach().to(self.running_mean.dtype), alpha=m)
                unbiased = var.detach() * (n / (n - 1).clamp(min=1.0))
                self.running_var.mul_(1 - m).add_(unbiased.to(self.running_var.dtype), alpha=m)
        shape = [1, channels] + [1] * (x.dim() - 2)
        y = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.weight is not None:
            y = y * self.weight.view(shape)
        if self.bias is not None:
            y = y + self.bias.view(shape)
        return y.to(x.dtype)

    @classmethod
    def convert(cls, module: nn.Module) -> nn.Module:
        """Replace every BatchNorm of ``module`` (in place), as ``nn.SyncBatchNorm.convert_sync_batchnorm`` does.

        The new layer takes over the old one's Parameter objects and buffers (not copies), so their dtype, device,
        ``requires_grad`` (a frozen BatchNorm stays frozen) and membership of an optimizer built before stay as
        they were; its training mode and ``qconfig`` carry over too.
        """
        out = module
        if isinstance(module, _BatchNorm) and not isinstance(module, cls):
            out = cls(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
            if module.affine:
                out.weight = module.weight
                out.bias = module.bias  # None for a BatchNorm built with bias=False
            out.running_mean = module.running_mean
            out.running_var = module.running_var
            out.num_batches_tracked = module.num_batches_tracked
            out.training = module.training
            if hasattr(module, "qconfig"):
                out.qconfig = module.qconfig
        for name, child in module.named_children():
            out.add_module(name, cls.convert(child))
        return out


def local_moments(x: Tensor, dims: list[int]) -> tuple[Tensor, Tensor, Tensor]:
    """Per channel of ``x``: the mean and M2 (the sum of squared deviations from it) over ``dims``, and the count.

    Two passes (mean first, then deviations from it), so M2 keeps its precision when the mean is large
    against the spread; the single pass sum(x^2) - n*mean^2 cancels it away (error ~ eps * (mean/std)^2).
    An empty batch gives zeros, which the combination weighs by its count of 0.
    """
    count = x.new_tensor(float(x.numel() // x.shape[1]))
    mean = x.sum(dims) / count.clamp(min=1.0)
    m2 = (x - mean.view([1, -1] + [1] * (x.dim() - 2))).square().sum(dims)
    return mean, m2, count


def combine_moments(rows: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The mean, biased variance and count of the union of the groups whose moments ``rows`` holds.

    Each row is one group's ``[mean (C), M2 (C), count]`` (:func:`local_moments`). The parallel formula
    (Chan, Golub and LeVeque 1979): M2 = sum M2_i + sum n_i (mean_i - mean)^2, where mean_i - mean is small
    when the groups agree, so nothing large is subtracted.
    """
    channels = (rows.shape[1] - 1) // 2
    means, m2s, counts = rows[:, :channels], rows[:, channels:2 * channels], rows[:, -1:]
    n = counts.sum()
    mean = (counts * means).sum(0) / n
    m2 = m2s.sum(0) + (counts * (means - mean).square()).sum(0)
    return mean, m2 / n, n


__all__ = ["ProcessGroupBatchNorm", "combine_moments", "is_distributed", "local_moments"]
