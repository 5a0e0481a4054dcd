"""Files written whole or not at all, and folders made and taken back: :func:`atomic_write` (a temporary file
beside the target, fsync, rename), :func:`orphaned_temporaries` (what a killed writer left), :func:`make_folders` and
:func:`remove_folders`. A leaf (no torch): the checkpoints, the run folder, the data sets' caches and the packed
model's files all write through it, and the deployment side can without loading the training side."""

from __future__ import annotations

import contextlib
import errno
import io
import os
import re
import tempfile
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

_WINDOWS = os.name == "nt"  # _replace retries there (a test sets it to do so on Linux)


def atomic_write(path: str | os.PathLike, write: Any, mode: int | None = None) -> None:
    """Write ``path`` via a temporary file in the same folder, fsync, then rename.

    ``write(file_object)`` produces the content. A crash at any moment leaves
    either the old file or the new one, never a torn one. ``mode``: the file's
    permissions (default: what ``open()`` gives under the umask).
    """
    path = Path(path)
    writes = _Writes()  # (before the file: nothing between it and the try that removes it again, review chaos6 #5)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:  # (its filename: the random name it tried, which never existed: review chaos #1)
        raise naming(err, path, err.filename) from err
    try:
        os.chmod(tmp, 0o666 & ~_umask() if mode is None else mode)  # by default an ordinary open()'s, not 0600
        with os.fdopen(fd, "wb") as f:
            writes.file = f
            write(writes)
            f.flush()
            os.fsync(f.fileno())
        _replace(tmp, path)
    except BaseException as err:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(err, OSError):
            raise naming(err, path, tmp) from err
        if writes.error is not None:  # torch.save's zip writer turns a failed write into a RuntimeError
            raise naming(writes.error, path, tmp) from err
        raise
    try:  # make the rename itself durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


class _Writes(io.RawIOBase):
    """The file ``atomic_write`` hands to its writer, passing everything to ``file``; it keeps the ``OSError`` of a
    failed write (a full disk, a file-size limit), which torch.save's zip writer reports only as a RuntimeError."""

    def __init__(self) -> None:
        super().__init__()
        self.file: Any = None
        self.error: OSError | None = None

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        try:
            return self.file.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self) -> None:
        # (RawIOBase.close(), which the object's finalizer calls, flushes: by then atomic_write has closed the file.
        # Python 3.13 reports a finalizer's error, "Exception ignored in: <reste.files._Writes ...>
        # ValueError: flush of closed file", after each checkpoint written; earlier versions dropped it: review compat3)
        if self.file is not None and not self.file.closed:
            self.file.flush()

    def fileno(self) -> int:
        return self.file.fileno()

    def tell(self) -> int:
        return self.file.tell()

    def seekable(self) -> bool:
        return self.file.seekable()

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.file.seek(offset, whence)


def naming(err: OSError, path: str | os.PathLike, tmp: str | None = None) -> OSError:
    """``err`` naming the file being written, ``path``, where it names none (a ``write()``'s ENOSPC or EFBIG) or
    the temporary file that stands in for it (which is gone by the time anyone reads the message)."""
    if err.errno is None or (err.filename is not None and err.filename != tmp):
        return err
    return type(err)(err.errno, err.strerror, str(path))


def _replace(tmp: str, path: Path, tries: int = 10) -> None:
    """``os.replace(tmp, path)``. On Windows the target cannot be replaced while another process has it open
    without sharing its deletion (a ``reste eval`` reading it, an antivirus or indexer scanning it): the
    ``PermissionError`` is then retried with a short back-off, about 2.5 s in all, before it is raised."""
    for attempt in range(tries):
        try:
            os.replace(tmp, path)
            return
        except PermissionError:
            if not _WINDOWS or attempt == tries - 1:
                raise
            time.sleep(0.01 * 2 ** min(attempt, 6))


_PROC_STATUS = "/proc/self/status"


def _umask() -> int:
    """The process's umask now: Linux (4.7 on) gives it in ``/proc/self/status``; elsewhere it is read once a
    process, since reading it with ``os.umask`` means setting it for an instant (a file another thread makes then
    would get mode 0666)."""
    try:
        with open(_PROC_STATUS, encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return _umask_once()


@lru_cache(maxsize=None)
def _umask_once() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def orphaned_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Temporary files that ``atomic_write`` left in ``folder`` when its process died mid-write."""
    pattern = re.compile(r"^\..+\.[A-Za-z0-9_]{6,}\.tmp$")
    folder = Path(folder)
    return sorted(p for p in folder.iterdir() if pattern.match(p.name) and p.is_file()) if folder.is_dir() else []


def make_folders(path: Path) -> list[Path]:
    """Make ``path`` and the folders above it; the ones this call made, deepest first. Each level is made on its
    own and recorded only when this call's mkdir made it, so a folder another process made meanwhile, or one
    reached through a symlink and '..', is never taken for ours. A level that is a file raises FileExistsError."""
    made: list[Path] = []
    try:
        for level in (*reversed(path.parents), path):
            try:
                level.mkdir()
                made.append(level)
            except OSError:  # there already (a root gives EISDIR or EACCES on some systems), or not a folder
                if level.is_dir():
                    continue
                if level.exists():
                    raise FileExistsError(errno.EEXIST, "a file is in the way", str(level)) from None
                raise
    except BaseException:
        remove_folders(made[::-1])
        raise
    return made[::-1]


def remove_folders(folders: list[Path]) -> None:
    """Remove ``folders`` (deepest first) that are empty: someone may have put a file in one meanwhile."""
    for folder in folders:
        with contextlib.suppress(OSError):
            folder.rmdir()
