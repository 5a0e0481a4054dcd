"""Fixtures shared by several test modules."""

from __future__ import annotations

import contextlib
from typing import Iterator

import pytest
import torch


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


@pytest.fixture(autouse=True)
def _switches_follow_the_environment() -> Iterator[None]:
    """reste.fused and reste.cuda_ext read RESTE_FUSED / RESTE_CUDA_EXT once and keep them; a test that
    changes either (monkeypatch, set_enabled) must not leave its value to the next test. Set up before
    the test's own fixtures, this is torn down after them, once monkeypatch has restored the environment."""
    from reste import cuda_ext, fused

    yield
    fused.set_enabled(None)
    cuda_ext.set_enabled(None)
