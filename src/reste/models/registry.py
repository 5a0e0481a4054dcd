"""The model registry: ``register_model``, ``create``, ``list_models`` and ``model_info``.

A model is one keyword-only factory function ``fn(*, num_classes, conv, **options)``
that builds the architecture; ``conv`` is a :class:`ConvBuilder` that makes each of
the convolutions to binarize (``BinaryConv2d`` in the 1W1A model, ``nn.Conv2d`` in
its full-precision twin). Decorating the function registers the binary model under
the function's name and, with ``twin=...``, the float twin as well::

    @register_model(dataset="cifar10", twin="resnet20")  # classes and input size: the data set's
    def resnet20_1w1a(*, num_classes: int, conv: ConvBuilder) -> nn.Module:
        ...
"""

from __future__ import annotations

import contextlib
import inspect
import warnings
from collections.abc import Iterator, Mapping
from typing import Any, Callable

from torch import nn

from .. import plugins
from ..datasets import dataset_names, get_spec
from ..errors import ModelOptionError, UsageError, checked_flags, did_you_mean
from ..estimators import Estimator, estimator_class, get_estimator
from ..layers import SCALINGS, BinaryConv2d, BinaryLinear

_MODELS: dict[str, Callable[..., nn.Module]] = {}
_INFO: dict[str, dict[str, Any]] = {}
_BINARY: dict[str, bool] = {}
_MIXED: set[str] = set()  # models whose factories mix estimators on purpose
_WARNED: set[tuple[str, str]] = set()  # (model, estimator asked for) whose mix was reported


class ConvBuilder:
    """Makes the layers a model binarizes: convolutions (``conv(...)``, without bias by default) and
    linear layers (``conv.linear(...)``).

    ``ConvBuilder()`` makes ``nn.Conv2d`` and ``nn.Linear`` (the full-precision twin);
    ``ConvBuilder(estimator_spec)`` makes ``BinaryConv2d`` and ``BinaryLinear`` layers, each with
    its own weight and input estimators built from the dict spec ``{"name": ..., **config}``
    (inputs real when ``a32``). A factory builds every binary layer with it, so that the
    estimator asked for reaches each of them (:func:`create` checks).
    """

    def __init__(self, estimator_spec: dict[str, Any] | None = None, *, a32: bool = False, scaling: str = "layer"):
        self.estimator_spec = None if estimator_spec is None else dict(estimator_spec)
        self.a32 = a32
        self.scaling = scaling

    @property
    def binary(self) -> bool:
        return self.estimator_spec is not None

    def __call__(
        self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, padding: int = 1,
        *, dilation: int = 1, groups: int = 1, bias: bool = False,
    ) -> nn.Conv2d:
        if self.estimator_spec is None:
            return nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias)
        return BinaryConv2d(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                            **self._binary())

    def linear(self, in_features: int, out_features: int, bias: bool = True) -> nn.Linear:
        """A linear layer to binarize: ``BinaryLinear``, or ``nn.Linear`` in the twin."""
        if self.estimator_spec is None:
            return nn.Linear(in_features, out_features, bias)
        return BinaryLinear(in_features, out_features, bias, **self._binary())

    def _binary(self) -> dict[str, Any]:
        spec = self.estimator_spec or {}
        return {"weight_estimator": dict(spec), "input_estimator": None if self.a32 else dict(spec),
                "scaling": self.scaling}


def register_model(
    *,
    dataset: str,
    num_classes: int | None = None,
    input_size: tuple[int, ...] | None = None,
    twin: str | None = None,
    binary: bool = True,
    mixed_estimators: bool = False,
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a keyword-only factory ``fn(*, num_classes, conv, **options)`` under its name.

    ``num_classes`` and ``input_size`` default to those of ``dataset`` (its ``DatasetSpec``); give them for a
    model made for another size.
    ``twin`` also registers the float twin of a binary model (same factory, with
    ``nn.Conv2d`` for the binary convolutions) under that name. ``mixed_estimators``: the
    factory gives some binary layers estimators of its own on purpose (a Bi-Real-style
    activation estimator beside the run's), so :func:`create` does not check them.
    """
    # by name or alias, as everywhere; a built-in is found without loading the installed plugins, which reste's own
    # zoo registers its models before: a plugin importing reste.models would meet it half made (review api #1, #11)
    try:
        spec = get_spec(dataset)
    except UsageError:
        raise ValueError(f"unknown dataset {dataset!r}; valid: {', '.join(dataset_names())} (register a data set of "
                         "your own with reste.datasets.register_dataset first)") from None
    dataset = spec.name
    num_classes = spec.num_classes if num_classes is None else num_classes
    input_size = spec.input_size if input_size is None else input_size

    def decorator(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        names = [(getattr(fn, "__name__", ""), binary)] + ([(twin, not binary)] if twin else [])
        _check_factory(fn, names[0][0])
        if twin is not None and twin == names[0][0]:  # (review extend1 #5: it was listed as the other kind alone)
            raise ValueError(f"model {twin!r}: twin= names the model's other kind (its full-precision or binary "
                             "version), not the factory's own name; give it another name")
        for name, _ in names:  # all checked before any is registered
            if not isinstance(name, str) or not name.isidentifier():
                raise ValueError(f"a model's name must be a Python identifier, got {name!r}: register a function "
                                 "defined with def (its name is the model's), and give twin= such a name")
            held = _MODELS.get(name)
            # the same module's factory of the same name again is a reload; another of that module's is a clash
            # (review extend1 #5: a copied twin= took one model's name from another without a word)
            same = held is not None and plugins.same_source(str(getattr(held, "__module__", None)),
                                                            str(getattr(fn, "__module__", None)))
            if held is not None and not (same and getattr(held, "__name__", None) == getattr(fn, "__name__", None)):
                renamed = (" (a factory renamed in a notebook or a reloaded module keeps its old name's models: "
                           "restart the kernel, or give twin= another name)") if same else ""
                raise ValueError(f"model {name!r} is already registered (by {held.__module__}."
                                 f"{getattr(held, '__name__', '?')}); give yours another name{renamed}")
        new = {name for name, _ in names}
        for name, _ in names:  # a twin that the entry replaced named and that this one drops or renames goes with it:
            # it would build the old network (review diff10 #2)
            old_twin = _INFO.get(name, {}).get("twin")
            if old_twin and old_twin not in new and _INFO.get(old_twin, {}).get("twin") == name:
                for table in (_MODELS, _BINARY, _INFO):
                    table.pop(old_twin, None)
                _MIXED.discard(old_twin)
        for name, is_binary in names:  # (one of the same module's again: importlib.reload, a notebook cell run
            # again; the new factory replaces it, as register_estimator and register_dataset do: review api #8)
            _MIXED.discard(name)
            _MODELS[name] = fn
            _BINARY[name] = is_binary
            if mixed_estimators:
                _MIXED.add(name)
            other = fn.__name__ if name == twin else twin
            _INFO[name] = {
                "dataset": dataset,
                "num_classes": int(num_classes),
                "input_size": tuple(int(s) for s in input_size),
                "binary": is_binary,
                "twin": other,
            }
        return fn

    return decorator


def list_models() -> list[str]:
    """The registered model names, sorted (an installed package's models included)."""
    plugins.load_entry_points()
    return sorted(_MODELS)


def _check_name(name: str) -> None:
    if name not in _MODELS:
        plugins.load_entry_points()  # an installed package's module may register models too
    if name not in _MODELS:
        raise UsageError(f"unknown model {name!r}; {did_you_mean(name, list_models())}valid: "
                         f"{', '.join(list_models())} (a model of your own: "
                         "register it with @reste.models.register_model in a module you import, or load it with "
                         "--plugin MODULE; in Python: import MODULE, or reste.plugins.load_plugins(['MODULE']))"
                         f"{plugins.broken_note()}")


def defined_in(name: str) -> str:
    """The module that defines model ``name``'s factory (a float twin's: its binary model's)."""
    _check_name(name)
    return _MODELS[name].__module__


def model_info(name: str) -> dict[str, Any]:
    """dataset, num_classes (default), input_size (C, H, W), binary, twin of model ``name``."""
    _check_name(name)
    return dict(_INFO[name])


def create(
    name: str,
    num_classes: int | None = None,
    *,
    estimator: Any = "reste",
    estimator_options: dict[str, Any] | None = None,
    a32: bool = False,
    scaling: str | None = "layer",
    **model_options: Any,
) -> nn.Module:
    """Build model ``name`` (see :func:`list_models`).

    Args:
        name: a registered model name.
        num_classes: the number of outputs; ``None`` is the model's default.
        estimator: an estimator name or instance (of the class registered under its name: each layer's is
            built from the registry); every binary layer gets its own weight and input estimators of that kind
            and configuration.
        estimator_options: the estimator's hyper-parameters (``{"o_end": 3.0}``), given with a name.
        a32: keep real activations (1W/32A): the binary layers get no input estimator.
        scaling: ``"layer"`` (the paper), ``"channel"`` or ``"none"`` (``None`` too, as :func:`reste.binarize`).
        **model_options: the keywords of the model's own factory (``width`` for
            ``fmnist_vgg_1w1a``; :func:`model_keywords`). Another keyword is a one-line
            ``UsageError`` naming the valid ones, except a hyper-parameter that the estimator's
            table declares (``estimator_class(name).hyperparameters``), the form used before
            ``estimator_options``: ``create("resnet20_1w1a", o_end=3.0)`` still means
            ``estimator_options={"o_end": 3.0}``.

    Twins (full-precision models) ignore ``estimator``, ``a32`` and ``scaling``,
    but an unknown estimator is still an error.
    """
    _check_name(name)
    model_options, legacy = _split_keywords(name, estimator, model_options)
    model_options = check_option_types(name, model_options)  # a str option given 18 gets "18"
    checked_flags("models.create", a32=a32)
    if estimator_options is not None and not isinstance(estimator_options, Mapping):  # (review apifuzz1)
        raise UsageError(f"estimator_options must be a dict of the estimator's hyper-parameters, such as "
                         f"{{'o_end': 3.0}}, got {estimator_options!r}"[:200])
    options = dict(estimator_options or {})
    twice = sorted(set(options) & set(legacy))
    if twice:
        raise UsageError(f"estimator hyper-parameter {twice[0]!r} is given twice: as a keyword and in "
                         "estimator_options; give it once, in estimator_options")
    est = get_estimator(estimator, **options, **legacy)
    if _BINARY[name] and type(est) is not estimator_class(est.name):
        # each layer's estimator is built from the registry by name, as a checkpoint's model is built again: another
        # class under a registered name became that class, its own g dropped unsaid (review api3 #1)
        raise UsageError(f"models.create builds each layer's estimator from the registry by name, and "
                         f"{type(est).__name__} is not the class registered as {est.name!r}: register it with "
                         "@reste.register_estimator under a name of its own, or give a float model and the instance "
                         "to reste.binarize (which shares it)")
    scaling = "none" if scaling is None else scaling  # (as binarize takes it: review api3, suggestion 3)
    if scaling not in SCALINGS:
        raise ValueError(f"unknown scaling {scaling!r}; valid: {', '.join(SCALINGS)}")
    if num_classes is None:
        num_classes = _INFO[name]["num_classes"]
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise UsageError(f"num_classes must be a positive integer, got {num_classes!r}")
    if _BINARY[name]:
        conv = ConvBuilder(est.spec(), a32=a32, scaling=scaling)
    else:
        conv = ConvBuilder()
    try:
        model = _MODELS[name](num_classes=num_classes, conv=conv, **model_options)
    except (ValueError, TypeError) as err:  # a UsageError of a factory's own checks too: named as the option's
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        if "Overflow when unpacking" in first:  # (a size past 2**63: torch's own words, review fuzz1 #6)
            _too_large(name, num_classes, model_options)
        raise ModelOptionError(f"bad --model-option for {name!r}: {first} (its options: "
                               f"{_options_text(name, model_options)})", first) from None
    except (RuntimeError, MemoryError) as err:  # torch's allocator: a width or class count of a size no machine has
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        if not (isinstance(err, MemoryError) or "allocate" in first or "out of memory" in first
                or "overflow" in first):  # ("Storage size calculation overflowed": review fuzz1 #6)
            raise
        _too_large(name, num_classes, model_options)
    if not isinstance(model, nn.Module):  # (review extend1 #9: "'NoneType' object has no attribute 'named_modules'")
        missing = " (a missing return?)" if model is None else ""
        raise UsageError(f"model {name!r}: its factory returned {type(model).__name__}, not an nn.Module{missing}")
    if _BINARY[name] and name not in _MIXED:
        _check_estimators(name, model, est.spec())
    return model


def _too_large(name: str, num_classes: int, model_options: dict[str, Any]) -> None:
    """Refuse model ``name`` with options whose parameters no machine can hold (a UsageError)."""
    given = ", ".join([f"num_classes={num_classes}"] + [f"{k}={v}" for k, v in model_options.items()])
    raise UsageError(f"{name!r} with {given} needs more memory than this machine has for its parameters; pass "
                     "smaller values") from None


def _check_estimators(name: str, model: nn.Module, spec: dict[str, Any]) -> None:
    """The estimators of a built binary model are the one asked for. A factory that builds its binary layers
    itself (not with its ``conv`` builder) would train with another estimator than the run records: refused
    when no layer has the one asked for, a warning when some lack it (``mixed_estimators=True`` at
    registration says it is on purpose)."""
    found = []
    for where, module in model.named_modules():
        if isinstance(module, Estimator):
            found.append((where.rpartition(".")[0] if where.endswith("_estimator") else where, module.spec()))
    others = [(layer, other) for layer, other in found if other != spec]
    if not others:
        return
    layer, other = others[0]
    what = f"estimator {other['name']!r}" if other["name"] != spec["name"] else f"{other['name']!r} settings {other}"
    how = ("its factory must build each binary layer with the builder it receives: conv(in, out, ...) for a "
           "convolution, conv.linear(in, out) for a linear layer")
    if len(others) == len(found):
        raise UsageError(f"model {name!r} built its layer {layer!r} with {what}, not the {spec['name']!r} asked for "
                         f"({spec}), and no layer with that one; {how}")
    layers = sorted({layer for layer, _ in others})
    if (name, spec["name"]) in _WARNED:  # once: a run builds the model for training, evaluation, checkpoints
        return
    _WARNED.add((name, spec["name"]))
    warnings.warn(f"model {name!r}: {len(layers)} layer(s) ({', '.join(layers[:4])}{', ...' if len(layers) > 4 else ''}"
                  f") have another estimator than the {spec['name']!r} asked for ({what} at {layer!r}); {how}, or "
                  "register it with mixed_estimators=True when that is on purpose", stacklevel=3)


@contextlib.contextmanager
def unrecorded() -> Iterator[None]:
    """Inside the block, a model built gives its once-only warnings without counting them as given: a trial build
    (the check before a run, which hides its warnings) leaves them to the run's own build."""
    warned = set(_WARNED)
    try:
        yield
    finally:
        _WARNED.intersection_update(warned)


def _split_keywords(name: str, estimator: Any, keywords: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(model options, estimator hyper-parameters) of ``create``'s keywords: those the model takes,
    and those it does not but the estimator's table declares (the form before ``estimator_options``).
    Any other keyword is a ``UsageError`` naming the valid ones."""
    accepted = model_keywords(name)
    if isinstance(estimator, Estimator):
        cls = type(estimator)
    else:
        cls = estimator_class(estimator) if isinstance(estimator, str) else None
    hparams = [p.name for p in cls.hyperparameters] if cls else []
    unknown = sorted(k for k in keywords if k not in accepted and k not in hparams)
    if unknown:
        theirs = f" (those of {cls.name!r}: {', '.join(hparams)})" if hparams else ""
        raise UsageError(f"model {name!r} takes no option {unknown[0]!r} (its options: {', '.join(accepted) or 'none'}"
                         f"); estimator hyper-parameters go in estimator_options{theirs}")
    model = {k: v for k, v in keywords.items() if k in accepted}
    return model, {k: v for k, v in keywords.items() if k not in accepted}


def _check_factory(fn: Callable[..., nn.Module], name: str) -> None:
    """A factory that :func:`create` can call, ``fn(*, num_classes, conv, **options)``, or a one-line ``ValueError``
    where it is registered (review extend #4: a factory without ``*`` or ``conv`` was taken, and every run then
    blamed a --model-option the user never gave)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # (a callable inspect cannot read: left to its first call)
        return
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params)
    named = {p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
    missing = [k for k in ("num_classes", "conv") if k not in named and not takes_any]
    positional = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)]
    if missing or positional:
        why = (f"it takes no {' or '.join(missing)}" if missing else
               f"its parameter{'s' * (len(positional) > 1)} {', '.join(positional)} can be given by position")
        raise ValueError(f"model {name!r}: {why}; define its factory keyword-only, as "
                         f"def {name}(*, num_classes, conv, ...) (its other keywords are its --model-option)")


def _options_text(name: str, given: dict[str, Any]) -> str:
    """``width (given 'abc', default 64)``: the options given, with their defaults (not ``width=abc``, which read as
    the option's own value: review clifuzz #8)."""
    defaults = model_defaults(name)
    return ", ".join(f"{k} (given {v!r}" + (f", default {defaults[k]!r})" if k in defaults else ")")
                     for k, v in given.items()) or "none given"


def model_defaults(name: str) -> dict[str, Any]:
    """The defaults of the options model ``name``'s factory takes (those that have one)."""
    _check_name(name)
    params = inspect.signature(_MODELS[name]).parameters
    return {k: params[k].default for k in model_keywords(name) if params[k].default is not inspect.Parameter.empty}


def check_option_types(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """A ``UsageError`` for a model option whose value surely does not fit the factory's annotation or default
    (``width: int = 64`` given ``abc``): the factory would fail with an error of its own, or later. Returns the
    options as the factory takes them: a ``str``-annotated option given a number or a bool (``tag=18``, which
    the command line reads as a number) gets it back as text. Anything else is left to the factory."""
    _check_name(name)
    params = inspect.signature(_MODELS[name]).parameters
    kinds = {"int": int, "float": float, "bool": bool, "str": str}
    out = dict(options)
    for key, value in options.items():
        if key not in params:
            continue
        p = params[key]
        kind = kinds.get(p.annotation if isinstance(p.annotation, str) else getattr(p.annotation, "__name__", ""))
        if kind is str:
            if isinstance(value, (bool, int, float)):
                out[key] = _as_text(value)
            continue
        guessed = kind is None
        if guessed and p.default is not inspect.Parameter.empty and p.default is not None:
            kind = type(p.default) if type(p.default) in kinds.values() else None
        if kind is None or kind is str:  # a default's str: whatever it is, the factory says
            continue
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if kind is bool:
            fits = isinstance(value, bool)
        elif kind is float or guessed:  # a float takes an int; a type guessed from a default, either number
            fits = number
        else:
            fits = number and isinstance(value, int)
        if not fits:
            why = f"{key} must be {'an' if kind is int else 'a'} {kind.__name__}, got {value!r}"
            raise ModelOptionError(f"bad --model-option for {name!r}: {why}", why)
        if kind is float and not guessed and isinstance(value, int):  # drop=1 is drop=1.0: one setting, one value
            out[key] = float(value)
    return out


def _as_text(value: bool | int | float) -> str:
    """The text a value was most likely given as (``--model-option tag=18``): ``18``, ``0.5``, ``true``."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def model_keywords(name: str) -> list[str]:
    """The options model ``name``'s factory takes itself (``width`` for ``fmnist_vgg_1w1a``)."""
    _check_name(name)
    params = inspect.signature(_MODELS[name]).parameters.values()
    return [p.name for p in params
            if p.kind == inspect.Parameter.KEYWORD_ONLY and p.name not in ("num_classes", "conv")]
