"""Training configuration: the settings of a run, their defaults, validation and the paper's presets.

A ``TrainConfig`` is plain data (saved as ``config.json`` in the run directory).
Fields left as ``None`` are filled by ``resolve()`` from the data set's defaults
(its ``DatasetSpec.defaults`` in ``reste.datasets``), so ``reste train --dataset cifar10`` gets the paper's
CIFAR-10 recipe and ``reste train`` alone a one-minute run on digits.
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .datasets import DEFAULT_ROOT, SPECS, dataset_names, get_spec
from .errors import UsageError, did_you_mean, option, unknown_choice
from .estimators import estimator_class, get_estimator
from .indicators import MODES as INDICATOR_MODES
from .layers import SCALINGS
from .optim import DEFAULT_GAMMA, DEFAULT_THRESHOLD, check_settings
from .wording import count, series
from .plugins import defining, load_plugins, needed, saved_form

# reste.engine.build_optimizer builds each; bop: Bop (reste.optim) for the binary weights, Adam for the other parameters
OPTIMIZERS = ("sgd", "adam", "adamw", "bop")
# each optimizer's learning rate where the data set's recipe names another optimizer (whose lr would not suit it):
# SGD's the paper's, Adam's (bop's Adam over the float parameters too) the usual 1e-3
OPTIMIZER_LR = {"sgd": 0.1, "adam": 1e-3, "adamw": 1e-3, "bop": 1e-3}
MAX_EPOCHS = 1_000_000
MAX_SEED = 2**63 - 1
AMP_MODES = ("none", "bf16", "fp16")
DATA_DEVICES = ("auto", "cpu")


def __getattr__(name: str) -> Any:
    if name == "DATASET_DEFAULTS":  # the recipes by data set, as this module kept a copy of them before: ask the specs
        return {spec_name: dict(spec.defaults) for spec_name, spec in SPECS.items()}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def optimizer_text(settings: dict[str, Any]) -> str:
    """How a run's optimizer is told (the run's start line, ``reste show``), from its settings (``to_dict()``):
    ``sgd lr 0.1``, or for bop its gamma and threshold and the float parameters' Adam."""
    lr = f"lr {settings['lr']:g}"
    if settings["optimizer"] != "bop":
        return f"{settings['optimizer']} {lr}"
    return (f"bop gamma {settings.get('bop_gamma') or DEFAULT_GAMMA:g} threshold "
            f"{settings.get('bop_threshold') or DEFAULT_THRESHOLD:g} (adam {lr} for the float parameters)")


FULL_PRECISION = "full precision"  # binarization_text of a model without binary layers


def binarization_text(settings: dict[str, Any]) -> str:
    """How a run's binarization is told (its start line, ``reste show``), from its settings (``to_dict()``): the
    estimator (``reste``, ``reste, 1W/32A``), or ``full precision`` for a model without binary layers (whose
    recorded estimator, the default, trains nothing)."""
    from .models import model_info

    try:
        binary = model_info(settings["model"])["binary"]
    except (UsageError, KeyError, TypeError):  # a plugin's model not loaded here: as recorded
        binary = True
    return f"{settings['estimator']}{', 1W/32A' if settings.get('a32') else ''}" if binary else FULL_PRECISION


def parse_value(text: str, none: bool = True) -> Any:
    """A value given as text (``--model-option``, a ``--grid`` value): int, float, bool (true/false), None
    (none/null; with ``none=False`` they stay strings, as a model option's value: ``act=none``) or the string."""
    text = text.strip()
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    words = {"true": True, "false": False, **({"none": None, "null": None} if none else {})}
    return words.get(text.lower(), text)


def default_workers(dataset: str) -> int:
    """DataLoader worker processes by default: none for a data set held in memory; for one read from files, one per
    CPU of this process's share (up to 8). The share: the CPUs it may use, split among the node's training
    processes (torchrun's ``LOCAL_WORLD_SIZE``) unless an affinity mask narrower than the machine already gave it
    its own (SLURM's CPU binding, taskset): 8 processes of 8 workers each on a 32-CPU node would run 64."""
    return 0 if get_spec(dataset).fits_in_memory else file_workers()


MAX_FILE_WORKERS = 8  # the most worker processes that read image files by default


def file_workers() -> int:
    """Worker processes for reading image files (:func:`default_workers`; ``reste predict`` on image files): one
    per CPU of this process's share, up to :data:`MAX_FILE_WORKERS`."""
    cpus, mask = usable_cpus(), _mask_cpus()
    if mask >= (os.cpu_count() or mask):  # no narrower mask: the node's CPUs (or quota), shared by its processes
        cpus //= _local_processes()
    return max(1, min(MAX_FILE_WORKERS, cpus))


def _local_processes() -> int:
    """The training processes on this node as torchrun says (``LOCAL_WORLD_SIZE``); 1 when it says nothing."""
    try:
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        return 1


def check_workers(dataset: str, workers: int | None) -> None:
    """Refuse DataLoader worker processes for a data set held in memory (which has none to give them)."""
    spec = get_spec(dataset)
    if workers and spec.fits_in_memory:
        raise UsageError(f"{spec.name} is held in memory and batched there, without worker processes; drop "
                         "--workers (it is for data sets read from files, ImageNet)")


def check_model_options(model: str, options: dict[str, Any]) -> None:
    """Refuse a ``--model-option`` that model ``model``'s factory does not take (one line, listing those it takes)."""
    from .models import model_keywords
    from .models.registry import check_option_types

    accepted = model_keywords(model)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise UsageError(f"model {model!r} has no option {', '.join(unknown)}; valid: {', '.join(accepted) or 'none'}")
    check_option_types(model, options)


def refuse_binary_flags(model: Any, flags: list[str]) -> None:
    """Refuse ``flags`` (as written: --estimator, an estimator's flags, --scaling) given for ``model`` where it is
    full precision, whatever their values: the settings alone cannot tell a flag that restates a default from none
    (review readme2 #2). Nothing for a binary model, or an unknown one (its check names the valid ones)."""
    if not flags or not isinstance(model, str):
        return
    from .models import model_info

    try:
        info = model_info(model)
    except UsageError:
        return
    if not info["binary"]:
        twin = f", or train its binary twin {info['twin']!r}" if info["twin"] else ""
        raise UsageError(f"{model!r} is full precision: it has no estimator and no binary weights, so "
                         f"{series(flags)} would do nothing; drop {'it' if len(flags) == 1 else 'them'}{twin}")


class _Bare(int):
    """A number a bare flag gave (``--warm-up``): its refusal says so, as the user typed none."""


BARE_WARM_UP = _Bare(5)  # the warm-up epochs of a bare --warm-up, as the paper's on CIFAR-10


def device_named(name: str, on_cpu: str = "use --device cpu") -> Any:  # a torch.device
    """The torch device ``name`` (cpu, cuda, cuda:N) names; refused where it is unknown or not supported (whether
    this machine has it is ``reste.engine.pick_device``'s check); ``on_cpu``: the refusal's remedy."""
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise UsageError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):  # e.g. mps: the run's sums are float64, which it has not
        raise UsageError(f"device {name!r} is not supported: reste trains on cpu or cuda; {on_cpu}")
    return device


def check_data_path(dataset: str, data_path: str | None, download: bool = False) -> None:
    """Refuse a ``--data-path`` or ``--download`` for a data set that reads no files (it would be ignored)."""
    if (data_path or download) and not get_spec(dataset).reads_files:
        flags = " and ".join(f for f, given in (("--data-path", data_path), ("--download", download)) if given)
        raise UsageError(f"{get_spec(dataset).name} reads no files (it comes with its package); drop {flags}")


def idle_data_flags(dataset: str) -> set[str]:
    """The settings that do nothing for ``dataset`` (``TrainConfig.resolve`` refuses them when given): a data path
    and a download for one that comes with its package, augmentation for one without any, workers for one held
    in memory, a data device for one read from files."""
    spec = get_spec(dataset)
    idle = set() if spec.reads_files else {"data_path", "download"}
    idle |= set() if spec.augments else {"augment"}
    return idle | ({"workers"} if spec.fits_in_memory else {"data_device"})


FLOAT32_MAX = 3.4028234663852886e38


def usable_cpus() -> int:
    """The CPUs this process may run on: its affinity mask where the OS keeps one (taskset, a SLURM or cgroup
    cpuset give a job a few of a big node's CPUs, which os.cpu_count() counts all of), else the machine's; and at
    most its CPU quota, rounded up (a container's ``--cpus 2``, a Kubernetes limit: the whole node's CPUs in its
    mask, two CPUs' worth of time)."""
    cpus = _mask_cpus()
    quota = _cpu_quota()
    return max(1, min(cpus, math.ceil(quota))) if quota else cpus


def _mask_cpus() -> int:
    """The CPUs of this process's affinity mask (the machine's where the OS keeps none: macOS, Windows)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # macOS, Windows: no affinity mask to read
        return os.cpu_count() or 1


def _cpu_quota() -> float | None:
    """This process's cgroup CPU quota in CPUs (``cpu.max`` of cgroup v2, ``cpu.cfs_quota_us`` of v1), or None
    where it has none (or none can be read: not Linux). Read along the cgroup /proc/self/cgroup names, from it up to
    the mount's root, the smallest one counting (a limit on a parent holds its children; a container without a
    cgroup namespace names its host path, while its own cgroup is the mount's root: review rev15 #5)."""
    try:
        with open("/proc/self/cgroup", encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    quotas = []
    for line in lines:  # "0::/path" (v2) or "4:cpu,cpuacct:/path" (v1)
        if line.count(":") < 2:
            continue
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            root, read = "/sys/fs/cgroup", _v2_quota
        elif "cpu" in controllers.split(","):
            root, read = f"/sys/fs/cgroup/{controllers}", _v1_quota
        else:
            continue
        parts = [part for part in path.split("/") if part]
        for depth in range(len(parts), -1, -1):  # the cgroup, its parents, the mount's root
            quota = read("/".join([root, *parts[:depth]]))
            if quota is not None:
                quotas.append(quota)
    return min(quotas) if quotas else None


def _v2_quota(folder: str) -> float | None:
    """``cpu.max`` of a cgroup-v2 folder in CPUs ("200000 100000": 2; "max ...": none), None where unreadable."""
    try:
        with open(f"{folder}/cpu.max", encoding="utf-8") as f:
            quota, period = f.read().split()[:2]
        return float(quota) / float(period) if quota != "max" and float(period) > 0 else None
    except (OSError, ValueError):
        return None


def _v1_quota(folder: str) -> float | None:
    """``cpu.cfs_quota_us / cpu.cfs_period_us`` of a cgroup-v1 folder in CPUs (-1: none), None where unreadable."""
    try:
        with open(f"{folder}/cpu.cfs_quota_us", encoding="utf-8") as f:
            quota = float(f.read())
        with open(f"{folder}/cpu.cfs_period_us", encoding="utf-8") as f:
            period = float(f.read())
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


def max_threads() -> int:
    """The most CPU threads a run may take here: 4 per CPU this process may run on (more is a typing slip)."""
    return 4 * usable_cpus()


def check_threads(threads: int | None) -> None:
    """Refuse a ``--threads`` outside [1, :func:`max_threads`] (``reste train`` and ``reste predict``)."""
    if threads is not None and not 0 < threads <= max_threads():
        raise UsageError(f"--threads must be in [1, {max_threads()}] (4 per CPU this process may use), "
                         f"got {threads}")


def check_worker_count(workers: Any) -> None:
    """Refuse a ``--workers`` that is not a whole number in [0, :func:`max_threads`] (None: the default; review
    fuzz1 #8: 10^20 passed, and the run then hung as its loader started, deaf to SIGTERM)."""
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int)
                                or not 0 <= workers <= max_threads()):
        raise UsageError(f"--workers must be a whole number in [0, {max_threads()}] (4 per CPU this process may use), "
                         f"got {workers!r}")


def check_accumulate(batch_size: int, accumulate: int, cuda_graphs: bool = False) -> None:
    """Refuse an ``--accumulate`` that is not a positive integer dividing ``--batch-size`` (each optimizer step
    sums the gradients of ``accumulate`` micro-batches of ``batch_size // accumulate`` images), or one above 1 with
    ``--cuda-graphs`` (a capture holds one batch's step)."""
    if isinstance(accumulate, bool) or not isinstance(accumulate, int) or accumulate < 1:
        raise UsageError(f"--accumulate must be a positive integer (micro-batches per optimizer step), got "
                         f"{accumulate!r}")
    if batch_size % accumulate:
        raise UsageError(f"--accumulate {accumulate} does not divide --batch-size {batch_size}: each step's batch is "
                         f"split into {accumulate} equal micro-batches; pick a divisor of {batch_size}")
    if accumulate > 1 and cuda_graphs:
        raise UsageError(f"--cuda-graphs captures one batch's step, not {accumulate} accumulated micro-batches; drop "
                         "--cuda-graphs, or --accumulate where the batch fits")


# --indicators paper: whether a model's settings give it binary 3x3 convolutions (see _check_paper_indicators)
_PAPER_LAYERS: dict[tuple, bool] = {}


#: --tensorboard without a folder: the run's events, in this folder inside the run directory
TENSORBOARD_DIR = "tensorboard"

@dataclass
class TrainConfig:
    """Everything that defines a training run. ``None`` means "the data set's default"."""

    dataset: str = "digits"
    model: str | None = None
    data_path: str | None = None  # resolve() makes it absolute (None: the data set's default root)
    download: bool = False
    estimator: str = "reste"
    estimator_options: dict[str, Any] = field(default_factory=dict)  # o_end, t, interval, beta, ...
    plugins: list[str] = field(default_factory=list)  # modules registering estimators of your own (--plugin)
    model_options: dict[str, Any] = field(default_factory=dict)  # keywords of the model factory (width)
    a32: bool = False
    scaling: str = "layer"
    augment: bool | None = None  # train-split augmentation (the data set's default recipe says)
    epochs: int | None = None
    batch_size: int | None = None
    accumulate: int = 1  # micro-batches per optimizer step: each of batch_size // accumulate images, gradients summed
    eval_batch_size: int | None = None
    optimizer: str | None = None
    lr: float | None = None
    weight_decay: float | None = None
    momentum: float = 0.9
    bop_gamma: float | None = None  # --optimizer bop only (None: reste.optim.DEFAULT_GAMMA); follows the lr schedule
    bop_threshold: float | None = None  # --optimizer bop only (None: reste.optim.DEFAULT_THRESHOLD)
    warm_up: int | None = None
    indicators: str | None = None  # None, "general" or "paper"
    seed: int = 0
    workers: int | None = None  # None: 0 for in-memory data sets, default_workers for image files
    device: str = "auto"
    data_device: str = "auto"  # in-memory data sets: "auto" on the training device, "cpu" on the CPU
    amp: str = "none"
    channels_last: bool = False
    compile: bool = False
    cuda_graphs: bool = False  # capture each training step as one CUDA graph (the last partial batch runs eagerly)
    sync_bn: bool = True
    threads: int | None = None  # torch CPU threads (None: torch's default)
    preset: str | None = None
    save_every: float | None = None  # minutes between mid-epoch checkpoints (None: only at epoch ends)
    # TensorBoard event folder, a relative one inside the run directory (None: off; True: the bare flag's)
    tensorboard: str | bool | None = None
    keep_top: int = 0  # also keep the checkpoints of the K best epochs by test top-1 in top/ (0: none)

    def __post_init__(self) -> None:
        # a pathlib.Path where a path is meant, as every other path-taking function of reste takes one; recorded
        # (config.json) as the string it is (review types1, suggestion 1)
        for name in ("data_path", "tensorboard"):
            value = getattr(self, name)
            if isinstance(value, os.PathLike):
                object.__setattr__(self, name, os.fspath(value))
        if isinstance(self.plugins, tuple) or (isinstance(self.plugins, list) and any(isinstance(p, os.PathLike)
                                                                                      for p in self.plugins)):
            object.__setattr__(self, "plugins", [os.fspath(p) if isinstance(p, os.PathLike) else p
                                                 for p in self.plugins])  # (review diff26 s3, diff27 s2: a tuple)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise UsageError(f"unknown config keys {unknown}; valid: {', '.join(sorted(names))}")
        return cls(**data)

    @classmethod
    def from_saved(cls, data: dict[str, Any]) -> "TrainConfig":
        """A config as a run saved it (``config.json``, a checkpoint), by any version of reste: a
        setting that did not exist yet gets the value those runs always had."""
        data = dict(data)
        data.setdefault("augment", True)  # before --augment, every run augmented its train images
        if data.get("optimizer", "sgd") != "sgd" and "momentum" in data:  # what it did: none (since refused)
            data["momentum"] = cls.momentum
        if data.get("scaling", cls.scaling) != cls.scaling and binarization_text(
                {"estimator": "", **data}) == FULL_PRECISION:  # a float model's: none either (since refused)
            data["scaling"] = cls.scaling
        return cls.from_dict(data).without_idle_data_flags()  # what such a run did, whatever it saved

    def without_idle_data_flags(self, keep: set[str] = frozenset()) -> "TrainConfig":
        """A copy without the settings that do nothing for its data set (``idle_data_flags``), but those in
        ``keep``: for runs saved before these were refused, and for the settings of a sweep over several data
        sets (where a flag meant for some of them is left out of the others)."""
        try:
            idle = idle_data_flags(self.dataset) - set(keep)
        except (UsageError, TypeError, AttributeError):  # an unknown data set: resolve names it
            return self
        unset = {"data_path": None, "download": False, "augment": False, "workers": 0, "data_device": "auto"}
        changes = {k: unset[k] for k in idle if getattr(self, k) not in (None, unset[k])}
        return dataclasses.replace(self, **changes) if changes else self

    def resolve(self) -> "TrainConfig":
        """A copy with every ``None`` filled in, validated. Raises ``UsageError``."""
        if not isinstance(self.dataset, str):
            raise UsageError(f"unknown dataset {self.dataset!r}; valid: {', '.join(dataset_names())}")
        for name in ("estimator_options", "model_options"):
            if not isinstance(getattr(self, name), dict):
                raise UsageError(f"{name} must be a mapping of names to values, got {getattr(self, name)!r}")
        if isinstance(self.plugins, list) and all(isinstance(x, str) for x in self.plugins):
            load_plugins(self.plugins)  # first: a plugin's estimator names count when the name is made canonical
        # the canonical name (case, '_' or '-' and the aliases as everywhere else: --dataset FMNIST works)
        spec = get_spec(self.dataset)
        out = dataclasses.replace(self, dataset=spec.name,
                                  estimator=canonical_estimator(self.estimator),
                                  estimator_options=dict(self.estimator_options),
                                  model_options=dict(self.model_options))
        if isinstance(out.device, str):  # CPU, Cuda:1 as --dataset DIGITS is taken: names in any case
            out.device = out.device.strip().lower()
        if isinstance(out.tensorboard, bool):  # in Python, True is the bare flag (review api, suggestion)
            out.tensorboard = TENSORBOARD_DIR if out.tensorboard else None
        defaults = dict(spec.defaults)
        defaults["workers"] = default_workers(out.dataset)
        if out.lr is None and out.optimizer in OPTIMIZER_LR and out.optimizer != defaults.get("optimizer"):
            defaults["lr"] = OPTIMIZER_LR[out.optimizer]  # the recipe's lr is for the recipe's optimizer
        if out.optimizer == "bop":
            defaults.update(bop_gamma=DEFAULT_GAMMA, bop_threshold=DEFAULT_THRESHOLD)
        if out.warm_up is None and isinstance(out.epochs, int) and out.epochs > 0:
            # a default warm-up never exceeds a short run the user asked for
            defaults["warm_up"] = min(defaults["warm_up"], out.epochs - 1)
        for key, value in defaults.items():
            if getattr(out, key) is None:
                setattr(out, key, value)
        if out.model is None:  # a registered data set whose spec names no default model
            raise UsageError(f"dataset {out.dataset!r} has no default model; pass --model (see `reste summary "
                             "--list`)")
        out.validate()
        out.warm_up = int(out.warm_up)  # (a bare flag's _Bare: a plain number in config.json and checkpoints)
        if not out.data_path and spec.reads_files and spec.reads_default_root:
            out.data_path = str(DEFAULT_ROOT)  # the folder it reads, which the run must find from elsewhere too
        if out.data_path and spec.reads_files:
            # config.json records where the data is, not how it was typed: `reste eval RUN_DIR` and `--resume` run
            # from other folders. absolute(), not resolve(): a symlinked data folder stays the link the user gave
            out.data_path = str(Path(out.data_path).expanduser().absolute())
        return out

    def validate(self) -> None:
        from .models import model_info

        self._check_types()
        if not isinstance(self.plugins, list) or not all(isinstance(x, str) for x in self.plugins):
            raise UsageError(f"--plugin must be a list of module names or .py files, got {self.plugins!r}")
        load_plugins(self.plugins)  # first: a plugin may register the model
        info = model_info(self.model)  # an unknown model: the registry's one line, naming the valid ones
        estimator_class(self.estimator)  # an unknown one: the UsageError naming the closest, then the valid ones
        if self.scaling not in SCALINGS:
            raise UsageError(unknown_choice("--scaling", self.scaling, SCALINGS))
        if self.a32 and not info["binary"]:
            raise UsageError(f"--a32 applies to binary models; {self.model!r} is full precision")
        if not info["binary"]:  # the default estimator's options written out (as_recorded) change nothing
            defaults = get_estimator(TrainConfig.estimator).config()
            moved = [k for k, v in self.estimator_options.items() if defaults.get(k, object()) != v]
            if self.estimator != TrainConfig.estimator or moved:
                given = (f"--estimator {self.estimator}" if self.estimator != TrainConfig.estimator else
                         f"the estimator options {', '.join(moved)}")
                raise UsageError(f"{self.model!r} is full precision: it has no estimator, so {given} would do "
                                 "nothing; drop it" + (f", or train its binary twin {info['twin']!r}" if info["twin"]
                                                       else ""))
        if self.device != "auto":  # its spelling (whether this machine has it: when the run starts)
            device_named(self.device)
        if self.scaling != TrainConfig.scaling and not info["binary"]:  # (it made a sweep setting of its own)
            raise UsageError(f"--scaling applies to binary weights; {self.model!r} is full precision, so --scaling "
                             f"{self.scaling} would do nothing; drop it")
        if self.optimizer not in OPTIMIZERS:
            raise UsageError(unknown_choice("optimizer", self.optimizer, OPTIMIZERS))
        if self.optimizer != "sgd" and self.momentum != TrainConfig.momentum:  # (a sweep tabulated equal runs)
            raise UsageError(f"--momentum is a setting of SGD; --optimizer {self.optimizer} has none: add --optimizer "
                             "sgd, or drop it")
        if self.optimizer == "bop":
            self._check_bop(info["binary"])
        elif self.bop_gamma is not None or self.bop_threshold is not None:
            given = "--bop-gamma" if self.bop_gamma is not None else "--bop-threshold"
            raise UsageError(f"{given} is a setting of Bop: add --optimizer bop, or drop it")
        if self.indicators not in (None, *INDICATOR_MODES):
            raise UsageError(unknown_choice("indicator mode", self.indicators, INDICATOR_MODES))
        if self.amp not in AMP_MODES:
            raise UsageError(unknown_choice("--amp", self.amp, AMP_MODES))
        if self.cuda_graphs and (self.compile or self.amp == "fp16"):
            clash = "--compile (use one or the other)" if self.compile else \
                "--amp fp16 (its GradScaler reads the gradients on the host; use --amp bf16)"
            raise UsageError(f"--cuda-graphs cannot be combined with {clash}")
        check_data_path(self.dataset, self.data_path, self.download)
        spec = get_spec(self.dataset)
        if self.augment and not spec.augments:
            if self.preset in PRESETS and PRESETS[self.preset].settings.get("augment"):  # not given: the recipe's
                raise UsageError(f"{self.dataset} has no train augmentation, and preset {self.preset} (a recipe for "
                                 f"{PRESETS[self.preset].settings['dataset']}) augments; add --no-augment")
            raise UsageError(f"{self.dataset} has no train augmentation; drop --augment")
        check_workers(spec.name, self.workers)
        if self.data_device != "auto" and not spec.fits_in_memory:
            raise UsageError(f"{spec.name} is read from files by DataLoader workers; --data-device is for the "
                             "data sets held in memory: drop it")
        if self.data_device not in DATA_DEVICES:
            raise UsageError(unknown_choice("--data-device", self.data_device, DATA_DEVICES))
        for name in ("epochs", "batch_size", "eval_batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise UsageError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
        check_accumulate(self.batch_size, self.accumulate, self.cuda_graphs)
        if self.epochs > MAX_EPOCHS:
            raise UsageError(f"--epochs must be at most {MAX_EPOCHS:,}, got {self.epochs}")
        if not 0 <= self.seed <= MAX_SEED:
            raise UsageError(f"--seed must be in [0, 2**63 - 1], got {self.seed}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise UsageError(f"--lr must be a positive number, got {self.lr}")
        if not math.isfinite(self.weight_decay) or self.weight_decay < 0:
            raise UsageError(f"--weight-decay must be >= 0, got {self.weight_decay}")
        if not 0 <= self.momentum < 1:
            raise UsageError(f"--momentum must be in [0, 1), got {self.momentum}")
        for name in ("lr", "weight_decay"):  # the optimizers take them as float32 scalars
            if getattr(self, name) > FLOAT32_MAX:
                raise UsageError(f"--{name.replace('_', '-')} must be at most {FLOAT32_MAX!r} (the largest float32), "
                                 f"got {getattr(self, name)!r}")
        if not 0 <= self.warm_up < self.epochs:
            bare = " (what a bare --warm-up means)" if isinstance(self.warm_up, _Bare) else ""
            raise UsageError(f"--warm-up must be in [0, epochs), got {self.warm_up}{bare} for "
                             f"{count(self.epochs, 'epoch')}; give --warm-up N with N < {self.epochs}")
        check_threads(self.threads)
        if self.save_every is not None and not (math.isfinite(self.save_every) and self.save_every > 0):
            raise UsageError(f"--save-every must be a positive number of minutes, got {self.save_every}")
        if self.keep_top < 0:
            raise UsageError(f"--keep-top must be >= 0 (0 keeps no top checkpoints), got {self.keep_top}")
        if self.tensorboard is not None and not self.tensorboard.strip():
            raise UsageError(option("--tensorboard is empty; pass a folder or the bare flag",
                                    "tensorboard is empty; pass a folder, or True for the run's own"))
        check_worker_count(self.workers)
        check_model_options(self.model, self.model_options)
        try:
            estimator_class(self.estimator).check_hyperparameters(self.estimator_options, flags=True)
        except ValueError as err:
            raise UsageError(str(err)) from None
        try:
            get_estimator(self.estimator, **self.estimator_options)
        except (ValueError, TypeError) as err:
            raise UsageError(f"bad estimator settings: {err}") from None
        if self.indicators and not info["binary"]:
            raise UsageError(f"--indicators needs a binary model; {self.model!r} is full precision (no binary layers)")
        if self.indicators == "paper":
            self._check_paper_indicators()
        elif self.indicators == "general" and not estimator_class(self.estimator).defines_f():
            raise UsageError(f"--indicators general reads F(x) of the estimator, and {self.estimator!r} defines no _f "
                             "(the antiderivative of its g); add _f to its class, or drop --indicators")

    def _check_bop(self, binary: bool) -> None:
        """--optimizer bop: a binary model, trained with the STE and no weight scale (Bop flips each +-1 weight by
        its own gradient, which the STE passes as it is at +-1 when its clip is >= 1, and a scale would
        change), gamma and threshold in range, and no CUDA graphs (its step has not been captured on a GPU)."""
        if not binary:
            raise UsageError(f"--optimizer bop trains binary weights and {self.model!r} is full precision; use "
                             "another --optimizer")
        if self.estimator != "ste" or self.scaling != "none":
            raise UsageError("--optimizer bop flips each +-1 weight by its gradient, which the STE passes unchanged "
                             "and a weight scale would alter: add --estimator ste --scaling none")
        clip = self.estimator_options.get("clip", 1.0)
        if isinstance(clip, (int, float)) and clip < 1:
            raise UsageError(f"--optimizer bop needs the STE's gradient at +-1: --clip must be >= 1, got {clip}")
        if self.cuda_graphs:
            raise UsageError("--cuda-graphs cannot be combined with --optimizer bop (its step is not captured yet); "
                             "drop --cuda-graphs")
        try:
            check_settings(self.bop_gamma, self.bop_threshold, flags=True)
        except ValueError as err:
            raise UsageError(str(err)) from None

    def _check_paper_indicators(self) -> None:
        """--indicators paper reads binary 3x3 convolutions only: a model without any is refused here, before
        a run folder is made (the general mode reads every binary layer). The model is built once per process
        for its settings (not the estimator's: which layers are binary does not depend on it); a sweep or a report
        resolves each run's settings several times."""
        from .indicators import indicator_layers
        from .models import create, defined_in

        key = (self.model, defined_in(self.model), repr(sorted(self.model_options.items())), self.a32, self.scaling)
        if key not in _PAPER_LAYERS:
            model = create(self.model, a32=self.a32, scaling=self.scaling, **self.model_options)
            _PAPER_LAYERS[key] = bool(indicator_layers(model, "paper"))
        if _PAPER_LAYERS[key]:
            return
        raise UsageError(f"--indicators paper reads binary 3x3 convolutions only and {self.model!r} has none; use "
                         "--indicators general")

    def _check_types(self, keys: bool = False) -> None:
        """Every field has its type (a hand-edited config.json may hold nulls or strings); ``keys``: the error
        names the field as a file does (``epochs``), not as a flag (``--epochs``)."""
        number = (int, float)
        kinds: dict[str, tuple[type, ...]] = {
            "dataset": (str,), "estimator": (str,), "scaling": (str,), "optimizer": (str,), "device": (str,),
            "data_device": (str,), "amp": (str,), "estimator_options": (dict,), "model_options": (dict,),
            "download": (bool,), "cuda_graphs": (bool,),
            "a32": (bool,), "channels_last": (bool,), "compile": (bool,), "sync_bn": (bool,),
            "model": (str,), "epochs": (int,), "batch_size": (int,), "accumulate": (int,), "eval_batch_size": (int,),
            "warm_up": (int,), "seed": (int,), "workers": (int,), "lr": number, "weight_decay": number,
            "momentum": number, "keep_top": (int,),
        }
        optional: dict[str, tuple[type, ...]] = {
            "data_path": (str,), "indicators": (str,), "threads": (int,), "preset": (str,), "save_every": number,
            "tensorboard": (str,), "augment": (bool,), "bop_gamma": number, "bop_threshold": number,
        }
        for name, kind in (*kinds.items(), *optional.items()):
            value = getattr(self, name)
            if value is None and name in optional:
                continue
            bad_bool = isinstance(value, bool) and bool not in kind
            if bad_bool or not isinstance(value, kind):
                flag = name if keys else "--" + name.replace("_", "-")
                raise UsageError(f"{flag} must be {' or '.join(k.__name__ for k in kind)}, got {value!r}")


@dataclass(frozen=True)
class Preset:
    """One row of the paper's tables: the settings and the published accuracy."""

    name: str
    description: str
    settings: dict[str, Any]
    top1: float
    top5: float | None = None


# SPEC section 6, the recipe of every preset, written out in full: a preset takes nothing from its data set's defaults
# (reste.datasets) or TrainConfig's, which may change for quick runs without moving a paper row
_RECIPE = dict(optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=1e-4, augment=True, scaling="layer", a32=False)


def _cifar(model: str, top1: float, desc: str, estimator: str = "reste", **extra: Any) -> dict[str, Any]:
    settings = dict(dataset="cifar10", model=model, epochs=1000, batch_size=256, eval_batch_size=128,
                    warm_up=5, estimator=estimator, **_RECIPE)
    options = {"o_end": 3.0} if estimator == "reste" else {}
    options.update(extra.pop("estimator_options", {}))
    settings.update(extra, estimator_options=options)
    return dict(settings=settings, top1=top1, description=desc)


def _imagenet(model: str, top1: float, top5: float, desc: str, **extra: Any) -> dict[str, Any]:
    settings = dict(dataset="imagenet", model=model, epochs=250, batch_size=750, eval_batch_size=128,
                    warm_up=0, estimator="reste", estimator_options={"o_end": 3.0}, **_RECIPE)
    settings.update(extra)
    return dict(settings=settings, top1=top1, top5=top5, description=desc)


_PRESETS: dict[str, dict[str, Any]] = {
    "cifar10-resnet20-1w1a": _cifar("resnet20_1w1a", 86.75, "ResNet-20 1W/1A, ReSTE (Table 2)"),
    "cifar10-resnet20-1w32a": _cifar("resnet20_1w1a", 91.32, "ResNet-20 1W/32A, ReSTE (Table 2)", a32=True),
    "cifar10-resnet20-bireal-1w1a": _cifar("resnet20_bireal_1w1a", 87.92, "ResNet-20 Bi-Real 1W/1A (Table 2)"),
    "cifar10-resnet18-1w1a": _cifar(
        "resnet18_1w1a", 92.63, "ResNet-18 1W/1A, batch 96, 2000 epochs (Table 2)", epochs=2000, batch_size=96
    ),
    "cifar10-vgg-small-1w1a": _cifar("vgg_small_1w1a", 92.55, "VGG-small 1W/1A (Table 2)"),
    "cifar10-resnet20-ste": _cifar("resnet20_1w1a", 84.44, "estimator comparison: STE", estimator="ste"),
    "cifar10-resnet20-dsq": _cifar("resnet20_1w1a", 84.11, "estimator comparison: DSQ", estimator="dsq"),
    "cifar10-resnet20-ede": _cifar("resnet20_1w1a", 85.20, "estimator comparison: EDE (IR-Net)", estimator="ede"),
    "cifar10-resnet20-fda": _cifar("resnet20_1w1a", 85.80, "estimator comparison: FDA", estimator="fda"),
    "cifar10-resnet20-rbnn": _cifar("resnet20_1w1a", 85.87, "estimator comparison: RBNN", estimator="rbnn"),
    "cifar10-resnet20-o10": _cifar(
        "resnet20_1w1a", 82.86, "o_end ablation: o_end = 10 oscillates", estimator_options={"o_end": 10.0}
    ),
    "imagenet-resnet18-1w1a": _imagenet("imagenet_resnet18_1w1a", 60.88, 82.59, "ResNet-18 1W/1A (Table 3)"),
    "imagenet-resnet18-1w32a": _imagenet(
        "imagenet_resnet18_1w1a", 67.40, 87.20, "ResNet-18 1W/32A (Table 3)", a32=True
    ),
    "imagenet-resnet34-1w1a": _imagenet("imagenet_resnet34_1w1a", 65.05, 85.78, "ResNet-34 1W/1A (Table 3)"),
    "imagenet-resnet34-1w32a": _imagenet(
        "imagenet_resnet34_1w1a", 70.74, 89.50, "ResNet-34 1W/32A (Table 3)", a32=True
    ),
}

PRESETS: dict[str, Preset] = {name: Preset(name=name, **row) for name, row in _PRESETS.items()}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise UsageError(f"unknown preset {name!r}; {did_you_mean(name, PRESETS)}valid: {', '.join(PRESETS)} "
                         "(see `reste presets`)")
    return PRESETS[name]


def canonical_estimator(name: Any) -> Any:
    """An estimator's registered name for any spelling of it (``ReSTE``, ``sign-swish``); an unknown one as given
    (resolve names it)."""
    try:
        return estimator_class(name).name if isinstance(name, str) else name
    except UsageError:
        return name


def as_recorded(config: TrainConfig, modules: Iterable[str] | None = None) -> TrainConfig:
    """``config`` (resolved) as a run records it in config.json and its checkpoints: its estimator named as
    registered with every hyper-parameter written out (those left at their defaults too: a default that changes
    later, in reste or a plugin, cannot move the run), and the plugins that define its estimator, model and
    data set and the estimators a plugin model's layers name themselves (a Python caller's own imports too), each
    in its saved form (a file's absolute path), for a resume or a sweep's worker processes to load (``reste eval``
    and ``export`` take ``--plugin``); a plugin given that defines none of them is left out. ``modules``: those of
    the estimators of the model a run built (where a trial build on the meta device fails: review diff31 #1); by
    default a plugin's model is built on the meta device to find them."""
    from .datasets import defined_in as dataset_module
    from .models import defined_in

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. ReSTE's "schedule never changes" for o_end = 1: told at training
        est = get_estimator(config.estimator, **config.estimator_options)
    model_module = defined_in(config.model)
    used = [type(est).__module__, model_module, dataset_module(config.dataset), *(modules or ())]
    if modules is None and model_module and model_module.split(".")[0] != "reste":  # (review extend1 #2, diff30 #1)
        used += _layers_estimator_modules(config)
    # a --plugin given that defines nothing the run uses is not recorded: a resume would ask for it again (a sweep
    # over estimators, one of them a plugin's, gives it to every setting)
    given = [saved_form(s) for s in needed(config.plugins, used)]  # (diff30 #2: a relative file, from another folder)
    found = [spec for spec in defining(used) if spec not in given]
    return dataclasses.replace(config, estimator=est.name, estimator_options=est.config(), plugins=[*given, *found])


def _layers_estimator_modules(config: TrainConfig) -> list[str]:
    """The modules of the estimators a plugin's model builds (built on the meta device: no memory, no init): its
    layers may name estimators of their own (``mixed_estimators``), whose plugins a run then needs too; none where
    it cannot be built so (its own error is told where the run builds it)."""
    import torch

    from .layers import estimators_of
    from .models import create, registry

    try:  # (a trial: the registry's once-only warnings stay the run's, the caller's RNG is left alone, diff31 #2)
        with registry.unrecorded(), torch.random.fork_rng(devices=[]), warnings.catch_warnings(), \
                torch.device("meta"):
            warnings.simplefilter("ignore")
            model = create(config.model, estimator=config.estimator, estimator_options=config.estimator_options,
                           a32=config.a32, scaling=config.scaling, **config.model_options)
    except Exception:  # noqa: BLE001 - a factory that cannot build on the meta device (a run adds them from the
        return []  # model it builds: engine._Run)
    return [type(e).__module__ for e in estimators_of(model)]


def config_from_preset(name: str, **overrides: Any) -> TrainConfig:
    """The preset's config with ``overrides`` (e.g. ``data_path``, ``workers``) applied. Hyper-parameters given
    with the preset's estimator refine its options; another estimator starts from its own defaults (the
    preset's options belong to its estimator)."""
    preset = get_preset(name)
    data = dict(preset.settings, preset=name)
    data["estimator_options"] = dict(data.get("estimator_options", {}))
    if canonical_estimator(overrides.get("estimator", data.get("estimator"))) == data.get("estimator"):
        overrides = dict(overrides, estimator_options={**data["estimator_options"],
                                                       **overrides.get("estimator_options", {})})
    else:
        overrides = dict(overrides, estimator_options=dict(overrides.get("estimator_options", {})))
    if overrides.get("optimizer") != data.get("optimizer") and "lr" not in overrides \
            and overrides.get("optimizer") in OPTIMIZER_LR:  # the preset's lr is for the preset's optimizer
        overrides = dict(overrides, lr=OPTIMIZER_LR[overrides["optimizer"]])
    data.update(overrides)
    epochs = overrides.get("epochs")
    if "warm_up" not in overrides and isinstance(epochs, int) and 0 < epochs <= (data.get("warm_up") or 0):
        data["warm_up"] = epochs - 1  # a shorter run than the preset's: its warm-up shortened, as a data set's is
    return TrainConfig.from_dict(data)
