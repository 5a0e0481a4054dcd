"""Small C kernels, compiled on first use and called through ``ctypes``.

reste ships C source, not binaries: ``.c`` files installed with the package
(``reste/csrc``, ``reste/export/csrc``; :func:`c_source`). A :class:`NativeLibrary`
compiles its source with the system C compiler (``$CC``, ``cc``, ``gcc`` or ``clang``) the first time
it is needed, trying a list of flag sets from the fastest (``-march=native``) to
the most portable, and caches the shared object under ``$RESTE_CACHE`` or
``~/.cache/reste`` (keyed by the source, compiler, flags and CPU, so a changed
kernel or machine gets a fresh build). Where nothing compiles the library
reports ``None`` and callers use their pure-PyTorch or NumPy path. The C code computes
what that path computes, exactly or within the float32 rounding each kernel states (the ReSTE
backward's power law: a few units in the last place, :mod:`reste.fused`); a binary network can
turn such a last-bit difference into another sign, so a run with the C kernels and one without
may part ways after many steps.

Kernels that split their work over threads do it in C (on PyTorch's OpenMP workers or on POSIX
threads, see ``reste/export/csrc/packed.c``); :func:`split_parts` decides into how many pieces.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.resources
import os
import platform
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, Protocol, Sequence

PTR = ctypes.c_void_p
I64 = ctypes.c_int64
I32 = ctypes.c_int32
F32 = ctypes.c_float

DEFAULT_FLAGS: tuple[tuple[str, ...], ...] = (("-O3", "-march=native"), ("-O3",))


class SourceFile(Protocol):
    """A C file to read when the library is built (an ``importlib.resources`` traversable, a ``Path``)."""

    def read_text(self, encoding: str | None = None) -> str: ...


def c_source(package: str, filename: str) -> SourceFile:
    """The C file ``csrc/<filename>`` shipped inside ``package`` (read when a library is built)."""
    return importlib.resources.files(package) / "csrc" / filename


class EnvSwitch:
    """An on/off switch read from environment variable ``name`` (1/on/true/yes or 0/off/false/no; anything else,
    or unset, gives ``default``) at the first call and kept: the fused paths ask several times a step, and a
    read of the environment costs more than the rest of their check. ``set(flag)`` overrides it for this
    process; ``set(None)`` goes back to the variable (read again)."""

    def __init__(self, name: str, default: bool) -> None:
        self.name, self.default = name, default
        self._value: bool | None = None  # None: read the variable at the next call

    def __call__(self) -> bool:
        if self._value is None:
            raw = os.environ.get(self.name, "").strip().lower()
            on, off = raw in ("1", "on", "true", "yes"), raw in ("0", "off", "false", "no")
            self._value = on or (self.default and not off)
        return self._value

    def set(self, flag: bool | None) -> None:
        self._value = None if flag is None else bool(flag)


def cache_dir() -> Path:
    """Where compiled kernels are kept: ``$RESTE_CACHE`` or ``$XDG_CACHE_HOME/reste`` (``~/.cache/reste``)."""
    root = os.environ.get("RESTE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "reste")
    return Path(root)


def _cpu_tag() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            flags = next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        flags = ""
    return platform.machine() + flags


def _writable(folder: Path) -> Path:
    """``folder``, made if needed, or, where it cannot be written (a read-only home, a bad $RESTE_CACHE), a
    folder of this user's under the temporary directory: the kernels are then built there, not lost."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if os.access(folder, os.W_OK | os.X_OK):
            return folder
    except OSError:
        pass
    fallback = Path(tempfile.gettempdir()) / f"reste-cache-{os.getuid() if hasattr(os, 'getuid') else 'user'}"
    fallback.mkdir(mode=0o700, exist_ok=True)
    info = fallback.lstat()
    if hasattr(os, "getuid") and (info.st_uid != os.getuid() or info.st_mode & 0o022 or fallback.is_symlink()):
        raise OSError(f"{folder} is not writable, and {fallback} is not this user's own (libraries loaded from it "
                      "could be anyone's); set $RESTE_CACHE to a writable folder")
    return fallback


def writable_cache() -> Path:
    """:func:`cache_dir`, made if needed, or this user's own folder under the temporary directory where it
    cannot be written; ``OSError`` when neither can be used."""
    return _writable(cache_dir())


def _distrust(lib: Path) -> str | None:
    """Why a cached library must not be loaded (a link, another user's file, one others may write: in a shared
    $RESTE_CACHE anyone could plant a library under the predictable name), or None. Not checked without POSIX
    owners (Windows)."""
    if not hasattr(os, "getuid"):
        return None
    info = os.lstat(lib)
    if stat.S_ISLNK(info.st_mode):
        return "is a symbolic link"
    if info.st_uid != os.getuid():
        return f"belongs to another user (uid {info.st_uid})"
    if info.st_mode & 0o002:
        return "may be written by any user"
    return None


def compile_library(name: str, source: str, flag_sets: Sequence[Sequence[str]] = DEFAULT_FLAGS) -> ctypes.CDLL:
    """Compile ``source`` (or load the cached build) and return it; ``OSError`` when nothing compiles."""
    compiler = os.environ.get("CC") or next((c for c in ("cc", "gcc", "clang") if shutil.which(c)), None)
    if compiler is None:
        raise OSError("no C compiler found (set $CC)")
    if shutil.which(compiler):  # one program, whose path may hold spaces and backslashes (Windows)
        command = [compiler]
    else:  # a command with its arguments, as make takes $CC: "ccache gcc", "gcc -m64"
        try:
            command = [w.strip('"') for w in shlex.split(compiler, posix=os.name != "nt")]
        except ValueError as err:
            raise OSError(f"$CC is not a command line ({err})") from None
    if not command:
        raise OSError("no C compiler found ($CC is blank)")
    errors = []
    root = writable_cache()
    for flags in flag_sets:
        key = hashlib.sha256("\0".join([source, compiler, *flags, _cpu_tag(), sys.platform]).encode()).hexdigest()
        lib = root / f"{name}_{key[:20]}.so"
        if lib.is_file() or lib.is_symlink():
            distrust = _distrust(lib)
            if distrust:  # its code would run in this process: only a file this user made and alone can change;
                # built again below, over it, where this user may replace it
                errors.append(f"the cached {lib} {distrust}, so it is not loaded; set $RESTE_CACHE to a folder of "
                              "your own")
            else:
                try:
                    return ctypes.CDLL(str(lib))
                except OSError:
                    pass
        lib.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=lib.parent) as tmp:
            src = Path(tmp) / f"{name}.c"
            src.write_text(source, encoding="utf-8")
            so = Path(tmp) / f"{name}.so"
            try:
                proc = subprocess.run([*command, *flags, "-fPIC", "-shared", str(src), "-o", str(so)],
                                      capture_output=True, text=True, timeout=120)
            except (OSError, subprocess.SubprocessError) as err:
                errors.append(str(err))
                continue
            if proc.returncode != 0:
                errors.append((proc.stderr.strip().splitlines() or ["failed"])[-1])
                continue
            try:
                os.chmod(so, 0o755)  # what this user's later loads trust (_distrust), whatever the umask
                os.replace(so, lib)  # atomic: processes compiling at once all end with a whole file
            except OSError as err:  # Windows: another process built it and has it loaded (it cannot be replaced)
                if not lib.is_file() or _distrust(lib):  # (or a planted file this user may not replace)
                    errors.append(str(err))
                    continue
            try:
                return ctypes.CDLL(str(lib))
            except OSError as err:
                errors.append(str(err))
    raise OSError(f"could not compile the {name} kernels: {'; '.join(dict.fromkeys(errors))}")  # each error once


class NativeLibrary:
    """A C library built on first use; ``get()`` is ``None`` where it cannot be built.

    ``source`` is the C text or a file (:func:`c_source`), read when the library is built: a
    missing file makes the library unavailable, like a missing compiler. ``signatures`` maps
    each function to its ``(argtypes, restype)``. The build is attempted once per process
    (thread-safe); ``reset()`` forgets it.
    """

    def __init__(self, name: str, source: str | SourceFile, signatures: dict[str, tuple[list[Any], Any]],
                 flag_sets: Sequence[Sequence[str]] = DEFAULT_FLAGS) -> None:
        self.name = name
        self.source = source
        self.signatures = signatures
        self.flag_sets = flag_sets
        self._lock = threading.Lock()
        self._built: ctypes.CDLL | Exception | None = None

    def get(self) -> ctypes.CDLL | None:
        built = self._built
        if built is None:
            with self._lock:
                if self._built is None:
                    try:
                        lib = compile_library(self.name, self.source_text(), self.flag_sets)
                        for fn, (argtypes, restype) in self.signatures.items():
                            getattr(lib, fn).argtypes = argtypes
                            getattr(lib, fn).restype = restype
                        self._built = lib
                    except (OSError, AttributeError) as err:
                        self._built = err
                built = self._built
        return built if isinstance(built, ctypes.CDLL) else None

    def source_text(self) -> str:
        """The C source (read from its file, if it is one); ``OSError`` when the file cannot be read."""
        return self.source if isinstance(self.source, str) else self.source.read_text(encoding="utf-8")

    def error(self) -> str | None:
        """Why the library is unavailable (``None`` when it builds)."""
        return None if self.get() is not None else str(self._built)

    def reset(self) -> None:
        with self._lock:
            self._built = None


def split_parts(total: int, threads: int, work: int | None = None, align: int = 1, grain: int = 200_000) -> int:
    """Into how many pieces (multiples of ``align``) a job over ``[0, total)`` is split for ``threads``
    threads: each piece must get at least ``grain`` of ``work`` (default ``total``); 1 means no split."""
    work = total if work is None else work
    return max(1, min(threads, total // max(align, 1), work // grain)) if threads > 1 else 1
