"""Run directories: an exclusive lock held for the whole run, race-free creation, clean failure.

``RunDirectory.open(path, fresh=...)`` creates the folder if needed and takes an
``fcntl.flock`` on ``path/.lock`` (which records the holder's PID, and under torchrun its job) and on the folder
itself (so a ``.lock`` removed by hand lets no second writer in; on Windows, an ``msvcrt`` lock on ``.lock``). The
lock is held
until ``close()`` or until the process dies (the OS releases it), so a second
writer, whether ``reste train`` on the same ``--out``, ``--resume`` or a sweep job,
is refused with one line naming the PID. Every check of what the folder holds
happens under the lock, so two processes started at the same instant cannot both
pass it. ``discard()`` removes what a run that never finished an epoch wrote
(the folder too, when this run created it). ``keep_top`` keeps the checkpoints of
the K best epochs in ``top/``.

This module is the one owner of what a run directory holds::

    config.json     the resolved TrainConfig       write_config / saved_config
    metrics.jsonl   one JSON object per epoch       start_metrics / append_metrics / read_metrics /
                                                    truncate_metrics
    last.pt         the newest checkpoint           last_checkpoint(run_dir)
    best.pt         the best epoch's checkpoint     best_checkpoint(run_dir), repair_best
    top/            the K best epochs (--keep-top)  keep_top, top_checkpoints

and of ``RESUME_FREE``, the settings that may change when a run is resumed.
``metrics.jsonl`` has one rule for a torn line: a last line that is not JSON was cut by a
crash in the middle of its write, and every reader leaves it out (``truncate_metrics``
drops it); any other line that is not a metrics record is damage, a one-line ``UsageError``.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import itertools
import json
import math
import os
import re
import stat
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

from .checkpoint import UNREADABLE, damage, load_checkpoint
from .files import atomic_write, make_folders, naming, orphaned_temporaries, remove_folders
from .config import TENSORBOARD_DIR, TrainConfig  # noqa: F401  (TENSORBOARD_DIR: known here too)
from .errors import UsageError, json_line, parse_json, shell_word
from .indicators import MEASURE, RUN_LEVEL_FIELDS
from .native import CANNOT_LOCK
from .runfiles import BEST, CONFIG, LAST, METRICS
from .wording import count, listed, spans

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None
try:
    import msvcrt
except ImportError:  # not Windows
    msvcrt = None

LOCK_NAME = ".lock"
# the start's write probe, named as a temporary (which a new run passes over); the name it had before, which a kill
# between its two calls could leave (review chaos3 #4)
WRITE_PROBE, OLD_WRITE_PROBE = ".write-test.tmp", ".write-test"
SWEEP_MANIFEST = "sweep.json"  # what makes a folder a sweep's (reste.experiments.report writes and reads it)
SWEEP_LOCK = "sweep.lock"  # in --out while a sweep runs there: a second sweep on it is refused (exit status 75)
# what a run writes, so a failed start can remove exactly its own files
RUN_FILES = (CONFIG, METRICS, LAST, BEST)
TOP_DIR = "top"  # --keep-top K: the K best epochs' checkpoints
TRAIN_LOG = "train.log"  # a sweep's run logs its lines here
CURVES = "curves.png"  # `reste plot RUN_DIR`'s figure of one run
# a sweep's record that the run diverged (non-finite loss): the sweep does not train it again and the report says
# why it is missing; a resume removes it (it tries again)
DIVERGED = "diverged.json"
# a sweep's record that the run failed (an error, its traceback in train.log): a sweep trains it again, and until
# then `reste show` and the report say why it is missing; the run's next start removes it
FAILED = "failed.json"
# Settings that may differ when resuming without --force: they do not change what is trained (another CPU
# thread count can change the last bits of float32 sums, and another --accumulate the micro-batches BatchNorm
# normalises over, the step's gradient being the batch's either way: resume notes both).
RESUME_FREE = ("data_path", "download", "workers", "device", "data_device", "eval_batch_size", "threads",
               "save_every", "tensorboard", "keep_top", "plugins", "accumulate")
# the settings that do not make a run another training: those free to change on resume, the preset's name (a
# preset is its settings) and the seed (a draw of the same training): left out of a sweep run's identity, and of
# what a preset run changes of its preset
IDENTITY_FREE = (*RESUME_FREE, "preset", "seed")
# and besides them the settings of how fast a run trains or what it measures: not a change of a preset's recipe
# (a CUDA-graphed step is the eager step replayed, an epoch's last partial batch runs eagerly)
RECIPE_FREE = (*IDENTITY_FREE, "compile", "channels_last", "cuda_graphs", "indicators")
# the fields of a metrics.jsonl line; the line holds besides them the schedule values of the run's estimator (o, t,
# k, ...) under their names, which therefore may not be these
METRIC_FIELDS = ("epoch", "lr", "bop_gamma", "train_loss", "train_acc", "test_loss", "test_acc", "test_top5",
                 "estimating_error", "gradient_stability", MEASURE, "bop_flips", "time")  # bop_*: --optimizer bop's
# the fields of a metrics line that are NaN where they were not finite, written null (strict JSON) and read as NaN
NULL_AS_NAN = ("train_loss", "test_loss", *RUN_LEVEL_FIELDS)
# what every run's config.json holds since the first version: without them it is not a run's
_IDENTITY = ("dataset", "model", "estimator", "epochs", "seed")
_TOP_NAME = re.compile(r"^epoch(\d+)-acc(.+)\.pt$")


# Where there is no fcntl (Windows), the lock is msvcrt's on one byte of .lock at this offset: past the PID text,
# which a locked region would hide from _holder's read. Where there is neither fcntl nor msvcrt, nothing is locked:
# .lock still records the PID, but a second writer on the same folder is not refused (the files of two runs on
# one folder can then mix, as they would with no lock at all).
_MSVCRT_BYTE = 1 << 20
_WINDOWS = os.name == "nt"  # where an open file cannot be removed (a test sets it to take that order on Linux)
_LITTER = {".ds_store", "thumbs.db", "desktop.ini"}  # what Finder and Explorer put in a folder they show



def recipe_free(config: TrainConfig, world_size: int = 1) -> frozenset[str]:
    """The settings of ``config`` that do not make it another training than a preset's, for the published number
    (``reste.experiments.report.trained_preset``) and ``reste train``'s notes alike (``reste.engine.preset_changes``):
    the seed, the settings free to change on resume, how fast it runs and what it measures (:data:`RECIPE_FREE`), but
    not the images a BatchNorm normalises over, the whole step's batch in a preset's recipe: ``sync_bn`` is free on one
    process (``world_size``; only torchrun's processes read it), and ``accumulate`` is not where its micro-batches
    split the batch of a model with BatchNorm, each then normalised over itself (review paper #2)."""
    free = set(RECIPE_FREE) | ({"sync_bn"} if world_size == 1 else set())
    if (config.accumulate or 1) > 1 and _has_batchnorm(config.model, json.dumps(config.model_options, sort_keys=True)):
        free.discard("accumulate")
    return frozenset(free)


@functools.lru_cache(maxsize=32)
def _has_batchnorm(model: str | None, options: str) -> bool:
    """Whether the model ``model`` built with the model options ``options`` (JSON) has a BatchNorm; True where it
    cannot be built here (a plugin's not imported), as every model of the zoo has."""
    import warnings

    import torch
    from torch import nn

    from .models import create

    try:
        with warnings.catch_warnings(), torch.device("meta"):  # (no memory, no initialisation: milliseconds)
            warnings.simplefilter("ignore")
            built = create(model, None, **json.loads(options))
    except Exception:  # noqa: BLE001 - what cannot be built here is counted as the zoo's models are
        return True
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in built.modules())

def _litter(name: str) -> bool:
    """Whether ``name`` is a file the OS's file browser wrote (``._*`` being macOS's AppleDouble files)."""
    return name.lower() in _LITTER or name.startswith("._")


_TOLD_UNLOCKED: set[str] = set()


def _warn_unlocked(path: Path, err: OSError) -> None:
    """Say once per file system (per process) that its run folders go unlocked, as where the platform has no locks."""
    try:
        device = str(os.stat(path).st_dev)
    except OSError:
        device = str(path)
    if device in _TOLD_UNLOCKED:
        return
    _TOLD_UNLOCKED.add(device)
    warnings.warn(f"the file system of {path} cannot lock files ({err.strerror}): its run folders go unlocked, so two "
                  "runs given the same folder are not kept apart (on Lustre, mount with -o flock or localflock)",
                  UserWarning, stacklevel=4)


HELD = frozenset({errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES})  # what a lock not waited for answers when held


def _try_lock(fd: int) -> None:
    """Lock the file ``fd`` exclusively without waiting; ``OSError`` (EWOULDBLOCK, EAGAIN or EACCES) when another
    process holds it. See ``_MSVCRT_BYTE`` for Windows and for systems with no way to lock."""
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    elif msvcrt is not None:
        os.lseek(fd, _MSVCRT_BYTE, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        finally:
            os.lseek(fd, 0, os.SEEK_SET)  # the PID is written from the start


def _held(path: Path) -> bool:
    """Whether another process holds an ``flock`` on ``path`` (an export's staging file while the export lives); False
    where it cannot be told (no fcntl, no such file, a file system that keeps no locks)."""
    if fcntl is None:
        return False
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        _try_lock(fd)
        return False
    except OSError as err:
        return err.errno in HELD
    finally:
        os.close(fd)  # (its lock, where taken, with it)


def _release(fd: int) -> None:
    """Unlock (msvcrt: Windows frees a closed file's locks only after a while) and close ``fd``."""
    if fcntl is None and msvcrt is not None:
        with contextlib.suppress(OSError):
            os.lseek(fd, _MSVCRT_BYTE, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
    os.close(fd)


def _remove_lock(lock_path: Path, release: Callable[[], None]) -> None:
    """Remove the lock file ``lock_path`` and release the lock this process holds on it (``release()``).

    Where a file can be removed while open (Linux, macOS) it goes first: a process waiting for the flock then
    finds, once it has it, that its file is no longer ``.lock`` and locks the new one; released first, the
    waiter would hold a lock on a file about to be removed, and a third process could lock a new ``.lock``
    beside it. Windows cannot remove a file that is open (its removal fails while we hold it), so there the lock
    is released first; a process that has opened the file by then keeps it from being removed, and the file
    stays (it is harmless), so no one locks a file that is gone."""
    if _WINDOWS:
        release()
        with contextlib.suppress(OSError):
            lock_path.unlink(missing_ok=True)
    else:
        lock_path.unlink(missing_ok=True)
        release()


# A lock file is opened without following a link (where the OS can), and must be a plain file: the pid is written
# over it, so a .lock planted in a received or shared folder as a link to another file would otherwise have that file
# truncated; a FIFO or a device is refused too (opening one can block). A hard link is replaced (RunDirectory._lock).
_LOCK_OPEN = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0) \
    | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)


def _open_plain(path: Path, flags: int, mode: int, refusal: UsageError) -> int:
    """``os.open(path, flags, mode)`` of a plain file (``flags`` hold O_NOFOLLOW where the OS has it): ``refusal``
    where ``path`` is a symbolic link, a folder, a FIFO or a device; the ``OSError`` of any other failure."""
    try:
        fd = os.open(path, flags, mode)
    except OSError:
        if path.is_symlink() or (path.exists() and not path.is_file()):
            raise refusal from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise refusal
    return fd


def _open_lock_file(lock_path: Path, path: Path, remedy: str, noun: str = "run directory") -> int:
    """Open (or make) the lock file ``lock_path`` of the folder ``path`` (a ``noun``); ``UsageError`` when it cannot be
    written, or is not a plain file (a symbolic link, a folder, a FIFO, a device)."""
    not_plain = UsageError(f"{lock_path} is not a plain file (a link, a folder or a device someone put there); "
                           "look at what it is, remove it and run again")
    try:
        return _open_plain(lock_path, _LOCK_OPEN, 0o644, not_plain)
    except OSError as err:
        raise UsageError(f"{noun} {path} is not writable ({err.strerror}); {remedy}") from None


def _holder(fd: int, tries: int = 10) -> str:
    """Who holds the lock file open as ``fd``, for the refusal's line (read through ``fd``: the file checked,
    not whatever the name holds by then): the holder writes its pid just after it takes the lock, so an empty
    file is read again a few times (20 ms apart) before the line settles for "another process"."""
    for attempt in range(tries):
        try:
            os.lseek(fd, 0, os.SEEK_SET)
            pid = os.read(fd, 32).decode("ascii", "replace").split("\n")[0].strip()  # (a job's line may follow)
        except OSError:
            pid = ""
        if pid.isdigit():
            return f"pid {pid}"
        if attempt + 1 < tries:
            time.sleep(0.02)
    return "another process"


_HELD: set[int] = set()  # the descriptors of the locks this process holds


def _drop_inherited_locks() -> None:
    """In a process forked from a run (a DataLoader worker, a fork of multiprocessing): close its copies of the
    run's locks. An flock lives while any copy of its descriptor is open, so a worker that outlived the run (its
    iterator kept by an exception's traceback) kept the folder locked: a resume in the same process was refused."""
    for fd in list(_HELD):
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_drop_inherited_locks)


def _open_folder(path: Path) -> int | None:
    """A descriptor of the folder ``path``; None where a folder cannot be opened (Windows) or this one cannot."""
    if _WINDOWS or not hasattr(os, "O_DIRECTORY"):
        return None
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None


class Place:
    """A folder known by its identity (device and inode, held open where the OS can): whether its path still names
    it, and where it went. A run folder deleted and made again by another run, or a sweep folder renamed, while a
    process writes there by path (review chaos5 #2, #9): the writer asks before it writes."""

    HERE, MOVED, DELETED, LOST = "here", "moved", "deleted", "moved or deleted"

    def __init__(self, path: Path, fd: int | None = None) -> None:
        """``fd``: a descriptor of the folder that the caller owns (a run's folder lock), else one is opened here
        (held open, the inode cannot be reused by a folder made in its place)."""
        self.path, self._own = path, fd is None
        self._fd = _open_folder(path) if fd is None else fd
        st = os.fstat(self._fd) if self._fd is not None else os.stat(path)
        self._id = (st.st_dev, st.st_ino)

    @property
    def identity(self) -> tuple[int, int]:
        """The folder's device and inode (:func:`is_folder`)."""
        return self._id

    def _names_it(self, path: str | os.PathLike) -> bool:
        return is_folder(path, self._id)

    def _deleted(self, now: str | None) -> bool:
        """Whether the kernel's path of the folder (``now``, :func:`_where_now`) says it was deleted."""
        return now is not None and now.endswith(" (deleted)") and not self._names_it(now)

    def locate(self) -> tuple[str, Path | None]:
        """``(HERE, path)`` while ``path`` names the folder; ``(MOVED, where)`` where it was renamed or moved on its
        file system (where it is, as the kernel knows it: Linux's /proc, macOS's F_GETPATH); ``(DELETED, None)``;
        ``(LOST, None)`` where it is not at its path and no more can be told (moved, or deleted)."""
        if self._names_it(self.path):
            # (through the working folder, `--out .`, a deleted folder is still reached: review diff20 #2)
            if not self.path.is_absolute() and self._fd is not None and self._deleted(_where_now(self._fd)):
                return self.DELETED, None
            return self.HERE, self.path
        if self._fd is None:
            return self.LOST, None
        for _ in range(3):  # (renamed again between the kernel's answer and the stat: asked again)
            now = _where_now(self._fd)
            if now is not None and self._names_it(now):
                return self.MOVED, _as_given(Path(now), self.path)
            if now == os.path.realpath(self.path):  # the kernel says it is here: a file system whose inode numbers
                return self.HERE, self.path  # change (FUSE without fixed ones) must not stop a run
            if now is None:
                break
        try:
            unlinked = os.fstat(self._fd).st_nlink == 0
        except OSError:
            unlinked = False
        return (self.DELETED if unlinked or self._deleted(now) else self.LOST), None

    def close(self) -> None:
        if self._own and self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
        self._fd = None


def is_folder(path: str | os.PathLike, identity: Sequence[int]) -> bool:
    """Whether ``path`` names the folder of ``identity`` (its device and inode, as a :class:`Place` holds it)."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return False
    return (st.st_dev, st.st_ino) == tuple(identity)


def _where_now(fd: int) -> str | None:
    """Where the folder open as ``fd`` is, as the kernel says (Linux: with " (deleted)" after a deleted one's path);
    None where it cannot be told."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        pass
    if fcntl is not None and hasattr(fcntl, "F_GETPATH"):  # macOS
        try:
            return os.fsdecode(fcntl.fcntl(fd, fcntl.F_GETPATH, bytes(1024)).split(b"\0", 1)[0])
        except OSError:
            pass
    return None


def _as_given(where: Path, given: Path) -> Path:
    """``where`` (absolute) as ``given`` was written: relative to the working folder when it was, and below it."""
    if given.is_absolute():
        return where
    try:
        return where.relative_to(Path.cwd())
    except (ValueError, OSError):
        return where


class FolderGone(UsageError):
    """A run's folder was deleted while it trained, or moved where it cannot be followed: the run stops without
    writing to what its path names now."""


class RunDirectory:
    """An open, locked run directory."""

    def __init__(self, path: Path, fd: int, created: list[Path], folder_fd: int | None = None) -> None:
        self.path, self._fd, self.created, self._folder_fd = path, fd, created, folder_fd
        self._pid = os.getpid()  # a fork's copy of this object holds no lock (its descriptors closed at the fork)
        _HELD.update(f for f in (fd, folder_fd) if f is not None)
        self.place = Place(path, folder_fd)

    def follow(self) -> Path:
        """Where the run's folder is now, asked before the run writes there: its path while that names the folder
        this object locked; its new path where it was renamed or moved (the run goes on there: :attr:`path` becomes
        it). :class:`FolderGone` where it was deleted (a new run may have made a folder at its path, which must not
        get this run's files), or moved where no one can tell."""
        state, where = self.place.locate()
        if state == Place.HERE:
            return self.path
        if where is not None:
            self.path = self.place.path = where
            return where
        path = self.path
        if state == Place.DELETED:
            # (not the deleted folder itself, which `.` still reaches)
            again = " and a folder made again at its path" if os.path.lexists(path) and \
                not self.place._names_it(path) else ""
            raise FolderGone(f"{path} was deleted{again} while its run held it: the run stops without writing there "
                             "(what it had saved went with the folder; if it was moved to another file system, "
                             "resume it there)")
        raise FolderGone(f"{path} was moved or deleted while its run held it: the run stops without writing there; "
                         "if it was moved, resume it where it is now (its last.pt keeps its last saved epoch)")

    @classmethod
    def open(cls, path: str | os.PathLike, *, fresh: bool, job: str = "") -> "RunDirectory":
        """Create (``fresh``) or open the run directory ``path`` and lock it.

        ``fresh``: the folder may not exist yet, or be empty, but must not hold a
        run or other files (log files aside). Otherwise it must hold a run (``config.json``).
        ``job``: a line the lock records after the pid (rank 0's ``distributed.job_token()``: see :func:`held_by`;
        empty otherwise), then, on Linux, the holder's PID namespace (:func:`lock_holder`).
        Raises ``UsageError`` with one line.
        """
        path = Path(path)
        if not str(path).strip():
            raise UsageError("the run directory is empty; pass --out DIR")
        created: list[Path] = []
        if fresh:
            created = cls._create(path)
        elif path.exists() and not path.is_dir():  # (review apifuzz1: "no such folder" for a file that exists)
            raise UsageError(f"{path} is not a run directory: it is a file; pass the run's folder (the one holding "
                             "config.json and its checkpoints)")
        elif not path.is_dir():
            raise UsageError(f"{path} is not a run directory (no such folder); start one with --out {shell_word(path)}")
        had_lock = (path / LOCK_NAME).exists()
        try:
            fd = cls._lock(path, "pass another --out" if fresh else "make it writable to continue the run", job=job)
        except UsageError:  # the folders made here go again, while empty (a lock another start holds stays)
            remove_folders(created)
            raise
        try:
            folder_fd = cls._lock_folder(path)
        except BaseException:
            if had_lock:
                _release(fd)
            else:  # the holder's lock file was removed: the one made here names no holder
                _remove_lock(path / LOCK_NAME, lambda: _release(fd))
            raise
        run = cls(path, fd, created, folder_fd)
        try:
            run._check(fresh)
            for tmp in orphaned_temporaries(path):  # left by a process killed in the middle of a write
                if not _held(tmp):  # (an export's, which locks its own while it lives: review chaos5 #6)
                    tmp.unlink(missing_ok=True)
        except BaseException:
            if created:
                run.discard()
            elif had_lock:
                run.close()
            else:  # leave a refused folder as it was
                _remove_lock(path / LOCK_NAME, run.close)
            raise
        return run

    @staticmethod
    def _create(path: Path) -> list[Path]:
        """Make the folder and its parents; the folders this call made, deepest first (none when it existed):
        each level is made on its own and recorded only when this call's mkdir made it, so a folder another
        process made meanwhile, or one reached through a symlink and '..', is never taken for ours."""
        made: list[Path] = []
        try:
            made += make_folders(path.parent)
            path.mkdir()
            made.insert(0, path)
            return made
        except FileExistsError:
            remove_folders(made)
            if path.is_dir():
                return []
            what = file_in_the_way(path) or path  # (a broken link at path: not its folder, review diff13 #2)
            raise UsageError(f"run directory {path} is not writable ({in_the_way(what)}); pass another --out") \
                from None
        except OSError as err:
            remove_folders(made)
            raise UsageError(f"run directory {path} is not writable ({err.strerror}); pass another --out") \
                from None
        except ValueError as err:  # e.g. a NUL byte in the path
            raise UsageError(f"run directory {path!r} is not a usable path ({err}); pass another --out") \
                from None

    @staticmethod
    def _lock(path: Path, remedy: str, name: str = LOCK_NAME, what: str = "a run", job: str = "") -> int:
        lock_path = path / name
        noun = "run directory" if what == "a run" else "folder"
        while True:
            fd = _open_lock_file(lock_path, path, remedy, noun)
            try:
                _try_lock(fd)
            except OSError as err:
                if err.errno in CANNOT_LOCK:  # this file system has no locks: go on as where the platform has none
                    _warn_unlocked(path, err)
                else:
                    holder = _holder(fd) if err.errno in HELD else ""
                    os.close(fd)
                    if not holder:
                        raise UsageError(f"cannot lock run directory {path} ({err.strerror})") from None
                    raise RunInUse(f"{path} is in use by {holder} ({what} is writing to it); "
                                   "wait for it to finish, or use another folder") from None
            try:  # the holder before us may have removed the lock file: then lock the new one
                same = os.lstat(lock_path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same and os.fstat(fd).st_nlink > 1 and not _WINDOWS:
                # a file with another name too: a run folder copied with hard links (cp -al), or a link planted to
                # another file, whose pid would be written over it; this folder gets a .lock of its own (locked, so
                # no one else holds it), the file keeps its other name untouched
                try:
                    os.unlink(lock_path)
                except OSError as err:
                    _release(fd)
                    raise UsageError(f"{lock_path} is a hard link to another file and cannot be removed "
                                     f"({err.strerror}); remove it and run again") from None
                same = False
            if same:
                break
            _release(fd)
        try:
            os.ftruncate(fd, 0)
            namespace = _pid_namespace()  # (a reader in another one cannot see this process: lock_holder)
            os.write(fd, (f"{os.getpid()}\n" + (f"{job}\n" if job or namespace else "")
                          + (f"{namespace}\n" if namespace else "")).encode())
        except OSError as err:  # a full disk: the lock file this process holds goes (a stale one too)
            _remove_lock(lock_path, lambda: _release(fd))
            raise UsageError(f"cannot write {lock_path} ({err.strerror}); free some space or {remedy}") from None
        return fd

    @staticmethod
    def _lock_folder(path: Path) -> int | None:
        """A second ``flock``, on the folder itself: a ``.lock`` deleted while a run holds it does not let a
        second writer in (it would lock a new file). ``None`` where the file system cannot lock a folder
        (the ``.lock`` file still guards it there), and where there is no flock (msvcrt cannot lock a folder)."""
        if fcntl is None:
            return None
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno in HELD:
                raise RunInUse(f"{path} is in use by another process (a run is writing to it; its {LOCK_NAME} "
                                 "was removed); wait for it to finish, or use another folder") from None
            return None
        return fd

    def _check(self, fresh: bool) -> None:
        path = self.path
        if fresh:
            _check_fresh(path)
        elif not (path / CONFIG).is_file() and not (path / LAST).is_file():
            raise UsageError(f"{path} is not a run directory (no config.json); a new run needs --out and an "
                             "empty or new folder")
        else:
            for name in RUN_FILES:  # a FIFO would block the resume's first read for ever, deaf to stop signals
                try:  # (review chaos #5); a folder or a device, a read that fails
                    mode = os.stat(path / name).st_mode
                except OSError:
                    continue  # missing (the resume says what that means) or unreadable (its read says why)
                if not stat.S_ISREG(mode):
                    raise not_a_file(path / name)
            _top_folder(path)  # (a file there failed the resume on a FileExistsError, exit 1: review chaos2 #4)
        # a resume too: it failed at its first write, naming a temporary file (review chaos #2); named as a temporary
        # (.NAME.tmp), which a new run passes over: a kill between its two calls left a folder no start took (chaos3 #4)
        probe = path / WRITE_PROBE
        try:
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as err:
            remedy = "pass another --out" if fresh else "make it writable again (its mode, a read-only mount)"
            raise UsageError(f"run directory {path} is not writable ({err.strerror}); {remedy}") from None

    def close(self) -> None:
        """Release the lock (the lock file stays; it is harmless)."""
        if self._pid != os.getpid():  # in a forked process: its numbers may name other files by now
            self._fd = self._folder_fd = self.place._fd = None
            return
        self.place.close()
        if self._folder_fd is not None:
            _HELD.discard(self._folder_fd)
            os.close(self._folder_fd)
            self._folder_fd = None
        if self._fd is not None:
            _HELD.discard(self._fd)
            _release(self._fd)
            self._fd = None

    def discard(self) -> list[str]:
        """Remove the files of a run that never finished an epoch, then release the lock.

        The folder goes too when this run created it, and the folders above it that it created. Best effort (it
        runs while an error is on its way out, which must win): the names it could not remove are returned, and
        the lock is released in any case.
        """
        left: list[str] = []
        if self.place.locate()[0] != Place.HERE:  # deleted (what its path names now is not this run's) or moved
            self.close()
            return left

        def remove(path: Path) -> None:
            try:
                path.unlink(missing_ok=True)
            except OSError:  # an unwritable or vanished folder, a stale network file handle
                left.append(path.name)

        for name in RUN_FILES:
            remove(self.path / name)
        try:
            temporaries = orphaned_temporaries(self.path)
        except OSError:
            temporaries = []
        for tmp in temporaries:
            remove(tmp)
        try:
            _remove_lock(self.path / LOCK_NAME, self.close)  # a process waiting on it sees it went and retries
        except OSError:
            left.append(LOCK_NAME)
            self.close()
        for folder in self.created:  # a file browser's litter (.DS_Store) would keep a folder made here
            with contextlib.suppress(OSError):
                for litter in [p for p in folder.iterdir() if _litter(p.name)]:
                    litter.unlink()
        remove_folders(self.created)
        return left

    def __enter__(self) -> "RunDirectory":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RunInUse(UsageError):
    """The run directory is locked by another process (a run is writing to it)."""


class RunExists(UsageError):
    """A new run's folder already holds a run (a sweep sharing its --runs-dir may have trained it meanwhile)."""


@contextlib.contextmanager
def folder_lock(path: Path, name: str, what: str, remedy: str):
    """Hold the lock file ``path/name`` for the block, as a run holds its folder's (:class:`RunDirectory`): one
    more holder is refused with :class:`RunInUse` naming its PID (``what`` is writing to ``path``); the file goes
    at the end. A sweep holds its --out folder with it. Yields the folder's :class:`Place` (where it is now)."""
    fd = RunDirectory._lock(path, remedy, name=name, what=what)
    _HELD.add(fd)
    pid = os.getpid()
    place = None
    try:
        place = Place(path)
        yield place
    finally:
        if os.getpid() == pid:  # a fork's copy holds no lock (its descriptors closed at the fork)
            _HELD.discard(fd)
            # where the folder went, its lock file went with it (a moved sweep folder: review chaos5 #2); one deleted
            # took it along, and what its path names now is another's
            where = place.locate()[1] if place is not None else path
            if place is not None:
                place.close()
            if where is None:
                _release(fd)
            else:
                _remove_lock(where / name, lambda: _release(fd))


def file_in_the_way(path: str | os.PathLike) -> Path | None:
    """The first of ``path`` and the folders above it that exists and is not a folder (where no folder can be made
    at ``path``), or None: for the checks of ``--print-config`` and ``--dry-run``, which make no folder."""
    for level in (*reversed(Path(path).parents), Path(path)):
        if os.path.lexists(level) and not level.is_dir():  # (a broken link too: no folder can be made there)
            return level
    return None


def _check_fresh(path: Path) -> None:
    """Refuse, as a new run's start does, a folder that holds a run or other files (log files aside)."""
    if holds_run(path):
        raise RunExists(f"{path} already holds a run; continue it with --resume {shell_word(path)} "
                        "or choose another --out")
    others = stray_files(path)
    if others:
        raise UsageError(f"{path} is not empty ({', '.join(others[:3])}{', ...' if len(others) > 3 else ''}) "
                         "and holds no run; pass a new or empty folder as --out")


def check_out(out: str | os.PathLike) -> None:
    """Refuse an ``--out`` that a new run's start refuses (:meth:`RunDirectory.open`), leaving no folder: empty, a
    file or a broken link in the way, a folder that holds a run or other files (review diff13 #1, #2), a place where
    no folder can be made."""
    if not str(out).strip():
        raise UsageError("--out is empty; pass a run directory")
    blocker = file_in_the_way(out)
    if blocker is not None:
        raise UsageError(f"run directory {out} is not writable ({in_the_way(blocker)}); pass another --out")
    if os.path.isdir(out):
        _check_fresh(Path(out))
    why = cannot_make(out)
    if why:
        raise UsageError(f"run directory {out} is not writable ({why}); pass another --out")


def cannot_make(path: str | os.PathLike) -> str | None:
    """Why a start could not make its folders at ``path`` (or its files there, where it is a folder), or None: a
    folder made in the deepest level that exists, and removed at once, tells (a read-only file system, /proc, another
    user's folder: review newuser5 #2), where no look at modes can for root. For the checks of ``--print-config`` and
    ``--dry-run``, which leave no folder."""
    base = next((level for level in (Path(path), *Path(path).parents) if level.is_dir()), None)
    if base is None:  # (a relative path from a current folder that was removed)
        return "the folder it is in does not exist"
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".reste-probe-", dir=base))
    except OSError as err:
        return err.strerror or str(err)
    return None


def in_the_way(level: Path) -> str:
    """What :func:`file_in_the_way` found, in words: a file, or a broken symbolic link."""
    broken = os.path.islink(level) and not level.exists()
    return f"{level} is a broken symbolic link" if broken else f"{level} is a file"


# ------------------------------------------------------------- the K best epochs


def top_name(epoch: int, acc: float) -> str:
    """``epoch0007-acc91.23.pt``: the file in ``top/`` of an epoch with test top-1 ``acc``."""
    return f"epoch{epoch:04d}-acc{acc:.2f}.pt"


def _top_folder(run_dir: str | os.PathLike) -> Path:
    """``run_dir/top``, refused (``UsageError``) where it is there but not a plain folder of the run: a file, or a link,
    through which keep_top deleted and wrote the checkpoints of the folder it points to (a run folder received with
    ``top`` linked to another run's: review sec3 #2)."""
    top = Path(run_dir) / TOP_DIR
    if top.is_symlink() or (top.exists() and not top.is_dir()):
        what = "a link" if top.is_symlink() else "not a folder"
        raise UsageError(f"{top} is {what}: a run's {TOP_DIR} is a folder of its own holding its best epochs' "
                         "checkpoints, never written or cleared through a link; move it away, or restore the run's "
                         "own")
    return top


def top_checkpoints(run_dir: str | os.PathLike) -> dict[int, Path]:
    """{epoch: file} of the checkpoints in ``run_dir/top/`` (a ``top`` that is a link or a file: refused)."""
    folder = _top_folder(run_dir)
    found = {}
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        match = _TOP_NAME.match(path.name)
        if match and path.is_file():
            found[int(match.group(1))] = path
    return found


def _best_epochs(accuracy: dict[int, Any], k: int) -> set[int]:
    """The ``k`` epochs of ``{epoch: test top-1}`` ranked first (ties: the earlier epoch; no number: last)."""
    def rank(e: int) -> tuple[float, int]:
        acc = accuracy[e]
        return (-acc if isinstance(acc, (int, float)) and math.isfinite(acc) else math.inf, e)

    return set(sorted(accuracy, key=rank)[:k])


def epoch_end_whole(run_dir: str | os.PathLike, last: dict[str, Any]) -> bool:
    """Whether ``best.pt`` and ``top/`` are as the epoch end of ``last`` (``last.pt``'s contents) leaves them: a crash
    between its writes can leave an older ``best.pt``, no copy of the epoch in ``top/``, or one copy too many,
    which resume repairs (a sweep asks this to tell a finished run from one to resume)."""
    run_dir = Path(run_dir)
    best_epoch = last.get("best_epoch", -1)
    if isinstance(best_epoch, int) and best_epoch > 0:
        try:
            if load_checkpoint(best_checkpoint(run_dir)).get("epoch") != best_epoch:
                return False
        except UsageError:
            return False
    config = last.get("config")
    k = config.get("keep_top", 0) if isinstance(config, dict) else 0
    if k:
        files = top_checkpoints(run_dir)
        accuracy = {m["epoch"]: m.get("test_acc") for m in read_metrics(run_dir, missing_ok=True)
                    if m["epoch"] <= last["epoch"]}
        if len(files) > k or (last["epoch"] in accuracy and last["epoch"] in _best_epochs(accuracy, k)
                              and last["epoch"] not in files):
            return False
    return True


def keep_top(run_dir: str | os.PathLike, k: int, epoch: int, checkpoint: bytes | None) -> None:
    """Make ``top/`` hold the checkpoints of the ``k`` best epochs up to ``epoch`` by test top-1.

    ``checkpoint`` is the checkpoint file of epoch ``epoch`` (the bytes of its ``last.pt``), or
    ``None`` when there is none (a resume from a mid-epoch ``last.pt``). The ranking is that of
    ``metrics.jsonl`` (ties: the earlier epoch, as ``best.pt``) among the epochs whose file is on
    disk, and ``epoch``. Writes go in a crash-safe order: the new file (atomically), then the
    removal of those that dropped out and of any past ``epoch`` (left by a run resumed from an
    earlier checkpoint), so a crash anywhere leaves only whole files, which the next call (the
    next epoch, or resume) puts right.
    """
    run_dir = Path(run_dir)
    folder = _top_folder(run_dir)
    for tmp in orphaned_temporaries(folder):  # left by a process killed in the middle of a write
        tmp.unlink(missing_ok=True)
    accuracy = {m["epoch"]: m.get("test_acc") for m in read_metrics(run_dir) if m["epoch"] <= epoch}
    on_disk = top_checkpoints(run_dir)
    candidates = {e: accuracy.get(e) for e in on_disk if e <= epoch}
    if checkpoint is not None:
        candidates[epoch] = accuracy.get(epoch)

    best = _best_epochs(candidates, k)
    if checkpoint is not None and epoch in best and epoch not in on_disk:
        folder.mkdir(exist_ok=True)
        acc = candidates[epoch]
        atomic_write(folder / top_name(epoch, acc if isinstance(acc, (int, float)) else math.nan),
                     lambda f: f.write(checkpoint))
    for e, path in on_disk.items():
        if e not in best:
            path.unlink(missing_ok=True)


# ----------------------------------------------------------- files of a run


def last_checkpoint(run_dir: str | os.PathLike) -> Path:
    """``run_dir/last.pt``: the checkpoint a resume continues from."""
    return Path(run_dir) / LAST


def check_has_checkpoint(path: str | os.PathLike) -> None:
    """Before a command reads the checkpoint of ``path`` (a .pt file, or a run folder: its last.pt): a one-line
    ``UsageError`` for a sweep's folder (name one of its runs), a run folder whose first epoch has not ended (no
    last.pt yet: whether a process trains it now) and one with finished epochs whose last.pt is gone (its best.pt,
    where kept). Anything else is for ``load_checkpoint`` to read or refuse."""
    folder = Path(path)
    if not folder.is_dir():
        return
    if (folder / SWEEP_MANIFEST).is_file():
        raise UsageError(sweep_folder_hint(folder))
    if (folder / CONFIG).is_file() and not last_checkpoint(folder).exists():
        best = best_checkpoint(folder)
        if best.exists() or (folder / METRICS).is_file() and (folder / METRICS).stat().st_size:
            kept = f"pass {shell_word(best)}, the checkpoint of its best epoch" if best.exists() else \
                "no checkpoint of it is left"
            raise UsageError(f"{folder} has finished epochs but no {LAST} (deleted or lost); {kept}")
        holder = lock_holder(folder)
        now = (f"its first epoch is still training (pid {holder} on this machine)" if holder and holder > 0 else
               f"it stopped before its first epoch ended (`reste train --resume {shell_word(folder)}` starts it "
               "again)" if holder == 0 else "its first epoch has not ended")
        raise UsageError(f"{folder} holds a run but no checkpoint yet: {now}")


def best_checkpoint(run_dir: str | os.PathLike) -> Path:
    """``run_dir/best.pt``: the checkpoint of the epoch with the best test top-1."""
    return Path(run_dir) / BEST


def write_config(run_dir: str | os.PathLike, config: TrainConfig) -> None:
    """Write ``config.json`` (atomically)."""
    text = json.dumps(config.to_dict(), indent=2).encode()
    atomic_write(Path(run_dir) / CONFIG, lambda f: f.write(text))


def check_output_path(path: str | os.PathLike) -> None:
    """Refuse, with one line, an output ``path`` (an export, predictions) that would overwrite a file of a run:
    a checkpoint (any ``.pt``), its settings, metrics, lock, log, figure or record, or a file in its ``top/`` or
    ``tensorboard/`` folder."""
    path = Path(path)
    folder = path.parent
    names = (*RUN_FILES, LOCK_NAME, DIVERGED, FAILED, TRAIN_LOG, CURVES)
    if (folder / CONFIG).is_file() and (path.suffix == ".pt" or path.name in names):
        raise UsageError(f"{path} would overwrite a file of the run in {folder}; pass another output path")
    if folder.name in (TOP_DIR, TENSORBOARD_DIR) and (folder.parent / CONFIG).is_file():
        raise UsageError(f"{path} would write into the run's {folder.name}/ folder; pass another output path")


def record_divergence(run_dir: str | os.PathLike, epoch: int | None, step: int | None) -> None:
    """Record that the run in ``run_dir`` diverged at ``epoch``, ``step`` (1-based; None where unknown)."""
    path = Path(run_dir)
    path.mkdir(parents=True, exist_ok=True)  # a run that diverged in epoch 1 removed what it wrote
    atomic_write(path / DIVERGED, lambda f: f.write(json.dumps({"epoch": epoch, "step": step}).encode() + b"\n"))


def divergence(run_dir: str | os.PathLike) -> str | None:
    """Where the run in ``run_dir`` diverged, in words (``record_divergence``); None when it has no such record."""
    path = Path(run_dir) / DIVERGED
    try:
        record = parse_json(path.read_text(encoding="utf-8"))
        epoch, step = record["epoch"], record["step"]
    except (FileNotFoundError, NotADirectoryError):  # (a file given for the folder: no record either)
        return None
    except (OSError, ValueError, TypeError, KeyError):
        return f"it diverged (its record {path} is damaged)"
    return "it diverged" + (f" (non-finite loss at epoch {epoch}, step {step})" if epoch and step else "")


def forget_divergence(run_dir: str | os.PathLike) -> None:
    """Remove the record of a divergence: the run trains again."""
    (Path(run_dir) / DIVERGED).unlink(missing_ok=True)


def not_a_file(path: Path, after_moving: str = "") -> UsageError:
    """The refusal of a run's file that is no regular file (a FIFO, whose read waits for ever; a device; a folder)."""
    return UsageError(f"{path} is not a file (a FIFO, a device or a folder): a run's {path.name} is one; move it "
                      f"away{after_moving}, or restore the run's own")


def not_a_folder(path: str | os.PathLike, command: str = "--resume") -> UsageError:
    """The refusal of a file given where a run's folder is wanted (its last.pt or a log, a Lightning checkpoint):
    where the file's own folder holds a run, ``command`` (``reste show``) with that folder is the example."""
    parent = Path(os.path.abspath(path)).parent
    kind = "a file" if os.path.isfile(path) else "not a folder"
    example = f", e.g. {command} {shell_word(parent)}" if holds_run(parent) else ""
    lightning = ""
    if os.path.isfile(path):
        from .checkpoint import _LIGHTNING_HINT, _LIGHTNING_KEY

        lightning = f"; {_LIGHTNING_HINT}" if _pickle_holds(path, _LIGHTNING_KEY) else ""
    return UsageError(f"{path} is {kind}; pass the run's folder (the one holding config.json){example}{lightning}")


def _pickle_holds(path: str | os.PathLike, key: bytes) -> bool:
    """Whether the torch zip file ``path`` pickles ``key`` (its data.pkl alone read, not its tensors)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            name = next((n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"), None)
            return name is not None and key in archive.read(name)
    except (OSError, ValueError, zipfile.BadZipFile, RuntimeError):
        return False


def record_failure(run_dir: str | os.PathLike, error: str) -> None:
    """Record that the run in ``run_dir`` failed with ``error`` (one line: the exception's type and message)."""
    path = Path(run_dir)
    # a run that failed at its start removed what it wrote; not the folders above it (a sweep's runs folder moved
    # away while it ran is not made again: review chaos5 #2)
    path.mkdir(exist_ok=True)
    atomic_write(path / FAILED, lambda f: f.write(json.dumps({"error": error}).encode() + b"\n"))


def failure(run_dir: str | os.PathLike) -> str | None:
    """Why the run in ``run_dir`` failed, in words (``record_failure``); None when it has no such record."""
    path = Path(run_dir) / FAILED
    try:
        error = parse_json(path.read_text(encoding="utf-8"))["error"]
    except (FileNotFoundError, NotADirectoryError):  # (a file given for the folder: no record either)
        return None
    except (OSError, ValueError, TypeError, KeyError):
        return f"it failed (its record {path} is damaged)"
    log = f"; its traceback is in {path.parent / TRAIN_LOG}" if (path.parent / TRAIN_LOG).is_file() else ""
    return f"it failed ({error}){log}"


def forget_failure(run_dir: str | os.PathLike) -> None:
    """Remove the record of a failure: the run starts again."""
    (Path(run_dir) / FAILED).unlink(missing_ok=True)


_PROC_LOCKS = "/proc/locks"  # Linux's table of the file locks held on this machine
_MOUNTS = "/proc/self/mounts"  # and its mount table
_NETWORK_FS = ("nfs", "nfs4", "cifs", "smb3", "smbfs", "lustre", "gpfs", "beegfs", "ceph", "glusterfs", "9p", "afs")


def _shared_file_system(path: Path) -> bool:
    """Whether ``path`` lies on a file system other machines may share (NFS, Lustre, ...; a FUSE one too), by the
    mount table of Linux; False where it cannot be read."""
    try:
        with open(_MOUNTS, encoding="utf-8", errors="replace") as f:
            mounts = [line.split() for line in f]
    except OSError:
        return False
    real = os.path.realpath(path)
    best = ("", "")
    for fields in mounts:
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        inside = real == point or real.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best[0]):
            best = (point, fields[2])
    kind = best[1]
    return kind.split(".")[0] in _NETWORK_FS or kind.startswith("fuse")


def _pid_namespace() -> str:
    """This process's PID namespace on Linux (``pid:[4026531836]``), "" elsewhere: a lock file records it, as a
    process in another namespace (another container on the same volume) is out of this one's lock table."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except (OSError, AttributeError, NotImplementedError):
        return ""


def lock_holder(path: str | os.PathLike, name: str = LOCK_NAME) -> int | None:
    """Who holds the lock of the folder ``path`` (its ``name`` file, and for a run's ``.lock`` the folder itself),
    told without taking it (a probe would refuse a run starting at that moment): the holder's pid (-1 where the table
    gives none); 0 when no process holds it (or there is nothing to lock); None where that cannot be told: no
    /proc/locks (not Linux), or a file system that other machines may share (NFS, Lustre, ...), where a run elsewhere
    holds it out of this machine's sight, and where the lock file was last taken from another PID namespace (another
    container on the same volume), whose processes this one's table leaves out (review portable #11)."""
    files = [Path(path) / name]
    if name == LOCK_NAME:  # a run also locks its folder itself (RunDirectory._lock_folder): its .lock may be gone
        files.append(Path(path))
    found = []
    for file in files:
        try:
            found.append(os.lstat(file))
        except FileNotFoundError:
            continue  # a run holds its .lock while it runs
        except OSError:
            return None
    if not found:
        return 0
    if not hasattr(os, "major"):  # Windows: no device numbers, and no /proc/locks (review portable #2)
        return None
    places = [f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}" for info in found]
    try:
        with open(_PROC_LOCKS, encoding="ascii", errors="replace") as f:
            table = f.read().splitlines()
    except OSError:
        return None
    if _shared_file_system(Path(path)):  # a run on another machine holds its lock there, not in this table
        return None
    for line in table:  # "1: FLOCK  ADVISORY  WRITE 1234 fd:01:5678 0 EOF"; a waiter's line has "->" after "1:"
        fields = line.split()
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] in places:
            return int(fields[4]) if fields[4].isdigit() and fields[4] != "0" else -1  # (0: out of sight, old kernels)
    try:  # no holder in sight: none, unless the last holder's processes are out of this namespace's table
        with open(files[0], "rb") as f:
            lines = f.read(4096).decode("utf-8", "replace").split("\n")
    except OSError:
        lines = []
    if len(lines) > 2 and lines[2].startswith("pid:") and lines[2] != _pid_namespace():
        return None
    return 0


def held_by(path: str | os.PathLike, job: str) -> bool:
    """Whether the run folder ``path`` is locked for the torchrun job ``job`` (a ``distributed.job_token()``): its
    ``.lock`` records it, which only that job's rank 0 writes, once it holds the lock. While any process holds the
    lock, the line is its own (each holder writes its line over the last). Not asked of the lock table: on a shared
    file system it does not know, another node's lock is not in this machine's table, and the other processes
    waited for nothing (review rev13 #5). The line a past round of the same job left (the file stays) lets them
    read the run at once; no other job holds it then, or the line would be that job's."""
    try:
        with open(Path(path) / LOCK_NAME, "rb") as f:
            lines = f.read(4096).decode("utf-8", "replace").split("\n")
    except OSError:
        return False
    return bool(job) and len(lines) > 1 and lines[1] == job


def stray_files(path: str | os.PathLike) -> list[str]:
    """The names in a folder that a new run there refuses: all but its lock, a sweep's log, the record of a run
    that diverged or failed before it kept anything (trained again there) and what Finder or Explorer wrote (.DS_Store,
    Thumbs.db, ...)."""
    return sorted(p.name for p in Path(path).iterdir() if p.name not in (LOCK_NAME, DIVERGED, FAILED, OLD_WRITE_PROBE)
                  and not p.name.endswith(".log") and not (p.name.startswith(".") and p.name.endswith(".tmp"))
                  and not _litter(p.name))


def blocked(run_dir: str | os.PathLike) -> str | None:
    """Why no run can start in ``run_dir``, a folder that holds none but files a new run refuses (a finished run's
    config.json deleted, its metrics.jsonl left), in words; None where one can (or the folder is unreadable: the
    run says so)."""
    path = Path(run_dir)
    try:
        stray = stray_files(path) if path.is_dir() and not holds_run(path) else []
    except OSError:
        return None
    if not stray:
        return None
    return (f"{path} has no {CONFIG} but holds {', '.join(stray[:3])}, so no run can start there; delete the folder "
            "to train the run again")


def _probed(path: Path, probe: Callable[[Path], bool]) -> bool:
    """``probe(path)`` (``Path.exists``, ``Path.is_file``), where a folder this user may not search is a one-line
    error: Python raises PermissionError there, which read as a refused write, or raised again in the handler of
    the first (review fuzz1 #3)."""
    try:
        return probe(path)
    except PermissionError as err:
        raise UsageError(f"cannot read {path.parent} or a folder above it ({err.strerror}); make them readable "
                         "(their mode, their owner) and run the command again") from None


def holds_run(path: str | os.PathLike) -> bool:
    """Whether the folder holds a run (its settings or a checkpoint): a new run refuses it, a resume takes it."""
    path = Path(path)
    return _probed(path / CONFIG, Path.exists) or _probed(path / LAST, Path.exists)


def run_config(run_dir: str | os.PathLike, checked: bool = False) -> TrainConfig:
    """The settings of a run: its ``config.json``, or, where that is missing, ``last.pt``'s copy of them.
    ``checked``: config.json's values of another type are its damage (see :func:`saved_config`)."""
    run_dir = require_run_path(run_dir)
    if _probed(run_dir / CONFIG, Path.exists) or not _probed(run_dir / LAST, Path.is_file):
        return saved_config(run_dir, checked)
    try:
        saved = load_checkpoint(run_dir / LAST).get("config")
    except UsageError as err:
        reason = str(err).split("; use another checkpoint")[0]
        raise UsageError(f"{run_dir} has no {CONFIG}, and {reason}: the run cannot continue; start a new run") \
            from None
    if not isinstance(saved, dict):
        raise UsageError(f"{run_dir} has no {CONFIG}, and its {LAST} holds no settings to rebuild it from; "
                         "start a new run")
    return TrainConfig.from_saved(saved)


def config_keys(run_dir: str | os.PathLike) -> set[str]:
    """The settings ``config.json`` names (a damaged file may lack some)."""
    data = parse_json(read_run_file(Path(run_dir) / CONFIG).decode("utf-8"))
    return set(data) if isinstance(data, dict) else set()


def restore_config(run_dir: str | os.PathLike, write: bool = True) -> bool:
    """Where ``config.json`` is missing and ``last.pt`` is there, write it again (``write``) from the checkpoint's
    own copy of the settings; returns whether it was missing. Without ``write`` (a process other than rank 0)
    it waits until that process has written it."""
    run_dir = Path(run_dir)
    if (run_dir / CONFIG).exists() or not (run_dir / LAST).is_file():
        return False
    if not write:
        for _ in range(600):  # rank 0 reads last.pt and writes the file; the others wait for it
            if (run_dir / CONFIG).exists():
                return True
            time.sleep(0.1)
        raise UsageError(f"{run_dir} has no {CONFIG}; resume it in one process first to write it again")
    write_config(run_dir, run_config(run_dir))
    return True


def resume_command(run_dir: str | os.PathLike, world_size: int = 1) -> str:
    """How to continue a run, as its stop lines and ``reste show`` say it: under torchrun (``world_size``
    processes), torchrun again with ``--resume`` and as many processes (a checkpoint taken inside an epoch holds
    each process's place; ``reste train --resume`` alone is one process, refused for it). With the ``--plugin``
    flags the resume needs again, by the plugins the run's config.json records (review extend #12: a requeue that
    ran the command it was given failed on every run of a .py plugin)."""
    from .plugins import given_again

    try:
        recorded = parse_json((Path(run_dir) / CONFIG).read_text(encoding="utf-8")).get("plugins")
    except (OSError, ValueError, AttributeError):  # (no such file, not JSON, not an object: the resume says so)
        recorded = None
    resume = f"--resume {shell_word(run_dir)}{given_again(recorded, run_dir, here=False)}"
    if world_size <= 1:
        return f"`reste train {resume}`"
    return f"torchrun again, {world_size} processes, running `-m reste.cli train {resume}`"


def require_run_path(run_dir: str | os.PathLike) -> Path:
    """``run_dir`` as a path; an empty one (an unset shell variable) is refused, not taken as ``.``."""
    if not str(run_dir).strip():
        raise UsageError("the run directory given is empty; pass the folder of the run")
    return Path(run_dir)


def saved_config(run_dir: str | os.PathLike, checked: bool = False) -> TrainConfig:
    """The TrainConfig saved in a run directory's config.json. ``checked``: a value of another type (``"epochs":
    "6"``, which what reads the settings would compare or format) is the file's damage, a one-line ``UsageError``
    (a resume names it its own way, saying how to give the setting again)."""
    cfg_path = require_run_path(run_dir) / CONFIG
    if not cfg_path.is_file() and (Path(run_dir) / SWEEP_MANIFEST).is_file():
        raise UsageError(sweep_folder_hint(run_dir))
    if not Path(run_dir).exists():
        raise UsageError(f"{run_dir} does not exist; pass the folder of a run (its --out)")
    if not Path(run_dir).is_dir():  # its last.pt, a Lightning .ckpt: not a run that failed (review dist #2)
        raise not_a_folder(run_dir)
    if cfg_path.exists() and not cfg_path.is_file():  # (a FIFO, which a read would wait on for ever: rev16 #3)
        raise not_a_file(cfg_path, f" (a resume writes it again from {LAST})")
    if not cfg_path.is_file():
        inner = next(itertools.chain(Path(run_dir).glob(f"*/{CONFIG}"), Path(run_dir).glob(f"*/*/{CONFIG}")), None)
        example = f", e.g. {inner.parent} (a run this folder holds)" if inner is not None else ""  # a sweep's runs
        outer = Path(run_dir).absolute().parent
        if not example and (outer / CONFIG).is_file():  # its top/ or tensorboard/
            example = f": {Path(run_dir).parent if str(Path(run_dir).parent) != '.' else outer}, the run it is in"
        failed = failure(run_dir)  # a sweep's run that failed before it kept anything
        if failed:
            raise UsageError(f"{run_dir} holds no run: {failed}; the sweep trains it again")
        if _start_left(run_dir):  # (review chaos4, suggestion: it said to pass a run's folder)
            raise UsageError(f"{run_dir} holds no run: a start was stopped before it saved anything (its lock file "
                             f"alone is left); run the same `reste train --out {shell_word(run_dir)}` command again")
        raise UsageError(f"{run_dir} holds no run (no {CONFIG}); pass a run's folder (its --out){example}")
    raw = read_run_file(cfg_path)  # (a refused read says so alone: it is no damage, review chaos4 #3)
    try:
        data = parse_json(raw.decode("utf-8"))
        missing = [k for k in _IDENTITY if k not in data] if isinstance(data, dict) else list(_IDENTITY)
        if missing:
            raise UsageError(f"no {', '.join(missing)}")
        config = TrainConfig.from_saved(data)
        if checked:
            config._check_types(keys=True)
        return config
    except UsageError as err:
        raise UsageError(f"{cfg_path} is corrupted ({err}); {_config_remedy(run_dir)}") from None
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError, AttributeError) as err:
        raise UsageError(f"{cfg_path} is corrupted ({str(err)[:100]}); {_config_remedy(run_dir)}") from None


def _start_left(run_dir: str | os.PathLike) -> bool:
    """Whether ``run_dir`` holds what a start stopped at once (a SIGKILL while it loads its data) leaves: its lock file,
    and at most its write probe, nothing else."""
    try:
        names = {p.name for p in Path(run_dir).iterdir()}
    except OSError:
        return False
    return LOCK_NAME in names and names <= {LOCK_NAME, WRITE_PROBE, OLD_WRITE_PROBE}


def _config_remedy(run_dir: str | os.PathLike) -> str:
    """What to do about a damaged config.json: last.pt keeps a copy of the settings, which a resume writes again."""
    if (Path(run_dir) / LAST).is_file():
        return f"delete it: --resume writes it again from {LAST}"
    return "start a new run"


def sweeps_inside(folder: str | os.PathLike) -> list[Path]:
    """The sweeps' folders one level inside ``folder``, by name (``sweeps/est``, ``sweeps/oend`` of ``sweeps``)."""
    try:
        inside = sorted(p for p in Path(folder).iterdir() if p.is_dir())
    except OSError:
        return []
    return [p for p in inside if (p / SWEEP_MANIFEST).is_file() and not holds_run(p)]


def sweeps_inside_hint(folder: str | os.PathLike, command: str) -> str | None:
    """``folder holds the sweeps a, b: pass one, e.g. `reste COMMAND folder/a```, or None where it holds none."""
    sweeps = sweeps_inside(folder)
    if not sweeps:
        return None
    names = listed([p.name for p in sweeps])
    return (f"{folder} holds {'the sweeps' if len(sweeps) > 1 else 'the sweep'} {names}: pass "
            f"{'one' if len(sweeps) > 1 else 'it'}, e.g. `reste {command} {shell_word(sweeps[0])}`")


def sweep_folder_hint(folder: str | os.PathLike) -> str:
    """The one line for a sweep's folder given where a run's is wanted."""
    return (f"{folder} is a sweep's folder, not a run's: give one of its runs ({Path(folder) / 'runs'}/.../seedN; "
            f"`reste show {shell_word(folder)}` lists them), or write its tables and figures with "
            f"`reste report {shell_word(folder)}`")


def schedule_fields(line: dict[str, Any]) -> dict[str, float]:
    """The schedule values a metrics line holds (its estimator's o, t, k, ..., by their names): its numbers
    beside ``METRIC_FIELDS``."""
    return {k: v for k, v in line.items()
            if k not in METRIC_FIELDS and isinstance(v, (int, float)) and not isinstance(v, bool)}


def start_metrics(run_dir: str | os.PathLike) -> None:
    """An empty ``metrics.jsonl`` (a new run)."""
    atomic_write(Path(run_dir) / METRICS, lambda f: None)


# O_NONBLOCK: a FIFO planted there is refused at once (ENXIO) rather than waited on; a plain file ignores it.
# O_BINARY (Windows): LF stays LF, as open() writes it
_APPEND = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0) \
    | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)


def open_append(path: str | os.PathLike, **text: Any) -> Any:
    """``open(path, "a", **text)`` that appends only to a plain file: a link there is not followed (sec2 6: a
    run's log planted in a received or shared folder as a link had reste's lines appended to its target), and
    it, a FIFO or a folder is a ``UsageError`` naming it; other failures are the ``OSError``."""
    path = Path(path)
    refusal = UsageError(f"{path} is not a plain file (a link, a folder or a device); reste appends only to a "
                         "plain file: look at what it is and remove it")
    return os.fdopen(_open_plain(path, _APPEND, 0o666, refusal), "a", **text)


def append_metrics(run_dir: str | os.PathLike, record: dict[str, Any]) -> None:
    """Add the metrics line of a finished epoch, on disk (fsync) before the checkpoint that follows it."""
    path = Path(run_dir) / METRICS
    try:
        with open_append(path, encoding="utf-8", newline="\n") as f:  # LF, as truncate_metrics
            f.write(json_line(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
    except OSError as err:
        raise naming(err, path) from err


def read_run_file(path: Path) -> bytes:
    """The bytes of a run's own file (config.json, metrics.jsonl). A read that the file system refuses (the file's
    mode, a failing disk) is a one-line error that says it is a read: it was said as a refused write, whose remedy
    (make the folder writable) changed nothing (review diff10 #5)."""
    try:
        return path.read_bytes()
    except OSError as err:
        if err.errno in (errno.EACCES, errno.EPERM):
            raise UsageError(f"cannot read {path} ({err.strerror}); make it readable (its mode, its owner) and run "
                             "the command again") from None
        if err.errno == errno.EIO:
            raise UsageError(f"cannot read {path} ({err.strerror}); check the disk (the system log says more)"
                             ) from None
        raise


_MEND = "mend or delete that line (one JSON object per epoch; resume puts back the last epoch's from last.pt)"


def _metrics_lines(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """(line, record) of each metrics line of ``path``, by the one rule for a torn last line."""
    # bytes that are not UTF-8 (damage) become U+FFFD: their line is then not JSON, as any other damage
    lines = [line for line in read_run_file(path).decode("utf-8", errors="replace").splitlines() if line.strip()]
    out = []
    for i, line in enumerate(lines):
        try:
            record = parse_json(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break  # torn by a crash in the middle of its write
            raise UsageError(f"{path} line {i + 1} is not JSON; the file is corrupted: {_MEND}") from None
        if not isinstance(record, dict) or not isinstance(record.get("epoch"), int):
            raise UsageError(f"{path} line {i + 1} is not a metrics record; the file is corrupted: {_MEND}")
        # a value that was not finite is written null (JSON has no NaN) and read back as NaN: a loss that overflowed,
        # an epoch's indicators of which nothing was measured (every step skipped by fp16's scaler)
        record.update({k: math.nan for k in NULL_AS_NAN if k in record and record[k] is None})
        bad = next((k for k in _ACCURACIES if k in record and not _finite(record[k])), None) \
            if _number(record.get("test_acc")) else "test_acc"
        bad = bad or next((k for k, v in record.items() if v is not None and not _number(v)), None)
        if bad:  # every reader computes with them (a best, a mean, a curve): a TypeError far from the file
            raise UsageError(f"{path} line {i + 1} (epoch {record['epoch']}) has no number as its {bad}; the file "
                             f"is corrupted: {_MEND}")
        if out and record["epoch"] <= out[-1][1]["epoch"]:  # a line is only ever appended after the epoch before
            # it: an epoch number changed by damage was counted as that many epochs, and the lines between as lost
            # (review chaos3 #2); a line repeated out of its place was read as a second run of its epoch
            before = out[-1][1]["epoch"]
            what = (f"both hold epoch {before}" if before == record["epoch"] else
                    f"are out of order (epoch {before}, then {record['epoch']})")
            raise UsageError(f"{path} lines {i} and {i + 1} {what}; the file is corrupted: mend the wrong epoch "
                             "number, or delete its line (resume puts back the last epoch's from last.pt)")
        out.append((line, record))
    return out


def epoch_lines(metrics: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[int]]:
    """The lines of the epochs ``metrics`` holds, in order (a repeated epoch's last line, where ``metrics`` did not
    come from :func:`read_metrics`, which refuses lines out of order); and the epochs below the last that have none:
    runs are counted by their set of epochs."""
    by_epoch = {m["epoch"]: m for m in metrics}
    missing = [e for e in range(1, max(by_epoch, default=0) + 1) if e not in by_epoch]
    return [by_epoch[e] for e in sorted(by_epoch)], missing


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# a line's accuracies, which every reader averages and ranks: never NaN or infinite (Python's json reads both), which a
# loss may be (review chaos4 #4: the report died of a NaN accuracy with a Python error)
_ACCURACIES = ("test_acc", "test_top5", "train_acc")


def _finite(value: Any) -> bool:
    return value is None or (_number(value) and math.isfinite(value))


def best_line(metrics: list[dict[str, Any]]) -> dict[str, Any]:
    """The metrics line of the best epoch by test top-1, the first of a tie (the epoch ``best.pt`` holds)."""
    return max(metrics, key=lambda m: m["test_acc"])  # max keeps the first of equal ones


def read_metrics(run_dir: str | os.PathLike, *, missing_ok: bool = False) -> list[dict[str, Any]]:
    """The metrics lines of a run directory, one dict per finished epoch (a torn last line left out).

    A missing ``metrics.jsonl`` is an error, or no lines with ``missing_ok``.
    """
    path = Path(run_dir) / METRICS
    if path.exists() and not path.is_file():  # a FIFO, which a read waits on: what the resume refuses, show and a
        raise not_a_file(path)  # sweep's plan say too (they took it for no lines: review diff10 #6)
    if not path.is_file():
        if missing_ok:
            return []
        if (Path(run_dir) / SWEEP_MANIFEST).is_file():
            raise UsageError(sweep_folder_hint(run_dir))
        raise UsageError(f"{run_dir} has no {METRICS}; is it a reste run directory?")
    return [record for _, record in _metrics_lines(path)]


def last_lost(run_dir: str | os.PathLike) -> bool:
    """Whether the run in ``run_dir`` lost its ``last.pt``: none, with more than one metrics line, a ``best.pt`` or
    ``top/`` files beside. One line and nothing else is a crash between epoch 1's line and its first ``last.pt``: a
    resume trains that epoch again (the rule of ``--resume`` and ``reste show`` alike)."""
    return not last_checkpoint(run_dir).exists() and (finished_epochs(run_dir) > 1 or best_checkpoint(run_dir).exists()
                                                      or bool(top_checkpoints(run_dir)))


def finished_epochs(run_dir: str | os.PathLike) -> int:
    """The number of epochs ``metrics.jsonl`` records; 0 when it is missing or damaged."""
    try:
        return len(read_metrics(run_dir, missing_ok=True))
    except UsageError:
        return 0


def _scores_apart(run_dir: str | os.PathLike, ckpt: dict[str, Any]) -> str | None:
    """Where the checkpoint ``ckpt`` is not the run's in ``run_dir`` by the metrics line it keeps of its epoch (the
    test top-1 differs from metrics.jsonl's line of that epoch): ``its epoch E scored test top-1 X%, where
    metrics.jsonl says Y%``; None where they agree, or where either says nothing."""
    kept = ckpt.get("metrics")
    if not isinstance(kept, dict) or not _number(kept.get("test_acc")):
        return None
    try:
        lines = {m["epoch"]: m for m in read_metrics(run_dir, missing_ok=True)}
    except UsageError:
        return None  # (a damaged file: its own reader says so)
    line = lines.get(kept.get("epoch"))
    if line is None or line["test_acc"] == kept["test_acc"]:
        return None
    return (f"its epoch {kept['epoch']} scored test top-1 {kept['test_acc']:.2f}%, where {METRICS} says "
            f"{line['test_acc']:.2f}%")


def other_run(run_dir: str | os.PathLike, ckpt: dict[str, Any]) -> str | None:
    """Why the checkpoint ``ckpt`` (a ``last.pt`` or its header) is not the run's in ``run_dir``: it keeps its last
    epoch's metrics line, and metrics.jsonl's line of that epoch gives another test top-1 (a checkpoint put back from
    another run, or from a backup of another folder: a resume trained on it as the run's own, review chaos4 #1).
    None where they agree, or where either says nothing."""
    apart = _scores_apart(run_dir, ckpt)
    return apart and (f"{Path(run_dir) / LAST} is not this run's: {apart} (a checkpoint put back from another run?); "
                      "put this run's own back, or delete the folder to train the run again")


def lines_beyond_repair(planned: int, recorded: Any, held: int, step: int) -> list[int]:
    """The epochs of a run whose ``last.pt`` finished all ``planned`` epochs (it holds ``held`` of them and ``step``
    batches of the next) that metrics.jsonl has no line for (``recorded``: the epochs it has) and no resume can put
    back: all but the last, whose line the checkpoint keeps (:func:`truncate_metrics`). Nothing is left to train such a
    run, and it cannot be reported. [] for any other run (an unfinished one goes on, its resume naming the lines
    lost)."""
    if step or held < planned:
        return []
    return sorted(set(range(1, planned + 1)) - set(recorded) - {held})


def lines_lost_why(run_dir: str | os.PathLike, planned: int, lost: list[int]) -> str:
    """What a finished run whose metrics.jsonl lost the lines of epochs ``lost`` (:func:`lines_beyond_repair`) is told,
    in ``reste show``, a sweep and its report alike."""
    return (f"its {LAST} finished all {count(planned, 'epoch')}, but {Path(run_dir) / METRICS} has no line for epoch"
            f"{'s' * (len(lost) > 1)} {spans(lost)} (deleted or cut short), which cannot be recovered, so the run "
            "cannot be reported; delete its folder to train it again")


def truncate_metrics(run_dir: str | os.PathLike, epochs_done: int, last_record: dict[str, Any] | None = None,
                     measured: tuple[int, float | None] | None = None) -> list[int]:
    """Keep the metrics lines of the epochs the checkpoint holds (a crash may leave one more, or a torn one).

    ``last_record``, the checkpoint's own record of epoch ``epochs_done``, puts that epoch's line back where
    the file lost it (damaged, or deleted). ``measured`` (``indicators.saved_measure`` of the checkpoint's meter):
    the last that many lines with indicators that do not say how they were measured (a version before
    ``indicators_o_end`` wrote them) get its value. Returns the epochs up to ``epochs_done`` that still have no
    line."""
    path = Path(run_dir) / METRICS
    records = [record for _, record in _metrics_lines(path) if record["epoch"] <= epochs_done] \
        if path.exists() else []
    if measured is not None and measured[0] > 0:
        with_values = [i for i, record in enumerate(records) if "estimating_error" in record][-measured[0]:]
        for i in with_values:
            records[i].setdefault(MEASURE, measured[1])
    # each line as the writer writes it now: an older file's bare NaN becomes null (strict JSON: review diff28,
    # suggestion 2); any other line comes out as it was
    lines = [json_line(record) for record in records]
    epochs = {record["epoch"] for record in records}
    if last_record and last_record.get("epoch") == epochs_done and epochs_done not in epochs:
        lines.append(json_line(last_record))
        epochs.add(epochs_done)
    atomic_write(path, lambda f: f.write("".join(k + "\n" for k in lines).encode()))
    return [e for e in range(1, epochs_done + 1) if e not in epochs]


def best_mismatch(run_dir: str | os.PathLike, best_epoch: int) -> str | None:
    """Why a whole ``best.pt`` is not the run's best epoch ``best_epoch`` (as last.pt records it): it holds another
    epoch, or its epoch's metrics line differs from metrics.jsonl's (another run's file put back: review chaos4 #2,
    where the resume was silent and every rerun of a sweep said it mended it). None where it is, or where it is
    missing, damaged or unreadable (:func:`check_kept` says those)."""
    path = best_checkpoint(run_dir)
    if best_epoch <= 0:
        return None
    try:
        best = load_checkpoint(path)  # (its integrity checked: a damaged one is refused)
    except (UsageError, OSError):
        return None
    if best.get("epoch") != best_epoch:
        return f"{path} holds epoch {best.get('epoch')}, not the run's best epoch {best_epoch}"
    apart = _scores_apart(run_dir, best)
    return apart and f"{path} is not this run's: {apart}"


def check_kept(run_dir: str | os.PathLike, best_epoch: int, log: Any) -> None:
    """On resume: say (``log``) when ``best.pt`` is missing, damaged or not the best epoch, and remove damaged files
    from ``top/`` (they then drop out of the ranking), so that a run never goes on as if they were whole."""
    best = best_checkpoint(run_dir)
    problem = damage(best) if best_epoch > 0 else None
    mismatch = best_mismatch(run_dir, best_epoch) if problem is None else None
    if mismatch:  # (another run's, or an older copy: its file is written again when a later epoch beats it)
        log(f"warning: {mismatch} (another run's file, or an older copy?); the weights of epoch {best_epoch} are "
            "lost, and the file is written again when a later epoch beats it")
    if problem and problem.startswith(UNREADABLE):  # whole, maybe: its weights are not lost (review chaos4 #3)
        log(f"warning: {best} (epoch {best_epoch}) {problem}; make it readable (its mode, its owner): a later epoch "
            "that beats it writes it again")
    elif problem:
        log(f"warning: {best} (epoch {best_epoch}) is {'missing' if problem == 'missing' else 'damaged: ' + problem}"
            "; the weights of that epoch are lost, and the file is written again when a later epoch beats it")
    for epoch, path in top_checkpoints(run_dir).items():
        problem = damage(path)
        if problem and problem.startswith(UNREADABLE):  # kept: it may be whole
            log(f"warning: {path} {problem}; make it readable (its mode, its owner)")
        elif problem:
            path.unlink(missing_ok=True)
            log(f"warning: removed {path} ({problem}); epoch {epoch} leaves the top checkpoints")


def repair_best(run_dir: str | os.PathLike, last: dict[str, Any]) -> bool:
    """Rewrite ``best.pt`` from ``last.pt`` when ``last.pt`` is the best epoch but ``best.pt`` is not it.

    That is the state a crash between the two writes of an epoch leaves. Returns whether it rewrote.
    """
    if last.get("step") or last.get("best_epoch") != last["epoch"]:
        return False
    best_path = best_checkpoint(run_dir)
    try:
        best = load_checkpoint(best_path) if best_path.exists() else None
    except UsageError:
        best = None
    if best is not None and best["epoch"] == last["epoch"]:
        return False
    blob = last_checkpoint(run_dir).read_bytes()
    atomic_write(best_path, lambda f: f.write(blob))
    return True
