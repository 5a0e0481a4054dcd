"""Small models that train on a CPU in seconds to minutes, for examples, tests and smoke runs."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UsageError
from .registry import ConvBuilder, register_model
from .resnet import kaiming_init
from .vgg import VGGSmall


class DigitsNet(nn.Module):
    """stem Conv(1, 32) (float) -> ReLU -> BN; conv(32, 32) -> ReLU -> BN -> max-pool;
    conv(32, 64) -> ReLU -> BN; avg pool -> BatchNorm1d(64) -> Linear (float)."""

    def __init__(self, conv: ConvBuilder, num_classes: int, width: int = 32) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(1, width, 3, 1, 1, bias=False)
        self.bn0 = nn.BatchNorm2d(width)
        self.conv1 = conv(width, width, 3, 1, 1)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv(width, 2 * width, 3, 1, 1)
        self.bn2 = nn.BatchNorm2d(2 * width)
        self.maxpool = nn.MaxPool2d(2, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.bn = nn.BatchNorm1d(2 * width)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.bn0(F.relu(self.conv0(x)))
        x = self.maxpool(self.bn1(F.relu(self.conv1(x))))
        x = self.bn2(F.relu(self.conv2(x)))
        return self.fc(self.bn(torch.flatten(self.pool(x), 1)))


@register_model(dataset="digits", twin="digits")
def digits_1w1a(*, num_classes: int, conv: ConvBuilder) -> nn.Module:
    """A tiny BNN for scikit-learn's 8x8 digits (1,797 images): 28,970 parameters, 27,648 binary.

    Kaiming normal init. Trains on a CPU in seconds (timings and accuracies:
    benchmarks/RESULTS.md, "Small models on a CPU").
    """
    return kaiming_init(DigitsNet(conv, num_classes))


@register_model(dataset="fashion-mnist", twin="fmnist_vgg")
def fmnist_vgg_1w1a(*, num_classes: int, conv: ConvBuilder, width: int = 32) -> nn.Module:
    """VGG-small for 1x28x28 Fashion-MNIST, downsampled early to suit a CPU.

    conv0 Conv(1, w, stride 2) (float) -> ReLU -> BN -> max-pool (28 -> 14 -> 7); binary
    conv -> ReLU -> BN units of w, 2w, 2w channels at 7x7, max-pool (-> 3x3), 4w, 4w
    channels at 3x3; flatten 4w*9 -> Linear (float). Initialized as vgg_small.
    ``width=32``: 298,410 parameters (285,696 binary), 5.2 M MACs per image (timings
    and accuracies: benchmarks/RESULTS.md, "Small models on a CPU").
    """
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise UsageError(f"width must be a positive integer, got {width!r}")
    widths = (width, width, 2 * width, 2 * width, 4 * width, 4 * width)
    return VGGSmall(conv, widths, num_classes, in_channels=1, image_size=28, stem_stride=2, pool_after=(0, 3))


@register_model(dataset="fashion-mnist", twin="fmnist_vgg28")
def fmnist_vgg28_1w1a(*, num_classes: int, conv: ConvBuilder, width: int = 32) -> nn.Module:
    """A VGG-like BNN for 1x28x28 Fashion-MNIST that keeps the resolution: binary convolutions at
    28x28 and 14x14.

    conv0 Conv(1, w) (float) -> ReLU -> BN at 28x28; binary conv -> ReLU -> BN units 1-2 at
    28x28 (w -> w), max-pool; units 3-5 at 14x14 (w -> w), max-pool (-> 7x7); flatten
    49w -> Linear (float). Initialized as vgg_small. ``width=32``: 62,442 parameters
    (46,080 binary), 20.1 M MACs per image (19.9 M of them binary).

    The Fashion-MNIST default (``reste train --dataset fashion-mnist``: 8 epochs, Adam 1e-3, no
    augmentation) reaches 90.68 +- 0.24 % top-1 over 3 seeds in about 14 minutes on a 2-core CPU;
    the runs and the command: docs/results/fmnist_default.md.
    """
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise UsageError(f"width must be a positive integer, got {width!r}")
    return VGGSmall(conv, (width,) * 6, num_classes, in_channels=1, image_size=28, stem_stride=1, pool_after=(2, 5))
