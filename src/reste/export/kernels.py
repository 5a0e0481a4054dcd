"""Binary convolution on packed bits: sign -> pack -> (im2col) -> XOR/popcount GEMM.

For +-1 vectors a and w of length K stored as bits (1 = -1),
``dot(a, w) = K - 2 * popcount(a XOR w)``. A binary convolution is such a GEMM
between the rows of an im2col matrix of the packed input signs and the packed
weight rows:

* layout: activations are NHWC; the sign bits of a pixel's C channels are packed
  into ``Cb = ceil(C / 8)`` bytes (little bit order). From 64 channels on
  (``runtime.IMPLICIT_MIN_CHANNELS``) each pixel is zero-filled to whole words and
  the C kernel reads the windows in place (implicit GEMM: a row of kernel taps is
  ``kw`` contiguous pixels). Below that, the C kernel reads each kernel row (``kw * Cb``
  bytes) in place as whole words too, into the next pixel's bytes; the weights are 0
  there, so those bits add the activation's own popcount to every channel's count, and
  the kernel subtracts it (``Rows.tail``; ``runtime.NARROW_IN_PLACE`` says when). Else an
  im2col row is the ``kh * kw`` pixels of a window, ``kh * kw * Cb`` bytes, zero-filled
  to a multiple of 8 bytes. Weights are packed the same way, so unused bits are 0 in
  both operands and add nothing to the popcount.
* zero padding: the training model pads the *signed* input with 0, so a padded
  position adds nothing to the dot product. The packed input is padded with bit 0
  (= +1), which adds ``sum_c w[o, c, i, j]`` for every kernel position (i, j) that
  falls in the padding; ``padding_correction`` precomputes that sum per output
  position and channel (it depends on the position, not the image) and the GEMM
  subtracts it, so the result is exact.
* epilogue: ``y = alpha[o] * (K - 2 popcount - corr[p, o]) + b[o]``, optionally
  followed by a per-channel affine, after a ReLU (the conv -> ReLU -> BN of every
  binary block) or straight on y (a conv -> BN), and a residual add, in one pass.
  Or, where the output only feeds another binary conv, its sign bits straight into
  that conv's packed input: the sign of the float32 epilogue is a step function of
  the integer dot product, so ``sign_thresholds`` turns it into an integer interval
  per channel, found on the same float32 expression, and the bits are exactly those
  of the float path. Or both: the float output and its sign bits (value < 0) in the
  next layer's packed layout, in one pass (a residual block's output, which the next
  block's conv and its residual add both read).

Two backends compute the same integers: ``"numpy"`` (portable; ``np.bitwise_count``)
and ``"c"``, compiled on first use by :mod:`reste.native` (the system C compiler,
cached under ``~/.cache/reste``) in one variant per instruction set: ``scalar``
(``popcnt`` per word), ``avx2`` (nibble-table popcount of bytes, summed per 64-bit
lane with SAD), ``avx512`` (``VPOPCNTDQ``: XOR, popcount and add cover 512 binary
multiply-accumulates), ``avx512bw`` (AVX-512 without ``VPOPCNTDQ``, as Skylake-SP to
Cooper Lake: the nibble table in 512-bit registers, XOR and masking in one ``VPTERNLOG``)
and ``neon`` on AArch64 (``vcnt``). Each variant is built
with explicit target flags (never ``-march=native``), and the one to run is picked
at load time from the CPU's features (``cpu_features``, ``__builtin_cpu_supports``),
so a cached build never runs on a CPU that lacks its instructions;
``$RESTE_PACKED_ISA`` (or ``isa=``) forces one (``choose_isa``). The kernels
compute 16 output channels side by side (one 64-bit lane per channel, weights
interleaved by ``CKernels.block_weights``) for 8 (AVX-512), 4 (AVX-512 BW, AVX2), 2 (NEON) or
1 (scalar) output positions at a time, so no horizontal sums are needed. Every
variant gives the same integers, and the float epilogue is compiled with
``-ffp-contract=off``, so it rounds the same way in all of them. ``"auto"`` takes
``"c"`` when it builds and ``"numpy"`` otherwise. The C functions are called through
``ctypes``; a large job is split over ``threads`` (default ``torch.get_num_threads()`` at each call) by
batch images or output rows (whole row blocks), run in parallel in C on the worker threads
of PyTorch's own OpenMP runtime where it is found, else on POSIX threads (``choose_pool``).
"""

from __future__ import annotations

import ctypes
import functools
import math
import numbers
import os
import platform
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import UsageError
from ..native import NativeLibrary, c_source, split_parts

BACKENDS = ("auto", "c", "numpy")

# ----------------------------------------------------------------------- weights


def pack_rows(bits: np.ndarray) -> np.ndarray:
    """Pack a boolean (R, ..., C) array (True = -1) along C into bytes (little bit order),
    flatten each row and zero-fill it to a multiple of 8 bytes: (R, W) uint64 words."""
    packed = np.packbits(bits, axis=-1, bitorder="little")
    rows = packed.reshape(packed.shape[0], -1)
    width = -(-rows.shape[1] // 8) * 8
    out = np.zeros((rows.shape[0], width), dtype=np.uint8)
    out[:, : rows.shape[1]] = rows
    return out.view(np.uint64)


def conv_weight_words(signs: np.ndarray, pixel_bytes: int | None = None,
                      kernel_rows: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Packed rows (O, W) uint64 of a +-1 conv weight (O, C, kh, kw), in (kh, kw, C) order, each
    pixel's ``ceil(C / 8)`` bytes zero-filled to ``pixel_bytes`` (the activation's layout), and
    ``S[o, i*kw + j] = sum_c w[o, c, i, j]`` (int32) for the padding correction. The row is
    zero-filled to whole words at its end, or, with ``kernel_rows``, at the end of each kernel row
    (its kw pixels): the segments of a window read in place (:class:`Rows`)."""
    neg = np.ascontiguousarray(signs.transpose(0, 2, 3, 1)) < 0
    s = signs.sum(axis=1, dtype=np.int32).reshape(signs.shape[0], -1)
    packed = np.packbits(neg, axis=-1, bitorder="little")
    if pixel_bytes is not None and pixel_bytes > packed.shape[-1]:
        packed = np.pad(packed, ((0, 0), (0, 0), (0, 0), (0, pixel_bytes - packed.shape[-1])))
    o, kh = packed.shape[:2]
    rows = packed.reshape(o, kh, -1) if kernel_rows else packed.reshape(o, 1, -1)
    width = -(-rows.shape[2] // 8) * 8
    out = np.zeros((o, rows.shape[1], width), dtype=np.uint8)
    out[:, :, : rows.shape[2]] = rows
    return out.reshape(o, -1).view(np.uint64), np.ascontiguousarray(s)


def padding_correction(
    s: np.ndarray, kernel: tuple[int, int], in_hw: tuple[int, int], pad: tuple[int, int, int, int],
    stride: tuple[int, int], dil: tuple[int, int], out_hw: tuple[int, int],
) -> np.ndarray | None:
    """(OH*OW, O) int32: the sum of the weights that fall on zero padding at each output
    position (what packing the padding as +1 adds); ``None`` when no window reaches the padding."""
    (kh, kw), (h, w), (pt, _, pl, _), (sh, sw), (dh, dw), (oh, ow) = kernel, in_hw, pad, stride, dil, out_hw
    ih = np.arange(oh)[:, None] * sh - pt + np.arange(kh)[None, :] * dh
    iw = np.arange(ow)[:, None] * sw - pl + np.arange(kw)[None, :] * dw
    vh = (ih >= 0) & (ih < h)
    vw = (iw >= 0) & (iw < w)
    padded = ~(vh[:, None, :, None] & vw[None, :, None, :])  # (oh, ow, kh, kw)
    if not padded.any():
        return None
    return np.ascontiguousarray(padded.reshape(oh * ow, kh * kw).astype(np.int32) @ s.T)


# ------------------------------------------------------------------ numpy backend


_BYTE_COUNTS = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def _bitcount(words: np.ndarray, out: np.ndarray) -> None:
    """out = popcount(words) (uint64 -> uint8); a byte table where NumPy < 2 lacks bitwise_count."""
    if hasattr(np, "bitwise_count"):
        np.bitwise_count(words, out=out)
    else:
        np.sum(_BYTE_COUNTS[words.view(np.uint8)].reshape(*words.shape, 8), axis=-1, dtype=np.uint8, out=out)


class NumpyKernels:
    """The reference backend: NumPy only."""

    name = "numpy"

    def pack_signs(self, x: np.ndarray, pad: tuple[int, int, int, int]) -> np.ndarray:
        """(N, H, W, C) float -> (N, H+pt+pb, W+pl+pr, Cb) uint8 sign bits, zero (= +1) padding."""
        pt, pb, pl, pr = pad
        packed = np.packbits(x < 0, axis=-1, bitorder="little")
        if pt or pb or pl or pr:
            packed = np.pad(packed, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
        return packed

    def im2col(self, xp: np.ndarray, kernel: tuple[int, int], stride: tuple[int, int], dil: tuple[int, int],
               out_hw: tuple[int, int], row_bytes: int) -> np.ndarray:
        n, _, _, cb = xp.shape
        (kh, kw), (sh, sw), (dh, dw), (oh, ow) = kernel, stride, dil, out_hw
        unit = next(u for u in (8, 4, 2, 1) if cb % u == 0)
        dt = np.dtype(f"<u{unit}")
        src = np.ascontiguousarray(xp).view(dt)
        s0, s1, s2, s3 = src.strides
        windows = np.lib.stride_tricks.as_strided(
            src, (n, oh, ow, kh, kw, cb // unit), (s0, s1 * sh, s2 * sw, s1 * dh, s2 * dw, s3), writeable=False)
        cols = np.zeros((n, oh, ow, row_bytes), dtype=np.uint8)
        c0, c1, c2, _ = cols.strides
        dst = np.lib.stride_tricks.as_strided(cols.view(dt), (n, oh, ow, kh, kw, cb // unit),
                                              (c0, c1, c2, kw * cb, cb, unit))
        np.copyto(dst, windows)
        return cols.reshape(n * oh * ow, row_bytes)

    def gemm(self, a: np.ndarray, b: np.ndarray, k: int, corr: np.ndarray | None,
             epilogue: "Epilogue") -> np.ndarray:
        """(M, O) float32 = ``epilogue`` of K - 2 popcount(a[m] ^ b[o]) - corr[m % P, o]."""
        m, words = a.shape
        o = b.shape[0]
        out = np.empty((m, o), dtype=np.float32)
        at = np.ascontiguousarray(a.T)
        bt = np.ascontiguousarray(b.T)
        p = corr.shape[0] if corr is not None else 1
        chunk = max(1, 4096 // p) * p if corr is not None else 2048
        acc_t = np.uint16 if 64 * words < 65536 else np.uint32
        buf = np.empty((min(chunk, m), o), dtype=np.uint64)
        cnt = np.empty((min(chunk, m), o), dtype=np.uint8)
        acc = np.empty((min(chunk, m), o), dtype=acc_t)
        for s in range(0, m, chunk):
            e = min(s + chunk, m)
            r = e - s
            acc[:r] = 0
            for w in range(words):
                np.bitwise_xor(at[w, s:e, None], bt[w, None, :], out=buf[:r])
                _bitcount(buf[:r], cnt[:r])
                np.add(acc[:r], cnt[:r], out=acc[:r])
            v = k - 2 * acc[:r].astype(np.int32)
            if corr is not None:
                v = (v.reshape(-1, p, o) - corr[None]).reshape(r, o)
            out[s:e] = epilogue.apply(v)
        return out


# ---------------------------------------------------------------------- C backend

# One C source (package data, ``reste/export/csrc/packed.c``), compiled once per instruction set
# (``-DRESTE_ISA=...`` plus that set's target flags; the file's first comment lists the variants).
_C_SOURCE = c_source("reste.export", "packed.c")

_CPU_SOURCE = c_source("reste.export", "cpu_features.c")

#: Kernel variants, fastest first; ``RESTE_PACKED_ISA`` forces one.
ISAS = ("avx512", "avx512bw", "avx2", "neon", "scalar")
ISA_ENV = "RESTE_PACKED_ISA"
_ISA_ID = {"scalar": 0, "avx2": 1, "avx512": 2, "neon": 3, "avx512bw": 4}
_ISA_FEATURE = {"avx2": 2, "avx512": 4, "neon": 8, "avx512bw": 16}
_ISA_FLAGS = {
    "scalar": (),
    "avx2": ("-mpopcnt", "-mavx2"),
    "avx512": ("-mpopcnt", "-mavx2", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512vpopcntdq"),
    "avx512bw": ("-mpopcnt", "-mavx2", "-mavx512f", "-mavx512bw", "-mavx512vl"),
    "neon": (),
}

_P = ctypes.c_void_p
_I = ctypes.c_int64
_I32 = ctypes.c_int32
_U64 = ctypes.c_uint64

_SIGNATURES: dict[str, tuple[list[Any], Any]] = {
    "reste_isa": ([], ctypes.c_int),
    "reste_rows": ([], ctypes.c_int),
    "reste_pack_signs": ([_P, _I, _I, _I, _P, _I, _I, _I, _I, _I, _I, _I], None),
    "reste_im2col": ([_P] + [_I] * 11 + [_P, _I, _I, _I], None),
    "reste_bconv": ([_P, _I, _I, _I, _I, _I, _I, _I, _P, _U64, _P, _I, _I32, _P, _I32, _P, _P, _P, _P, _I32, _P, _P,
                     _P, _P, _P, _I, _I, _I, _I, _I, _I], None),
    "reste_channel_affine": ([_P, _P, _I, _P, _P, _I32, _I, _I], None),
}
# the same kernels over their whole range, split into pieces run in parallel in C: (..., total, parts, pool)
_SIGNATURES.update({f"{name}_mt": (args + [_I32], None) for name, (args, _) in _SIGNATURES.items()
                    if name not in ("reste_isa", "reste_rows")})
_SIGNATURES["reste_use_openmp"] = ([_P, _P, _P], None)
_SIGNATURES["reste_bconv_args_mt"] = ([_P, _I, _I, _I32], None)


class BconvArgs(ctypes.Structure):
    """``reste_bconv_mt``'s arguments but the last three, as ``bconv_ctx`` in ``packed.c`` (the same layout)."""

    _fields_ = [("X", _P), *((f, _I) for f in ("sn", "sh", "sw", "OH", "OW", "nseg", "L")), ("off", _P),
                ("tail", _U64), ("Bt", _P), ("O", _I), ("K", _I32), ("corr", _P), ("mode", _I32),
                *((f, _P) for f in ("alpha", "bias", "scale", "shift")), ("relu", _I32),
                *((f, _P) for f in ("res", "lo", "hi", "out", "bits")),
                *((f, _I) for f in ("on", "ohs", "ows", "obytes"))]
_CPU = NativeLibrary("cpu", _CPU_SOURCE, {"reste_cpu_features": ([], ctypes.c_int)}, flag_sets=(("-O2",),))


def cpu_features() -> int:
    """The feature bits of :data:`_CPU_SOURCE` for this CPU (0 when the probe does not build)."""
    lib = _CPU.get()
    return int(lib.reste_cpu_features()) if lib is not None else 0


def _base_flags(features: int) -> tuple[str, ...]:
    popcnt = ("-mpopcnt",) if features & 1 and platform.machine().lower() in ("x86_64", "amd64", "i686") else ()
    return ("-O3", "-ffp-contract=off", "-pthread", *popcnt)


def _variant(isa: str) -> NativeLibrary:
    lib = _VARIANTS.get(isa)
    if lib is None:
        flags = (*_base_flags(cpu_features()), *_ISA_FLAGS[isa], f"-DRESTE_ISA={_ISA_ID[isa]}")
        lib = _VARIANTS.setdefault(isa, NativeLibrary(f"packed_{isa}", _C_SOURCE, _SIGNATURES, flag_sets=(flags,)))
    return lib


_VARIANTS: dict[str, NativeLibrary] = {}
# the portable build: what decides whether the C backend exists at all
_LIB = NativeLibrary("packed", _C_SOURCE, _SIGNATURES, flag_sets=(("-O3", "-ffp-contract=off", "-pthread"),))


def supported_isas() -> list[str]:
    """The kernel variants this CPU can run, fastest first (``"scalar"`` always)."""
    features = cpu_features()
    return [isa for isa in ISAS if isa == "scalar" or features & _ISA_FEATURE[isa]]


def available_isas() -> list[str]:
    """The variants this CPU runs and this compiler builds, fastest first (empty without a C compiler)."""
    if _LIB.get() is None:
        return []
    return [isa for isa in supported_isas() if _variant(isa).get() is not None]


def choose_isa(isa: str | None = None) -> str:
    """The variant to run: ``isa`` or ``$RESTE_PACKED_ISA`` when set (a ``UsageError`` when the CPU or the
    compiler cannot run it), else the fastest available one."""
    want = (isa or os.environ.get(ISA_ENV) or "auto").lower()
    if want not in ("auto", *ISAS):
        raise UsageError(f"unknown packed kernel variant {want!r} ({ISA_ENV}); valid: auto, {', '.join(ISAS)}")
    if want == "auto":  # (the portable build, which get_kernels checked, when no variant builds)
        return next((isa for isa in supported_isas() if _variant(isa).get() is not None), "scalar")
    if want not in supported_isas():
        raise UsageError(f"this CPU cannot run the {want} packed kernels ({ISA_ENV}); it supports "
                         f"{', '.join(supported_isas())}")
    if _variant(want).get() is None:
        raise UsageError(f"the {want} packed kernels do not build here ({_variant(want).error()})")
    return want


POOLS = ("auto", "openmp", "posix")
POOL_ENV = "RESTE_PACKED_POOL"
_POOL_ID = {"posix": 0, "openmp": 1}
_OPENMP_NAMES = ("libgomp", "libomp", "libiomp5")


def torch_uses_openmp() -> bool:
    """Whether PyTorch's CPU operations run on OpenMP: its ``parallel_info()`` names the ATen parallel
    backend; where a build does not say, whether it was built with OpenMP."""
    import torch

    said = re.search(r"parallel backend\s*:\s*(\w+)", torch.__config__.parallel_info(), re.IGNORECASE)
    return said.group(1).lower() == "openmp" if said else torch.backends.openmp.is_available()


@functools.cache
def _openmp_runtime() -> ctypes.CDLL | None:
    """(Looked up once.) The OpenMP runtime PyTorch's float operations run on, when it is loaded in this process and
    exports the GNU entry points (libgomp, and LLVM's and Intel's, which implement them); else ``None``."""
    import torch

    if not torch_uses_openmp():
        return None
    paths = []
    try:
        with open("/proc/self/maps") as maps:  # Linux: the libraries this process has loaded
            paths = [line.split()[-1] for line in maps if line.rstrip().endswith((".so", ".so.1", ".so.5"))]
    except OSError:
        pass
    torch_lib = os.path.join(os.path.dirname(torch.__file__), "lib")
    paths += [os.path.join(torch_lib, f) for f in sorted(os.listdir(torch_lib))] if os.path.isdir(torch_lib) else []
    for path in paths:
        if not os.path.basename(path).startswith(_OPENMP_NAMES):
            continue
        try:
            lib = ctypes.CDLL(path)  # already loaded: the same copy, its worker threads
            if all(hasattr(lib, f) for f in ("GOMP_parallel", "omp_get_thread_num", "omp_get_num_threads")):
                return lib
        except OSError:
            continue
    return None


def choose_pool(pool: str | None = None) -> str:
    """Where the C kernels run their pieces in parallel: ``"openmp"``, the worker threads of the OpenMP
    runtime PyTorch already runs on (so that its workers, which spin for a while after each torch
    operation, take the kernels' pieces instead of competing with them for the cores), or ``"posix"``,
    threads started per call. ``pool`` or ``$RESTE_PACKED_POOL``; ``"auto"`` (default) takes
    ``"openmp"`` where PyTorch's runtime is found."""
    want = (pool or os.environ.get(POOL_ENV) or "auto").lower()
    if want not in POOLS:
        raise UsageError(f"unknown thread pool {want!r} ({POOL_ENV}); valid: {', '.join(POOLS)}")
    if want == "posix":
        return want
    if _openmp_runtime() is None:
        if want == "openmp":
            raise UsageError(f"no OpenMP runtime of PyTorch is loaded here ({POOL_ENV}=openmp); "
                             f"use {POOL_ENV}=posix")
        return "posix"
    return "openmp"


def _attach_pool(lib: ctypes.CDLL, pool: str) -> int:
    """Hand the OpenMP entry points to ``lib`` (once; harmless to repeat) and give the pool's id."""
    if pool == "openmp":
        omp = _openmp_runtime()
        addr = lambda f: ctypes.cast(getattr(omp, f), ctypes.c_void_p).value  # noqa: E731
        lib.reste_use_openmp(addr("GOMP_parallel"), addr("omp_get_thread_num"), addr("omp_get_num_threads"))
    return _POOL_ID[pool]


#: Zero bytes after every packed activation: a kernel row of narrow pixels read in place (``Rows.tail``)
#: reads up to 7 bytes past its window, so past the array at its last position.
SLACK = 8


def packed_buffer(shape: tuple[int, ...], zero: bool = True) -> np.ndarray:
    """A uint8 array of ``shape`` (zero-filled, or uninitialised with ``zero=False``) followed in memory by
    :data:`SLACK` zero bytes."""
    size = math.prod(shape)
    if zero:
        return np.zeros(size + SLACK, dtype=np.uint8)[:size].reshape(shape)
    buf = np.empty(size + SLACK, dtype=np.uint8)
    buf[size:] = 0
    return buf[:size].reshape(shape)


def address(a: np.ndarray) -> int:
    """What ``a.ctypes.data`` gives, the address of the array's first byte, in a third of its time for a writable
    C-contiguous array (a ctypes view of its buffer; ``a.ctypes`` makes an object of NumPy's at each use, about
    0.8 us, which a batch of one image pays a few times in every layer); others (read-only, empty, strided) ask
    NumPy."""
    try:
        return ctypes.addressof(ctypes.c_char.from_buffer(a))
    except (TypeError, ValueError, BufferError):
        return a.ctypes.data


def pad_lanes(a: np.ndarray | None, fill: float = 0) -> np.ndarray | None:
    """``a`` with its last axis padded with ``fill`` to a multiple of 16 (the kernels' lanes), contiguous."""
    if a is None:
        return None
    extra = -a.shape[-1] % 16
    if extra:
        a = np.pad(a, [(0, 0)] * (a.ndim - 1) + [(0, extra)], constant_values=fill)
    return np.ascontiguousarray(a)


@dataclass
class Rows:
    """How ``reste_bconv`` finds the activation row of output position m = (n, oh, ow), for n below
    ``images``: from ``base + n * sn + oh * sh + ow * sw`` (bytes), ``len(off)`` segments of ``words``
    words at ``off``. ``tail``: the bits of each segment's last word past its real bytes (a kernel row
    of narrow pixels read in place reads into the next pixel; the weights are 0 there and the kernel
    subtracts what the activation has there), 0 when the segments are whole words."""

    images: int
    sn: int
    sh: int
    sw: int
    out_hw: tuple[int, int]
    off: np.ndarray
    words: int
    tail: int = 0


_MAX_PINS = 4096  # arrays whose addresses a CKernels keeps (a model has a few per binary layer)


class CKernels:
    """The compiled backend (same results as :class:`NumpyKernels`), one instruction-set variant."""

    name = "c"

    def __init__(self, lib: ctypes.CDLL, threads: int | None, isa: str = "scalar", pool: str = "posix") -> None:
        self.lib = lib
        self._threads = None if threads is None else max(1, threads)
        if threads is None:  # follow torch's count as it is at each call (a later torch.set_num_threads counts)
            import torch

            self._torch_threads = torch.get_num_threads  # (tens of nanoseconds a call)
        self.isa = isa
        self.pool = pool
        self._pool = _attach_pool(lib, pool)
        self.rows_per_block = int(lib.reste_rows())  # output rows per block of this variant's kernel
        self._pins: dict[int, tuple[np.ndarray, int]] = {}

    def _pin(self, a: np.ndarray | None, lanes: int | None = None) -> int | None:
        """The address of an array that lives as long as its layer (weights, per-channel arrays,
        offsets, corrections): asked of NumPy once (``a.ctypes.data`` costs microseconds, which a
        batch of one image feels in every layer) and kept with the array, which the pin keeps alive
        so that its id cannot be reused. ``lanes``: the length its last axis must have."""
        if a is None:
            return None
        hit = self._pins.get(id(a))
        if hit is None or hit[0] is not a:
            if lanes is not None and a.shape[-1] != lanes:  # the C code reads that many: never fewer
                raise ValueError(f"a per-channel array of {a.shape[-1]} values where the kernel reads {lanes}")
            if len(self._pins) >= _MAX_PINS:  # a caller that passes fresh arrays each time: start over
                self._pins.clear()
            hit = self._pins[id(a)] = (a, a.ctypes.data)
        return hit[1]

    @property
    def threads(self) -> int:
        """The threads a kernel call splits over: the count given, else torch's at this moment."""
        return self._threads if self._threads is not None else max(1, self._torch_threads())

    def _parts(self, total: int, work: int, align: int = 1) -> int:
        """Into how many pieces (run in parallel in C) a kernel splits [0, total)."""
        return split_parts(total, self.threads, work=work, align=align)

    def pack_signs(self, x: np.ndarray, pad: tuple[int, int, int, int], pixel_bytes: int | None = None) -> np.ndarray:
        """(N, H, W, C) float -> (N, H+pt+pb, W+pl+pr, pixel_bytes) uint8 sign bits (default ceil(C / 8)
        bytes), zero (= +1) padding and zero spare bytes."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        n, h, w, c = x.shape
        pt, pb, pl, pr = pad
        cb = pixel_bytes or -(-c // 8)
        hp, wp = h + pt + pb, w + pl + pr
        spare = pt or pb or pl or pr or cb * 8 > -(-c // 8) * 8
        out = packed_buffer((n, hp, wp, cb), zero=bool(spare))
        xa, oa = address(x), address(out)
        self.lib.reste_pack_signs_mt(xa, h, w, c, oa, hp, wp, cb, pt, pl, n, self._parts(n, x.size), self._pool)
        return out

    def im2col(self, xp: np.ndarray, kernel: tuple[int, int], stride: tuple[int, int], dil: tuple[int, int],
               out_hw: tuple[int, int], row_bytes: int) -> np.ndarray:
        xp = np.ascontiguousarray(xp)
        n, hp, wp, cb = xp.shape
        (kh, kw), (sh, sw), (dh, dw), (oh, ow) = kernel, stride, dil, out_hw
        cols = np.empty((n * oh * ow, row_bytes), dtype=np.uint8)
        xa, ca = address(xp), address(cols)
        self.lib.reste_im2col_mt(xa, hp, wp, cb, kh, kw, sh, sw, dh, dw, oh, ow, ca, row_bytes, n,
                                 self._parts(n, cols.size), self._pool)
        return cols

    def channel_affine(self, x: np.ndarray, scale: np.ndarray, shift: np.ndarray, relu: bool,
                       out: np.ndarray | None = None) -> np.ndarray:
        """``[relu](x) * scale + shift`` per channel of a C-contiguous (..., C) float32 array, into ``out``
        (default: in place) and returned; the same float32 operations as the torch ops."""
        assert x.dtype == np.float32 and x.flags.c_contiguous and scale.dtype == shift.dtype == np.float32
        out = x if out is None else out
        assert out.shape == x.shape and out.dtype == np.float32 and out.flags.c_contiguous
        c = x.shape[-1]
        rows = x.size // c
        keep = (scale, shift)  # noqa: F841
        xa, oa, sa, ta = address(x), address(out), address(scale), address(shift)
        self.lib.reste_channel_affine_mt(xa, oa, c, sa, ta, int(relu), rows, self._parts(rows, x.size), self._pool)
        return out

    @staticmethod
    def block_weights(words: np.ndarray) -> np.ndarray:
        """(O, W) weight rows -> (ceil(O / 16), W, 16): 16 output channels side by side per word
        (the lanes of the popcount kernels), zero rows for the padding channels."""
        o, w = words.shape
        blocks = -(-o // 16)
        padded = np.zeros((blocks * 16, w), dtype=np.uint64)
        padded[:o] = words
        return np.ascontiguousarray(padded.reshape(blocks, 16, w).transpose(0, 2, 1))

    def bconv(self, x: np.ndarray, rows: Rows, bt: np.ndarray, o: int, k: int, corr: np.ndarray | None,
              epilogue: "Epilogue", bits: "BitsOut | None" = None, residual: np.ndarray | None = None,
              signs: "BitsOut | None" = None) -> np.ndarray:
        """XOR/popcount convolution of the packed activation ``x`` (addressed by ``rows``) with the
        blocked weights ``bt``: int32 dot products (``epilogue=None``), float32 (M, O) through the
        epilogue (plus ``residual``, (M, O) float32, when given), or, with ``bits``, the sign bits
        written into ``bits.out`` (returned). With ``signs`` (and an epilogue), the float32 output and,
        in the same pass, its sign bits (value < 0, as :meth:`pack_signs`) written into ``signs.out``
        (its ``lo`` and ``hi`` are not read)."""
        oh, ow = rows.out_hw
        m = rows.images * oh * ow
        extra = None  # mode 3: the sign bits' interior
        if bits is not None:
            mode, out = 2, bits.out
            plan = self.bconv_plan(rows, bt, o, k, corr, epilogue, 2, bits.lo, bits.hi, bits.strides)
            target = address(out) + bits.origin
        else:
            mode = 0 if epilogue is None else 3 if signs is not None else 1
            out = np.empty((m, o), dtype=np.int32 if epilogue is None else np.float32)
            plan = self.bconv_plan(rows, bt, o, k, corr, epilogue, mode,
                                   strides=(0, 0, 0) if signs is None else signs.strides)
            target = address(out)
            if signs is not None:
                extra = address(signs.out) + signs.origin
        res = None
        if residual is not None:
            assert mode in (1, 3) and residual.dtype == np.float32 and residual.size == m * o
            residual = np.ascontiguousarray(residual)  # (alive, as x and signs are, until the call returns)
            res = address(residual)
        plan(address(x), target, extra, res)
        return out

    def bconv_plan(self, rows: Rows, bt: np.ndarray, o: int, k: int, corr: np.ndarray | None, epilogue: "Epilogue",
                   mode: int, lo: np.ndarray | None = None, hi: np.ndarray | None = None,
                   strides: tuple[int, int, int] = (0, 0, 0)) -> "BconvPlan":
        """What :meth:`bconv` passes to the kernel for one layer, input shape and output kind (mode 0 int32 dot
        products, 1 float, 2 sign bits through ``lo``/``hi``, 3 both; ``strides`` those of the bits' (n, h, w)),
        but the buffers' addresses: :class:`BconvPlan` takes those at each call. The arrays must live as long as
        the plan."""
        oh, ow = rows.out_hw
        assert bt.shape[1] == len(rows.off) * rows.words and bt.shape[0] * 16 >= o and mode in (0, 1, 2, 3)
        lanes = bt.shape[0] * 16
        pin = self._pin
        a = BconvArgs()
        a.sn, a.sh, a.sw, a.OH, a.OW, a.nseg, a.L = rows.sn, rows.sh, rows.sw, oh, ow, len(rows.off), rows.words
        a.off, a.tail, a.Bt, a.O, a.K, a.corr, a.mode = pin(rows.off), rows.tail, pin(bt), o, k, pin(corr, lanes), mode
        if mode == 2:
            a.lo, a.hi = pin(lo, lanes), pin(hi, lanes)
        elif mode != 0:
            a.alpha, a.bias = pin(epilogue.alpha, lanes), pin(epilogue.bias, lanes)
            if epilogue.post is not None:
                a.scale, a.shift = pin(epilogue.post[0], lanes), pin(epilogue.post[1], lanes)
                a.relu = int(epilogue.relu)
        if mode in (2, 3):
            a.on, a.ohs, a.ows = strides
            a.obytes = -(-o // 8)
        m = rows.images * oh * ow
        return BconvPlan(self, a, m, m * o * bt.shape[1])


class BconvPlan:
    """One layer's kernel call with its fixed arguments made once (:meth:`CKernels.bconv_plan`): a call then
    sets the buffers' addresses in a copy of them (calls from several threads do not share it) and passes it
    whole (``reste_bconv_args_mt``), the thread count as it is at the call."""

    def __init__(self, kernels: CKernels, args: BconvArgs, m: int, work: int) -> None:
        self.kernels, self.args, self.m, self.work = kernels, args, m, work

    def __call__(self, x: int, out: int, bits: int | None = None, res: int | None = None) -> None:
        """Run it on the activation at address ``x``, writing ``out`` (mode 2: the bits' interior) and, in mode 3,
        ``bits`` (their interior); ``res``: the residual's address (mode 1 and 3), or None."""
        a = BconvArgs.from_buffer_copy(self.args)
        a.X, a.out, a.bits, a.res = x, out, bits, res
        k = self.kernels
        k.lib.reste_bconv_args_mt(ctypes.addressof(a), self.m, k._parts(self.m, self.work, k.rows_per_block), k._pool)


@dataclass
class Epilogue:
    """``alpha * t + bias`` per output channel, then optionally ``* scale + shift`` (``post``), after a ReLU
    (``relu``: conv -> ReLU -> BN, every binary block) or straight on it (conv -> BN, as many user models)."""

    alpha: np.ndarray
    bias: np.ndarray
    post: tuple[np.ndarray, np.ndarray] | None = None
    relu: bool = True

    def padded(self) -> "Epilogue":
        """The same with every array padded to whole blocks of 16 channels (what the C kernels read)."""
        post = None if self.post is None else (pad_lanes(self.post[0]), pad_lanes(self.post[1]))
        return Epilogue(pad_lanes(self.alpha), pad_lanes(self.bias), post, self.relu)

    def apply(self, t: np.ndarray) -> np.ndarray:
        """The float32 epilogue of the dot products ``t`` (..., O), as every kernel computes it (ReLU as
        ``torch.relu``: NaN and -0 kept; overflows to inf and NaNs as the kernels make them, silently)."""
        with np.errstate(over="ignore", invalid="ignore"):
            y = self.alpha * t.astype(np.float32) + self.bias
            if self.post is None:
                return y
            if self.relu:
                y = np.where(y < 0, np.float32(0), y)
            return y * self.post[0] + self.post[1]


@dataclass
class BitsOut:
    """Where a fused layer writes its sign bits: ``out`` (N, Hp, Wp, Cb) uint8, the next layer's packed
    input, zero-filled; ``origin`` the byte offset of its interior, ``strides`` (n, h, w) in bytes; bit o
    is set where ``lo[o] <= t <= hi[o]``."""

    out: np.ndarray
    origin: int
    strides: tuple[int, int, int]
    lo: np.ndarray
    hi: np.ndarray


def sign_thresholds(k: int, epilogue: Epilogue) -> tuple[np.ndarray, np.ndarray] | None:
    """Integer bounds (lo, hi) per channel with ``lo <= t <= hi`` exactly where the float32 epilogue of
    the dot product t (``|t| <= k``) is negative, i.e. where the next layer's sign is -1.

    The epilogue is a composition of float32 operations that are each monotone in t (a product
    with a constant of either sign, a sum, ReLU), so its sign is a step function of t: negative for
    every t up to a bound or from a bound on (which one follows the signs of alpha and scale: a
    negative batch-norm scale turns it round), everywhere or nowhere (a zero alpha or scale: the
    sign of what is added after it). The step is found by bisection on the same float32
    expression the kernels compute, so the bits are identical to computing the float and taking its
    sign. ``None`` when some channel is not a single step: non-finite parameters (inf * 0 makes NaNs),
    and without the ReLU an ``alpha * t + bias`` that overflows at t = +-k (times a zero scale: NaN at
    both ends, negative between them); checked on every integer for safety when k is small.
    """
    alpha, bias = epilogue.alpha.astype(np.float32), epilogue.bias.astype(np.float32)
    post = None if epilogue.post is None else tuple(p.astype(np.float32) for p in epilogue.post)
    if not all(np.isfinite(a).all() for a in (alpha, bias, *(post or ()))):
        return None  # inf * 0 makes NaNs: keep the float path
    ep = Epilogue(alpha, bias, post, epilogue.relu)
    o = alpha.shape[0]
    if post is not None and not epilogue.relu:
        if not np.isfinite(Epilogue(alpha, bias).apply(np.array([[-k], [k]]))).all():
            return None  # (with the ReLU, -inf becomes 0 and +inf * 0 a NaN at one end only: still one step)

    def negative(t: np.ndarray) -> np.ndarray:
        return ep.apply(t) < 0

    first, last = negative(np.full(o, -k)), negative(np.full(o, k))
    lo = np.full(o, -k, dtype=np.int64)
    hi = np.full(o, k, dtype=np.int64)
    # bisection for the last t with the value of t = -k (a < b: negative(a) == first != negative(b))
    step = first != last
    a, b = np.full(o, -k, dtype=np.int64), np.full(o, k, dtype=np.int64)
    while bool(((b - a) > 1)[step].any()):
        mid = (a + b) // 2
        same = negative(mid) == first
        a = np.where(step & same, mid, a)
        b = np.where(step & ~same, mid, b)
    hi = np.where(step & first, a, hi)     # negative for t <= a
    lo = np.where(step & last, b, lo)      # negative for t >= b
    never = ~step & ~first
    lo, hi = np.where(never, 1, lo), np.where(never, 0, hi)  # empty interval
    t = np.arange(-k, k + 1)
    if t.size * o <= 1 << 20:
        got = (t[:, None] >= lo) & (t[:, None] <= hi)
        if not np.array_equal(got, negative(np.broadcast_to(t[:, None], (t.size, o)))):
            return None
    return lo.astype(np.int32), hi.astype(np.int32)


def c_kernel_error() -> str | None:
    """Why the C backend is unavailable (``None`` when it builds)."""
    return _LIB.error()


def get_kernels(backend: str = "auto", threads: int | None = None,
                isa: str | None = None, pool: str | None = None) -> NumpyKernels | CKernels:
    """The kernels of ``backend`` (``"auto"``, ``"c"`` or ``"numpy"``; env ``RESTE_PACKED_BACKEND``);
    for ``"c"``, the variant of :func:`choose_isa` (``isa`` or env ``RESTE_PACKED_ISA``) and the thread
    pool of :func:`choose_pool` (``pool`` or env ``RESTE_PACKED_POOL``)."""
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, numbers.Integral) or threads < 1):
        raise UsageError(f"threads must be a positive integer (or None: torch's thread count), got {threads!r}")
    backend = (backend or "auto").lower()
    if backend == "auto":
        backend = os.environ.get("RESTE_PACKED_BACKEND", "auto").lower()
    if backend not in BACKENDS:
        raise UsageError(f"unknown packed backend {backend!r}; valid: {', '.join(BACKENDS)}")
    if backend == "numpy":
        return NumpyKernels()
    if _LIB.get() is None:
        if backend == "c":
            raise UsageError(f"the C backend is unavailable ({c_kernel_error()}); use --backend numpy")
        return NumpyKernels()
    chosen = choose_isa(isa)
    return CKernels(_variant(chosen).get() or _LIB.get(), threads, chosen, choose_pool(pool))
