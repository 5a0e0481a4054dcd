"""The exported graph's vocabulary: every op, its attributes and the keys that hold tensors.

One table (:data:`OPS`) read by everything that speaks the graph: :mod:`reste.export.graph`
builds nodes from a traced model, :mod:`reste.export.exporter` writes them (a tensor key
becomes an index into the file's tensor list), :mod:`reste.export.runtime` and
:mod:`reste.export.reference` run them. It also names the header keys of the preprocessing
a model expects (:class:`Preprocessing`). Only the standard library (and ``reste.errors``) is
imported here, so the runtime reads the table without torch.fx or the training code.

A node is a dict: ``op`` (a name in :data:`OPS`), ``in`` (indices of earlier nodes; node 0
is the input), optionally ``name`` (the module it came from), and the op's attributes.
``pad`` is ``[top, bottom, left, right]``. A 1-D layer (``Conv1d``, ``MaxPool1d``, ...) is its 2-D op
on a height of 1 (kernel, stride, padding and dilation 1 along the height) between an ``unsqueeze``
and a ``squeeze`` of that height; the graph builder drops each ``squeeze`` that an ``unsqueeze`` of the
same dimension undoes, so consecutive 1-D layers run as 2-D ones on (N, C, 1, L). The ops:

    input     [shape]                                   node 0; shape (C, H, W) when known ((C, L): 1-D layers)
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
    unsqueeze dim                                       a new dimension of size 1 at dim (>= 1)
    squeeze   dim                                       removes dimension dim (>= 1), of size 1

``shift_err`` (built, not written; export's check adds it to the float32 reference's bounds): how far
the float32 model may put a batch norm's shift from the stored one, which it computes from the running
mean: ``bias - mean * scale`` rounds by up to 4 u (|mean * scale| + |bias|), one rounding more or less
than the stored value (a fused multiply-add), which matters where the two terms nearly cancel.
"""

from __future__ import annotations

import math

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
    Op("unsqueeze", ("dim",)),
    Op("squeeze", ("dim",)),
)}

#: the most dimensions an ``unsqueeze`` or ``squeeze`` may name (the batch is dimension 0, never named)
MAX_DIM = 8

#: The header's ``format``: what every file reste writes names itself (a reader refuses any other name).
FORMAT_NAME = "reste-packed"

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
    becomes ``(p / pixel_scale - mean[c]) / std[c]``. ``resize`` (optional): the shorter side an image file is
    resized to (bilinear, aspect ratio kept) before the centre crop of (H, W), as the data set's test images are
    (ImageNet: 256, torchvision's ``Resize(256), CenterCrop(224)``); without it an image file is resized to just
    cover (H, W)."""

    input_size: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    pixel_scale: float
    resize: int | None = None

    KEYS = ("input_size", "mean", "std", "pixel_scale")  # (the required ones; ``resize`` is optional)

    def to_meta(self) -> dict[str, Any]:
        meta = {"input_size": list(self.input_size), "mean": list(self.mean), "std": list(self.std),
                "pixel_scale": self.pixel_scale}
        return meta if self.resize is None else {**meta, "resize": self.resize}

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
        if len(size) != 3 or len(mean) != size[0] or len(std) != size[0] or not scale > 0 or not min(std) > 0 \
                or not 0 < math.prod(size) <= MAX_INPUT_ELEMENTS \
                or not all(abs(v) < float("inf") for v in (*mean, *std, scale)):  # NaN and inf fail too
            return None
        resize = meta.get("resize")
        if resize is not None and not (type(resize) is int and max(size[1:]) <= resize <= MAX_RESIZE):
            return None  # (a crop of (H, W) needs a shorter side of at least H and W)
        return cls(size, mean, std, scale, resize)


def invalid_preprocessing(meta: dict[str, Any]) -> str:
    """For a header whose preprocessing cannot be used (``Preprocessing.from_meta`` gives None): " records an invalid
    preprocessing (...)" where it records every key (a file made by hand, or damaged), else "" (it records none)."""
    if not all(meta.get(k) is not None for k in Preprocessing.KEYS):
        return ""
    given = ", ".join(f"{k} {meta[k]!r}" for k in (*Preprocessing.KEYS, "resize") if meta.get(k) is not None)
    return (f"records an invalid preprocessing ({given[:150]}: one mean and one std > 0 per channel of a (C, H, W) "
            "input_size, a pixel_scale > 0)")


#: the most values one input sample may hold (ImageNet's 3x224x224 is 150,528; a 4K RGB image about 2.5e7)
MAX_INPUT_ELEMENTS = 1 << 25

#: the largest ``resize`` a header may record (a real one: a few hundred pixels)
MAX_RESIZE = 1 << 14


# ------------------------------------------------------------------ a read graph, checked

#: the most padding a binary conv may have in a file (a real one has a few pixels)
MAX_PAD = 1024
#: the largest stride, padding, dilation, kernel or pooled size any node may have (a real one: a few, up to a few
#: hundred pixels); a crafted file's larger ones would make inference allocate and compute without bound
MAX_GEOMETRY = 4096


def _ints(value: Any, n: int | None, low: int, what: str, high: int = MAX_GEOMETRY) -> None:
    if not isinstance(value, list) or (n is not None and len(value) != n) \
            or not all(type(v) is int and low <= v <= high for v in value):
        size = f"{n} " if n is not None else ""
        raise ValueError(f"{what} must be a list of {size}integers in [{low}, {high}], got {value!r}"[:200])


def _number(value: Any, what: str, infinite: bool = False) -> None:
    if type(value) not in (int, float) or value != value or (not infinite and abs(value) == float("inf")):
        raise ValueError(f"{what} must be a {'' if infinite else 'finite '}number, got {value!r}")


def _attributes(op: str, node: dict[str, Any], where: str) -> None:
    """The attributes of one node: the types and ranges the runtime's kernels assume."""
    if op in ("conv", "bconv"):
        _ints(node["stride"], 2, 1, f"{where} stride")
        _ints(node["pad"], 4, 0, f"{where} pad")
        _ints(node["dil"], 2, 1, f"{where} dil")
    if op == "conv" and not (type(node["groups"]) is int and node["groups"] >= 1):
        raise ValueError(f"{where} groups must be an integer >= 1, got {node['groups']!r}")
    if op in BINARY_OPS and type(node["bin_in"]) is not bool:
        raise ValueError(f"{where} bin_in must be true or false, got {node['bin_in']!r}")
    if op in ("maxpool", "avgpool"):
        _ints(node["k"], 2, 1, f"{where} k")
        _ints(node["stride"], 2, 1, f"{where} stride")
        _ints(node["pad"], 2, 0, f"{where} pad")
        if op == "maxpool":
            _ints(node["dil"], 2, 1, f"{where} dil")
    if op == "adaptive_avgpool" and not (isinstance(node["size"], list) and len(node["size"]) == 2 and all(
            v is None or (type(v) is int and 1 <= v <= MAX_GEOMETRY) for v in node["size"])):
        raise ValueError(f"{where} size must be two integers in [1, {MAX_GEOMETRY}] (or null), got {node['size']!r}")
    if op == "hardtanh":
        _number(node["lo"], f"{where} lo", infinite=True)
        _number(node["hi"], f"{where} hi", infinite=True)
        if node["lo"] > node["hi"]:
            raise ValueError(f"{where} lo {node['lo']!r} is above hi {node['hi']!r}")
    if op == "leaky_relu":
        _number(node["slope"], f"{where} slope")
    if op == "reshape":
        _ints(node["shape"], None, -1, f"{where} shape", high=2 ** 40)
        if 0 in node["shape"] or node["shape"].count(-1) > 1:
            raise ValueError(f"{where} shape must hold sizes >= 1 and at most one -1, got {node['shape']!r}")
    if op == "cat" and not (type(node["dim"]) is int and node["dim"] != 0 and -MAX_DIM - 1 <= node["dim"] <= MAX_DIM):
        # (an earlier reste wrote a negative dim as given: the runtime refuses one that reaches the batch)
        raise ValueError(f"{where} dim must be a dimension after the batch, an integer in [1, {MAX_DIM}], "
                         f"got {node['dim']!r}")
    if op == "mean" and not (isinstance(node["dims"], list) and node["dims"] and all(
            type(d) is int and d != 0 and -MAX_DIM - 1 <= d <= MAX_DIM for d in node["dims"])):
        raise ValueError(f"{where} dims must be dimensions after the batch, integers in [1, {MAX_DIM}], "
                         f"got {node['dims']!r}"[:200])
    if op == "flatten" and not (all(type(node[k]) is int for k in ("start", "end"))
                                and (node["start"] != 0 or node["end"] == 0)):
        raise ValueError(f"{where} start and end must be integer dimensions, the start one after the batch, got "
                         f"{node['start']!r}, {node['end']!r}")
    if op in ("unsqueeze", "squeeze") and not (type(node["dim"]) is int and 1 <= node["dim"] <= MAX_DIM):
        raise ValueError(f"{where} dim must be an integer in [1, {MAX_DIM}], got {node['dim']!r}")
    if op == "cpad":
        _ints(node["pads"], None, -(2 ** 31), f"{where} pads")  # a negative pad crops: any size does
        _number(node["value"], f"{where} value", infinite=True)  # -inf padding before a max pool


def _tensor_shapes(op: str, node: dict[str, Any], where: str, tensors: list[Any]) -> None:
    """Each tensor key: an index of the file's tensors of the right kind, and lengths that agree."""
    shapes: dict[str, tuple[int, ...]] = {}
    for key in OPS[op].tensors:
        idx = node[key]
        if idx is None:
            if key in ("w", "scale", "shift"):
                raise ValueError(f"{where} has no {key}")
            continue
        if type(idx) is not int or not 0 <= idx < len(tensors):
            raise ValueError(f"{where} {key} names tensor {idx!r}; the file has {len(tensors)}")
        kind, shape = tensors[idx][0], tuple(tensors[idx][1])
        if (kind == "bits") != (op in BINARY_OPS and key == "w"):
            raise ValueError(f"{where} {key} is a {kind} tensor")
        shapes[key] = shape
    if op in ("conv", "bconv", "linear", "blinear"):
        w = shapes["w"]
        if len(w) != (4 if op in ("conv", "bconv") else 2) or min(w) < 1:
            raise ValueError(f"{where} weight has shape {list(w)}")
        if op == "conv" and w[0] % node["groups"]:
            raise ValueError(f"{where}: {w[0]} output channels in {node['groups']} groups")
        if op == "bconv" and max(node["pad"]) > MAX_PAD:  # its padding corrections are made at load
            raise ValueError(f"{where} pad {node['pad']} is over {MAX_PAD}: the packed file pads a binary conv by at "
                             f"most {MAX_PAD} pixels; pad less, or write the model with export_onnx")  # (ownmodel2 #4)
        for key in ("b", "alpha"):
            if key in shapes and shapes[key] not in ((w[0],),) + (((1,),) if key == "alpha" else ()):
                raise ValueError(f"{where} {key} has shape {list(shapes[key])} for {w[0]} output channels")
    if op == "affine" and (len(shapes["scale"]) != 1 or shapes["scale"] != shapes["shift"]):
        raise ValueError(f"{where} scale {list(shapes['scale'])} and shift {list(shapes['shift'])} differ")
    if op == "prelu" and len(shapes["w"]) != 1:
        raise ValueError(f"{where} weight has shape {list(shapes['w'])}")


def _input_shape(nodes: list[dict[str, Any]], tensors: list[Any]) -> None:
    """The input node's ``shape`` (when the file records one): positive integers, and the channels (features)
    that the layers reading the input directly take, where their weights say it."""
    if "shape" not in nodes[0]:
        return
    shape = nodes[0]["shape"]
    _ints(shape, None, 1, "node 0 (input) shape", high=2 ** 20)
    if not shape:
        raise ValueError("node 0 (input) shape is empty")
    if math.prod(shape) > MAX_INPUT_ELEMENTS:  # (each dimension bounded, a 9 KB file asked for 10^10 values a sample
        # and predict allocated them before a thing was read: review sec3 #5)
        raise ValueError(f"node 0 (input) shape {shape} holds {math.prod(shape)} values a sample, more than "
                         f"{MAX_INPUT_ELEMENTS}")
    for i, node in enumerate(nodes[1:], 1):
        if 0 not in node["in"] or node["op"] not in ("conv", "bconv", "linear", "blinear", "affine"):
            continue
        key = "scale" if node["op"] == "affine" else "w"
        w = tuple(tensors[node[key]][1])
        if node["op"] in ("conv", "bconv"):
            takes, size = w[1] * node.get("groups", 1), (shape[0] if len(shape) == 3 else None)
        else:  # a linear layer reads the last dimension, a batch norm the first
            takes, size = w[1] if key == "w" else w[0], shape[-1] if key == "w" else shape[0]
        if size != takes:
            raise ValueError(f"node 0 (input) shape {shape} does not fit node {i} ({node['op']}), which takes "
                             f"{takes} channels{' in (C, H, W) images' if node['op'] in ('conv', 'bconv') else ''}")


def check_graph(header: dict[str, Any]) -> None:
    """``ValueError`` unless the header's graph is one the runtime can run safely: every node with its op's
    keys, attributes of the types and ranges the kernels assume (a negative pad would write before a
    buffer), inputs that come before it, tensors of the right kind and matching lengths, an input shape that
    its readers take, and an output node. A file's checksum only catches accidents; this catches a file made
    to disagree with itself. ``UsageError`` (with "newer reste") for what a newer writer would make: another
    ``format`` name, an op or a node attribute this reste does not know."""
    name = header.get("format")
    if name != FORMAT_NAME:
        got = "no format name" if name is None else f"format {str(name)[:60]!r}"
        raise UsageError(f"the packed model's header has {got}, not {FORMAT_NAME!r}: it was written by a newer "
                         "reste (upgrade reste) or by another program")
    nodes, tensors, output = header["nodes"], header["tensors"], header["output"]
    if not isinstance(nodes, list) or not nodes or not isinstance(tensors, list):
        raise ValueError("no nodes")
    for i, node in enumerate(nodes):
        if not isinstance(node, dict) or not isinstance(node.get("op"), str):
            raise ValueError(f"node {i} is not an op")
        op = node["op"]
        where = f"node {i} ({op}{', ' + str(node['name'])[:60] if node.get('name') else ''})"
        if (op == "input") != (i == 0):
            raise ValueError(f"{where}: the input is node 0 and only it")
        spec = get_op(op)
        unknown = set(node) - set(NODE_KEYS + spec.attrs + spec.tensors + spec.optional + spec.build_only)
        if unknown:
            raise UsageError(f"{where} has attributes this reste does not know ({', '.join(sorted(unknown))[:100]}); "
                             "the packed model was likely written by a newer reste: upgrade reste")
        check_node(node)
        ins = node.get("in", [])
        if not isinstance(ins, list) or not all(type(j) is int and 0 <= j < i for j in ins):
            raise ValueError(f"{where} takes {ins!r}; a node takes earlier nodes")
        _attributes(op, node, where)
        _tensor_shapes(op, node, where, tensors)
    _input_shape(nodes, tensors)
    if type(output) is not int or not 0 <= output < len(nodes):
        raise ValueError(f"output {output!r} is not a node")
