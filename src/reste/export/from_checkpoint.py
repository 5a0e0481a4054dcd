"""A training checkpoint to deployment files: ``export_checkpoint`` rebuilds the model of a
checkpoint (any format, :mod:`reste.checkpoint`) and writes the packed-model file, with the data
set's preprocessing in its header, and optionally the ONNX file."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Callable

from .. import models
from ..checkpoint import load_checkpoint, model_arguments, model_from_checkpoint
from ..datasets import get_spec
from ..errors import UsageError
from ..rundir import LAST, check_has_checkpoint, check_output_path
from . import ir
from .exporter import export_model
from .format import refuse_packed
from .onnx_export import export_onnx, require_onnx


def _spec(dataset: Any) -> Any:
    try:
        return get_spec(dataset) if isinstance(dataset, str) else None
    except UsageError:
        return None


def _input_size(ckpt: dict[str, Any], dataset: Any) -> tuple[int, int, int] | None:
    """The images the model was trained on: its data set's size, else its registry entry's (a model
    trained on another data set than its own, an ImageNet ResNet on CIFAR-10, takes that set's images)."""
    spec = _spec(dataset)
    if spec is not None:
        return tuple(spec.input_size)
    try:
        return tuple(models.model_info(ckpt["model_name"])["input_size"])
    except (UsageError, KeyError):
        return None


def _preprocessing(dataset: Any, size: tuple[int, int, int] | None) -> dict[str, Any]:
    """What an input needs before the model: its size, the data set's normalisation,
    ``(pixel / scale - mean) / std`` per channel, and the resize of its test images (empty for an unknown
    data set)."""
    spec = _spec(dataset)
    if spec is None:
        return {}
    size = tuple(size or spec.input_size)
    resize = spec.test_resize if size == tuple(spec.input_size) else None  # (the data set's: DatasetSpec)
    return ir.Preprocessing(size, spec.mean, spec.std, spec.scale, resize).to_meta()


def export_checkpoint(ckpt_path: str | os.PathLike, out_path: str | os.PathLike, *,
                      onnx_path: str | os.PathLike | None = None,
                      on_packed: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Export a training checkpoint (``.pt`` or run directory) to a packed-model file
    (and, with ``onnx_path``, an ONNX file); returns the size report. Neither may be the checkpoint, each other,
    or a file of a run (``reste.rundir.check_output_path``). ``on_packed(report)`` is called once the packed file
    is written and checked, before the ONNX file is begun (``reste export`` prints its report then)."""
    check_has_checkpoint(ckpt_path)
    for out in (out_path, onnx_path):
        if out is not None and Path(out).exists() and Path(ckpt_path).exists() and Path(out).samefile(ckpt_path):
            raise UsageError(f"{out} is the checkpoint being exported; pass another output path")
        if out is not None:
            check_output_path(out)
    if onnx_path is not None:
        if Path(onnx_path).resolve() == Path(out_path).resolve():
            raise UsageError(f"the ONNX path {onnx_path} is the packed file itself; pass another ONNX path")
        require_onnx()  # before the packed file is written
    refuse_packed(ckpt_path, "export")
    ckpt = load_checkpoint(ckpt_path)
    model = model_from_checkpoint(ckpt)
    given = Path(ckpt_path)  # (a run folder: its last.pt, which the header names, trailing slash or not)
    source = f"{given.resolve().name}/{LAST}" if given.is_dir() else given.name
    config = ckpt.get("config") or {}
    dataset = ckpt.get("dataset") or (config.get("dataset") if isinstance(config, dict) else None)
    options, settings = model_arguments(ckpt)
    meta = {
        "model_name": ckpt.get("model_name"),
        "model_options": options,  # the model's own keywords and num_classes, in any checkpoint format
        **settings,
        "dataset": dataset,
        "classes": ckpt.get("classes"),  # the name of each label, where the run recorded them
        "epoch": ckpt.get("epoch"),
        "best_acc": ckpt.get("best_acc"),
        # this checkpoint's own test top-1 (none for one taken inside an epoch)
        "test_acc": None if ckpt.get("step") else (ckpt.get("metrics") or {}).get("test_acc"),
        "source": source,
    }
    size = _input_size(ckpt, dataset)
    meta.update(_preprocessing(dataset, size))
    if onnx_path is not None and size is None:  # before any file is written
        raise UsageError(f"cannot export {ckpt.get('model_name')!r} to ONNX: its input size is unknown")
    with warnings.catch_warnings():  # (reste export prints the check's outcome, and exits 1 where it failed)
        warnings.filterwarnings("ignore", message="export_model: .* disagrees with the model")
        warnings.filterwarnings("ignore", message="export_model wrote .* unchecked")
        warnings.filterwarnings("ignore", message="export_model: .* predicts other classes")  # (its exact ties line)
        report = export_model(model, out_path, input_size=size, meta=meta)
    report["checkpoint"] = {"path": str(given / LAST if given.is_dir() else given), "epoch": ckpt.get("epoch"),
                            "step": int(ckpt.get("step") or 0)}  # what was exported: reste export says it
    if on_packed is not None:
        on_packed(report)
    if onnx_path is not None:
        with warnings.catch_warnings():  # (reste export says it in its line)
            warnings.filterwarnings("ignore", message="export_onnx wrote .* unchecked")
            warnings.filterwarnings("ignore", message="export_onnx: .* predicts other classes")  # (its line says)
            report["onnx"] = export_onnx(model, onnx_path, size)
    return report
