"""``binarize``: turn the convolutions and linears of a float model into binary layers."""

from __future__ import annotations

import copy
import fnmatch
import warnings
from typing import Any, Iterable

import torch
from torch import nn

from .estimators import get_estimator
from .layers import BinaryConv2d, BinaryLinear


def _parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent_name, _, attr = name.rpartition(".")
    return (model.get_submodule(parent_name) if parent_name else model), attr


def _estimator_config(spec: Any, **hyperparameters: Any) -> Any:
    """Validate ``spec`` once and return what each layer should build its own estimator from."""
    est = get_estimator(spec, **hyperparameters)
    if isinstance(spec, str):
        return {"name": est.name, **est.config()}
    return est  # an instance is shared by every layer


def binarize(
    model: nn.Module,
    estimator: Any = "reste",
    *,
    activations: bool = True,
    scaling: str = "layer",
    keep: Iterable[str] = (),
    keep_first: bool = True,
    keep_last: bool = True,
    inplace: bool = False,
    **hyperparameters: Any,
) -> nn.Module:
    """Replace the ``nn.Conv2d`` and ``nn.Linear`` layers of ``model`` with binary ones.

    The latent weights and biases are copied, so a pre-trained float model starts
    from its own weights. By default the first convolution and the last linear
    layer stay full precision (the usual BNN practice and the paper's).

    Args:
        model: the float model.
        estimator: an estimator name (each layer gets its own instance, built with
            ``hyperparameters``) or an instance (shared by every layer).
        activations: binarize the inputs of the converted layers too (1W1A);
            ``False`` keeps real activations (1W/32A).
        scaling: ``"layer"``, ``"channel"`` or ``"none"``.
        keep: names or glob patterns (``"layer1.*"``, ``"*downsample*"``) of more
            layers to keep in full precision.
        keep_first / keep_last: keep the first conv / last linear layer in float.
        inplace: convert ``model`` itself (and return it); by default a deep copy
            is converted and ``model`` is left untouched.

    Returns:
        The converted model.
    """
    if not inplace:
        model = copy.deepcopy(model)
    weight_spec = _estimator_config(estimator, **hyperparameters)
    input_spec = weight_spec if activations else None
    patterns = list(keep)

    named = [(n, m) for n, m in model.named_modules() if type(m) in (nn.Conv2d, nn.Linear)]
    convs = [n for n, m in named if isinstance(m, nn.Conv2d)]
    linears = [n for n, m in named if isinstance(m, nn.Linear)]
    first = convs[0] if convs else None
    last = linears[-1] if linears else None
    unmatched = [p for p in patterns if not any(fnmatch.fnmatchcase(n, p) for n, _ in named)]
    if unmatched:
        raise ValueError(
            f"keep pattern(s) {unmatched} match no conv or linear layer; layers: {', '.join(n for n, _ in named)}"
        )

    for name, module in named:
        if (keep_first and name == first) or (keep_last and name == last):
            continue
        if any(fnmatch.fnmatchcase(name, p) for p in patterns):
            continue
        if name == first or name == last:
            warnings.warn(
                f"binarizing {'the first conv' if name == first else 'the last linear'} layer {name!r} "
                "usually costs much accuracy; pass keep_first/keep_last=True to keep it in float",
                stacklevel=2,
            )
        common = {"weight_estimator": weight_spec, "input_estimator": input_spec, "scaling": scaling}
        if isinstance(module, nn.Conv2d):
            new: nn.Module = BinaryConv2d(
                module.in_channels, module.out_channels, module.kernel_size, module.stride,
                module.padding, module.dilation, module.groups, module.bias is not None,
                module.padding_mode, module.weight.device, module.weight.dtype, **common,
            )
        else:
            new = BinaryLinear(
                module.in_features, module.out_features, module.bias is not None,
                module.weight.device, module.weight.dtype, **common,
            )
        with torch.no_grad():
            new.weight.copy_(module.weight)
            if module.bias is not None:
                new.bias.copy_(module.bias)
        new.train(module.training)
        parent, attr = _parent(model, name)
        setattr(parent, attr, new)
    return model
