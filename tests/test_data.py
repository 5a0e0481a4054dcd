"""Data sets and loaders: formats, normalisation, reproducibility, resume, errors."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
import urllib.error
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

from reste import data as D
from reste.data import formats
from reste.data import (
    DATASETS,
    DatasetInfo,
    RandomCropFlip,
    TensorLoader,
    load_datasets,
    make_loaders,
    read_idx,
)
from reste.errors import UsageError

MEAN = torch.tensor(D.IMAGENET_MEAN).view(3, 1, 1)
STD = torch.tensor(D.IMAGENET_STD).view(3, 1, 1)


def usage_error(fn, *args, match=None, **kwargs) -> str:
    """Call fn, expect a UsageError with a one-line message, return the message."""
    with pytest.raises(UsageError) as info:
        fn(*args, **kwargs)
    msg = str(info.value)
    assert msg and "\n" not in msg and "\r" not in msg, repr(msg)
    if match is not None:
        assert match in msg, msg
    return msg


def batches(loader):
    return [(x.clone(), y.clone()) for x, y in loader]


def same_batches(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(x1, x2) and torch.equal(y1, y2)
                                    for (x1, y1), (x2, y2) in zip(a, b))


# --------------------------------------------------------------------------- digits


def test_digits_split_sizes_stratified_and_normalised():
    train, test, info = load_datasets("digits")
    assert info == DatasetInfo("digits", 10, (1, 8, 8), 1437, 360, tuple("0123456789"))
    assert len(train) == 1437 and len(test) == 360
    assert train.images.shape == (1437, 1, 8, 8) and train.images.dtype == torch.float32
    assert test.labels.dtype == torch.int64
    # stratified: each class has ~1/10 of the test set, in proportion to its full count
    counts = torch.bincount(test.labels, minlength=10)
    full = torch.bincount(torch.cat([train.labels, test.labels]), minlength=10)
    assert torch.all((counts.float() - full.float() * 360 / 1797).abs() <= 1)
    # normalised with the train statistics
    assert abs(train.images.mean().item()) < 1e-4
    assert abs(train.images.std().item() - 1) < 1e-2
    assert train.augment is None


def test_digits_is_deterministic():
    a_train, a_test, _ = load_datasets("digits")
    b_train, b_test, _ = load_datasets("digits")
    assert torch.equal(a_train.images, b_train.images) and torch.equal(a_train.labels, b_train.labels)
    assert torch.equal(a_test.images, b_test.images) and torch.equal(a_test.labels, b_test.labels)


def test_digits_loaders_yield_float_nchw_and_int64():
    train, test, _ = load_datasets("digits")
    tr, te = make_loaders(train, test, batch_size=100, eval_batch_size=128, seed=1)
    assert isinstance(tr, TensorLoader) and len(tr) == 15 and len(te) == 3
    x, y = next(iter(tr))
    assert x.shape == (100, 1, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
    # the test loader is the test set in order
    xs, ys = zip(*te)
    assert torch.equal(torch.cat(xs), test.images) and torch.equal(torch.cat(ys), test.labels)
    assert same_batches(batches(te), batches(te))


# --------------------------------------------------------------------------- TensorLoader


def toy_loader(seed=0, augment=True, **kw):
    n = 50
    images = torch.arange(n * 16, dtype=torch.float32).view(n, 1, 4, 4)
    labels = torch.arange(n) % 10
    aug = RandomCropFlip(4, 1, fill=-1.0) if augment else None
    return TensorLoader(images, labels, batch_size=8, shuffle=True, seed=seed, augment=aug, **kw)


def test_tensor_loader_reproducible_from_seed():
    a, b, c = toy_loader(seed=3), toy_loader(seed=3), toy_loader(seed=4)
    first = batches(a)
    assert same_batches(first, batches(b))
    assert not same_batches(first, batches(c))
    # each epoch visits every sample once
    labels = torch.cat([y for _, y in first])
    assert sorted(labels.tolist()) == sorted((torch.arange(50) % 10).tolist())
    assert [len(x) for x, _ in first] == [8] * 6 + [2]


def test_tensor_loader_set_epoch_is_independent_of_history():
    ran = toy_loader(seed=7)
    for epoch in range(3):
        ran.set_epoch(epoch)
        for _ in ran:
            pass
    ran.set_epoch(3)
    fresh = toy_loader(seed=7)
    fresh.set_epoch(3)
    assert same_batches(batches(ran), batches(fresh))
    # without set_epoch the loader moves to the next epoch by itself
    auto = toy_loader(seed=7)
    epochs = [batches(auto) for _ in range(3)]
    assert auto.epoch == 3
    assert not same_batches(epochs[0], epochs[1])
    resumed = toy_loader(seed=7)
    resumed.set_epoch(2)
    assert same_batches(epochs[2], batches(resumed))


def test_tensor_loader_drop_last_and_shards():
    assert len(toy_loader(drop_last=True)) == 6
    assert [len(x) for x, _ in toy_loader(drop_last=True)] == [8] * 6
    # two ranks: same permutation, disjoint halves covering everything
    r0 = toy_loader(augment=False, rank=0, world_size=2)
    r1 = toy_loader(augment=False, rank=1, world_size=2)
    assert r0.num_samples == r1.num_samples == 25
    seen = torch.cat([y for _, y in r0] + [y for _, y in r1])
    assert len(seen) == 50
    idx = torch.cat([r0.indices(0), r1.indices(0)])
    assert sorted(idx.tolist()) == list(range(50))


@pytest.mark.parametrize("n, world", [(50, 2), (51, 2), (7, 3), (2, 3)])
def test_a_shards_length_and_a_loaders_are_the_batches_it_gives(n, world):
    """(review tests2 #6) Only a set that divides by the ranks was tested: `n // world_size` passed, and a loader's
    len() (the steps of an epoch, its checkpoints' step count) then disagreed with the batches it gave."""
    from reste.data.sampling import shard, shard_size

    for pad in (True, False):
        for rank in range(world):
            assert shard_size(n, rank, world, pad) == len(shard(torch.arange(n), rank, world, pad)), (pad, rank)
    images, labels = torch.zeros(n, 1, 2, 2), torch.arange(n)
    for rank in range(world):
        loader = TensorLoader(images, labels, batch_size=2, shuffle=True, rank=rank, world_size=world)
        assert len(loader) == len(list(loader)) == -(-shard_size(n, rank, world) // 2)


def test_the_ranks_draw_their_own_crops_and_flips():
    """(review tests2 #5) Every rank's augmentation seeded as rank 0's passed: the k-th image of each rank then got
    the same crop and flip. Each image's pixels are its own index, so a batch tells its crops apart from its order."""
    first = [next(iter(toy_loader(seed=5, rank=r, world_size=2))) for r in (0, 1)]
    plain = [next(iter(toy_loader(seed=5, augment=False, rank=r, world_size=2))) for r in (0, 1)]
    # where each output pixel came from: its value less the image's first pixel (-1 where the padding shows)
    where = [torch.where(x >= 0, x - p[:, :, :1, :1], -1.0) for (x, _), (p, _) in zip(first, plain)]
    assert not torch.equal(where[0], where[1])
    assert all(torch.equal(y, py) for (_, y), (_, py) in zip(first, plain))  # (the same images: only the crops differ)


def test_an_unshuffled_loader_hands_out_copies_not_the_sets_own_tensors():
    """(review tests2 #4) Without its clone, an evaluation loader gave views of the stored images: a caller's
    in-place op on a batch rewrote the test set for every later evaluation."""
    images, labels = torch.arange(32, dtype=torch.float32).view(8, 1, 2, 2), torch.arange(8)
    kept = (images.clone(), labels.clone())
    loader = TensorLoader(images, labels, batch_size=3)
    for x, y in loader:
        x.mul_(0)
        y.mul_(0)
    assert torch.equal(images, kept[0]) and torch.equal(labels, kept[1])
    assert torch.equal(torch.cat([x for x, _ in loader]), kept[0])


def test_random_crop_flip_is_a_padded_crop():
    x = torch.randn(16, 3, 6, 6)
    out = RandomCropFlip(6, 2, fill=-5.0)(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    padded = torch.full((16, 3, 10, 10), -5.0)
    padded[:, :, 2:8, 2:8] = x
    for i in range(16):
        crops = [padded[i, :, r:r + 6, c:c + 6] for r in range(5) for c in range(5)]
        assert any(torch.equal(out[i], cr) or torch.equal(out[i], cr.flip(-1)) for cr in crops)
    assert torch.equal(RandomCropFlip(6, 0, flip=False)(x, torch.Generator()), x)


# --------------------------------------------------------------------------- Fashion-MNIST


def idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    ndim = array.ndim
    magic = magic if magic is not None else (0x08 << 8) | ndim
    return struct.pack(">I", magic) + struct.pack(f">{ndim}I", *array.shape) + array.astype(np.uint8).tobytes()


def write_fashion(folder: Path, n_train=50, n_test=20, gz=True, seed=0) -> dict:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": (np.arange(n_train) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(n_test) % 10).astype(np.uint8),
    }
    arrays["t10k-images-idx3-ubyte"][0] = 0
    arrays["t10k-images-idx3-ubyte"][1] = 255
    for name, arr in arrays.items():
        raw = idx_bytes(arr)
        if gz:
            (folder / (name + ".gz")).write_bytes(gzip.compress(raw))
        else:
            (folder / name).write_bytes(raw)
    return arrays


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_from_idx_files(tmp_path, gz):
    arrays = write_fashion(tmp_path, gz=gz)
    train, test, info = load_datasets("fashion-mnist", tmp_path, augment=True)
    assert info == DatasetInfo("fashion-mnist", 10, (1, 28, 28), 50, 20, D.FASHION_MNIST_CLASSES)
    assert train.images.shape == (50, 1, 28, 28) and train.images.dtype == torch.float32
    assert torch.equal(train.labels, torch.arange(50) % 10) and train.labels.dtype == torch.int64
    lo = (0 - D.FASHION_MNIST_MEAN) / D.FASHION_MNIST_STD
    hi = (1 - D.FASHION_MNIST_MEAN) / D.FASHION_MNIST_STD
    assert torch.allclose(test.images[0], torch.full((1, 28, 28), lo))
    assert torch.allclose(test.images[1], torch.full((1, 28, 28), hi))
    expect = (arrays["train-images-idx3-ubyte"][5] / 255.0 - 0.2860) / 0.3530
    assert np.allclose(train.images[5, 0].numpy(), expect, atol=1e-5)
    assert isinstance(train.augment, RandomCropFlip) and test.augment is None

    tr, te = make_loaders(train, test, batch_size=16, eval_batch_size=8, seed=5)
    x, y = next(iter(tr))
    assert x.shape == (16, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    tr2, _ = make_loaders(train, test, batch_size=16, eval_batch_size=8, seed=5)
    tr.set_epoch(4)
    tr2.set_epoch(4)
    assert same_batches(batches(tr), batches(tr2))
    xs = torch.cat([x for x, _ in te])
    assert torch.equal(xs, test.images)  # no augmentation, fixed order

    plain, _, _ = load_datasets("fashion-mnist", tmp_path, augment=False)
    assert plain.augment is None
    recipe, _, _ = load_datasets("fashion-mnist", tmp_path)  # (review docs #4) the recipe's: no augmentation, as
    assert recipe.augment is None  # `reste train --dataset fashion-mnist` trains on


def test_fashion_mnist_torchvision_layout(tmp_path):
    write_fashion(tmp_path / "FashionMNIST" / "raw", gz=False)
    _, _, info = load_datasets("fashion-mnist", tmp_path)
    assert (info.train_size, info.test_size) == (50, 20)


def test_fashion_mnist_default_locations(tmp_path, monkeypatch):
    write_fashion(tmp_path / "system", n_train=30, n_test=10)
    monkeypatch.setattr(formats, "SYSTEM_FASHION_MNIST", tmp_path / "system")
    monkeypatch.setattr(formats, "DEFAULT_ROOT", tmp_path / "nowhere")
    _, _, info = load_datasets("fashion-mnist")
    assert (info.train_size, info.test_size) == (30, 10)
    # (review mut8 #5) the system's copy first, then ./data's (the README's order): both there, the system's is read
    write_fashion(tmp_path / "here" / "FashionMNIST" / "raw", n_train=50, n_test=20)
    monkeypatch.setattr(formats, "DEFAULT_ROOT", tmp_path / "here")
    _, _, info = load_datasets("fashion-mnist")
    assert (info.train_size, info.test_size) == (30, 10)
    monkeypatch.setattr(formats, "SYSTEM_FASHION_MNIST", tmp_path / "absent")
    _, _, info = load_datasets("fashion-mnist")  # then ./data's
    assert (info.train_size, info.test_size) == (50, 20)
    monkeypatch.setattr(formats, "DEFAULT_ROOT", tmp_path / "nowhere")
    msg = usage_error(load_datasets, "fashion-mnist")
    assert str(tmp_path / "absent") in msg and "dataset-fashion-mnist" in msg and "data_path " in msg


@pytest.mark.skipif(not D.SYSTEM_FASHION_MNIST.is_dir(), reason="Debian's dataset-fashion-mnist not installed")
def test_real_fashion_mnist_from_debian_package():
    train, test, info = load_datasets("fashion-mnist")
    assert info == DatasetInfo("fashion-mnist", 10, (1, 28, 28), 60000, 10000,
                               D.FASHION_MNIST_CLASSES)
    assert torch.equal(torch.bincount(test.labels), torch.full((10,), 1000))
    assert abs(train.images.mean().item()) < 0.01 and abs(train.images.std().item() - 1) < 0.01


@pytest.mark.parametrize("code, dtype", [(0x08, "u1"), (0x09, "i1"), (0x0B, ">i2"), (0x0C, ">i4"), (0x0D, ">f4"),
                                         (0x0E, ">f8")])
def test_read_idx_reads_each_type_of_the_format(tmp_path, code, dtype):
    """(review mut8 #6) idx files hold big-endian values of six types; only unsigned bytes were read in the tests."""
    values = np.array([[1, 100], [-5, 70]] if dtype != "u1" else [[1, 100], [250, 70]]).astype(dtype)
    if dtype == ">i4":
        values[1, 1] = 70000
    path = tmp_path / "values"
    path.write_bytes(struct.pack(">I", (code << 8) | 2) + struct.pack(">2I", 2, 2) + values.tobytes())
    got = read_idx(path)
    assert got.dtype == np.dtype(dtype) and got.tolist() == values.tolist()


def test_read_idx_validates(tmp_path):
    good = tmp_path / "good"
    good.write_bytes(idx_bytes(np.zeros((3, 2, 2), np.uint8)))
    assert read_idx(good).shape == (3, 2, 2)
    bad_magic = tmp_path / "bad_magic"
    bad_magic.write_bytes(idx_bytes(np.zeros((3, 2, 2), np.uint8), magic=0x12345678))
    usage_error(read_idx, bad_magic, match="bad magic number")
    usage_error(read_idx, good, expect_magic=2049, match="holds images (idx magic 2051), not labels")  # (3 dims)
    usage_error(read_idx, bad_magic, expect_magic=2049, match="bad magic number 305419896 (expected 2049)")
    short = tmp_path / "short"
    short.write_bytes(idx_bytes(np.zeros((3, 2, 2), np.uint8))[:-1])
    usage_error(read_idx, short, match="truncated")
    badgz = tmp_path / "bad.gz"
    for broken in (b"\x1f\x8b" + b"junk" * 5, gzip.compress(b"x" * 100)[:8]):  # a bad and a cut gzip header
        badgz.write_bytes(broken)
        usage_error(read_idx, badgz, match="gzip")
    noise = np.random.default_rng(0).integers(0, 256, (3, 20, 20), dtype=np.uint8)
    cut = gzip.compress(idx_bytes(noise))
    badgz.write_bytes(cut[: len(cut) // 2])  # a whole idx header, then the data ends mid-stream
    usage_error(read_idx, badgz, match="is not a valid gzip file")
    usage_error(read_idx, tmp_path / "missing", match="cannot read")
    wraps = tmp_path / "wraps"  # dimensions whose int64 product wraps to 0, and no data
    wraps.write_bytes(struct.pack(">BBBB3I", 0, 0, 8, 3, 2 ** 22, 2 ** 21, 2 ** 21))
    usage_error(read_idx, wraps, match="holds 0 data bytes but its header")


def test_a_gzip_idx_is_inflated_no_further_than_its_header_says(tmp_path):
    """A gzip idx was inflated whole before its header was compared with its size: 1 MB became 2 GB (security
    review 2, finding 7a). Now what its header asks and one byte more are inflated, and a header asking for more
    than the file holds allocates no more than the file holds."""
    import tracemalloc

    bomb = tmp_path / "train-images-idx3-ubyte.gz"
    bomb.write_bytes(gzip.compress(struct.pack(">BBBB3I", 0, 0, 8, 3, 1, 28, 28) + bytes(8 << 20)))
    assert bomb.stat().st_size < 100_000  # 8 MB of pixels for a header that needs 784
    tracemalloc.start()
    try:
        usage_error(read_idx, bomb, expect_magic=2051,
                    match="holds more than 784 data bytes but its header (1, 28, 28) needs 784; the file is truncated")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, peak
    huge = tmp_path / "huge.gz"  # a header of 2**64 bytes over 3 bytes of data: refused before any is inflated
    huge.write_bytes(gzip.compress(struct.pack(">BBBB3I", 0, 0, 8, 3, 2 ** 22, 2 ** 21, 2 ** 21) + bytes(3)))
    usage_error(read_idx, huge, match=f"header (4194304, 2097152, 2097152) asks for {2 ** 64} bytes, more than the "
                                      f"{2 << 30} reste inflates from a .gz idx file; gunzip it first")
    plain = tmp_path / "huge"  # uncompressed, its size is checked against the header first, as before
    plain.write_bytes(gzip.decompress(huge.read_bytes()))
    usage_error(read_idx, plain, match=f"holds 3 data bytes but its header (4194304, 2097152, 2097152) needs {2 ** 64}")
    good = tmp_path / "good.gz"
    good.write_bytes(gzip.compress(idx_bytes(np.arange(24, dtype=np.uint8).reshape(2, 3, 4))))
    assert read_idx(good).tolist() == np.arange(24).reshape(2, 3, 4).tolist()


def test_fashion_mnist_errors(tmp_path, monkeypatch):
    usage_error(load_datasets, "fashion-mnist", tmp_path / "nope", match="does not exist")
    (tmp_path / "empty").mkdir()
    usage_error(load_datasets, "fashion-mnist", tmp_path / "empty", match="is empty")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "readme.txt").write_text("hi")
    usage_error(load_datasets, "fashion-mnist", tmp_path / "other", match="not found")

    partial = tmp_path / "partial"
    write_fashion(partial)
    (partial / "t10k-labels-idx1-ubyte.gz").unlink()
    usage_error(load_datasets, "fashion-mnist", partial, match="missing t10k-labels-idx1-ubyte")

    swapped = tmp_path / "swapped"
    write_fashion(swapped, gz=False)
    labels = (swapped / "train-labels-idx1-ubyte").read_bytes()
    (swapped / "train-images-idx3-ubyte").write_bytes(labels)
    # (review formats1, suggestion 2) said what the file holds and what to do
    usage_error(load_datasets, "fashion-mnist", swapped, match="holds labels (idx magic 2049), not images: the "
                                                                "images and labels files are swapped or misnamed")

    mismatch = tmp_path / "mismatch"
    write_fashion(mismatch, gz=False)
    (mismatch / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(7, np.uint8)))
    usage_error(load_datasets, "fashion-mnist", mismatch, match="7 labels for 20 images")

    ten = tmp_path / "ten"  # a label of 10, the first out of range (review mut4 #3: an IndexError mid-training)
    write_fashion(ten, gz=False)
    labels = read_idx(ten / "train-labels-idx1-ubyte").copy()
    labels[3] = 10
    (ten / "train-labels-idx1-ubyte").write_bytes(idx_bytes(labels))
    usage_error(load_datasets, "fashion-mnist", ten, match="train-labels-idx1-ubyte has label 10, Fashion-MNIST's are "
                                                          "0..9")
    # (review mut8 #2) images of another size: the file named, not the model blamed for its input
    large = tmp_path / "large"
    write_fashion(large, gz=False)
    (large / "train-images-idx3-ubyte").write_bytes(idx_bytes(np.zeros((50, 32, 32), np.uint8)))
    usage_error(load_datasets, "fashion-mnist", large, match="train-images-idx3-ubyte holds 32x32 images, "
                                                            "Fashion-MNIST's are 28x28")


def test_fashion_mnist_offline_download(tmp_path, monkeypatch):
    import torchvision

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution\nmore")

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", offline)
    msg = usage_error(load_datasets, "fashion-mnist", tmp_path / "dl", download=True)
    assert "offline" in msg and "data_path" in msg


# --------------------------------------------------------------------------- CIFAR-10


def write_cifar(root: Path, per_batch=4, n_test=6, seed=0) -> Path:
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for i in range(1, 6):
        entry = {b"batch_label": f"training batch {i} of 5".encode(),
                 b"labels": [int(v) for v in rng.integers(0, 10, per_batch)],
                 b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                 b"filenames": [b"x.png"] * per_batch}
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(entry, protocol=2))
    data = rng.integers(0, 256, (n_test, 3072), dtype=np.uint8)
    data[0] = 255
    data[1, :1024] = 255  # red plane only
    data[1, 1024:] = 0
    entry = {b"batch_label": b"testing batch 1 of 1", b"labels": list(range(n_test)), b"data": data,
             b"filenames": [b"y.png"] * n_test}
    (folder / "test_batch").write_bytes(pickle.dumps(entry, protocol=2))
    meta = {b"label_names": [c.encode() for c in D.CIFAR10_CLASSES], b"num_cases_per_batch": per_batch,
            b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return folder


def test_cifar10_from_pickle_batches(tmp_path):
    folder = write_cifar(tmp_path)
    train, test, info = load_datasets("cifar10", tmp_path)
    assert info == DatasetInfo("cifar10", 10, (3, 32, 32), 20, 6, D.CIFAR10_CLASSES)
    x, y = test[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert torch.allclose(x, ((1 - MEAN) / STD).expand(3, 32, 32), atol=1e-6)
    red, _ = test[1]
    assert torch.allclose(red[0], torch.full((32, 32), (1 - 0.485) / 0.229), atol=1e-6)
    assert torch.allclose(red[1], torch.full((32, 32), -0.456 / 0.224), atol=1e-6)
    assert test.targets == list(range(6))
    # the folder itself works too
    _, _, info2 = load_datasets("cifar10", folder)
    assert info2 == info

    tr, te = make_loaders(train, test, batch_size=8, eval_batch_size=4, seed=2)
    xb, yb = next(iter(tr))
    assert xb.shape == (8, 3, 32, 32) and xb.dtype == torch.float32 and yb.dtype == torch.int64
    xs = torch.cat([x for x, _ in te])
    assert torch.equal(xs[0], x) and len(te) == 2
    assert same_batches(batches(te), batches(te))


def test_cifar10_loader_reproducible_and_resumable(tmp_path):
    write_cifar(tmp_path)
    train, test, _ = load_datasets("cifar10", tmp_path)

    def loader(seed):
        return make_loaders(train, test, batch_size=8, eval_batch_size=8, seed=seed)[0]

    ran = loader(1)
    history = []
    for epoch in range(3):
        ran.set_epoch(epoch)
        history.append(batches(ran))
    assert not same_batches(history[0], history[1])
    torch.manual_seed(123)  # the global generator must not matter
    ran.set_epoch(3)
    fresh = loader(1)
    fresh.set_epoch(3)
    assert same_batches(batches(ran), batches(fresh))
    assert not same_batches(batches(loader(1)), batches(loader(2)))
    # iterating does not disturb the global generator
    torch.manual_seed(0)
    before = torch.rand(3)
    torch.manual_seed(0)
    batches(loader(1))
    assert torch.equal(torch.rand(3), before)
    # a plain index still works (global RNG) and gives the train shape
    assert train[0][0].shape == (3, 32, 32)


def test_cifar10_workers_give_the_same_batches(tmp_path):
    write_cifar(tmp_path)
    train, test, _ = load_datasets("cifar10", tmp_path)
    single, _ = make_loaders(train, test, batch_size=8, eval_batch_size=8, seed=9, workers=0)
    multi, multi_test = make_loaders(train, test, batch_size=8, eval_batch_size=8, seed=9, workers=2)
    assert multi.persistent_workers and not multi_test.persistent_workers  # the test loader's sit idle otherwise
    single.set_epoch(5)
    multi.set_epoch(5)
    assert same_batches(batches(single), batches(multi))
    single.set_epoch(1)
    multi.set_epoch(1)
    assert same_batches(batches(single), batches(multi))
    del multi, multi_test


def test_loading_processes_ignore_the_stop_signals(tmp_path):
    """A cluster's SIGTERM (or SIGUSR1) reaches every process of the job, the loaders' workers too; the run
    catches it, checkpoints and shuts them down. A worker that died of it instead ("DataLoader worker ...
    killed by signal") failed the run and lost its epoch."""
    import os
    import signal
    import time

    write_cifar(tmp_path)
    train, test, _ = load_datasets("cifar10", tmp_path)
    loader, _ = make_loaders(train, test, batch_size=4, eval_batch_size=8, seed=9, workers=1)
    single, _ = make_loaders(train, test, batch_size=4, eval_batch_size=8, seed=9, workers=0)
    batches_seen = []
    it = iter(loader)
    batches_seen.append(next(it))
    for worker in it._workers:
        os.kill(worker.pid, signal.SIGTERM)
        os.kill(worker.pid, signal.SIGUSR1)
    time.sleep(0.3)
    batches_seen.extend(it)  # the rest of the epoch, from the same worker
    assert same_batches(batches_seen, batches(single))
    del it, loader


_LOADER_LEFT_ALIVE = """
import sys
from reste.data import load_datasets, make_loaders

def main(fail):
    train, test, _ = load_datasets("cifar10", sys.argv[1])
    loader, _ = make_loaders(train, test, batch_size=4, eval_batch_size=8, seed=9, workers=1)
    next(iter(loader))
    if fail:
        raise RuntimeError("a run's error: its traceback holds the loader")
    return loader

KEPT = main(sys.argv[2] == "fail")  # a loader kept in a global, its loading process alive
print("done")
"""


@pytest.mark.parametrize("how", ["global", "fail"])
def test_a_process_whose_loader_still_has_workers_exits(tmp_path, how):
    """Loading processes ignore the stop signals, multiprocessing's SIGTERM at exit too: Python then waited
    for them for ever when a loader was still alive at exit. reste shuts them down first."""
    import subprocess
    import sys

    write_cifar(tmp_path)
    script = tmp_path / "left_alive.py"
    script.write_text(_LOADER_LEFT_ALIVE)
    r = subprocess.run([sys.executable, str(script), str(tmp_path), how], capture_output=True, text=True,
                       timeout=120)  # a guard against the hang, not a speed check
    if how == "global":
        assert r.returncode == 0 and r.stdout.strip() == "done", r.stderr
    else:
        assert r.returncode == 1 and "a run's error" in r.stderr


_STUCK_WORKER = """
import sys, time
import torch
from reste.data.loaders import EpochDataLoader, _worker_init

class Stuck(torch.utils.data.Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        if i == 1:
            time.sleep(3600)  # a hung read
        return torch.zeros(1)

# torch waits for a worker to end twice, 5 s each, before it goes on (the terminate() between them is a stop
# signal, which a loading process ignores): the test asks only that Python ends
torch.utils.data._utils.MP_STATUS_CHECK_INTERVAL = 0.5
it = iter(EpochDataLoader(Stuck(), batch_size=1, num_workers=1, worker_init_fn=_worker_init))
next(it)
del it  # the run left its epoch early (a stop signal): the iterator is gone, its stuck worker is not
print("done")
"""


def test_a_stuck_loading_process_whose_iterator_is_gone_does_not_keep_python_alive(tmp_path):
    import subprocess
    import sys

    script = tmp_path / "stuck.py"
    script.write_text(_STUCK_WORKER)
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)  # a hang guard
    assert r.returncode == 0 and r.stdout.strip() == "done", r.stderr


class _StartsAProgram(torch.utils.data.Dataset):
    """Each item: whether a program the loading process starts still ends on SIGTERM (terminate())."""

    def __len__(self) -> int:
        return 2

    def __getitem__(self, i: int):
        import subprocess

        proc = subprocess.Popen(["sleep", "30"])
        proc.terminate()
        try:
            proc.wait(timeout=10)
            return torch.tensor(True)
        except subprocess.TimeoutExpired:
            proc.kill()
            return torch.tensor(False)


def test_a_program_a_loading_process_starts_keeps_its_sigterm():
    """The loading processes catch the stop signals with a handler that does nothing, not SIG_IGN, which a
    program they start (a decoder, say) would inherit: terminate() no longer stopped it."""
    from reste.data.loaders import EpochDataLoader, _worker_init

    loader = EpochDataLoader(_StartsAProgram(), batch_size=1, num_workers=1, worker_init_fn=_worker_init)
    assert [bool(b) for b in loader] == [True, True]


def test_cifar10_distributed_sampler(tmp_path):
    import torch.distributed as dist

    write_cifar(tmp_path / "data")
    train, test, _ = load_datasets("cifar10", tmp_path / "data")
    usage_error(make_loaders, train, test, batch_size=4, eval_batch_size=4, distributed=True,
                match="torch.distributed")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        tr, te = make_loaders(train, test, batch_size=4, eval_batch_size=4, seed=3, distributed=True)
        from torch.utils.data.distributed import DistributedSampler

        assert isinstance(tr.sampler.inner, DistributedSampler)
        tr.set_epoch(2)
        a = batches(tr)
        assert tr.sampler.inner.epoch == 2
        tr.set_epoch(2)
        assert same_batches(a, batches(tr))
        assert sum(len(y) for _, y in a) == 20 and sum(len(y) for _, y in te) == 6
    finally:
        dist.destroy_process_group()


def test_more_processes_than_test_images_is_refused(tmp_path, monkeypatch):
    """A process with no test image would make no evaluation forward, so the others' first one (DDP's buffer
    broadcast) would wait on it for ever: refused on every process alike, before any collective."""
    from reste.data import loaders

    train, test, _ = load_datasets("cifar10", write_cifar(tmp_path / "data"))
    monkeypatch.setattr(loaders, "rank_and_world_size", lambda: (6, 7))
    usage_error(make_loaders, train, test, batch_size=4, eval_batch_size=4, distributed=True,
                match="the test set has 6 image(s) for 7 processes")
    monkeypatch.setattr(loaders, "rank_and_world_size", lambda: (5, 6))
    _, te = make_loaders(train, test, batch_size=4, eval_batch_size=4, distributed=True)
    assert [y.tolist() for _, y in te] == [[5]]


def test_cifar10_errors(tmp_path, monkeypatch):
    monkeypatch.setattr(formats, "DEFAULT_ROOT", tmp_path / "default")
    usage_error(load_datasets, "cifar10", match="does not exist")  # default ./data missing
    usage_error(load_datasets, "cifar10", tmp_path / "nope", match="does not exist")
    (tmp_path / "empty").mkdir()
    usage_error(load_datasets, "cifar10", tmp_path / "empty", match="is empty")
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "cat.png").write_bytes(b"\x89PNG")
    usage_error(load_datasets, "cifar10", tmp_path / "images", match="no CIFAR-10 python batches")

    incomplete = tmp_path / "incomplete"
    folder = write_cifar(incomplete)
    (folder / "data_batch_4").unlink()
    usage_error(load_datasets, "cifar10", incomplete, match="missing data_batch_4")

    def corrupt(name, content):
        root = tmp_path / name
        f = write_cifar(root)
        (f / "data_batch_2").write_bytes(content)
        return root

    usage_error(load_datasets, "cifar10", corrupt("garbage", b"not a pickle at all"),
                match="not a CIFAR-10 python batch")
    truncated = pickle.dumps({b"data": np.zeros((4, 3072), np.uint8), b"labels": [0] * 4}, protocol=2)[:-30]
    usage_error(load_datasets, "cifar10", corrupt("truncated", truncated), match="not a CIFAR-10 python batch")
    usage_error(load_datasets, "cifar10", corrupt("nokeys", pickle.dumps({b"x": 1})), match="'data'/'labels'")
    usage_error(load_datasets, "cifar10",
                corrupt("shape", pickle.dumps({b"data": np.zeros((4, 100), np.uint8), b"labels": [0] * 4})),
                match="3072")
    for name, bad in (("label10", 10), ("label-1", -1)):  # (review tests2 #8: the edge, 10, was not tested)
        root = corrupt(name, pickle.dumps({b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 9, bad, 1]}))
        usage_error(load_datasets, "cifar10", root, match="data_batch_2 has labels outside 0..9")
    # (review mut8 #1) a label short: every later image would take the next one's label
    short = corrupt("short", pickle.dumps({b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1, 2]}))
    usage_error(load_datasets, "cifar10", short, match="data_batch_2 has 3 labels for 4 images")
    wide = corrupt("wide", pickle.dumps({b"data": np.full((4, 3072), 25500, np.int64), b"labels": [0] * 4}))
    usage_error(load_datasets, "cifar10", wide, match="type int64; a CIFAR-10 batch holds uint8 rows")

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    usage_error(load_datasets, "cifar10", corrupt("evil", pickle.dumps({b"data": Evil()})),
                match="not a CIFAR-10 python batch")


def test_cifar10_offline_download(tmp_path, monkeypatch):
    import torchvision

    def offline(*args, **kwargs):
        raise urllib.error.URLError("<urlopen error [Errno 101] Network is unreachable>")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    msg = usage_error(load_datasets, "cifar10", tmp_path / "dl", download=True)
    assert "offline" in msg and "data_path" in msg and "CIFAR-10" in msg


def test_a_failed_download_removes_the_folders_it_made_and_only_those(tmp_path, monkeypatch):
    """As torchvision: the data set's folders are made, then the network fails. Those folders go again (the
    parents too, when the download made them); a folder that was there before stays, with what it held."""
    import torchvision

    def offline(root, *args, **kwargs):
        raise urllib.error.URLError("<urlopen error [Errno 101] Network is unreachable>")

    def fashion_offline(root, *args, **kwargs):
        os.makedirs(Path(root) / "FashionMNIST" / "raw", exist_ok=True)
        offline(root)

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", fashion_offline)
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    usage_error(load_datasets, "fashion-mnist", tmp_path / "new" / "fm", download=True, match="offline")
    usage_error(load_datasets, "cifar10", tmp_path / "new" / "c10", download=True, match="offline")
    assert not (tmp_path / "new").exists()
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "notes.txt").write_text("mine")
    usage_error(load_datasets, "fashion-mnist", tmp_path / "old", download=True, match="offline")
    assert sorted(p.name for p in (tmp_path / "old").iterdir()) == ["notes.txt"]


def write_cifar_archive(root: Path, per_batch=2, n_test=3) -> tuple[Path, dict[str, str]]:
    """``root/cifar-10-python.tar.gz`` laid out as the real one (cifar-10-batches-py/ of str-keyed pickles, as
    torchvision reads them), and the MD5 of each of its files and of the archive (key ``archive``)."""
    import hashlib
    import io
    import tarfile

    rng = np.random.default_rng(0)
    entries = {f"data_batch_{i}": per_batch for i in range(1, 6)} | {"test_batch": n_test}
    blobs = {name: pickle.dumps({"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                                 "labels": [int(v) for v in rng.integers(0, 10, n)]}, protocol=2)
             for name, n in entries.items()}
    blobs["batches.meta"] = pickle.dumps({"label_names": list(D.CIFAR10_CLASSES)}, protocol=2)
    root.mkdir(parents=True, exist_ok=True)
    archive = root / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, blob in blobs.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    md5 = {name: hashlib.md5(blob).hexdigest() for name, blob in blobs.items()}
    return archive, md5 | {"archive": hashlib.md5(archive.read_bytes()).hexdigest()}


def test_cifar10_archive_not_unpacked(tmp_path, monkeypatch):
    """A --data-path holding cifar-10-python.tar.gz alone: the message names the archive and how to unpack it;
    --download unpacks it without downloading when its MD5 is the official archive's (torchvision's check, here
    given the fake archive's sums), and says so when it is not."""
    import urllib.request

    from torchvision.datasets import CIFAR10

    archive, md5 = write_cifar_archive(tmp_path / "c")
    msg = usage_error(load_datasets, "cifar10", tmp_path / "c", match=str(archive))
    assert f"tar xzf {archive} -C {tmp_path / 'c'}" in msg and "download=True" in msg

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("<urlopen error [Errno 101] Network is unreachable>")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    msg = usage_error(load_datasets, "cifar10", tmp_path / "c", download=True, match="offline")
    assert str(archive) in msg and "MD5" in msg  # not the official archive: torchvision tried to download it
    monkeypatch.setattr(CIFAR10, "tgz_md5", md5["archive"])
    monkeypatch.setattr(CIFAR10, "train_list", [[f"data_batch_{i}", md5[f"data_batch_{i}"]] for i in range(1, 6)])
    monkeypatch.setattr(CIFAR10, "test_list", [["test_batch", md5["test_batch"]]])
    monkeypatch.setattr(CIFAR10, "meta", {"filename": "batches.meta", "key": "label_names",
                                          "md5": md5["batches.meta"]})
    _, _, info = load_datasets("cifar10", tmp_path / "c", download=True)
    assert (info.train_size, info.test_size) == (10, 3) and (tmp_path / "c" / "cifar-10-batches-py").is_dir()


# --------------------------------------------------------------------------- ImageNet


def write_image_folder(root: Path, classes=("n01", "n02", "n03"), per_class=2, sizes=((40, 30), (25, 50))):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in (("train", per_class), ("val", 1)):
        for c in classes:
            d = root / split / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                w, h = sizes[i % len(sizes)]
                arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                Image.fromarray(arr).save(d / f"img{i}.JPEG", format="JPEG")


def test_imagenet_from_image_folder(tmp_path):
    write_image_folder(tmp_path)
    train, test, info = load_datasets("imagenet", tmp_path)
    assert info == DatasetInfo("imagenet", 3, (3, 224, 224), 6, 3, ("n01", "n02", "n03"))
    assert train.classes == ["n01", "n02", "n03"]
    x, y = test[2]
    assert x.shape == (3, 224, 224) and x.dtype == torch.float32 and y == 2
    tr, te = make_loaders(train, test, batch_size=4, eval_batch_size=2, seed=0)
    xb, yb = next(iter(tr))
    assert xb.shape == (4, 3, 224, 224) and yb.dtype == torch.int64
    tr2, _ = make_loaders(train, test, batch_size=4, eval_batch_size=2, seed=0)
    tr.set_epoch(1)
    tr2.set_epoch(1)
    assert same_batches(batches(tr), batches(tr2))
    assert same_batches(batches(te), batches(te))


def test_image_files_beside_the_class_folders_are_said_to_be_left_out(tmp_path):
    """(review formats1, suggestion 1) images loose in val/ beside its class folders were left out without a word
    (an eval scored 8 of 10 images)."""
    import shutil
    import warnings

    write_image_folder(tmp_path)
    for name in ("a.JPEG", "b.png"):
        shutil.copy(tmp_path / "val" / "n01" / "img0.JPEG", tmp_path / "val" / name)
    (tmp_path / "val" / "notes.txt").write_text("not an image")
    with pytest.warns(UserWarning, match=r"ImageNet val folder .*val holds 2 image files outside its class folders "
                                         r"\(a.JPEG, b.png\): they are left out; move each into its class's folder"):
        assert len(load_datasets("imagenet", tmp_path)[1]) == 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (tmp_path / "val" / "a.JPEG").unlink()
        (tmp_path / "val" / "b.png").unlink()
        load_datasets("imagenet", tmp_path)  # none loose: nothing said
    for name in ("a.png", "b.png", "c.png"):  # (review mut11 #22) three names are listed whole, with no ", ..."
        shutil.copy(tmp_path / "val" / "n01" / "img0.JPEG", tmp_path / "val" / name)
    with pytest.warns(UserWarning, match=r"holds 3 image files outside its class folders \(a.png, b.png, c.png\): "
                                         r"they are left out"):
        load_datasets("imagenet", tmp_path)


def test_imagenet_is_resized_to_256_then_centre_cropped_to_224_where_it_is_not_augmented(tmp_path):
    """(review mut7 #7) SPEC's ImageNet evaluation, which the paper's ImageNet accuracies are measured with, and the
    train split under augment=False: each image as torchvision's Resize(256) then CenterCrop(224) gives it."""
    from PIL import Image
    from torchvision.transforms import functional as TF

    write_image_folder(tmp_path, classes=("n01", "n02"), per_class=1, sizes=((300, 260),))

    def reference(path: Path) -> torch.Tensor:
        with Image.open(path) as image:
            cropped = TF.center_crop(TF.resize(image.convert("RGB"), 256), 224)
        return TF.normalize(TF.to_tensor(cropped), D.IMAGENET_MEAN, D.IMAGENET_STD)

    train, test, _ = load_datasets("imagenet", tmp_path, augment=False)
    for ds, split in ((train, "train"), (test, "val")):
        for i, name in enumerate(("n01", "n02")):
            assert torch.equal(ds[i][0], reference(tmp_path / split / name / "img0.JPEG")), (split, name)
    augmented, _, _ = load_datasets("imagenet", tmp_path, augment=True)
    torch.manual_seed(0)
    assert augmented[0][0].shape == (3, 224, 224) and not torch.equal(augmented[0][0], train[0][0])


def test_cifar10_through_pil_transforms_crops_with_4_pixels_of_padding(tmp_path):
    """(review mut7 #7) The Python API's per-image CIFAR-10 path (in_memory=False) augments as the in-memory one:
    a 32x32 random crop of the image padded by 4, and a flip; its test split is only normalised."""
    from torchvision import transforms as T

    write_cifar(tmp_path)
    train, test, _ = load_datasets("cifar10", tmp_path, in_memory=False)
    crop, flip = train.transform.transforms[:2]
    assert type(crop) is T.RandomCrop and (crop.size, crop.padding) == ((32, 32), 4)
    assert type(flip) is T.RandomHorizontalFlip
    assert [type(t) for t in test.transform.transforms] == [T.ToTensor, T.Normalize]


def test_imagenet_loads_in_spawned_workers(tmp_path):
    """macOS, Windows (and Linux from Python 3.14) start loader workers by spawn or forkserver, which pickle the
    data set by its module and name: the image folder must be a module-level class, and the batches are those of
    a loader without workers."""
    write_image_folder(tmp_path)
    train, test, _ = load_datasets("imagenet", tmp_path)
    again = pickle.loads(pickle.dumps(test))  # (the test set: no random augmentation)
    assert torch.equal(again[1][0], test[1][0]) and pickle.loads(pickle.dumps(train)).classes == train.classes
    spawned, _ = make_loaders(train, test, batch_size=3, eval_batch_size=2, seed=0, workers=1)
    spawned.multiprocessing_context = "spawn"
    here, _ = make_loaders(train, test, batch_size=3, eval_batch_size=2, seed=0, workers=0)
    for loader in (spawned, here):
        loader.set_epoch(1)
    assert same_batches(batches(spawned), batches(here))


def test_imagenet_errors(tmp_path):
    usage_error(load_datasets, "imagenet", match="ImageNet needs data_path;")
    usage_error(load_datasets, "imagenet", tmp_path, download=True, match="cannot be downloaded")
    usage_error(load_datasets, "imagenet", tmp_path / "nope", match="does not exist")
    (tmp_path / "empty").mkdir()
    usage_error(load_datasets, "imagenet", tmp_path / "empty", match="is empty")

    noval = tmp_path / "noval"
    write_image_folder(noval)
    import shutil

    shutil.rmtree(noval / "val")
    usage_error(load_datasets, "imagenet", noval, match="no val/")
    notrain = tmp_path / "notrain"
    write_image_folder(notrain)
    shutil.rmtree(notrain / "train")
    usage_error(load_datasets, "imagenet", notrain, match="no train/")

    noimages = tmp_path / "noimages"
    (noimages / "train" / "n01").mkdir(parents=True)
    (noimages / "train" / "n01" / "notes.txt").write_text("x")
    (noimages / "val" / "n01").mkdir(parents=True)
    usage_error(load_datasets, "imagenet", noimages, match="no usable images")
    noclasses = tmp_path / "noclasses"
    (noclasses / "train").mkdir(parents=True)
    (noclasses / "val").mkdir()
    usage_error(load_datasets, "imagenet", noclasses, match="no usable images")

    differ = tmp_path / "differ"
    write_image_folder(differ)
    shutil.rmtree(differ / "val" / "n02")
    usage_error(load_datasets, "imagenet", differ, match="different class folders")


@pytest.mark.parametrize("content", [(), ("notes.txt", "labels.csv", ".hidden.JPEG")])
@pytest.mark.parametrize("split", ["train", "val"])
def test_a_class_folder_without_images_is_named(tmp_path, split, content):
    """An empty class folder (or one with no image file) is named, with what to do about it: the split has
    images, so neither "no usable images" nor "download ILSVRC2012" would be true."""
    write_image_folder(tmp_path)
    empty = tmp_path / split / "n04"
    empty.mkdir()
    for name in content:
        (empty / name).write_text("x")
    msg = usage_error(load_datasets, "imagenet", tmp_path, match=str(empty))
    assert "remove it or add its images" in msg
    assert "no usable images" not in msg and "ILSVRC" not in msg
    (tmp_path / split / "n05").mkdir()
    msg = usage_error(load_datasets, "imagenet", tmp_path, match="2 class folders")
    assert "n04" in msg and "n05" in msg


def _scan_val_folder(root: Path) -> list[list]:
    """``image_folders(root)``'s val samples, each read by the loader, in a process of its own that may take 60
    seconds: a scan or a read that never ends fails the test instead of hanging the run."""
    import subprocess
    import sys

    code = ("import json, sys; from reste.data import formats\n"
            "_, val = formats.image_folders(sys.argv[1], False, train=False)\n"
            "[val.loader(path) for path, _ in val.samples]\n"
            "print(json.dumps([[p[len(sys.argv[1]):], i] for p, i in val.samples]))")
    try:
        done = subprocess.run([sys.executable, "-c", code, str(root)], capture_output=True, text=True, timeout=60,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    except subprocess.TimeoutExpired:
        pytest.fail(f"scanning and reading {root} did not end within 60 seconds")
    assert done.returncode == 0, done.stderr
    import json

    return json.loads(done.stdout.splitlines()[-1])


def test_an_image_folder_with_a_link_loop_is_scanned_once_and_linked_folders_still_count(tmp_path):
    """torchvision walks with os.walk(followlinks=True): two links to ``..`` in a class folder made the scan branch
    without end (security review 2, finding 7d). Each real folder is now walked once; a class's images linked in
    from elsewhere (a usual layout) still count."""
    write_image_folder(tmp_path / "i")
    val = tmp_path / "i" / "val"
    (val / "n01" / "l1").symlink_to("..")
    (val / "n01" / "l2").symlink_to("..")
    (val / "n02" / "more").symlink_to(tmp_path / "i" / "train" / "n02")  # 2 more images for n02
    (tmp_path / "i" / "train" / "n02" / "back").symlink_to(val / "n02")  # and a loop through the two
    samples = _scan_val_folder(tmp_path / "i")
    assert ["/val/n02/img0.JPEG", 1] in samples and ["/val/n02/more/img1.JPEG", 1] in samples
    assert sum(i == 1 for _, i in samples) == 3 and sum(i == 2 for _, i in samples) == 1
    assert ["/val/n01/img0.JPEG", 0] in samples and all(p.count("/l") <= 1 for p, _ in samples)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs (Windows)")
def test_a_fifo_named_as_an_image_is_no_sample(tmp_path):
    """A FIFO named x.JPEG was a sample, and reading it blocked the loader for ever (security review 2, finding
    7d): only regular files (or links to them) are samples. A dangling link still is one: reading it names it."""
    write_image_folder(tmp_path / "i")
    os.mkfifo(tmp_path / "i" / "val" / "n01" / "x.JPEG")
    assert _scan_val_folder(tmp_path / "i") == [["/val/n01/img0.JPEG", 0], ["/val/n02/img0.JPEG", 1],
                                                ["/val/n03/img0.JPEG", 2]]
    (tmp_path / "i" / "val" / "n01" / "gone.JPEG").symlink_to(tmp_path / "nowhere.JPEG")
    _, val = formats.image_folders(tmp_path / "i", False, train=False)
    assert [p for p, _ in val.samples] == [str(tmp_path / "i" / "val" / n) for n in
                                           ("n01/gone.JPEG", "n01/img0.JPEG", "n02/img0.JPEG", "n03/img0.JPEG")]
    usage_error(val.loader, val.samples[0][0], match="cannot read image ")


def test_a_class_mismatch_names_the_side_and_tells_unicode_forms_apart(tmp_path):
    """Which of train/ and val/ holds the class the other lacks, and the names as ascii() writes them: a folder
    copied between macOS and Linux can come back in another Unicode normalisation, and look the same printed."""
    import shutil

    one = tmp_path / "one"
    write_image_folder(one)
    shutil.rmtree(one / "val" / "n02")
    msg = usage_error(load_datasets, "imagenet", one, match="train/ has 'n02', which val/ lacks")
    assert "different class folders" in msg and "val/ has" not in msg
    shutil.copytree(one / "train" / "n02", one / "val" / "n02")
    shutil.copytree(one / "val" / "n03", one / "val" / "n04")
    usage_error(load_datasets, "imagenet", one, match="val/ has 'n04', which train/ lacks")

    nfd = tmp_path / "nfd"
    write_image_folder(nfd, classes=("cat", "poisson_\xf1"))  # NFC: one code point
    (nfd / "val" / "poisson_\xf1").rename(nfd / "val" / "poisson_n\u0303")  # NFD: n and a combining tilde
    msg = usage_error(load_datasets, "imagenet", nfd)
    assert "train/ has 'poisson_\\xf1', which val/ lacks" in msg, msg
    assert "val/ has 'poisson_n\\u0303', which train/ lacks" in msg, msg
    assert "Unicode normalisation" in msg


# --------------------------------------------------------------------------- misc


def test_unknown_dataset_lists_the_valid_ones():
    msg = usage_error(load_datasets, "no-such-set")  # (mnist may be one some day)
    assert all(name in msg for name in DATASETS)


def test_aliases_and_bad_loader_arguments():
    _, _, info = load_datasets("DIGITS")
    assert info.name == "digits"
    train, test, _ = load_datasets("digits")
    usage_error(make_loaders, train, test, batch_size=0, eval_batch_size=4)
    usage_error(make_loaders, train, test, batch_size=4, eval_batch_size=4, workers=-1)
    usage_error(make_loaders, train, test, batch_size=4, eval_batch_size=4, distributed=True)


def test_download_paths_use_torchvision_then_our_readers(tmp_path, monkeypatch):
    import torchvision

    calls = []

    def fake_fashion(root, train=True, download=False, **kw):
        calls.append(("fashion", root, download))
        write_fashion(Path(root) / "FashionMNIST" / "raw", n_train=12, n_test=4)

    def fake_cifar(root, train=True, download=False, **kw):
        calls.append(("cifar", root, download))
        write_cifar(Path(root), per_batch=2, n_test=3)

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", fake_fashion)
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", fake_cifar)
    _, _, info = load_datasets("fashion-mnist", tmp_path / "f", download=True)
    assert (info.train_size, info.test_size) == (12, 4)
    _, _, info = load_datasets("cifar10", tmp_path / "c", download=True)
    assert (info.train_size, info.test_size) == (10, 3)
    assert calls == [("fashion", str(tmp_path / "f"), True), ("cifar", str(tmp_path / "c"), True)]
    # already there: no download attempted
    load_datasets("cifar10", tmp_path / "c", download=True)
    assert len(calls) == 2


@pytest.mark.parametrize("dataset, planted, kind", [
    ("cifar10", "cifar-10-batches-py/data_batch_1", "link"),  # the review's: one batch missing, one a link
    ("cifar10", "cifar-10-batches-py/readme.html", "link"),
    ("cifar10", "cifar-10-python.tar.gz", "link"),
    ("cifar10", "cifar-10-batches-py", "folder link"),
    ("cifar10", "cifar-10-batches-py/batches.meta", "hard link"),
    ("cifar10", "cifar-10-batches-py/test_batch", "fifo"),
    ("fashion-mnist", "FashionMNIST/raw/train-images-idx3-ubyte.gz", "link"),
    ("fashion-mnist", "FashionMNIST/raw/t10k-labels-idx1-ubyte", "link"),
    ("fashion-mnist", "FashionMNIST", "folder link"),
])
def test_a_download_will_not_write_through_links_planted_in_the_data_folder(tmp_path, monkeypatch, dataset,
                                                                              planted, kind):
    """torchvision downloads and unpacks with ``open(path, "wb")`` and an unfiltered tarfile, following links: a
    received data folder with ``cifar-10-batches-py/data_batch_1 -> ~/somefile`` and a batch missing had
    ``--download`` overwrite ~/somefile (security review 2, finding 3). Such a folder is refused, naming the path,
    before torchvision is called."""
    import torchvision

    reached = []
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", lambda *a, **k: reached.append(a) or pytest.fail("CIFAR10"))
    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", lambda *a, **k: reached.append(a) or pytest.fail("FM"))
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("precious")
    root = tmp_path / "received"
    path = root / planted
    path.parent.mkdir(parents=True)
    if kind == "link":
        path.symlink_to(victim / "precious.txt")
    elif kind == "folder link":
        path.symlink_to(victim)
    elif kind == "hard link":
        os.link(victim / "precious.txt", path)
    elif hasattr(os, "mkfifo"):
        os.mkfifo(path)
    else:
        pytest.skip("no FIFOs (Windows)")
    why = {"link": "a symbolic link", "folder link": "a symbolic link", "hard link": "one of 2 hard links",
           "fifo": "not a regular file"}[kind]
    usage_error(load_datasets, dataset, root, download=True,
                match=f"will not download {'CIFAR-10' if dataset == 'cifar10' else 'Fashion-MNIST'} into {root}: "
                      f"it writes {path}, which is {why}")
    assert reached == [] and (victim / "precious.txt").read_text() == "precious"
    assert sorted(p.name for p in victim.iterdir()) == ["precious.txt"]


def test_the_test_split_alone_is_the_same_test_set_and_reads_no_train_file(tmp_path, monkeypatch):
    """``train=False`` (``reste eval``, ``reste predict --dataset``): the same test batches, and the train files
    are not read (ImageNet's train folder is not even scanned: a broken one does not matter)."""
    write_cifar(tmp_path / "c")
    write_image_folder(tmp_path / "i")
    write_fashion(tmp_path / "f")
    paths = {"digits": None, "fashion-mnist": tmp_path / "f", "cifar10": tmp_path / "c", "imagenet": tmp_path / "i"}
    for name, path in paths.items():
        _, test, info = load_datasets(name, path)
        no_train, test_only, info_only = load_datasets(name, path, train=False)
        assert no_train is None and info_only.train_size is None
        assert info_only.test_size == info.test_size and info_only.classes == info.classes
        kept = make_loaders(None, test_only, batch_size=4, eval_batch_size=4, seed=3)
        assert kept[0] is None
        assert same_batches(batches(kept[1]), batches(make_loaders(_, test, batch_size=4, eval_batch_size=4,
                                                                      seed=3)[1])), name
    for f in (tmp_path / "c" / "cifar-10-batches-py").glob("data_batch_*"):
        f.write_bytes(b"not a pickle")
    (tmp_path / "i" / "train" / "n01" / "img0.JPEG").write_bytes(b"")
    (tmp_path / "i" / "train" / "n04").mkdir()  # a class folder without images: ImageFolder would refuse it
    assert load_datasets("cifar10", tmp_path / "c", train=False)[1].targets == list(range(6))
    assert load_datasets("imagenet", tmp_path / "i", train=False)[2].classes == ("n01", "n02", "n03")
    usage_error(load_datasets, "cifar10", tmp_path / "c", match="is not a CIFAR-10 python batch")
    read = []
    monkeypatch.setattr(formats, "_image_folder", lambda path, split: read.append(split) or None)
    formats.image_folders(tmp_path / "i", False, train=False)
    assert read == ["val"]


def test_every_spec_names_a_loader_that_resolves():
    import importlib

    from reste.datasets import SPECS

    for spec in SPECS.values():
        module, _, function = spec.loader.partition(":")
        assert callable(getattr(importlib.import_module(module), function)), spec.loader


def test_hidden_folders_and_files_are_not_classes_or_images(tmp_path):
    """Jupyter's .ipynb_checkpoints in train/ and val/ became a class of its own, and macOS's ._ files failed
    when an epoch reached them."""
    from PIL import Image

    write_image_folder(tmp_path, classes=("n01", "n02"))
    for split in ("train", "val"):
        (tmp_path / split / ".ipynb_checkpoints").mkdir()
        Image.new("RGB", (8, 8)).save(tmp_path / split / ".ipynb_checkpoints" / "a.JPEG")
        (tmp_path / split / "n01" / "._img0.JPEG").write_bytes(b"\0\5\26\7" + bytes(100))
        (tmp_path / split / "n02" / ".ipynb_checkpoints").mkdir()  # inside a class folder too
        Image.new("RGB", (8, 8)).save(tmp_path / split / "n02" / ".ipynb_checkpoints" / "b.JPEG")
    train, test, info = load_datasets("imagenet", tmp_path)
    assert info.classes == ("n01", "n02") and info.num_classes == 2 and (len(train), len(test)) == (4, 2)


def test_16_bit_images_are_scaled_to_8_bits(tmp_path):
    from PIL import Image

    values = np.linspace(0, 65535, 30 * 40).reshape(30, 40).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / "g16.png")
    rgb = np.asarray(formats._read_image(str(tmp_path / "g16.png")))
    assert rgb.shape == (30, 40, 3) and rgb.min() == 0 and rgb.max() == 255  # clipped, 99% were 255
    assert abs(rgb.mean() - 127.5) < 1.0


def test_float_images_are_scaled_to_8_bits_or_refused(tmp_path):
    """(review userD #4) A float TIFF in [0, 1] came out all black (Pillow's convert truncates): [0, 1] is scaled by
    255, [0, 255] kept, anything else refused in one line naming the file."""
    from PIL import Image

    values = np.linspace(0, 1, 30 * 40, dtype=np.float32).reshape(30, 40)
    for scale in (1.0, 255.0):
        Image.fromarray(values * scale).save(tmp_path / "f.tiff")
        rgb = np.asarray(formats._read_image(str(tmp_path / "f.tiff")))
        assert rgb.shape == (30, 40, 3) and rgb.min() == 0 and rgb.max() == 255
        assert np.abs(rgb[..., 0] / 255.0 - values).max() <= 0.5 / 255 + 1e-6  # rounded once
    Image.fromarray(values * 1000).save(tmp_path / "f.tiff")
    usage_error(formats._read_image, str(tmp_path / "f.tiff"), match="f.tiff (float pixels outside [0, 1] and [0, 255]")


def test_an_image_too_large_for_pillow_is_one_line_naming_it(tmp_path, monkeypatch):
    from PIL import Image

    Image.new("L", (64, 64)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 64 x 64 is then past twice the limit
    message = usage_error(formats._read_image, str(tmp_path / "big.png"), match="big.png (Image size (4096 pixels)")
    assert message.startswith("cannot read image ") and message.endswith(
        "; replace it with a readable copy (or remove it: a run saved inside an epoch cannot then continue that epoch)")
    # (review formats1, suggestion 4) an image of the val split (what eval and predict read) gets no training caveat
    message = usage_error(formats._read_test_image, str(tmp_path / "big.png"), match="big.png (Image size")
    assert message.endswith("; replace it with a readable copy (or remove it)")
    import pickle

    assert pickle.loads(pickle.dumps(formats._read_test_image)).keywords == {"trained": False}  # (DataLoader workers)


@pytest.mark.parametrize("split", ["train", "val"])
def test_an_unreadable_image_of_the_val_split_gets_no_training_caveat(tmp_path, split):
    """(review mut11 #21) the val split's folder reads its images with ``_read_test_image`` (eval and predict read
    it; no run continues an epoch of it); only the train split's unreadable image gets the caveat of a run saved
    inside an epoch."""
    write_image_folder(tmp_path)
    (tmp_path / split / "n01" / "img0.JPEG").write_bytes(b"not an image")
    train, test, _ = load_datasets("imagenet", tmp_path)
    message = usage_error((train if split == "train" else test).__getitem__, 0, match="img0.JPEG")
    assert ("a run saved inside an epoch" in message) == (split == "train"), message


def test_an_image_past_pillows_pixel_limit_is_refused_before_its_pixels_are_decoded(tmp_path, monkeypatch):
    """Pillow refuses an image of more than twice ``MAX_IMAGE_PIXELS`` but only warns below that: a 328 KB 16-bit
    PNG of 13000 x 13000 took 4.8 GB (security review 2, finding 7c). Past the limit both readers refuse it, one
    line naming the file, before a pixel is decoded."""
    import warnings

    from PIL import Image, ImageFile

    from reste.export.inputs import read_image

    Image.new("I;16", (64, 64)).save(tmp_path / "deep.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 4000)  # 4096 pixels: past the limit, within twice it

    def no_decoding(self):
        raise AssertionError("the pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)  # Pillow's own is not shown: the refusal is
        usage_error(formats._read_image, str(tmp_path / "deep.png"),
                    match="deep.png (Image size (4096 pixels) exceeds limit of 4000 pixels")
        usage_error(read_image, tmp_path / "deep.png", (1, 4, 4), match="(Image size (4096 pixels) exceeds limit")


@pytest.mark.parametrize("mode, values", [
    ("I;16", np.arange(65536).reshape(256, 256)),
    ("I", np.arange(65536).reshape(256, 256)),  # 32 bits, values within 16 (outside them: refused, below)
    ("I", np.arange(256).reshape(16, 16)),  # no value above 255: taken as 8 bits
])
def test_deep_images_scale_as_rounding_the_float_quotient_did(mode, values):
    """16- and 32-bit greyscale goes to 8 bits in integers (below), each pixel what ``rint(value * 255 / top)``
    gave."""
    from PIL import Image

    from reste._pixels import eight_bit

    image = Image.fromarray(values.astype(np.uint16 if mode == "I;16" else np.int32))
    assert image.mode == mode
    top = 65535.0 if mode == "I;16" or values.max() > 255 else 255.0
    want = np.clip(np.rint(values.astype(np.float64) * (255.0 / top)), 0, 255).astype(np.uint8)
    assert np.array_equal(np.asarray(eight_bit(image)), want)


def test_a_16_bit_image_is_scaled_without_float_copies():
    """The float64 scaling made three copies of the image, 24 bytes a pixel (security review 2, finding 7c); in
    integers a 16-bit image of a million pixels needs under 10."""
    import tracemalloc

    from PIL import Image

    from reste._pixels import eight_bit

    big = Image.fromarray((np.arange(1000 * 1000) % 65536).astype(np.uint16).reshape(1000, 1000))
    tracemalloc.start()
    try:
        eight_bit(big)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 10 * 1000 * 1000, peak


#: What the security review put in an image folder: PostScript, which Pillow hands to Ghostscript to decode.
POSTSCRIPT = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nshowpage\n"


def test_an_image_file_holding_postscript_is_refused_and_no_program_runs(tmp_path, monkeypatch):
    """Pillow picks the decoder from a file's first bytes, not its name: a .png holding PostScript was run by
    Ghostscript, from an image folder or ``reste predict`` (security review 2, finding 1). Both readers refuse it
    with a one-line error naming the file, and start no program (a fake ``gs`` first on PATH would leave a mark)."""
    import subprocess

    from reste.export.inputs import read_image

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "gs").write_text(f"#!/bin/sh\ntouch {tmp_path / 'gs-ran'}\nexit 1\n")
    (bin_dir / "gs").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    started = []

    def no_program(*args, **kwargs):
        started.append(args)
        raise AssertionError(f"a program was started: {args}")

    monkeypatch.setattr(subprocess, "Popen", no_program)
    evil = tmp_path / "x.png"
    evil.write_bytes(POSTSCRIPT)
    why = "not an image in a format reste reads: JPEG, PNG, PPM, BMP, TIFF, WEBP"
    usage_error(formats._read_image, str(evil),
                match=f"cannot read image {evil} ({why}); replace it with a readable copy")
    usage_error(read_image, evil, (3, 8, 8), match=f"{evil} is neither a .npy array nor an image file reste can "
                                                  f"read ({why})")
    assert started == [] and not (tmp_path / "gs-ran").exists()


@pytest.mark.parametrize("suffix", [".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".bmp", ".tif", ".tiff", ".webp"])
def test_images_of_every_extension_an_image_folder_takes_still_read(tmp_path, suffix):
    from PIL import Image

    from reste.export.inputs import read_image

    path = tmp_path / f"a{suffix}"
    Image.new("L" if suffix == ".pgm" else "RGB", (6, 4), 200).save(path)
    rgb = np.asarray(formats._read_image(str(path)))
    assert rgb.shape == (4, 6, 3) and abs(int(rgb[2, 3, 0]) - 200) <= 2
    assert read_image(path, (3, 4, 4)).shape == (1, 3, 4, 4)


def test_the_image_formats_are_those_of_the_extensions_an_image_folder_takes():
    """One list (``reste._pixels.IMAGE_FORMATS``) for both readers: the formats Pillow registers for the image
    folder's extensions."""
    from PIL import Image

    from reste._pixels import IMAGE_FORMATS
    from reste.data.imagefolder import IMG_EXTENSIONS

    Image.init()
    assert set(IMAGE_FORMATS) == {Image.registered_extensions()[e] for e in IMG_EXTENSIONS}


def test_a_camera_jpeg_of_two_pictures_still_reads(tmp_path):
    """A JPEG holding more than one picture is what Pillow calls MPO; its JPEG opener, allowed, gives it."""
    from PIL import Image

    Image.new("RGB", (6, 4), (250, 0, 0)).save(tmp_path / "two.jpg", "MPO", save_all=True,
                                               append_images=[Image.new("RGB", (6, 4))])
    with Image.open(tmp_path / "two.jpg") as image:
        assert image.format == "MPO"
    assert np.asarray(formats._read_image(str(tmp_path / "two.jpg")))[..., 0].min() > 200


@pytest.mark.parametrize("labels,why", [
    (["cat"] * 4, "of shape (4,) and type <U3"), ([None] * 4, "of shape (4,) and type object"),
    ([2**70] * 4, "of shape (4,) and type object"), ([1.7] * 4, "of shape (4,) and type float64"),
    ([[1, 2]] * 2, "of nested lists"),
])
def test_cifar10_labels_must_be_a_flat_list_of_integers(tmp_path, labels, why):
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({b"data": np.zeros((4, 3072), np.uint8), b"labels": labels}, protocol=2))
    usage_error(formats._read_cifar_batch, path, match=f"labels {why}; a CIFAR-10 batch holds a flat list")


def test_cifar10_data_must_be_an_array(tmp_path):
    """A real batch holds a uint8 array; a list of shared sublists (a 229-byte pickle) expanded to gigabytes."""
    nested: list = [0]
    for _ in range(27):
        nested = [nested, nested]
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({b"data": nested, b"labels": [0]}, protocol=2))
    assert path.stat().st_size < 1000
    usage_error(formats._read_cifar_batch, path, match="holds data of type list, not an array")


def test_a_python_2_pickle_with_empty_bytes_reads(tmp_path):
    path = tmp_path / "test_batch"
    path.write_bytes(pickle.dumps({b"batch_label": b"", b"data": np.zeros((0, 3072), np.uint8), b"labels": []},
                                  protocol=2))  # b"" pickles as __builtin__.bytes under protocol 2
    images, labels = formats._read_cifar_batch(path)
    assert images.shape == (0, 32, 32, 3) and labels.shape == (0,)


def python_2_batch(data: np.ndarray, labels: list[int]) -> bytes:
    """A CIFAR-10 batch as the real files are: pickled by Python 2's cPickle (protocol 2), whose str is bytes
    (read with encoding latin1), of NumPy 1's names (``numpy.core.multiarray._reconstruct``)."""
    def text(b: bytes) -> bytes:
        return b"T" + struct.pack("<I", len(b)) + b  # BINSTRING

    rows, width = data.shape
    array = (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85" + text(b"b") + b"\x87R("
             + b"K\x01M" + struct.pack("<H", rows) + b"M" + struct.pack("<H", width) + b"\x86"
             + b"cnumpy\ndtype\n" + text(b"u1") + b"K\x00K\x01\x87R(K\x03" + text(b"|")
             + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89" + text(data.tobytes()) + b"tb")
    items = b"".join(b"K" + bytes([v]) for v in labels)
    return b"\x80\x02}(" + text(b"batch_label") + text(b"x") + text(b"data") + array + text(b"labels") + b"](" \
        + items + b"eu."


class _Bomb:
    """Pickles as numpy's ``_reconstruct(ndarray, shape, typecode)``: what allocates ``shape`` at once."""

    def __init__(self, shape, typecode, state=None):
        self.args, self.state = (np.ndarray, shape, typecode), state

    def __reduce__(self):
        from numpy._core.multiarray import _reconstruct

        return (_reconstruct, self.args) if self.state is None else (_reconstruct, self.args, self.state)


@pytest.mark.parametrize("bomb", [
    _Bomb((10 ** 7,), np.dtype(object)),  # the review's, a tenth of its size: 80 MB of None from 300 bytes
    _Bomb((10 ** 7,), b"b"),
    _Bomb((0,), np.dtype(np.float64)),
], ids=["object", "int8", "float"])
def test_a_cifar10_pickle_may_not_allocate_arrays_or_hold_other_types(tmp_path, bomb):
    """The allow-list unpickler let ``_reconstruct`` allocate any shape before a thing was checked: 112 bytes
    asked for 762 MB (security review 2, finding 7b). Only what pickling an array writes is taken: shape (0,)
    (its bytes come after, size-checked), a dtype of booleans or integers. A real, Python 2 batch still reads."""
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({b"data": bomb, b"labels": [0]}, protocol=2))
    assert path.stat().st_size < 400
    _refused_within_a_megabyte(path, "is not a CIFAR-10 python batch (unexpected array ")
    _reads_pixels(path, python_2_batch)


def _refused_within_a_megabyte(path: Path, match: str) -> None:
    """The batch at ``path`` is refused (``match``) before the reader allocates a megabyte."""
    import tracemalloc

    tracemalloc.start()
    try:
        usage_error(formats._read_cifar_batch, path, match=match)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, peak


def _reads_pixels(path: Path, write: Callable[[np.ndarray, list[int]], bytes]) -> None:
    """A batch written by ``write(pixels, labels)`` at ``path`` reads back as those pixels and labels."""
    pixels = np.random.default_rng(0).integers(0, 256, (2, 3072), dtype=np.uint8)
    path.write_bytes(write(pixels, [3, 9]))
    images, labels = formats._read_cifar_batch(path)
    assert np.array_equal(images, pixels.reshape(2, 3, 32, 32).transpose(0, 2, 3, 1)) and labels.tolist() == [3, 9]


@pytest.mark.parametrize("payload", [
    b"c__builtin__\nbytes\n(I100000000\ntR.",  # bytes(N): N zeros from a few bytes
    b"c_codecs\nencode\n(c__builtin__\nbytes\n(I100000000\ntRVhex_codec\ntR.",  # the review's: then 2N of hex
    b"cbuiltins\nbytes\n(I100000000\ntR.",  # (review mut11 #3) bytes(N) by Python 3's module name
], ids=["bytes", "encode", "builtins"])
def test_a_cifar10_pickle_may_not_make_bytes_of_no_text_in_the_file(tmp_path, payload):
    """(review sec3 #1) bytes and _codecs.encode were allowed with any arguments: a 65-byte batch filled 2.5 GB before
    it was refused. They take the text of the file alone (encode(text, "latin1"), as a protocol-2 pickle of bytes is
    written; bytes() of none): refused at once, and a batch written so (the tests' own, with bytes keys) still reads."""
    path = tmp_path / "data_batch_1"
    path.write_bytes(payload)
    _refused_within_a_megabyte(path, "unexpected bytes of no text in the file")
    _reads_pixels(path, lambda pixels, labels: pickle.dumps({b"data": pixels, b"labels": labels, b"empty": b""},
                                                           protocol=2))


def test_an_object_array_short_of_its_shape_does_not_crash_the_reader(tmp_path):
    """An object array whose BUILD gives fewer items than its shape crashed numpy 2.4 (a segmentation fault); its
    dtype is refused first. In a process of its own: a crash is a failure here, not the end of the test run."""
    import subprocess
    import sys

    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({b"data": _Bomb((0,), b"b", (1, (1000,), np.dtype(object), False, [None])),
                                   b"labels": [0]}, protocol=2))
    code = ("import sys; from reste.data import formats\n"
            "try: formats._read_cifar_batch(sys.argv[1])\n"
            "except formats.UsageError as e: print(e)")
    done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert done.returncode == 0 and "(unexpected array type object)" in done.stdout, (done.returncode, done.stderr)


def test_a_wrong_fashion_mnist_path_points_at_the_system_copy(tmp_path, monkeypatch):
    write_fashion(tmp_path / "system")
    monkeypatch.setattr(formats, "SYSTEM_FASHION_MNIST", tmp_path / "system")
    usage_error(load_datasets, "fashion-mnist", tmp_path / "nope",
                match="does not exist; a whole copy is in ")


def test_data_flags_that_would_be_ignored_are_refused():
    from reste.config import TrainConfig

    with pytest.raises(UsageError, match="digits reads no files .it comes with its package.; drop --download"):
        TrainConfig(dataset="digits", download=True).resolve()
    with pytest.raises(UsageError, match="is held in memory and batched there, without worker processes"):
        TrainConfig(dataset="fashion-mnist", workers=2).resolve()
    with pytest.raises(UsageError, match="imagenet is read from files by DataLoader workers; --data-device"):
        TrainConfig(dataset="imagenet", data_path="/x", data_device="cpu").resolve()
    # what older runs saved still resumes: those settings did nothing
    saved = TrainConfig.from_saved({"dataset": "fashion-mnist", "model": "fmnist_vgg_1w1a", "estimator": "reste",
                                    "epochs": 2, "seed": 0, "workers": 4})
    assert saved.workers == 0


# ------------------------------------------------------------------ randomness across epochs (review X)


def test_each_epoch_draws_its_own_order():
    from reste.data.sampling import epoch_order

    orders = [epoch_order(1000, 7, e) for e in range(3)]
    assert all(sorted(o.tolist()) == list(range(1000)) for o in orders)
    assert not torch.equal(orders[0], orders[1]) and not torch.equal(orders[1], orders[2])
    assert torch.equal(orders[1], epoch_order(1000, 7, 1)) and not torch.equal(orders[1], epoch_order(1000, 8, 1))


def test_a_seed_and_an_epoch_are_mixed_in_order():
    """(review mut8 #3) A mix that ignored the order of its values (or cancelled equal ones) gave seed 1's epoch 0
    the order of seed 0's epoch 1: the seeds of a sweep, which its tables treat as independent, replayed each other's
    shuffles an epoch apart."""
    from reste.data.sampling import epoch_order, mix_seed

    assert mix_seed(0, 1) != mix_seed(1, 0) and mix_seed(3, 3) != mix_seed(5, 5) and mix_seed(2, 7) == mix_seed(2, 7)
    assert not torch.equal(epoch_order(1000, 0, 1), epoch_order(1000, 1, 0))


def test_an_epoch_samplers_keys_are_the_epoch_it_draws():
    """(review mut8 #8) Each key (seed, epoch, index) gives a sample's augmentation: the epoch is the one whose order
    is drawn, whether set or the next one."""
    from reste.data.sampling import EpochSampler, epoch_order

    sampler = EpochSampler(5, seed=2)
    sampler.set_epoch(3)
    keys = list(sampler)
    assert keys == [(2, 3, i) for i in epoch_order(5, 2, 3).tolist()]
    assert list(sampler) == [(2, 4, i) for i in epoch_order(5, 2, 4).tolist()]  # no set_epoch: the next one


def test_a_samples_augmentation_changes_with_the_epoch_and_only_with_its_key():
    """The per-image transform path (CIFAR-10 from files, ImageNet): the same image gets another random crop in
    another epoch, the same one for the same (seed, epoch, index)."""
    from reste.data.sampling import TransformDataset

    base = [(torch.zeros(1), 0)] * 50
    ds = TransformDataset(base, transform=lambda image: image + torch.rand(1))
    draws = {e: torch.stack([ds[(3, e, i)][0] for i in range(50)]) for e in (0, 1)}
    assert torch.equal(draws[0], torch.stack([ds[(3, 0, i)][0] for i in range(50)]))
    assert not torch.isclose(draws[0], draws[1]).any()
    assert len(set(draws[0].flatten().tolist())) == 50  # and each image its own


def test_the_batched_flip_is_a_fair_coin():
    """Half the images flipped: 20,000 draws within 5 standard deviations (0.0177) of one half."""
    flip = RandomCropFlip(size=8, padding=2).draw(20000, 8, 8, torch.Generator().manual_seed(0))[2]
    assert abs(flip.float().mean().item() - 0.5) < 5 * 0.5 / 20000 ** 0.5


@pytest.mark.parametrize("n, world", [(10, 4), (3, 4), (8, 4), (11, 3)])
def test_a_shard_is_what_distributed_sampler_gives(n, world):
    """Padded from the start of the order, every world-th index from the rank: torch's DistributedSampler rule."""
    from torch.utils.data import DistributedSampler

    from reste.data.sampling import shard

    order = torch.randperm(n, generator=torch.Generator().manual_seed(n))
    for rank in range(world):
        sampler = DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=False)
        assert shard(order, rank, world).tolist() == [order[i].item() for i in sampler], (rank, world)


def test_digits_come_from_the_cache_after_the_first_load(tmp_path, monkeypatch):
    """scikit-learn's import costs about a second, a tenth of a default run: the split is kept in reste's cache
    (review HH), the same arrays; a damaged cache file is made again."""
    import sys

    from reste.data import sets

    monkeypatch.setenv("RESTE_CACHE", str(tmp_path))
    first = sets._digits_split()
    kept = list(tmp_path.glob("digits-*.npz"))
    assert len(kept) == 1
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # an import of scikit-learn would now fail
    again = sets._digits_split()
    assert all(np.array_equal(a, b) and a.dtype == b.dtype for a, b in zip(first, again))
    monkeypatch.delitem(sys.modules, "sklearn.datasets")
    whole = kept[0].read_bytes()
    for damage in (b"damaged", b"", whole[: len(whole) // 2], whole[:-30] + bytes(30)):  # review KK: empty, cut
        kept[0].write_bytes(damage)
        assert all(np.array_equal(a, b) for a, b in zip(first, sets._digits_split()))
        assert kept[0].read_bytes() == whole
    assert [p.name for p in tmp_path.glob("digits-*")] == [kept[0].name]  # made again, no temporary left


@pytest.mark.skipif(not hasattr(os, "getuid"), reason="no POSIX owners and modes (Windows): nothing is checked")
@pytest.mark.parametrize("how", ["writable by all", "a link"])
def test_a_digits_cache_file_others_may_have_made_is_not_used(tmp_path, monkeypatch, how):
    """In a shared $RESTE_CACHE another user could swap the digits split (all zeros, every label 7) under its
    predictable name (security review 2, finding 10). A file others may write, or a link, is passed by, as the
    cache's kernels are, and made again; no error."""
    from reste.data import sets

    monkeypatch.setenv("RESTE_CACHE", str(tmp_path / "cache"))
    real = sets._digits_split()
    kept = next((tmp_path / "cache").glob("digits-*.npz"))
    fake = dict(zip(("x_tr", "x_te", "y_tr", "y_te"), (np.zeros_like(a) if i < 2 else np.full_like(a, 7)
                                                         for i, a in enumerate(real))))
    planted = kept if how == "writable by all" else tmp_path / "elsewhere.npz"
    np.savez(planted.with_suffix(""), **fake)  # (savez adds the .npz)
    if how == "writable by all":
        kept.chmod(0o666)
    else:
        kept.unlink()
        kept.symlink_to(planted)
    got = sets._digits_split()
    assert all(np.array_equal(a, b) for a, b in zip(real, got))
    assert not kept.is_symlink() and not kept.stat().st_mode & 0o002  # made again, this user's own
    assert all(np.array_equal(a, b) for a, b in zip(real, sets._digits_split()))


@pytest.mark.skipif(not hasattr(os, "getuid"), reason="no POSIX owners and modes (Windows): nothing is checked")
def test_the_digits_cache_reste_writes_passes_its_own_check_whatever_the_umask(tmp_path, monkeypatch):
    """(review install1 #4) Under umask 002, with a primary group shared with others, the cached split was written
    group-writable, which the check above then refused: it was split and written again in every command."""
    import sys

    from reste import native
    from reste.data import sets

    monkeypatch.setenv("RESTE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(native, "_private_group", lambda gid: False)  # (a lab's group, not the user's own)
    old = os.umask(0o002)
    try:
        first = sets._digits_split()
        kept = next((tmp_path / "cache").glob("digits-*.npz"))
        assert kept.stat().st_mode & 0o777 == 0o600
        monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # an import of scikit-learn would now fail
        assert all(np.array_equal(a, b) for a, b in zip(first, sets._digits_split()))
    finally:
        os.umask(old)


def test_cifar10_default_folder_is_recorded_so_eval_finds_it_from_elsewhere(tmp_path, monkeypatch):
    """(review docs #1) Without --data-path a CIFAR-10 run reads ./data; config.json recorded null, so `reste eval
    RUN_DIR` or --resume from any other folder looked for another ./data."""
    import json

    from reste.cli import main
    from reste.config import TrainConfig

    here, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    write_cifar(here / "data", per_batch=4, n_test=6)
    elsewhere.mkdir()
    monkeypatch.chdir(here)
    assert TrainConfig(dataset="cifar10").resolve().data_path == str(here / "data")
    assert main(["train", "--dataset", "cifar10", "--epochs", "1", "--batch-size", "4", "--out", "run",
                 "--no-progress", "--threads", "1"]) == 0
    assert json.loads((here / "run" / "config.json").read_text())["data_path"] == str(here / "data")
    monkeypatch.chdir(elsewhere)
    assert main(["eval", str(here / "run" / "last.pt"), "--json"]) == 0


def test_fashion_mnist_read_from_the_current_folders_data_is_recorded(tmp_path, monkeypatch):
    """(left alone twice) Fashion-MNIST without --data-path, found in ./data/FashionMNIST/raw (where --download puts
    it when there is no system copy): config.json recorded null, so `reste eval` or --resume from another folder
    looked in that folder's ./data. It records the folder read, absolute, as CIFAR-10's default is; the system copy,
    found from anywhere, stays unrecorded."""
    from reste import engine, rundir
    from reste.config import TrainConfig

    write_fashion(tmp_path / "work" / "data" / "FashionMNIST" / "raw", n_train=20, n_test=10)
    monkeypatch.setattr(formats, "SYSTEM_FASHION_MNIST", tmp_path / "absent")
    monkeypatch.chdir(tmp_path / "work")
    cfg = TrainConfig(dataset="fashion-mnist", epochs=1, batch_size=10, eval_batch_size=10, threads=1)
    planned = engine.planned_config(cfg)  # (review rev13 #10) --print-config shows it too, before anything is read
    engine.train(cfg, tmp_path / "run", progress=False, log=lambda line: None)
    assert rundir.run_config(tmp_path / "run").data_path == str(tmp_path / "work" / "data") == planned.data_path
    assert rundir.run_config(tmp_path / "run") == planned
    monkeypatch.chdir(tmp_path)  # no ./data here
    assert engine.planned_config(cfg).data_path is None  # (nothing to read: the run says so)
    result = engine.evaluate_checkpoint(tmp_path / "run" / "best.pt")
    assert result["top1"] == result["stored_top1"]

    write_fashion(tmp_path / "system", n_train=20, n_test=10)
    monkeypatch.setattr(formats, "SYSTEM_FASHION_MNIST", tmp_path / "system")
    engine.train(cfg, tmp_path / "run2", progress=False, log=lambda line: None)
    assert rundir.run_config(tmp_path / "run2").data_path is None is engine.planned_config(cfg).data_path


def test_an_in_memory_train_set_is_augmented_whatever_its_test_set():
    """(review datafid #3) an in-memory train set paired with a test set read per image (a plugin's) went to the
    DataLoader, which applies no augmentation: --augment was recorded and nothing was augmented."""
    from reste.data import make_loaders
    from reste.data.memory import InMemoryDataset, TensorLoader

    torch.manual_seed(0)
    images = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8)
    labels = torch.arange(16) % 4
    train = InMemoryDataset(images.float() / 255, labels, augment=lambda x, gen: x.flip(3))
    test = torch.utils.data.TensorDataset(images.float() / 255, labels)
    loader, test_loader = make_loaders(train, test, batch_size=16, eval_batch_size=16)
    assert isinstance(loader, TensorLoader)
    x, y = next(iter(loader))
    order = loader.indices(0)
    assert torch.equal(x, (images.float() / 255)[order].flip(3)) and torch.equal(y, labels[order])
    assert len(list(test_loader)) == 1


def test_a_cifar_folder_is_named_by_its_batches_meta(tmp_path):
    """(review datafid, suggestion) CIFAR-10's names were hard-coded and batches.meta never read: a folder in its
    format of other classes was named, and exported, with CIFAR-10's. Its label_names now name them; a missing or
    unusable batches.meta leaves CIFAR-10's."""
    folder = write_cifar(tmp_path)
    names = [f"kind {i}" for i in range(10)]
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [n.encode() for n in names]}, protocol=2))
    for in_memory in (True, False):
        train, test, info = load_datasets("cifar10", tmp_path, in_memory=in_memory)
        assert list(info.classes) == names
    # (rev15 #3) not usable (a string array, which the safe reader of the pickles refuses, repeated names, one
    # string): CIFAR-10's names, said
    for odd in (np.array(names), [b"same"] * 10, "abcdefghij"):
        (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": odd}, protocol=2))
        with pytest.warns(UserWarning, match="gives no class names reste can use"):
            assert tuple(load_datasets("cifar10", tmp_path)[2].classes) == D.CIFAR10_CLASSES
    (folder / "batches.meta").unlink()
    assert tuple(load_datasets("cifar10", tmp_path)[2].classes) == D.CIFAR10_CLASSES
    # (rev15 #4) a run that recorded CIFAR-10's names (every run before batches.meta was read) takes the folder
    from reste.data.sets import DatasetInfo, check_classes

    check_classes(10, list(D.CIFAR10_CLASSES), DatasetInfo("cifar10", 10, (3, 32, 32), 20, 6, tuple(names)), "x")
    with pytest.raises(UsageError, match="other classes"):
        check_classes(10, names[::-1], DatasetInfo("cifar10", 10, (3, 32, 32), 20, 6, tuple(names)), "x")


def test_a_test_only_cifar_folder_without_batches_meta_evaluates_a_run_of_other_names(tmp_path, capsys):
    """(review formats1 #1) eval and predict need only test_batch, but a folder without batches.meta was named as
    CIFAR-10, so a run trained on a CIFAR-format folder of other names was refused ("other classes ... class
    folders"). The test split alone has unknown names now: the count is checked, the names are not."""
    from reste.cli import main

    folder = write_cifar(tmp_path / "named")
    names = [f"kind {i}" for i in range(10)]
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [n.encode() for n in names]}, protocol=2))
    alone = tmp_path / "alone" / "cifar-10-batches-py"
    alone.mkdir(parents=True)
    (alone / "test_batch").write_bytes((folder / "test_batch").read_bytes())
    for in_memory in (True, False):
        _, test, info = load_datasets("cifar10", tmp_path / "alone", train=False, in_memory=in_memory)
        assert info.classes is None and info.num_classes == 10 and len(test) == 6
    run = tmp_path / "run"
    assert main(["train", "--dataset", "cifar10", "--data-path", str(tmp_path / "named"), "--model", "resnet20_1w1a",
                 "--epochs", "1", "--batch-size", "10", "--threads", "1",
                 "--no-progress", "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["eval", str(run), "--data-path", str(tmp_path / "alone")]) == 0, capsys.readouterr().err
    assert "top-1" in capsys.readouterr().out


def test_a_data_set_infos_class_names_are_strings_whatever_the_loader_gave():
    """(review diff25, suggestion 5) a plugin's loader may build its DatasetInfo with classes named by numbers, or
    as a list: they are kept as the tuple of strings that checkpoints record and eval, resume and predict compare;
    one string is refused, not split into letters."""
    from reste.data.sets import DatasetInfo

    info = DatasetInfo("digits", 3, (1, 8, 8), 30, 9, [0, 1, 2])
    assert info.classes == ("0", "1", "2")
    assert DatasetInfo("digits", 3, (1, 8, 8), 30, 9, None).classes is None
    with pytest.raises(TypeError, match="got a string 'abc'"):
        DatasetInfo("digits", 3, (1, 8, 8), 30, 9, "abc")
    # (review diff26 #1) a run or export written before, which recorded the numbers themselves, is still its data's
    from reste.data.sets import check_classes

    check_classes(3, [0, 1, 2], info, "x")
    with pytest.raises(UsageError, match="label 1 is '2', was 1"):
        check_classes(3, [0, 1, 2], DatasetInfo("digits", 3, (1, 8, 8), 30, 9, [0, 2, 1]), "x")


class _OwnRandomItems(torch.utils.data.Dataset):
    """A plugin's plain data set whose items augment themselves from the global generators (torch's, Python's
    and NumPy's), as a torchvision ImageFolder given a RandomCrop does."""

    def __len__(self) -> int:
        return 24

    def __getitem__(self, i: int):
        import random

        noise = torch.rand(2) + random.random() + float(np.random.rand())
        return torch.full((1, 2, 2), float(i)) + noise.view(1, 1, 2), i % 3


def test_a_plain_data_sets_own_augmentation_is_keyed_by_seed_epoch_and_index():
    """(review exact1 #1) a data set that is neither reste's nor a TransformDataset drew its augmentation from
    generators that had run on: a resume inside an epoch replayed the batches before it after the checkpoint's
    generators were put back, and new persistent workers started from the first epoch's seeds, so the resumed run
    trained on other images, silently. Each item is now read with the generators seeded from its (seed, epoch,
    index): an epoch's batches are the same from the start, from a resume's step, and with any number of workers."""
    train, test = _OwnRandomItems(), _OwnRandomItems()
    single, _ = make_loaders(train, test, batch_size=5, eval_batch_size=8, seed=4, workers=0)
    single.set_epoch(2)
    whole = batches(single)
    assert not same_batches(whole, batches(single))  # epoch 3: other augmentations (and another order)
    torch.manual_seed(123)  # whatever ran before: the generators the items see are their keys'
    resumed, _ = make_loaders(train, test, batch_size=5, eval_batch_size=8, seed=4, workers=0)
    resumed.set_epoch(2)
    assert resumed.start_at(3)  # no batch drawn and dropped
    assert same_batches(batches(resumed), whole[3:])
    workers, _ = make_loaders(train, test, batch_size=5, eval_batch_size=8, seed=4, workers=1)
    workers.set_epoch(0)
    batches(workers)  # the persistent worker has served epoch 1 before it serves epoch 3
    workers.set_epoch(2)
    assert same_batches(batches(workers), whole)
    del workers
    # (review diff26, suggestion 1) a batch's items read at once, the generators kept once a batch: the same items,
    # the caller's generators as they were; the base's attributes show through; it pickles (spawned workers)
    import pickle

    from reste.data.sampling import SeededItems

    items, keys = SeededItems(train), [(4, 2, i) for i in (5, 0, 17)]
    state = torch.get_rng_state()
    batch = items.__getitems__(keys)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(a[0], b[0]) and a[1] == b[1] for a, b in zip(batch, [items[k] for k in keys]))
    train.classes = ["a", "b", "c"]
    assert items.classes == ["a", "b", "c"] and len(pickle.loads(pickle.dumps(items))) == 24
    import copy

    assert isinstance(copy.deepcopy(items), SeededItems)  # (review diff27 #2) not its base's copy
    torch.manual_seed(0)  # (review diff27 #1) plain indices draw from the generators as they run on
    assert not torch.equal(items.__getitems__([1, 2])[0][0], items.__getitems__([1, 2])[0][0])


def test_make_loaders_refuses_sizes_and_seeds_that_are_no_whole_numbers():
    """(review types1 #2) batch_size=2.5 trained batches of 2, True batches of 1, seed=1.5 seed 1's batches."""
    train, test, _ = load_datasets("digits")
    for change in (dict(batch_size=2.5), dict(batch_size=True), dict(eval_batch_size="8"), dict(seed=1.5),
                   dict(workers=0.0)):
        with pytest.raises(UsageError, match=f"make_loaders: {next(iter(change))} must be a whole number"):
            make_loaders(train, test, **{**dict(batch_size=8, eval_batch_size=8, seed=0), **change})
    loader, _ = make_loaders(train, test, batch_size=np.int64(8), eval_batch_size=8, seed=np.int64(3))
    assert len(next(iter(loader))[1]) == 8  # NumPy's integers are whole numbers
    with pytest.raises(UsageError, match=r"^make_loaders needs the test set"):  # (apifuzz1: NoneType has no len())
        make_loaders(train, None, batch_size=8, eval_batch_size=8)


def test_a_transformed_batch_keeps_the_generators_once_a_batch(monkeypatch):
    """(review perf4) the per-image transform path (CIFAR-10 from files, ImageNet) saved and put back torch's,
    Python's and NumPy's generators around every sample in the main process, about 100 us a sample: 1.6x the time of
    the CIFAR-10 train pipeline (benchmarks/train_step.py --loader). A batch keeps them once, with the same samples
    as one by one, and the caller's generators as they were."""
    import random

    from reste.data import sampling
    from reste.data.sampling import TransformDataset

    def transform(image):
        return image + torch.rand(1) + random.random() + float(np.random.rand())

    base = [(torch.zeros(1), i % 3) for i in range(20)]
    train, test = TransformDataset(base, transform), TransformDataset(base)
    kept, calls = sampling._kept_globals, []
    monkeypatch.setattr(sampling, "_kept_globals", lambda: calls.append(1) or kept())
    loader, _ = make_loaders(train, test, batch_size=5, eval_batch_size=5, seed=3, workers=0)
    loader.set_epoch(1)
    states = torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy()
    got = [(images, labels) for images, labels in loader]
    assert torch.equal(torch.get_rng_state(), states[0]) and random.getstate() == states[1]
    assert np.array_equal(np.random.get_state()[1], states[2])
    assert len(got) == 4 and len(calls) <= 4  # once a batch, not once a sample (20)
    one_by_one = [train[(3, 1, i)] for i in sampling.epoch_order(20, 3, 1).tolist()]
    assert torch.equal(torch.cat([images for images, _ in got]), torch.stack([im for im, _ in one_by_one]))
    assert torch.cat([labels for _, labels in got]).tolist() == [label for _, label in one_by_one]


def test_a_train_set_without_a_transform_gives_its_items_in_the_epoch_order():
    """(review mut13) A TransformDataset without a transform (reste.data's public class, a set of ready tensors) as the
    train set: its batches, read at once by __getitems__ with the sampler's (seed, epoch, index) keys, are its base's
    items in the epoch's order; without the transform test there, the batch path called None on each image."""
    from reste.data import sampling
    from reste.data.sampling import TransformDataset

    base = [(torch.full((1,), float(i)), i % 3) for i in range(10)]
    loader, _ = make_loaders(TransformDataset(base), TransformDataset(base), batch_size=5, eval_batch_size=5, seed=3,
                             workers=0)
    loader.set_epoch(2)
    order = sampling.epoch_order(10, 3, 2).tolist()
    images = torch.cat([images for images, _ in loader])
    assert images.flatten().tolist() == [float(i) for i in order]
