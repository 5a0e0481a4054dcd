"""``PackedModel``: CPU inference from a packed-model file, binary layers on packed bits.

Binary layers with binary inputs run as XOR/popcount GEMMs on bits
(:mod:`reste.export.kernels`); binary layers with real inputs (1W/32A) and every
float op run in PyTorch on float32 (weights unpacked to ``sign * alpha``).
Activations are kept channels-last, so the binary layers read and write NHWC
without copies. Needs only NumPy and PyTorch, not the training code.

Steps are fused where the graph allows, with the same float32 operations as the
separate ops: a binary conv with the affine (batch norm) that follows it, after a ReLU or
straight on its output, and the residual add after that (one kernel epilogue); a float
conv with its ReLU and affine (in place); and, on the C backend, a binary conv whose
output only feeds another binary conv writes that conv's packed sign bits directly
(``_BinaryConv.to_bits``; not while ``forward`` records a trace, which needs the float
values); and a binary conv with its residual add whose output feeds another binary conv
(and the next residual add) writes the float output and, in the same pass, the packed
sign bits that conv reads (``_BinaryConv.with_signs``), so they are not packed again
from the floats.

>>> model = PackedModel.load("resnet20.rbnn")
>>> logits = model(images)            # (N, C, H, W) -> (N, classes) float32 tensor, as model.forward
>>> logits = model1d(signals)         # (N, C, L) for a model of 1-D layers (run as 2-D ones on a height of 1)
>>> labels = model.predict(images)
"""

from __future__ import annotations

import os
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import UsageError
from . import format as fmt
from . import ir
from .inputs import as_float32, check_pixel_range, nonfinite_images, raw_batch, raw_inputs
from .kernels import (BitsOut, Epilogue, Rows, address, conv_weight_words, get_kernels, pack_rows, packed_buffer,
                      pad_lanes, padding_correction, sign_thresholds)

BATCH_SIZE = 256  # images per forward pass of the packed engine, unless told (predict, evaluate, reste predict)


def _out_size(size: int, k: int, stride: int, pad: int, dil: int) -> int:
    return (size + pad - dil * (k - 1) - 1) // stride + 1


class PackedActivation:
    """Sign bits written by a fused binary layer straight into the next layer's packed input:
    ``data`` (N, Hp, Wp, Cb) uint8, already padded for that layer; ``hw`` the unpadded size."""

    def __init__(self, data: np.ndarray, hw: tuple[int, int]) -> None:
        self.data, self.hw = data, hw


#: Below this many input channels pixels stay ``ceil(C / 8)`` bytes; from it on, they are padded to whole
#: 64-bit words and the kernel reads the windows in place (implicit GEMM).
IMPLICIT_MIN_CHANNELS = 64
#: Below it, the kernel reads each kernel row (kw narrow pixels, contiguous when the dilation along the
#: width is 1) in place as whole words, the bits past the row subtracted (``Rows.tail``), where that
#: counts no more words than compact rows would or the kernels have a vector popcount (measured:
#: 1.2-1.5x faster layers with AVX-512, slower with AVX2 where it adds words); else, and with this
#: False, the windows are copied into compact rows first (im2col).
NARROW_IN_PLACE = True
#: A batch norm straight after a binary layer (conv -> BN, no ReLU between them) goes into the layer's kernel
#: epilogue as conv -> ReLU -> BN does (the same float32 operations); False keeps it a separate ``affine`` step.
FUSE_BARE_AFFINE = True


class _BinaryConv:
    """conv(sign(x), sign(w) * alpha) + b [-> [ReLU ->] affine] on packed bits.

    On the C backend the kernel reads the packed input in place where pixels are whole words
    (``IMPLICIT_MIN_CHANNELS``) and can write the sign bits of its output directly into the next
    binary layer's packed input (:meth:`to_bits`, set up by :class:`PackedModel`).
    """

    def __init__(self, node: dict[str, Any], signs: np.ndarray, alpha: np.ndarray, bias: np.ndarray,
                 post: tuple[np.ndarray, np.ndarray] | None, kernels: Any, relu: bool = True) -> None:
        self.out_channels, self.in_channels, kh, kw = signs.shape
        self.name = str(node.get("name", "?"))
        self.kernel = (kh, kw)
        self.stride, self.pad, self.dil = tuple(node["stride"]), tuple(node["pad"]), tuple(node["dil"])
        self.k = self.in_channels * kh * kw
        self.spec = Epilogue(alpha, bias, post, relu)  # (unpadded: the NumPy kernels, the sign thresholds)
        self.kernels = kernels
        self.fast = hasattr(kernels, "bconv")
        self.implicit = self.fast and self.in_channels >= IMPLICIT_MIN_CHANNELS
        cb = -(-self.in_channels // 8)
        self.narrow = self.fast and not self.implicit and NARROW_IN_PLACE and self.dil[1] == 1 and (
            # no more words to count than im2col's compact rows, or counting is cheap (a vector popcount)
            kh * -(-kw * cb // 8) <= -(-kh * kw * cb // 8) or getattr(kernels, "isa", None) == "avx512")
        self.pixel_bytes = -(-cb // 8) * 8 if self.implicit else cb
        self.words, self.s = conv_weight_words(signs, self.pixel_bytes, kernel_rows=self.narrow)
        self.row_bytes = self.words.shape[1] * 8
        if self.fast:
            self.blocked = kernels.block_weights(self.words)
            self.epilogue = self.spec.padded()
        self.next: _BinaryConv | None = None  # the layer that takes this one's output bits (to_bits)
        self._thresholds: tuple[np.ndarray, np.ndarray] | None = None
        self._corr: dict[tuple[int, int], np.ndarray | None] = {}
        self._geometry: dict[tuple[tuple[int, ...], tuple[int, int]], Rows] = {}
        self._plans: dict[tuple[Any, ...], tuple[Rows, Any]] = {}  # (rows, its BconvPlan) per geometry and mode

    def out_hw(self, h: int, w: int) -> tuple[int, int]:
        """The output size for an input of h x w; a ``UsageError`` when there is no output pixel, before
        anything reaches the kernels (which take the sizes as given: a negative one reads outside the input)."""
        pt, pb, pl, pr = self.pad
        oh = _out_size(h, self.kernel[0], self.stride[0], pt + pb, self.dil[0])
        ow = _out_size(w, self.kernel[1], self.stride[1], pl + pr, self.dil[1])
        if h < 1 or w < 1 or oh < 1 or ow < 1:
            # the smallest input with one whole window in it, padding included (what torch's conv2d requires)
            (kh, kw), (dh, dw) = self.kernel, self.dil
            least = (max(1, dh * (kh - 1) + 1 - pt - pb), max(1, dw * (kw - 1) + 1 - pl - pr))
            raise UsageError(f"binary conv {self.name} takes inputs of at least {least[0]}x{least[1]} pixels "
                             f"(kernel {kh}x{kw}, dilation {dh}x{dw}, padding {list(self.pad)}), got {h}x{w}; "
                             "pass larger images")
        return oh, ow

    def _correction(self, h: int, w: int) -> np.ndarray | None:
        if (h, w) not in self._corr:
            corr = padding_correction(self.s, self.kernel, (h, w), self.pad, self.stride, self.dil, self.out_hw(h, w))
            self._corr[(h, w)] = pad_lanes(corr) if self.fast else corr
        return self._corr[(h, w)]

    def _packed_input(self, x: torch.Tensor | PackedActivation) -> tuple[np.ndarray, int, int]:
        if isinstance(x, PackedActivation):
            return x.data, *x.hw
        if x.dim() != 4:
            raise UsageError(f"binary conv {self.name} expects (N, {self.in_channels}, H, W) inputs, "
                             f"got {tuple(x.shape)}")
        n, c, h, w = x.shape
        if c != self.in_channels:
            raise UsageError(f"binary conv {self.name} expects {self.in_channels} channels, got {c}")
        self.out_hw(h, w)  # refuses an input too small for the window before it is packed
        nhwc = x.permute(0, 2, 3, 1).contiguous().numpy()
        if self.fast:
            return self.kernels.pack_signs(nhwc, self.pad, self.pixel_bytes), h, w
        return self.kernels.pack_signs(nhwc, self.pad), h, w

    def _rows(self, xp: np.ndarray, out_hw: tuple[int, int]) -> tuple[np.ndarray, Rows]:
        """The activation the kernel reads and how it finds each output position's window."""
        if not self.implicit and not self.narrow:
            cols = self.kernels.im2col(xp, self.kernel, self.stride, self.dil, out_hw, self.row_bytes)
            return cols, self._row_geometry(xp.shape, out_hw)
        return xp, self._row_geometry(xp.shape, out_hw)

    def _row_geometry(self, shape: tuple[int, ...], out_hw: tuple[int, int]) -> Rows:
        """:class:`Rows` for a packed input of ``shape``, made once per shape (its offsets then keep one
        address, which the kernels look up once)."""
        key = (tuple(shape), tuple(out_hw))
        if key in self._geometry:
            return self._geometry[key]
        (kh, kw), (sh, sw), (dh, dw) = self.kernel, self.stride, self.dil
        oh, ow = out_hw
        n, hp, wp, cb = shape
        if not self.implicit and not self.narrow:
            rb = self.row_bytes
            rows = Rows(n, oh * ow * rb, ow * rb, rb, out_hw, np.zeros(1, np.int64), rb // 8)
        elif dw == 1:  # a kernel row's kw pixels are contiguous: one segment per kernel row
            span = kw * cb  # bytes of a kernel row (whole words for word-padded pixels: no tail)
            words = -(-span // 8)
            real = span - 8 * (words - 1)  # bytes of its last word inside the row
            tail = 0 if real == 8 else (~0 << (8 * real)) & (2**64 - 1)
            off = np.array([i * dh * wp * cb for i in range(kh)], np.int64)
            rows = Rows(n, hp * wp * cb, sh * wp * cb, sw * cb, out_hw, off, words, tail)
        else:  # word-padded pixels, dilated along the width: one segment per tap
            off = np.array([(i * dh * wp + j * dw) * cb for i in range(kh) for j in range(kw)], np.int64)
            rows = Rows(n, hp * wp * cb, sh * wp * cb, sw * cb, out_hw, off, cb // 8)
        self._geometry[key] = rows
        return rows

    def __call__(self, x: torch.Tensor | PackedActivation, residual: torch.Tensor | None = None) -> torch.Tensor:
        """The layer's float32 output (NCHW view of NHWC data), plus ``residual`` when given (a fused
        add: in the kernel's epilogue where the shapes match, the same float32 sum either way)."""
        xp, h, w = self._packed_input(x)
        n = xp.shape[0]
        oh, ow = self.out_hw(h, w)
        corr = self._correction(h, w)
        shape = (n, self.out_channels, oh, ow)
        res = None
        if self.fast and residual is not None and tuple(residual.shape) == shape \
                and residual.dtype == torch.float32:
            res = _nhwc(residual)
        if self.fast:
            src, rows = self._rows(xp, (oh, ow))
            y = _nhwc_buffer(n, oh, ow, self.out_channels)
            self._run(src, rows, h, w, 1, y.data_ptr(), res=None if res is None else res.data_ptr())
            y = y.permute(0, 3, 1, 2)
            return y if residual is None or res is not None else torch.add(y, residual)
        cols = self.kernels.im2col(xp, self.kernel, self.stride, self.dil, (oh, ow), self.row_bytes)
        out = self.kernels.gemm(cols.view(np.uint64), self.words, self.k, corr, self.spec)
        y = torch.from_numpy(out).view(n, oh, ow, self.out_channels).permute(0, 3, 1, 2)
        return y if residual is None or res is not None else torch.add(y, residual)

    def _bits_for(self, nxt: "_BinaryConv", n: int, oh: int, ow: int,
                  thresholds: tuple[np.ndarray, np.ndarray] | tuple[None, None]) -> BitsOut:
        """A zero-filled packed input for ``nxt`` (its padding, its pixel bytes) for this layer's output."""
        pt, pb, pl, pr = nxt.pad
        hp, wp, cb = oh + pt + pb, ow + pl + pr, nxt.pixel_bytes
        out = packed_buffer((n, hp, wp, cb))
        return BitsOut(out, (pt * wp + pl) * cb, (hp * wp * cb, wp * cb, cb), *thresholds)

    def with_signs(self, nxt: "_BinaryConv", x: torch.Tensor | PackedActivation,
                   residual: torch.Tensor) -> tuple[torch.Tensor, PackedActivation | None]:
        """``self(x, residual)`` and, from the same pass of the kernel, its sign bits packed and padded as ``nxt``
        reads them (the bits :meth:`_packed_input` would pack from the float output); ``None`` for the bits
        where the residual is not added in the kernel (they are then packed from the float output by ``nxt``)."""
        xp, h, w = self._packed_input(x)
        n = xp.shape[0]
        oh, ow = self.out_hw(h, w)
        if not (self.fast and nxt.fast and nxt.in_channels == self.out_channels
                and tuple(residual.shape) == (n, self.out_channels, oh, ow) and residual.dtype == torch.float32):
            return self(PackedActivation(xp, (h, w)), residual), None
        res = _nhwc(residual)
        signs = self._bits_for(nxt, n, oh, ow, (None, None))
        src, rows = self._rows(xp, (oh, ow))
        y = _nhwc_buffer(n, oh, ow, self.out_channels)
        self._run(src, rows, h, w, 3, y.data_ptr(), signs, res.data_ptr())
        return y.permute(0, 3, 1, 2), PackedActivation(signs.out, (oh, ow))

    def _run(self, src: np.ndarray, rows: Rows, h: int, w: int, mode: int, out: int, bits: BitsOut | None = None,
             res: int | None = None) -> None:
        """The C kernel on ``src`` (read through ``rows``) for an input of h x w: mode 1 the float output at
        address ``out`` (plus the residual at ``res``), 2 the sign bits into ``bits`` (``out`` unused), 3 both.
        Its fixed arguments are made once per input geometry and mode (:meth:`CKernels.bconv_plan`)."""
        key = (id(rows), h, w, mode, None if bits is None else bits.strides)
        hit = self._plans.get(key)
        if hit is None or hit[0] is not rows:
            lo, hi = (bits.lo, bits.hi) if mode == 2 else (None, None)
            plan = self.kernels.bconv_plan(rows, self.blocked, self.out_channels, self.k, self._correction(h, w),
                                           self.epilogue, mode, lo, hi, bits.strides if bits is not None else (0, 0, 0))
            hit = self._plans[key] = (rows, plan)
        at = None if bits is None else address(bits.out) + bits.origin
        if mode == 2:
            out, at = at, None
        hit[1](address(src), out, at, res)

    @property
    def post(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The (scale, shift) of the affine its epilogue takes in, if any."""
        return self.spec.post

    def fuse_next(self, nxt: "_BinaryConv") -> bool:
        """Write sign bits for ``nxt`` instead of floats (C backend, exact thresholds found); False if not."""
        if not (self.fast and nxt.fast and nxt.in_channels == self.out_channels):
            return False
        o = self.out_channels
        thresholds = sign_thresholds(self.k, self.spec)
        if thresholds is None:
            return False
        self._thresholds = (pad_lanes(thresholds[0], 1), pad_lanes(thresholds[1], 0))  # empty on the padding
        assert self._thresholds[0].shape == (-(-o // 16) * 16,)
        self.next = nxt
        return True

    def to_bits(self, x: torch.Tensor | PackedActivation) -> PackedActivation:
        """The sign bits of this layer's output, packed and padded as ``self.next`` reads them:
        the same bits as ``sign(self(x))``, without the float output."""
        nxt = self.next
        assert nxt is not None and self._thresholds is not None
        xp, h, w = self._packed_input(x)
        n = xp.shape[0]
        oh, ow = self.out_hw(h, w)
        bits = self._bits_for(nxt, n, oh, ow, self._thresholds)
        src, rows = self._rows(xp, (oh, ow))
        self._run(src, rows, h, w, 2, 0, bits)
        return PackedActivation(bits.out, (oh, ow))


class _BinaryLinear:
    """linear(sign(x), sign(w) * alpha) + b [-> [ReLU ->] affine] on packed bits."""

    def __init__(self, signs: np.ndarray, alpha: np.ndarray, bias: np.ndarray,
                 post: tuple[np.ndarray, np.ndarray] | None, kernels: Any, relu: bool = True) -> None:
        self.out_features, self.in_features = signs.shape
        self.words = pack_rows(signs < 0)
        self.kernels = kernels
        self.spec = Epilogue(alpha, bias, post, relu)
        self.fast = hasattr(kernels, "bconv")
        if self.fast:
            self.blocked = kernels.block_weights(self.words)
            self.epilogue = self.spec.padded()
        self._geometry: dict[int, Rows] = {}

    post = _BinaryConv.post

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != self.in_features:
            raise UsageError(f"a binary linear layer expects (N, {self.in_features}) inputs, got {tuple(x.shape)}")
        n, row_bytes = x.shape[0], self.words.shape[1] * 8
        if self.fast:
            a = self.kernels.pack_signs(x.contiguous().numpy()[:, None, None, :], (0, 0, 0, 0), row_bytes)
            rows = self._geometry.get(n)
            if rows is None:  # once per batch size (its offsets keep one address, see CKernels._pin)
                rows = self._geometry[n] = Rows(n, row_bytes, 0, 0, (1, 1), np.zeros(1, np.int64), row_bytes // 8)
            out = self.kernels.bconv(a, rows, self.blocked, self.out_features, self.in_features, None, self.epilogue)
            return torch.from_numpy(out)
        packed = self.kernels.pack_signs(x.contiguous().numpy()[:, None, None, :], (0, 0, 0, 0))
        rows = packed.reshape(n, -1)
        a = np.zeros((n, row_bytes), dtype=np.uint8)
        a[:, : rows.shape[1]] = rows
        out = self.kernels.gemm(a.view(np.uint64), self.words, self.in_features, None, self.spec)
        return torch.from_numpy(out)


def _nhwc(x: torch.Tensor) -> torch.Tensor:
    """A float32 (N, C, H, W) tensor as a C-contiguous (N, H, W, C) one (a view of channels-last memory)."""
    x = x.permute(0, 2, 3, 1)
    return x if x.is_contiguous() else x.contiguous()


def _nhwc_buffer(*shape: int) -> torch.Tensor:
    """An uninitialised float32 tensor of ``shape`` in NumPy's memory (malloc's: torch.empty of tens of MB was
    measured 1.3x slower for a whole resnet18 at batch 64, fresh pages at every call)."""
    return torch.from_numpy(np.empty(shape, dtype=np.float32))


def _sign(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x < 0, -1.0, 1.0).to(x.dtype)


def unit_squeeze(x: torch.Tensor, dim: int) -> torch.Tensor:
    """``x`` without its dimension ``dim``, which must have size 1 (``torch.squeeze`` would keep any other)."""
    if not 0 < dim < x.dim() or x.shape[dim] != 1:
        raise ValueError(f"squeeze of dimension {dim}, which is not of size 1 in shape {tuple(x.shape)}")
    return x.squeeze(dim)


def _after_batch(dim: int, x: torch.Tensor, op: str) -> int:
    """``dim`` of ``x``, refused where a negative one names the batch (a file an earlier reste wrote)."""
    if dim < 0 and dim + x.dim() == 0:
        raise UsageError(f"the packed model's {op} along dimension {dim} of {x.dim()}-D values reaches the batch: "
                         "each image would give more than one row; export the model again with its op along a "
                         "dimension after the batch")
    return dim


def _last_axis(x: torch.Tensor, channels: int) -> np.ndarray | None:
    """A float32 activation as a C-contiguous NumPy (..., C) view of its memory, channels last (what
    the C kernels' per-channel ops take): for (N, C, H, W) in channels-last memory and contiguous
    (N, C); ``None`` for anything else."""
    if x.dtype != torch.float32 or x.dim() not in (2, 4) or x.shape[1] != channels:
        return None
    if x.dim() == 4:
        return x.permute(0, 2, 3, 1).numpy() if x.is_contiguous(memory_format=torch.channels_last) else None
    return x.numpy() if x.is_contiguous() else None


def _scale_shift(affine: dict[str, Any], tensors: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """An ``affine`` node's (scale, shift) as contiguous float32 arrays (what a fused epilogue reads)."""
    return (np.ascontiguousarray(tensors[affine["scale"]], np.float32),
            np.ascontiguousarray(tensors[affine["shift"]], np.float32))


def _channel(v: torch.Tensor, ndim: int) -> torch.Tensor:
    return v.view((1, -1) + (1,) * (ndim - 2))


def _array_or_tensor(images: Any) -> Any:
    """A nested list as a NumPy array, a uint8 tensor as a NumPy array (raw pixels go through NumPy), the rest as
    it is. A path or None is a one-line ``UsageError`` (review apifuzz1: "new(): invalid data type 'str'")."""
    if images is None or isinstance(images, (str, bytes, os.PathLike)):
        raise UsageError(f"a packed model takes images as an array or tensor (N, C, H, W), got {images!r}"[:160]
                         + "; for image files, use reste.export.predict_images(model, paths) or reste predict")
    if isinstance(images, (list, tuple)):
        return np.asarray(images)
    if isinstance(images, torch.Tensor) and images.dtype == torch.uint8:
        return images.detach().cpu().numpy()
    return images


def class_scores(logits: torch.Tensor) -> torch.Tensor:
    """``logits`` when they are (N, classes), what a class prediction is the argmax of; a ``UsageError`` for a model
    whose output is something else (a fully convolutional one's (N, C, H, W)), whose argmax would be no class."""
    if logits.dim() != 2:
        shape = ", ".join(["N", *map(str, logits.shape[1:])])
        raise UsageError(f"class predictions need a classifier, and this packed model's output is ({shape}), not "
                         "(N, classes): reste predict and PackedModel.predict take classifiers; run "
                         "PackedModel.load(path)(images) for the model's outputs")
    return logits


def _rebuilt(header: dict[str, Any], tensors: list[np.ndarray], options: dict[str, Any]) -> "PackedModel":
    """A :class:`PackedModel` unpickled (:meth:`PackedModel.__reduce__`)."""
    return PackedModel(header, tensors, **options)


class PackedModel:
    """A packed-model file loaded for inference (see :func:`reste.export.export_model`).

    Args of :meth:`load`: ``backend`` (``"auto"``, ``"c"``, ``"numpy"``) picks the
    XOR/popcount kernels; ``threads`` their thread count (default: torch's at each call); ``isa`` the C
    kernel variant (default: the fastest this CPU runs, or ``$RESTE_PACKED_ISA``; see
    :func:`reste.export.kernels.choose_isa`); ``pool`` where the kernels' threads come from
    (default: PyTorch's OpenMP workers where found, or ``$RESTE_PACKED_POOL``; see
    :func:`reste.export.kernels.choose_pool`); ``fuse_signs=False`` keeps every binary layer's
    float output (for measurements; the results are the same).
    """

    def __init__(self, header: dict[str, Any], tensors: list[np.ndarray], *, backend: str = "auto",
                 threads: int | None = None, isa: str | None = None, pool: str | None = None,
                 fuse_signs: bool = True) -> None:
        ir.check_graph(header)  # before anything reaches the kernels
        if not isinstance(header.get("meta", {}), dict):
            raise ValueError("meta is not a mapping")
        if not isinstance(header.get("meta", {}).get("classes", []), (list, type(None))):  # the names of the labels
            raise ValueError(f"meta classes is not a list of names: {header['meta']['classes']!r}"[:200])
        self.header = header
        self.meta: dict[str, Any] = header.get("meta", {})
        # what a copy is made from: another process (a spawned worker) picks its own kernels for its own CPU
        self._source = (header, tensors, {"backend": backend, "threads": threads, "isa": isa, "pool": pool,
                                          "fuse_signs": fuse_signs})
        self.kernels = get_kernels(backend, threads, isa, pool)
        self.backend = self.kernels.name
        self.isa: str | None = getattr(self.kernels, "isa", None)
        nodes = header["nodes"]
        self._output = int(header["output"])
        users = [0] * len(nodes)
        self._first_user: dict[int, int] = {}  # each value's first reader (the graph runs in order)
        for j, node in enumerate(nodes):
            for i in node["in"]:
                users[i] += 1
                self._first_user.setdefault(i, j)
        users[self._output] += 1
        self._steps: list[tuple[int, list[int], Callable[..., torch.Tensor]]] = []
        self._sign_steps: set[int] = set()  # steps that take the sign of their input (see forward's trace)
        self.weight_bytes = 0  # bytes of the weights the engine holds (packed words, floats)
        skip: set[int] = set()
        deferred: dict[int, tuple[int, list[int], Callable[..., torch.Tensor], bool]] = {}
        for i, node in enumerate(nodes):
            if i in deferred:  # a fused bconv ... add step, run where the add was
                target, inputs, fn, sign = deferred.pop(i)
                if sign:
                    self._sign_steps.add(len(self._steps))
                self._steps.append((target, inputs, fn))
                continue
            if i in skip:
                continue
            t = {k: (None if node.get(k) is None else tensors[node[k]]) for k in ir.tensor_keys(node)}
            inputs = list(node["in"])
            target = i
            post, relu = None, True
            if node["op"] in ir.BINARY_OPS and node["bin_in"]:
                # fuse bconv -> relu -> affine (or bconv -> affine) into one kernel epilogue
                post, relu, fused = self._epilogue_affine(nodes, users, tensors, i)
                if fused:
                    skip.update(fused)
                    target = fused[-1]  # the fused step produces the affine's value
                if node["op"] == "bconv":
                    # and the residual add that follows; when its other input comes later in the graph, the
                    # fused step runs in the add's place (if no sign is taken in between: the trace's order)
                    add = self._sole_user(nodes, users, target, "add")
                    other = [j for j in nodes[add]["in"] if j != target] if add is not None else []
                    if len(other) == 1 and (other[0] < i or not any(
                            ir.takes_sign(nodes[j]) for j in range(i + 1, add) if j not in skip)):
                        inputs.append(other[0])
                        target = add
                        if other[0] > i:
                            deferred[add] = (target, inputs, self._build(node, t, post, relu), True)
                            continue
                        skip.add(add)
            elif node["op"] == "conv":
                # a float conv -> relu -> affine (the stem) in one step, the last two in place
                post, fused = self._relu_affine(nodes, users, tensors, i)
                if fused:
                    skip.update(fused)
                    target = fused[-1]
            if ir.takes_sign(node):
                self._sign_steps.add(len(self._steps))
            self._steps.append((target, inputs, self._build(node, t, post, relu)))
        self._last_use = self._free_plan()
        self._bit_steps = self._fuse_signs(users) if fuse_signs else set()
        self._sign_pairs = self._sign_readers() if fuse_signs else {}

    def _sign_readers(self) -> dict[int, int]:
        """Steps whose binary conv (with its residual add fused) also writes the sign bits of its output for the
        first binary conv that reads that value (C backend): step -> that reader's step. The float output is
        kept for its other readers (the next residual add); the reader takes the bits, exactly those it would
        pack from the floats, without a second pass over them."""
        pairs = {}
        for step, (target, inputs, fn) in enumerate(self._steps):
            if not (isinstance(fn, _BinaryConv) and fn.fast and len(inputs) == 2 and target != self._output):
                continue
            reader = next((s for s in range(step + 1, len(self._steps)) if target in self._steps[s][1]), None)
            if reader is None:
                continue
            _, reader_inputs, reader_fn = self._steps[reader]
            if isinstance(reader_fn, _BinaryConv) and reader_fn.fast and reader_inputs[0] == target \
                    and reader_fn.in_channels == fn.out_channels:
                pairs[step] = reader
        return pairs

    def _fuse_signs(self, users: list[int]) -> set[int]:
        """Steps whose binary conv writes its sign bits straight into the next binary conv's packed
        input: where that conv is the only user of its value (see :meth:`_BinaryConv.to_bits`)."""
        producers = {target: step for step, (target, _, fn) in enumerate(self._steps) if isinstance(fn, _BinaryConv)}
        fused = set()
        for target, inputs, fn in self._steps:
            if not (isinstance(fn, _BinaryConv) and inputs and inputs[0] in producers):
                continue
            value = inputs[0]
            producer = self._steps[producers[value]]
            if (users[value] == 1 and value != self._output and len(producer[1]) == 1  # no residual fused in
                    and producer[2].fuse_next(fn)):
                fused.add(producers[value])
        return fused

    def _relu_affine(self, nodes: list[dict[str, Any]], users: list[int], tensors: list[np.ndarray],
                     i: int) -> tuple[tuple[np.ndarray, np.ndarray] | None, tuple[int, ...]]:
        """A relu -> affine pair that only node ``i`` feeds: its (scale, shift) as a fused epilogue
        and the two node indices; ``(None, ())`` when there is none."""
        relu = self._sole_user(nodes, users, i, "relu")
        aff = self._sole_user(nodes, users, relu, "affine") if relu is not None else None
        if aff is None:
            return None, ()
        return _scale_shift(nodes[aff], tensors), (relu, aff)

    def _epilogue_affine(self, nodes: list[dict[str, Any]], users: list[int], tensors: list[np.ndarray],
                         i: int) -> tuple[tuple[np.ndarray, np.ndarray] | None, bool, tuple[int, ...]]:
        """What a binary layer's epilogue takes in after node ``i``: a relu -> affine pair (:meth:`_relu_affine`,
        ``relu`` True) or else, with :data:`FUSE_BARE_AFFINE`, an affine straight on its output that only node
        ``i`` feeds (``relu`` False): (scale, shift), ``relu`` and the fused node indices; ``(None, True, ())``
        when neither, or when the affine has another length than the layer's channels (the kernels read one
        value a channel; a file made that way keeps its separate steps, which broadcast as torch does)."""
        post, fused = self._relu_affine(nodes, users, tensors, i)
        relu = True
        aff = self._sole_user(nodes, users, i, "affine") if not fused and FUSE_BARE_AFFINE else None
        if aff is not None:
            post, relu, fused = _scale_shift(nodes[aff], tensors), False, (aff,)
        if post is None or post[0].shape != (self.header["tensors"][nodes[i]["w"]][1][0],):
            return None, True, ()
        return post, relu, fused

    def _sole_user(self, nodes: list[dict[str, Any]], users: list[int], i: int, op: str) -> int | None:
        """The node that alone reads node ``i``'s value, when it is an ``op``."""
        j = self._first_user.get(i)
        return j if users[i] == 1 and j is not None and nodes[j]["op"] == op else None

    def _free_plan(self) -> list[list[int]]:
        """For each step, the values it reads for the last time (freed after it)."""
        last = {}
        for step, (_, inputs, _) in enumerate(self._steps):
            for j in inputs:
                last[j] = step
        plan: list[list[int]] = [[] for _ in self._steps]
        for j, step in last.items():
            if j != self._output:
                plan[step].append(j)
        return plan

    @classmethod
    def load(cls, path: str | os.PathLike, *, backend: str = "auto", threads: int | None = None,
             isa: str | None = None, pool: str | None = None, fuse_signs: bool = True) -> "PackedModel":
        get_kernels(backend, threads, isa, pool)  # a bad backend, variant or pool is the caller's error
        header, tensors = fmt.read(path)
        try:
            return cls(header, tensors, backend=backend, threads=threads, isa=isa, pool=pool, fuse_signs=fuse_signs)
        except UsageError as err:  # the header's own checks (format, ops, attributes): named with the file
            raise UsageError(str(err) if str(err).startswith(str(path)) else f"{path}: {err}") from None
        except (KeyError, IndexError, TypeError, ValueError) as err:
            raise UsageError(f"{path} is a corrupted packed model ({type(err).__name__}: {err})") from None

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled (a spawned worker's model, ``copy.deepcopy``) as the file's header and tensors and the options of
        :meth:`load`: the kernels (C functions, closures) are made again where it is unpickled."""
        return _rebuilt, self._source

    # ------------------------------------------------------------------ op builders

    def _build(self, node: dict[str, Any], t: dict[str, np.ndarray | None],
               post: tuple[np.ndarray, np.ndarray] | None, relu: bool = True) -> Callable[..., torch.Tensor]:
        op = node["op"]
        tt = {k: None if v is None else torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32))
              for k, v in t.items()}
        if op not in ir.BINARY_OPS:
            self.weight_bytes += sum(v.numel() * 4 for v in tt.values() if v is not None)
        if op == "input":
            return lambda x: x
        if op in ir.BINARY_OPS:
            signs = fmt.unpack_bits(t["w"], tuple(self.header["tensors"][node["w"]][1]), np.int8)
            out_ch = signs.shape[0]
            alpha = np.ones(out_ch, np.float32) if t["alpha"] is None else \
                np.broadcast_to(t["alpha"].astype(np.float32), (out_ch,)).copy()
            bias = np.zeros(out_ch, np.float32) if t["b"] is None else t["b"].astype(np.float32)
            if node["bin_in"]:
                layer = (_BinaryConv(node, signs, alpha, bias, post, self.kernels, relu) if op == "bconv"
                         else _BinaryLinear(signs, alpha, bias, post, self.kernels, relu))
                held = [layer.words, alpha, bias, getattr(layer, "s", None), *(post or ())]
                self.weight_bytes += sum(a.nbytes for a in held if a is not None)
                return layer
            # real inputs (1W/32A): float op with the unpacked weights
            w = torch.from_numpy(signs.astype(np.float32) * alpha.reshape((-1,) + (1,) * (signs.ndim - 1)))
            b = torch.from_numpy(bias) if t["b"] is not None else None
            self.weight_bytes += w.numel() * 4 + (bias.nbytes if b is not None else 0)
            if op == "blinear":
                return lambda x: F.linear(x, w, b)
            return self._conv(node, w, b, 1)
        if op == "conv":
            conv = self._conv(node, tt["w"], tt["b"], node["groups"])
            if post is None:
                return conv
            self.weight_bytes += post[0].nbytes + post[1].nbytes
            return self._conv_relu_affine(conv, *post)
        if op == "linear":
            w, b = tt["w"], tt["b"]
            return lambda x: F.linear(x, w, b)
        if op == "affine":
            return self._affine(tt["scale"], tt["shift"])
        if op == "relu":
            return torch.relu
        if op == "sign":
            return _sign
        if op == "hardtanh":
            lo, hi = node["lo"], node["hi"]
            return lambda x: F.hardtanh(x, lo, hi)
        if op == "leaky_relu":
            slope = node["slope"]
            return lambda x: F.leaky_relu(x, slope)
        if op == "prelu":
            w = tt["w"]
            return lambda x: F.prelu(x, w)
        if op == "add":
            return torch.add
        if op == "cat":
            dim = node["dim"]
            return lambda *xs: torch.cat(xs, _after_batch(dim, xs[0], "cat"))
        if op == "maxpool":
            k, s, p, d, c = node["k"], node["stride"], node["pad"], node["dil"], node["ceil"]
            return lambda x: F.max_pool2d(x, k, s, p, d, c)
        if op == "avgpool":
            k, s, p, c, inc, div = node["k"], node["stride"], node["pad"], node["ceil"], node["incl"], node["div"]
            return lambda x: F.avg_pool2d(x, k, s, p, c, inc, div)
        if op == "adaptive_avgpool":
            size = node["size"]
            return lambda x: F.adaptive_avg_pool2d(x, size)
        if op == "mean":
            dims, keep = node["dims"], node["keepdim"]
            return lambda x: x.mean(dim=[_after_batch(d, x, "mean") for d in dims], keepdim=keep)
        if op == "flatten":
            start, end = node["start"], node["end"]
            return lambda x: torch.flatten(x, _after_batch(start, x, "flatten"), end)
        if op == "reshape":
            shape = node["shape"]
            return lambda x: x.reshape(x.shape[0], *shape)
        if op == "slice":
            index = tuple(slice(*r) for r in node["ranges"])
            return lambda x: x[index]
        if op == "cpad":
            pads, value = node["pads"], node["value"]
            return lambda x: F.pad(x, pads, "constant", value)
        if op == "unsqueeze":
            dim = node["dim"]
            return lambda x: x.unsqueeze(dim)
        if op == "squeeze":
            dim = node["dim"]
            return lambda x: unit_squeeze(x, dim)
        raise AssertionError(f"{op!r} is in the op table (reste.export.ir) but the runtime cannot run it")

    def _conv_relu_affine(self, conv: Callable, scale: np.ndarray, shift: np.ndarray) -> Callable:
        """conv -> ReLU -> per-channel affine, the last two in place on the conv's fresh output (one
        pass of the C kernels where :func:`_last_axis` applies, else in-place torch ops; the same
        float32 operations as the separate ops either way)."""
        affine = getattr(self.kernels, "channel_affine", None)
        s, sh = torch.from_numpy(scale), torch.from_numpy(shift)

        def run(x: torch.Tensor) -> torch.Tensor:
            y = conv(x)
            view = _last_axis(y, scale.shape[0]) if affine is not None else None
            if view is not None:
                affine(view, scale, shift, True)
                return y
            return torch.relu(y).mul_(_channel(s, y.dim())).add_(_channel(sh, y.dim()))

        return run

    def _affine(self, s: torch.Tensor, sh: torch.Tensor) -> Callable:
        """x * scale + shift per channel: one pass of the C kernels (in parallel, the same float32
        operations) where :func:`_last_axis` applies, else the torch ops."""
        affine = getattr(self.kernels, "channel_affine", None)
        scale, shift = s.numpy(), sh.numpy()

        def run(x: torch.Tensor) -> torch.Tensor:
            view = _last_axis(x, scale.shape[0]) if affine is not None else None
            if view is not None:
                y = torch.empty_like(x)  # (the same memory format)
                affine(view, scale, shift, False, _last_axis(y, scale.shape[0]))
                return y
            return x * _channel(s, x.dim()) + _channel(sh, x.dim())

        return run

    @staticmethod
    def _conv(node: dict[str, Any], w: torch.Tensor, b: torch.Tensor | None, groups: int) -> Callable:
        pt, pb, pl, pr = node["pad"]
        stride, dil = node["stride"], node["dil"]
        if pt == pb and pl == pr:
            return lambda x: F.conv2d(x, w, b, stride, (pt, pl), dil, groups)
        return lambda x: F.conv2d(F.pad(x, (pl, pr, pt, pb)), w, b, stride, 0, dil, groups)

    # --------------------------------------------------------------------- running

    @torch.no_grad()
    def forward(self, images: np.ndarray | torch.Tensor, *, trace: list[torch.Tensor] | None = None) -> torch.Tensor:
        """Logits as a float32 CPU tensor, for float images (N, C, H, W), preprocessed, or uint8 ones: raw
        pixels, which get the preprocessing the export records (:attr:`preprocessing`).

        With ``trace`` (a list), the input of every sign the graph takes (binary layers
        with binary inputs, sign ops) is appended to it in order, for
        :func:`reste.export.reference.compare`. Without it, a binary conv whose output only
        feeds another binary conv writes that conv's packed sign bits directly (integer
        thresholds equivalent to its float32 epilogue); with it, every layer computes its
        float32 output, so the trace holds the values; the bits, and so the logits, are the same.
        """
        x = self._inputs(images)
        if x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        values: dict[int, torch.Tensor] = {}
        packed: dict[int, PackedActivation] = {}  # a step's packed input, written by a _sign_pairs producer
        for step, (target, inputs, fn) in enumerate(self._steps):
            if trace is not None and step in self._sign_steps:
                trace.append(values[inputs[0]].clone())
            try:
                if trace is None and step in self._sign_pairs:
                    reader = self._sign_pairs[step]
                    values[target], bits = fn.with_signs(self._steps[reader][2], *(values[j] for j in inputs))
                    if bits is not None:
                        packed[reader] = bits
                elif step in packed:  # (only without a trace)
                    first = packed.pop(step)
                    values[target] = fn.to_bits(first) if step in self._bit_steps else \
                        fn(first, *(values[j] for j in inputs[1:]))
                elif trace is None and step in self._bit_steps:
                    values[target] = fn.to_bits(values[inputs[0]])
                else:
                    values[target] = fn(x) if not inputs else fn(*(values[j] for j in inputs))
            except (RuntimeError, TypeError, IndexError, ValueError) as err:
                if isinstance(err, UsageError):
                    raise
                # the load checks every attribute's type and range, not whether each fits the shapes it meets
                why = ("a corrupted file, or one another program wrote; export it again" if self.input_size else
                       "images of another shape than the model takes? (the file records no input size: export it "
                       "with input_size=... and the images are checked against it); else a corrupted file")
                raise UsageError(f"the packed model's node {target} cannot run on images of shape "
                                 f"{tuple(x.shape)[1:]} ({type(err).__name__}: {str(err).splitlines()[0][:150]}): "
                                 f"{why}") from None
            for j in self._last_use[step]:
                values.pop(j, None)
        return values[self._output]

    def __call__(self, images: np.ndarray | torch.Tensor, *, trace: list[torch.Tensor] | None = None) -> torch.Tensor:
        """:meth:`forward`: logits (N, classes) as a float32 CPU tensor for a batch of (N, C, H, W) images."""
        return self.forward(images, trace=trace)

    def predict(self, images: np.ndarray | torch.Tensor, batch_size: int = BATCH_SIZE) -> np.ndarray:
        """Class indices (int64) for the images (any form :meth:`forward` takes), computed in batches (a large
        uint8 array is converted batch by batch, not whole)."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise UsageError(f"batch_size must be a positive integer (images per forward pass), got {batch_size!r}")
        batch_size = int(batch_size)
        images = _array_or_tensor(images)
        if len(images) == 0:
            return np.zeros(0, np.int64)
        if isinstance(images, np.ndarray) and images.dtype == np.uint8:
            images = raw_batch(images, self._size(), "the uint8 images")  # a view in (N, C, H, W)
            if self.preprocessing is not None:  # every image's range, before any batch is computed
                check_pixel_range(images, self.preprocessing, "the uint8 images")
        else:
            images = self._inputs(images)
        out = [class_scores(self.forward(images[i:i + batch_size])).argmax(1).numpy()
               for i in range(0, len(images), batch_size)]
        return np.concatenate(out) if out else np.zeros(0, np.int64)

    def _size(self) -> tuple[int, ...]:
        """(C, H, W) of raw images: the model's input size, else the one the preprocessing records."""
        if self.input_size and len(self.input_size) == 3:
            return tuple(self.input_size)
        prep = self.preprocessing
        return prep.input_size if prep is not None else tuple(self.input_size or ())

    def _inputs(self, images: Any) -> torch.Tensor:
        """The float32 (N, *input_size) batch for ``images``: float ones as they are (preprocessed), uint8 ones (an
        array or tensor: raw pixels, in ``reste predict``'s layouts) with the recorded preprocessing."""
        images = _array_or_tensor(images)
        if isinstance(images, np.ndarray) and images.dtype == np.uint8:  # raw pixels, as `reste predict` takes them
            prep = self.preprocessing
            if prep is None:
                invalid = ir.invalid_preprocessing(self.meta)
                raise UsageError(f"uint8 images are raw pixels, and this packed model "
                                 f"{invalid or 'records no preprocessing (mean, std, pixel scale)'} to apply; pass "
                                 "float32 images, preprocessed")
            images = raw_inputs(images, self._size(), prep, "the uint8 images")
        elif (isinstance(images, np.ndarray) and not np.issubdtype(images.dtype, np.floating)
              or isinstance(images, torch.Tensor) and not images.dtype.is_floating_point):
            raise UsageError(f"images of type {images.dtype} are neither preprocessed floats nor uint8 pixels; pass "
                             "float32 (preprocessed) or uint8 (raw, e.g. array.astype(np.uint8))")
        if isinstance(images, np.ndarray):  # (another byte order, negative strides: as reste predict takes them)
            images = as_float32(images)
        x = torch.as_tensor(images).detach().to("cpu", torch.float32)
        size = self.input_size
        if size and (x.dim() != len(size) + 1 or tuple(x.shape[1:]) != tuple(size)):
            raise UsageError(f"the model expects images of shape (N, {', '.join(map(str, size))}), "
                             f"got {tuple(x.shape)}")
        bad = nonfinite_images(x.numpy())
        if bad:  # the PyTorch model gives NaN logits there, the packed one a confident class (sign(NaN) and the
            # integer sums are defined), which nothing downstream could tell from a good one: refused, as predict does
            raise UsageError(f"the inputs hold NaN or infinite values in {bad[0]} of {len(x)} images (first "
                             f"at index {bad[1]}); fix or drop those images")
        return x

    @property
    def input_size(self) -> tuple[int, ...] | None:
        size = self.header["nodes"][0].get("shape")
        return tuple(size) if size else None

    @property
    def preprocessing(self) -> ir.Preprocessing | None:
        """What raw images need before :meth:`forward` (input size, mean, std, pixel scale), as the
        export recorded it; ``None`` when it did not (see :mod:`reste.export.inputs`)."""
        return ir.Preprocessing.from_meta(self.meta)

    def with_backend(self, backend: str) -> "PackedModel":
        """This model run by another backend's kernels (``"auto"``, ``"c"``, ``"numpy"``): itself where it already
        runs on them, else a copy made from its file's header and tensors, its other options kept."""
        if backend == "auto" or backend == self.backend:
            return self
        header, tensors, options = self._source
        return PackedModel(header, tensors, **{**options, "backend": backend})

    @property
    def kernel_name(self) -> str:
        """The kernels that run it, as the commands name them: the backend and, for C, its variant (``c/avx512``,
        ``c/avx2``, ``numpy``): timings of two machines compare only with it (review deploy1, suggestion 3)."""
        return self.backend + (f"/{self.isa}" if self.isa else "")

    def __repr__(self) -> str:
        n = sum(1 for node in self.header["nodes"] if node["op"] in ir.BINARY_OPS)
        return f"PackedModel({self.meta.get('model_name', '?')}, {n} binary layers, backend={self.kernel_name})"
