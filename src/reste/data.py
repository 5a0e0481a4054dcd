"""Data sets and reproducible loaders.

The facts of each data set (name, aliases, classes, input size, mean/std, sizes,
whether it fits in memory, the default recipe) are owned by :mod:`reste.datasets`;
this module reads the files and serves the batches. Four data sets are known
(``DATASETS``):

``digits``
    scikit-learn's bundled 8x8 digits (1797 images, no download), split once into
    1437 train / 360 test images (stratified, ``random_state=0``), scaled to [0, 1]
    and normalised with the train mean/std (the spec's); 1x8x8, no augmentation.
``fashion-mnist``
    the original idx files, read by our own parser from ``data_path`` (the folder
    itself or ``data_path/FashionMNIST/raw``), else from Debian's
    ``dataset-fashion-mnist`` package (``/usr/share/datasets/fashion-mnist``), else
    from ``./data/FashionMNIST/raw`` (torchvision's layout; ``download=True`` fetches
    it there). 1x28x28, train augmentation: random crop 28 with padding 2 and a
    horizontal flip, done batched on tensors.
``cifar10``
    the python pickle batches (``cifar-10-batches-py/data_batch_1..5``,
    ``test_batch``) under ``data_path`` (default ``./data``; ``download=True`` fetches
    them with torchvision). Train: random crop 32 with padding 4, horizontal flip,
    normalised with the ImageNet mean/std; test: normalised. With ``in_memory=True``
    (what training uses) the images are uint8 tensors and all of this runs batched;
    otherwise they are PIL images through torchvision's RandomCrop,
    RandomHorizontalFlip, ToTensor and Normalize, per sample.
``imagenet``
    ``ImageFolder`` trees ``data_path/train`` and ``data_path/val``. Train:
    RandomResizedCrop(224, scale=(0.08, 1.25)), flip; val: Resize(256),
    CenterCrop(224). (torchvision accepts a scale above 1: a drawn area larger than
    the image is rejected and redrawn, as in the authors' code.)

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
"""

from __future__ import annotations

import gzip
import os
import pickle
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .datasets import DATASETS, SPECS, get_spec
from .errors import UsageError

__all__ = [
    "DATASETS",
    "DatasetInfo",
    "Normalize",
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

# The facts of each data set (names, sizes, mean/std) live in reste.datasets; these are views of them.
FASHION_MNIST_MEAN = SPECS["fashion-mnist"].mean[0]
FASHION_MNIST_STD = SPECS["fashion-mnist"].std[0]
IMAGENET_MEAN = SPECS["imagenet"].mean
IMAGENET_STD = SPECS["imagenet"].std

#: Where Debian's ``dataset-fashion-mnist`` package puts the idx files.
SYSTEM_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
#: Default root for downloads (torchvision's convention).
DEFAULT_ROOT = Path("data")


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a data set."""

    name: str
    num_classes: int
    input_size: tuple[int, int, int]  # (C, H, W)
    train_size: int
    test_size: int


# --------------------------------------------------------------------------- seeds

_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def mix_seed(*values: int) -> int:
    """A well-mixed 63-bit seed that depends on every value and their order."""
    h = 0x5EED
    for v in values:
        h = _splitmix64(h ^ (int(v) & _MASK64))
    return h >> 1


def _generator(*values: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(mix_seed(*values))
    return g


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _dist_rank_world() -> tuple[int, int]:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise UsageError(
            "distributed=True needs torch.distributed to be initialised first (launch with torchrun)"
        )
    return dist.get_rank(), dist.get_world_size()


# --------------------------------------------------------------------------- in-memory data


class Normalize:
    """Batched ``(pixel / scale - mean) / std`` from uint8 (or float) images to float32.

    Works on ``(..., C, H, W)`` tensors on any device, with float32 arithmetic in the
    order of torchvision's ``ToTensor`` + ``Normalize`` (divide, subtract, divide), so
    a batch normalised here has the very bits the per-sample path (or normalising the
    whole set up front, as the in-memory sets once did) gives.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], scale: float = 255.0):
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        if len(self.mean) != len(self.std):
            raise ValueError(f"mean has {len(self.mean)} channels, std {len(self.std)}")
        self.scale = float(scale)
        self._consts: dict[torch.device, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    @classmethod
    def of(cls, name: str) -> "Normalize":
        """The normalisation of a known data set (its spec's mean, std and pixel scale)."""
        spec = get_spec(name)
        return cls(spec.mean, spec.std, spec.scale)

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean}, std={self.std}, scale={self.scale:g})"

    def _constants(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # tensors on the device, the scale too: CUDA divides by a host scalar as a multiplication
        # by its reciprocal, which can differ from the CPU's division in the last bit
        if device not in self._consts:
            shape = (len(self.mean), 1, 1)
            self._consts[device] = (torch.tensor(self.scale, dtype=torch.float32, device=device),
                                    torch.tensor(self.mean, dtype=torch.float32, device=device).view(shape),
                                    torch.tensor(self.std, dtype=torch.float32, device=device).view(shape))
        return self._consts[device]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        scale, mean, std = self._constants(x.device)
        return x.to(torch.float32, copy=True).div_(scale).sub_(mean).div_(std)

    def fill(self) -> tuple[float, ...]:
        """The normalised value of a black pixel (0), per channel: the padding of a crop."""
        return tuple(self(torch.zeros(len(self.mean), 1, 1, dtype=torch.uint8)).flatten().tolist())


class RandomCropFlip:
    """Batched random crop (after padding) and horizontal flip on NCHW tensors.

    ``fill`` is the value of the padding, in the tensor's units (for normalised
    images: the normalised value of a black pixel, as if padding came before the
    normalisation), one number or one per channel. Randomness comes only from the
    generator passed in, a CPU generator: the offsets are drawn on the CPU and the
    crop runs where the images are, so a batch on a GPU gets exactly the crops the
    same batch gets on the CPU.
    """

    def __init__(self, size: int, padding: int, fill: float | Sequence[float] = 0.0, flip: bool = True):
        self.size = int(size)
        self.padding = int(padding)
        self.fill = float(fill) if isinstance(fill, (int, float)) else tuple(float(v) for v in fill)
        self.flip = bool(flip)

    def __repr__(self) -> str:
        fill = (f"{self.fill:.4f}" if isinstance(self.fill, float)
                else "(" + ", ".join(f"{v:.4f}" for v in self.fill) + ")")
        return f"RandomCropFlip(size={self.size}, padding={self.padding}, fill={fill}, flip={self.flip})"

    def draw(self, n: int, height: int, width: int,
             generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The random part: per image the crop's top row and left column in the padded
        image, and whether it is flipped (``None`` without flips), on the CPU."""
        ph, pw, s = height + 2 * self.padding, width + 2 * self.padding, self.size
        if s > ph or s > pw:
            raise ValueError(f"crop size {s} larger than the padded image {ph}x{pw}")
        top = torch.randint(0, ph - s + 1, (n,), generator=generator)
        left = torch.randint(0, pw - s + 1, (n,), generator=generator)
        flip = torch.rand(n, generator=generator) < 0.5 if self.flip else None
        return top, left, flip

    def apply(self, x: torch.Tensor, top: torch.Tensor, left: torch.Tensor,
              flip: torch.Tensor | None) -> torch.Tensor:
        """Crop (and flip) every image of ``x`` at the given offsets, in one gather."""
        n, c, h, w = x.shape
        p, s = self.padding, self.size
        if p:
            padded = x.new_empty((n, c, h + 2 * p, w + 2 * p))
            if isinstance(self.fill, float):
                padded.fill_(self.fill)
            else:
                fill = torch.tensor(self.fill, dtype=x.dtype).view(1, -1, 1, 1).to(x.device)
                padded.copy_(fill.expand_as(padded))
            padded[:, :, p:p + h, p:p + w] = x
        else:
            padded = x
        ph, pw = padded.shape[-2:]
        device = x.device
        top, left = top.to(device), left.to(device)
        ar = torch.arange(s, device=device)
        rows = top[:, None] + ar  # (n, s)
        if flip is not None:
            cols = left[:, None] + torch.where(flip.to(device)[:, None], ar.flip(0), ar)
        else:
            cols = left[:, None] + ar
        flat = (rows[:, :, None] * pw + cols[:, None, :]).reshape(n, 1, s * s).expand(n, c, s * s)
        return padded.reshape(n, c, ph * pw).gather(2, flat).reshape(n, c, s, s)

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n, _, h, w = x.shape
        return self.apply(x, *self.draw(n, h, w, generator))


class InMemoryDataset(Dataset):
    """Images (NCHW) and labels (int64) held in memory, on the CPU or any device.

    Without ``normalize`` the images are float32, already normalised. With it they
    are kept as they are (uint8 pixels: a quarter of the memory) in ``data``, and
    ``normalize`` (a :class:`Normalize`) turns a batch into float32 when it is used;
    ``images`` is then the whole set normalised (computed on each access).
    ``augment`` is a batched augmentation ``f(images, generator) -> images`` that
    :class:`TensorLoader` applies to normalised training batches; indexing returns
    the plain (un-augmented, normalised) sample.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor,
                 augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
                 classes: Sequence[str] | None = None,
                 normalize: Callable[[torch.Tensor], torch.Tensor] | None = None):
        if images.ndim != 4:
            raise ValueError(f"images must be NCHW, got shape {tuple(images.shape)}")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.normalize = normalize
        self.data = (images if normalize is not None else images.to(torch.float32)).contiguous()
        self.labels = labels.to(torch.int64).contiguous()
        self.augment = augment
        self.classes = list(classes) if classes is not None else None

    @property
    def images(self) -> torch.Tensor:
        """All images, float32 and normalised."""
        return self.normalize(self.data) if self.normalize is not None else self.data

    @property
    def device(self) -> torch.device:
        return self.data.device

    def to(self, device: str | torch.device) -> "InMemoryDataset":
        """The same data set with its tensors on ``device`` (itself when they are there already)."""
        device = torch.device(device)
        if self.data.device == device:
            return self
        return InMemoryDataset(self.data.to(device), self.labels.to(device), augment=self.augment,
                               classes=self.classes, normalize=self.normalize)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index):
        x = self.data[index]
        return (self.normalize(x) if self.normalize is not None else x), self.labels[index]

    @property
    def targets(self) -> list[int]:
        return self.labels.tolist()


class TensorLoader:
    """Fast batch iterator over in-memory tensors, on the CPU or on the training device.

    A batch is gathered where the tensors are, normalised there by ``normalize``
    (when the images are uint8 pixels) and augmented there, all batched: with the
    tensors on a GPU no image crosses the bus. Epoch ``e`` shuffles with a CPU
    ``torch.Generator`` seeded from ``(seed, e)`` and draws its augmentation from
    another seeded from ``(seed, e, rank)``, so the batches of an epoch do not depend
    on what ran before, nor on the device. Call
    ``set_epoch(e)`` before iterating; otherwise each iteration uses the next epoch.
    With ``world_size > 1`` every rank draws the same permutation, pads it to a
    multiple of ``world_size`` (like ``DistributedSampler``, when ``pad``) and takes
    every ``world_size``-th index from ``rank``.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, *, batch_size: int,
                 shuffle: bool = False, drop_last: bool = False, seed: int = 0,
                 augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
                 pin_memory: bool = False, rank: int = 0, world_size: int = 1,
                 pad: bool = True, dataset: Dataset | None = None,
                 normalize: Callable[[torch.Tensor], torch.Tensor] | None = None):
        if batch_size < 1:
            raise UsageError(f"batch size must be at least 1, got {batch_size}")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = labels
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.seed = int(seed)
        self.augment = augment
        self.pin_memory = bool(pin_memory) and torch.cuda.is_available()
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.pad = bool(pad)
        self.normalize = normalize
        self.dataset = (dataset if dataset is not None
                        else InMemoryDataset(images, labels, normalize=normalize))
        self._epoch = 0

    @property
    def device(self) -> torch.device:
        """Where the tensors are, and so where the batches come out."""
        return self.images.device

    # -- epochs
    @property
    def epoch(self) -> int:
        """The epoch the next iteration will use."""
        return self._epoch

    def set_epoch(self, epoch: int) -> None:
        self._epoch = int(epoch)

    # -- sizes
    @property
    def num_samples(self) -> int:
        """Samples this rank sees per epoch (before ``drop_last``)."""
        n = len(self.labels)
        if self.world_size == 1:
            return n
        if self.pad:
            return -(-n // self.world_size)
        return len(range(self.rank, n, self.world_size))

    def __len__(self) -> int:
        m = self.num_samples
        return m // self.batch_size if self.drop_last else -(-m // self.batch_size)

    def indices(self, epoch: int | None = None) -> torch.Tensor:
        """The sample order (this rank's share) of an epoch."""
        epoch = self._epoch if epoch is None else int(epoch)
        n = len(self.labels)
        if self.shuffle:
            order = torch.randperm(n, generator=_generator(self.seed, epoch))
        else:
            order = torch.arange(n)
        if self.world_size > 1:
            if self.pad and n % self.world_size:
                extra = self.world_size - n % self.world_size
                order = torch.cat([order, order.repeat(-(-extra // n))[:extra]])
            order = order[self.rank::self.world_size]
        return order

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch = self._epoch
        self._epoch = epoch + 1
        order = self.indices(epoch)
        aug_gen = _generator(self.seed, epoch, self.rank, 1) if self.augment is not None else None
        return self._batches(order, aug_gen)

    def _batches(self, order: torch.Tensor, aug_gen):
        m = len(order)
        stop = (m // self.batch_size) * self.batch_size if self.drop_last else m
        contiguous = bool(m == len(self.labels) and not self.shuffle and self.world_size == 1)
        if not contiguous:
            order = order.to(self.images.device)
        pin = self.pin_memory and self.images.device.type == "cpu"
        for start in range(0, stop, self.batch_size):
            if contiguous:
                x = self.images[start:start + self.batch_size]
                x = x.clone() if self.normalize is None else x
                y = self.labels[start:start + self.batch_size].clone()
            else:
                idx = order[start:start + self.batch_size]
                x = self.images[idx]
                y = self.labels[idx]
            if self.normalize is not None:
                x = self.normalize(x)
            if aug_gen is not None:
                x = self.augment(x, aug_gen)
            if pin:
                x, y = x.pin_memory(), y.pin_memory()
            yield x, y


# --------------------------------------------------------------------------- transformed data


class TransformDataset(Dataset):
    """Applies a (torchvision) transform to ``(image, label)`` samples of ``base``.

    Indexed with an ``int`` it behaves like any data set. Indexed with a key
    ``(seed, epoch, index)`` (what the train sampler of :func:`make_loaders` yields)
    the transform runs with torch's global generator seeded from that key and
    restored afterwards, so the augmentation of each sample depends on
    ``(seed, epoch, index)`` only: not on the number of workers, the batch
    boundaries, or what ran before.
    """

    def __init__(self, base, transform: Callable | None = None, classes: Sequence[str] | None = None):
        self.base = base
        self.transform = transform
        if classes is None:
            classes = getattr(base, "classes", None)
        self.classes = list(classes) if classes is not None else None

    def __len__(self) -> int:
        return len(self.base)

    @property
    def targets(self) -> list[int]:
        t = getattr(self.base, "targets", None)
        if t is None:
            return [int(self.base[i][1]) for i in range(len(self.base))]
        return [int(v) for v in t]

    def __getitem__(self, key):
        if isinstance(key, tuple):
            seed, epoch, index = key
            image, label = self.base[index]
            if self.transform is not None:
                state = torch.get_rng_state()
                try:
                    torch.default_generator.manual_seed(mix_seed(seed, epoch, index))
                    image = self.transform(image)
                finally:
                    torch.set_rng_state(state)
            return image, label
        image, label = self.base[key]
        if self.transform is not None:
            image = self.transform(image)
        return image, label


class _ArrayImages:
    """uint8 NHWC arrays + labels, served as PIL images (like torchvision's CIFAR10)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, classes: Sequence[str]):
        self.images = images
        self.targets = [int(v) for v in labels]
        self.classes = list(classes)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        from PIL import Image

        return Image.fromarray(self.images[index]), self.targets[index]


class _EpochSampler(Sampler):
    """Train sampler: permutation of epoch ``e`` drawn from ``(seed, e)``.

    Wraps an optional inner sampler (``DistributedSampler``) instead, forwarding the
    epoch to it. With ``tag`` it yields ``(seed, epoch, index)`` keys for
    :class:`TransformDataset`. Iterating without ``set_epoch`` uses the next epoch.
    """

    def __init__(self, n: int, seed: int, *, inner: Sampler | None = None, tag: bool = True):
        self.n = int(n)
        self.seed = int(seed)
        self.inner = inner
        self.tag = bool(tag)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.inner) if self.inner is not None else self.n

    def __iter__(self):
        epoch = self.epoch
        self.epoch = epoch + 1
        if self.inner is not None:
            if hasattr(self.inner, "set_epoch"):
                self.inner.set_epoch(epoch)
            order = [int(i) for i in self.inner]
        else:
            order = torch.randperm(self.n, generator=_generator(self.seed, epoch)).tolist()
        if self.tag:
            seed = self.seed
            return iter([(seed, epoch, i) for i in order])
        return iter(order)


class _ShardSampler(Sampler):
    """Fixed order; with several ranks, rank ``r`` takes indices r, r+W, ... (no padding)."""

    def __init__(self, n: int, rank: int = 0, world_size: int = 1):
        self.n, self.rank, self.world_size = int(n), int(rank), int(world_size)

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world_size))

    def __iter__(self):
        return iter(range(self.rank, self.n, self.world_size))

    def set_epoch(self, epoch: int) -> None:  # fixed order: nothing to do
        pass


def _worker_init(worker_id: int) -> None:
    # torch seeds each worker from the loader's (seeded) generator; derive the other
    # libraries' generators from it so user transforms using them are reproducible too.
    import random

    s = torch.initial_seed()
    random.seed(s)
    np.random.seed(s % (2 ** 32))


class EpochDataLoader(DataLoader):
    """A torch ``DataLoader`` with ``set_epoch`` (forwarded to its sampler)."""

    @property
    def epoch(self) -> int:
        """The epoch the next iteration will use."""
        return getattr(self.sampler, "epoch", 0)

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(int(epoch))


# --------------------------------------------------------------------------- public API


def load_datasets(name: str, data_path: str | os.PathLike | None = None, *, download: bool = False,
                  augment: bool = True, in_memory: bool | None = None):
    """Load a data set: ``(train_ds, test_ds, DatasetInfo)``.

    ``name`` is a name or alias of :mod:`reste.datasets`. ``augment=False`` turns off
    the train augmentation (digits has none anyway). ``in_memory=True`` asks for
    :class:`InMemoryDataset` s of uint8 pixels, which :func:`make_loaders` can put on
    the training device: digits and Fashion-MNIST are always loaded so, CIFAR-10
    only when asked (by default it is served as PIL images through torchvision
    transforms, per sample), ImageNet never (``in_memory=True`` is then a
    :class:`UsageError`). Problems the user can fix (unknown name, missing or
    malformed files, a failed download) raise :class:`reste.errors.UsageError` with a
    one-line message.
    """
    spec = get_spec(name)
    if in_memory and not spec.fits_in_memory:
        raise UsageError(f"{spec.name} does not fit in memory; it is read from files by DataLoader workers")
    return spec.load(data_path, download=download, augment=augment, in_memory=in_memory)


def data_device(name: str, choice: str, device: str | torch.device) -> torch.device | None:
    """Where a data set's tensors live during training (``--data-device``).

    For a data set that fits in memory: the training ``device`` with ``choice="auto"``,
    the CPU with ``"cpu"``. ``None`` for the others (ImageNet), which stay files read
    by DataLoader workers.
    """
    if choice not in ("auto", "cpu"):
        raise UsageError(f"unknown --data-device {choice!r}; valid: auto, cpu")
    if not get_spec(name).fits_in_memory:
        return None
    return torch.device(device) if choice == "auto" else torch.device("cpu")


def make_loaders(train_ds, test_ds, *, batch_size: int, eval_batch_size: int, workers: int = 0,
                 seed: int = 0, pin_memory: bool = False, distributed: bool = False,
                 drop_last: bool = False, device: str | torch.device | None = None):
    """Build ``(train_loader, test_loader)`` for data sets from :func:`load_datasets`.

    Both loaders have ``set_epoch(epoch)``; the train loader's order and
    augmentation for an epoch depend only on ``(seed, epoch)``. The test loader
    has a fixed order and no augmentation. With ``distributed=True`` (needs an
    initialised ``torch.distributed``) the train set is sharded like
    ``DistributedSampler(seed=seed)`` does and the test set is split without
    padding (rank r gets samples r, r+W, ...), so counts summed over ranks are exact.
    ``device`` puts in-memory data sets there (e.g. the training GPU): their batches
    are then gathered, normalised and augmented on it, and are the same batches as
    on the CPU. It is ignored for data sets read from files.
    """
    if batch_size < 1 or eval_batch_size < 1:
        raise UsageError(f"batch sizes must be at least 1, got {batch_size} and {eval_batch_size}")
    if workers < 0:
        raise UsageError(f"workers must be 0 or more, got {workers}")
    rank, world = _dist_rank_world() if distributed else (0, 1)

    if isinstance(train_ds, InMemoryDataset) and isinstance(test_ds, InMemoryDataset):
        if device is not None:
            train_ds, test_ds = train_ds.to(device), test_ds.to(device)
        train = TensorLoader(train_ds.data, train_ds.labels, batch_size=batch_size, shuffle=True,
                             drop_last=drop_last, seed=seed, augment=train_ds.augment,
                             pin_memory=pin_memory, rank=rank, world_size=world, pad=True,
                             dataset=train_ds, normalize=train_ds.normalize)
        test = TensorLoader(test_ds.data, test_ds.labels, batch_size=eval_batch_size,
                            shuffle=False, drop_last=False, seed=seed, augment=None,
                            pin_memory=pin_memory, rank=rank, world_size=world, pad=False,
                            dataset=test_ds, normalize=test_ds.normalize)
        return train, test

    pin = bool(pin_memory) and torch.cuda.is_available()
    tag = isinstance(train_ds, TransformDataset)
    inner = None
    if distributed:
        from torch.utils.data.distributed import DistributedSampler

        inner = DistributedSampler(train_ds, num_replicas=world, rank=rank, shuffle=True, seed=seed)
    train_sampler = _EpochSampler(len(train_ds), seed, inner=inner, tag=tag)
    common = dict(num_workers=workers, pin_memory=pin, persistent_workers=workers > 0,
                  worker_init_fn=_worker_init if workers > 0 else None)
    train = EpochDataLoader(train_ds, batch_size=batch_size, sampler=train_sampler,
                            drop_last=drop_last, generator=_generator(seed, 0, 2), **common)
    test = EpochDataLoader(test_ds, batch_size=eval_batch_size,
                           sampler=_ShardSampler(len(test_ds), rank, world), drop_last=False,
                           generator=_generator(seed, 0, 3), **common)
    return train, test


# --------------------------------------------------------------------------- digits


def _info(name: str, train, test, num_classes: int | None = None) -> DatasetInfo:
    spec = SPECS[name]
    return DatasetInfo(name, spec.num_classes if num_classes is None else num_classes, spec.input_size,
                       len(train), len(test))


def _load_digits(data_path=None, download: bool = False, augment: bool = True, in_memory: bool | None = None):
    """The pixels (0..16) as uint8; normalised per batch with the train split's mean/std (the spec's)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = bunch.data.astype(np.uint8)  # whole numbers 0..16
    y = bunch.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=360, random_state=0, stratify=y)
    classes = [str(c) for c in bunch.target_names]
    norm = Normalize.of("digits")
    train = InMemoryDataset(torch.from_numpy(x_tr).reshape(-1, 1, 8, 8), torch.from_numpy(y_tr),
                            classes=classes, normalize=norm)
    test = InMemoryDataset(torch.from_numpy(x_te).reshape(-1, 1, 8, 8), torch.from_numpy(y_te),
                           classes=classes, normalize=norm)
    return train, test, _info("digits", train, test)


# --------------------------------------------------------------------------- idx / Fashion-MNIST

_IDX_TYPES = {0x08: np.dtype(np.uint8), 0x09: np.dtype(np.int8), 0x0B: np.dtype(">i2"),
              0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}

FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                         "Sneaker", "Bag", "Ankle boot")
_FMNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_FMNIST_HINT = ("install Debian's dataset-fashion-mnist package, pass --download, or pass "
                "--data-path to a folder holding the four idx files")


def read_idx(path: str | os.PathLike, *, expect_magic: int | None = None) -> np.ndarray:
    """Read an idx file (plain or gzip-compressed), validating its header and size.

    ``expect_magic`` is the expected 32-bit magic number (2051 for images, 2049 for
    labels). Raises :class:`UsageError` on a malformed file.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read idx file {path}: {_one_line(exc.strerror or exc)}") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise UsageError(f"{path} is not a valid gzip file ({_one_line(exc)}); re-download it") from None
    if len(raw) < 4:
        raise UsageError(f"{path} is too short to be an idx file ({len(raw)} bytes); re-download it")
    magic = struct.unpack(">I", raw[:4])[0]
    if raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES or raw[3] == 0 or (
            expect_magic is not None and magic != expect_magic):
        want = f" (expected {expect_magic})" if expect_magic is not None else ""
        raise UsageError(f"{path} is not an idx file of the right kind: bad magic number {magic}{want}")
    dtype, ndim = _IDX_TYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise UsageError(f"{path} has a truncated idx header; re-download it")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    count = int(np.prod(dims, dtype=np.int64))
    if len(raw) - header != count * dtype.itemsize:
        raise UsageError(f"{path} holds {len(raw) - header} data bytes but its header {tuple(dims)} "
                         f"needs {count * dtype.itemsize}; the file is truncated or corrupted")
    return np.frombuffer(raw, dtype=dtype, count=count, offset=header).reshape(dims)


def _find_idx_files(folder: Path) -> tuple[dict[str, Path], list[str]]:
    found, missing = {}, []
    for key, base in _FMNIST_FILES.items():
        for cand in (folder / base, folder / (base + ".gz")):
            if cand.is_file():
                found[key] = cand
                break
        else:
            missing.append(base)
    return found, missing


def _download_torchvision(what: str, fn: Callable[[], object], root: Path) -> None:
    try:
        fn()
    except UsageError:
        raise
    except Exception as exc:  # network, disk, checksum... all the user can do is fetch it elsewhere
        raise UsageError(
            f"could not download {what} into {root} ({type(exc).__name__}: {_one_line(exc)}); "
            f"are you offline? Download it on a machine with internet access and pass --data-path"
        ) from None


def _load_fashion_mnist(data_path, download: bool, augment: bool, in_memory: bool | None = None):
    if data_path is not None:
        root = Path(data_path).expanduser()
        candidates = [root, root / "FashionMNIST" / "raw"]
    else:
        root = DEFAULT_ROOT
        candidates = [SYSTEM_FASHION_MNIST, root / "FashionMNIST" / "raw"]

    files = None
    partial: tuple[Path, list[str]] | None = None
    for folder in candidates:
        found, missing = _find_idx_files(folder)
        if not missing:
            files = found
            break
        if found and partial is None:
            partial = (folder, missing)

    if files is None and download:
        import torchvision

        def fetch():
            torchvision.datasets.FashionMNIST(root=str(root), train=True, download=True)

        _download_torchvision("Fashion-MNIST", fetch, root)
        files, missing = _find_idx_files(root / "FashionMNIST" / "raw")
        if missing:
            raise UsageError(f"Fashion-MNIST download into {root} left no {missing[0]}; {_FMNIST_HINT}")

    if files is None:
        if partial is not None:
            folder, missing = partial
            raise UsageError(f"Fashion-MNIST in {folder} is incomplete: missing {', '.join(missing)} "
                             f"(plain or .gz); {_FMNIST_HINT}")
        if data_path is not None and not root.exists():
            raise UsageError(f"Fashion-MNIST data path {root} does not exist; {_FMNIST_HINT}")
        if data_path is not None and root.is_dir() and not any(root.iterdir()):
            raise UsageError(f"Fashion-MNIST data path {root} is empty; {_FMNIST_HINT}")
        looked = " and ".join(str(c) for c in candidates)
        raise UsageError(f"Fashion-MNIST idx files not found in {looked}; {_FMNIST_HINT}")

    def images(key):
        arr = read_idx(files[key], expect_magic=2051)
        if arr.shape[1:] != (28, 28):
            raise UsageError(f"{files[key]} holds {arr.shape[1]}x{arr.shape[2]} images, "
                             f"Fashion-MNIST's are 28x28")
        return arr

    def labels(key, n):
        arr = read_idx(files[key], expect_magic=2049)
        if len(arr) != n:
            raise UsageError(f"{files[key]} has {len(arr)} labels for {n} images; the files do not match")
        if len(arr) and int(arr.max()) >= 10:
            raise UsageError(f"{files[key]} has label {int(arr.max())}, Fashion-MNIST's are 0..9")
        return arr

    norm = Normalize.of("fashion-mnist")

    def build(prefix, aug):
        x = images(prefix + "_images")
        y = labels(prefix + "_labels", len(x))
        t = torch.from_numpy(np.array(x, dtype=np.uint8)).unsqueeze(1)  # a writable copy
        return InMemoryDataset(t, torch.from_numpy(y.astype(np.int64)), augment=aug,
                               classes=FASHION_MNIST_CLASSES, normalize=norm)

    # the padding: black normalised in float64 and rounded once, as it always was (this differs
    # from norm.fill() in the last bit; kept so that every batch stays what it was)
    fill = (0.0 - FASHION_MNIST_MEAN) / FASHION_MNIST_STD
    train = build("train", RandomCropFlip(28, 2, fill=fill) if augment else None)
    test = build("test", None)
    return train, test, _info("fashion-mnist", train, test)


# --------------------------------------------------------------------------- CIFAR-10

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                   "truck")
_CIFAR_FOLDER = "cifar-10-batches-py"
_CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR_TEST = ("test_batch",)
_CIFAR_HINT = ("pass --download to fetch it (about 170 MB), or --data-path to a folder holding "
               "cifar-10-batches-py/ from https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz")


class _SafeUnpickler(pickle.Unpickler):
    """Only what a CIFAR batch needs: numpy arrays, dicts, lists, str/bytes/ints."""

    _ALLOWED = {
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"), ("copyreg", "_reconstructor"), ("builtins", "object"),
    }

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"unexpected object {module}.{name}")


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            entry = _SafeUnpickler(f, encoding="latin1").load()
    except OSError as exc:
        raise UsageError(f"cannot read CIFAR-10 batch {path}: {_one_line(exc.strerror or exc)}") from None
    except Exception as exc:
        raise UsageError(f"{path} is not a CIFAR-10 python batch ({_one_line(exc)}); "
                         f"re-download cifar-10-python.tar.gz") from None
    if not isinstance(entry, dict):
        raise UsageError(f"{path} is not a CIFAR-10 python batch (no dict inside); re-download it")

    def get(key):
        for k in (key, key.encode()):
            if k in entry:
                return entry[k]
        return None

    data, labels = get("data"), get("labels")
    if data is None or labels is None:
        raise UsageError(f"{path} is not a CIFAR-10 python batch (no 'data'/'labels' entries); "
                         f"re-download it")
    data = np.asarray(data)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise UsageError(f"{path} has data of shape {data.shape} and type {data.dtype}; a CIFAR-10 "
                         f"batch holds uint8 rows of 3072 values")
    if len(labels) != len(data):
        raise UsageError(f"{path} has {len(labels)} labels for {len(data)} images")
    if len(labels) and (labels.min() < 0 or labels.max() >= 10):
        raise UsageError(f"{path} has labels outside 0..9")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def _cifar_folder(root: Path) -> Path | None:
    for folder in (root / _CIFAR_FOLDER, root):
        if (folder / "data_batch_1").is_file() or (folder / "test_batch").is_file():
            return folder
    return None


def _load_cifar10(data_path, download: bool, augment: bool, in_memory: bool | None = None):
    root = Path(data_path).expanduser() if data_path is not None else DEFAULT_ROOT
    folder = _cifar_folder(root) if root.is_dir() else None
    complete = folder is not None and all((folder / n).is_file() for n in _CIFAR_TRAIN + _CIFAR_TEST)
    if not complete and download:
        import torchvision

        def fetch():
            torchvision.datasets.CIFAR10(root=str(root), train=True, download=True)

        _download_torchvision("CIFAR-10", fetch, root)
        folder = _cifar_folder(root)
    if folder is None:
        if not root.exists():
            raise UsageError(f"CIFAR-10 data path {root} does not exist; {_CIFAR_HINT}")
        if root.is_dir() and not any(root.iterdir()):
            raise UsageError(f"CIFAR-10 data path {root} is empty; {_CIFAR_HINT}")
        raise UsageError(f"no CIFAR-10 python batches (cifar-10-batches-py/data_batch_1..5, test_batch) "
                         f"in {root}; {_CIFAR_HINT}")
    missing = [n for n in _CIFAR_TRAIN + _CIFAR_TEST if not (folder / n).is_file()]
    if missing:
        raise UsageError(f"CIFAR-10 in {folder} is incomplete: missing {', '.join(missing)}; {_CIFAR_HINT}")

    def read(names):
        parts = [_read_cifar_batch(folder / n) for n in names]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    x_tr, y_tr = read(_CIFAR_TRAIN)
    x_te, y_te = read(_CIFAR_TEST)
    spec = SPECS["cifar10"]

    if in_memory:
        # uint8 NCHW (50,000 train images: 150 MB); crop, flip and normalisation run batched
        norm = Normalize.of("cifar10")

        def tensors(x, y, aug):
            t = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
            return InMemoryDataset(t, torch.from_numpy(y), augment=aug, classes=CIFAR10_CLASSES,
                                   normalize=norm)

        train = tensors(x_tr, y_tr, RandomCropFlip(32, 4, fill=norm.fill()) if augment else None)
        test = tensors(x_te, y_te, None)
        return train, test, _info("cifar10", train, test)

    from torchvision import transforms as T

    norm = [T.ToTensor(), T.Normalize(spec.mean, spec.std)]
    train_tf = T.Compose(([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()] if augment else []) + norm)
    test_tf = T.Compose(norm)
    train = TransformDataset(_ArrayImages(x_tr, y_tr, CIFAR10_CLASSES), train_tf)
    test = TransformDataset(_ArrayImages(x_te, y_te, CIFAR10_CLASSES), test_tf)
    return train, test, _info("cifar10", train, test)


# --------------------------------------------------------------------------- ImageNet

_IMAGENET_HINT = ("ImageNet cannot be downloaded automatically: get ILSVRC2012 from image-net.org and "
                  "pass --data-path to a folder with train/<class>/*.JPEG and val/<class>/*.JPEG")


def _read_image(path: str):
    """ImageFolder's loader, with a one-line error naming the file when it is not a readable image."""
    from PIL import Image

    try:
        with open(path, "rb") as f:
            return Image.open(f).convert("RGB")
    except (OSError, ValueError, SyntaxError) as exc:  # PIL.UnidentifiedImageError is an OSError
        raise UsageError(f"cannot read image {path} ({_one_line(exc)[:100]}); remove or replace it") from None


def _image_folder(path: Path, split: str):
    from torchvision.datasets import ImageFolder

    if not path.is_dir():
        raise UsageError(f"ImageNet folder {path.parent} has no {split}/ subfolder; {_IMAGENET_HINT}")
    try:
        return ImageFolder(str(path), loader=_read_image)
    except (FileNotFoundError, OSError) as exc:
        raise UsageError(f"ImageNet {split} folder {path} has no usable images ({_one_line(exc)}); "
                         f"{_IMAGENET_HINT}") from None


def _load_imagenet(data_path, download: bool, augment: bool, in_memory: bool | None = None):
    if download:
        raise UsageError(_IMAGENET_HINT)
    if data_path is None:
        raise UsageError(f"ImageNet needs --data-path; {_IMAGENET_HINT}")
    root = Path(data_path).expanduser()
    if not root.exists():
        raise UsageError(f"ImageNet data path {root} does not exist; {_IMAGENET_HINT}")
    if not root.is_dir() or not any(root.iterdir()):
        raise UsageError(f"ImageNet data path {root} is empty; {_IMAGENET_HINT}")
    train_base = _image_folder(root / "train", "train")
    val_base = _image_folder(root / "val", "val")
    if train_base.classes != val_base.classes:
        only = sorted(set(train_base.classes) ^ set(val_base.classes))
        raise UsageError(f"ImageNet train/ and val/ in {root} have different class folders "
                         f"(e.g. {only[0] if only else 'in another order'}); both need the same classes")

    from torchvision import transforms as T

    norm = [T.ToTensor(), T.Normalize(SPECS["imagenet"].mean, SPECS["imagenet"].std)]
    if augment:
        train_tf = T.Compose([T.RandomResizedCrop(224, scale=(0.08, 1.25)), T.RandomHorizontalFlip()] + norm)
    else:
        train_tf = T.Compose([T.Resize(256), T.CenterCrop(224)] + norm)
    val_tf = T.Compose([T.Resize(256), T.CenterCrop(224)] + norm)
    train = TransformDataset(train_base, train_tf)
    test = TransformDataset(val_base, val_tf)
    return train, test, _info("imagenet", train, test, num_classes=len(train_base.classes))
