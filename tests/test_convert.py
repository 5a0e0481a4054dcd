"""binarize: which layers become binary, weights kept, keep patterns, copy semantics."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import reste
from reste import BinaryConv2d, BinaryLinear, binarize


class Block(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=True)
        self.downsample = nn.Conv2d(c, c, 1, bias=False)

    def forward(self, x):
        return self.conv2(torch.relu(self.bn1(self.conv1(x)))) + self.downsample(x)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.layer1 = Block(4)
        self.layer2 = Block(4)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.hidden = nn.Linear(4, 6)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        x = self.pool(self.layer2(self.layer1(torch.relu(self.stem(x))))).flatten(1)
        return self.fc(torch.relu(self.hidden(x)))


CONVERTIBLE = [
    "layer1.conv1", "layer1.conv2", "layer1.downsample",
    "layer2.conv1", "layer2.conv2", "layer2.downsample", "hidden",
]


def kinds(model: nn.Module) -> dict[str, type]:
    return {n: type(m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


def make_net() -> Net:
    torch.manual_seed(0)
    return Net()


def test_default_keeps_first_conv_and_last_linear():
    net = make_net()
    bnet = binarize(net)
    k = kinds(bnet)
    assert k["stem"] is nn.Conv2d and k["fc"] is nn.Linear
    for name in CONVERTIBLE:
        expected = BinaryLinear if name == "hidden" else BinaryConv2d
        assert k[name] is expected, name
    assert [n for n, _ in reste.binary_layers(bnet)] == CONVERTIBLE


def test_latent_weights_equal_the_float_ones():
    net = make_net()
    bnet = binarize(net)
    fsd, bsd = net.state_dict(), bnet.state_dict()
    for key, value in fsd.items():
        assert torch.equal(bsd[key], value), key
    extra = set(bsd) - set(fsd)
    assert extra and all(k.endswith("_extra_state") for k in extra)
    # conv geometry is kept too
    assert bnet.layer1.conv1.padding == (1, 1) and bnet.layer1.conv2.bias is not None
    assert bnet.layer1.conv1.bias is None


def test_copy_by_default_and_inplace():
    net = make_net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    bnet = binarize(net)
    assert bnet is not net
    assert all(t is nn.Conv2d or t is nn.Linear for t in kinds(net).values())
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k])
    with torch.no_grad():
        bnet.layer1.conv1.weight.add_(1.0)
    assert torch.equal(net.layer1.conv1.weight, before["layer1.conv1.weight"])

    same = binarize(net, inplace=True)
    assert same is net
    assert isinstance(net.layer1.conv1, BinaryConv2d)


def test_keep_by_name_and_glob():
    net = make_net()
    bnet = binarize(net, keep=["hidden", "*downsample", "layer2.*"])
    k = kinds(bnet)
    assert k["hidden"] is nn.Linear
    assert k["layer1.downsample"] is nn.Conv2d and k["layer2.downsample"] is nn.Conv2d
    assert k["layer2.conv1"] is nn.Conv2d and k["layer2.conv2"] is nn.Conv2d
    assert k["layer1.conv1"] is BinaryConv2d and k["layer1.conv2"] is BinaryConv2d


def test_unmatched_keep_pattern_raises():
    with pytest.raises(ValueError, match="nothere"):
        binarize(make_net(), keep=["layer1.conv1", "nothere*"])


def test_binarizing_first_and_last_warns():
    with pytest.warns(UserWarning, match="first"):
        bnet = binarize(make_net(), keep_first=False)
    assert isinstance(bnet.stem, BinaryConv2d) and type(bnet.fc) is nn.Linear
    with pytest.warns(UserWarning, match="last"):
        bnet = binarize(make_net(), keep_last=False)
    assert isinstance(bnet.fc, BinaryLinear) and type(bnet.stem) is nn.Conv2d
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        binarize(make_net())  # the default does not warn


def test_activations_flag_and_scaling():
    bnet = binarize(make_net(), activations=False, scaling="channel")
    for _, layer in reste.binary_layers(bnet):
        assert layer.input_precision == 32 and layer.input_estimator is None
        assert layer.scaling == "channel"
    with pytest.raises(ValueError):
        binarize(make_net(), scaling="bogus")


def test_estimator_name_and_hyperparameters():
    bnet = binarize(make_net(), "reste", o_end=2.0, t=1.2)
    ests = reste.estimators_of(bnet)
    assert len(ests) == 2 * len(CONVERTIBLE)  # one per weight and per input, not shared
    assert all(isinstance(e, reste.ReSTE) and e.o_end == 2.0 and e.t == 1.2 for e in ests)
    bnet = binarize(make_net(), "ede")
    assert all(isinstance(e, reste.EDE) for e in reste.estimators_of(bnet))
    with pytest.raises(ValueError):
        binarize(make_net(), "bogus")
    with pytest.raises(ValueError):
        binarize(make_net(), "reste", nonsense=1)


def test_estimator_instance_is_shared():
    est = reste.ReSTE(o=2.0, schedule="constant")
    bnet = binarize(make_net(), est)
    assert reste.estimators_of(bnet) == [est]


def test_binarized_model_runs_and_trains_mode_is_kept():
    net = make_net().eval()
    bnet = binarize(net)
    assert not any(m.training for m in bnet.modules())
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    out = bnet.train()(x)
    assert out.shape == (2, 3)
    out.sum().backward()
    assert all(m.weight.grad is not None for _, m in reste.binary_layers(bnet))
    # the binary layer's output equals a float conv on sign(input) and alpha * sign(weight)
    layer = bnet.layer1.conv1
    inp = torch.randn(1, 4, 5, 5)
    w = layer.weight.detach()
    sgn = lambda t: torch.where(t < 0, -1.0, 1.0)  # noqa: E731
    ref = torch.nn.functional.conv2d(sgn(inp), sgn(w) * w.abs().mean(), None, padding=1)
    torch.testing.assert_close(layer(inp), ref, rtol=1e-5, atol=1e-5)
