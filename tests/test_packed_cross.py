"""The packed kernels' C source checked by an independent harness (tests/csrc/bconv_check.c): exact
dot products against a bytewise popcount, on random narrow (read in place past each kernel row) and
word-aligned layouts, and the float epilogue (the affine after a ReLU or without one) bit for bit against
the scalar build's. Natively for the x86 variants this CPU runs, and the AArch64 NEON variant cross-
compiled and run under qemu where ``aarch64-linux-gnu-gcc`` and ``qemu-aarch64`` are installed (CI
installs them; elsewhere that test is skipped). The same runs with the kernels built under UBSan (gcc's
-fsanitize=undefined, alignment included, every report fatal): the narrow rows start at any byte, and a word
read there must be a memcpy, not a uint64_t dereference."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from reste.export import kernels as K

HARNESS = Path(__file__).parent / "csrc" / "bconv_check.c"
SOURCE = Path(K.__file__).parent / "csrc" / "packed.c"
CROSS_CC, QEMU, SYSROOT = "aarch64-linux-gnu-gcc", "qemu-aarch64", Path("/usr/aarch64-linux-gnu")


def _build(cc: str, isa: str, out: Path, extra: tuple[str, ...] = ()) -> Path:
    """packed.c as a shared library for ``isa`` (the same flags as kernels.py, without -mpopcnt's probe)."""
    flags = ["-O3", "-ffp-contract=off", "-pthread", *extra, *K._ISA_FLAGS[isa], f"-DRESTE_ISA={K._ISA_ID[isa]}"]
    lib = out / f"packed_{isa}.so"
    subprocess.run([cc, *flags, "-shared", "-fPIC", "-o", str(lib), str(SOURCE)], check=True, capture_output=True)
    return lib


UBSAN = ("-fsanitize=undefined,alignment", "-fno-sanitize-recover=all")


def _has_ubsan(cc: str, tmp_path: Path) -> bool:
    """Whether ``cc`` builds and links a shared library under UBSan (gcc ships its runtime, libubsan)."""
    src = tmp_path / "probe.c"
    src.write_text("int probe(int a, int b) { return a << b; }\n", encoding="ascii")
    proc = subprocess.run([cc, *UBSAN, "-shared", "-fPIC", "-o", str(tmp_path / "probe.so"), str(src)],
                          capture_output=True)
    return proc.returncode == 0


def _check(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and " 0 mismatches" in proc.stdout, proc.stdout + proc.stderr


@pytest.mark.skipif(K.c_kernel_error() is not None or shutil.which("cc") is None, reason="no C compiler")
def test_every_native_variant_matches_the_bytewise_reference(tmp_path):
    harness = tmp_path / "bconv_check"
    subprocess.run(["cc", "-O2", "-o", str(harness), str(HARNESS), "-ldl"], check=True, capture_output=True)
    scalar = _build("cc", "scalar", tmp_path)
    for isa in K.available_isas():
        _check([str(harness), str(_build("cc", isa, tmp_path)), str(scalar)])


@pytest.mark.skipif(K.c_kernel_error() is not None or shutil.which("gcc") is None, reason="no gcc")
def test_every_native_variant_runs_clean_under_ubsan(tmp_path):
    if not _has_ubsan("gcc", tmp_path):
        pytest.skip("gcc cannot link -fsanitize=undefined here (no libubsan)")
    harness = tmp_path / "bconv_check"
    subprocess.run(["gcc", "-O2", "-o", str(harness), str(HARNESS), "-ldl"], check=True, capture_output=True)
    for isa in K.available_isas():
        lib = _build("gcc", isa, tmp_path, UBSAN)
        _check([str(harness), str(lib), str(lib)])


@pytest.mark.skipif(shutil.which(CROSS_CC) is None or shutil.which(QEMU) is None or not SYSROOT.is_dir(),
                    reason=f"needs {CROSS_CC} and {QEMU} (Debian: gcc-aarch64-linux-gnu qemu-user)")
def test_the_neon_variant_matches_the_bytewise_reference_under_qemu(tmp_path):
    harness = tmp_path / "bconv_check"
    subprocess.run([CROSS_CC, "-O2", "-o", str(harness), str(HARNESS), "-ldl"], check=True, capture_output=True)
    libs = [_build(CROSS_CC, isa, tmp_path) for isa in ("neon", "scalar")]
    _check([QEMU, "-L", str(SYSROOT), str(harness), *map(str, libs)])


@pytest.mark.skipif(shutil.which(CROSS_CC) is None or shutil.which(QEMU) is None or not SYSROOT.is_dir(),
                    reason=f"needs {CROSS_CC} and {QEMU} (Debian: gcc-aarch64-linux-gnu qemu-user)")
def test_the_neon_variant_runs_clean_under_ubsan_under_qemu(tmp_path):
    if not _has_ubsan(CROSS_CC, tmp_path):
        pytest.skip(f"{CROSS_CC} cannot link -fsanitize=undefined here (no libubsan)")
    harness = tmp_path / "bconv_check"
    subprocess.run([CROSS_CC, "-O2", "-o", str(harness), str(HARNESS), "-ldl"], check=True, capture_output=True)
    libs = [_build(CROSS_CC, isa, tmp_path, UBSAN) for isa in ("neon", "scalar")]
    _check([QEMU, "-L", str(SYSROOT), str(harness), *map(str, libs)])
