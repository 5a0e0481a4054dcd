"""The data sets reste knows: one :class:`DatasetSpec` per data set, the single owner of its facts.

Everything that needs to know about a data set asks here: :mod:`reste.data` (how to load
and normalise it), the model registry (which data sets a model may declare), the training
configuration (the default recipe, whether ``--workers`` matter) and the exporter (the
mean/std a deployed model expects). This module imports neither torch nor the loaders, so
it is cheap to import anywhere; a spec names its loader and :meth:`DatasetSpec.load`
imports it on use.

>>> from reste.datasets import get_spec
>>> spec = get_spec("fmnist")
>>> spec.name, spec.input_size, spec.mean, spec.std
('fashion-mnist', (1, 28, 28), (0.286,), (0.353,))
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

from .errors import UsageError

__all__ = ["DatasetSpec", "SPECS", "DATASETS", "get_spec", "dataset_names"]


@dataclass(frozen=True)
class DatasetSpec:
    """The facts of one data set.

    ``mean``/``std`` are per channel, in the units of the image scaled to [0, 1]
    (``pixel / scale``): a model trained on the set sees ``(pixel / scale - mean) / std``.
    ``train_size``/``test_size`` are ``None`` where they depend on the user's copy
    (ImageNet folders). ``fits_in_memory`` says whether the whole set can be held as
    uint8 tensors on the training device (``--data-device``). ``loader`` is
    ``"module:function"``, a function ``(data_path, download, augment, in_memory, train)``
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
    loader: str
    defaults: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    augments: bool = True  # whether its loader has a train augmentation for --augment to turn on
    reads_files: bool = True  # whether it is read from a folder (--data-path); digits comes with scikit-learn
    folder_classes: bool = False  # whether its classes are those of the user's folder (num_classes: the usual copy's)

    def load(self, data_path=None, *, download: bool = False, augment: bool = True,
             in_memory: bool | None = None, train: bool = True):
        """Run this data set's loader: ``(train, test, DatasetInfo)``; ``train=False``: the train split is
        neither read nor returned (None)."""
        module, _, function = self.loader.partition(":")
        return getattr(importlib.import_module(module), function)(data_path, download, augment, in_memory, train)


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
        description="CIFAR-10 python pickle batches (150 MB as uint8)",
    ),
    DatasetSpec(
        name="imagenet", aliases=(), num_classes=1000, input_size=(3, 224, 224),
        mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), scale=255.0,
        train_size=None, test_size=None, fits_in_memory=False, loader="reste.data.sets:_load_imagenet",
        folder_classes=True,
        defaults=dict(model="imagenet_resnet18_1w1a", augment=True, optimizer="sgd", lr=0.1, weight_decay=1e-4,
                      epochs=250, batch_size=750, eval_batch_size=128, warm_up=0),
        description="ImageFolder trees train/ and val/ (JPEG files, read by DataLoader workers)",
    ),
)}

#: The canonical names, in the order they are listed to users.
DATASETS: tuple[str, ...] = tuple(SPECS)


def dataset_names() -> tuple[str, ...]:
    """The canonical names (``DATASETS``); kept for code written before ``DATASETS``."""
    return DATASETS


def get_spec(name: str) -> DatasetSpec:
    """The spec of a data set by name or alias (case, ``_`` and ``-`` ignored as usual).

    Raises :class:`UsageError` (one line, listing the valid names) for an unknown name.
    """
    key = str(name).strip().lower().replace("_", "-")
    for spec in SPECS.values():
        if key == spec.name or key in spec.aliases:
            return spec
    raise UsageError(f"unknown dataset {name!r}; choose one of: {', '.join(SPECS)}")
