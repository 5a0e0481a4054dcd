"""The ``reste`` command. Thin: it parses flags and calls the library.

    reste train [flags]            train (no flags: a 1W1A net on digits in under a minute)
    reste train --preset NAME      a row of the paper's tables
    reste train --resume RUN_DIR   continue a run from its last finished epoch
    reste presets                  list the presets with the published accuracy
    reste eval CHECKPOINT          top-1/top-5 on the test split
    reste summary MODEL            per-layer precision, parameters, MACs, sizes

Bad input gets one line on stderr and exit status 2 (``--debug`` shows the traceback).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import sys
import warnings
from typing import Any, Sequence

from .config import TrainConfig, parse_value
from .datasets import DATASETS
from .errors import UsageError
from .estimators import estimator_flags, list_estimators
from .plugins import add_plugin_flag, load_plugins, plugins_in_argv, saved_form

# Train flags that map one-to-one onto TrainConfig fields.
CONFIG_FLAGS = ("dataset", "model", "data_path", "download", "estimator", "a32", "scaling", "augment", "epochs",
                "batch_size", "eval_batch_size", "optimizer", "lr", "weight_decay", "momentum", "warm_up",
                "indicators", "seed", "workers", "device", "data_device", "amp", "channels_last", "compile",
                "cuda_graphs", "sync_bn", "threads", "save_every", "tensorboard", "keep_top")


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def _add_train_flags(p: argparse.ArgumentParser, sweep: bool = False) -> None:
    """The flags of ``reste train``; ``sweep``: as ``reste sweep`` takes them (its --out is the sweep's folder,
    and it has no --resume or --force: running a sweep again continues it)."""
    g = p.add_argument_group("what to train")
    g.add_argument("--preset", help="a row of the paper's tables (see `reste presets`); other flags override it")
    g.add_argument("--dataset", help=f"{', '.join(DATASETS)} (default {TrainConfig.dataset})")
    g.add_argument("--data-path", "--data_path", dest="data_path", help="data set folder")
    g.add_argument("--download", action="store_true", default=None, help="download the data set (torchvision)")
    g.add_argument("--model", "-m", help="model name (see `reste summary --list`); default depends on the data set")
    g.add_argument("--estimator", help=f"{', '.join(list_estimators())} (default {TrainConfig.estimator}; "
                   "any case, with or "
                   "without - and _, and larq's ste_sign and swish_sign)")
    add_plugin_flag(g)
    g.add_argument("--a32", action="store_true", default=None, help="1W/32A: keep real activations")
    g.add_argument("--scaling", help="weight scaling: layer (default), channel or none")
    g.add_argument("--model-option", dest="model_options", action="append", metavar="KEY=VALUE",
                   help="an option of the model itself, e.g. width=16 for fmnist_vgg_1w1a (repeatable)")
    _add_estimator_flags(p)
    o = p.add_argument_group("recipe (defaults depend on the data set: see README)")
    o.add_argument("--epochs", type=int, help="number of training epochs")
    o.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                   help="random crop and flip of the train images (default: the data set's recipe; "
                        "digits has none)")
    o.add_argument("--batch-size", "--batch_size", "-b", dest="batch_size", type=int,
                   help="training batch size (per process under torchrun)")
    o.add_argument("--eval-batch-size", "--batch_size_test", dest="eval_batch_size", type=int,
                   help="batch size of the test-split evaluation")
    o.add_argument("--optimizer", help="sgd, adam or adamw (default: the data set's recipe)")
    o.add_argument("--lr", type=float, help="peak learning rate (cosine decay to 0 after the warm-up)")
    o.add_argument("--weight-decay", "--weight_decay", dest="weight_decay", type=float,
                   help="weight decay (default: the data set's recipe)")
    o.add_argument("--momentum", type=float, help="SGD momentum (default 0.9)")
    o.add_argument("--warm-up", "--warm_up", dest="warm_up", type=int, nargs="?", const=5,
                   help="linear warm-up epochs (bare flag: 5, as the paper on CIFAR-10)")
    o.add_argument("--indicators", nargs="?", const="general",
                   help="log the estimating error and gradient stability: general (default) or paper")
    o.add_argument("--cal_ind", "--cal-ind", dest="indicators", action="store_const", const="paper",
                   help="the authors' flag: --indicators paper")
    o.add_argument("--seed", type=int, help="random seed (default 0)")
    r = p.add_argument_group("machine")
    r.add_argument("--workers", type=int, help="data loading processes (default: 0; ImageNet up to 8)")
    r.add_argument("--device", help="auto (default: CUDA when present), cpu, cuda, cuda:N")
    r.add_argument("--data-device", dest="data_device",
                   help="where digits, Fashion-MNIST and CIFAR-10 live, as uint8, with crop, flip and "
                        "normalisation batched there: auto (default: the training device) or cpu")
    r.add_argument("--threads", type=int, help="torch CPU threads (default: torch's; 1 is best on a busy CPU)")
    r.add_argument("--amp", help="mixed precision: none (default), bf16 or fp16 (on the CPU bf16; fp16 with a "
                   "warning)")
    r.add_argument("--channels-last", dest="channels_last", action="store_true", default=None,
                   help="channels_last memory format for the model and its inputs")
    r.add_argument("--compile", action="store_true", default=None, help="torch.compile the model")
    r.add_argument("--cuda-graphs", dest="cuda_graphs", action="store_true", default=None,
                   help="GPU: replay each training step as one CUDA graph, recaptured each epoch, and the "
                        "test evaluation's forward (drops the last partial train batch; not with --compile, "
                        "--amp fp16 or torchrun)")
    r.add_argument("--no-sync-bn", dest="sync_bn", action="store_false", default=None,
                   help="with torchrun: keep per-process BatchNorm statistics")
    g2 = p.add_argument_group("run directory")
    if sweep:
        g2.add_argument("--out", help="the sweep's folder (required): its tables, figures and, by default, its runs")
    else:
        g2.add_argument("--out", help="run directory (default runs/MODEL-ESTIMATOR-TIME)")
        g2.add_argument("--resume", metavar="RUN_DIR",
                        help="continue this run from its last checkpoint (an epoch's end, or inside an epoch "
                             "after SIGTERM, SIGUSR1 or --save-every)")
        g2.add_argument("--auto-resume", dest="auto_resume", action="store_true",
                        help="with --out: continue the run in that folder when it holds one (as --resume does, "
                             "with the same flags), else start it: one command for the first start and every "
                             "restart (torchrun --max-restarts, SLURM --requeue)")
        g2.add_argument("--force", action="store_true",
                        help="with --resume or --auto-resume: accept settings that differ")
    g2.add_argument("--save-every", dest="save_every", type=float, metavar="MINUTES",
                    help="also checkpoint inside epochs, every MINUTES (SIGTERM and SIGUSR1 always do)")
    g2.add_argument("--keep-top", dest="keep_top", type=int, metavar="K",
                    help="also keep the checkpoints of the K best epochs by test top-1, as "
                         "RUN_DIR/top/epoch0007-acc91.23.pt (default 0: only last.pt and best.pt)")
    g2.add_argument("--tensorboard", nargs="?", const="", type=_tensorboard_dir, metavar="DIR",
                    help="log metrics, per-layer schedules and indicators, and the config to TensorBoard "
                         "(pip install 'reste[tensorboard]'): in RUN_DIR/tensorboard, or in DIR")
    g2.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")


def _tensorboard_dir(text: str) -> str:
    """``--tensorboard DIR``: DIR from the current folder; the bare flag (``""``): ``tensorboard``, which
    TrainConfig takes inside the run directory."""
    from .rundir import TENSORBOARD_DIR

    return os.path.abspath(text) if text else TENSORBOARD_DIR


def _add_estimator_flags(p: argparse.ArgumentParser) -> None:
    """One flag per hyper-parameter of the registered estimators, made from their tables (``Param``)."""
    e = p.add_argument_group("estimator hyper-parameters (each applies to the estimators named)")
    taken = {a.dest for a in p._actions}
    for dest, takers in estimator_flags().items():
        first = takers[0][1]
        names = "/".join(name for name, _ in takers)
        defaults = " / ".join(dict.fromkeys(q.default_text() for _, q in takers))
        valid = " or ".join(", ".join(first.choices).rsplit(", ", 1)) if first.choices else first.range_text()
        options = [first.option] + (["--" + dest] if "_" in dest else [])  # the authors' spelling: --o_end
        try:
            if dest in taken:
                raise argparse.ArgumentError(None, "")
            e.add_argument(*options, dest=dest, type=None if first.type is str else first.type,
                           metavar={float: "X", int: "N", str: "NAME"}[first.type],
                           help=f"{names}: {first.help or first.name} ({valid + '; ' if valid else ''}"
                                f"default {defaults})")
        except argparse.ArgumentError:
            raise UsageError(f"estimator {names!r}: the flag {first.option} of its hyper-parameter {first.name!r} is "
                             f"taken by `reste train`; give it another flag= in its Param") from None


def parse_model_options(items: Sequence[str]) -> dict[str, Any]:
    """``["width=16"]`` -> ``{"width": 16}``."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise UsageError(f"--model-option expects KEY=VALUE, got {item!r}")
        out[key.strip().replace("-", "_")] = parse_value(value)
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

    if args.preset:
        args._base_estimator = get_preset(args.preset).settings["estimator"]
        return config_from_preset(args.preset, **overrides_from_args(args))
    return TrainConfig.from_dict(overrides_from_args(args))


def _bar(args: argparse.Namespace) -> bool:
    """Whether to draw the progress bar: asked for (not --no-progress) and stderr a terminal (a log file would
    fill with the bar's frames; the epoch lines tell the progress there)."""
    return bool(args.progress) and _terminal()


def _terminal() -> bool:
    stderr = sys.stderr
    return stderr is not None and hasattr(stderr, "isatty") and stderr.isatty()


def cmd_train(args: argparse.Namespace) -> int:
    from . import engine
    from .config import get_preset
    from .rundir import holds_run, run_config

    log = print
    resume = args.resume
    if args.auto_resume:
        if resume is not None:
            raise UsageError("--auto-resume goes with --out (the folder to start or continue), not with --resume")
        if not args.out:
            raise UsageError("--auto-resume needs --out: the folder to start the run in, or to continue it from")
        if holds_run(args.out):
            resume = args.out
    elif resume is not None:
        if args.preset:
            raise UsageError("--preset cannot be combined with --resume: the run keeps its own settings")
        if args.out:
            raise UsageError("--out cannot be combined with --resume: the run directory is the one resumed")
    if resume is not None:
        saved = run_config(resume)
        if args.preset and get_preset(args.preset).name != saved.preset:  # --auto-resume's own command line
            what = f"preset {saved.preset}" if saved.preset else "no preset"
            raise UsageError(f"{resume} holds a run of {what}, not of --preset {args.preset}; pass another --out")
        args._base_estimator = saved.estimator
        engine.resume(resume, overrides_from_args(args), force=args.force, progress=_bar(args), log=log)
        return 0
    config = config_from_args(args)
    engine.train(config, args.out, progress=_bar(args), log=log)
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    from .config import PRESETS

    rows = [("preset", "model", "estimator", "A", "epochs", "batch", "top-1", "top-5", "what")]
    for p in PRESETS.values():
        s = p.settings
        rows.append((p.name, s["model"], s["estimator"], "32" if s.get("a32") else "1",
                     str(s["epochs"]), str(s["batch_size"]), f"{p.top1:.2f}",
                     f"{p.top5:.2f}" if p.top5 is not None else "-", p.description))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1])
    print("\npublished top-1/top-5 (%) of Wu et al., ICCV 2023; "
          "run one with `reste train --preset NAME --data-path DIR`")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .engine import evaluate_checkpoint


    r = evaluate_checkpoint(args.checkpoint, data_path=args.data_path, batch_size=args.batch_size,
                            device=args.device, workers=args.workers, amp=args.amp, download=args.download,
                            progress=_terminal())
    stored = f" (stored at training: {r['stored_top1']:.2f}%)" if r.get("stored_top1") is not None else ""
    amp = f", amp {r['amp']}" if r["amp"] != "none" else ""
    when = f"epoch {r['epoch']}" + (f" + {r['step']} steps" if r.get("step") else "")
    print(f"{r['model']} on {r['dataset']} test, {when}{amp}: top-1 {r['top1']:.2f}%  "
          f"top-5 {r['top5']:.2f}%  loss {r['loss']:.4f}{stored}")
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    from . import models
    from .config import check_model_options

    if args.list or not args.model:
        for name in models.list_models():
            info = models.model_info(name)
            print(f"{name:28s} {info['dataset']:14s} {'binary' if info['binary'] else 'float'}")
        return 0
    info = models.model_info(args.model)
    if args.input_size is not None and args.input_size < 1:
        raise UsageError(f"--input-size must be a positive integer, got {args.input_size}")
    if args.num_classes is not None and args.num_classes < 1:
        raise UsageError(f"--num-classes must be a positive integer, got {args.num_classes}")
    if args.a32 and not info["binary"]:
        raise UsageError(f"--a32 applies to binary models; {args.model!r} is full precision")
    options = parse_model_options(args.model_options or [])
    check_model_options(args.model, options)
    try:
        model = models.create(args.model, num_classes=args.num_classes, a32=args.a32, **options)
    except (ValueError, TypeError) as err:
        raise UsageError(f"bad --model-option for {args.model!r}: {err}") from None
    size = tuple(info["input_size"]) if not args.input_size else (info["input_size"][0], args.input_size,
                                                                    args.input_size)
    try:
        text = models.describe(model, size)
    except (RuntimeError, MemoryError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if isinstance(err, MemoryError) or "allocate" in first or "out of memory" in first:
            raise UsageError(f"{args.model!r} at {size[1]}x{size[2]} needs more memory than this machine has; "
                             "pass a smaller --input-size") from None
        raise UsageError(f"{args.model!r} cannot take inputs of size {size[1]}x{size[2]} ({first[:150]}); pass a "
                         "larger --input-size") from None
    expects = "x".join(map(str, info["input_size"]))
    print(f"{args.model} ({info['dataset']}): expects {expects} images (C x H x W)"
          + (f", summarised at {'x'.join(map(str, size))}" if tuple(size) != tuple(info["input_size"]) else ""))
    print(text)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = _Parser(prog="reste", description="Train, evaluate and deploy binary neural networks (ReSTE).")
    parser.add_argument("--version", action="version", version=f"reste {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("train", help="train a model (no flags: 1W1A on digits, under a minute on a CPU)")
    _add_train_flags(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("presets", help="list the paper's settings with their published accuracy")
    p.set_defaults(func=cmd_presets)

    p = sub.add_parser("eval", help="top-1/top-5 of a checkpoint on the test split")
    p.add_argument("checkpoint", help="a .pt checkpoint or a run directory (uses its last.pt)")
    p.add_argument("--data-path", "--data_path", dest="data_path",
                   help="data set folder (default: the one the run was trained with)")
    p.add_argument("--download", action="store_true",
                   help="download the data set's files first (torchvision), as `reste train --download`")
    p.add_argument("--batch-size", dest="batch_size", type=int,
                   help="evaluation batch size (default: the run's eval batch size)")
    p.add_argument("--device", default="auto", help="auto (default: CUDA when present), cpu, cuda, cuda:N")
    p.add_argument("--workers", type=int, default=0, help="data loading processes (default 0)")
    p.add_argument("--amp", help="autocast of the evaluation: none, bf16 or fp16 (default: the run's own, "
                                 "to reproduce its logged accuracy)")
    add_plugin_flag(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("summary", help="per-layer precision, parameters, MACs and sizes of a model")
    p.add_argument("model", nargs="?", help="a model name (see --list)")
    p.add_argument("--list", action="store_true", help="list the models")
    p.add_argument("--num-classes", dest="num_classes", type=int,
                   help="classes of the output layer (default: the model's data set)")
    p.add_argument("--a32", action="store_true", help="1W/32A: binary weights, real activations")
    p.add_argument("--input-size", dest="input_size", type=int, help="image side (default: the model's)")
    p.add_argument("--model-option", dest="model_options", action="append", metavar="KEY=VALUE",
                   help="an option of the model itself, as for train, e.g. width=16 (repeatable)")
    add_plugin_flag(p)  # a model of your own
    p.set_defaults(func=cmd_summary)

    for module in _feature_modules():
        module.add_commands(sub)
    return parser


def _feature_modules() -> list[Any]:
    """Modules that add sub-commands of their own (``add_commands(subparsers)``)."""
    import importlib

    found = []
    for name in ("reste.export.cli", "reste.experiments"):
        try:
            found.append(importlib.import_module(name))
        except ModuleNotFoundError as err:
            if err.name != name:
                raise
    return found


def one_line_warnings() -> None:
    """Show warnings as ``reste: warning: ...``, one line each and each once (Python's format takes two lines,
    with the source line, and a check repeated by the config and the model printed it twice). For the ``reste``
    command (``reste.__main__.run``); the library and ``main`` leave warnings to Python."""
    shown: set[str] = set()

    def show(message, category, filename, lineno, file=None, line=None):  # noqa: ARG001 - warnings' signature
        text = " ".join(str(message).split())
        stream = sys.stderr if file is None else file
        if text in shown or stream is None:  # as Python's own: no stderr, no warning
            return
        shown.add(text)
        try:
            stream.write(f"reste: warning: {text}\n")
        except OSError:  # a closed stderr: the warning is lost, the run goes on
            pass

    warnings.showwarning = show


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        wanted = plugins_in_argv(argv)
        try:
            load_plugins(wanted)  # first: their estimators' flags are part of the parser
        except UsageError as err:
            if not wanted or any(a.startswith("--plugin") for a in argv):
                raise
            raise UsageError(f"{err} (a plugin the resumed run names in its config.json); if it moved, pass "
                             "--plugin NEW_PATH") from None
        parser = build_parser()
        # --debug anywhere on the line (the sub-commands' parsers do not know it)
        args = parser.parse_args(["--debug", *(a for a in argv if a != "--debug")] if debug else argv)
        if not getattr(args, "func", None):
            parser.print_help()
            return 2
        status = args.func(args)
        from .distributed import leave_process_group

        leave_process_group()  # under torchrun: a gloo group left alive can abort a process at exit
        return status
    except UsageError as err:
        if debug:
            raise
        print(f"{_error_prefix()} {usage_line(err)}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader of the output went away (`reste ... | head`): stop quietly
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        except OSError:
            pass
        command = _command(argv)
        if command in ("train", "sweep"):  # training stopped with its output: say how to go on
            with contextlib.suppress(Exception):
                print("reste: stopped: its output's reader went away; finished epochs are kept (continue with "
                      f"{'--resume RUN_DIR' if command == 'train' else 'the same command'})", file=sys.stderr)
        return 141  # 128 + SIGPIPE, as a tool killed by it
    except Exception as err:  # noqa: BLE001 - sorted below
        from .engine import Preempted

        if not isinstance(err, Preempted):
            return _unexpected(err, debug, _command(argv))
        from .distributed import env_rank

        if env_rank() == 0:  # under torchrun, one line for all the processes
            print(f"reste: {err}", file=sys.stderr)
        return 128 + err.signum
    except KeyboardInterrupt:
        command = _command(argv)
        if command == "sweep":
            print("reste: interrupted; the sweep keeps its finished runs and each run its finished epochs: run the "
                  "same command again to continue", file=sys.stderr)
        elif command == "train":
            print(f"reste: interrupted; {_RUN_KEPT}", file=sys.stderr)
        else:
            print("reste: interrupted", file=sys.stderr)
        return 130


def usage_line(err: UsageError) -> str:
    """The one line of a UsageError; one re-raised by a DataLoader worker carries its traceback."""
    text = str(err).strip()
    if "\n" not in text:
        return text
    last = text.splitlines()[-1].strip()
    return last.split("UsageError: ", 1)[-1] if "UsageError" in last else text.splitlines()[0]


# what a stopped `reste train` keeps, and how to go on
_RUN_KEPT = ("a run keeps its finished epochs (continue it with --resume RUN_DIR), a new run that finished none is "
             "removed")


def _command(argv: Sequence[str]) -> str:
    """The sub-command of a command line (its first word that is not a flag)."""
    return next((a for a in argv if not a.startswith("-")), "")


def _error_prefix() -> str:
    """``reste: error:``; under torchrun each failing process prints its line, the ranks after the first
    named (``reste: error (rank 1):``)."""
    from .distributed import env_rank

    return f"reste: error (rank {env_rank()}):" if env_rank() > 0 else "reste: error:"


def _unexpected(err: Exception, debug: bool, command: str = "") -> int:
    """The last line of defence keeps tracebacks behind --debug."""
    from .engine import TrainingDiverged

    if debug:
        raise  # called inside the except block: the original traceback
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        where = f" writing {err.filename}" if err.filename else ""
        if command in ("train", "sweep"):
            then = (f"free some space; {_RUN_KEPT}" if command == "train" else "finished runs and epochs are kept: "
                    "free some space and run the same command again")
        else:
            then = "free some space and run it again"
        print(f"{_error_prefix()} {err.strerror}{where}; {then}", file=sys.stderr)
        return 1
    kind = "" if isinstance(err, TrainingDiverged) else f"{type(err).__name__}: "
    print(f"{_error_prefix()} {kind}{err}".splitlines()[0] + ("" if isinstance(err, TrainingDiverged)
          else " (run with --debug for the traceback)"), file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
