"""Run directories: an exclusive lock held for the whole run, race-free creation, clean failure.

``RunDirectory.open(path, fresh=...)`` creates the folder if needed and takes an
``fcntl.flock`` on ``path/.lock`` (which records the holder's PID). The lock is held
until ``close()`` or until the process dies (the OS releases it), so a second
writer, whether ``reste train`` on the same ``--out``, ``--resume`` or a sweep job,
is refused with one line naming the PID. Every check of what the folder holds
happens under the lock, so two processes started at the same instant cannot both
pass it. ``discard()`` removes what a run that never finished an epoch wrote
(the folder too, when this run created it).
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

from .checkpoint import orphaned_temporaries
from .errors import UsageError

LOCK_NAME = ".lock"
# what a run writes, so a failed start can remove exactly its own files
RUN_FILES = ("config.json", "metrics.jsonl", "last.pt", "best.pt")


def _holder(lock_path: Path) -> str:
    try:
        pid = lock_path.read_text().strip()
    except OSError:
        pid = ""
    return f"pid {pid}" if pid.isdigit() else "another process"


class RunDirectory:
    """An open, locked run directory."""

    def __init__(self, path: Path, fd: int, created: bool) -> None:
        self.path, self._fd, self.created = path, fd, created

    @classmethod
    def open(cls, path: str | os.PathLike, *, fresh: bool) -> "RunDirectory":
        """Create (``fresh``) or open the run directory ``path`` and lock it.

        ``fresh``: the folder may not exist yet, or be empty, but must not hold a
        run or other files (log files aside). Otherwise it must hold a run (``config.json``).
        Raises ``UsageError`` with one line.
        """
        path = Path(path)
        if not str(path).strip():
            raise UsageError("the run directory is empty; pass --out DIR")
        created = False
        if fresh:
            created = cls._create(path)
        elif not path.is_dir():
            raise UsageError(f"{path} is not a run directory (no such folder); start one with --out {path}")
        had_lock = (path / LOCK_NAME).exists()
        fd = cls._lock(path)
        run = cls(path, fd, created)
        try:
            run._check(fresh)
            for tmp in orphaned_temporaries(path):  # left by a process killed in the middle of a write
                tmp.unlink(missing_ok=True)
        except BaseException:
            if created:
                run.discard()
            else:
                if not had_lock:  # leave a refused folder as it was
                    (path / LOCK_NAME).unlink(missing_ok=True)
                run.close()
            raise
        return run

    @staticmethod
    def _create(path: Path) -> bool:
        """Make the folder (and its parents); True when this call created it, False when it existed."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.mkdir()
            return True
        except FileExistsError:
            if path.is_dir():
                return False
            what = path if path.exists() else path.parent
            raise UsageError(f"run directory {path} is not writable ({what} is a file); pass another --out") \
                from None
        except OSError as err:
            raise UsageError(f"run directory {path} is not writable ({err.strerror}); pass another --out") \
                from None
        except ValueError as err:  # e.g. a NUL byte in the path
            raise UsageError(f"run directory {path!r} is not a usable path ({err}); pass another --out") \
                from None

    @staticmethod
    def _lock(path: Path) -> int:
        lock_path = path / LOCK_NAME
        while True:
            try:
                fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as err:
                raise UsageError(f"run directory {path} is not writable ({err.strerror}); pass another --out") \
                    from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                os.close(fd)
                if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise UsageError(f"cannot lock run directory {path} ({err.strerror})") from None
                raise UsageError(f"{path} is in use by {_holder(lock_path)} (a run is writing to it); "
                                 "wait for it to finish or pass another --out") from None
            try:  # the holder before us may have removed the lock file: then lock the new one
                same = os.stat(lock_path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        return fd

    def _check(self, fresh: bool) -> None:
        path = self.path
        if fresh:
            if (path / "config.json").exists() or (path / "last.pt").exists():
                raise UsageError(f"{path} already holds a run; continue it with --resume {path} "
                                 "or choose another --out")
            others = sorted(p.name for p in path.iterdir() if p.name != LOCK_NAME and not p.name.endswith(".log")
                            and not (p.name.startswith(".") and p.name.endswith(".tmp")))
            if others:
                raise UsageError(f"{path} is not empty ({', '.join(others[:3])}{', ...' if len(others) > 3 else ''}) "
                                 "and holds no run; pass a new or empty folder as --out")
            probe = path / ".write-test"
            try:
                probe.write_bytes(b"")
                probe.unlink()
            except OSError as err:
                raise UsageError(f"run directory {path} is not writable ({err.strerror}); pass another --out") \
                    from None
        elif not (path / "config.json").is_file():
            raise UsageError(f"{path} is not a run directory (no config.json); start it with --out {path}")

    def close(self) -> None:
        """Release the lock (the lock file stays; it is harmless)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def discard(self) -> None:
        """Remove the files of a run that never finished an epoch, then release the lock.

        The folder goes too when this run created it.
        """
        for name in RUN_FILES:
            (self.path / name).unlink(missing_ok=True)
        for tmp in orphaned_temporaries(self.path):
            tmp.unlink(missing_ok=True)
        (self.path / LOCK_NAME).unlink(missing_ok=True)  # a process waiting on it sees it went and retries
        self.close()
        if self.created:
            try:
                self.path.rmdir()
            except OSError:
                pass  # someone put a file there meanwhile: leave it

    def __enter__(self) -> "RunDirectory":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
