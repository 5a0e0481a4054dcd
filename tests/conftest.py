"""Fixtures shared by several test modules."""

from __future__ import annotations

import contextlib
import functools
import os
from typing import Iterator

import pytest

# The suite checks what every machine computes alike, the CPU path. On a GPU machine a run's default device,
# "auto", would train on the GPU, where cuDNN's autotuner may round a resumed or repeated run apart from the first
# (README: "cuDNN's autotuner"): the 120 tests that compare runs bit for bit, or that expect a CPU run, failed there
# (an H100, 2026-12-06: benchmarks/logs/2026-12-06-h100). So the GPU is hidden from the tests and from every process
# they start, before anything asks CUDA for it. RESTE_TEST_DEVICE=cuda shows it, and then runs the tests marked
# `gpu` alone (benchmarks/gpu_check.sh does so).
GPU_RUN = os.environ.get("RESTE_TEST_DEVICE", "").strip().lower().startswith("cuda")
if not GPU_RUN:
    os.environ["CUDA_VISIBLE_DEVICES"] = ""

import torch  # noqa: E402  (after the line above: torch reads it when CUDA is first asked for)


def pytest_collection_modifyitems(config, items) -> None:
    """Under RESTE_TEST_DEVICE=cuda, the tests not marked ``gpu`` are skipped: they expect the CPU path."""
    if not GPU_RUN:
        return
    skip = pytest.mark.skip(reason="RESTE_TEST_DEVICE=cuda runs the tests marked gpu alone; the others check the "
                                   "CPU path: run them without it")
    for item in items:
        if item.get_closest_marker("gpu") is None:
            item.add_marker(skip)


def pytest_report_header(config) -> str:
    if GPU_RUN:
        return "reste: RESTE_TEST_DEVICE=cuda: the tests marked gpu alone, on the GPU"
    return "reste: the GPU is hidden (CUDA_VISIBLE_DEVICES=''); RESTE_TEST_DEVICE=cuda runs the tests marked gpu on it"


def pytest_configure(config) -> None:
    """RESTE_TEST_DEVICE=cuda where torch sees no GPU is refused: every test would be skipped, and the run would
    pass having checked nothing (review diff35). Under pytest-xdist, each worker's torch takes its share of the
    cores: two workers of two threads each on two cores wait on each other's threads (a test of 4 s took 24 s)."""
    if GPU_RUN and not torch.cuda.is_available():
        hidden = os.environ.get("CUDA_VISIBLE_DEVICES")
        raise pytest.UsageError("RESTE_TEST_DEVICE=cuda, but torch sees no GPU here"
                                + (f" (CUDA_VISIBLE_DEVICES={hidden!r})" if hidden is not None else "")
                                + ": the tests marked gpu would all be skipped; run on a GPU, or without it")
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        share = max(1, (os.cpu_count() or 1) // workers)
        torch.set_num_threads(share)
        # The processes a test starts (python -m reste, benchmark scripts, study scripts, DataLoader workers) take
        # the same share unless the test or the environment says otherwise: without it each took every core
        # (OMP_NUM_THREADS unset, as in CI) beside the other worker's tests, and both waited on each other's threads.
        # A test that asks for a count (--threads N, OMP_NUM_THREADS in its env=) still gets it.
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ.setdefault(name, str(share))


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One torch thread for a test (like child processes run with OMP_NUM_THREADS=1: the same sums)."""
    with _torch_threads(1):
        yield


@pytest.fixture(scope="module")
def one_thread_module() -> Iterator[None]:
    """One torch thread for a whole module: small tensors run faster, much faster on a shared machine."""
    with _torch_threads(1):
        yield


@pytest.fixture
def command(capsys):
    """``command("train", ..., cwd=FOLDER)``: ``reste ARGS`` run in this process as a new process would run it
    (``cli_checks.run_as_new_process``), seconds cheaper than a subprocess."""
    from cli_checks import run_as_new_process

    return functools.partial(run_as_new_process, capsys)


@pytest.fixture(autouse=True)
def _switches_follow_the_environment() -> Iterator[None]:
    """reste.fused and reste.cuda_ext read RESTE_FUSED / RESTE_CUDA_EXT once and keep them; a test that
    changes either (monkeypatch, set_enabled) must not leave its value to the next test. Set up before
    the test's own fixtures, this is torn down after them, once monkeypatch has restored the environment."""
    from reste import cuda_ext, fused

    yield
    fused.set_enabled(None)
    cuda_ext.set_enabled(None)


@pytest.fixture
def isolated() -> Iterator[None]:
    """The registries (estimators, models, data sets) and the loaded plugins as they were before the test; plugin
    modules the test imported are forgotten after it (``cli_checks.registries_kept``)."""
    from cli_checks import registries_kept

    with registries_kept():
        yield


@pytest.fixture
def linear_digits(isolated) -> str:
    """The name of a digits model of two linear layers (the second binary), registered for the test: where a test
    of the loop needs steps, not convolutions (``--amp fp16``'s are emulated on the CPU, seconds a step)."""
    from torch import nn

    from reste.models import register_model

    @register_model(dataset="digits")
    def linear_digits_test(*, num_classes: int, conv) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), conv.linear(32, num_classes))

    return "linear_digits_test"


@pytest.fixture(scope="module")
def digits_checkpoint(tmp_path_factory):
    """A checkpoint of an untrained digits_1w1a, as reste train writes one (the export tests share it)."""
    import torch

    from reste import models
    from reste.checkpoint import save_checkpoint

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "d.pt"
    save_checkpoint({"model_name": "digits_1w1a", "model_options": {"num_classes": 10},
                     "model": models.create("digits_1w1a").eval().state_dict(), "dataset": "digits", "epoch": 1,
                     "best_acc": 50.0, "config": {"dataset": "digits"}, "metrics": {"epoch": 1, "test_acc": 48.5}},
                    path)
    return path
