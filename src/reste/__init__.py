"""reste: binary neural networks in PyTorch, built around the Rectified Straight Through Estimator.

>>> import reste
>>> layer = reste.BinaryConv2d(16, 32, 3, padding=1, bias=False, weight_estimator="reste")
>>> model = reste.binarize(float_model, estimator="reste", o_end=3.0)
>>> reste.set_progress(model, epoch, epochs)   # once per epoch

An estimator of your own: one class with ``@reste.register_estimator`` (see ``Estimator``
and ``Param``); ``reste train --plugin MODULE --estimator NAME`` then trains with it.
"""

from ._lazy import lazy_names as _lazy_names

# The names below are imported on first use, so that a deployed model's runtime
# (``import reste.export.runtime``) does not load the training side.
__getattr__, __dir__ = _lazy_names(__name__, {
    "convert": ("binarize",),
    "estimators": ("DSQ", "EDE", "ESTIMATORS", "FDA", "RBNN", "STE", "ApproxSign", "Estimator", "Param", "ReSTE",
                   "SignSwish", "get_estimator", "list_estimators", "register_estimator", "sign"),
    "indicators": ("EquilibriumMeter", "FlipRatio", "estimating_error", "gradient_stability"),
    "optim": ("Bop", "split_binary"),
    "layers": ("BinaryConv1d", "BinaryConv2d", "BinaryConv3d", "BinaryConvTranspose1d", "BinaryConvTranspose2d",
               "BinaryConvTranspose3d", "BinaryLinear", "binary_layers", "clip_weights", "estimators_of",
               "schedule_values", "set_progress"),
}, globals(), modules=("checkpoint", "config", "convert", "cuda_ext", "cudagraph", "data", "datasets", "engine",
                       "estimators", "experiments", "export", "files", "fused", "indicators", "integrations",
                       "kernel_args", "layers", "models", "optim", "plugins", "rundir", "schedules", "syncbn",
                       "triton_dispatch", "triton_kernels"))

__version__ = "0.1.0"

__all__ = [
    "ESTIMATORS", "Estimator", "STE", "ReSTE", "ApproxSign", "SignSwish", "EDE", "RBNN", "DSQ", "FDA",
    "Param", "get_estimator", "list_estimators", "register_estimator", "sign", "BinaryConv1d", "BinaryConv2d",
    "BinaryConv3d", "BinaryConvTranspose1d", "BinaryConvTranspose2d", "BinaryConvTranspose3d", "BinaryLinear",
    "binarize", "binary_layers", "clip_weights",
    "estimators_of", "set_progress", "schedule_values", "EquilibriumMeter", "FlipRatio", "estimating_error",
    "gradient_stability", "Bop", "split_binary", "__version__",
]
