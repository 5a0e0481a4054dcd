"""The data sets reste knows: one :class:`DatasetSpec` per data set, the single owner of its facts.

Everything that needs to know about a data set asks here: :mod:`reste.data` (how to load
and normalise it), the model registry (which data sets a model may declare), the training
configuration (the default recipe, whether ``--workers`` matter) and the exporter (the
mean/std a deployed model expects). This module imports neither torch nor the loaders, so
it is cheap to import anywhere; a spec names its loader and :meth:`DatasetSpec.load`
imports it on use.

A data set of your own is a spec passed to :func:`register_dataset` (from a plugin module, loaded by
``--plugin MODULE``): from then on its name works wherever a built-in's does. ``SPECS`` and ``DATASETS`` are the
built-ins; :func:`dataset_names` and :func:`get_spec` see the registered ones too.

>>> from reste.datasets import get_spec
>>> spec = get_spec("fmnist")
>>> spec.name, spec.input_size, spec.mean, spec.std
('fashion-mnist', (1, 28, 28), (0.286,), (0.353,))
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from . import plugins
from .errors import UsageError, did_you_mean

__all__ = ["DatasetSpec", "SPECS", "DATASETS", "get_spec", "dataset_names", "register_dataset", "defined_in",
           "RECIPE_KEYS", "GENERIC_RECIPE"]


#: The folder a data set without --data-path is read from (torchvision's convention: ``./data``).
DEFAULT_ROOT = Path("data")


@dataclass(frozen=True)
class DatasetSpec:
    """The facts of one data set.

    ``mean``/``std`` are per channel, in the units of the image scaled to [0, 1]
    (``pixel / scale``): a model trained on the set sees ``(pixel / scale - mean) / std``.
    ``train_size``/``test_size`` are ``None`` where they depend on the user's copy
    (ImageNet folders). ``fits_in_memory`` says whether the whole set can be held as
    uint8 tensors on the training device (``--data-device``). ``loader`` is
    ``"module:function"`` or the function itself, ``(data_path, download, augment, in_memory, train)``
    returning ``(train, test, DatasetInfo)``. ``defaults`` is the recipe used when the
    user does not say otherwise (model, epochs, batch sizes, lr, warm-up). ``augments``: whether
    the loader has a train augmentation (random crop and flip) that ``--augment`` turns on.
    """

    name: str
    aliases: tuple[str, ...]
    num_classes: int
    input_size: tuple[int, int, int]  # (C, H, W) as the model sees it
    mean: tuple[float, ...]
    std: tuple[float, ...]
    scale: float  # raw pixel value of white (images are stored as uint8 0..scale)
    train_size: int | None
    test_size: int | None
    fits_in_memory: bool
    loader: str | Callable[..., Any]
    defaults: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    augments: bool = True  # whether its loader has a train augmentation for --augment to turn on
    reads_files: bool = True  # whether it is read from a folder (--data-path); digits comes with scikit-learn
    folder_classes: bool = False  # whether its classes are those of the user's folder (num_classes: the usual copy's)
    # whether, without --data-path, its loader reads DEFAULT_ROOT of the current folder: config.json then
    # records that folder, absolute, so `reste eval` and --resume find it from any folder
    reads_default_root: bool = False
    # the shorter side its test images are resized to before the centre crop of input_size (None: not resized),
    # as its loader does it and an exported model prepares an image file
    test_resize: int | None = None

    def load(self, data_path=None, *, download: bool = False, augment: bool = True,
             in_memory: bool | None = None, train: bool = True):
        """Run this data set's loader: ``(train, test, DatasetInfo)``; ``train=False``: the train split is
        neither read nor returned (None). A loader that cannot be imported is a one-line ``UsageError`` naming the
        data set and its loader (review extend #13); :func:`reste.data.load_datasets` checks what it returns."""
        return self._loader()(data_path, download, augment, in_memory, train)

    def _loader(self) -> Callable[..., Any]:
        if callable(self.loader):
            return self.loader
        module, _, function = self.loader.partition(":")
        owner = sys.modules.get(_DEFINED_IN.get(self.name, ""))
        file = getattr(owner, "__file__", None)
        if owner is not None and file and Path(file).stem == module and owner.__name__ != module:
            found = owner  # (review extend #13) a --plugin FILE.py naming itself: the file loaded, not a second import
        else:
            try:
                found = importlib.import_module(module)
            except ImportError as err:
                raise self.bad_loader(f"cannot be imported ({err})") from None
        loader = getattr(found, function, None)
        if not callable(loader):
            raise self.bad_loader(f"names no function of {module}")
        return loader

    def bad_loader(self, what: str) -> UsageError:
        """The one-line error of a loader of this data set that ``what`` (cannot be imported, returned ...)."""
        name = self.loader if isinstance(self.loader, str) else \
            f"{getattr(self.loader, '__module__', '?')}.{getattr(self.loader, '__qualname__', self.loader)}"
        return UsageError(f"data set {self.name!r}: its loader {name} {what}")


# digits: scikit-learn's 8x8 digits, pixel values 0..16; mean/std are those of the train split
# (1437 images, stratified with random_state=0) in float32, the values data.py always computed.
SPECS: dict[str, DatasetSpec] = {spec.name: spec for spec in (
    DatasetSpec(
        name="digits", aliases=(), num_classes=10, input_size=(1, 8, 8),
        mean=(0.3053833842277527,), std=(0.3761191666126251,), scale=16.0,
        train_size=1437, test_size=360, fits_in_memory=True, loader="reste.data.sets:_load_digits",
        defaults=dict(model="digits_1w1a", augment=False, optimizer="sgd", lr=0.1, weight_decay=1e-4, epochs=20,
                      batch_size=64, eval_batch_size=512, warm_up=0),
        description="scikit-learn's bundled 8x8 digits, no download", augments=False, reads_files=False,
    ),
    DatasetSpec(
        name="fashion-mnist", aliases=("fashionmnist", "fmnist"), num_classes=10, input_size=(1, 28, 28),
        mean=(0.2860,), std=(0.3530,), scale=255.0,
        train_size=60000, test_size=10000, fits_in_memory=True, loader="reste.data.sets:_load_fashion_mnist",
        # its accuracy and time, and how they were measured: docs/results/fmnist_default.md
        defaults=dict(model="fmnist_vgg28_1w1a", augment=False, optimizer="adam", lr=1e-3, weight_decay=0.0,
                      epochs=8, batch_size=256, eval_batch_size=128, warm_up=0),
        description="Zalando's Fashion-MNIST idx files",
    ),
    DatasetSpec(
        name="cifar10", aliases=("cifar-10", "cifar"), num_classes=10, input_size=(3, 32, 32),
        mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), scale=255.0,
        train_size=50000, test_size=10000, fits_in_memory=True, loader="reste.data.sets:_load_cifar10",
        defaults=dict(model="resnet20_1w1a", augment=True, optimizer="sgd", lr=0.1, weight_decay=1e-4, epochs=1000,
                      batch_size=256, eval_batch_size=128, warm_up=5),
        description="CIFAR-10 python pickle batches (150 MB as uint8)", reads_default_root=True,
    ),
    DatasetSpec(
        name="imagenet", aliases=(), num_classes=1000, input_size=(3, 224, 224),
        mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), scale=255.0,
        train_size=None, test_size=None, fits_in_memory=False, loader="reste.data.sets:_load_imagenet",
        folder_classes=True, test_resize=256,
        defaults=dict(model="imagenet_resnet18_1w1a", augment=True, optimizer="sgd", lr=0.1, weight_decay=1e-4,
                      epochs=250, batch_size=750, eval_batch_size=128, warm_up=0),
        description="ImageFolder trees train/ and val/ (JPEG files, read by DataLoader workers)",
    ),
)}

#: The canonical names of the built-in data sets, in the order they are listed to users.
DATASETS: tuple[str, ...] = tuple(SPECS)

#: The settings a spec's ``defaults`` may give (``TrainConfig`` fields); a registered set's missing ones are
#: ``GENERIC_RECIPE``'s (but ``model``: without one, ``--model`` must be given).
RECIPE_KEYS = ("model", "augment", "optimizer", "lr", "weight_decay", "epochs", "batch_size", "eval_batch_size",
               "warm_up")
GENERIC_RECIPE: dict[str, Any] = dict(augment=False, optimizer="adam", lr=1e-3, weight_decay=0.0, epochs=10,
                                      batch_size=64, eval_batch_size=256, warm_up=0)

_REGISTERED: dict[str, DatasetSpec] = {}  # the data sets of plugins, by name
_DEFINED_IN: dict[str, str] = {}  # the module that registered each of them


def _key(name: str) -> str:
    return str(name).strip().lower().replace("_", "-")


def _all() -> dict[str, DatasetSpec]:
    return {**SPECS, **_REGISTERED}


def dataset_names() -> tuple[str, ...]:
    """The canonical names of every data set now: the built-ins (``DATASETS``), then the registered ones (an
    installed plugin's included)."""
    plugins.load_entry_points()
    return tuple(_all())


def get_spec(name: str) -> DatasetSpec:
    """The spec of a data set by name or alias (case, ``_`` and ``-`` ignored as usual).

    Raises :class:`UsageError` (one line, listing the valid names) for an unknown name.
    """
    spec = _find(_key(name))
    if spec is None:
        plugins.load_entry_points()  # an installed package's module may register data sets too
        spec = _find(_key(name))
    if spec is None:
        raise UsageError(f"unknown dataset {name!r}; {did_you_mean(name, dataset_names())}choose one of: "
                         f"{', '.join(dataset_names())} (a data set of "
                         "your own: register it with reste.datasets.register_dataset in a module you load with "
                         f"--plugin MODULE){plugins.broken_note()}")
    return spec


def _find(key: str) -> DatasetSpec | None:
    for spec in _all().values():
        if key == spec.name or key in spec.aliases:
            return spec
    return None


def defined_in(name: str) -> str:
    """The module that registered data set ``name`` (``reste.datasets`` for a built-in)."""
    spec = get_spec(name)
    return _DEFINED_IN.get(spec.name, __name__)


_NAME = re.compile(r"[a-z][a-z0-9]*(-[a-z0-9]+)*")


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    """Register a data set of your own; its name then works wherever a built-in's does (``--dataset``,
    ``register_model(dataset=...)``, ``reste summary``, ``eval``, ``export``, ``predict``, sweeps, and a run's
    default recipe: the spec's ``defaults``, the missing ones ``GENERIC_RECIPE``'s). Call it in a plugin module;
    a run records that module in its ``config.json``, so ``--resume`` loads it. Registering again from the same
    module (a reload) replaces the spec. Returns the spec as registered.

    Raises ``ValueError`` (one line) for a name or alias taken by another data set, a name that is not lower
    case letters, digits and ``-``, or a field of the wrong kind.
    """
    if not isinstance(spec, DatasetSpec):
        raise ValueError(f"register_dataset takes a reste.datasets.DatasetSpec, got {type(spec).__name__}")
    caller = inspect.currentframe()
    module = caller.f_back.f_globals.get("__name__", "") if caller and caller.f_back else ""
    spec = _checked(spec)
    taken = {_key(n): s.name for s in _all().values() if s.name != spec.name or s.name in SPECS
             for n in (s.name, *s.aliases)}
    for name in (spec.name, *spec.aliases):
        if name in taken:
            raise ValueError(f"dataset name {name!r} is taken by {'the built-in' if taken[name] in SPECS else 'the'}"
                             f" data set {taken[name]!r}; choose another")
    old = _DEFINED_IN.get(spec.name)
    if old is not None and not plugins.same_source(old, module):
        raise ValueError(f"dataset {spec.name!r} is already registered by {old}; choose another name")
    _REGISTERED[spec.name] = spec
    _DEFINED_IN[spec.name] = module
    return spec


def _checked(spec: DatasetSpec) -> DatasetSpec:
    """``spec`` with its sizes as tuples and its recipe completed; a ``ValueError`` naming the first bad field."""
    def bad(what: str) -> ValueError:
        return ValueError(f"dataset {spec.name!r}: {what}")

    def whole(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    if not isinstance(spec.name, str) or not _NAME.fullmatch(spec.name):
        hint = f" (as {_key(spec.name)!r})" if isinstance(spec.name, str) and _NAME.fullmatch(_key(spec.name)) else ""
        raise ValueError(f"a dataset's name must be lower case letters, digits and '-', starting with a letter, got "
                         f"{spec.name!r}{hint}")
    aliases = tuple(spec.aliases) if isinstance(spec.aliases, (tuple, list)) else None
    if aliases is None or not all(isinstance(a, str) and _NAME.fullmatch(a) for a in aliases):
        raise bad(f"aliases must be a tuple of names of lower case letters, digits and '-', got {spec.aliases!r}")
    if not whole(spec.num_classes) or spec.num_classes < 1:
        raise bad(f"num_classes must be a positive integer, got {spec.num_classes!r}")
    size = spec.input_size
    if not isinstance(size, (tuple, list)) or len(size) != 3 or not all(whole(v) and v > 0 for v in size):
        raise bad(f"input_size must be 3 positive integers (C, H, W), got {size!r}")
    for field_name in ("mean", "std"):
        values = getattr(spec, field_name)
        if (not isinstance(values, (tuple, list)) or len(values) != size[0]
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                           for v in values)):
            raise bad(f"{field_name} must be {size[0]} finite number(s), one per channel, got {values!r}")
    if not all(v > 0 for v in spec.std):
        raise bad(f"std must be positive, got {spec.std!r}")
    if not isinstance(spec.scale, (int, float)) or isinstance(spec.scale, bool) or not 0 < spec.scale < math.inf:
        raise bad(f"scale (the raw value of white) must be a positive number, got {spec.scale!r}")
    for field_name in ("train_size", "test_size"):
        value = getattr(spec, field_name)
        if value is not None and (not whole(value) or value < 0):
            raise bad(f"{field_name} must be None or an integer >= 0, got {value!r}")
    crop = max(spec.input_size[1:], default=1)  # the centre crop that follows the resize (review data, suggestion)
    if spec.test_resize is not None and (not whole(spec.test_resize) or spec.test_resize < crop):
        raise bad(f"test_resize (the shorter side before the centre crop of {tuple(spec.input_size)}) must be None "
                  f"or an integer >= {crop}, got {spec.test_resize!r}")
    for field_name in ("fits_in_memory", "augments", "reads_files", "folder_classes", "reads_default_root"):
        if not isinstance(getattr(spec, field_name), bool):
            raise bad(f"{field_name} must be True or False, got {getattr(spec, field_name)!r}")
    loader = spec.loader
    if not (callable(loader) or isinstance(loader, str) and re.fullmatch(r"[\w.]+:\w+", loader)):
        raise bad(f"loader must be a function or 'module:function', got {loader!r}")
    if not isinstance(spec.defaults, dict) or set(spec.defaults) - set(RECIPE_KEYS):
        unknown = sorted(set(spec.defaults) - set(RECIPE_KEYS)) if isinstance(spec.defaults, dict) else spec.defaults
        raise bad(f"defaults takes {', '.join(RECIPE_KEYS)}; got {unknown!r}")
    recipe = {**GENERIC_RECIPE, **spec.defaults}
    _check_recipe(recipe, bad)
    if recipe["augment"] and not spec.augments:
        raise bad("defaults has augment=True but augments=False (its loader has no augmentation)")
    if not isinstance(spec.description, str):
        raise bad(f"description must be a string, got {spec.description!r}")
    return dataclasses.replace(spec, aliases=aliases, input_size=tuple(size), mean=tuple(spec.mean),
                               std=tuple(spec.std), defaults=recipe)


def _check_recipe(recipe: dict[str, Any], bad: Callable[[str], ValueError]) -> None:
    """Refuse a recipe value a run would refuse (``bad(what)``, naming it as the recipe's): ``TrainConfig``'s checks,
    on a config of the recipe. Those of its values alone: the model is checked for its kind (a plugin may register
    it after its data set), and the values stand in a config of digits and its model (this data set is not
    registered yet)."""
    from .config import TrainConfig  # (config imports this module)

    values = {k: v for k, v in recipe.items() if k != "model"}
    try:  # the kinds, named as keys; then the values, on digits (augment: whether this set augments is checked above)
        TrainConfig(model=recipe.get("model") or "", workers=0, **values)._check_types(keys=True)
        bop = dict(estimator="ste", scaling="none") if values["optimizer"] == "bop" else {}  # (what Bop asks for)
        TrainConfig(dataset="digits", model="digits_1w1a", **{**values, "augment": None}, **bop).resolve()
    except UsageError as err:
        what = re.sub(r"--([a-z][a-z-]*)", lambda m: m[1].replace("-", "_"), str(err))  # as keys, not flags
        raise bad(f"its default {what}" if what.split(" ", 1)[0] in RECIPE_KEYS else f"its defaults: {what}") from None
