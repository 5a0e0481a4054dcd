"""reste's compiled extension: the binary activation and weight as C++ autograd nodes with CUDA kernels.

On a GPU the eager step of a binary network is bound by the host: through the default path each binary layer adds
two autograd nodes written in Python (:class:`reste.estimators._SignFunction` and the fused weight of
:mod:`reste.triton_dispatch`) whose forward and backward launch Triton kernels from Python. The
extension (``reste/csrc/ext``) does that work in C++:

* ``binary_sign``: forward sign(x) (sign(0) = +1, NaN kept), backward ``grad * g(x)``;
* ``scaled_sign``: forward sign(w) * mean(abs(w)) per group (the layer, or each output channel),
  backward the estimator's g for the sign plus the derivative of the mean (two launches each way
  for a group above 65,536 elements);
* ``binary_layer``: a binary conv's or linear layer's whole forward in one call (:func:`binary_layer`, which the
  layers of :mod:`reste.layers` take where :func:`takes_layer` allows): both of the above under one node,
  ``reste_ext::BinaryLayerBackward``, whose kernels share one CUDA launch each way (see ``kernels.cu``), then the
  conv or linear op through the dispatcher. On an H200 host that made a binary layer cost 95 µs of host time
  beyond a float one, against 206 µs through the two nodes called from Python one by one (RESULTS.md).

They are plain autograd nodes, as PyTorch's own are (not ``torch.autograd.Function``), called through
pybind11 with the estimator's arguments parsed once per schedule value, which costs a few
microseconds of host time less per call than an ``autograd::Function`` called as a ``torch.ops`` op
(``benchmarks/node_overhead.py`` times them). The first two are also registered as
``torch.ops.reste_ext.*`` (the estimator spelled out in the schema).

The kernels compute what the Triton kernels and the PyTorch expressions of
:mod:`reste.estimators` compute: the same float32 operations in the same order (built without
fused multiply-adds), the same scalars (:mod:`reste.kernel_args`), 16-bit values widened exactly
and rounded once. A double backward (``create_graph=True``) runs the differentiable PyTorch
expression (:func:`reste.estimators.reference_backward`).

**Where it runs**: ``RESTE_CUDA_EXT`` (or :func:`set_enabled`) says. ``auto``, the default, uses it for CUDA tensors
where a CUDA toolkit is found (nvcc, ``cuda_runtime.h``, ``libcudart``: :func:`cuda_home`; with torch's CUDA 13
wheels, :func:`toolkit_hint`'s ``pip install`` makes one of them) and this source did not fail to build with that
toolkit and compiler before; ``1`` builds it whatever it takes, and warns where it cannot; ``0``
never uses it. Where it is not used, and wherever it does not apply (CPU tensors, float64, ``torch.compile`` tracing,
compiled autograd, ReSTE's ``o`` held in a tensor, a plugin's hyper-parameter that is no number, a tensor subclass
such as DTensor, ``RESTE_FUSED=0``), the Triton kernels and then the PyTorch ops run. Its kernels have run on one GPU
model (H200) so far; :func:`error` says why it is not used.

It is built on first use with ``torch.utils.cpp_extension`` (a C++ compiler, and ``nvcc`` for the
CUDA kernels; about a minute, once) and cached under :func:`reste.native.cache_dir`, in folders that
must be the user's alone (torch imports what it finds there). Where the build fails, or is refused,
a warning says why and the Triton path runs; so it does where the build's kernels cannot run on the GPU
(one launch at the first CUDA use checks it). A failed build is recorded in the build's folder
(``reste-build-failed.txt``), so that ``auto`` does not build it again in every process: another toolkit, compiler,
ninja or build variable (``CC``, ``NVCC_APPEND_FLAGS`` ...), ``RESTE_CUDA_EXT=1``, removing that file, or a week
tries again. A build that was stopped (Ctrl-C), killed or short of disk is not recorded. Built without CUDA (no
``nvcc``, or :func:`forced` in the tests), the same nodes run serial CPU loops over the same ``g``
(``estimators.h``): that is how CI tests them without a GPU.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import re
import shutil
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from . import fused
from .kernel_args import KINDS, MAX_GROUPS, autocast_dtype, kernel_scalars
from .native import EnvMode, exclusive, untrusted_path, writable_cache

__all__ = ["available", "binary_layer", "binary_sign", "build", "cuda_home", "error", "forced", "form", "may_take",
           "mode", "ready", "requested", "scaled_sign", "set_enabled", "sign", "Skipped", "takes_layer", "toolkit_hint"]

SOURCE_DIR = Path(__file__).resolve().with_name("csrc") / "ext"
_CPP, _CU, _HEADER = "ops.cpp", "kernels.cu", "estimators.h"
_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_STATE: list[str | None] = []  # "cuda" / "cpu" once built and loaded, None once failed
_ERROR: list[str] = []
_FORCED: list[bool] = []
_LOCK = threading.Lock()
_LIBRARIES: list[Any] = []  # the Python fragment of the op library (kept alive)
_MODULE: list[Any] = []  # the built extension's Python module (its pybind11 entry points)
_MODE = EnvMode("RESTE_CUDA_EXT")
_FAILED = "reste-build-failed.txt"  # in a build's folder: the record of its failure (see _loaded)
_RECORDED: list[Path] = []  # the record of a failure this process wrote
_DECLINED: list[bool] = []  # [True] where auto went without it in this process (no toolkit, a recorded failure)
# what a failed build's text says where the failure was the moment's, not the toolchain's: a build stopped (Ctrl-C or
# SIGTERM reach ninja and the compilers too), a compiler killed (the out-of-memory killer), a full disk. Not recorded
_PASSING = ("interrupted", "build stopped", "Killed", "terminated by signal", "No space left on device",
            "Cannot allocate memory", "Disk quota exceeded")
_RECORD_DAYS = 7  # how long a record holds: then auto tries again (something it does not key may have been mended)
# the environment torch's build reads beside the toolkit: the host compilers (nvcc's -ccbin is $CC where set) and flags
_BUILD_ENV = ("CC", "CXX", "CUDAHOSTCXX", "NVCC_CCBIN", "NVCC_PREPEND_FLAGS", "NVCC_APPEND_FLAGS", "TORCH_NVCC_FLAGS",
              "CFLAGS", "CXXFLAGS")
_CFLAGS, _CUDA_CFLAGS = ("-O3", "-ffp-contract=off"), ("-O3", "--fmad=false")  # reste's own (in the record's key too)


def mode() -> str:
    """How the extension is asked for: ``set_enabled``'s setting, else ``RESTE_CUDA_EXT``, read at the first call and
    kept (:class:`reste.native.EnvMode`): ``"auto"`` (the default) uses it where a CUDA toolkit is found and no build
    of this source with that toolkit failed before; ``"on"`` (1/on/true/yes) builds it whatever it takes, and warns
    where it cannot; ``"off"`` (0/off/false/no) never uses it."""
    return _MODE()


def requested() -> bool:
    """Whether CUDA tensors may take the extension in this process: :func:`mode` is not ``"off"``, and it has not
    turned out unusable here (no toolkit under ``auto``, a failed build, kernels that cannot run)."""
    return _MODE() != "off" and (not _STATE or _STATE[0] is not None)


def set_enabled(flag: bool | str | None) -> None:
    """Ask for the extension (``True`` or ``"on"``), not (``False`` or ``"off"``) or where it can be built (``"auto"``)
    in this process; ``None`` goes back to ``RESTE_CUDA_EXT`` (read again). Asked for after ``auto`` went without it,
    it is built at its next use."""
    _MODE.set(flag)
    if _DECLINED and _MODE() == "on":
        _STATE.clear()
        _ERROR.clear()
        _DECLINED.clear()


def _build_name(cuda: bool) -> str:
    digest = hashlib.sha256()
    for name in (_CPP, _CU, _HEADER):
        digest.update((SOURCE_DIR / name).read_bytes())
    digest.update(f"{torch.__version__} {torch.version.cuda} {sys.version_info[:2]}".encode())
    if cuda:  # torch compiles for the visible GPUs' architectures, or TORCH_CUDA_ARCH_LIST's: a cache shared by
        # hosts with other GPUs (a home folder on a cluster) keeps a build per set, not one rebuilt at each switch
        digest.update(f" {_architectures()} {os.environ.get('TORCH_CUDA_ARCH_LIST', '')}".encode())
    return f"reste_ext_{'cuda' if cuda else 'cpu'}_{digest.hexdigest()[:12]}"


def _architectures() -> list[tuple[int, int]]:
    """The compute capabilities of the visible GPUs, each once."""
    if not torch.cuda.is_available():
        return []
    return sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})


_TOOLKITS = ("/usr/local/cuda", "/usr/local/cuda-*")  # where a CUDA toolkit is looked for when torch's guess lacks one


def _library_folder(home: Path) -> Path:
    """The folder of ``home`` that torch's link step passes with ``-L``: ``lib64``, or ``lib`` where there is no
    ``lib64``."""
    return home / ("lib" if not (home / "lib64").exists() and (home / "lib").exists() else "lib64")


def _versioned_runtime(home: Path) -> Path | None:
    """``libcudart.so.N`` in ``home``'s library folder where it has no ``libcudart.so`` (pip's NVIDIA wheels install
    the versioned library alone), else ``None``."""
    folder = _library_folder(home)
    if (folder / "libcudart.so").exists():
        return None
    return max((p for p in folder.glob("libcudart.so.*") if re.fullmatch(r"libcudart\.so\.\d+", p.name)),
               default=None, key=lambda p: int(p.suffix[1:]))


def _complete(home: Path) -> bool:
    """Whether ``home`` holds what the build needs: nvcc, the runtime's header and its library as torch's link
    step names it (``-lcudart``) in the folder it passes with ``-L`` (:func:`_library_folder`): ``libcudart.so``, or
    ``libcudart.so.N`` alone (a folder of pip's NVIDIA wheels; :func:`build` links it through a ``libcudart.so`` of its
    own); for ``/usr`` (a distribution's package: Debian's nvidia-cuda-toolkit), also a multiarch folder that the
    linker searches anyway."""
    library = (_library_folder(home) / "libcudart.so").exists() or _versioned_runtime(home) is not None
    if not library and home == Path("/usr"):
        library = any(Path("/usr/lib").glob("*-linux-gnu/libcudart.so"))
    return (home / "bin" / "nvcc").is_file() and (home / "include" / "cuda_runtime.h").is_file() and library


def _wheel_toolkits() -> list[str]:
    """The folders of pip's NVIDIA wheels for torch's CUDA major version (``site-packages/nvidia/cu13``) that hold
    the headers nvcc needs beside nvcc itself (CCCL's ``nv/target``): torch's CUDA 13 wheels install the runtime
    there, and :func:`toolkit_hint`'s ``pip install`` adds nvcc and those headers. CUDA 12's wheels spread a
    toolkit over several folders, which a build cannot take."""
    import importlib.util

    major = _wheels_major()
    if not major:
        return []
    try:
        spec = importlib.util.find_spec("nvidia")
    except (ImportError, ValueError):
        spec = None
    # (and each sys.path entry's nvidia folder: CUDA 12's wheels make ``nvidia`` a regular package, whose one folder
    # hides the cu13 folders of the others from find_spec)
    places = list(spec.submodule_search_locations or []) if spec is not None else []
    places += [str(Path(entry) / "nvidia") for entry in sys.path if entry]
    folders = dict.fromkeys(Path(place) / f"cu{major}" for place in places)
    return [str(home) for home in folders if (home / "include" / "nv" / "target").is_file()]


def _wheels_major() -> int | None:
    """torch's CUDA major version where NVIDIA's wheels of it hold a whole toolkit in one folder (13 and later)."""
    major = (torch.version.cuda or "").split(".")[0]
    return int(major) if major.isdigit() and int(major) >= 13 else None


def toolkit_hint() -> str:
    """How to get a CUDA toolkit that builds the extension for this torch: where torch came with NVIDIA's
    ``cuda-toolkit`` wheels (CUDA 13 and later), the ``pip install`` of its nvcc and CCCL at the version torch
    uses; else the toolkit to install."""
    from importlib import metadata

    if _wheels_major():
        with contextlib.suppress(metadata.PackageNotFoundError):
            return f'pip install "cuda-toolkit[nvcc,cccl]=={metadata.version("cuda-toolkit")}", or set CUDA_HOME'
    version = f" {torch.version.cuda}" if torch.version.cuda else ""
    return f"install the CUDA toolkit{version} (nvcc, cuda_runtime.h, libcudart) or set CUDA_HOME"


def cuda_home() -> str | None:
    """The CUDA toolkit the extension is built with: ``$CUDA_HOME`` (or ``$CUDA_PATH``) where set; else the
    first that holds nvcc, ``cuda_runtime.h`` and ``libcudart`` of the folder above the nvcc on PATH (torch's guess),
    the folder above nvcc's real path (nvcc may be a link), pip's NVIDIA wheels of torch's CUDA version
    (:func:`_wheel_toolkits`), ``/usr/local/cuda`` and ``/usr/local/cuda-*`` (torch's CUDA major version first, then
    the newest); else torch's guess, ``None`` without one. torch guesses from the nvcc on PATH alone, so a wrapper
    script in ``/usr/local/bin`` gives ``/usr/local``, where the link step finds no ``libcudart``; without nvcc on
    PATH it guesses ``/usr/local/cuda``, which comes after the wheels here (it may be of another CUDA version)."""
    from torch.utils import cpp_extension

    guess = cpp_extension.CUDA_HOME
    if os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"):
        return guess
    candidates = []
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates += [str(Path(nvcc).parent.parent), str(Path(nvcc).resolve().parent.parent)]
    candidates += _wheel_toolkits()
    for pattern in _TOOLKITS:
        candidates += sorted(glob.glob(pattern), key=_toolkit_rank, reverse=True)
    return next((home for home in candidates if _complete(Path(home))), guess)


def _toolkit_rank(home: str) -> tuple[bool, tuple[int, ...]]:
    """How a ``cuda-X.Y`` folder ranks: first one of torch's CUDA major version, then by version number
    (12.10 above 12.9)."""
    found = re.search(r"(\d+(?:\.\d+)*)$", home)
    version = tuple(int(v) for v in found.group(1).split(".")) if found else ()
    wanted = tuple(int(v) for v in (torch.version.cuda or "").split(".") if v.isdigit())
    return bool(wanted) and version[:1] == wanted[:1], version


class Skipped(RuntimeError):
    """The build was not tried (``build(skip_failed=True)``, as ``RESTE_CUDA_EXT=auto`` asks): the same source failed
    to build before with the same toolkit, compiler and ninja (its record says why)."""


def build(cuda: bool | None = None, *, skip_failed: bool = False) -> str:
    """Build (the first time; cached) and load the extension; returns ``"cuda"`` or ``"cpu"``, the kind
    loaded. ``cuda=None``: with the CUDA kernels where a GPU and ``nvcc`` are present. One kind per
    process (both register the same ops). Raises what the build raises, after recording its failure in the build's
    folder; ``skip_failed`` raises :class:`Skipped` instead of building again where such a record holds the same
    toolkit, compiler and ninja (a success removes the record)."""
    with _LOCK:
        if _STATE and _STATE[0] is not None:
            return _STATE[0]
        from torch.utils import cpp_extension

        home = cuda_home() if cuda is not False else None  # looked for once (it reads the file system)
        with_cuda = (torch.cuda.is_available() and home is not None) if cuda is None else cuda
        if with_cuda:
            if home is None:
                raise RuntimeError(f"no CUDA toolkit: nvcc was not found (put it on PATH; {toolkit_hint()})")
            cpp_extension.CUDA_HOME = home  # torch's build reads its own guess, made once at its import
        name = _build_name(with_cuda)
        directory = _build_folder(name)
        sources = [str(SOURCE_DIR / _CPP)] + ([str(SOURCE_DIR / _CU)] if with_cuda else [])
        cflags = [*_CFLAGS] + (["-DRESTE_WITH_CUDA"] if with_cuda else [])
        with _builder(directory):  # (another process of this run may have built it, or failed, while this one waited)
            failed = _recorded_failure(directory, home) if skip_failed else None
            if failed:
                raise Skipped(f"it failed to build with this toolkit before ({failed}); {directory / _FAILED} records "
                              "it: remove that file, or set RESTE_CUDA_EXT=1, to try again")
            built = (directory / f"{name}.so").exists()
            if not built:
                print(f"reste: building the {'C++/CUDA' if with_cuda else 'C++'} extension in {directory} (once, "
                      "about a minute; RESTE_CUDA_EXT=0 goes without it)", file=sys.stderr, flush=True)
            ldflags = _runtime_link(Path(home), directory) if with_cuda else []  # (with_cuda: home was found)
            start = time.monotonic()
            try:
                module = cpp_extension.load(name=name, sources=sources, extra_cflags=cflags,
                                            extra_cuda_cflags=[*_CUDA_CFLAGS],
                                            extra_ldflags=ldflags,
                                            extra_include_paths=[str(SOURCE_DIR)], build_directory=str(directory),
                                            with_cuda=with_cuda, verbose=False)
            except Exception as err:
                if not any(word in str(err) for word in _PASSING):
                    _record_failure(directory, home, _last_line(err))
                raise
            (directory / _FAILED).unlink(missing_ok=True)
            if not built:
                print(f"reste: built the extension in {time.monotonic() - start:.0f} s", file=sys.stderr, flush=True)
        _define_reference()
        _MODULE[:] = [module]
        _STATE[:] = ["cuda" if with_cuda else "cpu"]
        return _STATE[0]


def _runtime_link(home: Path, directory: Path) -> list[str]:
    """The linker flags that let torch's ``-lcudart`` find the runtime of a toolkit that has ``libcudart.so.N``
    alone (pip's NVIDIA wheels): ``-L`` a folder of the build's holding a ``libcudart.so`` link to it. The built
    library names ``libcudart.so.N`` all the same (the soname), the one torch has loaded."""
    versioned = _versioned_runtime(home)
    if versioned is None:
        return []
    folder = directory / "cudart"
    folder.mkdir(exist_ok=True)
    link = folder / "libcudart.so"
    if not (link.is_symlink() and os.readlink(link) == str(versioned)):
        fresh = folder / f".libcudart.so.{os.getpid()}"
        fresh.unlink(missing_ok=True)
        fresh.symlink_to(versioned)
        os.replace(fresh, link)
    return [f"-L{folder}"]


def _last_line(err: BaseException) -> str:
    """``err`` in one line: its type and the last line of its text (a build error ends with what failed)."""
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[-1] if text else ''}"


def _toolchain(home: str | None) -> str:
    """What a failed build is recorded against, beside its source, torch and GPUs (the folder's name): the CUDA
    toolkit (its folder, and its nvcc's size and time), the C++ compiler, ninja, and the variables of
    :data:`_BUILD_ENV` (``CC=gcc-12``, the usual mend of nvcc's "unsupported GNU version"). A build with another one of
    them is tried."""
    nvcc = "-"
    if home:
        with contextlib.suppress(OSError):
            found = (Path(home) / "bin" / "nvcc").stat()
            nvcc = f"{found.st_size}:{found.st_mtime_ns}"
    tools = [shutil.which(os.environ.get("CXX") or "c++") or "-", shutil.which("ninja") or "-"]
    return json.dumps([home, nvcc, *tools, *(os.environ.get(name) for name in _BUILD_ENV), _CFLAGS, _CUDA_CFLAGS])


def _record_failure(directory: Path, home: str | None, why: str) -> None:
    """Record in ``directory`` (the build's private folder) that its build failed with this toolchain, and why, so
    that ``RESTE_CUDA_EXT=auto`` does not build it again in every process; where it cannot be written, nothing."""
    with contextlib.suppress(OSError):
        (directory / _FAILED).write_text(f"{_toolchain(home)}\n{why}\n", encoding="utf-8")
        _RECORDED[:] = [directory / _FAILED]


def _recorded_failure(directory: Path, home: str | None) -> str | None:
    """Why the build in ``directory`` failed before with this toolchain, from its record; ``None`` without one (or
    with another toolkit, compiler, ninja or build variable, or one older than ``_RECORD_DAYS`` days)."""
    record = directory / _FAILED
    try:
        toolchain, _, why = record.read_text(encoding="utf-8").partition("\n")
        age = time.time() - record.stat().st_mtime
    except (OSError, UnicodeDecodeError):
        return None
    if toolchain != _toolchain(home) or not 0 <= age < _RECORD_DAYS * 86400:
        return None
    return why.strip() or "no reason recorded"


def _build_folder(name: str) -> Path:
    """``ext/<name>`` in reste's cache (a read-only cache folder: the temporary one), made if needed: where torch
    builds the extension and imports the ``<name>.so`` it finds up to date, unchecked. So ``ext`` and it must be
    this user's alone (:func:`reste.native.untrusted_path`), or that library could be another user's;
    ``OSError`` where they are not."""
    ext = writable_cache() / "ext"
    for folder in (ext, ext / name):
        folder.mkdir(mode=0o700, exist_ok=True)  # private whatever the umask
        why = untrusted_path(folder)
        if why:
            raise OSError(f"{folder} {why}, so the extension is not built or loaded there (the library torch "
                          "would load from it could be anyone's); remove it, and reste makes it again, private")
    return ext / name


@contextlib.contextmanager
def _builder(directory: Path) -> Iterator[None]:
    """Be the one process building in ``directory`` (an OS lock, which dies with its holder), then clear a
    ``lock`` file that torch's own build left there. In torch before mid-2026 (pytorch issue 189245) that
    file's mere presence made every later build wait forever, and a build killed midway (a time limit, an
    out-of-memory kill) left it behind; under our lock no build of ours can be holding it."""
    # (unlocked, without fcntl or on a file system that keeps no locks: torch's own lock alone; review rev14)
    with exclusive(directory / "reste-build.lock") as held:
        if held:
            import fcntl

            _clear_stale_lock(directory / "lock", fcntl)
        yield


def _clear_stale_lock(lock: Path, fcntl: Any, age: float = 600.0) -> None:
    """Remove torch's build lock ``lock`` when no build can be holding it: no OS lock on it (newer torch
    holds one while it builds) and older than ``age`` seconds (older torch's lock is the file itself, made
    when its build starts, and a build takes a minute or two). A build of another checkout of reste that
    shares the folder keeps its lock either way."""
    try:
        fd = os.open(lock, os.O_RDWR)  # never made here: to older torch a lock file that exists is a build
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        if time.time() - os.fstat(fd).st_mtime > age:
            lock.unlink(missing_ok=True)
    except OSError:  # held: a build is running
        pass
    finally:
        os.close(fd)


_REFERENCE: list[Callable[..., Tensor]] = []  # reste.estimators.reference_backward, handed over at its import


def set_reference(reference: Callable[..., Tensor]) -> None:
    """The differentiable PyTorch expression of the nodes' gradients, ``reference(kind, x, grad, groups,
    params)``; :mod:`reste.estimators` hands over its ``reference_backward`` (this module stays below it)."""
    _REFERENCE[:] = [reference]


def _define_reference() -> None:
    """``reste_ext::reference_grad``, which the C++ nodes call for a double backward: the PyTorch expression."""

    def reference_grad(x: Tensor, grad: Tensor, groups: int, kind: str, names: str, values: list[float]) -> Tensor:
        if not _REFERENCE:
            raise RuntimeError("reste.cuda_ext: a double backward needs reste.estimators (import reste)")
        params = dict(zip(names.split(","), values)) if names else {}
        return _REFERENCE[0](kind, x, grad, groups, params)

    library = torch.library.Library("reste_ext", "FRAGMENT")
    library.define("reference_grad(Tensor x, Tensor grad, int groups, str kind, str names, float[] values) -> Tensor")
    library.impl("reference_grad", reference_grad, "CompositeImplicitAutograd")
    _LIBRARIES.append(library)


def _loaded(cuda: bool) -> bool:
    """Whether the extension is loaded with what a tensor needs (its CUDA kernels for a CUDA tensor), building
    it on the first call; a failure warns once, then ``False``. Under ``RESTE_CUDA_EXT=auto`` (the default), for a
    CUDA tensor, it is not built without a CUDA toolkit, nor where this source failed to build with the same toolkit,
    compiler and ninja before (a record in its build folder): ``False``, silently (:func:`error` says why)."""
    if not _STATE:
        auto = cuda and not _FORCED and _MODE() == "auto"
        if auto and not _toolkit_found():
            _STATE[:], _ERROR[:], _DECLINED[:] = [None], ["no CUDA toolkit was found (nvcc, cuda_runtime.h and "
                                                          f"libcudart): {toolkit_hint()}"], [True]
            return False
        try:
            build(cuda=True if cuda else None, skip_failed=auto)
        except Skipped as skipped:
            _STATE[:], _ERROR[:], _DECLINED[:] = [None], [str(skipped)], [True]
            return False
        except Exception as err:  # no compiler, no nvcc, a build error: the Triton path runs
            _fail(_last_line(err), "did not build")
            return False
    if _STATE[0] is None:
        return False
    if cuda and _STATE[0] != "cuda":  # built for CPU tensors first in this process (tests)
        if not _ERROR:
            _fail("it was built without its CUDA kernels in this process", "cannot take CUDA tensors", keep=True)
        return False
    if cuda and not _SMOKED and not torch.cuda.is_current_stream_capturing():  # (a capture follows eager steps)
        _SMOKED.append(True)
        why = _launch_fails(_MODULE[0], torch.device("cuda", torch.cuda.current_device()))
        if why is not None:  # (not recorded: the launch may have failed for the moment's reasons, or this node's)
            _fail(why, "built but cannot run its kernels on this GPU")
            return False
    return True


_SMOKED: list[bool] = []  # whether the built CUDA kernels were launched once in this process


def _launch_fails(module: Any, device: torch.device) -> str | None:
    """Why ``module``'s kernels cannot run on ``device`` (``None`` when its sign runs right): a build can succeed
    and its kernels still not run, for a GPU outside ``TORCH_CUDA_ARCH_LIST`` ("no kernel image is available") or a
    driver older than the toolkit. Found here, the Triton path takes over; found at a layer's forward, the run
    would end."""
    x = torch.tensor([-2.0, -0.0, 0.0, 3.0, float("nan")], device=device)
    try:
        y = module.sign(x)
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # (an error of the launch itself may come back later)
        got = y.cpu().tolist()
    except Exception as err:  # noqa: BLE001 - whatever the launch raised, said in the warning
        text = str(err).strip()
        return f"{type(err).__name__}: {text.splitlines()[0] if text else ''}"
    want = [-1.0, 1.0, 1.0, 1.0]
    if got[:4] != want or got[4] == got[4]:
        return f"its sign gave {got} for [-2, -0, 0, 3, nan]"
    return None


def _fail(message: str, what: str, keep: bool = False) -> None:
    """Record why the extension is not used and warn once; ``keep`` leaves a loaded CPU build in place."""
    if not keep:
        _STATE[:] = [None]
    _ERROR[:] = [message]
    again = "RESTE_CUDA_EXT=0 goes without it"
    if _MODE() == "auto" and _RECORDED:
        again = (f"it is not tried again with this toolkit: {_RECORDED[0]} records it; remove that file, or set "
                 "RESTE_CUDA_EXT=1, to try again")
    warnings.warn(f"reste: the C++/CUDA extension {what} ({message}); using the Triton kernels ({again})",
                  RuntimeWarning, stacklevel=5)


def _toolkit_found() -> bool:
    """Whether a whole CUDA toolkit is found (:func:`cuda_home`), which ``RESTE_CUDA_EXT=auto`` builds with."""
    home = cuda_home()
    return home is not None and _complete(Path(home))


def available() -> bool:
    """Whether CUDA tensors take the extension here: it is asked for (or ``auto``), the fused paths are on
    (``RESTE_FUSED``), and it loads with its CUDA kernels (built on the first call)."""
    return requested() and fused.enabled() and torch.cuda.is_available() and _loaded(cuda=True)


def ready() -> bool:
    """What :func:`available` says where it has been asked in this process, without building anything: whether CUDA
    tensors take the extension now."""
    return requested() and fused.enabled() and bool(_STATE) and _STATE[0] == "cuda" and bool(_SMOKED)


def error() -> str | None:
    """Why CUDA tensors do not take the extension: a failed build, under ``auto`` no toolkit or a failure recorded
    before, ``RESTE_CUDA_EXT=0``, ``RESTE_FUSED=0``, or no GPU; ``None`` where it loaded, or was not tried yet."""
    if _ERROR:
        return _ERROR[0]
    if _MODE() == "off":
        return "RESTE_CUDA_EXT=0 turns it off"
    if not fused.enabled():
        return "RESTE_FUSED=0 turns the fused paths off, this one too"
    if not torch.cuda.is_available():
        return "no CUDA GPU is visible to torch: it runs for CUDA tensors alone"
    return None


def setting() -> str | None:
    """This process's own setting (:func:`set_enabled`), or ``None`` where ``RESTE_CUDA_EXT`` decides: what
    :func:`restore_setting` takes back."""
    return _MODE._value


def restore_setting(saved: str | None) -> None:
    """Put back what :func:`setting` returned."""
    _MODE._value = saved


def leave_to_triton() -> bool:
    """Under ``auto``, let CUDA tensors take the Triton kernels instead of the extension from now on in this process
    (a run with ``--cuda-graphs``, which restores the setting after it: a replayed step does no host work, what the
    extension cuts, and on an H100 the Triton kernels' graphed steps were 1% to 8% faster, benchmarks/RESULTS.md,
    2026-12-06); ``RESTE_CUDA_EXT=1`` keeps the extension. Returns whether it stepped aside."""
    if _MODE() != "auto":
        return False
    _MODE.set("off")
    return True


@contextlib.contextmanager
def forced() -> Iterator[None]:
    """Inside the block the extension takes tensors on every device whether or not ``RESTE_CUDA_EXT`` asks
    for it (CPU tensors run its CPU loops); for tests. The other conditions still apply."""
    _FORCED.append(True)
    try:
        yield
    finally:
        _FORCED.pop()


def may_take(x: Tensor) -> bool:
    """A cheap first test: whether ``x`` may take the extension at all (a CUDA tensor while :func:`requested`, or
    :func:`forced`)."""
    return bool(_FORCED) or (x.is_cuda and requested())


def _usable(x: Tensor) -> bool:
    if x.dtype not in _DTYPES or not _eager() or not fused.plain(x):  # (a wrapper subclass has no memory to take)
        return False
    return _loaded(x.is_cuda)


def _eager() -> bool:
    """Whether the extension may run now, as far as the process says: switched on, and no compiler, tracer or compiled
    autograd recording what runs (a kernel's write through a pointer would go past it)."""
    return not (torch.compiler.is_compiling() or torch.jit.is_tracing() or _compiled_autograd()) and fused.enabled()


def _groups_fit(w: Tensor, groups: int) -> bool:
    """Whether ``w`` splits into ``groups`` alphas the kernels take (1 to MAX_GROUPS groups of equal size)."""
    return 1 <= groups <= MAX_GROUPS and w.numel() > 0 and not w.numel() % groups


def _compiled_autograd() -> bool:
    """Whether compiled autograd is on (``torch._dynamo.config.compiled_autograd``): it traces each backward node
    through ``compiled_args``, which the extension's C++ nodes do not define, so their backward would fail."""
    dynamo = sys.modules.get("torch._dynamo")  # never imported here: where nothing imported it, it is off
    if dynamo is None:
        return False
    config = getattr(dynamo, "config", None)
    compiled = sys.modules.get("torch._dynamo.compiled_autograd")
    return bool(getattr(config, "compiled_autograd", False)) or bool(
        compiled is not None and getattr(compiled, "compiled_autograd_enabled", False))


_ESTIMATORS: dict[tuple, Any] = {}  # (kind, params) -> its extension Estimator: a schedule moves once per epoch


def _estimator(kind: str | None, params: dict[str, Any]) -> Any:
    """The extension's ``Estimator`` for estimator ``kind`` with ``params`` (its kernel scalars, parsed once, and
    its parameters by name for a double backward), or ``None`` where the extension does not take the estimator
    (no kernel for it, or a parameter held in a tensor)."""
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in params.values()):
        return None  # a tensor, or a plugin's str or list hyper-parameter: the Triton path or the PyTorch ops
    key = (kind, *params.items())
    est = _ESTIMATORS.get(key)
    if est is None:
        if kind not in KINDS:
            return None
        scalars, count, _ = kernel_scalars(kind, params)
        est = _MODULE[0].Estimator(kind, [float(v) for v in scalars], count, ",".join(params),
                                   [float(v) for v in params.values()])
        if len(_ESTIMATORS) > 1024:
            _ESTIMATORS.clear()
        _ESTIMATORS[key] = est
    return est


def sign(x: Tensor) -> Tensor | None:
    """sign(x) with sign(0) = +1 and NaN kept (no autograd), or ``None`` where the extension does not apply."""
    if not may_take(x) or (x.requires_grad and torch.is_grad_enabled()) or not _usable(x):
        return None
    return _MODULE[0].sign(x)


def binary_sign(kind: str | None, x: Tensor, params: dict[str, Any]) -> Tensor | None:
    """sign(x) whose backward is estimator ``kind``'s ``grad * g(x)`` (with its ``params()``), one C++
    autograd node; ``None`` where the extension does not apply."""
    if not may_take(x) or not _usable(x):
        return None
    est = _estimator(kind, params)
    return None if est is None else _MODULE[0].binary_sign(x, est)


def form(kind: str | None, params: dict[str, Any]) -> Any:
    """The extension's form of estimator ``kind`` with ``params()`` (built once per schedule value), for
    :func:`binary_layer`; ``None`` where the extension has no kernel for it or a parameter is no number."""
    return _estimator(kind, params) if _MODULE else None


def takes_layer(x: Tensor, w: Tensor, bias: Tensor | None) -> bool:
    """Whether a binary layer's forward on input ``x`` with latent weight ``w`` and ``bias`` may run as one call
    into the extension (:func:`binary_layer`): what :func:`binary_sign` and :func:`scaled_sign` ask of their
    tensors, asked once for the layer (the caller has asked :func:`may_take`)."""
    if type(x) not in fused.PLAIN or type(w) not in fused.PLAIN or (bias is not None and type(bias) not in fused.PLAIN):
        return False  # (a subclass: a wrapper without memory of its own, an fx Proxy)
    if not _eager():
        return False  # (first: a trace records the tests below)
    if x.dtype not in _DTYPES or w.dtype not in _DTYPES or not w.numel() or _function_mode():
        return False
    if not fused.owns_memory(x) or (w.grad_fn is not None and torch.is_grad_enabled()):
        return False  # (a computed weight keeps its plain autograd graph)
    return _loaded(x.is_cuda)


_FUNCTION_MODES = getattr(torch._C, "_len_torch_function_stack", None)  # how many are active: one call, cheap


def _function_mode() -> bool:
    """Whether a ``TorchFunctionMode`` is active that must see the layer's conv or linear as ``F.conv2d`` (a tracer, a
    profiler at that level), which the one call runs from C++; ``torch.device`` as a context or the default device
    (``DeviceContext``, which only places new tensors) is none of those."""
    if _FUNCTION_MODES is None or not _FUNCTION_MODES():
        return False
    from torch.overrides import _get_current_function_mode_stack
    from torch.utils._device import DeviceContext

    return any(not isinstance(mode, DeviceContext) for mode in _get_current_function_mode_stack())


def binary_layer(x: Tensor, w: Tensor, bias: Tensor | None, est_x: Any, est_w: Any, groups: int, op: int,
                 stride: Any = (), padding: Any = (), dilation: Any = (), conv_groups: int = 1) -> Tensor | None:
    """A binary layer's forward, ``op(Q_a(x), Q_w(w) * alpha) + bias``, in one call: the activation's node (none
    where ``est_x`` is ``None``: real inputs), the weight's node (``groups`` alphas, in autocast's dtype under
    autocast), then ``op`` through the dispatcher: ``F.linear`` (``op=0``) or the convolution of ``op`` spatial
    dimensions with ``stride``, ``padding`` (numbers), ``dilation`` and ``conv_groups``. The estimators' forms come
    from :func:`form`; the caller has checked :func:`takes_layer`. ``None`` where the weight's groups do not fit."""
    if not _groups_fit(w, groups):
        return None
    return _MODULE[0].binary_layer(x, w, bias, est_x, est_w, groups, autocast_dtype(w), op, stride, padding,
                                   dilation, conv_groups)


def scaled_sign(w: Tensor, kind: str | None, groups: int, params: dict[str, Any]) -> Tensor | None:
    """The binary weight sign(w) * mean(abs(w)) over ``groups`` (1: the layer; ``w.shape[0]``: each output
    channel) with estimator ``kind``'s backward for the sign, one C++ autograd node (in autocast's dtype
    under autocast, as :func:`reste.kernel_args.autocast_dtype`); ``None`` where the extension does not apply."""
    if not may_take(w) or not _usable(w):
        return None
    if not _groups_fit(w, groups):
        return None
    if torch.is_grad_enabled() and w.grad_fn is not None:
        return None  # w is computed from other tensors: keep the plain autograd graph
    est = _estimator(kind, params)
    if est is None:
        return None
    return _MODULE[0].scaled_sign(w, groups, autocast_dtype(w), est)
