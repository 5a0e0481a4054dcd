"""ImageNet ResNets of the ReSTE paper (3x224x224 inputs, 1000 classes) and their float twins.

Stem Conv(3, 64, 7x7, stride 2) -> ReLU -> BN -> max-pool(3, 2, 1); Bi-Real blocks (a
shortcut around each binary 3x3 conv); when the shape changes the shortcut is a float
1x1 conv with the stride (no bias) + BN; head global avg pool -> BatchNorm1d(512) ->
Linear(512, classes). The parameter count is exactly torchvision's ResNet plus the 1,024
of the BatchNorm1d: 11,690,536 (ResNet-18) and 21,798,696 (ResNet-34), which SPEC
states, so the described architecture is taken literally (no conv biases). SPEC gives
no initialization for these models; the authors' ImageNet code draws every conv weight
Kaiming normal (fan_in, gain sqrt(2)) and sets BatchNorm2d to weight 1, bias 0, and so do
these (the linear head keeps PyTorch's default, as theirs does). Global pooling makes
them accept any input of at least 32x32.
"""

from __future__ import annotations

from torch import nn

from .registry import ConvBuilder, register_model
from .resnet import BiRealBlock, ResNet, conv1x1_bn, kaiming_init, stem

_IMAGENET = {"dataset": "imagenet"}  # its classes and input size: the data set's
_WIDTHS = (64, 128, 256, 512)
_STRIDES = (1, 2, 2, 2)


def _resnet(conv: ConvBuilder, depths: tuple[int, ...], num_classes: int) -> nn.Module:
    return kaiming_init(ResNet(
        conv, stem(3, 64, 7, 2, maxpool=True), BiRealBlock, depths, _WIDTHS, _STRIDES, conv1x1_bn, num_classes
    ), linear=False)


@register_model(twin="imagenet_resnet18", **_IMAGENET)
def imagenet_resnet18_1w1a(*, num_classes: int, conv: ConvBuilder) -> nn.Module:
    """Bi-Real ResNet-18, blocks [2, 2, 2, 2]: 11,690,536 parameters (10,985,472 binary)."""
    return _resnet(conv, (2, 2, 2, 2), num_classes)


@register_model(twin="imagenet_resnet34", **_IMAGENET)
def imagenet_resnet34_1w1a(*, num_classes: int, conv: ConvBuilder) -> nn.Module:
    """Bi-Real ResNet-34, blocks [3, 4, 6, 3]: 21,798,696 parameters (21,086,208 binary)."""
    return _resnet(conv, (3, 4, 6, 3), num_classes)
