"""From an eval-mode PyTorch model to a graph of simple ops.

``to_graph(model)`` traces the model with ``torch.fx`` (binary layers and estimators
are leaves) and turns every call into one node: a dict with ``op``, ``in`` (indices
of earlier nodes; node 0 is the input) and the op's attributes. Tensors are numpy
arrays in the node (``Bits`` for binary weights) until the file is written.

The ops and their attributes are listed in :mod:`reste.export.ir`, the table that the
file writer and the runtime read too.

A 1-D layer (``Conv1d`` float or binary, ``MaxPool1d``, ``AvgPool1d``, ``AdaptiveAvgPool1d``) becomes its
2-D op on a height of 1 between an ``unsqueeze`` and a ``squeeze`` of dimension 2; :func:`drop_unit_dims`
then moves each squeeze past the per-element and per-channel ops after it and drops it where the next
1-D layer's unsqueeze undoes it, so a 1-D network runs as a 2-D one on (N, C, 1, L).

Batch norms are folded where that is exact: into the float conv or linear they
directly follow, and into a float linear they directly precede (BatchNorm1d ->
Linear); next to a linear only where its tensor is (N, features), which the shapes
propagated from the input size show. A batch norm after conv -> ReLU (every binary
block) stays an ``affine``.
"""

from __future__ import annotations

import contextlib
import io
import inspect
import math
import operator
import os
import re
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata

from ..errors import UsageError
from ..estimators import Estimator
from ..layers import own_steps, unwatched
from . import ir

#: The way out a refusal of an op the packed format lacks ends with: ONNX takes what torch.onnx exports.
ONNX_WAY = "; write the model with reste.export.export_onnx instead"
# a softmax, most often the classifier's last step: the file's outputs are scores whose argmax is its class, which a
# softmax keeps (review ownmodel2, suggestion 3: it got the generic refusal)
SOFTMAX_WAY = ("; the packed file's outputs are the scores before it: export the model without its final softmax "
               "(the same predicted classes; apply torch.softmax to PackedModel's outputs for probabilities), or "
               "write the model with reste.export.export_onnx instead")
_SOFTMAX_FUNCTIONS = (F.softmax, F.log_softmax, torch.softmax, torch.log_softmax)


class Bits:
    """A binary (+-1) weight tensor to be stored packed."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = array

    @property
    def shape(self) -> tuple[int, ...]:
        return self.array.shape


class _Refused(UsageError):
    """A function or tensor method the format has no op for; ``node`` names the fx node (``to_graph`` traces
    again with stack traces, which cost a second or more, to name the model's line)."""

    def __init__(self, message: str, node: str, way: str = "") -> None:
        super().__init__(message)
        self.node, self.way = node, way  # (the way out, said after the model's line)


class _Default:
    """A forward parameter traced at its default value (``mask=None``)."""

    def __init__(self, value: Any) -> None:
        self.value = value


def refuse_own_forwards(model: nn.Module, what: str) -> None:
    """A one-line refusal where an estimator of ``model`` has a forward of its own (a plugin's: it may compute other
    than sign): ``what`` (the packed file, the ONNX file) computes sign in its place, so it would compute another
    network (review extend #7: a file of 35% for a run of 94%, checked only after it was written)."""
    for name, m in model.named_modules():
        if isinstance(m, Estimator) and not m.forward_is_sign():
            raise UsageError(f"cannot export {name or 'the model'}: its estimator {m.name!r} "
                             f"({type(m).__name__}) has a forward of its own, and {what} computes sign(x) in its "
                             "place; export takes estimators whose forward is sign (every built-in's)")
        if getattr(m, "precision", 32) != 1:
            continue
        own = own_steps(m, ("forward", "binary_input", "binary_weight", "_conv_forward"))
        if own:  # (review user2 #1: ReActNet's sign(x - beta) as a binary_input of its own exported as sign(x))
            raise UsageError(f"cannot export {name or 'the model'}: its class {type(m).__name__} has a {own[0]} of "
                             f"its own, and {what} computes reste's {own[0]} in its place; export takes reste's binary "
                             "layers with a scale() of their own at most (put other steps in modules of their own)")
        for slot in ("weight_estimator", "input_estimator"):  # (review diff21 #2: another module set in its place)
            held = getattr(m, slot, None)
            if isinstance(held, nn.Module) and not isinstance(held, Estimator):
                raise UsageError(f"cannot export {name}: its {slot} is a {type(held).__name__}, not a reste "
                                 f"estimator, and {what} computes sign(x) in its place; export takes a binary "
                                 "layer's reste estimators only")


def _batch_norms() -> tuple[type, ...]:
    """The batch norms the file takes, as the BatchNorm they are in eval mode: BatchNorm1d/2d, and the synchronised
    ones a DDP run trains with (``nn.SyncBatchNorm``, reste's ``ProcessGroupBatchNorm``; review models #12)."""
    from ..syncbn import ProcessGroupBatchNorm

    return nn.BatchNorm1d, nn.BatchNorm2d, nn.SyncBatchNorm, ProcessGroupBatchNorm


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if getattr(m, "precision", 32) == 1 or isinstance(m, (Estimator, *_batch_norms())):
            return True
        return super().is_leaf_module(m, qualname)


def _np(t: torch.Tensor | None) -> np.ndarray | None:
    return None if t is None else t.detach().cpu().to(torch.float32).numpy().copy()


def _pair(v: Any) -> list[int]:
    return [int(v), int(v)] if isinstance(v, int) else [int(x) for x in v]


def _lifted(v: Any) -> list[int]:
    """A 1-D layer's size, stride or dilation (``k`` or ``(k,)``) as its 2-D op's on a height of 1: ``[1, k]``."""
    return [1, int(v[0] if isinstance(v, (tuple, list)) else v)]


def _conv_padding(m: nn.Conv1d | nn.Conv2d, name: str) -> list[int]:
    """[top, bottom, left, right] of a 2-D conv; of a 1-D one, [0, 0, left, right] (on a height of 1)."""
    pads: list[int] = []
    if isinstance(m.padding, str):
        for k, d in zip(m.kernel_size, m.dilation):
            total = 0 if m.padding == "valid" else d * (k - 1)
            pads += [total // 2, total - total // 2]
    else:
        sizes = [m.padding] * len(m.kernel_size) if isinstance(m.padding, int) else m.padding
        pads = [int(p) for p in sizes for _ in range(2)]
    if m.padding_mode != "zeros" and any(pads):  # (no padding at all: every mode computes the same)
        raise UsageError(f"cannot export {name} ({m.__class__.__name__}): padding_mode={m.padding_mode!r} is not "
                         "supported, only 'zeros' (train it with padding_mode='zeros', or write the model with "
                         "reste.export.export_onnx, which takes every padding mode)")
    return [0, 0] * (2 - len(pads) // 2) + pads


def _shape_of(arg: Any) -> tuple[int, ...] | None:
    """The shape of an fx node's value where :class:`ShapeProp` propagated it (``input_size`` given), else None."""
    meta = arg.meta.get("tensor_meta") if isinstance(arg, fx.Node) else None
    return tuple(meta.shape) if isinstance(meta, TensorMetadata) else None


def _on_unit_height(parts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A 1-D layer's nodes: its 2-D op(s) on (N, C, 1, L), between an unsqueeze and a squeeze of that height."""
    return [{"op": "unsqueeze", "dim": 2}, *parts, {"op": "squeeze", "dim": 2}]


def _affine(bn: nn.modules.batchnorm._BatchNorm, name: str = "") -> tuple[np.ndarray, np.ndarray]:
    """scale, shift of an eval-mode batch norm, computed in float32 the way PyTorch does."""
    if bn.running_mean is None or bn.running_var is None:
        who = f"{name} ({type(bn).__name__})" if name else "a BatchNorm"
        raise UsageError(f"cannot export {who}: it has no running statistics (track_running_stats=False), so its eval "
                         "output depends on the batch; train it with track_running_stats=True")
    with torch.no_grad():
        invstd = 1.0 / torch.sqrt(bn.running_var.float() + bn.eps)
        scale = invstd * (bn.weight.float() if bn.weight is not None else 1.0)
        shift = (bn.bias.float() if bn.bias is not None else 0.0) - bn.running_mean.float() * scale
    return _np(scale), _np(shift)


def _shift_error(bn: nn.modules.batchnorm._BatchNorm, scale: np.ndarray) -> float:
    """How far PyTorch's float32 shift can be from the stored one: 4 u max(|mean * scale| + |bias|) (see
    ``reste.export.ir``). Both round ``bias - mean * scale``, in an order or with an FMA that depends on
    the build; where the two terms nearly cancel, that is far more than the shift's own rounding."""
    mean = bn.running_mean.detach().double().cpu().numpy()
    bias = bn.bias.detach().double().cpu().numpy() if bn.bias is not None else 0.0
    return float(4 * 2.0 ** -24 * np.max(np.abs(mean * scale.astype(np.float64)) + np.abs(bias), initial=0.0))


def _binary_weights(m: nn.Module) -> tuple[Bits, np.ndarray | None]:
    with torch.no_grad():
        w = m.weight.detach()
        alpha = m.scale() if hasattr(m, "scale") else None
    a = None if alpha is None else _np(alpha.reshape(-1))
    return Bits(_np(torch.where(w < 0, -1.0, 1.0))), a


def _conv_nodes(m: nn.Conv1d | nn.Conv2d, name: str) -> dict[str, Any] | list[dict[str, Any]]:
    """The 2-D conv node(s) of a float or binary conv; a 1-D one's act on a height of 1 (weights (O, I, 1, k))."""
    binary = getattr(m, "precision", 32) == 1
    geometry = _lifted if isinstance(m, nn.Conv1d) else _pair

    def four_d(a: np.ndarray) -> np.ndarray:  # (O, I, k) -> (O, I, 1, k)
        return a.reshape(a.shape[0], a.shape[1], 1, a.shape[2]) if a.ndim == 3 else a

    node: dict[str, Any] = {
        "stride": geometry(m.stride), "pad": _conv_padding(m, name), "dil": geometry(m.dilation), "b": _np(m.bias),
    }
    if not binary:
        return {"op": "conv", **node, "w": four_d(_np(m.weight)), "groups": m.groups}
    w, alpha = _binary_weights(m)
    w = Bits(four_d(w.array))
    if m.groups != 1:  # no packed kernel: sign, then a float conv on its +-alpha weights (exact values)
        scaled = w.array if alpha is None else w.array * alpha.reshape(-1, 1, 1, 1)
        conv = {"op": "conv", **node, "w": scaled, "groups": m.groups}
        return [{"op": "sign"}, conv] if getattr(m, "input_precision", 1) == 1 else [conv]
    return {"op": "bconv", **node, "w": w, "alpha": alpha, "bin_in": getattr(m, "input_precision", 1) == 1}


def _maxpool1d(k: Any, stride: Any, pad: Any, dil: Any, ceil: bool) -> list[dict[str, Any]]:
    """A 1-D max pool's nodes (module or function): its 2-D pool on a height of 1."""
    return _on_unit_height([_maxpool(_lifted(k), _lifted(stride or k), [0, _lifted(pad)[1]], _lifted(dil), ceil)])


def _avgpool1d(k: Any, stride: Any, pad: Any, ceil: bool, incl: bool) -> list[dict[str, Any]]:
    """A 1-D average pool's nodes (module or function): its 2-D pool on a height of 1."""
    return _on_unit_height([_avgpool(_lifted(k), _lifted(stride or k), [0, _lifted(pad)[1]], ceil, incl, None)])


def _adaptive_avgpool1d(size: Any) -> list[dict[str, Any]]:
    return _on_unit_height([{"op": "adaptive_avgpool", "size": _lifted(size)}])


def _pool1d(m: nn.Module, name: str) -> list[dict[str, Any]]:
    """A 1-D pooling layer's nodes: its 2-D pool on a height of 1."""
    if isinstance(m, nn.MaxPool1d):
        if m.return_indices:
            raise UsageError(f"cannot export {name}: MaxPool1d(return_indices=True) is not supported{ONNX_WAY}")
        return _maxpool1d(m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode)
    if isinstance(m, nn.AvgPool1d):
        return _avgpool1d(m.kernel_size, m.stride, m.padding, m.ceil_mode, m.count_include_pad)
    return _adaptive_avgpool1d(m.output_size)


def _hardtanh(lo: Any, hi: Any) -> dict[str, Any]:
    """A ``hardtanh`` node: ``Hardtanh``, ``ReLU6`` (0, 6) and a clamp with both bounds, as modules or functions."""
    return {"op": "hardtanh", "lo": float(lo), "hi": float(hi)}


def _leaky_relu(slope: Any) -> dict[str, Any]:
    """A ``leaky_relu`` node: ``nn.LeakyReLU`` or ``F.leaky_relu``."""
    return {"op": "leaky_relu", "slope": float(slope)}


def _prelu(weight: torch.Tensor) -> dict[str, Any]:
    """A ``prelu`` node: ``nn.PReLU`` or ``F.prelu`` on a parameter (a 0-d one, which F.prelu takes, as one of 1)."""
    return {"op": "prelu", "w": _np(weight.reshape(-1))}


def _module_node(m: nn.Module, name: str) -> dict[str, Any] | list[dict[str, Any]] | None:
    """The node for a leaf module (a list: nodes in a chain); ``None`` for modules that are the identity in
    eval mode."""
    binary = getattr(m, "precision", 32) == 1
    if isinstance(m, nn.Conv1d):
        node = _conv_nodes(m, name)
        return _on_unit_height(node if isinstance(node, list) else [node])
    if isinstance(m, nn.Conv2d):
        return _conv_nodes(m, name)
    if isinstance(m, nn.Linear):
        if not binary:
            return {"op": "linear", "w": _np(m.weight), "b": _np(m.bias)}
        w, alpha = _binary_weights(m)
        return {"op": "blinear", "w": w, "alpha": alpha, "b": _np(m.bias),
                "bin_in": getattr(m, "input_precision", 1) == 1}
    if binary and isinstance(m, (nn.Conv3d, nn.modules.conv._ConvTransposeNd)):  # (nor their float forms)
        raise UsageError(f"cannot export {name}: binary layer type {type(m).__name__} is not supported (the packed "
                         "format takes binary Conv1d/2d and Linear layers, and no 3-D or transposed conv, binary or "
                         f"float){ONNX_WAY}")
    if binary:
        raise UsageError(f"cannot export {name}: binary layer type {type(m).__name__} is not supported (export "
                         "takes binary Conv1d/2d and Linear layers); binarize with keep=[...] naming it to keep it "
                         "in float")
    if isinstance(m, _batch_norms()):
        scale, shift = _affine(m, name)
        # (a synchronised one of any rank may fold into a linear after it: the fold checks the input's rank)
        return {"op": "affine", "scale": scale, "shift": shift, "shift_err": _shift_error(m, scale),
                "bn1d": not isinstance(m, nn.BatchNorm2d)}
    if isinstance(m, Estimator):
        return {"op": "sign"}
    if isinstance(m, nn.ReLU):
        return {"op": "relu"}
    if isinstance(m, nn.ReLU6):
        return _hardtanh(0.0, 6.0)
    if isinstance(m, nn.Hardtanh):
        return _hardtanh(m.min_val, m.max_val)
    if isinstance(m, nn.LeakyReLU):
        return _leaky_relu(m.negative_slope)
    if isinstance(m, nn.PReLU):
        return _prelu(m.weight)
    if isinstance(m, (nn.Identity, nn.Dropout, nn.Dropout2d, nn.Dropout1d)):
        return None
    if isinstance(m, nn.Flatten):
        return {"op": "flatten", "start": m.start_dim, "end": m.end_dim}
    if isinstance(m, nn.MaxPool2d):
        if m.return_indices:
            raise UsageError(f"cannot export {name}: MaxPool2d(return_indices=True) is not supported{ONNX_WAY}")
        return _maxpool(_pair(m.kernel_size), _pair(m.stride or m.kernel_size), _pair(m.padding), _pair(m.dilation),
                        m.ceil_mode)
    if isinstance(m, (nn.MaxPool1d, nn.AvgPool1d, nn.AdaptiveAvgPool1d)):
        return _pool1d(m, name)
    if isinstance(m, nn.AvgPool2d):
        return _avgpool(m.kernel_size, m.stride, m.padding, m.ceil_mode, m.count_include_pad, m.divisor_override)
    if isinstance(m, nn.AdaptiveAvgPool2d):
        return {"op": "adaptive_avgpool", "size": _adaptive_size(m.output_size)}
    if isinstance(m, (nn.Softmax, nn.LogSoftmax)):
        raise UsageError(f"cannot export {name}: {type(m).__name__} is not supported{SOFTMAX_WAY}")
    raise UsageError(f"cannot export {name}: module type {type(m).__name__} is not supported; "
                     "supported: Conv1d/2d, Linear, their binary layers, BatchNorm1d/2d (synchronised too), ReLU, "
                     "ReLU6, Hardtanh, LeakyReLU, PReLU, MaxPool1d/2d, AvgPool1d/2d, AdaptiveAvgPool1d/2d, Flatten, "
                     f"Identity, Dropout{ONNX_WAY}")


def _maxpool(k: list[int], stride: list[int], pad: list[int], dil: list[int], ceil: bool) -> dict[str, Any]:
    return {"op": "maxpool", "k": k, "stride": stride, "pad": pad, "dil": dil, "ceil": bool(ceil)}


def _avgpool(k: Any, stride: Any, pad: Any, ceil: bool, incl: bool, div: Any) -> dict[str, Any]:
    return {"op": "avgpool", "k": _pair(k), "stride": _pair(stride or k), "pad": _pair(pad), "ceil": bool(ceil),
            "incl": bool(incl), "div": div}


def _adaptive_size(size: Any) -> list[int | None]:
    return [size, size] if isinstance(size, int) or size is None else list(size)


class _Batch:
    """The batch size (x.size(0) / x.shape[0]) inside a traced reshape."""


class _Shape:
    def __init__(self, of: int) -> None:
        self.of = of


class _Attr:
    """A tensor attribute of the model read in the forward (fx's ``get_attr``: ``self.weight``): a function's weight
    (``F.prelu(x, self.weight)``), refused as any other input."""

    def __init__(self, target: str) -> None:
        self.target = target


_ADD = (operator.add, operator.iadd, torch.add)
#: activation functions, with their in-place forms (F.relu_ is torch.relu_, F.prelu is torch.prelu): their module's node
_ACTIVATIONS = (F.relu, torch.relu, torch.relu_, F.relu6, F.hardtanh, F.hardtanh_, F.leaky_relu, F.leaky_relu_,
                torch.prelu)
_CLAMP = (torch.clamp, torch.clip)
_CLAMP_METHODS = ("clamp", "clip", "clamp_", "clip_")


def _const(v: Any, env: dict[fx.Node, Any]) -> Any:
    if isinstance(v, fx.Node):
        got = env.get(v)
        if isinstance(got, (_Batch, _Shape)):
            return got
        raise UsageError("cannot export: a tensor is used where a constant is expected")
    if isinstance(v, (list, tuple)):
        return type(v)(_const(x, env) for x in v)
    return v


def _batch_kept(node: dict[str, Any], arg: Any) -> dict[str, Any]:
    """``node``, a ``flatten`` or a ``mean`` of ``arg``, refused where it reaches the batch dimension (a negative
    dimension resolved where the shapes were propagated): each image would no longer give its own row."""
    shape = _shape_of(arg)

    def at(d: Any) -> Any:
        return d + len(shape) if isinstance(d, int) and d < 0 and shape is not None else d

    if node["op"] == "mean" and (not node["dims"] or 0 in [at(d) for d in node["dims"]]):  # (dim=(): all of them)
        raise UsageError("cannot export a mean over the batch dimension (it would mix the images); take it over "
                         "dimensions after the batch (x.mean((2, 3)))")
    if node["op"] == "flatten" and at(node["start"]) == 0 and at(node["end"]) != 0:
        raise UsageError("cannot export a flatten of the batch dimension (x.flatten() and torch.flatten(x) start at "
                         "0); flatten after it: x.flatten(1), torch.flatten(x, 1) or nn.Flatten()")
    return node


class _Builder:
    def __init__(self, gm: fx.GraphModule) -> None:
        self.gm = gm
        self.modules = dict(gm.named_modules())
        self.nodes: list[dict[str, Any]] = []
        self.env: dict[fx.Node, Any] = {}

    def add(self, node: dict[str, Any], inputs: list[int]) -> int:
        node = {**node, "in": inputs}
        ir.check_node(node)
        self.nodes.append(node)
        return len(self.nodes) - 1

    def tensor(self, arg: Any, what: str) -> int:
        got = self.env.get(arg) if isinstance(arg, fx.Node) else None
        if isinstance(got, int):
            return got
        if isinstance(got, _Attr):
            # (what to do, after the model's line, as the other refusals say it: a conv or linear computed
            # functionally on a Parameter is the usual cause, review ownmodel2)
            err = UsageError(f"cannot export: the forward uses the tensor attribute {got.target!r} directly")
            err.way = ("; the file holds the model's layers, not its tensors: a conv, linear or batch norm computed "
                       "functionally (F.conv2d(x, self.w)) is written as its module (nn.Conv2d, nn.Linear, "
                       f"nn.BatchNorm2d){ONNX_WAY.replace('; write', ', or write')}")
            raise err
        raise UsageError(f"cannot export {what}: an input is not a tensor computed by the model")

    def _no_attribute(self, n: fx.Node) -> None:
        """Refuse an op that reads a tensor attribute of the model (``self.w.shape``, ``x * self.b``) by naming the
        attribute, as a tensor input does: the file holds no attributes (review diff11, suggestion)."""
        for arg in n.all_input_nodes:
            if isinstance(self.env.get(arg), _Attr):
                self.tensor(arg, n.name)  # (its refusal names the attribute)

    def run(self) -> tuple[list[dict[str, Any]], int]:
        output = None
        for n in self.gm.graph.nodes:
            if n.op == "placeholder":
                if self.nodes and n.args:  # a parameter traced at its default (mask=None): only fx's guards use it
                    self.env[n] = _Default(n.args[0])
                    continue
                if self.nodes:
                    raise UsageError(f"cannot export a model with more than one input (its forward also takes "
                                     f"{n.target!r}); export a module whose forward takes the image alone")
                self.env[n] = self.add({"op": "input"}, [])
            elif n.op == "output":
                out = n.args[0]
                if isinstance(out, dict):  # ({"logits": x}: a Hugging Face style output)
                    raise UsageError(f"cannot export a model whose forward returns a dict (keys "
                                     f"{', '.join(map(repr, out))}); export a module that returns the logits tensor "
                                     "alone (a wrapper whose forward returns model(x)[key])")
                if isinstance(out, (tuple, list)):
                    if len(out) != 1:
                        raise UsageError("cannot export a model with more than one output")
                    out = out[0]
                output = self.tensor(out, "the output")
            elif n.op == "get_attr":  # a function's weight (F.prelu(x, self.weight)); as a tensor input, refused
                self.env[n] = _Attr(n.target)
            elif n.op == "call_module":
                m = self.modules[n.target]
                if getattr(m, "inplace", False) is True and not isinstance(m, nn.modules.dropout._DropoutNd):
                    # (nn.ReLU(inplace=True) and kin: as their functional forms, review diff11 #5; dropout is the
                    # identity in the file)
                    self._in_place(n, f"self.{n.target}(x) ({type(m).__name__}(inplace=True))",
                                   f"x = self.{n.target}(x), or build it with inplace=False")
                x = self.tensor(n.args[0], n.target)
                shape = _shape_of(n.args[0])
                if isinstance(m, nn.Linear) and getattr(m, "precision", 32) == 1 and shape is not None \
                        and len(shape) != 2:  # (a Linear over the last dimension of (N, C, L): float only)
                    shape = ", ".join(["N", *map(str, shape[1:])])
                    raise UsageError(f"cannot export {n.target} ({type(m).__name__}) on ({shape}) inputs: a binary "
                                     "linear layer takes (N, features); flatten its input first, or keep the layer "
                                     f"float (binarize(..., keep=[{n.target!r}]))")
                node = _module_node(m, n.target)
                if isinstance(node, dict) and node["op"] == "flatten":  # nn.Flatten(0)
                    _batch_kept(node, n.args[0])
                for part in [] if node is None else node if isinstance(node, list) else [node]:
                    x = self.add({**part, "name": n.target}, [x])
                self.env[n] = x
            elif n.op == "call_function":
                if n.target is torch._assert or getattr(n.target, "__name__", "") == "_assert_is_none":
                    continue  # fx's guards of a parameter traced at its default
                if n.target is operator.eq and isinstance(self.env.get(n.args[0]), _Default):
                    continue  # the guard's test of that default
                self.env[n] = self._located(self.function, n)
            elif n.op == "call_method":
                self.env[n] = self._located(self.method, n)
        assert output is not None
        return self.nodes, output

    @staticmethod
    def _located(build: Callable[[fx.Node], Any], n: fx.Node) -> Any:
        """``build(n)``, whose refusal names the model's line that made ``n`` (``to_graph`` finds it)."""
        try:
            return build(n)
        except _Refused:
            raise
        except UsageError as err:
            raise _Refused(str(err), n.name, getattr(err, "way", "")) from None

    @staticmethod
    def _per_sample(arg: Any) -> int | None:
        """The number of elements of one sample of ``arg`` (known when shapes were propagated)."""
        shape = _shape_of(arg)
        return None if shape is None else math.prod(shape[1:])

    def _kw(self, n: fx.Node, index: int, name: str, default: Any) -> Any:
        if len(n.args) > index:
            return _const(n.args[index], self.env)
        return _const(n.kwargs.get(name, default), self.env)

    def function(self, n: fx.Node) -> Any:
        f, a = n.target, n.args
        where = getattr(f, "__name__", str(f))
        if f is getattr and isinstance(self.env.get(a[0]), int) and a[1] == "shape":
            return _Shape(self.env[a[0]])
        if f is operator.getitem:
            base = self.env.get(a[0])
            if isinstance(base, _Shape):
                if a[1] == 0:
                    return _Batch()
                raise UsageError("cannot export: only the batch size (x.shape[0]) may be read from a shape")
            return self.slice(self.tensor(a[0], where), a[1])
        if f in _ADD:
            if len(a) != 2 or n.kwargs.get("alpha", 1) != 1:
                raise UsageError("cannot export: add supports two tensors only")
            return self.add({"op": "add"}, [self.tensor(a[0], where), self.tensor(a[1], where)])
        if f in _ACTIVATIONS:
            return self.activation(n, where)
        if f in _CLAMP:
            return self.clamp(n, self.tensor(a[0], where))
        if f is torch.flatten:
            node = {"op": "flatten", "start": self._kw(n, 1, "start_dim", 0), "end": self._kw(n, 2, "end_dim", -1)}
            return self.add(_batch_kept(node, a[0]), [self.tensor(a[0], where)])
        if f is F.pad:
            mode = self._kw(n, 2, "mode", "constant")
            if mode != "constant":
                raise UsageError(f"cannot export F.pad(mode={mode!r}); only 'constant'")
            value = self._kw(n, 3, "value", None)
            return self.add({"op": "cpad", "pads": [int(p) for p in self._kw(n, 1, "pad", None)],
                             "value": float(value or 0.0)}, [self.tensor(a[0], where)])
        if f is torch.cat:
            return self.cat(n, where)
        if f is F.adaptive_avg_pool2d:
            return self.add({"op": "adaptive_avgpool", "size": _adaptive_size(self._kw(n, 1, "output_size", None))},
                            [self.tensor(a[0], where)])
        if f is F.avg_pool2d:
            node = _avgpool(self._kw(n, 1, "kernel_size", None), self._kw(n, 2, "stride", None),
                            self._kw(n, 3, "padding", 0), self._kw(n, 4, "ceil_mode", False),
                            self._kw(n, 5, "count_include_pad", True), self._kw(n, 6, "divisor_override", None))
            return self.add(node, [self.tensor(a[0], where)])
        if f is F.max_pool2d:
            k = self._kw(n, 1, "kernel_size", None)
            node = _maxpool(_pair(k), _pair(self._kw(n, 2, "stride", None) or k), _pair(self._kw(n, 3, "padding", 0)),
                            _pair(self._kw(n, 4, "dilation", 1)), self._kw(n, 5, "ceil_mode", False))
            return self.add(node, [self.tensor(a[0], where)])
        if f is F.max_pool1d:
            parts = _maxpool1d(self._kw(n, 1, "kernel_size", None), self._kw(n, 2, "stride", None),
                               self._kw(n, 3, "padding", 0), self._kw(n, 4, "dilation", 1),
                               self._kw(n, 5, "ceil_mode", False))
            return self.chain(parts, self.tensor(a[0], where))
        if f is F.avg_pool1d:
            parts = _avgpool1d(self._kw(n, 1, "kernel_size", None), self._kw(n, 2, "stride", None),
                               self._kw(n, 3, "padding", 0), self._kw(n, 4, "ceil_mode", False),
                               self._kw(n, 5, "count_include_pad", True))
            return self.chain(parts, self.tensor(a[0], where))
        if f is F.adaptive_avg_pool1d:
            return self.chain(_adaptive_avgpool1d(self._kw(n, 1, "output_size", None)), self.tensor(a[0], where))
        if f in (torch.unsqueeze, torch.squeeze):
            return self.unit_dim(n, f.__name__)
        if f is torch.mean:
            return self.mean(n)
        if f in (F.dropout, F.dropout1d, F.dropout2d):
            return self.tensor(a[0], where)
        self._no_attribute(n)
        way = SOFTMAX_WAY if f in _SOFTMAX_FUNCTIONS else ONNX_WAY
        raise _Refused(f"cannot export: function {where} is not supported", n.name, way)

    def method(self, n: fx.Node) -> Any:
        name, a = n.target, n.args
        x = self.env.get(a[0])
        if name == "size" and isinstance(x, int):
            dim = self._kw(n, 1, "dim", None)
            if dim is None:
                return _Shape(x)
            if dim == 0:
                return _Batch()
            raise UsageError("cannot export: only the batch size (x.size(0)) may be read from a shape")
        x = self.tensor(a[0], f"method {name}")
        if name in ("contiguous", "clone", "float"):
            return x
        if name == "relu":
            return self.add({"op": "relu"}, [x])
        if name in _CLAMP_METHODS:
            return self.clamp(n, x)
        if name == "add":
            return self.add({"op": "add"}, [x, self.tensor(a[1], "add")])
        if name == "flatten":
            node = {"op": "flatten", "start": self._kw(n, 1, "start_dim", 0), "end": self._kw(n, 2, "end_dim", -1)}
            return self.add(_batch_kept(node, a[0]), [x])
        if name == "mean":
            return self.mean(n)
        if name in ("unsqueeze", "squeeze"):
            return self.unit_dim(n, name)
        if name in ("view", "reshape"):
            shape = [_const(s, self.env) for s in a[1:]]
            if len(shape) == 1 and isinstance(shape[0], (list, tuple)):
                shape = list(shape[0])
            if shape and shape[0] == -1 and self._per_sample(a[0]) == math.prod(shape[1:]) > 0 \
                    and all(isinstance(s, int) and s > 0 for s in shape[1:]):
                shape[0] = _Batch()  # x.view(-1, n) with n the size of one sample: the batch stays
            if not shape or not isinstance(shape[0], _Batch) or not all(isinstance(s, int) for s in shape[1:]):
                raise UsageError("cannot export: view/reshape must keep the batch dimension (x.view(x.size(0), ...), "
                                 "or x.view(-1, n) with n one sample's size when input_size is given)")
            return self.add({"op": "reshape", "shape": [int(s) for s in shape[1:]]}, [x])
        self._no_attribute(n)
        way = SOFTMAX_WAY if name in ("softmax", "log_softmax") else ONNX_WAY
        raise _Refused(f"cannot export: tensor method {name!r} is not supported", n.name, way)

    def activation(self, n: fx.Node, where: str) -> int:
        """``F.relu``, ``F.relu6``, ``F.hardtanh``, ``F.leaky_relu`` and ``F.prelu`` (a parameter as its weight), their
        in-place forms too (``inplace=True``, ``F.relu_``): the node of their module."""
        f, inplace_at, more = n.target, 1, ""  # (more: the arguments after x, in a message)
        if f is F.relu6:
            node = _hardtanh(0.0, 6.0)
        elif f in (F.hardtanh, F.hardtanh_):
            lo, hi = self._kw(n, 1, "min_val", -1.0), self._kw(n, 2, "max_val", 1.0)
            node, inplace_at, more = _hardtanh(lo, hi), 3, ", ..."
        elif f in (F.leaky_relu, F.leaky_relu_):
            node, inplace_at, more = _leaky_relu(self._kw(n, 1, "negative_slope", 0.01)), 2, ", ..."
        elif f is torch.prelu:
            node, inplace_at = _prelu(self.weight(n.args[1] if len(n.args) > 1 else n.kwargs.get("weight"))), None
        else:
            node = {"op": "relu"}
        x = self.tensor(n.args[0], where)
        call = f"F.{where}(x{more}"
        if where.endswith("_"):  # (F.relu_(x) as a statement)
            self._in_place(n, f"{call})", f"x = {call})")
        elif inplace_at is not None and self._kw(n, inplace_at, "inplace", False):
            self._in_place(n, f"{call}, inplace=True)", f"x = {call}, inplace=True)")
        return self.add(node, [x])

    def weight(self, arg: Any) -> torch.Tensor:
        """The tensor of the model's attribute that ``arg`` reads (``F.prelu(x, self.weight)``)."""
        got = self.env.get(arg) if isinstance(arg, fx.Node) else None
        value: Any = self.gm
        for part in got.target.split(".") if isinstance(got, _Attr) else ():
            value = getattr(value, part)
        if not isinstance(got, _Attr) or not isinstance(value, torch.Tensor):
            raise UsageError("cannot export F.prelu with a weight computed in the forward: pass a parameter of the "
                             "model (F.prelu(x, self.weight)), or use nn.PReLU")
        return value.detach()

    @staticmethod
    def _in_place(n: fx.Node, written: str, instead: str) -> None:
        """Refuse an in-place op whose input is read after it: the graph has no in-place ops, so that read would get
        the value before the op."""
        source = n.args[0]
        if isinstance(source, fx.Node):
            order = {m: i for i, m in enumerate(n.graph.nodes)}
            if any(order[u] > order[n] for u in source.users if u is not n):
                raise _Refused(f"cannot export {written} with x read after it (the graph has no in-place ops): "
                               f"write {instead}", n.name)

    def clamp(self, n: fx.Node, x: int) -> int:
        """``clamp``/``clip`` with constant bounds: a ``hardtanh`` (both bounds), or a ``relu`` (min 0 alone)."""
        lo, hi = self._kw(n, 1, "min", None), self._kw(n, 2, "max", None)
        name = getattr(n.target, "__name__", n.target)
        if not all(v is None or (isinstance(v, (int, float)) and not math.isnan(v)) for v in (lo, hi)):
            raise _Refused(f"cannot export {name}(min={lo}, max={hi}): its bounds must be numbers", n.name)
        lo = None if lo == -math.inf else lo  # an infinite bound is no bound (clamp(min=0, max=inf) is a relu)
        hi = None if hi == math.inf else hi
        if (lo is not None and math.isinf(lo)) or (hi is not None and math.isinf(hi)):
            raise _Refused(f"cannot export {name}(min={lo}, max={hi}): every value would be clamped to infinity",
                           n.name)
        if isinstance(name, str) and name.endswith("_"):  # x.clamp_(...) as a statement
            self._in_place(n, f"x.{name}(...)", f"x = x.{name[:-1]}(...)")
        if lo is not None and hi is not None:
            if lo > hi:
                raise _Refused(f"cannot export {name}(min={lo}, max={hi}): min is above max", n.name)
            return self.add(_hardtanh(lo, hi), [x])
        if lo is None and hi is None:  # infinite bounds: the identity
            return x
        if lo == 0 and hi is None:
            return self.add({"op": "relu"}, [x])
        raise _Refused(f"cannot export {name} with one bound (min={lo}, max={hi}): give both (as Hardtanh), "
                       "or min=0 alone (as ReLU)", n.name)

    def chain(self, parts: list[dict[str, Any]], x: int) -> int:
        """Nodes one after the other from ``x``; the last one's index."""
        for part in parts:
            x = self.add(part, [x])
        return x

    def unit_dim(self, n: fx.Node, name: str) -> int:
        """``x.unsqueeze(dim)`` / ``x.squeeze(dim)`` (or torch's functions): a unit dimension added or removed, never
        the batch; a negative ``dim`` where the shapes were propagated (``input_size``) give the rank."""
        dim = self._kw(n, 1, "dim", None)
        shape = _shape_of(n.args[0])
        rank = None if shape is None else len(shape)
        if isinstance(dim, int) and dim < 0 and rank is not None:
            dim += rank + (name == "unsqueeze")
        if not isinstance(dim, int) or not 1 <= dim <= ir.MAX_DIM:
            given = "no dim" if dim is None else f"dim={dim!r}"
            raise UsageError(f"cannot export {name} with {given}: give one dimension after the batch (x.{name}(1); a "
                             "negative one needs input_size)")
        if name == "squeeze" and shape is not None and (dim >= len(shape) or shape[dim] != 1):
            raise UsageError(f"cannot export squeeze({dim}) of a tensor of shape {shape}: only a "
                             "dimension of size 1 (one that squeeze removes)")
        return self.add({"op": name, "dim": dim}, [self.tensor(n.args[0], name)])

    def cat(self, n: fx.Node, where: str) -> int:
        """``torch.cat`` along a dimension after the batch (a negative ``dim`` where the shapes were propagated give
        the rank): one along the batch would give more rows than images."""
        tensors, dim = n.args[0], self._kw(n, 1, "dim", 0)
        xs = [self.tensor(t, where) for t in tensors]
        shape = _shape_of(tensors[0]) if tensors else None
        if isinstance(dim, int) and not isinstance(dim, bool) and dim < 0 and shape is not None:
            dim += len(shape)
        if dim == 0:
            raise UsageError("cannot export torch.cat along the batch dimension (each image would give more than "
                             "one output row); concatenate along a dimension after it (torch.cat(xs, 1): channels)")
        if not isinstance(dim, int) or isinstance(dim, bool) or not 1 <= dim <= ir.MAX_DIM:
            raise UsageError(f"cannot export torch.cat with dim={dim!r}: give a dimension after the batch "
                             "(torch.cat(xs, 1); a negative one needs input_size)")
        return self.add({"op": "cat", "dim": dim}, xs)

    def mean(self, n: fx.Node) -> int:
        dims = self._kw(n, 1, "dim", None)
        if dims is None:
            raise UsageError("cannot export: mean over all dimensions (it would mix the batch)")
        dims = [dims] if isinstance(dims, int) else list(dims)
        node = {"op": "mean", "dims": dims, "keepdim": bool(self._kw(n, 2, "keepdim", False))}
        return self.add(_batch_kept(node, n.args[0]), [self.tensor(n.args[0], "mean")])

    def slice(self, x: int, index: Any) -> int:
        index = index if isinstance(index, tuple) else (index,)
        ranges = []
        for i, s in enumerate(index):
            if s is Ellipsis and i == len(index) - 1:
                break
            if not isinstance(s, slice):
                raise UsageError("cannot export: tensor indexing other than slices (x[:, :, ::2]) is not "
                                 f"supported{ONNX_WAY}")
            if i == 0 and s != slice(None):
                raise UsageError("cannot export: slicing the batch dimension is not supported")
            ranges.append([_const(s.start, self.env), _const(s.stop, self.env), _const(s.step, self.env)])
        return self.add({"op": "slice", "ranges": ranges}, [x])


def _users(nodes: list[dict[str, Any]], output: int) -> list[int]:
    count = [0] * len(nodes)
    for node in nodes:
        for i in node["in"]:
            count[i] += 1
    count[output] += 1
    return count


def fold_batch_norms(nodes: list[dict[str, Any]], output: int,
                     ranks: dict[int, int] | None = None) -> tuple[list[dict[str, Any]], int, int]:
    """Fold the exactly foldable affine (batch norm) nodes; returns (nodes, output, number folded).

    An affine scales axis 1 and a linear works on the last axis: they meet only on (N, features)
    tensors, so a fold next to a linear needs ``ranks`` (node index -> rank of its output) to say 2."""
    ranks = ranks or {}
    nodes = [dict(n) for n in nodes]
    users = _users(nodes, output)
    alias: dict[int, int] = {}
    folded = 0
    for i, node in enumerate(nodes):
        node["in"] = [alias.get(j, j) for j in node["in"]]
        src = nodes[node["in"][0]] if node["in"] else None
        # conv/linear -> BN: w' = w * s (per output), b' = b * s + t
        if node["op"] == "affine" and src is not None and src["op"] in ("conv", "linear") \
                and users[node["in"][0]] == 1 and len(node["scale"]) == src["w"].shape[0] \
                and (src["op"] == "conv" or ranks.get(node["in"][0]) == 2):
            s, t = node["scale"].astype(np.float64), node["shift"].astype(np.float64)
            w = src["w"].astype(np.float64)
            b = np.zeros(w.shape[0]) if src["b"] is None else src["b"].astype(np.float64)
            src["w"] = (w * s.reshape((-1,) + (1,) * (w.ndim - 1))).astype(np.float32)
            src["b"] = (b * s + t).astype(np.float32)
            if node.get("shift_err"):  # the shift is added after the scale: its error passes unchanged
                src["shift_err"] = src.get("shift_err", 0.0) + node["shift_err"]
            alias[i] = node["in"][0]
            users[node["in"][0]] += users[i] - 1  # the BN's readers read the conv now: a second BN after it folds
            # only where it is their one reader (review mut5 #7: y = bn2(s) + s, s = bn1(conv(x)), took bn2 into s)
            node["op"] = None
            folded += 1
        # BatchNorm1d -> linear: w' = w * s (per input), b' = b + w @ t
        elif node["op"] == "linear" and src is not None and src["op"] == "affine" and src.get("bn1d") \
                and users[node["in"][0]] == 1 and len(src["scale"]) == node["w"].shape[1] \
                and ranks.get(node["in"][0]) == 2:
            s, t = src["scale"].astype(np.float64), src["shift"].astype(np.float64)
            w = node["w"].astype(np.float64)
            b = np.zeros(w.shape[0]) if node["b"] is None else node["b"].astype(np.float64)
            node["w"] = (w * s[None, :]).astype(np.float32)
            node["b"] = (b + w @ t).astype(np.float32)
            if src.get("shift_err"):  # each input's shift error, through the row's weights
                node["shift_err"] = node.get("shift_err", 0.0) + float(np.abs(w).sum(1).max()) * src["shift_err"]
            node["in"] = list(src["in"])
            src["op"] = None
            folded += 1
    output = alias.get(output, output)
    return _compact(nodes, output) + (folded,)


#: ops that act on each element, or on each channel (axis 1), the same way at any rank: a squeeze of a later
#: dimension gives the same values before them as after them
_PER_CHANNEL = ("relu", "sign", "hardtanh", "leaky_relu", "prelu", "affine")


def drop_unit_dims(nodes: list[dict[str, Any]], output: int, ranks: dict[int, int] | None = None
                   ) -> tuple[list[dict[str, Any]], int, dict[int, int]]:
    """Move each ``squeeze`` past the per-element and per-channel ops that follow it (and an ``add`` or a ``cat``
    along an earlier dimension of values squeezed the same way), and drop it where an ``unsqueeze`` of the same
    dimension undoes it; a squeeze still needed is made once, where its value is first read. A 1-D network (Conv1d
    -> BatchNorm1d -> sign -> Conv1d ...) then runs as a 2-D one on (N, C, 1, L), each conv straight into the nodes
    the runtime fuses with it and the batch norm that folds into it. Returns (nodes, output, ranks), ``ranks`` (node
    index -> rank of its output, as :func:`fold_batch_norms` takes them) renumbered."""
    ranks = ranks or {}
    out: list[dict[str, Any]] = []
    new_ranks: dict[int, int] = {}
    where: dict[int, tuple[int, int | None]] = {}  # node -> (new node, the dim of a squeeze after it not made yet)
    squeezes: dict[tuple[int, int], int] = {}  # (new node, dim) -> its squeeze, once made
    names: dict[tuple[int, int], Any] = {}  # the module a pending squeeze came from

    def emit(node: dict[str, Any], inputs: list[int], rank: int | None) -> int:
        out.append({**node, "in": inputs})
        if rank is not None:
            new_ranks[len(out) - 1] = rank
        return len(out) - 1

    def value(i: int) -> int:
        j, dim = where[i]
        if dim is None:
            return j
        if (j, dim) not in squeezes:
            named = {"name": names[j, dim]} if names.get((j, dim)) is not None else {}
            squeezes[j, dim] = emit({"op": "squeeze", "dim": dim, **named}, [j], ranks.get(i))
        return squeezes[j, dim]

    for i, node in enumerate(nodes):
        pending = [where[k] for k in node["in"]]
        op, rank = node["op"], ranks.get(i)
        if op == "squeeze" and pending[0][1] is None:
            where[i] = (pending[0][0], node["dim"])
            names.setdefault(where[i], node.get("name"))
        elif op == "unsqueeze" and pending[0][1] == node["dim"]:
            where[i] = (pending[0][0], None)
        elif pending and pending[0][1] is not None and (
                op in _PER_CHANNEL or op == "add" and pending[1][1] == pending[0][1]
                or op == "cat" and all(p[1] == pending[0][1] for p in pending)
                and type(node["dim"]) is int and 1 <= node["dim"] < pending[0][1]):  # channels: before the squeeze
            j = emit(node, [p[0] for p in pending], None if rank is None else rank + 1)
            where[i] = (j, pending[0][1])
        else:
            where[i] = (emit(node, [value(k) for k in node["in"]], rank), None)
    return out, value(output), new_ranks


def _compact(nodes: list[dict[str, Any]], output: int) -> tuple[list[dict[str, Any]], int]:
    """Drop removed and unused nodes and renumber."""
    live = [False] * len(nodes)
    live[output] = True
    live[0] = True
    for i in range(len(nodes) - 1, -1, -1):
        if live[i] and nodes[i]["op"] is not None:
            for j in nodes[i]["in"]:
                live[j] = True
    new_index: dict[int, int] = {}
    out: list[dict[str, Any]] = []
    for i, node in enumerate(nodes):
        if live[i] and node["op"] is not None:
            new_index[i] = len(out)
            out.append({**node, "in": [new_index[j] for j in node["in"]]})
    return out, new_index[output]


def _line_of(model: nn.Module, node: str) -> str:
    """`` (file:line, in function)`` of the model's code that made the fx node named ``node``: from a second
    trace that records stack traces (the first does not: they cost a second or more)."""
    tracer = _Tracer()
    tracer.record_stack_traces = True
    try:
        graph = tracer.trace(model, concrete_args=_defaulted_arguments(model))
    except Exception:  # noqa: BLE001 - the first trace succeeded; without a line the message stands
        return ""
    n = next((m for m in graph.nodes if m.name == node), None)
    frames = re.findall(r'File "([^"]+)", line (\d+), in (\S+)', getattr(n, "stack_trace", None) or "")
    torch_dir = os.path.join(os.path.dirname(torch.__file__), "")  # with its separator: torchvision's are the model's
    frames = [f for f in frames if not f[0].startswith(torch_dir)]  # the model's frames, not fx's own
    if not frames:
        return ""
    path, line, function = frames[-1]
    return f" (at {os.path.basename(path)}:{line}, in {function})"


def _defaulted_arguments(model: nn.Module) -> dict[str, Any] | None:
    """The forward's parameters after the image that have defaults (``mask=None``), traced at those defaults;
    one without a default is refused, named."""
    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return None
    extra = [p for p in params[1:] if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    needed = [p.name for p in extra if p.default is p.empty or isinstance(p.default, torch.Tensor)]
    if needed:
        raise UsageError(f"cannot export a model with more than one input: its forward also takes "
                         f"{', '.join(map(repr, needed))}; export a module whose forward takes the image alone")
    return {p.name: p.default for p in extra} or None


def to_graph(model: nn.Module, input_size: tuple[int, ...] | None = None) -> tuple[list[dict[str, Any]], int, int]:
    """Trace an eval-mode ``model``: (nodes, output index, number of batch norms folded). With the
    ``input_size`` (C, H, W) of one image, the shapes are propagated too, so that batch norms next to
    a linear layer are folded where its input is (N, features); without it they stay ``affine``."""
    refuse_own_forwards(model, "the packed file")
    try:
        graph = _Tracer().trace(model, concrete_args=_defaulted_arguments(model))
    except UsageError:
        raise
    except Exception as err:  # noqa: BLE001 - tracing errors come in many types
        msg = str(err).strip().splitlines()[0][:150] if str(err).strip() else type(err).__name__
        raise UsageError(f"cannot export: torch.fx could not trace the model ({msg})") from None
    gm = fx.GraphModule(model, graph)
    failed = None
    if input_size is not None:
        param = next(iter(model.parameters()), None)  # the model's own dtype and device (float64, bf16, cuda)
        sample = torch.zeros(1, *input_size, dtype=param.dtype if param is not None and param.is_floating_point()
                             else torch.float32, device=param.device if param is not None else "cpu")
        try:  # ShapeProp prints the traceback of a node that fails: kept for the one line below
            with torch.no_grad(), contextlib.redirect_stderr(io.StringIO()), unwatched(model):
                ShapeProp(gm).propagate(sample)
        except Exception as err:  # noqa: BLE001 - the model's own error, said once the graph is known
            failed = err.__cause__ or err
    builder = _Builder(gm)
    try:
        nodes, output = builder.run()  # its own refusals first: they say what to change in the model
    except _Refused as err:
        raise UsageError(f"{err}{_line_of(model, err.node)}{err.way}") from None
    if failed is not None:
        first = str(failed).strip().splitlines()[0][:150] if str(failed).strip() else type(failed).__name__
        raise UsageError(f"the model fails on an input of input_size {tuple(input_size)} ({first}); check "
                         "input_size against the model")
    ranks: dict[int, int] = {}
    for n, i in builder.env.items():  # the fx node that made a graph node comes first (identities reuse it)
        shape = _shape_of(n)
        if isinstance(i, int) and shape is not None:
            ranks.setdefault(i, len(shape))
    nodes, output, folded = fold_batch_norms(*drop_unit_dims(nodes, output, ranks))
    return signed_inputs(nodes, output) + (folded,)


def signed_inputs(nodes: list[dict[str, Any]], output: int) -> tuple[list[dict[str, Any]], int]:
    """A binary layer of real inputs (1W/32A) that reads a ``sign`` node's +-1 values is a 1W1A layer: marked
    ``bin_in`` and reading the sign's input, so that the runtime signs and packs the inputs itself (in the epilogue
    of the layer before, where it can) and adds them by XOR and popcount, not as a float conv of unpacked weights;
    the sign is dropped. That is an estimator used as an activation module before a layer built
    with ``input_estimator=None`` (larq's ``Activation("ste_sign")`` before a ``QuantConv2D`` without an
    ``input_quantizer``), which ran about 10x slower (review larq1). The sign of +-1 is itself and both pad with
    zeros: the values are the same. A sign that another node reads too stays as it was (the file then signs each
    value where the model does: its check traces them one for one)."""
    nodes = [dict(n) for n in nodes]
    users = _users(nodes, output)
    for node in nodes:
        if node["op"] in ir.BINARY_OPS and not node["bin_in"] and node["in"] and users[node["in"][0]] == 1 \
                and nodes[node["in"][0]]["op"] == "sign":
            node["bin_in"] = True
            node["in"] = [*nodes[node["in"][0]]["in"], *node["in"][1:]]
    return _compact(nodes, output)
