"""TensorBoard logging of ``reste train`` runs (``reste train --tensorboard [DIR]``).

Needs the ``tensorboard`` package: ``pip install 'reste[tensorboard]'``. The writer is
``torch.utils.tensorboard.SummaryWriter``; the step of every value is the epoch (1-based,
the ``epoch`` of ``metrics.jsonl``). After each finished epoch it logs

* every number of that epoch's ``metrics.jsonl`` line: ``train_*`` as ``train/*``, ``test_*``
  as ``test/*``, the schedule values (o, t, alpha, ...) as ``schedule/*``, the indicators as
  ``indicators/*`` and the rest (``lr``, ``time``, ...) as ``epoch/*``;
* the schedule values of every estimator, per layer, as ``schedule/<estimator module>/<name>``
  (e.g. ``schedule/conv1.weight_estimator/o``), read as ``reste.set_progress`` reads them;
* with ``--indicators``, the two indicators per layer, ``indicators/<layer>/estimating_error``
  and ``indicators/<layer>/gradient_stability``, at the epoch's last step (the run-level values
  in ``metrics.jsonl`` are the epoch's mean in the general mode).

The run's config goes in once as hparams (nested options flattened: ``estimator_options.o_end``).
A resumed run writes into the same folder: the first epoch it logs marks the point from which
TensorBoard drops older events (``purge_step``), and the finished epochs that ``metrics.jsonl``
holds but the folder does not (a crash before they were logged, or ``--tensorboard`` first given
on resume) are logged from ``metrics.jsonl``; epochs already logged are not logged again.
"""

from __future__ import annotations

import os
import threading
import warnings
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import UsageError
from ..indicators import MEASURE, EquilibriumMeter, estimating_error, gradient_stability, indicator_layers
from ..layers import estimators_of, schedule_values
from ..rundir import CONFIG, LAST, LOCK_NAME, METRICS, TENSORBOARD_DIR, last_checkpoint, read_metrics

INSTALL = "pip install 'reste[tensorboard]'"
IN_RUN = TENSORBOARD_DIR  # the default folder, inside the run directory
OWNER = "reste-run.txt"  # in a folder outside the run directory: the run whose events it holds (its path)


def log_dir(setting: str, run_dir: str | os.PathLike) -> Path:
    """The folder of a run's events: a relative ``setting`` is taken inside the run directory."""
    path = Path(setting)
    return path if path.is_absolute() else Path(run_dir) / path


def check(setting: str | None, run_dir: str | os.PathLike) -> None:
    """Fail early, with one line, when ``--tensorboard`` cannot work: the package is missing, or a
    run without a checkpoint yet (a new one) would write into a folder that holds another run's events."""
    if setting is None:
        return
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        raise UsageError(f"--tensorboard needs the tensorboard package: {INSTALL}") from None
    folder = log_dir(setting, run_dir)
    try:  # TensorBoard's writer takes text paths: it failed after the first epoch (review portable #13)
        os.fspath(folder.absolute()).encode("utf-8")
    except UnicodeEncodeError:
        raise UsageError(f"--tensorboard: the path of {ascii(os.fspath(folder))} is not valid UTF-8, which "
                         "TensorBoard's writer needs; pass --tensorboard a folder whose path is") from None
    blocker = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise UsageError(f"--tensorboard {setting}: {blocker} is a file, not a folder; pass a folder")
    if blocker is not None and not os.access(blocker, os.W_OK | os.X_OK):
        raise UsageError(f"--tensorboard {setting}: {blocker} is not writable; pass a writable folder")
    mine = Path(run_dir).resolve()
    for place in (folder.resolve(), *folder.resolve().parents):  # up to this run's folder (the default's case)
        if place == mine:
            break
        if _a_run(place):  # another run's folder, or its own tensorboard/ (which names no owner: inside it)
            raise UsageError(f"--tensorboard {setting}: {folder} is in another run's folder ({place}); pass a folder "
                             "of this run's own")
    if not last_checkpoint(run_dir).exists() and _event_files(folder):
        raise UsageError(f"{folder} already holds TensorBoard events of another run; pass a new folder "
                         "to --tensorboard (one per run)")
    owner = _owner(folder, run_dir)
    if owner is not None and owner != _identity(run_dir) and _event_files(folder):  # (a resume)
        raise UsageError(f"{folder} holds TensorBoard events of another run ({owner}); pass a new folder to "
                         f"--tensorboard (one per run), or, where this run moved there, delete {folder / OWNER}")


def _a_run(place: Path) -> bool:
    """Whether the folder ``place`` holds a run: its checkpoint, or its config.json beside its metrics or lock (a
    config.json alone may be a project's own, above the folders a user keeps runs in)."""
    return (place / LAST).exists() or (place / CONFIG).is_file() and any(
        (place / name).exists() for name in (METRICS, LOCK_NAME))


def _inside(folder: Path, run_dir: str | os.PathLike) -> bool:
    """Whether ``folder`` is in the run directory (the default's case): it moves with the run, which its lock
    guards."""
    try:
        folder.resolve().relative_to(Path(run_dir).resolve())
        return True
    except ValueError:
        return False


def _identity(run_dir: str | os.PathLike) -> str:
    return str(Path(run_dir).resolve())


def _owner(folder: Path, run_dir: str | os.PathLike) -> str | None:
    """The run a folder outside the run directory holds the events of, as its :data:`OWNER` file names it (None:
    inside the run directory, or not recorded: a new folder, or one an older reste wrote)."""
    if _inside(folder, run_dir):
        return None
    try:
        return (folder / OWNER).read_text(encoding="utf-8").strip() or None
    except (OSError, UnicodeDecodeError):
        return None


def _event_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("events.out.tfevents.*")) if folder.is_dir() else []


def metric_tag(key: str, schedule: Any = (), indicators: Any = ()) -> str:
    """The TensorBoard tag of a ``metrics.jsonl`` key."""
    for split in ("train", "test"):
        if key.startswith(split + "_"):
            return f"{split}/{key[len(split) + 1:]}"
    if key in schedule:
        return f"schedule/{key}"
    if key in indicators:
        return f"indicators/{key}"
    return f"epoch/{key}"


def metric_scalars(metrics: dict[str, Any], schedule: Any = (), indicators: Any = ()) -> dict[str, float]:
    """{tag: value} for every number of a metrics line but its ``epoch`` and how its indicators were measured (the
    paper mode's o_end: a setting, not a curve)."""
    return {metric_tag(k, schedule, indicators): float(v) for k, v in metrics.items()
            if k not in ("epoch", MEASURE) and isinstance(v, (int, float)) and not isinstance(v, bool)}


def _plain(name: str) -> str:
    """A module's name without ``torch.compile``'s wrapper (``_orig_mod.``): a compiled run's per-layer tags are an
    eager one's, so their curves share a chart (review integ1, suggestion 4)."""
    return ".".join(part for part in name.split(".") if part != "_orig_mod")


def layer_schedules(model: nn.Module) -> dict[str, float]:
    """``schedule/<estimator module>/<name>`` for every scheduled estimator of ``model``."""
    names = {id(m): _plain(name) for name, m in model.named_modules()}
    return {f"schedule/{names[id(est)]}/{k}": float(v) for est in estimators_of(model)
            for k, v in est.schedule_values().items()}


def layer_indicators(meter: EquilibriumMeter, stability: bool = True) -> dict[str, float]:
    """``indicators/<layer>/estimating_error`` and ``.../gradient_stability`` of each indicator layer,
    now (the weights and the gradients of the last step); ``stability=False``: the error alone (a last step that
    fp16's scaler skipped has inf or NaN gradients, review rev14 #12)."""
    out = {}
    for name, layer in indicator_layers(meter.model, meter.mode):
        name = _plain(name)
        out[f"indicators/{name}/estimating_error"] = float(estimating_error(layer, meter.mode, meter.o_end))
        if stability and layer.weight.grad is not None and layer.weight.numel() > 1:  # (one weight: no variance)
            out[f"indicators/{name}/gradient_stability"] = float(gradient_stability(layer, meter.mode))
    return out


def hparams(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """The config with nested dicts flattened (``estimator_options.o_end``) and every value a
    number, a string or a bool (lists as text; ``None`` left out)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(hparams(value, f"{prefix}{key}."))
        elif value is not None:
            out[prefix + key] = value if isinstance(value, (bool, int, float, str)) else str(value)
    return out


class TensorBoardLog:
    """The TensorBoard events of one run, written by its main process after each finished epoch.

    The writer opens at the first ``log_epoch`` (a run that finishes no epoch leaves no folder).
    """

    def __init__(self, setting: str, run_dir: str | os.PathLike, config: dict[str, Any]) -> None:
        self.setting, self.run_dir, self.dir, self.config = setting, Path(run_dir), log_dir(setting, run_dir), config
        self.writer: Any = None

    def moved(self, run_dir: str | os.PathLike) -> None:
        """The run's folder was renamed (the run follows it): events inside it go on there, in a writer opened at
        the next epoch (TensorBoard's writer opens its file by path at each flush: review diff19 #2)."""
        if not Path(self.setting).is_absolute():
            self.close()
            self.dir = log_dir(self.setting, run_dir)
        self.run_dir = Path(run_dir)

    def log_epoch(self, metrics: dict[str, Any], model: nn.Module, meter: EquilibriumMeter | None = None,
                  skipped: bool = False) -> None:
        """Log one finished epoch: its metrics line, the per-layer schedule and indicators (``skipped``: fp16's
        scaler skipped its last step, whose gradients give no per-layer stability)."""
        step = int(metrics["epoch"])
        schedule = schedule_values(model)
        indicators = meter.history[-1] if meter is not None and meter.history else {}
        if self.writer is None:
            self._open(step, schedule, indicators)
        scalars = metric_scalars(metrics, schedule, indicators)
        scalars.update(layer_schedules(model))
        if meter is not None:
            scalars.update(layer_indicators(meter, stability=not skipped))
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def _open(self, step: int, schedule: Any, indicators: Any) -> None:
        """Open the writer at epoch ``step``; fill in the earlier epochs the folder lacks; hparams once."""
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams as hparams_summaries

        logged, has_hparams = _logged(self.dir) if _event_files(self.dir) else (set(), False)
        _quiet_writer_thread()
        self.writer = SummaryWriter(str(self.dir), purge_step=step)
        if not _inside(self.dir, self.run_dir):  # whose events these are: another run is refused the folder
            (self.dir / OWNER).write_text(_identity(self.run_dir) + "\n", encoding="utf-8")
        if not has_hparams:
            for summary in hparams_summaries(hparams(self.config), {"test/acc": 0.0, "test/loss": 0.0}):
                self.writer.file_writer.add_summary(summary)
        if step > 1:
            for line in read_metrics(self.run_dir):
                if line["epoch"] < step:
                    for tag, value in metric_scalars(line, schedule, indicators).items():
                        if (tag, line["epoch"]) not in logged:
                            self.writer.add_scalar(tag, value, line["epoch"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _quiet_writer_thread() -> None:
    """Once per process: an OSError in TensorBoard's own writer thread (a disk that fills between two epochs) is one
    warning, not the thread's traceback before reste's one-line error (review chaos #7). Other threads' exceptions go
    to the hook there was."""
    previous = threading.excepthook
    if getattr(previous, "reste_tensorboard", False):
        return

    def hook(args: Any) -> None:
        if isinstance(args.exc_value, OSError) and _in_tensorboard(args.exc_traceback):
            err = args.exc_value  # (the writer raises it again at the run's next event: the run's error line
            # follows, saying what is kept; rev16 #4)
            warnings.warn(f"TensorBoard's event writer failed ({err.strerror or err}); a resume with --tensorboard "
                          "writes the missing events from metrics.jsonl", stacklevel=1)
            return
        previous(args)

    hook.reste_tensorboard = True  # type: ignore[attr-defined]
    threading.excepthook = hook


def _in_tensorboard(trace: Any) -> bool:
    """Whether the traceback ``trace`` passes through the tensorboard package's event writer."""
    while trace is not None:
        if f"{os.sep}tensorboard{os.sep}summary{os.sep}writer{os.sep}" in trace.tb_frame.f_code.co_filename:
            return True
        trace = trace.tb_next
    return False


def _logged(folder: Path) -> tuple[set[tuple[str, int]], bool]:
    """The (tag, step) of every scalar in ``folder``'s events, and whether they hold hparams."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    events.Reload()
    tags = events.Tags()
    logged = {(tag, e.step) for tag in tags.get("scalars", []) for e in events.Scalars(tag)}
    try:
        has_hparams = bool(events.PluginTagToContent("hparams"))
    except KeyError:
        has_hparams = False
    return logged, has_hparams
