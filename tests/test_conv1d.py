"""BinaryConv1d: forward and gradients against a float64 reference written out by hand, binarize of a 1-D CNN
trained on digits' rows, its state, indicators and summary, and its export (packed file and ONNX)."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import reste
from reste import BinaryConv1d
from reste.errors import UsageError
from reste.export import PackedModel, export_model, export_onnx
from reste.export import format as fmt
from reste.export import kernels as K
from reste.export import runtime as R
from reste.export.graph import to_graph
from reste.export.reference import Comparison, compare, graph_reference, trace_model

BACKENDS = ["numpy"] + (["c"] if K.c_kernel_error() is None else [])
#: float64 unit roundoff
U64 = 2.0 ** -53

pytestmark = pytest.mark.usefixtures("one_thread_module")


def pm1(x: torch.Tensor) -> torch.Tensor:
    """sign with sign(0) = +1."""
    return torch.where(x < 0, -1.0, 1.0).to(x.dtype)


def abs_slope(x: torch.Tensor) -> torch.Tensor:
    """d|x|/dx as autograd takes it: 0 at 0."""
    return (x > 0).to(x.dtype) - (x < 0).to(x.dtype)


# the estimators' pseudo-gradients g, written out from their definitions (not read from reste.estimators)
def g_ste(x: torch.Tensor, clip: float = 1.0) -> torch.Tensor:
    """clipped STE: 1 on |x| <= clip."""
    return (x.abs() <= clip).to(x.dtype)


def g_reste(x: torch.Tensor, o: float, t: float = 1.5, m: float = 0.1) -> torch.Tensor:
    """ReSTE: the chord slope m^(1/o) / m on |x| <= m, (1/o) |x|^((1 - o) / o) on m < |x| <= t, 0 beyond t."""
    a = x.abs()
    power = (1.0 / o) * a.clamp_min(m) ** ((1.0 - o) / o)
    return torch.where(a <= m, m ** (1.0 / o) / m, torch.where(a <= t, power, 0.0)).to(x.dtype)


ESTIMATORS = {
    "ste": (lambda: reste.get_estimator("ste"), g_ste),
    "reste": (lambda: reste.get_estimator("reste", o=2.0, o_end=2.0, schedule="constant"),
              lambda x: g_reste(x, 2.0)),
}

GEOMETRIES = [
    dict(k=3, stride=2, padding=1, dilation=1),
    dict(k=4, stride=1, padding="same", dilation=2),  # 3 left, 3 right
    dict(k=2, stride=1, padding="same", dilation=1),  # 0 left, 1 right
    dict(k=5, stride=3, padding=0, dilation=1),
]


def _padding(geo: dict, length: int) -> tuple[int, int]:
    if geo["padding"] == "same":
        total = geo["dilation"] * (geo["k"] - 1)
        return total // 2, total - total // 2
    return geo["padding"], geo["padding"]


def _windows(x: torch.Tensor, geo: dict) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
    """(N, C, T, k): the inputs output position t reads, tap j at t * stride + j * dilation in the zero-padded
    input; the (T, k) positions; the padding."""
    n, c, length = x.shape
    left, right = _padding(geo, length)
    xp = torch.cat([x.new_zeros(n, c, left), x, x.new_zeros(n, c, right)], 2)
    t = (xp.shape[2] - geo["dilation"] * (geo["k"] - 1) - 1) // geo["stride"] + 1
    idx = torch.arange(t)[:, None] * geo["stride"] + torch.arange(geo["k"])[None, :] * geo["dilation"]
    return xp[:, :, idx], idx, (left, right)


def _conv_and_grads(x: torch.Tensor, weff: torch.Tensor, bias: torch.Tensor | None, grad: torch.Tensor,
                    geo: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """y = conv1d(x, weff) + bias by its definition, dL/dweff and dL/dx for dL/dy = ``grad``."""
    win, idx, (left, _) = _windows(x, geo)
    y = torch.einsum("nctj,ocj->not", win, weff)
    if bias is not None:
        y = y + bias[None, :, None]
    d_weff = torch.einsum("not,nctj->ocj", grad, win)
    d_win = torch.einsum("not,ocj->nctj", grad, weff)
    n, c, length = x.shape
    d_xp = x.new_zeros(n, c, length + left + _padding(geo, length)[1])
    d_xp.index_add_(2, idx.reshape(-1), d_win.reshape(n, c, -1))
    return y, d_weff, d_xp[:, :, left:left + length]


def hand_reference(layer: BinaryConv1d, x: torch.Tensor, grad: torch.Tensor, g, geo: dict, real_inputs: bool):
    """(y, dL/dx, dL/dw, dL/db) of the layer in float64, each with the same computation on absolute values (what
    bounds the rounding of any summation order)."""
    w = layer.weight.detach()
    b = None if layer.bias is None else layer.bias.detach()
    signs = pm1(w)
    if layer.scaling == "layer":
        alpha, per, dims = w.abs().sum() / w.numel(), w.numel(), (0, 1, 2)
    elif layer.scaling == "channel":  # one alpha per output channel, over its (in, k) weights
        alpha, per, dims = w.abs().sum(dim=(1, 2), keepdim=True) / w[0].numel(), w[0].numel(), (1, 2)
    else:
        alpha, per, dims = torch.ones((), dtype=w.dtype), None, None
    xin = x if real_inputs else pm1(x)
    out = []
    for absolute in (False, True):
        a = torch.abs if absolute else (lambda t: t)
        y, d_weff, d_xin = _conv_and_grads(a(xin), a(signs * alpha), None if b is None else a(b), a(grad), geo)
        dw = d_weff * alpha * g(w)
        if per is not None:  # alpha is not detached: d alpha / dw = sign(w) / per
            dw = dw + a(abs_slope(w)) / per * a(d_weff * (1.0 if absolute else signs)).sum(dims, keepdim=True)
        dx = d_xin if real_inputs else d_xin * g(x)
        out.append((y, dx, dw, a(grad).sum((0, 2))))
    return out


def _assert_within(got: torch.Tensor, ref: torch.Tensor, bound: torch.Tensor, terms: int, what: str) -> None:
    """|got - ref| <= 2 gamma(terms) * bound: a float64 sum of ``terms`` terms in any order, each product rounded,
    is within gamma(terms) of the exact sum of absolute values; the 2 covers the products and alpha's division."""
    gamma = terms * U64 / (1 - terms * U64)
    excess = (got - ref).abs() - 2 * gamma * bound
    assert got.shape == ref.shape, what
    assert bool((excess <= 0).all()), f"{what}: max excess {float(excess.max()):.3g}"


def _edge_values(t: torch.Tensor) -> torch.Tensor:
    """Puts the estimators' edge points into ``t``: 0, the clip / t / interval bounds, and values beyond."""
    edges = torch.tensor([0.0, 1.0, -1.0, 1.5, -1.5, 0.1, -0.1, 2.0, -2.0, 0.05], dtype=t.dtype)
    flat = t.view(-1)
    flat[:len(edges)] = edges
    return t


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize("estimator", sorted(ESTIMATORS))
@pytest.mark.parametrize("scaling", ["layer", "channel", "none"])
@pytest.mark.parametrize("real_inputs", [False, True], ids=["1W1A", "1W32A"])
@pytest.mark.parametrize("geo", GEOMETRIES, ids=lambda g: "-".join(f"{k}{v}" for k, v in g.items()))
def test_forward_and_gradients_match_a_float64_hand_reference(estimator, scaling, real_inputs, geo):
    make, g = ESTIMATORS[estimator]
    torch.manual_seed(0)
    layer = BinaryConv1d(3, 4, geo["k"], geo["stride"], geo["padding"], geo["dilation"], bias=True,
                         dtype=torch.float64, weight_estimator=make(),
                         input_estimator=None if real_inputs else make(), scaling=scaling)
    with torch.no_grad():
        layer.weight.mul_(4.0)  # latent weights inside and beyond the estimators' windows
        _edge_values(layer.weight)
    x = _edge_values(torch.randn(2, 3, 11, dtype=torch.float64) * 1.5).requires_grad_(True)
    y = layer(x)
    grad = torch.randn_like(y)
    (y * grad).sum().backward()
    (ry, rdx, rdw, rdb), (by, bdx, bdw, bdb) = hand_reference(layer, x.detach(), grad, g, geo, real_inputs)
    n, c, o, k = x.shape[0], 3, 4, geo["k"]
    terms = c * k + n * y.shape[2] + o * k + layer.weight.numel() + 4  # the longest chain of sums
    _assert_within(y.detach(), ry, by, terms, "forward")
    _assert_within(x.grad, rdx, bdx, terms, "input gradient")
    _assert_within(layer.weight.grad, rdw, bdw, terms, "weight gradient")
    _assert_within(layer.bias.grad, rdb, bdb, terms, "bias gradient")
    assert bool((rdw != 0).any()) and bool((rdx != 0).any())  # the comparison is not of zeros


def test_channel_scaling_reduces_over_inputs_and_taps_also_under_torch_fx():
    torch.manual_seed(0)
    layer = BinaryConv1d(3, 5, 4, scaling="channel")
    w = layer.weight.detach()
    alpha = layer.scale()
    assert alpha.shape == (5, 1, 1)
    torch.testing.assert_close(alpha.detach(), w.abs().mean(dim=(1, 2), keepdim=True), rtol=0, atol=0)
    # under torch.fx the weight is a Proxy of no known rank: the layer's kernel_size gives it
    traced = torch.fx.symbolic_trace(nn.Sequential(layer))
    x = torch.randn(2, 3, 9)
    assert torch.equal(traced(x), layer(x))
    assert "mean(dim = (1, 2)" in traced.code


def test_layer_attributes_and_errors():
    layer = BinaryConv1d(2, 3, 3, weight_estimator="ste", input_estimator=None)
    assert layer.precision == 1 and layer.input_precision == 32
    assert "weights=ste, inputs=real, scaling=layer" in repr(layer)
    assert reste.BinaryConv1d is BinaryConv1d and "BinaryConv1d" in dir(reste) and "BinaryConv1d" in reste.__all__
    with pytest.raises(ValueError, match="unknown scaling 'row'; valid: layer, channel, none"):
        BinaryConv1d(2, 3, 3, scaling="row")


# ------------------------------------------------------------------ binarize a 1-D CNN on digits' rows


def cnn1d() -> nn.Sequential:
    """A float 1-D CNN for 64-sample signals (digits' 8x8 images read row by row), each conv followed by a
    BatchNorm, so that the binary convs read signed values."""
    return nn.Sequential(
        nn.Conv1d(1, 32, 5, padding=2), nn.BatchNorm1d(32),                     # first conv: stays float
        nn.Conv1d(32, 32, 3, padding=1), nn.BatchNorm1d(32), nn.MaxPool1d(2),   # binary
        nn.Conv1d(32, 64, 3, padding=1), nn.BatchNorm1d(64), nn.MaxPool1d(2),   # binary
        nn.Flatten(), nn.Linear(64 * 16, 10))                                   # last linear: stays float


def digits_sequences() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """scikit-learn's digits as (N, 1, 64) sequences, standardised; a fixed split of 1400 train, 397 test."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.tensor(bunch.data, dtype=torch.float32).reshape(-1, 1, 64) / 16.0
    y = torch.tensor(bunch.target, dtype=torch.int64)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    x, y = x[order], y[order]
    mean, std = x[:1400].mean(), x[:1400].std()
    x = (x - mean) / std
    return x[:1400], y[:1400], x[1400:], y[1400:]


EPOCHS = 4


@pytest.fixture(scope="module")
def trained(one_thread_module):
    """(binarized model trained for a few epochs, test sequences, test labels, test accuracy)."""
    torch.manual_seed(0)
    xtr, ytr, xte, yte = digits_sequences()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the first and last layers are kept, the inputs signed: no warning
        model = reste.binarize(cnn1d(), "reste", o_end=3.0)
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    gen = torch.Generator().manual_seed(1)
    for epoch in range(EPOCHS):
        reste.set_progress(model, epoch, EPOCHS)
        model.train()
        for batch in torch.randperm(len(xtr), generator=gen).split(64):
            opt.zero_grad()
            F.cross_entropy(model(xtr[batch]), ytr[batch]).backward()
            opt.step()
            reste.clip_weights(model)
    reste.set_progress(model, EPOCHS, EPOCHS)
    model.eval()
    with torch.no_grad():
        accuracy = float((model(xte).argmax(1) == yte).double().mean())
    return model, xte, yte, accuracy


def test_binarize_converts_the_conv1d_layers_between_the_first_and_last(trained):
    model = trained[0]
    kinds = {name: type(m) for name, m in model.named_children()}
    assert kinds["0"] is nn.Conv1d and kinds["9"] is nn.Linear  # first conv, last linear: float
    assert kinds["2"] is BinaryConv1d and kinds["5"] is BinaryConv1d
    assert [n for n, _ in reste.binary_layers(model)] == ["2", "5"]
    assert model[2].weight_estimator.name == "reste" and model[2].input_precision == 1
    assert reste.clip_weights(model) == 2 and float(model[5].weight.detach().abs().max()) <= 1.0


def test_the_binarized_1d_cnn_learns_digits(trained):
    # chance is 0.1; a few epochs of this small binary CNN reach about 0.9 on the held-out rows
    assert trained[3] > 0.6, trained[3]


def test_state_dict_round_trip_restores_weights_and_schedules(trained):
    model = trained[0]
    state = model.state_dict()
    assert "2.weight_estimator._extra_state" in state and "5.input_estimator._extra_state" in state
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    fresh = reste.binarize(cnn1d(), "reste", o_end=3.0).eval()
    assert fresh[2].weight_estimator.o == 1.0
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    assert fresh[2].weight_estimator.o == model[2].weight_estimator.o == 3.0
    x = trained[1][:32]
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))
    # a float model's state loads strictly into the binary one; the schedules stay where they are
    floats = cnn1d().state_dict()
    fresh.load_state_dict(floats)
    assert fresh[2].weight_estimator.o == 3.0 and torch.equal(fresh[2].weight, floats["2.weight"])
    # another estimator's state is refused
    ste = reste.binarize(cnn1d(), "ste")
    with pytest.raises(Exception, match="reste"):
        ste.load_state_dict(state)


def test_indicators_read_the_binary_conv1d_layers_in_general_mode_only(trained):
    model = trained[0]
    meter = reste.EquilibriumMeter(model, mode="general")
    x, y = trained[1][:64], trained[2][:64]
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    meter.update()
    values = meter.epoch_end()
    assert values["estimating_error"] > 0 and values["gradient_stability"] > 0
    from reste.indicators import indicator_layers

    assert [n for n, _ in indicator_layers(model, "general")] == ["2", "5"]
    assert indicator_layers(model, "paper") == []  # 3x3 2-D convs only, by definition
    with pytest.raises(ValueError, match="no binary 3x3 conv.*use mode='general'"):
        reste.EquilibriumMeter(model, mode="paper")
    model.zero_grad()


def test_summary_counts_the_binary_conv1d_layers(trained):
    from reste.models import count_parameters, describe, layer_summary

    model = trained[0]
    rows = {r["name"]: r for r in layer_summary(model, (1, 64))}
    assert rows["2"]["type"] == "BinaryConv1d" and rows["2"]["precision"] == 1
    assert rows["2"]["macs"] == rows["2"]["binary_ops"] == 64 * 32 * 32 * 3  # L * out * in * k
    assert rows["0"]["macs"] == 64 * 32 * 1 * 5 and rows["0"]["binary_ops"] == 0
    assert count_parameters(model)["binary"] == 32 * 32 * 3 + 64 * 32 * 3
    text = describe(model, (1, 64))
    assert "1x64 (C x L, one sequence)" in text and "BinaryConv1d  1/1" in text


# ------------------------------------------------------------------ binarize: what is converted


def test_conv3d_and_transposed_convs_are_converted_too():
    class Mixed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv1d(2, 4, 3, padding=1)
            self.mid = nn.Conv1d(4, 4, 3, padding=1)
            self.up = nn.ConvTranspose1d(4, 4, 3, padding=1)
            self.vol = nn.Conv3d(1, 1, 1)
            self.head = nn.Conv1d(4, 3, 1)  # no linear: the last conv is the classifier

        def forward(self, x):
            x = self.up(self.mid(self.stem(x)))
            return self.head(self.vol(x[:, None, ..., None])[:, 0, ..., 0]).mean(-1)

    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        model = reste.binarize(Mixed())
    assert not [w for w in record if "no binary version" in str(w.message)]
    assert type(model.stem) is nn.Conv1d and type(model.head) is nn.Conv1d  # first and last kept
    assert type(model.mid) is BinaryConv1d and type(model.up) is reste.BinaryConvTranspose1d
    assert type(model.vol) is reste.BinaryConv3d
    assert model(torch.randn(2, 2, 7)).shape == (2, 3)


def test_binarize_keeps_a_conv1ds_settings_and_parameters():
    conv = nn.Conv1d(4, 6, 3, stride=2, padding=2, dilation=2, groups=2, bias=False, padding_mode="circular")
    model = nn.Sequential(nn.Conv1d(4, 4, 1), conv, nn.Conv1d(6, 2, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        new = reste.binarize(model, "ste", scaling="channel", activations=False, inplace=True)[1]
    assert type(new) is BinaryConv1d and new.weight is conv.weight and new.bias is None
    assert (new.stride, new.padding, new.dilation, new.groups, new.padding_mode) == ((2,), (2,), (2,), 2, "circular")
    assert new.scaling == "channel" and new.input_precision == 32 and new.weight_estimator.name == "ste"
    x = torch.randn(2, 4, 9)
    expected = F.conv1d(F.pad(x, (2, 2), mode="circular"), pm1(conv.weight) * conv.weight.abs().mean(
        dim=(1, 2), keepdim=True), None, 2, 0, 2, 2)
    torch.testing.assert_close(new(x), expected)
    with pytest.raises(ValueError, match=r"this model is one layer \(Conv1d\).*reste.BinaryConv1d"):
        reste.binarize(nn.Conv1d(2, 2, 3), keep_first=False, keep_last=False)


# ------------------------------------------------------------------ export


def _assert_explained(c: Comparison, what: str) -> None:
    assert c.traced, f"{what}: sign inputs not traced"
    assert c.mismatch == 0, f"{what}: {c.problems}"
    assert c.agree >= 1 and c.agree + c.near_tie == c.images, f"{what}: {c.summary()}"


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("geo", GEOMETRIES, ids=lambda g: "-".join(f"{k}{v}" for k, v in g.items()))
@pytest.mark.parametrize("scaling", ["none", "channel"])
@pytest.mark.parametrize("real_inputs", [False, True], ids=["1W1A", "1W32A"])
def test_a_binary_conv1d_exports_and_runs_packed(tmp_path, backend, geo, scaling, real_inputs):
    torch.manual_seed(0)
    conv = BinaryConv1d(13, 6, geo["k"], geo["stride"], geo["padding"], geo["dilation"], bias=scaling != "none",
                        scaling=scaling, input_estimator=None if real_inputs else "reste")
    model = nn.Sequential(conv).eval()
    x = torch.randn(3, 13, 17)
    x[0, :, 2:5] = 0.0  # sign(0) = +1 inside the signal; the padding adds 0
    export_model(model, tmp_path / "c.rbnn", input_size=(13, 17), verify=False)
    packed = PackedModel.load(tmp_path / "c.rbnn", backend=backend)
    trace: list[torch.Tensor] = []
    got = packed.forward(x, trace=trace)
    ref = graph_reference(tmp_path / "c.rbnn", x)
    assert got.shape == ref.logits.shape == model(x).shape  # (N, C, L) out, as the model
    if scaling == "none" and not real_inputs:  # +-1 dot products: exact integers in both
        np.testing.assert_array_equal(got, ref.logits.numpy())
    c = compare(ref, got, trace)
    assert c.agree == c.images, c.problems  # the signs are of x itself: nothing can flip
    logits, sites = trace_model(model, x)
    c = compare(ref, logits, sites)
    assert c.agree == c.images and c.traced, c.problems  # the model's (N, C, L) sign inputs, the graph's (N, C, 1, L)


def test_the_trained_1d_cnn_exports_verified_and_runs_as_a_2d_graph(tmp_path, trained):
    model, x, y, _ = trained
    report = export_model(model, tmp_path / "d.rbnn", input_size=(1, 64))
    assert report["verify"]["ok"] and report["binary_layers"] == 2 and report["folded_batch_norms"] == 1
    header = fmt.read(tmp_path / "d.rbnn")[0]
    ops = [n["op"] for n in header["nodes"]]
    # one unsqueeze after the input and one squeeze before the flatten: the convs, batch norms and pools between
    # run on (N, C, 1, L), each binary conv straight after its batch norm's affine and pool
    assert ops == ["input", "unsqueeze", "conv", "bconv", "affine", "maxpool", "bconv", "affine", "maxpool",
                   "squeeze", "flatten", "linear"], ops
    assert header["nodes"][0]["shape"] == [1, 64]
    ref = graph_reference(tmp_path / "d.rbnn", x)
    for backend in BACKENDS:
        trace: list[torch.Tensor] = []
        packed = PackedModel.load(tmp_path / "d.rbnn", backend=backend)
        # each batch norm runs in its binary conv's kernel epilogue (conv -> BN, no ReLU): no affine step of its own
        convs = [fn for _, _, fn in packed._steps if isinstance(fn, R._BinaryConv)]
        assert len(packed._steps) == len(ops) - 2 and [(c.spec.post is not None, c.spec.relu) for c in convs] == [
            (True, False)] * 2
        c = compare(ref, packed.forward(x, trace=trace), trace)
        _assert_explained(c, backend)
        # predictions: the reference's, but where a near-tie flipped a sign or two top logits tie within rounding
        assert c.same_predictions >= c.agree - int(ref.argmax_ties().sum())
        assert float((torch.from_numpy(packed.predict(x)) == y).double().mean()) > 0.6
    for dtype in (torch.float32, torch.float64):
        logits, sites = trace_model(model, x, dtype)
        _assert_explained(compare(ref, logits, sites), f"model in {dtype}")


class _Functional(nn.Module):
    """(N, 64) signals: x.unsqueeze(1), the functional 1-D pools, a squeeze of the pooled length."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv1d(1, 8, 3, padding=1)
        self.bn = nn.BatchNorm1d(8)
        self.conv = BinaryConv1d(8, 16, 3, padding=1, scaling="channel")
        self.bn2 = nn.BatchNorm1d(16)
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        x = F.max_pool1d(self.bn(self.stem(x.unsqueeze(1))), 2)
        x = F.avg_pool1d(self.bn2(self.conv(x)), 3, 2, 1)
        return self.fc(F.adaptive_avg_pool1d(F.relu(x), 1).squeeze(-1))


def test_functional_1d_pools_and_unit_dimensions_export(tmp_path):
    torch.manual_seed(0)
    model = _Functional()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(16, 64))
    model.eval()
    report = export_model(model, tmp_path / "f.rbnn", input_size=(64,))
    assert report["verify"]["ok"], report["verify"]
    ops = [n["op"] for n in fmt.read(tmp_path / "f.rbnn")[0]["nodes"]]
    # x.unsqueeze(1), the 1-D layers' height (once for all), then the pooled height and length removed
    assert ops.count("unsqueeze") == 2 and ops.count("squeeze") == 2, ops
    # without input_size a negative dim has no rank to count from: one line saying so
    with pytest.raises(UsageError, match=r"cannot export squeeze with dim=-1.*needs input_size"):
        to_graph(model.eval())
    # the ONNX check's reference is built at the input size too, so such a model gets its verdict
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    info = export_onnx(model, tmp_path / "f.onnx", (64,))
    assert info["ok"] and info["reference"]["mismatch"] == 0, info


def test_a_conv1d_with_another_padding_mode_is_refused_in_one_line(tmp_path):
    model = nn.Sequential(nn.Conv1d(2, 2, 3, padding=1, padding_mode="reflect")).eval()
    with pytest.raises(UsageError, match=r"^cannot export 0 \(Conv1d\): padding_mode='reflect' is not supported"):
        export_model(model, tmp_path / "r.rbnn", input_size=(2, 8))


def test_another_padding_mode_says_what_to_do_and_is_taken_without_padding(tmp_path):
    """(review layers1) the refusal named no way out; and a conv of another padding mode but no padding (padding=0,
    or 'same' of a 1-wide kernel) computes what a zero-padded one does, yet was refused."""
    reflect = nn.Sequential(nn.Conv2d(2, 2, 3, padding=1, padding_mode="circular")).eval()
    with pytest.raises(UsageError, match=r"^cannot export 0 \(Conv2d\): padding_mode='circular' is not supported, "
                                         r"only 'zeros' \(.*export_onnx"):
        export_model(reflect, tmp_path / "c.rbnn", input_size=(2, 6, 6))
    torch.manual_seed(0)
    model = reste.binarize(nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 3, padding_mode="reflect"),
        nn.BatchNorm2d(4), nn.Conv2d(4, 4, 1, padding="same", padding_mode="replicate"), nn.Flatten(),
        nn.Linear(4 * 4 * 4, 3))).eval()
    report = export_model(model, tmp_path / "r.rbnn", input_size=(2, 6, 6))
    assert report["verify"]["ok"], report["verify"]


def test_a_batch_norm_without_running_statistics_is_named(tmp_path):
    """(review layers1) the refusal did not say which BatchNorm."""
    model = nn.Sequential(nn.Conv1d(2, 3, 3), nn.BatchNorm1d(3), nn.Conv1d(3, 3, 3),
                          nn.BatchNorm1d(3, track_running_stats=False)).eval()
    with pytest.raises(UsageError, match=r"^cannot export 3 \(BatchNorm1d\): it has no running statistics"):
        export_model(model, tmp_path / "b.rbnn", input_size=(2, 8))


def test_unit_dimension_ops_are_checked_on_load_and_at_run(tmp_path):
    def write(name: str, dim) -> str:
        header = {"format": "reste-packed", "meta": {}, "output": 1,
                  "nodes": [{"op": "input", "in": []}, {"op": "squeeze", "dim": dim, "in": [0]}]}
        fmt.Writer().write(tmp_path / name, header)
        return tmp_path / name

    with pytest.raises(UsageError, match=r"dim must be an integer in \[1, 8\], got 0"):
        PackedModel.load(write("zero.rbnn", 0))
    packed = PackedModel.load(write("one.rbnn", 1))
    assert packed(torch.zeros(2, 1, 5)).shape == (2, 5)
    with pytest.raises(UsageError, match="cannot run on images of shape .*squeeze of dimension 1, which is not of "
                                         "size 1"):
        packed(torch.zeros(2, 3, 5))


def test_onnx_export_of_the_1d_cnn_matches_with_onnxruntime(tmp_path, trained):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    model, x, _, _ = trained
    info = export_onnx(model, tmp_path / "d.onnx", (1, 64))
    assert info["ok"] and info["reference"]["mismatch"] == 0
    session = ort.InferenceSession(str(tmp_path / "d.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {"images": x[:50].numpy()})[0]
    export_model(model, tmp_path / "d.rbnn", input_size=(1, 64), verify=False)
    c = compare(graph_reference(tmp_path / "d.rbnn", x[:50]), got)  # logits only: ONNX Runtime gives no signs
    assert c.mismatch == 0 and c.agree >= 1, c.problems


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize("k", [3, 4], ids=["symmetric", "one-more-right"])
def test_onnx_export_of_dilated_same_convs_runs_in_onnxruntime(tmp_path, k):
    """ONNX Runtime's SAME padding takes no dilation: a dilated 'same' conv, binary or float (the first), of an
    odd or even kernel, is written with its padding spelt out, and the check runs it (it raised from ONNX Runtime)."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = reste.binarize(nn.Sequential(
        nn.Conv1d(4, 8, k, padding="same", dilation=2), nn.BatchNorm1d(8),
        nn.Conv1d(8, 8, k, padding="same", dilation=3), nn.BatchNorm1d(8),
        nn.Flatten(), nn.Linear(8 * 20, 3))).eval()
    assert isinstance(model[2], BinaryConv1d) and type(model[0]) is nn.Conv1d
    info = export_onnx(model, tmp_path / "s.onnx", (4, 20))
    assert info["ok"] and info["reference"]["mismatch"] == 0 and info["reference"]["agree"] >= 1


class _LinearOverTime(nn.Module):
    """A linear over the length of (N, C, L) (the time axis), then a classifier."""

    def __init__(self, binary: bool) -> None:
        super().__init__()
        self.conv = nn.Conv1d(4, 8, 3, padding=1)
        self.bn = nn.BatchNorm1d(8)
        self.time = reste.BinaryLinear(20, 5) if binary else nn.Linear(20, 5)
        self.fc = nn.Linear(8 * 5, 3)

    def forward(self, x):
        return self.fc(self.time(self.bn(self.conv(x))).flatten(1))


def test_a_binary_linear_over_the_length_is_refused_at_export_and_a_float_one_exports(tmp_path):
    """The packed binary linear takes (N, features): on (N, C, L) the file could not run, and the check raised a
    bare RuntimeError from its reference; a float linear there exports."""
    torch.manual_seed(0)
    with pytest.raises(UsageError, match=r"cannot export time \(BinaryLinear\) on \(N, 8, 20\) inputs: a binary "
                                         r"linear layer takes \(N, features\); flatten"):
        export_model(_LinearOverTime(binary=True).eval(), tmp_path / "t.rbnn", input_size=(4, 20))
    assert export_model(_LinearOverTime(binary=False).eval(), tmp_path / "t.rbnn", input_size=(4, 20))["verify"]["ok"]


def test_reste_predict_takes_float_signals_of_the_models_input_size(tmp_path, trained, capsys):
    from reste.cli import main

    model, x, y, _ = trained
    export_model(model, tmp_path / "d.rbnn", input_size=(1, 64), verify=False)
    np.save(tmp_path / "x.npy", x[:40].numpy())
    np.save(tmp_path / "y.npy", y[:40].numpy())
    assert main(["predict", str(tmp_path / "d.rbnn"), str(tmp_path / "x.npy"), "--labels",
                 str(tmp_path / "y.npy")]) == 0
    got = np.load(tmp_path / "x.pred.npy")
    assert got.shape == (40,) and float((got == y[:40].numpy()).mean()) > 0.6
    np.save(tmp_path / "flat.npy", x[:4, 0].numpy())  # (N, L): the channel left out
    assert main(["predict", str(tmp_path / "d.rbnn"), str(tmp_path / "flat.npy")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("reste: error: ") and "must hold preprocessed float inputs (N, 1, 64)" in err[-1]


class _Branches(nn.Module):
    """Two binary 1-D branches concatenated along the channels, and a residual add, between two pools."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv1d(2, 8, 3, padding=1), nn.BatchNorm1d(8))
        self.a = nn.Sequential(BinaryConv1d(8, 8, 3, padding=1), nn.BatchNorm1d(8))
        self.b = nn.Sequential(BinaryConv1d(8, 8, 5, padding=2, scaling="channel"), nn.BatchNorm1d(8))
        self.mix = nn.Sequential(BinaryConv1d(16, 8, 1), nn.BatchNorm1d(8))
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        x = F.max_pool1d(self.stem(x), 2)
        y = self.mix(torch.cat([self.a(x), self.b(x)], 1)) + x
        return self.fc(torch.flatten(F.adaptive_avg_pool1d(y, 1), 1))


def test_branches_cat_and_residual_add_stay_on_the_unit_height(tmp_path):
    torch.manual_seed(0)
    model = _Branches().train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(16, 2, 20))
    model.eval()
    report = export_model(model, tmp_path / "b.rbnn", input_size=(2, 20))
    assert report["verify"]["ok"], report["verify"]
    ops = [n["op"] for n in fmt.read(tmp_path / "b.rbnn")[0]["nodes"]]
    assert ops.count("unsqueeze") == 1 and ops.count("squeeze") == 1, ops  # once in, once out before the flatten
    x = torch.randn(6, 2, 20)
    ref = graph_reference(tmp_path / "b.rbnn", x)
    for backend in BACKENDS:
        trace: list[torch.Tensor] = []
        _assert_explained(compare(ref, PackedModel.load(tmp_path / "b.rbnn", backend=backend).forward(
            x, trace=trace), trace), backend)
    _assert_explained(compare(ref, *trace_model(model, x)), "model")
