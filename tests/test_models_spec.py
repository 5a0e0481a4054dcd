"""Each model of the paper's zoo, its forward written again from SPEC section 5 alone.

The reference below is plain ``torch.nn.functional`` over the model's own ``state_dict``: every binary conv is
``conv(sign(x), sign(W) * mean|W|)`` (sign(0) = +1; ``a32``: real activations), every block conv -> ReLU -> BN,
the shortcuts and heads as SPEC words them. It shares no code with ``reste.models``, so a block reordered, a
shortcut changed or a head's BatchNorm dropped there shows here as a different output, not only as a different
module tree (tests/test_models.py looks at the tree). Evaluation mode, random BatchNorm statistics, float64.
(review spec1, suggestion 2)
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from reste import models


def _sign(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)


class Reference:
    """The forward of a zoo model from SPEC, over the parameters and buffers ``state``."""

    def __init__(self, state: dict[str, torch.Tensor], binary: bool, a32: bool):
        self.state, self.binary, self.a32 = state, binary, a32

    def conv(self, key: str, x: torch.Tensor, stride: int = 1) -> torch.Tensor:
        """A 3x3 conv of a block: binary (weights and, unless a32, activations) or, in a twin, full precision."""
        w = self.state[f"{key}.weight"]
        if self.binary:
            w = _sign(w) * w.abs().mean()  # one scale per layer (the models' default)
            x = x if self.a32 else _sign(x)
        return F.conv2d(x, w, stride=stride, padding=1)

    def bn(self, key: str, x: torch.Tensor) -> torch.Tensor:
        s = self.state
        return F.batch_norm(x, s[f"{key}.running_mean"], s[f"{key}.running_var"], s[f"{key}.weight"],
                            s[f"{key}.bias"], training=False, eps=1e-5)

    def unit(self, conv: str, bn: str, x: torch.Tensor, stride: int = 1) -> torch.Tensor:
        """conv -> ReLU -> BN, SPEC's order for every binary block."""
        return self.bn(bn, F.relu(self.conv(conv, x, stride)))

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """Global average pool -> BatchNorm1d -> Linear."""
        return F.linear(self.bn("bn", x.mean((2, 3))), self.state["fc.weight"], self.state["fc.bias"])

    def resnet(self, x: torch.Tensor, blocks: list[int], widths: list[int], bireal: bool, option_a: bool,
               imagenet: bool = False) -> torch.Tensor:
        s = self.state
        if imagenet:  # 7x7 stride-2 stem, ReLU, BN, max-pool(3, 2, 1)
            x = F.max_pool2d(self.bn("stem.2", F.relu(F.conv2d(x, s["stem.0.weight"], stride=2, padding=3))), 3, 2, 1)
        else:
            x = self.bn("stem.2", F.relu(F.conv2d(x, s["stem.0.weight"], padding=1)))
        channels = widths[0]
        for stage, (count, width) in enumerate(zip(blocks, widths)):
            for b in range(count):
                name, stride = f"layers.{stage}.{b}", 2 if stage > 0 and b == 0 else 1
                if stride == 1 and channels == width:
                    shortcut = x
                elif option_a:  # every second pixel, channels zero-padded by planes // 4 on each side
                    shortcut = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, width // 4, width // 4))
                else:  # full-precision 1x1 conv (stride) + BN
                    shortcut = self.bn(f"{name}.shortcut.1", F.conv2d(x, s[f"{name}.shortcut.0.weight"], stride=stride))
                if bireal:  # a shortcut around each conv
                    out = self.unit(f"{name}.conv1", f"{name}.bn1", x, stride) + shortcut
                    x = self.unit(f"{name}.conv2", f"{name}.bn2", out) + out
                else:  # no activation after the add
                    out = self.unit(f"{name}.conv1", f"{name}.bn1", x, stride)
                    x = self.unit(f"{name}.conv2", f"{name}.bn2", out) + shortcut
                channels = width
        return self.head(x)

    def vgg_small(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn("bn0", F.relu(F.conv2d(x, self.state["conv0.weight"], padding=1)))  # full precision
        for i in range(1, 6):
            x = self.unit(f"conv{i}", f"bn{i}", x)
            if i % 2:  # after conv1, conv3 and conv5
                x = F.max_pool2d(x, 2)
        return F.linear(x.flatten(1), self.state["fc.weight"], self.state["fc.bias"])  # no BatchNorm1d


# name: (the reference's forward, classes, input side)
CASES = {
    "resnet20": (lambda r, x: r.resnet(x, [3, 3, 3], [16, 32, 64], bireal=False, option_a=True), 10, 32),
    "resnet20_bireal": (lambda r, x: r.resnet(x, [3, 3, 3], [16, 32, 64], bireal=True, option_a=True), 10, 32),
    "resnet18": (lambda r, x: r.resnet(x, [2, 2, 2, 2], [64, 128, 256, 512], bireal=False, option_a=False), 10, 32),
    "vgg_small": (lambda r, x: r.vgg_small(x), 10, 32),
    # the ImageNet models pool globally: 64 px exercise every stage at a fraction of 224's cost
    "imagenet_resnet18": (lambda r, x: r.resnet(x, [2, 2, 2, 2], [64, 128, 256, 512], bireal=True, option_a=False,
                                                imagenet=True), 1000, 64),
    "imagenet_resnet34": (lambda r, x: r.resnet(x, [3, 4, 6, 3], [64, 128, 256, 512], bireal=True, option_a=False,
                                                imagenet=True), 1000, 64),
}
VARIANTS = [(twin, form) for twin in CASES for form in ("1w1a", "a32", "twin")]


@pytest.mark.parametrize("twin, form", VARIANTS, ids=[f"{t}-{f}" for t, f in VARIANTS])
def test_each_zoo_models_forward_is_specs_written_again(twin, form):
    forward, classes, side = CASES[twin]
    torch.manual_seed(0)
    if form == "twin":
        model = models.create(twin, num_classes=classes)
    else:
        model = models.create(f"{twin}_1w1a", num_classes=classes, a32=form == "a32")
    model = model.double().eval()
    with torch.no_grad():  # statistics and affine parameters away from their initial 0 and 1, so each BN counts
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
                m.weight.normal_()
                m.bias.normal_()
    x = torch.randn(2, 3, side, side, dtype=torch.float64)
    with torch.no_grad():
        got = model(x)
        want = forward(Reference(model.state_dict(), binary=form != "twin", a32=form == "a32"), x)
    assert got.shape == (2, classes)
    # Both sides run float64 convs over the same inputs; they may sum in other orders (1e-16 relative each). A
    # sign input flips only at a float64 near-tie, which random normal data does not give: the outputs agree to
    # far below 1e-9 of their scale, and any change of structure moves them by O(1) of it.
    scale = want.abs().max().item()
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9 * scale)
