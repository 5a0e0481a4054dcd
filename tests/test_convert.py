"""binarize: which layers become binary, weights kept, keep patterns, copy semantics."""

from __future__ import annotations

import re
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


def test_an_mlp_keeps_its_first_linear():
    """Without a conv, the layer that reads the input is the first linear: binary input there would
    see only the signs of the pixels (all +1 for images in [0, 1])."""
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.BatchNorm1d(32), nn.Linear(32, 32),
                        nn.BatchNorm1d(32), nn.Linear(32, 10))
    k = kinds(binarize(mlp))
    assert (k["1"], k["3"], k["5"]) == (nn.Linear, BinaryLinear, nn.Linear)
    with pytest.warns(UserWarning, match="binarizing the first layer '1'"):
        k = kinds(binarize(mlp, keep_first=False))
    assert (k["1"], k["3"], k["5"]) == (BinaryLinear, BinaryLinear, nn.Linear)


class _HeadFirst(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 10)  # defined before the stem
        self.conv1, self.conv2 = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3)

    def forward(self, x):
        return self.fc(self.conv2(self.conv1(x)).mean((2, 3)))


def test_the_first_layer_is_the_first_conv_even_after_a_head_defined_first():
    # the convs defined after the head are named (were one of them the output, keep_last would miss it)
    with pytest.warns(UserWarning, match=r"'conv2' \(Conv2d\) come\(s\) after the last linear 'fc'"):
        k = kinds(binarize(_HeadFirst()))
    assert (k["conv1"], k["conv2"], k["fc"]) == (nn.Conv2d, BinaryConv2d, nn.Linear)


def test_a_linear_input_projection_before_the_first_conv_is_named():
    """(review userA #2) keep_first keeps the first conv; a linear that runs before it (an input projection of a
    speech or tabular model) reads the raw input, and would be binarized without a word: it is named, as the convs
    after the last linear are."""
    model = nn.Sequential(nn.Linear(20, 64), nn.Unflatten(1, (4, 16)), nn.BatchNorm1d(4),
                          nn.Conv1d(4, 8, 3, padding=1), nn.BatchNorm1d(8), nn.Conv1d(8, 8, 3, padding=1),
                          nn.BatchNorm1d(8), nn.Flatten(), nn.Linear(128, 3))
    with pytest.warns(UserWarning, match=r"'0' \(Linear\) come\(s\) before the first conv '3', which keep_first "
                                         r"keeps in float, and are binarized"):
        binary = binarize(model)
    assert [type(binary[i]) for i in (0, 3, 5, 8)] == [BinaryLinear, nn.Conv1d, reste.BinaryConv1d, nn.Linear]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        binary = binarize(model, keep=["0"])  # kept as the warning says: nothing to say
    assert type(binary[0]) is nn.Linear


def test_the_activations_take_an_estimator_of_their_own():
    """(review userA #12) Bi-Real style: the STE on the weights, ApproxSign on the inputs, given as a name, a spec
    dict or an instance; each layer its own (an instance shared); anything else refused in one line."""
    model = binarize(make_net(), "ste", activations="approx_sign")
    layers = [m for m in model.modules() if getattr(m, "precision", 32) == 1]
    assert layers and all(m.weight_estimator.name == "ste" and m.input_estimator.name == "approx_sign"
                          for m in layers)
    assert len({id(m.input_estimator) for m in layers}) == len(layers)
    spec = binarize(make_net(), "ste", activations={"name": "reste", "o_end": 5.0})
    reste.set_progress(spec, 9, 10)  # the inputs' schedule moves with the model's
    inputs = [m.input_estimator for m in spec.modules() if getattr(m, "precision", 32) == 1]
    assert all(e.config()["o_end"] == 5.0 and e.o > 4 for e in inputs)
    shared = reste.get_estimator("dsq")
    assert all(m.input_estimator is shared for m in binarize(make_net(), activations=shared).modules()
               if getattr(m, "precision", 32) == 1)
    with pytest.raises(TypeError, match="activations takes True, False or an estimator"):
        binarize(make_net(), activations=1)
    with pytest.raises(ValueError, match="unknown estimator 'bogus'"):
        binarize(make_net(), activations="bogus")


def test_a_float_state_dict_loads_strictly_into_the_binarized_model():
    """Pretrain in float, binarize, then load float weights again (larq's load_weights): the estimators'
    schedule state is not in a float model's state_dict, and stays where it is."""
    bnet = binarize(make_net(), "reste")
    reste.set_progress(bnet, 5, 10)
    o = [e.o for e in reste.estimators_of(bnet)]
    other = make_net()
    with torch.no_grad():
        for p in other.parameters():
            p.add_(1.0)
    assert not bnet.load_state_dict(other.state_dict()).missing_keys
    assert torch.equal(bnet.hidden.weight, other.hidden.weight)
    assert [e.o for e in reste.estimators_of(bnet)] == o and o[0] > 1
    with pytest.raises(RuntimeError, match="hidden.weight"):  # anything else missing still fails
        bnet.load_state_dict({k: v for k, v in other.state_dict().items() if k != "hidden.weight"})
    # a binary model's state_dict that lacks one estimator's state is still refused (a 1W/32A one in 1W1A)
    lacking = {k: v for k, v in binarize(make_net(), "reste").state_dict().items()
               if k != "hidden.input_estimator._extra_state"}
    with pytest.raises(RuntimeError, match="hidden.input_estimator._extra_state"):
        bnet.load_state_dict(lacking)
    import io

    buffer = io.BytesIO()
    torch.save(bnet, buffer)  # the load hook is a module-level function: the model still pickles
    assert buffer.tell() > 0


class _WithState(nn.Module):
    """A float module with extra state of its own (not an estimator's)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = make_net()

    def get_extra_state(self):
        return {"note": 1}

    def set_extra_state(self, state) -> None:
        pass


def test_float_weights_load_layer_by_layer():
    """Each binary layer decides from its own part of the dict: a part holding its weight and no estimator
    state is a float layer's. So a sub-module loads alone, other extra state does not matter, and a binary
    layer's part that lacks one estimator's state is refused even when another layer's part is float."""
    bnet = binarize(make_net(), "reste")
    assert not bnet.hidden.load_state_dict(make_net().hidden.state_dict()).missing_keys  # one layer alone
    wrapped = binarize(_WithState(), "reste")
    float_state = _WithState().state_dict()
    assert "_extra_state" in float_state and not wrapped.load_state_dict(float_state).missing_keys
    two = nn.ModuleDict({"a": binarize(make_net(), "reste"), "b": binarize(make_net(), "reste")})
    mixed = {**{f"a.{k}": v for k, v in make_net().state_dict().items()},  # a: float
             **{f"b.{k}": v for k, v in binarize(make_net(), "reste").state_dict().items()
                if k != "hidden.input_estimator._extra_state"}}  # b: binary, one estimator's state lost
    with pytest.raises(RuntimeError, match="b.hidden.input_estimator._extra_state"):
        two.load_state_dict(mixed)


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


def test_keep_takes_a_layers_exact_name_that_reads_as_a_glob():
    """(review api #12) a ModuleDict key such as 'proj[0]' could not be kept by its name: '[0]' is a glob's
    character class, and the refusal listed the very name it refused."""
    class M(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.d = nn.ModuleDict({"inp": nn.Linear(4, 4), "proj[0]": nn.Linear(4, 4), "mid": nn.Linear(4, 4),
                                    "out": nn.Linear(4, 2)})

        def forward(self, x):
            for layer in self.d.values():
                x = layer(x)
            return x

    k = kinds(binarize(M(), keep=["d.proj[0]"]))
    assert k["d.proj[0]"] is nn.Linear and k["d.mid"] is BinaryLinear


def test_unmatched_keep_pattern_raises():
    with pytest.raises(ValueError, match="nothere"):
        binarize(make_net(), keep=["layer1.conv1", "nothere*"])


def test_a_keep_pattern_naming_a_block_says_how_to_keep_its_layers():
    """keep=["layer2"] (a torchvision-style block, not a layer) matches nothing; the error says 'layer2.*'."""
    with pytest.raises(ValueError, match=r"\['layer2'\] match no conv or linear layer \(to keep every layer "
                                         r"inside a block: 'layer2\.\*'\)"):
        binarize(make_net(), keep=["layer2"])
    with pytest.raises(ValueError, match=r"layer; layers:"):  # no block of that name: no hint
        binarize(make_net(), keep=["nothere"])
    assert all(not isinstance(m, BinaryConv2d) for m in binarize(make_net(), keep=["layer2.*"]).layer2.modules())


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


# ----------------------------------------------------------- layers binarize cannot convert


class Odd(nn.Module):
    """A model with layers that have no binary version: a Conv2d subclass and a Linear subclass."""

    class PaddedConv(nn.Conv2d):  # its own forward, like timm's Conv2dSame
        def forward(self, x):
            return super().forward(nn.functional.pad(x, (1, 1, 1, 1)))

    class Gate(nn.Linear):
        def forward(self, x):
            return torch.sigmoid(super().forward(x))

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.mid = nn.Conv2d(4, 4, 3, padding=1)
        self.same = self.PaddedConv(4, 4, 3)
        self.gate = self.Gate(4, 4)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        x = self.same(torch.relu(self.mid(torch.relu(self.stem(x)))))
        y = x.mean(dim=(2, 3))
        return self.fc(y * self.gate(y))


def test_unconvertible_layers_are_named_in_one_warning():
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match="no binary version") as record:
        bnet = binarize(Odd())
    messages = [str(w.message) for w in record if "no binary version" in str(w.message)]
    assert len(messages) == 1
    assert "'same' (PaddedConv)" in messages[0] and "'gate' (Gate)" in messages[0]
    assert "only exact torch.nn convolutions (Conv1d/2d/3d, ConvTranspose1d/2d/3d) and nn.Linear" in messages[0]
    assert isinstance(bnet.mid, BinaryConv2d)
    assert type(bnet.same) is Odd.PaddedConv and type(bnet.gate) is Odd.Gate
    assert bnet(torch.randn(2, 3, 6, 6)).shape == (2, 3)
    # keep= names them: no warning, and a pattern that matches only them is not "unmatched"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        binarize(Odd(), keep=["same", "gate"])
    with pytest.warns(UserWarning, match=r"'gate' \(Gate\)") as record:
        binarize(Odd(), keep=["same"])
    assert "'same'" not in str(record[0].message)


def test_already_binary_layers_keep_their_estimators_with_one_warning():
    once = binarize(make_net(), "reste")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        twice = binarize(once, "ste")  # not listed as layers with no binary version, not converted again
    assert [str(w.message) for w in record if "no binary version" in str(w.message)] == []
    told = [str(w.message) for w in record if "binary already" in str(w.message)]
    assert len(told) == 1 and f"{len(CONVERTIBLE)} layer(s)" in told[0] and repr(CONVERTIBLE[0]) in told[0]
    assert [n for n, _ in reste.binary_layers(twice)] == CONVERTIBLE
    assert {m.weight_estimator.name for _, m in reste.binary_layers(twice)} == {"reste"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a float model: no such warning
        binarize(make_net())


def test_a_layer_that_cannot_be_copied_is_named():
    net = make_net()
    net.layer1.conv2.weight = nn.Parameter(torch.randn(4, 4))  # not the conv's shape
    with pytest.raises(ValueError, match=r"layer 'layer1.conv2' \(Conv2d\)"):
        binarize(net)


def test_model_without_linear_keeps_its_last_conv():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU(), nn.Conv2d(4, 5, 1))
    bnet = binarize(net)
    assert [type(m) for m in bnet if not isinstance(m, nn.ReLU)] == [nn.Conv2d, BinaryConv2d, nn.Conv2d]
    with pytest.warns(UserWarning, match="the last layer '4'"):
        bnet = binarize(net, keep_last=False)
    assert isinstance(bnet[4], BinaryConv2d)


# ----------------------------------------------------------------------------- timm models

TIMM_MODELS = [
    "resnet18",
    "resnetblur18",  # anti-aliased (BlurPool) downsampling
    "seresnet18",  # squeeze-and-excitation blocks (1x1 convs with bias)
    "mobilenetv2_050",  # depthwise and pointwise convs
    "dla46_c",  # a 1x1 conv as classifier, no linear layer
]


@pytest.mark.parametrize("name", TIMM_MODELS)
def test_timm_models(name):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    net = timm.create_model(name, pretrained=False, num_classes=10)
    first, head = net.pretrained_cfg["first_conv"], net.pretrained_cfg["classifier"]
    layers = kinds(net)
    assert all(t in (nn.Conv2d, nn.Linear) for t in layers.values()), layers
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bnet = binarize(net, "reste", o_end=3.0)

    after = kinds(bnet)
    assert after[first] is nn.Conv2d and after[head] in (nn.Conv2d, nn.Linear)
    binary = [n for n, _ in reste.binary_layers(bnet)]
    assert binary == [n for n in layers if n not in (first, head)]
    for n in binary:
        old, new = net.get_submodule(n), bnet.get_submodule(n)
        assert torch.equal(old.weight, new.weight), n
        if isinstance(old, nn.Conv2d):
            assert (old.stride, old.padding, old.dilation, old.groups) == (
                new.stride, new.padding, new.dilation, new.groups), n
    if name == "seresnet18":
        assert any(".se." in n for n in binary)
    if name == "mobilenetv2_050":
        assert any(bnet.get_submodule(n).groups > 1 for n in binary)  # depthwise
    if name == "resnetblur18":
        assert any(type(m).__name__ == "BlurPool2d" for m in bnet.modules())

    reste.set_progress(bnet, 1, 2)
    assert all(e.o > 1 for e in reste.estimators_of(bnet))
    x = torch.randn(4, 3, 32, 32)
    assert bnet.eval()(x).shape == (4, 10) and torch.isfinite(bnet(x)).all()

    # a training step (1W/32A: in these conv-BN-ReLU blocks every binary conv's input comes
    # after a ReLU, so its sign is +1 everywhere and 1W1A gradients blow up through the BNs)
    wnet = binarize(net, "reste", o_end=3.0, activations=False)
    out = wnet.train()(x)
    nn.functional.cross_entropy(out, torch.tensor([1, 2, 3, 4])).backward()
    for n in binary:
        grad = wnet.get_submodule(n).weight.grad
        assert grad is not None and torch.isfinite(grad).all(), n


def test_timm_same_padding_convs_are_named():
    timm = pytest.importorskip("timm")
    net = timm.create_model("tf_mobilenetv3_small_minimal_100", pretrained=False, num_classes=10)
    same = [n for n, m in net.named_modules() if type(m).__name__ == "Conv2dSame"]
    assert same[0] == net.pretrained_cfg["first_conv"]  # the stem: kept anyway, not reported
    same = same[1:]
    assert same
    with pytest.warns(UserWarning, match="no binary version") as record:
        bnet = binarize(net)
    message = next(str(w.message) for w in record if "no binary version" in str(w.message))
    assert f"{same[0]!r} (Conv2dSame)" in message and f"{len(same)} layer(s)" in message
    assert "conv_stem" not in message and "classifier" not in message  # timm's Linear head is kept
    assert type(bnet.conv_stem).__name__ == "Conv2dSame" and not isinstance(bnet.classifier, BinaryLinear)
    assert bnet.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_zoo_models_convert_every_float_conv_and_linear_but_first_and_last():
    from reste import models

    for name in models.list_models():
        torch.manual_seed(0)
        net = models.create(name)
        floats = [n for n, m in net.named_modules() if type(m) in (nn.Conv2d, nn.Linear)]
        before = [n for n, _ in reste.binary_layers(net)]
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            bnet = binarize(net)
        told = [str(w.message) for w in record]
        assert told == ([] if not before else [told[0]]) and (not before or "binary already" in told[0]), name
        convs = [n for n in floats if isinstance(net.get_submodule(n), nn.Conv2d)]
        linears = [n for n in floats if isinstance(net.get_submodule(n), nn.Linear)]
        expected = set(before) | set(floats) - {convs[0], linears[-1]}
        assert {n for n, _ in reste.binary_layers(bnet)} == expected, name


def test_a_layer_used_in_two_places_stays_one_binary_layer():
    shared = nn.Conv2d(4, 4, 3, padding=1)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), shared, nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), shared,
                        nn.Flatten(), nn.Linear(4 * 36, 3))
    bnet = binarize(net)
    assert isinstance(bnet[1], BinaryConv2d) and bnet[1] is bnet[4]
    assert [n for n, _ in reste.binary_layers(bnet)] == ["1", "3"]
    # kept under one of its names (a keep pattern): kept wherever it is used
    kept = binarize(net, keep=["4"])
    assert type(kept[1]) is nn.Conv2d and kept[1] is kept[4] and isinstance(kept[3], BinaryConv2d)


def test_the_binary_layers_take_over_the_parameters():
    net = make_net()
    net.layer1.conv1.weight.requires_grad_(False)  # a frozen layer stays frozen
    net.layer2.conv2.weight = net.layer1.conv2.weight  # tied weights stay tied
    net = net.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    before = [id(p) for p in net.parameters()]
    same = binarize(net, inplace=True)
    # an optimizer built before an in-place binarize still holds every parameter of the model
    assert [id(p) for p in same.parameters()] == before
    assert {id(p) for p in same.parameters()} <= {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert not same.layer1.conv1.weight.requires_grad and same.layer1.conv2.weight.requires_grad
    assert same.layer2.conv2.weight is same.layer1.conv2.weight
    assert same.layer1.conv2.weight.is_contiguous(memory_format=torch.channels_last)
    # a copy (the default) ties its own parameters as the original ties them
    tied = make_net()
    tied.layer2.conv2.weight = tied.layer1.conv2.weight
    copied = binarize(tied)
    assert copied.layer2.conv2.weight is copied.layer1.conv2.weight is not tied.layer1.conv2.weight


def test_hooks_of_a_converted_layer_stay():
    net = make_net()
    calls = []
    handle = net.layer1.conv1.register_forward_hook(lambda module, args, out: calls.append(type(module)))
    binarize(net, inplace=True)(torch.randn(2, 3, 8, 8))
    assert calls == [BinaryConv2d]
    handle.remove()
    net(torch.randn(2, 3, 8, 8))
    assert calls == [BinaryConv2d]


def test_keep_takes_one_name_and_a_bad_scaling_is_named_once():
    assert isinstance(binarize(make_net(), keep="layer1.conv1").layer1.conv1, nn.Conv2d)
    assert not isinstance(binarize(make_net(), keep="layer1.conv1").layer1.conv1, BinaryConv2d)
    with pytest.raises(ValueError, match=r"^unknown scaling 'bad'; valid: layer, channel, none$"):
        binarize(make_net(), scaling="bad")


@pytest.mark.filterwarnings("ignore:.*weight_norm.*is deprecated:FutureWarning")
@pytest.mark.parametrize("norm", ["spectral_norm", "weight_norm"])
def test_a_weight_computed_by_a_norm_hook_starts_the_binary_layer(norm):
    """spectral_norm and the old weight_norm compute the weight in a forward pre-hook from their own attributes
    (weight_orig, weight_g): that hook stays behind with a warning, and the binary layer trains the weight's
    current values (moving the hook made the binary layer fail at its first forward)."""
    net = make_net()
    net.layer1.conv1 = getattr(nn.utils, norm)(net.layer1.conv1)
    with torch.no_grad():
        net(torch.randn(2, 3, 8, 8))  # the hook has computed the weight
    weight = net.layer1.conv1.weight.detach().clone()
    with pytest.warns(UserWarning, match=r"the weight of 'layer1.conv1' is computed by (SpectralNorm|WeightNorm)"):
        bnet = binarize(net, inplace=True)
    assert isinstance(bnet.layer1.conv1.weight, nn.Parameter) and torch.equal(bnet.layer1.conv1.weight, weight)
    bnet(torch.randn(2, 3, 8, 8)).sum().backward()
    assert bnet.layer1.conv1.weight.grad is not None


def test_a_parametrized_layer_is_named_with_how_to_convert_it():
    """torch.nn.utils.parametrizations (the new weight_norm, spectral_norm) make a ParametrizedConv2d, which stays
    float: the warning says how to make it the plain layer binarize converts, and that works."""
    from torch.nn.utils import parametrizations, parametrize

    net = make_net()
    net.layer1.conv1 = parametrizations.weight_norm(net.layer1.conv1)
    with pytest.warns(UserWarning, match=r"'layer1.conv1' \(ParametrizedConv2d: torch.nn.utils.parametrize."
                                         r"remove_parametrizations\(layer, 'weight'\) before binarize makes it the "
                                         r"Conv2d it converts\)"):
        assert not isinstance(binarize(net).layer1.conv1, BinaryConv2d)
    parametrize.remove_parametrizations(net.layer1.conv1, "weight")
    assert isinstance(binarize(net).layer1.conv1, BinaryConv2d)


@pytest.mark.filterwarnings("ignore:.*weight_norm.*is deprecated:FutureWarning")
def test_a_model_torch_cannot_copy_says_to_convert_in_place():
    net = make_net()
    net.layer1.conv1 = nn.utils.weight_norm(net.layer1.conv1)
    with pytest.raises(ValueError, match="binarize cannot copy the model .*; convert it in place with inplace=True"):
        binarize(net)


def test_inputs_that_a_relu_made_non_negative_get_one_warning(monkeypatch):
    """sign(relu(x)) is +1 everywhere: binarize says so at the first forward, once (torchvision's ResNets trained
    with no gradient in their body at 32x32; review BB); inputs that can be negative, or real activations, get no
    warning."""
    import warnings

    def net():
        return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                             nn.Conv2d(8, 8, 3, padding=1), nn.Flatten(), nn.Linear(8 * 16, 2))

    x = torch.randn(2, 3, 4, 4)
    for build, told in ((lambda: binarize(net(), "ste"), 1),
                        (lambda: binarize(net(), "ste", activations=False), 0),
                        (lambda: binarize(nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Conv2d(8, 8, 1),
                                                        nn.Flatten(), nn.Linear(32, 2)), "ste"), 0)):
        model = build()
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            for _ in range(3):
                model(x).sum().backward()
        relevant = [w for w in seen if "are all >= 0" in str(w.message)]
        assert len(relevant) == told, [str(w.message) for w in seen]
        if told:
            assert "'2'" in str(relevant[0].message) and "activations=False" in str(relevant[0].message)
            assert relevant[0].filename == __file__  # the line of model(x), not one of layers.py (newuser2)
        assert all(m.watch_inputs is None for m in model.modules() if hasattr(m, "watch_inputs"))


def test_each_binarized_model_warns_of_inputs_all_non_negative():
    """(review models #2) the warning came once per process: a second model (a notebook, a script comparing
    architectures) whose binary layers all read a ReLU trained without it. Now once per binarize."""
    import warnings

    def net():
        return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                             nn.Conv2d(8, 8, 3, padding=1), nn.Flatten(), nn.Linear(8 * 16, 2))

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        for model in (binarize(net(), "ste"), binarize(net(), "reste")):
            for _ in range(2):
                model(torch.randn(2, 3, 4, 4))
    assert len([w for w in seen if "are all >= 0" in str(w.message)]) == 2


def test_a_summary_or_an_exports_zero_input_leaves_the_input_check_to_a_real_batch(monkeypatch, tmp_path):
    """(review userA #5) describe() and export run a zero dummy input, which a bias-free conv and an untrained
    BatchNorm keep at exact zeros: the check took it for a ReLU before the binary layer, warned wrongly (advising
    1W/32A) and was spent for the process. It now waits for a real batch."""
    import warnings

    from reste.export import export_model
    from reste.models import describe

    model = binarize(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8),
                                   nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.Flatten(),
                                   nn.Linear(8 * 16, 2)), "ste")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        describe(model, (3, 4, 4))
        export_model(model.eval(), tmp_path / "m.rbnn", input_size=(3, 4, 4), verify=False)
    assert not [w for w in seen if "are all >= 0" in str(w.message)], [str(w.message) for w in seen]
    assert model[2].watch_inputs == "2" and not model[2].inputs_told[0]
    with pytest.warns(UserWarning, match="binary layer '2' are all >= 0"):  # a real batch of such inputs still is
        model[2](torch.rand(2, 8, 4, 4))


def test_an_empty_batch_leaves_the_input_check_to_a_real_one():
    """(review mut3 #2) an empty batch (a process's empty shard) is all >= 0 as an empty all() is true: it must
    neither warn nor spend the check."""
    import warnings

    model = binarize(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Conv2d(8, 8, 3, padding=1),
                                   nn.Flatten(), nn.Linear(8 * 16, 2)), "ste")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        model(torch.randn(0, 3, 4, 4))
    assert not [w for w in seen if "are all >= 0" in str(w.message)], [str(w.message) for w in seen]
    assert model[2].watch_inputs == "2"
    with pytest.warns(UserWarning, match="binary layer '2' are all >= 0"):
        model[2](torch.rand(2, 8, 4, 4))


def test_an_attention_left_in_float_is_named_whole():
    """The warning names the attention's in-projection with its out_proj (a Parameter, not a layer: without it
    the warning read as if one projection of four stayed float; review BB)."""
    model = nn.Sequential(nn.Linear(8, 16), nn.TransformerEncoderLayer(16, 2, 32, batch_first=True), nn.Linear(16, 2))
    with pytest.warns(UserWarning, match=r"'1\.self_attn\.out_proj' \(NonDynamicallyQuantizableLinear, and the "
                                         r"in-projection weights of '1\.self_attn': all of that MultiheadAttention\)"):
        binarize(model, "ste")


def test_a_freshly_binarized_model_compiles_whole_and_exports():
    """The first-forward input check stays out of the compiler's way: torch.compile(fullgraph=True) and
    torch.export take a binarized model before its first eager call (review CC)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Conv2d(8, 8, 3, padding=1),
                        nn.Flatten(), nn.Linear(8 * 16, 2))
    x = torch.randn(2, 3, 4, 4)
    model = binarize(net, "ste").eval()
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    assert torch.equal(compiled(x), model(x))
    exported = torch.export.export(binarize(net, "ste").eval(), (x,))
    assert exported.module()(x).shape == (2, 2)


def test_a_transformer_encoder_layer_evaluates_through_its_binary_linears():
    """nn.TransformerEncoderLayer's inference fast path (eval, no gradients) runs a fused kernel on linear1.weight
    and linear2.weight, the float latent weights: binarize turns it off, so torch.no_grad() evaluation computes the
    binary model (it computed a float feed-forward: outputs 0.57 apart)."""
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, 32, batch_first=True, dropout=0.0)
    net = nn.Sequential(nn.Linear(8, 16), nn.TransformerEncoder(layer, 2, enable_nested_tensor=False),
                        nn.Linear(16, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the attention's out_proj stays float, said in a warning
        model = binarize(net).eval()
        assert isinstance(model[1].layers[0].linear1, BinaryLinear)
        x = torch.randn(2, 5, 8)
        with torch.no_grad():
            fast = model(x)
        torch.testing.assert_close(fast, model(x).detach())
    assert net[1].layers[0].activation_relu_or_gelu  # the float model keeps its fast path


def test_inputs_whose_values_cannot_be_read_leave_the_first_forward_check_for_a_real_batch():
    """(review api #6, #15) The first-forward check of the inputs reads them: nn.TransformerEncoder's own fast path
    (eval, no gradients, a padding mask) hands the layers a nested tensor, where it raised a dispatcher error; on
    the meta device and under FakeTensorMode (shape inference) it could not be read. Those forwards run, and the
    check waits for a real batch."""
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, 32, batch_first=True, dropout=0.0)
    net = nn.Sequential(nn.Linear(16, 16), nn.TransformerEncoder(layer, 2), nn.Linear(16, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the attention's out_proj stays float; the nested tensor's prototype note
        model = binarize(net).eval()
        h, mask = torch.randn(3, 10, 16), torch.zeros(3, 10, dtype=torch.bool)
        mask[0, 6:] = True
        with torch.no_grad():
            fast = model[2](model[1](model[0](h), src_key_padding_mask=mask))
        slow = model[2](model[1](model[0](h), src_key_padding_mask=mask))  # (with gradients: no nested tensor)
    torch.testing.assert_close(fast[~mask], slow.detach()[~mask])
    conv = binarize(make_net())
    assert all(m.watch_inputs for m in conv.modules() if isinstance(m, BinaryConv2d))
    assert conv.to("meta")(torch.empty(2, 3, 8, 8, device="meta")).shape == (2, 3)
    assert all(m.watch_inputs for m in conv.modules() if isinstance(m, BinaryConv2d))  # still to be checked


def test_bad_arguments_are_refused_before_the_model_is_copied(monkeypatch):
    """A misspelt estimator, hyper-parameter or scaling is refused before binarize deep-copies the model (seconds
    and gigabytes for a big one)."""
    import copy

    def no_copy(*args, **kwargs):
        raise AssertionError("copied")

    monkeypatch.setattr(copy, "deepcopy", no_copy)
    for kwargs in ({"estimator": "restе"}, {"estimator": "ste", "o_end": 3.0}, {"scaling": "per_channel"}):
        with pytest.raises(ValueError, match="unknown estimator|no o_end|unknown scaling"):
            binarize(make_net(), **kwargs)


def test_a_model_that_is_one_layer_is_refused_when_it_would_be_converted():
    """binarize(nn.Linear(...), keep_first=False, keep_last=False) set a child named '' on the float layer and
    returned it, silently float; now it says how to binarize one layer. Kept (the default), it stays float with
    the usual warning."""
    for layer, binary in ((nn.Linear(3, 3), "BinaryLinear"), (nn.Conv2d(3, 3, 3), "BinaryConv2d")):
        with pytest.raises(ValueError, match=f"this model is one layer .*nn.Sequential\\(layer\\) and take its "
                                             f"\\[0\\], or build reste.{binary} directly"):
            binarize(layer, keep_first=False, keep_last=False)
        with pytest.warns(UserWarning, match="no layer of the model was converted"):
            assert type(binarize(layer)) is type(layer)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert isinstance(binarize(nn.Sequential(nn.Linear(3, 3)), keep_first=False, keep_last=False)[0], BinaryLinear)


def test_the_warning_of_nothing_converted_says_why_for_one_layer_and_names_a_layer_once():
    """A model that is one layer (its name is '') was said with no reason ('no layer of the model was converted; it
    has no binary layer'), and a layer both first and last was named twice ('0, 0'): review ownmodel2."""
    for layer, binary in ((nn.Conv2d(3, 3, 3), "BinaryConv2d"), (nn.Linear(3, 3), "BinaryLinear")):
        with pytest.warns(UserWarning, match=f"kept in float: the model itself \\({type(layer).__name__}\\) by "
                                             f"keep_first/keep_last.*build reste.{binary} directly"):
            binarize(layer)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        binarize(nn.Sequential(nn.Conv2d(3, 3, 3)))
    (message,) = [str(w.message) for w in caught]
    assert "(kept in float: 0 by keep_first/keep_last)" in message, message


def test_a_pruned_layer_is_binarized_from_its_pruned_weight():
    """torch.nn.utils.prune computes the weight in a forward pre-hook from weight_orig and weight_mask: in place,
    the binary layer starts from the pruned weight without that hook, with the warning (the hook came along and
    the first forward raised AttributeError: no weight_mask)."""
    from torch.nn.utils import prune

    net = make_net()
    prune.l1_unstructured(net.layer1.conv1, "weight", amount=0.5)
    weight = net.layer1.conv1.weight.detach().clone()
    with pytest.warns(UserWarning, match=r"the weight of 'layer1.conv1' is computed by L1Unstructured"):
        bnet = binarize(net, inplace=True)
    assert torch.equal(bnet.layer1.conv1.weight, weight) and not bnet.layer1.conv1._forward_pre_hooks
    bnet(torch.randn(2, 3, 8, 8)).sum().backward()
    assert bnet.layer1.conv1.weight.grad is not None


def test_binarize_refuses_a_torchscript_model_and_an_undeclared_estimator_by_name():
    """(review models #3, #7) a scripted model was returned unconverted with "no layer was converted"; an estimator
    whose constructor declares no hyper-parameters made print(model) raise, and binarize by its name raised
    NotImplementedError."""
    from reste import estimators

    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Conv2d(8, 8, 3, padding=1),
                        nn.BatchNorm2d(8), nn.Flatten(), nn.Linear(512, 10))
    with pytest.raises(TypeError, match="not a TorchScript one"):
        binarize(torch.jit.script(net))

    from estimator_checks import TableLess

    class Clipped(TableLess):
        name = "clipped_review_models_7"

    estimators.register_estimator(Clipped)
    try:
        model = binarize(net, Clipped(0.5))
        assert "name='clipped_review_models_7'" in repr(model)
        with pytest.raises(ValueError, match="pass an instance, binarize\\(model, Clipped\\(...\\)\\)"):
            binarize(net, "clipped_review_models_7")
    finally:
        estimators._REGISTRY.pop("clipped_review_models_7", None)


def test_an_uninitialised_lazy_layer_is_named_with_what_to_do():
    """(review models, suggestion) a LazyConv2d not yet run was named as having no binary version; one forward makes
    it the Conv2d that binarize converts."""
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.LazyConv2d(4, 3), nn.BatchNorm2d(4),
                          nn.Conv2d(4, 4, 1), nn.Flatten(), nn.Linear(64, 2))
    with pytest.warns(UserWarning, match=r"'2' \(LazyConv2d: run one forward before binarize"):
        binarize(model)
    model(torch.randn(1, 1, 8, 8))
    assert type(binarize(model)[2]).__name__ == "BinaryConv2d"


def test_a_model_with_an_uninitialised_lazy_buffer_is_refused_naming_it():
    """(review layers1) a LazyBatchNorm2d not yet run made binarize's copy fail with torch's ValueError, which named
    no layer."""
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.LazyBatchNorm2d(), nn.Conv2d(4, 4, 3), nn.Flatten(), nn.Linear(16, 2))
    with pytest.raises(ValueError, match=r"^binarize cannot copy the model: its lazy module\(s\) '1' are not "
                                         r"initialised yet; run one forward"):
        binarize(model)
    model(torch.randn(1, 1, 6, 6))
    assert type(binarize(model)[2]).__name__ == "BinaryConv2d"


def test_the_no_binary_layer_warning_names_the_layers_keep_kept():
    """(review newuser2 #5) a keep= pattern that kept every middle layer was blamed on keep_first/keep_last alone."""
    def model():
        return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 3, padding=1),
                             nn.BatchNorm2d(4), nn.Conv2d(4, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(4, 2))

    for keep in (["2", "4"], ["*"]):
        with pytest.warns(UserWarning, match=re.escape(f"(kept in float: 0, 7 by keep_first/keep_last; 2, 4 by "
                                                       f"keep={keep!r})")):
            binarize(model(), "ste", keep=keep)


def test_the_package_gives_its_public_modules_and_binarize_takes_scaling_none():
    """(review newuser2, suggestions) `import reste; reste.models.describe(...)` was an AttributeError, and
    scaling=None was refused."""
    import subprocess
    import sys

    code = ("import sys, reste; assert 'reste.models' not in sys.modules; "
            "print(reste.models.describe.__name__, reste.datasets.get_spec('digits').name, 'models' in dir(reste), "
            "reste.convert.binarize.__name__, reste.integrations.__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["describe", "digits", "True", "binarize", "reste.integrations"]
    model = binarize(nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2)), "ste", scaling=None)
    assert model[1].scaling == "none"


def test_keywords_meant_as_true_or_false_refuse_anything_else():
    """(review apifuzz1) binarize(model, inplace="no") converted the user's own model in place, and
    load_datasets(download="no") went to the network: a string is true. Such keywords take True or False (NumPy's
    bool too) and refuse the rest in one line naming the keyword; None, where it means the default, is kept."""
    import numpy as np

    from reste import data, models
    from reste.errors import UsageError

    float_model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Conv2d(4, 4, 3), nn.Flatten(), nn.Linear(16, 2))
    for keyword in ("inplace", "keep_first", "keep_last"):
        with pytest.raises(UsageError, match=rf"^binarize: {keyword} must be True or False, got 'no'$"):
            reste.binarize(float_model, **{keyword: "no"})
    assert type(float_model[1]) is nn.Conv2d  # not converted in place
    assert type(reste.binarize(float_model, inplace=np.bool_(False))[1]) is reste.BinaryConv2d
    assert type(float_model[1]) is nn.Conv2d
    for keyword in ("download", "augment", "in_memory", "train"):
        with pytest.raises(UsageError, match=rf"^load_datasets: {keyword} must be True or False, got 'no'$"):
            data.load_datasets("digits", **{keyword: "no"})
    assert data.load_datasets("digits", augment=None, in_memory=None)[2].num_classes == 10
    with pytest.raises(UsageError, match=r"^models.create: a32 must be True or False, got 2$"):
        models.create("digits_1w1a", a32=2)
    models.create("digits_1w1a", a32=1)  # (0 and 1, and bool tensors, as before: review diff34)
    assert type(reste.binarize(float_model, inplace=torch.tensor(False), keep_first=0)[0]) is reste.BinaryConv2d
    with pytest.raises(UsageError, match=r"^estimator_options must be a dict .*\{'o_end': 3.0\}, got 3$"):
        models.create("digits_1w1a", estimator_options=3)


def test_a_recurrent_or_bilinear_layer_left_in_float_is_said():
    """(review ownmodel2, suggestion 5) An audio model's GRU (an LSTM, nn.Bilinear) stayed float without a word, and
    the model looked binarized whole: binarize names them; keep= silences it; they are never first or last layers."""
    class Audio(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c, self.c2 = nn.Conv1d(1, 8, 3), nn.Conv1d(8, 8, 3)
            self.rnn, self.pair = nn.GRU(8, 8, batch_first=True), nn.Bilinear(8, 8, 8)
            self.fc = nn.Linear(8, 3)

        def forward(self, x):
            y = self.rnn(self.c2(self.c(x)).transpose(1, 2))[0][:, -1]
            return self.fc(self.pair(y, y))

    with pytest.warns(UserWarning, match=r"^binarize: 2 layer\(s\) of a kind reste has no binary version of stay in "
                                         r"full precision: 'rnn' \(GRU\), 'pair' \(Bilinear\); .*keep="):
        model = binarize(Audio())
    assert type(model.c2) is reste.BinaryConv1d and type(model.c) is nn.Conv1d and type(model.fc) is nn.Linear
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        binarize(Audio(), keep=["rnn", "pair"])

    class Cell(nn.Module):  # a recurrent cell (nn.LSTMCell, GRUCell, RNNCell) stays float as well (review diff34)
        def __init__(self) -> None:
            super().__init__()
            self.a, self.cell, self.b, self.c = nn.Linear(4, 8), nn.LSTMCell(8, 8), nn.Linear(8, 8), nn.Linear(8, 2)

        def forward(self, x):
            return self.c(self.b(self.cell(self.a(x))[0]))

    with pytest.warns(UserWarning, match=r"^binarize: 1 layer\(s\) of a kind .*'cell' \(LSTMCell\)"):
        binarize(Cell())


def test_binarize_takes_a_spec_dict_and_a_layer_takes_scaling_none():
    """(review apifuzz1, suggestion 3) binarize's estimator= refused a spec dict ("expected an estimator name or
    instance, got dict") that its activations= takes; BinaryConv2d(scaling=None) was "unknown scaling None" where
    binarize and models.create take None as "none"."""
    float_model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Conv2d(4, 4, 3), nn.Flatten(), nn.Linear(16, 2))
    model = binarize(float_model, {"name": "reste", "o_end": 5.0}, t=2.0)
    est = model[1].weight_estimator
    assert type(est) is reste.ReSTE and est.o_end == 5.0 and est.t == 2.0
    assert model[1].input_estimator is not est and model[1].input_estimator.o_end == 5.0
    with pytest.raises(ValueError, match="'o_end' is given twice"):
        binarize(float_model, {"name": "reste", "o_end": 5.0}, o_end=3.0)
    assert BinaryConv2d(4, 4, 3, scaling=None).scaling == "none"
