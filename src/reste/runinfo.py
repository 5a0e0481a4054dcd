"""``reste show RUN_DIR``: a run's settings, progress, accuracy and indicators, read from its ``config.json`` and
``metrics.jsonl`` alone (no checkpoint loaded, but for the settings where config.json is gone; no data read, no
lock taken: a run still training can be shown; on Linux, /proc/locks tells whether a process holds it)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .checkpoint import UNREADABLE, read_structure, unregistered
from .config import FULL_PRECISION, binarization_text, optimizer_text
from .errors import UsageError
from .indicators import RUN_LEVEL, run_indicators
from .plugins import well_formed
from .rundir import (CONFIG, METRICS, best_line, epoch_lines, failure, last_checkpoint, last_lost,
                     lines_beyond_repair, lines_lost_why, lock_holder, not_a_folder, other_run, read_metrics,
                     resume_command, run_config, schedule_fields)
from .wording import batchnorm_across, count, duration, split_batch


_POINT = ("epoch", "test_acc", "test_top5")  # what the summary gives of the best and the last epoch


def run_summary(run_dir: str | os.PathLike, steps: bool = True) -> dict[str, Any]:
    """What ``reste show RUN_DIR --json`` prints, as a dict: ``run_dir``, ``config`` (config.json's settings),
    ``epochs_done`` (the last epoch metrics.jsonl has a line for), ``lost_epochs`` (those before it that it has
    none for: a damaged line a resume went on without, which a sweep's report cannot report), ``finished``,
    ``state`` ("training" while a process on this machine holds the folder, with its ``pid``; else "finished" or
    "stopped"; None where that cannot be told, not on Linux), ``best`` and ``last`` (``epoch``, ``test_acc``,
    ``test_top5``; ``last`` also its ``schedule`` values; None before the first epoch),
    ``saved_step`` (a run stopped inside an epoch: the batches of epoch ``epochs_done + 1`` that ``last.pt`` holds;
    else None; with ``steps`` only, as it reads the whole ``last.pt``), ``saved_processes`` (where ``last.pt`` was
    read, the processes that trained it, which a resume runs again, as the run's stop line says: inside an epoch it
    must; else None), ``saved_epoch`` (where ``last.pt`` holds
    fewer epochs than metrics.jsonl logged, its last write having failed or been cut by a crash: the epochs it holds,
    which the resume goes on from, and the run is stopped, not finished; read whole with ``steps`` where ``last.pt`` is
    older than metrics.jsonl, its header alone where the run looks finished), ``last_damaged`` (a stopped
    run's ``last.pt`` that it cannot continue from: what is wrong with it, ``"missing"`` where it is gone after
    finished epochs; with ``steps`` only), ``unlogged`` (a
    stopped run whose ``last.pt`` holds more epochs than metrics.jsonl has lines for, lines lost: [its epochs, its
    steps of the next]; with ``steps`` only), ``foreign`` (a stopped run whose ``last.pt`` is another run's, by the
    last metrics line it keeps: why, ``reste.rundir.other_run``; with ``steps`` only), ``failed`` (an
    unfinished sweep run that failed: why, ``reste.rundir.failure``), ``train_seconds`` and
    ``unregistered`` (``estimator 'NAME'`` or ``model 'NAME'`` that no module loaded here registers: a plugin's,
    which ``reste show`` does not import, or, where ``config`` records no plugin, a name edited into config.json;
    else None), ``indicators``
    (``reste.indicators.run_indicators``: ``mode``, ``o_end``, ``epochs``, ``unmeasured``, ``first_epoch``,
    ``estimating_error``,
    ``gradient_stability``, by the run-level rule of that mode, over the epochs its current history holds, as the
    run's training counts them; None when not measured). A folder that holds no run is a one-line ``UsageError``."""
    if os.path.exists(run_dir) and not os.path.isdir(run_dir):  # its checkpoint or log: its folder shows it
        raise not_a_folder(run_dir, "reste show")
    config = run_config(run_dir, checked=True)  # (config.json; where it is gone, last.pt's copy, as a resume reads)
    metrics, lost = epoch_lines(read_metrics(run_dir, missing_ok=True))
    done = metrics[-1]["epoch"] if metrics else 0  # (by its epochs, not its lines: a line may repeat)
    if done > config.epochs:  # a resume never plans fewer epochs than finished: the files are two runs'
        raise UsageError(f"{Path(run_dir) / METRICS} holds {done} epochs, more than the {config.epochs} that "
                         f"{Path(run_dir) / CONFIG} plans: they are not one run's (a config.json copied or edited by "
                         "hand?); `reste train --resume` names which settings last.pt holds")
    holder = lock_holder(run_dir)
    finished = done >= config.epochs
    behind = None  # the epoch last.pt holds, where a finished-looking run's last write failed (a full disk)
    ckpt = None  # last.pt, where it is read (whole: a damaged one reads as None, and is not read twice)
    read = False
    if done and steps and not holder and _last_older(run_dir):  # (a stopped run's too: review chaos #6)
        ckpt, read = _saved_checkpoint(run_dir), True
    saved = _position(ckpt)  # (epochs, steps, processes) of last.pt, where it is read
    header_read = saved is None and finished and not holder
    if header_read:  # a finished-looking run: its last.pt's header says whether it is
        # (a copy of the folder, or a clock step, may give the files their times in either order: review chaos5 #1)
        saved = _header_position(run_dir)
    if saved is not None and saved[0] < done:  # last.pt holds fewer epochs than metrics.jsonl logged
        finished, behind = False, saved[0]
    elif finished and saved is not None and (saved[0] < config.epochs or saved[1]):
        finished, behind = False, saved[0]
    state = ("training" if holder else "finished" if finished else "stopped" if holder == 0 else None)
    summary: dict[str, Any] = {"run_dir": os.fspath(run_dir), "config": config.to_dict(),
                               "epochs_done": done, "lost_epochs": lost, "finished": finished, "state": state,
                               "pid": holder if holder and holder > 0 else None,
                               "best": None, "last": None, "train_seconds": 0.0, "indicators": None,
                               "saved_step": None, "saved_processes": None, "saved_epoch": behind,
                               "last_damaged": None, "unlogged": None, "foreign": None,
                               "unregistered": unregistered(config.model, config.estimator),
                               "failed": failure(run_dir) if state != "training" and not finished else None}
    # last.pt read once: the step it holds, or what is wrong with it; also where the lock table cannot tell (a shared
    # file system, where torchrun runs of several nodes live: review rev13 #6)
    if steps and state in ("stopped", None):
        if not read:
            ckpt = _saved_checkpoint(run_dir)
            saved = _position(ckpt)
        summary["saved_step"] = saved[1] if saved is not None and saved[1] > 0 and saved[0] == done else None
        summary["last_damaged"] = _last_damaged(run_dir, done) if saved is None else None
        if saved is not None and saved[0] > done:  # (review combos #1) metrics.jsonl lost lines last.pt holds
            summary["unlogged"] = [saved[0], saved[1]]
        if saved is not None:  # (review chaos4 #1) another run's last.pt put back: the last line it keeps tells
            summary["foreign"] = other_run(run_dir, ckpt)
    # (review imgdist #2) inside an epoch, a torchrun run continues with as many processes; (review dist #3) at an
    # epoch's end, its stop line says so too, and --batch-size is per process
    world = saved if saved is not None or not (steps and finished) or header_read else _header_position(run_dir)
    summary["saved_processes"] = world[2] if world is not None else None  # (a finished run's too, read without its
    # tensors: review diff11 #3)
    if not metrics:
        return summary
    best, last = best_line(metrics), metrics[-1]
    summary.update(best={k: best.get(k) for k in _POINT}, last={**{k: last.get(k) for k in _POINT},
                                                                 "schedule": schedule_fields(last)},
                   train_seconds=sum(m.get("time", 0.0) for m in metrics),
                   indicators=run_indicators(metrics, config.indicators))
    return summary


def _beyond_repair(summary: dict[str, Any]) -> list[int]:
    """The epochs whose lines a finished run's metrics.jsonl lost and no resume puts back
    (``reste.rundir.lines_beyond_repair``), from :func:`run_summary` (``unlogged``: what last.pt holds)."""
    held, step = summary["unlogged"]
    done, lost = summary["epochs_done"], set(summary["lost_epochs"])
    return lines_beyond_repair(summary["config"]["epochs"], set(range(1, done + 1)) - lost, held, step)


def _last_damaged(run_dir: str | os.PathLike, done: int) -> str | None:
    """What is wrong with a stopped run's ``last.pt`` (truncated, a checksum that does not match, or lost after
    finished epochs, which ``--resume`` refuses too: review chaos3 #1), None where it is whole, or missing where a
    resume goes on: before the first epoch's end, or after a crash between epoch 1's line and its first ``last.pt``
    (``reste.rundir.last_lost``; review chaos4 #10: it said to start a new run)."""
    from .checkpoint import damage

    problem = damage(last_checkpoint(run_dir))
    return problem if problem != "missing" or (done and last_lost(run_dir)) else None


def _last_older(run_dir: str | os.PathLike) -> bool:
    """Whether ``last.pt`` was written before metrics.jsonl's last line (an epoch's last.pt is written after it): only
    then is the whole checkpoint read to tell which epoch it holds (a copy of the folder may also order them so)."""
    try:
        return os.stat(last_checkpoint(run_dir)).st_mtime_ns < os.stat(Path(run_dir) / METRICS).st_mtime_ns
    except OSError:
        return False


def _saved_checkpoint(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The run's ``last.pt``, read whole (its integrity checked); None where it is missing, damaged or being
    replaced. :func:`_position` gives where in the run it was saved."""
    from .checkpoint import load_checkpoint

    path = last_checkpoint(run_dir)
    if not path.is_file():
        return None
    try:
        return load_checkpoint(path)
    except (UsageError, OSError, RuntimeError):
        return None


def _position(ckpt: Any) -> tuple[int, int, int] | None:
    """(epochs, batches of the next, processes) as a loaded checkpoint records them (no step: 0; no world size, as
    before torchrun runs recorded it: 1); None where they are not whole numbers."""
    if not isinstance(ckpt, dict):
        return None
    epoch, step, world = ckpt.get("epoch"), ckpt.get("step") or 0, ckpt.get("world_size") or 1
    return (epoch, step, world) if all(type(v) is int for v in (epoch, step, world)) and world >= 1 else None


def _header_position(run_dir: str | os.PathLike) -> tuple[int, int, int] | None:
    """:func:`_position` of the run's ``last.pt`` read from its header alone (memory-mapped, no tensor read: a
    finished ImageNet run's is large; a crafted file whose members inflate is not loaded, review sec3 #4); None where
    that cannot be read (its integrity is for the resume to check, and :func:`_saved_checkpoint` reads the whole file
    to check it)."""
    return _position(read_structure(last_checkpoint(run_dir))[1])


def show_run(run_dir: str | os.PathLike) -> str:
    """What ``reste show RUN_DIR`` prints: :func:`run_summary` as lines."""
    summary = run_summary(run_dir)
    config = summary["config"]
    binarized = binarization_text(config)
    estimator = config["estimator_options"] if binarized != FULL_PRECISION else {}  # (recorded, unused)
    # the estimator's hyper-parameters and the model's own options, each group named (newuser3: width=8 read as one
    # of the estimator's)
    groups = [(f"{config['estimator']}:" if isinstance(config.get("estimator"), str) else "estimator:", estimator),
              ("model:", config["model_options"])]
    options = "   ".join(f"{name} " + " ".join(f"{k}={v}" for k, v in sorted(values.items()))
                         for name, values in groups if values)
    epochs = count(config["epochs"], "epoch")
    preset = f", preset {config['preset']}" if config["preset"] else ""
    world = summary["saved_processes"] or 1  # (review dist #3) --batch-size is per process, as the run's first line
    # (review mp1, suggestion 4) and whether BatchNorm was synchronised, as the run's first line said
    bn = batchnorm_across(config.get("sync_bn", True))
    together = f" per process ({config['batch_size'] * world} in all, {world} processes, {bn})" if world > 1 else ""
    lines = [f"run        {run_dir}",
             f"settings   {config['model']} ({binarized}) on "
             f"{config['dataset']}: {epochs}, batch {config['batch_size']}{together}"
             f"{split_batch(config['batch_size'], config.get('accumulate'))}, "
             f"{optimizer_text(config)}, seed {config['seed']}{preset}"
             + (f"\n           {options}" if options else "")]
    if summary["unregistered"] and not config.get("plugins"):  # (review clifuzz #5: a name edited into config.json
        # was shown without a word; a plugin's is the plugin's, which the resume command below names)
        lines.append(f"note       {summary['unregistered']} is registered by no module here, and the run records no "
                     "plugin: a resume refuses it (config.json edited? give the setting again with --force)")
    if not well_formed(config.get("plugins", [])):  # (the resume refuses it: review diff21 #6)
        lines.append(f"note       config.json's plugins are {config.get('plugins')!r}, not a list of module names or "
                     ".py files (damaged): a resume needs the run's --plugin flags given again")
    done, state = summary["epochs_done"], summary["state"]
    resume = resume_command(run_dir, world)
    if "--plugin" in resume and state != "finished":  # (review sec3 #8: a received folder's own code, unsaid)
        lines.append("note       a resume imports the run's plugins again (--plugin below): code that runs as you; "
                     "in a run folder from elsewhere, read it first")
    inside = f", and {count(summary['saved_step'], 'step')} of epoch {done + 1}" if summary["saved_step"] else ""
    if state == "training":
        pid = f" (pid {summary['pid']})" if summary["pid"] else ""
        lines.append(f"progress   {done} of {epochs}: training now{pid}")
    elif state == "finished":
        lines.append(f"progress   finished: {done} of {epochs}")
    elif state == "stopped" and summary["saved_epoch"] is not None:  # metrics.jsonl logged, last.pt not written
        lines.append(f"progress   {done} of {epochs} logged, but last.pt holds {count(summary['saved_epoch'], 'epoch')}"
                     f" (its last write failed, or a crash cut it): stopped; {resume} trains the rest again")
    elif state == "stopped" and summary["foreign"]:  # (review chaos4 #1: it said --resume continues it)
        lines.append(f"progress   {done} of {epochs}: stopped, but {summary['foreign']}")
    elif state == "stopped" and (summary["last_damaged"] or "").startswith(UNREADABLE):  # (review chaos4 #3)
        lines.append(f"progress   {done} of {epochs}: stopped, and its last.pt {summary['last_damaged']}: make it "
                     f"readable (its mode, its owner), then {resume} continues it")
    elif state == "stopped" and summary["last_damaged"]:  # (review newuser #8: it said to resume it)
        what = ("is gone (deleted or lost)" if summary["last_damaged"] == "missing" else
                f"is damaged ({summary['last_damaged']})")
        lines.append(f"progress   {done} of {epochs}: stopped, and its last.pt {what}: the run cannot continue from "
                     "it; evaluate its best.pt with reste eval, or start a new run")
    elif state == "stopped" and summary["failed"]:  # a sweep's run (the sweep trains it again)
        lines.append(f"progress   {done} of {epochs}{inside}: stopped: {summary['failed']}; {resume} continues it")
    elif state == "stopped" and summary["unlogged"] and (lost_lines := _beyond_repair(summary)):  # nothing to train
        lines.append(f"progress   {done} of {epochs} logged: damaged: "
                     + lines_lost_why(summary["run_dir"], summary["config"]["epochs"], lost_lines))
    elif state == "stopped" and summary["unlogged"]:  # metrics.jsonl lost lines (deleted, damaged)
        held, step = summary["unlogged"]
        within = f" and {count(step, 'step')} of epoch {held + 1}" if step else ""
        lines.append(f"progress   {done} of {epochs} logged, but last.pt holds {count(held, 'epoch')}{within} "
                     f"({METRICS} lost lines): stopped; {resume} continues it and writes the last epoch's line "
                     "back")
    elif state == "stopped":
        lines.append(f"progress   {done} of {epochs}{inside}: stopped (no process on this machine holds it; {resume} "
                     "continues it)")
    else:  # where the lock cannot be read without taking it
        finished = ": finished" if summary["finished"] else ""
        lines.append(f"progress   {done} of {epochs}{inside}{finished} (training, or "
                     f"stopped: {resume} continues it)")
    if summary["lost_epochs"]:
        lost = summary["lost_epochs"]
        which = f"epoch{'s' * (len(lost) > 1)} {', '.join(map(str, lost[:5]))}{', ...' if len(lost) > 5 else ''}"
        lines.append(f"lost       {METRICS} has no line for {which} (damaged, then left out by a resume): their "
                     "metrics are lost, and a sweep's report leaves the run out")
    best, last = summary["best"], summary["last"]
    if best is None:
        return "\n".join(lines)
    among = f" (of the epochs {METRICS} holds; best.pt holds the run's best)" \
        if summary["lost_epochs"] or summary["unlogged"] else ""
    lines.append(f"best       test top-1 {best['test_acc']:.2f}%, top-5 {_top5(best)} at epoch {best['epoch']}{among}")
    sched = " ".join(f"{k} {v:.4g}" for k, v in last["schedule"].items())
    lines.append(f"last       test top-1 {last['test_acc']:.2f}%, top-5 {_top5(last)} at epoch {last['epoch']}"
                 f"{f' ({sched})' if sched else ''}, {duration(summary['train_seconds'])} of training")
    ind = summary["indicators"]
    if ind:
        error, stability = RUN_LEVEL[ind["mode"]]
        at = f" at o_end {ind['o_end']:g}" if ind["o_end"] is not None else ""
        since = f" from epoch {ind['first_epoch']} on" if ind["first_epoch"] > 1 else ""  # (turned on or changed)
        left = f", {count(ind['unmeasured'], 'epoch')} unmeasured left out" if ind.get("unmeasured") else ""
        lines.append(f"indicators ({ind['mode']} mode{at}, {count(ind['epochs'], 'epoch')}{since}{left}): estimating "
                     "error "
                     f"{ind['estimating_error']:.4g} ({error}), gradient stability "
                     f"{ind['gradient_stability']:.4g} ({stability})")
    return "\n".join(lines)


def _top5(m: dict[str, Any]) -> str:
    return f"{m['test_top5']:.2f}%" if m.get("test_top5") is not None else "-"

