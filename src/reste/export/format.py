"""The packed-model file: one file, readable with the Python standard library and NumPy.

Layout (all integers little-endian)::

    bytes 0-7     magic b"RESTEBNN"
    bytes 8-11    uint32 format version (2; version-1 files, without the checksum, still load)
    bytes 12-15   uint32 H, the length of the compressed header
    bytes 16-     H bytes: zlib-compressed UTF-8 JSON header
    (zero bytes up to a multiple of 8)
    data          the tensors, each at ``offset`` bytes from the start of data
    last 32 bytes (version 2) SHA-256 of every byte before them

The header holds ``meta`` (free-form: model name, data set, ...; the preprocessing of
raw images, :class:`reste.export.ir.Preprocessing`), ``tensors`` (a list of
``[kind, shape, offset]``) and ``nodes`` (the graph, its ops as :mod:`reste.export.ir`
lists them), plus ``output`` (the index of the output node).

Tensor kinds:

* ``"f32"``: float32, C order, ``4 * prod(shape)`` bytes;
* ``"bits"``: a binary weight tensor of +-1 values, ``np.packbits`` of
  ``(w < 0).ravel()`` (bit 1 = -1, bit 0 = +1, first element in the most
  significant bit), ``ceil(prod(shape) / 8)`` bytes.

Float tensors are stored first, so they are 4-byte aligned. ``read`` checks the
SHA-256 before anything else, so a flipped bit anywhere is refused with one line.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UsageError, cannot_write, parse_json, read_user_file, shell_word

MAGIC = b"RESTEBNN"
VERSION = 2
VERSIONS = (1, 2)  # what read() accepts
DIGEST = 32  # bytes of the SHA-256 trailer (version 2)
KINDS = ("f32", "bits")
_PREFIX = struct.Struct("<8sII")


def pack_bits(values: np.ndarray) -> np.ndarray:
    """Sign bits of ``values`` packed 8 per byte: bit 1 where ``values < 0`` (so sign(0) = +1).

    The bits are taken in C order of ``values``; the last byte is padded with zeros.
    """
    return np.packbits(np.asarray(values).ravel() < 0)


def unpack_bits(packed: np.ndarray, shape: tuple[int, ...], dtype: Any = np.float32) -> np.ndarray:
    """The +-1 tensor of ``shape`` (float32, or ``dtype``) that :func:`pack_bits` packed."""
    n = math.prod(shape)
    packed = np.asarray(packed, dtype=np.uint8).ravel()
    if packed.size != -(-n // 8):
        raise ValueError(f"{packed.size} packed bytes do not hold a tensor of shape {tuple(shape)}")
    neg = np.unpackbits(packed, count=n).astype(dtype)
    return (1 - 2 * neg).astype(dtype, copy=False).reshape(shape)


def nbytes(kind: str, shape: tuple[int, ...]) -> int:
    n = math.prod(shape)
    return 4 * n if kind == "f32" else -(-n // 8)


class Writer:
    """Collects tensors (``add``) and writes them with a header (``write``)."""

    def __init__(self) -> None:
        self._tensors: list[tuple[str, tuple[int, ...], np.ndarray]] = []

    def add(self, kind: str, array: np.ndarray) -> int:
        """Store a tensor; ``"bits"`` packs the sign bits of ``array``. Returns its index."""
        array = np.asarray(array)
        shape = tuple(int(s) for s in array.shape)
        if kind == "f32":
            data = np.ascontiguousarray(array, dtype="<f4")
        elif kind == "bits":
            data = pack_bits(array)
        else:
            raise ValueError(f"unknown tensor kind {kind!r}; valid: {', '.join(KINDS)}")
        self._tensors.append((kind, shape, data))
        return len(self._tensors) - 1

    def entries(self) -> list[list[Any]]:
        """The header's tensor entries ``[kind, shape, offset]`` as far as known before writing (offset 0)."""
        return [[kind, list(shape), 0] for kind, shape, _ in self._tensors]

    def tensor_bytes(self) -> dict[str, int]:
        """Bytes of the float tensors, of the packed bits, and the number of binary values."""
        out = {"f32": 0, "bits": 0, "binary_values": 0}
        for kind, shape, data in self._tensors:
            out[kind] += data.nbytes
            if kind == "bits":
                out["binary_values"] += math.prod(shape)
        return out

    def write(self, path: str | os.PathLike, header: dict[str, Any]) -> int:
        """Write the file (atomically); returns its size in bytes."""
        order = sorted(range(len(self._tensors)), key=lambda i: self._tensors[i][0] != "f32")
        offsets = [0] * len(self._tensors)
        pos = 0
        for i in order:
            offsets[i] = pos
            pos += self._tensors[i][2].nbytes
        header = {**header, "tensors": [[k, list(s), offsets[i]] for i, (k, s, _) in enumerate(self._tensors)]}
        text = json.dumps(header, separators=(",", ":"), sort_keys=False).encode("utf-8")
        packed_header = zlib.compress(text, 9)
        prefix = _PREFIX.pack(MAGIC, VERSION, len(packed_header))
        pad = -(len(prefix) + len(packed_header)) % 8
        path = Path(path)

        def emit(f: Any) -> None:
            digest = hashlib.sha256()
            for part in (prefix, packed_header, b"\0" * pad, *(self._tensors[i][2].tobytes() for i in order)):
                digest.update(part)
                f.write(part)
            f.write(digest.digest())

        # through a temporary file of a random name made with O_EXCL (sec2 4: a fixed name could be a link or a
        # file someone else planted in a shared folder); imported here, as only writing needs torch's side of reste
        from ..files import atomic_write
        try:
            atomic_write(path, emit)
        except OSError as err:
            raise cannot_write(err, path, "pass a writable path") from None
        return path.stat().st_size


#: the largest header a file may hold once inflated (a real one is a few KiB)
MAX_HEADER = 64 << 20


def refuse_packed(path: str | os.PathLike, what: str) -> None:
    """Refuse, in one line that names ``reste predict``, a packed model given where a checkpoint is meant
    (``what``: what the command does with one); nothing for any other path (review deploy1, suggestion 2)."""
    path = Path(path)
    try:
        if not path.is_file():  # a run folder, or a FIFO that an open would wait on
            return
        with open(path, "rb") as f:
            packed = f.read(len(MAGIC)) == MAGIC
    except OSError:  # unreadable: the checkpoint's own reading says so
        return
    if packed:
        raise UsageError(f"{path} is a packed model (what `reste export` writes), not a checkpoint to {what}; "
                         f"run it with `reste predict {shell_word(path)} --dataset NAME`, which scores it on a "
                         "data set's test split")


def read(path: str | os.PathLike) -> tuple[dict[str, Any], list[np.ndarray]]:
    """The header and the tensors of a packed-model file (``"bits"`` tensors stay packed, uint8).

    Raises ``UsageError`` (one line) when the file is missing or is not a packed model.
    """
    path = Path(path)
    blob = read_user_file(path, f"exported model {path} does not exist; create one with `reste export CHECKPOINT OUT`")
    if (len(blob) < _PREFIX.size or blob[:8] != MAGIC) and path.suffix.lower() == ".onnx":
        raise UsageError(f"{path} is an ONNX file, which reste does not run: run it with onnxruntime "
                         "(reste.export.run_onnx), or pass the packed file `reste export` wrote beside it (OUT.rbnn)")
    if len(blob) < _PREFIX.size or blob[:8] != MAGIC:
        raise UsageError(f"{path} is not a reste packed model (no {MAGIC.decode()} header); "
                         "create one with `reste export CHECKPOINT OUT`")
    _, version, hlen = _PREFIX.unpack_from(blob)
    if version > VERSION and version < 256:
        raise UsageError(f"{path} was written by a newer reste (format {version}); upgrade reste")
    if version not in VERSIONS:
        raise UsageError(f"{path} is a corrupted packed model (format version {version})")
    if version >= 2:
        if len(blob) < _PREFIX.size + DIGEST or hashlib.sha256(blob[:-DIGEST]).digest() != blob[-DIGEST:]:
            raise UsageError(f"{path} is a truncated or corrupted packed model (SHA-256 mismatch); export it again")
        blob = blob[:-DIGEST]
    start = _PREFIX.size
    try:
        inflate = zlib.decompressobj()
        text = inflate.decompress(blob[start:start + hlen], MAX_HEADER)
        if inflate.unconsumed_tail:
            raise ValueError(f"header over {MAX_HEADER >> 20} MiB")
        header = parse_json(text.decode("utf-8"))
        data_start = start + hlen + (-(start + hlen) % 8)
        entries = []
        for kind, shape, offset in header["tensors"]:
            if kind not in KINDS or not isinstance(shape, list) or not all(type(s) is int and s >= 0 for s in shape) \
                    or type(offset) is not int or offset < 0:
                raise ValueError(f"bad tensor entry {[kind, shape, offset]!r}"[:100])
            size = nbytes(kind, tuple(shape))
            lo = data_start + offset
            if lo + size > len(blob):
                raise ValueError("tensor out of range")
            entries.append((kind, shape, lo, size))
        spans = sorted((lo, lo + size) for _, _, lo, size in entries)
        # each tensor its own bytes, checked before any is copied: entries sharing bytes would make a small file
        # take memory without bound
        if any(b[0] < a[1] for a, b in zip(spans, spans[1:]) if b[0] < b[1]):
            raise ValueError("tensors overlap")
        tensors = []
        for kind, shape, lo, size in entries:
            raw = np.frombuffer(blob, dtype="<f4" if kind == "f32" else np.uint8,
                                count=size // 4 if kind == "f32" else size, offset=lo)
            tensors.append(raw.reshape(shape).astype(np.float32) if kind == "f32" else raw.copy())
        header["nodes"], header["output"]  # noqa: B018 - presence check
    except (zlib.error, UnicodeDecodeError, ValueError, KeyError, TypeError, RecursionError) as err:
        raise UsageError(f"{path} is a truncated or corrupted packed model ({type(err).__name__}: "
                         f"{str(err).splitlines()[0][:100] if str(err) else 'bad header'})") from None
    return header, tensors
