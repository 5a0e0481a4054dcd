"""Small C kernels, compiled on first use and called through ``ctypes``.

reste ships C source, not binaries: ``.c`` files installed with the package
(``reste/csrc``, ``reste/export/csrc``; :func:`c_source`). A :class:`NativeLibrary`
compiles its source with the system C compiler (``$CC``, ``cc``, ``gcc`` or ``clang``) the first time
it is needed, trying a list of flag sets from the fastest (``-march=native``) to
the most portable, and caches the shared object under ``$RESTE_CACHE`` or
``~/.cache/reste`` (keyed by the source, compiler, flags and CPU, so a changed
kernel or machine gets a fresh build). That folder and each library loaded from it must be
the user's alone, since their code runs in the process (:func:`untrusted_path`): a folder
another user owns or may write is not used (a warning says so, and the kernels are built in a
private folder under the temporary directory), and a library that is a link, another user's
or writable by others is not loaded. Where nothing compiles the library
reports ``None`` and callers use their pure-PyTorch or NumPy path. The C code computes
what that path computes, exactly or within the float32 rounding each kernel states (the ReSTE
backward's power law: a few units in the last place, :mod:`reste.fused`); a binary network can
turn such a last-bit difference into another sign, so a run with the C kernels and one without
may part ways after many steps.

Kernels that split their work over threads do it in C (on PyTorch's OpenMP workers or on POSIX
threads, see ``reste/export/csrc/packed.c``); :func:`split_parts` decides into how many pieces.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import importlib.resources
import os
import platform
import shlex
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path
from collections.abc import Iterator
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


_ON, _OFF = ("1", "on", "true", "yes"), ("0", "off", "false", "no")


class EnvSwitch:
    """An on/off switch read from environment variable ``name`` (1/on/true/yes or 0/off/false/no; unset gives
    ``default``, and anything else too, with a warning) at the first call and kept: the fused paths ask several
    times a step, and a read of the environment costs more than the rest of their check. ``set(flag)`` overrides it
    for this process; ``set(None)`` goes back to the variable (read again)."""

    def __init__(self, name: str, default: bool) -> None:
        self.name, self.default = name, default
        self._value: bool | None = None  # None: read the variable at the next call

    def __call__(self) -> bool:
        if self._value is None:
            self._value = _env_setting(self.name, "on" if self.default else "off") == "on"
        return self._value

    def set(self, flag: bool | None) -> None:
        self._value = None if flag is None else bool(flag)


class EnvMode:
    """A switch of three settings read from environment variable ``name``: ``"on"`` (1/on/true/yes), ``"off"``
    (0/off/false/no) or ``"auto"`` (auto, unset, and anything else, with a warning), at the first call and kept, as
    :class:`EnvSwitch`. ``set(flag)`` overrides it for this process (``True`` or ``"on"``, ``False`` or ``"off"``,
    ``"auto"``); ``set(None)`` goes back to the variable (read again)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._value: str | None = None

    def __call__(self) -> str:
        if self._value is None:
            self._value = _env_setting(self.name, "auto", extra=("auto",))
        return self._value

    def set(self, flag: bool | str | None) -> None:
        if flag is not None and flag not in (True, False, "on", "off", "auto"):
            raise ValueError(f"{self.name}: {flag!r} is none of True, False, 'on', 'off', 'auto' or None")
        self._value = None if flag is None else flag if isinstance(flag, str) else "on" if flag else "off"


def _env_setting(name: str, unset: str, extra: tuple[str, ...] = ()) -> str:
    """``"on"``, ``"off"`` or one of ``extra`` as environment variable ``name`` says; ``unset`` where it is unset,
    and where it is none of those too, with a warning (said once, not taken silently: newuser3)."""
    raw = os.environ.get(name, "").strip().lower()
    if raw in _ON or raw in _OFF:
        return "on" if raw in _ON else "off"
    if raw in extra:
        return raw
    if raw:
        kinds = ", ".join([f"on ({', '.join(_ON)})", f"off ({', '.join(_OFF)})", *extra])
        warnings.warn(f"{name}={os.environ[name]!r} is none of {kinds}; it is taken as unset: {unset}",
                      RuntimeWarning, stacklevel=3)
    return unset


#: what ``flock`` answers on a file system that keeps no locks (review portable #10): Lustre mounted without
#: ``-o flock`` (ENOSYS), NFSv3 whose lock daemon cannot be reached (ENOLCK), some SMB mounts (EOPNOTSUPP). Run folders
#: (``rundir``) and the extension's build (``cuda_ext``) then go on unlocked.
CANNOT_LOCK = frozenset({errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP, getattr(errno, "ENOTSUP", errno.EOPNOTSUPP)})


@contextlib.contextmanager
def exclusive(path: Path, unopened_ok: bool = False) -> Iterator[bool]:
    """Hold an exclusive ``flock`` on the file ``path`` (made if needed) for the block, waiting for another holder (an
    OS lock, which dies with its process); yields whether it is held. Unlocked (``False``) where there is no fcntl
    (Windows) or the file system keeps no locks (Lustre without -o flock: :data:`CANNOT_LOCK`), and with
    ``unopened_ok`` where the file cannot be opened (else that ``OSError``)."""
    try:
        import fcntl
    except ImportError:
        yield False
        return
    try:
        handle = open(path, "ab")  # (no text in it)
    except OSError:
        if not unopened_ok:
            raise
        yield False
        return
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
        except OSError as err:
            if err.errno not in CANNOT_LOCK:
                raise
            yield False
            return
        yield True  # (released as the file closes)


def cache_dir() -> Path:
    """Where compiled kernels are kept: ``$RESTE_CACHE`` or ``$XDG_CACHE_HOME/reste`` (``~/.cache/reste``); with no
    home to be found (HOME unset and a user the password database lacks: a container's arbitrary uid), this user's
    folder under the temporary directory, not a folder named ``~`` in the current one (review portable #9)."""
    home = os.path.expanduser("~")
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg and not os.path.isabs(xdg):  # (the XDG rule: a relative one is ignored; review install1, suggestion 4)
        xdg = None
    root = os.environ.get("RESTE_CACHE") or os.path.join(xdg or os.path.join(home, ".cache"), "reste")
    if not os.path.isabs(root) and not os.environ.get("RESTE_CACHE"):  # (a given relative $RESTE_CACHE is meant)
        return _private_temp()
    return Path(root)


def _private_temp() -> Path:
    """This user's folder under the temporary directory (its checks: :func:`_writable`). Where no temporary folder
    can be written, Python's falls back to the current folder: an ``OSError`` then (the kernels fall back to PyTorch
    and NumPy), not a ``reste-cache-0`` left in the user's project (review install2), unless $TMPDIR (TEMP, TMP)
    names that folder."""
    temp = tempfile.gettempdir()
    # the folders Python tries before its last resort, the current one ($TMPDIR, TEMP, TMP, /tmp, /var/tmp, ...)
    tried = getattr(tempfile, "_candidate_tempdir_list", lambda: ["/tmp", "/var/tmp", "/usr/tmp", "."])()[:-1]
    if os.path.abspath(temp) == os.path.abspath(os.getcwd()) and os.path.abspath(temp) not in {
            os.path.abspath(t) for t in tried}:
        raise OSError("no temporary folder can be written (Python's fallback is the current folder); set $TMPDIR or "
                      "$RESTE_CACHE to a folder of your own")
    return Path(temp) / f"reste-cache-{os.getuid() if hasattr(os, 'getuid') else 'user'}"


def _cpu_tag() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            flags = next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        flags = ""
    return platform.machine() + flags


def _writable(folder: Path) -> Path:
    """``folder``, made if needed, or, where it cannot be written (a read-only home, a bad $RESTE_CACHE) or is not
    this user's alone (:func:`untrusted_path`: a shared $RESTE_CACHE, said in a warning), a folder of this user's
    under the temporary directory: the kernels are then built there, not lost. So also where no library in it can be
    loaded (a file system mounted noexec; said in a warning where $RESTE_CACHE named it)."""
    refused = None  # why a folder that can be written is not used, in a warning
    unusable = None  # why it cannot hold libraries that load (noexec)
    try:
        _make_private(folder)
        if os.access(folder, os.W_OK | os.X_OK):
            refused = untrusted_path(folder) or _untrusted_above(folder)
            unusable = None if refused else _noexec(folder)
            if refused is None and unusable is None:
                return folder
    except OSError:
        pass
    # a folder the user named that cannot be written: said, as a noexec one is (review install2)
    unwritable = refused is None and unusable is None and bool(os.environ.get("RESTE_CACHE")) and folder == cache_dir()
    fallback = _private_temp()
    if folder == fallback:
        refused = None
    fallback.mkdir(mode=0o700, exist_ok=True)
    if untrusted_path(fallback, follow=False):  # in a folder anyone may write: made by another user, maybe
        raise OSError(f"{folder} {refused or unusable or 'is not writable'}, and {fallback} is not this user's own "
                      "(libraries loaded from it could be anyone's); set $RESTE_CACHE to a folder of your own")
    if unusable and _noexec(fallback):  # (review install1 #2: built again in each process, never loaded)
        raise OSError(f"{folder} {unusable}, and so does {fallback}; set $RESTE_CACHE to a folder of your own on a "
                      "file system that allows running programs")
    if unusable and os.environ.get("RESTE_CACHE"):  # a folder the user named: say why it is not used (diff25)
        warnings.warn(f"{folder} {unusable}, so reste keeps its cache in {fallback} instead; set $RESTE_CACHE to a "
                      "folder on a file system that allows running programs", RuntimeWarning, stacklevel=3)
    if unwritable and folder != fallback:
        warnings.warn(f"$RESTE_CACHE {folder} cannot be written, so reste keeps its cache in {fallback} instead; set "
                      "$RESTE_CACHE to a folder you can write", RuntimeWarning, stacklevel=3)
    if refused:
        warnings.warn(f"{folder} {refused}, so reste keeps its cache in {fallback} instead (code others put there "
                      "would run in this process); set $RESTE_CACHE to a folder of your own", RuntimeWarning,
                      stacklevel=3)
    return fallback


def _make_private(folder: Path) -> None:
    """``folder`` and each missing folder above it made with mode 0700, whatever the umask (review install1 #4: with
    umask 002 and a group of others, ``mkdir(parents=True)`` made ``~/.cache`` group-writable, which
    :func:`_untrusted_above` then refused in each command)."""
    missing = []
    for above in (folder, *folder.parents):
        if above.exists():
            break
        missing.append(above)
    for made in reversed(missing):
        made.mkdir(mode=0o700, exist_ok=True)


def _noexec(folder: Path) -> str | None:
    """Why no library in ``folder`` can be loaded, or None: a file system mounted ``noexec`` (a hardened /home or
    /tmp), whose files the dynamic loader refuses to map."""
    flag = getattr(os, "ST_NOEXEC", 0)
    try:
        noexec = bool(flag) and bool(os.statvfs(folder).f_flag & flag)
    except (OSError, AttributeError):  # (no statvfs: Windows)
        return None
    return "lies on a file system mounted noexec (no library there can be loaded)" if noexec else None


def writable_cache() -> Path:
    """:func:`cache_dir`, made if needed, or this user's own folder under the temporary directory where it
    cannot be written or is not this user's alone; ``OSError`` when neither can be used."""
    return _writable(cache_dir())


def _private_group(gid: int) -> bool:
    """Whether group ``gid`` is this user's own, a group of one: named after the user, the user's login group
    and listing no other member, as systems with user private groups make one for each user (and then give
    users a umask of 002, so that a folder of their own is group-writable)."""
    try:
        import grp
        import pwd

        user = pwd.getpwuid(os.getuid())
        group = grp.getgrgid(gid)
    except (ImportError, KeyError):  # no such user or group (a uid without a name in a container)
        return False
    return gid == user.pw_gid and group.gr_name == user.pw_name and set(group.gr_mem) <= {user.pw_name}


def _others_may_write(info: os.stat_result) -> str | None:
    """Why another user may write the file or folder with ``info`` (its ``stat``), or None."""
    if info.st_mode & 0o002:
        return "may be written by any user"
    if info.st_mode & 0o020 and not _private_group(info.st_gid):
        return f"may be written by its group (gid {info.st_gid})"
    return None


def _untrusted(info: os.stat_result) -> str | None:
    """Why a file or folder with ``info`` (its ``stat``) cannot be trusted with code this process runs: another
    user's, or one another user may write (in a shared $RESTE_CACHE anyone could plant or change a library under
    its predictable name); None where it is this user's alone."""
    if info.st_uid != os.getuid():
        return f"belongs to another user (uid {info.st_uid})"
    return _others_may_write(info)


def untrusted_path(folder: Path, follow: bool = True) -> str | None:
    """Why files found in ``folder`` could be another user's, or None: a folder another user owns or may write
    (:func:`_untrusted`) could hold anything under any name, and a name there could be renamed over after a
    check (the kernel libraries, torch's extension build). ``follow=False``: a link is refused too. A cached file
    that is read, not run (the digits split), is checked the same way. Not checked without POSIX owners
    (Windows)."""
    if not hasattr(os, "getuid"):
        return None
    info = os.stat(folder, follow_symlinks=follow)
    return "is a symbolic link" if stat.S_ISLNK(info.st_mode) else _untrusted(info)


def _untrusted_above(folder: Path) -> str | None:
    """Why a folder above ``folder`` could let another user swap ``folder`` itself for one of theirs (rev5 5: a
    group-writable project folder holding $RESTE_CACHE), or None: each must be root's or this user's, and no one
    else may write it unless it is sticky (/tmp: there only an entry's owner may rename it)."""
    if not hasattr(os, "getuid"):
        return None
    for above in Path(folder).resolve().parents:
        try:
            info = os.stat(above)
        except OSError:  # not there (yet), or not for this user to look at: nothing to swap through
            continue
        if info.st_mode & stat.S_ISVTX:
            continue
        why = (f"belongs to another user (uid {info.st_uid})" if info.st_uid not in (0, os.getuid())
               else _others_may_write(info))
        if why:
            return f"lies in {above}, which {why}"
    return None


class _Untrusted(OSError):
    """A cached library that is not loaded, and why."""

    def __init__(self, lib: Path, why: str) -> None:
        super().__init__(f"the cached {lib} {why}, so it is not loaded; set $RESTE_CACHE to a folder of your own")


_HELD: list[int] = []  # the descriptors libraries were loaded through (see _load)


def _load(lib: Path) -> ctypes.CDLL:
    """``lib`` loaded, where it is this user's own file that no one else may write (:func:`_untrusted`);
    ``_Untrusted`` where it is not, ``OSError`` where it cannot be opened or loaded. The file checked is the file
    loaded: it is opened once, never through a link, checked through that descriptor and loaded as
    /proc/self/fd/N, so a file renamed over ``lib`` after the check (another user's, in a folder they may write)
    is not the one that runs. Without /proc (macOS) the path is loaded after its file was checked. Not checked
    without POSIX owners (Windows)."""
    if not hasattr(os, "getuid"):
        return ctypes.CDLL(str(lib))
    try:  # O_NONBLOCK: a FIFO planted under the name would block the open; it is refused below instead
        fd = os.open(lib, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        if os.path.islink(lib):  # O_NOFOLLOW's error (ELOOP, or EMLINK on FreeBSD) says it less clearly
            raise _Untrusted(lib, "is a symbolic link") from None
        raise
    try:
        info = os.fstat(fd)
        why = _untrusted(info) or (None if stat.S_ISREG(info.st_mode) else "is not a regular file")
        if why:
            raise _Untrusted(lib, why)
        if _cut_short(fd, info.st_size):  # loading it would kill the process (SIGBUS): built again instead
            raise OSError(f"{lib} is cut short (its build or a copy of it was interrupted)")
        by_fd = f"/proc/self/fd/{fd}"
        if not os.path.exists(by_fd):
            return ctypes.CDLL(str(lib))
        try:
            loaded = ctypes.CDLL(by_fd)
        except OSError as err:  # (named by the cached file, not /proc/self/fd/N: review install1, suggestion 2)
            raise OSError(f"{lib}: {str(err).replace(by_fd + ': ', '')}") from None
        # Kept open for good: glibc knows a library by the name it was loaded under, and would answer a later
        # load of another library through a reused /proc/self/fd/N with this one.
        _HELD.append(fd)
        return loaded
    finally:
        if fd not in _HELD:
            os.close(fd)


def _cut_short(fd: int, size: int) -> bool:
    """Whether the ELF file open as ``fd`` (``size`` bytes) ends before its program segments or section headers do:
    a build or a copy cut off by a crash, a power loss or a full disk. The loader maps such a file and the process
    dies with SIGBUS at the first page past its end, in every later command too (review install1 #1). Not an ELF
    file: False (the loader refuses anything else with an error)."""
    try:
        return _ends_early(fd, size)
    except struct.error:  # a header whose sizes do not add up (an entry size too small for its entries): damaged
        return True


def _ends_early(fd: int, size: int) -> bool:
    """:func:`_cut_short`; ``struct.error`` where its headers are malformed (review diff25 #3)."""
    head = os.pread(fd, 64, 0)
    if head[:4] != b"\x7fELF":
        return False
    if len(head) < 6 or len(head) < (64 if head[4] == 2 else 52):  # (the header itself cut)
        return True
    if head[4] not in (1, 2) or head[5] not in (1, 2):  # (no ELF class or byte order this reads: the loader's)
        return False
    wide = head[4] == 2
    order = "<" if head[5] == 1 else ">"
    if wide:
        phoff, shoff = struct.unpack_from(order + "QQ", head, 32)
        phentsize, phnum, shentsize, shnum = struct.unpack_from(order + "HHHH", head, 54)
    else:
        phoff, shoff = struct.unpack_from(order + "II", head, 28)
        phentsize, phnum, shentsize, shnum = struct.unpack_from(order + "HHHH", head, 42)
    end = max(phoff + phnum * phentsize, shoff + shnum * shentsize)
    if size < end:
        return True
    table = os.pread(fd, phnum * phentsize, phoff)
    for i in range(phnum):  # each segment's bytes in the file: p_offset and p_filesz
        if wide:
            offset, = struct.unpack_from(order + "Q", table, i * phentsize + 8)
            filesz, = struct.unpack_from(order + "Q", table, i * phentsize + 32)
        else:
            offset, = struct.unpack_from(order + "I", table, i * phentsize + 4)
            filesz, = struct.unpack_from(order + "I", table, i * phentsize + 16)
        end = max(end, offset + filesz)
    return size < end


_STALE_BUILD = 3600.0  # seconds after which a build folder left in the cache is another process's that was killed


def _clear_stale_builds(root: Path) -> None:
    """Remove the build folders that processes killed while compiling left in ``root`` (review install1, suggestion
    3): those older than an hour (a build takes seconds; a younger one may still be compiling)."""
    now = time.time()
    try:
        entries = list(os.scandir(root))
    except OSError:
        return
    for entry in entries:
        try:
            if (entry.name.startswith(_BUILD_PREFIX) and entry.is_dir(follow_symlinks=False)
                    and now - entry.stat(follow_symlinks=False).st_mtime > _STALE_BUILD):
                shutil.rmtree(entry.path, ignore_errors=True)
        except OSError:
            continue


_BUILD_PREFIX = ".build-"


def c_compiler() -> str | None:
    """The C compiler the builds use: ``$CC``, else the first of cc, gcc and clang found; None where there is none."""
    return os.environ.get("CC") or next((c for c in ("cc", "gcc", "clang") if shutil.which(c)), None)


def compiler_found() -> bool:
    """Whether :func:`c_compiler` names a program that is here (``$CC`` may be a command line, "ccache gcc": its
    first word; review diff21 #8: a $CC naming a program that is not installed is no compiler)."""
    compiler = c_compiler()
    if compiler is None:
        return False
    if shutil.which(compiler):
        return True
    try:
        words = shlex.split(compiler, posix=os.name != "nt")
    except ValueError:
        return False
    return bool(words) and shutil.which(words[0].strip('"')) is not None


def compile_library(name: str, source: str, flag_sets: Sequence[Sequence[str]] = DEFAULT_FLAGS) -> ctypes.CDLL:
    """Compile ``source`` (or load the cached build) and return it; ``OSError`` when nothing compiles."""
    compiler = c_compiler()
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
        try:
            return _load(lib)
        except _Untrusted as err:  # its code would run in this process: built again below, over it, where this user
            errors.append(str(err))  # may replace it
        except OSError:  # not built yet, or not a library this machine loads: built below
            pass
        lib.parent.mkdir(parents=True, exist_ok=True)
        _clear_stale_builds(lib.parent)
        with tempfile.TemporaryDirectory(dir=lib.parent, prefix=f"{_BUILD_PREFIX}{name}-") as tmp:
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
                os.chmod(so, 0o755)  # what this user's later loads trust (_untrusted), whatever the umask
                with open(so, "rb") as built:  # on disk before its name is: a crash then leaves no torn library
                    os.fsync(built.fileno())
                os.replace(so, lib)  # atomic: processes compiling at once all end with a whole file
            except OSError as err:  # Windows: another process built it and has it loaded (it cannot be replaced);
                errors.append(str(err))  # or a planted file this user may not replace, which _load refuses
            try:
                return _load(lib)  # checked again: the file renamed into place may not be the one loaded
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
