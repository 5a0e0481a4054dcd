"""Grids of training runs: expand a grid into settings, run each setting for several seeds.

A *grid* maps axis names to value lists, e.g. ``{"estimator": ["ste", "reste"]}`` or
``{"o_end": [1, 2, 3]}``. An axis is one of

* a ``TrainConfig`` field (``estimator``, ``lr``, ``epochs``, ``a32``, ``model``, ...);
* an estimator hyper-parameter: a constructor keyword of a registered estimator
  (``o_end``, ``t``, ``beta``, ``t_min``, ...) or a ``reste train`` flag name for one
  (``o_schedule``, ``fda_n``, ...); it only applies to the estimators that take it;
* a model option (``width``): a keyword of the model's factory.

``estimator_options.KEY`` and ``model_options.KEY`` name the last two explicitly.
The settings are the Cartesian product of the axes. Each setting is canonicalised
(the estimator's full hyper-parameters are written out), so two grids that ask for
the same training share its runs: a run directory is named after a hash of the
canonical config (the seed and the settings that cannot change the result left
out) and holds one folder per seed.

``run_sweep`` skips finished runs (their settings and a ``metrics.jsonl`` line for every
epoch: ``report.run_status``, the report's rule), resumes partial ones, names the ones that
cannot be reported, and writes the tables and figures with
:func:`reste.experiments.report.summarize`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import itertools
import json
import os
import signal
import sys
import time
import traceback
import warnings
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from ..config import (MAX_SEED, TrainConfig, check_threads, idle_data_flags, parse_value, refuse_binary_flags,
                      usable_cpus)
from ..datasets import get_spec
from ..models import model_info, model_keywords
from ..errors import UsageError, did_you_mean, join_command_line, machine_cause, on_command_line, print_line, shell_word
from ..distributed import signal_text, stop_signals
from ..estimators import estimator_class, estimator_flags, get_estimator, list_estimators
from ..checkpoint import load_checkpoint, read_structure
from ..wording import count, duration, listed
from ..rundir import (CONFIG, IDENTITY_FREE, RESUME_FREE, SWEEP_LOCK, TRAIN_LOG, FolderGone, Place, RunExists,
                      RunInUse, blocked, best_mismatch, cannot_make, epoch_end_whole, file_in_the_way, folder_lock,
                      forget_failure, holds_run, in_the_way, is_folder, last_checkpoint, open_append, read_metrics,
                      record_divergence, record_failure, run_config)
from ..files import make_folders, remove_folders
from .identity import canonical, config_key
from .report import (MANIFEST, PAPER_ACROSS_ESTIMATORS, RUNS_CSV, collect, earlier_rows, load_manifest, lost_last,
                     paper_mode_estimators, run_folder, run_status, summarize, write_manifest)

_NOT_AXES = ("estimator_options", "model_options", "seed", "preset")


# ------------------------------------------------------------------ grid specs


def _estimator_keywords(name: str) -> list[str]:
    """The hyper-parameters of estimator ``name``: its table, else its constructor's keywords."""
    cls = estimator_class(name)
    if cls.hyperparameters:
        return [p.name for p in cls.hyperparameters]
    return [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "args", "hyperparameters")]


def _all_estimator_keywords() -> list[str]:
    return sorted({k for name in list_estimators() for k in _estimator_keywords(name)})


def _flag_aliases() -> dict[str, str]:
    """``reste train`` flag names for estimator keywords that differ from the keyword (``fda_n``: ``n``)."""
    return {dest: takers[0][1].name for dest, takers in estimator_flags().items() if dest != takers[0][1].name}


def flag_takers(dest: str) -> dict[str, str]:
    """The estimators that ``reste train`` flag ``dest`` applies to, each with its keyword there
    (``o_schedule``: ReSTE's ``schedule``; ``alpha_schedule``: DSQ's)."""
    return {name: param.name for name, param in estimator_flags().get(dest, [])}


# Columns of the tables that a grid axis of the same name would overwrite
_TABLE_COLUMNS = ("setting", "seed", "n", "n_runs", "n_diverged", "run_dir")


def _config_fields() -> list[str]:
    """The TrainConfig fields that can be grid axes (not the seed, nor one that cannot change a run's result)."""
    return [f.name for f in dataclasses.fields(TrainConfig) if f.name not in _NOT_AXES and f.name not in RESUME_FREE]


def axis_kind(key: str, models: Iterable[str], estimators: Iterable[str] | None = None) -> tuple[str, str]:
    """Where grid axis ``key`` goes: ("field" | "estimator" | "model", the name there). ``estimators``: those the
    sweep trains (None: any registered), which decide whether a model option's name is also an estimator's."""
    key = key.strip().replace("-", "_")
    prefix, dot, rest = key.partition(".")
    if dot and prefix in ("estimator_options", "model_options") and rest:
        return prefix.split("_")[0], rest
    if key == "seed":
        raise UsageError("seed is not a grid axis; give the seeds with --seeds 0,1,2")
    if key == "preset":  # a whole recipe, whose flags the other axes and flags would override in turn
        raise UsageError("preset is not a grid axis: a preset is a whole recipe; run one sweep per preset "
                         "(reste sweep --preset NAME --out sweeps/NAME ...), and vary its settings with --grid")
    if key == "accumulate":  # (it does change a model with BatchNorm: review experiments #6)
        raise UsageError("'accumulate' is not a grid axis: it is free to change on --resume, so it is no part of a "
                         "run's identity and runs of different --accumulate would share one run folder; give it as a "
                         "fixed flag (--accumulate)")
    if key in RESUME_FREE:
        flag = "--plugin" if key == "plugins" else "--" + key.replace("_", "-")
        raise UsageError(f"{key!r} is not a grid axis: it does not change what a run trains, so all its values "
                         f"would be one run; give it as a fixed flag ({flag})")
    aliases = _flag_aliases()
    trained = None if estimators is None else [e for e in estimators if isinstance(e, str)]
    if key in _TABLE_COLUMNS:  # (its flag where an estimator this sweep trains has one: FDA's n is fda_n, not a
        # plugin's n: review extend #8)
        other = next((a for a, k in aliases.items() if k == key and (
            trained is None or any(flag_takers(a).get(e) == key for e in trained))), None)
        if other is None:  # (a model's option: model_options.KEY; review diff21 #5)
            other = f"model_options.{key}" if any(key in model_keywords(m) for m in models) else \
                f"estimator_options.{key}"
        raise UsageError(f"grid axis {key!r} has the name of a column of the tables; name it {other}")
    if key in _config_fields():
        return "field", key
    model_keys = sorted({k for m in models for k in model_keywords(m)})

    def an_estimators(name: str) -> bool:  # (one this sweep trains; an unknown one is said elsewhere)
        with contextlib.suppress(UsageError, TypeError):
            return key in _estimator_keywords(name) or name in flag_takers(key)
        return False

    taken = (key in aliases or key in _all_estimator_keywords()) if trained is None else \
        any(map(an_estimators, trained))
    if key in model_keys and taken:
        raise UsageError(f"grid axis {key!r} is both an estimator hyper-parameter and an option of the model; name "
                         f"the one you mean: estimator_options.{aliases.get(key, key)} or model_options.{key}")
    if key in model_keys:  # (no estimator of this sweep takes it)
        return "model", key
    if key in aliases:
        return "estimator", aliases[key]
    if key in _all_estimator_keywords():
        return "estimator", key
    columns = set(_TABLE_COLUMNS)  # (FDA's n is an axis as fda_n)
    known = [k for k in (*_config_fields(), *_all_estimator_keywords(), *aliases, *model_keys) if k not in columns]
    raise UsageError(
        f"unknown grid axis {key!r}; {did_you_mean(key, known)}valid: a TrainConfig field "
        f"({', '.join(_config_fields())}), an estimator "
        f"hyper-parameter ({', '.join(k for k in _all_estimator_keywords() + sorted(aliases) if k not in columns)}) "
        "or a model option "
        f"({', '.join(model_keys) or 'none for this model'})"
    )


def parse_grid(specs: Sequence[str]) -> dict[str, list[Any]]:
    """``["estimator=ste,reste", "o_end=1,3"]`` -> ``{"estimator": ["ste", "reste"], "o_end": [1, 3]}``."""
    grid: dict[str, list[Any]] = {}
    for spec in specs:
        key, sep, values = spec.partition("=")
        key = key.strip().replace("-", "_")
        items = [v.strip() for v in values.split(",")]
        if not sep or not key or not values.strip() or "" in items:
            raise UsageError(f"bad --grid {spec!r}; expected KEY=V1,V2,... e.g. --grid estimator=ste,reste")
        if key in grid:
            raise UsageError(f"grid axis {key!r} given twice; put all its values in one --grid {key}=...")
        grid[key] = [parse_value(v) for v in items]
        if len(set(map(repr, grid[key]))) != len(items):
            raise UsageError(f"--grid {key} has a value twice: {spec!r}")
    return grid


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]``."""
    try:
        seeds = [int(s) for s in text.split(",")]
    except ValueError:
        raise UsageError(f"--seeds expects integers separated by commas, e.g. 0,1,2; got {text!r}") from None
    if len(set(seeds)) != len(seeds):
        raise UsageError(f"--seeds has a seed twice: {text!r}")
    if any(s < 0 for s in seeds):
        raise UsageError(f"--seeds must be non-negative integers, got {text!r}")
    if any(s > MAX_SEED for s in seeds):  # (review fuzz1 #7: each of its runs failed, after folders were made)
        raise UsageError(f"--seeds must be in [0, 2**63 - 1], got {text!r}")
    return seeds


# -------------------------------------------------------------------- settings


@dataclass
class Setting:
    """One point of the grid: the axis values that apply to it and its canonical config."""

    label: str
    values: dict[str, Any]
    config: TrainConfig
    key: str
    runs: dict[int, Path] = field(default_factory=dict)

    def run_name(self, seed: int) -> Path:
        """The folder of its run for ``seed`` inside a sweep's runs folder: ``ESTIMATOR-KEY/seedN``."""
        return Path(f"{self.config.estimator}-{self.key}", f"seed{seed}")


def _refused_alone(base: TrainConfig, flags: dict[str, Any], error: str) -> bool:
    """Whether the sweep's flags without the grid are refused with ``error`` on their own: ``base``, or ``base`` with
    each estimator that takes one of the estimator ``flags`` (``--t-max 0 --grid estimator=ede,reste``: EDE's flag,
    review diff30, suggestion 2), with the flags it takes."""
    try:
        first = estimator_class(base.estimator).name
    except UsageError as err:
        return str(err) == error
    for estimator in dict.fromkeys([first, *(name for dest in flags for name in flag_takers(dest))]):
        options = {**(base.estimator_options if estimator == first else {}),
                   **{flag_takers(dest)[estimator]: value for dest, value in flags.items()
                      if estimator in flag_takers(dest)}}
        try:
            canonical(dataclasses.replace(base, estimator=estimator, estimator_options=options))
        except UsageError as err:
            if str(err) == error:
                return True
    return False


def expand_grid(base: TrainConfig, grid: dict[str, list[Any]], flags: dict[str, Any] | None = None
                ) -> list[Setting]:
    """The settings of ``grid`` on top of ``base``, in grid order, without duplicates.

    An axis named after a ``reste train`` flag (``o_schedule``) applies to the estimators that flag belongs to,
    and so does each of ``flags`` (flag name: value), the estimator flags that a sweep fixes: several estimators
    share a keyword (``schedule``) that each takes from a flag of its own."""
    flags = dict(flags or {})
    for dest in flags:
        if not flag_takers(dest):
            raise UsageError(f"{dest!r} is not an estimator flag of `reste train`")
    for key, values in grid.items():
        if not isinstance(values, (list, tuple)) or not values:
            raise UsageError(f"grid axis {key!r} needs a non-empty list of values, got {values!r}")
    models = [base.model] if base.model else []
    models += [m for m in grid.get("model", []) if isinstance(m, str)]
    if not models:  # each data set's default model (by any of its names: --dataset fmnist)
        for ds in [base.dataset, *grid.get("dataset", [])]:
            with contextlib.suppress(UsageError, TypeError, AttributeError):  # an unknown one: validate says so
                model = get_spec(ds).defaults.get("model")  # a plugin's may have none: resolve says so
                if model is not None:
                    models.append(model)
    kinds = {key: axis_kind(key, models, [base.estimator, *grid.get("estimator", [])]) for key in grid}
    for key, values in grid.items():  # 1 and 1.0 of a float option, ste and STE: one setting, which the user
        spelled = [repr(_one_value(kinds[key], v)) for v in values]  # asked for twice
        twice = next((i for i, text in enumerate(spelled) if text in spelled[:i]), None)
        if twice is not None:
            first = values[spelled.index(spelled[twice])]
            why = ("a number written two ways is one value" if isinstance(first, (int, float))
                   else f"two names of one {kinds[key][1]}")
            raise UsageError(f"--grid {key} has a value twice ({first!r}, {values[twice]!r}: {why}); give it once")
    # a float baseline beside binary models (--grid model=resnet20_1w1a,resnet20): it has no estimator, so the
    # estimator's settings (axes and flags) are left out of it, and it trains once, not once per estimator value
    float_beside_binary = len({_binary_model(m) for m in models}) == 2
    binary_axes = {k for k in grid if kinds[k][0] == "estimator" or kinds[k] in {("field", n) for n in BINARY_ONLY}}
    scoped = {key: flag_takers(key.strip().replace("-", "_")) for key in grid
              if kinds[key][0] == "estimator" and key.strip().replace("-", "_") in _flag_aliases()}
    fixed_takers = {dest: flag_takers(dest) for dest in flags}
    str_fields = {f.name for f in dataclasses.fields(TrainConfig) if f.type == "str"}
    # `none` is the string for fields that take one (--amp none, --scaling none) and for model options (as
    # --model-option act=none gives it): in the configs and the labels
    grid = {key: ["none" if v is None and (kinds[key][0] == "model" or kinds[key][0] == "field"
                                           and kinds[key][1] in str_fields) else v
                  for v in values] for key, values in grid.items()}
    settings: dict[str, Setting] = {}
    # a data flag that does nothing for every data set of the grid stays, for resolve to refuse as `reste train` does
    idle_everywhere = (set.intersection(*(idle_data_flags(d) for d in grid["dataset"]))
                       if grid.get("dataset") else set())
    for combo in itertools.product(*grid.values()):
        try:
            data = base.to_dict()
            data["estimator_options"] = dict(base.estimator_options)
            data["model_options"] = dict(base.model_options)
            for (key, value) in zip(grid, combo):
                kind, name = kinds[key]
                if kind == "field":
                    data[name] = value
                elif kind == "model":
                    data["model_options"][name] = value
            estimator = estimator_class(str(data["estimator"])).name  # any spelling; unknown: the one-line error
            for dest, value in flags.items():
                if estimator in fixed_takers[dest]:
                    data["estimator_options"][fixed_takers[dest][estimator]] = value
            skipped = set()
            for (key, value) in zip(grid, combo):
                kind, name = kinds[key]
                if kind == "estimator":
                    if key not in scoped:
                        data["estimator_options"][name] = value
                    elif estimator in scoped[key]:
                        data["estimator_options"][scoped[key][estimator]] = value
                    else:
                        skipped.add(key)
            accepted = _estimator_keywords(estimator)
            dropped = {k for k in data["estimator_options"] if k not in accepted}
            data["estimator_options"] = {k: v for k, v in data["estimator_options"].items() if k in accepted}
            values = {key: value for key, value in zip(grid, combo)
                      if key not in skipped and not (kinds[key][0] == "estimator" and kinds[key][1] in dropped)}
            config = TrainConfig.from_dict(data)
            if float_beside_binary and not _binary(config):
                data.update({name: getattr(TrainConfig, name) for name in BINARY_ONLY}, estimator_options={})
                values = {key: value for key, value in values.items() if key not in binary_axes}
                config = TrainConfig.from_dict(data)
            if "dataset" in grid:  # a flag meant for some of its data sets does nothing for the others: left out there
                config = config.without_idle_data_flags(keep=idle_everywhere)
            if "optimizer" in grid and config.optimizer != "bop":  # Bop's settings (flags, axes): its settings' alone
                config = dataclasses.replace(config, bop_gamma=None, bop_threshold=None)
                values = {key: value for key, value in values.items() if kinds[key] not in BOP_AXES}
            if "optimizer" in grid and config.optimizer != "sgd":  # momentum (flag, axis): SGD's settings' alone
                config = dataclasses.replace(config, momentum=TrainConfig.momentum)
                values = {key: value for key, value in values.items() if kinds[key] != ("field", "momentum")}
            if config.indicators and not _binary(config):  # a float baseline beside binary runs: nothing to measure
                config = dataclasses.replace(config, indicators=None)
            config = canonical(config)
            key = config_key(config)
            if key not in settings:
                # no axis: the estimator it trains; a float model's, which trains none, the model (review docs #6; not
                # written model=NAME, which reads as an axis: --setting would take it)
                label = ",".join(f"{k}={_fmt(v)}" for k, v in values.items()) or (
                    config.estimator if _binary(config) else f"{config.model} (full precision)")
                settings[key] = Setting(label=label, values=values, config=config, key=key)
        except UsageError as err:  # (review extend1, suggestion 4: "--k must be > 0, got 0.0" named a flag never given)
            if str(err).startswith("unknown ") or _refused_alone(base, flags, str(err)):  # (a name it names; the
                raise  # flags' own error, no setting's)
            given = ",".join(f"{k}={_fmt(v)}" for k, v in zip(grid, combo))
            raise UsageError(f"{'--grid' if on_command_line() else 'grid setting'} {given}: {err}") from None
    if "optimizer" in grid:  # a setting of one optimizer that no setting trains: dropped from each, said here
        used = {s.config.optimizer for s in settings.values()}
        for optimizer, names in (("sgd", ("momentum",)), ("bop", ("bop_gamma", "bop_threshold"))):
            given = [n for n in names if n in grid or getattr(base, n) != getattr(TrainConfig, n)]
            if given and optimizer not in used:
                raise UsageError(f"--{given[0].replace('_', '-')} is a setting of --optimizer {optimizer}, which no "
                                 f"setting of this sweep trains; drop it, or add {optimizer} to --grid optimizer")
    binary = [s for s in settings.values() if _binary(s.config)]
    if not binary and flags:  # a float model's estimator flags: said so, not "applies to the X estimator", whose
        # advice (--estimator X) is refused for the float model in turn (review diff21 #9, as reste train's)
        refuse_binary_flags(next(iter(settings.values())).config.model,
                            [estimator_flags()[d][0][1].option for d in flags])
    binary = binary or list(settings.values())
    trained = sorted({s.config.estimator for s in binary})  # (a float baseline's is no estimator it trains)
    for dest in flags:
        if not set(flag_takers(dest)) & set(trained):
            raise UsageError(f"--{dest.replace('_', '-')} applies to the {'/'.join(flag_takers(dest))} estimator, "
                             f"which this sweep does not train ({', '.join(trained)})")
    unused = [k for k in grid if kinds[k][0] == "estimator" and not any(k in s.values for s in settings.values())]
    if unused:
        raise UsageError(f"grid axis {unused[0]!r} is an option of no estimator this sweep trains "
                         f"({', '.join(trained)}); add one it belongs to (--grid estimator=...) or drop the axis")
    for key in grid:
        if kinds[key][0] == "estimator":
            _check_axis_trains(key, kinds[key][1], scoped.get(key, {}), settings.values())
            _check_axis_reached(key, kinds[key][1], settings.values())
    return list(settings.values())


def _one_value(kind: tuple[str, str], value: Any) -> Any:
    """A grid value as its setting takes it: a number as a float (1 and 1.0 of a float option are one value), an
    estimator's or a data set's name as the registry names it (ste and STE, fmnist and fashion-mnist)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if kind in (("field", "estimator"), ("field", "dataset")) and isinstance(value, str):
        with contextlib.suppress(UsageError, TypeError):  # an unknown one: the one-line error later
            return (estimator_class(value) if kind[1] == "estimator" else get_spec(value)).name
    return value


def _check_axis_trains(key: str, name: str, scoped: dict[str, str], settings: Iterable[Setting]) -> None:
    """Refuse an estimator axis that changes no run's training: each setting that takes it has settings that leave
    it unused (``Estimator.unused_hyperparameters``: o_end under ReSTE's constant schedule). Its runs would train one
    network at every value, and the tables would show a difference that is not there."""
    takers = [s for s in settings if key in s.values]
    idle = []
    for setting in takers:
        config = setting.config
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # (the constant schedule's own warning: this line says it)
                est = get_estimator(config.estimator, **config.estimator_options)
        except (UsageError, ValueError, TypeError):  # bad settings: resolve names them
            return
        if scoped.get(est.name, name) not in est.unused_hyperparameters():
            return
        idle.append(est)
    if idle:
        schedule = next((f"{p.option} constant" for p in type(idle[0]).hyperparameters if p.name == "schedule"),
                        "a constant schedule")
        raise UsageError(f"grid axis {key!r} would train the same network at each value: {idle[0].name}'s constant "
                         f"schedule ({schedule}) never moves towards it; give a moving schedule (cosine or "
                         "linear), or grid the start value instead")


def _schedule_path(config: TrainConfig) -> tuple[str, ...] | None:
    """What the estimator of ``config`` trains with in each of its epochs (``params()``, the keywords of its g and
    F, once ``set_progress`` set the epoch's start, as the run does), as texts to compare; None where that cannot be
    told (bad settings, which resolve names; no number of epochs; a forward of its own)."""
    epochs = config.epochs
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        return None
    path = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # (a schedule's own warnings: the run says them)
            est = get_estimator(config.estimator, **config.estimator_options)
            if not est.forward_is_sign():  # (a forward of its own may read what params() does not give)
                return None
            for epoch in range(epochs):
                est.set_progress(epoch, epochs)
                path.append(repr(sorted(est.params().items())))
    except Exception:  # noqa: BLE001 - bad settings, or a plugin's schedule that fails: the run says what is wrong
        return None
    return tuple(path)


def same_networks(settings: Iterable[Setting]) -> list[list[str]]:
    """Groups of settings (their labels) that train the same network: their settings but the estimator's options
    equal, and their estimators' g and F reading the same values at every epoch (crossed axes: o_end=3 and o_end=5,
    each under o_schedule=constant). Their runs are the same, seed for seed (review user3, suggestion 3)."""
    groups: dict[str, list[str]] = {}
    for s in settings:
        path = _schedule_path(s.config)
        if path is None:
            continue
        rest = {k: v for k, v in s.config.to_dict().items() if k != "estimator_options" and k not in IDENTITY_FREE}
        groups.setdefault(json.dumps([rest, path], sort_keys=True, default=str), []).append(s.label)
    return [labels for labels in groups.values() if len(labels) > 1]


def _same_networks_note(settings: list[Setting]) -> list[str]:
    return [f"sweep: note: {' and '.join(labels)} train the same network (the same g and F at every epoch, and all "
            "else the same): their runs are the same, seed for seed" for labels in same_networks(settings)]


def _check_axis_reached(key: str, name: str, settings: Iterable[Setting]) -> None:
    """Refuse an estimator axis whose values the runs' epochs never reach: settings that differ by it alone train
    with the same values at every epoch (a schedule's end, o_end, t_max, alpha_end, n_end, ..., with --epochs 1: the
    schedule is set at each epoch's start, so one epoch keeps its start value). As with
    :func:`_check_axis_trains`, its runs would train one network, and the tables show a difference that is not there
    (review experiments #10)."""
    settings = list(settings)
    groups: dict[str, list[tuple[Setting, tuple[str, ...]]]] = {}
    for s in settings:
        if key not in s.values:
            continue
        path = _schedule_path(s.config)
        if path is None:
            return
        others = json.dumps({k: v for k, v in s.values.items() if k != key}, sort_keys=True, default=str)
        groups.setdefault(others, []).append((s, path))
    compared = [runs for runs in groups.values() if len(runs) > 1]
    if not compared or any(len({path for _, path in runs}) > 1 for runs in compared):
        return
    config = compared[0][0][0].config
    epochs = config.epochs
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = get_estimator(config.estimator, **config.estimator_options)
    moved = f"{est.name}'s schedule ({', '.join(est.schedule_values()) or 'its values'})"
    # a value the schedule moves towards (o_end), or the way it moves (o_schedule)
    towards = all(isinstance(v, (int, float)) and not isinstance(v, bool) for s in settings if key in s.values
                  for v in [s.values[key]])
    start = ", or grid the start value instead" if towards else ""
    never = f"and never reaches {name}" if towards else f"whatever {key} is"
    if epochs == 1:
        raise UsageError(f"grid axis {key!r} would train the same network at each value: {moved} moves only between "
                         "epochs (it is set at each epoch's start), so a 1-epoch run trains at its start value "
                         f"{never}; give --epochs 2 or more{start}")
    raise UsageError(f"grid axis {key!r} would train the same network at each value: over {count(epochs, 'epoch')} "
                     f"{moved}, set at each epoch's start, takes the same values at every value of {key}; give more "
                     f"--epochs{start}")


#: The axes that are Bop's settings: left out of the settings of another optimizer in a grid over optimizers.
BOP_AXES = (("field", "bop_gamma"), ("field", "bop_threshold"))

#: The fields that apply to binary models only: a float baseline's are its defaults.
BINARY_ONLY = ("estimator", "a32", "scaling")


def _binary_model(name: str) -> bool:
    """Whether model ``name`` has binary layers; an unknown one counts as binary, for ``resolve`` to name it."""
    try:
        return bool(model_info(name)["binary"])
    except (UsageError, TypeError, AttributeError):
        return True


def _binary(config: TrainConfig) -> bool:
    """Whether ``config``'s model (its data set's default where it names none) has binary layers; an unknown one
    counts as binary, for ``resolve`` to name it."""
    try:
        model = config.model or get_spec(config.dataset).defaults.get("model")
    except (UsageError, TypeError, AttributeError):
        return True
    return model is None or _binary_model(model)


def unmeasured(base: TrainConfig, settings: Sequence[Setting]) -> str | None:
    """The line saying which settings train without ``base``'s indicators (full-precision models); None if none.
    A sweep where every setting would is refused, as ``reste train`` refuses the indicators of a float model."""
    if not base.indicators:
        return None
    labels = [s.label for s in settings if not s.config.indicators]
    if not labels:
        return None
    if len(labels) == len(settings):
        raise UsageError("--indicators needs a binary model, and every setting of this sweep is full precision (no "
                         "binary layers); drop --indicators")
    return (f"sweep: note: {', '.join(labels)} train{'s' * (len(labels) == 1)} without --indicators (full precision: "
            "no binary layer to measure); their indicator columns stay empty")


def _fmt(value: Any) -> str:
    """A value in a setting's label: 6 significant digits where they give it exactly, else all its digits."""
    if isinstance(value, float):
        short = f"{value:g}"
        return short if float(short) == value else repr(value)
    return str(value)


# ------------------------------------------------------------------ run state


def _every_epoch(run_dir: Path, epochs: int) -> bool:
    """Whether metrics.jsonl has a line for each of epochs 1..``epochs`` (the report's rule: the set of epochs,
    not the count of lines, which a duplicated line would fool)."""
    try:
        recorded = {m["epoch"] for m in read_metrics(run_dir, missing_ok=True)}
    except UsageError:
        return False
    return recorded >= set(range(1, epochs + 1))


def run_state(run_dir: str | os.PathLike, epochs: int) -> str:
    """``"done"`` (every epoch in metrics.jsonl and in last.pt), ``"partial"`` (a run was started) or ``"new"``.

    The checkpoint is read too: a run writes an epoch's metrics line before its ``last.pt``, so a crash
    between the two leaves every line and an older checkpoint, which resuming repairs. Without a ``last.pt``
    (deleted to save space), a run whose metrics hold every epoch is done: nothing is left to train, and the
    report counts it (``report.run_status``); without its config.json either, no run is there: new."""
    return _run_state(Path(run_dir), epochs)[0]


def _run_state(run_dir: Path, epochs: int) -> tuple[str, str]:
    """:func:`run_state`, and a note on a finished run whose ``last.pt`` is damaged (said, not mended)."""
    last = last_checkpoint(run_dir)
    if _every_epoch(run_dir, epochs):
        if not last.is_file():
            return ("done" if (run_dir / CONFIG).is_file() else "new"), ""
        try:
            ckpt = load_checkpoint(last)
        except UsageError as err:  # damaged, but the metrics hold every epoch: nothing to train, the report counts it
            # (the whole first clause: a cut one began inside the path, review chaos2 #3)
            return "done", f"its {last.name} is damaged ({str(err).split(';')[0]}); its metrics are whole"
        if ckpt.get("epoch", 0) >= epochs and not ckpt.get("step"):
            if epoch_end_whole(run_dir, ckpt):
                return "done", ""
            best = ckpt.get("best_epoch")
            mismatch = best_mismatch(run_dir, best) if isinstance(best, int) and best != ckpt["epoch"] else None
            if mismatch:  # no resume can write it again (its last.pt is not the best epoch): said, not "mended"
                return "done", f"{mismatch}: the weights of its best epoch are lost; its metrics are whole"
            return "partial", ""  # resume repairs best.pt and top/
    return ("partial" if holds_run(run_dir) else "new"), ""


# ------------------------------------------------------------------- execution


class _file_log:  # noqa: N801 - used as the function it was
    """Lines appended to ``path``, a plain file (``open_append``: a link there is a ``UsageError``, the run's
    failure). A path in them that the file system's encoding could not decode (a non-UTF-8 locale,
    ``PYTHONUTF8=0``) holds surrogates; they are written back as the bytes they stand for. The file is opened at
    the first line and held until :meth:`close`: a run folder moved while it trains takes its log along (the run
    follows it), where the next line opened by path failed the run (review chaos5 #2)."""

    def __init__(self, path: Path) -> None:
        self.path, self._file = path, None

    def __call__(self, message: str) -> None:
        if self._file is None:
            self._file = open_append(self.path, encoding="utf-8", errors="surrogateescape", newline="\n")
        self._file.write(message + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None


def _execute(job: dict[str, Any], stop: Any = None) -> dict[str, Any]:
    """Train or resume one run; never raises but ``Preempted``. Runs in this process (``stop``: the sweep's
    ``StopRequest``, which the run's handlers set) or in a worker."""
    from .. import engine

    if _WORKER["stopped"]:  # a worker whose sweep is stopping starts no other run (nor its folder)
        raise engine.Preempted("not started: the sweep is stopping", _WORKER["stopped"])
    run_dir = Path(job["run_dir"])
    log = _file_log(run_dir / TRAIN_LOG)
    start = time.monotonic()
    _WORKER["running"] = True
    try:
        # below the runs folder the sweep made, never that folder again: one moved away while the sweep ran must not
        # be made anew at its old path, to train the runs there (review chaos5 #2; the sweep stops at the next start);
        # nor below one made again there (a worker starts seconds after the sweep's check: review diff19 #5)
        if job.get("runs_id") and not is_folder(run_dir.parent.parent, job["runs_id"]):
            raise FolderGone(f"the runs folder {run_dir.parent.parent} was moved or deleted while the sweep ran")
        run_dir.parent.mkdir(exist_ok=True)
        run_dir.mkdir(exist_ok=True)
        forget_failure(run_dir)  # (an earlier sweep's record: the run starts again)
        config = TrainConfig.from_dict(job["config"])
        if job.get("devices"):  # this worker's device (the sweep's own process: the first)
            config = dataclasses.replace(config, device=job["devices"][_WORKER["slot"] % len(job["devices"])])
        if job["resume"]:
            # a sweep given no --threads leaves a run its recorded count, as `reste train --resume` does (a CPU
            # run's sums depend on it): its worker's share of the cores would part it from the run it continues
            # (review exact1 #3)
            free = {k: getattr(config, k) for k in RESUME_FREE if k != "threads" or config.threads is not None}
            result = engine.resume(run_dir, free, progress=job.get("progress", False), log=log, stop=stop)
        else:
            result = engine.train(config, run_dir, progress=job.get("progress", False), log=log, stop=stop)
        return {"status": "done", "result": result, "seconds": time.monotonic() - start}
    except Exception as err:  # noqa: BLE001 - one failed run must not stop the sweep
        if isinstance(err, engine.Preempted):  # a stop signal stops the sweep (the run saved its step)
            with contextlib.suppress(OSError, UsageError):
                log(str(err))
            if _WORKER["parent"] is not None:
                _WORKER["stopped"] = err.signum
            raise
        logged = False  # whether its train.log holds the traceback, for the sweep's summary to point at
        # its start found a run there: another sweep's (a shared --runs-dir), which it neither failed nor logs in
        taken = isinstance(err, RunExists)
        # another process's run: its log, not this one's; nor one at the path of a folder deleted under this run
        if not isinstance(err, (RunInUse, FolderGone)) and not taken:
            with contextlib.suppress(OSError, UsageError):  # the log itself may be what failed
                log(traceback.format_exc())
                logged = True
        status = ("busy" if isinstance(err, RunInUse) else "diverged" if isinstance(err, engine.TrainingDiverged)
                  else "failed")
        status = "busy" if taken else status
        if status == "diverged":  # it would diverge again: a rerun of the sweep leaves it out, saying why
            try:
                record_divergence(run_dir, err.epoch, err.step)
            except OSError as write_error:  # a full disk: the sweep goes on; a rerun trains the run again
                with contextlib.suppress(OSError, UsageError):
                    log(f"cannot record the divergence in {run_dir} ({write_error.strerror})")
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        machine = machine_cause(err)  # (--compile without g++: rev15 #13) every later run would fail so too
        # (a bad input's own line says what is wrong and what to do; another error's class name tells its kind)
        said = machine or (message if isinstance(err, UsageError) else f"{type(err).__name__}: {message}")
        if taken:  # (RunExists's own advice, --resume, is for a user's start, not a run another job trains: docs2)
            said = f"{run_dir} is another job's run (a sweep that shares this runs folder started it first)"
        # for `reste show` and the report, until the sweep trains it again; not where its folder was deleted (its
        # path may name another run's folder by now)
        if status == "failed" and not isinstance(err, FolderGone):
            with contextlib.suppress(OSError):
                record_failure(run_dir, said)
        return {"status": status, "error": said, "seconds": time.monotonic() - start,
                "logged": logged, "machine": machine is not None}
    finally:
        log.close()
        _WORKER["running"] = False
        if _WORKER["orphaned"]:  # the sweep died: no one to report to
            os._exit(1)


def _stop_between_runs(signum: int, _frame: Any) -> None:
    """SIGTERM or SIGUSR1 in a worker between runs (a run catches them itself): start no further run."""
    _WORKER["stopped"] = signum


def _sweep_died(_signum: int, _frame: Any) -> None:
    """The parent-death signal. Linux sends it when the thread that started the worker ends; that is the sweep's
    death only if the worker then has another parent (a moment later). A run going on saves its step and stops
    (as on SIGTERM), then the worker exits; an idle worker exits at once."""

    for _ in range(40):
        if os.getppid() != _WORKER["parent"]:
            break
        time.sleep(0.05)
    else:
        return  # the sweep lives (the thread of it that started this worker ended)
    _WORKER["orphaned"] = True
    if not _WORKER["running"]:
        os._exit(1)
    os.kill(os.getpid(), signal.SIGTERM)


# A sweep's worker process: the sweep's PID, whether a run is going on, whether the sweep died, the stop
# signal that reached it (0: none) and its number among the workers (which of --devices it trains on). Only workers
# set them (the sweep's own process may run several sweeps).
_WORKER: dict[str, Any] = {"parent": None, "running": False, "orphaned": False, "stopped": 0, "slot": 0}
_PARENT_DIED = "SIGUSR2"  # what Linux sends a worker when the sweep dies (PR_SET_PDEATHSIG)


def _stop_mask(how: int) -> Any:
    """Block (``signal.SIG_BLOCK``) or unblock the stop signals in this thread, where the platform can (not on
    Windows); the mask before, or None."""

    mask = getattr(signal, "pthread_sigmask", None)
    return None if mask is None else mask(how, set(stop_signals()))


@contextlib.contextmanager
def _stop_signals_held() -> Any:
    """The stop signals held back in this thread for the block: a worker process started in it inherits the mask,
    so a stop that reaches it while it starts (spawn, site, ``import torch``: seconds) waits for the handlers of
    :func:`_init_worker`, which take it, instead of killing it (the pool then broke, and the sweep said a worker
    had died: review experiments #1). Signals sent to this process meanwhile wait the same moment."""

    before = _stop_mask(signal.SIG_BLOCK)
    try:
        yield
    finally:
        if before is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, before)


def _one_line_warnings_shown() -> bool:
    """Whether this process shows warnings in the ``reste`` command's one-line format (``errors.one_line_warnings``)."""
    return bool(getattr(warnings.showwarning, "reste_one_line", False))


def _init_worker(threads: int, parent: int | None = None, command_line: bool = False, one_line: bool = False,
                 slots: Any = None) -> None:
    """A sweep's worker process (``parent``: the sweep's PID): its number, taken from the queue ``slots``; its
    torch threads; a stop signal between runs
    starts no other run (a run catches them itself, and the sweep passes them on to its workers); on Linux, a
    signal when the sweep dies (PR_SET_PDEATHSIG), so that a killed sweep leaves no run training on its own.
    ``command_line``: the sweep runs as the ``reste`` command, so the worker's messages name flags (``--o-end``,
    ``reste.errors.option``); ``one_line``: its warnings are shown as the command's, one ``reste: warning:`` line."""

    import torch

    if slots is not None:
        _WORKER["slot"] = slots.get()
    if command_line:  # a spawned worker starts with the ContextVar's default; this is its whole life
        join_command_line()
    if one_line:
        from ..errors import one_line_warnings

        one_line_warnings()

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    if parent is None:
        return
    from ..engine import StopRequest

    StopRequest.announce = False  # a Ctrl-C reaches the sweep too, which says it once for all its runs
    _WORKER["parent"] = parent
    for sig in stop_signals():
        signal.signal(sig, _stop_between_runs)
    _stop_mask(signal.SIG_UNBLOCK)  # (held since the start: _stop_signals_held) one that came meanwhile lands now
    if hasattr(signal, _PARENT_DIED):
        signal.signal(getattr(signal, _PARENT_DIED), _sweep_died)
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, int(getattr(signal, _PARENT_DIED)))  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):  # not Linux: a killed sweep's runs finish on their own
            pass
    if os.getppid() != parent:  # it died before the request took effect
        os._exit(1)


def sweep_devices(devices: Sequence[str] | None, jobs: int, check: bool = True) -> list[str] | None:
    """``devices`` as the runs take them (``"1"`` is ``"cuda:1"``), checked: each one a device of this machine
    (``check``; a dry run does not train), and not more of them than ``jobs``."""
    if not devices:
        return None
    names = [f"cuda:{d.strip()}" if d.strip().isdigit() else d.strip() for d in devices]
    if len(set(names)) != len(names):
        raise UsageError(f"--devices names a device twice: {','.join(devices)}")
    if len(names) > jobs:
        raise UsageError(f"--devices names {len(names)} devices but --jobs {jobs} trains {jobs} run"
                         f"{'s' * (jobs != 1)} at a time; give --jobs {len(names)} (or fewer devices)")
    from ..engine import pick_device

    for name in names:  # the one-line refusal of --device, before any folder is made; a dry run (which may plan a
        try:  # GPU sweep on a machine without them) refuses only a name that no machine has
            pick_device(name, present=check, on_cpu="drop --devices to train on the CPU")
        except UsageError as err:
            raise UsageError(f"--devices: {err}") from None
    return names


def threads_per_job(jobs: int) -> int:
    """CPU threads for each of ``jobs`` parallel runs: the usable cores shared out, at least 1."""
    return max(1, usable_cpus() // jobs)


def _threads_per_run(jobs: int, threads: int | None) -> int | None:
    """The torch threads each run of a sweep trains with: ``threads``, else the cores shared out among ``jobs``
    (also for a run that trains alone: a run does not depend on how many others are pending); None with one job:
    torch's own setting."""
    return threads or (threads_per_job(jobs) if jobs > 1 else None)


def _check_out(out: Path, base: TrainConfig, settings: list[Setting], seeds: Sequence[int]) -> None:
    """Refuse an ``--out`` whose files the sweep would mix into or lose: a training run's folder, or a sweep
    whose settings or seeds this one leaves out (its tables would drop their rows). A study's other files (notes,
    scripts, figures) may stay beside the tables."""
    if not out.is_dir():
        return
    if holds_run(out):
        raise UsageError(f"{out} holds a training run; a sweep writes into a new or empty folder, or one of its own")
    try:
        old = load_manifest(out)
        planned = {(s["key"], int(seed)): s["label"] for s in old["settings"] for seed in s["runs"]}
    except (UsageError, KeyError, TypeError) as err:  # none (deleted: the tables start afresh), or a damaged one
        if (out / MANIFEST).exists() and (out / RUNS_CSV).exists():
            _check_rows_kept(out, settings, seeds, str(err).split(";")[0])
        return
    kept = {(s.key, seed) for s in settings for seed in seeds}
    dropped = {k: label for k, label in planned.items() if k not in kept}
    if not dropped:
        return
    labels = sorted(set(dropped.values()))
    given = {(s.label, seed) for s in settings for seed in seeds}
    flags, defaults = _changed_fields(old, base, settings)
    if flags:
        raise UsageError(f"{out} holds a sweep with other fixed settings ({'; '.join(flags)}): these are different "
                         f"runs, and its tables would lose the {len(dropped)} it has; pass another --out, or delete "
                         f"{out / MANIFEST} to start the tables afresh")
    if defaults:
        plugged = _from_plugins(settings)
        who = f"the reste, or the plugins ({', '.join(plugged)}), that wrote it" if plugged else \
            "the reste that wrote it"
        raise UsageError(f"{out} holds a sweep whose flags this reste resolves otherwise ({'; '.join(defaults)}: its "
                         f"defaults, or where a setting applies, differ from those of {who}), so its tables would "
                         f"lose the {count(len(dropped), 'run')} they have: run it with "
                         f"{'the versions' if plugged else 'the reste'} that wrote it, pass another --out, or delete "
                         f"{out / MANIFEST} to start its tables afresh")
    if all((label, seed) in given for (_, seed), label in dropped.items()):  # the same settings, other keys now
        raise UsageError(f"{out}/{MANIFEST} names {len(dropped)} run(s) ({', '.join(labels[:3])}) by other keys than "
                         "this version of reste gives the same settings (their code or defaults changed), so this "
                         f"sweep would train them again and its tables lose their rows: pass another --out, run it "
                         f"with the reste that wrote it, or delete {out / MANIFEST} to start its tables afresh")
    seeds_of: dict[str, list[int]] = {}
    for (_, seed), label in sorted(dropped.items(), key=lambda item: item[0][1]):
        seeds_of.setdefault(label, []).append(seed)
    left = [f"{label} ({'seed' if len(ss) == 1 else 'seeds'} {', '.join(map(str, ss))})"
            for label, ss in sorted(seeds_of.items())]
    raise UsageError(f"{out} holds a sweep with {len(dropped)} run(s) that this one leaves out ({', '.join(left[:3])}"
                     f"{', ...' if len(left) > 3 else ''}), which its tables would lose: give its grid and seeds "
                     f"again (more is fine), pass another --out, or delete {out / MANIFEST} to start the tables afresh")


def _check_rows_kept(out: Path, settings: list[Setting], seeds: Sequence[int], why: str) -> None:
    """Where ``out``'s sweep.json is damaged (``why``), refuse a sweep that leaves out runs its runs.csv records by
    setting and seed: the report would drop their rows (and their epochs), the only record of runs whose folders are
    gone (review chaos4 #6); the user whose sweep.json is damaged is told the settings and seeds it held. (A deleted
    sweep.json starts the tables afresh, as the refusals say.)"""
    try:
        recorded = {(row.get("setting"), row["seed"]) for row in earlier_rows(out).values()}
    except (UsageError, OSError, KeyError):
        return  # (a damaged runs.csv: the report says so)
    given = {(s.label, seed) for s in settings for seed in seeds}
    left = sorted((label, seed) for label, seed in recorded if isinstance(label, str) and (label, seed) not in given)
    if not left:
        return
    labels = sorted({label for label, _ in recorded if isinstance(label, str)})
    all_seeds = sorted({seed for _, seed in recorded})
    raise UsageError(f"{why}, and {out / RUNS_CSV} records {count(len(left), 'run')} that this sweep leaves out "
                     f"({listed([f'{label} (seed {seed})' for label, seed in left], 3)}), which its tables would "
                     f"lose: give its settings ({listed(labels)}) and seeds ({', '.join(map(str, all_seeds))}) again, "
                     f"pass another --out, or delete {out / MANIFEST} to start the tables afresh")


def _recorded_runs_dir(out: Path, runs_root: Path, settings: list[Setting], seeds: Sequence[int]) -> Path | None:
    """The folder where ``out``'s sweep.json records the runs of this sweep that are not under ``runs_root`` (the
    default, ``out/runs``: the sweep folder moved away from its ``--runs-dir`` and is continued without it), where
    all of them are there and none under ``runs_root``; None where none is elsewhere. Otherwise a ``UsageError``
    naming it: the sweep would train them again, and its sweep.json forget them."""
    try:
        old = load_manifest(out)
        at = {(s["key"], str(seed)): run_folder(out, s, str(seed)) for s in old["settings"] for seed in s["runs"]}
    except (UsageError, KeyError, TypeError, AttributeError):
        return None  # none, or a damaged one: nothing recorded to keep
    here = 0
    elsewhere: dict[Path, int] = {}
    for s in settings:
        for seed in seeds:
            name = s.run_name(seed)
            run = at.get((s.key, str(seed)))
            if holds_run(runs_root / name):
                here += 1
            elif run is not None and run.parts[-2:] == name.parts and holds_run(run):
                # (resolved as the kernel resolves it: a sweep folder reached through a link has its "../" taken from
                # the link's target, not collapsed as text: review chaos5 #4)
                root = Path(os.path.realpath(run.parent.parent))
                elsewhere[root] = elsewhere.get(root, 0) + 1
    if not elsewhere:
        return None
    root = max(elsewhere, key=elsewhere.__getitem__)
    if len(elsewhere) == 1 and not here:
        return root
    others = f" (and {count(len(elsewhere) - 1, 'other folder')})" if len(elsewhere) > 1 else ""
    raise UsageError(f"{out / MANIFEST} records {count(sum(elsewhere.values()), 'run')} of this sweep under {root}"
                     f"{others}, which it would train again under {runs_root}: pass --runs-dir {shell_word(root)} to "
                     "continue them there")


def _from_plugins(settings: list[Setting]) -> list[str]:
    """The estimators, models and data sets of ``settings`` that plugins define: 'estimator poly (module m)'."""
    from .. import datasets, models

    found: dict[str, None] = {}
    for s in settings:
        c = s.config
        for kind, name, where in (("estimator", c.estimator, lambda n: estimator_class(n).__module__),
                                  ("model", c.model, models.defined_in), ("data set", c.dataset, datasets.defined_in)):
            with contextlib.suppress(UsageError, KeyError, ValueError, TypeError):
                module = where(name)
                if isinstance(name, str) and module != "reste" and not module.startswith("reste."):
                    found[f"{kind} {name} (module {module})"] = None
    return list(found)


def _changed_fields(old: dict[str, Any], base: TrainConfig, settings: list[Setting]) -> tuple[list[str], list[str]]:
    """The fields that can change a run (not those of rundir.IDENTITY_FREE) that differ from those of sweep.json
    ``old``, as 'epochs 20 -> 10': (those whose given value, the unresolved base, differs too: a flag given otherwise;
    those that differ only once resolved: this reste's defaults or presets differ from the old one's). Each
    setting's resolved config is compared with the old one of its label; a sweep.json without them (an older
    version's) by its base, where the older version wrote a field and resolved it (not None): a flag given otherwise.
    """
    def text(value: Any) -> str:
        return json.dumps(value, sort_keys=True, default=str)

    given = base.to_dict()
    was_given = old.get("base") if isinstance(old.get("base"), dict) else {}
    pairs = []
    configs = {s.get("label"): s.get("config") for s in old.get("settings", []) if isinstance(s, dict)}
    if all(isinstance(c, dict) for c in configs.values()):
        pairs = [(configs[s.label], s.config.to_dict()) for s in settings if s.label in configs]
    elif was_given:
        was_given, pairs = {}, [({k: v for k, v in old["base"].items() if v is not None}, given)]
    flags: dict[str, None] = {}
    defaults: dict[str, None] = {}
    for was, now in pairs:
        for name, value in now.items():
            if name in was and name not in IDENTITY_FREE and text(was[name]) != text(value):
                same = name in was_given and text(was_given[name]) == text(given.get(name))
                (defaults if same else flags)[f"{name} {text(was[name])} -> {text(value)}"] = None
    return list(flags), list(defaults)


def _epochs_recorded(run_dir: Path) -> int:
    """The epochs a resume of the run goes on from: those its ``last.pt`` holds (its header alone), 0 where there is
    none (a crash between epoch 1's line and the first last.pt: the resume trains epoch 1 again, which the sweep's line
    named epoch 2: review chaos4 #10); where it cannot be read, the last epoch in its metrics.jsonl (0: none, or
    unreadable)."""
    why, head = read_structure(last_checkpoint(run_dir))
    if isinstance(head, dict) and type(head.get("epoch")) is int:
        return head["epoch"]
    if why == "missing":
        return 0
    try:
        return max((int(m["epoch"]) for m in read_metrics(run_dir, missing_ok=True)), default=0)
    except (UsageError, KeyError, TypeError, ValueError):
        return 0


def time_left(elapsed: float, left: float | None) -> str:
    """'' without an estimate (``left`` None: no run trained yet); otherwise the wall time so far and, while runs
    are left (``left`` > 0 seconds), about how long they take."""
    if left is None:
        return ""
    text = f"{duration(elapsed)} so far"
    return text + (f", about {duration(left)} left" if left > 0 else "")


def _seconds_left(trained: list[tuple[float, float, int]], left: list[int], jobs: int) -> float | None:
    """The wall time the runs ``left`` (each, the epochs it trains) take at the pace of those ``trained`` here
    (each, its wall time, its epochs' time and their number), ``jobs`` at a time: each run's start-up (its wall
    time beyond its epochs': the data, the model) once, and its epochs at the time of an epoch so far; a resumed
    run's start-up is not taken for epochs. None before the first trained run."""
    if not trained:
        return None
    start_up = sum(max(0.0, wall - own) for wall, own, _ in trained) / len(trained)
    per_epoch = sum(own for _, own, _ in trained) / max(1, sum(n for _, _, n in trained))
    return sum(start_up + per_epoch * n for n in left) / max(1, min(jobs, len(left)))


def _progress_line(i: int, total: int, setting: Setting, seed: int, outcome: dict[str, Any]) -> str:
    head = f"[{i}/{total}] {setting.label} seed {seed}:"
    if outcome["status"] == "skipped":
        return f"{head} already finished, skipped" + (f" ({outcome['note']})" if outcome.get("note") else "")
    if outcome["status"] == "left out":
        return f"{head} LEFT OUT: {outcome['error']}"
    if outcome.get("earlier"):
        return f"{head} not trained again: {outcome['error']}"
    if outcome["status"] == "busy":  # another job's run (`reste train` on its folder): not touched here
        return f"{head} HELD BY ANOTHER JOB, not trained: {outcome['error']}"
    if outcome["status"] != "done":
        return f"{head} {outcome['status'].upper()} after {outcome['seconds']:.0f}s: {outcome['error']}"
    r = outcome["result"]
    line = f"{head} best {r['best_acc']:.2f}% final {r['final_acc']:.2f}%"
    ind = r.get("indicators")
    if ind:
        line += f"  error {ind['estimating_error']:.4g} stability {ind['gradient_stability']:.4g}"
    # (a run stopped inside its first epoch resumed too: review combos)
    resumed = (f", resumed at epoch {outcome['from_epoch'] + 1}"
               if (outcome.get("resumed") or outcome.get("from_epoch", 0) > 0)
               and outcome.get("from_epoch", 0) < (setting.config.epochs or 0) else "")
    return line + f"  ({outcome['seconds']:.0f}s{resumed})"


def run_sweep(base: TrainConfig, grid: dict[str, list[Any]], seeds: Sequence[int] | None, out_dir: str | os.PathLike,
              jobs: int = 1, *, runs_dir: str | os.PathLike | None = None, threads: int | None = None,
              log: Callable[[str], None] = print_line, report: bool = True, flags: dict[str, Any] | None = None,
              progress: bool = False, failures: list[tuple[str, int, str]] | None = None,
              dry_run: bool = False, devices: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Train every setting of ``grid`` (on top of ``base``) for every seed; returns the table rows.

    Runs go to ``runs_dir`` (default ``out_dir/runs``, or the folder outside it where ``out_dir``'s sweep.json
    records them: a sweep folder moved away from its ``runs_dir`` goes on there), one folder per setting
    (``ESTIMATOR-HASH``) with one sub-folder per seed; finished runs are skipped and
    partial ones resumed, so an interrupted sweep continues where it stopped and two
    sweeps with the same ``runs_dir`` share identical runs. ``jobs`` > 1 trains that
    many runs at a time in worker processes, each with ``threads`` torch threads
    (default ``cores // jobs``; with one job, default: torch's own setting).
    Each run logs to its ``train.log`` (a line per epoch); ``log`` gets a line when a run starts (training, or
    resuming at epoch k, and its folder) and one when it ends. With
    ``report`` the tables are written to ``out_dir`` after every finished run, and the
    figures at the end (see ``summarize``); without, the rows are returned all the same.
    ``progress``: each run's progress bar, on stderr, when the runs train in this process (one job).
    ``failures`` (a list) gets (setting label, seed, status) of each run that failed, diverged or was left out
    (a table can still count such a run from the row an earlier report kept).
    ``flags`` are estimator flags of ``reste train`` fixed for every run (``{"o_schedule": "linear"}``),
    each applied to the estimators it belongs to (see ``expand_grid``).
    A run that fails or diverges is reported and left out of the table (unless an earlier report wrote its row);
    so is one that cannot be reported (``report.run_status``), which is not trained again, nor is one that
    diverged (the sweep records it in the run's folder: ``reste.rundir.record_divergence``).
    ``dry_run``: ``log`` gets the plan (each run, and what it would do; what each setting changes of its preset's
    recipe), and nothing is made, locked or trained; returns [].
    ``devices`` (``["cuda:0", "cuda:1"]``; a bare number is that CUDA device): each of the ``jobs`` workers trains
    its runs on one, in turn (job k on ``devices[k % len(devices)]``), in place of ``base.device``: the runs of a
    multi-GPU machine's sweep are spread over its GPUs. Not more devices than ``jobs``.
    """
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise UsageError(f"--jobs must be a positive integer, got {jobs!r}")
    if not dry_run and _in_spawned_main():  # (its exit status tells the sweep that started it why its worker is gone)
        print(f"reste: error: {_CALLED_AGAIN}", file=sys.stderr, flush=True)
        raise SystemExit(_CALLED_AGAIN_STATUS)
    if jobs > 61 and os.name == "nt":  # (a process pool there waits on at most 61 processes: its ValueError)
        raise UsageError(f"--jobs {jobs}: Windows runs at most 61 worker processes at a time; give --jobs 61 or fewer")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise UsageError(f"--threads must be a positive integer, got {threads!r}")
    check_threads(threads)  # as `reste train` refuses it: a slip (100) each of --jobs workers would take
    devices = sweep_devices(devices, jobs, check=not dry_run)
    from .. import engine

    # --cuda-graphs where no capture can run, one line before any folder, not a FAILED run per setting: a --devices
    # naming the CPU (review diff16 #2), --device cpu, or no CUDA here (newuser3 #1, #2)
    for name in devices or []:
        try:
            engine.check_graphs_device(dataclasses.replace(base, device=name), here=False)
        except UsageError:
            raise UsageError(f"--cuda-graphs needs CUDA devices; --devices {','.join(devices)} names the CPU: drop "
                             "one of them") from None
    if not devices:
        engine.check_graphs_device(base, here=not dry_run)
    if not devices and not dry_run and isinstance(base.device, str):  # (its spelling: resolve's, each setting's)
        engine.pick_device(base.device)  # a --device this machine lacks: one line before any folder, not a FAILED
        # per run
    seeds = [base.seed] if not seeds else [int(s) for s in seeds]
    if len(set(seeds)) != len(seeds):
        raise UsageError(f"the seeds {', '.join(map(str, seeds))} name a seed twice; give each once")
    if isinstance(base.tensorboard, str) and os.path.isabs(base.tensorboard):  # (a relative one: in each run's folder)
        where = Path(runs_dir) if runs_dir is not None else Path(out_dir) / "runs"
        raise UsageError(f"--tensorboard {base.tensorboard} would give every run of the sweep one folder of events; "
                         f"pass the bare --tensorboard (each run's own, RUN_DIR/tensorboard), then `tensorboard "
                         f"--logdir {shell_word(where)}` shows them all")
    settings = expand_grid(base, dict(grid), flags)
    note = unmeasured(base, settings)
    if note:
        log(note)
    out = Path(out_dir)
    runs_root = Path(runs_dir) if runs_dir is not None else out / "runs"
    _check_out(out, base, settings, seeds)
    recorded = _recorded_runs_dir(out, runs_root, settings, seeds) if runs_dir is None else None
    if recorded is not None:
        log(f"sweep: {out / MANIFEST} records its runs under {recorded} (its --runs-dir): the sweep goes on there; "
            "pass --runs-dir to train them elsewhere")
        runs_root = recorded
    todo: list[tuple[Setting, int, dict[str, Any]]] = []
    for seed in seeds:  # seed-major: after a third of the time, every setting has one seed
        for s in settings:
            run_dir = runs_root / s.run_name(seed)
            s.runs[seed] = run_dir
            config = dataclasses.replace(s.config, seed=seed)
            status, why = run_status(run_dir, s.key)  # the report's rule: what it will show of the run
            if status == "changed":
                raise UsageError(f"{run_dir}: {why} Move it away or pass another --runs-dir")
            if status == "done":  # the metrics hold every epoch: run_state says whether last.pt needs mending
                state, why = _run_state(run_dir, config.epochs)
            else:
                state = status if status in ("damaged", "diverged") else "partial" if holds_run(run_dir) else "new"
                # (a finished run's config.json deleted; a stopped run's last.pt) a new run there, or a resume, would
                # fail in every sweep (review experiments #9)
                stuck = blocked(run_dir) if state == "new" else lost_last(run_dir) if state == "partial" else None
                if stuck:
                    state, why = "damaged", stuck
            todo.append((s, seed, {"config": config.to_dict(), "run_dir": str(run_dir), "resume": state == "partial",
                                   "state": state, "why": why, "progress": progress and jobs == 1, "devices": devices,
                                   "from_epoch": _epochs_recorded(run_dir) if state == "partial" else 0}))
    if dry_run:  # what the sweep's start would refuse, refused (review clifuzz #1, #6)
        for folder, flag in ((out, "--out"), (runs_root, "--runs-dir")):
            blocker = file_in_the_way(folder)
            why = in_the_way(blocker) if blocker is not None else cannot_make(folder)
            if why:
                raise UsageError(f"cannot create the sweep folder {folder} ({why}); pass another {flag}")
        _check_models([s.config for s, _, job in todo if job["state"] in ("new", "partial")])
        _plan(seeds, settings, todo, log)
        log(_placement(base, sum(job["state"] in ("new", "partial") for _, _, job in todo), jobs, threads, devices))
        return []
    created: list[Path] = []  # what to remove again if the sweep cannot start
    held = contextlib.ExitStack()  # the lock of --out, for the whole sweep
    places: list[tuple[Place, str, str]] = []  # its two folders, asked where they are before each run
    try:
        for folder, flag in ((out, "--out"), (runs_root, "--runs-dir")):
            try:
                created = make_folders(folder) + created  # --runs-dir's (inside --out's, usually) first
            except OSError as err:
                raise UsageError(f"cannot create the sweep folder {folder} ({err.strerror}); pass another "
                                 f"{flag}") from None
            if folder == out:  # a second sweep on it is refused before it announces a run or writes a table
                place = held.enter_context(folder_lock(out, SWEEP_LOCK, "a sweep", "make it writable (its mode, its "
                                                       "owner) to continue this sweep, or pass another --out for a "
                                                       "new one"))
                _check_out(out, base, settings, seeds)  # again, under the lock: the holder may have changed it
                places.append((place, "sweep folder", flag))
            else:
                runs = Place(folder)
                places.append((runs, "runs folder", flag))
                held.callback(runs.close)
                for _, _, job in todo:  # (a worker checks it before it makes its run's folder: is_folder)
                    job["runs_id"] = list(runs.identity)
        # before any run: a bad data folder is one error, and a download happens once; a model that does not fit
        # its data set is one error too, not a run failed in every sweep (review clifuzz #6, #7)
        _check_models([s.config for s, _, job in todo if job["state"] in ("new", "partial")])
        _check_data([s.config for s, _, job in todo if job["state"] in ("new", "partial")])
    except BaseException:
        held.close()
        remove_folders(created)  # a sweep that could not start leaves no folder of its own
        raise
    with held:
        return _sweep(base, grid, seeds, settings, out, todo, jobs, threads, log, report, failures, places)


def _plan(seeds: list[int], settings: list[Setting], todo: list[tuple[Setting, int, dict[str, Any]]],
          log: Callable[[str], None]) -> None:
    """What the sweep would do (``--dry-run``), in the order and with the numbers it would run them."""
    from .. import engine

    total = len(todo)
    log(f"sweep (dry run, nothing trained): {count(len(settings), 'setting')} x {count(len(seeds), 'seed')} = "
        f"{count(total, 'run')}")
    mixed = paper_mode_estimators([s.config.to_dict() for s in settings])
    if mixed:
        log(f"sweep: WARNING ({', '.join(mixed)}): {PAPER_ACROSS_ESTIMATORS}")
    for line in _same_networks_note(settings):
        log(line)
    counts: dict[str, int] = {}
    for i, (s, seed, job) in enumerate(todo, 1):
        # (every epoch logged, a checkpoint file to write again: mended, as the sweep then says, review mut6 #4)
        kind = "mend" if job["state"] == "partial" and job["from_epoch"] >= s.config.epochs else job["state"]
        counts[kind] = counts.get(kind, 0) + 1
        what = {"new": "would train", "done": "finished: skipped", "mend": "would mend its checkpoint files",
                "partial": f"would resume at epoch {job['from_epoch'] + 1}/{s.config.epochs}",
                }.get(kind, f"{kind}, left as it is: {job['why']}")
        log(f"[{i}/{total}] {s.label} seed {seed}: {what} -> {job['run_dir']}")
    for s in settings:
        for note in engine.recipe_notes(s.config):
            log(f"{s.label}: {note}")
    named = {"new": "to train", "partial": "to resume", "mend": "to mend", "done": "finished"}
    log("sweep (dry run): " + ", ".join(f"{n} {named.get(k, k)}" for k, n in counts.items()))


def _placement(base: TrainConfig, pending: int, jobs: int, threads: int | None, devices: list[str] | None) -> str:
    """Where a dry run's ``pending`` runs would train: how many at a time, on which devices, with how many threads
    (as ``_run_pending`` and the workers would place them)."""
    workers = max(1, min(jobs, pending))
    per_run = _threads_per_run(jobs, threads)
    at_once = "one run at a time" if workers == 1 else f"{workers} runs at a time"
    if devices:
        used = devices[:workers]
        where = used[0] if len(used) == 1 else f"{', '.join(used)} (job k on device k % {len(used)})"
    else:
        where = f"--device {base.device}"
    threading = f", {per_run} torch thread{'s' * (per_run != 1)}{' each' * (workers > 1)}" if per_run else ""
    return f"sweep (dry run): {at_once}, on {where}{threading}"


def _sweep(base: TrainConfig, grid: dict[str, list[Any]], seeds: list[int], settings: list[Setting], out: Path,
           todo: list[tuple[Setting, int, dict[str, Any]]], jobs: int, threads: int | None,
           log: Callable[[str], None], report: bool, failures: list[tuple[str, int, str]] | None,
           places: Sequence[tuple[Place, str, str]] = ()) -> list[dict[str, Any]]:
    """The sweep of :func:`run_sweep` once it holds its --out folder: train the runs of ``todo``, then the
    tables. ``places``: its folders (each with its name and flag), which must stay where they are while it runs."""

    write_manifest(out, base, grid, seeds, settings)
    total = len(todo)
    n_set = len(settings)
    n_done = sum(job["state"] == "done" for _, _, job in todo)
    log(f"sweep: {count(n_set, 'setting')} x {count(len(seeds), 'seed')} = {count(total, 'run')} "
        f"({n_done} already finished) -> {out}")
    mixed = paper_mode_estimators([s.config.to_dict() for s in settings])
    if mixed:
        log(f"sweep: WARNING ({', '.join(mixed)}): {PAPER_ACROSS_ESTIMATORS}")
    for line in _same_networks_note(settings):
        log(line)

    failed = 0
    busy = 0  # of them, runs another job holds (RunInUse)
    logged = 0  # and runs whose train.log holds the error's traceback
    ended = 0
    trained: list[tuple[float, float, int]] = []  # each run trained here: its wall time, its epochs' and their number
    to_train = {(s.label, seed): max(0, s.config.epochs - job["from_epoch"]) for s, seed, job in todo
                if job["state"] in ("new", "partial")}  # the epochs each run not ended yet trains
    table_error = False
    start = time.monotonic()

    def report_one(s: Setting, seed: int, outcome: dict[str, Any]) -> None:
        nonlocal ended, failed, busy, logged, started
        ended += 1
        number = numbers.pop((s.label, seed), ended)
        if "cause" in outcome:  # not started (a run before it failed for the machine): the next run's number
            started += 1
            number = total - len(pending) + started
        failed += outcome["status"] not in ("done", "skipped")
        busy += outcome["status"] == "busy"
        logged += bool(outcome.get("logged"))
        if failures is not None and outcome["status"] not in ("done", "skipped"):
            failures.append((s.label, seed, outcome["status"]))
        line = _progress_line(number, total, s, seed, outcome)
        epochs = to_train.pop((s.label, seed), 0)
        if outcome["status"] == "done":  # the pace: not of a held run, nor of one that failed (no epochs' time)
            seconds = outcome.get("seconds", 0.0)
            trained.append((seconds, float(outcome["result"].get("seconds", seconds)), epochs))
        pace = time_left(time.monotonic() - start, _seconds_left(trained, list(to_train.values()), jobs))
        if pace and outcome["status"] not in ("skipped", "left out") and not outcome.get("earlier"):
            line += f"  [{pace}]"
        log(line)
        if report and outcome["status"] == "done" and ended < total:
            tables_so_far()

    def tables_so_far() -> None:
        """The tables of the runs finished so far (figures come at the end): a sweep stopped early still
        leaves them, and a long one can be read while it runs."""
        nonlocal table_error
        _check_places(places)
        try:
            summarize(out, plots=False)
        except Exception as err:  # noqa: BLE001 - the runs go on; the end says it again, or writes them (an error
            # that escaped here passed by the runs still training: review experiments #12)
            if not table_error:
                why = getattr(err, "strerror", None) or (err if isinstance(err, (OSError, UsageError)) else
                                                         f"{type(err).__name__}: {err}")
                log(f"sweep: cannot write the tables so far to {out} ({why}); the sweep goes on")
            table_error = True

    started = 0
    numbers: dict[tuple[str, int], int] = {}  # a started run's [i/N], for its end line: runs in parallel end in
    # another order than they start

    def announce(s: Setting, seed: int, job: dict[str, Any]) -> None:
        """The line when a run starts: which, from where, and the folder whose train.log has its epochs."""
        nonlocal started
        _check_places(places)
        started += 1
        i = numbers[(s.label, seed)] = total - len(pending) + started
        epochs = s.config.epochs
        doing = ("training" if not job["resume"] else "mending its checkpoint files" if job["from_epoch"] >= epochs
                 else f"resuming at epoch {job['from_epoch'] + 1}/{epochs}")
        log(f"[{i}/{total}] {s.label} seed {seed}: {doing} -> {job['run_dir']} (epochs in its {TRAIN_LOG})")

    pending = []
    for s, seed, job in todo:
        if job["state"] == "done":
            report_one(s, seed, {"status": "skipped", "note": job["why"]})
        elif job["state"] == "damaged":  # resuming cannot mend it: said, and left for the user
            report_one(s, seed, {"status": "left out", "error": job["why"], "seconds": 0.0})
        elif job["state"] == "diverged":  # training it again would diverge again
            report_one(s, seed, {"status": "diverged", "earlier": True, "seconds": 0.0,
                                 "error": f"{job['why']}; delete its folder {job['run_dir']} to train it again"})
        else:
            pending.append((s, seed, job))
    try:
        late = _run_pending(pending, jobs, threads, report_one, announce)
    except Exception as err:
        if type(err).__name__ != "Preempted":
            raise

        signum = getattr(err, "signum", signal.SIGTERM)
        gone = _gone(places)  # (the same command would start it anew at the old path: review diff19 #3)
        how = f"{gone[0]}: {gone[1]}" if gone else "run the same command again to continue"
        raise type(err)(f"sweep stopped by {signal_text(signum)}; {how} (finished runs are skipped, stopped ones "
                        "resume at their last step)", signum) from None
    from ..engine import Preempted, StopRequest

    # a stop signal other than Ctrl-C's (which stays KeyboardInterrupt's) took Python's default action once the last
    # run had returned, which ended a sweep writing its tables without a line (review chaos4 #9): kept until they are
    with StopRequest().handling(keys=False) as stop:
        _check_places(places)
        result = _finish(out, settings, log, report, busy, failed, logged)
    if stop.signum or late:
        raise Preempted(f"sweep stopped by {signal_text(stop.signum or late)} after its last run, its tables written; "
                        "run the same command again to check (finished runs are skipped)", stop.signum or late)
    return result


def _gone(places: Iterable[tuple[Place, str, str]]) -> tuple[str, str] | None:
    """The first folder of the sweep that was moved or deleted while it ran: (what happened, what to do); None
    while all are where they were."""
    for place, noun, flag in places:
        state, where = place.locate()
        if state == Place.HERE:
            continue
        if where is not None:
            return (f"the {noun} {place.path} was moved to {where} while the sweep ran",
                    f"run the same command with {flag} {shell_word(where)} to continue there")
        if state == Place.DELETED:
            return f"the {noun} {place.path} was deleted while the sweep ran", "the same command starts it again"
        return (f"the {noun} {place.path} was moved or deleted while the sweep ran",
                f"run the same command with {flag} where the folder is now to continue there")
    return None


def _check_places(places: Iterable[tuple[Place, str, str]]) -> None:
    """A ``UsageError`` where a folder of the sweep was moved or deleted while it ran, before it starts a run or
    writes tables: it stops there, saying where the folder went. Its runs trained on into folders it made again at
    the old path, and its last line called them failed (review chaos5 #2)."""
    gone = _gone(places)
    if gone:
        raise UsageError(f"{gone[0]}: the sweep stops; {gone[1]}")


def _finish(out: Path, settings: list[Setting], log: Callable[[str], None], report: bool, busy: int, failed: int,
            logged: int) -> list[dict[str, Any]]:
    """The sweep's end once its runs ended: its notes and, with ``report``, its tables; the per-setting rows."""
    if not (out / MANIFEST).is_file():  # (its runs failed on their files' paths; the tables cannot be written)
        raise UsageError(f"the sweep folder {out} was moved or deleted while the sweep ran: the runs since failed; "
                         "run the same command with --out where the folder is now to continue there")
    note = _accumulate_note(settings)
    if note:
        log(note)
    if busy:
        log(f"sweep: {busy} run{'s' * (busy != 1)} held by another job: run it again later")
    if failed > busy:
        n = failed - busy
        where = " and train.log in their run folders" if logged else ""  # not where writing it is what failed
        log(f"sweep: {n} run{'s' * (n != 1)} failed or left out; see the lines above{where}")
    if not report:
        return collect(out)[2]  # the rows, for the caller to tell a complete sweep, without writing the tables
    return summarize(out, log=log)


def _accumulate_note(settings: list[Setting]) -> str | None:
    """A note where the finished runs of a setting trained with different ``--accumulate``: it is no part of a run's
    identity (free to change on resume), yet a model with BatchNorm normalises over each micro-batch, so the
    spread over such a setting's seeds is not the seeds' alone (review experiments #6). None where none did."""
    mixed = []
    for s in settings:
        values = set()
        for run_dir in s.runs.values():
            with contextlib.suppress(UsageError, OSError):
                if run_status(run_dir, s.key)[0] == "done":
                    values.add(run_config(run_dir).accumulate)
        if len(values) > 1:
            mixed.append(f"{s.label} ({', '.join(map(str, sorted(values)))})")
    if not mixed:
        return None
    return (f"sweep: note: the finished runs of {', '.join(mixed[:3])}{', ...' if len(mixed) > 3 else ''} trained "
            "with different --accumulate; a model with BatchNorm normalises over each micro-batch, so their spread "
            "is not the seeds' alone")


def _check_models(configs: list[TrainConfig]) -> None:
    """Each model of the runs to train through a blank image of its data set (``reste.engine.check_model_fits``),
    once per model, options and data set: a model that does not fit is one error before any run, naming it."""
    from .. import engine

    seen = set()
    for config in configs:  # (all that builds the model: a factory may refuse an estimator, review diff13 #3)
        what = json.dumps([config.model, config.dataset, config.model_options, engine.estimator_settings(config)],
                          sort_keys=True, default=str)
        if what not in seen:
            seen.add(what)
            engine.check_model_fits(config)


def _check_data(configs: list[TrainConfig]) -> None:
    """Load each data set the pending runs read, once, before any run: a missing or damaged folder is one error
    up front (not one failed run per setting and seed), and ``--download`` fetches the files once (not in every
    worker at the same time). Data sets that do not fit in memory (ImageNet) are left to the runs."""
    from ..data import load_datasets
    from ..datasets import get_spec

    for dataset, path, download in dict.fromkeys((c.dataset, c.data_path, c.download) for c in configs):
        if get_spec(dataset).fits_in_memory:
            load_datasets(dataset, path, download=bool(download), augment=False)


def _run_pending(pending: list[tuple[Setting, int, dict[str, Any]]], jobs: int, threads: int | None,
                 report_one: Callable[[Setting, int, dict[str, Any]], None],
                 announce: Callable[[Setting, int, dict[str, Any]], None] = lambda s, seed, job: None) -> int:
    """Train the pending runs, in this process or ``jobs`` at a time in worker processes, each with the
    same torch threads either way: a run does not depend on how many others are pending. Returns the stop signal
    that came in the last run, after its last step (0 where none did); one before it raises ``Preempted``."""
    per_run = _threads_per_run(jobs, threads)
    if jobs == 1 or len(pending) <= 1:
        import torch

        from ..engine import Preempted, StopRequest

        before = torch.get_num_threads()
        if per_run:
            torch.set_num_threads(per_run)
        # one StopRequest for the runs and the moments between them: a signal in a run's last epoch (which the run
        # finishes) or between two runs (the tables so far, the next start) stops the sweep before its next run; it
        # was lost, or took the default action without a line (review chaos5 #7, #8). Ctrl-C between runs stays
        # KeyboardInterrupt's; in a run, the run's own handler answers it
        try:
            with StopRequest().handling(keys=False) as stop:
                machine = None  # a failure of the machine (no C++ compiler): the later runs would fail the same way
                for s, seed, job in pending:
                    if stop.signum:
                        raise Preempted("not started: the sweep is stopping", stop.signum)
                    if machine and _fails_alike(job):
                        report_one(s, seed, _not_started(machine))
                        continue
                    announce(s, seed, job)
                    outcome = _execute(job, stop)
                    report_one(s, seed, {**outcome, "from_epoch": job["from_epoch"], "resumed": job["resume"]})
                    machine = machine or (outcome["error"] if outcome.get("machine") else None)
            return stop.signum  # (in the last run: the tables are written, then the sweep stops)
        finally:
            torch.set_num_threads(before)
    _run_in_workers(pending, jobs, per_run, report_one, announce)
    return 0


def _fails_alike(job: dict[str, Any]) -> bool:
    """Whether a run would fail for the machine's cause that failed another (``errors.machine_cause``: torch.compile
    without a C++ compiler): one with ``--compile`` (a compile axis also has runs without it: review rev16 #1)."""
    return bool(job["config"].get("compile"))


def _not_started(cause: str) -> dict[str, Any]:
    """The outcome of a run not started because an earlier one failed for the machine (``errors.machine_cause``):
    each later run would fail the same way. It is not recorded as failed: once the machine is mended, the same
    command trains it."""
    return {"status": "left out", "error": "not started: it would fail for the machine's cause above; the same "
                                           "command trains it once that is mended", "seconds": 0.0, "cause": cause}


_CALLED_AGAIN = ("run_sweep was called again by a worker process of a sweep, which runs the top level of the script "
                 "that started the sweep (workers start by spawn): call run_sweep under `if __name__ == "
                 "\"__main__\":` in that script")
_CALLED_AGAIN_STATUS = 78  # (EX_CONFIG)


def _in_spawned_main() -> bool:
    """Whether this is a spawned worker process running its parent's main script as it starts (as
    ``__mp_main__``, which becomes its ``__main__`` once the script has run)."""
    main = sys.modules.get("__mp_main__")
    return main is not None and sys.modules.get("__main__") is not main


def _broken_pool(processes: list[Any], runs: str) -> BrokenProcessPool:
    """The error of a pool a worker process broke: one that ran its parent's script's run_sweep again as it
    started (a script without a main guard), or one killed (by a signal: the machine's memory, a kill)."""
    for process in processes:
        process.join(5)  # (ended, or stopped by the pool: its exit status)
    if any(process.exitcode == _CALLED_AGAIN_STATUS for process in processes):
        return BrokenProcessPool(f"no run could start: {_CALLED_AGAIN} (each of its runs keeps its finished epochs)")
    return BrokenProcessPool(
        f"a worker process of the sweep died (killed: by a signal, or by the system for memory) while training one "
        f"of: {runs}; the other runs were stopped with it. Each keeps its finished epochs: run the same command "
        "again to continue (fewer --jobs if memory ran out)")


def _run_in_workers(pending: list[tuple[Setting, int, dict[str, Any]]], jobs: int, per_run: int | None,
                    report_one: Callable[[Setting, int, dict[str, Any]], None],
                    announce: Callable[[Setting, int, dict[str, Any]], None]) -> None:
    """``jobs`` runs at a time in worker processes. A stop signal (SIGTERM, SIGUSR1) is passed on to the workers:
    no further run starts, the running ones save their step and stop, then ``Preempted`` is raised here, as with
    one job; a worker whose sweep died stops the same way (Linux)."""
    import multiprocessing

    from ..engine import Preempted, StopRequest

    ctx = multiprocessing.get_context("spawn")
    workers = min(jobs, len(pending))
    slots = ctx.Queue()  # each worker's number: the pool starts them as it needs them, in no set order
    for i in range(workers):
        slots.put(i)
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker,
                               initargs=(per_run, os.getpid(), on_command_line(), _one_line_warnings_shown(), slots))
    preempted: Preempted | None = None
    with StopRequest().handling() as stop, pool:  # a stop signal sets stop.signum, as in a run
        # a run is given to the pool as one ends, not all at once: the pool would pass queued runs on to its
        # workers' queue, where they can no longer be held back (a stop, a failure of the machine)
        queue = list(pending)
        futures: dict = {}  # each run given to the pool (running, or ended): its (setting, seed, job)

        def start_next() -> None:
            s, seed, job = queue.pop(0)
            announce(s, seed, job)  # (first: it stops the sweep where its folder went away)
            with _stop_signals_held():  # (the pool starts a worker process here, as it needs one)
                futures[pool.submit(_execute, job)] = (s, seed, job)

        ended: set = set()

        def pass_on(signum: int) -> None:
            if os.name == "nt":  # os.kill there is TerminateProcess: the workers' steps would be lost. A console's
                return  # Ctrl-C reaches them itself; nothing else can send them a stop (review portable #6)
            for pid in list(getattr(pool, "_processes", None) or {}):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signum)

        try:
            for _ in range(workers):
                start_next()
            waiting = set(futures)
            while waiting:
                done, waiting = wait(waiting, timeout=0.5, return_when=FIRST_COMPLETED)
                if stop.signum:  # again at each turn: a worker may have taken a queued run since
                    for fut in waiting:
                        fut.cancel()
                    pass_on(stop.signum)
                for fut in done:
                    if fut.cancelled():
                        continue
                    s, seed, job = futures[fut]
                    try:
                        outcome = {**fut.result(), "from_epoch": job["from_epoch"], "resumed": job["resume"]}
                        ended.add(fut)
                    except Preempted as err:
                        preempted = preempted or err
                        stop.signum = stop.signum or err.signum
                        continue
                    except BrokenProcessPool:  # the pool stops the other workers' runs (SIGTERM: each saves its step)
                        processes = list((getattr(pool, "_processes", None) or {}).values())
                        pool.shutdown(wait=False, cancel_futures=True)
                        runs = ", ".join(f"{r.label} seed {r_seed}" for r, r_seed, _ in
                                         (futures[f] for f in futures if f not in ended))
                        raise _broken_pool(processes, runs) from None
                    except BaseException:
                        pool.shutdown(wait=False, cancel_futures=True)  # start no further run
                        raise
                    # the queued runs that would fail the same way (--compile's: a run without it trains)
                    left_out = [q for q in queue if _fails_alike(q[2])] if outcome.get("machine") else []
                    queue[:] = [q for q in queue if q not in left_out]
                    if queue and not stop.signum:
                        start_next()
                        waiting.add(next(reversed(futures)))
                    report_one(s, seed, outcome)
                    for s_left, seed_left, _ in left_out:
                        report_one(s_left, seed_left, _not_started(outcome["error"]))
        except BaseException as err:  # a second Ctrl-C, "stop at once"; the output's reader gone (BrokenPipeError:
            # review experiments #11), an error here: the running runs stop too (each saves its step), and no other
            # starts (the pool's exit waits for them)
            at_once = isinstance(err, KeyboardInterrupt)
            pass_on(signal.SIGINT if at_once else signal.SIGTERM)
            pool.shutdown(wait=not at_once, cancel_futures=True)  # (a worker still starting would fail noisily
            raise  # once this process has gone)
    if preempted is not None:
        raise preempted
    if stop.signum:  # the signal came when no run was left to stop
        raise Preempted(f"stopped by signal {stop.signum}", stop.signum)
