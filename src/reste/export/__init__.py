"""Deployment: bit-packed export, 1-bit inference on packed bits, and ONNX export.

>>> from reste.export import export_model, PackedModel, export_onnx
>>> report = export_model(model, "resnet20.rbnn", input_size=(3, 32, 32))
>>> print(format_report(report))
>>> packed = PackedModel.load("resnet20.rbnn")   # needs NumPy and PyTorch only
>>> logits = packed(images)                      # binary convs run as XOR + popcount
>>> export_onnx(model, "resnet20.onnx", (3, 32, 32))
>>> compare(graph_reference("resnet20.rbnn", images), logits)   # against float64, near-tie aware

The graph's ops are listed in :mod:`reste.export.ir`, the file format is described in
:mod:`reste.export.format`, the packed kernels in :mod:`reste.export.kernels`.

The names are imported on first use, so that ``import reste.export.runtime`` (the
inference side) loads neither torch.fx tracing nor the training code.
"""

from .._lazy import lazy_names as _lazy_names

_SOURCES = {
    "exporter": ("export_model", "format_report", "size_report", "read_header", "unpack_state"),
    "format": ("pack_bits", "unpack_bits"),
    "evaluation": ("evaluate_packed", "predict_images"),
    "from_checkpoint": ("export_checkpoint",),
    "kernels": ("BACKENDS",),
    "onnx_export": ("deploy_model", "export_onnx", "run_onnx"),
    "predictions": ("save_predictions", "prediction_text"),
    "reference": ("compare", "graph_reference", "trace_model"),
    "runtime": ("PackedModel",),
}
__all__ = [name for names in _SOURCES.values() for name in names]
# the modules too (``import reste.export; reste.export.reference``), each imported when first asked for
__getattr__, __dir__ = _lazy_names(__name__, _SOURCES, globals(), modules=(*_SOURCES, "graph", "inputs", "ir"))
