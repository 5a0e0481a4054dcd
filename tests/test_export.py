"""Bit-packed export, XOR/popcount inference and ONNX export (reste.export)."""

from __future__ import annotations

import copy
import hashlib
import json
import math
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import reste
from reste import models
from reste.errors import UsageError
from reste.export import PackedModel, export_model, export_onnx, format_report, pack_bits, read_header, \
    unpack_bits, unpack_state
from reste.export import graph
from reste.export import kernels as K
from reste.export import runtime as R
from reste.export.reference import Comparison, compare, graph_reference, trace_model
from reste.native import NativeLibrary
from build_checks import require_built
from export_checks import assert_computes_model, assert_explained as _assert_explained

BACKENDS = ["numpy"] + (["c"] if K.c_kernel_error() is None else [])


pytestmark = pytest.mark.usefixtures("one_thread_module")


def _calibrate(model: nn.Module, size: tuple[int, ...], batches: int = 3, seed: int = 0) -> nn.Module:
    """Random weights, batch-norm statistics from a few random batches, eval mode."""
    gen = torch.Generator().manual_seed(seed)
    model.train()
    with torch.no_grad():
        for _ in range(batches):
            model(torch.randn(16, *size, generator=gen))
    return model.eval()


def _export_and_load(model: nn.Module, tmp_path, size, backend: str, name: str = "m.rbnn") -> PackedModel:
    export_model(model, tmp_path / name, input_size=size, verify=False)
    return PackedModel.load(tmp_path / name, backend=backend)


def _packed_vs_reference(packed: PackedModel, path, x) -> Comparison:
    trace: list[torch.Tensor] = []
    got = packed.forward(x, trace=trace)
    return compare(graph_reference(path, x), got, trace)


def _check_model(model: nn.Module, tmp_path, size, x, backends=None) -> None:
    """The packed file on every backend, the float32 model and the model in float64, each against
    the file's float64 reference (exact binary sums): the export is right and so is each engine."""
    path = tmp_path / "check.rbnn"
    export_model(model, path, input_size=size, verify=False)
    ref = graph_reference(path, x)
    for backend in backends or BACKENDS:
        _assert_explained(_packed_vs_reference(PackedModel.load(path, backend=backend), path, x), backend)
    for dtype in (torch.float32, torch.float64):
        logits, sites = trace_model(model, x, dtype)
        _assert_explained(compare(ref, logits, sites), f"model in {dtype}")


# ------------------------------------------------------------------ bit packing


@pytest.mark.parametrize("shape", [(1,), (7,), (8,), (9,), (3, 5), (16, 3, 3, 3), (5, 13, 3, 3)])
def test_pack_unpack_round_trip(shape):
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(*shape, generator=gen).numpy()
    w.flat[0] = 0.0  # sign(0) = +1
    packed = pack_bits(w)
    assert packed.dtype == np.uint8 and packed.size == -(-w.size // 8)
    signs = unpack_bits(packed, shape)
    assert signs.shape == shape and signs.dtype == np.float32
    np.testing.assert_array_equal(signs, reste.sign(torch.from_numpy(w)).numpy())
    assert signs.flat[0] == 1.0


def test_unpack_rejects_wrong_size():
    with pytest.raises(ValueError, match="do not hold"):
        unpack_bits(np.zeros(2, np.uint8), (3, 8))


def test_packed_rows_pad_to_words():
    bits = np.ones((2, 3, 3, 13), dtype=bool)  # 9 pixels x 2 bytes = 18 bytes -> 3 words
    words = K.pack_rows(bits)
    assert words.shape == (2, 3) and words.dtype == np.uint64
    assert int(np.unpackbits(words.view(np.uint8)).sum()) == bits.sum()


# ------------------------------------------------------- packed layers vs float


CONV_CASES = [
    dict(cin=16, cout=8, k=3, stride=1, padding=1, dilation=1),
    dict(cin=13, cout=5, k=3, stride=2, padding=1, dilation=1),  # channels not a multiple of 8
    dict(cin=64, cout=16, k=3, stride=1, padding=2, dilation=2),
    dict(cin=8, cout=3, k=4, stride=1, padding="same", dilation=1),  # asymmetric padding
    dict(cin=70, cout=6, k=1, stride=2, padding=0, dilation=1),
    dict(cin=9, cout=4, k=5, stride=3, padding=3, dilation=1),  # windows reaching far into the padding
]


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()))
@pytest.mark.parametrize("scaling", ["none", "layer", "channel"])
def test_binary_conv_matches_float(tmp_path, backend, case, scaling):
    torch.manual_seed(0)
    conv = reste.BinaryConv2d(case["cin"], case["cout"], case["k"], case["stride"], case["padding"],
                              case["dilation"], bias=scaling == "channel", scaling=scaling)
    model = nn.Sequential(conv).eval()
    x = torch.randn(3, case["cin"], 11, 10)
    x[0, :, 2:4] = 0.0  # sign(0) = +1 inside the image; padding contributes 0
    packed = _export_and_load(model, tmp_path, (case["cin"], 11, 10), backend)
    got = packed(x)
    ref = graph_reference(tmp_path / "m.rbnn", x)
    assert got.shape == tuple(ref.logits.shape) == tuple(model(x).shape)
    if scaling == "none":  # +-1 dot products: exact integers in both
        np.testing.assert_array_equal(got, ref.logits.numpy())
    # the signs are taken of x itself, so nothing can flip: every output within float32 rounding
    c = _packed_vs_reference(packed, tmp_path / "m.rbnn", x)
    assert c.agree == c.images, c.problems


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("scaling", ["none", "layer", "channel"])
@pytest.mark.parametrize("features", [(64, 10), (100, 7), (3, 1)])
def test_binary_linear_matches_float(tmp_path, backend, scaling, features):
    torch.manual_seed(0)
    model = nn.Sequential(reste.BinaryLinear(*features, bias=True, scaling=scaling)).eval()
    x = torch.randn(5, features[0])
    x[:, 0] = 0.0
    c = _packed_vs_reference(_export_and_load(model, tmp_path, (features[0],), backend), tmp_path / "m.rbnn", x)
    assert c.agree == c.images, c.problems  # signs of x itself: nothing can flip


def test_padding_correction_is_exact(tmp_path):
    """A window on the padding adds nothing: an all -1 input with +1 weights gives -(valid taps)."""
    conv = reste.BinaryConv2d(8, 1, 3, 1, 1, bias=False, scaling="none")
    with torch.no_grad():
        conv.weight.fill_(0.5)
    x = -torch.ones(1, 8, 4, 4)
    packed = _export_and_load(nn.Sequential(conv).eval(), tmp_path, (8, 4, 4), BACKENDS[-1])
    out = packed(x)[0, 0]
    assert out[0, 0] == -8 * 4 and out[1, 1] == -8 * 9 and out[0, 1] == -8 * 6


@pytest.mark.parametrize("backend", BACKENDS)
def test_real_input_binary_layers_and_fusion_paths(tmp_path, backend):
    """1W/32A layers, an explicit sign module, a BN that is not after ReLU, flatten -> binary linear."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, padding=1)
            self.bn0 = nn.BatchNorm2d(8)
            self.real = reste.BinaryConv2d(8, 8, 3, padding=1, bias=False, input_estimator=None)
            self.bin = reste.BinaryConv2d(8, 16, 3, stride=2, padding=1, bias=False, scaling="channel")
            self.bn1 = nn.BatchNorm2d(16)
            self.act = reste.get_estimator("ste")
            self.fc1 = reste.BinaryLinear(16 * 4 * 4, 12)
            self.fc2 = nn.Linear(12, 4)

        def forward(self, x):
            x = self.bn0(self.stem(x))  # foldable
            x = F.relu(self.real(x))
            x = self.bn1(self.bin(x))  # BN straight after a binary conv: in its epilogue, without a ReLU
            x = self.act(x)
            x = x.view(x.size(0), -1)
            return self.fc2(F.hardtanh(self.fc1(x)))

    # seeded: the weights and images came from what the tests before left in torch's generator, and about 1 state
    # in 16 put 16 of every image's bn1 outputs within float32 rounding of zero, so that no image agreed
    torch.manual_seed(0)
    model = _calibrate(Net(), (3, 8, 8))
    x = torch.randn(6, 3, 8, 8)
    _check_model(model, tmp_path, (3, 8, 8), x, backends=[backend])


# ------------------------------------------------------------------ whole models


@pytest.fixture(scope="module")
def digits_model():
    """digits_1w1a trained for a few steps on scikit-learn's digits; (model, test images, labels)."""
    from reste.data import load_datasets, make_loaders

    torch.manual_seed(0)
    train_ds, test_ds, _ = load_datasets("digits")
    train, test = make_loaders(train_ds, test_ds, batch_size=64, eval_batch_size=512)
    model = models.create("digits_1w1a").train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(2):  # 2 epochs of 23 steps
        for x, y in train:
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
    images, labels = zip(*test)
    return model.eval(), torch.cat(images), torch.cat(labels)


@pytest.mark.parametrize("backend", BACKENDS)
def test_trained_digits_model_predictions_identical(tmp_path, digits_model, backend):
    model, images, labels = digits_model
    report = export_model(model, tmp_path / "d.rbnn", input_size=(1, 8, 8))
    packed = PackedModel.load(tmp_path / "d.rbnn", backend=backend)
    c = _packed_vs_reference(packed, tmp_path / "d.rbnn", images)
    _assert_explained(c, backend)
    ref = graph_reference(tmp_path / "d.rbnn", images)
    acc = float((ref.logits.argmax(1) == labels).double().mean())
    assert acc > 0.7  # it did learn something, so the comparison is meaningful
    # predictions: the reference's, except where a near-tie flipped a sign
    # an agreeing image can still pick the other class where its two top logits tie within rounding
    assert c.same_predictions >= c.agree - int(ref.argmax_ties().sum())
    assert report["verify"]["ok"] and report["verify"]["packed"]["images"] == 16
    np.testing.assert_array_equal(packed.predict(images.numpy(), batch_size=100), packed(images).argmax(1))


def test_the_packed_model_refuses_nan_or_infinite_inputs(tmp_path, digits_model):
    """(review userA #4) The PyTorch model gives NaN logits for a NaN pixel, the packed one gave a confident class
    (sign(NaN) and the integer sums are defined): refused naming the images, as `reste predict` refuses them."""
    model, images, _ = digits_model
    export_model(model, tmp_path / "d.rbnn", input_size=(1, 8, 8), verify=False)
    packed = PackedModel.load(tmp_path / "d.rbnn")
    x = images[:4].clone()
    x[1, 0, 3, 3], x[3, 0, 0, 0] = float("nan"), float("-inf")
    assert torch.isnan(model(x)[1]).all()
    for given in (x, x.numpy()):
        with pytest.raises(UsageError, match=r"NaN or infinite values in 2 of 4 images \(first at index 1, 3\)"):
            packed(given)
        with pytest.raises(UsageError, match="NaN or infinite"):
            packed.predict(given)
    assert packed(x[[0, 2]]).shape == (2, 10)


@pytest.mark.parametrize("name,opts", [
    ("resnet20_1w1a", {}),
    ("resnet20_bireal_1w1a", {"scaling": "channel"}),
    ("resnet20_1w1a", {"a32": True}),
])
def test_zoo_models_match(tmp_path, name, opts):
    torch.manual_seed(0)
    model = _calibrate(models.create(name, **opts), (3, 32, 32))
    _check_model(model, tmp_path, (3, 32, 32), torch.randn(8, 3, 32, 32), backends=[BACKENDS[-1]])


class _BareBatchNorms(nn.Module):
    """Binary convs each followed straight by a batch norm (no ReLU), the next binary conv reading it, and a
    Bi-Real-style residual (x + bn(conv(x))); 2-D, or 1-D (Conv1d layers, run as 2-D ones on a height of 1).
    Each batch norm has a negative, a zero and a -0 weight (per-channel scales of every sign)."""

    def __init__(self, dims: int) -> None:
        super().__init__()
        conv, bn = (nn.Conv2d, nn.BatchNorm2d) if dims == 2 else (nn.Conv1d, nn.BatchNorm1d)
        bconv = reste.BinaryConv2d if dims == 2 else reste.BinaryConv1d
        self.stem = nn.Sequential(conv(3, 16, 3, padding=1), bn(16))  # (folded into the float conv)
        self.convs = nn.ModuleList([bconv(16, 24, 3, padding=1, bias=False, scaling="channel"),
                                    bconv(24, 70, 3, stride=2, padding=1, bias=True),
                                    bconv(70, 70, 3, padding=1, bias=False, scaling="channel"),
                                    bconv(70, 13, 3, padding=1, bias=False)])
        self.bns = nn.ModuleList([bn(c) for c in (24, 70, 70, 13)])
        self.head = nn.Linear(13, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.bns[0](self.convs[0](x))
        x = self.bns[1](self.convs[1](x))
        x = x + self.bns[2](self.convs[2](x))  # the residual: the epilogue adds it, and writes the next signs
        x = self.bns[3](self.convs[3](x))
        return self.head(x.flatten(2).mean(2))


def _bare_batch_norms(dims: int) -> nn.Module:
    torch.manual_seed(dims)
    model = _BareBatchNorms(dims)
    for bn in model.bns:
        with torch.no_grad():
            bn.weight[:3] = torch.tensor([-1.5, 0.0, -0.0])
            bn.bias[1:3] = torch.tensor([-0.5, 0.0])  # a zero scale: the sign of the shift everywhere
    return _calibrate(model, (3, 9, 11) if dims == 2 else (3, 40))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dims", [2, 1], ids=["2d", "1d"])
def test_a_batch_norm_straight_after_a_binary_conv_runs_in_its_epilogue(tmp_path, monkeypatch, backend, dims):
    """conv -> BN (no ReLU) -> binary conv: the batch norm is in the conv's kernel epilogue (no affine step left)
    and, on the C backend, the conv writes the next conv's sign bits; the logits and every sign input are
    bit-identical to the unfused path (the affine as a step of its own, the floats packed again), and the
    float64 reference explains them."""
    size = (3, 9, 11) if dims == 2 else (3, 40)
    model = _bare_batch_norms(dims)
    path = tmp_path / "bn.rbnn"
    export_model(model, path, input_size=size, verify=False)
    nodes = read_header(path)["nodes"]
    affines = [i for i, n in enumerate(nodes) if n["op"] == "affine"]
    assert len(affines) == 4 and all(nodes[nodes[i]["in"][0]]["op"] == "bconv" for i in affines)
    fused = PackedModel.load(path, backend=backend)
    convs = [fn for _, _, fn in fused._steps if isinstance(fn, R._BinaryConv)]
    assert len(convs) == 4 and all(c.spec.post is not None and not c.spec.relu for c in convs)
    assert not [t for t, _, fn in fused._steps if t in affines and not isinstance(fn, R._BinaryConv)]
    if backend == "c":
        # the sign bits fused too: the first conv's (its only reader is the second), the residual's (mode 3)
        assert len(fused._bit_steps) == 1 and len(fused._sign_pairs) == 1
    monkeypatch.setattr(R, "FUSE_BARE_AFFINE", False)
    unfused = PackedModel.load(path, backend=backend, fuse_signs=False)
    assert len(unfused._steps) == len(fused._steps) + 5  # the four affines, and the add (after an affine step)
    assert all(fn.spec.post is None for _, _, fn in unfused._steps if isinstance(fn, R._BinaryConv))
    x = torch.randn(5, *size, generator=torch.Generator().manual_seed(7))
    assert torch.equal(fused(x), unfused(x))
    traces: list[list[torch.Tensor]] = [[], []]
    assert torch.equal(fused.forward(x, trace=traces[0]), unfused.forward(x, trace=traces[1]))
    assert len(traces[0]) == 4 and all(torch.equal(a, b) for a, b in zip(*traces))
    _assert_explained(_packed_vs_reference(fused, path, x), backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_batch_norm_straight_after_a_binary_linear_runs_in_its_epilogue(tmp_path, monkeypatch, backend):
    """BinaryLinear -> BatchNorm1d (weights -1, 0, -0 among them) -> BinaryLinear: the same logits as the
    separate affine step, one step fewer."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 40), nn.BatchNorm1d(40), reste.BinaryLinear(40, 33), nn.BatchNorm1d(33),
                          reste.BinaryLinear(33, 7))
    with torch.no_grad():
        model[3].weight[:3] = torch.tensor([-1.0, 0.0, -0.0])
    model = _calibrate(model, (20,))
    path = tmp_path / "lin.rbnn"
    export_model(model, path, input_size=(20,), verify=False)
    fused = PackedModel.load(path, backend=backend)
    assert [(fn.spec.post is not None, fn.spec.relu) for _, _, fn in fused._steps
            if isinstance(fn, R._BinaryLinear)] == [(True, False), (False, True)]
    monkeypatch.setattr(R, "FUSE_BARE_AFFINE", False)
    unfused = PackedModel.load(path, backend=backend)
    x = torch.randn(9, 20, generator=torch.Generator().manual_seed(3))
    assert len(unfused._steps) == len(fused._steps) + 1 and torch.equal(fused(x), unfused(x))
    _assert_explained(_packed_vs_reference(fused, path, x), backend)


def test_backends_agree(tmp_path):
    require_built(K.c_kernel_error(), "the packed C kernels")  # (only the numpy backend where no compiler is here)
    model = _calibrate(models.create("resnet20_1w1a"), (3, 32, 32))
    x = torch.randn(8, 3, 32, 32)
    export_model(model, tmp_path / "r.rbnn", verify=False)
    ref = graph_reference(tmp_path / "r.rbnn", x)
    logits = {}
    for backend, threads in (("numpy", 1), ("c", 2)):  # C: rows split over 2 threads
        trace: list[torch.Tensor] = []
        packed = PackedModel.load(tmp_path / "r.rbnn", backend=backend, threads=threads)
        logits[backend] = packed.forward(x, trace=trace)
        _assert_explained(compare(ref, logits[backend], trace), backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("k, dil, pad, hw", [(3, 40, 0, 2), (5, 1, 0, 3), (5, 1, 0, 4), (3, 1, 0, 1), (7, 1, 1, 4)])
def test_an_input_smaller_than_a_binary_convs_window_is_refused_before_the_kernels(tmp_path, backend, k, dil,
                                                                                   pad, hw):
    """A file exported without input_size takes any image size; one too small for a binary conv's window
    gave the C kernel negative output sizes (reads outside the input). It is refused, as the float model
    refuses it, with one line naming the layer and the sizes, and no kernel runs. The second conv (input
    hw + 2 - 2 = hw) is refused as well when its input comes from the first."""
    model = nn.Sequential(nn.BatchNorm2d(64), reste.BinaryConv2d(64, 64, 3, padding=1, bias=False),
                          nn.BatchNorm2d(64), reste.BinaryConv2d(64, 32, k, 1, pad, dil, bias=False),
                          nn.Flatten()).eval()
    export_model(model, tmp_path / "g.rbnn", verify=False)
    x = torch.randn(2, 64, hw, hw)
    with pytest.raises(RuntimeError), torch.no_grad():
        model(x)
    packed = PackedModel.load(tmp_path / "g.rbnn", backend=backend)
    sizes = []  # the output size of every kernel call (the first conv's are fine)
    for name, size in (("bconv", lambda a: a[1].out_hw), ("bconv_plan", lambda a: a[0].out_hw),
                       ("im2col", lambda a: a[4])):  # (the runtime's kernel calls: a plan per geometry)
        fn = getattr(packed.kernels, name, None)
        if fn is not None:
            setattr(packed.kernels, name, lambda *a, _fn=fn, _size=size, **kw: (sizes.append(_size(a)),
                                                                                 _fn(*a, **kw))[1])
    with pytest.raises(UsageError) as err:
        packed(x)
    assert sizes and all(min(s) >= 1 for s in sizes), sizes
    least = max(1, dil * (k - 1) + 1 - 2 * pad)
    assert str(err.value) == (f"binary conv 3 takes inputs of at least {least}x{least} pixels (kernel {k}x{k}, "
                              f"dilation {dil}x{dil}, padding {[pad] * 4}), got {hw}x{hw}; pass larger images")
    big = torch.randn(2, 64, least, least)
    assert packed(big).shape == (2, 32)  # the smallest size it names runs


def test_size_report_resnet20_within_5_percent_of_bound(tmp_path):
    model = models.create("resnet20_1w1a").eval()
    r = export_model(model, tmp_path / "r20.rbnn", input_size=(3, 32, 32), verify=False)
    assert r["params"] == 269_850 and r["binary_params"] == 267_264
    assert r["binary_bytes"] == 267_264 // 8
    assert r["file_bytes"] == (tmp_path / "r20.rbnn").stat().st_size
    assert r["bound"] == pytest.approx(r["float_bytes"] / (r["binary_bytes"] + r["fp_bytes"]))
    assert 0 <= r["gap"] < 0.05
    assert 23 < r["ratio"] < 26  # the "about 24x"
    assert r["param_bound"] == pytest.approx(4 * 269_850 / (267_264 / 8 + 4 * (269_850 - 267_264)))
    text = format_report(r)
    assert "bound" in text and "gap" in text and "no binary layers" not in text


def test_a_weight_tied_between_binary_layers_counts_once(tmp_path):
    """Two binary layers sharing one weight: the report's binary parameters are among its parameters, each once (it
    said '466 parameters (512 binary)' and a negative bound from the counts)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 16), nn.BatchNorm1d(16), nn.Linear(16, 16), nn.BatchNorm1d(16),
                        nn.Linear(16, 16), nn.Linear(16, 2))
    net[4].weight = net[2].weight
    model = reste.binarize(net).eval()
    r = export_model(model, tmp_path / "tied.rbnn", input_size=(4,), verify=False)
    assert r["params"] == sum(p.numel() for p in model.parameters()) and r["binary_params"] == 256
    assert r["param_bound"] > 0


def test_the_bound_from_parameter_counts_takes_a_grouped_binary_conv_as_float(tmp_path):
    """A grouped (depthwise) binary conv is stored in float32: the bound from parameter counts counted its weights at
    1 bit, 10.4x beside a file of 7.05x (bound 7.12x) on a binarized MobileNetV2 (review ownmodel2); it now counts
    them as the file does, so it is no more than the bound from the file's own tensors."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32),
                        nn.Conv2d(32, 32, 3, padding=1, groups=32, bias=False), nn.BatchNorm2d(32),
                        nn.Conv2d(32, 64, 1, bias=False), nn.BatchNorm2d(64),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))
    model = reste.binarize(net).eval()
    r = export_model(model, tmp_path / "dw.rbnn", input_size=(3, 8, 8), verify=False)
    p, dw, pw = r["params"], 32 * 9, 64 * 32
    assert r["binary_params"] == dw + pw  # (both are binary weights)
    assert r["param_bound"] == pytest.approx(4 * p / (pw / 8 + 4 * (p - pw)))
    assert r["param_bound"] <= r["bound"] * 1.01


def test_the_report_says_when_a_model_has_no_binary_layers(tmp_path):
    """Exporting a full-precision run (the float twin) works, and the report says that nothing was packed."""
    r = export_model(models.create("digits").eval(), tmp_path / "fp.rbnn", input_size=(1, 8, 8), verify=False)
    assert r["binary_params"] == 0
    assert "no binary layers: a full-precision model" in format_report(r)


def test_file_is_readable_without_reste(tmp_path, digits_model):
    """The format needs only struct, zlib, json and numpy."""
    model = digits_model[0]
    export_model(model, tmp_path / "d.rbnn", meta={"note": "x"}, verify=False)
    blob = (tmp_path / "d.rbnn").read_bytes()
    magic, version, hlen = struct.unpack_from("<8sII", blob)
    assert magic == b"RESTEBNN" and version == 2
    assert hashlib.sha256(blob[:-32]).digest() == blob[-32:]  # version 2: a SHA-256 trailer
    header = json.loads(zlib.decompress(blob[16:16 + hlen]))
    assert header["meta"] == {"note": "x"}
    start = 16 + hlen + (-(16 + hlen) % 8)
    node = next(n for n in header["nodes"] if n["op"] == "bconv" and n["name"] == "conv1")
    kind, shape, offset = header["tensors"][node["w"]]
    assert kind == "bits"
    n = int(np.prod(shape))
    bits = np.unpackbits(np.frombuffer(blob, np.uint8, -(-n // 8), start + offset), count=n)
    expected = (model.conv1.weight.detach().numpy() < 0).ravel()
    np.testing.assert_array_equal(bits.astype(bool), expected)
    ops = {n["op"] for n in header["nodes"]}
    assert {"conv", "bconv", "affine", "relu", "maxpool", "adaptive_avgpool", "flatten", "linear"} <= ops


# -------------------------------------------------------------------------- ONNX


def _assert_onnx_explained(model, tmp_path, size, x, got) -> None:
    """ONNX logits against the float64 reference: only the logits can be seen, so an image that
    differs is explained when the reference has a sign input within float32 rounding of zero."""
    export_model(model, tmp_path / "ref.rbnn", input_size=size, verify=False)
    ref = graph_reference(tmp_path / "ref.rbnn", x)
    c = compare(ref, got)
    assert not c.traced and c.mismatch == 0 and c.agree >= 1, c.summary()
    if ref.near_ties() == 0:  # nothing can flip: every image agrees, and so do the predictions
        assert c.agree == c.images and c.same_predictions == c.images


def test_onnx_matches_with_onnxruntime(tmp_path, digits_model):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    model, images, _ = digits_model
    info = export_onnx(model, tmp_path / "d.onnx", (1, 8, 8))
    assert info["ok"] and info["reference"]["images"] == 16
    graph = onnx.load(str(tmp_path / "d.onnx")).graph
    assert any(n.op_type == "Where" for n in graph.node)  # sign with sign(0) = +1
    session = ort.InferenceSession(str(tmp_path / "d.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: images.numpy()})[0]  # dynamic batch
    _assert_onnx_explained(model, tmp_path, (1, 8, 8), images, got)
    zeros = np.zeros((2, 1, 8, 8), np.float32)  # sign(0) = +1 in the exported graph too
    _assert_onnx_explained(model, tmp_path, (1, 8, 8), zeros, session.run(None, {"images": zeros})[0])


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
def test_onnx_takes_a_binary_convs_padding_mode(tmp_path, mode):
    """(review userA #13) ONNX pads reflect, replicate and circular (Pad's modes): a binary conv of such a
    padding_mode exports (the packed format still takes zeros alone), a dilated 'same' one of an even extent too,
    which pads its two sides differently (review rev11 #2: torch pads it in F.pad, written as Pad)."""
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = reste.binarize(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, padding_mode=mode), nn.BatchNorm2d(8),
                                         nn.Conv2d(8, 8, 3, padding=1, padding_mode=mode), nn.BatchNorm2d(8),
                                         nn.Conv2d(8, 8, 3, padding="same", dilation=2, padding_mode=mode),
                                         nn.Flatten(), nn.Linear(8 * 64, 4))).eval()
    info = export_onnx(model, tmp_path / "m.onnx", (3, 8, 8))
    assert info["images"] == 16 and "ok" not in info  # (checked against the float32 model only: see below)
    x = torch.randn(32, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    # against the model in float64 (the packed reference takes zero padding alone), on the images whose sign inputs
    # are all at least 1e-4 from 0 there: a sign input is a sum of 72 terms of size about 1 (fresh BatchNorms
    # scale by 1), whose float32 rounding stays below 72 * 3 * 2^-24 = 1.3e-5, so no sign of theirs can flip
    wide = copy.deepcopy(model).double()
    margins = []
    for m in wide.modules():
        if getattr(m, "input_precision", 32) == 1:
            m.register_forward_pre_hook(lambda _m, args: margins.append(args[0].abs().flatten(1).min(1).values))
    with torch.no_grad():
        want = wide(x.double()).numpy()
    assert len(margins) == 2
    far = (torch.stack(margins).min(0).values > 1e-4).numpy()
    assert far.sum() >= 16, far
    np.testing.assert_allclose(got[far], want[far], rtol=0, atol=1e-4 * np.abs(want).max())
    even = reste.binarize(nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 2, padding="same", dilation=3,
                                                                      padding_mode=mode),
                                        nn.Flatten(), nn.Linear(8 * 36, 4)), activations=False).eval()
    export_onnx(even, tmp_path / "e.onnx", (3, 8, 8))
    session = ort.InferenceSession(str(tmp_path / "e.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():  # (1W/32A: no sign, so the two float32 sums differ by rounding alone)
        want = even(x).numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * max(1.0, float(np.abs(want).max())))


# ---------------------------------------------------------------------- errors


def test_load_errors(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        PackedModel.load(tmp_path / "missing.rbnn")
    (tmp_path / "junk.rbnn").write_bytes(b"not a model at all")
    with pytest.raises(UsageError, match="not a reste packed model"):
        PackedModel.load(tmp_path / "junk.rbnn")
    model = _calibrate(models.create("digits_1w1a"), (1, 8, 8))
    export_model(model, tmp_path / "ok.rbnn", verify=False)
    blob = (tmp_path / "ok.rbnn").read_bytes()
    (tmp_path / "cut.rbnn").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(UsageError, match="truncated or corrupted"):
        PackedModel.load(tmp_path / "cut.rbnn")
    with pytest.raises(ValueError, match="valid: auto, c, numpy"):
        PackedModel.load(tmp_path / "ok.rbnn", backend="gpu")
    export_model(model, tmp_path / "sized.rbnn", input_size=(1, 8, 8), verify=False)
    with pytest.raises(UsageError, match=r"expects images of shape \(N, 1, 8, 8\)"):
        PackedModel.load(tmp_path / "sized.rbnn")(np.zeros((1, 3, 8, 8), np.float32))


@pytest.mark.parametrize("a32", [False, True])
@pytest.mark.parametrize("scaling", ["layer", "channel", "none"])
def test_grouped_binary_convs_export_as_sign_and_a_float_conv(tmp_path, a32, scaling):
    """Depthwise and grouped binary convs have no packed kernel: sign, then a float conv on the +-alpha
    weights (the values the layer computes with), checked against the float64 reference like any other."""
    torch.manual_seed(0)
    inputs = None if a32 else "reste"
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8),
        reste.BinaryConv2d(8, 8, 3, padding=1, groups=8, scaling=scaling, input_estimator=inputs), nn.ReLU(),
        nn.BatchNorm2d(8),  # after a ReLU: not folded into the conv, whose weights stay +-alpha
        reste.BinaryConv2d(8, 16, 1, groups=2, scaling=scaling), nn.BatchNorm2d(16),
        reste.BinaryConv2d(16, 16, 3, padding=1, scaling=scaling), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(16, 10))
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(8, 3, 12, 12))
    model.eval()
    report = export_model(model, tmp_path / "g.rbnn", input_size=(3, 12, 12))
    assert report["verify"]["ok"] and report["binary_layers"] == 1  # the ungrouped one stays packed
    nodes = read_header(tmp_path / "g.rbnn")["nodes"]
    depthwise = [n for n in nodes if n.get("name") == "2"]
    assert [n["op"] for n in depthwise] == (["conv"] if a32 else ["sign", "conv"]) and depthwise[-1]["groups"] == 8
    w = unpack_state(tmp_path / "g.rbnn")[f"{nodes.index(depthwise[-1])}.conv.w"]
    assert sorted({round(abs(float(v)), 6) for v in w.ravel()}) == sorted(
        {round(float(a), 6) for a in (model[2].scale() if scaling != "none" else torch.ones(1)).detach().ravel()})
    # both engines and the model against the float64 reference, not against each other: with a32, a sign input
    # here lies within float32 rounding of zero (a near-tie), which another CPU's rounding may flip
    _check_model(model, tmp_path, (3, 12, 12), torch.randn(32, 3, 12, 12))


class _ViewMinusOne(nn.Module):
    def __init__(self, per_sample: int) -> None:
        super().__init__()
        self.conv, self.fc, self.per_sample = nn.Conv2d(1, 4, 3, padding=1), reste.BinaryLinear(256, 10), per_sample

    def forward(self, x):
        return self.fc(self.conv(x).view(-1, self.per_sample))


def test_view_minus_one_keeps_the_batch_when_n_is_one_samples_size(tmp_path):
    """x.view(-1, n), the common way to flatten: the batch stays when n is one sample's size, which the
    shapes propagated from input_size tell; otherwise (or without them) it is refused in one line."""
    torch.manual_seed(0)
    model = _ViewMinusOne(4 * 8 * 8).eval()
    report = export_model(model, tmp_path / "v.rbnn", input_size=(1, 8, 8))
    assert report["verify"]["ok"]
    assert_computes_model(tmp_path / "v.rbnn", model, torch.randn(5, 1, 8, 8))
    for bad, size in ((model, None), (_ViewMinusOne(128).eval(), (1, 8, 8))):
        with pytest.raises(UsageError, match=r"x.view\(-1, n\) with n one sample's size"):
            export_model(bad, tmp_path / "w.rbnn", input_size=size)


def test_export_errors(tmp_path):
    with pytest.raises(UsageError, match="GELU is not supported"):
        export_model(nn.Sequential(nn.Conv2d(1, 2, 3), nn.GELU()), tmp_path / "g.rbnn")
    with pytest.raises(UsageError, match="folder"):
        export_model(nn.Sequential(nn.ReLU()), tmp_path / "no" / "such" / "x.rbnn")
    with pytest.raises(UsageError) as info:
        export_model(nn.Sequential(nn.LSTM(2, 2)), tmp_path / "l.rbnn")
    assert "LSTM" in str(info.value) and "\n" not in str(info.value)


def test_an_onnx_file_whose_signs_cannot_be_matched_is_checked_on_its_logits_and_a_wrong_one_fails(
        tmp_path, digits_model, capsys, monkeypatch):
    pytest.importorskip("onnxruntime")
    from reste.checkpoint import save_checkpoint
    from reste.cli import main
    from reste.export import onnx_export

    model = digits_model[0]
    save_checkpoint({"model_name": "digits_1w1a", "model_options": {"num_classes": 10}, "model": model.state_dict(),
                     "dataset": "digits", "epoch": 1, "best_acc": 50.0, "config": {"dataset": "digits"},
                     "metrics": {"epoch": 1, "test_acc": 48.5}}, tmp_path / "d.pt")
    traced = onnx_export._traced_run
    monkeypatch.setattr(onnx_export, "_traced_run", lambda data, images: (traced(data, images)[0], None))
    assert main(["export", str(tmp_path / "d.pt"), str(tmp_path / "d.rbnn"), "--onnx"]) == 0
    out = capsys.readouterr().out
    assert "agree (its logits alone: its signs could not be matched with the model's)" in out, out
    # (review mut10 #6) an ONNX file that does not compute the model (its logits 1 off, its signs right): status 1
    monkeypatch.setattr(onnx_export, "_traced_run", lambda data, images: (
        lambda run: (run[0] + 1.0, run[1]))(traced(data, images)))
    assert main(["export", str(tmp_path / "d.pt"), str(tmp_path / "d.rbnn"), "--onnx"]) == 1
    out = capsys.readouterr().out
    assert "onnxruntime vs float64: 0/16 agree, 16 NOT explained by rounding)" in out, out


def test_cli_export_and_predict(tmp_path, digits_model, capsys):
    from reste.checkpoint import save_checkpoint
    from reste.cli import main

    model, images, labels = digits_model
    save_checkpoint({"model_name": "digits_1w1a", "model_options": {"num_classes": 10}, "model": model.state_dict(),
                     "dataset": "digits", "epoch": 1, "best_acc": 50.0, "config": {"dataset": "digits"},
                     "metrics": {"epoch": 1, "test_acc": 48.5}}, tmp_path / "d.pt")
    assert main(["export", str(tmp_path / "d.pt"), str(tmp_path / "d.rbnn"), "--onnx"]) == 0
    out = capsys.readouterr().out
    assert "compression" in out and "against the model in float64" in out and "NOT" not in out
    assert (tmp_path / "d.onnx").is_file() and "onnxruntime vs float64" in out
    assert "logits alone" not in out  # its sign inputs compared too
    # (review diff23 #5) a model of no signs (1W/32A): none to match, no note that they could not be
    a32 = reste.binarize(nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.BatchNorm1d(16), nn.Linear(16, 16),
                                       nn.BatchNorm1d(16), nn.Linear(16, 10)), activations=False).eval()
    info = export_onnx(a32, tmp_path / "a32.onnx", (1, 8, 8))
    assert info["ok"] and info["reference"]["traced"] and info["reference"]["agree"] == 16, info
    assert "replacing" not in out and "earlier export" not in out
    assert main(["export", str(tmp_path / "d.pt"), str(tmp_path / "d.rbnn")]) == 0  # again, without --onnx
    out = capsys.readouterr().out
    assert f"wrote {tmp_path / 'd.rbnn'} (replacing the file that was there)" in out
    assert f"note: {tmp_path / 'd.onnx'} beside it is from an earlier export, not this one" in out
    assert main(["predict", str(tmp_path / "d.rbnn")]) == 0  # the export's data set: digits
    out = capsys.readouterr().out
    packed = PackedModel.load(tmp_path / "d.rbnn")
    acc = 100.0 * float((torch.from_numpy(packed.predict(images)) == labels).float().mean())
    assert f"top-1 {acc:.2f}%" in out
    assert "(stored at training: 48.50%)" in out  # this checkpoint's own accuracy, not the run's best
    from reste.export import evaluate_packed  # the same from Python

    r = evaluate_packed(tmp_path / "d.rbnn")
    assert (r["dataset"], r["images"], r["stored_top1"]) == ("digits", len(labels), 48.5)
    assert f"top-1 {r['top1']:.2f}%" in out and r["top1"] == pytest.approx(acc)
    np.save(tmp_path / "x.npy", images.numpy())
    np.save(tmp_path / "y.npy", labels.numpy())
    assert main(["predict", str(tmp_path / "d.rbnn"), str(tmp_path / "x.npy"), "--labels",
                 str(tmp_path / "y.npy")]) == 0
    assert f"accuracy {acc:.2f}%" in capsys.readouterr().out
    np.testing.assert_array_equal(np.load(tmp_path / "x.pred.npy"), packed.predict(images))
    # errors: one line on stderr, exit status 2
    assert main(["predict", str(tmp_path / "missing.rbnn")]) == 2
    assert main(["predict", str(tmp_path / "d.pt")]) == 2
    assert main(["predict", str(tmp_path / "d.rbnn"), str(tmp_path / "nope.npy")]) == 2
    assert main(["export", str(tmp_path / "missing.pt"), str(tmp_path / "o.rbnn")]) == 2
    np.save(tmp_path / "grey.npy", np.zeros((3, 28, 28), np.uint8))  # (N, H, W): 3 grey images of the wrong size
    assert main(["predict", str(tmp_path / "d.rbnn"), str(tmp_path / "grey.npy")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 5 and all(line.startswith("reste: error:") for line in err)
    assert "(a uint8 array of shape (3, 28, 28), read as 3 images) holds images of shape (1, 28, 28)" in err[4]
    assert "does not exist" in err[0] and "not a reste packed model" in err[1]


def test_falls_back_to_numpy_without_a_compiler(tmp_path, monkeypatch):
    monkeypatch.setattr(K, "_LIB", NativeLibrary("packed", K._C_SOURCE, {}))  # not built yet
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("RESTE_CACHE", str(tmp_path / "cache"))
    assert K.get_kernels("auto").name == "numpy"
    assert K.c_kernel_error()
    with pytest.raises(UsageError, match="C backend is unavailable"):
        K.get_kernels("c")


def test_onnx_resnet20_option_a_shortcut(tmp_path):
    """Strided slices and channel padding (option-A shortcut) export too."""
    pytest.importorskip("onnxruntime")
    from reste.export import run_onnx

    model = _calibrate(models.create("resnet20_1w1a"), (3, 32, 32))
    info = export_onnx(model, tmp_path / "r.onnx", (3, 32, 32))
    assert info["ok"]
    x = torch.randn(8, 3, 32, 32)
    _assert_onnx_explained(model, tmp_path, (3, 32, 32), x, run_onnx(tmp_path / "r.onnx", x.numpy()))


def test_onnx_dynamo_exporter(tmp_path, digits_model):
    """The fallback exporter (torch.export + onnxscript) gives the same graph semantics."""
    pytest.importorskip("onnxscript")
    from reste.export import deploy_model, run_onnx
    from reste.export.onnx_export import _export

    model, images, _ = digits_model
    _export(deploy_model(model), images[:2], tmp_path / "d.onnx", dynamo=True)
    _assert_onnx_explained(model, tmp_path, (1, 8, 8), images, run_onnx(tmp_path / "d.onnx", images.numpy()))


def test_a_binary_layer_used_in_two_places_deploys_and_exports_as_one(tmp_path):
    from reste.export import deploy_model

    shared = nn.Conv2d(8, 8, 3, padding=1, bias=False)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), shared, nn.Conv2d(8, 8, 3, padding=1),
                        shared, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
    model = _calibrate(reste.binarize(net), (3, 8, 8))
    deployed = deploy_model(model)
    assert deployed[2] is deployed[4] and getattr(deployed[2], "precision", 32) != 1
    x = torch.randn(16, 3, 8, 8)
    inside = copy.deepcopy(model)  # (the shared conv's binary weight inside its sum, as the deployed copy and training
    for m in reste.layers.binary_layers(inside):  # compute it: its sums that cancel are +-tiny there, 0 in eval mode)
        m[1]._sign_and_scale = lambda dims: None
    with torch.no_grad():
        assert torch.allclose(deployed(x), inside(x), atol=1e-5)
    report = export_model(model, tmp_path / "m.rbnn", input_size=(3, 8, 8))
    assert report["verify"]["ok"]


def test_raw_pixels_need_the_preprocessing_the_file_records(tmp_path):
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1), nn.Flatten(),
                        nn.Linear(8 * 8 * 8, 10))
    export_model(reste.binarize(net).eval(), tmp_path / "m.rbnn", input_size=(1, 8, 8), verify=False)
    model = PackedModel.load(tmp_path / "m.rbnn")
    assert model.preprocessing is None
    with pytest.raises(UsageError, match="uint8 images are raw pixels, and this packed model records no "
                                         "preprocessing"):
        model(np.zeros((2, 1, 8, 8), np.uint8))
    assert model(np.zeros((2, 1, 8, 8), np.float32)).shape == (2, 10)


def test_export_model_checks_its_arguments_before_writing(tmp_path, capfd):
    """A bad meta or input_size is one UsageError naming it, and no file is left that a reader would refuse."""
    from reste.export.ir import Preprocessing

    model = nn.Sequential(nn.Conv2d(3, 4, 3), reste.BinaryConv2d(4, 4, 3), nn.Flatten(), nn.LazyLinear(2))
    model(torch.zeros(1, 3, 8, 8))
    model.eval()
    cases = [
        (dict(meta="foo"), "meta must be a mapping"),
        (dict(meta=Preprocessing((3, 8, 8), (0.5,) * 3, (0.0,) * 3, 255.0).to_meta()),
         "preprocessing .* is invalid"),
        (dict(meta=Preprocessing((1, 28, 28), (0.5,), (1.0,), 255.0).to_meta()), "differs from input_size"),
        (dict(input_size=(3, 0, 8)), "input_size must be one input's shape"),
        (dict(input_size=(4, 8, 8)), r"fails on an input of input_size \(4, 8, 8\)"),
        # (review apifuzz1) written, then refused by its own check as "a corrupted packed model" naming the hidden
        # temporary file; without input_size (or with verify=False) written whole, and PackedModel.load refused it
        (dict(meta={"classes": 5}), r"^meta's classes must be a list of the class names, one per output"),
        (dict(meta={"classes": "cat,dog"}, verify=False), r"^meta's classes must be a list"),
    ]
    for kwargs, message in cases:
        capfd.readouterr()
        with pytest.raises(UsageError, match=message):
            export_model(model, tmp_path / "x.rbnn", **{"input_size": (3, 8, 8), **kwargs})
        assert not (tmp_path / "x.rbnn").exists()
        assert "Traceback" not in capfd.readouterr().err  # the model's own error is said once, in the line
    report = export_model(nn.Sequential(), tmp_path / "empty.rbnn", input_size=(3, 8, 8), verify=False)
    assert report["params"] == 0  # no parameters: nothing to compress, and no division by zero
    # what exported before still does: NumPy integers, a read-only mapping, a meta with the input size alone,
    # and a float64 or bf16 model (its shapes are propagated in its own dtype)
    from types import MappingProxyType

    export_model(model, tmp_path / "n.rbnn", input_size=tuple(np.array([3, 8, 8])), verify=False,
                 meta=MappingProxyType({"input_size": [3, 8, 8], "note": "x"}))
    for dtype in (torch.float64, torch.bfloat16):
        export_model(copy.deepcopy(model).to(dtype), tmp_path / "t.rbnn", input_size=(3, 8, 8), verify=False)
    partial = {k: v for k, v in Preprocessing((3, 8, 8), (0.5,) * 3, (0.2,) * 3, 255.0).to_meta().items()
               if k != "pixel_scale"}
    with pytest.warns(UserWarning, match=r"part of the preprocessing \(no pixel_scale\)"):
        export_model(model, tmp_path / "p.rbnn", input_size=(3, 8, 8), verify=False, meta=partial)


class _OptionalMask(nn.Module):
    """One image input and an optional argument (timm's and Hugging Face's forwards have such)."""

    def __init__(self):
        super().__init__()
        self.conv = reste.BinaryConv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 2)

    def forward(self, x, mask=None):
        y = self.conv(x)
        if mask is not None:
            y = y * mask
        return self.fc(y.flatten(1))


class _TwoInputs(_OptionalMask):
    def forward(self, x, mask):
        return self.fc(self.conv(x).flatten(1) * mask)


class _Permuted(_OptionalMask):
    def forward(self, x, mask=None):
        return self.fc(self.conv(x).permute(0, 2, 3, 1).flatten(1))


class _Flagged(_OptionalMask):
    def forward(self, x, flag=True, mode="flat"):  # defaults that are not None: fx guards them with eq and _assert
        y = self.conv(x)
        return self.fc(y.flatten(1)) if flag and mode == "flat" else y


class _TensorDefault(_OptionalMask):
    def forward(self, x, bias=torch.zeros(2)):
        return self.fc(self.conv(x).flatten(1)) + bias


def test_defaults_other_than_none_are_traced_too_and_a_tensor_default_is_named(tmp_path):
    """review CC: flag=True and mode="flat" export (fx's guards of them are no ops of the model), a tensor default
    is a second input, named (a NameError traceback before)."""
    torch.manual_seed(0)
    model = _Flagged().eval()
    assert export_model(model, tmp_path / "f.rbnn", input_size=(3, 8, 8))["verify"]["ok"]
    assert_computes_model(tmp_path / "f.rbnn", model, torch.randn(4, 3, 8, 8))
    with pytest.raises(UsageError, match="its forward also takes 'bias'"):
        export_model(_TensorDefault().eval(), tmp_path / "t.rbnn", input_size=(3, 8, 8))


def test_an_optional_argument_is_traced_at_its_default_and_refusals_name_what_and_where(tmp_path):
    """review BB: forward(x, mask=None) exports (the mask at None), a second input without a default is named, and
    a tensor method that cannot be exported is named with the model's own line."""
    torch.manual_seed(0)
    model = _OptionalMask().eval()
    report = export_model(model, tmp_path / "m.rbnn", input_size=(3, 8, 8))
    assert report["verify"]["ok"]
    with pytest.raises(UsageError, match="more than one input: its forward also takes 'mask'"):
        export_model(_TwoInputs().eval(), tmp_path / "two.rbnn", input_size=(3, 8, 8))
    with pytest.raises(UsageError, match=r"method 'permute' is not supported \(at test_export.py:\d+, in forward\); "
                                         r"write the model with reste.export.export_onnx instead$"):
        export_model(_Permuted().eval(), tmp_path / "p.rbnn", input_size=(3, 8, 8))


class _Outputs(nn.Module):
    def __init__(self, form: str) -> None:
        super().__init__()
        self.form = form
        self.net = nn.Sequential(nn.Conv2d(3, 4, 3), reste.BinaryConv2d(4, 4, 3), nn.Flatten(), nn.Linear(64, 2))

    def forward(self, x):
        y = self.net(x)
        return {"logits": y, "features": x} if self.form == "dict" else (y, x)


@pytest.mark.parametrize("form, said", [("dict", r"returns a dict \(keys 'logits', 'features'\); export a module "
                                                 r"that returns the logits tensor alone"),
                                        ("tuple", "more than one output")])
def test_an_output_that_is_no_single_tensor_is_named(tmp_path, form, said):
    """(review userA #11) A dict output was refused as 'an input is not a tensor computed by the model'."""
    with pytest.raises(UsageError, match=said):
        export_model(_Outputs(form).eval(), tmp_path / "o.rbnn", input_size=(3, 8, 8))


class _ReadsShape(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        n, c, h, w = x.shape  # torchvision's ViT does this
        return self.conv(x).view(n, -1)


def test_every_refusal_of_a_function_or_method_names_the_models_line(tmp_path):
    """A refusal raised while building a function's or method's node (reading x.shape[1], ...) names the model's
    line too, also in a model whose code lives in torchvision (its files were taken for torch's own: a prefix)."""
    with pytest.raises(UsageError, match=r"only the batch size \(x.shape\[0\]\) may be read from a shape "
                                         r"\(at test_export.py:\d+, in forward\)"):
        export_model(_ReadsShape().eval(), tmp_path / "s.rbnn", input_size=(3, 8, 8))
    torchvision = pytest.importorskip("torchvision")
    vit = torchvision.models.VisionTransformer(image_size=16, patch_size=8, num_layers=1, num_heads=1, hidden_dim=8,
                                               mlp_dim=8, num_classes=3).eval()
    with pytest.raises(UsageError, match=r"\(at vision_transformer.py:\d+, in _process_input\)"):
        export_model(vit, tmp_path / "v.rbnn", input_size=(3, 16, 16))


def _small_binary_net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Hardtanh(),
                        nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Hardtanh(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
    return _calibrate(reste.binarize(net, "reste"), (1, 8, 8))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_bf16_or_fp16_model_exports_as_its_float32_copy(tmp_path, dtype):
    net = _small_binary_net()
    low = copy.deepcopy(net).to(dtype)  # as Lightning's precision="bf16-true" leaves it
    report = export_model(low, tmp_path / "low.rbnn", input_size=(1, 8, 8))  # raised a dtype error after writing
    assert report["verify"]["ok"]
    export_model(copy.deepcopy(low).float(), tmp_path / "up.rbnn", input_size=(1, 8, 8), verify=False)
    assert (tmp_path / "low.rbnn").read_bytes() == (tmp_path / "up.rbnn").read_bytes()  # the exact upcast's file
    assert next(low.parameters()).dtype == dtype  # the user's model is left as it was


def test_compiled_and_data_parallel_models_export_as_the_model_inside(tmp_path):
    net = _small_binary_net()
    export_model(net, tmp_path / "plain.rbnn", input_size=(1, 8, 8), verify=False)
    wrapped = {"compiled": torch.compile(net), "data_parallel": nn.DataParallel(net),
               "both": torch.compile(nn.DataParallel(net))}
    for name, model in wrapped.items():  # torch.fx could not trace the wrappers: a cryptic error
        export_model(model, tmp_path / f"{name}.rbnn", input_size=(1, 8, 8), verify=False)
        assert (tmp_path / f"{name}.rbnn").read_bytes() == (tmp_path / "plain.rbnn").read_bytes(), name
    with pytest.raises(UsageError, match="expected a torch.nn.Module, got OrderedDict"):
        export_model(net.state_dict(), tmp_path / "sd.rbnn")


def test_the_packed_file_is_written_through_a_temporary_file_no_one_could_plant(tmp_path):
    """sec2 4: the file went through the fixed name .NAME.tmp, opened with open(): a link planted there in a
    shared folder had its target overwritten with the model, and the output became that link."""
    victim, shared = tmp_path / "victim.txt", tmp_path / "shared"
    victim.write_text("precious\n")
    shared.mkdir()
    (shared / ".m.rbnn.tmp").symlink_to(victim)
    export_model(_small_binary_net(), shared / "m.rbnn", input_size=(1, 8, 8), verify=False)
    assert victim.read_text() == "precious\n"
    assert not (shared / "m.rbnn").is_symlink() and PackedModel.load(shared / "m.rbnn") is not None
    assert sorted(p.name for p in shared.iterdir()) == [".m.rbnn.tmp", "m.rbnn"]  # no temporary file of ours left


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU (RESTE_TEST_DEVICE=cuda)")
def test_a_model_on_the_gpu_exports_the_files_of_its_cpu_copy(tmp_path):
    """A model trained on a GPU exports as it does on the CPU: the same packed bytes, the same ONNX graph (export_onnx
    made its trace input on the CPU: a device mismatch in both exporters, review gpufail01)."""
    pytest.importorskip("onnxruntime")
    from reste.export import run_onnx, trace_model

    net = _small_binary_net()
    on_gpu = copy.deepcopy(net).cuda()
    export_model(net, tmp_path / "cpu.rbnn", input_size=(1, 8, 8))
    export_model(on_gpu, tmp_path / "gpu.rbnn", input_size=(1, 8, 8))
    assert (tmp_path / "cpu.rbnn").read_bytes() == (tmp_path / "gpu.rbnn").read_bytes()
    export_onnx(net, tmp_path / "cpu.onnx", (1, 8, 8), check=False)
    info = export_onnx(on_gpu, tmp_path / "gpu.onnx", (1, 8, 8))
    assert info["same_predictions"] and next(on_gpu.parameters()).is_cuda, info
    x = torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(3)).numpy()
    np.testing.assert_array_equal(run_onnx(tmp_path / "gpu.onnx", x), run_onnx(tmp_path / "cpu.onnx", x))
    # reste.export.trace_model runs a model where it is and gives CPU tensors (review diff35, suggestion 3)
    (logits, sites), (gpu_logits, gpu_sites) = trace_model(net, x), trace_model(on_gpu, x)
    assert gpu_logits.device.type == "cpu" and all(site.device.type == "cpu" for site in gpu_sites)
    # (the values: a GPU's convolutions (TF32) may break a near-tie the other way, a sign apart; the shapes must agree)
    assert gpu_logits.shape == logits.shape and [site.shape for site in gpu_sites] == [site.shape for site in sites]


def test_deploy_model_makes_its_float_layers_where_the_model_is_and_in_its_dtype():
    """deploy_model's sign + float layers were plain nn.Conv2d / nn.Linear on the CPU in float32, whatever the
    model: a GPU model's copy held them on the CPU beside its other layers on the GPU (review gpuread2 #1). On the
    CPU: the meta device stands in for a GPU (copying a weight out of it fails, as the mixed copy's forward does on
    one), and a float64 model's copy failed with a dtype error."""
    from reste.export import deploy_model

    net = _small_binary_net()
    on_meta = deploy_model(copy.deepcopy(net).to("meta"))  # raised "Cannot copy out of meta tensor"
    assert {t.device.type for t in (*on_meta.parameters(), *on_meta.buffers())} == {"meta"}
    double = deploy_model(copy.deepcopy(net).double())
    assert {p.dtype for p in double.parameters()} == {torch.float64}
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with torch.no_grad():  # (raised "Input type (double) and bias type (float) should be the same")
        assert double(x).dtype == torch.float64


def test_check_onnx_takes_a_model_of_another_dtype_or_device(tmp_path):
    """check_onnx ran ``model`` on its CPU float32 images as it came: a model on a GPU (a device mismatch) or in
    float64 (a dtype error) failed there; it checks the float32 CPU copy, as export_onnx gives it (review gpuread2
    #2). The float64 model stands in on the CPU; the gpu test below checks a GPU's."""
    pytest.importorskip("onnxruntime")
    from reste.export.onnx_export import check_onnx

    net = _small_binary_net().eval()
    export_onnx(net, tmp_path / "m.onnx", (1, 8, 8), check=False)
    double = copy.deepcopy(net).double()
    got = check_onnx(double, tmp_path / "m.onnx", (1, 8, 8))  # raised "expected ... Double but found Float"
    assert got == check_onnx(net, tmp_path / "m.onnx", (1, 8, 8))
    assert next(double.parameters()).dtype == torch.float64  # (the caller's model untouched)


def test_compare_and_exact_ties_take_sign_inputs_traced_elsewhere(tmp_path):
    """compare and exact_ties took a trace's sign inputs as they came: ones traced on a GPU failed against the
    reference's CPU tensors ("expected device", "can't convert ... to numpy"; review gpuread2 #3). The values are the
    CPU trace: a Tensor subclass that refuses NumPy and any op beside a CPU tensor stands in for a GPU's."""
    from reste.export.reference import exact_ties

    net = _small_binary_net().eval()
    export_model(net, tmp_path / "m.rbnn", input_size=(1, 8, 8), verify=False)
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    ref = graph_reference(tmp_path / "m.rbnn", x)
    logits, sites = trace_model(net, x)

    class Elsewhere(torch.Tensor):  # a device tensor's stand-in: no NumPy view, no op with a CPU tensor, .cpu()
        @classmethod
        def __torch_function__(cls, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func is torch.Tensor.cpu:
                return args[0].as_subclass(torch.Tensor).clone()
            given = [t for a in (*args, *kwargs.values()) for t in (a if isinstance(a, (list, tuple)) else (a,))]
            if any(type(t) is torch.Tensor and t.dim() > 0 for t in given):
                raise RuntimeError("Expected all tensors to be on the same device, but found at least two devices")
            return super().__torch_function__(func, types, args, kwargs)

        def numpy(self, *args, **kwargs):
            raise TypeError("can't convert cuda:0 device type tensor to numpy")

        def __array__(self, *args, **kwargs):
            raise TypeError("can't convert cuda:0 device type tensor to numpy")

    far = [s.clone().as_subclass(Elsewhere) for s in sites]
    assert compare(ref, logits, far).summary() == compare(ref, logits, sites).summary()
    assert exact_ties(ref, far) == exact_ties(ref, sites)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU (RESTE_TEST_DEVICE=cuda)")
def test_a_gpu_models_deployed_copy_check_and_trace_stay_on_the_gpu(tmp_path):
    """deploy_model of a model on a GPU runs there (its float layers were made on the CPU: review gpuread2 #1);
    check_onnx takes it (its images are the CPU's: #2); compare and exact_ties take sign inputs traced on it (#3)."""
    pytest.importorskip("onnxruntime")
    from reste.export.onnx_export import check_onnx, deploy_model
    from reste.export.reference import exact_ties

    net = _small_binary_net().eval()
    on_gpu = copy.deepcopy(net).cuda()
    deployed = deploy_model(on_gpu)
    assert {t.device.type for t in (*deployed.parameters(), *deployed.buffers())} == {"cuda"}
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert deployed(x.cuda()).shape == (4, 10)
    export_onnx(net, tmp_path / "m.onnx", (1, 8, 8), check=False)
    assert check_onnx(on_gpu, tmp_path / "m.onnx", (1, 8, 8))["images"] == 16
    export_model(net, tmp_path / "m.rbnn", input_size=(1, 8, 8), verify=False)
    ref = graph_reference(tmp_path / "m.rbnn", x)
    logits, sites = trace_model(net, x)
    gpu_sites = [s.cuda() for s in sites]
    assert compare(ref, logits.cuda(), gpu_sites).summary() == compare(ref, logits, sites).summary()
    assert exact_ties(ref, gpu_sites) == exact_ties(ref, sites)


def test_export_onnx_takes_wrapped_and_low_precision_models_as_export_model_does(tmp_path, monkeypatch):
    """A compiled, DataParallel or bf16 model failed both ONNX exporters (a dtype error, "DataParallel is not
    supported", "dynamo-optimized function"); each now gives the graph of the float32 model inside."""
    pytest.importorskip("onnxruntime")
    from reste.export import onnx_export, run_onnx

    net = _small_binary_net()
    x = torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    low = copy.deepcopy(net).to(torch.bfloat16)
    expected = {}  # the logits of the float32 model each should give: net's, and the exact upcast of low's
    for name, model in (("float32", net), ("upcast", copy.deepcopy(low).float())):
        export_onnx(model, tmp_path / f"{name}.onnx", (1, 8, 8), check=False)
        expected[name] = run_onnx(tmp_path / f"{name}.onnx", x.numpy())
    wrapped = {"compiled": torch.compile(net), "data_parallel": nn.DataParallel(net), "bf16": low,
               "bf16_in_data_parallel": nn.DataParallel(low)}
    for name, model in wrapped.items():
        info = export_onnx(model, tmp_path / f"{name}.onnx", (1, 8, 8))
        assert info["exporter"] == "torchscript" and info["same_predictions"], (name, info)
        np.testing.assert_array_equal(run_onnx(tmp_path / f"{name}.onnx", x.numpy()),
                                      expected["upcast" if name.startswith("bf16") else "float32"], err_msg=name)
    assert next(low.parameters()).dtype == torch.bfloat16  # the user's model is left as it was

    def coloured(*_args):  # dynamo's messages carry ANSI colours: the one-line error must not
        raise RuntimeError("\x1b[96mThis is step 1/3\x1b[0m of exporting")

    monkeypatch.setattr(onnx_export, "_export", coloured)
    with pytest.raises(UsageError, match=r"torchscript: This is step 1/3 of exporting; dynamo: This") as err:
        export_onnx(net, tmp_path / "x.onnx", (1, 8, 8))
    assert "\x1b" not in str(err.value)


def test_a_failed_torchscript_export_prints_nothing_and_the_fallback_says_why(tmp_path, capfd):
    """A model the TorchScript exporter rejects (an adaptive pool to a size that does not divide the map):
    its C++ side prints the whole IR graph on file descriptor 1; silenced, and one line says why dynamo ran."""
    pytest.importorskip("onnxscript")
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Conv2d(8, 16, 3, padding=1),
                        nn.AdaptiveAvgPool2d((2, 3)), nn.Flatten(), nn.Linear(96, 10))
    model = _calibrate(reste.binarize(net), (3, 11, 13))
    info = export_onnx(model, tmp_path / "a.onnx", (3, 11, 13), check=False)
    out, err = capfd.readouterr()
    assert info["exporter"] == "dynamo" and info["fallback"] and "\n" not in info["fallback"]
    assert "graph(" not in out + err and len((out + err).splitlines()) < 3, out + err


class _Clamped(nn.Module):
    """Clamps written as functions and as methods (Lightning models clamp where nn models use Hardtanh)."""

    def __init__(self, clamp) -> None:
        super().__init__()
        self.conv = reste.BinaryConv2d(3, 8, 3, padding=1, bias=False, input_estimator=None)
        self.bn = nn.BatchNorm2d(8)
        self.fc = reste.BinaryLinear(8 * 8 * 8, 4)
        self.clamp_ = clamp

    def forward(self, x):
        x = self.clamp_(self.bn(self.conv(x)))
        return self.fc(x.flatten(1))


_CLAMPS = {
    "torch.clamp(x, -1, 1)": lambda x: torch.clamp(x, -1, 1),
    "x.clip(min=-0.5, max=2)": lambda x: x.clip(min=-0.5, max=2),
    "torch.clip(x, 0, 6)": lambda x: torch.clip(x, 0.0, 6.0),
    "x.clamp(min=0)": lambda x: x.clamp(min=0),
    "x.clamp(min=0, max=inf)": lambda x: x.clamp(min=0, max=math.inf),
}


@pytest.mark.parametrize("how", list(_CLAMPS))
def test_a_clamp_with_constant_bounds_exports_as_hardtanh_or_relu(tmp_path, how):
    torch.manual_seed(0)
    model = _calibrate(_Clamped(_CLAMPS[how]), (3, 8, 8))
    _check_model(model, tmp_path, (3, 8, 8), torch.randn(6, 3, 8, 8))
    ops = [n["op"] for n in graph.to_graph(model, (3, 8, 8))[0]]
    assert ("relu" if how.startswith("x.clamp(min=0") else "hardtanh") in ops


class _ClampedInPlace(nn.Module):
    """x.clamp_(...) as a statement: the tensor x, clamped in place, is what the next layer reads."""

    def __init__(self, assigned: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = reste.BinaryConv2d(8, 8, 3, padding=1, bias=False)
        self.fc = nn.Linear(8 * 8 * 8, 4)
        self.assigned = assigned

    def forward(self, x):
        x = self.conv(x)
        if self.assigned:
            x = x.clamp_(0.2, 0.7)
        else:
            x.clamp_(0.2, 0.7)
        return self.fc(self.conv2(x).flatten(1))


def test_an_in_place_clamp_exports_only_where_its_result_is_what_is_read(tmp_path):
    """The graph has no in-place ops: x.clamp_(...) as a statement would leave the next layer the value before
    the clamp (here all sign inputs +1 in the model, mixed in the file), so it is refused; x = x.clamp_(...)
    exports."""
    torch.manual_seed(0)
    x = torch.randn(6, 3, 8, 8)
    _check_model(_ClampedInPlace(assigned=True).eval(), tmp_path, (3, 8, 8), x)
    with pytest.raises(UsageError, match=r"x.clamp_\(...\) with x read after it .*write x = x.clamp\(...\)"):
        export_model(_ClampedInPlace(assigned=False).eval(), tmp_path / "c.rbnn", input_size=(3, 8, 8))


@pytest.mark.parametrize("clamp, wanted", [
    (lambda x: x.clamp(min=-1), r"clamp with one bound \(min=-1, max=None\): give both"),
    (lambda x: torch.clamp(x, max=1.0), r"clamp with one bound \(min=None, max=1.0\)"),
    (lambda x: x.clamp(1.0, -1.0), r"clamp\(min=1.0, max=-1.0\): min is above max"),
    (lambda x: torch.clamp(x, -math.inf, 1.0), r"clamp with one bound \(min=None, max=1.0\)"),
    (lambda x: x.clamp(math.inf, math.inf), "every value would be clamped to infinity"),
    (lambda x: x.clamp(min=math.nan), "its bounds must be numbers"),
])
def test_a_clamp_the_format_cannot_hold_is_refused_in_one_line(tmp_path, clamp, wanted):
    model = _calibrate(_Clamped(clamp), (3, 8, 8))
    with pytest.raises(UsageError, match=wanted):
        export_model(model, tmp_path / "c.rbnn", input_size=(3, 8, 8))


def _small_bnn() -> nn.Module:
    torch.manual_seed(0)
    model = reste.binarize(nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8),
                                         nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Flatten(),
                                         nn.Linear(8 * 64, 10)))
    model(torch.randn(16, 1, 8, 8))  # the batch norms' statistics
    return model.eval()


def test_an_export_says_what_it_did_not_check_or_could_not_hold(tmp_path):
    """(review models #6, #9) export_model without input_size wrote an unchecked file without a word; the forward
    hooks of a model are not in the file, and a check that failed was a False in the returned dict alone."""
    import warnings

    model = _small_bnn()
    with pytest.warns(UserWarning, match="unchecked: without input_size"):
        report = export_model(model, tmp_path / "a.rbnn")
    assert "verify" not in report
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a checked export of a model without hooks: no warning
        assert export_model(model, tmp_path / "b.rbnn", input_size=(1, 8, 8))["verify"]["ok"]
        assert export_model(model, tmp_path / "c.rbnn", verify=False)
    model[2].register_forward_hook(lambda m, i, o: -o)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        report = export_model(model, tmp_path / "d.rbnn", input_size=(1, 8, 8))
    said = [str(w.message) for w in seen]
    assert any("the forward hooks on '2' are not exported" in m for m in said), said
    assert not report["verify"]["ok"] and any("disagrees with the model beyond near-ties" in m for m in said), said


def test_a_signal_model_s_preprocessing_is_refused_for_its_cause(tmp_path):
    """(review models #11) raw-image preprocessing for a (C, L) model was refused with conditions that all held."""
    from reste.export.ir import Preprocessing

    model = reste.binarize(nn.Sequential(nn.Conv1d(1, 8, 5, padding=2), nn.BatchNorm1d(8),
                                         nn.Conv1d(8, 8, 3, padding=1), nn.BatchNorm1d(8), nn.Flatten(),
                                         nn.Linear(8 * 16, 4))).eval()
    with pytest.raises(UsageError, match=r"takes a \(C, H, W\) input_size \(raw images\), got \(1, 16\)"):
        export_model(model, tmp_path / "s.rbnn", input_size=(1, 16),
                     meta=Preprocessing((1, 16), (0.5,), (0.25,), 255.0).to_meta())


@pytest.mark.parametrize("convert", ["ProcessGroupBatchNorm", "SyncBatchNorm"])
def test_a_model_with_synchronised_batch_norms_exports_as_with_batch_norms(tmp_path, convert):
    """(review models #12) a model trained under DDP holds SyncBatchNorm (GPUs) or reste's ProcessGroupBatchNorm
    (CPUs), which compute a BatchNorm in eval mode; export refused both (one traced into, with an error naming
    neither layer nor cause)."""
    from reste.syncbn import ProcessGroupBatchNorm

    model = _small_bnn()
    model.insert(5, nn.BatchNorm1d(512))  # a 1-D one before the float linear: folded into it
    model[5].running_var.uniform_(0.5, 2.0)
    model.eval()
    plain = export_model(model, tmp_path / "plain.rbnn", input_size=(1, 8, 8))
    synced = (ProcessGroupBatchNorm.convert(copy.deepcopy(model)) if convert == "ProcessGroupBatchNorm"
              else nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(model))).eval()
    assert type(synced[1]).__name__ == convert
    report = export_model(synced, tmp_path / "synced.rbnn", input_size=(1, 8, 8))
    assert report["verify"]["ok"]
    assert (report["folded_batch_norms"], report["affine_ops"]) == (plain["folded_batch_norms"], plain["affine_ops"])
    x = torch.randn(5, 1, 8, 8)
    assert torch.equal(PackedModel.load(tmp_path / "synced.rbnn")(x), PackedModel.load(tmp_path / "plain.rbnn")(x))


def test_onnx_export_to_a_folder_whose_path_is_not_utf8(tmp_path):
    """(review portable #13) onnxruntime and the TorchScript exporter take text paths alone: the ONNX check raised a
    TypeError, and the TorchScript exporter failed over to the dynamo one."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    import os

    folder = Path(os.fsdecode(os.fsencode(str(tmp_path)) + b"/caf\xe9"))
    folder.mkdir()
    report = export_onnx(_small_bnn(), folder / "m.onnx", (1, 8, 8))
    assert report["ok"] and report["exporter"] == "torchscript", report


def test_tensorboard_refuses_a_folder_whose_path_is_not_utf8(tmp_path):
    """(review portable #13) TensorBoard's writer takes text paths: the run failed after its first epoch."""
    pytest.importorskip("torch.utils.tensorboard")
    import os

    from reste.integrations.tensorboard import check

    run = os.fsdecode(os.fsencode(str(tmp_path)) + b"/caf\xe9")
    with pytest.raises(UsageError, match="is not valid UTF-8, which TensorBoard's writer needs"):
        check("", run)


def test_a_traced_or_exported_model_is_refused_for_the_eager_one(tmp_path):
    """(review models, suggestion) torch.jit.trace's module failed with "torch.fx could not trace the model
    (traced_func_name=forward ...)", a torch.export program inside torch."""
    model = _small_bnn()
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        traced = torch.jit.trace(model, x)
    program = torch.export.export(model, (x,))
    # (review rev15 #1, #2) ep.module() too, and a traced module inside DataParallel or torch.compile
    for made in (traced, nn.DataParallel(traced), torch.compile(traced), program, program.module()):
        with pytest.raises(UsageError, match="cannot export what torch.(jit|export) made .*: the exporters trace "
                                             "the eager model"):
            export_model(made, tmp_path / "t.rbnn", input_size=(1, 8, 8))


class _Activated(nn.Module):
    """An activation (a module, or a function ``act(self, x)``) on a float conv's output, read by a binary conv and
    by the float linear layer: a wrong activation in the file changes the logits, not only signs."""

    def __init__(self, act) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.binary = reste.BinaryConv2d(8, 4, 3, padding=1, bias=False)
        self.fc = nn.Linear(8, 4)
        self.weight = nn.Parameter(torch.linspace(-0.5, 1.5, 8))  # F.prelu's, one per channel
        self.prelu = nn.PReLU(init=0.3)  # its weight read by F.prelu: a parameter of a submodule
        self.register_buffer("slope", torch.tensor(0.2))  # a 0-d weight, which F.prelu takes too
        self.act = act

    def forward(self, x):
        h = self.bn(self.conv(x))
        h = self.act(h) if isinstance(self.act, nn.Module) else self.act(self, h)
        return self.fc(h.mean((2, 3))) + self.binary(h).mean((2, 3))


def _prelu_of(weight: torch.Tensor) -> nn.PReLU:
    m = nn.PReLU(weight.numel())
    with torch.no_grad():
        m.weight.copy_(weight.reshape(-1))
    return m


# the functional form -> the module the README says it is the form of
_FUNCTIONAL = {
    "F.relu6(x)": (lambda s, x: F.relu6(x), lambda s: nn.ReLU6()),
    "F.relu6(x, inplace=True)": (lambda s, x: F.relu6(x, inplace=True), lambda s: nn.ReLU6()),
    "F.hardtanh(x, -0.5, 2.0)": (lambda s, x: F.hardtanh(x, -0.5, 2.0), lambda s: nn.Hardtanh(-0.5, 2.0)),
    "F.hardtanh(x, min_val=-2, max_val=3, inplace=True)": (
        lambda s, x: F.hardtanh(x, min_val=-2, max_val=3, inplace=True), lambda s: nn.Hardtanh(-2.0, 3.0)),
    "F.hardtanh_(x, -1.0, 4.0)": (lambda s, x: F.hardtanh_(x, -1.0, 4.0), lambda s: nn.Hardtanh(-1.0, 4.0)),
    "F.leaky_relu(x)": (lambda s, x: F.leaky_relu(x), lambda s: nn.LeakyReLU()),
    "F.leaky_relu(x, 0.2)": (lambda s, x: F.leaky_relu(x, 0.2), lambda s: nn.LeakyReLU(0.2)),
    "F.leaky_relu(x, negative_slope=-0.3, inplace=True)": (
        lambda s, x: F.leaky_relu(x, negative_slope=-0.3, inplace=True), lambda s: nn.LeakyReLU(-0.3)),
    "F.leaky_relu_(x, 0.5)": (lambda s, x: F.leaky_relu_(x, 0.5), lambda s: nn.LeakyReLU(0.5)),
    "F.relu(x, inplace=True)": (lambda s, x: F.relu(x, inplace=True), lambda s: nn.ReLU()),
    "F.relu_(x)": (lambda s, x: F.relu_(x), lambda s: nn.ReLU()),
    "F.prelu(x, self.weight)": (lambda s, x: F.prelu(x, s.weight), lambda s: _prelu_of(s.weight)),
    "F.prelu(x, weight=self.prelu.weight)": (lambda s, x: F.prelu(x, weight=s.prelu.weight),
                                             lambda s: copy.deepcopy(s.prelu)),
    "F.prelu(x, self.slope)": (lambda s, x: F.prelu(x, s.slope), lambda s: nn.PReLU(init=0.2)),
}


def _same_nodes(a: list[dict], b: list[dict]) -> bool:
    """The same ops with the same attributes and tensors (module names aside)."""
    def value(v):
        v = v.array if isinstance(v, graph.Bits) else v
        return v.tolist() if isinstance(v, np.ndarray) else v

    return [{k: value(v) for k, v in n.items() if k != "name"} for n in a] == \
        [{k: value(v) for k, v in n.items() if k != "name"} for n in b]


@pytest.mark.parametrize("how", list(_FUNCTIONAL))
def test_the_functional_activations_export_as_their_modules(tmp_path, how):
    """(review deploy #1) The README says the functional forms of ReLU6, LeakyReLU and PReLU export: F.relu6,
    F.leaky_relu (slope given or not, in place or not) and F.prelu were refused as unsupported functions. Each is
    the node of its module, and the file computes what the model does."""
    function, module = _FUNCTIONAL[how]
    torch.manual_seed(0)
    functional = _calibrate(_Activated(function), (3, 8, 8))
    with torch.no_grad():
        functional.bn.weight.fill_(4.0)  # values beyond the bounds of ReLU6 and each Hardtanh
    modular = copy.deepcopy(functional)
    modular.act = module(modular)
    assert isinstance(modular.act, nn.Module)
    size, x = (3, 8, 8), torch.randn(6, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(functional(x), modular(x))  # (the two forms compute the same)
    nodes = graph.to_graph(functional, size)[0]
    assert _same_nodes(nodes, graph.to_graph(modular, size)[0])
    assert {"hardtanh", "leaky_relu", "prelu", "relu"} & {n["op"] for n in nodes}
    _check_model(functional, tmp_path, size, x)


@pytest.mark.parametrize("act, wanted", [
    (lambda s, x: F.prelu(x, x[:, :1].mean((1, 2, 3))), r"cannot export F.prelu with a weight computed in the "
                                                         r"forward: pass a parameter of the model .* \(at test_export"),
    (lambda s, x: (F.relu6(x, inplace=True), x)[1], r"cannot export F.relu6\(x, inplace=True\) with x read after it "
                                                     r".*write x = F.relu6\(x, inplace=True\)"),
    (lambda s, x: (F.leaky_relu_(x, 0.1), x)[1], r"cannot export F.leaky_relu_\(x, ...\) with x read after it"),
    (lambda s, x: x + s.weight.view(1, -1, 1, 1), "the forward uses the tensor attribute 'weight' directly"),
], ids=["computed prelu weight", "relu6 in place, x read after", "leaky_relu_, x read after", "tensor attribute"])
def test_a_functional_activation_the_file_cannot_hold_is_refused_in_one_line(tmp_path, act, wanted):
    """F.prelu takes its weight from the model's parameters; an in-place activation whose input is read after it
    (the graph has no in-place ops) is refused as x.clamp_(...) is; a tensor attribute read as an input still is."""
    model = _Activated(act).eval()  # (F.prelu's computed weight: one per image, as one channel, of one image)
    with pytest.raises(UsageError, match=wanted) as info:
        export_model(model, tmp_path / "a.rbnn", input_size=(3, 8, 8))
    assert "\n" not in str(info.value)


def test_predict_writes_one_image_file_as_a_folder_of_it(tmp_path, capsys):
    """(review deploy #2) One image file with --output wrote rows index,class,name, and took a .npy (which holds no
    file name); a folder of that one file wrote file,class,name and refused the .npy. The same for both now, the
    class the PyTorch model gives."""
    import csv
    import json

    from PIL import Image

    from reste.cli import main
    from reste.export.inputs import model_inputs
    from reste.export.ir import Preprocessing

    torch.manual_seed(0)
    net = reste.binarize(nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Conv2d(8, 8, 3, padding=1),
                                       nn.BatchNorm2d(8), nn.Flatten(), nn.Linear(8 * 64, 3)))
    model = _calibrate(net, (1, 8, 8))
    names = ["cat", "dog", "owl"]
    export_model(model, tmp_path / "m.rbnn", input_size=(1, 8, 8),
                 meta={**Preprocessing((1, 8, 8), (0.5,), (0.25,), 255.0).to_meta(), "classes": names})
    (tmp_path / "one").mkdir()
    image = tmp_path / "one" / "img.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (8, 8), dtype=np.uint8), "L").save(image)
    packed = PackedModel.load(tmp_path / "m.rbnn")
    x = torch.from_numpy(np.asarray(model_inputs(None, str(image), packed.input_size, packed.preprocessing,
                                                 packed.meta), np.float32))
    c = int(assert_computes_model(tmp_path / "m.rbnn", model, x).argmax(1)[0])  # (the file's class: a near-tie
    # may give the float32 model another, on another CPU)
    want = [["file", "class", "name"], [str(image), str(c), names[c]]]

    def run(*argv):
        code = main(["predict", str(tmp_path / "m.rbnn"), *map(str, argv)])
        out = capsys.readouterr()
        return code, out.out, out.err

    for given in (image, tmp_path / "one"):  # the file, and a folder of it alone
        code, out, err = run(given, "-o", "-")
        assert code == 0 and list(csv.reader(out.splitlines())) == want, (given, out, err)
        assert run(given, "-o", tmp_path / "p.csv")[0] == 0
        assert list(csv.reader((tmp_path / "p.csv").read_text().splitlines())) == want
        assert run(given, "-o", tmp_path / "p.json")[0] == 0
        assert json.loads((tmp_path / "p.json").read_text()) == [{"file": str(image), "class": c, "name": names[c]}]
        code, out, err = run(given, "-o", tmp_path / "p.npy")
        assert code == 2 and not (tmp_path / "p.npy").exists()
        assert err.strip() == (f"reste: error: --output {tmp_path / 'p.npy'}: a .npy array holds no file names; for "
                               "image files use .csv or .json (file,class,name), or - for CSV on stdout"), err
    code, out, err = run(image)  # without --output: its line, as before
    assert code == 0 and out.startswith(f"{image}: class {c} ({names[c]!r})"), out


def test_an_in_place_activation_module_read_after_is_refused_and_written_as_a_statement_exports(tmp_path):
    """(review diff11 #5) nn.ReLU(inplace=True) whose input is read after it was exported as relu(x) + x where the model
    computes relu(x) + relu(x) (a warning, the file kept); it is refused in one line as F.relu(x, inplace=True) is,
    and the usual x = self.relu(x) exports and matches the model."""
    class Residual(nn.Module):
        def __init__(self, reuse: bool) -> None:
            super().__init__()
            self.reuse = reuse
            self.c1, self.c2 = nn.Conv2d(1, 8, 3, padding=1), reste.BinaryConv2d(8, 8, 3, padding=1)
            self.relu, self.fc = nn.ReLU(inplace=True), nn.Linear(8 * 64, 3)

        def forward(self, x):
            x = self.c1(x)
            y = self.relu(x)
            return self.fc(self.c2(y + x if self.reuse else y).flatten(1))

    with pytest.raises(UsageError, match=r"cannot export self\.relu\(x\) \(ReLU\(inplace=True\)\) with x read after"):
        export_model(Residual(True).eval(), tmp_path / "a.rbnn", input_size=(1, 8, 8))
    torch.manual_seed(0)
    model = Residual(False).eval()
    export_model(model, tmp_path / "b.rbnn", input_size=(1, 8, 8))
    assert_computes_model(tmp_path / "b.rbnn", model, torch.randn(4, 1, 8, 8))


def test_an_op_on_a_tensor_attribute_names_the_attribute(tmp_path):
    """(review diff11, suggestion) x * self.w.view(...) was refused as "function mul is not supported"; the refusal
    names the attribute the file cannot hold, as a tensor input's does."""
    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c, self.b = nn.Conv2d(1, 4, 3, padding=1), reste.BinaryConv2d(4, 4, 3, padding=1)
            self.w, self.fc = nn.Parameter(torch.ones(4)), nn.Linear(256, 2)

        def forward(self, x):
            return self.fc((self.b(self.c(x)) * self.w.view(1, -1, 1, 1)).flatten(1))

    with pytest.raises(UsageError, match="the forward uses the tensor attribute 'w' directly"):
        export_model(Scaled().eval(), tmp_path / "a.rbnn", input_size=(1, 8, 8))


def test_a_functional_conv_on_a_parameter_is_refused_saying_what_to_do(tmp_path):
    """F.conv2d(x, self.w) was refused as "the forward uses the tensor attribute 'w' directly (at ...)", with no way
    out, where every other refusal says one (review ownmodel2): it now names the module to use, or export_onnx."""
    class Functional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c, self.bn = nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4)
            self.w, self.fc = nn.Parameter(torch.randn(4, 4, 3, 3)), nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(nn.functional.conv2d(self.bn(self.c(x)), self.w, padding=1).mean((2, 3)))

    with pytest.raises(UsageError, match=r"tensor attribute 'w' directly \(at test_export.py:\d+, in forward\); .*"
                                         r"is written as its module \(nn.Conv2d, .*reste.export.export_onnx instead$"):
        export_model(Functional().eval(), tmp_path / "f.rbnn", input_size=(1, 8, 8))


@pytest.mark.parametrize("how", ["module", "function", "method"])
def test_a_final_softmax_is_refused_saying_to_export_the_scores_before_it(tmp_path, how):
    """A classifier ending in a softmax (LogSoftmax, F.softmax, x.softmax) got the generic refusal (review
    ownmodel2, suggestion 3): the refusal now says that the file's outputs are the scores before it, whose argmax is
    the same, and how to get probabilities."""
    class Classifier(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(144, 3))
            self.last = nn.LogSoftmax(1)

        def forward(self, x):
            y = self.body(x)
            return self.last(y) if how == "module" else F.softmax(y, 1) if how == "function" else y.softmax(1)

    with pytest.raises(UsageError, match=r"is not supported.*; the packed file's outputs are the scores before it: "
                                         r"export the model without its final softmax .*export_onnx instead$"):
        export_model(Classifier().eval(), tmp_path / "c.rbnn", input_size=(1, 8, 8))


def test_class_names_of_another_count_than_the_outputs_are_warned_of(tmp_path):
    """(review apifuzz1, suggestion 4) meta={"classes": [...]} of 2 names for 3 outputs (or 4) was written without a
    word, and reste predict then named some classes wrongly or not at all."""
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), reste.BinaryConv2d(4, 4, 3), nn.BatchNorm2d(4),
                          nn.Flatten(), nn.Linear(64, 3)).eval()
    for names in (["a", "b"], ["a", "b", "c", "d"]):
        with pytest.warns(UserWarning, match=rf"meta gives {len(names)} class names for a model of 3 outputs"):
            export_model(model, tmp_path / "m.rbnn", input_size=(1, 8, 8), meta={"classes": names})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = export_model(model, tmp_path / "m.rbnn", input_size=(1, 8, 8), meta={"classes": ["a", "b", "c"]})
    assert report["verify"]["outputs"] == 3
