"""reste: binary neural networks in PyTorch, built around the Rectified Straight Through Estimator.

>>> import reste
>>> layer = reste.BinaryConv2d(16, 32, 3, padding=1, bias=False, weight_estimator="reste")
>>> model = reste.binarize(float_model, estimator="reste", o_end=3.0)
>>> reste.set_progress(model, epoch, epochs)   # once per epoch
"""

from importlib import import_module
from typing import Any

# The names below are imported on first use (PEP 562), so that a deployed model's runtime
# (``import reste.export.runtime``) does not load the training side.
_SOURCES = {
    "convert": ("binarize",),
    "estimators": ("DSQ", "EDE", "ESTIMATORS", "FDA", "RBNN", "STE", "ApproxSign", "Estimator", "ReSTE",
                   "SignSwish", "get_estimator", "sign"),
    "indicators": ("EquilibriumMeter", "estimating_error", "gradient_stability"),
    "layers": ("BinaryConv2d", "BinaryLinear", "binary_layers", "estimators_of", "schedule_values", "set_progress"),
}
_MODULE_OF = {name: module for module, names in _SOURCES.items() for name in names}


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


__version__ = "0.1.0"

__all__ = [
    "ESTIMATORS", "Estimator", "STE", "ReSTE", "ApproxSign", "SignSwish", "EDE", "RBNN", "DSQ", "FDA",
    "get_estimator", "sign", "BinaryConv2d", "BinaryLinear", "binarize", "binary_layers",
    "estimators_of", "set_progress", "schedule_values", "EquilibriumMeter", "estimating_error",
    "gradient_stability", "__version__",
]
