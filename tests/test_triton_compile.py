"""The fused Triton kernels (``reste.triton_kernels``) compiled for a GPU, on a machine without one.

Triton's interpreter (``tests/test_gpu_kernels.py``) runs a kernel's Python with NumPy, so it accepts what
the compiler refuses: a value that is not a ``constexpr`` where a shape or a block size must be one, Python
control flow on a tensor, mixed types where ``tl.where`` or a loop needs one, a math function with no form
for the target. Triton's compiler needs no GPU: given a target it lowers each kernel through its IR and LLVM
to PTX, and ``ptxas`` (shipped with Triton) assembles it. Here every kernel is compiled for sm_90 (the H200,
where ``benchmarks/gpu_check.sh`` runs them) in the variants its launcher asks for: each dtype, each
estimator, ReSTE's ``o`` read from a device tensor, autocast's float32 weight with a 16-bit result or
gradient, the smallest and the largest reductions. It runs in a process of its own, without
``TRITON_INTERPRET`` (which ``test_gpu_kernels.py`` sets for its own process), into an empty kernel cache.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="Triton is not installed")

SRC = Path(__file__).resolve().parents[1] / "src"

# Each kernel's pointers are named *_ptr, its float scalars s0..s4, its other scalars are integers: the
# signature of a variant follows from the dtypes of its pointers and its constexpr values.
COMPILE = r"""
import json
import sys

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from reste import triton_kernels as K

if K.INTERPRETED:
    sys.exit("TRITON_INTERPRET is set: nothing would be compiled")
TARGET = GPUTarget("cuda", 90, 32)
PTX = K.PRECISE_PTX.value  # PRECISE on an NVIDIA GPU
F32, BF16, F16, F64 = "fp32", "bf16", "fp16", "fp64"
MIXED = [(F32, F32), (BF16, BF16), (F16, F16), (F32, BF16), (F32, F16)]  # (w, the result or grad): autocast
done, failures = [], []


def compile_one(fn, ptrs, consts, ints="i32"):
    sig = {}
    for p in fn.params:
        if p.is_constexpr:
            sig[p.name] = "constexpr"
        elif p.name.endswith("_ptr"):
            sig[p.name] = "*" + ptrs[p.name]
        else:
            sig[p.name] = "fp32" if p.name[0] == "s" and p.name[1:].isdigit() else ints
    label = f"{fn.__name__} {ptrs} {consts} {ints}"
    try:
        triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts), target=TARGET)
    except Exception as err:
        if "ptxas" in str(err) and not done:  # no assembler here (a Triton without its NVIDIA tools)
            print(json.dumps({"skip": f"{type(err).__name__}: {str(err)[:300]}"}))
            sys.exit(0)
        failures.append(f"{label}: {type(err).__name__}: {str(err)[-1500:]}")
    else:
        done.append(label)


def kinds(every):
    # (KIND, O_PTR, o's dtype): every estimator, and ReSTE's o as a float32 or float64 tensor
    chosen = range(len(K.KINDS)) if every else [K.KINDS.index("ste"), K.KINDS.index("reste")]
    return [(k, False, None) for k in chosen] + [(K.KINDS.index("reste"), True, t) for t in (F32, F64)]


for d in (F32, BF16, F16):
    compile_one(K._sign_kernel, {"x_ptr": d, "y_ptr": d}, {"BLOCK": K.BLOCK})
    for kind, o_ptr, o_type in kinds(True):
        compile_one(K._backward_kernel, {"x_ptr": d, "grad_ptr": d, "out_ptr": d, "o_ptr": o_type or d},
                    {"KIND": kind, "O_PTR": o_ptr, "PRECISE": PTX, "BLOCK": K.BLOCK})
    compile_one(K._abs_partial_kernel, {"w_ptr": d, "partials_ptr": F32}, {"BLOCK": K._REDUCE_BLOCK})
# more than 2**31 elements: Triton passes the sizes as 64-bit integers
compile_one(K._sign_kernel, {"x_ptr": BF16, "y_ptr": BF16}, {"BLOCK": K.BLOCK}, ints="i64")
compile_one(K._backward_kernel, {"x_ptr": F32, "grad_ptr": F32, "out_ptr": F32, "o_ptr": F32},
            {"KIND": K.KINDS.index("reste"), "O_PTR": False, "PRECISE": PTX, "BLOCK": K.BLOCK}, ints="i64")
for w, y in MIXED:
    for nb in (1, triton.next_power_of_2(K._MAX_PARTIALS)):  # one partial sum a group, and the most
        compile_one(K._scaled_sign_kernel, {"w_ptr": w, "partials_ptr": F32, "y_ptr": y},
                    {"PRECISE": PTX, "NB": nb, "BLOCK": K.BLOCK})
    compile_one(K._dot_sign_partial_kernel, {"w_ptr": w, "grad_ptr": y, "partials_ptr": F32},
                {"BLOCK": K._REDUCE_BLOCK})
    for kind, o_ptr, o_type in kinds(w == y == F32):
        compile_one(K._scaled_sign_backward_kernel,
                    {"w_ptr": w, "grad_ptr": y, "abs_ptr": F32, "dot_ptr": F32, "out_ptr": w, "o_ptr": o_type or w},
                    {"KIND": kind, "O_PTR": o_ptr, "PRECISE": PTX, "NB": 1024, "BLOCK": K.BLOCK})
print(json.dumps({"compiled": done, "failures": failures}))
"""


def test_every_kernel_compiles_for_an_h200(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(TRITON_CACHE_DIR=str(tmp_path), PYTHONPATH=os.pathsep.join(filter(None, [str(SRC),
                                                                                     env.get("PYTHONPATH")])))
    done = subprocess.run([sys.executable, "-c", COMPILE], capture_output=True, text=True, timeout=900, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if "skip" in result:
        pytest.skip(f"Triton cannot assemble for a GPU here: {result['skip']}")
    assert not result["failures"], "\n\n".join(result["failures"])
    assert len(result["compiled"]) >= 60
