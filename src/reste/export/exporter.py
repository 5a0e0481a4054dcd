"""``export_model``: write a packed-model file and report its size (a training checkpoint:
:func:`reste.export.from_checkpoint.export_checkpoint`).

The size report compares the file with the float model:

* ``float_bytes``: the bytes of the model's float ``state_dict`` tensors (parameters and
  batch-norm statistics, as a float checkpoint stores them);
* ``bound = float_bytes / (binary_weights / 8 + fp_bytes)``: the best ratio for this
  content, where ``fp_bytes`` are the float32 tensors the file must hold (float
  layers with batch norms folded, alphas, the remaining per-channel affines);
* ``ratio = float_bytes / file_bytes`` and ``gap = 1 - ratio / bound``: what the
  header and the byte rounding of the bit tensors cost;
* ``param_bound = 4 P / (B / 8 + 4 (P - B))`` for P parameters of which B are
  binary: the same bound from parameter counts alone.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import warnings
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn
from torch.nn.modules.lazy import LazyModuleMixin

from ..errors import UsageError, cannot_write, checked_input_size
from ..layers import binary_layers, dummy_forward, eval_mode
from . import format as fmt
from . import ir
from .graph import Bits, to_graph

FORMAT_NAME = ir.FORMAT_NAME


@contextlib.contextmanager
def staged(path: Path) -> Iterator[Path]:
    """A temporary file beside ``path`` for the block to write and check; once the block is done it replaces
    ``path`` by a rename (fsynced), and if the block fails or is interrupted it is removed. An export stopped at any
    moment (Ctrl-C, a preemption, a full disk) leaves the earlier file whole (or none), never a truncated or
    unchecked one under the final name. Named as ``atomic_write`` names its own (``.NAME.XXXXXXXX.tmp``, made with
    O_EXCL), so one that a killed process left is found as theirs are (``reste.files.orphaned_temporaries``); it is
    locked (``flock``) while the export lives, so that a run's start in the same folder (a resume) leaves it alone
    (review chaos5 #6: the export failed, told to pass a writable path)."""
    import tempfile

    from ..files import _replace, _umask

    try:
        import fcntl
    except ImportError:  # Windows, where an open file cannot be renamed: unlocked, as before
        fcntl = None
    try:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise cannot_write(err, path, "pass a writable path") from None
    try:  # (from here on a stop signal's exception removes the file too: review chaos6 #5)
        try:
            if fcntl is None:
                raise OSError("no fcntl")
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # (released as the descriptor closes, below)
        except OSError:  # no fcntl, a file system that keeps no locks: unlocked, as before
            os.close(fd)
            fd = -1
        os.chmod(name, 0o666 & ~_umask())  # the mode an ordinary open() gives, not mkstemp's 0600
        yield Path(name)
        with open(name, "rb+") as f:
            os.fsync(f.fileno())
        _replace(name, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            os.unlink(name)
        if isinstance(err, OSError):
            raise cannot_write(err, path, "pass a writable path") from None
        raise
    finally:
        if fd >= 0:
            os.close(fd)
    with contextlib.suppress(OSError):  # the rename itself made durable
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)


def _json_safe(value: Any) -> Any:
    """``value`` as JSON gives it back: NumPy arrays and scalars and tensors of any size as (nested) lists or numbers
    (``tolist``; ``item`` takes one element alone), anything else JSON does not take as its text."""
    return json.loads(json.dumps(value, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v)))


def _serialize(nodes: list[dict[str, Any]], writer: fmt.Writer) -> list[dict[str, Any]]:
    out = []
    for node in nodes:
        ir.check_node(node)
        op = ir.get_op(node["op"])
        item = {}
        for key, value in node.items():
            if key in op.build_only:
                continue
            if key in op.tensors:
                if value is None:
                    item[key] = None
                elif isinstance(value, Bits):
                    item[key] = writer.add("bits", value.array)
                else:
                    item[key] = writer.add("f32", value)
            else:
                item[key] = value
        out.append(item)
    return out


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """Parameters, each once (as ``model.parameters()``), and those of them that are binary weights: a weight tied
    between two binary layers counts once in both (it counted twice in ``binary``, more than the total)."""
    total = sum(p.numel() for p in model.parameters())
    binary = {id(m.weight): m.weight.numel() for m in model.modules() if getattr(m, "precision", 32) == 1}
    return {"total": total, "binary": sum(binary.values())}


def _state_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values() if isinstance(t, torch.Tensor))


def export_model(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    input_size: tuple[int, ...] | None = None,
    meta: dict[str, Any] | None = None,
    verify: bool = True,
) -> dict[str, Any]:
    """Write ``model`` (its eval-mode forward) to one packed-model file; returns the size report.

    Args:
        model: a model of float layers and reste binary layers (torch.fx-traceable). A ``torch.compile``d
            model is exported through its ``_orig_mod``, an ``nn.DataParallel`` or ``DistributedDataParallel``
            one through its ``.module``; a model in another float dtype (bfloat16 after Lightning's
            ``precision="bf16-true"``, float16, float64) through a float32 copy (the file holds float32 and
            bits; the signs of bfloat16 and float16 weights are those of their exact float32 values).
        path: the file to write.
        input_size: (C, H, W) ((C, L) for a 1-D conv model, (features,) for an MLP), stored in the file; with
            ``verify`` the packed engine and
            the float32 model are then checked against the model in float64 on 16 random
            images, and the report gets ``verify`` (see :func:`verify_export`).
        meta: free-form JSON-safe information stored in the header (model name, data set, ...);
            the keys of :class:`reste.export.ir.Preprocessing` (``input_size``, ``mean``, ``std``,
            ``pixel_scale``, and optionally ``resize``, as ``Preprocessing(...).to_meta()`` gives them) let the
            packed model take raw images (``reste predict model.rbnn photo.png``).
    """
    from ..rundir import check_output_path  # here: the exporter alone loads nothing of the training side

    check_output_path(path)
    input_size = checked_input_size(input_size)
    meta = _checked_meta(meta, input_size)
    model = _float32_on_cpu(unwrapped(model))
    initialise_lazy(model, input_size)
    refuse_non_finite(model)
    warn_hooks(model, "export_model")
    with eval_mode(model):
        nodes, output, folded = to_graph(model, input_size)
        if input_size is not None:
            nodes[0]["shape"] = [int(s) for s in input_size]
        writer = fmt.Writer()
        header = {"format": FORMAT_NAME, "meta": _json_safe(meta), "nodes": _serialize(nodes, writer),
                  "output": output}
        try:
            ir.check_graph({**header, "tensors": writer.entries()})  # what a reader will check
        except UsageError as err:  # an op, attribute or format this reste's reader refuses: its writer's mistake
            raise UsageError(f"cannot export: reste wrote a graph its own reader refuses ({err}); this is a bug in "
                             "reste, please report it with the model") from None
        except ValueError as err:
            raise UsageError(f"cannot export: {err}") from None
        path = Path(path)
        if not path.parent.is_dir():
            raise UsageError(f"cannot write {path}: folder {path.parent} does not exist")
        if path.is_dir():
            raise UsageError(f"cannot write {path}: it is a folder; pass a file name")
        with staged(path) as tmp:  # checked before it takes the name: an interrupted check leaves no unchecked file
            try:
                file_bytes = writer.write(tmp, header)
            except UsageError as err:  # (named as the file it stands for)
                raise UsageError(str(err).replace(str(tmp), str(path))) from None
            report = size_report(model, writer.tensor_bytes(), file_bytes)
            report.update(path=str(path), folded_batch_norms=folded,
                          binary_layers=sum(1 for n in nodes if n["op"] in ir.BINARY_OPS),
                          affine_ops=sum(1 for n in nodes if n["op"] == "affine"),
                          # (no packed kernel: their sign and a float conv on +-alpha weights, in 32 bits)
                          grouped_binary=sum(1 for _, m in binary_layers(model) if getattr(m, "groups", 1) != 1))
            if verify and input_size is not None:
                report["verify"] = verify_export(model, tmp, input_size)
    if verify and input_size is None:  # (review models #6) nothing to run the check on, and nothing said
        warnings.warn(f"export_model wrote {path} unchecked: without input_size=(C, H, W) there is nothing to run "
                      "the packed file and the model on; pass input_size to check it (or verify=False)", UserWarning,
                      stacklevel=2)
    elif verify and not report["verify"]["untraced_same"]:
        warnings.warn(f"export_model: {path} gives other logits untraced than traced (the sign bits its layers pass "
                      "on): a bug of reste's packed engine; report it (PackedModel.load(..., fuse_signs=False) runs "
                      "without them)", UserWarning, stacklevel=2)
    elif verify and not report["verify"]["ok"]:  # reste export exits 1 here; a Python caller gets the warning
        checked = report["verify"]
        wrong = max(checked["packed"].get("mismatch", 0), checked["model"].get("mismatch", 0))
        warnings.warn(f"export_model: {path} disagrees with the model beyond near-ties "
                      f"({wrong} of {checked['images']} images; report['verify'] has the "
                      "details): an op the file does not hold as the model computes it (a forward hook?), or a bug",
                      UserWarning, stacklevel=2)
    elif verify and report["verify"]["differing_predictions"] and report["verify"]["exact_ties"]:
        checked = report["verify"]
        warnings.warn(f"export_model: {path} predicts other classes than the model on "
                      f"{checked['differing_predictions']} of {checked['images']} check images, with "
                      f"{checked['exact_ties']} sign inputs exactly 0: "
                      f"{EXACT_TIES}", UserWarning, stacklevel=2)
    names, outputs = meta.get("classes"), (report.get("verify") or {}).get("outputs")
    if names is not None and outputs is not None and len(names) != outputs:  # (review apifuzz1, suggestion 4)
        warnings.warn(f"export_model: meta gives {len(names)} class names for a model of {outputs} outputs: reste "
                      "predict names class i by the i-th name, so some are unnamed or named wrongly; give one name "
                      "per output, in the model's order", UserWarning, stacklevel=2)
    return report


def refuse_non_finite(model: nn.Module) -> None:
    """Refuse, before anything is written, a model whose weights or BatchNorm statistics hold inf or NaN: a diverged
    run's. Its export wrote the file, then failed its check and blamed the packed engine (review numerics1 #2).
    Other buffers may be constants that are not finite on purpose (a mask: review diff28 #2)."""
    stats = [(name, t) for name, t in model.named_buffers() if name.endswith(("running_mean", "running_var"))]
    for name, t in (*model.named_parameters(), *stats):
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise UsageError(f"cannot export: {name} holds {bad} inf or NaN of its {t.numel()} values (weights of a "
                             "run that diverged?); export a checkpoint from before")


def warn_hooks(model: nn.Module, who: str) -> None:
    """Warn that the forward hooks on ``model``'s modules are not exported (review models #9): the file computes
    the model without them (torch.fx does not trace a module's hooks), so a hook that changes an output makes the
    file disagree with the model."""
    hooked = [name or "the model" for name, m in model.named_modules() if m._forward_hooks or any(
        getattr(hook, "__func__", None) is not LazyModuleMixin._infer_parameters  # (torch's own, review deploy #3)
        for hook in m._forward_pre_hooks.values())]
    if hooked:
        more = f" and {len(hooked) - 3} more" if len(hooked) > 3 else ""
        warnings.warn(f"{who}: the forward hooks on {', '.join(map(repr, hooked[:3]))}{more} are not exported: the "
                      "file computes the model without them; remove them (or fold what they do into the model)",
                      UserWarning, stacklevel=3)


def initialise_lazy(model: nn.Module, input_size: tuple[int, ...] | None) -> None:
    """Give ``model``'s lazy modules (``nn.LazyLinear``, ``nn.LazyConv2d``, ... never run: no shape, no weights) their
    weights as their first forward does, with one forward (eval mode, no gradient) of zeros of ``input_size``; refuse
    in one line those it leaves without (no ``input_size``, or a module the forward does not run). Review deploy #3:
    the exporters took torch's lazy-initialisation hook for a user's forward hook."""
    def lazy() -> list[str]:
        return [name or "the model" for name, m in model.named_modules()
                if isinstance(m, LazyModuleMixin) and m.has_uninitialized_params()]

    if not lazy():
        return
    if input_size is not None:
        dummy_forward(model, input_size)
    left = lazy()
    if not left:
        return
    many, more = len(left) > 1, f" and {len(left) - 3} more" if len(left) > 3 else ""
    them = "them" if many else "it"
    fix = (f"the model's forward does not run {them}; remove {them} from the model" if input_size is not None else
           "pass input_size (the export runs the model once on it, as a first forward does), or run the model once "
           "before exporting it")
    raise UsageError(f"cannot export: the lazy module{'s' * many} {', '.join(map(repr, left[:3]))}{more} "
                     f"{'have' if many else 'has'} no weights (never run); {fix}")


def _refuse_traced(model: Any) -> None:
    """Refuse, in one line, what torch.export, torch.jit.script or torch.jit.trace made of a model (an
    ``ExportedProgram``, the module its ``module()`` gives, a ``ScriptModule``): the exporters trace the eager one."""
    from torch.export import ExportedProgram

    exported = isinstance(model, ExportedProgram) or any(c.__module__ == "torch.export._unlift"
                                                          for c in type(model).__mro__)  # (ep.module(): rev15 #1)
    if exported or isinstance(model, torch.jit.ScriptModule):
        what = "torch.export" if exported else "torch.jit"
        raise UsageError(f"cannot export what {what} made ({type(model).__name__}): the exporters trace the eager "
                         "model (the binarized nn.Module itself); pass that")


def unwrapped(model: nn.Module) -> nn.Module:
    """The model inside ``torch.compile``'s ``OptimizedModule`` (``_orig_mod``) and inside ``nn.DataParallel`` or
    ``DistributedDataParallel`` (``.module``), however nested: torch.fx cannot trace the wrappers themselves."""
    while True:
        _refuse_traced(model)  # (inside the wrappers too: review rev15 #2)
        if not isinstance(model, nn.Module):
            raise UsageError(f"cannot export: expected a torch.nn.Module, got {type(model).__name__}")
        if type(model).__name__ == "OptimizedModule" and isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        elif isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        else:
            return model


def _float32_on_cpu(model: nn.Module) -> nn.Module:
    """``model``, or one copy of it in float32 on the CPU where a floating parameter or buffer has another dtype or a
    tensor is elsewhere (a model trained on a GPU): the file and the verification work in float32 (and float64 for
    the reference), on inputs made on the CPU (verify_export's images; ONNX's trace input and onnxruntime's CPU
    provider). The files hold the same bytes either way."""
    tensors = [*model.parameters(), *model.buffers()]
    if all(t.device.type == "cpu" and (t.dtype == torch.float32 or not t.is_floating_point()) for t in tensors):
        return model
    return copy.deepcopy(model).to("cpu", torch.float32)


def _checked_meta(meta: Any, input_size: tuple[int, ...] | None) -> dict[str, Any]:
    """``meta`` as a dict, refused with one line unless a mapping whose preprocessing (if it gives any) is whole
    and valid and agrees with ``input_size``: a file is not written that its readers would refuse."""
    if meta is None:
        return {}
    if not isinstance(meta, Mapping):
        raise UsageError(f"meta must be a mapping of JSON-safe values, got {type(meta).__name__}")
    meta = dict(meta)
    if not isinstance(meta.get("classes", []), (list, tuple, type(None))):  # (review apifuzz1: written, then refused
        # by PackedModel.load as "a corrupted packed model", naming the hidden temporary file while it was checked)
        raise UsageError(f"meta's classes must be a list of the class names, one per output (meta={{'classes': "
                         f"['cat', 'dog', ...]}}), got {meta['classes']!r}"[:300])
    given = [k for k in ir.Preprocessing.KEYS if meta.get(k) is not None]
    if given and len(given) < len(ir.Preprocessing.KEYS) and given != ["input_size"]:
        missing = ", ".join(k for k in ir.Preprocessing.KEYS if k not in given)
        warnings.warn(f"meta records part of the preprocessing (no {missing}): the packed model will not take raw "
                      "images (reste predict photo.png); give all of input_size, mean, std and pixel_scale",
                      UserWarning, stacklevel=3)
    if all(meta.get(k) is not None for k in ir.Preprocessing.KEYS) and ir.Preprocessing.from_meta(meta) is None:
        size = meta.get("input_size")
        if isinstance(size, (list, tuple)) and len(size) != 3:  # (review models #11: every condition named held)
            raise UsageError(f"meta's preprocessing takes a (C, H, W) input_size (raw images), got {tuple(size)}; a "
                             "model of other inputs ((C, L) signals, features) takes them preprocessed, as float "
                             "arrays: drop mean, std and pixel_scale from meta")
        raise UsageError(f"meta's preprocessing ({', '.join(ir.Preprocessing.KEYS)}, resize) is invalid (one mean "
                         "and one std > 0 per channel, a pixel_scale > 0, a resize, if given, an integer at least "
                         "the input's height and width); build it with Preprocessing(...).to_meta()")
    recorded = meta.get("input_size")
    if recorded is not None and input_size is not None:
        try:
            same = tuple(int(v) for v in recorded) == tuple(input_size)
        except (TypeError, ValueError):
            same = False
        if not same:
            raise UsageError(f"meta's input_size {recorded!r} differs from input_size {tuple(input_size)}")
    return meta


def size_report(model: nn.Module, tensor_bytes: dict[str, int], file_bytes: int) -> dict[str, Any]:
    counts = parameter_counts(model)
    float_bytes = _state_bytes(model)
    binary = tensor_bytes["binary_values"]
    ideal = binary / 8 + tensor_bytes["f32"]
    bound = float_bytes / ideal if ideal else math.nan  # a model without parameters: nothing to compress
    ratio = float_bytes / file_bytes
    p, b = counts["total"], counts["binary"]
    # the binary weights the file packs: a grouped binary conv's are stored in float32 (its sign and a float conv on
    # its +-alpha weights), so they count as float in the bound from parameter counts, as the file and reste summary
    # count them (a depthwise model's 10.4x beside a file of 7.05x and a bound of 7.12x: review ownmodel2)
    grouped = {id(m.weight): m.weight.numel() for m in model.modules()
               if getattr(m, "precision", 32) == 1 and getattr(m, "groups", 1) != 1}
    packed = b - sum(grouped.values())
    return {
        "params": p,
        "binary_params": b,
        "float_bytes": float_bytes,
        "file_bytes": file_bytes,
        "binary_bytes": tensor_bytes["bits"],
        "fp_bytes": tensor_bytes["f32"],
        "header_bytes": file_bytes - tensor_bytes["bits"] - tensor_bytes["f32"],
        "bound": bound,
        "ratio": ratio,
        "gap": 1.0 - ratio / bound if ideal else math.nan,
        "param_bound": 4 * p / (packed / 8 + 4 * (p - packed)) if p else math.nan,
    }


def format_report(r: dict[str, Any]) -> str:
    """The size report as a few lines of text."""
    lines = [
        f"parameters      {r['params']:,} ({r['binary_params']:,} binary)",
        f"float model     {r['float_bytes']:,} bytes (state_dict)",
        f"packed file     {r['file_bytes']:,} bytes = {r['binary_bytes']:,} bytes of packed bits + {r['fp_bytes']:,} "
        f"of float32 + {r['header_bytes']:,} of header",
        f"compression     {r['ratio']:.2f}x  (bound {r['bound']:.2f}x, gap {100 * r['gap']:.2f}%; "
        f"from parameter counts {r['param_bound']:.2f}x)",
    ]
    if r["binary_params"] == 0:
        lines.append("note            no binary layers: a full-precision model, stored in float32 (nothing to pack); "
                     "export a binary run for 1-bit weights")
    if "folded_batch_norms" in r:
        lines.append(f"graph           {r['binary_layers']} binary layer{'s' * (r['binary_layers'] != 1)}, "
                     f"{r['folded_batch_norms']} batch norm{'s' * (r['folded_batch_norms'] != 1)} folded, "
                     f"{r['affine_ops']} kept as affine")
        if r.get("grouped_binary"):  # (review layers1, suggestion 4: the size said nothing of why)
            lines.append(f"                and {r['grouped_binary']} grouped binary conv"
                         f"{'s' * (r['grouped_binary'] != 1)} stored in float32 (its sign and a float conv on its "
                         "+-alpha weights: the packed kernels take no groups)")
    if "verify" in r:
        lines.extend(format_verify(r["verify"]))
    return "\n".join(lines)


#: What an exact tie is and what to do about it (the report's line and export_model's warning).
EXACT_TIES = ("a binary layer's sum of +-1 that cancels, with no bias or batch norm before the next sign. The file "
              "sums integers and takes sign(0) = +1; reste's layers in eval mode scale after the sum, so their "
              "float32 sum is 0 there too, but this model sums +-alpha and takes the sign of its rounding, + or -: "
              "the two differ wherever that is -. A BatchNorm or a bias after that layer (or scaling='none') "
              "removes these ties")


def format_verify(v: dict[str, Any]) -> list[str]:
    """The export check as report lines (see :func:`verify_export`)."""
    packed, model = v["packed"], v["model"]
    lines = [f"check           on {v['images']} random images, against the model in float64 (exact binary sums):",
             f"  packed file   {_comparison_text(packed)}",
             f"  float32 model {_comparison_text(model)}"]
    if v["differing_predictions"] or v["differing_logits"]:
        why = ("NOT all explained by float32 rounding" if not v["explained"] else
               "each explained by a sign flip at a tie (exact ties below) or near-tie" if v.get("exact_ties") else
               "each explained by a sign flip at a near-tie (float32 rounding)")
        lines.append(f"  packed vs float32 model: {v['differing_logits']} images with differing logits, "
                     f"{v['differing_predictions']} differing predictions; {why}")
    else:
        lines.append("  packed vs float32 model: same predictions, logits within float32 rounding")
    if not v.get("untraced_same", True):  # (a check written before it was made has no such key)
        lines.append("  packed file untraced: other logits than traced (its fused sign bits): a bug of reste's "
                     "engine; report it")
    if v.get("exact_ties"):  # (nor one written before they were counted)
        lines.append(f"  exact ties    {v['exact_ties']} sign inputs of {v['exact_tie_images']} of the images are "
                     f"exactly 0: {EXACT_TIES}")
    return lines


def _comparison_text(c: dict[str, Any]) -> str:
    # (the largest difference is of the images that agree: review extend #7 read "0/16 agree (max ... 0.00e+00)")
    text = f"{c['agree']}/{c['images']} agree" + (f" (max |logit diff| {c['max_abs_diff']:.2e})" if c["agree"] else "")
    if c["near_tie"]:
        text += f", {c['near_tie']} with a sign flipped at a near-tie"
    if c["mismatch"]:
        text += f", {c['mismatch']} NOT explained by rounding"
    return text


def model_reference(model: nn.Module, path: str | os.PathLike, x: torch.Tensor) -> Any:
    """The float64 reference (:func:`reste.export.reference.graph_reference`) of the file ``path`` that
    ``model`` was exported to, on images ``x``, with the bounds widened where a float32 evaluation computes a
    batch norm's shift from its running mean, as the model and ONNX Runtime do (``shift_err``, see
    ``reste.export.ir``: it is built with the graph, not written to the file)."""
    from .reference import graph_reference

    header, tensors = fmt.read(path)
    shape = header["nodes"][0].get("shape")  # traced as the file was (with the input size it recorded or not:
    with eval_mode(model):                   # shapes decide which batch norms fold next to a linear)
        nodes, _, _ = to_graph(model, tuple(shape) if shape else None)
    if [n["op"] for n in nodes] != [n["op"] for n in header["nodes"]]:
        raise ValueError(f"{path} is not the graph of this model")
    for i, node in enumerate(nodes):
        if node.get("shift_err"):
            header["nodes"][i]["shift_err"] = node["shift_err"]
    return graph_reference((header, tensors), x)


@torch.no_grad()
def verify_export(model: nn.Module, path: str | os.PathLike, input_size: tuple[int, ...],
                  images: int = 16) -> dict[str, Any]:
    """Check a written packed file against the model, honestly about float32 rounding.

    The reference is the exported graph evaluated in float64 with exact binary sums
    (:mod:`reste.export.reference`), which does not depend on any summation order.
    The packed engine and the float32 model are each compared with it, sign input by
    sign input. Float32 implementations can differ where a pre-activation lies within
    rounding of zero (a near-tie): such images are counted, not called errors; an
    image that differs for any other reason is a ``mismatch`` and ``ok`` is False.
    The reference's bounds allow for the float32 model's batch-norm shifts (:func:`model_reference`).
    """
    from .reference import SLACK, compare, exact_ties, trace_model
    from .runtime import PackedModel

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(images, *input_size, generator=gen)
    ref = model_reference(model, path, x)
    trace: list[torch.Tensor] = []
    engine = PackedModel.load(path)
    got = engine.forward(x, trace=trace)
    packed = compare(ref, got, trace)
    # and as it runs untraced (as `reste predict` and every caller run it): with its layers' sign bits passed on in
    # place of floats, which a trace turns off; the same bits, so the very same logits (review mut5, suggestion 1: a
    # wrong pairing there gave 47 of 64 predictions and the check said ok)
    untraced_same = torch.equal(engine.forward(x), got)
    if not untraced_same:  # (among the file's problems, which reste export's error line gives)
        packed.problems.append("run untraced (its sign bits passed on) it gives other logits than traced")
    logits, sites = trace_model(model, x)
    logits = logits.float()
    float_model = compare(ref, logits, sites)
    # packed vs float32 model, directly: beyond the sum of both rounding bounds
    allowed = 2 * SLACK * ref.logit_bound  # each within SLACK * bound of the reference
    differ = ((got.double() - logits.double()).abs() > allowed).any(1)
    same = got.argmax(1) == logits.argmax(1)
    # (reste's layers in eval mode sum +-1 and scale after, review evalexact1: none; a layer that computes its binary
    # weight its own way may sum +-alpha)
    ties, tie_images = exact_ties(ref, sites)
    return {
        "images": images,
        "packed": asdict(packed),
        "model": asdict(float_model),
        "differing_logits": int(differ.sum()),
        "differing_predictions": int((~same).sum()),
        "untraced_same": untraced_same,
        "explained": packed.ok and float_model.ok,
        "ok": packed.ok and float_model.ok and untraced_same,
        "exact_ties": ties,
        "exact_tie_images": tie_images,
        "max_abs_diff": float((got - logits).abs().max()),
        "same_predictions": bool(same.all()),
        "outputs": int(logits.shape[1]) if logits.dim() == 2 else None,  # (the scores per image: classes)
    }


def read_header(path: str | os.PathLike) -> dict[str, Any]:
    """The header of a packed-model file (meta, nodes, tensors), without loading the model."""
    header, _ = fmt.read(path)
    return header


def unpack_state(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every tensor of a packed-model file as float32, keyed ``"<node index>.<op>.<key>"``
    (binary weights unpacked to +-1), for inspection."""
    header, tensors = fmt.read(path)
    out = {}
    for i, node in enumerate(header["nodes"]):
        for key in ir.tensor_keys(node):
            idx = node.get(key)
            if idx is None:
                continue
            kind, shape, _ = header["tensors"][idx]
            out[f"{i}.{node['op']}.{key}"] = fmt.unpack_bits(tensors[idx], tuple(shape)) if kind == "bits" \
                else tensors[idx]
    return out
