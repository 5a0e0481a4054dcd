"""The ``export`` and ``predict`` sub-commands (registered by ``reste.cli`` via ``add_commands``).

    reste export CHECKPOINT OUT [--onnx [PATH]]    packed 1-bit file (+ ONNX), prints the size report
    reste predict EXPORTED --dataset NAME [--data-path P] [--download]   accuracy of the packed engine on the
                                                     test split
    reste predict EXPORTED IMAGES.npy [--labels L.npy] [--output P.npy|P.csv|P.json|-]   predictions for float
                                                     (preprocessed) or uint8 (raw) images
    reste predict EXPORTED photo.png                 the class of one image file (preprocessed as the
                                                     export header says)
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path
from typing import Any, Iterator

from ..errors import UsageError, json_line
from ..wording import count, printable, taken_at
from ..config import MAX_FILE_WORKERS
from ..plugins import add_plugin_flag
from .predictions import (as_bytes, class_name, prediction_format, prediction_rows, prediction_text,
                          save_predictions)
from .runtime import BATCH_SIZE


# the keys of predict's --json object (its help lists them: review arch3, suggestion 2): on a data set's test split,
# and on IMAGES (an array or image files), where a few are added as the help says
DATASET_KEYS = ("model", "dataset", "images", "top1", "stored_top1", "seconds", "backend", "kernels")
IMAGES_KEYS = ("images", "output", "accuracy", "seconds", "backend", "kernels")


def add_commands(subparsers: Any) -> None:
    p = subparsers.add_parser("export", help="write a checkpoint as a bit-packed 1-bit model (and ONNX)",
                              description="Pack every binary weight 8 per byte, fold the batch norms that "
                                          "fold exactly, and write one file that `reste predict` (or "
                                          "reste.export.PackedModel) runs without the training code.")
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="a .pt checkpoint or a run directory (uses its last.pt)")
    p.add_argument("out", metavar="OUT", help="the packed file to write (e.g. model.rbnn)")
    p.add_argument("--onnx", nargs="?", const="", default=None, metavar="PATH",
                   help="also write ONNX (default path: OUT with the suffix .onnx)")
    add_plugin_flag(p)
    p.set_defaults(func=cmd_export)

    p = subparsers.add_parser("predict", help="run a packed model (XOR/popcount inference on the CPU)",
                              description="Run a file written by `reste export`. With --dataset, prints the "
                                          "test accuracy; with IMAGES.npy, writes the predicted classes (and "
                                          "prints the accuracy with --labels); with an image file (PNG, JPEG), "
                                          "prints its class; with several image files or a folder of them, "
                                          "prints (or writes with --output) each file's class. "
                                          "Raw images (an image file, a uint8 array) are "
                                          "resized and normalised with the input size, mean and std the export "
                                          "records; a float array is taken as preprocessed.")
    p.add_argument("exported", metavar="EXPORTED", help="a file written by `reste export`")
    p.add_argument("images", metavar="IMAGES", nargs="*", default=[],
                   help="a .npy array: float (N, C, H, W) preprocessed ((N, C, L) for a model of 1-D layers), or "
                        "uint8 raw pixels (N, C, H, W), "
                        "(N, H, W) for one channel, or one image; or image files (PNG, JPEG, ...) and folders of "
                        "them (their image files, below them too, sorted; hidden ones left out)")
    p.add_argument("--dataset", help="evaluate on this data set's test split (default: the export's data set)")
    p.add_argument("--data-path", "--data_path", dest="data_path",
                   help="the data set's folder, as for `reste train --data-path` (with --dataset or the export's)")
    p.add_argument("--download", action="store_true",
                   help="download the data set's files first (torchvision), as `reste train --download`")
    p.add_argument("--labels",
                   help="a .npy array of the labels of IMAGES.npy (for an image file: a .npy holding its one label)")
    p.add_argument("--output", "-o", metavar="FILE",
                   help="where to write the predictions, in the format its suffix names: .npy (also no suffix), "
                        ".csv (index,class,name; for image files file,class,name) or .json; - writes CSV to "
                        "stdout (default IMAGES.pred.npy; for image files, a line per file on stdout)")
    p.add_argument("--batch-size", dest="batch_size", type=int, default=BATCH_SIZE,
                   help=f"images per forward pass (default {BATCH_SIZE})")
    p.add_argument("--workers", type=int, default=None,
                   help="with --dataset or several image files: processes decoding image files (default: 1 per "
                        f"usable CPU, up to {MAX_FILE_WORKERS}, as reste eval; for image files none when they fit "
                        "in one batch)")
    p.add_argument("--json", action="store_true",
                   help=f"print one JSON object instead of the line: with --dataset {', '.join(DATASET_KEYS)}; "
                        f"with IMAGES {', '.join(IMAGES_KEYS)} (and class, name for one image file; unreadable, and "
                        "without --output predictions, for several)")
    from .kernels import BACKENDS

    p.add_argument("--backend", choices=BACKENDS, default="auto",
                   help="XOR/popcount kernels: compiled C (auto when a compiler exists) or NumPy")
    p.add_argument("--threads", type=int,
                   help="CPU threads for the kernels and torch's float ops (default: torch's; 1 is best on a busy CPU)")
    add_plugin_flag(p)  # a data set of your own (--dataset)
    p.set_defaults(func=cmd_predict)


def cmd_export(args: argparse.Namespace) -> int:
    from ..distributed import one_process
    from .exporter import format_report
    from .from_checkpoint import export_checkpoint

    # (review dist, suggestion) each process wrote the same files and printed the whole report
    one_process("reste export", "write the same files and print its report")
    out = Path(args.out)
    if out.suffix.lower() == ".onnx":  # the packed format is reste's own: onnxruntime would refuse the file
        packed = out.with_suffix(".rbnn")
        raise UsageError(f"OUT {out} is written in reste's packed format, not ONNX; pass `{packed} --onnx {out}` "
                         f"(the packed model and the ONNX one), or `{packed} --onnx` to write {out} beside it")
    onnx_path = None
    if args.onnx is not None:
        onnx_path = Path(args.onnx) if args.onnx else out.with_suffix(".onnx")
        if onnx_path.resolve() == out.resolve():
            raise UsageError(f"the ONNX path {onnx_path} is the packed file itself; pass another --onnx PATH")
    for path in (out, onnx_path):
        if path is not None:
            _check_writable(path, (args.checkpoint,))  # a run folder's checkpoints: the .pt rule below
    replaced = [p for p in (out, onnx_path) if p is not None and p.is_file()]
    beside = out.with_suffix(".onnx")
    stale = beside if beside != out and beside.is_file() and (
        onnx_path is None or onnx_path.resolve() != beside.resolve()) else None  # (--onnx elsewhere leaves it too)
    status = 0

    def packed(report: dict[str, Any]) -> None:  # printed as soon as it is checked, before the ONNX file is begun
        nonlocal status
        print(f"wrote {out}" + (" (replacing the file that was there)" if out in replaced else ""))
        source = report.get("checkpoint", {})
        if source:  # which checkpoint (a run folder's last.pt: maybe one taken inside an epoch, not its best)
            inside = " (taken inside an epoch: no test accuracy of its own)" if source["step"] else ""
            print(f"  from {source['path']}, {taken_at(source['epoch'], source['step'])}{inside}")
        print(format_report(report), flush=True)
        if not report.get("verify", {}).get("ok", True):
            problems = "; ".join(report["verify"]["packed"]["problems"] + report["verify"]["model"]["problems"])
            print(f"reste: error: {out} does not compute what the model computes, beyond float32 rounding "
                  f"({problems[:300]}); please report this with the checkpoint", file=sys.stderr, flush=True)
            status = 1
        if onnx_path is not None:
            print(f"writing {onnx_path} (ONNX) ...", flush=True)

    written: list[Path] = []

    def said_stopped(name: str) -> None:  # what was written, what is as before (a stop signal's, or Ctrl-C's)
        left = [p for p in (out, onnx_path) if p is not None and p not in written]
        done = f"{written[0]} was written and checked; " if written else ""
        print(f"reste: export stopped by {name}; {done}{' and '.join(map(str, left))} "
              f"{'is' if len(left) == 1 else 'are'} as before (nothing half-written is left)", file=sys.stderr)

    try:
        with _stop_signals() as stopped:
            report = export_checkpoint(args.checkpoint, out, onnx_path=onnx_path,
                                       on_packed=lambda r: (packed(r), written.append(out)))
    except _Stopped:
        import signal

        said_stopped(signal.Signals(stopped[0]).name)
        return 128 + stopped[0]
    except KeyboardInterrupt:  # (it said "interrupted" alone, though the packed file may be done: review ux1, s. 3)
        said_stopped("Ctrl-C")
        return 130
    if "onnx" in report:
        o = report["onnx"]
        check = ""
        if "reference" in o:
            c = o["reference"]
            check = f"; onnxruntime vs float64: {c['agree']}/{c['images']} agree"
            if not c["traced"]:
                check += " (its logits alone: its signs could not be matched with the model's)"
            if c["near_tie"]:
                check += f", {c['near_tie']} sign flips at near-ties"
            if o.get("exact_ties"):  # (its float Conv sums +-alpha: review evalexact1 D1)
                check += (f", {o['exact_ties']} sign inputs exactly 0 that it computes as +-tiny (exact ties: a "
                          "binary layer's sum of +-1 that cancels before the next sign; a BatchNorm or a bias after "
                          "it removes them)")
            if c["mismatch"]:
                check += f", {c['mismatch']} NOT explained by rounding"
                status = 1
        elif "max_abs_diff" in o:
            check = f"; onnxruntime vs float32 model: max |logit diff| {o['max_abs_diff']:.2e}"
        elif "unchecked" in o:
            check = f"; not checked: {o['unchecked']}"
        again = " (replacing the file that was there)" if onnx_path in replaced else ""
        print(f"wrote {o['path']}{again} ({o['bytes']:,} bytes, {o['exporter']} exporter{check})")
        if "fallback" in o:
            print(f"  (the TorchScript exporter failed, so the dynamo exporter wrote it: {o['fallback']})")
    if stale is not None:
        again = "pass --onnx to write it again" if onnx_path is None else f"--onnx wrote {onnx_path} instead"
        print(f"note: {stale} beside it is from an earlier export, not this one ({again})")
    return status


class _Stopped(BaseException):
    """A stop signal (SIGTERM, SIGHUP) during an export: raised where the export is, so that its temporary files are
    removed on the way out (a BaseException: no ``except Exception`` on the way takes it)."""


@contextlib.contextmanager
def _stop_signals() -> Iterator[list[int]]:
    """SIGTERM and SIGHUP, where they would end the process, raise :class:`_Stopped` for the block instead (in the
    main thread, the one that takes signals); the list it yields gets the signal's number."""
    import signal
    import threading

    got: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield got
        return

    def stop(signum: int, _frame: Any) -> None:
        got.append(signum)
        raise _Stopped(signum)

    numbers = [getattr(signal, s) for s in ("SIGTERM", "SIGHUP") if hasattr(signal, s)]
    # (an ignored one, nohup's, stays so; the reste command's own, which says less, gives way: review chaos6 #1)
    before = {n: signal.getsignal(n) for n in numbers}
    taken = [n for n in numbers if before[n] is signal.SIG_DFL or getattr(before[n], "reste_stop", False)]
    for n in taken:
        signal.signal(n, stop)
    try:
        yield got
    finally:
        for n in taken:
            signal.signal(n, before[n])


def _check_writable(path: Path, inputs: tuple[Any, ...] = ()) -> None:
    """Refuse, with one line, an output path whose folder is missing or read-only, that is one of the
    command's ``inputs``, or that is a run's checkpoint (before any work)."""
    import os

    from ..rundir import check_output_path

    folder = path.parent
    if path.is_dir():
        raise UsageError(f"{path} is a folder; pass a file path")
    for given in inputs:
        if given is not None and path.exists() and Path(given).exists() and path.samefile(given):
            raise UsageError(f"{path} is an input of this command; pass another output path")
    check_output_path(path)
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"cannot write {path}: {folder} is a file, not a folder")
    if not folder.is_dir():
        raise UsageError(f"cannot write {path}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise UsageError(f"cannot write {path}: permission denied; pass a writable path")


def _class_text(names: Any, c: int) -> str:
    """``class 3 ('cat')``, or ``class 3`` where the export records no names."""
    name = class_name(names, c)
    return f"class {c}" + ("" if name is None else f" ({name!r})")


def _write_stdout(text: str) -> None:
    """The predictions on stdout as the same bytes a file gets (``-o -``; review portable #4: stdout's encoding,
    Windows' code page when redirected, and its error handler changed the class names)."""
    sys.stdout.flush()
    buffer = getattr(sys.stdout, "buffer", None)
    if buffer is None:  # a text stream without bytes (a test's capture): its own encoding
        sys.stdout.write(text)
        return
    # all of it: a raw stream (python -u, PYTHONUNBUFFERED=1) writes what the pipe takes and returns the count, so
    # one write cut the output and said it was all written (review ux1 #2); its reader gone then raises
    # BrokenPipeError at the next, as a buffered stream's flush does
    view = memoryview(as_bytes(text))
    while view:
        written = buffer.write(view)
        if written is None:  # a non-blocking stream that takes nothing now
            time.sleep(0.01)
            continue
        view = view[written:]
    buffer.flush()


def _load_npy(path: str, what: str) -> Any:
    import numpy as np

    p = Path(path)
    if not p.is_file():
        from .inputs import not_a_file

        raise not_a_file(p, what)
    try:
        with open(p, "rb") as f:
            head = f.read(len(np.lib.format.MAGIC_PREFIX))
        if head == np.lib.format.MAGIC_PREFIX:
            return np.load(p, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise UsageError(f"{p} is not a readable .npy array ({str(err).splitlines()[0][:100]})") from None
    # without the .npy header NumPy takes the file for pickled data, and says so: misleading for a text file
    raise UsageError(f"{p} is not a .npy file ({'it is empty' if not head else 'no .npy header'}); pass an array "
                     "written by numpy.save")


def cmd_predict(args: argparse.Namespace) -> int:
    import numpy as np

    from .evaluation import evaluate_packed, model_classes
    from .inputs import is_image_file, model_inputs, not_a_file
    from .runtime import PackedModel

    from ..config import check_threads
    from ..distributed import one_process

    one_process("reste predict", "predict every image, and write its output")  # (review rev13 #3)
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {args.batch_size}")
    check_threads(args.threads)
    paths = args.images or []
    if len(paths) > 1 and not all(is_image_file(path) for path in paths):
        raise UsageError("pass one .npy array, or image files and folders of them; not several arrays, nor arrays "
                         "with image files")
    # several image files, or a folder of them: a class per file (review imgdist, suggestion: one file per call)
    several = len(paths) > 1 or (len(paths) == 1 and Path(paths[0]).is_dir())
    args.images = None if not paths else paths if several else paths[0]
    if args.images and args.dataset:
        raise UsageError("pass either IMAGES (a .npy array, image files) or --dataset, not both")
    if not args.images and (args.labels or args.output):
        raise UsageError("--labels and --output go with IMAGES (a .npy array, image files or folders of them)")
    if args.images and (args.data_path or args.download):
        raise UsageError("--data-path and --download go with --dataset (or the export's data set), not IMAGES")
    if args.images and not several and args.workers is not None:
        raise UsageError("--workers goes with --dataset or several image files (processes decoding them), not one "
                         "file")
    if several and args.labels:
        raise UsageError("--labels goes with IMAGES.npy or one image file; for several image files, write their "
                         "classes (--output FILE.csv, rows file,class,name) and compare them with your labels")
    of_files = several or bool(args.images) and is_image_file(args.images)  # (one file too: rows file,class,name)
    if of_files and args.output and prediction_format(args.output, "--output") == "npy":
        raise UsageError(f"--output {args.output}: a .npy array holds no file names; for image files use .csv or "
                         ".json (file,class,name), or - for CSV on stdout")
    if args.json and args.output == "-":
        raise UsageError("--json and --output - both write to stdout; pass --output FILE (.csv or .json) for the "
                         "predictions")
    if args.output and args.output != "-":  # before any work: an input given as the output, then the format
        _check_writable(Path(args.output), (args.exported, *paths, args.labels))
    form = prediction_format(args.output, "--output") if args.output else "npy"
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)  # the binary kernels follow torch's count
    model = PackedModel.load(args.exported, backend=args.backend)
    # a model that is no classifier, refused before any image is read
    classes = model_classes(model) if args.images and model.input_size else None
    if several:
        return _predict_files(args, model, form)
    if args.images:
        one_file = is_image_file(args.images)  # one image file: print its class (write it only with --output)
        if one_file:
            if not Path(args.images).is_file():
                if Path(args.images).is_dir():
                    raise UsageError(f"{args.images} is a folder; pass one image file or a .npy array")
                raise not_a_file(Path(args.images), "image")
            images = model_inputs(None, args.images, model.input_size, model.preprocessing, model.meta)
        else:
            images = model_inputs(_load_npy(args.images, "images"), args.images, model.input_size,
                                  model.preprocessing, model.meta)
        out = Path(args.output) if args.output else Path(args.images).with_suffix(".pred.npy")
        to_stdout = args.output == "-"
        write = not one_file or args.output
        labels = None
        if args.labels:
            labels = _load_npy(args.labels, "labels").reshape(-1)
            if len(labels) != len(images) or not np.issubdtype(labels.dtype, np.integer):
                raise UsageError(f"{args.labels} must hold {len(images)} integer labels, got {len(labels)} "
                                 f"of {labels.dtype}")
            classes = classes if classes is not None else model_classes(model, images)
            outside = (labels < 0) | (labels >= classes) if classes else labels < 0
            if outside.any():
                raise UsageError(f"{args.labels} holds {int(outside.sum())} label(s) outside the model's classes "
                                 f"0..{classes - 1 if classes else 'N'} (first: {labels[outside][0]}); pass the "
                                 "labels as class indices")
        if write and not to_stdout:
            _check_writable(out, (args.exported, args.images, args.labels))
        start = time.perf_counter()
        pred = model.predict(images, batch_size=args.batch_size)
        seconds = time.perf_counter() - start
        names = model.meta.get("classes")
        file_names = [str(Path(args.images))] if one_file else None  # (as a folder of that one file gives it)
        if to_stdout:  # the predictions are the output; the line about them goes to stderr
            _write_stdout(prediction_text(pred, names, form, file_names))
            line = (f"{count(len(pred), 'prediction')} written to stdout ({seconds:.2f}s, {model.kernel_name} "
                    "kernels)")
        elif write:
            replacing = " (replacing the file that was there)" if out.is_file() else ""
            save_predictions(out, pred, names, file_names, form)
            line = (f"{count(len(pred), 'prediction')} written to {out}{replacing} ({seconds:.2f}s, "
                    f"{model.kernel_name} kernels)")
            if len(pred) == 1:  # an array of one image: its class too, as an image file's (newuser2)
                line += f"; {_class_text(names, int(pred[0]))}"
        else:
            line = (f"{args.images}: {_class_text(names, int(pred[0]))} ({seconds:.2f}s, {model.kernel_name} "
                    "kernels)")
        # of no images, none (not NaN, which JSON has not, nor NumPy's two warnings on the empty mean)
        accuracy = 100.0 * float((pred == labels).mean()) if labels is not None and len(pred) else None
        if accuracy is not None:
            line += f"; accuracy {accuracy:.2f}%"
        if args.json:  # one object, for a script: no line to parse
            summary = _images_summary(pred, out if write else None, accuracy, seconds, model)
            if one_file or len(pred) == 1:  # one image: its class, as the line gives it
                summary.update({"class": int(pred[0]), "name": class_name(names, int(pred[0]))})
            line = json_line(summary)
        print(line, file=sys.stderr if to_stdout else sys.stdout)
        return 0
    from .. import wording

    r = evaluate_packed(model, args.dataset, data_path=args.data_path, download=args.download,
                        batch_size=args.batch_size, workers=args.workers, line_every=wording.LINE_EVERY,
                        log=lambda line: print(line, file=sys.stderr, flush=True))
    if args.json:
        print(json_line({k: round(r[k], 3) if k == "seconds" else r[k] for k in DATASET_KEYS}))
        return 0
    extra = f" (stored at training: {r['stored_top1']:.2f}%)" if r["stored_top1"] is not None else ""
    name = printable(r["model"] or Path(args.exported).name)  # (a received file's name: review sec3 #6)
    print(f"{name} on {r['dataset']} test: top-1 {r['top1']:.2f}% of {r['images']} images{extra} "
          f"({r['seconds']:.2f}s, {r['kernels']} kernels)")
    return 0


def _images_summary(pred: Any, out: Path | None, accuracy: float | None, seconds: float, model: Any
                    ) -> dict[str, Any]:
    """predict --json's object on IMAGES: its :data:`IMAGES_KEYS`, which the help lists."""
    values = (len(pred), None if out is None else str(out), accuracy, round(seconds, 3), model.backend,
              model.kernel_name)
    return dict(zip(IMAGES_KEYS, values))


def _predict_files(args: argparse.Namespace, model: Any, form: str) -> int:
    """``reste predict EXPORTED FILES_OR_FOLDERS...``: the class of each image file, a line per file on stdout, or
    written to ``--output`` (CSV or JSON rows file,class,name); a file that is no readable image is left out with a
    line on stderr, and makes the exit status 1."""
    from .. import wording
    from .evaluation import predict_images

    r = predict_images(model, args.images, batch_size=args.batch_size, workers=args.workers,
                       line_every=wording.LINE_EVERY, log=lambda line: print(line, file=sys.stderr, flush=True))
    names = model.meta.get("classes")
    pred, files, seconds = r["classes"], r["files"], r["seconds"]
    out = Path(args.output) if args.output and args.output != "-" else None
    if out is not None:
        replacing = " (replacing the file that was there)" if out.is_file() else ""
        save_predictions(out, pred, names, files, form)
        line = f"{count(len(pred), 'prediction')} written to {out}{replacing}"
    elif args.output == "-":
        _write_stdout(prediction_text(pred, names, "csv", files))
        line = f"{count(len(pred), 'prediction')} written to stdout"
    else:
        line = f"{count(len(pred), 'prediction')}"
        if not args.json:
            for row in prediction_rows(pred, names, files):
                name = f" ({row['name']!r})" if row["name"] is not None else ""
                print(f"{printable(row['file'])}: class {row['class']}{name}")
    line += f" ({seconds:.2f}s, {model.kernel_name} kernels)"
    if r["unreadable"]:
        left = len(r["unreadable"])
        line += f"; {count(left, 'file')} left out (no image reste reads: listed above)"
    if args.json:
        summary = _images_summary(pred, out, None, seconds, model)
        summary["unreadable"] = [{"file": f, "reason": why} for f, why in r["unreadable"]]
        if not args.output:
            summary["predictions"] = prediction_rows(pred, names, files)
        print(json_line(summary))
    else:  # beside the predictions on stdout, the line about them goes to stderr
        print(line, file=sys.stdout if out is not None else sys.stderr)
    return 1 if r["unreadable"] else 0
