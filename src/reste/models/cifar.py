"""CIFAR-10 models of the ReSTE paper (3x32x32 inputs, 10 classes) and their float twins."""

from __future__ import annotations

from torch import nn

from .registry import ConvBuilder, register_model
from .resnet import BasicBlock, BiRealBlock, ResNet, conv1x1_bn, kaiming_init, option_a, stem
from .vgg import VGGSmall

_CIFAR = {"dataset": "cifar10"}  # its classes and input size: the data set's


@register_model(twin="resnet20", **_CIFAR)
def resnet20_1w1a(*, num_classes: int, conv: ConvBuilder) -> nn.Module:
    """ResNet-20: stem Conv(3, 16) -> ReLU -> BN, 3 stages x 3 basic blocks (16/32/64, strides
    1/2/2), option-A shortcuts, avg pool -> BatchNorm1d(64) -> Linear. Kaiming normal init.

    269,850 parameters, 267,264 of them in the 18 binary convolutions.
    """
    return kaiming_init(
        ResNet(conv, stem(3, 16), BasicBlock, (3, 3, 3), (16, 32, 64), (1, 2, 2), option_a, num_classes)
    )


@register_model(twin="resnet20_bireal", **_CIFAR)
def resnet20_bireal_1w1a(*, num_classes: int, conv: ConvBuilder) -> nn.Module:
    """ResNet-20 with Bi-Real blocks (a shortcut around each conv); same counts as resnet20_1w1a."""
    return kaiming_init(
        ResNet(conv, stem(3, 16), BiRealBlock, (3, 3, 3), (16, 32, 64), (1, 2, 2), option_a, num_classes)
    )


@register_model(twin="resnet18", **_CIFAR)
def resnet18_1w1a(*, num_classes: int, conv: ConvBuilder) -> nn.Module:
    """CIFAR ResNet-18: stem Conv(3, 64, 3x3) -> ReLU -> BN (no max-pool), stages [2, 2, 2, 2]
    of 64/128/256/512 channels (strides 1/2/2/2), one shortcut per block (float 1x1 conv + BN
    when the shape changes), avg pool -> BatchNorm1d(512) -> Linear. PyTorch default init.

    11,174,986 parameters, 10,985,472 of them binary.
    """
    return ResNet(
        conv, stem(3, 64), BasicBlock, (2, 2, 2, 2), (64, 128, 256, 512), (1, 2, 2, 2), conv1x1_bn, num_classes
    )


@register_model(twin="vgg_small", **_CIFAR)
def vgg_small_1w1a(*, num_classes: int, conv: ConvBuilder) -> nn.Module:
    """VGG-small: conv0 (float, 128) then binary 128-128-256-256-512-512 with max-pools,
    flatten 8192 -> Linear. 4,660,106 parameters, 4,571,136 of them binary.
    """
    return VGGSmall(conv, (128, 128, 256, 256, 512, 512), num_classes)
