"""``reste show RUN_DIR``: a run's settings, progress, accuracy and indicators, read from its ``config.json`` and
``metrics.jsonl`` alone (no checkpoint loaded, no data read, no lock taken: a run still training can be shown)."""

from __future__ import annotations

import os
from typing import Any

from .errors import UsageError, shell_word
from .indicators import RUN_LEVEL, run_level
from .rundir import best_line, read_metrics, saved_config, schedule_fields
from .wording import count, duration


def show_run(run_dir: str | os.PathLike) -> str:
    """What ``reste show RUN_DIR`` prints; a folder that holds no run is a one-line ``UsageError``."""
    if os.path.isfile(run_dir):  # a checkpoint or a log of the run: its folder is what shows it
        raise UsageError(f"{run_dir} is a file; pass the run's folder (the one holding config.json), e.g. "
                         f"reste show {shell_word(os.path.dirname(os.path.abspath(run_dir)))}")
    config = saved_config(run_dir)
    metrics = read_metrics(run_dir, missing_ok=True)
    options = " ".join(f"{k}={v}" for k, v in sorted({**config.estimator_options, **config.model_options}.items()))
    lines = [f"run        {run_dir}",
             f"settings   {config.model} ({config.estimator}{', 1W/32A' if config.a32 else ''}) on {config.dataset}: "
             f"{count(config.epochs, 'epoch')}, batch {config.batch_size}, {config.optimizer} lr {config.lr:g}, "
             f"seed {config.seed}{f', preset {config.preset}' if config.preset else ''}"
             + (f"\n           {options}" if options else "")]
    done = len(metrics)
    if done >= config.epochs:
        lines.append(f"progress   finished: {done} of {count(config.epochs, 'epoch')}")
    else:
        lines.append(f"progress   {done} of {count(config.epochs, 'epoch')} (training, or stopped: "
                     f"`reste train --resume {shell_word(run_dir)}` continues it)")
    if not metrics:
        return "\n".join(lines)
    best = best_line(metrics)
    last = metrics[-1]
    lines.append(f"best       test top-1 {best['test_acc']:.2f}%, top-5 {_top5(best)} at epoch {best['epoch']}")
    sched = " ".join(f"{k} {v:.4g}" for k, v in schedule_fields(last).items())
    lines.append(f"last       test top-1 {last['test_acc']:.2f}%, top-5 {_top5(last)} at epoch {last['epoch']}"
                 f"{f' ({sched})' if sched else ''}, {duration(sum(m.get('time', 0.0) for m in metrics))} of training")
    history = [m for m in metrics if "estimating_error" in m]
    if history:
        mode = config.indicators or "general"
        values = run_level(history, mode)
        error, stability = RUN_LEVEL[mode]
        lines.append(f"indicators ({mode} mode, {len(history)} epochs): estimating error "
                     f"{values['estimating_error']:.4g} ({error}), gradient stability "
                     f"{values['gradient_stability']:.4g} ({stability})")
    return "\n".join(lines)


def _top5(m: dict[str, Any]) -> str:
    return f"{m['test_top5']:.2f}%" if m.get("test_top5") is not None else "-"

