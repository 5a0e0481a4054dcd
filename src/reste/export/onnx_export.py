"""ONNX export of the eval-mode model.

Each binary layer becomes ``Where(x < 0, -1, 1)`` (sign with sign(0) = +1; omitted for
real inputs) followed by a float Conv/Gemm whose weight is the constant
``sign(W) * alpha``, so any ONNX runtime computes what the eval-mode model does, to float32
rounding: where a binary layer's sum of +-1 cancels with no bias or batch norm before the next
sign, the eval-mode model (which scales after the sum) and the packed file have 0, and the file's
sum of +-alpha the sign of its rounding. (A ``Mul`` by alpha after a Conv on sign(W) would not
help: onnxruntime's graph optimizations fold it back into the weights.)
The batch dimension is dynamic.
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
import os
import re
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from ..errors import UsageError

OPSET = 18
#: Why an ONNX file was written unchecked: ``export_onnx``'s ``"unchecked"`` (review deploy #7).
UNCHECKED = "onnxruntime is not installed; pip install onnxruntime to check it"
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_PADS = (nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d)


class OnnxSign(nn.Module):
    """sign with sign(0) = +1, as ``torch.where`` (exports to ONNX ``Where``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where(x < 0, -1.0, 1.0).to(x.dtype)


def _dilated_same(m: nn.Module) -> bool:
    """A conv of padding='same' and a dilation: ONNX Runtime's SAME (the exporter's auto_pad) takes no
    dilation, so its padding is written out."""
    return isinstance(m, _CONVS) and m.padding == "same" and any(d != 1 for d in m.dilation)


def _where(weight: torch.Tensor) -> dict[str, Any]:
    """The ``device`` and ``dtype`` keywords of a layer made to hold ``weight``: on its device, in its dtype."""
    return {"device": weight.device, "dtype": weight.dtype}


def _filled(new: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Module:
    """``new`` (a float conv or linear) holding ``weight`` and ``bias``."""
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias.detach())
    return new


def _plain_conv(m: nn.Module, weight: torch.Tensor) -> nn.Module:
    """A float nn.Conv1d/2d/3d of ``m``'s geometry and ``weight``; a dilated 'same' padding as numbers, after an
    explicit zero pad where the two sides differ (an even kernel: PyTorch pads one more on the right)."""
    dims = len(m.kernel_size)
    conv = _CONVS[dims - 1]
    padding, pad = m.padding, None
    if _dilated_same(m) and m.padding_mode == "zeros":  # (another mode: torch pads in F.pad itself, Pad in ONNX)
        totals = [d * (k - 1) for k, d in zip(m.kernel_size, m.dilation)]
        padding = tuple(t // 2 for t in totals)
        if any(t % 2 for t in totals):
            pad = [n for t in reversed(totals) for n in (t // 2, t - t // 2)]  # F.pad's order: last dim first
            padding = (0,) * len(totals)
    # (made where the weight is, in its dtype: a plain nn.Conv2d on the CPU in float32 left a GPU model's
    # deploy_model copy on two devices, review gpuread2 #1)
    new = _filled(conv(m.in_channels, m.out_channels, m.kernel_size, m.stride, padding, m.dilation, m.groups,
                       bias=m.bias is not None, padding_mode=m.padding_mode, **_where(weight)), weight, m.bias)
    if pad is None:
        return new
    return nn.Sequential(_PADS[dims - 1](tuple(pad), 0.0), new)


def _plain_transposed(m: nn.Module, weight: torch.Tensor) -> nn.Module:
    """A float nn.ConvTranspose1d/2d/3d of ``m``'s geometry and ``weight``."""
    kind = _TRANSPOSED[len(m.kernel_size) - 1]
    return _filled(kind(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.output_padding,
                        m.groups, m.bias is not None, m.dilation, **_where(weight)), weight, m.bias)


class _SignedTransposed(nn.Sequential):
    """sign, then a float transposed conv, which takes ``output_size`` as ``nn.ConvTransposeNd`` does."""

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        return self[1](self[0](x), output_size)


def _float_layer(m: nn.Module, name: str) -> nn.Module:
    """A plain float layer computing the eval forward of binary layer ``m`` (``name``: for errors)."""
    with torch.no_grad():
        w = m.binary_weight().detach().clone()
    if isinstance(m, _CONVS):  # (padding_mode kept: ONNX pads reflect, replicate and circular with Pad's modes)
        new: nn.Module = _plain_conv(m, w)
    elif isinstance(m, _TRANSPOSED):
        new = _plain_transposed(m, w)
    elif isinstance(m, nn.Linear):
        new = _filled(nn.Linear(m.in_features, m.out_features, bias=m.bias is not None, **_where(w)), w, m.bias)
    else:
        raise UsageError(f"cannot export binary layer type {type(m).__name__} to ONNX (it takes binary convs, "
                         "transposed or not, and Linear layers); binarize with keep=[...] naming it to keep it "
                         "in float")
    if getattr(m, "input_precision", 1) == 1:
        return (_SignedTransposed if isinstance(m, _TRANSPOSED) else nn.Sequential)(OnnxSign(), new)
    return new


def deploy_model(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` with every binary layer replaced by sign + a float layer (and a dilated
    'same' conv, float too, by one of explicit padding)."""
    from ..estimators import Estimator
    from .graph import refuse_own_forwards

    refuse_own_forwards(model, "the ONNX file")
    model = copy.deepcopy(model).eval()
    replaced: list[str] = []
    made: dict[int, nn.Module] = {}  # a layer used under several names gets one replacement, set at each
    for name, m in list(model.named_modules(remove_duplicate=False)):
        if any(name.startswith(prefix + ".") for prefix in replaced):
            continue  # inside a layer already replaced (its estimators)
        replacement = made.get(id(m))
        if replacement is None and getattr(m, "precision", 32) == 1:
            replacement = made[id(m)] = _float_layer(m, name)
        elif replacement is None and isinstance(m, Estimator):
            replacement = made[id(m)] = OnnxSign()
        elif replacement is None and type(m) in _CONVS and _dilated_same(m) \
                and m.padding_mode == "zeros":  # a float one too
            replacement = made[id(m)] = _plain_conv(m, m.weight.detach())
        if replacement is not None and name:
            parent_name, _, attr = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, attr, replacement)
            replaced.append(name)
    return model.eval()


@contextlib.contextmanager
def _quiet_fds() -> Iterator[None]:
    """File descriptors 1 and 2 sent to /dev/null for the duration: the exporters' C++ side prints there
    (the TorchScript exporter dumps its whole IR graph when it fails), where ``redirect_stdout`` cannot
    reach. Process-wide: other threads' output in that time is lost too."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    saved = []
    try:
        with open(os.devnull, "wb") as null:
            for fd in (1, 2):
                try:
                    saved.append((fd, os.dup(fd)))
                except OSError:  # a closed descriptor: nothing to silence
                    continue
                os.dup2(null.fileno(), fd)
        yield
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        for fd, copy_fd in saved:
            os.dup2(copy_fd, fd)
            os.close(copy_fd)


def _export(model: nn.Module, x: torch.Tensor, path: Path, dynamo: bool) -> None:
    kwargs: dict[str, Any] = dict(input_names=["images"], output_names=["logits"], opset_version=OPSET)
    if dynamo:
        kwargs["dynamic_shapes"] = ({0: torch.export.Dim("batch", min=1, max=65536)},)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(model, (x,), dynamo=True, external_data=False, **kwargs)
        program.save(str(path))
    else:
        kwargs["dynamic_axes"] = {"images": {0: "batch"}, "logits": {0: "batch"}}
        buffer = io.BytesIO()  # written by us: its C++ writer takes text paths alone (review portable #13)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (x,), buffer, dynamo=False, do_constant_folding=True, **kwargs)
        path.write_bytes(buffer.getvalue())


def require_onnx() -> None:
    """Refuse, with the command that installs it, an ONNX export without the ``onnx`` package (both of
    PyTorch's exporters need it)."""
    import importlib.util

    if importlib.util.find_spec("onnx") is None:
        raise UsageError("ONNX export needs the onnx package: pip install 'reste[onnx]'")


def export_onnx(model: nn.Module, path: str | os.PathLike, input_size: tuple[int, ...], *,
                check: bool = True) -> dict[str, Any]:
    """Write the eval-mode ``model`` as ONNX (input ``images`` (N, *input_size), output ``logits``).

    A ``torch.compile``d, ``nn.DataParallel`` or ``DistributedDataParallel`` model is exported as the model inside,
    one in another float dtype (bfloat16, float16, float64) as its float32 copy, as :func:`export_model` does.

    Tries the TorchScript exporter, then the dynamo exporter; what they print (on file descriptors 1 and
    2) is silenced (process-wide: while an exporter runs, the output of other threads and any warning are lost
    too), and ``"fallback"`` gives the first line of the TorchScript exporter's error when
    dynamo wrote the file. With ``check`` the file is run with onnxruntime on 16 random images and compared with
    the model in float64 (see :func:`check_onnx`); without onnxruntime it is written unchecked, with a warning and
    ``"unchecked"`` (why, and the command that installs it) in what is returned.
    Returns ``{"path", "bytes", "exporter"}`` [``"fallback"``] and the check's keys.
    """
    from ..errors import checked_input_size
    from ..rundir import check_output_path  # here: the exporter alone loads nothing of the training side
    from ..layers import dummy_forward
    from .exporter import _float32_on_cpu, initialise_lazy, refuse_non_finite, staged, unwrapped, warn_hooks

    path = Path(path)
    check_output_path(path)
    require_onnx()
    input_size = checked_input_size(input_size)
    if input_size is None:
        raise UsageError("export_onnx needs input_size, one input's shape such as (C, H, W): the file is traced "
                         "on an input of that size")
    # the exporters cannot trace the wrappers; the check runs in float32, on the CPU (a model on a GPU failed both
    # exporters with a device mismatch: review gpufail01)
    model = _float32_on_cpu(unwrapped(model))
    dummy_forward(model, input_size)  # (a size the model cannot take: its own error, not the two exporters')
    initialise_lazy(model, input_size)  # (that forward gave the lazy modules it ran their weights)
    refuse_non_finite(model)
    warn_hooks(model, "export_onnx")
    if not path.parent.is_dir():
        raise UsageError(f"cannot write {path}: folder {path.parent} does not exist")
    deploy = deploy_model(model)
    x = torch.randn(2, *input_size, generator=torch.Generator().manual_seed(0))
    errors = []
    with staged(path) as tmp:  # written and checked beside it, then renamed: never a torn file under its name
        for exporter, dynamo in (("torchscript", False), ("dynamo", True)):
            try:
                with torch.no_grad(), _quiet_fds():
                    _export(deploy, x, tmp, dynamo)
                break
            except Exception as err:  # noqa: BLE001 - fall back to the other exporter
                text = _ANSI.sub("", str(err)).strip()  # dynamo colours its messages
                errors.append(f"{exporter}: {text.splitlines()[0][:150] if text else repr(err)}")
        else:
            raise UsageError(f"ONNX export failed ({'; '.join(errors)})")
        info: dict[str, Any] = {"path": str(path), "bytes": tmp.stat().st_size, "exporter": exporter}
        if errors:  # the first exporter failed: why, in one line (its own output was silenced)
            info["fallback"] = errors[0].partition(": ")[2].strip("'\"")
        if check:
            info.update(check_onnx(model, tmp, input_size))
    if "unchecked" in info:  # (reste export says it in its line)
        warnings.warn(f"export_onnx wrote {path} unchecked: {info['unchecked']}", UserWarning, stacklevel=2)
    elif info.get("exact_ties") and not info["same_predictions"]:
        from .exporter import EXACT_TIES

        warnings.warn(f"export_onnx: {path} predicts other classes than the model on some of the {info['images']} "
                      f"check images, with {info['exact_ties']} sign inputs exactly 0: {ONNX_TIES}; {EXACT_TIES}",
                      UserWarning, stacklevel=2)
    return info


#: Why an ONNX file differs at an exact tie from the eval-mode model and the packed file.
ONNX_TIES = ("the file's float Conv or Gemm sums +-alpha (sign(W) * alpha as its weight; onnxruntime folds a Mul "
             "after the sum back into the weights), while reste's eval-mode layers and the packed file sum +-1")


@torch.no_grad()
def check_onnx(model: nn.Module, path: str | os.PathLike, input_size: tuple[int, ...],
               images: int = 16) -> dict[str, Any]:
    """Run an ONNX file with onnxruntime on random images (without onnxruntime: ``{"unchecked": UNCHECKED}``).

    The file is run as written, and again with each sign's input (``Where(x < 0, -1, 1)``'s x) as an output too,
    both without onnxruntime's graph rewrites (so that the two give the same logits). Its sign inputs and logits
    are then compared with the model in float64 (the exported graph with exact binary sums,
    :mod:`reste.export.reference`), as the packed file's are: an image whose logits differ is explained only by a
    sign flipped at a near-tie, at the first sign input that differs. Where the file's signs cannot be matched with
    the reference's (a graph whose signs the exporter rewrote), the logits alone are compared, and an image that
    differs is explained when one of its sign inputs lies within float32 rounding of zero (``reference["traced"]``
    says which).
    Returns ``{"images", "max_abs_diff", "same_predictions"}`` (against the float32 model) and, where the packed
    format can hold the model (the float64 reference is built from it), ``"reference"`` (the comparison) and
    ``"ok"``; a model it cannot hold (a transformer's LayerNorm, attention) gets no ``"ok"``: read
    ``report.get("ok")``.
    """
    try:
        import onnxruntime as ort
    except ImportError:
        return {"unchecked": UNCHECKED}
    from dataclasses import asdict

    from .exporter import _float32_on_cpu, export_model, model_reference
    from ..layers import eval_mode
    from .reference import compare, exact_ties

    # (its images are made on the CPU in float32, as onnxruntime's CPU provider takes them: a model on a GPU, or in
    # float64, failed at model(x); export_onnx gives it such a copy already, review gpuread2 #2)
    model = _float32_on_cpu(model)

    # (the file's bytes, not its path: onnxruntime takes text paths alone, review portable #13)
    data = Path(path).read_bytes()
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    x = torch.randn(images, *input_size, generator=torch.Generator().manual_seed(1))
    got = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
    try:
        with eval_mode(model):
            ref32 = model(x).float()
        with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # (export_onnx said what there is to say about the model)
            export_model(model, Path(tmp) / "reference.rbnn", input_size=input_size, verify=False)
            ref = model_reference(model, Path(tmp) / "reference.rbnn", x).distinct_sites()
        logits, sites = _traced_run(data, x.numpy())
        reference = compare(ref, logits, sites)
        ties, tie_images = exact_ties(ref, sites)  # (its float Conv sums +-alpha: see the module docstring)
        info: dict[str, Any] = {"reference": asdict(reference), "ok": reference.ok, "exact_ties": ties,
                                "exact_tie_images": tie_images}
    except UsageError:  # a model the packed format cannot hold: the float32 model only
        info = {}
    info.update(images=images, max_abs_diff=float((ref32 - got).abs().max()),
                same_predictions=bool((ref32.argmax(1) == got.argmax(1)).all()))
    return info


def _scalars(graph: Any) -> dict[str, float]:
    """The one-element constants of ``graph`` (its initializers and its Constant nodes' values) by name; a name
    given twice is left out (no one value)."""
    from onnx import numpy_helper

    def one(tensor: Any) -> Any:  # (a weight is not read: its dims say it is no scalar)
        return numpy_helper.to_array(tensor).item() if math.prod(tensor.dims) == 1 else None

    found: dict[str, list[Any]] = {}
    for tensor in graph.initializer:
        found.setdefault(tensor.name, []).append(one(tensor))
    for node in graph.node:
        for a in node.attribute if node.op_type == "Constant" else ():
            if a.name in ("value", "value_float"):
                found.setdefault(node.output[0], []).append(one(a.t) if a.name == "value" else a.f)
    return {name: float(v[0]) for name, v in found.items() if len(v) == 1 and v[0] is not None}


def sign_inputs(graph: Any) -> list[str]:
    """The values an ONNX graph takes the sign of (``Where(x < 0, -1, 1)``: x), in the order it runs them, each
    once (one exporter gives two signs of one tensor one Where; the other, two)."""
    made = {out: node for node in graph.node for out in node.output}
    scalars = _scalars(graph)
    names: list[str] = []
    for node in graph.node:
        less = made.get(node.input[0]) if node.op_type == "Where" else None
        if less is None or less.op_type != "Less" or scalars.get(less.input[1]) != 0.0 \
                or (scalars.get(node.input[1]), scalars.get(node.input[2])) != (-1.0, 1.0):
            continue
        if less.input[0] not in names:
            names.append(less.input[0])
    return names


def _traced_run(data: bytes, images: Any) -> tuple[Any, list[Any] | None]:
    """An ONNX file's logits on ``images`` and its sign inputs (:func:`sign_inputs`; ``[]`` where it has none), both
    run without graph rewrites, once as written and once with the sign inputs as outputs too; the sign inputs
    are given only when both runs give the same logits, bit for bit, so that they are the written file's."""
    import onnx
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL

    def run(proto_bytes: bytes) -> list[Any]:
        session = ort.InferenceSession(proto_bytes, options, providers=["CPUExecutionProvider"])
        return session.run(None, {session.get_inputs()[0].name: images})

    logits = run(data)[0]
    proto = onnx.load_from_string(data)
    feeds = {i.name for i in proto.graph.input}
    names = sign_inputs(proto.graph)
    if not names:  # (a 1W/32A model has none: matched with a reference of none; else the logits alone are compared)
        return logits, []
    given = [o.name for o in proto.graph.output]
    added = [n for n in names if n not in feeds and n not in given]  # (the images themselves: not an output)
    proto.graph.output.extend(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in added)
    ran = run(proto.SerializeToString())
    if not (ran[0] == logits).all():
        return logits, None
    values = dict(zip(given + added, ran))
    return logits, [images if n in feeds else values[n] for n in names]


def run_onnx(path: str | os.PathLike, images: Any) -> Any:
    """Logits of an ONNX file for a batch of images (numpy), with onnxruntime. A file onnxruntime cannot read (a
    packed .rbnn given for the .onnx) and images of another shape than the file's input are one-line
    ``UsageError`` s (review apifuzz1: onnxruntime's InvalidProtobuf and INVALID_ARGUMENT came through)."""
    import numpy as np
    import onnxruntime as ort

    from ..errors import one_line, read_user_file
    from .format import MAGIC

    blob = read_user_file(path, f"{path} does not exist; write one with reste export --onnx or export_onnx")
    try:
        session = ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
    except Exception as err:  # noqa: BLE001 - onnxruntime's own exception types (InvalidProtobuf, Fail, ...)
        hint = ": a packed model, which PackedModel.load reads" if blob.startswith(MAGIC) else ""
        raise UsageError(f"{path} is no ONNX file onnxruntime can run{hint} ({one_line(err)[:120]})") from None
    x = np.asarray(images, dtype=np.float32)
    expected = session.get_inputs()[0].shape
    if len(expected) != x.ndim or any(isinstance(e, int) and e != g for e, g in zip(expected[1:], x.shape[1:])):
        raise UsageError(f"{path} takes images of shape {tuple(expected)}, got {tuple(x.shape)}")
    return session.run(None, {session.get_inputs()[0].name: x})[0]

