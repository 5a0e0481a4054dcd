"""The data sets themselves: each spec's loader, from the files to the train and test sets.

A :class:`reste.datasets.DatasetSpec` names its loader here by a string
(``"reste.data.sets:_load_digits"``; also ``_load_fashion_mnist``, ``_load_cifar10``, ``_load_imagenet``).
Each reads its files with :mod:`reste.data.formats` and returns
``(train, test, DatasetInfo)``: :class:`~reste.data.memory.InMemoryDataset` s of uint8
pixels with their normalisation and batched augmentation, or, for data sets read per
sample, a :class:`~reste.data.sampling.TransformDataset` with torchvision transforms.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..datasets import SPECS, get_spec
from ..errors import UsageError, checked_flags
from .formats import (default_root_read, find_cifar10, find_fashion_mnist, image_folders, read_cifar10,
                      read_cifar10_classes, read_fashion_mnist)
from .memory import InMemoryDataset, Normalize, RandomCropFlip
from .sampling import TransformDataset

__all__ = ["DatasetInfo", "load_datasets", "from_tensors", "default_read_from", "FASHION_MNIST_MEAN",
           "FASHION_MNIST_STD", "IMAGENET_MEAN", "IMAGENET_STD", "FASHION_MNIST_CLASSES", "CIFAR10_CLASSES"]

# The facts of each data set (names, sizes, mean/std) live in reste.datasets; these are views of them.
FASHION_MNIST_MEAN = SPECS["fashion-mnist"].mean[0]
FASHION_MNIST_STD = SPECS["fashion-mnist"].std[0]
IMAGENET_MEAN = SPECS["imagenet"].mean
IMAGENET_STD = SPECS["imagenet"].std

@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a data set."""

    name: str
    num_classes: int
    input_size: tuple[int, int, int]  # (C, H, W)
    train_size: int | None  # None when the train split was not loaded (``load_datasets(train=False)``)
    test_size: int
    classes: tuple[str, ...] | None = None  # the name of each label (an ImageNet folder's: its class folders)
    # the folder the files were read from when no data path named one and it was the current folder's data/
    # (formats.default_root_read): the run records it as its data path
    read_from: str | None = None

    def __post_init__(self):
        # A plugin's loader may name its classes by numbers (or give a list): they are kept as the tuple of strings
        # that checkpoints, exports and predictions record and compare.
        if self.classes is not None:
            if isinstance(self.classes, (str, bytes)):
                raise TypeError(f"DatasetInfo.classes must be a sequence of names, one per class, "
                                f"got a string {self.classes!r}")
            object.__setattr__(self, "classes", tuple(str(c) for c in self.classes))


FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                         "Sneaker", "Bag", "Ankle boot")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                   "truck")


def load_datasets(name: str, data_path: str | os.PathLike | None = None, *, download: bool = False,
                  augment: bool | None = None, in_memory: bool | None = None, train: bool = True):
    """Load a data set: ``(train_ds, test_ds, DatasetInfo)``.

    ``name`` is a name or alias of :mod:`reste.datasets`. ``augment``: whether the train set is augmented;
    ``None`` (the default) takes the data set's recipe, as ``reste train`` does (CIFAR-10 and ImageNet yes,
    Fashion-MNIST no; digits has none to give). ``in_memory=True`` asks for
    :class:`InMemoryDataset` s of uint8 pixels, which :func:`~reste.data.make_loaders` can put on
    the training device: digits and Fashion-MNIST are always loaded so, CIFAR-10
    only when asked (by default it is served as PIL images through torchvision
    transforms, per sample), ImageNet never (``in_memory=True`` is then a
    :class:`UsageError`). Problems the user can fix (unknown name, missing or
    malformed files, a failed download) raise :class:`reste.errors.UsageError` with a
    one-line message. ``train=False`` reads only the test split, whose files alone need be there
    (evaluation: CIFAR-10's ``test_batch``, Fashion-MNIST's ``t10k`` files; ImageNet's train folder is not
    scanned), and returns ``None`` for the train set.
    """
    checked_flags("load_datasets", download=download, augment=augment, in_memory=in_memory, train=train)
    spec = get_spec(name)
    if in_memory and not spec.fits_in_memory:
        raise UsageError(f"{spec.name} does not fit in memory; it is read from files by DataLoader workers")
    if augment is None:  # (review docs #4: True, whatever the recipe, gave Fashion-MNIST crops and flips)
        augment = bool(spec.defaults["augment"])
    got = spec.load(data_path, download=download, augment=augment, in_memory=in_memory, train=train)
    # a plugin's loader that returns something else: one line naming it (review extend #5: "not enough values to
    # unpack", exit status 1, naming neither the data set nor its loader)
    if not isinstance(got, (tuple, list)) or len(got) != 3:
        kind = f"a {type(got).__name__} of {len(got)}" if isinstance(got, (tuple, list)) else type(got).__name__
        raise spec.bad_loader(f"returned {kind}; it must return (train, test, DatasetInfo), as "
                              "reste.data.from_tensors makes them")
    if not isinstance(got[2], DatasetInfo):
        raise spec.bad_loader(f"returned a {type(got[2]).__name__} as its third item, not a reste.data.DatasetInfo")
    if got[1] is None or (train and got[0] is None):
        raise spec.bad_loader(f"returned no {'test' if got[1] is None else 'train'} set (None)")
    return tuple(got)


def from_tensors(name: str, train: tuple | None, test: tuple, *, classes: Sequence[str] | None = None,
                 augment: bool = False, pad: int = 0):
    """``(train_ds, test_ds, DatasetInfo)`` of images held in memory, for the loader of a data set of your own
    (:func:`reste.datasets.register_dataset`): ``train`` and ``test`` are ``(images, labels)``, the images
    ``(N, C, H, W)`` uint8 in the spec's pixel units (0..``scale``), the labels of an integer (or bool) type: float
    labels are refused, even whole ones, rather than truncated (convert them yourself, once you know they are whole);
    tensors are taken where they are, on a GPU too, arrays and lists on the CPU.
    ``classes``: a sequence of names, one per class (a string is refused, not split into letters). Batches are
    normalised with the spec's mean/std where the tensors are (the training GPU with ``--data-device auto``);
    ``augment`` with ``pad`` > 0 adds a random crop (padding ``pad``) and flip to the train batches. ``train=None``
    (the loader's ``train=False``): no train set."""
    spec = get_spec(name)
    norm = Normalize.of(spec.name)
    if isinstance(classes, (str, bytes)):
        raise UsageError(f"{spec.name}: classes must be a sequence of names, one per class, got a string {classes!r}")
    names = [str(c) for c in classes] if classes is not None else [str(c) for c in range(spec.num_classes)]
    if len(names) != spec.num_classes:
        raise UsageError(f"{spec.name}: {len(names)} class names for {spec.num_classes} classes")

    def build(pair, aug):
        # a tensor as it is, where it is (a GPU's: NumPy takes CPU tensors alone, and "can't convert cuda:0 device
        # type tensor to numpy" was all a loader of tensors already on the training GPU got)
        images, labels = (v.detach() if isinstance(v, torch.Tensor) else torch.as_tensor(np.asarray(v)) for v in pair)
        if images.dtype != torch.uint8 or tuple(images.shape[1:]) != spec.input_size or len(images) != len(labels):
            raise UsageError(f"{spec.name}: images must be uint8 (N, {', '.join(map(str, spec.input_size))}) with "
                             f"one label each, got {images.dtype} {tuple(images.shape)} and {len(labels)} labels")
        if (labels.dtype.is_floating_point or labels.dtype.is_complex) and labels.numel():  # ([] is float64)
            raise UsageError(f"{spec.name}: labels must be integers, got {labels.dtype}; convert them (e.g. "
                             "labels.astype(np.int64)) once you know they are whole numbers")
        labels = labels.to(torch.int64)
        if len(labels) and not 0 <= int(labels.min()) <= int(labels.max()) < spec.num_classes:
            raise UsageError(f"{spec.name}: labels must be in [0, {spec.num_classes}), got {int(labels.min())}.."
                             f"{int(labels.max())}")
        return InMemoryDataset(images.contiguous(), labels, augment=aug, classes=names, normalize=norm)

    # (review datafid, suggestion: augment=True with pad=0 augmented nothing, silently; a test split alone is never
    # augmented, and eval's load passes augment=True: rev15 #11)
    if augment and not pad > 0 and train is not None:
        raise UsageError(f"{spec.name}: augment=True crops with padding pad and flips; pass pad > 0 (CIFAR-10's is 4), "
                         "or augment=False")
    crop = RandomCropFlip(spec.input_size[-1], pad, fill=norm.fill()) if augment and train is not None else None
    if crop is not None and spec.input_size[1] != spec.input_size[2]:
        raise UsageError(f"{spec.name}: the random crop is square; its images are {spec.input_size[1]}x"
                         f"{spec.input_size[2]}")
    train_ds = build(train, crop) if train is not None else None
    test_ds = build(test, None)
    return train_ds, test_ds, _info(spec.name, train_ds, test_ds, names)


def _info(name: str, train, test, classes: Sequence[str] | None, read_from: str | None = None) -> DatasetInfo:
    """``classes`` None: names unknown (the spec's count)."""
    spec = get_spec(name)
    return DatasetInfo(name, spec.num_classes if classes is None else len(classes), spec.input_size,
                       None if train is None else len(train), len(test), None if classes is None else tuple(classes),
                       read_from)


def check_classes(learned: int | None, names: Sequence[str] | None, info: DatasetInfo,
                  data_path: str | os.PathLike | None = None) -> None:
    """Refuse data (``info``, loaded from ``data_path``) whose classes are not the ones a model learned: their
    number (``learned``, what every checkpoint and export says) and, where the model's file records them, their
    ``names``: an image folder with other class folders would be scored, or trained, against the wrong labels.
    ``None`` for either: nothing to check on that side."""
    what = f"the {info.name} data in {data_path}" if data_path else f"the {info.name} data"
    if learned is not None and learned != info.num_classes:
        raise UsageError(f"{what} has {info.num_classes} classes but the model learned {learned}; pass the data "
                         "it was trained on")
    found = info.classes
    # as strings: a run or export of a plugin whose loader named its classes by numbers recorded them so before
    # DatasetInfo made them strings (review diff26 #1)
    if names is None or found is None or [str(n) for n in names] == [str(f) for f in found]:
        return
    if info.name == "cifar10" and tuple(names) == CIFAR10_CLASSES:  # a run named by CIFAR-10's own names (the
        return  # default, and all an older reste read of a folder of other names: review rev15 #4): the labels hold
    if len(names) != len(found):
        raise UsageError(f"{what} has {len(found)} classes but the model learned {len(names)}; pass the data "
                         "it was trained on")
    import unicodedata

    def nfc(name: Any) -> str:
        return unicodedata.normalize("NFC", str(name))

    # the same names but for their Unicode normalisation (a folder copied from macOS comes back in NFD, and may sort
    # in another order): they print alike, so ascii() tells them apart (review portable #3, rev14 #4)
    found_names = {str(f) for f in found}
    if {str(n) for n in names} != found_names and sorted(map(nfc, names)) == sorted(map(nfc, found)):
        was = next(str(n) for n in names if str(n) not in found_names)
        now = next(str(f) for f in found if nfc(f) == nfc(was))
        raise UsageError(f"{what} has other classes than the model learned (its {ascii(now)} was {ascii(was)}: "
                         "names that differ only in Unicode normalisation, as a folder copied from macOS comes back); "
                         "rename the class folders as the model learned them")
    i = next(i for i, (a, b) in enumerate(zip(names, found)) if str(a) != str(b))
    raise UsageError(f"{what} has other classes than the model learned (label {i} is {found[i]!r}, was "
                     f"{names[i]!r}); pass the data it was trained on, with the same class folders")


def _digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's digits, split (stratified, seed 0) into 1,437 train and 360 test images: (x_tr, x_te,
    y_tr, y_te). Kept in reste's cache per scikit-learn version, since importing scikit-learn takes about a
    second, a tenth of a whole default run; a cache that cannot be read or written is passed by, and so is a file
    this user may not have made alone (the check the cache's kernels get, :func:`reste.native.untrusted_path`)."""
    import importlib.metadata

    from ..native import untrusted_path, writable_cache

    names = ("x_tr", "x_te", "y_tr", "y_te")
    try:
        cached: Path | None = writable_cache() / f"digits-{importlib.metadata.version('scikit-learn')}.npz"
    except (OSError, importlib.metadata.PackageNotFoundError):
        cached = None
    try:  # a link, another user's file or one others may write: in a shared $RESTE_CACHE anyone could swap the
        # default data set (all zeros, every label 7) under its predictable name; made again below, over it
        trusted = cached is not None and cached.is_file() and untrusted_path(cached, follow=False) is None
    except OSError:  # gone since
        trusted = False
    if trusted:
        try:
            with np.load(cached) as kept:
                return tuple(kept[n] for n in names)  # type: ignore[return-value]
        except Exception:  # damaged in any way (empty, truncated, another zip's CRC): made again below
            pass
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = bunch.data.astype(np.uint8)  # whole numbers 0..16
    y = bunch.target.astype(np.int64)
    split = train_test_split(x, y, test_size=360, random_state=0, stratify=y)
    if cached is not None:
        from ..files import atomic_write  # (a power loss leaves the old file or the whole new one)

        try:
            # (this user's alone, as the check above wants it under any umask: review install1 #4)
            atomic_write(cached, lambda f: np.savez(f, **dict(zip(names, split))), mode=0o600)
        except OSError:  # a full disk: the next run splits again
            pass
    return tuple(split)  # type: ignore[return-value]


def _load_digits(data_path=None, download: bool = False, augment: bool = True, in_memory: bool | None = None,
                 train: bool = True):
    """The pixels (0..16) as uint8; normalised per batch with the train split's mean/std (the spec's)."""
    x_tr, x_te, y_tr, y_te = _digits_split()
    classes = [str(d) for d in range(10)]
    norm = Normalize.of("digits")
    train = InMemoryDataset(torch.from_numpy(x_tr).reshape(-1, 1, 8, 8), torch.from_numpy(y_tr),
                            classes=classes, normalize=norm) if train else None
    test = InMemoryDataset(torch.from_numpy(x_te).reshape(-1, 1, 8, 8), torch.from_numpy(y_te),
                           classes=classes, normalize=norm)
    return train, test, _info("digits", train, test, [str(d) for d in range(10)])


def _load_fashion_mnist(data_path, download: bool, augment: bool, in_memory: bool | None = None,
                        train: bool = True):
    files = find_fashion_mnist(data_path, download, train)
    norm = Normalize.of("fashion-mnist")

    def build(split, aug):
        x, y = read_fashion_mnist(files, split)
        t = torch.from_numpy(np.array(x, dtype=np.uint8)).unsqueeze(1)  # a writable copy
        return InMemoryDataset(t, torch.from_numpy(y.astype(np.int64)), augment=aug,
                               classes=FASHION_MNIST_CLASSES, normalize=norm)

    # the padding: black normalised in float64 and rounded once, as it always was (this differs
    # from norm.fill() in the last bit; kept so that every batch stays what it was)
    fill = (0.0 - FASHION_MNIST_MEAN) / FASHION_MNIST_STD
    train = build("train", RandomCropFlip(28, 2, fill=fill) if augment else None) if train else None
    test = build("test", None)
    read_from = default_root_read(files) if data_path is None else None
    return train, test, _info("fashion-mnist", train, test, FASHION_MNIST_CLASSES, read_from)


def default_read_from(dataset: str) -> str | None:
    """The folder a run of ``dataset`` without --data-path will read, as its config.json records it
    (``DatasetInfo.read_from``), found without reading the files: Fashion-MNIST's ``./data`` (absolute) when the
    files are there and not in the system's copy. None otherwise: the data path stays unset (digits, the system's
    copy), or ``TrainConfig.resolve`` sets it (CIFAR-10, ``reads_default_root``)."""
    if get_spec(dataset).name != "fashion-mnist":
        return None
    try:
        return default_root_read(find_fashion_mnist(None, download=False))
    except UsageError:  # nothing to read yet: the run says so (or downloads with --download)
        return None


class _ArrayImages:
    """uint8 NHWC arrays + labels, served as PIL images (like torchvision's CIFAR10)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, classes: Sequence[str] | None):
        self.images = images
        self.targets = [int(v) for v in labels]
        self.classes = None if classes is None else list(classes)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        from PIL import Image

        return Image.fromarray(self.images[index]), self.targets[index]


def _load_cifar10(data_path, download: bool, augment: bool, in_memory: bool | None = None,
                  train: bool = True):
    folder = find_cifar10(data_path, download, train)
    x_tr, y_tr = read_cifar10(folder, "train") if train else (None, None)
    x_te, y_te = read_cifar10(folder, "test")
    spec = SPECS["cifar10"]
    classes = read_cifar10_classes(folder)
    if classes is None and train:  # (the real files' are CIFAR10_CLASSES)
        classes = CIFAR10_CLASSES
    # the test split alone, without batches.meta (all eval and predict need): its names are unknown, not CIFAR-10's,
    # so a run of a folder of other names evaluates it (review formats1 #1); the count is still checked

    if in_memory:
        # uint8 NCHW (50,000 train images: 150 MB); crop, flip and normalisation run batched
        norm = Normalize.of("cifar10")

        def tensors(x, y, aug):
            t = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
            return InMemoryDataset(t, torch.from_numpy(y), augment=aug, classes=classes,
                                   normalize=norm)

        train = tensors(x_tr, y_tr, RandomCropFlip(32, 4, fill=norm.fill()) if augment else None) if train else None
        test = tensors(x_te, y_te, None)
        return train, test, _info("cifar10", train, test, classes)

    from torchvision import transforms as T

    norm = [T.ToTensor(), T.Normalize(spec.mean, spec.std)]
    train_tf = T.Compose(([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()] if augment else []) + norm)
    test_tf = T.Compose(norm)
    train = TransformDataset(_ArrayImages(x_tr, y_tr, classes), train_tf) if train else None
    test = TransformDataset(_ArrayImages(x_te, y_te, classes), test_tf)
    return train, test, _info("cifar10", train, test, classes)


def _load_imagenet(data_path, download: bool, augment: bool, in_memory: bool | None = None,
                   train: bool = True):
    train_base, val_base = image_folders(data_path, download, train=train)
    from torchvision import transforms as T

    spec = SPECS["imagenet"]
    norm = [T.ToTensor(), T.Normalize(spec.mean, spec.std)]
    if augment:
        train_tf = T.Compose([T.RandomResizedCrop(spec.input_size[1], scale=(0.08, 1.25)), T.RandomHorizontalFlip()]
                             + norm)
    else:
        train_tf = T.Compose([T.Resize(spec.test_resize), T.CenterCrop(spec.input_size[1])] + norm)
    val_tf = T.Compose([T.Resize(spec.test_resize), T.CenterCrop(spec.input_size[1])] + norm)
    train = TransformDataset(train_base, train_tf) if train else None
    test = TransformDataset(val_base, val_tf)
    return train, test, _info("imagenet", train, test, val_base.classes)
