"""--cuda-graphs: the step logic of reste.cudagraph and its use by the engine, on the CPU.

A CUDA graph cannot be captured without a GPU. These tests run the same code with a stand-in
backend whose "replay" runs the captured step again with the gradients cleared first, which
is what replaying a graph captured with cleared gradients does. They check what is
independent of CUDA: warm-up steps are real steps, the batch goes through the static input,
the step is captured again after every invalidate (once per epoch in the engine), and a
graphed run trains exactly like an eager run over the same batches. That the real capture
gives the same weights as eager steps is checked on a GPU by benchmarks/gpu_check.sh.
"""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch
from torch import nn

from reste import engine, rundir
from reste.cli import main
from reste.config import TrainConfig
from reste.cudagraph import CudaGraphs, GraphedStep, graphable_optimizer_options, load_optimizer_state
from reste.errors import UsageError
from reste.models import create


class ReplayByCalling:
    """A CPU stand-in for CudaGraphs."""

    def __init__(self, _device=None) -> None:
        self.captured, self.replays, self.eager_steps = 0, 0, 0

    def eager(self, fn):
        self.eager_steps += 1
        fn()

    def capture(self, fn, clear_grads):
        self.captured += 1

        def replay():
            self.replays += 1
            clear_grads()
            fn()

        return replay

    def release(self, _replay):
        pass


def _batches(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 1, 8, 8, generator=g), torch.randint(0, 10, (16,), generator=g)) for _ in range(n)]


def _eager_steps(model, opt, batches):
    for x, y in batches:
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()


def test_graphed_steps_train_like_eager_steps_and_recapture_after_invalidate():
    torch.manual_seed(0)
    model = create("digits_1w1a", num_classes=10)
    twin = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    opt_twin = torch.optim.SGD(twin.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    backend = ReplayByCalling()
    step = GraphedStep(model, opt, backend=backend, warmup=2)
    batches = _batches(10)
    losses = []
    for i, (x, y) in enumerate(batches):
        if i == 6:  # an "epoch" boundary: the lr moves, the step must be captured again
            step.invalidate()
            opt.param_groups[0]["lr"] = 0.05
        loss, logits = step(x, y)
        assert logits.shape == (16, 10)
        losses.append(float(loss))
    _eager_steps(twin, opt_twin, batches[:6])
    opt_twin.param_groups[0]["lr"] = 0.05
    _eager_steps(twin, opt_twin, batches[6:])
    for a, b in zip(model.state_dict().values(), twin.state_dict().values()):
        assert not torch.is_tensor(a) or torch.equal(a, b)
    # 2 eager steps before the first capture, 1 before the second (everything is initialised by then)
    assert (backend.captured, backend.eager_steps, backend.replays) == (2, 3, 7)
    assert step.captures == 2 and all(torch.isfinite(torch.tensor(losses)))


def test_a_batch_of_another_shape_trains_eagerly_and_the_step_is_captured_again():
    """An epoch's last partial batch: the captured graph holds the full batch's shape, so that batch releases it
    and trains eagerly (it was refused before, and the engine dropped it: --cuda-graphs left images out and
    the paper-mode indicators read another step than the authors'); the next full batch is captured again."""
    torch.manual_seed(0)
    model = create("digits_1w1a", num_classes=10)
    twin = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    opt_twin = torch.optim.SGD(twin.parameters(), lr=0.1, momentum=0.9)
    backend = ReplayByCalling()
    step = GraphedStep(model, opt, backend=backend, warmup=1)
    full = _batches(4)
    batches = [*full[:3], (full[3][0][:5], full[3][1][:5]), *_batches(3, seed=1)]
    for x, y in batches:
        loss, logits = step(x, y)
        assert logits.shape == (len(x), 10) and torch.isfinite(loss)
    _eager_steps(twin, opt_twin, batches)
    for a, b in zip(model.state_dict().values(), twin.state_dict().values()):
        assert not torch.is_tensor(a) or torch.equal(a, b)
    # 1 warm-up, capture, 2 replays; the partial batch eagerly (the one eager step after a release); capture,
    # 3 replays
    assert (backend.captured, backend.eager_steps, backend.replays) == (2, 2, 5) and step.captures == 2
    with pytest.raises(ValueError, match="warmup"):
        GraphedStep(model, torch.optim.SGD(model.parameters(), lr=0.1), backend=ReplayByCalling(), warmup=0)


@pytest.mark.parametrize("start", [0, 1])
def test_a_shape_is_captured_only_once_it_ran_eagerly(start):
    """(review gpucode #1) The step after the warm-up was captured whatever its shape: an epoch of warmup + 1
    batches whose last is partial (start 0), or a resumed epoch with that many left (start 1: one eager step, as
    after an invalidate), captured the partial batch, unseen, so cuDNN's algorithm search and Triton's first launch
    of its shape ran inside the capture. It runs eagerly; the next epoch's full batch is captured."""
    torch.manual_seed(0)
    model = create("digits_1w1a", num_classes=10)
    twin = copy.deepcopy(model)
    opt, opt_twin = (torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9) for m in (model, twin))
    backend = ReplayByCalling()
    step = GraphedStep(model, opt, backend=backend, warmup=2)
    full = _batches(6)
    epoch = [*full[:2], (full[2][0][:5], full[2][1][:5])]
    if start:  # a resumed run: its first capture comes after one eager step
        step.invalidate()
        step.captures = 1
        step.invalidate()
        epoch = epoch[1:]
    shapes = []
    backend.capture = (lambda capture: lambda fn, clear: shapes.append(tuple(step._x.shape)) or capture(fn, clear))(
        backend.capture)
    for x, y in epoch:
        step(x, y)
    assert backend.captured == 0 and backend.eager_steps == len(epoch)  # the partial batch too: never captured
    step.invalidate()  # the next epoch
    for x, y in full[3:]:
        step(x, y)
    assert shapes == [(16, 1, 8, 8)] and backend.replays == 3 - (2 if start == 0 else 1)  # after its warm-up
    _eager_steps(twin, opt_twin, [*epoch, *full[3:]])
    for a, b in zip(model.state_dict().values(), twin.state_dict().values()):
        assert not torch.is_tensor(a) or torch.equal(a, b)


def test_the_real_backends_eager_steps_share_one_side_stream(monkeypatch):
    """(review gpucode #2) Each eager step made a new CUDA stream: PyTorch gives each stream its own cuBLAS
    workspace (32 MiB on Hopper), never freed, so a --cuda-graphs run's memory grew every epoch. One side stream,
    waiting on the current stream before each step and waited on after it."""
    made, events = [], []

    class Stream:
        def __init__(self, _device=None) -> None:
            made.append(self)

        def wait_stream(self, other) -> None:
            events.append(("wait", self, other))

    current = Stream()
    made.clear()
    monkeypatch.setattr(torch.cuda, "Stream", Stream)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda _d=None: current)
    monkeypatch.setattr(torch.cuda, "stream", lambda _s: contextlib.nullcontext())
    backend = CudaGraphs(torch.device("cuda"))
    for i in range(5):
        backend.eager(lambda i=i: events.append(("step", i)))
    assert len(made) == 1
    side = made[0]
    assert events == [e for i in range(5) for e in (("wait", side, current), ("step", i), ("wait", current, side))]


def test_the_real_backend_needs_a_cuda_device():
    with pytest.raises(ValueError, match="CUDA"):
        CudaGraphs(torch.device("cpu"))


def test_a_graphed_engine_run_equals_an_eager_run_over_the_same_batches(tmp_path, monkeypatch):
    """Through the engine (digits, 2 epochs, indicators on): --cuda-graphs captures the step once per epoch, runs
    each epoch's last partial batch eagerly and captures the evaluation once per run; it ends with the weights
    and metrics of an eager run (the same batches: --cuda-graphs no longer drops the partial one)."""
    cfg = dict(dataset="digits", epochs=2, device="cpu", seed=5, indicators="general")
    backends = []

    def stand_in(device):
        backends.append(ReplayByCalling(device))
        return backends[-1]

    monkeypatch.setattr(engine, "_graph_backend", stand_in)
    graphed = engine.train(TrainConfig(**cfg, cuda_graphs=True), tmp_path / "graphed", progress=False,
                           log=lambda _m: None)
    monkeypatch.undo()
    eager = engine.train(TrainConfig(**cfg), tmp_path / "eager", progress=False, log=lambda _m: None)
    full = 1437 // 64  # digits' train split at batch 64: 22 full batches and one of 29
    # the step: captured in each epoch, after 2 eager steps in the first and 1 in the second, the partial batch
    # eager in both; the test evaluation (360 images, one batch): captured once, replayed in both epochs
    assert backends[0].captured == 3 and backends[0].replays == (full - 2) + (full - 1) + 2
    assert backends[0].eager_steps >= 2 + 1 + 2
    keep = ("train_loss", "train_acc", "test_acc", "estimating_error", "gradient_stability")
    rows = [[{k: m[k] for k in keep} for m in rundir.read_metrics(tmp_path / d)] for d in ("graphed", "eager")]
    assert rows[0] == rows[1]
    a = torch.load(tmp_path / "graphed" / "last.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "eager" / "last.pt", weights_only=False)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) if torch.is_tensor(a[k]) else a[k] == b[k] for k in a)
    assert graphed["best_acc"] == eager["best_acc"]


@pytest.mark.parametrize("argv, message", [
    (["--device", "cpu"], "--cuda-graphs needs a CUDA device; this run is on cpu"),
    (["--compile"], "--cuda-graphs cannot be combined with --compile"),
    (["--amp", "fp16"], "--cuda-graphs cannot be combined with --amp fp16"),
])
def test_cuda_graphs_usage_errors(capsys, tmp_path, monkeypatch, argv, message):
    def no_data(*_a, **_kw):
        raise AssertionError("data loaded before the settings were checked")

    monkeypatch.setattr(engine, "load_datasets", no_data)
    assert main(["train", "--cuda-graphs", "--epochs", "1", "--out", str(tmp_path / "r"), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_cuda_graphs_refuse_torchrun(monkeypatch, tmp_path):
    for name, value in (("WORLD_SIZE", "2"), ("RANK", "0"), ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "29500")):
        monkeypatch.setenv(name, value)
    with pytest.raises(UsageError, match="cuda"):
        engine.train(TrainConfig(cuda_graphs=True, epochs=1), tmp_path / "r", progress=False, log=lambda _m: None)


def test_the_whole_epoch_benchmark_runs(tmp_path, monkeypatch):
    """benchmarks/train_epoch.py (which benchmarks/gpu_check.sh runs) on a tiny synthetic CIFAR-10,
    eager and with the graphed step. (Batches of 16, two full and a last one of 4 an epoch: each check needs a
    few steps and a partial batch, not a hundred images of resnet20's convolutions on the CPU.)"""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "train_epoch.py"
    spec = importlib.util.spec_from_file_location("train_epoch", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    monkeypatch.setattr(engine, "_graph_backend", ReplayByCalling)
    argv = ["--device", "cpu", "--threads", "1", "--images", "36", "--test-images", "16", "--batch-size", "16",
            "--epochs", "3", "--steps", "1", "--model", "resnet20_1w1a", "--json", str(tmp_path / "e.json")]
    splits = []
    real_split = engine.micro_batches
    monkeypatch.setattr(engine, "micro_batches", lambda *a: splits.append(real_split(*a)) or splits[-1])
    for extra in ([], ["--cuda-graphs"], ["--accumulate", "2"]):
        splits.clear()
        out = bench.main(argv + extra)
        # the engine's steps (bare and whole epochs) split each batch of 16 as asked, into 2 micro-batches of 8
        assert out["args"]["accumulate"] == (2 if extra[:1] == ["--accumulate"] else 1)
        if extra[:1] == ["--accumulate"]:
            steps = [sizes for sizes in splits if sum(sizes) == 16]  # (not the engine's check of a last batch)
            assert len(steps) > 3 and all(sizes == [8, 8] for sizes in steps), splits
        e = out["epoch"]  # the median of epochs 2 and 3 (the first pays for warm-up)
        assert e["epochs_timed"] == 2 and 0 < e["epoch_min_s"] <= e["epoch_s"] <= e["epoch_max_s"]
        # every image counts, the last partial batch's 4 too (graphed steps train it eagerly since 57528b4)
        assert out["epoch_images_per_s"] == pytest.approx(36 / e["epoch_s"])
        assert out["bare_step"]["images_per_s"] > 0
        # issue 11's figure: the whole epoch's images/s over the bare step's, and the path they ran through
        assert out["epoch_over_step"] == pytest.approx(out["epoch_images_per_s"] / out["bare_step"]["images_per_s"])
        assert out["kernel_path"] == engine.kernel_path(torch.device("cpu"))
        assert set(out["implied_hours"]) >= {"cifar10-resnet20-1w1a"}
        assert out["implied_hours"]["cifar10-resnet20-1w1a"] == pytest.approx(1000 * bench.full_epoch_s(e, 36, 16)
                                                                                 / 3600)
    assert (tmp_path / "e.json").is_file()
    # a tenth of the data: the steps ten times over, the evaluation five times over, the checkpoint once
    epoch = {"epoch_s": 3.0, "last_epoch_phases_s": {"training steps (all)": 1.0, "test evaluation": 1.0,
                                                     "checkpoint": 1.0}}
    assert bench.full_epoch_s(epoch, 5_000, 2_000) == pytest.approx(10.0 + 5.0 + 1.0)
    epoch["epoch_s"], epoch["last_epoch_phases_s"][bench.CAPTURE] = 3.5, 0.5  # graphed: the captures once too
    assert bench.full_epoch_s(epoch, 5_000, 2_000) == pytest.approx(10.0 + 5.0 + 1.0 + 0.5)
    with pytest.raises(SystemExit) as refused:  # as reste train refuses it: one line, status 2
        bench.main(argv + ["--cuda-graphs", "--accumulate", "2"])
    assert refused.value.code == 2


class _FakeCuda:
    """Just enough of torch.cuda's graph API to run CudaGraphs on the CPU, with the caching allocator's
    rule on memory pools: a capture may share a pool only while a graph captured into it is alive."""

    def __init__(self) -> None:
        self.use_count: dict[int, int] = {}
        self.next_id = 0
        fake = self

        class Graph:
            def __init__(self) -> None:
                self.pool = None

            def replay(self) -> None:
                pass

            def reset(self) -> None:
                fake.use_count[self.pool] -= 1

        self.Graph = Graph

    def graph_pool_handle(self) -> int:
        self.next_id += 1
        return self.next_id

    @contextlib.contextmanager
    def graph(self, graph, pool=None, stream=None, capture_error_mode="global"):
        if pool is None:
            pool = self.graph_pool_handle()
        elif pool in self.use_count and self.use_count[pool] == 0:
            raise RuntimeError("it->second->use_count > 0 INTERNAL ASSERT FAILED")
        self.use_count[pool] = self.use_count.get(pool, 0) + 1
        graph.pool = pool
        yield


def test_the_real_backend_captures_again_after_a_release(monkeypatch):
    """An epoch boundary releases the step's graph and captures a new one. Sharing the first graph's
    memory pool with the second failed on a GPU (the allocator refuses a pool whose graphs were all
    reset); each capture now takes its own pool."""
    fake = _FakeCuda()
    monkeypatch.setattr(torch.cuda, "CUDAGraph", fake.Graph)
    monkeypatch.setattr(torch.cuda, "graph", fake.graph)
    monkeypatch.setattr(torch.cuda, "graph_pool_handle", fake.graph_pool_handle)
    monkeypatch.setattr(torch.cuda, "device", lambda _d: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "Stream", lambda _d: object())
    backend = CudaGraphs(torch.device("cuda"))
    runs = []
    for _epoch in range(3):
        replay = backend.capture(lambda: runs.append(1), lambda: None)
        replay()
        backend.release(replay)
    assert len(runs) == 3 and all(n == 0 for n in fake.use_count.values())


@pytest.mark.parametrize("name, index", [("cuda", None), ("cuda:1", 1), ("cpu", None)])
def test_a_run_selects_only_an_indexed_cuda_device(monkeypatch, name, index):
    """--device cuda:1 makes GPU 1 current; a plain cuda is the current GPU, and torch.cuda.set_device
    refuses a device without an index (every --device cuda run failed at its start on a GPU)."""
    chosen = []

    def set_device(device):
        if torch.device(device).index is None:
            raise ValueError("Expected a torch.device with a specified index or an integer")
        chosen.append(torch.device(device).index)

    monkeypatch.setattr(torch.cuda, "set_device", set_device)
    engine.select_cuda_device(torch.device(name))
    assert chosen == ([] if index is None else [index])


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd"])
def test_an_optimizer_state_loads_where_this_run_keeps_it(optimizer):
    """A checkpoint saved without graphs, loaded into a run with them (Adam's capturable): the step count
    goes to the parameters' device (the meta device stands in for a GPU), not where it was saved; and
    the flag is this run's either way."""
    opts = graphable_optimizer_options(optimizer)

    def build(device, **extra):
        p = nn.Parameter(torch.ones(3, device=device))
        make = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}[optimizer]
        return p, make([p], lr=0.1, **extra)

    p, eager = build("cpu")
    p.grad = torch.ones(3)
    eager.step()
    saved = eager.state_dict()
    q, graphed = build("meta", **opts)
    load_optimizer_state(graphed, saved)
    assert graphed.param_groups[0].get("capturable") == opts.get("capturable")
    if not opts:
        return  # SGD: nothing is capturable
    assert graphed.state[q]["step"].device.type == "meta"

    back = {**saved, "param_groups": [{**g, "capturable": True} for g in saved["param_groups"]]}
    r, plain = build("cpu")  # and a graphed run's checkpoint resumed without graphs
    load_optimizer_state(plain, back)
    assert plain.param_groups[0]["capturable"] is False

    # a checkpoint loaded onto a GPU (map_location; meta stands in) has its step count there: a group that is
    # not capturable keeps it on the CPU, as Adam does (else it reads it back to the host at every step)
    # (meta tensors hold no data, so the copy to the CPU is seen to be tried, not done)
    on_gpu = graphed.state_dict()
    s, eager_gpu = build("meta")
    with pytest.raises(NotImplementedError, match="Cannot copy out of meta tensor"):
        load_optimizer_state(eager_gpu, on_gpu)
    assert eager_gpu.param_groups[0]["capturable"] is False


def test_an_adam_run_saved_capturable_resumes_on_the_cpu(tmp_path, monkeypatch):
    """A checkpoint of a graphed GPU run (Adam, capturable) resumed on a CPU without graphs trains on:
    Adam refuses capturable on the CPU, so the flag is this run's, not the checkpoint's."""
    from reste.checkpoint import load_checkpoint, save_checkpoint

    cfg = TrainConfig(dataset="digits", epochs=3, batch_size=64, seed=1, optimizer="adam", lr=1e-3)
    original = engine._Run.train_epoch

    def cut(self, epoch, *args):
        if epoch == 2:
            raise KeyboardInterrupt
        return original(self, epoch, *args)

    monkeypatch.setattr(engine._Run, "train_epoch", cut)
    with pytest.raises(KeyboardInterrupt):
        engine.train(cfg, tmp_path / "run", progress=False, log=lambda _m: None)
    monkeypatch.undo()
    last = tmp_path / "run" / "last.pt"
    ckpt = load_checkpoint(last)
    for group in ckpt["optimizer"]["param_groups"]:
        group["capturable"] = True  # as a run with --cuda-graphs saves it
    save_checkpoint(ckpt, last)
    assert load_checkpoint(last)["epoch"] == 2
    engine.resume(tmp_path / "run", progress=False, log=lambda _m: None)
    assert load_checkpoint(last)["epoch"] == 3


def test_cuda_device_makes_an_indexed_device_current_for_a_block():
    assert isinstance(engine.cuda_device(torch.device("cpu")), contextlib.nullcontext)
    assert isinstance(engine.cuda_device(torch.device("cuda")), contextlib.nullcontext)  # the current one already
    block = engine.cuda_device(torch.device("cuda", 1))  # (entered only on a GPU machine)
    assert isinstance(block, torch.cuda.device) and block.idx == 1


def test_graphed_evaluation_captures_each_shape_once_and_gives_the_eager_metrics():
    """The test evaluation with --cuda-graphs: each batch shape is warmed up, captured once and then
    replayed in every later evaluation; beyond ``shapes`` shapes it runs eagerly; the metrics are those
    of the eager evaluation, also after the weights changed between two evaluations."""
    from reste.cudagraph import GraphedForward

    torch.manual_seed(0)
    model = create("digits_1w1a", num_classes=10)
    g = torch.Generator().manual_seed(3)
    loader = [(torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)) for n in (32, 32, 7)]
    backend = ReplayByCalling()
    forward = GraphedForward(model, backend=backend, shapes=2)
    for _ in range(2):
        assert engine.evaluate(model, loader, torch.device("cpu"), forward=forward) == \
            engine.evaluate(model, loader, torch.device("cpu"))
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(-1.5)  # in place, as an optimizer step
    assert forward.captures == 2 and backend.eager_steps == 2 and backend.replays == 2 * 3
    assert forward(torch.randn(5, 1, 8, 8)).shape == (5, 10)  # a third shape: eager, nothing captured
    assert forward.captures == 2
    forward.release()
    assert forward(torch.randn(5, 1, 8, 8)).shape == (5, 10) and forward.captures == 3


def test_a_graphed_run_leaves_cuda_tensors_to_the_triton_kernels_and_gives_the_setting_back(monkeypatch):
    """(the H100 run of 2026-12-06) graphed, a step does no host work, and the Triton kernels' steps were 1% to 8%
    faster than the C++ nodes': under auto a --cuda-graphs run takes them, RESTE_CUDA_EXT=1 keeps the extension, and
    the caller's setting comes back after the run."""
    from reste import cuda_ext, fused

    monkeypatch.setattr(cuda_ext, "_STATE", ["cuda"])  # built and launched: what CUDA tensors take while asked for
    monkeypatch.setattr(cuda_ext, "_SMOKED", [True])
    fused.set_enabled(True)
    cuda = torch.device("cuda")
    try:
        cuda_ext.set_enabled("auto")
        with engine._torch_settings_kept():
            assert cuda_ext.leave_to_triton() and cuda_ext.mode() == "off"
            assert engine.kernel_path(cuda) != engine.CPP_NODES
        assert cuda_ext.mode() == "auto" and engine.kernel_path(cuda) == engine.CPP_NODES
        cuda_ext.set_enabled(True)
        with engine._torch_settings_kept():
            assert not cuda_ext.leave_to_triton() and engine.kernel_path(cuda) == engine.CPP_NODES
        assert cuda_ext.mode() == "on"
    finally:
        cuda_ext.set_enabled("auto")
        fused.set_enabled(None)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU (RESTE_TEST_DEVICE=cuda)")
def test_a_graphed_run_on_the_gpu_records_the_triton_kernels(tmp_path):
    """Under auto (the default; set here: gpu_check.sh runs its tests under RESTE_CUDA_EXT=0, where the run's choice
    would not show, review diff35) a graphed run takes the Triton kernels and gives auto back."""
    from reste import cuda_ext
    from reste.checkpoint import load_checkpoint

    saved = cuda_ext.setting()
    cuda_ext.set_enabled("auto")
    try:
        engine.train(TrainConfig(epochs=1, device="cuda", cuda_graphs=True), tmp_path / "run", progress=False,
                     log=lambda _m: None)
        assert load_checkpoint(tmp_path / "run" / "last.pt")["kernels"] == "Triton kernels"
        assert cuda_ext.mode() == "auto"
    finally:
        cuda_ext.restore_setting(saved)


def test_the_kernel_path_a_checkpoint_records_builds_nothing(monkeypatch):
    """(review diff18 #3) Each checkpoint and each resume records which path the estimators take: a --compile run,
    which never builds the C++ nodes at its start, built them at its first checkpoint, and recorded a path its steps
    did not take."""
    from reste import cuda_ext, fused

    monkeypatch.setattr(cuda_ext, "_loaded", lambda cuda: pytest.fail("the extension was built"))
    monkeypatch.setattr(cuda_ext, "_STATE", [])
    assert engine.kernel_path(torch.device("cuda")) != engine.CPP_NODES
    monkeypatch.setattr(cuda_ext, "_STATE", ["cuda"])  # built and launched (a run's start): what its steps take
    monkeypatch.setattr(cuda_ext, "_SMOKED", [True])
    cuda_ext.set_enabled("auto")
    fused.set_enabled(True)  # (whatever RESTE_FUSED the suite runs under)
    assert engine.kernel_path(torch.device("cuda")) == engine.CPP_NODES


def test_an_eager_gpu_run_is_told_about_cuda_graphs_or_the_cpp_nodes(monkeypatch):
    from reste import cuda_ext

    cuda = torch.device("cuda")
    monkeypatch.setattr(cuda_ext, "available", lambda: False)
    tip = engine.gpu_speed_tip(TrainConfig(), cuda, False)
    assert tip and "--cuda-graphs" in tip and "against 21.3 ms eager:" in tip
    monkeypatch.setattr(cuda_ext, "available", lambda: True)  # the eager figure of the path this run takes
    assert "against 12.0 ms eager through reste's C++ nodes" in engine.gpu_speed_tip(TrainConfig(), cuda, False)
    for config, device, distributed in ((TrainConfig(), torch.device("cpu"), False),
                                        (TrainConfig(cuda_graphs=True), cuda, False),
                                        (TrainConfig(compile=True), cuda, False)):
        assert engine.gpu_speed_tip(config, device, distributed) is None
    # where the graphs are refused (fp16, --accumulate, torchrun): why the C++ nodes are not used, where they are not
    monkeypatch.setattr(cuda_ext, "available", lambda: False)
    monkeypatch.setattr(cuda_ext, "error", lambda: "no CUDA toolkit was found (nvcc)")
    # (a Bop run was told to add --cuda-graphs, which Bop refuses: the suite on an H100)
    bop = TrainConfig(optimizer="bop", estimator="ste", scaling="none")
    for config, distributed in ((TrainConfig(amp="fp16"), False), (TrainConfig(accumulate=2), False),
                                (TrainConfig(), True), (bop, False)):
        tip = engine.gpu_speed_tip(config, cuda, distributed)
        assert tip and "C++ nodes are not used here (no CUDA toolkit was found (nvcc))" in tip
        assert "--cuda-graphs" not in tip
    cuda_ext.set_enabled(False)  # turned off: nothing to say
    assert engine.gpu_speed_tip(TrainConfig(amp="fp16"), cuda, False) is None
    cuda_ext.set_enabled("auto")
    monkeypatch.setattr(cuda_ext, "available", lambda: True)  # used: nothing to say
    assert engine.gpu_speed_tip(TrainConfig(amp="fp16"), cuda, False) is None


def test_the_graphed_evaluation_is_captured_again_each_epoch_for_an_estimator_with_its_own_forward():
    """(review gpurev #7) A built-in estimator's forward is sign, whatever its schedule: the evaluation graph is
    captured once per run. An estimator with a forward of its own (a plugin's) may read its schedule values, which
    a capture freezes: the engine then captures the evaluation again each epoch."""
    import reste
    from reste.estimators import STE

    class Soft(STE):  # (not registered: only the forward matters here)
        def forward(self, x):
            return torch.tanh(3.0 * x)

    model = create("digits_1w1a", num_classes=10)
    assert not engine._forward_reads_schedule(model)
    layer = next(m for m in model.modules() if getattr(m, "precision", 32) == 1)
    layer.input_estimator = Soft()
    assert engine._forward_reads_schedule(model)
    assert not engine._forward_reads_schedule(reste.binarize(nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4),
                                                                           nn.Linear(4, 2)), "dsq"))


@pytest.mark.parametrize("reads", [False, True])
def test_the_engine_captures_the_evaluation_once_or_each_epoch(tmp_path, monkeypatch, reads):
    """Through the engine (the stand-in backend, 2 epochs): the evaluation is captured once per run, or in each
    epoch where an estimator's forward may read its schedule."""
    backends = []

    def stand_in(device):
        backends.append(ReplayByCalling(device))
        return backends[-1]

    monkeypatch.setattr(engine, "_graph_backend", stand_in)
    monkeypatch.setattr(engine, "_forward_reads_schedule", lambda model: reads)
    engine.train(TrainConfig(dataset="digits", epochs=2, device="cpu", seed=5, cuda_graphs=True), tmp_path / "r",
                 progress=False, log=lambda _m: None)
    # the step: captured in each epoch (2); the evaluation: once, or once an epoch
    assert backends[0].captured == 2 + (2 if reads else 1)
