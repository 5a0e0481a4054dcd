"""The flags of ``reste train`` (and ``reste sweep``, which takes them) and how they become a ``TrainConfig``:
one place for both commands, which import it (neither imports the other)."""

from __future__ import annotations

import argparse
import os
from typing import Any, Sequence

from .config import (AMP_MODES, BARE_WARM_UP, DATA_DEVICES, MAX_FILE_WORKERS, OPTIMIZER_LR, OPTIMIZERS, TrainConfig,
                     parse_value, refuse_binary_flags)
from .datasets import dataset_names, get_spec
from .errors import UsageError, stderr_is_terminal
from .estimators import estimator_flags, list_estimators
from .indicators import MODES as INDICATOR_MODES
from .layers import SCALINGS
from .optim import DEFAULT_GAMMA, DEFAULT_THRESHOLD
from .plugins import add_plugin_flag, saved_form
from .wording import series

# Train flags that map one-to-one onto TrainConfig fields.
CONFIG_FLAGS = ("dataset", "model", "data_path", "download", "estimator", "a32", "scaling", "augment", "epochs",
                "batch_size", "accumulate", "eval_batch_size", "optimizer", "lr", "weight_decay", "momentum",
                "bop_gamma", "bop_threshold", "warm_up",
                "indicators", "seed", "workers", "device", "data_device", "amp", "channels_last", "compile",
                "cuda_graphs", "sync_bn", "threads", "save_every", "tensorboard", "keep_top")


def _in_memory() -> list[str]:
    """The data sets held in memory, which --data-device places: their specs' ``fits_in_memory``."""
    return [name for name in dataset_names() if get_spec(name).fits_in_memory]


def add_train_flags(p: argparse.ArgumentParser, sweep: bool = False) -> None:
    """The flags of ``reste train``; ``sweep``: as ``reste sweep`` takes them (its --out is the sweep's folder,
    and it has no --resume or --force: running a sweep again continues it)."""
    g = p.add_argument_group("what to train")
    g.add_argument("--preset", metavar="NAME",
                   help="a row of the paper's tables (see `reste presets`); other flags override it")
    g.add_argument("--dataset", help=f"{', '.join(dataset_names())} (default {TrainConfig.dataset})")
    g.add_argument("--data-path", "--data_path", dest="data_path",
                   help="data set folder (default ./data; without it Fashion-MNIST looks in "
                        "/usr/share/datasets/fashion-mnist first, then ./data; ImageNet needs it)")
    g.add_argument("--download", action="store_true", default=None, help="download the data set (torchvision)")
    g.add_argument("--model", "-m", help="model name (see `reste summary --list`); default depends on the data set")
    g.add_argument("--estimator", help=f"{', '.join(list_estimators())} (default {TrainConfig.estimator}; "
                   "any case, with or "
                   "without - and _, and larq's ste_sign and swish_sign)")
    add_plugin_flag(g)
    g.add_argument("--a32", action="store_true", default=None, help="1W/32A: keep real activations")
    g.add_argument("--scaling", metavar=_choices(SCALINGS),
                   help=f"weight scaling: {_default_first(SCALINGS, TrainConfig.scaling)}")
    g.add_argument("--model-option", dest="model_options", action="append", metavar="KEY=VALUE",
                   help="an option of the model itself, e.g. width=16 for fmnist_vgg_1w1a (repeatable); VALUE is "
                        "read as an integer, a float, true/false, else the text")
    e = p.add_argument_group("estimator hyper-parameters (each applies to the estimators named)")
    o = p.add_argument_group("recipe (defaults depend on the data set: `reste train --dataset NAME --print-config` "
                             "shows every value)")
    o.add_argument("--epochs", type=int, help="number of training epochs")
    o.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                   help="random crop and flip of the train images (default: the data set's recipe; "
                        "digits has none)")
    o.add_argument("--batch-size", "--batch_size", "-b", dest="batch_size", type=int,
                   help="training batch size (per process under torchrun)")
    o.add_argument("--eval-batch-size", "--batch_size_test", dest="eval_batch_size", type=int,
                   help="batch size of the test-split evaluation")
    o.add_argument("--optimizer", metavar=_choices(OPTIMIZERS),
                   help="default: the data set's recipe. bop: Bop flips the binary weights (no latent weights; "
                        "with --estimator ste --scaling none), Adam trains the other parameters")
    o.add_argument("--lr", type=float,
                   help="peak learning rate (cosine decay to 0 after the warm-up); default: the data set's recipe, "
                        f"or for another --optimizer than the recipe's, its usual one ({_usual_lrs()})")
    o.add_argument("--weight-decay", "--weight_decay", dest="weight_decay", type=float,
                   help="weight decay (default: the data set's recipe)")
    o.add_argument("--momentum", type=float, help=f"SGD momentum (default {TrainConfig.momentum:g})")
    o.add_argument("--bop-gamma", dest="bop_gamma", type=float, metavar="X",
                   help=f"--optimizer bop: the rate of the gradient's moving average, in (0, 1], scaled each epoch "
                        f"as the learning rate (default {DEFAULT_GAMMA:g}, larq's, for runs of hundreds of epochs; "
                        "short runs need more)")
    o.add_argument("--bop-threshold", dest="bop_threshold", type=float, metavar="X",
                   help=f"--optimizer bop: a weight flips when the moving average passes this against its sign "
                        f"(default {DEFAULT_THRESHOLD:g})")
    o.add_argument("--warm-up", "--warm_up", dest="warm_up", type=int, nargs="?", const=BARE_WARM_UP,
                   help=f"linear warm-up epochs (bare flag: {BARE_WARM_UP}, as the paper on CIFAR-10)")
    o.add_argument("--indicators", nargs="?", const="general", metavar=_choices(INDICATOR_MODES),
                   help="log the estimating error and gradient stability (off unless given; a bare --indicators "
                        "means general)")
    o.add_argument("--cal_ind", "--cal-ind", dest="indicators", action="store_const", const="paper",
                   help="the authors' flag: --indicators paper")
    o.add_argument("--seed", type=int, help=f"random seed (default {TrainConfig.seed})")
    r = p.add_argument_group("machine")
    r.add_argument("--workers", type=int,
                   help="data loading processes (default: 0; ImageNet: 1 per CPU of this process's share of the "
                        f"node, up to {MAX_FILE_WORKERS})")
    r.add_argument("--device", help="auto (default: CUDA when present), cpu, cuda, cuda:N")
    r.add_argument("--data-device", dest="data_device", metavar=_choices(DATA_DEVICES),
                   help=f"where {series(_in_memory())} live, as uint8, with crop, flip and "
                        "normalisation batched there: auto (default: the training device) or cpu")
    r.add_argument("--threads", type=int, help="torch CPU threads (default: torch's; 1 is best on a busy CPU)")
    r.add_argument("--amp", metavar=_choices(AMP_MODES),
                   help=f"mixed precision: {_default_first(AMP_MODES, TrainConfig.amp)} (on the CPU bf16; fp16 with a "
                        "warning)")
    r.add_argument("--channels-last", dest="channels_last", action="store_true", default=None,
                   help="channels_last memory format for the model and its inputs")
    r.add_argument("--compile", action="store_true", default=None, help="torch.compile the model")
    r.add_argument("--cuda-graphs", dest="cuda_graphs", action=argparse.BooleanOptionalAction, default=None,
                   help="GPU: replay each training step as one CUDA graph, recaptured each epoch, and the "
                        "test evaluation's forward (an epoch's last partial batch runs eagerly; not with "
                        "--compile, --amp fp16 or torchrun)")
    r.add_argument("--accumulate", type=int, metavar="N",
                   help="split each step's --batch-size into N micro-batches of batch/N, their gradients summed "
                        "into one optimizer step (the batch's mean gradient with 1/N of the activation memory; "
                        f"BatchNorm normalises over each micro-batch). Default {TrainConfig.accumulate}; may change "
                        "when a run is resumed; not with --cuda-graphs")
    r.add_argument("--no-sync-bn", dest="sync_bn", action="store_false", default=None,
                   help="with torchrun: keep per-process BatchNorm statistics")
    g2 = p.add_argument_group("run directory")
    if sweep:
        g2.add_argument("--out", metavar="DIR",
                        help="the sweep's folder (required): its tables, figures and, by default, its runs")
    else:
        g2.add_argument("--out", metavar="RUN_DIR", help="run directory (default runs/MODEL-ESTIMATOR-TIME)")
        g2.add_argument("--resume", metavar="RUN_DIR",
                        help="continue this run from its last checkpoint (an epoch's end, or inside an epoch "
                             "after SIGTERM, SIGUSR1 or --save-every)")
        g2.add_argument("--auto-resume", dest="auto_resume", action="store_true",
                        help="with --out: continue the run in that folder when it holds one (as --resume does, "
                             "with the same flags), else start it: one command for the first start and every "
                             "restart (a SLURM --requeue job script)")
        g2.add_argument("--force", action="store_true",
                        help="with --resume or --auto-resume: accept settings that differ")
        g2.add_argument("--print-config", dest="print_config", action="store_true",
                        help="print every setting the run would train with (a preset's and the flags', each "
                             "estimator hyper-parameter written out) as config.json will hold them, and exit; "
                             "what the run's start would refuse is refused")
    g2.add_argument("--save-every", dest="save_every", type=float, metavar="MINUTES",
                    help="also checkpoint inside epochs, every MINUTES (SIGTERM and SIGUSR1 always do)")
    g2.add_argument("--keep-top", dest="keep_top", type=int, metavar="K",
                    help="also keep the checkpoints of the K best epochs by test top-1, as "
                         f"RUN_DIR/top/epoch0007-acc91.23.pt (default {TrainConfig.keep_top}: only last.pt and "
                         "best.pt)")
    g2.add_argument("--tensorboard", nargs="?", const="", type=tensorboard_dir, metavar="DIR",
                    help="log metrics, per-layer schedules and indicators, and the config to TensorBoard "
                         "(pip install 'reste[tensorboard]'): in RUN_DIR/tensorboard"
                         + (" (each run its own; a sweep takes no DIR)" if sweep else ", or in DIR"))
    g2.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    add_estimator_flags(p, e)  # last: a flag of reste train's own is taken, whatever an estimator declares


def _default_first(names: Sequence[str], default: str) -> str:
    """``layer (default), channel or none``: ``names`` in words, the default marked."""
    return series([f"{n} (default)" if n == default else n for n in names], "or")


def _usual_lrs() -> str:
    """``sgd 0.1, adam, adamw and bop's Adam 0.001``: each optimizer's learning rate where the recipe names another
    (``config.OPTIMIZER_LR``), optimizers of one rate together (Bop's is its Adam's, for the other parameters)."""
    rates: dict[float, list[str]] = {}
    for name, lr in OPTIMIZER_LR.items():
        rates.setdefault(lr, []).append("bop's Adam" if name == "bop" else name)
    return ", ".join(f"{series(names)} {lr:g}" for lr, names in rates.items())


def _choices(names: Sequence[str]) -> str:
    """The metavar of a flag that takes one of ``names``: ``{none,bf16,fp16}`` in --help. (Not argparse's
    ``choices``: reste's own check names the flag and the valid values in its one line.)"""
    return "{" + ",".join(names) + "}"


def tensorboard_dir(text: str) -> str:
    """``--tensorboard DIR``: DIR from the current folder; the bare flag (``""``): ``tensorboard``, which
    TrainConfig takes inside the run directory."""
    from .rundir import TENSORBOARD_DIR

    return os.path.abspath(os.path.expanduser(text)) if text else TENSORBOARD_DIR  # (=~/tb: the home's, as --out)


def add_estimator_flags(p: argparse.ArgumentParser, e: Any) -> None:
    """One flag per hyper-parameter of the registered estimators, made from their tables (``Param``), in
    argument group ``e`` of ``p``."""
    taken = {a.dest for a in p._actions}
    for dest, takers in estimator_flags().items():
        first = takers[0][1]
        names = "/".join(name for name, _ in takers)
        defaults = " / ".join(dict.fromkeys(q.default_text() for _, q in takers))
        def allowed(q: Any) -> str:
            return " or ".join(", ".join(q.choices).rsplit(", ", 1)) if q.choices else q.range_text()

        # each taker's valid values and meaning where they differ (review rev14 #7: RBNN's t; review extend #2: a
        # plugin's schedule of its own beside ReSTE's choices, its o_end meaning something else)
        valid = allowed(first)
        if len(dict.fromkeys(allowed(q) for _, q in takers)) > 1:
            valid = "; ".join(f"{name}: {allowed(q)}" for name, q in takers)
        meanings: dict[str, list[str]] = {}  # each meaning with the takers that give it
        for name, q in takers:
            meanings.setdefault(q.help or q.name, []).append(name)
        meaning = "; ".join(f"{'/'.join(who)}: {text}" for text, who in meanings.items())
        options = [first.option] + (["--" + dest] if "_" in dest else [])  # the authors' spelling: --o_end
        try:
            if dest in taken:
                raise argparse.ArgumentError(None, "")
            e.add_argument(*options, dest=dest, type=None if first.type is str else first.type,
                           metavar={float: "X", int: "N", str: "NAME"}[first.type],
                           # (argparse %-formats a help text: a plugin's "in % (0-100)" broke --help, review
                           # extend1 #6)
                           help=f"{meaning} ({valid + '; ' if valid else ''}default {defaults})".replace("%", "%%"))
        except argparse.ArgumentError:
            raise UsageError(f"estimator {names!r}: the flag {first.option} of its hyper-parameter {first.name!r} is "
                             f"taken by `{p.prog}`; give it another flag= in its Param") from None


def parse_model_options(items: Sequence[str]) -> dict[str, Any]:
    """``["width=16"]`` -> ``{"width": 16}``."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise UsageError(f"--model-option expects KEY=VALUE, got {item!r}")
        key = key.strip().replace("-", "_")
        if key in out:  # (the last one won without a word: review clifuzz #8; a sweep's --grid refuses an axis twice)
            raise UsageError(f"--model-option {key} is given twice ({out[key]!r} and {item.partition('=')[2].strip()})"
                             "; give it once")
        out[key] = parse_value(value, none=False)
    return out


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """TrainConfig fields given on the command line (flags left out are not included)."""
    from .config import canonical_estimator

    out: dict[str, Any] = {k: getattr(args, k) for k in CONFIG_FLAGS if getattr(args, k, None) is not None}
    if getattr(args, "model_options", None):
        out["model_options"] = parse_model_options(args.model_options)
    if getattr(args, "plugins", None):
        out["plugins"] = [saved_form(spec) for spec in args.plugins]
    flags = estimator_flags()
    given = {dest: getattr(args, dest) for dest in flags if getattr(args, dest, None) is not None}
    if given:
        estimator = canonical_estimator(out.get("estimator") or getattr(args, "_base_estimator", None)
                                        or TrainConfig.estimator)
        options = {}
        for dest, value in given.items():
            takers = dict(flags[dest])
            if estimator not in takers:
                raise UsageError(f"{takers[next(iter(takers))].option} applies to the {'/'.join(takers)} estimator, "
                                 f"not {estimator!r}")
            options[takers[estimator].name] = value
        out["estimator_options"] = options
    return out


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig that `reste train` flags (and --preset) describe."""
    from .config import config_from_preset, get_preset

    model = getattr(args, "model", None) or (get_preset(args.preset).settings.get("model") if args.preset else None)
    named = [takers[0][1].option for dest, takers in estimator_flags().items()
             if getattr(args, dest, None) is not None]  # the estimator flags given, as written
    # before the flags' estimator is checked (review extend #10: a float model's --clip was told to take the STE,
    # which was then refused for the float model)
    refuse_binary_flags(model, (["--estimator"] if getattr(args, "estimator", None) is not None else []) + named
                        + (["--scaling"] if getattr(args, "scaling", None) is not None else []))
    out = overrides_from_args(args)
    if args.preset:
        args._base_estimator = get_preset(args.preset).settings["estimator"]
        return config_from_preset(args.preset, **out)
    return TrainConfig.from_dict(out)


def show_bar(args: argparse.Namespace) -> bool:
    """Whether to draw the progress bar: asked for (not --no-progress) and stderr a terminal (a log file would
    fill with the bar's frames; the epoch lines tell the progress there)."""
    return bool(args.progress) and terminal()


def terminal() -> bool:
    return stderr_is_terminal()  # the library's rule for the bar
