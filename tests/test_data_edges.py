"""Edges of data loading (review "data"): the test split alone, keyed augmentation drawing from Python's and NumPy's
generators, a data path that is a file, from_tensors' labels and class names, 32-bit images, and what to do about a
damaged file that --download will not fetch again."""

from __future__ import annotations

import gzip
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from reste.data import TransformDataset, formats, from_tensors, load_datasets, make_loaders
from test_data import batches, same_batches, usage_error, write_cifar, write_fashion, write_image_folder

# --------------------------------------------------------------------------- the test split alone (review #1)


@pytest.mark.parametrize("dataset, write, train_files", [
    ("cifar10", write_cifar, [f"cifar-10-batches-py/data_batch_{i}" for i in range(1, 6)]),
    ("fashion-mnist", write_fashion, ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"]),
])
def test_a_folder_holding_only_the_test_split_serves_evaluation(tmp_path, monkeypatch, dataset, write, train_files):
    """``reste eval`` and ``predict --dataset`` (``train=False``) read the test split alone: a folder holding only
    its files is enough (it was refused as incomplete, and told to download the whole set); training still wants
    the train files, and no download is tried for evaluation."""
    import torchvision

    whole, part = tmp_path / "whole", tmp_path / "test-only"
    write(whole)
    shutil.copytree(whole, part)
    for name in train_files:
        (part / name).unlink()
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", lambda *a, **k: pytest.fail("downloaded"))
    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", lambda *a, **k: pytest.fail("downloaded"))
    no_train, test, info = load_datasets(dataset, part, train=False, download=True)
    _, want, want_info = load_datasets(dataset, whole, train=False)
    assert no_train is None and info == want_info
    loader = make_loaders(None, test, batch_size=4, eval_batch_size=4)[1]
    assert same_batches(batches(loader), batches(make_loaders(None, want, batch_size=4, eval_batch_size=4)[1]))
    missing = Path(train_files[0]).name.removesuffix(".gz")
    usage_error(load_datasets, dataset, part, match=f"missing {missing}")  # training needs them


def test_the_test_split_missing_is_named_alone(tmp_path):
    folder = write_cifar(tmp_path / "c")
    (folder / "test_batch").unlink()
    msg = usage_error(load_datasets, "cifar10", tmp_path / "c", train=False, match="is incomplete: missing test_batch;")
    assert "data_batch" not in msg


# --------------------------------------------------------------------------- keyed augmentation (review #2)


class NumpyShift:
    """A user's transform drawing from NumPy's global generator."""

    def __call__(self, x):
        return x + float(np.random.randint(0, 1000))


def _choosing_set(n: int = 12) -> TransformDataset:
    from torchvision import transforms as T

    base = [(torch.arange(16.0).view(1, 4, 4) * (i + 1), i % 3) for i in range(n)]
    # torchvision's RandomChoice draws from Python's random; each choice is otherwise deterministic
    choose = T.RandomChoice([T.RandomHorizontalFlip(1.0), T.RandomVerticalFlip(1.0), T.Compose([])])
    return TransformDataset(base, T.Compose([choose, NumpyShift()]), classes=["a", "b", "c"])


def test_a_keyed_transform_drawing_from_python_and_numpy_depends_on_the_key_alone():
    ds = _choosing_set()
    random.seed(1)
    np.random.seed(1)
    python_before, numpy_before = random.getstate(), np.random.get_state()
    first = ds[(0, 0, 1)][0]
    for _ in range(8):
        random.random(), np.random.rand()  # what ran before does not matter
        assert torch.equal(ds[(0, 0, 1)][0], first)
    random.seed(1)
    np.random.seed(1)
    ds[(0, 0, 1)]
    assert random.getstate() == python_before  # the callers' generators are put back
    assert all(np.array_equal(a, b) for a, b in zip(np.random.get_state(), numpy_before))
    outputs = {tuple(ds[(0, epoch, 1)][0].flatten().tolist()) for epoch in range(12)}
    assert len(outputs) > 3  # other keys, other draws: both generators drawn from


def test_a_keyed_transform_drawing_from_python_and_numpy_gives_the_same_batches_with_workers():
    ds = _choosing_set()
    test = TransformDataset([(torch.zeros(1, 4, 4), 0)] * 4)
    single, _ = make_loaders(ds, test, batch_size=4, eval_batch_size=4, seed=7, workers=0)
    multi, _ = make_loaders(ds, test, batch_size=4, eval_batch_size=4, seed=7, workers=2)
    for epoch in (3, 0):
        single.set_epoch(epoch)
        multi.set_epoch(epoch)
        random.seed(epoch + 100)  # the main process's state, unlike the workers' own
        assert same_batches(batches(single), batches(multi)), epoch
    del multi


# --------------------------------------------------------------------------- a data path that is a file (review #4)


def test_a_data_path_that_is_a_file_is_named_so_with_the_folder_to_pass(tmp_path):
    folder = write_cifar(tmp_path / "c")
    usage_error(load_datasets, "cifar10", folder / "data_batch_1",
                match=f"is a file, not a folder; pass the folder holding cifar-10-batches-py/ (or the batches "
                      f"themselves), such as {folder}")
    write_fashion(tmp_path / "f")
    usage_error(load_datasets, "fashion-mnist", tmp_path / "f" / "t10k-images-idx3-ubyte.gz", download=True,
                match=f"is a file, not a folder; pass the folder holding the idx files, such as {tmp_path / 'f'}")
    write_image_folder(tmp_path / "i")
    msg = usage_error(load_datasets, "imagenet", tmp_path / "i" / "train" / "n01" / "img0.JPEG",
                      match=f"is a file, not a folder; pass the folder holding train/ and val/, such as "
                            f"{tmp_path / 'i'}")
    assert msg.startswith("ImageNet data path ") and "empty" not in msg
    (tmp_path / "notes.txt").write_text("x")
    assert usage_error(load_datasets, "cifar10", tmp_path / "notes.txt").endswith(
        "pass the folder holding cifar-10-batches-py/ (or the batches themselves)")  # nothing near to suggest


# --------------------------------------------------------------------------- from_tensors (review #5)


def _digits_like(labels):
    return np.zeros((len(labels), 1, 8, 8), np.uint8), labels


def test_from_tensors_refuses_float_labels_and_a_string_of_class_names():
    names = tuple("0123456789")
    usage_error(from_tensors, "digits", _digits_like(np.array([0.9, 1.5, 2.99, 0.2])), _digits_like([0, 1]),
                classes=names, match="digits: labels must be integers, got torch.float64; convert them")
    usage_error(from_tensors, "digits", None, _digits_like(torch.tensor([1.0, 2.0])), classes=names,
                match="labels must be integers, got torch.float32")  # whole floats too: the type says it
    usage_error(from_tensors, "digits", None, _digits_like([0, 1]), classes="0123456789",
                match="digits: classes must be a sequence of names, one per class, got a string '0123456789'")
    train, test, info = from_tensors("digits", _digits_like(np.array([3, 9], np.uint8)), _digits_like([True, False]),
                                     classes=names)
    assert train.labels.tolist() == [3, 9] and test.labels.tolist() == [1, 0] and info.classes == names
    assert len(from_tensors("digits", None, _digits_like([]))[1]) == 0  # no labels at all: nothing to truncate
    for labels, given in (([0, 10], "0..10"), ([-1, 3], "-1..3")):  # (review mut7 #8) 10 classes: labels 0 to 9
        usage_error(from_tensors, "digits", None, _digits_like(labels), classes=names,
                    match=f"digits: labels must be in [0, 10), got {given}")


class _DeviceTensor(torch.Tensor):
    """A CPU stand-in for a tensor on a GPU: NumPy cannot read it (``np.asarray`` of a CUDA tensor raises so)."""

    def __array__(self, *args, **kwargs):
        raise TypeError("can't convert cuda:0 device type tensor to numpy. Use Tensor.cpu() to copy the tensor to "
                        "host memory first.")

    def numpy(self, *args, **kwargs):
        return self.__array__()


def test_from_tensors_takes_tensors_where_they_are_not_through_numpy():
    """(review gpuread1 #1) a plugin's loader of tensors already on the training GPU got "can't convert cuda:0
    device type tensor to numpy": from_tensors read every pair through np.asarray. The stand-in's NumPy path
    raises as a GPU tensor's does; the tensors are held as given, not copied."""
    images = torch.arange(4 * 64, dtype=torch.int64).remainder(256).to(torch.uint8).reshape(4, 1, 8, 8)
    labels = torch.tensor([3, 1, 4, 1])
    gpu_like = (images.clone().as_subclass(_DeviceTensor), labels.clone().as_subclass(_DeviceTensor))
    with pytest.raises(TypeError, match="device type tensor to numpy"):
        np.asarray(gpu_like[0])  # (the stand-in stands in)
    train, test, _ = from_tensors("digits", gpu_like, gpu_like, augment=True, pad=1)
    assert train.data.data_ptr() == gpu_like[0].data_ptr()  # held where it was given, no copy
    assert torch.equal(torch.Tensor(train.data), images) and torch.equal(torch.Tensor(test.labels), labels)
    x, y = next(iter(make_loaders(train, test, batch_size=4, eval_batch_size=4)[1]))
    assert x.shape == (4, 1, 8, 8) and torch.equal(torch.Tensor(y), labels)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_from_tensors_takes_tensors_on_the_gpu():
    """(review gpuread1 #1) tensors on the GPU stay there, and their batches are the CPU's."""
    images = torch.randint(0, 256, (6, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 2, 3, 4, 5])
    on_gpu = from_tensors("digits", (images.cuda(), labels.cuda()), (images.cuda(), labels.cuda()), augment=True,
                          pad=2)
    on_cpu = from_tensors("digits", (images, labels), (images, labels), augment=True, pad=2)
    assert on_gpu[0].device.type == "cuda" and on_gpu[1].device.type == "cuda"
    for (xg, yg), (xc, yc) in zip(make_loaders(*on_gpu[:2], batch_size=4, eval_batch_size=4, seed=3)[0],
                                  make_loaders(*on_cpu[:2], batch_size=4, eval_batch_size=4, seed=3)[0]):
        assert xg.device.type == "cuda" and torch.equal(xg.cpu(), xc) and torch.equal(yg.cpu(), yc)


# --------------------------------------------------------------------------- 32-bit images (review #6)


@pytest.mark.parametrize("values", [np.arange(100).reshape(10, 10) * 1000, np.arange(-50, 50).reshape(10, 10)])
def test_a_32_bit_image_outside_16_bits_is_refused_not_clipped(tmp_path, values):
    from PIL import Image

    from reste._pixels import eight_bit

    Image.fromarray(values.astype(np.int32), "I").save(tmp_path / "i32.tif")
    with Image.open(tmp_path / "i32.tif") as image:
        assert image.mode == "I"
        with pytest.raises(ValueError, match=r"^integer pixels outside \[0, 65535\]: save it as 8 or 16 bits$"):
            eight_bit(image)
    usage_error(formats._read_image, str(tmp_path / "i32.tif"),
                match="i32.tif (integer pixels outside [0, 65535]: save it as 8 or 16 bits)")


# --------------------------------------------------------------------------- a damaged file (review #7)


def test_a_damaged_file_says_to_delete_it_since_download_fetches_only_missing_files(tmp_path, monkeypatch):
    """--download fetched nothing for a damaged file (only a missing one), yet the message said "re-download": it
    now says to delete the file first, and then --download does fetch it."""
    import torchvision

    calls = []

    def fake_cifar(root, train=True, download=False, **kw):
        calls.append("cifar")
        shutil.rmtree(Path(root) / "cifar-10-batches-py", ignore_errors=True)
        write_cifar(Path(root))

    def fake_fashion(root, train=True, download=False, **kw):
        calls.append("fashion")
        write_fashion(Path(root) / "FashionMNIST" / "raw")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", fake_cifar)
    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", fake_fashion)
    advice = "delete it and run again with download=True (download=True fetches only missing files)"

    batch = write_cifar(tmp_path / "c") / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:300])
    usage_error(load_datasets, "cifar10", tmp_path / "c", download=True,
                match=f"{batch} is not a CIFAR-10 python batch (pickle data was truncated); {advice}")
    assert calls == []  # nothing missing: nothing fetched
    batch.unlink()
    load_datasets("cifar10", tmp_path / "c", download=True)  # as told
    assert calls == ["cifar"]

    write_fashion(tmp_path / "f")
    idx = tmp_path / "f" / "train-images-idx3-ubyte.gz"
    idx.write_bytes(idx.read_bytes()[:200])
    usage_error(load_datasets, "fashion-mnist", tmp_path / "f", download=True,
                match=f"{idx} is not a valid gzip file (Compressed file ended before the end-of-stream marker was "
                      f"reached); {advice}")
    assert calls == ["cifar"]
    idx.unlink()
    _, _, info = load_datasets("fashion-mnist", tmp_path / "f", download=True)
    assert calls == ["cifar", "fashion"] and info.train_size == 50

    plain = tmp_path / "p" / "t10k-labels-idx1-ubyte"
    write_fashion(plain.parent, gz=False)
    plain.write_bytes(plain.read_bytes()[:-3])
    usage_error(load_datasets, "fashion-mnist", plain.parent, match=f"the file is truncated or corrupted: {advice}")


def test_a_damaged_file_of_the_system_copy_is_the_package_to_reinstall(tmp_path, monkeypatch):
    write_fashion(tmp_path / "system")
    idx = tmp_path / "system" / "t10k-images-idx3-ubyte.gz"
    idx.write_bytes(gzip.compress(b"\0\0\10\3")[:12])
    monkeypatch.setattr(formats, "SYSTEM_FASHION_MNIST", tmp_path / "system")
    msg = usage_error(load_datasets, "fashion-mnist", match=str(idx))
    assert msg.endswith("reinstall Debian's dataset-fashion-mnist package, or pass data_path a folder holding a good "
                        "copy") and "delete" not in msg


def test_an_image_folders_samples_are_in_torchvisions_order(tmp_path):
    """(review mut8 #7) torchvision sorts the walked folders by path, and "a-b" comes before "a/x" there ("-" sorts
    before "/"): the samples' indices, which the epoch's order and `reste predict DIR`'s rows follow, are its."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

    from reste.data.imagefolder import VisibleImageFolder, image_files_below

    for rel in ("cls/a/1.png", "cls/a-b/2.png", "cls/a/x/3.png", "cls/a.b/4.png", "cls/a0/5.png", "cls/b/6.png",
                "other/z.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    classes = {"cls": 0, "other": 1}
    want = make_dataset(str(tmp_path), classes, IMG_EXTENSIONS)
    assert [p for p, _ in want if "/a/x/" in p] and VisibleImageFolder.make_dataset(str(tmp_path), classes,
                                                                                    IMG_EXTENSIONS) == want
    assert image_files_below(str(tmp_path / "cls")) == [p for p, c in want if c == 0]
