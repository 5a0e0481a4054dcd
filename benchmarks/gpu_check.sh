#!/usr/bin/env bash
# Every GPU check of issue 11 in one command, on one GPU, in a few minutes (159 s on an H200 on
# 2026-12-04, 170 s on an H100 on 2026-12-06, every section; the logs are in benchmarks/logs/). Sections:
#   1. the fused Triton kernels on real CUDA tensors against the PyTorch path (fp32, bf16, fp16;
#      contiguous and channels_last; every edge), a binary conv's training step (same gradients),
#      no host-device synchronisation, and no recompilation when a schedule moves;
#   2. --cuda-graphs: 10 graphed steps (with a recapture when lr and o move) against 10 eager
#      steps, fp32 and bf16; a graphed evaluation; a 12-epoch graphed engine run on digits whose
#      reserved memory must stay flat over the captures;
#      then the suite's tests marked gpu (RESTE_TEST_DEVICE=cuda; tests/test_cuda_ext.py aside): a run that
#      resumes on the GPU, FlipRatio without host syncs, the loaders' batches made on the GPU;
#   3. the compiled extension (reste.cuda_ext; the default where nvcc is found), built with nvcc (in the
#      background while 1 and 2 run): tests/test_cuda_ext.py on CUDA tensors (its kernels and C++ autograd nodes
#      against the PyTorch path, large-group reductions, no host-device synchronisation), section 2's graphed steps
#      through its nodes, and that the default (RESTE_CUDA_EXT unset) takes them. Only an extension that passed
#      these is timed in section 4;
#   4. the training-step rows of benchmarks/train_step.py --device cuda (eager and graphed, through the Python
#      nodes and through the C++ nodes), each variant interleaved with the others;
#   5. a whole CIFAR-10-shaped epoch through the engine (benchmarks/train_epoch.py; the median of
#      epochs 2-4), graphed, on the path `reste train --cuda-graphs` takes by default: the Triton kernels (a
#      graphed run leaves the C++ nodes aside: their graphed steps were slower on an H100, 2026-12-06);
#   6. each target of the issue's Targets table, printed as MET / NOT MET / NOT MEASURED (each value to 3 decimals,
#      as compared; the reference's only where its backward agrees with ReSTE's), then a summary: each section's
#      status (ok, FAILED, TIMED OUT) and the target lines again;
#   7. the host time of a binary layer's C++ nodes (benchmarks/node_overhead.py; no target), in what the budget
#      leaves: a crash of the nodes fails the run, running out of time does not.
# Every section runs under a time limit, cut so that the whole script ends within GPU_CHECK_BUDGET
# seconds (default 500; the device tool allows 600 a command, less when less device time is left) with time
# left for the report: a hang costs its section, not the run. Section 3 keeps 150 s for sections 4 and 5, and
# section 4 keeps 75 s for section 5, however fast they turn out to be: give it at least 360 s (the whole run
# took 181 s on an H200 and 170 s on an H100, before section 2 ran the suite's gpu tests, some 30 to 60 s more), and
# the command's own time limit some 30 s more. Under 330 s it says so when it starts: section 3's later steps might
# not run.
#
#   benchmarks/gpu_check.sh                                  # from the repository root or anywhere
#   GPU_CHECK_SAVE="$OUT" benchmarks/gpu_check.sh            # also keep the log and the JSON figures there
#   REPEATS=30 benchmarks/gpu_check.sh                       # more timed rounds per row (default 15)
#
# Exit status: 0 when every check and benchmark ran and the kernels agreed with PyTorch (targets may still be
# NOT MET), 1 when a correctness check or a benchmark failed or ran out of time, 2 when nothing failed but the
# compiled extension did not build (nvcc, a host compiler: the environment, not a kernel), 77
# (skipped) when no CUDA GPU is visible.
set -euo pipefail
SAVE="${GPU_CHECK_SAVE:-}"
if [ -n "$SAVE" ]; then SAVE="$(realpath -m "$SAVE")"; fi  # (a relative one: from where it was called)
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
REPEATS="${REPEATS:-15}"
BUDGET="${GPU_CHECK_BUDGET:-500}"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
# each line as it is printed: into a pipe (tee, the device tool) Python holds its output back, and a section
# that its time limit kills would lose everything it printed, the line it hung after too
export PYTHONUNBUFFERED=1
# the Python nodes (Triton kernels) unless a section asks for the C++ nodes itself (section 3, train_step.py's *_ext
# rows): the default, RESTE_CUDA_EXT=auto, would take them wherever nvcc is found (in an eager step), and section 1 would wait on the
# build that section 3 runs in the background
export RESTE_CUDA_EXT=0

PROBE=0
timeout -k 5 60 "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null \
  || PROBE=$?
case "$PROBE" in
  0) ;;
  124|137) echo "gpu_check: torch.cuda.is_available() did not answer within 60 s (a hung driver?); nothing was" \
                "checked" >&2
           exit 1 ;;
  *) echo "gpu_check: no CUDA GPU is visible to torch here (torch.cuda.is_available() is False); nothing was" \
          "checked" >&2
     exit 77 ;;
esac

WORK="$(mktemp -d "${TMPDIR:-/tmp}/reste-gpu-check.XXXXXX")"
TEE=""
if [ -n "$SAVE" ]; then
  mkdir -p "$SAVE"
  exec > >(tee "$SAVE/gpu_check.log") 2>&1
  TEE=$!
fi
if [ "$BUDGET" -lt 330 ]; then  # (in the saved log too: the device tool returns only the output's tail)
  echo "gpu_check: GPU_CHECK_BUDGET=$BUDGET s is under the 330 s this script needs to run every section (section 3" \
       "keeps 150 s for sections 4 and 5): the later steps of section 3 may not run, and the run then fails; give" \
       "it 360 s or more"
fi
# keep: the figures and full outputs so far, into GPU_CHECK_SAVE (after each section: a run killed outright
# still leaves what it measured)
keep() {
  if [ -n "$SAVE" ]; then cp -f "$WORK"/*.json "$WORK"/*.txt "$SAVE"/ 2>/dev/null || true; fi
}
finish() {
  keep
  rm -rf "$WORK"
  if [ -n "$TEE" ]; then  # the log whole: close the pipe into tee and let it write its last lines
    exec >&- 2>&-
    wait "$TEE" 2>/dev/null || true
  fi
}
trap finish EXIT
START=$SECONDS
SUMMARY=()
took() { echo "  ($((SECONDS - START)) s so far)"; }
# limited SECONDS COMMAND...: the command under a time limit, cut to what the budget has left (25 s are kept
# for the report, and KEEP s for the sections after this one); its status, 124 or 137 when it ran out of time,
# 99 when no time was left to start it
KEEP=0
limited() {
  local limit=$1 left=$((BUDGET - (SECONDS - START) - 25 - KEEP))
  shift
  if [ "$left" -lt 10 ]; then
    local budget="GPU_CHECK_BUDGET=$BUDGET s"
    [ "$KEEP" -eq 0 ] || budget+=", $KEEP s of it kept for the sections after"
    echo "  out of time ($budget): not run"
    return 99
  fi
  [ "$limit" -le "$left" ] || limit=$left
  timeout -k 10 "$limit" "$@"
}
# status NAME RC: a line of the closing summary
status() {
  case "$2" in
    0) SUMMARY+=("$1: ok") ;;
    124|137) SUMMARY+=("$1: TIMED OUT") ;;
    99) SUMMARY+=("$1: NOT RUN (out of time)") ;;
    *) SUMMARY+=("$1: FAILED (exit $2)") ;;
  esac
}

# Section 3's extension builds in the background from here, while sections 1 and 2 check the GPU: its minute of
# compiling runs on the host's cores, beside them, not after them. cuda=True: a machine without nvcc is told so at
# once (a CPU-only build would pass for a build)
# Its limit leaves the sections after section 3 their 150 s (KEEP below) and section 3's tests their 10 s minimum,
# whatever the budget: `wait` waits for it however long it takes
KEEP=160
limited 300 "$PYTHON" -c 'import time; from reste import cuda_ext; t = time.time(); k = cuda_ext.build(cuda=True); \
print(f"  built ({k}) in {time.time() - t:.0f} s")' > "$WORK/ext-build.txt" 2>&1 &
BUILD=$!
KEEP=0

echo "== 1. Triton kernels on CUDA tensors vs the PyTorch path"
KERNELS=0
limited 150 "$PYTHON" - <<'PY' || KERNELS=$?
import math
import sys

import torch

from reste import fused, triton_dispatch
from reste.estimators import ESTIMATORS, _compute_dtype, get_estimator, sign
from reste.layers import BinaryConv1d, BinaryConv2d

dev = torch.device("cuda")
# float32 convs in full float32: with TF32 (cuDNN's default) a binary weight +-alpha that two correct paths
# compute a few ulps apart can round to TF32 on either side of a boundary, 2^-10 apart
torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
if not triton_dispatch.available():
    print(f"FAIL: Triton kernels unavailable: {triton_dispatch.error()}")
    sys.exit(1)
from reste import triton_kernels as K  # noqa: E402  (imported by the dispatch above)
import triton  # noqa: E402

# what ran the checks (the log's record: the figures depend on them; review gpuready1, suggestion 3)
print(f"  {torch.cuda.get_device_name()}, torch {torch.__version__}, CUDA {torch.version.cuda}, Triton "
      f"{triton.__version__}")

ULP32 = 2.0**-23
ULP16 = {torch.float32: 0.0, torch.bfloat16: 2.0**-7, torch.float16: 2.0**-10}
failures = []


def check(name, ok, detail=""):
    print(f"  {'ok  ' if ok else 'FAIL'} {name}{': ' + detail if detail else ''}")
    if not ok:
        failures.append(name)


def torch_path(fn):
    fused.set_enabled(False)  # the same switch turns the Triton kernels off: PyTorch ops
    try:
        return fn()
    finally:
        fused.set_enabled(None)


def estimator(name):
    est = get_estimator(name)
    est.set_progress(7, 10)
    return est


def bounds(est):
    p = est.params()
    return {"ste": [p.get("clip", 1.0)], "reste": [p.get("t", 1.5), p.get("m", 0.1)],
            "rbnn": [math.sqrt(2.0) / p["t"]] if "t" in p else []}.get(est.name, [1.0])


def edges(dtype, bs):
    tiny = torch.finfo(dtype).tiny
    pts = torch.tensor([*bs, 1.0, 0.5, tiny, tiny / 2, tiny / 32, 1e-30, 6e4], dtype=torch.float32).to(dtype)
    bits = {torch.float32: torch.int32}.get(dtype, torch.int16)
    raw = pts.view(bits)
    near = torch.cat([(raw - 1).view(dtype), pts, (raw + 1).view(dtype)])
    return torch.cat([near, -near, torch.tensor([0.0, -0.0, math.inf, -math.inf, math.nan], dtype=dtype)])


def data(dtype, bs, shape=(8, 16, 33, 35)):
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(shape, generator=g) * 1.2).to(dtype)
    e = edges(dtype, bs)
    x.view(-1)[: e.numel()] = e
    return x.to(dev), torch.randn(shape, generator=g).to(dtype).to(dev)


def close(out, ref, tol):
    o, r = out.float(), ref.float()
    if out.dtype != ref.dtype or not torch.equal(o.isnan(), r.isnan()):
        return False, "NaN on different elements or dtype differs"
    fin = r.isfinite()
    if not torch.equal(o[~fin & ~r.isnan()], r[~fin & ~r.isnan()]):
        return False, "infinities differ"
    excess = ((o - r).abs() - tol)[fin]
    return bool(excess.max() <= 0), f"max |diff| {float((o - r).abs()[fin].max()):.2e}"


# sign: bit for bit
for dtype in (torch.float32, torch.bfloat16, torch.float16):
    for fmt in (torch.contiguous_format, torch.channels_last):
        x, _ = data(dtype, [1.5, 0.1])
        x = x.contiguous(memory_format=fmt)
        out, ref = sign(x), torch_path(lambda: sign(x))
        same = torch.equal(out.isnan(), ref.isnan()) and torch.equal(out[~ref.isnan()], ref[~ref.isnan()])
        check(f"sign {str(dtype)[6:]} {'channels_last' if fmt == torch.channels_last else 'contiguous'}",
              same and out.stride() == x.stride())

# every estimator's backward. Tolerances as in tests/test_gpu_kernels.py, with room for GPU math:
# the kernels use libdevice (within 2 ulp) and Triton contracts a * b + c into FMAs (one rounding
# less), PyTorch's CUDA kernels their own: a few float32 ulps of the result, and, where the formula
# cancels (1 - tanh^2, 1 - sigmoid, sums of cosines), of the function's scale times |grad|.
for name in ESTIMATORS:
    est = estimator(name)
    grid = torch.linspace(-3, 3, 20001, device=dev)
    scale = float(est.derivative(grid).abs().max())
    terms = (est.params()["n"] + 1) * (est.params()["n"] + 3) if name == "fda" else 4
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for fmt in (torch.contiguous_format, torch.channels_last):
            x, grad = data(dtype, bounds(est))
            x, grad = x.contiguous(memory_format=fmt), grad.contiguous(memory_format=fmt)
            out = triton_dispatch.backward(name, x, grad, **est.params())
            gref = est._g(_compute_dtype(x), **est.params())
            ref = gref.mul_(grad) if gref.dtype == grad.dtype else (gref * grad).to(grad.dtype)
            if out is None:
                check(f"{name} {str(dtype)[6:]}: kernel taken", False)
                continue
            r, gabs = ref.float().abs(), grad.float().abs()
            tol = 8 * ULP32 * r + 4 * terms * ULP32 * scale * gabs
            if dtype != torch.float32:
                tol = tol + torch.clamp(ULP16[dtype] * r, min=torch.finfo(dtype).tiny * torch.finfo(dtype).eps)
            ok, detail = close(out, ref, tol)
            if name in ("ste", "reste", "approx_sign"):
                ok = ok and torch.equal(out == 0, ref == 0)
            layout = "channels_last" if fmt == torch.channels_last else "contiguous"
            check(f"{name} backward {str(dtype)[6:]} {layout}", ok and out.stride() == x.stride(), detail)

# a binary conv's training step: the same output and gradients as the PyTorch path
for name, scaling, dtype, fmt in [("reste", "layer", torch.float32, torch.contiguous_format),
                                  ("reste", "channel", torch.bfloat16, torch.channels_last),
                                  ("ste", "layer", torch.bfloat16, torch.channels_last),
                                  ("fda", "layer", torch.float32, torch.contiguous_format)]:
    def step():
        torch.manual_seed(0)
        conv = BinaryConv2d(64, 64, 3, padding=1, bias=False, weight_estimator=estimator(name),
                            input_estimator=estimator(name), scaling=scaling).to(dev, memory_format=fmt)
        g = torch.Generator().manual_seed(1)
        x = (torch.randn(16, 64, 16, 16, generator=g) * 1.2).to(dev).contiguous(memory_format=fmt)
        x.requires_grad_(True)
        target = torch.randn(16, 64, 16, 16, generator=g).to(dev)
        with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
            y = conv(x)
        (y.float() * target).sum().backward()
        return y.detach(), x.grad, conv.weight.grad

    got, want = step(), torch_path(step)
    # A wrong kernel is off by O(1) relatively. A right one differs from PyTorch through alpha's sum
    # (N = 576 or 36,864 positive terms in another order: about sqrt(N) ulp32, under 1e-5) and the
    # conv's sums of such products; 1e-3 of the largest value keeps orders of magnitude between the
    # two. In bf16 the weights, inputs and outputs are rounded to bf16: two bf16 ulps of it more.
    oks = []
    for a, b in zip(got, want):
        s = float(b.float().abs().max())
        oks.append(close(a, b, torch.full(b.shape, (1e-3 + 2 * ULP16[dtype]) * s, device=dev)))
    check(f"BinaryConv2d step {name} {scaling} {str(dtype)[6:]}", all(ok for ok, _ in oks),
          ", ".join(d for _, d in oks))

# a 1-D conv's (out, in, k) weight takes the same kernels (their groups, not the weight's rank): the same bound
for name, scaling, dtype in [("reste", "channel", torch.float32), ("ste", "layer", torch.bfloat16)]:
    def step1d():
        torch.manual_seed(0)
        conv = BinaryConv1d(64, 64, 5, padding=2, bias=False, weight_estimator=estimator(name),
                            input_estimator=estimator(name), scaling=scaling).to(dev)
        g = torch.Generator().manual_seed(1)
        x = (torch.randn(16, 64, 128, generator=g) * 1.2).to(dev).requires_grad_(True)
        target = torch.randn(16, 64, 128, generator=g).to(dev)
        with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
            y = conv(x)
        (y.float() * target).sum().backward()
        return y.detach(), x.grad, conv.weight.grad

    got, want = step1d(), torch_path(step1d)
    oks = [close(a, b, torch.full(b.shape, (1e-3 + 2 * ULP16[dtype]) * float(b.float().abs().max()), device=dev))
           for a, b in zip(got, want)]
    check(f"BinaryConv1d step {name} {scaling} {str(dtype)[6:]}", all(ok for ok, _ in oks),
          ", ".join(d for _, d in oks))

# a weight of 2.6M elements scaled as one group (a large fully connected layer): each partial sum of the
# reduction spans two blocks. A wrong kernel is off by O(1); a right one differs from PyTorch's mean through
# the order of 2.6M positive terms (about sqrt(N) ulp32 at worst, 2e-4): 1e-3 of the largest value.
est = estimator("reste")
g = torch.Generator().manual_seed(2)
w = (torch.randn(1024, 2560, generator=g) * 0.05).to(dev)
upstream = torch.randn(1024, 2560, generator=g).to(dev)
y, partials = K.scaled_sign(w, 1)
dw = K.scaled_sign_backward("reste", w, upstream, partials, 1, est.params())


def large_ref():
    leaf = w.detach().clone().requires_grad_(True)
    out = est(leaf) * leaf.abs().mean()
    out.backward(upstream)
    return out.detach(), leaf.grad


errs = [float((a - b).abs().max() / b.abs().max()) for a, b in zip((y, dw), torch_path(large_ref))]
check(f"a 2.6M-element weight as one group ({K._partials(w, 1)[3]} blocks a partial sum)", max(errs) <= 1e-3,
      f"max |diff| {errs[0]:.1e} and {errs[1]:.1e} of the largest value")

# no host-device synchronisation in a binary layer's training step (the reference's .item() would raise)
conv = BinaryConv2d(32, 32, 3, padding=1, weight_estimator=estimator("reste")).to(dev)
x = torch.randn(8, 32, 16, 16, device=dev, requires_grad=True)
conv(x).square().sum().backward()  # compiles the kernels first
torch.cuda.synchronize()
try:
    torch.cuda.set_sync_debug_mode("error")
    conv(x).square().sum().backward()
    synced = None
except RuntimeError as err:
    synced = str(err).splitlines()[0]
finally:
    torch.cuda.set_sync_debug_mode(0)
check("no host-device synchronisation in a binary conv's forward and backward", synced is None, synced or "")

# moving the schedule compiles nothing new
x, grad = data(torch.float32, [1.5, 0.1])
triton_dispatch.backward("reste", x, grad, o=1.5, t=1.5, m=0.1)
triton_dispatch.backward("fda", x, grad, n=9, w=0.1)
cache = K._backward_kernel.device_caches[torch.cuda.current_device()][0]
before = len(cache)
for o, n in ((1.7, 10), (2.2, 13), (2.9, 17)):
    triton_dispatch.backward("reste", x, grad, o=o, t=1.5, m=0.1)
    triton_dispatch.backward("fda", x, grad, n=n, w=0.1)
check("no recompilation when o and n move", len(cache) == before,
      f"{before} compiled variants before, {len(cache)} after")

# ReSTE's o read from a device tensor by the kernel (no .item()): the values of o passed as a float
p = estimator("reste").params()
from_float = triton_dispatch.backward("reste", x, grad, **p)
from_tensor = triton_dispatch.backward("reste", x, grad, **{**p, "o": torch.tensor(p["o"], dtype=torch.float64,
                                                                                  device=dev)})
check("ReSTE backward with o as a device tensor", from_tensor is not None
      and torch.equal(from_float.nan_to_num(), from_tensor.nan_to_num()))

# the in-memory loader's batches made on the GPU (gather, random crop with padding, flip, normalise) against the
# same epochs' batches made on the CPU: the README says a batch is the same wherever it is made (review gpucode,
# suggestion 2)
from reste.data import from_tensors, make_loaders  # noqa: E402

g = torch.Generator().manual_seed(3)
images = torch.randint(0, 256, (300, 3, 32, 32), dtype=torch.uint8, generator=g)
labels = torch.randint(0, 10, (300,), generator=g)
train_set, test_set, _ = from_tensors("cifar10", (images, labels), (images[:50], labels[:50]), augment=True, pad=4)
loaders = {where: make_loaders(train_set, test_set, batch_size=64, eval_batch_size=50, seed=5, device=where)
           for where in ("cpu", dev)}
worst, same = 0.0, True
for epoch in (0, 1):
    for loader, _ in loaders.values():
        loader.set_epoch(epoch)
    for (x_cpu, y_cpu), (x_gpu, y_gpu) in zip(*(iter(loaders[w][0]) for w in ("cpu", dev))):
        same = same and torch.equal(x_cpu, x_gpu.cpu()) and torch.equal(y_cpu, y_gpu.cpu())
        worst = max(worst, float((x_cpu - x_gpu.cpu()).abs().max()))
check("an in-memory set's augmented batches on the GPU equal the CPU's, bit for bit", same,
      f"largest difference {worst:.1e}")

# the division as PTX div.rn.f32, not tl.math.div_rn's div.rn.ftz.f32: SignSwish's q = 1 / (1 + exp(v)) is subnormal
# for v in (87.3, 88.7], and g there (about 1e-36, a normal number) is 0 where the division flushes q. The backward
# checks above cannot tell (no input reaches that v, and their tolerance there is 1e-5): review gpuready1
try:
    est = estimator("sign_swish")
    xs = torch.tensor([87.4, 88.0, 88.6, -88.0], device=dev) / est.params()["beta"]
    ones = torch.ones_like(xs)
    got = triton_dispatch.backward("sign_swish", xs, ones, **est.params())
    want = est._g(_compute_dtype(xs), **est.params()) * ones
    kept = got is not None and bool((got != 0).all()) and bool(((got - want).abs() <= 1e-3 * want.abs()).all())
    check("SignSwish's g where its sigmoid is subnormal: not flushed to 0 (the division keeps subnormals)", kept,
          f"{None if got is None else got.tolist()} against PyTorch's {want.tolist()}")
except Exception as err:  # noqa: BLE001 - a failed check, not the end of the section's checks
    check("SignSwish's g where its sigmoid is subnormal", False, f"{type(err).__name__}: {err}")

# in eval mode a binary layer sums +-1 and scales after (review evalexact1): a sum that cancels is exactly 0, which
# the next sign takes as +1, as the packed file's integer sums do; that holds where the conv sums directly, and not
# where cuDNN's autotuner picks an FFT or Winograd algorithm (review diff33, suggestion 1): a model whose binary conv
# feeds the next sign with no bias or batch norm between, in eval mode on the GPU (TF32 and the autotuner as a user
# has them), against its packed file on the CPU
try:
    import tempfile

    import reste
    from reste.export import PackedModel, export_model

    torch.manual_seed(0)
    tie = reste.binarize(torch.nn.Sequential(
        torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.BatchNorm2d(32),
        torch.nn.Conv2d(32, 32, 3, padding=1, bias=False), torch.nn.Conv2d(32, 32, 3, padding=1),
        torch.nn.BatchNorm2d(32), torch.nn.Flatten(), torch.nn.Linear(32 * 16 * 16, 10))).eval()
    xs = torch.randn(512, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with tempfile.TemporaryDirectory() as folder:
        export_model(tie, f"{folder}/tie.rbnn", input_size=(3, 16, 16), verify=False)
        want = torch.as_tensor(PackedModel.load(f"{folder}/tie.rbnn")(xs)).argmax(1)
    kept = (torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32)
    torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32 = True, True
    try:
        with torch.no_grad():
            got = tie.to(dev)(xs.to(dev)).argmax(1).cpu()
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32 = kept
    other = int((got != want).sum())
    check("eval mode's exact binary sums on the GPU (cuDNN autotuner and TF32 on): a tie model predicts as its packed "
          "file", other == 0, f"{other} of {len(xs)} predictions differ")
except Exception as err:  # noqa: BLE001 - a failed check, not the end of the section's checks
    check("eval mode's exact binary sums on the GPU", False, f"{type(err).__name__}: {err}")

# a kernel that failed turns Triton off with a warning, and the checks above would then pass on PyTorch ops
check("the Triton kernels stayed on through every check", triton_dispatch.error() is None,
      triton_dispatch.error() or "")

print(f"  {len(failures)} failure(s)")
sys.exit(1 if failures else 0)
PY
status "1. Triton kernels" "$KERNELS"
took
echo
echo "== 2. --cuda-graphs: graphed steps against eager steps, graphed evaluation, a graphed run through the engine"
cat > "$WORK/graphs.py" <<'PY'
import copy
import math
import sys

import torch
import torch.nn.functional as F

from reste import cuda_ext, engine, models, set_progress
from reste.config import TrainConfig
from reste.cudagraph import CudaGraphs, GraphedStep
from reste.rundir import read_metrics

work, mode = sys.argv[1], sys.argv[2]  # mode: "triton" (the Python nodes, RESTE_CUDA_EXT=0) or "ext" (the C++ nodes)
dev = torch.device("cuda")
cuda_ext.set_enabled(mode == "ext")
torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
failures = []


def check(name, ok, detail=""):
    print(f"  {'ok  ' if ok else 'FAIL'} {name}{': ' + detail if detail else ''}")
    if not ok:
        failures.append(name)


# 10 steps of resnet20_1w1a: 2 eager warm-up steps, 3 replays, then an epoch boundary (lr and
# o move: the step is captured again), 1 eager step, 2 replays, a partial batch of 40 (an epoch's last:
# the graph is released and it runs eagerly), a capture again; against 10 eager steps.
for amp in ("none", "bf16"):
    torch.manual_seed(0)
    model = models.create("resnet20_1w1a", num_classes=10).to(dev)
    twin = copy.deepcopy(model)
    opts = [torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4) for m in (model, twin)]
    if amp == "bf16":
        def cast():
            return torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False)
    else:
        def cast():
            return torch.autocast("cuda", enabled=False)
    step = GraphedStep(model, opts[0], autocast=cast, backend=CudaGraphs(dev), warmup=2)
    g = torch.Generator(device=dev).manual_seed(1)
    batches = [(torch.randn(n, 3, 32, 32, device=dev, generator=g),
                torch.randint(0, 10, (n,), device=dev, generator=g)) for n in [64] * 8 + [40, 64]]
    for m in (model, twin):
        set_progress(m, 0, 10)
    for i, (x, y) in enumerate(batches):
        if i == 5:
            step.invalidate()
            for m, o in ((model, opts[0]), (twin, opts[1])):
                set_progress(m, 6, 10)
                o.param_groups[0]["lr"] = 0.05
        step(x, y)
        opts[1].zero_grad(set_to_none=True)
        with cast():
            loss = F.cross_entropy(twin(x).float(), y)
        loss.backward()
        opts[1].step()
    torch.cuda.synchronize()
    if mode == "ext":  # the C++ nodes must be the ones captured, or this checks the Triton path again
        sys.path.insert(0, "benchmarks")
        from train_step import ext_nodes  # noqa: E402  (the rows' own count of the C++ nodes)

        probe = copy.deepcopy(model)  # (a forward in training mode moves BatchNorm's statistics)
        with cast():  # the autocast of the steps checked (bf16 takes the nodes' 16-bit path)
            nodes = ext_nodes(probe, batches[0][0])
        cuda_ext.set_enabled(True)  # (ext_nodes hands the switch back to the environment)
        check("the graphed model runs the extension's C++ nodes", nodes > 0, f"{nodes} node(s)")
    worst = 0.0
    for a, b in zip(model.state_dict().values(), twin.state_dict().values()):
        if torch.is_tensor(a) and a.is_floating_point():
            worst = max(worst, float((a - b).abs().max() / b.abs().max().clamp_min(1e-12)))
    # the same kernels in the same order give the same bits; 1e-4 of a tensor's scale leaves room
    # for a reduction order that differs between capture and eager, and is far below a wrong step
    check(f"10 steps with --cuda-graphs equal 10 eager steps ({amp}, {mode}), {step.captures} captures",
          worst <= 1e-4 and step.captures == 3, f"largest difference {worst:.1e} of the tensor's scale")

if mode == "ext":  # the rest checks the graphs themselves, the same on either path
    print(f"  {len(failures)} failure(s)")
    sys.exit(1 if failures else 0)

# the graphed test evaluation: captured once, replayed after the weights moved (in place), as in every epoch
from reste.cudagraph import GraphedForward  # noqa: E402

for amp in ("none", "bf16"):
    torch.manual_seed(0)
    model = models.create("resnet20_1w1a", num_classes=10).to(dev).eval()
    cast = ((lambda: torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False)) if amp == "bf16"
            else (lambda: torch.autocast("cuda", enabled=False)))
    forward = GraphedForward(model, autocast=cast, backend=CudaGraphs(dev))
    g = torch.Generator(device=dev).manual_seed(2)
    x = torch.randn(100, 3, 32, 32, device=dev, generator=g)
    worst = 0.0
    for _ in range(3):
        with torch.no_grad():
            got = forward(x).float().clone()
            with cast():
                want = model(x).float()
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))
            for m in model.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.running_mean.add_(0.1)
        worst = max(worst, float((got - want).abs().max() / want.abs().max()))
    check(f"graphed evaluation equals eager evaluation after weight updates ({amp}), {forward.captures} capture",
          worst <= 1e-4 and forward.captures == 1, f"largest difference {worst:.1e} of the logits' scale")

# a graphed run through the engine: digits, 12 epochs, one capture per epoch; the memory it holds must not
# grow with the captures (the CIFAR-10 preset captures 1000 times)
reserved = []


def log(message):
    if message.startswith("epoch "):
        reserved.append(torch.cuda.memory_reserved(dev))
        print(f"  {message}")


out = engine.train(TrainConfig(dataset="digits", epochs=12, device="cuda", cuda_graphs=True, indicators="general"),
                   f"{work}/digits-graphed", progress=False, log=log)
check("reste train --cuda-graphs on digits trains", out["best_acc"] > 50.0, f"best {out['best_acc']:.2f}%")
mib = [r / 2**20 for r in reserved]
if len(mib) == 12:
    # a leak grows with every capture (each holds a pool of at least one 2 MiB segment): the last 4 epochs add
    # 8 MiB or more to the most held over epochs 4 to 8; one more cached segment at some epoch is not a leak
    check("the memory reserved stays flat over the epochs' captures", mib[-1] <= max(mib[3:8]) + 2.0,
          "MiB after each epoch: " + " ".join(f"{m:.0f}" for m in mib))
else:
    check("the memory reserved stays flat over the epochs' captures", False, f"{len(mib)} epoch lines, not 12")

# cuDNN's autotuner on, as `reste train` has it on a GPU, and an epoch of 3 batches whose last is partial (digits'
# 1437 images at 600): that batch must run eagerly before its shape is captured, its algorithm search outside any
# capture (review gpucode #1)
torch.backends.cudnn.deterministic = False
out = engine.train(TrainConfig(dataset="digits", epochs=3, batch_size=600, device="cuda", cuda_graphs=True),
                   f"{work}/digits-partial", progress=False, log=lambda message: None)
losses = [m["train_loss"] for m in read_metrics(f"{work}/digits-partial")]
check("a --cuda-graphs run whose third step is a partial batch runs its 3 epochs (cuDNN autotuner on)",
      out["epochs"] == 3 and all(map(math.isfinite, losses)), f"train losses {losses}, best {out['best_acc']:.2f}%")
print(f"  {len(failures)} failure(s)")
sys.exit(1 if failures else 0)
PY
GRAPHCHECK=0
limited 150 "$PYTHON" "$WORK/graphs.py" "$WORK" triton || GRAPHCHECK=$?
status "2. CUDA graphs" "$GRAPHCHECK"
took
# the suite's tests marked gpu (conftest.py hides the GPU from the others): a run that resumes on the GPU, FlipRatio
# without host syncs, the loaders' batches on the GPU; test_cuda_ext.py is section 3's. Only the files that mark some:
# collecting all of tests/ took half a minute of the budget
SUITE=0
GPU_FILES=()
for f in tests/test_*.py; do
  if [ "$f" != tests/test_cuda_ext.py ] && grep -q "pytest.mark.gpu" "$f"; then GPU_FILES+=("$f"); fi
done
RESTE_TEST_DEVICE=cuda limited 90 "$PYTHON" -m pytest -q -p no:cacheprovider -m "gpu and not slow" \
  --ignore=tests/test_cuda_ext.py "${GPU_FILES[@]}" > "$WORK/gpu-tests.out" 2>&1 || SUITE=$?
tail -n 15 "$WORK/gpu-tests.out"
status "2. the suite's gpu tests" "$SUITE"
[ "$SUITE" -eq 0 ] || GRAPHCHECK=1
took
echo
echo "== 3. The compiled extension (reste.cuda_ext): its build, tests/test_cuda_ext.py on CUDA tensors, graphed steps"
EXT=0
EXTBUILD=0
# the timed targets come after this section: however long its build, tests or a hang take, sections 4 and 5 keep
# 150 s (about 50 and 40 s on an H200, plus their start-up), and section 5 keeps 75 s of section 4's (a fresh
# process that writes 50,000 images and trains 4 epochs: review gpucode, suggestion 4)
KEEP=150
wait "$BUILD" || EXTBUILD=$?  # (started before section 1)
tail -n 40 "$WORK/ext-build.txt"
if [ "$EXTBUILD" -eq 0 ]; then
  status "3. extension build" 0
  # -m 'not slow': the slow test builds the extension a second time from scratch (the build is checked above)
  RESTE_TEST_DEVICE=cuda limited 240 "$PYTHON" -m pytest -q -p no:cacheprovider -o addopts="" -m "not slow" \
    tests/test_cuda_ext.py > "$WORK/ext-tests.txt" 2>&1 || EXT=$?
  tail -n 25 "$WORK/ext-tests.txt"
  status "3. extension tests on CUDA" "$EXT"
  took
  EXTGRAPHS=0
  limited 90 "$PYTHON" "$WORK/graphs.py" "$WORK" ext || EXTGRAPHS=$?
  status "3. CUDA graphs through the C++ nodes" "$EXTGRAPHS"
  took
  [ "$EXTGRAPHS" -eq 0 ] || EXT=1
  # the default, RESTE_CUDA_EXT unset (auto), must take the C++ nodes on this machine, where nvcc built them: the
  # *_ext rows of section 4 ask for them by set_enabled(True), so this is what ties their figures to the default
  DEFAULT=0
  limited 60 env -u RESTE_CUDA_EXT "$PYTHON" - <<'PY' || DEFAULT=$?
import sys

import torch

from reste import cuda_ext, engine, models

model = models.create("resnet20_1w1a").cuda().train()
x = torch.randn(8, 3, 32, 32, device="cuda")
model(x)  # (each layer's first forward checks its inputs through the module path)
stack, seen, nodes = [model(x).sum().grad_fn], set(), 0
while stack:
    node = stack.pop()
    if node is not None and node not in seen:
        seen.add(node)
        nodes += node.name().startswith("reste_ext::")
        stack.extend(child for child, _ in node.next_functions)
path = engine.kernel_path(torch.device("cuda"))
ok = cuda_ext.mode() == "auto" and nodes > 0 and path == engine.CPP_NODES
print(f"  {'ok  ' if ok else 'FAIL'} RESTE_CUDA_EXT unset ({cuda_ext.mode()}): {nodes} C++ node(s) in a ResNet-20 "
      f"step, the estimators' path: {path}{'' if ok else f' ({cuda_ext.error()})'}")
sys.exit(0 if ok else 1)
PY
  status "3. the default takes the C++ nodes" "$DEFAULT"
  took
  [ "$DEFAULT" -eq 0 ] || EXT=1
else
  if [ "$EXTBUILD" -eq 124 ] || [ "$EXTBUILD" -eq 137 ] || [ "$EXTBUILD" -eq 99 ]; then
    EXT=1  # out of time (a hang?): not shown to be the environment
    echo "  the extension's build ran out of time (see above): counted as a failure; it is not timed"
  elif grep -qE "(kernels\.cu|ops\.cpp|estimators\.h)[(:][0-9]+.*error" "$WORK/ext-build.txt"; then
    EXT=1  # the compiler refused reste's own sources: the code's fault, not the environment's
    echo "  the extension's sources did not compile (see above): a failure of the code"
  else
    echo "  the extension did not build (see above: nvcc, a host compiler), not a kernel's fault: it is not timed"
  fi
  status "3. extension build" "$EXTBUILD"
fi
keep  # (the build's and the tests' whole outputs: a run killed in section 4 still leaves them)
EXTFLAG=()
if [ "$EXTBUILD" -ne 0 ] || [ "$EXT" -ne 0 ]; then
  EXTFLAG=(--no-ext)  # an extension that failed its checks is not timed (a fault would cost the other rows)
fi
took
echo
echo "== 4. Training-step rows (benchmarks/train_step.py --device cuda)"
ROWS=0
KEEP=75
limited 360 "$PYTHON" benchmarks/train_step.py --device cuda --graphs --repeats "$REPEATS" --warmup 3 \
  --json "$WORK/rows.json" ${EXTFLAG[@]+"${EXTFLAG[@]}"} || ROWS=$?
[ "$ROWS" -eq 0 ] || echo "  train_step.py ended early (see above): the rows it could not measure are NOT MEASURED"
status "4. training-step rows" "$ROWS"
keep
took
echo
echo "== 5. A whole CIFAR-10-shaped epoch through the engine (benchmarks/train_epoch.py)"
EPOCH=0
KEEP=0
# through the path `reste train --cuda-graphs` takes by default (RESTE_CUDA_EXT unset: the Triton kernels, which a graphed
# run takes in place of the C++ nodes) where section 3 passed, else with the extension off
EPOCHENV=(env RESTE_CUDA_EXT=0)
if [ "$EXTBUILD" -eq 0 ] && [ "$EXT" -eq 0 ]; then EPOCHENV=(env -u RESTE_CUDA_EXT); fi
limited 180 "${EPOCHENV[@]}" "$PYTHON" benchmarks/train_epoch.py --device cuda --amp bf16 --channels-last \
  --cuda-graphs --epochs 4 --json "$WORK/epoch.json" || EPOCH=$?
status "5. whole epoch" "$EPOCH"
keep
took
echo
echo "== 6. Targets (issue 11)"
GRAPHS=no
if timeout -k 5 20 "$PYTHON" -m reste.cli train --help 2>/dev/null | grep -q -- "--cuda-graphs"; then GRAPHS=yes; fi
EPOCH_BENCH=""
for f in benchmarks/train_epoch.py benchmarks/epoch.py; do
  if [ -f "$f" ]; then EPOCH_BENCH="$f"; fi
done
REPORT=0
ARGS=("$WORK/rows.json" "$GRAPHS" "$EPOCH_BENCH" "$WORK/epoch.json")
timeout -k 5 30 "$PYTHON" - "${ARGS[@]}" > "$WORK/targets.txt" <<'PY' || REPORT=$?
import json
import sys

import os

graphs, epoch_bench = sys.argv[2] == "yes", sys.argv[3]
failed = {}  # rows that train_step.py could not measure (it writes the others as each one ends)
unreached = []  # rows it meant to measure and did not reach (section 4 ran out of time, or its process died)
if os.path.isfile(sys.argv[1]):
    measured = json.load(open(sys.argv[1]))
    rows, failed = measured["rows"], measured.get("failed", {})
    unreached = [row for row in measured.get("planned", []) if row not in rows and row not in failed]
    print(f"  device: {measured['device']}")
    for row, why in failed.items():
        print(f"  row {row} failed ({why}): its targets are NOT MEASURED")
    for row in unreached:
        print(f"  row {row} was not reached (section 4 ended first; see above): its targets are NOT MEASURED")
else:
    rows = {}
    print("  the training-step rows did not run (see section 4): their targets are NOT MEASURED")


def mark(value, op, bound):
    return "MET" if (value <= bound if op == "<=" else value >= bound) else "NOT MET"


def target(label, row, value, op, bound, unit="x"):
    """A target line: the value to 3 decimals, or as many more as it takes to read on the side of its verdict
    (1.1504 is NOT MET against 1.15: it reads 1.1504, not 1.150)."""
    verdict, digits = mark(value, op, bound), 3
    while digits < 9 and mark(round(value, digits), op, bound) != verdict:
        digits += 1
    return f"  {label:<60} {row:<22} {value:7.{digits}f}{unit}  (target {op} {bound:g}{unit})  {verdict}"


def unmeasured(label, row, op, bound, why="", unit="x", verdict="NOT MEASURED"):
    return f"  {label:<60} {row:<22} {'':>8}  (target {op} {bound:g}{unit})  {verdict}{why}"


def disagrees(row):
    """Why a row's reference is no measure of the authors' algorithm: its backward differs from ReSTE's."""
    check = rows.get(row, {}).get("check")
    return f" (the reference's backward differs from ReSTE's by {check:.1e})" if check and check > 1e-5 else ""


print("  (Python nodes: RESTE_CUDA_EXT=0, or no CUDA toolkit; C++ nodes: the default, RESTE_CUDA_EXT=auto, where "
      "one is found)")
for key, ext_key, label, op, bound in [
        ("reste/fp", "reste_ext/fp", "ReSTE / FP, eager", "<=", 1.15),
        ("reste/ste", "reste_ext/ste_ext", "ReSTE / STE, eager", "<=", 1.05),
        ("reference/reste", "reference/reste_ext", "authors'-style reference / ReSTE, eager", ">=", 3.0)]:
    for row, r in rows.items():
        unlike = disagrees(row) if key.startswith("reference") else ""
        if r.get("kernels_error"):  # timed on PyTorch ops: no figure of the fused kernels
            print(unmeasured(label + ", Python nodes", row, op, bound,
                             f" (the fused kernels were off: {r['kernels_error'][:100]})"))
        elif unlike:
            print(unmeasured(label + ", Python nodes", row, op, bound, unlike))
        else:
            print(target(label + ", Python nodes", row, r["ratios"][key], op, bound))
    for row in [*failed, *unreached]:
        print(unmeasured(label + ", Python nodes", row, op, bound))
    for row in [*rows, *failed, *unreached]:  # the same with the compiled extension's C++ nodes
        ratios = rows[row]["ratios"] if row in rows else {}
        unlike = disagrees(row) if key.startswith("reference") and ext_key in ratios else ""
        if ext_key in ratios and not unlike:
            print(target(label + ", C++ nodes", row, ratios[ext_key], op, bound))
        else:
            print(unmeasured(label + ", C++ nodes", row, op, bound, unlike))
graphed_row = "resnet20-bf16-cl"
med = rows.get(graphed_row, {}).get("median_ms", {})
errors = rows.get(graphed_row, {}).get("graph_errors", {})
label = "resnet20 b256 bf16 ReSTE step, --cuda-graphs"
for variant, path in (("reste_graphed", "Python nodes"), ("reste_ext_graphed", "C++ nodes")):
    bench = (f"; train_step.py's GraphedStep replay of the step: {med[variant]:.2f} ms" if variant in med else "")
    name = f"{label}, {path}"
    capture_error = errors.get(variant.removesuffix("_graphed"))
    if not graphs:
        print(unmeasured(name, graphed_row, "<=", 6, f" (reste train has no --cuda-graphs{bench})", " ms",
                         "NOT BUILT"))
    elif variant in med:
        # train_step.py --graphs replays the engine's own GraphedStep (reste.cudagraph)
        off = rows[graphed_row].get("kernels_error") if variant == "reste_graphed" else ""  # (C++ nodes: no Triton)
        if off:  # PyTorch ops captured: no figure of the fused kernels, as the row's eager targets (review kern1)
            print(unmeasured(name, graphed_row, "<=", 6, f" (the fused kernels were off: {off[:100]}{bench})", " ms"))
        else:
            print(target(name, graphed_row, med[variant], "<=", 6, " ms"))
    elif graphed_row in failed:
        print(unmeasured(name, graphed_row, "<=", 6, " (its row failed; see above)", " ms"))
    elif graphed_row not in rows:  # never tried: not a failed capture
        print(unmeasured(name, graphed_row, "<=", 6, f" (section 4 did not reach row {graphed_row})", " ms"))
    elif capture_error:
        print(unmeasured(name, graphed_row, "<=", 6, f" (the step could not be captured: {capture_error[:100]})",
                         " ms"))
    elif variant == "reste_ext_graphed":
        why = rows[graphed_row].get("ext_error") or "the C++ nodes were not timed (--no-ext: see section 3)"
        print(unmeasured(name, graphed_row, "<=", 6, f" ({why[:120]})", " ms"))
    else:
        print(unmeasured(name, graphed_row, "<=", 6, f" (row {graphed_row} was timed without --graphs)", " ms"))
label = "whole-epoch images/s / bare-step images/s"
if not epoch_bench:
    print(unmeasured(label, "", ">=", 0.85, " (no whole-epoch benchmark in benchmarks/)", "", "NOT BUILT"))
elif os.path.isfile(sys.argv[4]):
    e = json.load(open(sys.argv[4]))
    print(target(label, e.get("kernel_path", ""), e["epoch_over_step"], ">=", 0.85, "")
          + f" (epoch {e['epoch_images_per_s']:,.0f} images/s, bare step {e['bare_step']['images_per_s']:,.0f})")
else:
    print(unmeasured(label, "", ">=", 0.85, f" ({epoch_bench} did not finish; see section 5)", ""))
PY
cat "$WORK/targets.txt"
status "6. target report" "$REPORT"

echo
echo "== 7. Host time of the binary nodes on this machine (benchmarks/node_overhead.py; no target)"
# last, in what the budget leaves (it has no target: review gpuready1 found it cut in section 3's tight window, and
# its timeout then cost the C++ nodes' figures); a crash of the C++ nodes here fails the run, running out of time not
NODES=0
if [ "$EXTBUILD" -eq 0 ] && [ "$EXT" -eq 0 ]; then
  limited 90 "$PYTHON" benchmarks/node_overhead.py --device cuda --rounds 5 --calls 200 > "$WORK/nodes.txt" 2>&1 \
    || NODES=$?
  sed 's/^/  /' "$WORK/nodes.txt"
  status "7. node overhead (no target)" "$NODES"
  case "$NODES" in 124|137|99) NODES=0 ;; esac
else
  echo "  not run: the extension did not pass section 3"
fi

echo
echo "== Summary (gpu_check, $((SECONDS - START)) s)"
for line in "${SUMMARY[@]}"; do echo "  $line"; done
grep -E "MET|NOT MEASURED|NOT BUILT" "$WORK/targets.txt" || echo "  (no target lines: see section 6)"
# (a timed section that failed or ran out of time too: its targets are NOT MEASURED, and a GPU run that reads only
# the status must not take that for a clean pass: review gpudry #2)
for rc in "$KERNELS" "$GRAPHCHECK" "$EXT" "$NODES" "$ROWS" "$EPOCH" "$REPORT"; do [ "$rc" -eq 0 ] || exit 1; done
[ "$EXTBUILD" -eq 0 ] || exit 2
exit 0
