"""Parameter counts and a per-layer summary (MACs, binary operations, memory).

Layers are told apart by their ``precision`` attribute (1 for binary weights, 32
when absent) and ``input_precision``, never by their type.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from torch import nn

from ..errors import UsageError, checked_input_size
from ..estimators import Estimator
from ..layers import dummy_forward


def count_parameters(model: nn.Module) -> dict[str, int]:
    """``total``: every parameter; ``binary``: the weights of layers with ``precision == 1``; a weight two layers
    share counts once (review api #3)."""
    total = sum(p.numel() for p in model.parameters())
    weights = {id(m.weight): m.weight for m in model.modules() if getattr(m, "precision", 32) == 1}
    binary = sum(w.numel() for w in weights.values())
    return {"total": total, "binary": binary}


def _macs(module: nn.Module, x: Any, out: torch.Tensor) -> int:
    """Multiply-accumulates of one call of a conv or linear layer on input ``x``, per sample of the batch."""
    per_sample = out[0].numel() if out.dim() > 1 else out.numel()
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"cannot count the operations of a {type(module).__name__} whose input is no tensor")
        # each input value meets out_channels / groups kernels (some products fall outside the output: still done)
        return x[0].numel() * (module.out_channels // module.groups) * math.prod(module.kernel_size)
    if isinstance(module, nn.modules.conv._ConvNd):
        return per_sample * (module.in_channels // module.groups) * math.prod(module.kernel_size)
    if isinstance(module, nn.Linear):
        return per_sample * module.in_features
    return 0


def _attention_macs(module: nn.MultiheadAttention, args: tuple, kwargs: dict[str, Any]) -> tuple[int, int]:
    """(in-projections and the two attention products, out_proj) multiply-accumulates of one call of an
    ``nn.MultiheadAttention``, per sample: its ``out_proj`` weight is read directly, never called as a layer."""
    names = ("query", "key", "value")
    q, k, v = (args[i] if len(args) > i else kwargs.get(names[i]) for i in range(3))
    if not all(isinstance(t, torch.Tensor) for t in (q, k, v)):
        return 0, 0
    seq = 1 if module.batch_first and q.dim() == 3 else 0  # (N, L, E) or (L, N, E) or unbatched (L, E)
    length, source, e = q.shape[seq], k.shape[seq], module.embed_dim
    projections = length * e * e + source * module.kdim * e + source * module.vdim * e
    return projections + 2 * length * source * e, length * e * e


def _packed_bytes(module: nn.Module, params: int) -> int:
    """Deployed size: 1 bit per binary weight (rounded up to bytes), 4 bytes per scale and float value; a grouped
    binary conv (a depthwise one) 4 bytes per weight, as the packed file stores it (its sign, then a float conv:
    no packed kernel takes it)."""
    if getattr(module, "precision", 32) != 1 or getattr(module, "groups", 1) != 1:
        return 4 * params
    weight = module.weight.numel()
    scaling = getattr(module, "scaling", "layer")
    scales = {"layer": 1, "channel": getattr(module, "out_channels", module.weight.shape[0])}.get(scaling, 0)
    return -(-weight // 8) + 4 * scales + 4 * (params - weight)


_CONVS = {torch.conv1d: False, torch.conv2d: False, torch.conv3d: False,
          torch.conv_transpose1d: True, torch.conv_transpose2d: True, torch.conv_transpose3d: True}


#: the layers whose own calls the summary counts by their hooks, not by the functions inside them
_OPAQUE = (nn.modules.conv._ConvNd, nn.Linear, nn.MultiheadAttention)


class _Functional(torch.overrides.TorchFunctionMode):
    """Sees the convolutions and linears a forward computes outside every conv or linear layer (``F.conv2d(x,
    self.w)``, ``F.linear(x, layer.weight)``): their multiply-accumulates per sample, by the ``id`` of the weight
    they read. The layers' own calls (``depth`` above 0, kept by their hooks) are theirs (review ownmodel2)."""

    def __init__(self, read: Any = None) -> None:
        super().__init__()
        self.depth = 0
        self.macs: dict[int, int] = {}
        self.read = read  # called with each tensor argument of a function computed outside every conv or linear

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if not self.depth and self.read is not None:
            for a in (*args, *kwargs.values()):
                for t in (a if isinstance(a, (list, tuple)) else (a,)):
                    if isinstance(t, torch.Tensor):
                        self.read(t)
        counted = func in _CONVS or func is torch.nn.functional.linear
        if self.depth or not counted or not isinstance(out, torch.Tensor):
            return out
        x, w = (args + (None, None))[:2]
        w = kwargs.get("weight", w)
        x = kwargs.get("input", x)
        if not isinstance(w, torch.Tensor) or not isinstance(x, torch.Tensor) or w.dim() < 2:
            return out
        per_sample = out[0].numel() if out.dim() > 1 else out.numel()
        if func is torch.nn.functional.linear:
            macs = per_sample * w.shape[-1]
        elif _CONVS[func]:  # (in, out / groups, *kernel): each input value meets out / groups kernels
            macs = (x[0].numel() if x.dim() > w.dim() - 1 else x.numel()) * w.shape[1] * math.prod(w.shape[2:])
        else:  # (out, in / groups, *kernel)
            macs = per_sample * w.shape[1] * math.prod(w.shape[2:])
        self.macs[id(w)] = self.macs.get(id(w), 0) + macs
        return out


def layer_summary(model: nn.Module, input_size: tuple[int, ...], *, one_line: bool = True) -> list[dict[str, Any]]:
    """One row per layer holding parameters, then a ``"total"`` row.

    A dummy input of shape ``(1, *input_size)`` goes through ``model`` in eval mode
    (the training mode is restored afterwards). Row keys: ``name``, ``type``,
    ``precision`` (1 or 32), ``input_precision`` (1 too for a binary layer of real inputs that reads an estimator
    module's signs nothing else reads: a 1W1A layer as exported), ``output_shape``, ``params``,
    ``binary_params`` (binary weights), ``macs``, ``binary_ops`` (MACs of 1W1A layers),
    ``float_bytes`` (params * 4) and ``packed_bytes`` (binary weights / 8, a 4-byte
    alpha per layer or per channel, float params * 4; a grouped binary conv's weights 4 bytes each, as the packed
    file stores them). MACs are per sample; an ``nn.MultiheadAttention`` counts its in-projections and attention
    products, its ``out_proj`` row the output projection. A conv or linear the forward computes functionally on a
    module's weight (``F.conv2d(x, self.w)``) counts in that module's row as float MACs; a binary layer's weight read
    so (``F.linear(x, layer.weight)``: the latent weights, in float) is warned of.
    """
    input_size = checked_input_size(input_size)
    if input_size is None:
        raise UsageError("a summary needs input_size, one input's shape such as (C, H, W)")
    layers = [(n, m) for n, m in model.named_modules() if any(True for _ in m.parameters(recurse=False))]
    stats: dict[str, dict[str, Any]] = {n: {"macs": 0, "output_shape": None} for n, _ in layers}

    def hook(name: str):
        def record(module: nn.Module, inputs: Any, kwargs: dict[str, Any], output: Any) -> None:
            if isinstance(module, nn.MultiheadAttention) and isinstance(output, tuple) and output:
                inner, outer = _attention_macs(module, inputs, kwargs)
                stats[name]["macs"] += inner
                stats[name]["output_shape"] = tuple(output[0].shape[1:])
                if f"{name}.out_proj" in stats:
                    stats[f"{name}.out_proj"]["macs"] += outer
                    stats[f"{name}.out_proj"]["output_shape"] = tuple(output[0].shape[1:])
            elif isinstance(output, torch.Tensor):  # (the input passed by keyword: layer(input=x))
                x = inputs[0] if inputs else kwargs.get("input", next(iter(kwargs.values()), None))
                stats[name]["macs"] += _macs(module, x, output)
                stats[name]["output_shape"] = tuple(output.shape[1:])
                stats[name]["signed"] = id(x) if id(x) in signs else None
                if id(x) in signs and isinstance(module, _OPAQUE):  # (its own functions are not seen: its call
                    read_sign(x)                                     # reads them)
        return record

    def read_sign(t: torch.Tensor) -> None:
        if id(t) in signs:
            readers[id(t)] = readers.get(id(t), 0) + 1

    # the outputs of estimators used as modules of their own (an activation before a layer of real inputs): a layer
    # that reads one takes +-1 inputs, a 1W1A layer as the packed file writes it (review larq1); by id, each held
    # until the summary is done (so no other tensor takes its id)
    signs: dict[int, torch.Tensor] = {}
    # how many times each of them is read: a layer reads it as 1W1A only where nothing else does, as the packed
    # file's export merges a sign into the one binary layer that reads it, and keeps it (float) otherwise
    readers: dict[int, int] = {}
    inner = {id(m.input_estimator) for _, m in layers if getattr(m, "input_estimator", None) is not None}
    handles = [m.register_forward_hook(lambda _m, _i, out: signs.__setitem__(id(out), out)) for m in model.modules()
               if isinstance(m, Estimator) and id(m) not in inner]
    handles += [m.register_forward_hook(hook(n), with_kwargs=True) for n, m in layers]
    functional = _Functional(read_sign)

    def enter(*_: Any) -> None:
        functional.depth += 1

    def leave(*_: Any) -> None:
        functional.depth -= 1

    for _, m in model.named_modules():  # inside a conv or linear layer, its own call: counted by its hook above
        if isinstance(m, _OPAQUE):
            handles += [m.register_forward_pre_hook(enter), m.register_forward_hook(leave, always_call=True)]
    try:
        # (review models #4: a frozen BatchNorm stays frozen) where the model cannot take input_size: one line, as
        # the exporters say it (review api3 #4), or its own error (one_line=False), which reste summary words for
        # its flag
        with functional:
            dummy_forward(model, input_size, one_line=one_line)
    finally:
        for h in handles:
            h.remove()

    rows = []
    seen: set[int] = set()  # a Parameter two layers share (tied weights) counts in the first one's row alone
    for name, m in layers:
        own = [p for p in m.parameters(recurse=False) if id(p) not in seen]
        shared_weight = isinstance(getattr(m, "weight", None), torch.Tensor) and id(m.weight) in seen
        seen.update(id(p) for p in own)
        params = sum(p.numel() for p in own)
        precision = getattr(m, "precision", 32)
        signed = stats[name].get("signed")
        input_precision = 1 if precision == 1 and signed is not None and readers.get(signed) == 1 else \
            getattr(m, "input_precision", 32)
        macs = stats[name]["macs"]
        # a conv or linear computed functionally on this module's weight (F.conv2d(x, self.w)): float MACs of its row
        # (they were not counted at all: review ownmodel2)
        extra = sum(functional.macs.get(id(p), 0) for p in own if p.dim() >= 2)
        if extra and precision == 1:
            warnings.warn(f"the weight of binary layer {name!r} is used directly, outside the layer (as in "
                          "F.linear(x, layer.weight)): that use computes in float with the latent weights, not "
                          "binary; call the layer instead", UserWarning, stacklevel=3)
        rows.append({
            "name": name,
            "type": type(m).__name__,
            "precision": precision,
            "input_precision": input_precision,
            "output_shape": stats[name]["output_shape"],
            "params": params,
            "binary_params": m.weight.numel() if precision == 1 and not shared_weight else 0,
            "macs": macs + extra,
            "binary_ops": macs if precision == 1 and input_precision == 1 else 0,
            "float_bytes": 4 * params,
            "packed_bytes": 4 * params if shared_weight else _packed_bytes(m, params),
        })
    keys = ("params", "binary_params", "macs", "binary_ops", "float_bytes", "packed_bytes")
    total = {"name": "total", "type": "", "precision": None, "input_precision": None, "output_shape": None}
    total.update({k: sum(r[k] for r in rows) for k in keys})
    rows.append(total)
    return rows


def describe(model: nn.Module, input_size: tuple[int, ...], *, one_line: bool = True) -> str:
    """The per-layer table and the totals of ``model`` on one input of ``input_size`` ((C, H, W); (C, L) for a
    1-D conv model), as
    ``reste summary`` prints them: ``print(reste.models.describe(model, (3, 32, 32)))``. A size the model cannot
    take is a one-line ``UsageError`` (``one_line=False``: the model's own error)."""
    rows = layer_summary(model, input_size, one_line=one_line)
    return f"{format_summary(rows)}\n\n{format_totals(summary_totals(rows, input_size))}"


def format_summary(rows: list[dict[str, Any]]) -> str:
    """A plain-text table of :func:`layer_summary` rows."""
    header = ("layer", "type", "bits W/A", "output", "params", "MACs", "binary ops", "float KiB", "packed KiB")
    table = [header]
    for r in rows:
        bits = "" if r["precision"] is None else f"{r['precision']}/{r['input_precision']}"
        shape = "" if r["output_shape"] is None else "x".join(map(str, r["output_shape"]))
        table.append((
            r["name"], r["type"], bits, shape, f"{r['params']:,}", f"{r['macs']:,}", f"{r['binary_ops']:,}",
            f"{r['float_bytes'] / 1024:,.1f}", f"{r['packed_bytes'] / 1024:,.1f}",
        ))
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = []
    for j, row in enumerate(table):
        if j == len(table) - 1:
            lines.append("  ".join("-" * w for w in widths))
        cells = [c.ljust(w) if i < 4 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells).rstrip())
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def summary_totals(rows: list[dict[str, Any]], input_size: tuple[int, ...]) -> dict[str, Any]:
    """The model-level figures of :func:`layer_summary` rows (their ``"total"`` row included or not).

    Keys: ``input_size`` (C, H, W as given), ``params``, ``binary_params``, ``binary_share``
    (binary weights / all parameters), ``macs``, ``binary_ops``, ``binary_ops_share``,
    ``float_bytes``, ``packed_bytes``, ``compression`` (float bytes / packed bytes), ``conv1d`` (whether a layer is
    a 1-D conv: a 2-D input is then (C, L)) and ``unpackable`` (the types of its layers the packed file has no op
    for: 3-D and transposed convs; its packed size is then 1 bit a binary weight, which no file holds).
    """
    layers = [r for r in rows if r["name"] != "total"]
    totals: dict[str, Any] = {"input_size": tuple(input_size)}
    for key in ("params", "binary_params", "macs", "binary_ops", "float_bytes", "packed_bytes"):
        totals[key] = sum(r[key] for r in layers)
    totals["binary_share"] = totals["binary_params"] / totals["params"] if totals["params"] else 0.0
    totals["binary_ops_share"] = totals["binary_ops"] / totals["macs"] if totals["macs"] else 0.0
    totals["compression"] = totals["float_bytes"] / totals["packed_bytes"] if totals["packed_bytes"] else 1.0
    # whether a 2-D input is a 1-D conv model's (C, L) signal, not a transformer's (L, features) sequence
    totals["conv1d"] = any(r["type"].endswith(("Conv1d", "ConvTranspose1d")) for r in layers)
    # the layers the packed file has no op for (float ones included): its size is then one no file has (review
    # ownmodel2: an encoder-decoder said 'packed 9.6 KiB: compression 11.4x', and export_model refused it)
    totals["unpackable"] = sorted({r["type"] for r in layers if "Transpose" in r["type"] or r["type"].endswith("3d")})
    return totals


def format_totals(totals: dict[str, Any]) -> str:
    """Four lines: input size, parameters, operations and sizes with the compression ratio."""
    size = "x".join(map(str, totals["input_size"]))
    # what the sizes are: an image's (C, H, W), a 1-D signal's (C, L) (a Conv1d model), a vector's (features), a
    # volume's (C, D, H, W) (a Conv3d model)
    shape = {4: "C x D x H x W, one volume", 3: "C x H x W, one image",
             2: "C x L, one sequence" if totals.get("conv1d", True) else "one sample",
             1: "features, one sample"}.get(len(totals["input_size"]), "one sample")
    return "\n".join([
        f"input       {size} ({shape})",
        f"parameters  {totals['params']:,}, binary {totals['binary_params']:,} "
        f"({100 * totals['binary_share']:.1f}%)",
        f"MACs        {totals['macs']:,} per {'image' if len(totals['input_size']) == 3 else 'sample'}, "
        f"binary ops {totals['binary_ops']:,} "
        f"({100 * totals['binary_ops_share']:.1f}%)",
        f"size        float {totals['float_bytes'] / 1024:,.1f} KiB, packed {totals['packed_bytes'] / 1024:,.1f} KiB: "
        f"compression {totals['compression']:.1f}x"
        + (f" (1 bit a binary weight: the packed file takes no {', '.join(totals['unpackable'])}; export_onnx writes "
           "this model in float32)" if totals.get("unpackable") and totals["binary_params"] else ""),
    ])
