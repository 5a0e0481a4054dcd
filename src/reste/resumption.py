"""The rules of a resume: whether a run directory can continue, and with which settings.

``reste.engine.resume`` asks this module, in this order:

1. ``check_last_kept``: a folder with finished epochs but no ``last.pt`` lost it and cannot continue (a crash
   between epoch 1's metrics line and its first ``last.pt`` leaves one line and nothing else: that restarts);
2. ``continue_config``: the saved settings with those given again; a given setting that changes what is
   trained is refused unless forced, and the data set never changes;
3. ``load_last`` and ``check_checkpoint``: ``last.pt`` must hold the model and fit the epochs and, inside an
   epoch, the batch size;
4. ``trained_settings``: what ``last.pt`` trained with, and the notes on where ``config.json`` departs from it
   (a setting ``config.json`` lacks is damage: refused);
5. ``settings_to_record``: what ``config.json`` holds afterwards.

The settings that may always differ are ``reste.rundir.RESUME_FREE``. Every refusal is a one-line
``UsageError`` that says what to do.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import torch

from . import schedules
from .checkpoint import code_changed, load_checkpoint, unregistered
from .config import OPTIMIZER_LR, TrainConfig, canonical_estimator, check_model_options, max_threads
from .datasets import get_spec
from .errors import UsageError, option
from .integrations.tensorboard import log_dir
from .optim import composite_states
from .plugins import given_again, well_formed
from .estimators import estimator_class
from .rundir import BEST, CONFIG, LAST, RESUME_FREE, best_checkpoint, config_keys, last_checkpoint, last_lost

__all__ = ["check_checkpoint", "check_last_kept", "config_differences", "continue_config", "load_last",
           "settings_to_record", "trained_settings"]


def epochs_option(n: int) -> str:
    """``--epochs N`` for the command line, the override a Python caller passes otherwise (review diff10 #3)."""
    return option(f"--epochs {n}", f"overrides={{'epochs': {n}}}")


def check_last_kept(run_dir: Path) -> None:
    """Refuse a run whose ``last.pt`` was lost: more than one metrics line, a ``best.pt`` or ``top/`` files
    without it. One line and nothing else is a crash before epoch 1's first ``last.pt``: it restarts."""
    if last_lost(run_dir):
        raise UsageError(f"{run_dir} has finished epochs but no {LAST} (deleted or lost), so it cannot continue; "
                         + _what_is_left(run_dir))


def config_differences(saved: TrainConfig, overrides: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """{field: (saved, requested)} for every override that changes a saved setting (an estimator option the
    run left at its default compares as that default)."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise UsageError(f"unknown settings {', '.join(unknown)}; valid: {', '.join(sorted(names))}")
    diffs = {}
    for key, value in overrides.items():
        if key in ("estimator_options", "model_options"):
            base = getattr(saved, key)
            if key == "estimator_options" and overrides.get("estimator", saved.estimator) == saved.estimator:
                base = _with_defaults(saved.estimator, base)
            for k, v in value.items():
                if base.get(k) != v:
                    diffs[f"{key}.{k}"] = (base.get(k), v)
        elif getattr(saved, key) != value:
            diffs[key] = (getattr(saved, key), value)
    return diffs


def _optimizer_state(state: Any) -> bool:
    """Whether ``state`` has the form of an optimizer's ``state_dict()``: torch's (its state and groups), or a
    ``reste.optim.Composite``'s (``--optimizer bop``: each member's; review diff25 #1)."""
    members = composite_states(state)
    if members is not None:
        return bool(members) and all(_optimizer_state(m) for m in members)
    return isinstance(state, dict) and isinstance(state.get("state"), dict) and isinstance(state.get("param_groups"),
                                                                                            list)


def continue_config(run_dir: Path, saved: TrainConfig, overrides: dict[str, Any] | None,
                    force: bool) -> TrainConfig:
    """The resolved settings the run continues with: ``saved`` (config.json's) with ``overrides`` (given
    again). Another data set is refused always, other settings outside ``RESUME_FREE`` unless ``force``;
    given estimator or model options refine the saved ones, and another estimator drops the old one's."""
    overrides = dict(overrides or {})
    if "plugins" not in overrides and not well_formed(saved.plugins):  # (review diff21 #6: --plugin None)
        raise UsageError(f"{run_dir / CONFIG} is damaged: its plugins are {saved.plugins!r}, not a list of module "
                         "names or .py files; give the run's --plugin flags again (or restore the file)")
    again = given_again(saved.plugins, run_dir) if "plugins" not in overrides else ""
    if again:  # before anything resolves it
        remedy = option(f"pass{again} (or where they are now)",  # (review extend1 #8: a Python caller has no flags)
                        f"load them first (reste.plugins.load_plugins) or pass overrides={{'plugins': "
                        f"{saved.plugins!r}}}")
        raise UsageError(f"{run_dir / CONFIG} names plugins that a resume imports only when given again (a .py file, "
                         "a module of the current folder or code in the run folder: in a run folder from elsewhere, "
                         f"anyone's code); {remedy}")
    if isinstance(overrides.get("dataset"), str):  # compared by its canonical name: DIGITS is digits
        overrides["dataset"] = get_spec(overrides["dataset"]).name
    if isinstance(overrides.get("estimator"), str):  # and ReSTE is reste, on either side
        overrides["estimator"] = estimator_class(overrides["estimator"]).name
        # a bad saved one stays as it is, for the given one to replace
        saved = dataclasses.replace(saved, estimator=canonical_estimator(saved.estimator))
    diffs = config_differences(saved, overrides)
    if "dataset" in diffs:  # not even with --force: the checkpoint's model learned another data set
        raise UsageError(f"{run_dir} trained on {saved.dataset}, not {diffs['dataset'][1]}; a run keeps its data "
                         "set: start a new run (--out) for the other one")
    blocking = {k: v for k, v in diffs.items() if k.split(".")[0] not in RESUME_FREE}
    if blocking and not force:
        detail = "; ".join(f"{k}: saved {a!r}, given {b!r}" for k, (a, b) in blocking.items())
        raise UsageError(f"resume settings differ from the saved run ({detail}); drop them or pass "
                         f"{option('--force', 'force=True')}")  # (review api #7: a Python caller has no flags)
    if overrides.get("estimator", saved.estimator) != saved.estimator:  # (--force) the old one's options go
        overrides["estimator_options"] = dict(overrides.get("estimator_options", {}))
    for key in ("estimator_options", "model_options"):  # given options refine the saved ones
        if key in overrides and not (key == "estimator_options" and "estimator" in diffs):
            overrides[key] = {**getattr(saved, key), **overrides[key]}
    data = saved.to_dict()
    data.update(overrides)
    if data.get("optimizer") != "bop":  # (--force) leaving bop: its recorded settings go (a flag given stays, refused)
        data.update({k: None for k in ("bop_gamma", "bop_threshold") if k not in overrides})
    if data.get("optimizer") != "sgd" and "momentum" not in overrides:  # (--force) leaving SGD: its momentum too
        data["momentum"] = TrainConfig.momentum
    if "threads" not in overrides and isinstance(saved.threads, int) and saved.threads > max_threads():
        data["threads"] = None  # recorded on a bigger machine: this one's default (the resume notes the change)
    if "workers" not in overrides and isinstance(saved.workers, int) and saved.workers > max_threads():
        data["workers"] = None  # (the same: the bound of check_worker_count, review fuzz1 #8)
    try:
        return TrainConfig.from_dict(data).resolve()
    except UsageError as err:
        missing = unregistered(saved.model, saved.estimator)
        if missing:  # not a bad setting: the module that registers it is not loaded
            recorded = f" (the run recorded --plugin {' '.join(saved.plugins)})" \
                if saved.plugins and well_formed(saved.plugins) else ""
            load = option("pass --plugin MODULE, the module or .py file that does",
                          "import the module that does (or reste.plugins.load_plugins(['MODULE']) for it or its .py "
                          "file)")
            raise UsageError(f"{run_dir} trained with {missing}, which no module loaded here registers: {load}"
                             f"{recorded}; or, where {CONFIG} was edited, give that setting again to replace it "
                             f"(with {option('--force', 'force=True')})") from None
        if _fails_alone(saved, err) and saved.plugins and _model_options_fail(saved):  # the plugin's model changed
            raise code_changed(run_dir / CONFIG, repr(saved.model), saved.model_options, str(err),
                               plugin=True) from None
        if _fails_alone(saved, err):  # config.json's own setting, not a flag given
            raise UsageError(f"{run_dir / CONFIG} holds a bad setting ({err}); give that setting again to replace "
                             "it (with --force where it changes training), or restore the file") from None
        raise


def load_last(run_dir: Path, device: torch.device) -> dict[str, Any]:
    """``last.pt``, loaded onto ``device``; a damaged one is refused, saying what the run still offers."""
    last = last_checkpoint(run_dir)
    if last.exists() and not os.access(last, os.R_OK):  # its mode, not its bytes: the run can go on once mended
        raise UsageError(f"cannot read {last} (Permission denied); make it readable (its mode, its owner) and resume "
                         "again")  # (it said to give the run up: review chaos #2)
    try:
        return load_checkpoint(last, map_location=device)
    except UsageError as err:
        raise UsageError(f"{refusal_reason(err)}; the run cannot continue from it: {_what_is_left(run_dir)}") from None


def refusal_reason(err: UsageError) -> str:
    """What :func:`reste.checkpoint.load_checkpoint`'s refusal says is wrong with the file, without its advice to
    use another one (a run's own last.pt has no other)."""
    return str(err).split("; use another checkpoint")[0].split("; pass a .pt file")[0]


def check_checkpoint(ckpt: dict[str, Any], config: TrainConfig, last: Path, given: Any = ()) -> None:
    """Refuse a ``last.pt`` that cannot continue as ``config``: another model or data set, fewer epochs than it
    holds, or a mid-epoch state with another batch size. ``given``: the settings this command gives (the others come
    from config.json, whose edit the refusal then names: review chaos #8)."""
    trained = ckpt.get("config")
    was = trained.get("dataset") if isinstance(trained, dict) else None
    if isinstance(was, str) and _canonical_dataset(was) != config.dataset:  # (a resume never changes it)
        raise UsageError(f"{last.parent / CONFIG} names data set {config.dataset}, but {last} trained on {was}: "
                         f"restore {CONFIG}, or delete it (--resume writes it again from {LAST})")
    if ckpt["model_name"] != config.model:
        raise UsageError(f"{last} holds model {ckpt['model_name']!r}, not {config.model!r}; a run keeps its model: "
                         "start a new run (--out) for the other one")
    checks = {"epoch": lambda v: type(v) is int and v >= 0, "step": lambda v: v is None or (type(v) is int and v >= 0),
              "best_epoch": lambda v: type(v) is int and v >= -1,  # best_epoch -1, best_acc -1.0: no epoch yet
              "best_acc": lambda v: type(v) in (int, float) and -1 <= v <= 100,
              # (review fuzz1 #2: these two ended in a KeyError or TypeError line; None: another optimizer's state)
              "optimizer": lambda v: v is None or _optimizer_state(v),
              "rng": lambda v: isinstance(v, dict) and all(k in v for k in ("python", "numpy", "torch"))}
    for name, ok in checks.items():
        if not ok(ckpt.get(name)):
            raise UsageError(f"{last} holds a malformed {name} ({ckpt.get(name)!r:.40}); it cannot continue: start a "
                             "new run, or resume from another checkpoint")
    done, step = ckpt["epoch"], int(ckpt.get("step") or 0)
    if done > config.epochs and "epochs" not in given:  # config.json's own (a hand edit): not a flag of this command
        planned = trained.get("epochs") if isinstance(trained, dict) else None
        least = done + (1 if step else 0)
        if type(planned) is int and planned >= least:  # the run's own schedule, which last.pt keeps (review chaos4 #5)
            raise UsageError(f"{last.parent} already finished {done} epochs of the {planned} its {LAST} planned, and "
                             f"its {CONFIG} plans {config.epochs}: restore {CONFIG} (or delete it: --resume writes it "
                             f"again from {LAST}), or pass {epochs_option(planned)} with "
                             f"{option('--force', 'force=True')}")
        raise UsageError(f"{last.parent} already finished {done} epochs, and its {CONFIG} plans {config.epochs}: "
                         f"restore {CONFIG}, or pass {epochs_option(least)} or more with "
                         f"{option('--force', 'force=True')}")
    if done > config.epochs:  # (inside an epoch: that one too, which the next check asks for)
        raise UsageError(f"{last.parent} already finished {done} epochs; {epochs_option(config.epochs)} is fewer: "
                         f"pass at least {done + (1 if step else 0)}")
    if step and done >= config.epochs:
        raise UsageError(f"{last} was saved inside epoch {done + 1} (after {step} batches); --epochs {config.epochs} "
                         f"ends before it: pass at least {done + 1}")
    size = trained.get("batch_size") if isinstance(trained, dict) else None
    if step and not trained_epoch(ckpt) and size is not None and size != config.batch_size:
        raise UsageError(f"{last} was saved inside epoch {done + 1} at batch {step} of size {size}; the batch size "
                         f"cannot change there: resume with --batch-size {size}, and change it once that epoch "
                         "has finished")
    seed = trained.get("seed") if isinstance(trained, dict) else None
    if step and not trained_epoch(ckpt) and seed is not None and seed != config.seed:
        # (review combos #5) the epoch's order is a function of (seed, epoch): the batches skipped would not be
        # those trained
        raise UsageError(f"{last} was saved inside epoch {done + 1} at batch {step} of the order seed {seed} draws; "
                         f"the seed cannot change there: resume with --seed {seed}, and change it once that epoch "
                         "has finished")


def _canonical_dataset(name: str) -> str:
    """A data set's canonical name (an unknown one as it is: compared, it differs)."""
    try:
        return get_spec(name).name
    except UsageError:
        return name


def trained_epoch(ckpt: dict[str, Any]) -> bool:
    """Whether ``last.pt`` holds an epoch whose training is done and whose evaluation is not (saved before it
    read the test images): a resume only evaluates it, on any number of processes, images or batch size."""
    return bool(ckpt.get("step")) and bool((ckpt.get("partial") or {}).get("trained"))


def trained_settings(ckpt: dict[str, Any], saved: TrainConfig, config: TrainConfig,
                     run_dir: Path) -> tuple[TrainConfig, list[str]]:
    """The settings ``last.pt`` trained with (``saved``, config.json's, where it records none), and the notes
    to print: config.json departs from them (when there is training left), another optimizer starts afresh."""
    if not isinstance(ckpt.get("config"), dict):
        return saved, []
    trained = TrainConfig.from_saved(ckpt["config"])
    notes = []
    edited = _config_edits(set(ckpt["config"]), trained, saved, run_dir)
    if edited and ckpt["epoch"] < config.epochs:
        text = ", ".join(f"{k} {getattr(saved, k)!r} (was {getattr(trained, k)!r})" for k in edited)
        given = [k for k in edited if getattr(config, k) != getattr(saved, k)]  # this command's flags (--force)
        goes_on = f"the run continues with {CONFIG}'s" if not given else (
            "the run continues with " + ", ".join(f"{k} {getattr(config, k)!r}" for k in given) + " as this command "
            "gives" + (f", and {CONFIG}'s other settings" if len(given) < len(edited) else ""))
        notes.append(f"note: {run_dir / CONFIG} differs from the settings {LAST} trained with ({text}); {goes_on}")
    added = sorted(set(config.estimator_options) - set(trained.estimator_options))
    if trained.estimator == config.estimator and added and ckpt["epoch"] < config.epochs:
        # the estimator's code gained them since (a plugin edited): the run trained without, and goes on with them
        values = ", ".join(f"{k}={config.estimator_options[k]!r}" for k in added)
        notes.append(f"note: estimator {config.estimator!r} has hyper-parameter(s) {LAST} did not record, which the "
                     f"run continues with at their defaults: {values} (its code changed since it trained?)")
    if trained.optimizer != config.optimizer:
        usual = OPTIMIZER_LR.get(config.optimizer)
        advice = f" (--lr changes it; {config.optimizer}'s usual one is {usual:g})" if usual not in (None, config.lr) \
            else ""
        notes.append(f"note: the optimizer changes from {trained.optimizer} to {config.optimizer}; its state "
                     f"(momentum, moments) starts afresh, at lr {config.lr:g}{advice}")
    return trained, notes


def recorded_places_notes(run_dir: Path, config: TrainConfig, overrides: dict[str, Any] | None) -> list[str]:
    """A note for each place outside the run folder that the resume writes to because ``config.json`` says so,
    not a flag given again (sec2 9: a run folder from elsewhere chooses them): the TensorBoard folder, and the data
    folder that --download fills."""
    given, notes = overrides or {}, []
    if isinstance(config.tensorboard, str) and config.tensorboard and "tensorboard" not in given:
        folder = log_dir(config.tensorboard, run_dir)
        if not folder.resolve().is_relative_to(Path(run_dir).resolve()):
            notes.append(f"note: TensorBoard events go to {folder}, as {CONFIG} records (--tensorboard DIR moves "
                         "them)")
    if config.download is True and "download" not in given and config.data_path:
        notes.append(f"note: missing data is downloaded into {config.data_path}, as {CONFIG} records (--data-path "
                     "DIR moves it)")
    return notes


#: the settings free on resume (RESUME_FREE) that tell how a run was computed, not where its files are: a resume
#: with nothing left to train keeps those it trained with (review combos #7: --accumulate 4 was recorded so)
_HOW_COMPUTED = ("threads", "accumulate", "eval_batch_size", "device", "data_device", "workers")


def settings_to_record(config: TrainConfig, trained: TrainConfig, idle: bool) -> TrainConfig:
    """What config.json holds after the resume: the settings it continues with, or, with nothing left to train,
    the settings it trained with and where its files are now (``RESUME_FREE``, less ``_HOW_COMPUTED``)."""
    if not idle:
        return config
    return dataclasses.replace(trained, **{k: getattr(config, k) for k in RESUME_FREE if k not in _HOW_COMPUTED})


def schedule_notes(trained: int | None, epochs: int, done: int) -> list[str]:
    """A note when a run that trained on a ``trained``-epoch schedule continues on an ``epochs``-epoch one with
    epochs left to train (``done`` finished): the learning rate and the estimators' ramps are set by epoch /
    epochs, so they jump to where the new length puts them."""
    if not trained or trained == epochs or done >= epochs:
        return []
    return ["note: " + schedules.length_change(trained, epochs, done)]


def _with_defaults(estimator: str, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` with every hyper-parameter of ``estimator`` that they leave out at its default."""
    try:
        return {**estimator_class(estimator).check_hyperparameters(dict(options)), **options}
    except (ValueError, UsageError):
        return dict(options)


def _fails_alone(saved: TrainConfig, err: UsageError) -> bool:
    """Whether the saved settings alone, without the flags given on resume, fail as ``err`` says."""
    try:
        saved.resolve()
    except UsageError as own:
        return str(own) == str(err)
    return False


def _model_options_fail(saved: TrainConfig) -> bool:
    """Whether the saved model options alone are refused by the model's (loaded) factory."""
    try:
        check_model_options(saved.model, saved.model_options)
    except UsageError:
        return True
    return False


def _what_is_left(run_dir: Path) -> str:
    """What a run that cannot continue still offers."""
    best = best_checkpoint(run_dir)
    return f"evaluate its {BEST} with reste eval, or start a new run" if best.exists() else "start a new run"


def _config_edits(held: set[str], was: TrainConfig, saved: TrainConfig, run_dir: Path) -> list[str]:
    """The settings in which ``config.json`` (``saved``) differs from those ``last.pt`` trained with (``was``;
    ``held``: the names its copy has): a resume given other settings with ``--force`` writes them before its first
    save, or a hand edit. A setting that ``last.pt`` holds and ``config.json`` lacks is damage:
    refused, as a default would silently stand in (a setting a newer reste added is missing from an older run's
    config.json, and takes the value it had: no difference)."""
    changed = [f.name for f in dataclasses.fields(TrainConfig)
               if f.name not in RESUME_FREE and getattr(saved, f.name) != getattr(was, f.name)]
    missing = [k for k in changed if k in held - config_keys(run_dir)]
    if missing:
        raise UsageError(f"{run_dir / CONFIG} lacks {', '.join(missing)}, which {LAST} holds: it is damaged; "
                         f"delete it and resume again ({LAST} holds the settings to write it from)")
    return changed
