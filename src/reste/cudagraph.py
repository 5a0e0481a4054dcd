"""One CUDA graph per training step: forward, loss, backward and optimizer step replayed as one launch.

A binary network's eager step is hundreds of small kernels (sign, scale, the estimators'
backwards, BatchNorm, the optimizer's per-tensor updates); on a fast GPU their launches, not
their arithmetic, set the step time. :class:`GraphedStep` captures the whole step once and
then replays it for every batch of the same shape.

What a capture freezes, and how the engine keeps it right:

* Python scalars become kernel arguments of the captured kernels: the learning rate of each
  parameter group, and the estimators' schedule values (ReSTE's o, EDE's t, ...). Both move
  once per epoch in reste, so the engine calls :meth:`GraphedStep.invalidate` at every epoch
  start and the next step captures again (a few milliseconds, once per epoch).
* Shapes: a capture holds one batch shape. A batch of another shape (the last partial batch of
  an epoch) releases the graph and trains eagerly; the next step warms up and captures again,
  as after an epoch's :meth:`invalidate`. So no image is left out, and the last step of an epoch
  (the one the paper-mode indicators read) is the one an eager run takes.
* Addresses: the batch is copied into a static input tensor; the loss and the logits are
  read from static output tensors, valid until the next replay. Parameters, BatchNorm
  buffers and optimizer state are updated in place, as eager training does, so
  checkpoints, the equilibrium meter and evaluation read them as usual.

The first ``warmup`` steps run eagerly, on a side stream (they are real training steps: nothing
is thrown away), and one step after each later :meth:`invalidate`. They let lazy initialisation
happen outside the capture: Triton compiles its kernels, cuDNN picks algorithms, the optimizer
creates its momentum buffers. The step after them is captured and replayed, if its batch shape ran
eagerly before (else it runs eagerly too: an epoch's last partial batch right after the warm-up). The
eager steps share one side stream.

:class:`GraphedForward` does the same for the test evaluation's forward, once per batch shape and
run.

Not capturable, and refused by the training configuration: fp16 autocast (the GradScaler reads
the gradients on the host), torch.compile (use its own ``mode="reduce-overhead"``) and several
processes (DDP's all-reduce would have to be captured with them).

The capture itself goes through a small backend object, so the step logic runs on the CPU in
the tests with a stand-in that replays by calling the step again; :class:`CudaGraphs` is the
real one.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from .optim import member_states

__all__ = ["GraphedForward", "GraphedStep", "CudaGraphs", "graphable_optimizer_options", "load_optimizer_state"]


class CudaGraphs:
    """The real backend: eager warm-up steps on a side stream, then ``torch.cuda.graph`` capture."""

    def __init__(self, device: torch.device) -> None:
        if device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device, got {device}")
        self.device = device
        self.capture_stream: torch.cuda.Stream | None = None
        self.side_stream: torch.cuda.Stream | None = None

    def eager(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the side stream, after what the current stream holds and before what follows. One side
        stream for the run: each new stream gets a cuBLAS workspace of its own (32 MiB on Hopper) that is never
        given back, and a cache of blocks the other streams cannot reuse (review gpucode #2). The wait at the start
        also keeps the side stream from reusing memory of its earlier outputs that the current stream still reads."""
        if self.side_stream is None:
            self.side_stream = torch.cuda.Stream(self.device)
        side = self.side_stream
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            fn()
        torch.cuda.current_stream(self.device).wait_stream(side)

    def capture(self, fn: Callable[[], None], clear_grads: Callable[[], None]) -> Callable[[], None]:
        """Capture ``fn`` with the gradients cleared first: the captured backward then writes fresh
        gradients (into the graph's memory) at each replay instead of adding to old ones."""
        graph = torch.cuda.CUDAGraph()
        clear_grads()
        # On this device's own stream (torch's default capture stream lives on the current device), and
        # thread-local: a DataLoader's pin-memory thread may allocate pinned memory during the capture.
        # Each capture takes a private memory pool of its own (pool=None): a pool shared with an earlier
        # graph that release() has reset is refused by the caching allocator (an internal assert, seen
        # on an H200 with torch 2.11) while the gradients it wrote still hold its memory.
        with torch.cuda.device(self.device), torch.cuda.graph(graph, stream=self._stream(),
                                                               capture_error_mode="thread_local"):
            fn()
        return graph.replay

    def _stream(self) -> torch.cuda.Stream:
        if self.capture_stream is None:
            self.capture_stream = torch.cuda.Stream(self.device)
        return self.capture_stream

    def release(self, replay: Callable[[], None]) -> None:
        graph = getattr(replay, "__self__", None)
        if isinstance(graph, torch.cuda.CUDAGraph):
            graph.reset()


def graphable_optimizer_options(optimizer: str) -> dict[str, Any]:
    """Extra keywords an optimizer needs to be captured: Adam and AdamW keep their step count
    on the device (``capturable=True``); SGD needs nothing."""
    return {"capturable": True} if optimizer in ("adam", "adamw") else {}


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """``optimizer.load_state_dict(state)`` with each group's settings kept as this run built them, and
    Adam's step count where that keeps it on the host.

    The checkpoint brings the state (momentum, moments, step counts); the run brings the settings. torch's
    own ``load_state_dict`` takes the saved group's: a resume given another ``--weight-decay`` or
    ``--momentum`` (``--force``) would silently keep the old one, and a graphed run resumed without graphs
    would stay ``capturable``, which Adam refuses on the CPU. torch moves the step count to the parameters'
    device for a capturable group and leaves it where it was loaded otherwise; a checkpoint loaded onto a
    GPU has it there, and a group that is not capturable then reads it back to the host twice a parameter
    and step. Such a group keeps it on the CPU, as torch's own Adam does."""
    members = getattr(optimizer, "optimizers", None)  # a reste.optim.Composite: each member its own state
    if members is not None:
        for member, member_state in zip(members, member_states(optimizer, state)):
            load_optimizer_state(member, member_state)
        return
    groups = optimizer.param_groups
    saved = state.get("param_groups", [])
    if len(saved) == len(groups):  # else load_state_dict says why
        saved = [{**s, **{k: v for k, v in g.items() if k != "params"}} for s, g in zip(saved, groups)]
        state = {**state, "param_groups": saved}
    optimizer.load_state_dict(state)
    for group in optimizer.param_groups:
        if "capturable" not in group or group["capturable"] or group.get("fused"):
            continue
        for p in group["params"]:
            step = optimizer.state.get(p, {}).get("step")
            if isinstance(step, torch.Tensor) and step.device.type != "cpu":
                optimizer.state[p]["step"] = step.to("cpu", torch.float32)


class GraphedStep:
    """A training step (forward, cross-entropy, backward, ``optimizer.step()``) replayed from
    a CUDA graph.

    Args:
        model: the network (its forward is captured).
        optimizer: its optimizer (for Adam/AdamW, built with ``capturable=True``).
        autocast: a function returning the autocast context of the step; it must not cache
            casts across the capture (``torch.autocast(..., cache_enabled=False)``).
        backend: :class:`CudaGraphs` for the model's device, or a stand-in with the same
            ``eager(fn)``, ``capture(fn, clear_grads) -> replay`` and ``release(replay)``.
        warmup: eager steps before the first capture (>= 1). Before each later capture one eager
            step is enough: Triton has compiled, cuDNN has chosen, the optimizer has its state.

    Calling it with a batch trains on that batch and returns ``(loss, logits)``: the loss as
    a float32 scalar tensor and the logits, both on the device, without a host sync. They
    are overwritten by the next call; copy what must outlive it.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, *,
                 autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
                 backend: Any = None, warmup: int = 2) -> None:
        if warmup < 1:
            raise ValueError(f"warmup must be >= 1 (lazy initialisation cannot be captured), got {warmup}")
        self.model, self.optimizer, self.autocast, self.warmup = model, optimizer, autocast, warmup
        self.backend = backend
        self.captures = 0  # how many times the step was captured (once per invalidate)
        self._replay: Callable[[], None] | None = None
        self._eager_left = warmup
        self._x: torch.Tensor | None = None
        self._y: torch.Tensor | None = None
        self._out: tuple[torch.Tensor, torch.Tensor] | None = None
        self._ran: set[tuple] = set()  # the batch shapes that ran eagerly: only those are captured

    def invalidate(self) -> None:
        """Forget the captured graph: the next steps warm up and capture again. Call it whenever
        a Python scalar of the step changed (learning rate, an estimator's schedule)."""
        if self._replay is not None:
            self.backend.release(self._replay)
        self._replay, self._out = None, None
        self._eager_left = self.warmup if self.captures == 0 else 1

    def _body(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with self.autocast():
            logits = self.model(x)
            loss = F.cross_entropy(logits.float(), y)
        loss.backward()
        self.optimizer.step()
        return loss.detach(), logits.detach()

    def _fits(self, images: torch.Tensor, target: torch.Tensor) -> bool:
        """Whether the static tensors of the capture take this batch."""
        return (self._x is not None and self._x.shape == images.shape and self._x.stride() == images.stride()
                and self._x.dtype == images.dtype and self._y.shape == target.shape)

    def __call__(self, images: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self._replay is not None and not self._fits(images, target):
            self.invalidate()  # another shape (an epoch's last partial batch): trained eagerly, captured again later
        shape = (tuple(images.shape), images.stride(), images.dtype, tuple(target.shape))
        # a shape is captured only once it ran eagerly: an epoch's last partial batch right after the warm-up (an
        # epoch of warmup + 1 batches, or a resumed one with so many left) would have cuDNN choose its algorithms
        # and Triton compile inside the capture (review gpucode #1)
        if self._replay is None and (self._eager_left > 0 or shape not in self._ran):
            self._eager_left = max(0, self._eager_left - 1)
            self._ran.add(shape)
            result: list[tuple[torch.Tensor, torch.Tensor]] = []

            def eager_step() -> None:
                self.optimizer.zero_grad(set_to_none=True)
                result.append(self._body(images, target))

            self.backend.eager(eager_step)
            return result[0]
        if not self._fits(images, target):
            self._x, self._y = torch.empty_like(images), torch.empty_like(target)
        self._x.copy_(images)
        self._y.copy_(target)
        if self._replay is None:
            def captured_step() -> None:
                self._out = self._body(self._x, self._y)

            self._replay = self.backend.capture(captured_step, lambda: self.optimizer.zero_grad(set_to_none=True))
            self.captures += 1
        self._replay()
        return self._out


class GraphedForward:
    """A model's evaluation forward (``model(x)`` under ``torch.no_grad``) replayed from CUDA graphs.

    An eval batch of a binary network is, like a training step, hundreds of small launches. Unlike
    a training step it reads no Python scalar that moves during training: the estimators' forward
    is sign whatever their schedule, the weights' scales are computed from the weights at each
    replay, and the parameters and BatchNorm statistics are updated in place. So each batch shape
    (a full batch and the last partial one) is captured once per run and replayed in every epoch's
    evaluation. A new shape is first run eagerly (warm-up), then captured; at most ``shapes``
    shapes are kept, and others run eagerly.

    Args:
        model: the network, already in eval mode when called.
        autocast: as for :class:`GraphedStep` (no cast cache).
        backend: :class:`CudaGraphs` or a stand-in with ``eager``, ``capture`` and ``release``.
        shapes: how many input shapes get a graph.

    Calling it returns the logits in a static tensor, overwritten by the next call of the same
    shape: use them (or enqueue what reads them) before the next call.
    """

    def __init__(self, model: nn.Module, *, autocast: Callable[[], contextlib.AbstractContextManager]
                 = contextlib.nullcontext, backend: Any = None, shapes: int = 2) -> None:
        self.model, self.autocast, self.backend, self.shapes = model, autocast, backend, shapes
        self.captures = 0
        self._graphs: dict[tuple, tuple[torch.Tensor, list[torch.Tensor], Callable[[], None]]] = {}

    def _eager(self, images: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            return self.model(images)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        key = (tuple(images.shape), images.stride(), images.dtype, images.device)
        entry = self._graphs.get(key)
        if entry is None:
            if len(self._graphs) >= self.shapes:
                return self._eager(images)
            static = images.clone()
            self.backend.eager(lambda: self._eager(static))  # cuDNN picks its algorithms outside the capture
            out: list[torch.Tensor] = []

            def forward() -> None:
                out[:] = [self._eager(static)]

            replay = self.backend.capture(forward, lambda: None)
            self.captures += 1
            entry = self._graphs[key] = (static, out, replay)
        static, out, replay = entry
        static.copy_(images)
        replay()
        return out[0]

    def release(self) -> None:
        """Drop every captured graph (their memory goes back once their outputs are unused)."""
        for _static, _out, replay in self._graphs.values():
            self.backend.release(replay)
        self._graphs.clear()
