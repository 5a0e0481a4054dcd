"""``binarize``: turn the convolutions (1-D to 3-D, transposed or not) and the linears of a float model into binary
layers."""

from __future__ import annotations

import copy
import fnmatch
import inspect
import warnings
from typing import Any, Callable, Iterable

import torch
from torch import nn
from torch.nn.utils import parametrize

from .errors import checked_flags, did_you_mean
from .estimators import Estimator, estimator_class, estimator_flags, get_estimator
from .layers import _DEFAULT, SCALINGS, BinaryConv1d, BinaryConv2d, BinaryConv3d, BinaryConvTranspose1d, \
    BinaryConvTranspose2d, BinaryConvTranspose3d, BinaryLinear
from .wording import gist

#: the layer types ``binarize`` converts (exactly these types, not their subclasses) and their binary versions
CONVERTED: dict[type, type] = {
    nn.Conv1d: BinaryConv1d, nn.Conv2d: BinaryConv2d, nn.Conv3d: BinaryConv3d,
    nn.ConvTranspose1d: BinaryConvTranspose1d, nn.ConvTranspose2d: BinaryConvTranspose2d,
    nn.ConvTranspose3d: BinaryConvTranspose3d, nn.Linear: BinaryLinear,
}


def _parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent_name, _, attr = name.rpartition(".")
    return (model.get_submodule(parent_name) if parent_name else model), attr


def _unconvertible(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Convolutions and linears that ``binarize`` has no binary version of.

    Subclasses of the converted types (timm's ``Conv2dSame``, ``StdConv2d``, any other: it may run its own forward; a
    parametrized or lazy layer, the ``out_proj`` of ``nn.MultiheadAttention``); layers that are already
    binary are not listed.
    """
    return [
        (n, m) for n, m in model.named_modules()
        if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))
        and type(m) not in CONVERTED and getattr(m, "precision", 32) != 1
    ]


def _describe(layers: list[tuple[str, nn.Module]], limit: int = 8, attention: frozenset[str] = frozenset()) -> str:
    """``'a' (LazyConv2d), 'b' (Conv2dSame)``, the first ``limit`` of them and a count of the rest; the ``out_proj``
    of an ``nn.MultiheadAttention`` (among the names ``attention``) is said with the in-projection that stays
    float beside it (a Parameter of the attention, not a layer)."""
    def one(n: str, m: nn.Module) -> str:
        parent = n.rpartition(".")[0]
        if n.endswith(".out_proj") and parent in attention:
            return f"{n!r} ({type(m).__name__}, and the in-projection weights of {parent!r}: all of that " \
                "MultiheadAttention)"
        if isinstance(m, nn.modules.lazy.LazyModuleMixin) and m.has_uninitialized_params():
            return f"{n!r} ({type(m).__name__}: run one forward before binarize, which makes it the layer it converts)"
        base = type(m).__bases__[0] if parametrize.is_parametrized(m) else None
        if base in CONVERTED:  # torch.nn.utils.parametrizations.weight_norm, spectral_norm, ...
            return f"{n!r} ({type(m).__name__}: torch.nn.utils.parametrize.remove_parametrizations(layer, " \
                f"'{next(iter(m.parametrizations))}') before binarize makes it the {base.__name__} it converts)"
        return f"{n!r} ({type(m).__name__})"

    text = ", ".join(one(n, m) for n, m in layers[:limit])
    return text + (f" and {len(layers) - limit} more" if len(layers) > limit else "")


def _attention_names(model: nn.Module) -> frozenset[str]:
    return frozenset(n for n, m in model.named_modules() if isinstance(m, nn.MultiheadAttention))


def _first_and_last(model: nn.Module, names: set[str]) -> tuple[str | None, str | None]:
    """The first conv (the first linear in a model without one: an MLP's input layer) and the last
    linear (the last conv without a linear) among ``names``, in the order the model defines them.

    Subclasses count (timm's ``Conv2dSame`` stem, its ``Linear`` head), binary layers do not.
    """
    layers = [(n, m) for n, m in model.named_modules() if n in names]
    convs = [n for n, m in layers if isinstance(m, nn.modules.conv._ConvNd)]
    linears = [n for n, m in layers if isinstance(m, nn.Linear)]
    first = convs[0] if convs else (linears[0] if linears else None)
    return first, (linears[-1] if linears else (convs[-1] if convs else None))


def _warn_beyond_the_kept_ends(model: nn.Module, named: list[tuple[str, nn.Module]], first: str | None,
                               last: str | None, kept: Callable[[str], bool]) -> None:
    """Warn where layers that will be binarized lie beyond a kept end (in the order the model defines them):
    convolutions after the last linear that keep_last keeps (a decoder's output conv after a linear bottleneck
    would make the model's output from binary weights), and linears before the first conv that keep_first keeps
    (an input projection before a conv stack, in a speech or tabular model, would read the raw input in binary):
    what keep_first and keep_last are there to avoid."""
    position = {n: k for k, (n, _) in enumerate(model.named_modules())}  # (a layer's first name only)
    conv, linear = nn.modules.conv._ConvNd, nn.Linear
    ends = ((last, linear, conv, 1, "after the last linear", "keep_last",
             "makes the model's output (a decoder's last conv)"),
            (first, conv, linear, -1, "before the first conv", "keep_first",
             "reads the model's input (an input projection)"))
    for end, end_kind, kind, side, where, flag, role in ends:
        if end is None or not isinstance(model.get_submodule(end), end_kind):
            continue
        beyond = [(n, m) for n, m in named if isinstance(m, kind) and not kept(n)
                  and side * (position.get(n, -side * len(position)) - position[end]) > 0]
        if beyond:
            warnings.warn(f"binarize: {_describe(beyond, limit=4)} come(s) {where} {end!r}, which {flag} keeps in "
                          f"float, and are binarized; if one of them {role}, keep it in float with keep=[...]",
                          stacklevel=3)


# the hooks of a layer, kept by the binary layer that replaces it (the same dicts: their handles still work)
_HOOK_DICTS = ("_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_forward_hooks", "_forward_hooks_with_kwargs",
               "_forward_hooks_always_called", "_backward_pre_hooks", "_backward_hooks", "_is_full_backward_hook")


def _binary_copy(name: str, module: nn.Module, common: dict[str, Any]) -> nn.Module:
    """The binary layer that replaces ``module``; errors name the layer.

    It takes over ``module``'s own weight and bias Parameters (not copies): an optimizer built before keeps
    training them, and their ``requires_grad``, their ties to other layers and their memory format stay. The
    hooks registered on ``module`` stay too (the same dicts, so their handles still remove them)."""
    try:
        if isinstance(module, nn.modules.conv._ConvNd):
            transposed = isinstance(module, nn.modules.conv._ConvTransposeNd)
            new: nn.Module = CONVERTED[type(module)](
                module.in_channels, module.out_channels, module.kernel_size, stride=module.stride,
                padding=module.padding, dilation=module.dilation, groups=module.groups, bias=module.bias is not None,
                padding_mode=module.padding_mode, device=module.weight.device, dtype=module.weight.dtype,
                **({"output_padding": module.output_padding} if transposed else {}), **common,
            )
        else:
            new = BinaryLinear(
                module.in_features, module.out_features, module.bias is not None,
                module.weight.device, module.weight.dtype, **common,
            )
        for key in ("weight", "bias"):
            value = getattr(module, key)
            if value is not None and value.shape != getattr(new, key).shape:
                raise ValueError(f"its {key} has shape {tuple(value.shape)}, not the layer's "
                                 f"{tuple(getattr(new, key).shape)}")
            if isinstance(value, nn.Parameter) or value is None:
                setattr(new, key, value)
            else:  # a plain tensor put there by hand: its values
                with torch.no_grad():
                    getattr(new, key).copy_(value)
    except (RuntimeError, ValueError, TypeError, AttributeError) as exc:
        raise ValueError(
            f"cannot binarize layer {name!r} ({type(module).__name__}): {exc}; "
            "keep it in full precision with keep=[...]"
        ) from exc
    # a weight computed before each forward by a hook (spectral_norm, the old weight_norm, torch.nn.utils.prune)
    # from other parameters: the binary layer starts from its current values, and that hook, which reads the float
    # layer's own attributes (weight_orig, weight_g, weight_mask), stays behind
    computing = {k: h for k, h in getattr(module, "_forward_pre_hooks", {}).items()
                 if (getattr(h, "name", None) or getattr(h, "_tensor_name", None)) in ("weight", "bias")
                 and not isinstance(module.weight, nn.Parameter)}
    for hooks in _HOOK_DICTS:
        if hasattr(module, hooks):
            setattr(new, hooks, getattr(module, hooks))
    if computing:
        for k in computing:  # out of the shared dict: the other hooks' handles still work
            del new._forward_pre_hooks[k]
        warnings.warn(f"binarize: the weight of {name!r} is computed by "
                      f"{', '.join(sorted({type(h).__name__ for h in computing.values()}))}; its binary layer "
                      "starts from the weight's current values and trains them without it", stacklevel=3)
    new.train(module.training)
    return new


def _no_fast_path(model: nn.Module) -> None:
    """Turn off the inference fast path of each ``nn.TransformerEncoderLayer`` with a binary linear: in eval mode
    without gradients it runs one fused kernel on ``linear1.weight`` and ``linear2.weight`` as they are (the float
    latent weights), not through the layers. The flag it tests is read by that test alone."""
    for m in model.modules():
        if isinstance(m, nn.TransformerEncoderLayer) and any(
                getattr(getattr(m, n, None), "precision", 32) == 1 for n in ("linear1", "linear2")):
            m.activation_relu_or_gelu = False


def _estimator_config(spec: Any, **hyperparameters: Any) -> Any:
    """Validate ``spec`` (a name or an instance) once and return what each layer should build its own estimator from:
    a spec dict, or the instance (shared by every layer). A spec dict (:meth:`Estimator.spec`'s) is taken too."""
    if isinstance(spec, dict):  # a spec dict, as activations= takes one (review apifuzz1, suggestion 3)
        twice = sorted(set(spec) & set(hyperparameters))
        if twice:
            raise ValueError(f"estimator hyper-parameter {twice[0]!r} is given twice: in the spec dict and as a "
                             "keyword; give it once")
        return _layer_spec(Estimator.from_spec({**spec, **hyperparameters}), "spec dict", "binarize(model, {}(...))")
    est = get_estimator(spec, **hyperparameters)
    return est if est is spec else _layer_spec(est, "name", "binarize(model, {}(...))")


def _layer_spec(est: Estimator, given: str, instead: str) -> dict[str, Any]:
    """``est.spec()``, which each layer builds its own estimator from; a ``ValueError`` saying to pass an instance
    (``instead``, formatted with the class's name) for a class whose constructor declares no hyper-parameters."""
    try:
        return est.spec()
    except NotImplementedError:
        cls = type(est).__name__
        raise ValueError(f"estimator {est.name!r} ({cls}) has a constructor of its own that declares no "
                         f"hyper-parameters, so binarize cannot build one per layer from its {given}: pass an "
                         f"instance, {instead.format(cls)}, or declare `hyperparameters` in the class") from None


def _input_config(activations: Any) -> Any:
    """The inputs' estimator (as :func:`_estimator_config` gives it) for ``binarize``'s ``activations``: ``True`` is
    the layers' own default, built as the weights' is."""
    if isinstance(activations, bool):
        return _DEFAULT if activations else None
    if isinstance(activations, str):
        return _layer_spec(get_estimator(activations), "name", "activations={}(...)")
    if isinstance(activations, dict):
        return _layer_spec(Estimator.from_spec(activations), "spec dict", "activations={}(...)")
    if isinstance(activations, Estimator):
        return activations  # shared by every layer, as the weights' instance
    raise TypeError(f"activations takes True, False or an estimator (a name, a spec dict, an instance), got "
                    f"{activations!r}")


def _misspelt_keyword(estimator: Any, hyperparameters: dict[str, Any]) -> None:
    """A ``TypeError`` for a keyword of ``binarize`` that reads as a slip in one of its own (``activation=``,
    ``scale=``, ``in_place=``): one that no estimator takes (``o`` with ``"ste"`` is an estimator's, whose error
    says so), close to one of ``binarize``'s keywords; otherwise the estimator's own check words the error."""
    if not hyperparameters:
        return
    taken = {p.name for uses in estimator_flags().values() for _, p in uses}
    if isinstance(estimator, str):  # (and a class with a constructor of its own: its keywords)
        taken |= set(inspect.signature(estimator_class(estimator)).parameters)
    own = [p.name for p in inspect.signature(binarize).parameters.values() if p.kind is p.KEYWORD_ONLY]
    for key in hyperparameters:
        hint = "" if key in taken else did_you_mean(key, own)
        if hint:
            raise TypeError(f"binarize() got an unexpected keyword argument {key!r}; {hint.strip()}")


def _matches(name: str, pattern: str) -> bool:
    """Whether a layer's ``name`` is ``pattern`` or matches it as a glob: a ModuleDict key may hold ``[``, a glob's
    character class, and a name given as it is must still name its layer (review api #12)."""
    return name == pattern or fnmatch.fnmatchcase(name, pattern)


def binarize(
    model: nn.Module,
    estimator: Any = "reste",
    *,
    activations: Any = True,
    scaling: str | None = "layer",
    keep: Iterable[str] = (),
    keep_first: bool = True,
    keep_last: bool = True,
    inplace: bool = False,
    **hyperparameters: Any,
) -> nn.Module:
    """Replace the convolutions (1-D to 3-D, transposed or not) and the linears of ``model`` with binary ones.

    Each binary layer keeps the latent weights and biases of the layer it replaces, so a
    pre-trained float model starts from its own weights. By default the first conv (of any
    kind; an MLP's first linear) and the last linear layer stay full precision (the usual BNN
    practice and the paper's: a first layer with binary input would see only the signs of
    the pixels).

    Args:
        model: the float model.
        estimator: an estimator name (each layer gets its own instance, built with
            ``hyperparameters``), a spec dict (``{"name": "reste", "o_end": 5}``, as ``activations`` takes one) or
            an instance (shared by every layer).
        activations: binarize the inputs of the converted layers too (1W1A), with an estimator like the
            weights'; ``False`` keeps real activations (1W/32A). An estimator name, spec dict
            (``{"name": "approx_sign"}``, ``{"name": "reste", "o_end": 5}``) or instance gives the inputs an
            estimator of their own (Bi-Real Net's ApproxSign on the activations, the STE on the weights); a
            name is built with its defaults (``hyperparameters`` are the weights'), a spec dict with its own.
        scaling: ``"layer"``, ``"channel"`` or ``"none"`` (or ``None``).
        keep: names or glob patterns (``"layer1.*"``, ``"*downsample*"``) of more
            layers to keep in full precision.
        keep_first / keep_last: keep the first conv (in a model without one, the first
            linear) / the last linear layer in float (in a model without a linear layer,
            such as timm's dla, the last conv: its classifier). First and last go by the
            order the model defines its modules (``named_modules``), which is the order most
            models run them; name the layers in ``keep`` for a model that defines them in
            another order. Convolutions defined after the last linear (a decoder after a
            linear bottleneck), and linears defined before the first conv (an input projection),
            are binarized with a warning naming them.
        inplace: convert ``model`` itself (and return it); by default a deep copy
            is converted and ``model`` is left untouched.

    Returns:
        The converted model. Each binary layer takes over the Parameters of the layer it replaces (the
        same objects: an optimizer built before an in-place conversion keeps training them, and frozen,
        tied or channels_last weights stay so) and its hooks (with ``inplace=True`` their handles still
        remove them; a copy's hooks are copies, which the original's handles do not reach). A weight that
        a hook computes (``spectral_norm``, the old ``weight_norm``) is taken at its current values,
        without the hook, with a warning. A layer used under several names becomes one binary layer, set
        at each (kept in float when one of its names is kept). An ``nn.TransformerEncoderLayer`` whose
        feed-forward linears become binary has its inference fast path turned off: in eval mode without
        gradients that fused kernel reads their float latent weights, not the binary layers.

    Only exact ``nn.Conv1d``/``2d``/``3d``, ``nn.ConvTranspose1d``/``2d``/``3d`` and ``nn.Linear`` layers
    are converted (to ``BinaryConv1d``, ..., ``BinaryLinear``: ``CONVERTED``). Other convolutions and
    linears (every subclass, such as timm's ``Conv2dSame``, even one that only changes ``__init__``; lazy or
    parametrized layers) stay in full precision with one warning that names them, unless ``keep`` lists them. A
    layer that cannot be copied raises a ``ValueError`` naming it.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"binarize takes a torch.nn.Module, got {type(model).__name__}")
    checked_flags("binarize", keep_first=keep_first, keep_last=keep_last, inplace=inplace)
    if isinstance(model, torch.jit.ScriptModule):  # its layers are script modules: none converted (review models #3)
        raise TypeError("binarize takes the eager model, not a TorchScript one (torch.jit.script or trace): binarize "
                        "the model before scripting it")
    keep = [keep] if isinstance(keep, str) else list(keep) if isinstance(keep, Iterable) else keep
    if not isinstance(keep, list) or not all(isinstance(k, str) for k in keep):
        raise TypeError(f"keep takes layer names or glob patterns (strings), got {keep!r}")
    _misspelt_keyword(estimator, hyperparameters)
    weight_spec = _estimator_config(estimator, **hyperparameters)  # checked before a big model is copied
    input_spec = _input_config(activations)
    scaling = "none" if scaling is None else scaling  # (what a Python user types: review newuser2, suggestion)
    if scaling not in SCALINGS:
        raise ValueError(f"unknown scaling {scaling!r}; valid: {', '.join(SCALINGS)}")
    if not inplace:
        try:
            model = copy.deepcopy(model)
        except ValueError:  # torch's, for a lazy module's uninitialised buffer (LazyBatchNorm2d), naming none
            lazy = [n or type(model).__name__ for n, m in model.named_modules()
                    if isinstance(m, nn.modules.lazy.LazyModuleMixin) and m.has_uninitialized_params()]
            if not lazy:
                raise
            raise ValueError(f"binarize cannot copy the model: its lazy module(s) {', '.join(map(repr, lazy[:4]))}"
                             f"{' and more' if len(lazy) > 4 else ''} are not initialised yet; run one forward of "
                             "the model (model(example_batch)) before binarize") from None
        except (RuntimeError, TypeError) as err:  # the old weight_norm's computed weight; a lock held by the model
            raise ValueError(f"binarize cannot copy the model ({gist(str(err))}); convert it in "
                             "place with inplace=True") from None
    patterns = keep  # (a list of strings, checked above)

    binary = [n for n, m in model.named_modules() if getattr(m, "precision", 32) == 1]
    if binary:  # a zoo model, or one binarized before: its binary layers are not converted again
        warnings.warn(
            f"binarize: {len(binary)} layer(s) of the model are binary already and keep their own estimators and "
            f"scaling ({_describe([(n, model.get_submodule(n)) for n in binary], limit=4)}); binarize converts "
            "float layers only (to change a zoo model's estimator, create it with estimator=...)",
            stacklevel=2,
        )
    # every name of each layer: a module used in two places is one layer, converted once and set at each
    named = [(n, m) for n, m in model.named_modules(remove_duplicate=False) if type(m) in CONVERTED]
    others = _unconvertible(model)
    first, last = _first_and_last(model, {n for n, _ in named + others})
    # layers of weights of other kinds, which binarize leaves alone: said, for a model with a GRU or an LSTM (or one
    # of their cells: review diff34) looked binarized whole (review ownmodel2, suggestion 5); not first or last
    # layers, which are convs and linears
    recurrent = [(n, m) for n, m in model.named_modules()
                 if isinstance(m, (nn.RNNBase, nn.RNNCellBase, nn.Bilinear))]
    candidates = [n for n, _ in named] + [n for n, _ in others] + [n for n, _ in recurrent]
    unmatched = [p for p in patterns if not any(_matches(n, p) for n in candidates)]
    if unmatched:
        # a block's name ('layer4') names no layer: its layers are 'layer4.*'
        blocks = [f"{p}.*" for p in unmatched if any(fnmatch.fnmatchcase(n, f"{p}.*") for n in candidates)]
        hint = f" (to keep every layer inside a block: {', '.join(map(repr, blocks))})" if blocks else ""
        raise ValueError(
            f"keep pattern(s) {unmatched} match no conv or linear layer{hint}; layers: {', '.join(candidates)}"
        )
    others = [(n, m) for n, m in others if not any(_matches(n, p) for p in patterns)
              and not (keep_first and n == first) and not (keep_last and n == last)]
    if others:
        warnings.warn(
            f"binarize: {len(others)} layer(s) have no binary version in reste and stay in full precision: "
            f"{_describe(others, attention=_attention_names(model))}; only exact torch.nn convolutions "
            "(Conv1d/2d/3d, ConvTranspose1d/2d/3d) and nn.Linear are converted (list them in keep= to silence this)",
            stacklevel=2,
        )

    recurrent = [(n, m) for n, m in recurrent if not any(_matches(n, p) for p in patterns)]
    if recurrent:
        warnings.warn(
            f"binarize: {len(recurrent)} layer(s) of a kind reste has no binary version of stay in full precision: "
            f"{_describe(recurrent)}; binarize converts convolutions and linears (list them in keep= to silence "
            "this)", stacklevel=2)

    layers: dict[int, tuple[nn.Module, list[str]]] = {}  # each layer once, with every name it has
    for name, module in named:
        layers.setdefault(id(module), (module, []))[1].append(name)

    def kept(name: str) -> bool:
        return ((keep_first and name == first) or (keep_last and name == last)
                or any(_matches(name, p) for p in patterns))

    if any(n == "" for n, _ in named) and not kept(""):  # nowhere to set its binary layer: it is the model
        raise ValueError(f"binarize converts the layers inside a model, and this model is one layer "
                         f"({type(model).__name__}); binarize nn.Sequential(layer) and take its [0], or build "
                         f"reste.Binary{type(model).__name__} directly")
    _warn_beyond_the_kept_ends(model, named, first if keep_first else None, last if keep_last else None, kept)
    converted = 0
    common = {"weight_estimator": weight_spec, "input_estimator": input_spec, "scaling": scaling}
    told = [False]  # the model's layers share it: one warning of inputs all >= 0 per binarize (review models #2)
    for module, layer_names in layers.values():
        if any(kept(n) for n in layer_names):  # kept under one of its names: kept wherever it is used
            continue
        for name in layer_names:
            if name == first or name == last:
                warnings.warn(
                    f"binarizing {'the first' if name == first else 'the last'} layer {name!r} "
                    "usually costs much accuracy; pass keep_first/keep_last=True to keep it in float",
                    stacklevel=2,
                )
        new = _binary_copy(layer_names[0], module, common)
        if input_spec is not None:  # its first forward warns when its inputs are all >= 0 (after a ReLU)
            new.watch_inputs, new.inputs_told = layer_names[0], told
        for name in layer_names:
            parent, attr = _parent(model, name)
            setattr(parent, attr, new)
        converted += 1
    _no_fast_path(model)
    if not converted and not any(getattr(m, "precision", 32) == 1 for m in model.modules()):
        # (a model that is one layer is named '': its first and last layer, said as the model itself; a layer both
        # first and last is named once: review ownmodel2)
        ends = list(dict.fromkeys(n for n in (first if keep_first else None, last if keep_last else None)
                                  if n is not None))
        by_keep = [n for n, _ in named if any(_matches(n, p) for p in patterns) and n not in ends]
        shown = [n or f"the model itself ({type(model).__name__})" for n in ends]
        reasons = ([f"{', '.join(shown)} by keep_first/keep_last"] if ends else []) + (
            [f"{', '.join(dict.fromkeys(by_keep))} by keep={patterns!r}"] if by_keep else [])  # (review newuser2 #5)
        why = f" (kept in float: {'; '.join(reasons)})" if reasons else ""
        one = (f"; to binarize a single layer, build reste.Binary{type(model).__name__} directly"
               if "" in ends and type(model) in CONVERTED else "")
        warnings.warn(f"binarize: no layer of the model was converted{why}; it has no binary layer{one}", stacklevel=2)
    return model
