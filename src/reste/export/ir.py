"""The exported graph's vocabulary: every op, its attributes and the keys that hold tensors.

One table (:data:`OPS`) read by everything that speaks the graph: :mod:`reste.export.graph`
builds nodes from a traced model, :mod:`reste.export.exporter` writes them (a tensor key
becomes an index into the file's tensor list), :mod:`reste.export.runtime` and
:mod:`reste.export.reference` run them. It also names the header keys of the preprocessing
a model expects (:class:`Preprocessing`). Only the standard library (and ``reste.errors``) is
imported here, so the runtime reads the table without torch.fx or the training code.

A node is a dict: ``op`` (a name in :data:`OPS`), ``in`` (indices of earlier nodes; node 0
is the input), optionally ``name`` (the module it came from), and the op's attributes.
``pad`` is ``[top, bottom, left, right]``. The ops:

    input     [shape]                                   node 0; shape (C, H, W) when known
    conv      w, b, stride, pad, dil, groups [shift_err] float convolution
    bconv     w (bits), alpha, b, stride, pad, dil, bin_in
                                                        conv(sign(x) or x, sign(w) * alpha) + b,
                                                        zero padding applied after sign
    linear    w, b [shift_err]
    blinear   w (bits), alpha, b, bin_in
    affine    scale, shift [shift_err]                  per channel (axis 1): a batch norm
    relu / sign / hardtanh(lo, hi) / leaky_relu(slope) / prelu(w)
    add                                                 two inputs
    cat       dim                                       any number of inputs
    maxpool   k, stride, pad, dil, ceil
    avgpool   k, stride, pad, ceil, incl, div
    adaptive_avgpool  size
    mean      dims, keepdim
    flatten   start, end
    reshape   shape (without the batch dimension)
    slice     ranges: [start, stop, step] per dimension from 0 (null = default)
    cpad      pads (``F.pad`` order), value             constant padding

``shift_err`` (built, not written; export's check adds it to the float32 reference's bounds): how far
the float32 model may put a batch norm's shift from the stored one, which it computes from the running
mean: ``bias - mean * scale`` rounds by up to 4 u (|mean * scale| + |bias|), one rounding more or less
than the stored value (a fused multiply-add), which matters where the two terms nearly cancel.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import UsageError


@dataclass(frozen=True)
class Op:
    """One op of the graph.

    ``attrs`` are stored in the node as JSON values, ``tensors`` as tensor indices (``None``
    for an absent bias or scale); ``optional`` attributes may be missing; ``build_only``
    ones help the graph builder and are not written; ``inputs`` is the number of inputs
    (``None``: any number).
    """

    name: str
    attrs: tuple[str, ...] = ()
    tensors: tuple[str, ...] = ()
    inputs: int | None = 1
    optional: tuple[str, ...] = ()
    build_only: tuple[str, ...] = ()


_CONV = ("stride", "pad", "dil")

OPS: dict[str, Op] = {op.name: op for op in (
    Op("input", inputs=0, optional=("shape",)),
    Op("conv", (*_CONV, "groups"), ("w", "b"), build_only=("shift_err",)),
    Op("bconv", (*_CONV, "bin_in"), ("w", "alpha", "b")),
    Op("linear", (), ("w", "b"), build_only=("shift_err",)),
    Op("blinear", ("bin_in",), ("w", "alpha", "b")),
    Op("affine", (), ("scale", "shift"), build_only=("bn1d", "shift_err")),
    Op("relu"),
    Op("sign"),
    Op("hardtanh", ("lo", "hi")),
    Op("leaky_relu", ("slope",)),
    Op("prelu", (), ("w",)),
    Op("add", inputs=2),
    Op("cat", ("dim",), inputs=None),
    Op("maxpool", ("k", "stride", "pad", "dil", "ceil")),
    Op("avgpool", ("k", "stride", "pad", "ceil", "incl", "div")),
    Op("adaptive_avgpool", ("size",)),
    Op("mean", ("dims", "keepdim")),
    Op("flatten", ("start", "end")),
    Op("reshape", ("shape",)),
    Op("slice", ("ranges",)),
    Op("cpad", ("pads", "value")),
)}

#: The binary layers: weights stored as bits, inputs signed when ``bin_in``.
BINARY_OPS = ("bconv", "blinear")

#: Keys every node may carry besides its op's.
NODE_KEYS = ("op", "in", "name")


def get_op(name: str) -> Op:
    """The table entry of ``name``; a ``UsageError`` for an op not in :data:`OPS` (a newer file)."""
    op = OPS.get(name)
    if op is None:
        raise UsageError(f"unknown op {name!r} in the packed model; it needs a newer reste")
    return op


def tensor_keys(node: dict[str, Any]) -> tuple[str, ...]:
    """The keys of ``node`` that hold tensors."""
    return get_op(node["op"]).tensors


def takes_sign(node: dict[str, Any]) -> bool:
    """Whether the node takes the sign of its (first) input: a ``sign``, or a binary layer with binary inputs."""
    return node["op"] == "sign" or (node["op"] in BINARY_OPS and bool(node.get("bin_in")))


def check_node(node: dict[str, Any]) -> None:
    """``ValueError`` unless ``node`` has exactly its op's keys (build-only ones allowed) and inputs."""
    op = get_op(node["op"])
    keys = set(node) - set(NODE_KEYS)
    missing = set(op.attrs + op.tensors) - keys
    extra = keys - set(op.attrs + op.tensors + op.optional + op.build_only)
    if missing or extra:
        raise ValueError(f"{op.name} node: missing {sorted(missing)}, unexpected {sorted(extra)}")
    if op.inputs is not None and len(node.get("in", ())) != op.inputs:
        raise ValueError(f"{op.name} node: {len(node.get('in', ()))} inputs, expected {op.inputs}")


@dataclass(frozen=True)
class Preprocessing:
    """What raw images need before the model, as the header's ``meta`` records it: the model's
    ``input_size`` (C, H, W) and the data set's normalisation: a pixel ``p`` stored as 0..``pixel_scale``
    becomes ``(p / pixel_scale - mean[c]) / std[c]``."""

    input_size: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    pixel_scale: float

    KEYS = ("input_size", "mean", "std", "pixel_scale")

    def to_meta(self) -> dict[str, Any]:
        return {"input_size": list(self.input_size), "mean": list(self.mean), "std": list(self.std),
                "pixel_scale": self.pixel_scale}

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> "Preprocessing | None":
        """The preprocessing a header records; ``None`` when it records none (or only part of it)."""
        if not all(meta.get(k) is not None for k in cls.KEYS):
            return None
        try:
            size = tuple(int(s) for s in meta["input_size"])
            mean = tuple(float(m) for m in meta["mean"])
            std = tuple(float(s) for s in meta["std"])
            scale = float(meta["pixel_scale"])
        except (TypeError, ValueError):
            return None
        if len(size) != 3 or len(mean) != size[0] or len(std) != size[0] or scale <= 0 or min(std) <= 0:
            return None
        return cls(size, mean, std, scale)
