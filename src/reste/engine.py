"""The training loop: config -> data -> model -> epochs -> run directory.

``train(config, out=...)`` runs a whole training and ``resume(run_dir)``
continues one (whether it can, and with which settings: ``reste.resumption``). A run
directory (its files, their reading and writing: ``reste.rundir``) holds

    config.json     the resolved TrainConfig
    metrics.jsonl   one JSON object per finished epoch
    last.pt         checkpoint after the last finished epoch (written atomically)
    best.pt         checkpoint of the epoch with the best test top-1

Everything a resumed run needs is in ``last.pt``: model (with the estimator
schedule state), optimizer, epoch, best accuracy, indicator history and RNG
states. The learning rate and the estimator schedule are pure functions of the
epoch, and the data order of epoch e depends only on (seed, e), so a resumed run
ends with exactly the weights of an uninterrupted one (on CPU).

The run directory is locked (``reste.rundir``) for the whole run. An epoch ends
with three writes, in this order: the metrics line, ``last.pt``, then ``best.pt``
(the same bytes as ``last.pt``, when the epoch is the best). Resume keeps the
metrics lines of the epochs ``last.pt`` holds and rewrites ``best.pt`` from
``last.pt`` when a crash came between the two, so after any crash and a resume the
four agree. SIGTERM and SIGUSR1 (and ``--save-every``) write ``last.pt`` inside an
epoch, with the number of batches done; resume skips those batches and continues.
With ``--keep-top K`` the epoch's copy in ``top/`` and the removal of the copies that
dropped out of the K best come after ``best.pt`` (``reste.rundir.keep_top``, which resume
runs again); ``--tensorboard`` logs the epoch last (``reste.integrations.tensorboard``).

Under ``torchrun`` (WORLD_SIZE > 1) the model is wrapped in
DistributedDataParallel, BatchNorm is synchronised (``sync_bn``: nn.SyncBatchNorm on
GPUs, reste.syncbn.ProcessGroupBatchNorm on CPUs), each process
reads its shard of the training set, and only rank 0 logs and writes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import random
import signal
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import checkpoint as ckpt_io
from . import models, plugins, resumption
from .config import (AMP_MODES, OPTIMIZERS, PRESETS, TrainConfig, as_recorded, canonical_estimator,
                     check_data_path, check_threads, check_worker_count, check_workers, config_from_preset,
                     default_workers, device_named, get_preset, max_threads, binarization_text, optimizer_text)
from .datasets import get_spec
from .data import check_classes, data_device, default_read_from, load_datasets, make_loaders
from .distributed import await_main, env_rank, env_world_size, init_distributed, is_distributed, job_token, \
    local_rank_first, signal_text, stop_signals
from .errors import ModelOptionError, UsageError, one_line, option, print_line, stderr_is_terminal, usable_device
from .hparams import outside_reste
from .indicators import RUN_LEVEL, EquilibriumMeter, amp_scale, amp_skipped, saved_measure
from .cudagraph import CudaGraphs, GraphedForward, GraphedStep, graphable_optimizer_options, load_optimizer_state
from .integrations.tensorboard import TensorBoardLog, check as check_tensorboard
from .layers import binary_layers, estimators_of, eval_mode, model_device, set_progress
from .optim import Bop, Composite, split_binary
from .checkpoint import load_checkpoint, model_from_checkpoint, state_dict_error
from .export.format import refuse_packed
from .rundir import (CONFIG, DIVERGED, METRIC_FIELDS, METRICS, FolderGone, RunDirectory, append_metrics, recipe_free,
                     best_checkpoint, check_has_checkpoint, check_kept, forget_divergence, forget_failure,
                     held_by, holds_run, keep_top, last_checkpoint, other_run, read_metrics, record_divergence,
                     repair_best, require_run_path,
                     restore_config, resume_command, run_config, saved_config, schedule_fields, start_metrics,
                     truncate_metrics, write_config)
from .schedules import learning_rate
from .wording import LINE_EVERY, batchnorm_across, count, duration, gist, spans, split_batch
from .syncbn import ProcessGroupBatchNorm
_graph_backend = CudaGraphs  # what --cuda-graphs captures with (the tests put a CPU stand-in here)
_SYNC_STEPS = 10  # with several processes, they agree on a mid-epoch checkpoint every this many steps
_FINITE_EVERY = 1.0  # seconds between one process's checks that its loss stayed finite (each waits for the device)


SKIPS_IN_A_ROW = 10  # steps fp16's loss scaler skipped in a row (its scale down 1024-fold) that stop a run as diverged
_NORM_STATS = ("running_mean", "running_var")  # the buffers training moves (BatchNorm's): not finite, diverged


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the message names the epoch and step (1-based), also kept as attributes."""

    def __init__(self, message: str, epoch: int | None = None, step: int | None = None) -> None:
        super().__init__(message)
        self.epoch, self.step = epoch, step


class Preempted(Exception):
    """A stop signal arrived; the run saved ``last.pt`` at the current step. ``signum`` names it."""

    def __init__(self, message: str, signum: int, kept: str = "") -> None:
        super().__init__(message)
        self.signum = signum
        self.kept = kept  # the message without how to go on, which train_or_resume words as itself

    def run_again(self) -> None:
        """Say "run the same command again" (``reste train --auto-resume``, ``train_or_resume``), not --resume."""
        if self.kept:
            again = option("run the same command again to continue", "call train_or_resume again to continue")
            self.args = (f"{self.kept}: {again}",)

    def __reduce__(self) -> tuple[Any, ...]:  # pickled from a sweep's worker process to the sweep
        return type(self), (str(self), self.signum, self.kept)


# ----------------------------------------------------------------------- setup


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def pick_device(name: str, present: bool = True, on_cpu: str = "use --device cpu") -> torch.device:
    """The device ``name`` (auto, cpu, cuda, cuda:N) names; refused where it is unknown, not supported, or (``present``)
    not on this machine; ``on_cpu``: the refusal's remedy, training on the CPU, as the caller's flags say it."""
    name = name.strip().lower() if isinstance(name, str) else name  # (CPU, Cuda:1: names in any case)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = device_named(name, on_cpu)
    if not present:
        return device
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device {name!r} requested but CUDA is not available; {on_cpu}")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        n = torch.cuda.device_count()
        which = "cuda:0); pick it" if n == 1 else f"cuda:0 to cuda:{n - 1}); pick one of them"
        raise UsageError(f"device {name!r} requested but this machine has {n} CUDA device{'s' * (n != 1)} ({which}")
    return device


def select_cuda_device(device: torch.device) -> None:
    """Make ``cuda:N`` the current CUDA device, so that kernels launch and graphs capture on it. A plain
    ``cuda`` (no index) means the current device already: ``torch.cuda.set_device`` refuses it."""
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)


def cuda_device(device: torch.device) -> contextlib.AbstractContextManager:
    """``cuda:N`` the current CUDA device inside the block, as kernels launch on the current one (the
    caller's is restored after); for any other device, nothing."""
    if device.type == "cuda" and device.index is not None:
        return torch.cuda.device(device)
    return contextlib.nullcontext()


def build_model(config: TrainConfig, num_classes: int) -> nn.Module:
    return models.create(config.model, num_classes, **estimator_settings(config), **config.model_options)


def estimator_settings(config: TrainConfig) -> dict[str, Any]:
    """How the binary layers are built: ``models.create``'s keywords, as a checkpoint stores them."""
    return {key: getattr(config, key) for key in ckpt_io.ESTIMATOR_KEYS}


def set_rates(optimizer: torch.optim.Optimizer | Composite, lr: float, config: TrainConfig) -> None:
    """An epoch's rates: ``lr`` in every group; Bop's gamma follows the same schedule, ``bop_gamma * lr / --lr``
    (the paper decays it as the learning rate)."""
    for opt in getattr(optimizer, "optimizers", [optimizer]):
        for group in opt.param_groups:
            if isinstance(opt, Bop):
                group["gamma"] = bop_rate(config, lr)
            else:
                group["lr"] = lr


def bop_rate(config: TrainConfig, lr: float) -> float:
    """Bop's gamma in an epoch at learning rate ``lr``: ``--bop-gamma`` scaled as ``lr`` is of ``--lr``."""
    return config.bop_gamma * lr / config.lr


def build_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer | Composite:
    """The run's optimizer over ``model``'s parameters; for bop a :class:`reste.optim.Composite` of Bop over the
    binary weights and Adam (``--lr``, ``--weight-decay``) over the rest."""
    params = model.parameters()
    extra = graphable_optimizer_options(config.optimizer) if config.cuda_graphs else {}
    if config.optimizer == "bop":
        binary, others = split_binary(model)
        return Composite(Bop(binary, gamma=config.bop_gamma, threshold=config.bop_threshold),
                         torch.optim.Adam(others, lr=config.lr, weight_decay=config.weight_decay))
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay,
                               **extra)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay, **extra)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, **extra)
    raise UsageError(f"unknown optimizer {config.optimizer!r}; valid: {', '.join(OPTIMIZERS)}")


# ------------------------------------------------------------------ evaluation


def _accuracy_counts(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    k = min(5, logits.shape[1])
    top = logits.topk(k, dim=1).indices
    hits = top.eq(target[:, None])
    return hits[:, 0].sum(), hits.any(dim=1).sum()


class EvaluationStopped(Exception):
    """:func:`evaluate` left early: its ``stop()`` said so between two batches."""


@torch.no_grad()
def _evaluate_batches(model: nn.Module, loader: Any, device: torch.device, amp: str, channels_last: bool,
                      forward: Callable[[torch.Tensor], torch.Tensor] | None, bar: Any,
                      sums: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
                      stop: Callable[[], bool] | None = None, log: Callable[[str], None] | None = None
                      ) -> tuple[int, int]:
    """The loop of :func:`evaluate`: adds each batch's loss and top-1/top-5 counts to ``sums``; returns the
    number of images and of the model's classes (its outputs). :class:`EvaluationStopped` where ``stop()`` is true
    before a batch. ``log``: a line every STEP_LINE_EVERY seconds (where no bar is drawn: a log file)."""
    loss_sum, top1, top5 = sums
    n = classes = 0
    since, n_since, total = time.monotonic(), 0, len(loader)
    for i, (images, target) in enumerate(loader):
        if stop is not None and stop():
            raise EvaluationStopped
        images, target = _to_device(images, target, device, channels_last)
        if forward is not None:
            logits = forward(images)
        else:
            with _autocast(device, amp):
                logits = model(images)
        loss_sum += F.cross_entropy(logits.float(), target, reduction="sum")
        c1, c5 = _accuracy_counts(logits, target)
        classes = logits.shape[1]
        top1 += c1
        top5 += c5
        n += target.numel()
        if bar is not None:
            bar.update()
        elif log is not None and time.monotonic() - since >= STEP_LINE_EVERY and i < total - 1:
            rate = (n - n_since) / (time.monotonic() - since)
            world = torch.distributed.get_world_size() if is_distributed() else 1
            log(f"  evaluating: batch {i + 1}/{total}  ({shard_rate(rate, world)})")
            since, n_since = time.monotonic(), n
    return n, classes


@torch.no_grad()
def evaluate(model: nn.Module, loader: Any, device: torch.device, amp: str = "none",
             channels_last: bool = False, forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
             progress: bool = False, stop: Callable[[], bool] | None = None,
             log: Callable[[str], None] | None = None) -> dict[str, float]:
    """Test loss, top-1 and top-5 accuracy (%) of ``model`` on ``loader`` (top-5 None for a model of 5 classes or
    fewer, where it is 100% by definition). ``forward(images)``, where given, computes the logits instead of
    ``model`` under autocast (a :class:`GraphedForward`);
    ``progress``: a bar over the batches; ``stop()``, asked before each batch (one process only): true ends it
    with :class:`EvaluationStopped`; ``log``: where no bar is drawn, a line every few minutes (a long evaluation
    into a log file said nothing). The model is evaluated in eval mode, then each module is back in its own mode
    (a caller's training loop goes on training: review api #5)."""
    amp = "none" if amp is None else amp
    if amp not in AMP_MODES:  # (review apifuzz1: None, "fp32" or "float32" ran the whole evaluation in fp16)
        raise UsageError(f"evaluate: unknown amp {amp!r}; valid: {', '.join(AMP_MODES)} (or None: none)")
    # (a device's name, as the other entry points take it, failed at autocast's device.type)
    device = usable_device("evaluate", device, "a torch.device, or 'cpu'")
    where = model_device(model) if isinstance(model, nn.Module) else None
    if where is not None and where.type != device.type:  # (torch's own error came from the first conv: gpuread2)
        raise UsageError(f"evaluate: the model is on {where} and the batches go to {device}; move the model "
                         f"(model.to({str(device)!r})) or pass device={str(where)!r}")
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    top1 = torch.zeros((), device=device, dtype=torch.long)
    top5 = torch.zeros((), device=device, dtype=torch.long)
    with _progress(len(loader), "evaluating", progress) as bar, eval_mode(model):
        drawn = _drawn(bar)
        n, classes = _evaluate_batches(model, loader, device, amp, channels_last, forward, bar if drawn else None,
                                       (loss_sum, top1, top5), None if is_distributed() else stop, log)
    counts = torch.stack([loss_sum, top1.double(), top5.double(), torch.tensor(float(n), device=device,
                                                                                dtype=torch.float64)])
    if is_distributed():  # each process evaluated its shard (make_loaders(distributed=True)): add them up
        torch.distributed.all_reduce(counts)
    loss_sum, top1, top5, n = counts.tolist()
    if n == 0:
        raise UsageError("the test set is empty; check --data-path")
    # top-5 of 5 classes or fewer holds every image: no figure (a 3-class folder printed "top5 100.00")
    return {"loss": loss_sum / n, "top1": 100.0 * top1 / n, "top5": 100.0 * top5 / n if classes > 5 else None}


def evaluate_checkpoint(path: str | os.PathLike, *, data_path: str | None = None, batch_size: int | None = None,
                        device: str = "auto", workers: int | None = None, amp: str | None = None,
                        download: bool = False, progress: bool = False,
                        log: Callable[[str], None] | None = None, threads: int | None = None) -> dict[str, Any]:
    """Evaluate a checkpoint on its data set's test split; returns the metrics and the stored ones.
    ``log``: without the bar, a line every few minutes of a long evaluation. ``threads``: torch's CPU threads on
    the CPU (by default the run's own, which reproduces its logged accuracy to the bit; another count may round a
    near-tie pre-activation the other way).

    ``amp`` is the autocast of the evaluation: by default the run's own (``--amp``), so the
    result reproduces the test accuracy logged during training; ``"none"`` evaluates in float32.
    ``download`` fetches the data set's files first where it can (torchvision), as training does.
    ``workers``: DataLoader processes for a data set read from files (by default one per usable CPU, up to 8).
    """
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise UsageError(f"--batch-size must be a positive integer, got {batch_size!r}")
    check_worker_count(workers)
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)):
        raise UsageError(f"--threads must be a whole number, got {threads!r}")
    check_threads(threads)
    check_has_checkpoint(path)
    refuse_packed(path, "evaluate")
    ckpt = load_checkpoint(path)
    config = TrainConfig.from_saved(ckpt["config"])
    try:
        get_spec(config.dataset)
    except UsageError as err:  # a plugin's data set: the run recorded the module that registers it
        missing = plugins.not_loaded(config.plugins if isinstance(config.plugins, list) else None)
        if missing:
            raise ckpt_io.pass_the_plugins(err, missing) from None
        raise
    check_data_path(config.dataset, data_path, download)
    check_workers(config.dataset, workers)
    workers = default_workers(config.dataset) if workers is None else workers
    amp = config.amp if amp is None else amp
    if amp not in AMP_MODES:
        raise UsageError(f"unknown --amp {amp!r}; valid: {', '.join(AMP_MODES)}")
    dev = pick_device(device)
    if amp == "fp16" and dev.type == "cpu":
        print("reste: warning: --amp fp16 on the CPU is emulated and several times slower than float32; "
              "use --amp bf16 or none", file=sys.stderr)
    model = model_from_checkpoint(ckpt, dev)
    _, test_ds, info = load_datasets(config.dataset, data_path or config.data_path, download=download, train=False)
    check_classes(ckpt["model_options"]["num_classes"], ckpt.get("classes"), info, data_path or config.data_path)
    _, test_loader = make_loaders(None, test_ds, batch_size=config.batch_size,
                                  eval_batch_size=batch_size or config.eval_batch_size, workers=workers,
                                  seed=config.seed)
    if config.channels_last:  # the run's layout and (on the CPU) thread count: the logged numbers to the bit
        model = model.to(memory_format=torch.channels_last)
    with _torch_settings_kept(), cuda_device(dev):
        tune_convolutions(dev)
        threads = threads or config.threads
        if dev.type == "cpu" and threads:
            torch.set_num_threads(min(threads, max_threads()))
        result = evaluate(model, test_loader, dev, amp, config.channels_last, progress=progress, log=log)
    step = int(ckpt.get("step") or 0)  # a checkpoint taken inside an epoch has no test accuracy of its own
    return {**result, "epoch": ckpt["epoch"], "step": step,
            "stored_top1": None if step else ckpt["metrics"].get("test_acc"),
            "model": ckpt["model_name"], "dataset": config.dataset, "amp": amp, "images": len(test_ds)}


# -------------------------------------------------------------------- training


def micro_batches(n: int, micro: int) -> list[int]:
    """The sizes of the micro-batches a batch of ``n`` images trains as, ``micro`` = ``--batch-size`` //
    ``--accumulate`` the largest: a full batch in ``--accumulate`` equal ones, a smaller one (an epoch's last) in as
    few near-equal ones as fit (``micro_batches(100, 64)``: ``[50, 50]``, not ``[64, 36]``)."""
    parts = max(1, -(-n // micro))
    size, extra = divmod(n, parts)
    return [size + 1] * extra + [size] * (parts - extra)


def _to_device(images: torch.Tensor, target: torch.Tensor, device: torch.device,
               channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    images = images.to(device, non_blocking=True)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, target.to(device, non_blocking=True)


def _autocast(device: torch.device, amp: str, cache: bool = True) -> contextlib.AbstractContextManager:
    if amp == "none":
        return contextlib.nullcontext()
    if amp not in AMP_MODES:  # (anything else was fp16: review apifuzz1)
        raise ValueError(f"unknown amp {amp!r}; valid: {', '.join(AMP_MODES)}")
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype, cache_enabled=cache)


def shard_rate(rate: float, world: int) -> str:
    """The pace a plain progress line gives: ``1,234 images/s``; under torchrun (``world`` processes) the line's
    numbers are rank 0's shard, said so, beside an estimate of the job's (no collective at a moment each process
    picks by its own clock; review imgdist #3, rev13 #7)."""
    if world <= 1:
        return f"{rate:,.0f} images/s"
    return f"rank 0's shard; {rate:,.0f} images/s here, about {rate * world:,.0f} in all"


#: seconds between the plain progress lines of an epoch when no bar is drawn (stderr not a terminal); the
#: default is wording's, which reste predict reads (set this one for training and evaluation)
STEP_LINE_EVERY = LINE_EVERY


def _drawn(bar: Any) -> bool:
    """Whether :func:`_progress`'s ``bar`` shows (tqdm hides one itself under TQDM_DISABLE=1 and on a terminal of 0
    rows): where it does not, the loops print a line every STEP_LINE_EVERY seconds."""
    return bar is not None and not getattr(bar, "disable", False)


def _progress(total: int, desc: str, enabled: bool, initial: int = 0) -> Any:
    """An epoch's progress bar, as a context manager that gives the bar (None when off). The bar only
    displays: the training loop iterates the loader itself, once per epoch. (A bar wrapped around the
    loader iterated it twice: tqdm.auto's class calls iter() on what it wraps when it is made, and a
    loader that counts its epochs then served the next epoch's batches, so a run with the bar trained
    on other batches than one without, and under torchrun rank 0 on another permutation than the
    other ranks.)

    The numbers come first and the bar takes the width left, so a narrow terminal cuts the bar, not the loss;
    it is redrawn once a second (a screen reader reads each frame). ``TERM=dumb`` (Emacs' shell) gets no bar:
    the plain step lines a log gets."""
    if not enabled or sys.stderr is None or os.environ.get("TERM") == "dumb":  # a closed stderr (`2>&-`): no bar
        return contextlib.nullcontext()
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, leave=False, dynamic_ncols=True, file=sys.stderr,
                unit="batch", mininterval=1.0,
                bar_format="{desc}: {percentage:3.0f}% {n_fmt}/{total_fmt}{postfix} [{elapsed}<{remaining}, "
                           "{rate_fmt}] {bar}")


class _Run:
    """One training run in a directory: state, epochs, checkpoints and logs."""

    def __init__(self, config: TrainConfig, run_dir: Path, log: Callable[[str], None], progress: bool | None,
                 stop: StopRequest | None = None, folder: RunDirectory | None = None) -> None:
        # train() and resume() hand in the StopRequest their signal handlers set, before the join: a stop that
        # came before it ends the process there (init_distributed)
        self.stop = stop if stop is not None else StopRequest()
        # the bar by default only on a terminal: a log file or a pipe would fill with its frames
        progress = stderr_is_terminal() if progress is None else progress
        given = config
        # what config.json and the checkpoints record: every estimator option; the plugins of the estimators its
        # model's layers name once the model is built (below)
        config = as_recorded(config, modules=[])
        self.config, self.run_dir, self.progress = config, run_dir, progress
        self.folder = folder  # the locked run folder (rank 0's): asked where it is before each write (_in_place)
        check_tensorboard(config.tensorboard, run_dir)  # before any data: a missing package is one line
        if config.threads:
            torch.set_num_threads(config.threads)
        if config.cuda_graphs and env_world_size() > 1:
            raise UsageError("--cuda-graphs captures one process's step; drop it under torchrun")
        self.dist, self.device = init_distributed(pick_device(config.device), lambda: self.stop.signum)
        # torchrun, which says so (TORCHELASTIC_RUN_ID): not a job script's own launch (review diff25, suggestion 2)
        self._launcher = os.getppid() if os.environ.get("TORCHELASTIC_RUN_ID") and hasattr(os, "getppid") else None
        select_cuda_device(self.device)
        tune_convolutions(self.device)
        if config.threads is None and self.device.type == "cpu":
            # recorded: a CPU run's float sums depend on its thread count, so a resume uses the same
            self.config = config = dataclasses.replace(config, threads=torch.get_num_threads())
        self.log = log if self.dist.main else (lambda _msg: None)
        from . import fused

        if self.device.type == "cpu" and fused.enabled() and not fused.available():
            reason = str(fused.error()).splitlines()[0] if fused.error() else "unknown"
            self.log(f"note: the fused C kernels are unavailable ({reason[:300]}); the estimators run as PyTorch ops, "
                     "which is slower")
        if self.device.type == "cuda" and not config.compile:  # (a compiled step does not take them)
            from . import cuda_ext

            # graphed, the host work that the C++ nodes cut is gone, and the Triton kernels' steps were faster (the
            # run's end restores the setting: _torch_settings_kept); else they are built now, once, saying so, not
            # inside the first step
            if not (config.cuda_graphs and cuda_ext.leave_to_triton()):
                cuda_ext.available()
        graph_backend = None
        if config.cuda_graphs:
            try:
                graph_backend = _graph_backend(self.device)
            except ValueError:
                raise UsageError(f"--cuda-graphs needs a CUDA device; this run is on {self.device}") from None
        seed_everything(config.seed)

        where = data_device(config.dataset, config.data_device, self.device)  # None: read from files
        with local_rank_first(self.dist, needed=bool(config.download), stopped=lambda: self.stop.signum):
            train_ds, test_ds, self.info = load_datasets(config.dataset, config.data_path, download=config.download,
                                                         augment=config.augment, in_memory=where is not None)
        if len(train_ds) == 0:
            raise UsageError(f"the training set of {config.dataset} is empty; check --data-path")
        if config.data_path is None and self.info.read_from:  # found in ./data: recorded, for eval from elsewhere
            self.config = config = dataclasses.replace(config, data_path=self.info.read_from)
        def loaders(drop_last: bool) -> tuple[Any, Any]:
            return make_loaders(
                train_ds, test_ds, batch_size=config.batch_size, eval_batch_size=config.eval_batch_size,
                workers=config.workers, seed=config.seed, pin_memory=self.device.type == "cuda",
                distributed=self.dist.enabled, device=where, drop_last=drop_last,
            )

        self.train_loader, self.test_loader = loaders(False)
        if config.amp == "fp16" and self.device.type == "cpu" and self.dist.main:
            print("reste: warning: --amp fp16 on the CPU is emulated and several times slower than float32; "
                  "use --amp bf16 or none", file=sys.stderr)
        self.model = build_model(config, self.info.num_classes).to(self.device)
        built = estimators_of(self.model)
        self.scheduled = bool(built)  # a float twin has nothing to schedule
        # the plugins of the estimators the model built names itself (review extend1 #2; not by as_recorded's trial
        # build on the meta device, which a factory that reads a value cannot take: review diff31 #1)
        plugins = as_recorded(given, [type(est).__module__ for est in built]).plugins
        self.config = config = dataclasses.replace(config, plugins=plugins)
        clash = sorted({k for est in built for k in est.schedule_values()} & set(METRIC_FIELDS))
        if clash:  # a plugin's scheduled hyper-parameter would overwrite a field of the metrics line, or vice versa
            raise UsageError(f"estimator {config.estimator!r} schedules {', '.join(clash)}, a name each line of "
                             f"{METRICS} uses for its own field; give that hyper-parameter another name")
        per_rank = -(-len(train_ds) // self.dist.world_size)  # each process's share, padded as the samplers do
        micro = config.batch_size // config.accumulate  # what a forward holds (BatchNorm's statistics are its)
        split = f" in {config.accumulate} micro-batches" if config.accumulate > 1 else ""
        # (review mp1, suggestion 3) synchronised BatchNorm normalises a micro-batch of one sample per process over
        # all of them: only BatchNorm over one process cannot take it
        alone = not (self.dist.enabled and config.sync_bn and self.dist.world_size > 1)
        if (alone and 1 in micro_batches(min(config.batch_size, per_rank), micro)
                and any(isinstance(m, nn.BatchNorm1d) for m in self.model.modules())):
            raise UsageError(f"{config.model} cannot train on batches of one sample (--batch-size "
                             f"{config.batch_size}{split}, {per_rank} training image(s) per process): its "
                             f"BatchNorm1d needs at least 2; raise --batch-size{', lower --accumulate' * bool(split)} "
                             "or add images")
        if (alone and per_rank > config.batch_size and 1 in micro_batches(per_rank % config.batch_size, micro)
                and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in self.model.modules())):
            one = "train a micro-batch of" if split else "hold"
            self.log(f"note: the last batch of each epoch would {one} one sample, too few for BatchNorm's batch "
                     f"statistics; it is left out ({per_rank - per_rank % config.batch_size} of {per_rank} samples "
                     f"{'of each process ' * self.dist.enabled}an epoch)")
            self.train_loader, self.test_loader = loaders(True)
        if per_rank < config.batch_size:  # (a batch of 100000 on 1437 digits: one step an epoch, without a word)
            self.log(f"note: --batch-size {config.batch_size} is more than the {per_rank} training images"
                     f"{' of each process' if self.dist.enabled else ''}: each epoch is one step of {per_rank}")
        _check_model_fits(self.model, test_ds, self.info, config, self.device)
        if config.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = build_optimizer(config, self.model)
        if config.indicators and not binary_layers(self.model):
            raise UsageError(f"--indicators needs a binary model; {config.model!r} has no binary layers")
        try:  # paper mode: F at the model's ReSTE o_end (else 3)
            self.meter = EquilibriumMeter(self.model, config.indicators) if config.indicators else None
        except ValueError as err:  # a model the indicators cannot measure: one line, before any step
            raise UsageError(f"--indicators {config.indicators}: {err}") from None
        self.net: nn.Module = self.model
        self.ddp: nn.parallel.DistributedDataParallel | None = None  # under torchrun (its no_sync: --accumulate)
        if self.dist.enabled:
            if config.sync_bn:  # BatchNorm statistics over all processes
                if self.device.type == "cuda":
                    self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
                else:  # nn.SyncBatchNorm is CUDA-only
                    self.model = ProcessGroupBatchNorm.convert(self.model)
                self.optimizer = build_optimizer(config, self.model)
                if self.meter:
                    self.meter = EquilibriumMeter(self.model, config.indicators)  # (the same estimators' o_end)
                self.net = self.model
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = self.ddp = nn.parallel.DistributedDataParallel(self.net, device_ids=ids)
        if config.compile:
            # (dynamo's defaults: dynamic=True, which would compile a resumed process's step as the uninterrupted one's,
            # fails to trace DSQ's and FDA's backward in torch 2.14, whose scheduled scalars go through Python's math;
            # a resume of a compiled CPU run says it may round apart, review exact1 #2)
            # Each run compiles as in a process of its own: an earlier run's graphs (a sweep's, a notebook's) counted
            # toward dynamo's recompile limit, and from the fifth setting on the runs trained eagerly (review leak1 #1)
            torch._dynamo.reset()
            self.net = torch.compile(self.net)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=config.amp == "fp16")
        self.skipped: torch.Tensor | None = None  # whether the scaler skipped the last step (fp16), on the device
        self._told_test_loss = False  # whether a test loss that is not finite was said
        self._skips_in_row = torch.zeros((), dtype=torch.long)  # steps fp16's scaler skipped since it last took one
        # buffers not finite before a step was taken (a model's own -inf mask or bound): no sign of divergence
        self._constant = {name for name, is_param in self._nonfinite() if not is_param}
        self.graphed = self.graphed_eval = None
        if graph_backend is not None:
            def graph_cast() -> contextlib.AbstractContextManager:  # no cast cache across a capture
                return _autocast(self.device, config.amp, cache=False)

            self.graphed = GraphedStep(self.model, self.optimizer, backend=graph_backend, autocast=graph_cast)
            # the test evaluation replays a graph per batch shape too, captured once for the whole run
            self.graphed_eval = GraphedForward(self.net, backend=graph_backend, autocast=graph_cast)
        self.start_epoch, self.best_acc, self.best_epoch = 0, -1.0, -1
        self.start_step, self.partial = 0, None  # a checkpoint taken inside epoch start_epoch + 1
        self.saved: tuple[int, int] | None = None  # (epoch, step) of the newest last.pt
        self.last_metrics: dict[str, Any] = {}
        self.train_size = len(train_ds)  # recorded: a mid-epoch state continues only on as many images
        self.files_to_read = where is None  # images read from files (ImageNet), not held in memory
        self._epoch_sums: list[float | int] | None = None
        self._flips_start = 0  # --optimizer bop: Bop's count of flips when this epoch began
        self._last_save = time.monotonic()
        self._finite_checked = time.monotonic()  # when one process last waited to see whether its loss is finite
        self.board = TensorBoardLog(config.tensorboard, run_dir, config.to_dict()) \
            if config.tensorboard is not None and self.dist.main else None

    # -- state -------------------------------------------------------------

    def state(self, epoch: int, step: int = 0, partial: dict[str, Any] | None = None) -> dict[str, Any]:
        """The checkpoint after ``epoch`` finished epochs and ``step`` batches of the next one."""
        return {
            "config": self.config.to_dict(),
            "model_name": self.config.model,
            "model_options": {"num_classes": self.info.num_classes, **self.config.model_options},
            **estimator_settings(self.config),
            "dataset": self.config.dataset,
            "classes": list(self.info.classes) if self.info.classes else None,  # checked by eval, resume, predict
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": epoch,
            "best_acc": self.best_acc,
            "best_epoch": self.best_epoch,
            "metrics": self.last_metrics,
            "indicators": self.meter.state_dict() if self.meter else None,
            "rng": ckpt_io.rng_state(),
            "step": step,
            "partial": partial,
            "world_size": self.dist.world_size,
            "train_size": self.train_size,
            "kernels": kernel_path(self.device, self.model),
        }

    def restore(self, ckpt: dict[str, Any]) -> None:
        try:
            self.model.load_state_dict(ckpt["model"])
        except RuntimeError as err:
            raise UsageError(f"last.pt does not fit model {self.config.model!r} ({state_dict_error(err)})") from None
        found = self._nonfinite()  # (one pass over the loaded weights)
        broken = [name for name, is_param in found if is_param or name.endswith(_NORM_STATS)]
        if broken:  # (a diverged state an older reste saved: review diff28 #8, it "kept the last good state")
            raise UsageError(f"{last_checkpoint(self.run_dir)} holds weights that are not finite ({broken[0]}): the "
                             "run had diverged when it was saved (an older reste saved such states); copy its best.pt "
                             "(or a checkpoint of its top/ folder) over last.pt to continue from that epoch, or start "
                             "the run again")
        self._constant = {name for name, _ in found}
        if ckpt.get("optimizer") is not None:  # None: another optimizer, which starts afresh
            load_optimizer_state(self.optimizer, ckpt["optimizer"])  # saved with or without graphs
        if ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.start_epoch, self.best_acc, self.best_epoch = ckpt["epoch"], ckpt["best_acc"], ckpt["best_epoch"]
        self.start_step, self.partial = int(ckpt.get("step") or 0), ckpt.get("partial")
        saved_world = int(ckpt.get("world_size") or 1)
        if resumption.trained_epoch(ckpt):  # saved before its evaluation: nothing of the epoch is left to
            self.start_step = len(self.train_loader)  # train, so no count of processes, images or batches must match
        elif self.start_step:
            if saved_world != self.dist.world_size:
                raise UsageError(f"{last_checkpoint(self.run_dir)} was saved inside epoch {self.start_epoch + 1} by "
                                 f"{saved_world} process(es); resume it with the same number of processes")
            saved_size = ckpt.get("train_size")  # None in a checkpoint from before it was recorded
            if saved_size is not None and saved_size != self.train_size:
                # the epoch's order is a permutation of the images: over another number, the batches skipped are
                # not those trained, and some images would be trained twice in the epoch, others never
                raise UsageError(f"{last_checkpoint(self.run_dir)} was saved inside epoch {self.start_epoch + 1} "
                                 f"over {saved_size} training images, and the data set now has {self.train_size}; "
                                 "the epoch cannot continue: restore the images as they were (or a run that "
                                 "continues from an epoch's end takes the new set)")
            if self.start_step > len(self.train_loader):
                raise UsageError(f"{last_checkpoint(self.run_dir)} was saved after batch {self.start_step} of an "
                                 f"epoch of {len(self.train_loader)}; it cannot continue: start a new run")
        if saved_world != self.dist.world_size and self.start_epoch < self.config.epochs:
            batch = self.config.batch_size
            trained = (ckpt.get("config") or {}).get("batch_size") or batch  # the per-process batch it trained with
            self.log(f"note: {self.run_dir} trained with {saved_world} process(es) and continues with "
                     f"{self.dist.world_size}: --batch-size {batch} is per process, so each step now takes "
                     f"{batch * self.dist.world_size} images instead of {trained * saved_world} (scale --batch-size "
                     "or --lr to keep the recipe)")
        kernels = kernel_path(self.device, self.model)
        saved_path = _SAME_PATH.get(ckpt.get("kernels"), ckpt.get("kernels"))
        # (NO_KERNEL: on every path alike, whatever a checkpoint of before it recorded: review diff21 #4)
        if saved_path not in (None, kernels) and kernels != NO_KERNEL and self.start_epoch < self.config.epochs:
            self.log(f"note: {self.run_dir} trained with the estimators' {ckpt['kernels']} and continues with their "
                     f"{kernels}: their float32 results differ in the last bits, so the run can differ from an "
                     "uninterrupted one")
        self.saved = (self.start_epoch, self.start_step)
        self.last_metrics = ckpt["metrics"]
        if self.meter and ckpt.get("indicators"):
            try:
                self.meter.load_state_dict(ckpt["indicators"])
            except ValueError:  # (--force) another --indicators mode or o_end: the two cannot be averaged together
                saved = ckpt["indicators"]
                self.log(f"note: {self.run_dir}'s indicators so far were measured in the "
                         f"{_meter_mode(saved.get('mode'), saved.get('o_end'))}, and this resume measures them in the "
                         f"{_meter_mode(self.meter.mode, self.meter.o_end)}: the run-level indicators count epoch "
                         f"{self.start_epoch + 1} on only")
        ckpt_io.set_rng_state(ckpt["rng"])

    # -- epochs ------------------------------------------------------------

    def step(self, images: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step on a batch: ``(loss, logits)`` of the whole batch, on the device, not synced.

        ``images`` may still be on the host: each micro-batch moves to the device as it trains. With
        ``--accumulate N`` the batch is split into micro-batches (:func:`micro_batches`), each one's mean loss
        weighted by its share of the batch (1/N for a full batch), so the gradients summed over them are the
        batch's mean gradient; the optimizer (and the fp16 GradScaler: unscaled, checked and updated once) steps
        once, and under torchrun only the last micro-batch's backward all-reduces (DDP's ``no_sync``)."""
        cfg = self.config
        if self.graphed is not None:  # (--accumulate 1: config refuses more with --cuda-graphs)
            return self.graphed(*_to_device(images, target, self.device, cfg.channels_last))
        sizes = micro_batches(len(target), cfg.batch_size // cfg.accumulate)
        if len(sizes) == 1:
            images, target = _to_device(images, target, self.device, cfg.channels_last)
            with _autocast(self.device, cfg.amp):
                logits = self.net(images)
                loss = F.cross_entropy(logits.float(), target)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
        else:
            self.optimizer.zero_grad(set_to_none=True)
            losses, outputs = [], []
            for i, (x, y) in enumerate(zip(images.split(sizes), target.split(sizes))):
                x, y = _to_device(x, y, self.device, cfg.channels_last)
                sync = i == len(sizes) - 1  # the gradients are all-reduced once, after the last micro-batch
                with (contextlib.nullcontext() if sync else self._no_sync()):
                    with _autocast(self.device, cfg.amp):
                        logits = self.net(x)
                        part = F.cross_entropy(logits.float(), y) * (len(y) / len(target))
                    self.scaler.scale(part).backward()
                losses.append(part.detach())
                outputs.append(logits.detach())
            loss, logits = torch.stack(losses).sum(), torch.cat(outputs)
        before = amp_scale(self.scaler)  # (fp16 only)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.skipped = amp_skipped(before, amp_scale(self.scaler))  # the indicators leave a skipped step out
        if self.skipped is not None:  # (on the device: read at the next save, review diff28 #3)
            self._skips_in_row = torch.where(self.skipped, self._skips_in_row.to(self.skipped.device) + 1, 0)
        return loss, logits

    def _no_sync(self) -> contextlib.AbstractContextManager:
        """DDP's ``no_sync`` (a micro-batch's backward keeps its gradients local); nothing in one process."""
        return self.ddp.no_sync() if self.ddp is not None else contextlib.nullcontext()

    def train_epoch(self, epoch: int, start_step: int = 0, partial: dict[str, Any] | None = None
                    ) -> dict[str, float]:
        """Train one epoch; with ``start_step`` continue one that a mid-epoch checkpoint holds.

        Every later batch and random draw is the one an uninterrupted run sees: image files begin at
        ``start_step`` (each sample's augmentation is its own), in-memory data draw the skipped batches (one
        generator augments them in turn) and drop them. A data error inside the epoch (an unreadable image)
        first saves the steps done, in one process (several would need the others, which wait in a
        collective).
        """
        cfg, device = self.config, self.device
        self.net.train()
        if hasattr(self.train_loader, "set_epoch"):
            self.train_loader.set_epoch(epoch)
        sums = [0.0, 0, 0, -1]  # loss sum, correct, samples, first bad step
        if partial:  # (a trained epoch's state holds the whole run's sums under rank 0, whatever the count now)
            ranks = partial["ranks"]
            sums = list(ranks[self.dist.rank]) if self.dist.rank < len(ranks) else sums
            if self.meter and partial.get("meter"):
                _set_meter_partial(self.meter, partial["meter"])
        loss_sum = torch.tensor(float(sums[0]), device=device, dtype=torch.float64)
        correct = torch.tensor(int(sums[1]), device=device, dtype=torch.long)
        bad_step = torch.tensor(int(sums[3]), device=device, dtype=torch.long)
        n = int(sums[2])
        steps = len(self.train_loader)
        first = start_step if start_step and getattr(self.train_loader, "start_at", lambda _s: False)(start_step) \
            else 0
        with _progress(steps, f"epoch {epoch + 1}/{cfg.epochs}", self.progress and self.dist.main,
                       start_step) as bar, _worker_deaths_at_next(self.train_loader) as batches:
            shown = -float("inf")  # the first step shows its loss
            # without a bar (a log file, nohup, a cluster job) a line every STEP_LINE_EVERY seconds says where the
            # epoch is: an ImageNet epoch would otherwise print nothing for tens of minutes
            drawn = _drawn(bar)
            lines = not drawn and self.dist.main
            since, n_since = time.monotonic(), n
            step = first - 1
            while True:
                try:
                    images, target = next(batches)
                except StopIteration:
                    break
                except Exception as err:
                    died = None
                    if isinstance(err, (ConnectionError, EOFError)):  # a worker killed while it sent its batch
                        died = RuntimeError(f"a DataLoader worker died while sending a batch ({type(err).__name__}"
                                            f"{': ' + str(err) if str(err) else ''})")
                    sums = [float(loss_sum), int(correct), n, int(bad_step)]
                    if self.stop.signum and not isinstance(err, UsageError) and not self.dist.enabled:
                        # the stop signal reached a loading process that had not yet set its handlers (a worker
                        # started by spawn imports torch first: seconds), and killed it: a stop, not a failure
                        # (review portable #8)
                        if step + 1 > start_step:
                            self._stop_saving(epoch, step + 1, steps, sums)
                        self._stopped_before(epoch)
                    # step + 1 batches are done: keep them (a later epoch's error keeps its finished steps too)
                    self._data_failed(died or err, epoch, step + 1, steps, start_step, sums)
                    if died is not None:
                        raise died from err
                    raise
                step += 1
                if step < start_step:
                    continue
                target = target.to(device, non_blocking=True)  # the images move in step, micro-batch by micro-batch
                loss, logits = self.step(images, target)
                # (paper: the last step's alone; with fp16's scaler, the last one taken: each step tells)
                if self.meter and (self.meter.every_step or step == steps - 1 or self.skipped is not None):
                    self.meter.update(skipped=self.skipped)
                detached = loss.detach()
                bad_step = torch.where((bad_step < 0) & ~torch.isfinite(detached), step, bad_step)
                loss_sum += detached * target.numel()
                correct += (logits.argmax(1) == target).sum()
                n += target.numel()
                if drawn:
                    # the bar's loss and accuracy wait for the device: at most once a second (and at the end); set
                    # before the count, which draws them together (the count drawn first showed it beside the older
                    # loss: review newuser5, suggestion)
                    if time.monotonic() - shown >= 1.0 or step == steps - 1:
                        shown = time.monotonic()
                        if int(bad_step) >= 0 and not self.dist.enabled:  # with several, all stop together below
                            break
                        bar.set_postfix_str(f"loss {loss_sum.item() / n:.4f} acc {100.0 * correct.item() / n:.2f}"
                                            + (" (rank 0's shard)" if self.dist.enabled else ""), refresh=False)
                    bar.update()
                elif lines and time.monotonic() - since >= STEP_LINE_EVERY and step < steps - 1:
                    rate = (n - n_since) / (time.monotonic() - since)
                    self.log(f"  epoch {epoch + 1}/{cfg.epochs}  step {step + 1}/{steps}  train loss "
                             f"{loss_sum.item() / n:.4f} acc {100.0 * correct.item() / n:.2f}  "
                             f"({shard_rate(rate, self.dist.world_size)})")
                    since, n_since = time.monotonic(), n
                if step < steps - 1:
                    # (one process with a bar asks at its redraw, above)
                    due = self._checkpoint_due(step, bad_step if self.dist.enabled or not drawn else None)
                    if due:
                        if due == 3 or self._agree(int(bad_step)) >= 0:
                            break  # never checkpoint a diverged state
                        sums = [float(loss_sum), int(correct), n, int(bad_step)]
                        if due == 2:
                            self._stop_saving(epoch, step + 1, steps, sums)
                        self.save_partial(epoch, step + 1, sums)
        bad = self._agree(int(bad_step))  # the processes stop together: a lone one would hang the others
        if bad >= 0:
            raise self._diverged(f"non-finite loss at epoch {epoch + 1}, step {bad + 1}", epoch, bad + 1)
        self._check_finite(epoch, steps)
        totals = torch.stack([loss_sum, correct.double(), torch.tensor(float(n), device=device, dtype=torch.float64)])
        if self.dist.enabled:  # metrics over the whole training set, not this process's shard
            torch.distributed.all_reduce(totals)
        loss_total, correct_total, count = totals.tolist()
        self._epoch_sums = [loss_total, int(correct_total), int(count), -1]
        return {"train_loss": loss_total / count, "train_acc": 100.0 * correct_total / count}

    def run(self) -> dict[str, Any]:
        diverged_before = False
        if self.dist.main:
            diverged_before = (self.run_dir / DIVERGED).exists()
            forget_divergence(self.run_dir)  # a sweep's record that the run diverged or failed: it tries again
            forget_failure(self.run_dir)
        fallback = _EagerFallback(self.log) if self.config.compile else None
        if fallback is not None:
            logging.getLogger("torch._dynamo").addHandler(fallback)
        try:
            return self._epochs()
        except TrainingDiverged as err:  # it diverged again: the record stays, for the sweep's show and report
            if diverged_before:  # (it was gone, and the run was "not started": review readme2 #3)
                with contextlib.suppress(OSError):
                    record_divergence(self.run_dir, err.epoch, err.step)
            raise
        finally:
            if fallback is not None:
                logging.getLogger("torch._dynamo").removeHandler(fallback)
            if self.board is not None:
                self.board.close()

    def _set_progress(self, epoch: int) -> dict[str, float]:
        """Move every estimator's schedule to ``epoch``; the values each epoch's line and metrics.jsonl carry: those
        of the first estimator of the run's own settings (``estimator``, ``estimator_options``) that has any, else
        of the first that has any (review extend1 #4: in a model of mixed estimators the first layer's EDE t and k
        were logged as the run's, and ReSTE's o nowhere)."""
        first = set_progress(self.model, epoch, self.config.epochs)
        own = {"name": self.config.estimator, **self.config.estimator_options}
        for est in estimators_of(self.model):
            if est.schedule_values() and est.spec() == own:
                return dict(est.schedule_values())
        return first

    def _epochs(self) -> dict[str, Any]:
        cfg = self.config
        start = time.monotonic()  # (durations: the monotonic clock, which a clock step leaves alone: review chaos5 #3)
        for epoch in range(self.start_epoch, cfg.epochs):
            t0 = time.monotonic()
            lr = learning_rate(cfg.lr, epoch, cfg.epochs, cfg.warm_up)
            set_rates(self.optimizer, lr, cfg)
            sched = self._set_progress(epoch) if self.scheduled else {}
            if self.graphed is not None:
                self.graphed.invalidate()  # the captured step holds this epoch's lr and schedule values
            if self.graphed_eval is not None and sched and _forward_reads_schedule(self.model):
                self.graphed_eval.release()  # (a built-in forward is sign, whatever the schedule: captured once)
            start_step, partial = (self.start_step, self.partial) if epoch == self.start_epoch else (0, None)
            if partial and partial.get("trained") and "lr" in partial:  # its training is done: the epoch's line
                lr, sched = partial["lr"], dict(partial.get("schedule") or {})  # keeps what it trained with
            if partial and "time" in partial:
                t0 -= float(partial["time"])  # the epoch's time includes the part before the checkpoint
            bop = self._bop()
            if bop is not None:  # Bop's count of flips when the epoch began (before a mid-epoch checkpoint's part)
                self._flips_start = int((partial or {}).get("flips_start", bop.flipped))
            self._epoch_t0 = t0
            train_metrics = self.train_epoch(epoch, start_step, partial)
            if self.files_to_read and start_step < len(self.train_loader):
                # the test images are files, read only now: one that cannot be read must not cost the epoch's
                # training (on ImageNet, hours). last.pt holds the trained epoch, which a resume evaluates
                self._save_trained(epoch, len(self.train_loader), lr, sched)
            trained_saved = self.saved == (epoch, len(self.train_loader))  # (image files: saved before this)
            try:
                test = evaluate(self.net, self.test_loader, self.device, cfg.amp, cfg.channels_last,
                                self.graphed_eval, stop=(lambda: bool(self.stop.signum)) if trained_saved else None,
                                log=self.log)
            except EvaluationStopped:  # a stop signal: the evaluation (minutes on ImageNet) is done again on resume
                signum = self.stop.signum or signal.SIGTERM
                self._preempted(f"stopped by {signal_text(signum)} at the evaluation of epoch {epoch + 1}; "
                                f"{last_checkpoint(self.run_dir)} holds its training", signum)
            except UsageError as err:
                if self.files_to_read and trained_saved:
                    self._tell_kept(err, f"{last_checkpoint(self.run_dir)} keeps epoch {epoch + 1}'s training")
                raise
            except Exception:  # a loading process the stop signal killed as it started (review portable #8)
                if not (self.stop.signum and trained_saved and not self.dist.enabled):
                    raise
                signum = self.stop.signum
                self._preempted(f"stopped by {signal_text(signum)} at the evaluation of epoch {epoch + 1}; "
                                f"{last_checkpoint(self.run_dir)} holds its training", signum)
            if not np.isfinite(test["loss"]) and not self._told_test_loss:  # once a run (review numerics1, sugg. 1)
                self._told_test_loss = True
                self.log(f"note: the test loss of epoch {epoch + 1} is not finite: a test image holding NaN or inf, "
                         "or logits that overflow; the accuracy ranks an image's NaN logits as it can (check the "
                         "test data)")
            metrics: dict[str, Any] = {"epoch": epoch + 1, "lr": lr, **sched, **train_metrics,
                                       "test_loss": test["loss"], "test_acc": test["top1"],
                                       "test_top5": test["top5"]}
            if self.meter:  # the values, and how they were measured (show and the report count the mode's alone)
                metrics.update(self.meter.epoch_end(), **self.meter.measure())
            if bop is not None:
                metrics.update(bop_gamma=bop_rate(cfg, lr), bop_flips=int(bop.flipped) - self._flips_start)
            metrics["time"] = time.monotonic() - t0
            is_best = test["top1"] > self.best_acc
            if is_best:
                self.best_acc, self.best_epoch = test["top1"], epoch + 1
            self.last_metrics = metrics
            line = format_epoch(metrics, cfg.epochs)
            if self.dist.main:  # the line once last.pt holds the epoch: a failed best.pt write cannot hide it
                self.save(epoch + 1, metrics, is_best, lambda: self.log(line))
                if self.board is not None:
                    self.board.log_epoch(metrics, self.model, self.meter,
                                         skipped=self.skipped is not None and bool(self.skipped))
            else:
                self.log(line)
            self.saved, self._last_save = (epoch + 1, 0), time.monotonic()
            if epoch + 1 < cfg.epochs and self._agree_stop(2 if self.stop.signum or self._launcher_gone() else 0) == 2:
                self._stopped(epoch + 1, 0, len(self.train_loader))
        if self.dist.main:  # (a move after the last epoch's writes: the result names where the run is)
            with contextlib.suppress(FolderGone):
                self._in_place()
        lines = self._own_metrics()
        result = {
            "run_dir": str(self.run_dir),
            "best_acc": self.best_acc,
            "best_epoch": self.best_epoch,
            "best_top5": next((m.get("test_top5") for m in reversed(lines) if m.get("epoch") == self.best_epoch),
                              None),
            "final_acc": self.last_metrics.get("test_acc"),
            "final_top5": self.last_metrics.get("test_top5"),
            "epochs": cfg.epochs,
            "seconds": time.monotonic() - start,
        }
        if (self.start_epoch or self.start_step) and lines:  # resumed: the epochs' times add up to the run's
            result["run_seconds"] = sum(m.get("time", 0.0) for m in lines)
        if self.meter and self.meter.history:
            result["indicators"], result["indicators_mode"] = self.meter.summary(), self.meter.mode
        self.log(format_result(result))
        return result

    def _own_metrics(self) -> list[dict[str, Any]]:
        """The run's metrics lines, for its result (the best epoch's top-5, the whole run's time); none on a process
        other than rank 0, or where the file is damaged (the run's result stands without them)."""
        if not self.dist.main:
            return []
        try:
            return read_metrics(self.run_dir, missing_ok=True)
        except (UsageError, OSError):
            return []

    def save(self, epoch: int, metrics: dict[str, Any], is_best: bool, saved: Callable[[], None] = lambda: None
             ) -> None:
        """The end of an epoch: metrics line, ``last.pt`` (then ``saved()``: the epoch is kept), ``best.pt`` (the
        same bytes), then ``top/``.

        A crash between two of these writes is repaired on resume (see :func:`repair_best`); a ``saved()`` that
        raises (its line printed to a closed pipe) ends the run after them, not between them.
        """
        self._in_place()
        append_metrics(self.run_dir, metrics)
        state = self.state(epoch)
        self._in_place()  # (again before each file: a checkpoint's writing can take seconds: review diff19 #4)
        blob = ckpt_io.save_checkpoint(state, last_checkpoint(self.run_dir))
        try:
            saved()
        finally:
            if is_best:
                self._in_place()
                ckpt_io.atomic_write(best_checkpoint(self.run_dir), lambda f: f.write(blob))
            if self.config.keep_top:
                self._in_place()
                keep_top(self.run_dir, self.config.keep_top, epoch, blob)

    def _in_place(self) -> None:
        """Before the run writes its folder: the folder it locked is still at its path, or the run follows it where it
        was renamed or moved (a sweep folder renamed while it runs); ``FolderGone`` where it was deleted, whose path
        may hold another run's folder by now (review chaos5 #2, #9: the two runs' files mixed)."""
        if self.folder is None:
            return
        before, self.run_dir = self.run_dir, self.folder.follow()
        if self.run_dir != before:
            self.log(f"note: {before} was moved to {self.run_dir} while the run trained; the run goes on there")
            if self.board is not None:
                self.board.moved(self.run_dir)

    # -- mid-epoch checkpoints ------------------------------------------------

    def _save_trained(self, epoch: int, steps: int, lr: float, schedule: dict[str, float]) -> None:
        """``last.pt`` after every batch of epoch ``epoch + 1``, before its evaluation: the whole run's sums
        (every process has them after the epoch's all_reduce) under rank 0, zeros under the others, so a
        resume adds up the same totals, with no collective here."""
        zero: list[float | int] = [0.0, 0, 0, -1]
        ranks = [list(self._epoch_sums or zero)] + [list(zero) for _ in range(self.dist.world_size - 1)]
        if self.dist.main:
            partial = {"ranks": ranks, "meter": _meter_partial(self.meter) if self.meter else None,
                       "time": time.monotonic() - self._epoch_t0, "trained": True, "lr": lr,
                       "schedule": {k: float(v) for k, v in schedule.items()}, **self._bop_partial()}
            self._in_place()
            ckpt_io.save_checkpoint(self.state(epoch, steps, partial), last_checkpoint(self.run_dir))
        self.saved, self._last_save = (epoch, steps), time.monotonic()

    def _bop(self) -> Bop | None:
        """The run's Bop (``--optimizer bop``), else None."""
        return next((opt for opt in getattr(self.optimizer, "optimizers", ()) if isinstance(opt, Bop)), None)

    def _bop_partial(self) -> dict[str, int]:
        """What a mid-epoch checkpoint adds for Bop: its count of flips when the epoch began (the epoch's line
        counts from there)."""
        return {"flips_start": self._flips_start} if self._bop() is not None else {}

    def _diverged(self, what: str, epoch: int, step: int, advice: str = "lower --lr or check the data"
                  ) -> TrainingDiverged:
        """The error that stops a diverged run at step ``step`` (1-based) of epoch ``epoch + 1``: ``what`` happened,
        what the run's ``last.pt`` keeps, and ``advice`` (with an estimator of the user's own, its g too)."""
        from .estimators import estimator_class

        module = estimator_class(self.config.estimator).__module__
        if advice.endswith("check the data") and module.split(".")[0] != "reste":
            # (review research1: a plugin's g of NaN stopped the run at its second step, pointing at --lr and the data)
            advice += f", or the estimator's g ({self.config.estimator!r}, of {module}: a NaN or inf g?)"
        if self.saved is None:
            kept = "no checkpoint was saved"
        else:
            e, s = self.saved
            kept = f"{last_checkpoint(self.run_dir)} keeps the last good state (epoch {e}" + \
                (f", step {s} of epoch {e + 1})" if s else ")")
        return TrainingDiverged(f"{what}; the run stopped and {kept}; {advice}", epoch + 1, step)

    def _nonfinite(self) -> list[tuple[str, bool]]:
        """(name, whether a parameter) of the model's floating-point parameters and buffers that hold inf or NaN:
        one pass over them, one host sync."""
        named = [(name, t, True) for name, t in self.model.named_parameters() if t.is_floating_point()]
        named += [(name, t, False) for name, t in self.model.named_buffers() if t.is_floating_point()]
        if not named:
            return []
        finite = torch.stack([torch.isfinite(t.detach()).all() for _, t, _ in named]).tolist()
        return [(name, is_param) for (name, _, is_param), ok in zip(named, finite) if not ok]

    def _check_finite(self, epoch: int, step: int) -> None:
        """Before a checkpoint holds the state after ``step`` batches of epoch ``epoch + 1``: its weights are finite.
        A step whose loss was finite can still update them to inf or NaN (the next step's loss would tell, but the
        epoch's end and a mid-epoch save come first: review numerics1 #1), and with fp16 a loss scaler that skips
        every step for inf or NaN gradients trains nothing while every loss stays finite (#4). One pass over the
        weights, and one host sync, per save; a buffer that was not finite before training (a model's constant
        mask) does not count; the processes agree (a BatchNorm statistic of one alone, without --sync-bn)."""
        bad = [name for name, _ in self._nonfinite() if name not in self._constant]
        if self.dist.enabled:
            flag = torch.tensor([float(bool(bad))], device=self.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            if flag.item() and not bad:
                bad = ["another process's"]
        if bad:
            raise self._diverged(f"non-finite weights ({bad[0]}) after step {step} of epoch {epoch + 1}", epoch,
                                 step)
        skips = int(self._skips_in_row) if self.scaler.is_enabled() else 0
        if skips >= SKIPS_IN_A_ROW or (self.scaler.is_enabled() and self.scaler.get_scale() < 1.0):
            # (a healthy run skips a few steps at its start, while the scale, 65536, falls to what its gradients
            # take; each skip halves it)
            which = (f"the last {skips} steps" if skips >= SKIPS_IN_A_ROW
                     else "so many steps")  # (every other one, say: review diff29 #2)
            raise self._diverged(f"the fp16 loss scaler skipped {which} for inf or NaN gradients (its scale fell to "
                                 f"{self.scaler.get_scale():.3g} by step {step} of epoch {epoch + 1})",
                                 epoch, step, "lower --lr, check the data, or train with --amp bf16")

    def save_partial(self, epoch: int, step: int, sums: list[float | int]) -> None:
        """``last.pt`` after ``step`` batches of epoch ``epoch + 1`` (every process's running sums); a diverged state
        is not saved (:meth:`_check_finite`)."""
        self._check_finite(epoch, step)
        ranks = [sums]
        if self.dist.enabled:
            local = torch.tensor([float(v) for v in sums], dtype=torch.float64, device=self.device)
            gathered = [torch.zeros_like(local) for _ in range(self.dist.world_size)]
            torch.distributed.all_gather(gathered, local)
            ranks = [[t[0].item(), int(t[1].item()), int(t[2].item()), int(t[3].item())] for t in gathered]
        if self.dist.main:
            partial = {"ranks": ranks, "meter": _meter_partial(self.meter) if self.meter else None,
                       "time": time.monotonic() - self._epoch_t0, **self._bop_partial()}
            self._in_place()
            ckpt_io.save_checkpoint(self.state(epoch, step, partial), last_checkpoint(self.run_dir))
        self.saved, self._last_save = (epoch, step), time.monotonic()

    def _data_failed(self, err: Exception, epoch: int, done: int, steps: int, start_step: int,
                     sums: list[float | int]) -> None:
        """The loader failed before batch ``done + 1`` of epoch ``epoch + 1`` (an unreadable image): keep the
        steps done in ``last.pt`` and add to the error how to go on. Not with several processes (saving needs
        the others, which wait in the step's collective), nor a diverged state."""
        if self.dist.enabled or int(sums[3]) >= 0:
            return
        if done > start_step:
            self.save_partial(epoch, done, sums)
        if self.saved is None:
            return  # nothing kept yet: the run starts again
        e, step = self.saved
        where = f"{last_checkpoint(self.run_dir)} keeps epoch {e + 1} up to step {step}/{steps}" if step else \
            f"{last_checkpoint(self.run_dir)} keeps epoch {e}"
        if isinstance(err, UsageError):  # a file that cannot be read
            self._tell_kept(err, where)
        else:  # the loader itself (a worker killed by the out-of-memory killer, say): its own error follows
            self.log(f"note: the training data's loader failed in epoch {epoch + 1} ({type(err).__name__}); {where}: "
                     f"continue with {resume_command(self.run_dir, self.dist.world_size)}")

    def _tell_kept(self, err: UsageError, kept: str) -> None:
        """Add to a data error's one line what ``last.pt`` keeps and how to go on (one that a DataLoader worker
        raised holds the worker's traceback: its own line first, then this)."""
        err.args = (f"{one_line(err)}; {kept}: continue with {resume_command(self.run_dir, self.dist.world_size)} "
                    "once the data is mended",)

    def _checkpoint_due(self, step: int, bad_step: torch.Tensor | None = None) -> int:
        """0: go on; 1: ``--save-every`` says checkpoint; 2: a stop signal came: checkpoint and stop; 3: a loss was
        not finite (``bad_step``, the first such step or -1): stop.

        With several processes they agree (every ``_SYNC_STEPS`` steps), so all stop at one step. Whether the loss
        stayed finite waits for the device: one process asks once a second, several in that agreement (review mp1,
        suggestion 2: without a progress bar a diverged run trained to its epoch's end, an ImageNet epoch's hours).
        """
        local = 2 if self.stop.signum else 0
        every = self.config.save_every
        if not local and every and time.monotonic() - self._last_save >= 60.0 * every:
            local = 1
        if self.dist.enabled:
            if (step + 1) % _SYNC_STEPS:
                return 0
            if not self.stop.signum and self._launcher_gone():
                local = 2
            return self._agree_stop(local, bad_step)
        if bad_step is not None and time.monotonic() - self._finite_checked >= _FINITE_EVERY:
            self._finite_checked = time.monotonic()
            if int(bad_step) >= 0:
                return 3
        return local

    def _launcher_gone(self) -> bool:
        """Whether the process that started this one (torchrun) has died, killed with SIGKILL (a scheduler's hard
        kill, the out-of-memory killer): its processes then trained on, holding the run's lock, so a requeued job
        found the run in use (review mp1, suggestion 1). They stop as on SIGTERM, after saving their step, and say
        why."""
        if not self.dist.enabled or self._launcher is None or os.getppid() == self._launcher:
            return False
        self.stop.signum = signal.SIGTERM
        self.log(f"note: the process that started this run (pid {self._launcher}, torchrun) is gone; the processes "
                 "stop as on SIGTERM, after saving their step")
        return True

    def _agree(self, local: int) -> int:
        if not self.dist.enabled:
            return local
        flag = torch.tensor([local], device=self.device, dtype=torch.long)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return int(flag.item())

    def _agree_stop(self, local: int, bad_step: torch.Tensor | None = None) -> int:
        """:meth:`_agree` on a flag of :meth:`_checkpoint_due`, and on the stop signal: a process that got none
        takes the one another got (the largest number, where several came), so rank 0's stop line names it. With
        ``bad_step``, 3 where any process's loss was not finite (in the same collective, and with no wait for the
        device before it)."""
        if not self.dist.enabled:
            return local
        both = torch.tensor([local, self.stop.signum, 0], device=self.device, dtype=torch.long)
        if bad_step is not None:
            both[2] = (bad_step >= 0).long()
        torch.distributed.all_reduce(both, op=torch.distributed.ReduceOp.MAX)
        flag, signum, bad = (int(v) for v in both.tolist())
        if signum:
            self.stop.signum = signum
        return 3 if bad else flag

    def _stopped(self, epoch: int, step: int, steps: int) -> None:
        signum = self.stop.signum or signal.SIGTERM
        where = f"epoch {epoch + 1}, step {step}/{steps}" if step else f"the end of epoch {epoch}"
        self._preempted(f"stopped by {signal_text(signum)} at {where}; {last_checkpoint(self.run_dir)} "
                        "holds it", signum)

    def _stopped_before(self, epoch: int) -> None:
        """A stop signal before epoch ``epoch + 1`` trained a step past what ``last.pt`` holds: :class:`Preempted`,
        with where the run is kept; a run that saved nothing is removed and starts over (review rev14 #5: it ended as
        a failure, status 1, where the job's stop reached the loading processes before the first step)."""
        signum = self.stop.signum or signal.SIGTERM
        if self.saved is None:
            kept = f"stopped by {signal_text(signum)} before its first step; nothing was saved"
            again = option("run the same command again", "call train again")
            raise Preempted(f"{kept}: {again}", signum, kept)
        e, step = self.saved
        where = f"epoch {e + 1}, step {step}" if step else f"the end of epoch {e}"
        self._preempted(f"stopped by {signal_text(signum)} in epoch {epoch + 1}; {last_checkpoint(self.run_dir)} "
                        f"holds {where}", signum)

    def _preempted(self, kept: str, signum: int) -> None:
        raise Preempted(f"{kept}: continue with {resume_command(self.run_dir, self.dist.world_size)}", signum, kept)

    def _stop_saving(self, epoch: int, step: int, steps: int, sums: list[float | int]) -> None:
        """A stop signal's checkpoint after ``step`` batches of epoch ``epoch + 1``, then :class:`Preempted`.

        Where the save fails (a full disk, a folder turned unwritable), the stop is still a preemption, exit status
        128 + the signal, which a scheduler requeues: the earlier ``last.pt`` is whole (the write goes through a
        temporary file), so the requeued job continues from it and loses only this part of the epoch; if the
        folder is still unwritable then, that job fails at its start, with exit status 1, and nothing loops."""
        signum = self.stop.signum or signal.SIGTERM
        before, error = self.saved, None
        try:
            self.save_partial(epoch, step, sums)
        except OSError as err:
            error = err
        if self._agree(int(error is not None)):  # rank 0 writes: under torchrun every process learns it failed
            self.saved = before
            if before is None:
                kept = "nothing was saved before it"
            else:
                e, s = before
                kept = f"{last_checkpoint(self.run_dir)} is intact and keeps " + \
                    (f"epoch {e + 1} up to step {s}" if s else f"epoch {e}")
            why = f"{type(error).__name__}: {one_line(error)}" if error is not None else "on rank 0"
            self._preempted(f"stopped by {signal_text(signum, ' (a preemption)')} at epoch {epoch + 1}, step "
                            f"{step}/{steps}, but its checkpoint failed ({why}); {kept}", signum)
        self._stopped(epoch, step, steps)


class StopRequest:
    """Set by a stop signal (SIGTERM, SIGUSR1, Ctrl-C's SIGINT, SIGHUP): the run checkpoints at its next step and
    stops. A second Ctrl-C gets Python's own handler back: KeyboardInterrupt at once, without that checkpoint."""

    signum: int = 0
    announce: bool = True  # whether Ctrl-C is answered with a line (not in a sweep's worker: the sweep says it)

    @contextlib.contextmanager
    def handling(self, keys: bool = True):
        """Catch the stop signals while the block runs (main thread only; elsewhere a no-op); without ``keys``, not
        Ctrl-C's (nor Windows's Ctrl-Break), which then interrupts the block at once."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return

        def handler(signum: int, _frame: Any) -> None:
            self.signum = self.signum or signum
            key = {signal.SIGINT: "Ctrl-C", getattr(signal, "SIGBREAK", None): "Ctrl-Break"}.get(signum)
            if key:  # a key pressed: said, and a second press stops at once (Windows's Ctrl-Break too: rev15 #15)
                signal.signal(signum, previous[signum])
                if env_rank() == 0 and self.announce:  # os.write: safe in a handler that may interrupt a print
                    with contextlib.suppress(OSError):
                        os.write(2, f"reste: {key}: stopping after saving the current step (press it again to "
                                    "stop at once, without saving)\n".encode())

        pressed = (signal.SIGINT, getattr(signal, "SIGBREAK", None))
        previous = {sig: signal.signal(sig, handler) for sig in stop_signals() if keys or sig not in pressed}
        try:
            yield self
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)


def _meter_mode(mode: Any, o_end: Any) -> str:
    """An indicator mode as a note names it: ``'paper' mode at o_end 3``."""
    at = f" at o_end {o_end:g}" if mode == "paper" and isinstance(o_end, (int, float)) else ""
    return f"{mode!r} mode{at}"


def _meter_partial(meter: EquilibriumMeter) -> dict[str, Any]:
    """The running sums of an EquilibriumMeter inside an epoch."""
    return meter.partial_state()


def _set_meter_partial(meter: EquilibriumMeter, state: dict[str, Any]) -> None:
    meter.load_partial_state(state)


def _check_model_fits(model: nn.Module, test_ds: Any, info: Any, config: TrainConfig, device: torch.device) -> None:
    """One test image through the model (no gradient, RNG untouched): a mismatch is a one-line error."""
    if len(test_ds) == 0:
        raise UsageError(f"the test set of {config.dataset} is empty; check --data-path")
    image = test_ds[0][0]
    if isinstance(image, torch.Tensor):
        _probe(model, image, info.num_classes, config, device)


def check_model_fits(config: TrainConfig) -> None:
    """The check a run makes with its first test image (:func:`_check_model_fits`), made with a blank image of the
    data set's input size, no data read, on the CPU: ``--print-config`` and a sweep's plan refuse what the run
    would (review clifuzz #6). ``config`` is resolved. The global RNG is left as it was, and the warnings of
    building the model are the run's to give."""
    from .models import registry

    spec = get_spec(config.dataset)
    # (the registry gives its mixed-estimator warning once: the run's, diff13 #4)
    with registry.unrecorded(), torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            model = build_model(config, spec.num_classes)
        except (IndexError, AssertionError) as err:  # a factory's check of its options (review diff13 #7); a
            options = ", ".join(f"{k}={v!r}" for k, v in config.model_options.items()) or "its defaults"
            raise UsageError(f"model {config.model!r} could not be built with {options} ({type(err).__name__}: "
                             f"{gist(str(err))}); pass other --model-option values") from err  # bug, as it is
        _probe(model, torch.zeros(spec.input_size), spec.num_classes, config, torch.device("cpu"))


def _probe(model: nn.Module, image: torch.Tensor, num_classes: int, config: TrainConfig, device: torch.device) -> None:
    """``image`` through ``model``: a model that does not take it, or gives other than ``num_classes`` outputs, is
    a one-line error."""
    rng = torch.get_rng_state()
    try:
        with torch.no_grad(), eval_mode(model):  # each module back in its own mode after (review models #4)
            out = model(image.unsqueeze(0).to(device))
    except torch.cuda.OutOfMemoryError:
        raise  # the device's memory, not the model's shape
    except (RuntimeError, ValueError, AssertionError, IndexError) as err:  # shapes (and a model's own assert on
        # them: review diff13 #7); a bug of the model's code (AttributeError, NameError) is told as it is (diff14)
        from .models import model_info

        home = model_info(config.model).get("dataset")  # where its user probably meant it to train
        remedy = (f"it is a {home} model: add --dataset {home}, or pick a {config.dataset} model"
                  if home and home != config.dataset else "pick a model for this data set")
        raise UsageError(f"model {config.model!r} does not fit {config.dataset} images of shape "
                         f"{tuple(image.shape)} ({gist(str(err)) or type(err).__name__}); {remedy} (`reste summary "
                         "--list`)") from err
    finally:
        torch.set_rng_state(rng)
    if out.dim() != 2 or out.shape[1] != num_classes:
        raise UsageError(f"model {config.model!r} gives outputs of shape {tuple(out.shape)[1:]} for "
                         f"{num_classes} classes of {config.dataset}")


def _one_epoch_note(config: TrainConfig, model: nn.Module) -> str | None:
    """A 1-epoch run whose estimators' schedules move: they stay at their start (review newuser2 #3: its settings
    said o_end 3, and it trained at o = 1, without a word)."""
    import copy

    if config.epochs != 1:
        return None
    for est in estimators_of(model):
        start, end = copy.deepcopy(est), copy.deepcopy(est)
        start.set_progress(0, 1)
        end.set_progress(1, 1)
        if start.schedule_values() != end.schedule_values():
            return ("note: a schedule moves at each epoch's start, so in a 1-epoch run the estimators stay at their "
                    "start values (those the epoch line shows) for the whole run; train 2 epochs or more to see "
                    "them move")
    return None


def format_epoch(m: dict[str, Any], epochs: int) -> str:
    """An epoch's line: its metrics, with every schedule value of the estimator (``rundir.schedule_fields``)."""
    sched = " ".join(f"{k} {v:.4g}" for k, v in schedule_fields(m).items())
    gamma = f"gamma {m['bop_gamma']:.4g}  " if "bop_gamma" in m else ""
    line = (f"epoch {m['epoch']:>{len(str(epochs))}}/{epochs}  lr {m['lr']:.4g}  {gamma}{sched + '  ' if sched else ''}"
            f"train loss {m['train_loss']:.4f} acc {m['train_acc']:.2f}  "
            f"test loss {m['test_loss']:.4f} acc {m['test_acc']:.2f}"
            + (f" top5 {m['test_top5']:.2f}" if m.get("test_top5") is not None else ""))
    if "estimating_error" in m:
        line += f"  error {m['estimating_error']:.4g} stability {m['gradient_stability']:.4g}"
    if "bop_flips" in m:
        line += f"  flips {m['bop_flips']:,}"
    return line + f"  ({m['time']:.1f}s)"


def format_result(r: dict[str, Any]) -> str:
    top5 = f", top-5 {r['best_top5']:.2f}%" if r.get("best_top5") is not None else ""
    # a resumed run: this process's time, and the whole run's (its epochs' times)
    whole = f" here ({duration(r['run_seconds'])} of epochs in all)" if r.get("run_seconds") is not None else ""
    line = (f"done: best test acc {r['best_acc']:.2f}% (epoch {r['best_epoch']}{top5}), "
            f"final test acc {r['final_acc']:.2f}% after {count(r['epochs'], 'epoch')}, {duration(r['seconds'])}"
            f"{whole} -> "
            f"{r['run_dir']}")
    if r.get("indicators"):  # the run-level values (reste.indicators.run_level: paper mode sums the stability)
        mode = r.get("indicators_mode", "general")
        error, stability = RUN_LEVEL[mode]
        line += (f"\n      indicators ({mode} mode): estimating error {r['indicators']['estimating_error']:.4g} "
                 f"({error}), gradient stability {r['indicators']['gradient_stability']:.4g} ({stability})")
    return line


# -------------------------------------------------------------------- run dirs


def default_run_dir(config: TrainConfig) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{config.model}-{config.estimator}-{stamp}"


def _open_default(run_dir: Path) -> tuple[RunDirectory, Path]:
    """Lock the default folder ``run_dir``, or, where another run took it (two started in the same second),
    ``run_dir-2``, ``run_dir-3``, ... (under torchrun each process names the folder itself: no suffix there)."""
    for n in range(1, 1000):
        candidate = run_dir if n == 1 else run_dir.with_name(f"{run_dir.name}-{n}")
        try:
            return RunDirectory.open(candidate, fresh=True), candidate
        except UsageError:
            if not candidate.exists():  # not taken: the refusal is about the place (unwritable, ...)
                raise
    raise UsageError(f"{run_dir} and 998 more folders of its name are taken; pass --out")


def _a_config(config: Any, who: str) -> None:
    """A one-line ``TypeError`` for a ``config`` that is no :class:`TrainConfig` (a dict of settings, a preset's name),
    which ``config.resolve()`` met as an AttributeError (review apifuzz1)."""
    if not isinstance(config, TrainConfig):
        hint = ("TrainConfig(**settings), or TrainConfig.from_dict(settings) for a config.json's" if isinstance(
            config, dict) else "reste.config.config_from_preset(name) for a preset" if isinstance(config, str) else
            "TrainConfig(...)")
        raise TypeError(f"{who} takes a reste.config.TrainConfig, got {type(config).__name__}; build one with {hint}")


def train(config: TrainConfig, out: str | os.PathLike | None = None, *, progress: bool | None = None,
          log: Callable[[str], None] = print_line, stop: StopRequest | None = None) -> dict[str, Any]:
    """Train from scratch into the run directory ``out`` (default ``runs/MODEL-ESTIMATOR-TIME``).

    Returns a dict with ``best_acc``, ``best_epoch``, ``best_top5`` (that epoch's top-5; None on processes other
    than rank 0), ``final_acc``, ``final_top5``, ``epochs``, ``seconds``, ``run_dir``, and the run-level
    ``indicators`` when they were on.
    The folder must be new or empty and is locked for the whole run; a run that ends before it saved a checkpoint
    removes what it wrote. SIGTERM or SIGUSR1 raise :class:`Preempted` after a mid-epoch checkpoint.
    ``progress``: each epoch's bar on stderr; by default when stderr is a terminal (pass True in a notebook).
    ``stop``: the :class:`StopRequest` the run's signal handlers set, where the caller keeps it: a signal that came
    in the last epoch, which the run finishes, is still there when it returns (a sweep stops before its next run).
    """
    _a_config(config, "train")
    config = config.resolve()
    _warn_defined_in_main(config)
    if out is not None and not str(out).strip():
        raise UsageError("--out is empty; pass a run directory")
    run_dir = Path(out) if out is not None else default_run_dir(config)
    # only the main process (rank 0 under torchrun) creates, checks and locks the folder
    if out is None and env_world_size() == 1:  # a name the user did not choose is never refused as taken
        lock, run_dir = _open_default(run_dir)
    else:
        lock = RunDirectory.open(run_dir, fresh=True, job=job_token()) if env_rank() == 0 else None
    try:
        with (stop or StopRequest()).handling() as stop, _torch_settings_kept():
            return _train_locked(config, run_dir, progress, log, stop, lock)
    except BaseException:
        if lock is not None and not last_checkpoint(lock.path).exists():  # (lock.path: where a moved folder went)
            left = lock.discard()  # nothing was kept: a failed start leaves no run directory behind
            if left:  # the error on its way out says what failed; this is a note beside it
                log(f"note: the failed start's cleanup could not remove {', '.join(left)} from {run_dir}: remove "
                    "that folder, or start the same command with --auto-resume, once it is writable")
        raise
    finally:
        if lock is not None:
            lock.close()


def _warn_defined_in_main(config: TrainConfig) -> None:
    """Warn (rank 0) where the run's estimator, model or data set is defined in ``__main__`` (the script or the
    notebook that trains it): config.json can name no module to load it from, so ``reste eval``, ``reste export``
    and a resume in another process cannot build the run's model (review api #13: it trained without a word)."""
    from .datasets import defined_in as dataset_module
    from .estimators import estimator_class

    used = ((f"estimator {config.estimator!r}", estimator_class(config.estimator).__module__),
            (f"model {config.model!r}", models.defined_in(config.model)),
            (f"data set {config.dataset!r}", dataset_module(config.dataset)))
    found = [what for what, module in used if module in ("__main__", "__mp_main__") and what not in _TOLD_MAIN]
    if found and env_rank() == 0:
        _TOLD_MAIN.update(found)  # once a process (a sweep's runs: once, not once a run: rev16 #6)
        them = "it" if len(found) == 1 else "them"
        warnings.warn(f"the run's {' and '.join(found)} {'is' if len(found) == 1 else 'are'} defined in __main__ "
                      f"(this script or notebook): its config.json can name no module to load {them} from, so reste "
                      f"eval, reste export and a resume in another process cannot build its model; define {them} in "
                      "a module you import", stacklevel=outside_reste())


_TOLD_MAIN: set[str] = set()  # what _warn_defined_in_main said in this process


CPP_NODES = "C++ extension"
_SAME_PATH = {"C++ extension (RESTE_CUDA_EXT=1)": CPP_NODES}  # what checkpoints before RESTE_CUDA_EXT=auto said


NO_KERNEL = "PyTorch ops (no fused kernel computes its estimators' g)"  # every path alike, whatever was recorded


def kernel_path(device: torch.device, model: nn.Module | None = None) -> str:
    """Which code computes sign and the estimators' backward on ``device`` in this process (recorded in each
    checkpoint: a resume on another path can round differently). A ``model`` whose estimators all have a ``g`` of
    their own (a plugin's), which no kernel computes, takes PyTorch ops on every path (review extend #6: its resume
    across RESTE_FUSED said its results could differ, and they were the same to the bit)."""
    from . import fused

    ests = estimators_of(model) if model is not None else []
    if ests and all(est._kernel_kind() is None for est in ests):
        return NO_KERNEL
    if not fused.enabled():
        return "PyTorch ops (RESTE_FUSED=0)"
    if device.type == "cpu":
        return "fused C kernels" if fused.available() else "PyTorch ops (the C kernels did not build)"
    if device.type == "cuda":
        from . import cuda_ext, triton_dispatch

        if cuda_ext.ready():  # taken by CUDA tensors now (a run builds it at its start: _Run; --compile does not)
            return CPP_NODES
        return "Triton kernels" if triton_dispatch.available() else "PyTorch ops (no Triton)"
    return "PyTorch ops"


@contextlib.contextmanager
def _worker_deaths_at_next(loader: Any):
    """An iterator of ``loader``'s batches, and SIGCHLD at its default action while they are trained (POSIX, the
    main thread; set after the iterator, whose first worker process installs the handler). PyTorch's
    DataLoader handler raises the death of a worker (the out-of-memory killer's usual victim) wherever the main
    thread is, mostly inside a step, whose state cannot be kept: the steps done were lost, and a run in its first
    epoch removed. Without the handler the loader raises it from the batch it waits for (its status check, every
    5 s), where the steps done are kept (:meth:`_Run._data_failed`; review imgdist #4)."""
    batches = iter(loader)
    chld = getattr(signal, "SIGCHLD", None)
    if chld is None or threading.current_thread() is not threading.main_thread():
        yield batches
        return
    previous = signal.signal(chld, signal.SIG_DFL)
    try:
        yield batches
    except BaseException:
        # the run ends: its workers go now, while their deaths raise nothing (review rev13 #8: shut down later by the
        # garbage collector, after PyTorch's handler was back, their exits raised inside the failed start's cleanup)
        shutdown = getattr(batches, "_shutdown_workers", None)
        if shutdown is not None:
            with contextlib.suppress(Exception):
                shutdown()
        raise
    finally:
        signal.signal(chld, signal.SIG_DFL if previous is None else previous)  # (None: not set from Python)


@contextlib.contextmanager
def _torch_settings_kept():
    """A run sets torch's CPU threads to its own ``threads``, on CUDA cuDNN's autotuner on
    (:func:`tune_convolutions`), with --cuda-graphs the Triton kernels in place of the C++ nodes
    (:func:`reste.cuda_ext.leave_to_triton`), and on ``cuda:N`` the current CUDA device (:func:`select_cuda_device`);
    the caller's settings come back after it. (The current device stayed ``cuda:N``: a later run or evaluation on
    ``--device cuda`` in the same process went to GPU N, not the caller's: review gpuread1 #2. Not under torchrun,
    whose process keeps its LOCAL_RANK's GPU to the end.)"""
    from . import cuda_ext

    threads, tuned, extension = torch.get_num_threads(), torch.backends.cudnn.benchmark, cuda_ext.setting()
    # (CUDA not started yet: its current device, once started, is 0; asking would start it on a CPU run)
    current = torch.cuda.current_device() if torch.cuda.is_initialized() else 0
    try:
        yield
    finally:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        torch.backends.cudnn.benchmark = tuned
        cuda_ext.restore_setting(extension)
        if env_world_size() <= 1 and torch.cuda.is_initialized() and torch.cuda.current_device() != current:
            torch.cuda.set_device(current)


def tune_convolutions(device: torch.device) -> None:
    """On CUDA, let cuDNN time its convolution algorithms once per shape and keep the fastest
    (``torch.backends.cudnn.benchmark``, as the authors' training sets it): a run's shapes are fixed, so the
    timing is paid in its first steps. Not where cuDNN, or torch as a whole (``torch.use_deterministic_algorithms``),
    is asked to be deterministic: its autotuner may pick another algorithm in another process; nor with
    ``RESTE_CUDNN_BENCHMARK=0`` in the environment (the command line's way to keep it off)."""
    deterministic = torch.backends.cudnn.deterministic or torch.are_deterministic_algorithms_enabled()
    if device.type == "cuda" and not deterministic and os.environ.get("RESTE_CUDNN_BENCHMARK", "1").strip() != "0":
        torch.backends.cudnn.benchmark = True


def _train_locked(config: TrainConfig, run_dir: Path, progress: bool, log: Callable[[str], None],
                  stop: StopRequest, folder: RunDirectory | None = None) -> dict[str, Any]:
    run = _Run(config, run_dir, log, progress, stop, folder)
    config = run.config  # with the CPU threads it runs with
    if run.dist.main:  # (after the data's loading, minutes on ImageNet: where the folder is now, review diff19 #1)
        run._in_place()
        run_dir = run.run_dir
        write_config(run_dir, config)
        start_metrics(run_dir)
    procs, batch, world = "", f"batch {config.batch_size}", run.dist.world_size
    if run.dist.enabled:
        procs = f", {world} processes ({batchnorm_across(config.sync_bn)})"
        batch += f" per process ({config.batch_size * world} in all)"
    batch += split_batch(config.batch_size, config.accumulate)
    run.log(f"training {config.model} ({binarization_text(config.to_dict())}) on {config.dataset}: "
            f"{config.epochs} epoch{'s' * (config.epochs != 1)}, {batch}, {optimizer_text(config.to_dict())}, "
            f"device {run.device}{procs} -> {run_dir}")
    for note in (*recipe_notes(config, world), accumulate_note(config, run.model, world_size=world),
                 gpu_speed_tip(config, run.device, run.dist.enabled), _one_epoch_note(config, run.model)):
        if note:
            run.log(note)
    return run.run()


class _EagerFallback(logging.Handler):
    """Says once, in the run's own log (a sweep's train.log), that dynamo stopped compiling the step at its recompile
    limit and runs it eagerly from there: otherwise only dynamo's warning on stderr said so, and config.json says
    compile (review leak1, suggestion 2). FDA's n, compiled into the step, recompiles it at each new value."""

    def __init__(self, log: Callable[[str], None]) -> None:
        super().__init__(logging.WARNING)
        self.line, self.said = log, False

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        # (torch before 2.7 names the limit cache_size_limit: review compat1 #3)
        setting = next((name for name in ("recompile_limit", "cache_size_limit") if name in message), None)
        if not self.said and setting:
            self.said = True
            self.line(f"note: --compile: dynamo reached its recompile limit (torch._dynamo.config.{setting}) as "
                      "the step's shapes or scheduled values changed again (FDA's n recompiles it at each value): "
                      "the step runs eagerly from here")


def planned_config(config: TrainConfig) -> TrainConfig:
    """The settings a run of ``config`` trains with, as its config.json records them (:func:`reste.config.as_recorded`;
    the machine's, such as CPU threads, as given)."""
    _a_config(config, "planned_config")
    planned = as_recorded(config.resolve())
    if planned.data_path is None and (read_from := default_read_from(planned.dataset)):  # (review rev13 #10)
        planned = dataclasses.replace(planned, data_path=read_from)
    return planned


def preset_changes(config: TrainConfig, world_size: int = 1) -> dict[str, tuple[Any, Any]]:
    """{setting: (the preset's value, the run's)} for each setting of a preset run (``config.preset``) that
    makes it another training than the preset's: not those of :func:`reste.rundir.recipe_free`, which decides
    for the report's published number too (the seed, the settings free to change on resume, how fast it runs or what
    it measures, ``sync_bn`` on one process; but ``accumulate`` where it splits the batch of a model with BatchNorm).
    An estimator option is ``estimator_options.NAME``; the batch is the one step's over ``world_size`` processes
    (``--batch-size`` is per process); {} without a preset, or with a name that is none of reste's (a label of the
    caller's)."""
    _a_config(config, "preset_changes")
    if config.preset not in PRESETS:
        return {}
    recorded = as_recorded(config.resolve())
    ref, mine = as_recorded(config_from_preset(config.preset).resolve()).to_dict(), recorded.to_dict()
    mine["batch_size"] *= world_size
    free = recipe_free(recorded, world_size)
    changes = {}
    for key, value in mine.items():
        if key in free:
            continue
        if key == "estimator_options" and mine["estimator"] == ref["estimator"]:
            changes.update({f"{key}.{k}": (ref[key].get(k), v) for k, v in value.items() if ref[key].get(k) != v})
        elif key != "estimator_options" and ref[key] != value:
            changes[key] = (ref[key], value)
    return changes


def _setting_name(key: str) -> str:
    """A TrainConfig field as a note names it: its flag on the command line (``warm_up``: ``--warm-up``), else
    the field; an estimator option (``estimator_options.o_end``) and ``sync_bn`` (a --no- flag alone) as they are."""
    if "." in key or key == "sync_bn":
        return key
    return option("--model-option" if key == "model_options" else f"--{key.replace('_', '-')}", key)


def recipe_notes(config: TrainConfig, world_size: int = 1) -> list[str]:
    """What a preset run does differently from its preset (:func:`preset_changes`), and under torchrun, when that
    is the batch, the ``--batch-size`` that keeps it."""
    changes = preset_changes(config, world_size)
    if not changes:
        return []
    # the recipe of another preset (--estimator ste on cifar10-resnet20-1w1a trains cifar10-resnet20-ste's): said so,
    # as the report gives that preset's published number beside it (review experiments #4)
    other = next((name for name in PRESETS if name != config.preset
                  and not preset_changes(dataclasses.replace(config, preset=name), world_size)), None)
    if other:
        return [f"note: this run trains preset {other}'s recipe (not preset {config.preset}'s): the report gives "
                f"{other}'s published number beside it"]
    name = {"batch_size": f"batch ({world_size} processes)"} if world_size > 1 else {}
    why = {}
    warm_up, epochs = changes.get("warm_up"), config.epochs
    if warm_up and "epochs" in changes and isinstance(warm_up[0], int) and warm_up[1] == min(warm_up[0], epochs - 1):
        why["warm_up"] = f"; shortened to fit {count(epochs, 'epoch')}"  # not a flag given: the default's clamp
    what = ", ".join(f"{name.get(k) or _setting_name(k)} {b!r} (preset: {a!r}{why.get(k, '')})"
                     for k, (a, b) in changes.items())
    notes = [f"note: this run changes preset {config.preset}'s recipe: {what}"]
    recipe = changes.get("batch_size", (0,))[0]
    if world_size > 1 and recipe:
        notes.append(f"note: --batch-size is per process; pass --batch-size {recipe // world_size} to keep the "
                     f"preset's batch of {recipe}" if recipe % world_size == 0 else
                     f"note: --batch-size is per process, and the preset's batch of {recipe} is not a multiple of "
                     f"{world_size} processes: run a count that divides it, or scale --lr with the batch")
    return notes


def accumulate_note(config: TrainConfig, model: nn.Module, was: TrainConfig | None = None,
                    world_size: int = 1) -> str | None:
    """The BatchNorm caveat of ``--accumulate`` for a model with BatchNorm: each step's gradient is the batch's
    mean, but BatchNorm normalises each micro-batch over itself. ``was``: on resume, the settings the run trained
    with (a note only where its --accumulate differs); ``world_size``: processes, whose micro-batches synchronised
    BatchNorm normalises together."""
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return None

    def images(settings: TrainConfig) -> str:
        n = settings.batch_size // settings.accumulate
        together = world_size > 1 and config.sync_bn
        return f"{n} images{f' per process ({n * world_size} in all)' if together else ''}"

    step = config.batch_size * world_size  # the step's batch (--batch-size is per process)
    if was is None:
        if config.accumulate == 1:
            return None
        return (f"note: --accumulate {config.accumulate}: each step's gradient is the batch of {step}'s (up to "
                f"rounding), but BatchNorm normalises over each micro-batch of {images(config)}, so the run differs "
                "from one on whole batches")
    if was.accumulate == config.accumulate:
        return None
    return (f"note: the run trained with --accumulate {was.accumulate} and continues with {config.accumulate}: "
            f"each step's gradient stays the batch of {step}'s (up to rounding), but BatchNorm now normalises over "
            f"{images(config)} instead of {images(was)}")


def _forward_reads_schedule(model: nn.Module) -> bool:
    """Whether an estimator of ``model`` has a forward of its own (a plugin's), which may read its schedule values:
    the graphed evaluation, captured with the values of its capture, is then captured again each epoch."""
    return any(not est.forward_is_sign() for est in estimators_of(model))


def gpu_speed_tip(config: TrainConfig, device: torch.device, distributed: bool) -> str | None:
    """A note for an eager CUDA run, whose small models' steps the host bounds: ``--cuda-graphs`` where the run could
    take it (one process, no --compile, no fp16, no --accumulate, not Bop), else why the C++ nodes
    (:mod:`reste.cuda_ext`) are not used, where ``RESTE_CUDA_EXT`` did not turn them off (this builds them, once,
    where they can be). The figures are one run's of benchmarks/gpu_check.sh (RESULTS.md, 2026-12-04, second
    session: a ResNet-20 ReSTE step in bf16 took 21.3 ms eager through the Python nodes, 12.0 ms through the C++
    nodes, 4.2 ms graphed; the float step 11.7 ms eager)."""
    if device.type != "cuda" or config.cuda_graphs or config.compile:
        return None
    from . import cuda_ext

    cpp = cuda_ext.available()  # (never where RESTE_CUDA_EXT turns it off)
    if not (config.amp == "fp16" or distributed or config.accumulate > 1 or config.optimizer == "bop"):
        eager = "12.0 ms eager through reste's C++ nodes" if cpp else "21.3 ms eager"
        return ("note: this GPU run is eager; --cuda-graphs replays each step as one CUDA graph (on an H200 a "
                f"ResNet-20 ReSTE step in bf16 took 4.2 ms graphed against {eager}: the README's Speed section)")
    from . import fused

    if cpp or cuda_ext.mode() == "off" or not fused.enabled():  # (RESTE_FUSED=0: the PyTorch ops, as asked)
        return None
    return ("note: this GPU run is eager and its binary layers run through Python nodes: reste's C++ nodes are not "
            f"used here ({cuda_ext.error() or 'not built'}); on an H200 they took a ResNet-20 ReSTE step in bf16 from "
            "21.3 ms to 12.0 ms, against 11.7 ms for the float step (the README's Speed section)")


def resume(run_dir: str | os.PathLike, overrides: dict[str, Any] | None = None, *, force: bool = False,
           progress: bool | None = None, log: Callable[[str], None] = print_line,
           stop: StopRequest | None = None) -> dict[str, Any]:
    """Continue the run in ``run_dir`` from its last finished epoch (``progress`` as for :func:`train`).

    ``overrides`` are settings given again on the command line; a setting that
    differs from the saved one is refused (naming it) unless ``force`` is true.
    Settings that do not change what is trained (data path, workers, device, eval
    batch size, threads, save_every, accumulate) may always differ; another CPU thread count can
    change the last bits of float32 sums, another ``accumulate`` the micro-batches BatchNorm normalises
    over, and a note says so. A CPU run continues with
    the thread count it recorded unless told otherwise. The folder is locked for the
    whole run, and a mid-epoch ``last.pt`` continues at its step. ``stop``: as for :func:`train`.
    """
    run_dir = require_run_path(run_dir)
    if env_rank() == 0:
        lock = RunDirectory.open(run_dir, fresh=False, job=job_token())
    else:
        lock = None
        _await_main_lock(run_dir, log)
    try:
        with (stop or StopRequest()).handling() as stop, _torch_settings_kept():
            return _resume_locked(run_dir, overrides, force, progress, log, stop, lock)
    finally:
        if lock is not None:
            lock.close()


#: how long a process other than rank 0 waits for its rank 0 to lock the run folder it resumes
MAIN_LOCK_WAIT = 300.0


def _await_main_lock(run_dir: Path, log: Callable[[str], None]) -> None:
    """(torchrun, a process other than rank 0) Wait until this job's rank 0 holds the lock of ``run_dir``, before
    this process reads the run. A folder another job is using, which rank 0 refuses ("in use by pid N"), would give
    this process an error of its own about what it read there (the other job's settings, a checkpoint being
    written), printed beside rank 0's line or before it. When rank 0 refuses, the launcher ends this process as it
    waits; after :data:`MAIN_LOCK_WAIT` seconds it reads the run anyway, with a note."""
    job = job_token()
    if not job:  # a RANK without torchrun's other variables: no job whose rank 0 could be waited for
        return
    if not await_main(lambda: held_by(run_dir, job), MAIN_LOCK_WAIT):
        log(f"note: rank 0 has not locked {run_dir} in {MAIN_LOCK_WAIT:.0f}s; this process reads it without the "
            "lock")


def check_graphs_device(config: TrainConfig, here: bool = True) -> None:
    """``--cuda-graphs`` on a device that cannot capture, refused as the run's start refuses it, before it
    (``--print-config``, a sweep's plan): an explicit ``--device cpu`` always; ``--device auto`` where ``here``
    (this machine's: a dry run may plan for a GPU machine) finds no CUDA."""
    if config.cuda_graphs is not True or not isinstance(config.device, str):
        return
    name = config.device.strip().lower()
    if name != "cpu" and not (here and name == "auto"):
        return
    device = pick_device(name, present=False)
    try:
        _graph_backend(device)
    except ValueError:
        why = "--device cpu trains on the CPU: drop one of them" if name == "cpu" else \
            "CUDA is not available here; drop --cuda-graphs"
        raise UsageError(f"--cuda-graphs needs a CUDA device; {why}") from None


def _check_resumed_graphs(run_dir: Path, saved: TrainConfig, config: TrainConfig, given: dict[str, Any]) -> None:
    """A resume whose ``--cuda-graphs`` meets a CPU: the way on, by which of the two was recorded (review diff16 #3:
    "drop one of them" led nowhere)."""
    try:
        check_graphs_device(config)
    except UsageError:
        if saved.cuda_graphs is True and "cuda_graphs" not in given:
            again = option("--no-cuda-graphs --force", 'overrides={"cuda_graphs": False}, force=True')
            raise UsageError(f"{run_dir} was recorded with --cuda-graphs, which needs a CUDA device; continue it on "
                             f"the CPU with {again}") from None
        if "device" not in given and str(saved.device).strip().lower() == "cpu":
            add = option("--device cuda", 'overrides={"device": "cuda"}')
            raise UsageError(f"{run_dir} was recorded with --device cpu, and --cuda-graphs needs a CUDA device: add "
                             f"{add}, or drop --cuda-graphs") from None
        raise


def _resume_locked(run_dir: Path, overrides: dict[str, Any] | None, force: bool, progress: bool,
                   log: Callable[[str], None], stop: StopRequest, folder: RunDirectory | None = None
                   ) -> dict[str, Any]:
    last = last_checkpoint(run_dir)
    if restore_config(run_dir, write=env_rank() == 0) and env_rank() == 0:
        log(f"note: {run_dir / CONFIG} was missing; written again from {last}")
    saved = saved_config(run_dir)
    resumption.check_last_kept(run_dir)
    config = resumption.continue_config(run_dir, saved, overrides, force)
    _check_resumed_graphs(run_dir, saved, config, overrides or {})
    try:
        run = _Run(config, run_dir, log, progress, stop, folder)
    except ModelOptionError as err:
        if "model_options" in (overrides or {}):  # the options given again: the error names them as they are
            raise
        # the run's own options, which its model's factory took then: the code that defines the model changed
        raise ckpt_io.code_changed(run_dir, repr(saved.model), saved.model_options, err.reason,
                                   plugin=bool(saved.plugins)) from None
    run._in_place()  # (after the data's loading: where the folder is now, review diff19 #1)
    run_dir, last = run.run_dir, last_checkpoint(run.run_dir)
    config = run.config
    trained = saved  # the settings the run trained with: last.pt's (config.json's where it has none)
    ckpt = None
    if last.exists():
        ckpt = resumption.load_last(run_dir, run.device)
        resumption.check_checkpoint(ckpt, config, last, given=overrides or {})
        foreign = other_run(run_dir, ckpt)
        if foreign:
            raise UsageError(foreign)
        check_classes((ckpt.get("model_options") or {}).get("num_classes"), ckpt.get("classes"), run.info,
                      config.data_path)
        trained, notes = resumption.trained_settings(ckpt, saved, config, run_dir)
        done = ckpt["epoch"] + resumption.trained_epoch(ckpt)  # (an epoch saved before its evaluation is trained)
        notes += resumption.schedule_notes(trained.epochs, config.epochs, done)
        notes += resumption.recorded_places_notes(run_dir, config, overrides)
        if done < config.epochs:
            notes.append(accumulate_note(config, run.model, trained, run.dist.world_size))
        for note in filter(None, notes):
            run.log(note)
        if trained.optimizer != config.optimizer:  # another optimizer's state starts afresh
            ckpt = {**ckpt, "optimizer": None}
        if canonical_estimator(trained.estimator) != config.estimator or trained.a32 != config.a32 \
                or trained.estimator_options != config.estimator_options:
            # (--force) the weights go on, not the old estimators' schedule state, which another estimator (or one
            # of other hyper-parameters: --o-end 5) refuses and a layer without (or with a new) input estimator does
            # not have (set_progress sets the new ones at the epoch's start)
            ckpt = {**ckpt, "model": {k: v for k, v in ckpt["model"].items() if not k.endswith("_extra_state")}}
        elif trained.scaling != config.scaling:  # (--force) the layers' own state names the scaling they trained with
            ckpt = {**ckpt, "model": {k: v for k, v in ckpt["model"].items()
                                      if not (k.endswith("._extra_state") and set(v or {}) == {"scaling"})}}
        run.restore(ckpt)
    idle = run.start_epoch >= config.epochs
    changed = ckpt_io.software_change(ckpt.get("software")) if last.exists() else None
    if not idle and changed:
        run.log(f"note: {last} was written by other software ({changed}): the result can differ in its last bits "
                "from an uninterrupted run")
    edited = ckpt_io.plugins_edited(ckpt) if last.exists() else []
    if not idle and edited:  # (an edit may change g itself: more than the last bits, review diff30, suggestion 1)
        run.log(f"note: the file of the plugin {', '.join(edited)} changed since {last} was written: the run continues "
                "with the code loaded now")
    if not idle and run.device.type == "cpu" and config.compile and run.start_step + run.start_epoch > 0:
        # (review exact1 #2) dynamo recompiles a step when an epoch's last batch is smaller and when a schedule
        # moves, specialised by what the process saw before: a resumed process's first compile differs
        run.log("note: --compile: this process compiles the step afresh, not as the process it continues had come "
                "to (after its recompiles for a smaller last batch or a moved schedule), so the result can differ in "
                "its last bits from an uninterrupted run; train without --compile where a resume must be bit-exact")
    if not idle and run.device.type == "cpu" and saved.threads and config.threads != saved.threads:
        run.log(f"note: {run_dir} trained with {saved.threads} CPU thread(s) and continues with {config.threads}: "
                "float32 sums may round differently, so the result can differ in its last bits from an "
                "uninterrupted run")
    if not idle and trained.eval_batch_size and config.eval_batch_size != trained.eval_batch_size:
        # (review combos #2) another batch computes the test logits with other sums
        run.log(f"note: {run_dir} evaluated with batches of {trained.eval_batch_size} and continues with "
                f"{config.eval_batch_size}: the test metrics can differ in their last bits (and a near-tie in a "
                "prediction) from an uninterrupted run's")
    if run.dist.main:
        run._in_place()
        run_dir, last = run.run_dir, last_checkpoint(run.run_dir)
        record = resumption.settings_to_record(config, trained, idle)
        if record != saved:
            write_config(run_dir, record)
        measured = saved_measure(ckpt.get("indicators")) if ckpt is not None else None  # (no last.pt: none)
        lost = truncate_metrics(run_dir, run.start_epoch, run.last_metrics, measured)
        if lost:
            run.log(f"warning: {run_dir / METRICS} has no line for epoch(s) {spans(lost)} (damaged or "
                    "deleted); their metrics are lost")
        if last.exists():
            repair_best(run_dir, ckpt)
            check_kept(run_dir, run.best_epoch, run.log)
            if config.keep_top:  # a crash may have come before the epoch's copy or the removals
                keep_top(run_dir, config.keep_top, ckpt["epoch"], None if ckpt.get("step") else last.read_bytes())
    if idle:
        run.log(f"{run_dir} already finished {config.epochs} epoch{'s' * (config.epochs != 1)}; nothing to do")
    elif run.start_step >= len(run.train_loader):  # saved before its evaluation: only that is left
        run.log(f"resuming {run_dir} at the evaluation of epoch {run.start_epoch + 1}/{config.epochs} (its training "
                "is done)")
    elif run.start_step:
        run.log(f"resuming {run_dir} at epoch {run.start_epoch + 1}/{config.epochs}, step "
                f"{run.start_step + 1}/{len(run.train_loader)}")
    else:
        run.log(f"resuming {run_dir} at epoch {run.start_epoch + 1}/{config.epochs}")
    return run.run()


def train_or_resume(config: TrainConfig, out: str | os.PathLike, *, overrides: dict[str, Any] | None = None,
                    force: bool = False, progress: bool | None = None,
                    log: Callable[[str], None] = print_line) -> dict[str, Any]:
    """Start ``config`` in ``out``, or continue the run ``out`` holds already: one call for a job that may be
    preempted and started again (what ``reste train --auto-resume --out DIR`` does).

    A run to continue must be this one: every setting ``config`` gives (not ``None``; a default such as
    ``seed=0`` too) that changes training and differs from the run's saved one is refused, naming it, unless
    ``force`` (see :func:`resume`); those left ``None`` (the data set's defaults, and what is derived from them,
    such as CIFAR-10's warm-up from the epochs) keep the run's. Another data set, model or preset is refused
    always. ``overrides``: compare these settings only (the CLI passes the flags given) instead.
    """
    _a_config(config, "train_or_resume")
    if out is None or not str(out).strip():
        raise UsageError("train_or_resume needs out: the folder to start the run in, or to continue it from")
    try:
        return _train_or_resume(config, out, overrides, force, progress, log)
    except Preempted as err:
        err.run_again()  # --auto-resume: the job script runs again as it is
        raise


def _train_or_resume(config: TrainConfig, out: str | os.PathLike, overrides: dict[str, Any] | None, force: bool,
                     progress: bool | None, log: Callable[[str], None]) -> dict[str, Any]:
    if not holds_run(out):
        return train(config, out, progress=progress, log=log)
    saved = run_config(out)
    if config.preset and get_preset(config.preset).name != saved.preset:
        what = f"preset {saved.preset}" if saved.preset else "no preset"
        raise UsageError(f"{out} holds a run of {what}, not of preset {config.preset}; start this one in another "
                         "folder")
    if overrides is None:  # a setting left unset (None) keeps the run's: its warm-up, its thread count
        config.resolve()  # (its errors, before anything is compared)
        overrides = {k: v for k, v in config.to_dict().items() if v is not None and k != "preset"}
    return resume(out, overrides, force=force, progress=progress, log=log)


__all__ = [
    "TrainConfig", "train", "resume", "train_or_resume", "evaluate", "evaluate_checkpoint", "TrainingDiverged",
    "Preempted",
    "format_epoch",
]