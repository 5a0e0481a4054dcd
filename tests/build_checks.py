"""Skip a test module where reste's C code cannot be built here, and only there.

Where no C compiler is found, the fused kernels and the packed engine fall back to PyTorch or NumPy, and their tests
are skipped. Where a compiler is found, a build that fails is reste's own source not compiling: the tests fail
(review tests #6: a syntax error in fused.c turned 61 tests into one skip, and CI stayed green).
"""

from __future__ import annotations

import pytest

from reste.native import c_compiler, compiler_found


def require_built(error: str | None, what: str) -> None:
    """Nothing where ``what`` built (``error`` is None); else skip the module where there is no C compiler, and fail
    it where there is one."""
    if error is None:
        return
    if not compiler_found():  # (none, or a $CC naming a program that is not here)
        pytest.skip(f"no C compiler ({c_compiler() or 'none found'}): {what} not built ({error})",
                    allow_module_level=True)
    pytest.fail(f"{what} did not build although a C compiler ({c_compiler()}) is here: {error}", pytrace=False)
