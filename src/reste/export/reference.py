"""A float64 reference for an exported binary network, and comparisons that know about near-ties.

A binary network is discontinuous. Two float32 implementations of it (the PyTorch
model, the packed engine, ONNX) sum in different orders, and the order depends on
the CPU (AVX2, AVX-512 and AMX kernels of oneDNN, OpenBLAS, ...). A pre-activation
that sits within rounding of zero can then take either sign, and one flipped sign
changes everything after it. So no float32 implementation can promise to be
identical to another on every machine, and a test that compares two of them can
fail on some CPU. This module gives every comparison a reference that does not
depend on the summation order, and the tolerance that follows from the computation:

* :func:`graph_reference` evaluates the exported graph in float64, the binary
  layers as exact integer sums, and propagates, element by element, a bound on how
  far a float32 evaluation of the same graph, in any summation order, can be from
  it (first-order running error analysis, ``u = 2**-24``):

  =====================  ==============================================================
  op                     bound on the output error ``e``
  =====================  ==============================================================
  float conv / linear    ``|W| * e_in + g(n + 2) (|W| * (|x| + e_in) + |b|)``; n the
                         reduction length, ``g(k) = k u / (1 - k u)``; the 2 covers the
                         bias and the float32 rounding of folded weights
  binary conv / linear   binary input: ``g(n + 2) (alpha * taps + |b|)`` (its signs are
                         exact unless they flip); real input: as a float conv with
                         ``|W| = alpha``
  affine (batch norm)    ``|s| e_in + g(4) (|s| (|x| + e_in) + |t|)``
  add                    ``e_a + e_b + u (|a| + |b|)``
  average, mean          the average of ``e_in`` plus ``g(k + 1)`` times the average of
                         ``|x|``, k the window size
  max pool, slices,      carried through (``|max x' - max x| <= max |x' - x|``)
  (un)squeeze, ...
  relu, hardtanh         carried through; leaky ReLU / PReLU: times ``max(1, |slope|)``
  sign                   0 (exact, unless it flips)
  =====================  ==============================================================

  Every sign input ("site") is recorded with its value and its bound, in the order
  the graph runs them, which is the order the model runs its estimators.
* :func:`trace_model` records the sign inputs of a PyTorch model;
  :meth:`reste.export.PackedModel.forward` does the same with ``trace=``.
* :func:`compare` sorts each image into *agree* (every traced sign input and every
  logit within ``SLACK`` times its bound of the reference), *near-tie* (a sign
  differs, and at the first site where one does, every value is within the slack
  of the reference, so each flipped element was within rounding of zero), or
  *mismatch* (anything else: not explained by rounding, a bug).

The bound is first order (it drops terms of order ``u**2``); ``SLACK = 2`` covers
that and nothing else.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UsageError
from . import format as fmt
from . import ir
from .runtime import unit_squeeze

#: float32 unit roundoff.
U32 = 2.0 ** -24
#: Factor on the first-order bounds in every comparison.
SLACK = 2.0


def gamma(k: int) -> float:
    """``k u / (1 - k u)``: the relative error bound of a float32 sum of k + 1 terms."""
    return k * U32 / (1.0 - k * U32)


@dataclass
class Reference:
    """The float64 evaluation of a graph: logits, sign inputs ("sites"), and their float32 bounds."""

    logits: torch.Tensor
    logit_bound: torch.Tensor
    sites: list[torch.Tensor] = field(default_factory=list)
    bounds: list[torch.Tensor] = field(default_factory=list)

    def argmax_ties(self) -> torch.Tensor:
        """Per image, whether its two largest logits are within float32 rounding of each other (the slack bound
        of both): a float32 evaluation that agrees with the reference may still pick the other class."""
        top = self.logits.topk(min(2, self.logits.shape[1]), dim=1)
        if top.values.shape[1] < 2:
            return torch.zeros(self.logits.shape[0], dtype=torch.bool)
        bound = self.logit_bound.gather(1, top.indices).sum(1)
        return (top.values[:, 0] - top.values[:, 1]) <= SLACK * bound

    def distinct_sites(self) -> "Reference":
        """This reference with each sign input once: two layers that take the sign of one tensor (a ResNet
        block's first conv and its shortcut) take one site, as an ONNX exporter may merge their signs."""
        kept = [k for k, v in enumerate(self.sites) if all(v is not self.sites[j] for j in range(k))]
        return Reference(self.logits, self.logit_bound, [self.sites[k] for k in kept],
                         [self.bounds[k] for k in kept])

    def near_ties(self, image: int | None = None) -> int:
        """How many sign inputs lie within the slack bound of zero (of one image, or of all)."""
        count = 0
        for v, e in zip(self.sites, self.bounds):
            if image is not None:
                v, e = v[image], e[image]
            count += int((v.abs() <= SLACK * e).sum())
        return count


def _channel(v: torch.Tensor, ndim: int) -> torch.Tensor:
    return v.view((1, -1) + (1,) * (ndim - 2))


def _sign(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x < 0, -1.0, 1.0).to(x.dtype)


class _Evaluator:
    """Runs one graph in float64, carrying (value, bound) pairs."""

    def __init__(self, header: dict[str, Any], tensors: list[np.ndarray]) -> None:
        self.header, self.tensors = header, tensors
        self.sites: list[torch.Tensor] = []
        self.bounds: list[torch.Tensor] = []

    def tensor(self, node: dict[str, Any], key: str) -> torch.Tensor | None:
        idx = node.get(key)
        if idx is None:
            return None
        kind, shape, _ = self.header["tensors"][idx]
        array = fmt.unpack_bits(self.tensors[idx], tuple(shape)) if kind == "bits" else self.tensors[idx]
        return torch.from_numpy(np.asarray(array, dtype=np.float64))

    def run(self, x: torch.Tensor) -> Reference:
        nodes = self.header["nodes"]
        values: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(nodes)
        for i, node in enumerate(nodes):
            args = [values[j] for j in node["in"]]
            values[i] = (x, torch.zeros_like(x)) if node["op"] == "input" else self.op(node, args)
        out, bound = values[int(self.header["output"])]
        return Reference(out, bound, self.sites, self.bounds)

    def site(self, v: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        self.sites.append(v)
        self.bounds.append(e)
        return _sign(v)

    # ---------------------------------------------------------------------- ops

    def op(self, node: dict[str, Any], args: list[Any]) -> tuple[torch.Tensor, torch.Tensor]:
        op = node["op"]
        if op in ("conv", "linear", *ir.BINARY_OPS):
            return self.matmul(node, *args[0])
        if op == "sign":
            v, e = args[0]
            s = self.site(v, e)
            return s, torch.zeros_like(s)
        if op == "add":
            (a, ea), (b, eb) = args
            return a + b, ea + eb + U32 * (a.abs() + b.abs())
        if op == "cat":
            return (torch.cat([a[0] for a in args], node["dim"]), torch.cat([a[1] for a in args], node["dim"]))
        v, e = args[0]
        if op == "affine":
            s, t = _channel(self.tensor(node, "scale"), v.dim()), _channel(self.tensor(node, "shift"), v.dim())
            return v * s + t, s.abs() * e + gamma(4) * (s.abs() * (v.abs() + e) + t.abs()) + node.get("shift_err", 0.0)
        if op == "relu":
            return torch.relu(v), e
        if op == "hardtanh":
            return F.hardtanh(v, node["lo"], node["hi"]), e
        if op == "leaky_relu":
            return F.leaky_relu(v, node["slope"]), max(1.0, abs(node["slope"])) * e
        if op == "prelu":
            w = self.tensor(node, "w")
            return F.prelu(v, w), torch.clamp(w.abs().max(), min=1.0) * e
        if op == "maxpool":
            k, s, p, d, c = node["k"], node["stride"], node["pad"], node["dil"], node["ceil"]
            return F.max_pool2d(v, k, s, p, d, c), F.max_pool2d(e, k, s, p, d, c)
        if op == "avgpool":
            k, s, p, c, inc, div = node["k"], node["stride"], node["pad"], node["ceil"], node["incl"], node["div"]
            pool: Callable[[torch.Tensor], torch.Tensor] = lambda t: F.avg_pool2d(t, k, s, p, c, inc, div)  # noqa: E731
            return pool(v), pool(e) + gamma(k[0] * k[1] + 1) * pool(v.abs())
        if op == "adaptive_avgpool":
            size = node["size"]
            rows, cols = size[0] or v.shape[-2], size[1] or v.shape[-1]
            window = math.ceil(v.shape[-2] / rows) * math.ceil(v.shape[-1] / cols)
            window = max(window, 1) + 1  # adaptive windows can be one longer than the ratio
            pool = lambda t: F.adaptive_avg_pool2d(t, size)  # noqa: E731
            return pool(v), pool(e) + gamma(window + 1) * pool(v.abs())
        if op == "mean":
            dims, keep = node["dims"], node["keepdim"]
            window = math.prod(v.shape[d] for d in dims)
            return v.mean(dim=dims, keepdim=keep), e.mean(dim=dims, keepdim=keep) + \
                gamma(window + 1) * v.abs().mean(dim=dims, keepdim=keep)
        if op == "flatten":
            return torch.flatten(v, node["start"], node["end"]), torch.flatten(e, node["start"], node["end"])
        if op == "reshape":
            return v.reshape(v.shape[0], *node["shape"]), e.reshape(e.shape[0], *node["shape"])
        if op == "slice":
            index = tuple(slice(*r) for r in node["ranges"])
            return v[index], e[index]
        if op == "cpad":
            return F.pad(v, node["pads"], "constant", node["value"]), F.pad(e, node["pads"], "constant", 0.0)
        if op == "unsqueeze":
            return v.unsqueeze(node["dim"]), e.unsqueeze(node["dim"])
        if op == "squeeze":
            return unit_squeeze(v, node["dim"]), unit_squeeze(e, node["dim"])
        raise ValueError(f"the float64 reference does not know op {op!r}")

    def matmul(self, node: dict[str, Any], v: torch.Tensor, e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        op = node["op"]
        w, b = self.tensor(node, "w"), self.tensor(node, "b")
        if op in ir.BINARY_OPS:
            alpha = self.tensor(node, "alpha")
            alpha = torch.ones(w.shape[0], dtype=torch.float64) if alpha is None else alpha.expand(w.shape[0])
            if node["bin_in"]:
                signs = self.site(v, e)
                ints = self._integer_sums(node, signs, w)
                # the number of valid (unpadded) products at each output: the same for every image
                taps = self._apply(node, torch.ones_like(signs[:1]), w.abs(), None).expand_as(ints)
                a = _channel(alpha, ints.dim())
                out = ints * a + (0.0 if b is None else _channel(b, ints.dim()))
                n = math.prod(w.shape[1:])
                bound = gamma(n + 2) * (a * taps + (0.0 if b is None else _channel(b.abs(), ints.dim())))
                return out, bound
            w = w * alpha.reshape((-1,) + (1,) * (w.dim() - 1))
        n = math.prod(w.shape[1:])
        out = self._apply(node, v, w, b)
        absolute = self._apply(node, v.abs() + e, w.abs(), None if b is None else b.abs())
        return out, self._apply(node, e, w.abs(), None) + gamma(n + 2) * absolute + node.get("shift_err", 0.0)

    @classmethod
    def _integer_sums(cls, node: dict[str, Any], signs: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """The exact sums of +-1 products of a binary layer with binary input, as float64.

        Every product is +-1 and every partial sum an integer of magnitude at most the
        reduction length n, so below 2**24 float32 holds each of them exactly, in any
        summation order (and bf16 or tf32 inputs too, should the user's settings ask for
        them): the float32 result is the float64 one, at a fraction of its cost. A
        transform-based convolution (Winograd, FFT) would not be exact; its result
        shows as a non-integer, and then the sums are redone in float64.
        """
        if math.prod(w.shape[1:]) < 2 ** 24:
            sums = cls._apply(node, signs.float(), w.float(), None).double()
            if bool((sums == sums.round()).all()):
                return sums
        return cls._apply(node, signs, w, None)  # float64: exact for integers below 2**53

    @staticmethod
    def _apply(node: dict[str, Any], x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        if node["op"] in ("linear", "blinear"):
            return F.linear(x, w, b)
        pt, pb, pl, pr = node["pad"]
        groups = node.get("groups", 1)
        return F.conv2d(F.pad(x, (pl, pr, pt, pb)), w, b, node["stride"], 0, node["dil"], groups)


def _checked_images(images: Any, header: dict[str, Any]) -> np.ndarray:
    """``images`` as float32, refused in one line where the packed model would not compute them as given (review
    apifuzz1): uint8 raw pixels, which ``PackedModel`` preprocesses and the reference took as floats (every image of a
    correct file then a "mismatch"), integer ones, images of another shape than the recorded input size, NaN or
    infinite values (the reference's exact sums gave them a class)."""
    from .inputs import nonfinite_images

    floating = images.dtype.is_floating_point if isinstance(images, torch.Tensor) else \
        np.issubdtype(np.asarray(images).dtype, np.floating)
    if not floating:
        kind = images.dtype if hasattr(images, "dtype") else np.asarray(images).dtype
        raw = (" (raw pixels, which PackedModel preprocesses itself: give both the preprocessed floats, "
               "(pixel / pixel_scale - mean) / std with PackedModel.preprocessing's values)") if str(kind) in (
            "uint8", "torch.uint8") else ""
        raise UsageError(f"graph_reference takes the float images the packed model computes on, got {kind}{raw}")
    x = np.asarray(images.detach().cpu().float() if isinstance(images, torch.Tensor) else images, np.float32)
    nodes = header.get("nodes") if isinstance(header, dict) else None
    size = nodes[0].get("shape") if nodes and isinstance(nodes[0], dict) else None
    if size and (x.ndim != len(size) + 1 or tuple(x.shape[1:]) != tuple(size)):
        raise UsageError(f"the model expects images of shape (N, {', '.join(map(str, size))}), got {tuple(x.shape)}")
    bad = nonfinite_images(x)
    if bad:
        raise UsageError(f"the images hold NaN or infinite values in {bad[0]} of {len(x)} images (first at index "
                         f"{bad[1]}); the reference, as the packed model, takes finite images")
    return x


def graph_reference(source: str | os.PathLike | tuple[dict[str, Any], list[np.ndarray]],
                    images: np.ndarray | torch.Tensor) -> Reference:
    """The float64 reference of a packed-model file (or of its ``(header, tensors)``) on ``images``.

    The images are taken as float32 (as every implementation takes them) and then
    converted exactly to float64.
    """
    header, tensors = fmt.read(source) if not isinstance(source, tuple) else source
    x = torch.as_tensor(_checked_images(images, header)).to(torch.float64)
    with torch.no_grad():
        return _Evaluator(header, tensors).run(x)


def trace_model(model: nn.Module, images: np.ndarray | torch.Tensor,
                dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Eval-mode logits of a PyTorch model and the input of every sign it takes, in order, on the CPU.

    Every estimator call counts, except on a weight (a parameter). With ``dtype``
    float64 a copy of the model runs in float64. The model runs where its parameters are (a GPU too).
    """
    from ..estimators import Estimator
    from ..layers import eval_mode, model_device

    if dtype != torch.float32:
        import copy

        model = copy.deepcopy(model).to(dtype)
    sites: list[torch.Tensor] = []

    def record(module: nn.Module, inputs: tuple[Any, ...]) -> None:
        x = inputs[0]
        if not isinstance(x, nn.Parameter):
            sites.append(x.detach().to("cpu", copy=True))

    images = _on_host(images)
    # (images made on the CPU for a model on a GPU: a device mismatch, review diff35)
    device = model_device(model, torch.device("cpu"))
    hooks = [m.register_forward_pre_hook(record) for m in model.modules() if isinstance(m, Estimator)]
    try:
        with torch.no_grad(), eval_mode(model):
            logits = model(torch.as_tensor(np.asarray(images, dtype=np.float32)).to(device, dtype))
    finally:
        for h in hooks:
            h.remove()
    return logits.detach().cpu(), sites


@dataclass
class Comparison:
    """How an implementation's outputs relate to the float64 reference, image by image."""

    images: int
    agree: int = 0
    near_tie: int = 0
    mismatch: int = 0
    same_predictions: int = 0
    #: max |logit - reference| over the images that agree
    max_abs_diff: float = 0.0
    #: the largest ratio |value - reference| / bound over every compared value of the agreeing images
    worst_ratio: float = 0.0
    #: one line per mismatched image (and the export check's own: an untraced run that differs)
    problems: list[str] = field(default_factory=list)
    #: whether sign inputs were compared (False: logits only)
    traced: bool = True

    @property
    def ok(self) -> bool:
        """No image disagrees by more than rounding explains."""
        return self.mismatch == 0

    def summary(self) -> str:
        text = (f"{self.agree}/{self.images} images agree within float32 rounding (max |logit diff| "
                f"{self.max_abs_diff:.2e}), {self.same_predictions}/{self.images} same predictions")
        if self.near_tie:
            text += f", {self.near_tie} with a sign flipped at a near-tie (rounding)"
        if self.mismatch:
            text += f", {self.mismatch} NOT explained by rounding"
        return text


def exact_ties(ref: Reference, sites: list[Any] | None) -> tuple[int, int]:
    """(sign inputs, images): the implementation's sign inputs ``sites`` (in the order of ``ref.sites``, as
    :func:`compare` takes them; ``None`` or unmatched: none counted) that are exactly 0 in the reference and not 0
    in the implementation. A binary layer's sum of +-1 that cancels with no bias or shift before the next sign is 0;
    the packed file takes sign(0) = +1 there, and an implementation that sums +-alpha (the scale inside the sum)
    the sign of its rounding, either way: a tie wherever the sum cancels, not a rare near-tie (review layers1 D1).
    A ReLU's zeros are 0 in both: not counted."""
    if sites is None or len(sites) != len(ref.sites) or not all(
            _same_but_unit_dims(tuple(s.shape), tuple(r.shape)) for s, r in zip(sites, ref.sites)):
        return 0, 0
    found = []
    sites = [_on_host(s) for s in sites]  # (a trace of a model on a GPU: review gpuread2 #3)
    for k, (s, r) in enumerate(zip(sites, ref.sites)):
        if all(r is not ref.sites[j] for j in range(k)):  # (a site two layers share, once)
            found.append(((r == 0) & (torch.as_tensor(np.asarray(s)).reshape(r.shape) != 0)).flatten(1))
    if not found:
        return 0, 0
    return int(sum(int(z.sum()) for z in found)), int(torch.cat(found, 1).any(1).sum())


def _on_host(values: Any) -> Any:
    """``values`` as a CPU tensor where it is a tensor elsewhere (a GPU's), else as it is: the reference's are on
    the CPU."""
    return values.detach().cpu() if isinstance(values, torch.Tensor) else values


def _within(got: torch.Tensor, ref: torch.Tensor, bound: torch.Tensor) -> tuple[bool, float]:
    diff = (got.to(torch.float64) - ref).abs()
    allowed = SLACK * bound
    ratio = float((diff / allowed.clamp_min(1e-300)).max()) if diff.numel() else 0.0
    return bool((diff <= allowed).all()), ratio


def _same_but_unit_dims(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    """Whether two shapes hold the same values in the same order: the same batch and sizes but for sizes 1."""
    return a[:1] == b[:1] and [d for d in a[1:] if d != 1] == [d for d in b[1:] if d != 1]


def compare(ref: Reference, logits: Any, sites: list[Any] | None = None) -> Comparison:
    """Sort each image into agree / near-tie / mismatch (see the module docstring).

    ``sites`` are the implementation's sign inputs in the order of ``ref.sites`` (of the same shapes but for
    sizes 1: a 1-D layer's (N, C, L) is the graph's (N, C, 1, L)); with
    a different count (or ``None``) only the logits are compared, and a disagreeing
    image counts as a near-tie when the reference has any sign input within the slack
    bound of zero for it.
    """
    if not isinstance(ref, Reference):  # (review apifuzz1: the arguments swapped gave a NumPy object-dtype error)
        raise UsageError(f"compare takes the Reference first (graph_reference(path, images)), then the logits, got "
                         f"{type(ref).__name__}")
    try:
        got = torch.as_tensor(np.asarray(_on_host(logits), dtype=np.float64))
    except (TypeError, ValueError) as err:
        raise UsageError(f"compare takes the logits as an array of numbers, got {type(logits).__name__} "
                         f"({str(err).splitlines()[0][:100]})") from None
    if tuple(got.shape) != tuple(ref.logits.shape):  # (another batch gave "The size of tensor a (2) must match ...")
        raise UsageError(f"compare: logits of shape {tuple(got.shape)} for a reference of {tuple(ref.logits.shape)}; "
                         "give the logits of the same images, in the same order")
    n = got.shape[0]
    traced = sites is not None and len(sites) == len(ref.sites) and all(
        _same_but_unit_dims(tuple(s.shape), tuple(r.shape)) for s, r in zip(sites, ref.sites))
    result = Comparison(images=n, traced=traced)
    result.same_predictions = int((got.argmax(1) == ref.logits.argmax(1)).sum())
    # a 1-D layer's sign input is (N, C, L) in the model and (N, C, 1, L) in the graph: the same values
    # (sign inputs traced on a GPU: the reference's are on the CPU, review gpuread2 #3)
    traced_sites = [torch.as_tensor(_on_host(s)).reshape(r.shape) for s, r in zip(sites, ref.sites)] if traced else None
    for i in range(n):
        status, detail, ratio = _image_status(ref, got, traced_sites, i)
        if status == "agree":
            result.agree += 1
            result.max_abs_diff = max(result.max_abs_diff, float((got[i] - ref.logits[i]).abs().max()))
            result.worst_ratio = max(result.worst_ratio, ratio)
        elif status == "near_tie":
            result.near_tie += 1
        else:
            result.mismatch += 1
            result.problems.append(f"image {i}: {detail}")
    return result


def _image_status(ref: Reference, got: torch.Tensor, sites: list[torch.Tensor] | None,
                  i: int) -> tuple[str, str, float]:
    worst = 0.0
    if sites is not None:
        for k, (s, v, e) in enumerate(zip(sites, ref.sites, ref.bounds)):
            ok, ratio = _within(s[i], v[i], e[i])
            flipped = (_sign(s[i].to(torch.float64)) != _sign(v[i]))
            if not ok:
                bad = int(((s[i].to(torch.float64) - v[i]).abs() > SLACK * e[i]).sum())
                return "mismatch", f"sign input {k}: {bad} values beyond float32 rounding (ratio {ratio:.3g})", ratio
            worst = max(worst, ratio)
            if bool(flipped.any()):
                return "near_tie", f"sign input {k}: {int(flipped.sum())} signs flipped within rounding", ratio
    ok, ratio = _within(got[i], ref.logits[i], ref.logit_bound[i])
    if ok:
        return "agree", "", max(worst, ratio)
    if sites is None and ref.near_ties(i):
        return "near_tie", f"{ref.near_ties(i)} sign inputs within rounding of zero", ratio
    return "mismatch", f"logits beyond float32 rounding (ratio {ratio:.3g})", ratio
