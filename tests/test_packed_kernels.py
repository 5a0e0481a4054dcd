"""The packed engine's C kernel variants (``reste.export.kernels``) and their runtime dispatch.

Every variant this CPU runs (scalar, AVX2, AVX-512 VPOPCNTDQ, NEON) is run on the same inputs:
the integer dot products must equal an exact integer convolution and be identical across
variants; the float epilogue is the same float32 operations in every variant (compiled without
contraction), so its outputs are identical too. Fused layers (sign bits written straight into
the next layer's packed input) must give exactly the bits of the unfused path, and whole models
are checked against the float64 reference (no mismatch).
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import reste
from reste.errors import UsageError
from reste.export import PackedModel, export_model
from reste.export import kernels as K
from reste.export import runtime as R
from reste.export.reference import compare, graph_reference
from build_checks import require_built
from export_checks import break_untraced_runs

require_built(K.c_kernel_error(), "the packed C kernels")

ISAS = K.available_isas() if K.c_kernel_error() is None else []


def _signs(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return np.where(rng.random(shape) < 0.5, -1, 1).astype(np.int8)


def _exact_conv(x: torch.Tensor, signs: np.ndarray, case: dict) -> np.ndarray:
    """sign(x) conv sign(w), zero padding, in float64: exact integers for these sizes (NHWC, int32)."""
    pt, pb, pl, pr = case["pad"]
    xs = F.pad(torch.where(x < 0, -1.0, 1.0).double(), (pl, pr, pt, pb))
    y = F.conv2d(xs, torch.from_numpy(signs).double(), None, case["stride"], 0, case["dil"])
    return y.permute(0, 2, 3, 1).round().to(torch.int32).numpy()


def _layer(signs: np.ndarray, case: dict, kernels, post=None, alpha=None, bias=None, relu=True) -> R._BinaryConv:
    o = signs.shape[0]
    node = {"stride": list(case["stride"]), "pad": list(case["pad"]), "dil": list(case["dil"])}
    alpha = np.ones(o, np.float32) if alpha is None else alpha
    bias = np.zeros(o, np.float32) if bias is None else bias
    return R._BinaryConv(node, signs, alpha, bias, post, kernels, relu)


def _dots(layer: R._BinaryConv, x: torch.Tensor) -> np.ndarray:
    """The kernel's int32 dot products (N, OH, OW, O) for the float input x."""
    xp, h, w = layer._packed_input(x)
    oh, ow = layer.out_hw(h, w)
    src, rows = layer._rows(xp, (oh, ow))
    out = layer.kernels.bconv(src, rows, layer.blocked, layer.out_channels, layer.k, layer._correction(h, w), None)
    return out.reshape(x.shape[0], oh, ow, layer.out_channels)


CASES = [  # channels below and above the implicit-GEMM threshold, odd sizes, every addressing path
    dict(cin=16, cout=16, k=3, stride=(1, 1), pad=(1, 1, 1, 1), dil=(1, 1)),
    dict(cin=13, cout=5, k=3, stride=(2, 2), pad=(1, 1, 1, 1), dil=(1, 1)),
    dict(cin=64, cout=24, k=3, stride=(1, 1), pad=(1, 1, 1, 1), dil=(1, 1)),
    dict(cin=70, cout=33, k=3, stride=(2, 1), pad=(2, 0, 1, 2), dil=(1, 1)),
    dict(cin=128, cout=17, k=3, stride=(1, 1), pad=(2, 2, 2, 2), dil=(2, 2)),  # dilated: a segment per tap
    dict(cin=200, cout=40, k=1, stride=(2, 2), pad=(0, 0, 0, 0), dil=(1, 1)),
    dict(cin=9, cout=4, k=5, stride=(3, 3), pad=(3, 3, 3, 3), dil=(1, 1)),
    # narrow pixels read in place: a kernel row of 9 bytes (1 of them in its second word), of exactly
    # 3 words (no tail), of 1 byte (7 read past it); dilated along the width: im2col
    dict(cin=24, cout=20, k=3, stride=(1, 1), pad=(1, 1, 1, 1), dil=(1, 1)),
    dict(cin=60, cout=16, k=3, stride=(1, 2), pad=(0, 1, 1, 0), dil=(1, 1)),
    dict(cin=8, cout=16, k=1, stride=(1, 1), pad=(0, 0, 0, 0), dil=(1, 1)),
    dict(cin=20, cout=12, k=3, stride=(1, 1), pad=(2, 2, 2, 2), dil=(2, 2)),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"c{c['cin']}-o{c['cout']}-k{c['k']}-s{c['stride'][0]}"
                         f"-d{c['dil'][0]}")
def test_every_variant_computes_the_exact_integer_dot_products(case):
    rng = np.random.default_rng(case["cin"])
    signs = _signs(rng, (case["cout"], case["cin"], case["k"], case["k"]))
    x = torch.randn(3, case["cin"], 11, 9)
    x[0, :, 1:3] = 0.0  # sign(0) = +1
    x[1, 0, 0, 0] = -0.0  # -0 is not negative: +1, as in the float engine
    want = _exact_conv(x, signs, case)
    got = {}
    for isa in ISAS:
        for threads in (1, 2):
            layer = _layer(signs, case, K.get_kernels("c", threads, isa))
            got[isa, threads] = _dots(layer, x)
            np.testing.assert_array_equal(got[isa, threads], want, err_msg=f"{isa}, {threads} thread(s)")
    assert len(got) == 2 * len(ISAS) >= 2


def test_long_rows_of_all_different_bits_do_not_overflow_the_byte_counters():
    """The nibble-table kernels (AVX2, AVX-512 BW) count in bytes and fold them into 64-bit lanes at least
    every 31 words of a row (8 per byte and word: 248 < 256). Rows of 72 words (512 channels, 3x3)
    whose activation and weight bits all differ count 8 per byte in every word, so a missed fold
    overflows; all bits equal count 0. Random rows of 36 words (256 channels) fold once, mid-segment."""
    case = dict(stride=(1, 1), pad=(1, 1, 1, 1), dil=(1, 1))
    rng = np.random.default_rng(72)
    tests = [(torch.full((2, 512, 5, 4), -1.0), np.ones((16, 512, 3, 3), np.int8)),  # every bit differs
             (torch.full((2, 512, 5, 4), 1.0), np.ones((16, 512, 3, 3), np.int8)),  # no bit differs
             (torch.randn(2, 256, 6, 5), _signs(rng, (33, 256, 3, 3)))]
    for x, signs in tests:
        want = _exact_conv(x, signs, case)
        assert np.abs(want).max() == 9 * x.shape[1] or signs.shape[0] == 33  # the interior: all 4608 agree
        for isa in ISAS:
            got = _dots(_layer(signs, case, K.get_kernels("c", 1, isa)), x)
            np.testing.assert_array_equal(got, want, err_msg=f"{isa}, {x.shape[1]} channels")


POOLS = ["posix"] + (["openmp"] if K.c_kernel_error() is None and K.choose_pool() == "openmp" else [])


@pytest.mark.parametrize("pool", POOLS)
def test_rows_split_over_two_threads_give_the_same_results(pool):
    """Large enough that the rows are split over threads (``split_parts``: at least 200,000 units of
    work per piece); 3 threads make pieces that are not whole blocks of rows at the end. Both thread
    pools (POSIX threads, torch's OpenMP workers) give the same results."""
    rng = np.random.default_rng(6)
    case = dict(stride=(1, 1), pad=(1, 1, 1, 1), dil=(1, 1))
    first_signs, second_signs = _signs(rng, (40, 64, 3, 3)), _signs(rng, (8, 40, 3, 3))
    post = (rng.normal(size=40).astype(np.float32), rng.normal(size=40).astype(np.float32))
    x = torch.randn(5, 64, 23, 21)
    assert 5 * 23 * 21 * 40 * 9 >= 2 * 200_000
    want = _exact_conv(x, first_signs, dict(case, pad=(1, 1, 1, 1)))
    for isa in ISAS:
        out = {}
        for threads in (1, 2, 3):
            kern = K.get_kernels("c", threads, isa, pool)
            assert kern.pool == pool
            first = _layer(first_signs, case, kern, post)
            second = _layer(second_signs, case, kern)
            assert first.fuse_next(second)
            np.testing.assert_array_equal(_dots(first, x), want, err_msg=f"{isa}, {threads} threads")
            out[threads] = (first(x), first.to_bits(x).data)
        for threads in (2, 3):
            assert torch.equal(out[1][0], out[threads][0]) and np.array_equal(out[1][1], out[threads][1]), isa


@pytest.mark.parametrize("shape", [(1, 3, 1, 1999), (3, 3, 29, 31)], ids=["1d", "2d"])
def test_narrow_rows_with_a_tail_split_over_threads_give_the_exact_dot_products(shape):
    """Narrow pixels read in place with bits past each kernel row (13 channels: 2 bytes a pixel, a kernel
    row of 6 bytes in one word), a 1-D layer (a height of 1, kernel 1x3) and a 2-D one, large enough to be
    split over threads (pieces that start mid-image and a last block of fewer rows): every variant gives
    the exact integers (the AVX-512 one masks the tail bits in its XOR, the others subtract them), and
    the float output and the fused sign bits do not depend on the thread count."""
    rng = np.random.default_rng(13)
    kh, kw, h, w = shape
    case = dict(stride=(1, 1), pad=(kh // 2, kh // 2, 1, 1), dil=(1, 1))
    first_signs, second_signs = _signs(rng, (16, 13, kh, kw)), _signs(rng, (8, 16, kh, kw))
    post = (rng.normal(size=16).astype(np.float32), rng.normal(size=16).astype(np.float32))
    x = torch.randn(15, 13, h, w)
    assert 15 * h * w * 16 * kh >= 2 * 200_000 and (15 * h * w) % 8 != 0
    want = _exact_conv(x, first_signs, case)
    for isa in ISAS:
        out = {}
        for threads in (1, 3):
            kern = K.get_kernels("c", threads, isa)
            first, second = _layer(first_signs, case, kern, post), _layer(second_signs, case, kern)
            assert first.narrow and _rows_of(first, x).tail != 0 and first.fuse_next(second)
            assert (kern._parts(15 * h * w, 15 * h * w * 16 * kh, kern.rows_per_block) > 1) == (threads > 1)
            np.testing.assert_array_equal(_dots(first, x), want, err_msg=f"{isa}, {threads} threads")
            out[threads] = (first(x), first.to_bits(x).data)
        assert torch.equal(out[1][0], out[3][0]) and np.array_equal(out[1][1], out[3][1]), isa


@pytest.mark.parametrize("cout", [13, 20, 64, 72])
def test_a_layer_with_its_residual_writes_the_sign_bits_its_reader_would_pack(cout):
    """``with_signs`` (kernel mode 3): the float output plus residual, and in the same pass its sign bits in
    the reader's packed layout (narrow pixels below 64 channels, whole words from 64 on, the reader's
    padding): exactly the float path's output and the bits the reader packs from it, in every variant, with
    NaN, -0 and exact zeros in the output (a residual cancelling it) and at 1 and 3 threads."""
    rng = np.random.default_rng(cout)
    case = dict(stride=(1, 1), pad=(1, 1, 1, 1), dil=(1, 1))
    signs, reader_signs = _signs(rng, (cout, 24, 3, 3)), _signs(rng, (8, cout, 3, 3))
    alpha = np.full(cout, 0.5, np.float32)
    x = torch.randn(7, 24, 37, 29)
    residual = torch.randn(7, cout, 37, 29).contiguous(memory_format=torch.channels_last)
    for isa in ISAS:
        for threads in (1, 3):
            kern = K.get_kernels("c", threads, isa)
            layer = _layer(signs, case, kern, alpha=alpha)
            reader = _layer(reader_signs, dict(case, pad=(2, 0, 1, 1)), kern)
            base = layer(x)
            res = residual.clone()
            res[0, :, :3] = -base[0, :, :3]  # exact zeros (+1)
            res[1, 0, :2] = float("nan")
            res[2, 1, :2] = -0.0 - base[2, 1, :2]  # (-0 where base is +0: +1)
            want = layer(x, res)
            got, bits = layer.with_signs(reader, x, res)
            assert torch.equal(got.isnan(), want.isnan()) and torch.equal(got.nan_to_num(), want.nan_to_num()), isa
            packed, h, w = reader._packed_input(want)
            assert bits.hw == (h, w) and np.array_equal(bits.data, packed), f"{isa}, {threads} threads"


def test_the_kernels_follow_torchs_thread_count_at_each_call(tmp_path):
    """Without ``threads=`` the kernels split over torch's thread count as it is when they run, not as it
    was when the model was loaded (a later ``torch.set_num_threads`` counts); a count given stays."""
    model = nn.Sequential(nn.BatchNorm2d(64), reste.BinaryConv2d(64, 64, 3, padding=1, bias=False)).eval()
    export_model(model, tmp_path / "m.rbnn", input_size=(64, 8, 8), verify=False)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        follows, fixed = (PackedModel.load(tmp_path / "m.rbnn", backend="c", threads=k) for k in (None, 3))
        x = torch.randn(64, 64, 8, 8)
        one = follows(x)
        torch.set_num_threads(2)
        assert follows.kernels.threads == 2 and follows.kernels._parts(10**6, 10**9) == 2
        assert fixed.kernels.threads == 3
        assert torch.equal(follows(x), one)  # split over 2 threads now, the same results
        torch.set_num_threads(1)
        assert follows.kernels.threads == 1 and follows.kernels._parts(10**6, 10**9) == 1
    finally:
        torch.set_num_threads(before)


def test_torch_uses_openmp_reads_the_backend_line_and_falls_back_to_the_build(monkeypatch):
    monkeypatch.setattr(torch.__config__, "parallel_info", lambda: "ATen parallel backend: OpenMP\n")
    assert K.torch_uses_openmp()
    monkeypatch.setattr(torch.__config__, "parallel_info", lambda: "ATen parallel backend: native thread pool\n")
    assert not K.torch_uses_openmp()
    monkeypatch.setattr(torch.__config__, "parallel_info", lambda: "a build that does not say\n")
    monkeypatch.setattr(torch.backends.openmp, "is_available", lambda: False)
    assert not K.torch_uses_openmp()


def test_the_thread_pool_is_chosen_and_checked(monkeypatch):
    """PyTorch's OpenMP workers where its parallel backend is OpenMP (the CPU wheels on Linux);
    ``$RESTE_PACKED_POOL`` forces a pool, a bad value is a one-line error."""
    if "parallel backend: OpenMP" in torch.__config__.parallel_info() and Path("/proc/self/maps").exists():
        assert K.choose_pool() == "openmp"
    assert K.choose_pool("posix") == "posix"
    monkeypatch.setenv(K.POOL_ENV, "posix")
    assert K.get_kernels("c", 2).pool == "posix"
    monkeypatch.setenv(K.POOL_ENV, "fibers")
    with pytest.raises(UsageError, match="unknown thread pool 'fibers'.*valid: auto, openmp, posix"):
        K.get_kernels("c", 2)


def test_an_openmp_team_smaller_than_the_pieces_runs_them_all():
    """With ``OMP_THREAD_LIMIT=2`` the runtime gives a team of 2 for 5 pieces: each member runs
    every second piece, and the model's logits equal those of one thread."""
    if "openmp" not in POOLS:
        pytest.skip("no OpenMP runtime of PyTorch here")
    code = textwrap.dedent("""
        import torch
        from reste.export import PackedModel, export_model
        from reste.models import create
        torch.manual_seed(0)
        model = create("resnet20_1w1a", 10).eval()
        export_model(model, "m.rbnn", input_size=(3, 32, 32), verify=False)
        x = torch.randn(8, 3, 32, 32)
        one, five = (PackedModel.load("m.rbnn", threads=k, backend="c") for k in (1, 5))
        assert five.kernels.pool == "openmp" and five.kernels.threads == 5
        assert torch.equal(one(x), five(x))
        print("same")
    """)
    env = dict(os.environ, OMP_THREAD_LIMIT="2")
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run([sys.executable, "-c", code], cwd=tmp, env=env, capture_output=True, text=True,
                              timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "same", done.stderr[-2000:]


def test_the_affine_op_in_c_equals_the_torch_ops():
    """The engine's per-channel affine (kept batch norms) runs in the C kernels on channels-last data:
    bit for bit ``x * scale + shift`` as torch computes it, for 4-d and 2-d inputs."""
    engine = R.PackedModel.__new__(R.PackedModel)
    engine.kernels = K.get_kernels("c", 2)
    gen = torch.Generator().manual_seed(4)
    scale, shift = torch.randn(24, generator=gen), torch.randn(24, generator=gen)
    run = engine._affine(scale, shift)
    x4 = torch.randn(7, 24, 9, 11, generator=gen).contiguous(memory_format=torch.channels_last)
    x4[0, 0, 0, :3] = torch.tensor([float("nan"), float("inf"), -0.0])
    x2 = torch.randn(300, 24, generator=gen)
    for x in (x4, x2, x4.contiguous()):
        shape = (1, -1) + (1,) * (x.dim() - 2)
        want = x * scale.view(shape) + shift.view(shape)
        got = run(x)
        assert torch.equal(got.nan_to_num(), want.nan_to_num()) and torch.equal(got.isnan(), want.isnan())


@pytest.mark.parametrize("case", [CASES[0], CASES[3], CASES[7]], ids=lambda c: f"c{c['cin']}")
def test_the_three_layouts_agree(monkeypatch, case):
    """Whole-word pixels read in place, narrow pixels read in place (bits past each kernel row
    subtracted) and im2col rows: the same exact integers for one layer."""
    rng = np.random.default_rng(1)
    signs = _signs(rng, (case["cout"], case["cin"], 3, 3))
    x = torch.randn(2, case["cin"], 10, 12)
    results = {}
    for threshold, narrow in ((1, False), (10_000, True), (10_000, False)):
        monkeypatch.setattr(R, "IMPLICIT_MIN_CHANNELS", threshold)
        monkeypatch.setattr(R, "NARROW_IN_PLACE", narrow)
        layer = _layer(signs, case, K.get_kernels("c", 1, ISAS[0]))
        layout = "words" if layer.implicit else "narrow" if layer.narrow else "im2col"
        assert layout == ("words" if threshold == 1 else "narrow" if narrow else "im2col")
        results[layout] = _dots(layer, x)
        if layout == "narrow":
            assert _rows_of(layer, x).tail != 0 or case["cin"] % 8 == 0
    want = _exact_conv(x, signs, case)
    for layout, got in results.items():
        np.testing.assert_array_equal(got, want, err_msg=layout)


def _rows_of(layer: R._BinaryConv, x: torch.Tensor) -> K.Rows:
    xp, h, w = layer._packed_input(x)
    return layer._rows(xp, layer.out_hw(h, w))[1]


@pytest.mark.parametrize("relu", [True, False], ids=["relu-bn", "bn"])
def test_float_epilogue_is_identical_across_variants(relu):
    """The same float32 operations in the same order in every variant and in NumPy: equal bits, NaN where NaN.
    Without the ReLU (conv -> BN), also exactly what the unfused path computes: the conv's output, then
    ``* scale + shift`` as a second float32 pass (negative and zero scales, -inf times them)."""
    case = CASES[2]
    rng = np.random.default_rng(2)
    o = case["cout"]
    signs = _signs(rng, (o, case["cin"], 3, 3))
    alpha = rng.uniform(0.01, 2, o).astype(np.float32)
    bias = rng.normal(size=o).astype(np.float32)
    post = (rng.normal(size=o).astype(np.float32), rng.normal(size=o).astype(np.float32))
    bias[:3] = [np.nan, -np.inf, -np.inf]  # a diverged parameter: ReLU keeps NaN as torch.relu does
    post[0][1:5] = [0.0, -2.0, 0.0, -0.0]  # -inf * 0: NaN; -inf * -2: +inf
    x = torch.randn(2, case["cin"], 7, 8)
    outs = [_layer(signs, case, K.get_kernels("c", 1, isa), post, alpha, bias, relu)(x) for isa in ISAS]
    numpy_out = _layer(signs, case, K.NumpyKernels(), post, alpha, bias, relu)(x)
    assert torch.isnan(numpy_out[:, 0]).all()
    for isa, out in zip(ISAS, outs):
        np.testing.assert_array_equal(out.numpy(), outs[0].numpy(), err_msg=isa)
        np.testing.assert_array_equal(out.numpy(), numpy_out.numpy(), err_msg=isa)
    if not relu:
        plain = _layer(signs, case, K.get_kernels("c", 1, ISAS[0]), None, alpha, bias)(x)
        scale, shift = (torch.from_numpy(p).view(1, -1, 1, 1) for p in post)
        unfused = (plain * scale + shift).numpy()
        assert np.isnan(unfused[:, 1]).all() and np.isposinf(unfused[:, 2]).all()
        np.testing.assert_array_equal(outs[0].numpy(), unfused)


def test_pack_signs_identical_across_variants():
    x = np.random.default_rng(3).normal(size=(2, 3, 5, 77)).astype(np.float32)
    x[0, 0, 0, :8] = [-0.0, 0.0, np.nan, -np.nan, np.inf, -np.inf, -1e-45, 1e-45]
    want = np.packbits(x < 0, axis=-1, bitorder="little")
    want = np.pad(want, ((0, 0), (1, 2), (0, 1), (0, 16 - want.shape[-1])))
    for isa in ISAS:
        got = K.get_kernels("c", 1, isa).pack_signs(x, (1, 2, 0, 1), 16)
        np.testing.assert_array_equal(got, want, err_msg=isa)


# ------------------------------------------------------------------ sign thresholds


def _negative(t: np.ndarray, ep: K.Epilogue) -> np.ndarray:
    with np.errstate(over="ignore", invalid="ignore"):  # (inf and NaN where a test makes them)
        y = ep.alpha * t.astype(np.float32) + ep.bias
        if ep.post is not None:
            y = (np.where(y > 0, y, np.float32(0)) if ep.relu else y) * ep.post[0] + ep.post[1]
    return y < 0


@pytest.mark.parametrize("post_kind", ["none", "relu-bn", "bn"])
def test_sign_thresholds_reproduce_the_float32_epilogue_on_every_integer(post_kind):
    """Every channel's bits on every integer t, with zero and tiny alphas, large biases, and for the affine
    (after a ReLU or straight on the conv: then negative where alpha * scale is negative at the high end)
    negative, zero and -0 scales with negative, zero and positive shifts, and exact ties at integers."""
    rng = np.random.default_rng(4)
    o, k = 64, 300
    alpha = rng.normal(size=o).astype(np.float32)
    alpha[:4] = [0.0, -0.0, 1e-30, -3e-3]
    bias = (rng.normal(size=o) * 50).astype(np.float32)
    bias[4:8] = [0.0, np.float32(0.1) * 7, -1e9, 1e9]
    post = None
    if post_kind != "none":
        scale = rng.normal(size=o).astype(np.float32)
        scale[8:10] = 0.0
        shift = rng.normal(size=o).astype(np.float32)
        shift[10:12] = 0.0
        scale[16:22] = [0.0, 0.0, -0.0, -0.0, 0.0, -1.0]
        shift[16:22] = [-1.0, 0.0, -1.0, 0.0, 1.0, 0.0]
        # ties in the affine: (alpha t + bias) * scale + shift exactly 0 at t = 4, scale of either sign
        alpha[22:24], bias[22:24], scale[22:24], shift[22:24] = 1.0, 0.0, [0.5, -0.5], [-2.0, 2.0]
        alpha[24:26], bias[24:26], scale[24:26], shift[24:26] = -1.0, 0.0, [0.5, -0.5], [2.0, -2.0]
        post = (scale, shift)
    ep = K.Epilogue(alpha, bias, post, relu=post_kind == "relu-bn")
    # ties: t * alpha + bias exactly 0 at an integer t
    alpha[12], bias[12] = np.float32(0.25), np.float32(-3.0)
    got = K.sign_thresholds(k, ep)
    assert got is not None
    lo, hi = got
    t = np.arange(-k, k + 1)[:, None]
    np.testing.assert_array_equal((t >= lo) & (t <= hi), _negative(np.broadcast_to(t, (t.shape[0], o)), ep))


def test_no_thresholds_for_non_finite_parameters():
    one, zero = np.ones(2, np.float32), np.zeros(2, np.float32)
    assert K.sign_thresholds(8, K.Epilogue(one, zero)) is not None
    assert K.sign_thresholds(8, K.Epilogue(np.array([1, np.inf], np.float32), zero)) is None
    for relu in (True, False):
        assert K.sign_thresholds(8, K.Epilogue(one, zero, (one, np.array([0, np.nan], np.float32)), relu)) is None


def test_no_thresholds_where_the_conv_output_overflows_into_a_bn_without_relu():
    """alpha t overflows to +-inf for |t| >= 4, and a zero scale makes NaN of both: without a ReLU the sign is
    negative only in the middle (not one step). k is large enough that the thresholds are not checked on every
    integer, so only the overflow check keeps the float path. With the ReLU, -inf becomes 0: one step."""
    k, alpha, zero = 2 ** 20, np.array([1e38], np.float32), np.zeros(1, np.float32)
    post = (zero, np.array([-1.0], np.float32))
    assert K.sign_thresholds(k, K.Epilogue(alpha, zero, post, relu=False)) is None
    t = np.arange(-8, 9)
    assert not _negative(t[:, None], K.Epilogue(alpha, zero, post, relu=False))[[0, -1]].any()
    lo, hi = K.sign_thresholds(k, K.Epilogue(alpha, zero, post))
    assert (lo[0], hi[0]) == (-k, 3)
    np.testing.assert_array_equal(_negative(t[:, None], K.Epilogue(alpha, zero, post))[:, 0], t <= 3)


@pytest.mark.parametrize("relu", [True, False], ids=["relu-bn", "bn"])
def test_fused_bits_equal_the_signs_of_the_float_output(relu):
    """Per channel, scales negative, zero (shift negative, zero, positive) and positive."""
    rng = np.random.default_rng(5)
    kern = K.get_kernels("c", 1, ISAS[0])
    for cin, mid in ((16, 13), (64, 70), (70, 128)):
        case = dict(stride=(1, 1), pad=(1, 1, 1, 1), dil=(1, 1))
        post = (rng.normal(size=mid).astype(np.float32), rng.normal(size=mid).astype(np.float32))
        post[0][:3], post[1][1:3] = 0.0, [0.0, 1.0]
        first = _layer(_signs(rng, (mid, cin, 3, 3)), case, kern, post, rng.uniform(0.1, 1, mid).astype(np.float32),
                       rng.normal(size=mid).astype(np.float32), relu)
        second = _layer(_signs(rng, (8, mid, 3, 3)), dict(case, pad=(2, 1, 0, 1)), kern)
        assert first.fuse_next(second)
        x = torch.randn(2, cin, 9, 7)
        bits = first.to_bits(x)
        want, h, w = second._packed_input(first(x))
        assert (h, w) == bits.hw
        np.testing.assert_array_equal(bits.data, want)


# ------------------------------------------------------------------ whole models


class _Residual(nn.Module):
    """x + conv(relu(bn(conv(x)))) ...: a binary block whose output is added to its input."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.body = nn.Sequential(*_block(c, c, 1), *_block(c, c, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + x


class _Downsample(nn.Module):
    """conv(...)(x) + bn(conv1x1(x)): the float shortcut comes after the binary convs in the graph, so
    the fused add step runs in the add's place."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.body = nn.Sequential(*_block(cin, cout, 2), *_block(cout, cout, 1))
        self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, 2, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.shortcut(x)


def _block(cin: int, cout: int, stride: int) -> list[nn.Module]:
    return [reste.BinaryConv2d(cin, cout, 3, stride, 1, bias=False, scaling="channel"), nn.ReLU(),
            nn.BatchNorm2d(cout)]


def _block_model() -> nn.Module:
    """Binary blocks whose first conv feeds only the second (fused sign bits), residual adds (fused
    into the epilogue), a float stem conv -> ReLU -> BN (fused), widths below and above 64."""
    layers = [nn.Conv2d(3, 16, 3, 1, 1), nn.ReLU(), nn.BatchNorm2d(16), *_block(16, 24, 1), *_block(24, 70, 2),
              _Residual(70), *_block(70, 64, 1), *_block(64, 130, 2), _Residual(130), _Downsample(130, 96),
              nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(96, 10)]
    return nn.Sequential(*layers)


@pytest.fixture(scope="module")
def block_file(tmp_path_factory):
    torch.manual_seed(0)
    model = _block_model()
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(16, 3, 12, 12))
    path = tmp_path_factory.mktemp("packed") / "blocks.rbnn"
    export_model(model.eval(), path, input_size=(3, 12, 12), verify=False)
    return path


def test_fused_model_equals_traced_model_and_the_reference_on_every_variant(block_file):
    x = torch.randn(6, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    ref = graph_reference(block_file, x)
    logits = []
    for isa in ISAS:
        packed = PackedModel.load(block_file, backend="c", isa=isa, threads=1)
        assert packed.isa == isa and len(packed._bit_steps) == 5  # not where a residual needs the floats
        fused_adds = [s for s in packed._steps if isinstance(s[2], R._BinaryConv) and len(s[1]) == 2]
        assert len(fused_adds) == 3 and fused_adds[-1][1][1] > fused_adds[-1][1][0] + 3  # one after its shortcut
        trace: list[torch.Tensor] = []
        traced = packed.forward(x, trace=trace)
        fused = packed.forward(x)
        assert torch.equal(traced, fused), isa  # the same bits either way
        c = compare(ref, traced, trace)
        assert c.traced and c.mismatch == 0, (isa, c.problems)
        unfused = PackedModel.load(block_file, backend="c", isa=isa, fuse_signs=False)
        assert not unfused._bit_steps and torch.equal(unfused.forward(x), fused)
        logits.append(fused)
    assert all(torch.equal(v, logits[0]) for v in logits)


def _shuffled_statistics(model: nn.Module, spread: float) -> None:
    """Batch norms of some negative scales and means off zero, so that a binary conv's sign thresholds meet both
    ends of a channel's interval (a trained net's first epochs keep every scale positive)."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-spread, spread)
            m.running_var.uniform_(0.5, 4)
            m.bias.data.uniform_(-1, 1)
            m.weight.data.uniform_(-1, 1)


def test_sign_bits_written_through_negative_scales_on_every_variant(tmp_path):
    """(review mut5 #8) A binary conv that writes the next one's sign bits through integer thresholds did so on
    every variant, but only for channels whose lower threshold no value reached: `t > lo` for `t >= lo` in the
    scalar and NEON bits passed every test. Here some scales are negative; each variant, fused and unfused, gives
    the same logits."""
    torch.manual_seed(0)
    layers = [nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32)]
    for _ in range(3):
        layers += [reste.BinaryConv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32)]
    model = nn.Sequential(*layers, nn.Flatten(), nn.Linear(32 * 8 * 8, 10)).eval()
    _shuffled_statistics(model, 3.0)
    export_model(model, tmp_path / "m.rbnn", input_size=(3, 8, 8), verify=False)
    x = torch.randn(64, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    plain = PackedModel.load(tmp_path / "m.rbnn", backend="c", fuse_signs=False)(x)
    for isa in ISAS:
        fused = PackedModel.load(tmp_path / "m.rbnn", backend="c", isa=isa)
        assert fused._bit_steps, isa
        assert torch.equal(fused(x), plain), isa


class _ResidualReadFirst(nn.Module):
    """y1 = bn1(c1(s)) + s (a binary conv with its add fused), whose first reader, c2, takes it as its residual:
    y2 = bn2(c2(a)) + y1, with c2's own input a computed before y1."""

    def __init__(self):
        super().__init__()
        self.stem, self.bn0 = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.c1, self.bn1 = reste.BinaryConv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.c2, self.bn2 = reste.BinaryConv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.bna = nn.BatchNorm2d(16)
        self.head = nn.Linear(16 * 8 * 8, 10)

    def forward(self, x):
        s = torch.relu(self.bn0(self.stem(x)))
        a = self.bna(s)
        y1 = self.bn1(self.c1(s)) + s
        y2 = self.bn2(self.c2(a)) + y1
        return self.head(y2.flatten(1))


def test_a_residual_read_first_by_a_binary_conv_as_its_shortcut_is_not_its_sign_input(tmp_path):
    """(review mut5 #6) A fused bconv + add writes the sign bits of its value for the first binary conv that reads
    it as its input; one that reads it as its residual must take its own input's bits. Untraced, on the C backend
    (the export check runs traced, where no bits are passed on), against the unfused engine and the reference."""
    torch.manual_seed(0)
    model = _ResidualReadFirst().eval()
    _shuffled_statistics(model, 0.5)
    report = export_model(model, tmp_path / "m.rbnn", input_size=(3, 8, 8))  # the check runs it untraced too
    assert report["verify"]["untraced_same"] and report["verify"]["ok"]
    x = torch.randn(32, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    packed = PackedModel.load(tmp_path / "m.rbnn", backend="c")
    assert [len(inputs) for _, inputs, fn in packed._steps if isinstance(fn, R._BinaryConv)] == [2, 2]
    assert not packed._sign_pairs  # (c2 reads y1 as its residual)
    plain = PackedModel.load(tmp_path / "m.rbnn", backend="c", fuse_signs=False)
    assert torch.equal(packed(x), plain(x))
    c = compare(graph_reference(tmp_path / "m.rbnn", x), *_traced(plain, x))
    assert c.traced and c.mismatch == 0, c.problems


def test_the_export_check_runs_the_file_untraced_too(tmp_path, monkeypatch):
    """(review mut5, suggestion 1) The check compares the file with the model traced, where no layer passes sign bits
    on; an engine whose untraced run differs from its traced one is told, and the check is not ok."""
    torch.manual_seed(0)
    model = _ResidualReadFirst().eval()
    break_untraced_runs(monkeypatch)
    with pytest.warns(UserWarning, match="gives other logits untraced than traced .*a bug of reste's packed engine"):
        report = export_model(model, tmp_path / "m.rbnn", input_size=(3, 8, 8))
    assert not report["verify"]["untraced_same"] and not report["verify"]["ok"]
    assert "packed file untraced: other logits than traced" in reste.export.format_report(report)


def _traced(packed: PackedModel, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    trace: list[torch.Tensor] = []
    return packed.forward(x, trace=trace), trace


def test_calls_from_several_threads_and_batch_sizes_give_each_its_own_results(block_file):
    """A layer's kernel arguments are made once per input geometry (``BconvPlan``) and copied at each call,
    so that two Python threads running one model at once (ctypes lets go of the GIL in the kernel) do not
    write into each other's buffers; the residual blocks write the bits their reader takes (``_sign_pairs``)."""
    import threading

    packed = PackedModel.load(block_file, backend="c", threads=1)
    assert packed._sign_pairs
    inputs = [torch.randn(b, 3, 12, 12, generator=torch.Generator().manual_seed(b)) for b in (1, 5, 5, 9)]
    want = [PackedModel.load(block_file, backend="c", threads=1, fuse_signs=False)(x) for x in inputs]
    plans = None
    for _ in range(2):
        got: dict[int, list[torch.Tensor]] = {i: [] for i in range(len(inputs))}

        def run(i: int) -> None:
            for _ in range(40):
                got[i].append(packed(inputs[i]))

        workers = [threading.Thread(target=run, args=(i,)) for i in range(len(inputs))]
        for t in workers:
            t.start()
        for t in workers:
            t.join()
        for i, x in enumerate(inputs):
            assert len(got[i]) == 40 and all(torch.equal(y, want[i]) for y in got[i]), i
        made = sum(len(fn._plans) for _, _, fn in packed._steps if isinstance(fn, R._BinaryConv))
        assert plans is None or made == plans  # none made again for a geometry seen before
        plans = made


def test_the_engine_looks_each_address_up_once_and_pins_nothing_per_call(block_file):
    """The kernels keep the addresses of the arrays that live as long as a layer (CKernels._pin): after
    the first batch of a size, further batches pin nothing new, and the results stay the same."""
    packed = PackedModel.load(block_file, backend="c", threads=1)
    x = torch.randn(3, 3, 12, 12)
    first = packed(x)
    pinned = len(packed.kernels._pins)
    assert pinned > 0
    for _ in range(3):
        assert torch.equal(packed(x), first)
    assert len(packed.kernels._pins) == pinned
    kern = K.get_kernels("c", 1, ISAS[0])
    a = np.zeros(16, np.int32)
    assert kern._pin(a) == kern._pin(a, 16) == a.ctypes.data
    with pytest.raises(ValueError, match="5 values where the kernel reads 16"):  # not an assert: python -O too
        kern._pin(np.zeros(5, np.int32), 16)
    for _ in range(K._MAX_PINS + 10):  # fresh arrays every call: the pins stay bounded
        kern._pin(np.zeros(16, np.int32))
    assert len(kern._pins) <= K._MAX_PINS


def test_address_is_numpys_for_every_kind_of_array():
    """``kernels.address``, the kernels' cheaper ``a.ctypes.data``: the first byte of a view inside a larger buffer
    (a packed activation, a slice, a NumPy view of a channels-last tensor), and NumPy's answer where the buffer
    cannot be taken writable and whole (read-only, empty, strided)."""
    base = np.zeros(100, np.uint8)
    t = torch.zeros(2, 3, 4, 5).contiguous(memory_format=torch.channels_last)
    arrays = [K.packed_buffer((2, 3, 4, 1)), base[5:], base[7:47].reshape(5, 8), base[3:].view(np.uint8),
              np.zeros((3, 4), np.float32)[1:], t.permute(0, 2, 3, 1).numpy(), t[1:].permute(0, 2, 3, 1).numpy(),
              np.frombuffer(bytes(16), np.uint8)[4:], base[:0], base[1::2], np.zeros((4, 6), np.int32)[:, 1:]]
    for a in arrays:
        assert K.address(a) == a.ctypes.data, (a.shape, a.strides, a.flags.writeable)
    assert K.address(base[5:]) == base.ctypes.data + 5


def test_environment_variable_forces_a_variant(block_file, monkeypatch):
    for isa in ISAS:
        monkeypatch.setenv(K.ISA_ENV, isa)
        assert PackedModel.load(block_file).isa == isa
        assert isa in repr(PackedModel.load(block_file, backend="c"))
    monkeypatch.setenv(K.ISA_ENV, "sse9")
    with pytest.raises(UsageError, match="unknown packed kernel variant 'sse9'"):
        PackedModel.load(block_file, backend="c")
    monkeypatch.delenv(K.ISA_ENV)
    assert PackedModel.load(block_file, backend="c").isa == ISAS[0]


def test_a_variant_the_cpu_lacks_is_refused(monkeypatch):
    monkeypatch.setattr(K, "cpu_features", lambda: 0)  # a CPU without AVX2, AVX-512 or NEON
    monkeypatch.delenv(K.ISA_ENV, raising=False)  # (the suite may run with a variant forced)
    assert K.supported_isas() == ["scalar"]
    assert K.choose_isa() == "scalar"
    for isa in ("avx2", "avx512", "avx512bw", "neon"):
        monkeypatch.setenv(K.ISA_ENV, isa)
        with pytest.raises(UsageError, match=f"cannot run the {isa} packed kernels") as err:
            K.get_kernels("c")
        assert "\n" not in str(err.value)


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="x86 variants")
@pytest.mark.parametrize("features, want", [(1 | 2 | 16, ["avx512bw", "avx2", "scalar"]),  # Skylake-SP
                                            (1 | 2 | 4 | 16, ["avx512", "avx512bw", "avx2", "scalar"]),
                                            (1 | 2, ["avx2", "scalar"])])
def test_dispatch_takes_the_fastest_variant_a_cpu_has(monkeypatch, features, want):
    """The choice from the probe's feature bits alone (whatever this CPU has; the variants only build)."""
    monkeypatch.setattr(K, "cpu_features", lambda: features)
    monkeypatch.delenv(K.ISA_ENV, raising=False)
    assert K.supported_isas() == want
    assert K.choose_isa() == want[0]


def test_dispatch_never_picks_a_variant_the_cpu_lacks(monkeypatch):
    monkeypatch.delenv(K.ISA_ENV, raising=False)
    features = K.cpu_features()
    assert ISAS[-1] == "scalar" and set(ISAS) <= set(K.supported_isas())
    for isa in ISAS:
        lib = K._variant(isa).get()
        assert lib.reste_isa() == K._ISA_ID[isa]
        assert isa == "scalar" or features & K._ISA_FEATURE[isa]
    assert K.choose_isa() == ISAS[0]


_FORK = """
import os, sys, torch
from reste.export import PackedModel
torch.set_num_threads(1)  # the README's fork-safe setting: 1 torch thread and the POSIX pool in the parent
packed = PackedModel.load(sys.argv[1], backend="c", threads=2, pool="posix")
x = torch.randn(8, 3, 12, 12, generator=torch.Generator().manual_seed(3))
want = packed(x)
pid = os.fork()
if pid == 0:
    os._exit(0 if torch.equal(packed(x), want) else 1)
_, status = os.waitpid(pid, 0)
print("child", os.waitstatus_to_exitcode(status))
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no os.fork")
def test_a_model_loaded_before_a_fork_runs_in_the_child_with_the_readmes_setting(block_file):
    """What the README's Deployment section promises a pre-fork server (the default OpenMP pool, or torch on
    2 threads in the parent, hangs the child: libgomp's threads do not survive a fork)."""
    env = {**os.environ, "PYTHONPATH": str(Path(reste.__file__).parent.parent), "RESTE_PACKED_POOL": ""}
    proc = subprocess.run([sys.executable, "-c", _FORK, str(block_file)], capture_output=True, text=True,
                          timeout=300, env=env)
    assert proc.returncode == 0 and "child 0" in proc.stdout, proc.stdout + proc.stderr[-2000:]
    readme = (Path(reste.__file__).parents[2] / "README.md").read_text(encoding="utf-8")
    deployment = readme.split("## Deployment", 1)[1].split("\n## ", 1)[0]
    assert "RESTE_PACKED_POOL=posix" in deployment and "torch.set_num_threads(1)" in deployment
    assert "after the fork" in deployment and "preload_app" in deployment


def test_the_readme_says_the_batch_size_can_change_the_last_bits_of_the_logits():
    readme = (Path(reste.__file__).parents[2] / "README.md").read_text(encoding="utf-8")
    deployment = readme.split("## Deployment", 1)[1].split("\n## ", 1)[0]
    assert "batches requests" in deployment and "near-tie prediction can change" in deployment
