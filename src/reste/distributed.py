"""The helpers for running under ``torchrun``: who this process is, and the process group.

``torchrun`` starts one process per device and tells each its place in the environment
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``). :func:`init_distributed` reads it and joins
the default process group (NCCL on GPUs, gloo on CPUs); without ``torchrun`` it does
nothing and the process is rank 0 of 1. Every other module asks here: the engine (the
context of the run, the sums of the evaluation), :mod:`reste.data` (the shard of the
data each process reads), :mod:`reste.syncbn` (statistics over every process) and the
CLI (one stop line for all the processes; an error line from each process that fails, named by its rank
after the first; leaving the group at exit).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import threading
import time
from typing import Callable

import torch
import torch.distributed as dist
from torch import Tensor

from .errors import UsageError

#: the signals that stop a run after a checkpoint inside its epoch (preemption; Ctrl-C; a closed terminal or a
#: dropped ssh); the run's handler catches them (engine.StopRequest), the data-loading processes ignore them, and
#: no handler runs while a process waits for the others to join
STOP_SIGNALS = ("SIGTERM", "SIGUSR1", "SIGINT", "SIGHUP", "SIGBREAK")  # (SIGBREAK: Windows's Ctrl-Break)
#: the terminal's signals: left alone where this process ignores them (nohup ignores SIGHUP, a script's background
#: job SIGINT), so such a run keeps running when they come
_TERMINAL_SIGNALS = ("SIGINT", "SIGHUP")


def signal_text(signum: int, preemption: str = "") -> str:
    """How a stop line names a stop signal: ``SIGTERM`` (with ``preemption`` after it), ``Ctrl-C (SIGINT)``,
    ``SIGHUP (its terminal closed)``."""
    name = signal.Signals(signum).name
    return {"SIGINT": "Ctrl-C (SIGINT)", "SIGHUP": "SIGHUP (its terminal closed)",
            "SIGBREAK": "Ctrl-Break (SIGBREAK)"}.get(name, name + preemption)


def stop_signals() -> list[signal.Signals]:
    """The :data:`STOP_SIGNALS` this platform has, less a terminal signal this process ignores."""
    signals = []
    for name in STOP_SIGNALS:
        sig = getattr(signal, name, None)
        if sig is not None and not (name in _TERMINAL_SIGNALS and signal.getsignal(sig) == signal.SIG_IGN):
            signals.append(sig)
    return signals


def _no_stop() -> int:
    return 0


@contextlib.contextmanager
def _stop_signals_kill(stopped: Callable[[], int] = _no_stop):
    """The stop signals' default action (end the process) while the block waits in C++, where a Python
    handler cannot run: a process waiting for a rank that never joins (rank 0 refused the run folder)
    would otherwise ignore the launcher's SIGTERM until its SIGKILL, 30 s later.

    ``stopped()`` is the stop signal the run's handler caught before the block (0: none). That signal ends
    the process here, as it would have a moment later: the handler only noted it, for a checkpoint that
    comes after the join, and the process would wait for the group until the SIGKILL. (Rank 1 installs
    that handler 2 to 3 ms before its join; when rank 0 refused the folder at the same time, the launcher's
    SIGTERM could land in between.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, signal.SIG_DFL) for sig in stop_signals()}
    # after the switch: a signal from now on ends the process; one before it, the handler noted (signal.signal
    # runs the handler of one that came but was not yet handled before it changes the handler)
    signum = stopped()
    if signum in previous:
        signal.raise_signal(signum)  # its default action: the process ends here
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)

__all__ = ["Dist", "await_main", "env_rank", "env_world_size", "init_distributed", "job_token", "is_distributed",
           "launched_world", "one_process", "rank_and_world_size", "all_reduce", "leave_process_group"]


def env_rank() -> int:
    """This process's rank under torchrun (0 otherwise), known before the process group exists. A stray ``RANK``
    without a ``WORLD_SIZE`` above 1 (a job script's leftover, a pod that exports it) is a run of one process, as
    :func:`init_distributed` makes it: that process locks the run folder it writes (review dist #4)."""
    try:
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return 0
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def env_world_size() -> int:
    """The number of processes torchrun started (1 without torchrun). A job script's stray ``WORLD_SIZE`` (not a
    number, or without the ``RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` that torchrun sets beside it) is a
    :class:`UsageError`."""
    value = os.environ.get("WORLD_SIZE", "1")
    try:
        world = int(value)
    except ValueError:
        raise UsageError(f"WORLD_SIZE={value!r} is not a number: launch with torchrun, or unset it") from None
    if world > 1:
        for name in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
            if not os.environ.get(name, "").strip():
                raise UsageError(f"WORLD_SIZE={value} is set but {name} is not: launch with torchrun, or unset "
                                 "WORLD_SIZE")
        rank = os.environ["RANK"]
        if not rank.strip().isdigit() or int(rank) >= world:
            raise UsageError(f"RANK={rank!r} is not a process of WORLD_SIZE={value}: launch with torchrun, or "
                             "unset them")
    return world


def launched_world() -> int:
    """:func:`env_world_size` for a command that needs no process group: a job script's stray WORLD_SIZE (no
    torchrun) is 1 process, not an error (review rev13 #2)."""
    try:
        return env_world_size()
    except UsageError:
        return 1


def one_process(command: str, work: str) -> None:
    """Refuse ``command``, one process's work (``reste eval``, ``reste predict``), under torchrun, where each process
    would ``work`` and print its line (or write its file)."""
    if launched_world() > 1:
        raise UsageError(f"{command} runs in one process (under torchrun each would {work}): run it without torchrun")


#: the variables whose values name one torchrun job in each of its processes and no other job running at the same
#: time (its rendezvous listens on MASTER_ADDR:MASTER_PORT, which one job at a time can; the run id and the restart
#: round tell a job's later rounds apart)
_JOB_VARIABLES = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT")


def job_token() -> str:
    """One line that every process of this torchrun job computes alike and another job running meanwhile does not
    ("" without torchrun): rank 0 writes it in the lock of the run folder it takes (:mod:`reste.rundir`), so the
    other processes can tell their job's lock from another job's."""
    if env_world_size() <= 1:
        return ""
    return " ".join(f"{name}={os.environ.get(name, '')}" for name in _JOB_VARIABLES).replace("\n", " ")


def await_main(ready: Callable[[], bool], timeout: float, poll: float = 0.05) -> bool:
    """(A process other than rank 0, before the process group exists) wait until ``ready()`` (rank 0 did its part:
    took the run folder's lock) or ``timeout`` seconds passed (False). The stop signals keep their default action
    meanwhile: when rank 0 refuses and exits, the launcher's SIGTERM ends this process where it waits, so only rank
    0's line is printed."""
    end = time.monotonic() + timeout
    with _stop_signals_kill():
        while not ready():
            if time.monotonic() >= end:
                return False
            time.sleep(poll)
    return True


@dataclasses.dataclass
class Dist:
    """The torch.distributed context of this process (world_size 1 without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


@contextlib.contextmanager
def local_rank_first(d: Dist, needed: bool = True, stopped: Callable[[], int] = _no_stop):
    """Run the block on each node's local rank 0 first, then on its other processes (a ``--download`` into
    one folder: every process fetching the same archive at once would corrupt it). No-op in one process.
    ``stopped``: the stop signal the run caught so far (see :func:`_stop_signals_kill`)."""
    if not (needed and d.enabled):
        yield
        return
    if d.local_rank != 0:
        with _stop_signals_kill(stopped):  # waiting in C++: a failed download's SIGTERM from the launcher ends us
            try:
                dist.barrier()
            except RuntimeError:  # the first process failed (its own line says why) and left the group
                raise UsageError("the first process of this node could not prepare the data; see its error") from None
    yield
    if d.local_rank == 0:
        with _stop_signals_kill(stopped):
            dist.barrier()


def init_distributed(device: torch.device, stopped: Callable[[], int] = _no_stop) -> tuple[Dist, torch.device]:
    """Join the process group when launched by torchrun; this process's device.

    ``device`` is the device asked for; on CUDA each process takes the GPU of its
    ``LOCAL_RANK``. ``stopped()``: the stop signal the run's handler caught so far (0: none), which
    ends the process at the join (see :func:`_stop_signals_kill`).
    """
    world = env_world_size()
    if world <= 1:
        return Dist(), device
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        _import_before_the_group()
        with _stop_signals_kill(stopped):
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(rank, world, local), device


def _import_before_the_group() -> None:
    """Import ``torch.distributed.nn`` now, while there is no process group. Its functions take
    ``group=group.WORLD`` as a default argument, evaluated when the module is first imported; PyTorch
    imports it lazily (the first optimizer does, through ``torch._dynamo``), and imported after
    ``init_process_group`` those defaults hold the group itself, so ``destroy_process_group`` could
    not free it: a gloo group's threads then ran until the interpreter tore it down at exit, where a
    process was seen to abort now and then ("terminate called without an active exception")."""
    try:
        import torch.distributed.nn  # noqa: F401
    except ImportError:  # a build without it has no such defaults either
        pass


def is_distributed() -> bool:
    """True inside an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank_and_world_size() -> tuple[int, int]:
    """This process's rank and the number of processes of the initialised process group.

    Raises :class:`UsageError` when there is none (what ``distributed=True`` needs).
    """
    if not (dist.is_available() and dist.is_initialized()):
        raise UsageError(
            "distributed=True needs torch.distributed to be initialised first (launch with torchrun)"
        )
    return dist.get_rank(), dist.get_world_size()


class _AllReduceSum(torch.autograd.Function):
    """A sum over the processes that gradients flow through (the gradient is summed the same way).

    What ``torch.distributed.nn.functional.all_reduce`` did before it was deprecated.
    """

    @staticmethod
    def forward(ctx, tensor: Tensor) -> Tensor:  # type: ignore[override]
        out = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        out = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out)
        return out


def all_reduce(tensor: Tensor) -> Tensor:
    """The sum of ``tensor`` over every process, differentiable."""
    return _AllReduceSum.apply(tensor)


def leave_process_group() -> None:
    """Tear the process group down, if there is one, before the interpreter exits: a gloo group
    left alive can abort a process at exit ("terminate called without an active exception"). The
    group is freed here, with its threads, only if nothing else holds it (see
    ``_import_before_the_group``). Its own error (another process gone) is passed by: the command has said its
    line already."""
    if dist.is_available() and dist.is_initialized():
        with contextlib.suppress(Exception):
            dist.destroy_process_group()
