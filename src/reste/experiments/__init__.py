"""Experiments: grids of training runs (sweeps), their tables, and figures.

>>> from reste.config import TrainConfig
>>> from reste.experiments import run_sweep, summarize
>>> base = TrainConfig(dataset="digits", epochs=5, indicators="general")
>>> rows = run_sweep(base, {"estimator": ["ste", "reste"]}, seeds=[0, 1, 2], out_dir="sweeps/demo")
>>> rows = summarize("sweeps/demo")          # again, e.g. while a sweep is still running

Command line: ``reste sweep``, ``reste report``, ``reste plot estimators`` and
``reste plot RUN_DIR|SWEEP_DIR...`` (see :mod:`reste.experiments.cli`).
"""

from .cli import add_commands
from .plots import estimator_curves, plot_estimators, plot_runs
from .report import collect, plot_runs_or_sweeps, run_summary, summarize, sweep_run_dirs
from .sweep import Setting, expand_grid, parse_grid, parse_seeds, run_state, run_sweep

__all__ = [
    "add_commands", "run_sweep", "summarize", "collect", "run_summary", "expand_grid", "parse_grid",
    "parse_seeds", "run_state", "Setting", "plot_estimators", "plot_runs", "estimator_curves", "plot_runs_or_sweeps",
    "sweep_run_dirs",
]
