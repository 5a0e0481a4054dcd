"""Data sets and reproducible loaders.

The facts of each data set (name, aliases, classes, input size, mean/std, sizes,
whether it fits in memory, the default recipe) are owned by :mod:`reste.datasets`;
this package reads the files and serves the batches. Four data sets are known
(``DATASETS``):

``digits``
    scikit-learn's bundled 8x8 digits (1797 images, no download), split once into
    1437 train / 360 test images (stratified, ``random_state=0``), scaled to [0, 1]
    and normalised with the train mean/std (the spec's); 1x8x8, no augmentation.
``fashion-mnist``
    the original idx files, read by our own parser from ``data_path`` (the folder
    itself or ``data_path/FashionMNIST/raw``; nowhere else when it is given); without
    a ``data_path``, first from Debian's ``dataset-fashion-mnist`` package
    (``/usr/share/datasets/fashion-mnist``), then from ``./data/FashionMNIST/raw``
    (torchvision's layout; ``download=True`` fetches it there). 1x28x28, train
    augmentation: random crop 28 with padding 2 and a horizontal flip, done batched
    on tensors.
``cifar10``
    the python pickle batches (``cifar-10-batches-py/data_batch_1..5``,
    ``test_batch``) under ``data_path`` (default ``./data``; ``download=True`` fetches
    them with torchvision when one is missing). Train: random crop 32 with padding 4, horizontal flip,
    normalised with the ImageNet mean/std; test: normalised. With ``in_memory=True``
    (what training uses) the images are uint8 tensors and all of this runs batched;
    otherwise they are PIL images through torchvision's RandomCrop,
    RandomHorizontalFlip, ToTensor and Normalize, per sample.
``imagenet``
    ``ImageFolder`` trees ``data_path/train`` and ``data_path/val``. Train:
    RandomResizedCrop(224, scale=(0.08, 1.25)), flip; val: Resize(256),
    CenterCrop(224). (torchvision accepts a scale above 1: a drawn area larger than
    the image is rejected and redrawn, as in the authors' code.)

``load_datasets(train=False)`` (evaluation) needs the test split's files alone: a
folder holding only ``test_batch``, or the two ``t10k`` idx files, will do.

Loaders (``make_loaders``) yield ``(images float32 NCHW, labels int64)``. The
in-memory sets (digits, Fashion-MNIST, CIFAR-10 with ``in_memory=True``) hold
uint8 pixels in an :class:`InMemoryDataset`, on the CPU or on the training device
(``make_loaders(device=...)``, ``--data-device``), and use :class:`TensorLoader`,
which gathers each batch there and normalises (:class:`Normalize`), crops and
flips it (:class:`RandomCropFlip`) there, batched; the others a
:class:`EpochDataLoader` (a torch ``DataLoader``). Both have ``set_epoch(epoch)``:
the shuffle order and the random augmentation of epoch ``e`` are a function of
``(seed, e)`` only (drawn from CPU generators, whatever the device), so a resumed
run sees exactly the batches an uninterrupted one would, on any device. Without
``set_epoch`` each iteration uses the next epoch (0, 1, 2, ... from creation).

The package, one job a module:

``reste.data.formats``
    reading the files: idx, CIFAR-10 python batches, ImageFolder trees; where to look
    for them, downloads, one-line errors.
``reste.data.sampling``
    the order of the samples, a pure function of ``(seed, epoch)``, and each process's
    shard of it; the samplers and the per-sample seeded transforms.
``reste.data.memory``
    the uint8 in-memory data set and its batches, normalised, cropped and flipped
    where the tensors are.
``reste.data.sets``
    each data set's loader (files to train and test sets) and :func:`load_datasets`.
``reste.data.loaders``
    :func:`make_loaders` and :func:`data_device`.

The places searched for files (``SYSTEM_FASHION_MNIST``, ``DEFAULT_ROOT``) are read
from :mod:`reste.data.formats`; set them there to change them.
"""

from __future__ import annotations

from ..datasets import DATASETS
from .formats import DEFAULT_ROOT, SYSTEM_FASHION_MNIST, read_idx
from .loaders import EpochDataLoader, data_device, make_loaders
from .memory import InMemoryDataset, Normalize, RandomCropFlip, TensorLoader
from .sampling import TransformDataset, mix_seed
from .sets import (
    CIFAR10_CLASSES,
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    DatasetInfo,
    check_classes,
    default_read_from,
    from_tensors,
    load_datasets,
)

__all__ = [
    "CIFAR10_CLASSES",
    "FASHION_MNIST_CLASSES",
    "DATASETS",
    "DatasetInfo",
    "Normalize",
    "check_classes",
    "default_read_from",
    "from_tensors",
    "load_datasets",
    "make_loaders",
    "data_device",
    "InMemoryDataset",
    "TransformDataset",
    "TensorLoader",
    "EpochDataLoader",
    "RandomCropFlip",
    "read_idx",
    "mix_seed",
    "FASHION_MNIST_MEAN",
    "FASHION_MNIST_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SYSTEM_FASHION_MNIST",
]
