"""Deployment: bit-packed export, 1-bit inference on packed bits, and ONNX export.

>>> from reste.export import export_model, PackedModel, export_onnx
>>> report = export_model(model, "resnet20.rbnn", input_size=(3, 32, 32))
>>> print(format_report(report))
>>> packed = PackedModel.load("resnet20.rbnn")   # needs NumPy and PyTorch only
>>> logits = packed(images)                      # binary convs run as XOR + popcount
>>> export_onnx(model, "resnet20.onnx", (3, 32, 32))
>>> compare(graph_reference("resnet20.rbnn", images), logits)   # against float64, near-tie aware

The file format is described in :mod:`reste.export.format`, the graph ops in
:mod:`reste.export.graph`, the packed kernels in :mod:`reste.export.kernels`.
"""

from .exporter import export_checkpoint, export_model, format_report, read_header, size_report, unpack_state
from .format import pack_bits, unpack_bits
from .kernels import BACKENDS
from .onnx_export import deploy_model, export_onnx, run_onnx
from .reference import compare, graph_reference, trace_model
from .runtime import PackedModel

__all__ = [
    "export_model", "export_checkpoint", "format_report", "size_report", "read_header", "unpack_state",
    "pack_bits", "unpack_bits", "PackedModel", "BACKENDS", "export_onnx", "deploy_model", "run_onnx",
    "graph_reference", "trace_model", "compare",
]
