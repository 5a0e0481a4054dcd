"""BatchNorm synchronised across processes on any backend (gloo on CPU included).

PyTorch's ``nn.SyncBatchNorm`` runs on CUDA only. ``ProcessGroupBatchNorm``
computes the batch mean and variance from per-channel sums that are all-reduced
(with gradient) over the default process group, so N processes with batch B
normalise exactly as one process with batch N*B. The training engine uses
``nn.SyncBatchNorm`` on GPUs and this module on CPUs.
"""

from __future__ import annotations

import torch
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
        count = torch.full((1,), x.numel() / channels, dtype=torch.float32, device=x.device)
        xf = x.float()
        stats = all_reduce(torch.cat([xf.sum(dims), (xf * xf).sum(dims), count]))  # a sum over processes
        n = stats[-1]
        mean = stats[:channels] / n
        var = (stats[channels:2 * channels] / n - mean * mean).clamp(min=0.0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean.detach().to(self.running_mean.dtype), alpha=m)
                unbiased = var.detach() * (n / (n - 1).clamp(min=1.0))
                self.running_var.mul_(1 - m).add_(unbiased.to(self.running_var.dtype), alpha=m)
        shape = [1, channels] + [1] * (x.dim() - 2)
        y = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)

    @classmethod
    def convert(cls, module: nn.Module) -> nn.Module:
        """Replace every BatchNorm of ``module`` (in place), keeping parameters and statistics."""
        if isinstance(module, _BatchNorm) and not isinstance(module, cls):
            new = cls(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
            new.load_state_dict(module.state_dict())
            new.train(module.training)
            return new.to(next(iter(module.state_dict().values())).device) if module.state_dict() else new
        for name, child in module.named_children():
            setattr(module, name, cls.convert(child))
        return module


__all__ = ["ProcessGroupBatchNorm", "is_distributed"]
