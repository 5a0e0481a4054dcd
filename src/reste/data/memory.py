"""Data sets held in memory as uint8 tensors, and their batches: gathered, normalised, cropped
and flipped where the tensors are (the CPU or the training GPU), all batched.

Digits, Fashion-MNIST and CIFAR-10 (``in_memory=True``) are :class:`InMemoryDataset` s of
uint8 pixels, a quarter of the memory of float32. :class:`TensorLoader` serves them:
it takes the order of each epoch from :mod:`reste.data.sampling`, gathers a batch on the
tensors' device, turns it into float32 there (:class:`Normalize`) and augments it there
(:class:`RandomCropFlip`), with the random offsets drawn on the CPU, so a batch on a GPU
is the very batch the CPU gives.
"""

from __future__ import annotations

import warnings
from typing import Callable, Iterator, Sequence

import torch
from torch.utils.data import Dataset

from ..datasets import get_spec
from ..errors import UsageError
from .sampling import epoch_order, seeded_generator, shard, shard_size

__all__ = ["Normalize", "RandomCropFlip", "InMemoryDataset", "TensorLoader"]


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


def _on_device(device: torch.device, top: torch.Tensor, left: torch.Tensor,
               flip: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The CPU-drawn offsets (and flips) where the images are: on a GPU in one copy from pinned memory
    that does not wait for the GPU (three plain copies made the CPU wait for the previous step)."""
    if top.device == device:
        return top, left, flip
    parts = [top, left] + ([flip.to(top.dtype)] if flip is not None else [])
    packed = torch.stack(parts)
    if device.type == "cuda":
        packed = packed.pin_memory()
    packed = packed.to(device, non_blocking=True)
    return packed[0], packed[1], (packed[2].bool() if flip is not None else None)


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
        self._fills: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}

    def __repr__(self) -> str:
        fill = (f"{self.fill:.4f}" if isinstance(self.fill, float)
                else "(" + ", ".join(f"{v:.4f}" for v in self.fill) + ")")
        return f"RandomCropFlip(size={self.size}, padding={self.padding}, fill={fill}, flip={self.flip})"

    def _fill_on(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """The per-channel fill as a (1, C, 1, 1) tensor where the images are (copied there once)."""
        if (device, dtype) not in self._fills:
            self._fills[device, dtype] = torch.tensor(self.fill, dtype=dtype).view(1, -1, 1, 1).to(device)
        return self._fills[device, dtype]

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
                padded.copy_(self._fill_on(x.device, x.dtype).expand_as(padded))
            padded[:, :, p:p + h, p:p + w] = x
        else:
            padded = x
        ph, pw = padded.shape[-2:]
        device = x.device
        top, left, flip = _on_device(device, top, left, flip)
        ar = torch.arange(s, device=device)
        rows = top[:, None] + ar  # (n, s)
        if flip is not None:
            cols = left[:, None] + torch.where(flip[:, None], ar.flip(0), ar)
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


_TOLD_UNSHARDED = [False]


def _warn_unsharded() -> None:
    """Warn, once per process, when a loader built for one process is read in a process group of several (a
    Lightning DDP run given loaders made before it started): each process then trains on the whole data set in
    the same order, the same batch N times over (review models #10). Lightning shards a torch DataLoader itself,
    not this loader."""
    import torch.distributed as dist

    if _TOLD_UNSHARDED[0] or not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return
    _TOLD_UNSHARDED[0] = True
    warnings.warn(f"reste's in-memory loader was built for one process but runs in a process group of "
                  f"{dist.get_world_size()}: each process reads the whole data set in the same order; build it "
                  "once the group is up, with make_loaders(..., distributed=True) (under Lightning: in "
                  "train_dataloader() or a LightningDataModule's setup())", UserWarning, stacklevel=3)


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
        self._drawn = (-1, 0)  # (epoch, batches drawn of it): what a Lightning checkpoint keeps
        self._resume: tuple[int, int] | None = None  # a loaded state_dict's, until its epoch is drawn

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

    @property
    def sampler(self) -> "TensorLoader":
        """The loader itself, whose :meth:`set_epoch` Lightning calls at each epoch's start through
        ``loader.sampler.set_epoch`` (as for a DataLoader's DistributedSampler): the epoch it trains is then the
        epoch's batches, however often it iterated the loader before (a resumed fit draws what an uninterrupted one
        does)."""
        return self

    #: no batch sampler: the loader draws its batches itself. Lightning, seeing a ``sampler``, reads this of every
    #: evaluation loader (to warn of a shuffled one), and its validation, test and predict failed without it
    #: (review models #1)
    batch_sampler = None

    # -- sizes
    @property
    def num_samples(self) -> int:
        """Samples this rank sees per epoch (before ``drop_last``)."""
        return shard_size(len(self.labels), self.rank, self.world_size, self.pad)

    def __len__(self) -> int:
        m = self.num_samples
        return m // self.batch_size if self.drop_last else -(-m // self.batch_size)

    def indices(self, epoch: int | None = None) -> torch.Tensor:
        """The sample order (this rank's share) of an epoch."""
        epoch = self._epoch if epoch is None else int(epoch)
        order = epoch_order(len(self.labels), self.seed, epoch, self.shuffle)
        return shard(order, self.rank, self.world_size, self.pad)

    # -- Lightning's resume inside an epoch
    def state_dict(self) -> dict[str, int]:
        """Where the iteration stands: the epoch drawn last and how many of its batches were drawn (with the
        loader's seed and batch size). Lightning keeps this in its checkpoints and gives it back to
        :meth:`load_state_dict`, so a fit resumed inside an epoch trains that epoch's remaining batches, the ones an
        uninterrupted fit trains, and not its first ones again."""
        epoch, batches = self._resume if self._resume is not None else self._drawn
        return {"epoch": epoch, "batches": batches, "seed": self.seed, "batch_size": self.batch_size}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue from a :meth:`state_dict`: when its epoch is drawn next, its batches drawn before are drawn
        again and dropped (one generator augments the batches in turn), and the iteration goes on from there. A
        state of another seed or batch size would not give the same batches: it is left unused, with a warning."""
        if (state.get("seed"), state.get("batch_size")) != (self.seed, self.batch_size):
            warnings.warn(f"the checkpoint's in-memory loader drew batches of {state.get('batch_size')} with seed "
                          f"{state.get('seed')}, this one batches of {self.batch_size} with seed {self.seed}: the "
                          "resumed epoch draws its batches from its first again (Lightning trains as many as the "
                          "epoch had left); build the loader as before to continue where the checkpoint stopped",
                          UserWarning, stacklevel=2)
            self._resume = None
            return
        self._resume = (int(state["epoch"]), int(state["batches"]))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # A generator: the epoch is taken when the first batch is drawn, not when the iterator is made. Lightning
        # makes one it never reads (a check that the loader iterates), then the epoch's, then calls set_epoch: an
        # iterator that took its epoch at once gave epoch 0 the batches of epoch 1 (review models #8).
        epoch = self._epoch
        self._epoch = epoch + 1
        if self.world_size == 1 and self.shuffle:  # (a training loader: one process evaluating the whole test set
            _warn_unsharded()                     # in a group is meant, rev14)
        resume, self._resume = self._resume, None
        skip = resume[1] if resume is not None and resume[0] == epoch else 0
        order = self.indices(epoch)
        aug_gen = seeded_generator(self.seed, epoch, self.rank, 1) if self.augment is not None else None
        self._drawn = (epoch, 0)
        for i, batch in enumerate(self._batches(order, aug_gen)):
            self._drawn = (epoch, i + 1)
            if i >= skip:
                yield batch

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
