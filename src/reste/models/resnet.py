"""ResNet building blocks shared by the CIFAR-10 and ImageNet models.

Every binarized convolution is followed by ReLU then BatchNorm (conv -> ReLU -> BN),
as in the authors' code. ``conv`` is the model's ``ConvBuilder``; the stem, the
1x1 downsample convolutions and the head stay full precision.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Shortcut = Callable[[int, int, int], nn.Module]


class PadShortcut(nn.Module):
    """Option-A shortcut: every second pixel, channels zero-padded by ``pad`` on each side."""

    def __init__(self, pad: int) -> None:
        super().__init__()
        self.pad = pad

    def forward(self, x: Tensor) -> Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))

    def extra_repr(self) -> str:
        return f"pad={self.pad}"


def option_a(in_planes: int, planes: int, stride: int) -> nn.Module:
    """Identity, or the parameter-free option-A shortcut when the shape changes."""
    if stride == 1 and in_planes == planes:
        return nn.Identity()
    return PadShortcut(planes // 4)


def conv1x1_bn(in_planes: int, planes: int, stride: int) -> nn.Module:
    """Identity, or a full-precision 1x1 convolution (with the stride) + BN when the shape changes."""
    if stride == 1 and in_planes == planes:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))


class BasicBlock(nn.Module):
    """Two conv -> ReLU -> BN units and one shortcut around both (no activation after the add)."""

    def __init__(self, conv: Callable[..., nn.Module], in_planes: int, planes: int, stride: int, shortcut: Shortcut):
        super().__init__()
        self.conv1 = conv(in_planes, planes, 3, stride, 1)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv(planes, planes, 3, 1, 1)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = shortcut(in_planes, planes, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn1(F.relu(self.conv1(x)))
        out = self.bn2(F.relu(self.conv2(out)))
        return out + self.shortcut(x)


class BiRealBlock(BasicBlock):
    """Bi-Real style: a shortcut around each conv -> ReLU -> BN unit (same parameters as BasicBlock)."""

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn1(F.relu(self.conv1(x))) + self.shortcut(x)
        return self.bn2(F.relu(self.conv2(out))) + out


class ResNet(nn.Module):
    """stem -> stages of blocks -> global average pool -> BatchNorm1d -> Linear.

    Args:
        stem: the full-precision stem (conv -> ReLU -> BN [-> max-pool]); outputs ``widths[0]`` channels.
        block: ``BasicBlock`` or ``BiRealBlock``.
        depths / widths / strides: blocks, channels and first stride of each stage.
        shortcut: ``option_a`` or ``conv1x1_bn``.
    """

    def __init__(
        self,
        conv: Callable[..., nn.Module],
        stem: nn.Module,
        block: type[BasicBlock],
        depths: tuple[int, ...],
        widths: tuple[int, ...],
        strides: tuple[int, ...],
        shortcut: Shortcut,
        num_classes: int,
    ) -> None:
        super().__init__()
        self.stem = stem
        stages = []
        in_planes = widths[0]
        for depth, planes, stride in zip(depths, widths, strides):
            blocks = []
            for i in range(depth):
                blocks.append(block(conv, in_planes, planes, stride if i == 0 else 1, shortcut))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layers = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.bn = nn.BatchNorm1d(in_planes)
        self.fc = nn.Linear(in_planes, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.layers(self.stem(x))
        return self.fc(self.bn(torch.flatten(self.pool(x), 1)))


def stem(in_channels: int, planes: int, kernel_size: int = 3, stride: int = 1, maxpool: bool = False) -> nn.Sequential:
    """Full-precision stem: conv (no bias) -> ReLU -> BN [-> max-pool(3, 2, 1)]."""
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, planes, kernel_size, stride, kernel_size // 2, bias=False),
        nn.ReLU(),
        nn.BatchNorm2d(planes),
    ]
    if maxpool:
        layers.append(nn.MaxPool2d(3, 2, 1))
    return nn.Sequential(*layers)


def kaiming_init(model: nn.Module, linear: bool = True) -> nn.Module:
    """Kaiming normal (fan_in, ReLU gain) on every conv weight, and every linear one unless ``linear`` is false
    (then PyTorch's default); BN weight 1, bias 0."""
    kinds = (nn.Conv2d, nn.Linear) if linear else nn.Conv2d
    for m in model.modules():
        if isinstance(m, kinds):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return model
