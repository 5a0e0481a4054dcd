"""VGG-small (Zhang et al., LQ-Nets, 2018), as used for CIFAR-10 by ReSTE and most BNN papers."""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class VGGSmall(nn.Module):
    """conv0 (float) -> ReLU -> BN, then five conv -> ReLU -> BN units, with a 2x2
    max-pool after the units in ``pool_after``; flatten, Linear (float, no BatchNorm1d).

    Args:
        conv: the model's ``ConvBuilder`` (units 1 to 5).
        widths: the six channel counts, e.g. (128, 128, 256, 256, 512, 512).
        in_channels / image_size: input channels and side.
        stem_stride: the stride of conv0.
        pool_after: the units (0 = conv0) followed by a max-pool (each halves the side, rounding down).
    """

    def __init__(
        self,
        conv: Callable[..., nn.Module],
        widths: tuple[int, ...] = (128, 128, 256, 256, 512, 512),
        num_classes: int = 10,
        in_channels: int = 3,
        image_size: int = 32,
        stem_stride: int = 1,
        pool_after: tuple[int, ...] = (1, 3, 5),
    ) -> None:
        super().__init__()
        if len(widths) != 6:
            raise ValueError(f"VGGSmall needs 6 widths, got {len(widths)}")
        w0, w1, w2, w3, w4, w5 = widths
        self.conv0 = nn.Conv2d(in_channels, w0, 3, stem_stride, 1, bias=False)
        self.bn0 = nn.BatchNorm2d(w0)
        self.conv1 = conv(w0, w1, 3, 1, 1)
        self.bn1 = nn.BatchNorm2d(w1)
        self.conv2 = conv(w1, w2, 3, 1, 1)
        self.bn2 = nn.BatchNorm2d(w2)
        self.conv3 = conv(w2, w3, 3, 1, 1)
        self.bn3 = nn.BatchNorm2d(w3)
        self.conv4 = conv(w3, w4, 3, 1, 1)
        self.bn4 = nn.BatchNorm2d(w4)
        self.conv5 = conv(w4, w5, 3, 1, 1)
        self.bn5 = nn.BatchNorm2d(w5)
        self.pool = nn.MaxPool2d(2, 2)
        self.pool_after = tuple(pool_after)
        side = (image_size - 1) // stem_stride + 1
        for _ in self.pool_after:
            side //= 2
        self.fc = nn.Linear(w5 * side * side, num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """conv N(0, sqrt(2 / (k*k*out))), linear N(0, 0.01) with zero bias, BN weight 1, bias 0."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / n))
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        for i in range(6):
            x = getattr(self, f"bn{i}")(F.relu(getattr(self, f"conv{i}")(x)))
            if i in self.pool_after:
                x = self.pool(x)
        return self.fc(torch.flatten(x, 1))
