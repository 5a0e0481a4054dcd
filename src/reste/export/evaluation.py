"""A packed model's accuracy on a data set's test split: what ``reste predict FILE --dataset NAME`` prints.

Reads the data through :mod:`reste.data` (imported when called), so ``import reste.export.runtime`` stays free
of the training side.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable

from ..errors import UsageError, option
from ..wording import LINE_EVERY, printable
from .runtime import BATCH_SIZE


def model_classes(model: Any, images: Any = None) -> int | None:
    """The number of classes a packed model (a :class:`~reste.export.runtime.PackedModel`) predicts: the width of
    the (N, classes) output its graph computes, on one input of its recorded size (zeros) or, where it records none,
    on the first of ``images`` (a batch); a model whose output is something else is refused
    (:func:`~reste.export.runtime.class_scores`). With no input to run, the ``num_classes`` its export records (None
    where it records none). Review deploy #5: a file written by ``export_model`` records none, and was never
    checked against a data set's classes or labels."""
    import torch

    from .runtime import class_scores

    if model.input_size:
        one = torch.zeros(1, *model.input_size)
    elif images is not None and len(images):
        one = images[:1]
    else:
        options = model.meta.get("model_options")
        value = options.get("num_classes") if isinstance(options, dict) else None
        return value if isinstance(value, int) else None
    return int(class_scores(model.forward(one)).shape[1])


def _a_packed_path(model: Any, who: str) -> None:
    """A one-line ``UsageError`` for a ``model`` that is neither a ``PackedModel`` nor a path: a PyTorch model (which
    gave "expected str, bytes or os.PathLike object, not Sequential" from pathlib: review apifuzz1)."""
    if not isinstance(model, (str, os.PathLike)):
        what = "a PyTorch model: write it to one with reste.export.export_model first" if hasattr(
            model, "state_dict") else type(model).__name__
        raise UsageError(f"{who} takes a packed model (PackedModel.load(path)) or its file's path, got {what}")


def _check_counts(batch_size: Any, workers: Any) -> None:
    """Refuse a batch size below 1 and a negative or non-integer worker count (None: the default), in one line."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise UsageError(f"{option('--batch-size', 'batch_size')} must be at least 1, got {batch_size!r}")
    from ..config import check_worker_count

    check_worker_count(workers)


def _to_recorded(meta: dict[str, Any], spec: Any) -> Callable[[Any], Any] | None:
    """Where the export records a normalisation of its own (its mean, std and pixel scale: a model of yours trained
    on other units), what turns the data set's normalised images into it: their pixels in the file's units, p = (x
    std + mean) pixel_scale (the fraction of white, which both units share), rounded to the whole numbers its raw
    pixels are, then normalised as the raw-pixel path does, exactly (review
    newuser2 #1: --dataset fed the data set's, 98.06% scored as 21.11%; diff14 #1: not in float64, which gave a
    tiny negative for an exact 0). None where it records the data set's own. A file that records only part of one,
    or another resize than the data set's test images had, is refused (review diff14 #3, #7)."""
    from .inputs import normalise
    from .ir import Preprocessing

    pre = Preprocessing.from_meta(meta)
    if pre is None:
        if any(meta.get(k) is not None for k in Preprocessing.KEYS):
            raise UsageError(f"the packed model records only part of its preprocessing ("
                             f"{', '.join(k for k in Preprocessing.KEYS if meta.get(k) is not None)} of "
                             f"{', '.join(Preprocessing.KEYS)}), so --dataset cannot tell which units it takes; export "
                             "it again with all of them")
        return None
    if pre.resize is not None and pre.resize != spec.test_resize:  # (whatever its normalisation: review mut9 #2)
        raise UsageError(f"the packed model records its own resize ({pre.resize}), not {spec.name}'s test images' "
                         f"({spec.test_resize}); predict the image files themselves, which it resizes as it records")
    if (tuple(pre.mean), tuple(pre.std), float(pre.pixel_scale)) == (tuple(spec.mean), tuple(spec.std),
                                                                     float(spec.scale)):
        return None
    import numpy as np
    import torch

    shape = (1, -1) + (1,) * (len(pre.input_size) - 1)
    ds_mean = np.asarray(spec.mean, np.float64).reshape(shape)
    ds_std = np.asarray(spec.std, np.float64).reshape(shape)

    def remap(x: Any) -> Any:  # (the fraction of white, in the file's units: review mut9 #1)
        pixels = np.rint((x.double().numpy() * ds_std + ds_mean) * float(pre.pixel_scale))
        return torch.from_numpy(normalise(np.clip(pixels, 0, None), pre, pre.pixel_scale))

    return remap


def evaluate_packed(model: Any, dataset: str | None = None, *, data_path: str | os.PathLike | None = None,
                    download: bool = False, batch_size: int = BATCH_SIZE, backend: str = "auto",
                    workers: int | None = None, log: Callable[[str], None] | None = None,
                    line_every: float = LINE_EVERY) -> dict[str, Any]:
    """Top-1 of a packed model (a :class:`~reste.export.runtime.PackedModel` or the path of its file) on the test
    split of ``dataset`` (default: the data set its export names). Returns ``model`` (its name), ``dataset``,
    ``top1`` (%), ``images``, ``seconds``, ``backend``, ``kernels`` (the backend and its variant, ``c/avx2``) and
    ``stored_top1`` (the checkpoint's own test top-1 that
    the export recorded, or None). The model's input size and classes are checked against the data set before any
    file is read or downloaded. ``backend``: the kernels that run it (``"auto"``, ``"c"``, ``"numpy"``; a
    :class:`~reste.export.runtime.PackedModel` given with another one is run on a copy with it). ``workers``: DataLoader
    processes for a data set read from files (by default as
    ``reste eval``: one per usable CPU, up to 8); ``log``: a line every ``line_every`` seconds of a long run."""
    from ..config import check_data_path, check_workers, default_workers
    from ..data import check_classes, load_datasets, make_loaders
    from ..datasets import get_spec
    from .inputs import check_shape
    from .runtime import PackedModel, class_scores

    _check_counts(batch_size, workers)
    name = None
    if not isinstance(model, PackedModel):
        _a_packed_path(model, "evaluate_packed")
        name = Path(model).name
        model = PackedModel.load(model, backend=backend)
    else:  # (review types1 #3: ignored, and the result said 'c')
        model = model.with_backend(backend)
    given, dataset = dataset, dataset or model.meta.get("dataset")
    if not dataset:
        raise UsageError("pass IMAGES.npy or --dataset NAME (the export does not name its data set)")
    try:
        spec = get_spec(dataset)  # checked before any file is read or downloaded
    except UsageError:
        if given:
            raise
        # (review newuser5, suggestion) a plugin's data set, the plugin not loaded: say where the name came from
        raise UsageError(f"the export names the data set {dataset!r}, which is not registered here: pass the "
                         "--plugin that registers it (as its training did), or --dataset NAME") from None
    check_shape(model.input_size, spec.input_size, f"the {spec.name} data set")
    classes = model_classes(model)  # (a model that is no classifier: refused before any file is read)
    if classes is not None and classes != spec.num_classes and not spec.folder_classes:
        raise UsageError(f"the model predicts {classes} classes but {spec.name} has {spec.num_classes}; "
                         "pass the data set it was trained on")
    recorded = _to_recorded(model.meta, spec)  # (None: the data set's images as they are; before any file is read)
    check_data_path(spec.name, data_path, download)
    check_workers(spec.name, workers)
    _, test_ds, info = load_datasets(dataset, data_path, download=download, train=False)
    if not model.input_size and len(test_ds):  # no recorded input size: the graph's outputs on a test image
        classes = model_classes(model, test_ds[0][0][None])
    check_classes(classes, model.meta.get("classes"), info, data_path)  # a folder's, known once it is read
    # (review imgdist #6) an image folder's files decoded by worker processes, as reste eval does, with its lines
    workers = default_workers(spec.name) if workers is None else workers
    _, loader = make_loaders(None, test_ds, batch_size=batch_size, eval_batch_size=batch_size, workers=workers)
    correct = total = 0
    start = since = time.perf_counter()
    n_since, batches = 0, len(loader)
    for i, (images, labels) in enumerate(loader):
        pred = class_scores(model.forward(images if recorded is None else recorded(images))).argmax(1)
        correct += int((pred == labels).sum())
        total += int(labels.numel())
        if log is not None and time.perf_counter() - since >= line_every and i < batches - 1:
            log(f"  predicting: batch {i + 1}/{batches}  ({(total - n_since) / (time.perf_counter() - since):,.0f} "
                "images/s)")
            since, n_since = time.perf_counter(), total
    seconds = time.perf_counter() - start
    if total == 0:
        raise UsageError("the test set is empty; check --data-path")
    stored = model.meta.get("test_acc")  # exports made before it was recorded have the run's best alone
    return {"model": model.meta.get("model_name") or name, "dataset": info.name, "top1": 100.0 * correct / total,
            "images": total, "seconds": seconds, "backend": model.backend, "kernels": model.kernel_name,
            "stored_top1": float(stored) if isinstance(stored, (int, float)) else None}


def predict_images(model: Any, paths: Any, *, batch_size: int = BATCH_SIZE, workers: int | None = None,
                   log: Callable[[str], None] | None = None, line_every: float = LINE_EVERY) -> dict[str, Any]:
    """The classes a packed model (a :class:`~reste.export.runtime.PackedModel` or the path of its file) predicts
    for image files: those
    ``paths`` name, a folder standing for the image files below it (:func:`reste.export.inputs.image_files`).
    Each file gets the preprocessing the export records, as one image file given to ``reste predict`` does.
    Returns ``files`` (the files predicted, in order), ``classes`` (an int64 array, one per file), ``unreadable``
    (``(file, reason)`` for each file that is no image reste reads: left out, the others predicted) and
    ``seconds``. ``workers``: DataLoader processes decoding the files (default: none for a batch or less, else
    one per usable CPU, up to 8); ``log``: a line every ``line_every`` seconds of a long run."""
    import numpy as np

    from ..config import file_workers
    from ..data.loaders import EpochDataLoader, _worker_init
    from .inputs import ImageFileInputs, check_takes_raw, image_files
    from .runtime import PackedModel

    _check_counts(batch_size, workers)
    if not isinstance(model, PackedModel):  # a path, as evaluate_packed takes (review types1, suggestion 2)
        _a_packed_path(model, "predict_images")
        model = PackedModel.load(model)
    check_takes_raw(model.input_size, model.preprocessing, model.meta)  # before any file is read
    files = image_files([paths] if isinstance(paths, (str, os.PathLike)) else paths)
    if workers is None:  # processes to start only where there is more than one batch to decode
        workers = file_workers() if len(files) > batch_size else 0
    inputs = ImageFileInputs(files, model.input_size, model.preprocessing, model.meta)
    # (as they are: a reason is text, no tensor); the training loaders' processes: a stop signal sent to the whole
    # process group (a closed terminal's SIGHUP, a job's end) is the command's to answer, which ends them, where
    # torch's own handler in a process that died of it failed the command with its traceback (review chaos6 #3)
    workers = min(workers, len(files))
    loader = EpochDataLoader(inputs, batch_size=batch_size, num_workers=workers, collate_fn=list,
                             worker_init_fn=_worker_init if workers else None)
    kept: list[int] = []
    classes: list[np.ndarray] = []
    unreadable: list[tuple[str, str]] = []
    start = since = time.perf_counter()
    done = done_since = 0
    for batch in loader:
        good = [(i, x) for i, x in batch if not isinstance(x, str)]
        for i, reason in ((i, x) for i, x in batch if isinstance(x, str)):
            unreadable.append((files[i], reason))
            if log is not None:
                log(f"  left out: {printable(reason)}")
        if good:
            kept += [i for i, _ in good]
            classes.append(model.predict(np.stack([x for _, x in good]), batch_size=batch_size))
        done += len(batch)
        if log is not None and time.perf_counter() - since >= line_every and done < len(files):
            rate = (done - done_since) / (time.perf_counter() - since)
            log(f"  predicting: {done:,} of {len(files):,} images ({rate:,.0f} images/s)")
            since, done_since = time.perf_counter(), done
    pred = np.concatenate(classes).astype(np.int64) if classes else np.zeros(0, np.int64)
    return {"files": [files[i] for i in kept], "classes": pred, "unreadable": unreadable,
            "seconds": time.perf_counter() - start}
