"""The order of the samples: a pure function of (seed, epoch), sharded across processes.

Epoch ``e`` of a run with seed ``s`` visits the training samples in the order
:func:`epoch_order` draws from a CPU generator seeded from ``(s, e)`` alone, so the
batches of an epoch depend neither on what ran before nor on the device: a resumed run
sees exactly the batches an uninterrupted one would. With several processes every
rank draws the same order and :func:`shard` gives each its share. A per-sample
augmentation (torchvision transforms, :class:`TransformDataset`) runs with torch's,
Python's and NumPy's global generators seeded from ``(seed, epoch, index)``.
"""

from __future__ import annotations

import contextlib
import random
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler, get_worker_info

__all__ = ["mix_seed", "seeded_generator", "epoch_order", "shard", "shard_size", "TransformDataset", "SeededItems",
           "EpochSampler", "ShardSampler"]

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


def seeded_generator(*values: int) -> torch.Generator:
    """A CPU generator seeded from ``mix_seed(*values)``."""
    g = torch.Generator()
    g.manual_seed(mix_seed(*values))
    return g


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool = True) -> torch.Tensor:
    """The order of ``n`` samples in epoch ``epoch``: a permutation drawn from ``(seed, epoch)``,
    or ``0..n-1`` without ``shuffle``."""
    if not shuffle:
        return torch.arange(n)
    return torch.randperm(n, generator=seeded_generator(seed, epoch))


def shard(order: torch.Tensor, rank: int, world_size: int, pad: bool = True) -> torch.Tensor:
    """Rank ``rank``'s share of ``order``: every ``world_size``-th index from ``rank``.

    With ``pad`` the order is first padded from its start to a multiple of ``world_size``
    (like ``DistributedSampler``), so every rank gets as many samples.
    """
    if world_size <= 1:
        return order
    n = len(order)
    if pad and n % world_size:
        extra = world_size - n % world_size
        order = torch.cat([order, order.repeat(-(-extra // n))[:extra]])
    return order[rank::world_size]


def shard_size(n: int, rank: int, world_size: int, pad: bool = True) -> int:
    """The length of :func:`shard` of ``n`` samples."""
    if world_size <= 1:
        return n
    if pad:
        return -(-n // world_size)
    return len(range(rank, n, world_size))


@contextlib.contextmanager
def _kept_globals() -> Iterator[None]:
    """Torch's, Python's and NumPy's global generators put back as they were after the block, in the main process.
    A DataLoader worker's generators serve its samples alone: it skips the saving and putting back, which for
    NumPy's state costs about 70-150 us (review diff11 #2)."""
    saved = None if get_worker_info() is not None else (torch.get_rng_state(), random.getstate(),
                                                        np.random.get_state())
    try:
        yield
    finally:
        if saved is not None:
            torch.set_rng_state(saved[0])
            random.setstate(saved[1])
            np.random.set_state(saved[2])


def _seed_globals(*values: int) -> None:
    """Seed torch's, Python's and NumPy's global generators from ``values`` (torch's from ``mix_seed(*values)``, as
    it always was; the others from sub-seeds derived from that)."""
    seed = mix_seed(*values)
    torch.default_generator.manual_seed(seed)
    random.seed(mix_seed(seed, 1))
    np.random.seed(mix_seed(seed, 2) >> 31)  # (NumPy's legacy seed has 32 bits)


@contextlib.contextmanager
def _seeded_globals(*values: int) -> Iterator[None]:
    """The global generators seeded from ``values`` in the block (:func:`_seed_globals`), as they were after it
    (:func:`_kept_globals`)."""
    with _kept_globals():
        _seed_globals(*values)
        yield


class TransformDataset(Dataset):
    """Applies a (torchvision) transform to ``(image, label)`` samples of ``base``.

    Indexed with an ``int`` it behaves like any data set. Indexed with a key
    ``(seed, epoch, index)`` (what the train sampler of :func:`make_loaders` yields)
    the transform runs with the global generators seeded from that key and
    restored afterwards: torch's (torchvision's random crops and flips), Python's ``random``
    (torchvision's ``RandomChoice``, ``RandomOrder``) and NumPy's legacy ``numpy.random``. So the
    augmentation of each sample depends on ``(seed, epoch, index)`` only: not on the number
    of workers, the batch boundaries, or what ran before. (A transform drawing from a
    generator of its own, such as ``numpy.random.default_rng()``, is beyond it.)
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
                with _seeded_globals(seed, epoch, index):
                    image = self.transform(image)
            return image, label
        image, label = self.base[key]
        if self.transform is not None:
            image = self.transform(image)
        return image, label

    def __getitems__(self, keys: list) -> list:
        """A batch's samples (what a DataLoader asks for where a data set has this), each transformed as
        :meth:`__getitem__` transforms it, the global generators kept once a batch, not once a sample: in the main
        process (``workers=0``) saving and putting back torch's, Python's and NumPy's states cost about 100 us a
        sample, 1.6x the CIFAR-10 train pipeline's time (``benchmarks/train_step.py --loader``)."""
        if self.transform is None or not all(isinstance(key, tuple) for key in keys):
            return [self[key] for key in keys]  # (plain indices: the generators run on, as they would without this)
        with _kept_globals():
            items = []
            for seed, epoch, index in keys:
                image, label = self.base[index]
                _seed_globals(seed, epoch, index)
                items.append((self.transform(image), label))
            return items


class SeededItems(Dataset):
    """A data set of your own (a plugin's) whose items draw their augmentation themselves, from the global
    generators (a torchvision ``ImageFolder`` given a ``RandomCrop``, a ``__getitem__`` calling ``torch.rand``).

    Indexed with a key ``(seed, epoch, index)`` it reads ``base[index]`` with torch's, Python's and NumPy's global
    generators seeded from that key, as :class:`TransformDataset` runs its transform: so each sample's augmentation
    depends on the key alone, and a resumed run, or one with another number of workers, draws the same batches as
    an uninterrupted one (review exact1 #1). Indexed with an ``int`` it is ``base``."""

    def __init__(self, base):
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getattr__(self, name: str):  # the base's own attributes (classes, targets), as the loader's data set
        # not "base" (unpickling: not set yet), nor a protocol's dunder: the base's __deepcopy__ or __getstate__
        # would copy or pickle the base in its place (review diff27 #2)
        if name == "base" or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.base, name)

    def __getitem__(self, key):
        if isinstance(key, tuple):
            seed, epoch, index = key
            with _seeded_globals(seed, epoch, index):
                return self.base[index]
        return self.base[key]

    def __getitems__(self, keys: list) -> list:
        """A batch's items (what a DataLoader asks for where a data set has this), each read as
        :meth:`__getitem__` reads it, the generators kept once a batch, not once an item (review diff26,
        suggestion 1: about 80 us an item in the main process)."""
        if not all(isinstance(key, tuple) for key in keys):  # plain indices: the generators run on, as they would
            return [self[key] for key in keys]  # without this (review diff27 #1: kept, each batch drew the same)
        with _kept_globals():
            items = []
            for key in keys:
                _seed_globals(*key)
                items.append(self.base[key[2]])
            return items


class EpochSampler(Sampler):
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
        self.skip = 0  # samples the next iteration leaves out at its start (a resume inside an epoch)

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
            order = epoch_order(self.n, self.seed, epoch).tolist()
        order, self.skip = order[self.skip:], 0
        if self.tag:
            seed = self.seed
            return iter([(seed, epoch, i) for i in order])
        return iter(order)


class ShardSampler(Sampler):
    """Fixed order; with several ranks, rank ``r`` takes indices r, r+W, ... (no padding)."""

    def __init__(self, n: int, rank: int = 0, world_size: int = 1):
        self.n, self.rank, self.world_size = int(n), int(rank), int(world_size)

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world_size))

    def __iter__(self):
        return iter(range(self.rank, self.n, self.world_size))

    def set_epoch(self, epoch: int) -> None:  # fixed order: nothing to do
        pass
