"""Checkpoints: atomic writes, safe loads, and RNG state capture.

A checkpoint is a dict of plain data and tensors, loadable with
``torch.load(weights_only=True)`` (no code runs on load):

    format, version, config (TrainConfig as a dict), model_name, model_options,
    model (state_dict, estimator schedule state included), optimizer, epoch
    (number of finished epochs), best_acc, best_epoch, metrics (the last
    epoch's metrics line), indicators (meter history), rng.
"""

from __future__ import annotations

import os
import pickle
import random
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import UsageError

FORMAT = "reste-checkpoint"
VERSION = 1


def atomic_write(path: str | os.PathLike, write: Any) -> None:
    """Write ``path`` via a temporary file in the same folder, fsync, then rename.

    ``write(file_object)`` produces the content. A crash at any moment leaves
    either the old file or the new one, never a torn one.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename itself durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> None:
    state = {"format": FORMAT, "version": VERSION, **state}
    atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint without executing code; bad files raise a one-line ``UsageError``."""
    path = Path(path)
    if path.is_dir():
        path = path / "last.pt"
    if not path.is_file():
        raise UsageError(f"checkpoint {path} does not exist; pass a .pt file or a run directory holding last.pt")
    try:
        with warnings.catch_warnings():
            # a foreign pickle makes torch warn about its protocol; the error below says what matters
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - any failure to read the file is the file's fault
        text = str(err)
        lines = [ln.strip() for ln in text.split("WeightsUnpickler error:", 1)[-1].splitlines() if ln.strip()]
        detail = (lines[0] if lines else type(err).__name__)[:120]
        if isinstance(err, pickle.UnpicklingError) and "global" in text.lower():
            # the file names a function or class to call on load
            raise UsageError(
                f"refusing to load {path}: it holds objects that would run code on load ({detail}); "
                "only load checkpoints you trust with torch.load directly"
            ) from None
        raise UsageError(f"checkpoint {path} is truncated or corrupted ({detail}); use another checkpoint") \
            from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise UsageError(f"{path} is not a reste checkpoint (no '{FORMAT}' header)")
    if ckpt.get("version", 0) > VERSION:
        raise UsageError(f"{path} was written by a newer reste (format {ckpt['version']}); upgrade reste")
    return ckpt


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch (CPU and CUDA) random states, in weights_only-safe types."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(
        ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
