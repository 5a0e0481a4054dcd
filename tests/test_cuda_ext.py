"""The compiled extension (``reste.cuda_ext``): the binary activation and weight as C++ autograd nodes.

CI has no GPU, so the extension is built here without CUDA and :func:`reste.cuda_ext.forced` routes CPU
tensors through its CPU loops: the same C++ autograd nodes, the same ``g`` (``csrc/ext/estimators.h``)
that the CUDA kernels evaluate, held to the same bounds as the Triton kernels (``kernel_checks``).
On a GPU, ``RESTE_TEST_DEVICE=cuda`` runs this file on CUDA tensors through the CUDA kernels
(``benchmarks/gpu_check.sh`` does).
"""

from __future__ import annotations

import copy
import importlib
import io
import os
import re
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

from kernel_checks import (
    DTYPES, ESTIMATORS, ULP32, _bounds, assert_scaled_sign_within, assert_sign_matches, assert_within, inputs,
    layouts, tolerance, torch_backward, torch_scaled_sign, torch_sign, weight,
)
from reste import cuda_ext, estimators, fused
from reste.estimators import get_estimator
from reste.kernel_args import kernel_scalars
from reste.layers import BinaryConv1d, BinaryConv2d, BinaryConv3d, BinaryConvTranspose2d, BinaryLinear

DEVICE = torch.device(os.environ.get("RESTE_TEST_DEVICE", "cpu"))
if DEVICE.type == "cuda" and not torch.cuda.is_available():
    pytest.skip("RESTE_TEST_DEVICE=cuda but no GPU is visible", allow_module_level=True)
if not (shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++")):
    pytest.skip("no C++ compiler to build the extension", allow_module_level=True)

# gpu: under RESTE_TEST_DEVICE=cuda the whole file runs, on CUDA tensors
pytestmark = [pytest.mark.filterwarnings("ignore::RuntimeWarning"), pytest.mark.gpu]


@pytest.fixture(scope="module", autouse=True)
def built():
    """The extension, built once (with CUDA on a GPU machine with nvcc; a build error fails the tests)."""
    kind = cuda_ext.build()
    assert DEVICE.type != "cuda" or kind == "cuda", "the extension was built without CUDA on a GPU machine"
    return kind


@pytest.fixture(autouse=True)
def _routed():
    env = pytest.MonkeyPatch()  # its own: the tests' monkeypatch is undone before this fixture ends
    env.delenv("RESTE_FUSED", raising=False)  # the switch on, whatever the suite runs under (it routes)
    fused.set_enabled(None)
    # float32 convs in full float32 on a GPU: under TF32 (cuDNN's default) a binary weight +-alpha that the two
    # paths compute a few ulps apart can round on either side of a TF32 boundary, 2^-10 apart
    tf32, torch.backends.cudnn.allow_tf32 = torch.backends.cudnn.allow_tf32, False
    try:
        with cuda_ext.forced():
            yield
    finally:
        torch.backends.cudnn.allow_tf32 = tf32
        env.undo()  # then the switch as the environment says, for the tests that follow
        fused.set_enabled(None)


def on(*tensors):
    moved = tuple(t.to(DEVICE) for t in tensors)
    return moved[0] if len(moved) == 1 else moved


def ops_backward(kind, x, grad, params):
    scalars, count, _ = kernel_scalars(kind, params)
    return torch.ops.reste_ext.backward(x, grad, kind, list(scalars), count)


# ---------------------------------------------------------------------------------- the kernels


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
def test_sign_matches_torch_bit_for_bit(dtype, layout):
    x = on(layouts(*inputs(dtype, [1.5, 0.1]), layout)[0])
    assert_sign_matches(cuda_ext.sign(x), x)


def test_sign_of_empty_and_scalar_tensors():
    assert cuda_ext.sign(on(torch.empty(0))).shape == (0,)
    assert cuda_ext.sign(on(torch.tensor(-0.0))).item() == 1.0
    assert cuda_ext.sign(on(torch.tensor(-2.0))).item() == -1.0


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", list(ESTIMATORS))
def test_backward_matches_torch_expression(kind, dtype):
    est = ESTIMATORS[kind]()
    x, grad = on(*inputs(dtype, _bounds(est), seed=1))
    ref = torch_backward(est, x, grad)
    out = ops_backward(kind, x, grad, est.params())
    assert_within(out, ref, tolerance(est, x, grad, ref))
    if kind in ("ste", "reste", "approx_sign", "rbnn"):  # the regions fall on exactly the same elements
        assert torch.equal(out == 0, ref == 0)
    if kind in ("dsq", "fda"):  # 0 outside [-1, 1], at +-inf too (where grad is finite)
        outside = x.float().abs() > 1
        assert out[outside & grad.isfinite()].eq(0).all()


@pytest.mark.parametrize("layout", ["channels_last", "mixed", "strided"])
@pytest.mark.parametrize("kind", ["ste", "reste", "fda"])
def test_backward_in_every_layout(kind, layout):
    est = ESTIMATORS[kind]()
    x, grad = on(*layouts(*inputs(torch.bfloat16, _bounds(est), seed=2), layout))
    ref = torch_backward(est, x.contiguous(), grad.contiguous())
    out = ops_backward(kind, x, grad, est.params())
    if layout != "strided":
        assert out.stride() == x.stride()
    assert_within(out.contiguous(), ref, tolerance(est, x.contiguous(), grad.contiguous(), ref))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [2, 7, 8, 9, 4099])
@pytest.mark.parametrize("offsets", [(0, 0), (1, 0), (0, 1), (3, 5)])
def test_every_element_of_any_length_and_alignment(dtype, n, offsets):
    """On a GPU the elementwise kernels move 16 bytes at a time where x, grad and the result are 16-byte aligned,
    then finish the last elements one at a time; a view that starts k elements into its storage is not aligned
    and goes one at a time throughout. Each length and start gives the expression's values on every element."""
    est = ESTIMATORS["reste"]()
    g = torch.Generator().manual_seed(n)
    x_base, g_base = (torch.randn(n + 8, generator=g).to(dtype) * 2 for _ in range(2))
    x_base[offsets[0]], x_base[offsets[0] + n - 1] = -1.5, 0.5  # both signs, the first and last elements among them
    x_base, g_base = on(x_base, g_base)  # moved whole: a view moved alone would start aligned there
    x, grad = x_base[offsets[0]:offsets[0] + n], g_base[offsets[1]:offsets[1] + n]
    assert (x.data_ptr() % 16 == 0) == (offsets[0] == 0)
    assert_sign_matches(cuda_ext.sign(x), x)
    ref = torch_backward(est, x, grad)
    out = ops_backward("reste", x, grad, est.params())
    assert out.shape == (n,)
    assert_within(out, ref, tolerance(est, x, grad, ref))
    assert torch.equal(out == 0, ref == 0)


def test_schedule_values_move_the_result():
    """Scalars are arguments: each o and each n gives its own values, and o = 1 the clipped step."""
    x, grad = on(*inputs(torch.float32, [1.5, 0.1], seed=4))
    for o in (1.0, 1.3, 2.0, 2.9):
        est = get_estimator("reste", o=o, o_end=o, schedule="constant")
        ref = torch_backward(est, x, grad)
        assert_within(ops_backward("reste", x, grad, est.params()), ref, 4 * ULP32 * ref.abs())
    for n in (0, 9, 18):
        est = get_estimator("fda", n=n, n_end=n)
        ref = torch_backward(est, x, grad)
        assert_within(ops_backward("fda", x, grad, est.params()), ref, tolerance(est, x, grad, ref))


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "input_major"])
@pytest.mark.parametrize("scaling", ["layer", "channel"])
@pytest.mark.parametrize("kind", ["ste", "reste", "ede", "fda"])
def test_scaled_sign_matches_the_layers_expression(kind, scaling, layout):
    est = ESTIMATORS[kind]()
    w = on(weight((6, 4, 3, 3), layout))
    groups = 1 if scaling == "layer" else w.shape[0]
    upstream = on(torch.randn(w.shape, generator=torch.Generator().manual_seed(5)))
    ref = torch_scaled_sign(est, w, groups, upstream)
    leaf = w.detach().clone().requires_grad_(True)
    y = est.scaled_sign(leaf, groups)
    assert y is not None and y.grad_fn.name() == "reste_ext::ScaledSignBackward"  # the C++ node
    y.backward(upstream)
    assert_scaled_sign_within(est, w, groups, upstream, (y.detach(), leaf.grad), ref)
    if layout != "input_major":  # copied to the contiguous layout, whose groups are consecutive
        assert y.stride() == w.stride() and leaf.grad.stride() == w.stride()


@pytest.mark.skipif(DEVICE.type != "cuda", reason="the two-launch path of large weight groups is CUDA's")
@pytest.mark.parametrize("scaling", ["layer", "channel"])
def test_scaled_sign_of_large_groups(scaling):
    """Groups above 65,536 elements take two launches (partial sums, then the result) on a GPU."""
    est = ESTIMATORS["reste"]()
    # channel: 98,304 a group, 24 partial sums of 4,096; layer: 2.36M (ResNet-18's 512-channel convs), 576
    # partial sums, more than the 256 threads that add them up
    w = on(weight((8, 96, 32, 32) if scaling == "channel" else (512, 512, 3, 3), "contiguous"))
    groups = 1 if scaling == "layer" else w.shape[0]
    assert w.numel() // groups > 65536 and (scaling == "channel" or w.numel() // groups > 256 * 4096)
    upstream = on(torch.randn(w.shape, generator=torch.Generator().manual_seed(6)))
    ref = torch_scaled_sign(est, w, groups, upstream)
    leaf = w.detach().clone().requires_grad_(True)
    y = est.scaled_sign(leaf, groups)
    y.backward(upstream)
    assert_scaled_sign_within(est, w, groups, upstream, (y.detach(), leaf.grad), ref)


@pytest.mark.skipif(DEVICE.type != "cuda", reason="host-device synchronisation exists only on a GPU")
def test_a_binary_conv_step_never_waits_for_the_gpu():
    conv = BinaryConv2d(32, 32, 3, padding=1, weight_estimator=ESTIMATORS["reste"]()).to(DEVICE)
    x = on(torch.randn(8, 32, 16, 16)).requires_grad_(True)
    conv(x).square().sum().backward()  # first use: allocations, the extension already built
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        conv(x).square().sum().backward()
    finally:
        torch.cuda.set_sync_debug_mode(0)


# ------------------------------------------------------------------------------- the C++ nodes


@pytest.mark.parametrize("kind", list(ESTIMATORS))
def test_the_activation_is_one_cpp_node_with_the_estimators_gradient(kind):
    est = ESTIMATORS[kind]()
    x, grad = on(*inputs(torch.float32, _bounds(est), seed=7))
    x.requires_grad_(True)
    y = est(x)
    assert y.grad_fn.name() == "reste_ext::BinarySignBackward"  # the C++ node
    y.backward(grad)
    ref = torch_backward(est, x.detach(), grad)
    assert torch.equal(y.detach().isnan(), torch_sign(x.detach()).isnan())
    assert_within(x.grad, ref, tolerance(est, x.detach(), grad, ref))


@pytest.mark.parametrize("amp", [False, True])
@pytest.mark.parametrize("scaling", ["layer", "channel"])
@pytest.mark.parametrize("kind", ["ste", "reste"])
def test_binary_conv_training_step_equals_the_pytorch_path(kind, scaling, amp):
    """Forward, input gradient and weight gradient of a binary conv (channels_last) through the two C++
    nodes against the PyTorch-op path; under bf16 autocast the weight comes out in bf16 directly."""
    torch.manual_seed(8)
    conv = BinaryConv2d(6, 8, 3, padding=1, bias=False, weight_estimator=ESTIMATORS[kind](), scaling=scaling)
    conv = conv.to(DEVICE, memory_format=torch.channels_last)
    x = on(torch.randn(4, 6, 9, 9)).contiguous(memory_format=torch.channels_last)
    upstream = on(torch.randn(4, 8, 9, 9))

    def step():
        conv.zero_grad()
        xi = x.clone().requires_grad_(True)
        with torch.autocast(DEVICE.type, dtype=torch.bfloat16, enabled=amp):
            y = conv(xi)
        y.float().backward(upstream)
        return y.detach().float(), xi.grad.clone(), conv.weight.grad.clone()

    y, dx, dw = step()
    with cuda_ext.forced():
        fused.set_enabled(False)
        ref_y, ref_dx, ref_dw = step()
        fused.set_enabled(None)
    # The signs are exact and alpha (a sum of N = 432 or 54 terms in another order) within N ulp32
    # relatively; the conv, its input gradient and its weight gradient (sums of at most 324 products, the
    # same in both paths but for alpha) add at most their own rounding: 1e-4 (840 ulp32) covers
    # N + 324 ulp32 of the largest result. In bf16 each result is also rounded to 8 bits, where values
    # that close may round to neighbours: two bf16 ulps.
    rtol = 2 * 2.0**-7 if amp else 1e-4
    torch.testing.assert_close(y, ref_y, rtol=rtol, atol=rtol * ref_y.abs().max().item())
    torch.testing.assert_close(dx, ref_dx, rtol=rtol, atol=rtol * ref_dx.abs().max().item())
    torch.testing.assert_close(dw, ref_dw, rtol=rtol, atol=rtol * ref_dw.abs().max().item())


@pytest.mark.parametrize("scaling", ["layer", "channel"])
@pytest.mark.parametrize("kind", ["ste", "reste"])
def test_binary_conv1d_weight_takes_the_fused_node_and_equals_the_pytorch_path(kind, scaling):
    """A 1-D conv's (out, in, k) weight through the scaled-sign node: groups of one output channel's in * k
    weights (channel) or all of them (layer), as the PyTorch expression reduces them."""
    torch.manual_seed(8)
    conv = BinaryConv1d(6, 8, 5, padding=2, bias=False, weight_estimator=ESTIMATORS[kind](), scaling=scaling)
    conv = conv.to(DEVICE)
    x = on(torch.randn(4, 6, 17))
    upstream = on(torch.randn(4, 8, 17))
    assert conv.binary_weight().grad_fn.name() == "reste_ext::ScaledSignBackward"

    def step():
        conv.zero_grad()
        xi = x.clone().requires_grad_(True)
        conv(xi).backward(upstream)
        return conv(x).detach(), xi.grad.clone(), conv.weight.grad.clone()

    results = step()
    with cuda_ext.forced():
        fused.set_enabled(False)
        assert conv.binary_weight().grad_fn.name() != "reste_ext::ScaledSignBackward"
        reference = step()
        fused.set_enabled(None)
    # as the 2-D test above: alpha a sum of N = 240 or 30 terms in another order, the results sums of at most
    # 68 products (the conv's 6 * 5, the input gradient's 8 * 5, the weight gradient's 4 * 17): 1e-4 (840 ulp32)
    # covers N + 68 ulp32 of the largest result
    for got, ref in zip(results, reference):
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())


@pytest.mark.parametrize("layer, fused_weight", [
    (lambda: BinaryConv3d(3, 4, 3, padding=1, bias=False, scaling="channel"), True),
    (lambda: BinaryConvTranspose2d(3, 4, 3, padding=1, bias=False, scaling="layer"), True),
    # a transposed weight is (in, out, *k): an output channel's weights are no block of memory (review mut3,
    # suggestion 1: only the Triton kernels' test saw a scale taken over consecutive memory here)
    (lambda: BinaryConvTranspose2d(3, 4, 3, padding=1, bias=False, scaling="channel"), False),
], ids=["conv3d-channel", "convT2d-layer", "convT2d-channel"])
def test_the_other_convs_through_the_extension_equal_the_pytorch_path(layer, fused_weight):
    """A 3-D or a transposed conv's forward and gradients through the extension's nodes against the PyTorch-op
    path (within float32 rounding: alpha's sum runs in another order)."""
    torch.manual_seed(0)
    conv = layer().to(DEVICE)
    x = on(torch.randn(2, 3, *[5] * (conv.weight.dim() - 2)))
    assert (conv.binary_weight().grad_fn.name() == "reste_ext::ScaledSignBackward") == fused_weight

    def step():
        conv.zero_grad()
        xi = x.clone().requires_grad_(True)
        y = conv(xi)
        y.square().sum().backward()
        return y.detach(), xi.grad.clone(), conv.weight.grad.clone()

    results = step()
    fused.set_enabled(False)
    try:
        reference = step()
    finally:
        fused.set_enabled(None)
    # alpha a sum of at most 108 terms in another order (N ulp32 relatively), each result a sum of at most
    # 4 * 27 = 108 products that both paths compute alike but for alpha, squared once: 1e-4 (840 ulp32) covers it
    for got, ref in zip(results, reference):
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())


def test_double_backward_runs_the_differentiable_expression():
    """create_graph=True: both nodes hand over to the PyTorch expression, so a second derivative exists
    and equals the PyTorch path's."""
    est = ESTIMATORS["reste"]()
    x = on(torch.linspace(-2, 2, 41)).requires_grad_(True)
    w = on(weight((4, 3, 3, 3), "contiguous")).requires_grad_(True)
    upstream = on(torch.randn(4, 3, 3, 3, generator=torch.Generator().manual_seed(9)))

    def second(pytorch: bool):
        if pytorch:
            fused.set_enabled(False)
        try:
            (gx,) = torch.autograd.grad(est(x).sum(), x, create_graph=True)
            (ggx,) = torch.autograd.grad((gx * gx).sum(), x)
            y = est.scaled_sign(w, 1) if not pytorch else est(w) * w.abs().mean()
            (dw,) = torch.autograd.grad((y * upstream).sum(), w, create_graph=True)
            (ggw,) = torch.autograd.grad((dw * dw).sum(), w)
            return gx.detach(), ggx, dw.detach(), ggw
        finally:
            fused.set_enabled(None)

    for got, want in zip(second(False), second(True)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


def test_a_batched_grad_takes_the_expression():
    """(review triton #6) autograd.grad(..., is_grads_batched=True) hands the nodes a batched grad, which has no
    storage: they crashed on its data pointer; they hand it to the PyTorch expression now, as a double backward."""
    est = ESTIMATORS["reste"]()
    x = on(torch.linspace(-2, 2, 6)).requires_grad_(True)
    y = est(x)
    assert "reste_ext" in type(y.grad_fn).__name__ or "reste_ext" in y.grad_fn.name()
    (jac,) = torch.autograd.grad(y, x, on(torch.eye(6)), is_grads_batched=True)
    torch.testing.assert_close(jac, torch.diag(est.derivative(x.detach())))
    w = on(weight((2, 3), "contiguous")).requires_grad_(True)
    fused.set_enabled(False)
    try:
        (want,) = torch.autograd.grad(est(w) * w.abs().mean(), w, on(torch.ones(2, 3)))
    finally:
        fused.set_enabled(None)
    (dw,) = torch.autograd.grad(est.scaled_sign(w, 1), w, on(torch.ones(1, 2, 3)), is_grads_batched=True)
    torch.testing.assert_close(dw[0], want, rtol=1e-5, atol=1e-7)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")  # torch's forward_ad import
def test_the_nodes_keep_the_autograd_contract():
    """Written as plain autograd Nodes, the two nodes keep what torch.autograd.Function gave: gradients
    through a computed input, retain_graph, a clear error on a second backward, on an input changed in
    place and on forward-mode AD, and the saved-tensor hooks (activation offloading, checkpointing)."""
    est = ESTIMATORS["reste"]()
    leaf = on(torch.linspace(-2, 2, 9)).requires_grad_(True)
    w = on(weight((4, 3, 3, 3), "contiguous")).requires_grad_(True)
    y = est(leaf * 0.5)  # a computed input: the gradient reaches the leaf through the node's edge
    y.sum().backward(retain_graph=True)
    first = leaf.grad.clone()
    torch.testing.assert_close(first, 0.5 * torch_backward(est, (leaf * 0.5).detach(), torch.ones_like(leaf)))
    y.sum().backward()  # retained: the same gradient again
    torch.testing.assert_close(leaf.grad, 2 * first)
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        y.sum().backward()
    ws = est.scaled_sign(w, 1)
    ws.sum().backward()
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        ws.sum().backward()

    x = leaf.detach().clone().requires_grad_(True)
    z = x * 1.0
    y = est(z)
    z.add_(1.0)  # the saved input changed in place before the backward
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()

    import torch.autograd.forward_ad as fwad
    with fwad.dual_level():  # forward mode goes to the PyTorch Function, which has it (review math #6), not the node
        tangent = fwad.unpack_dual(est(fwad.make_dual(leaf.detach(), torch.ones_like(leaf)).requires_grad_(True)))[1]
    torch.testing.assert_close(tangent, torch_backward(est, leaf.detach(), torch.ones_like(leaf)))

    packed = []

    def pack(t):
        packed.append(t.shape)
        return t.clone()

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = est(leaf)
        ws = est.scaled_sign(w, 1)
    assert packed == [leaf.shape, w.shape]
    (y.sum() + ws.sum()).backward()


# ------------------------------------------------------------------- a binary layer in one call

LAYER_NODE = "reste_ext::BinaryLayerBackward"
LAYERS = {  # a layer of each kind, with the settings its one call passes on (stride, padding, dilation, groups)
    "conv1d": (lambda **kw: BinaryConv1d(4, 6, 3, stride=2, padding=1, **kw), (3, 4, 11)),
    "conv2d": (lambda **kw: BinaryConv2d(4, 6, 3, padding=(1, 2), dilation=2, groups=2, **kw), (3, 4, 9, 9)),
    "conv3d": (lambda **kw: BinaryConv3d(4, 6, 2, **kw), (2, 4, 5, 5, 5)),
    "linear": (lambda **kw: BinaryLinear(7, 5, **kw), (3, 7)),
    # a layer's weight group above 65,536 (layer scaling) takes two launches of its own on a GPU, beside the input's
    "linear-large": (lambda **kw: BinaryLinear(300, 240, **kw), (5, 300)),
}


def graph_nodes(y: torch.Tensor) -> list[str]:
    """The names of the autograd nodes behind ``y``, each node once."""
    seen, names, todo = set(), [], [y.grad_fn]
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.append(node.name())
        todo += [n for n, _ in node.next_functions]
    return names


def layer_step(layer, x, upstream, one_call, monkeypatch, x_grad=True):
    """Forward and backward of ``layer`` through its one call into the extension, or (``one_call=False``)
    through its two estimators' nodes called one by one: the output, the gradients and the graph's nodes."""
    real = cuda_ext.takes_layer
    monkeypatch.setattr(cuda_ext, "takes_layer", real if one_call else lambda *args: False)
    layer.zero_grad(set_to_none=True)
    xi = x.clone().requires_grad_(x_grad)
    y = layer(xi)
    nodes = graph_nodes(y)
    if y.requires_grad:
        y.backward(upstream)
    grads = [None if t.grad is None else t.grad.clone() for t in (xi, layer.weight, layer.bias) if t is not None]
    monkeypatch.setattr(cuda_ext, "takes_layer", real)
    return y.detach(), grads, nodes


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("inputs", ["binary", "real"])
@pytest.mark.parametrize("scaling", ["layer", "channel"])
@pytest.mark.parametrize("kind", list(LAYERS))
def test_a_binary_layer_is_one_call_and_one_node(kind, scaling, inputs, bias, monkeypatch):
    """A binary conv or linear layer runs as one call into the extension, with one C++ node for its binary input
    and weight, and gives exactly what its two estimators' nodes give called one by one: the same kernels and
    the same op (stride, padding, dilation and groups passed on)."""
    make, shape = LAYERS[kind]
    torch.manual_seed(3)
    layer = make(bias=bias, scaling=scaling, weight_estimator=ESTIMATORS["reste"](),
                 **({"input_estimator": None} if inputs == "real" else {})).to(DEVICE)
    x = on(torch.randn(shape))
    upstream = on(torch.randn(layer(x).shape))
    y, grads, nodes = layer_step(layer, x, upstream, True, monkeypatch)
    ref_y, ref_grads, ref_nodes = layer_step(layer, x, upstream, False, monkeypatch)
    others = set(nodes) - {LAYER_NODE}
    assert nodes.count(LAYER_NODE) == 1 and not any("reste_ext::B" in n or "Scaled" in n for n in others)
    assert LAYER_NODE not in ref_nodes and "reste_ext::ScaledSignBackward" in ref_nodes
    assert ("reste_ext::BinarySignBackward" in ref_nodes) == (inputs == "binary")
    assert torch.equal(y, ref_y)
    for got, want in zip(grads, ref_grads):
        assert torch.equal(got, want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("scaling", ["layer", "channel"])
def test_a_binary_layer_in_one_call_under_autocast(scaling, dtype, monkeypatch):
    """Under bf16 autocast the conv of the one call runs in bf16 as the module path's does (autocast takes the op
    called from C++ as it takes F.conv2d): the same output and gradients exactly. A bf16 input (a layer after a
    16-bit one) shares its launch with the bf16 binary weight on a GPU; a float32 input does not."""
    torch.manual_seed(4)
    conv = BinaryConv2d(6, 8, 3, padding=1, scaling=scaling, weight_estimator=ESTIMATORS["ste"]()).to(DEVICE)
    conv = conv.to(memory_format=torch.channels_last)
    x = on(torch.randn(4, 6, 7, 7)).to(dtype).contiguous(memory_format=torch.channels_last)
    upstream = on(torch.randn(4, 8, 7, 7))
    with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
        y, grads, nodes = layer_step(conv, x, upstream, True, monkeypatch)
        ref_y, ref_grads, _ = layer_step(conv, x, upstream, False, monkeypatch)
    assert y.dtype == torch.bfloat16 and LAYER_NODE in nodes
    assert torch.equal(y, ref_y)
    for got, want in zip(grads, ref_grads):
        assert torch.equal(got, want)


def test_a_binary_layer_in_one_call_follows_the_schedule(monkeypatch):
    """ReSTE's o moves each epoch: the one call takes the new value (its form is kept per value, not for good)."""
    torch.manual_seed(5)
    est = get_estimator("reste", o_end=3.0)
    conv = BinaryConv2d(3, 4, 3, padding=1, weight_estimator=est).to(DEVICE)
    x = on(torch.randn(2, 3, 6, 6) * 0.5)
    upstream = on(torch.randn(2, 4, 6, 6))
    before = layer_step(conv, x, upstream, True, monkeypatch)[1]
    est.set_progress(9, 10)
    after, ref = (layer_step(conv, x, upstream, one, monkeypatch)[1] for one in (True, False))
    assert not torch.equal(before[0], after[0])  # o moved, and so the input's gradient
    for got, want in zip(after, ref):
        assert torch.equal(got, want)


@pytest.mark.parametrize("which", ["input", "weight", "neither"])
def test_a_binary_layer_in_one_call_with_part_of_it_frozen(which, monkeypatch):
    """An input that needs no gradient (the first layer's data), a frozen weight, or both: the node takes only
    what needs a gradient, and none is made where nothing does."""
    torch.manual_seed(6)
    conv = BinaryConv2d(3, 4, 3, padding=1, bias=False, weight_estimator=ESTIMATORS["reste"]()).to(DEVICE)
    conv.weight.requires_grad_(which == "input")
    x = on(torch.randn(2, 3, 5, 5))
    upstream = on(torch.randn(2, 4, 5, 5))
    x_grad = which == "weight"
    y, grads, nodes = layer_step(conv, x, upstream, True, monkeypatch, x_grad=x_grad)
    ref_y, ref_grads, _ = layer_step(conv, x, upstream, False, monkeypatch, x_grad=x_grad)
    assert (LAYER_NODE in nodes) == (which != "neither") and (not nodes) == (which == "neither")
    assert torch.equal(y, ref_y)
    for got, want in zip(grads, ref_grads):
        assert (got is None and want is None) or torch.equal(got, want)


def test_a_binary_layer_in_one_call_keeps_the_autograd_contract(monkeypatch):
    """A double backward through the one node runs the differentiable expression (the same second derivative as
    the PyTorch ops); a second backward is refused as torch refuses it; a model with the node pickles and copies."""
    torch.manual_seed(7)
    conv = BinaryConv2d(3, 4, 3, padding=1, bias=False, weight_estimator=ESTIMATORS["reste"]()).to(DEVICE)
    x = on(torch.randn(2, 3, 5, 5) * 0.7)

    def second(pytorch: bool):
        if pytorch:
            fused.set_enabled(False)
        try:
            xi = x.clone().requires_grad_(True)
            y = conv(xi)
            assert (LAYER_NODE in graph_nodes(y)) != pytorch
            gx, gw = torch.autograd.grad(y.square().sum(), (xi, conv.weight), create_graph=True)
            ggx, ggw = torch.autograd.grad((gx * gx).sum() + (gw * gw).sum(), (xi, conv.weight))
            return gx.detach(), gw.detach(), ggx, ggw
        finally:
            fused.set_enabled(None)

    # alpha, a mean of 108 weights, is summed in another order by the two paths: within 108 ulp32 relatively.
    # The first derivatives carry it twice (y and the binary weight), the second four times, plus the
    # rounding of their sums of at most 108 products: 1e-4 (840 ulp32) covers 4 * 108 + 108 ulp32.
    for got, want in zip(second(False), second(True)):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * want.abs().max().item())
    y = conv(x.clone().requires_grad_(True))
    y.sum().backward()
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        y.sum().backward()
    buffer = io.BytesIO()
    torch.save(conv, buffer)
    twin = copy.deepcopy(conv)
    assert torch.equal(twin(x), conv(x))
    buffer.seek(0)
    assert torch.equal(torch.load(buffer, weights_only=False)(x), conv(x))


def test_a_binary_conv_given_numbers_after_construction_takes_the_one_call(monkeypatch):
    """(review diff17 #2) stride, padding or dilation set to a number after construction (model surgery), which
    F.conv2d takes: the one call crashed with a wall of pybind11's text; it takes them, one per dimension."""
    torch.manual_seed(9)
    conv = BinaryConv2d(4, 6, 3, weight_estimator=ESTIMATORS["reste"]()).to(DEVICE)
    conv.stride, conv.padding, conv.dilation = 2, 1, 2
    x = on(torch.randn(2, 4, 9, 9))
    upstream = on(torch.randn(conv(x).shape))
    y, grads, nodes = layer_step(conv, x, upstream, True, monkeypatch)
    ref_y, ref_grads, _ = layer_step(conv, x, upstream, False, monkeypatch)
    assert LAYER_NODE in nodes and torch.equal(y, ref_y)
    for got, want in zip(grads, ref_grads):
        assert torch.equal(got, want)


def test_a_traced_binary_model_warns_of_nothing_in_reste():
    """(review diff17 #7) torch.jit.trace: the one call's tests asked a traced tensor for its size before asking
    whether a trace runs, which warned from reste's code."""
    model = torch.nn.Sequential(BinaryConv2d(4, 6, 3, padding=1), torch.nn.Flatten(), BinaryLinear(150, 3)).to(DEVICE)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.jit.trace(model, on(torch.randn(2, 4, 5, 5)), check_trace=False)
    assert not [w for w in caught if "reste" in w.filename], [str(w.message) for w in caught]


class _Subclassed(BinaryConv2d):
    pass


class _OwnScale(BinaryConv2d):
    def scale(self):
        return 2 * super().scale()


class _OwnBinaryWeight(estimators.STE):
    name = "ste_own_binary_weight_test"

    def scaled_sign(self, w, groups):
        return estimators.sign(w) * w.abs().amax()


class _OwnForward(estimators.ReSTE):
    name = "reste_own_forward_test"

    def forward(self, x):
        return super().forward(x) * 1.0


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")  # torch's forward_ad import
def test_what_a_binary_layer_leaves_to_its_modules():
    """The one call stands in for the estimators' module calls only where nobody could tell: a hook on an
    estimator (or on every module), an estimator with a forward of its own, a hyper-parameter in a tensor,
    padding by name or by another mode, a transposed conv, a subclass with a step of the forward of its own, the
    first forward's check of the inputs, and forward mode take the module path."""
    x = on(torch.randn(2, 3, 6, 6)).requires_grad_(True)

    def one_call(layer, inp=x) -> bool:
        return LAYER_NODE in graph_nodes(layer.to(DEVICE)(inp))

    conv = BinaryConv2d(3, 4, 3, padding=1)
    assert one_call(conv)
    for register in (conv.input_estimator.register_forward_hook, conv.weight_estimator.register_forward_pre_hook):
        handle = register(lambda *args: None)
        assert not one_call(conv)
        handle.remove()
    handle = torch.nn.modules.module.register_module_forward_hook(lambda *args: None)
    try:
        assert not one_call(conv)
    finally:
        handle.remove()
    assert one_call(conv)
    assert not one_call(BinaryConv2d(3, 4, 3, padding=1, weight_estimator=_OwnForward()))
    tensor_o = get_estimator("reste")
    tensor_o.o = torch.tensor(2.0)
    assert not one_call(BinaryConv2d(3, 4, 3, padding=1, weight_estimator=tensor_o, input_estimator="reste"))
    assert not one_call(BinaryConv2d(3, 4, 3, padding="same"))
    assert not one_call(BinaryConv2d(3, 4, 3, padding=1, padding_mode="reflect"))
    assert not one_call(BinaryConvTranspose2d(3, 4, 3, padding=1))
    assert one_call(_Subclassed(3, 4, 3, padding=1))  # a subclass that changes no step of the forward
    assert not one_call(BinaryConv2d(3, 4, 3, padding=1, weight_estimator=_OwnBinaryWeight()))  # (review diff17 #1)
    patched = BinaryConv2d(3, 4, 3, padding=1)
    patched.binary_input = lambda t: torch.zeros_like(t)  # a step set on the layer itself (review diff17 #6)
    assert not one_call(patched)

    class Recording(torch.overrides.TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            return func(*args, **(kwargs or {}))

    with Recording():  # it must see F.conv2d, which the one call runs from C++ (review diff17 #5)
        assert not one_call(conv)
    with torch.device(DEVICE):  # a mode that only places new tensors does not need to
        assert one_call(conv)
    own = _OwnScale(3, 4, 3, padding=1).to(DEVICE)
    assert not one_call(own)  # one that does: its module path calls it, and its weight is its own scale's
    assert torch.equal(own.binary_weight(), 2 * conv.weight_estimator(own.weight) * own.weight.abs().mean())
    watched = BinaryConv2d(3, 4, 3, padding=1)
    watched.watch_inputs = "conv"
    assert not one_call(watched) and one_call(watched)  # the check, then the one call
    import torch.autograd.forward_ad as fwad
    with fwad.dual_level():
        assert not one_call(conv, fwad.make_dual(x.detach(), torch.ones_like(x)).requires_grad_(True))


def test_the_op_schemas_build_the_same_nodes():
    """torch.ops.reste_ext.binary_sign / scaled_sign (the schema'd form: kind, scalars, parameters) run the
    same C++ nodes as the Python entry points."""
    est = ESTIMATORS["reste"]()
    params = est.params()
    scalars, count, _ = kernel_scalars("reste", params)
    args = ("reste", list(scalars), count, ",".join(params), [float(v) for v in params.values()])
    x = on(torch.linspace(-2, 2, 17)).requires_grad_(True)
    y = torch.ops.reste_ext.binary_sign(x, *args)
    assert y.grad_fn.name() == "reste_ext::BinarySignBackward"
    (dx,) = torch.autograd.grad(y.sum(), x)
    assert torch.equal(dx, torch.autograd.grad(est(x).sum(), x)[0])
    w = on(weight((4, 3, 3, 3), "contiguous")).requires_grad_(True)
    y = torch.ops.reste_ext.scaled_sign(w, 4, None, *args)
    assert y.grad_fn.name() == "reste_ext::ScaledSignBackward"
    (dw,) = torch.autograd.grad(y.sum(), w)
    assert torch.equal(dw, torch.autograd.grad(est.scaled_sign(w, 4).sum(), w)[0])


def test_no_grad_and_inference_mode_give_the_sign():
    est = ESTIMATORS["reste"]()
    x = on(torch.randn(3, 5))
    with torch.no_grad():
        assert torch.equal(est(x), torch_sign(x))
    with torch.inference_mode():
        assert torch.equal(torch.ops.reste_ext.binary_sign(x, "ste", [1.0, 0, 0, 0, 0], 0, "clip", [1.0]),
                           torch_sign(x))


# ------------------------------------------------------------------------------- dispatch


def test_what_does_not_take_the_extension(monkeypatch):
    x = on(torch.randn(10, requires_grad=True))
    w = on(torch.randn(4, 3, requires_grad=True))
    assert cuda_ext.binary_sign("reste", x, {"o": 2.0, "t": 1.5, "m": 0.1}) is not None
    assert cuda_ext.binary_sign(None, x, {}) is None  # an estimator with its own g: no kernel
    assert cuda_ext.binary_sign("reste", x.double(), {"o": 2.0, "t": 1.5, "m": 0.1}) is None  # float64
    assert cuda_ext.binary_sign("reste", x, {"o": torch.tensor(2.0), "t": 1.5, "m": 0.1}) is None  # o in a tensor
    assert cuda_ext.scaled_sign(w, "ste", 5, {"clip": 1.0}) is None  # 5 groups do not divide 12 elements
    assert cuda_ext.scaled_sign(w * 2, "ste", 1, {"clip": 1.0}) is None  # a computed weight keeps its graph
    fused.set_enabled(False)
    assert cuda_ext.binary_sign("reste", x, {"o": 2.0, "t": 1.5, "m": 0.1}) is None
    fused.set_enabled(None)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert cuda_ext.sign(x.detach()) is None


def test_what_the_extension_leaves_to_the_other_paths(monkeypatch):
    """(review gpurev #1-#3) A wrapper subclass (no memory of its own), a plugin's hyper-parameter that is no
    number, and compiled autograd (whose tracing the C++ nodes do not support) take the Triton or PyTorch path."""
    two = pytest.importorskip("torch.testing._internal.two_tensor").TwoTensor
    a = on(torch.randn(10))
    params = {"o": 2.0, "t": 1.5, "m": 0.1}
    assert cuda_ext.sign(two(a, a.clone())) is None
    assert cuda_ext.binary_sign("reste", two(a, a.clone()).requires_grad_(), params) is None
    assert cuda_ext.binary_sign("ste", a.clone().requires_grad_(), {"clip": 1.0, "tag": "a"}) is None
    assert cuda_ext.binary_sign("ste", a.clone().requires_grad_(), {"clip": 1.0, "bins": [1, 2]}) is None
    dynamo = importlib.import_module("torch._dynamo")
    monkeypatch.setattr(dynamo.config, "compiled_autograd", True)
    assert cuda_ext.binary_sign("reste", a.clone().requires_grad_(), params) is None
    monkeypatch.setattr(dynamo.config, "compiled_autograd", False)
    assert cuda_ext.binary_sign("reste", a.clone().requires_grad_(), params) is not None


def test_a_cuda_build_is_kept_per_gpu_architecture(monkeypatch):
    """(review gpurev #6) torch compiles for the visible GPUs (or TORCH_CUDA_ARCH_LIST): a cache shared by hosts with
    other GPUs keeps a build for each, instead of one folder rebuilt (or a build for another GPU loaded)."""
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST", raising=False)
    monkeypatch.setattr(cuda_ext, "_architectures", lambda: [(9, 0)])
    hopper = cuda_ext._build_name(True)
    monkeypatch.setattr(cuda_ext, "_architectures", lambda: [(8, 0)])
    ampere = cuda_ext._build_name(True)
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
    listed = cuda_ext._build_name(True)
    assert len({hopper, ampere, listed}) == 3
    assert cuda_ext._build_name(False) == (monkeypatch.delenv("TORCH_CUDA_ARCH_LIST") or cuda_ext._build_name(False))


def test_a_build_whose_kernels_cannot_run_leaves_the_triton_path(monkeypatch):
    """(review gpurev #4) A build can succeed and its kernels not run (a GPU outside TORCH_CUDA_ARCH_LIST): one
    launch at the first CUDA use finds it, warns once and leaves the Triton path, instead of a layer's forward
    ending the run. The launch check itself: the real kernels pass it, a failing or wrong sign does not."""
    class Failing:
        def sign(self, x):
            raise RuntimeError("CUDA error: no kernel image is available for execution on the device\ndetails")

    class Wrong:
        def sign(self, x):
            return torch.sign(x)

    assert cuda_ext._launch_fails(cuda_ext._MODULE[0], DEVICE) is None
    assert cuda_ext._launch_fails(Failing(), DEVICE) == ("RuntimeError: CUDA error: no kernel image is available "
                                                         "for execution on the device")
    assert "its sign gave [-1.0, 0.0, 0.0, 1.0, 0.0]" in cuda_ext._launch_fails(Wrong(), DEVICE)
    monkeypatch.setattr(cuda_ext, "_STATE", ["cuda"])
    monkeypatch.setattr(cuda_ext, "_ERROR", [])
    monkeypatch.setattr(cuda_ext, "_SMOKED", [])
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(cuda_ext, "_launch_fails", lambda module, device: "RuntimeError: no kernel image")
    monkeypatch.setattr(cuda_ext, "_RECORDED", [])
    with pytest.warns(RuntimeWarning, match=r"built but cannot run its kernels on this GPU \(RuntimeError: no "
                                            r"kernel image\); using the Triton kernels"):
        assert not cuda_ext._loaded(cuda=True)
    assert cuda_ext._STATE == [None] and not cuda_ext._loaded(cuda=True)  # once: no second launch, no warning
    # not recorded (review diff18 #5): a launch may fail for the moment's reasons (memory) or one node's (its driver),
    # and a record in a cache that a cluster's nodes share would turn the extension off on all of them
    assert cuda_ext._RECORDED == []


def test_the_switch_is_auto_by_default_and_read_once(monkeypatch):
    cpu = torch.randn(3)
    monkeypatch.setattr(cuda_ext, "_FORCED", [])
    monkeypatch.setattr(cuda_ext, "_STATE", [])
    monkeypatch.delenv("RESTE_CUDA_EXT", raising=False)
    cuda_ext.set_enabled(None)
    assert cuda_ext.mode() == "auto" and cuda_ext.requested()
    assert not cuda_ext.may_take(cpu)  # CPU tensors keep the C kernels and PyTorch ops
    monkeypatch.setenv("RESTE_CUDA_EXT", "0")
    assert cuda_ext.mode() == "auto"  # read once and kept
    cuda_ext.set_enabled(None)
    assert cuda_ext.mode() == "off" and not cuda_ext.requested()
    for value, want in (("1", "on"), ("yes", "on"), ("off", "off"), ("Auto", "auto")):
        monkeypatch.setenv("RESTE_CUDA_EXT", value)
        cuda_ext.set_enabled(None)
        assert cuda_ext.mode() == want
    monkeypatch.setenv("RESTE_CUDA_EXT", "maybe")  # none of them: unset, said once
    cuda_ext.set_enabled(None)
    with pytest.warns(RuntimeWarning, match=r"RESTE_CUDA_EXT='maybe' is none of on \(1, on, true, yes\), off "
                                            r"\(0, off, false, no\), auto; it is taken as unset: auto"):
        assert cuda_ext.mode() == "auto"
    cuda_ext.set_enabled(True)  # the call wins over the environment
    assert cuda_ext.mode() == "on"
    cuda_ext.set_enabled("auto")
    assert cuda_ext.mode() == "auto"
    cuda_ext.set_enabled("off")  # the words mode() answers
    assert cuda_ext.mode() == "off"
    with pytest.raises(ValueError, match="RESTE_CUDA_EXT: 'yes' is none of True, False, 'on', 'off', 'auto' or None"):
        cuda_ext.set_enabled("yes")
    monkeypatch.setattr(cuda_ext, "_STATE", [None])  # found unusable in this process: CUDA tensors ask no more
    assert not cuda_ext.requested()


@pytest.fixture
def toolkit_for_auto(tmp_path, monkeypatch):
    """A process about to use the extension for a CUDA tensor under RESTE_CUDA_EXT=auto, in a cache of its own, with a
    stand-in toolkit and a GPU said to be there; torch's build is the test's ``load`` (``loads`` counts its calls)."""
    from torch.utils import cpp_extension

    home = _toolkit(tmp_path / "cuda")
    monkeypatch.setenv("RESTE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(cuda_ext, "cuda_home", lambda: str(home))
    monkeypatch.setattr(cpp_extension, "CUDA_HOME", cpp_extension.CUDA_HOME)  # (build sets it)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(cuda_ext, "_architectures", lambda: [(9, 0)])
    for name in ("_STATE", "_ERROR", "_FORCED", "_MODULE", "_RECORDED", "_DECLINED"):
        monkeypatch.setattr(cuda_ext, name, [])
    monkeypatch.setattr(cuda_ext, "_SMOKED", [True])  # (no launch of stand-in kernels)
    monkeypatch.setattr(cuda_ext, "_define_reference", lambda: None)  # (the real build defined it already)
    cuda_ext.set_enabled("auto")
    loads = []

    def load(**kwargs):
        loads.append(kwargs["name"])
        if load.error:
            raise RuntimeError(f"Error building extension '{kwargs['name']}'\n{load.error}")
        return object()

    load.error = "nvcc fatal : Unsupported gpu architecture 'compute_90'"
    monkeypatch.setattr(cpp_extension, "load", load)
    return home, load, loads


def test_auto_goes_without_the_extension_where_no_toolkit_is_found(toolkit_for_auto, monkeypatch):
    """Most pip installs of torch come without nvcc: there ``auto`` builds nothing and says nothing (the engine's note
    for an eager GPU run gives :func:`error`'s reason), and CUDA tensors stop asking."""
    _, _, loads = toolkit_for_auto
    monkeypatch.setattr(cuda_ext, "cuda_home", lambda: None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not cuda_ext._loaded(cuda=True) and not cuda_ext._loaded(cuda=True)
    assert not loads and "no CUDA toolkit was found" in cuda_ext.error() and not cuda_ext.requested()
    assert cuda_ext.error().endswith(cuda_ext.toolkit_hint())  # and how to get one


def test_the_hint_names_the_pip_install_of_torchs_own_toolkit_version(monkeypatch):
    """torch's CUDA 13 wheels pin NVIDIA's ``cuda-toolkit`` wheels; its nvcc and CCCL extras at that version make a
    toolkit in their folder that builds the extension. Before CUDA 13 those wheels spread a toolkit over several
    folders: there the hint names the toolkit to install."""
    from importlib import metadata

    monkeypatch.setattr(metadata, "version", lambda name: {"cuda-toolkit": "13.0.3.0"}[name])
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    assert cuda_ext.toolkit_hint() == 'pip install "cuda-toolkit[nvcc,cccl]==13.0.3.0", or set CUDA_HOME'
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    assert cuda_ext.toolkit_hint() == ("install the CUDA toolkit 12.8 (nvcc, cuda_runtime.h, libcudart) or set "
                                       "CUDA_HOME")
    monkeypatch.setattr(torch.version, "cuda", None)  # a CPU-only torch
    assert cuda_ext.toolkit_hint().startswith("install the CUDA toolkit (nvcc")

    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", missing)  # a CUDA 13 torch from elsewhere (conda, a build of one's own)
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    assert cuda_ext.toolkit_hint().startswith("install the CUDA toolkit 13.0 ")


def test_error_says_why_the_extension_is_not_used_before_any_try(monkeypatch):
    """(review newuser5 #3) The README says error() tells why the extension is not used: on a machine without a GPU
    it said None."""
    monkeypatch.setattr(cuda_ext, "_ERROR", [])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cuda_ext.set_enabled("auto")
    assert cuda_ext.error() == "no CUDA GPU is visible to torch: it runs for CUDA tensors alone"
    cuda_ext.set_enabled(False)
    assert cuda_ext.error() == "RESTE_CUDA_EXT=0 turns it off"
    cuda_ext.set_enabled("auto")
    fused.set_enabled(False)
    assert "RESTE_FUSED=0" in cuda_ext.error()
    fused.set_enabled(True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert cuda_ext.error() is None  # (a GPU, not tried yet)
    monkeypatch.setattr(cuda_ext, "_ERROR", ["it did not build"])
    assert cuda_ext.error() == "it did not build"


def test_auto_records_a_failed_build_and_does_not_build_it_again(toolkit_for_auto, monkeypatch, capsys):
    """A toolkit that cannot build the extension would cost a failed build (a minute) in every process of every run:
    the first failure warns and is recorded in the build's folder; later processes under ``auto`` go without it in
    silence. Another toolkit, compiler or ninja, RESTE_CUDA_EXT=1, or removing the record tries again; a success
    removes it."""
    home, load, loads = toolkit_for_auto
    with pytest.warns(RuntimeWarning, match=r"did not build \(RuntimeError: nvcc fatal : Unsupported gpu architecture "
                                            r"'compute_90'\); using the Triton kernels \(it is not tried again with "
                                            r"this toolkit: .*reste-build-failed.txt records it; remove that file, or "
                                            r"set RESTE_CUDA_EXT=1, to try again\)"):
        assert not cuda_ext._loaded(cuda=True)
    record = cuda_ext._RECORDED[0]
    assert len(loads) == 1 and record.parent.parent.name == "ext" and record.parent.name == loads[0]

    def next_process():
        for name in ("_STATE", "_ERROR", "_RECORDED", "_DECLINED"):
            monkeypatch.setattr(cuda_ext, name, [])
        with warnings.catch_warnings(record=True) as said:
            warnings.simplefilter("always")
            loaded = cuda_ext._loaded(cuda=True)
        return loaded, [str(w.message) for w in said]

    assert next_process() == (False, [])
    assert len(loads) == 1  # not built again
    assert cuda_ext.error() == (f"it failed to build with this toolkit before (RuntimeError: nvcc fatal : Unsupported "
                                f"gpu architecture 'compute_90'); {record} records it: remove that file, or set "
                                "RESTE_CUDA_EXT=1, to try again")
    later = (home / "bin" / "nvcc").stat().st_mtime_ns + 10**9
    os.utime(home / "bin" / "nvcc", ns=(later, later))  # another nvcc: tried again (and failed again, warned)
    loaded, said = next_process()
    assert not loaded and len(loads) == 2 and said and "did not build" in said[0]
    assert next_process() == (False, []) and len(loads) == 2
    monkeypatch.setenv("CXX", "clang++")  # another compiler: tried again
    assert not next_process()[0] and len(loads) == 3
    monkeypatch.setenv("CC", "gcc-12")  # nvcc's host compiler (-ccbin $CC; review diff18 #2): tried again
    assert not next_process()[0] and len(loads) == 4
    assert next_process() == (False, []) and len(loads) == 4
    old = time.time() - 8 * 86400  # a week on: tried again (something the record does not key may have been mended)
    os.utime(record, (old, old))
    assert not next_process()[0] and len(loads) == 5
    ninja = home.parent / "venv" / "bin" / "ninja"  # ninja installed (torch's build needs it): tried again
    ninja.parent.mkdir(parents=True)
    ninja.write_text("#!/bin/sh\n")
    ninja.chmod(0o755)
    monkeypatch.setenv("PATH", f"{ninja.parent}{os.pathsep}{os.environ.get('PATH', '')}")
    assert not next_process()[0] and len(loads) == 6
    cuda_ext.set_enabled(True)  # asked for: tried whatever the record says, and said
    loaded, said = next_process()
    assert not loaded and len(loads) == 7 and "RESTE_CUDA_EXT=0 goes without it" in said[0]
    cuda_ext.set_enabled("auto")
    assert next_process() == (False, []) and len(loads) == 7
    cuda_ext.set_enabled(True)  # asked for in the same process after auto went without it: built at the next use
    with pytest.warns(RuntimeWarning, match="did not build"):  # (review diff18 #6: nothing happened)
        assert not cuda_ext._loaded(cuda=True)
    assert len(loads) == 8
    cuda_ext.set_enabled("auto")
    record.unlink()  # the record removed: tried again, and this time it builds, saying so
    load.error = None
    capsys.readouterr()
    assert next_process() == (True, []) and len(loads) == 9 and cuda_ext._STATE == ["cuda"]
    assert not record.exists()
    said = capsys.readouterr().err.splitlines()
    assert len(said) == 2 and said[0].startswith(f"reste: building the C++/CUDA extension in {record.parent} (once")
    assert re.fullmatch(r"reste: built the extension in \d+ s", said[1])
    cuda_ext._record_failure(record.parent, str(home), "RuntimeError: earlier")  # a success removes an old record
    cuda_ext.set_enabled(True)
    assert next_process() == (True, []) and not record.exists() and len(loads) == 10


@pytest.mark.parametrize("why", ["ninja: build stopped: interrupted by user.",
                                 "c++: fatal error: Killed signal terminated program cc1plus",
                                 "/usr/bin/ld: final link failed: No space left on device"])
def test_a_build_stopped_or_killed_is_not_recorded(toolkit_for_auto, why):
    """(review diff18 #1) Ctrl-C or SIGTERM during the first build of a run (whose handler only notes the stop) reaches
    ninja and the compilers too; a build killed, or short of disk, failed for the moment's reasons. Recorded, each
    would have turned the extension off in silence for good."""
    _, load, loads = toolkit_for_auto
    load.error = f"[1/3] c++ -c ops.cpp\nFAILED: ops.o\n{why}"
    with pytest.warns(RuntimeWarning, match="did not build"):
        assert not cuda_ext._loaded(cuda=True)
    assert cuda_ext._RECORDED == [] and len(loads) == 1
    assert not list((Path(os.environ["RESTE_CACHE"]) / "ext").glob(f"*/{cuda_ext._FAILED}"))


def test_the_extension_is_not_used_or_built_with_the_fused_paths_off(toolkit_for_auto, monkeypatch):
    """(review diff18 #4) RESTE_FUSED=0 runs the PyTorch ops: the extension is neither built nor said to run."""
    _, _, loads = toolkit_for_auto
    monkeypatch.setattr(cuda_ext, "_SMOKED", [])
    fused.set_enabled(False)
    assert not cuda_ext.available() and not loads
    fused.set_enabled(None)
    monkeypatch.setenv("RESTE_FUSED", "1")
    fused.set_enabled(None)
    assert not cuda_ext.ready()  # (asked without building: nothing built yet)
    monkeypatch.setattr(cuda_ext, "_launch_fails", lambda module, device: None)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    toolkit_for_auto[1].error = None
    assert cuda_ext.available() and cuda_ext.ready() and len(loads) == 1
    fused.set_enabled(False)
    assert not cuda_ext.ready() and not cuda_ext.available()


def test_a_failed_build_warns_once_and_leaves_the_triton_path(monkeypatch):
    monkeypatch.setattr(cuda_ext, "_STATE", [])
    monkeypatch.setattr(cuda_ext, "_ERROR", [])

    def broken(cuda=None, skip_failed=False):
        raise RuntimeError("Error building extension 'reste_ext'\nnvcc fatal: Unsupported gpu architecture")

    monkeypatch.setattr(cuda_ext, "build", broken)
    x = on(torch.randn(6, requires_grad=True))
    with pytest.warns(RuntimeWarning, match="Unsupported gpu architecture"):
        assert cuda_ext.binary_sign("ste", x, {"clip": 1.0}) is None
    assert "Unsupported gpu architecture" in cuda_ext.error()
    y = estimators.get_estimator("ste")(x)  # the Python node runs instead
    assert type(y.grad_fn).__name__ == "_SignFunctionBackward"


def test_an_unwritable_cache_builds_the_extension_elsewhere(tmp_path, monkeypatch):
    """A read-only home or a bad $RESTE_CACHE: the extension is built in this user's own temporary folder, as the
    C kernels are (review Y: a FileNotFoundError before)."""
    from torch.utils import cpp_extension

    from reste import native

    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("RESTE_CACHE", str(tmp_path / "a-file"))
    monkeypatch.setattr(native.tempfile, "gettempdir", lambda: str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(cuda_ext, "_STATE", [])
    seen = []

    class Stop(Exception):
        pass

    def load(**kwargs):
        seen.append(Path(kwargs["build_directory"]))
        raise Stop

    monkeypatch.setattr(cpp_extension, "load", load)
    with pytest.raises(Stop):
        cuda_ext.build(cuda=False)
    assert seen and seen[0].is_dir() and seen[0].parent.parent.name.startswith("reste-cache-")


@pytest.mark.skipif(not hasattr(os, "getuid"), reason="POSIX modes")
def test_the_build_folder_is_made_private(tmp_path, monkeypatch):
    monkeypatch.setenv("RESTE_CACHE", str(tmp_path / "cache"))
    old = os.umask(0o002)
    try:
        folder = cuda_ext._build_folder("reste_ext_probe")
    finally:
        os.umask(old)
    assert folder == tmp_path / "cache" / "ext" / "reste_ext_probe"
    assert [p.stat().st_mode & 0o777 for p in (folder.parent, folder)] == [0o700, 0o700]


@pytest.mark.skipif(not hasattr(os, "getuid"), reason="POSIX owners and modes")
@pytest.mark.parametrize("which,made,said", [
    ("ext", "group-writable", "may be written by its group"),
    ("ext/reste_ext_probe", "group-writable", "may be written by its group"),
    ("ext/reste_ext_probe", "world-writable", "may be written by any user"),
    ("ext", "another user's", "belongs to another user"),
])
def test_a_build_folder_others_could_have_filled_is_refused(tmp_path, monkeypatch, which, made, said):
    """torch imports the extension it finds up to date in its build folder, unchecked (security review 2, finding
    5): where ``ext`` or ``ext/<name>`` is not this user's alone, another user could have planted it there. The
    build is refused before torch is asked (a warning then says why, and the Triton path runs)."""
    from torch.utils import cpp_extension

    from reste import native

    cache = tmp_path / "cache"
    (cache / "ext" / "reste_ext_probe").mkdir(parents=True)
    monkeypatch.setattr(cuda_ext, "writable_cache", lambda: cache)  # the cache folder itself passed its check
    monkeypatch.setattr(native, "_private_group", lambda gid: False)
    if made == "another user's":
        monkeypatch.setattr(os, "getuid", lambda: os.stat(cache).st_uid + 1)
    else:
        os.chmod(cache / which, 0o770 if made == "group-writable" else 0o777)
    refused = re.escape(f"{cache / which} {said}") + r"( \(\w+ \d+\))?, so the extension is not built"
    with pytest.raises(OSError, match=refused):
        cuda_ext._build_folder("reste_ext_probe")
    monkeypatch.setattr(cuda_ext, "_build_name", lambda with_cuda: "reste_ext_probe")
    monkeypatch.setattr(cuda_ext, "_STATE", [])
    monkeypatch.setattr(cpp_extension, "load", lambda **kwargs: pytest.fail("torch was asked to load from it"))
    with pytest.raises(OSError, match=said):
        cuda_ext.build(cuda=False)


def test_a_lock_left_by_a_killed_build_does_not_block_the_next(tmp_path, monkeypatch):
    """torch before mid-2026 waited forever while its build folder held a ``lock`` file, which a build killed
    midway leaves behind (review II: a cut gpu_check.sh run then hung the next); the build clears it under a
    lock of its own, held while torch builds."""
    import fcntl

    from torch.utils import cpp_extension

    import os
    import time

    monkeypatch.setenv("RESTE_CACHE", str(tmp_path))
    monkeypatch.setattr(cuda_ext, "_STATE", [])
    stale = tmp_path / "ext" / cuda_ext._build_name(False) / "lock"
    stale.parent.mkdir(parents=True)
    stale.write_text("")
    old = time.time() - 3600
    os.utime(stale, (old, old))  # a build takes minutes: an hour-old lock is no build's
    seen = []

    class Stop(Exception):
        pass

    def load(**kwargs):  # what the old torch did first: wait while the file is there (here: note it)
        directory = Path(kwargs["build_directory"])
        seen.append((directory / "lock").exists())
        with open(directory / "reste-build.lock") as other, pytest.raises(BlockingIOError):
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held by the build while torch runs
        raise Stop

    monkeypatch.setattr(cpp_extension, "load", load)
    with pytest.raises(Stop):
        cuda_ext.build(cuda=False)
    assert seen == [False]
    # kept: a fresh one (older torch's build may have just made it), and one a build holds (newer torch's flock)
    stale.write_text("")
    cuda_ext._clear_stale_lock(stale, fcntl)
    assert stale.exists()
    os.utime(stale, (old, old))
    with open(stale) as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        other = os.fork()  # another process: an flock of this one's would not conflict with itself
        if other == 0:
            cuda_ext._clear_stale_lock(stale, fcntl)
            os._exit(0)
        os.waitpid(other, 0)
    assert stale.exists()
    cuda_ext._clear_stale_lock(stale, fcntl)
    assert not stale.exists()


def test_without_nvcc_cuda_tensors_are_refused_in_one_line(monkeypatch):
    """No CUDA toolkit: building for CUDA tensors stops before compiling, with a one-line reason; a build
    made for CPU tensors in the same process is not used for CUDA tensors (it has no CUDA kernels)."""
    from torch.utils import cpp_extension

    monkeypatch.setattr(cpp_extension, "CUDA_HOME", None)
    monkeypatch.setattr(cuda_ext, "_TOOLKITS", ())
    monkeypatch.setenv("PATH", "")
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    assert cuda_ext.cuda_home() is None
    monkeypatch.setattr(cuda_ext, "_STATE", [])
    with pytest.raises(RuntimeError, match="no CUDA toolkit: nvcc was not found"):
        cuda_ext.build(cuda=True)
    monkeypatch.setattr(cuda_ext, "_STATE", ["cpu"])
    monkeypatch.setattr(cuda_ext, "_ERROR", [])
    with pytest.warns(RuntimeWarning, match="built without its CUDA kernels"):
        assert not cuda_ext._loaded(cuda=True)
    assert cuda_ext._loaded(cuda=False) and cuda_ext._STATE == ["cpu"]


def _toolkit(home: Path) -> Path:
    """A stand-in CUDA toolkit: nvcc, the runtime's header and library (empty files)."""
    for name in ("bin/nvcc", "include/cuda_runtime.h", "lib64/libcudart.so", "lib64/libcudart.so.13"):
        (home / name).parent.mkdir(parents=True, exist_ok=True)
        (home / name).write_text("")
    (home / "bin" / "nvcc").chmod(0o755)
    return home


def test_the_toolkit_is_found_behind_an_nvcc_wrapper(tmp_path, monkeypatch):
    """torch guesses CUDA_HOME as the folder above the nvcc on PATH; where that nvcc is a wrapper script in
    /usr/local/bin (this image), the guess holds no libcudart and the link fails: the toolkit is looked for."""
    from torch.utils import cpp_extension

    wrapper = tmp_path / "usr" / "bin" / "nvcc"
    wrapper.parent.mkdir(parents=True)
    wrapper.write_text("#!/bin/sh\nexec /opt/cuda-13.0/bin/nvcc \"$@\"\n")
    wrapper.chmod(0o755)
    old, new = _toolkit(tmp_path / "cuda-12.8"), _toolkit(tmp_path / "cuda-13.0")
    _toolkit(tmp_path / "cuda-12.10"), _toolkit(tmp_path / "cuda-12.9")
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    monkeypatch.setenv("PATH", str(wrapper.parent))
    monkeypatch.setattr(cpp_extension, "CUDA_HOME", str(tmp_path / "usr"))  # torch's guess from the wrapper
    monkeypatch.setattr(cuda_ext, "_TOOLKITS", (str(tmp_path / "cuda-*"),))
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    assert cuda_ext.cuda_home() == str(new)  # the newest complete one of torch's CUDA major version
    monkeypatch.setattr(torch.version, "cuda", "12.6")
    assert cuda_ext.cuda_home() == str(tmp_path / "cuda-12.10")  # 12.10 is newer than 12.9, and 13 is not 12
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    (new / "lib64" / "libcudart.so").unlink()  # the versioned library alone (pip's layout): linked through a link
    assert cuda_ext.cuda_home() == str(new)
    (new / "lib64" / "libcudart.so.13").unlink()
    assert cuda_ext.cuda_home() == str(tmp_path / "cuda-12.10")  # one without its runtime library is passed over

    wrapper.unlink()  # nvcc on PATH as a link into a toolkit: followed, before the usual places
    linked = _toolkit(tmp_path / "elsewhere")
    wrapper.symlink_to(linked / "bin" / "nvcc")
    assert cuda_ext.cuda_home() == str(linked)
    monkeypatch.setenv("PATH", "")  # no nvcc on PATH: torch guesses /usr/local/cuda, a folder of the usual places
    monkeypatch.setattr(cpp_extension, "CUDA_HOME", str(old))
    assert cuda_ext.cuda_home() == str(tmp_path / "cuda-12.10")  # (the complete ones ranked by version first)
    monkeypatch.setattr(cuda_ext, "_TOOLKITS", ())
    assert cuda_ext.cuda_home() == str(old)  # nothing found: torch's guess
    monkeypatch.setenv("CUDA_HOME", str(tmp_path / "usr"))  # and what the user set is used as set
    monkeypatch.setattr(cpp_extension, "CUDA_HOME", str(tmp_path / "usr"))
    assert cuda_ext.cuda_home() == str(tmp_path / "usr")


def _wheels(site: Path, major: int = 13) -> Path:
    """A stand-in of pip's NVIDIA wheels in ``site``: torch's runtime (header, versioned library), then
    ``cuda-toolkit[nvcc,cccl]``'s nvcc and CCCL header (empty files)."""
    home = site / "nvidia" / f"cu{major}"
    for name in ("include/cuda_runtime.h", f"lib/libcudart.so.{major}", "bin/nvcc", "include/nv/target"):
        (home / name).parent.mkdir(parents=True, exist_ok=True)
        (home / name).write_text("")
    (home / "bin" / "nvcc").chmod(0o755)
    return home


def test_pips_nvidia_wheels_are_a_toolkit_where_they_hold_nvcc_and_cccl(tmp_path, monkeypatch):
    """Most GPU users have torch from pip and no CUDA toolkit: ``pip install "cuda-toolkit[nvcc,cccl]==..."`` puts
    nvcc and CCCL beside the runtime that torch's CUDA 13 wheels installed (``site-packages/nvidia/cu13``), and the
    extension is built with them, after torch's guess and the nvcc on PATH, before /usr/local/cuda."""
    from torch.utils import cpp_extension

    home = _wheels(tmp_path / "site")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    monkeypatch.setenv("PATH", "")
    local = _toolkit(tmp_path / "cuda-13.0")
    # (review diff22 #2) torch's guess without nvcc on PATH is /usr/local/cuda, which may be of another CUDA version
    monkeypatch.setattr(cpp_extension, "CUDA_HOME", str(_toolkit(tmp_path / "usr-local-cuda")))
    monkeypatch.setattr(cuda_ext, "_TOOLKITS", (str(tmp_path / "usr-local-cuda"), str(tmp_path / "cuda-*")))
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    assert cuda_ext.cuda_home() == str(home) and cuda_ext._toolkit_found()
    monkeypatch.setattr(torch.version, "cuda", "12.8")  # not torch's CUDA version
    assert cuda_ext.cuda_home() == str(tmp_path / "usr-local-cuda")
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    (home / "include" / "nv" / "target").unlink()  # nvcc without CCCL (cuda-toolkit[nvcc] alone): its build fails
    assert cuda_ext.cuda_home() == str(tmp_path / "usr-local-cuda")
    monkeypatch.setattr(cuda_ext, "_TOOLKITS", (str(tmp_path / "cuda-*"),))
    monkeypatch.setattr(cpp_extension, "CUDA_HOME", None)
    assert cuda_ext.cuda_home() == str(local)
    shutil.rmtree(local)
    assert cuda_ext.cuda_home() is None and not cuda_ext._toolkit_found()
    (home / "include" / "nv" / "target").write_text("")
    (home / "bin" / "nvcc").unlink()  # torch's wheels alone: no nvcc
    assert cuda_ext.cuda_home() is None


def test_cu13_wheels_are_found_beside_a_regular_nvidia_package(tmp_path, monkeypatch):
    """(review compat4 #3) torch 2.8 and 2.9's CUDA 12 wheels install ``nvidia/__init__.py``: a regular package,
    whose one folder, first on the path, hid the cu13 wheels of another site folder from ``find_spec``."""
    home = _wheels(tmp_path / "site")
    (tmp_path / "cu12" / "nvidia").mkdir(parents=True)
    (tmp_path / "cu12" / "nvidia" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.syspath_prepend(str(tmp_path / "cu12"))
    monkeypatch.delitem(sys.modules, "nvidia", raising=False)  # (found again from the path, as in a new process)
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    assert cuda_ext._wheel_toolkits().count(str(home)) == 1


def test_a_versioned_runtime_alone_is_linked_through_a_link_of_the_builds(tmp_path):
    """torch's link step asks for ``-lcudart``, which finds ``libcudart.so`` alone; pip's wheels have
    ``libcudart.so.13``: the build passes ``-L`` a folder of its own with a ``libcudart.so`` link to it."""
    home, build = _wheels(tmp_path / "site"), tmp_path / "build"
    build.mkdir()
    flags = cuda_ext._runtime_link(home, build)
    assert flags == [f"-L{build / 'cudart'}"]
    assert os.readlink(build / "cudart" / "libcudart.so") == str(home / "lib" / "libcudart.so.13")
    assert cuda_ext._runtime_link(home, build) == flags  # again (the next build of the same folder): the same link
    (home / "lib" / "libcudart.so.12").write_text("")  # two: the newest
    (home / "lib" / "libcudart.so.13.0.96").write_text("")  # (a full version is no soname)
    cuda_ext._runtime_link(home, build)
    assert os.readlink(build / "cudart" / "libcudart.so") == str(home / "lib" / "libcudart.so.13")
    (home / "lib" / "libcudart.so.13").unlink()  # the link follows the library
    cuda_ext._runtime_link(home, build)
    assert os.readlink(build / "cudart" / "libcudart.so") == str(home / "lib" / "libcudart.so.12")
    assert [p.name for p in (build / "cudart").iterdir()] == ["libcudart.so"]
    assert cuda_ext._runtime_link(_toolkit(tmp_path / "cuda"), tmp_path) == []  # a toolkit's own libcudart.so


def test_the_runtime_library_is_looked_for_where_torchs_link_step_looks(tmp_path):
    """torch links with -L<home>/lib64 -lcudart, or -L<home>/lib where there is no lib64: a libcudart.so in lib
    beside a lib64 that lacks it is not found at link time, so that toolkit is not complete."""
    home = _toolkit(tmp_path / "cuda")
    assert cuda_ext._complete(home)
    (home / "lib64").rename(home / "lib")  # lib alone (conda's layout): -L<home>/lib
    assert cuda_ext._complete(home)
    (home / "lib64").mkdir()  # an empty lib64 beside it: torch takes lib64, which has no libcudart.so
    assert not cuda_ext._complete(home)


def test_a_distributions_toolkit_in_usr_is_complete(monkeypatch):
    """(review diff18, suggestion) Debian's nvidia-cuda-toolkit puts nvcc in /usr/bin and libcudart.so in
    /usr/lib/<multiarch>, which the linker searches whatever -L torch passes: auto must not take that for no toolkit."""
    files = {"/usr/bin/nvcc", "/usr/include/cuda_runtime.h"}
    libraries = ["/usr/lib/x86_64-linux-gnu/libcudart.so"]

    class Fake(type(Path())):  # (the file system of such a machine, for these few paths)
        def is_file(self):
            return str(self) in files

        def exists(self):
            return str(self) in files

        def glob(self, pattern):
            return iter([Fake(f) for f in libraries] if str(self) == "/usr/lib" else [])

    monkeypatch.setattr(cuda_ext, "Path", Fake)
    assert cuda_ext._complete(Fake("/usr"))
    libraries.clear()
    assert not cuda_ext._complete(Fake("/usr"))
    libraries.append("/usr/lib/x86_64-linux-gnu/libcudart.so")
    files.discard("/usr/bin/nvcc")
    assert not cuda_ext._complete(Fake("/usr"))


def test_bad_arguments_are_refused_in_one_line():
    """Each message whole, its numbers, shapes and devices too: on one GPU image a number streamed into a message
    crashed the library (see ops.cpp's number())."""
    x = on(torch.randn(4))
    with pytest.raises(RuntimeError, match="unknown estimator kind 'nope'"):
        torch.ops.reste_ext.backward(x, x, "nope", [0.0] * 5, 0)
    with pytest.raises(RuntimeError, match="5 scalars expected, got 3"):
        torch.ops.reste_ext.backward(x, x, "ste", [0.0] * 3, 0)
    with pytest.raises(RuntimeError, match=r"grad has shape \[2, 2\], x \[4\]"):
        torch.ops.reste_ext.backward(x, x.view(2, 2), "ste", [1.0] + [0.0] * 4, 0)
    with pytest.raises(RuntimeError, match="x must be float32, bfloat16 or float16, got Double"):
        torch.ops.reste_ext.sign(x.double())
    with pytest.raises(RuntimeError, match=r"groups must divide w's 4 elements \(1 to 65535\), got 3"):
        torch.ops.reste_ext.scaled_sign_forward(x, 3, None)
    w = on(torch.randn(8, 3, 3, 3))
    scalars, count, _ = kernel_scalars("ste", {"clip": 1.0})
    _, alpha = torch.ops.reste_ext.scaled_sign_forward(w, 8, None)
    for bad in (alpha[:2].clone(), alpha.double(), alpha.repeat(2)[::2]):  # (and its device: on a GPU only)
        with pytest.raises(RuntimeError, match="alpha must be the forward's 8 float32 scales on w's device, got "
                           f"{bad.numel()} {'Double' if bad.dtype == torch.float64 else 'Float'} on {w.device}"):
            torch.ops.reste_ext.scaled_sign_backward(w, w, bad, 8, "ste", list(scalars), count)
    with pytest.raises(RuntimeError, match="groups must divide w's 216 elements"):
        torch.ops.reste_ext.scaled_sign_backward(w, w, alpha, 7, "ste", list(scalars), count)
    with pytest.raises(RuntimeError, match=r"grad has shape \[8, 27\], w \[8, 3, 3, 3\]"):
        torch.ops.reste_ext.scaled_sign_backward(w, w.view(8, 27), alpha, 8, "ste", list(scalars), count)


@pytest.mark.skipif(DEVICE.type != "cuda", reason="a tensor on another device than w: a GPU's case")
def test_tensors_on_another_device_are_refused():
    w = on(torch.randn(8, 3, 3, 3))
    scalars, count, _ = kernel_scalars("ste", {"clip": 1.0})
    _, alpha = torch.ops.reste_ext.scaled_sign_forward(w, 8, None)
    with pytest.raises(RuntimeError, match="alpha must be the forward's 8 float32 scales on w's device"):
        torch.ops.reste_ext.scaled_sign_backward(w, w, alpha.cpu(), 8, "ste", list(scalars), count)
    with pytest.raises(RuntimeError, match="grad is on cpu"):
        torch.ops.reste_ext.scaled_sign_backward(w, w.cpu(), alpha, 8, "ste", list(scalars), count)
    with pytest.raises(RuntimeError, match="grad is on cpu"):
        torch.ops.reste_ext.backward(w, w.cpu(), "ste", list(scalars), count)


def test_the_node_overhead_benchmark_runs(tmp_path):
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "node_overhead.py"
    done = subprocess.run([sys.executable, str(script), "--rounds", "1", "--calls", "3", "--device", DEVICE.type],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    for case in ("BinaryConv2d 4->4 forward ", "binary minus float, forward+backward"):
        line = next(x for x in lines if case in x)
        assert len([float(v) for v in line.split()[-3:]]) == 3  # cpp, python, ops


@pytest.mark.slow
@pytest.mark.skipif(cuda_ext.cuda_home() is None or torch.version.cuda is None,
                    reason="no CUDA toolkit or a CPU-only torch")
@pytest.mark.parametrize("layout", ["found", "wheels"])
def test_the_cuda_source_compiles_and_links(tmp_path, layout):
    """kernels.cu and ops.cpp with RESTE_WITH_CUDA build into a library that loads (no GPU needed to build or
    load it; its CPU loops then run): what a GPU machine builds on first use, checked without one. ``wheels``: the
    toolkit found, laid out as pip's NVIDIA wheels lay it out, with its runtime library as ``libcudart.so.N`` alone
    (which torch's ``-lcudart`` does not find)."""
    code = ("import torch; from reste import cuda_ext; assert cuda_ext.build(cuda=True) == 'cuda'; "
            "x = torch.tensor([-1.5, -0.0, 2.0]); assert torch.ops.reste_ext.sign(x).tolist() == [-1.0, 1.0, 1.0]")
    env = {**os.environ, "TORCH_CUDA_ARCH_LIST": "9.0", "RESTE_CACHE": str(tmp_path)}  # CUDA_HOME found, not given
    if layout == "wheels":
        real, major = Path(cuda_ext.cuda_home()), torch.version.cuda.split(".")[0]
        home = tmp_path / "site" / "nvidia" / f"cu{major}"
        (home / "lib").mkdir(parents=True)
        (home / "lib" / f"libcudart.so.{major}").symlink_to((cuda_ext._library_folder(real) / "libcudart.so").resolve())
        for name in ("bin", "include", "nvvm"):
            (home / name).symlink_to(real / name)
        env["CUDA_HOME"] = str(home)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=1200, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    if layout == "wheels":
        assert list(tmp_path.glob("ext/*/cudart/libcudart.so"))


def test_cu13_wheels_are_found_where_an_nvidia_module_without_a_spec_is_imported(tmp_path, monkeypatch):
    """(review mut12) find_spec raises ValueError for a module in sys.modules whose __spec__ is None (one made by
    hand, as some stubs and test doubles are): the wheels are still found from the path, where cuda_home raised it.
    Catching ImportError alone failed no test."""
    import types

    home = _wheels(tmp_path / "site")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    stub = types.ModuleType("nvidia")
    stub.__spec__ = None
    monkeypatch.setitem(sys.modules, "nvidia", stub)
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    assert str(home) in cuda_ext._wheel_toolkits()
