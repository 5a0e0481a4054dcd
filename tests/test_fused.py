"""Fused CPU kernels (``reste.fused``) and the C build helper (``reste.native``).

The kernels must compute what the PyTorch expressions compute: the sign and the
STE backward bit for bit, ReSTE's backward to float32 rounding with its zeros
and constant region on exactly the same elements, for every memory layout and
thread split they accept; everything else must fall through to PyTorch.
"""

from __future__ import annotations

import math
import os
import shutil
import stat
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import reste
from reste import estimators, fused, models
from reste.estimators import ReSTE, STE, reste_g, ste_g
from reste.native import NativeLibrary, split_parts
from build_checks import require_built

require_built(None if fused.available() else fused.error(), "the fused C kernels")


@pytest.fixture(autouse=True)
def _restore_switch(monkeypatch):
    """The kernels on, whatever RESTE_FUSED the suite runs under (these tests are about them; set_enabled(None)
    reads the variable again)."""
    monkeypatch.delenv("RESTE_FUSED", raising=False)
    fused.set_enabled(None)
    yield
    monkeypatch.undo()
    fused.set_enabled(None)


def reste_bound(o: float, t: float, m: float) -> float:
    """How far (relative) the kernel's c^p, c = max(|x|, m) in [m, t], p = (1 - o)/o, may be from the exact value.

    log2 c = e + z q(z) (|z| < 0.42): the Horner steps and the sum with e round within (L + 2) u absolutely,
    L = max |log2 c|, beside the fit's 1.4e-8; times p, rounded: |p| (2 L + 2) u absolutely in the argument of
    exp2, which becomes ln 2 times that relatively; exp2's own Horner steps, its fit (2.6e-9) and 2^k, then the
    products with 1/o and grad: 8 u more. u = 2^-24, float32's unit roundoff."""
    q = abs(1 - o) / o
    span = max(abs(math.log2(m)), abs(math.log2(t)))
    return (math.log(2) * q * (2 * span + 2) + 8) * 2.0**-24


def torch_sign(x):
    """``reste.estimators.sign`` on its PyTorch path."""
    fused.set_enabled(False)
    try:
        return estimators.sign(x)
    finally:
        fused.set_enabled(None)


def special_values(t: float, m: float) -> torch.Tensor:
    """The edges of every region, the floats next to them, zeros, infinities, NaN, subnormals."""
    edges = torch.tensor([0.0, m, t, 1.0, 0.5, 1e-30, 1e-40, 3.0e38], dtype=torch.float32)
    up = torch.nextafter(edges, torch.full_like(edges, math.inf))
    down = torch.nextafter(edges, torch.full_like(edges, -math.inf))
    both = torch.cat([edges, up, down])
    return torch.cat([both, -both, torch.tensor([math.inf, -math.inf, math.nan, -0.0])])


def inputs(n: int, t: float = 1.5, m: float = 0.1, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.cat([torch.randn(n, generator=g) * 0.9, special_values(t, m)])


def reste_reference64(x: torch.Tensor, o: float, t: float, m: float) -> torch.Tensor:
    """SPEC section 2 in float64, regions decided on the float32 values."""
    a = x.abs()
    t32 = torch.tensor(t, dtype=torch.float32).item()
    m32 = torch.tensor(m, dtype=torch.float32).item()
    a64 = a.double()
    g = torch.where(a64 > 0, a64, torch.ones_like(a64)).pow((1 - o) / o) / o
    g = torch.where(a <= m32, torch.full_like(g, m ** (1 / o) / m), g)
    g = torch.where(a > t32, torch.zeros_like(g), g)
    return torch.where(torch.isnan(x), x.double(), g)


# -------------------------------------------------------------------------- kernels


@pytest.mark.parametrize("threads", [1, 2])
def test_sign_is_bit_identical(threads):
    x = inputs(300_001)
    with_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got = fused.sign(x)
    finally:
        torch.set_num_threads(with_threads)
    want = torch_sign(x)
    assert got is not None and torch.equal(got.isnan(), want.isnan())
    ok = ~want.isnan()
    assert torch.equal(got[ok], want[ok])
    assert set(got[ok].unique().tolist()) == {-1.0, 1.0}
    assert got[x == 0].eq(1).all()  # +0 and -0 both give +1


@pytest.mark.parametrize("clip", [1.0, 0.5, 2.0])
def test_ste_backward_is_bit_identical(clip):
    x = inputs(200_000, t=clip)
    grad = torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    got = fused.ste_backward(x, grad, clip)
    want = ste_g(x, clip).mul_(grad)
    assert got is not None
    assert torch.equal(got, want)


@pytest.mark.parametrize("o", [1.0, 1.15224, 2.6871, 3.0, 10.0])
@pytest.mark.parametrize("t,m", [(1.5, 0.1), (2.0, 0.3), (1.0, 0.01)])
def test_reste_backward_matches_the_formula(o, t, m):
    x = inputs(200_000, t, m, seed=int(o * 10))
    grad = torch.randn(x.shape, generator=torch.Generator().manual_seed(4)).abs_().add_(0.1)
    got = fused.reste_backward(x, grad, o, t, m)
    assert got is not None and got.dtype == torch.float32
    ref = reste_reference64(x, o, t, m) * grad.double()
    torch_path = reste_g(x, o, t, m).mul_(grad)
    nan = torch.isnan(x)
    # NaN exactly where the PyTorch path has it: a NaN input's, except at o = 1 (STE's window gives it 0)
    assert torch.equal(torch.isnan(got), torch.isnan(torch_path))
    assert torch.equal(torch.isnan(got), nan if o != 1.0 else torch.zeros_like(nan))
    # zeros and the constant region on exactly the same elements as the PyTorch path
    assert torch.equal(got[~nan] == 0, torch_path[~nan] == 0)
    assert torch.equal(got[~nan] == 0, ref[~nan] == 0)
    nz = (~nan) & (ref != 0)
    rel = ((got[nz].double() - ref[nz]) / ref[nz]).abs().max().item()
    assert rel < reste_bound(o, t, m), rel
    if o == 1.0:  # a clipped STE: exactly grad on abs(x) <= t
        assert torch.equal(got[~nan], ste_g(x, t).mul_(grad)[~nan])


def test_reste_backward_at_the_spec_edges():
    # o = 3: 4.6416 inside the interval, 1.5472 just outside; z = +-t keeps the power law
    x = torch.tensor([0.0, 0.1, 0.1001, 1.5, -1.5])
    x = torch.cat([x, torch.nextafter(torch.tensor([1.5]), torch.tensor([2.0]))])
    got = fused.reste_backward(x, torch.ones_like(x), 3.0, 1.5, 0.1)
    assert got[0].item() == pytest.approx(4.6416, abs=1e-4)
    assert got[1].item() == pytest.approx(4.6416, abs=1e-4)
    assert got[2].item() == pytest.approx(1.5472 * (0.1001 / 0.1) ** (-2 / 3), rel=1e-5)
    assert got[3].item() == pytest.approx(1.5 ** (-2 / 3) / 3, rel=1e-6)
    assert got[4].item() == got[3].item()
    assert got[5].item() == 0.0


def test_channels_last_and_thread_splits():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(4, 16, 33, 17, generator=g).contiguous(memory_format=torch.channels_last)
    grad = torch.randn(x.shape, generator=g).contiguous(memory_format=torch.channels_last)
    want = reste_g(x, 2.5, 1.5, 0.1).mul_(grad)
    for threads in (1, 2, 3):
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            got = fused.reste_backward(x, grad, 2.5, 1.5, 0.1)
        finally:
            torch.set_num_threads(before)
        assert got is not None and got.stride() == x.stride()
        torch.testing.assert_close(got, want, rtol=2 * reste_bound(2.5, 1.5, 0.1), atol=0)  # each side's error
    assert torch.equal(fused.sign(x), torch_sign(x))


def test_inputs_the_kernels_do_not_take_fall_through():
    x = torch.randn(8, 8)
    grad = torch.randn(8, 8)
    assert fused.sign(x.double()) is None
    assert fused.sign(x.t()) is None  # not contiguous
    assert fused.sign(x[:, ::2]) is None
    assert fused.sign(x.clone().requires_grad_()) is None  # would lose the graph
    assert fused.ste_backward(x, grad.t().contiguous().t(), 1.0) is None  # strides differ
    assert fused.ste_backward(x, grad.to(torch.bfloat16), 1.0) is None
    assert fused.reste_backward(x, torch.ones(1).expand(8, 8), 2.0, 1.5, 0.1) is None  # broadcast grad
    two = pytest.importorskip("torch.testing._internal.two_tensor").TwoTensor
    assert fused.sign(two(x, x.clone())) is None  # a wrapper subclass: data_ptr() 0 (it segfaulted)
    assert fused.ste_backward(x, two(grad, grad.clone()), 1.0) is None
    assert torch.equal(ReSTE()(two(x, x.clone())).a, torch_sign(x))
    fused.set_enabled(False)
    assert not fused.enabled() and fused.sign(x) is None and fused.ste_backward(x, grad, 1.0) is None
    fused.set_enabled(None)
    assert fused.enabled()
    assert fused.sign(torch.empty(0)).shape == (0,)


def test_environment_switch(monkeypatch):
    monkeypatch.setenv("RESTE_FUSED", "0")
    fused.set_enabled(None)  # read the environment again
    assert not fused.enabled()
    monkeypatch.setenv("RESTE_FUSED", "1")
    assert not fused.enabled()  # read once and kept: a hot path asks several times a step
    fused.set_enabled(None)
    assert fused.enabled()
    fused.set_enabled(False)  # the call wins over the environment
    assert not fused.enabled()
    monkeypatch.setenv("RESTE_FUSED", "of")  # neither on nor off: the default, with a warning (newuser3)
    fused.set_enabled(None)
    with pytest.warns(RuntimeWarning, match="RESTE_FUSED='of' is none of on .* taken as unset: on"):
        assert fused.enabled()
    fused.set_enabled(None)


# ----------------------------------------------------------------------- in training


@pytest.mark.parametrize("estimator", [ReSTE(o=2.3, o_end=2.3, schedule="constant"), STE(clip=1.2)])
def test_autograd_uses_the_kernels_and_agrees(estimator, monkeypatch):
    calls = []
    kernel = estimator._fused
    monkeypatch.setattr(type(estimator), "_fused", staticmethod(lambda *a, **k: calls.append(1) or kernel(*a, **k)))
    x0 = inputs(50_000)
    x0 = x0[~x0.isnan()]
    grad = torch.randn(x0.shape, generator=torch.Generator().manual_seed(6))
    results = []
    for flag in (True, False):
        fused.set_enabled(flag)
        x = x0.clone().requires_grad_()
        y = estimator(x)
        y.backward(grad)
        results.append((y.detach(), x.grad))
    assert len(calls) == 2  # called both times; returned None when switched off
    assert torch.equal(results[0][0], results[1][0])
    torch.testing.assert_close(results[0][1], results[1][1], rtol=2 * reste_bound(2.3, 1.5, 0.1), atol=0)


@pytest.mark.parametrize("parent", [STE, ReSTE])
def test_a_subclass_with_its_own_g_trains_with_it_not_the_parents_kernel(parent):
    """(review api #14) A subclass of STE or ReSTE overriding _g trained on the CPU with the parent's C kernel:
    its derivative() said one g, training used another (the Triton path already checked the class's _g)."""
    class Wide(parent):
        _g = staticmethod(lambda x, **p: (x.abs() <= 2.0).to(x.dtype))

    est = Wide()
    assert est._kernel_kind() is None
    fused.set_enabled(True)
    x = (3 * torch.randn(4096, generator=torch.Generator().manual_seed(0))).requires_grad_()
    grad = torch.randn(4096, generator=torch.Generator().manual_seed(1))  # a plain tensor: the kernels' case
    est(x).backward(grad)
    assert torch.equal(x.grad, grad * est.derivative(x.detach()))
    assert ((x.detach().abs() > 1.5) & (x.detach().abs() <= 2) & (x.grad != 0)).any()  # past either parent's window


def test_a_dispatch_mode_sees_every_op_the_kernels_step_aside():
    """(review api #15) Under FakeTensorMode (shape inference with real weights), the C sign wrote through the data
    pointer of a fake output, which has no memory: a segmentation fault. Any dispatch mode now sees PyTorch ops.
    In a process of its own: without the fix it crashes. Where the C kernels did not build, nothing steps aside and
    nothing can crash: skipped, not passed (review diff10, suggestion)."""
    if fused._lib_for(torch.randn(4)) is None:
        pytest.skip(f"the fused C kernels are not built here ({fused.error()})")
    code = """
import warnings
import torch, reste
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from reste import fused
fused.set_enabled(True)
for activations in (False, True):
    net = reste.binarize(nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4),
                                       nn.Flatten(), nn.Linear(16, 3)), activations=activations)
    net(torch.randn(2, 1, 6, 6))
    with FakeTensorMode(allow_non_fake_inputs=True):
        out = net(torch.empty(2, 1, 6, 6))
        out.sum().backward()
    print(tuple(out.shape))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["(2,", "3)", "(2,", "3)"]
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            return func(*args, **(kwargs or {}))

    with Count():
        assert fused.sign(torch.randn(4)) is None


def test_double_backward_keeps_the_graph():
    est = ReSTE(o=2.0, o_end=2.0, schedule="constant")
    x = torch.randn(64, requires_grad=True)
    grad = torch.randn(64, requires_grad=True)
    (gx,) = torch.autograd.grad(est(x), x, grad, create_graph=True)
    assert gx.requires_grad  # the PyTorch expression ran: differentiable in grad
    (gg,) = torch.autograd.grad(gx.sum(), grad)
    torch.testing.assert_close(gg, est.derivative(x.detach()))


def test_training_step_matches_the_pytorch_path():
    torch.manual_seed(0)
    model = models.create("resnet20_1w1a", estimator="reste")
    reste.set_progress(model, 90, 100)
    x = torch.randn(16, 3, 32, 32)
    y = torch.randint(0, 10, (16,))
    grads = []
    for flag in (True, False):
        fused.set_enabled(flag)
        model.zero_grad()
        F.cross_entropy(model(x), y).backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):  # float rounding only: tiny next to the gradient itself
        assert (a - b).norm() <= 1e-4 * b.norm()


# ------------------------------------------------------------------------ native


def test_native_library_without_a_compiler(tmp_path, monkeypatch):
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("RESTE_CACHE", str(tmp_path / "cache"))
    lib = NativeLibrary("probe", "int f(void) { return 1; }", {"f": ([], None)})
    assert lib.get() is None and "no-such-compiler" in lib.error()
    # and the estimators keep working on the PyTorch path
    monkeypatch.setattr(fused, "_LIB", NativeLibrary("fused", "syntax error", {}))
    assert fused.sign(torch.randn(4)) is None
    x = torch.randn(100, requires_grad=True)
    ReSTE(o=2.0, o_end=2.0, schedule="constant")(x).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_native_library_builds_and_caches(tmp_path, monkeypatch):
    import ctypes

    monkeypatch.setenv("RESTE_CACHE", str(tmp_path))
    src = "#include <stdint.h>\nint64_t twice(int64_t v) { return 2 * v; }\n"
    lib = NativeLibrary("probe", src, {"twice": ([ctypes.c_int64], ctypes.c_int64)})
    assert lib.get().twice(21) == 42 and lib.error() is None
    built = sorted(p.name for p in tmp_path.iterdir())
    assert len(built) == 1 and built[0].startswith("probe_") and built[0].endswith(".so")
    lib.reset()
    assert lib.get().twice(5) == 10  # loaded from the cache
    assert sorted(p.name for p in tmp_path.iterdir()) == built
    broken = NativeLibrary("broken", "this is not C", {})
    assert broken.get() is None and "could not compile" in broken.error()


@pytest.mark.skipif(not hasattr(os, "getuid"), reason="POSIX owners and modes")
def test_a_cached_library_others_could_have_planted_is_not_loaded(tmp_path, monkeypatch):
    """A shared $RESTE_CACHE: a library under the predictable name that any user may write, a link, or another
    user's file is not loaded (its code would run here); this user's own build is."""
    import ctypes

    monkeypatch.setenv("RESTE_CACHE", str(tmp_path))
    src = "#include <stdint.h>\nint64_t thrice(int64_t v) { return 3 * v; }\n"
    lib = NativeLibrary("planted", src, {"thrice": ([ctypes.c_int64], ctypes.c_int64)})
    assert lib.get().thrice(2) == 6
    (built,) = tmp_path.glob("planted_*.so")
    assert built.stat().st_mode & 0o777 == 0o755
    os.chmod(built, 0o777)  # any user could have replaced it: built again, over it
    lib.reset()
    assert lib.get().thrice(3) == 9 and built.stat().st_mode & 0o777 == 0o755
    from reste import native

    def no_compiler(*args, **kwargs):
        raise OSError("no compiler here")

    monkeypatch.setattr(native.subprocess, "run", no_compiler)  # where it cannot be built again: refused
    os.chmod(built, 0o777)
    lib.reset()
    assert lib.get() is None and "may be written by any user, so it is not loaded" in lib.error()
    os.chmod(built, 0o755)
    lib.reset()
    assert lib.get().thrice(4) == 12  # this user's own build loads without a compiler
    monkeypatch.setattr(os, "getuid", lambda: os.lstat(built).st_uid + 1)  # as seen by another user
    lib.reset()
    assert lib.get() is None and "belongs to another user" in lib.error()


def _probe(name: str, value: int, function: str = "value") -> NativeLibrary:
    from reste import native

    return NativeLibrary(name, f"int {function}(void) {{ return {value}; }}\n", {function: ([], native.I32)})


def _no_compiler(monkeypatch) -> None:
    """Where the library cannot be built again: a refused cache file leaves it unavailable, with the reason."""
    from reste import native

    def run(*args, **kwargs):
        raise OSError("no compiler here")

    monkeypatch.setattr(native.subprocess, "run", run)


@pytest.mark.skipif(not hasattr(os, "getuid"), reason="POSIX owners and modes")
@pytest.mark.parametrize("planted,why", [("link", "is a symbolic link"), ("folder", "is not a regular file")])
def test_a_cached_library_that_is_not_a_file_of_its_own_is_not_loaded(tmp_path, monkeypatch, planted, why):
    """A link under the library's name (to a library that is this user's own, even) or something else than a file
    is not loaded; a build then replaces it."""
    monkeypatch.setenv("RESTE_CACHE", str(tmp_path))
    lib = _probe("linked", 5)
    assert lib.get().value() == 5
    (built,) = tmp_path.glob("linked_*.so")
    os.replace(built, tmp_path / "elsewhere.so")
    if planted == "link":
        built.symlink_to(tmp_path / "elsewhere.so")
    else:
        built.mkdir()
    lib.reset()
    with monkeypatch.context() as m:
        _no_compiler(m)
        assert lib.get() is None and f"{why}, so it is not loaded" in lib.error()
    if planted == "link":
        lib.reset()
        assert lib.get().value() == 5 and not built.is_symlink()


@pytest.mark.skipif(not hasattr(os, "getuid"), reason="POSIX owners and modes")
def test_a_cached_library_its_group_may_write_is_loaded_only_where_the_group_is_the_users_own(tmp_path, monkeypatch):
    """A group-writable library: refused, unless the group is the user's private group (a umask of 002 on a
    system with user private groups makes this user's files group-writable, and no one else is in the group)."""
    from reste import native

    monkeypatch.setenv("RESTE_CACHE", str(tmp_path))
    lib = _probe("grouped", 6)
    assert lib.get().value() == 6
    (built,) = tmp_path.glob("grouped_*.so")
    os.chmod(built, 0o775)
    _no_compiler(monkeypatch)
    monkeypatch.setattr(native, "_private_group", lambda gid: False)
    lib.reset()
    assert lib.get() is None and f"may be written by its group (gid {built.stat().st_gid})" in lib.error()
    monkeypatch.setattr(native, "_private_group", lambda gid: True)
    lib.reset()
    assert lib.get().value() == 6


@pytest.mark.skipif(not hasattr(os, "getuid"), reason="POSIX users and groups")
def test_the_users_private_group_is_told_from_a_shared_one(monkeypatch):
    import grp
    import pwd

    from reste import native

    user = pwd.struct_passwd(("me", "x", 1000, 1000, "", "/home/me", "/bin/sh"))
    groups = {1000: ("me", []), 1001: ("me", ["me"]), 100: ("users", ["me", "you"]), 1002: ("team", [])}
    monkeypatch.setattr(os, "getuid", lambda: 1000)
    monkeypatch.setattr(pwd, "getpwuid", lambda uid: user)
    monkeypatch.setattr(grp, "getgrgid", lambda gid: grp.struct_group((*groups[gid][:1], "x", gid, groups[gid][1])))
    assert native._private_group(1000)
    assert not native._private_group(1001)  # not the login group
    user = pwd.struct_passwd(("me", "x", 1000, 100, "", "/home/me", "/bin/sh"))
    assert not native._private_group(100)  # the login group, shared
    user = pwd.struct_passwd(("me", "x", 1000, 1002, "", "/home/me", "/bin/sh"))
    assert not native._private_group(1002)  # named otherwise


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="loads through /proc/self/fd")
def test_a_library_renamed_over_the_cached_one_after_its_check_is_not_the_one_loaded(tmp_path, monkeypatch):
    """The race of a cache folder others may write (security review 2, finding 5): a library renamed over the
    cached one between its check and its load. The file checked, through its descriptor, is the file loaded."""
    from reste import native

    monkeypatch.setenv("RESTE_CACHE", str(tmp_path / "built"))
    mine, other = _probe("raced", 1), _probe("planted", 2)
    assert mine.get().value() == 1 and other.get().value() == 2
    (tmp_path / "shared").mkdir()
    for built in (tmp_path / "built").glob("*.so"):  # files not loaded yet (glibc would answer with those)
        shutil.copy2(built, tmp_path / "shared")
    monkeypatch.setenv("RESTE_CACHE", str(tmp_path / "shared"))
    (cached,), (planted,) = (tmp_path / "shared").glob("raced_*.so"), (tmp_path / "shared").glob("planted_*.so")
    check = native._untrusted

    def check_then_swap(info):
        why = check(info)
        if planted.exists() and stat.S_ISREG(info.st_mode):  # the library's check, not its folder's
            os.replace(planted, cached)  # what another user could do in a folder they may write
        return why

    monkeypatch.setattr(native, "_untrusted", check_then_swap)
    _no_compiler(monkeypatch)
    mine.reset()
    assert mine.get().value() == 1 and not planted.exists()


@pytest.mark.skipif(not hasattr(os, "getuid"), reason="POSIX owners and modes")
def test_without_proc_the_checked_library_is_loaded_by_its_path(tmp_path, monkeypatch):
    """macOS has no /proc/self/fd: the file is checked as on Linux, then loaded by its path."""
    from reste import native

    monkeypatch.setenv("RESTE_CACHE", str(tmp_path))
    exists = os.path.exists
    monkeypatch.setattr(native.os.path, "exists", lambda p: not str(p).startswith("/proc/self/fd/") and exists(p))
    lib = _probe("pathed", 3)
    assert lib.get().value() == 3
    (built,) = tmp_path.glob("pathed_*.so")
    assert lib.get()._name == str(built)
    os.chmod(built, 0o777)
    _no_compiler(monkeypatch)
    lib.reset()
    assert lib.get() is None and "may be written by any user, so it is not loaded" in lib.error()


def test_libraries_loaded_in_turn_are_each_their_own(tmp_path, monkeypatch):
    """glibc knows a library by the name it was loaded under: a second library loaded through a reused
    /proc/self/fd/N would be the first one again (and lack its functions)."""
    monkeypatch.setenv("RESTE_CACHE", str(tmp_path))
    first, second = _probe("first", 1, "alpha"), _probe("second", 2, "beta")
    assert first.get().alpha() == 1 and second.get().beta() == 2  # built
    _no_compiler(monkeypatch)
    first.reset()
    second.reset()
    assert first.get().alpha() == 1 and second.get().beta() == 2  # loaded from the cache, one after the other


@pytest.mark.parametrize("total,threads,align,work,parts", [
    (10, 4, 1, None, 1),                 # too little work per piece
    (1_000_000, 2, 1, None, 2),
    (1_000_003, 3, 4, None, 3),
    (0, 2, 1, None, 1),
    (5, 8, 1, 10_000_000, 5),            # never more pieces than items
    (20, 8, 8, 10_000_000, 2),           # nor than whole blocks of align
    (1_000_000, 1, 1, None, 1),
])
def test_split_parts(total, threads, align, work, parts):
    assert split_parts(total, threads, work=work, align=align) == parts


def test_an_unwritable_cache_builds_the_kernels_elsewhere(tmp_path, monkeypatch):
    """A read-only home or a bad $RESTE_CACHE: the kernels are built in this user's own temporary folder."""
    from reste import native

    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("RESTE_CACHE", str(tmp_path / "a-file"))
    monkeypatch.setattr(native.tempfile, "gettempdir", lambda: str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    lib = native.NativeLibrary("probe", "int probe(void) { return 7; }", {"probe": ([], native.I32)})
    assert lib.get() is not None and lib.get().probe() == 7
    assert any(p.name.startswith("probe_") for p in (tmp_path / "tmp").glob("reste-cache-*/*.so"))


@pytest.mark.skipif(not hasattr(os, "getuid"), reason="POSIX owners and modes")
def test_a_cache_folder_others_may_write_is_not_used(tmp_path, monkeypatch):
    """A $RESTE_CACHE shared with a group (security review 2, finding 5): another user could rename a library of
    theirs into it. It is not used: a warning says so, and the kernels are built in this user's own temporary
    folder and work."""
    from reste import native

    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o775)
    monkeypatch.setenv("RESTE_CACHE", str(shared))
    monkeypatch.setattr(native.tempfile, "gettempdir", lambda: str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(native, "_private_group", lambda gid: False)
    lib = _probe("shared", 8)
    with pytest.warns(RuntimeWarning, match=f"{shared} may be written by its group .* set \\$RESTE_CACHE to a folder"):
        assert lib.get().value() == 8
    assert not list(shared.iterdir()) and list((tmp_path / "tmp").glob("reste-cache-*/shared_*.so"))


@pytest.mark.skipif(not hasattr(os, "getuid"), reason="POSIX owners and modes")
def test_a_cache_folder_inside_a_folder_others_may_write_is_not_used(tmp_path, monkeypatch):
    """rev5 5: $RESTE_CACHE of the user's own, but in a project folder a group may write (not sticky): another
    member could rename the cache folder away and put one of theirs in its place between the check and the build.
    It is not used (a warning, the private fallback); a sticky folder above (/tmp) is fine."""
    from reste import native

    project = tmp_path / "project"
    (project / "cache").mkdir(parents=True)
    os.chmod(project / "cache", 0o700)
    monkeypatch.setattr(native.tempfile, "gettempdir", lambda: str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(native, "_private_group", lambda gid: False)
    monkeypatch.setenv("RESTE_CACHE", str(project / "cache"))
    os.chmod(project, 0o775)
    with pytest.warns(RuntimeWarning, match=f"{project / 'cache'} lies in {project}, which may be written by its "
                                            "group"):
        assert native.writable_cache() == tmp_path / "tmp" / f"reste-cache-{os.getuid()}"
    os.chmod(project, 0o1777)  # sticky: only an entry's owner may rename it
    assert native.writable_cache() == project / "cache"
    os.chmod(project, 0o755)
    assert native.writable_cache() == project / "cache"


@pytest.mark.skipif(not hasattr(os, "getuid"), reason="POSIX owners and modes")
@pytest.mark.parametrize("mode,private", [(0o755, False), (0o700, False), (0o775, True)])
def test_a_cache_folder_of_the_users_own_is_used_as_before(tmp_path, monkeypatch, mode, private):
    """$RESTE_CACHE at a folder of the user's own (0o775 where the group is the user's private one, as a umask
    of 002 makes it): used, without a word."""
    import warnings

    from reste import native

    mine = tmp_path / "home" / "cache"
    mine.mkdir(parents=True)
    os.chmod(mine, mode)
    monkeypatch.setenv("RESTE_CACHE", str(mine))
    monkeypatch.setattr(native, "_private_group", lambda gid: private)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _probe("own", 9).get().value() == 9
    assert list(mine.glob("own_*.so"))


@pytest.mark.skipif(not hasattr(os, "getuid"), reason="POSIX modes")
def test_a_cache_folder_reste_makes_is_private_whatever_the_umask(tmp_path, monkeypatch):
    from reste import native

    monkeypatch.setenv("RESTE_CACHE", str(tmp_path / "new" / "cache"))
    old = os.umask(0o002)
    try:
        assert native.writable_cache() == tmp_path / "new" / "cache"
    finally:
        os.umask(old)
    assert (tmp_path / "new" / "cache").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "new").stat().st_mode & 0o777 == 0o700  # and the folders made above it (review install1 #4)


@pytest.mark.skipif(not hasattr(os, "getuid"), reason="POSIX owners and modes")
def test_untrusted_path(tmp_path, monkeypatch):
    from reste import native

    folder = tmp_path / "f"
    folder.mkdir()
    (tmp_path / "link").symlink_to(folder)
    monkeypatch.setattr(native, "_private_group", lambda gid: False)
    for mode, why in [(0o755, None), (0o700, None), (0o777, "may be written by any user"),
                      (0o1777, "may be written by any user"),  # sticky: others may still add files under any name
                      (0o770, "may be written by its group"), (0o1770, "may be written by its group")]:
        os.chmod(folder, mode)
        said = native.untrusted_path(folder)
        assert said is None if why is None else said.startswith(why), (oct(mode), said)
    os.chmod(folder, 0o755)
    assert native.untrusted_path(tmp_path / "link") is None  # a link to a folder of the user's own: the folder
    assert native.untrusted_path(tmp_path / "link", follow=False) == "is a symbolic link"
    monkeypatch.setattr(os, "getuid", lambda: folder.stat().st_uid + 1)
    assert native.untrusted_path(folder).startswith("belongs to another user")


def test_a_run_without_the_kernels_says_so(tmp_path, monkeypatch):
    from reste import engine
    from reste.config import TrainConfig

    monkeypatch.setattr(fused, "available", lambda: False)
    monkeypatch.setattr(fused, "error", lambda: "no C compiler found (set $CC)")
    lines = []
    engine.train(TrainConfig(epochs=1, threads=1), tmp_path / "r", progress=False, log=lines.append)
    assert any("the fused C kernels are unavailable (no C compiler found" in line for line in lines)


_UBSAN_CALL = """
import ctypes, math, sys
lib = ctypes.CDLL(sys.argv[1])
F = ctypes.c_float
values = [math.nan, -math.nan, math.inf, -math.inf, 0.0, -0.0, 0.1, 1.5, 1.6, 1e-45, 3e38]
n = len(values)
x, g, out = (F * n)(*values), (F * n)(*[1.0] * n), (F * n)()
lib.reste_reste_bwd_f32.argtypes = [ctypes.c_void_p] * 3 + [F] * 5 + [ctypes.c_int64, ctypes.c_int32]
lib.reste_reste_bwd_f32(x, g, out, -2.0 / 3.0, 1.0 / 3.0, 1.5, 0.1, 0.1 ** (1 / 3) / 0.1, n, 1)
print(" ".join(repr(v) for v in out))
"""


@pytest.mark.skipif(shutil.which("gcc") is None, reason="no gcc")
def test_the_reste_kernel_runs_clean_under_ubsan_on_nan_and_the_edges(tmp_path):
    """The kernel's bit tricks (log2 from the exponent bits, 2^k put in them, exp2_mid's float-to-int rounding)
    must stay defined C on every input: built with UBSan, float-cast-overflow included and every report fatal, it
    runs on NaN, +-inf, +-0, subnormal and huge inputs and keeps NaN where x is NaN. (A NaN x never reaches the
    conversion: log2_pos reads a NaN's bits as a finite number, and the result is replaced by x after.)"""
    src = tmp_path / "fused.c"
    src.write_text(fused._SOURCE.read_text(encoding="utf-8"), encoding="utf-8")
    lib = tmp_path / "fused_ubsan.so"
    proc = subprocess.run(["gcc", "-O2", "-ffp-contract=off", "-fsanitize=undefined,float-cast-overflow",
                           "-fno-sanitize-recover=all", "-fPIC", "-shared", "-o", str(lib), str(src)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"gcc cannot build with -fsanitize=undefined here: {proc.stderr.strip()[-200:]}")
    run = subprocess.run([sys.executable, "-c", _UBSAN_CALL, str(lib)], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0 and "runtime error" not in run.stderr, run.stderr
    out = [float(v) for v in run.stdout.split()]
    assert math.isnan(out[0]) and math.isnan(out[1]) and out[2:4] == [0.0, 0.0], out  # NaN kept; g(+-inf) = 0
    assert out[4] == out[5] == out[9] == pytest.approx(0.1 ** (1 / 3) / 0.1) and out[8] == 0.0, out


def test_a_model_traced_by_torch_jit_computes_its_signs():
    """The kernels write through data_ptr(), which torch.jit.trace does not record: under no_grad a traced
    binary model held the trace's empty output buffer (values like 1e29), so tracing must take PyTorch's ops."""
    torch.manual_seed(0)
    model = reste.binarize(torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.Conv2d(8, 8, 3, padding=1),
        torch.nn.Flatten(), torch.nn.Linear(8 * 8 * 8, 4))).eval()
    x, other = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        traced = torch.jit.trace(model, x)
        torch.testing.assert_close(traced(other), model(other))


def test_functorch_wrapped_tensors_fall_through():
    x = torch.randn(4, 6)
    got = torch.vmap(estimators.sign)(x)  # a batched tensor has no data pointer
    assert torch.equal(got, torch_sign(x))


def test_with_no_home_to_be_found_the_cache_is_not_a_folder_named_tilde(monkeypatch, tmp_path):
    """(review portable #9) HOME unset and a uid without a passwd entry: expanduser("~") stays "~", and the cache
    (the compiled kernels, the digits split) was made under ./~/.cache of whatever folder the command ran in."""
    import tempfile
    from pathlib import Path

    from reste import native

    for name in ("RESTE_CACHE", "XDG_CACHE_HOME", "HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(os.path, "expanduser", lambda path: path)  # what it gives when no home can be found
    monkeypatch.chdir(tmp_path)
    folder = native.cache_dir()
    assert folder.is_absolute() and folder.parent == Path(tempfile.gettempdir())
    assert native.writable_cache() == folder and not (tmp_path / "~").exists()


# ------------------------------------------------------------------------ a cache that cannot serve (review install1)

_LOAD_PROBE = """
from reste.native import I32, NativeLibrary

print(NativeLibrary("probe", "int probe(void) { return 7; }", {"probe": ([], I32)}).get().probe())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="an ELF library and /proc/self/fd")
def test_a_cached_library_cut_short_is_built_again_not_loaded(tmp_path):
    """(review install1 #1, High) A library cut short with its headers whole (a crash after its build, a copy cut
    short) was mapped by the loader: the process died with SIGBUS, and so did every later command. It is built
    again instead. In subprocesses: without the check the process dies (and one that has the library loaded must
    not see it cut)."""
    script = tmp_path / "t.py"
    script.write_text(_LOAD_PROBE)
    for keep in (9000, 2000):  # (the whole file is about 15 kB: past its headers, before its end)
        env = {**os.environ, "RESTE_CACHE": str(tmp_path / f"cache{keep}")}
        for cut in (False, True):
            if cut:
                so = next((tmp_path / f"cache{keep}").glob("probe_*.so"))
                assert so.stat().st_size > keep
                with open(so, "r+b") as f:
                    f.truncate(keep)
            proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=env)
            assert proc.returncode == 0 and proc.stdout == "7\n", (keep, cut, proc.returncode, proc.stderr[-500:])
        assert so.stat().st_size > keep  # built again, over it


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="an ELF library")
def test_cut_short_tells_a_whole_library_from_one_cut_anywhere(tmp_path, monkeypatch):
    from reste import native

    monkeypatch.setenv("RESTE_CACHE", str(tmp_path / "cache"))
    assert NativeLibrary("probe", "int probe(void) { return 7; }", {"probe": ([], native.I32)}).get() is not None
    whole = next((tmp_path / "cache").glob("probe_*.so")).read_bytes()
    plain = tmp_path / "plain"
    plain.write_bytes(b"not a library at all" * 10)

    def cut_short(path):
        fd = os.open(path, os.O_RDONLY)
        try:
            return native._cut_short(fd, os.fstat(fd).st_size)
        finally:
            os.close(fd)

    assert not cut_short(plain)  # (the loader refuses it with an error of its own)
    part = tmp_path / "part.so"
    for size in (len(whole), len(whole) + 7):  # (bytes after the end change nothing)
        part.write_bytes((whole + bytes(7))[:size])
        assert not cut_short(part), size
    for size in (len(whole) - 1, len(whole) // 2, 100, 64, 10):
        part.write_bytes(whole[:size])
        assert cut_short(part) == (size >= 4), size  # (under 4 bytes it is no ELF file)
    wide = whole[4] == 2
    entry_size = 54 if wide else 42  # (e_phentsize: too small for an entry, review diff25 #3: struct.error)
    one = (1).to_bytes(2, "little" if whole[5] == 1 else "big")
    part.write_bytes(whole[:entry_size] + one + whole[entry_size + 2:])
    assert cut_short(part)


@pytest.mark.skipif(not hasattr(os, "getuid"), reason="POSIX")
def test_a_library_that_does_not_load_is_named_by_its_file(tmp_path):
    """(review install1, suggestion 2) dlopen's error named /proc/self/fd/3, which tells the user nothing."""
    from reste import native

    lib = tmp_path / "x.so"
    lib.write_bytes(b"\x7fELF" + bytes(60))  # no library: the loader refuses it
    lib.chmod(0o755)
    with pytest.raises(OSError) as err:
        native._load(lib)
    assert str(err.value).startswith(f"{lib}: ") and "/proc/self/fd" not in str(err.value)


def test_a_cache_on_a_noexec_file_system_builds_the_kernels_in_the_temporary_folder(tmp_path, monkeypatch):
    """(review install1 #2) A cache on a file system mounted noexec: each process built the kernels there again
    and could load none of them. The temporary folder serves instead (with a warning where $RESTE_CACHE named the
    folder: review diff25, suggestion 4); where it is noexec too, the error says so and what to do."""
    import warnings

    from reste import native

    cache, temp = tmp_path / "cache", tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.delenv("RESTE_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    monkeypatch.setattr(native.tempfile, "gettempdir", lambda: str(temp))
    noexec = {cache / "reste"}
    monkeypatch.setattr(native, "_noexec", lambda f: "lies on a file system mounted noexec" if f in noexec else None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert native.writable_cache().parent == temp  # (the default folder: no word)
    monkeypatch.setenv("RESTE_CACHE", str(cache))
    noexec.add(cache)
    with pytest.warns(RuntimeWarning, match=r"cache lies on a file system mounted noexec, so reste keeps its cache in"):
        got = native.writable_cache()
    assert got.parent == temp and got.name.startswith("reste-cache-")
    lib = native.NativeLibrary("probe", "int probe(void) { return 7; }", {"probe": ([], native.I32)})
    with pytest.warns(RuntimeWarning, match="mounted noexec"):
        assert lib.get().probe() == 7 and list(got.glob("probe_*.so")) and not list(cache.glob("*.so"))
    noexec.add(got)
    with pytest.raises(OSError, match=r"mounted noexec, and so does .*reste-cache-.*set \$RESTE_CACHE"):
        native.writable_cache()


def test_an_unwritable_cache_named_is_said_and_no_cache_lands_in_the_current_folder(tmp_path, monkeypatch):
    """(review install2) A $RESTE_CACHE that cannot be written was passed over without a word (a noexec one is
    said); and where no temporary folder could be written, Python's last resort, the current folder, got a
    reste-cache-0 of compiled libraries in the user's project: the kernels then fall back, unless $TMPDIR names it."""
    from reste import native

    temp = tmp_path / "tmp"
    temp.mkdir()
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("RESTE_CACHE", str(blocker / "cache"))  # under a file: cannot be made
    monkeypatch.setattr(native.tempfile, "gettempdir", lambda: str(temp))
    with pytest.warns(RuntimeWarning, match=r"^\$RESTE_CACHE .*file/cache cannot be written, so reste keeps its "
                                            r"cache in .*reste-cache-\w+ instead; set \$RESTE_CACHE to a folder you "
                                            r"can write"):
        assert native.writable_cache().parent == temp
    project = tmp_path / "project"
    project.mkdir()
    monkeypatch.chdir(project)
    monkeypatch.setattr(native.tempfile, "gettempdir", lambda: str(project))  # Python's last resort
    for name in ("TMPDIR", "TEMP", "TMP"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(OSError, match=r"no temporary folder can be written .*; set \$TMPDIR or \$RESTE_CACHE"):
        native._private_temp()
    assert not list(project.iterdir())
    monkeypatch.setenv("TMPDIR", str(project))  # named: meant
    assert native._private_temp().parent == project


def test_noexec_reads_the_mount_flag(tmp_path, monkeypatch):
    from reste import native

    if not hasattr(os, "statvfs") or not hasattr(os, "ST_NOEXEC"):
        pytest.skip("no statvfs")
    assert native._noexec(tmp_path) is None or "noexec" in native._noexec(tmp_path)
    real = os.statvfs(tmp_path)
    for flags, said in ((real.f_flag | os.ST_NOEXEC, True), (real.f_flag & ~os.ST_NOEXEC, False)):
        fake = type("V", (), {"f_flag": flags})()
        monkeypatch.setattr(native.os, "statvfs", lambda f, fake=fake: fake)
        assert (native._noexec(tmp_path) is not None) == said


def test_a_relative_xdg_cache_home_is_ignored(tmp_path, monkeypatch):
    """(review install1, suggestion 4) The XDG rule: a relative $XDG_CACHE_HOME is ignored; it sent the cache to
    the temporary folder, lost at the next boot."""
    from reste import native

    monkeypatch.delenv("RESTE_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", "relcache")
    assert native.cache_dir() == tmp_path / ".cache" / "reste"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert native.cache_dir() == tmp_path / "xdg" / "reste"


def test_a_build_folder_a_killed_build_left_is_removed_later(tmp_path, monkeypatch):
    """(review install1, suggestion 3) A process killed while compiling left its build folder in the cache for
    good. One older than an hour is removed at the next build; a younger one may be another process's build."""
    import time

    from reste import native

    monkeypatch.setenv("RESTE_CACHE", str(tmp_path))
    old, young = tmp_path / ".build-probe-old", tmp_path / ".build-probe-young"
    for folder in (old, young):
        folder.mkdir()
        (folder / "probe.c").write_text("int x;")
    past = time.time() - 2 * 3600
    os.utime(old, (past, past))
    other = tmp_path / "tmp-not-ours"
    other.mkdir()
    os.utime(other, (past, past))
    assert NativeLibrary("probe", "int probe(void) { return 7; }", {"probe": ([], native.I32)}).get() is not None
    assert not old.exists() and young.exists() and other.exists()
    assert {p.name for p in tmp_path.iterdir() if p.name.startswith(".build-")} == {young.name}


def test_importing_the_command_builds_no_kernel(tmp_path):
    """(review install1, suggestion 1) Each estimator's registration tried its hooks on a float32 tensor, which the
    fused C kernels take: `reste --version` compiled them."""
    cache = tmp_path / "cache"
    proc = subprocess.run([sys.executable, "-m", "reste", "--version"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "RESTE_CACHE": str(cache)})
    assert proc.returncode == 0, proc.stderr
    assert not cache.exists() or not list(cache.glob("*.so"))
