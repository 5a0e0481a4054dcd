"""Predictions as files: what ``reste predict -o PATH`` writes, for a Python caller too (``predict_images`` and
``PackedModel.predict`` give the classes; this writes them with their names).

    from reste.export import PackedModel, predict_images, save_predictions
    model = PackedModel.load("model.rbnn")
    r = predict_images(model, ["photos/"])
    save_predictions("p.csv", r["classes"], model.meta.get("classes"), files=r["files"])

The format is the path's suffix: ``.npy`` (or none) an array of class indices, ``.csv`` rows ``index,class,name``
(``file,class,name`` for image files) with a header, ``.json`` a list of such objects.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any, Sequence

from ..errors import UsageError
from ..wording import spreadsheet_text

FORMATS = {".npy": "npy", "": "npy", ".csv": "csv", ".json": "json"}  # a predictions file's suffix: its format
FORMS = ("csv", "json", "npy")  # the formats


def prediction_format(path: str | os.PathLike, what: str = "the predictions file") -> str:
    """The format ``path``'s suffix names (``-``, reste predict's stdout: CSV); another suffix is a one-line
    ``UsageError`` naming the file as ``what`` (``--output`` for reste predict)."""
    if str(path) == "-":
        return "csv"
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        stdout = ", or - for CSV on stdout" if what == "--output" else ""
        raise UsageError(f"{what} {path}: its suffix names the format; use .npy (also no suffix), .csv or "
                         f".json{stdout}")
    return FORMATS[suffix]


def class_name(names: Any, c: int) -> str | None:
    """Class ``c``'s name as the export records it (None where it records none)."""
    return str(names[c]) if isinstance(names, (list, tuple)) and 0 <= c < len(names) else None


def class_indices(pred: Any, files: Sequence[str] | None = None, who: str = "save_predictions") -> Any:
    """``pred`` as a 1-D NumPy array of integer class indices, one per image (and per file of ``files``; whole
    floats become int64; a class outside the names, -1 too, is kept and written without a name). Logits or scores
    (a 2-D array, fractional values) or a file count that differs are a one-line ``UsageError`` naming ``who``:
    written as they were, they gave a deep error (IndexError, "only one element tensors ...") or classes silently
    truncated (review apifuzz1)."""
    import numpy as np

    try:
        array = np.asarray(pred.detach().cpu() if hasattr(pred, "detach") else pred)
    except (TypeError, ValueError, RuntimeError) as err:
        raise UsageError(f"{who} takes class indices (one integer per image), got {type(pred).__name__} "
                         f"({str(err).splitlines()[0][:100]})") from None
    if array.ndim != 1:
        hint = ": for logits or scores (N, classes) pass their argmax(1)" if array.ndim == 2 else ""
        raise UsageError(f"{who} takes class indices, one integer per image (a 1-D array), got an array of shape "
                         f"{tuple(array.shape)}{hint}")
    if array.dtype == bool or not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise UsageError(f"{who} takes class indices (integers), got an array of {array.dtype}")
    if np.issubdtype(array.dtype, np.floating) and not (np.isfinite(array).all() and (array == np.round(array)).all()):
        raise UsageError(f"{who} takes class indices (integers), got fractional or non-finite values (scores or "
                         "probabilities?): pass the classes, e.g. logits.argmax(1)")
    if files is not None and len(files) != len(array):
        raise UsageError(f"{who}: {len(files)} file name(s) for {len(array)} prediction(s); pass one file per "
                         "prediction, in the same order")
    return array if np.issubdtype(array.dtype, np.integer) else array.astype(np.int64)


def prediction_rows(pred: Any, names: Any = None, files: Sequence[str] | None = None, *,
                    who: str = "prediction_rows") -> list[dict[str, Any]]:
    """One ``{"index" (or "file" for image files), "class", "name"}`` per prediction (``who``: the function a bad
    ``pred`` is named by)."""
    pred = class_indices(pred, files, who)
    key = "index" if files is None else "file"
    return [{key: i if files is None else files[i], "class": int(c), "name": class_name(names, int(c))}
            for i, c in enumerate(pred)]


def prediction_text(pred: Any, names: Any = None, form: str = "csv", files: Sequence[str] | None = None) -> str:
    """The predictions as CSV (``index,class,name`` rows; ``file,class,name`` for image files) or JSON (a list of
    such objects); the name is the class's as the export records it, empty (CSV) or null (JSON) where it records
    none. In the CSV a name that would start a spreadsheet formula is written after a ``'``."""
    rows = prediction_rows(pred, names, files, who="prediction_text")
    if form == "json":
        return json.dumps(rows) + "\n"
    text = io.StringIO()
    table = csv.writer(text, lineterminator="\n")
    table.writerow(tuple(rows[0]) if rows else ("index" if files is None else "file", "class", "name"))
    # (a class or file name of a received export or image folder could start a spreadsheet formula: review formats1
    # #4; the index and class are numbers)
    table.writerows(tuple("" if v is None else spreadsheet_text(v) if isinstance(v, str) else v for v in row.values())
                    for row in rows)
    return text.getvalue()


def as_bytes(text: str) -> bytes:
    """Predictions' text as UTF-8; a class name read from a folder whose name is not UTF-8 (held with surrogate
    escapes) as the folder's own bytes (review portable #12: the CSV writer raised after the work)."""
    return text.encode("utf-8", "surrogateescape")


def save_predictions(path: str | os.PathLike, pred: Any, names: Any = None, files: Sequence[str] | None = None,
                     form: str | None = None) -> None:
    """Write the class indices ``pred`` to exactly ``path`` (np.save would add .npy to a name without it),
    atomically, in the format its suffix names (``form`` overrides it): .npy, CSV or JSON, with each class's name
    from ``names`` (the export's ``meta["classes"]``) and, for image files, each file's path from ``files``."""
    import numpy as np

    from ..files import atomic_write
    from ..errors import cannot_write

    if str(path) == "-":  # (reste predict's stdout: review diff29, suggestion 2)
        raise UsageError("save_predictions writes a file; for stdout write prediction_text(...) to sys.stdout")
    if form is not None and form not in FORMS:  # (an unknown one wrote CSV: review diff29 #5)
        raise UsageError(f"save_predictions: unknown form {form!r}; valid: {', '.join(FORMS)}")
    form = form or prediction_format(path)
    pred = class_indices(pred, files)  # (review apifuzz1: logits gave a deep error, scores were truncated to 0)
    data = None if form == "npy" else as_bytes(prediction_text(pred, names, form, files))
    try:
        atomic_write(path, (lambda f: np.save(f, np.asarray(pred))) if data is None else (lambda f: f.write(data)))
    except OSError as err:
        raise cannot_write(err, Path(path), "pass a path that can be written") from None
