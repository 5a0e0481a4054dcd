"""The ``reste`` command. Thin: it parses flags and calls the library.

    reste train [flags]            train (no flags: a 1W1A net on digits in under a minute)
    reste train --preset NAME      a row of the paper's tables
    reste train --resume RUN_DIR   continue a run from its last finished epoch
    reste presets                  list the presets with the published accuracy
    reste eval CHECKPOINT          top-1/top-5 on the test split
    reste summary MODEL            per-layer precision, parameters, MACs, sizes

Bad input gets one line on stderr and exit status 2 (``--debug`` shows the traceback); a run folder held by
another job, 75 (``EX_TEMPFAIL``); a stop signal, 128 + its number. The README's Command line section has the
table.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import errno
import json
import os
import re
import sys
from pathlib import Path
from typing import Any, Sequence

if __name__ == "__main__":  # python -m reste.cli (torchrun's form) is the reste command: this module imported
    # again as reste.cli, a Ctrl-C while torch imports noted, not raised inside torch (reste._startup)
    from ._startup import run as _start

    def _load() -> Any:
        from reste import cli

        return cli.command

    sys.exit(_start(_load))

from .errors import (EX_TEMPFAIL, NO_ROOM, WRITES_REFUSED, UsageError, command_line, did_you_mean, json_line,
                     machine_cause, one_line, one_line_warnings, shell_word)
from .wording import gist, series
# the flags of reste train live in reste.flags; the names are kept here for code that imported them from reste.cli
from .config import AMP_MODES, MAX_FILE_WORKERS, parse_value  # noqa: F401 - parse_value: for code importing it here
from .flags import (CONFIG_FLAGS, add_train_flags, config_from_args, overrides_from_args,  # noqa: F401
                    parse_model_options, show_bar, terminal)

_add_train_flags, _bar, _terminal = add_train_flags, show_bar, terminal  # their names before reste.flags
_KEPT = (parse_value, CONFIG_FLAGS)  # names kept here for code that imports them from reste.cli
from .plugins import add_plugin_flag, load_plugins, plugins_in_argv


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors, and no abbreviated flags (``--epoch`` is not ``--epochs``: an abbreviation
    would change meaning the day a flag with that prefix is added; an unknown flag gets a suggestion instead)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def cmd_train(args: argparse.Namespace) -> int:
    from . import engine
    from .config import FULL_PRECISION, TrainConfig, binarization_text
    from .rundir import CONFIG, check_out, holds_run, run_config

    log = print
    if args.force and args.resume is None and not args.auto_resume:  # (read as "overwrite", it did nothing)
        raise UsageError("--force goes with --resume or --auto-resume (to accept settings that differ from the "
                         "run's); a new run has none to differ: drop it")
    if args.auto_resume:  # (before --print-config, which refuses what the run would: review clifuzz #6)
        if args.resume is not None:
            raise UsageError("--auto-resume goes with --out (the folder to start or continue), not with --resume")
        if not args.out:
            raise UsageError("--auto-resume needs --out: the folder to start the run in, or to continue it from")
    if args.print_config:
        held = args.resume if args.resume is not None else args.out if args.auto_resume and args.out and \
            holds_run(args.out) else None  # (review combos #6: --auto-resume would continue that run)
        if held is not None:
            raise UsageError(f"--print-config shows the settings of a new run; a run's own are in its "
                             f"{held}/{CONFIG}")
        config = engine.planned_config(config_from_args(args))
        check_out(args.out if args.out is not None else engine.default_run_dir(config))  # (runs/: diff13 #2)
        engine.check_graphs_device(config, here=False)  # (newuser3 #2: --device cpu, as the start refuses it)
        engine.check_model_fits(config)
        print(json.dumps(config.to_dict(), indent=2))
        from .distributed import env_world_size

        for note in engine.recipe_notes(config, env_world_size()):
            print(note, file=sys.stderr)
        if binarization_text(config.to_dict()) == FULL_PRECISION:
            print(f"note: {config.model} is full precision: estimator, estimator_options, a32 and scaling are "
                  "recorded but train nothing", file=sys.stderr)
        return 0
    if args.auto_resume:
        if holds_run(args.out):  # only the flags given are compared with the run's settings, and its preset
            args._base_estimator = run_config(args.out).estimator
            config, overrides = TrainConfig(preset=args.preset), overrides_from_args(args)
        else:
            config, overrides = config_from_args(args), None
        engine.train_or_resume(config, args.out, overrides=overrides, force=args.force, progress=show_bar(args),
                               log=log)
        return 0
    if args.resume is not None:
        if args.preset:
            raise UsageError("--preset cannot be combined with --resume: the run keeps its own settings")
        if args.out:
            raise UsageError("--out cannot be combined with --resume: the run directory is the one resumed")
        args._base_estimator = run_config(args.resume).estimator
        engine.resume(args.resume, overrides_from_args(args), force=args.force, progress=show_bar(args), log=log)
        return 0
    engine.train(config_from_args(args), args.out, progress=show_bar(args), log=log)
    return 0


# the arguments that name a file or folder (of every sub-command)
PATH_ARGS = ("out", "resume", "checkpoint", "run_dir", "runs_dir", "data_path", "tensorboard", "output", "onnx",
             "exported", "images", "labels", "targets", "sweep_dir")


# path arguments an empty value of which (an unset variable) is refused here: Path("") is ".", which they read as
# the current folder or its last.pt (review rev15 #7); the others say it themselves, or take "" as their default
_NOT_EMPTY = {"checkpoint": "CHECKPOINT", "exported": "EXPORTED", "output": "--output", "labels": "--labels",
              "images": "IMAGES", "run_dir": "RUN_DIR", "sweep_dir": "SWEEP_DIR", "runs_dir": "--runs-dir",
              "data_path": "--data-path"}  # (the last four: review fuzz1 #5)


def _expand_home(args: argparse.Namespace) -> None:
    """A leading ``~`` of a path argument is the home folder, as the shell makes it of a bare word: ``--out=~/a``
    and a quoted '~/a' reach reste unexpanded (they made a folder named ``~`` in the current one). An empty one
    is refused where it would be read as the current folder."""
    for name, shown in _NOT_EMPTY.items():
        value = getattr(args, name, None)
        if value == "":
            raise UsageError(f"{shown} is empty (an unset variable?); pass a path")
        if isinstance(value, list) and "" in value:  # (predict's IMAGES: review rev14 #11)
            raise UsageError(f"{shown} holds an empty path (an unset variable?); pass a .npy array, image files or "
                             "folders of them")
    if getattr(args, "preset", None) == "":  # (it was passed by: a default run, review fuzz1 #5)
        raise UsageError("--preset is empty (an unset variable?); pass a preset's name (`reste presets` lists them)")
    for name in PATH_ARGS:
        value = getattr(args, name, None)
        if isinstance(value, str) and value.startswith("~"):
            setattr(args, name, os.path.expanduser(value))
        elif isinstance(value, list):
            setattr(args, name, [os.path.expanduser(v) if isinstance(v, str) and v.startswith("~") else v
                                 for v in value])


def cmd_presets(args: argparse.Namespace) -> int:
    from .config import PRESETS

    rows = [("preset", "model", "estimator", "A", "epochs", "batch", "top-1", "top-5", "what")]
    for p in PRESETS.values():
        s = p.settings
        rows.append((p.name, s["model"], s["estimator"], "32" if s.get("a32") else "1",
                     str(s["epochs"]), str(s["batch_size"]), f"{p.top1:.2f}",
                     f"{p.top5:.2f}" if p.top5 is not None else "-", p.description))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    numeric = {3, 4, 5, 6, 7}  # A, epochs, batch, top-1, top-5: right-aligned, so their digits line up
    for r in rows:
        print("  ".join(c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
              + "  " + r[-1])
    print("\npublished top-1/top-5 (%) of Wu et al., ICCV 2023: the best test accuracy over the epochs (the test set\n"
          "picks the epoch), which reste reports as 'best test acc' (best.pt). Every setting of a preset:\n"
          "`reste train --preset NAME --print-config`; run one with `reste train --preset NAME --data-path DIR`")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    import time

    from .distributed import one_process
    from .engine import evaluate_checkpoint
    from .wording import taken_at

    one_process("reste eval", "evaluate the whole test set")
    start = time.perf_counter()
    r = evaluate_checkpoint(args.checkpoint, data_path=args.data_path, batch_size=args.batch_size,
                            device=args.device, workers=args.workers, amp=args.amp, download=args.download,
                            progress=show_bar(args), log=lambda line: print(line, file=sys.stderr, flush=True),
                            threads=args.threads)
    if args.json:  # one object, for a script: no line to parse
        keys = ("model", "dataset", "epoch", "step", "amp", "images", "top1", "top5", "loss", "stored_top1")
        print(json_line({**{k: r.get(k) for k in keys}, "seconds": round(time.perf_counter() - start, 3)}))
        return 0
    stored = f" (stored at training: {r['stored_top1']:.2f}%)" if r.get("stored_top1") is not None else ""
    amp = f", amp {r['amp']}" if r["amp"] != "none" else ""
    top5 = f"top-5 {r['top5']:.2f}%  " if r.get("top5") is not None else ""  # (none for 5 classes or fewer)
    print(f"{r['model']} on {r['dataset']} test, {taken_at(r['epoch'], r.get('step'))}{amp}: top-1 {r['top1']:.2f}%  "
          f"{top5}loss {r['loss']:.4f}{stored}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from .experiments.status import folder_summary, show_folder

    print(json_line(folder_summary(args.run_dir)) if args.json else show_folder(args.run_dir))
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    from . import models
    from .config import check_model_options

    if args.list and args.model:  # (it listed them all, the model given ignored)
        raise UsageError(f"--list lists every model; drop it to summarise {args.model!r}")
    shaping = [flag for flag, given in (("--num-classes", args.num_classes is not None), ("--a32", args.a32),
                                        ("--input-size", args.input_size is not None),
                                        ("--model-option", bool(args.model_options))) if given]
    if shaping and not args.model:  # (the list was printed, the flags ignored)
        raise UsageError(f"{', '.join(shaping)} shape{'s' * (len(shaping) == 1)} one model: name it (reste summary "
                         f"MODEL ...), or drop {'it' if len(shaping) == 1 else 'them'} to list the models")
    if args.list or not args.model:
        print(f"{'model':28s} {'data set':14s} precision")
        for name in models.list_models():
            info = models.model_info(name)
            print(f"{name:28s} {info['dataset']:14s} {'binary' if info['binary'] else 'float'}")
        return 0
    if args.model not in models.list_models() and os.path.exists(args.model):
        raise UsageError(_summary_of_a_path(args.model))
    info = models.model_info(args.model)
    if args.input_size is not None and args.input_size < 1:
        raise UsageError(f"--input-size must be a positive integer, got {args.input_size}")
    if args.num_classes is not None and args.num_classes < 1:
        raise UsageError(f"--num-classes must be a positive integer, got {args.num_classes}")
    if args.a32 and not info["binary"]:
        raise UsageError(f"--a32 applies to binary models; {args.model!r} is full precision")
    options = parse_model_options(args.model_options or [])
    check_model_options(args.model, options)
    model = models.create(args.model, num_classes=args.num_classes, a32=args.a32, **options)  # one-line errors
    size = tuple(info["input_size"]) if not args.input_size else (info["input_size"][0], args.input_size,
                                                                    args.input_size)
    try:
        text = models.describe(model, size, one_line=False)  # (the model's own error, worded for --input-size)
    except (RuntimeError, MemoryError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if isinstance(err, MemoryError) or "allocate" in first or "out of memory" in first:
            raise UsageError(f"{args.model!r} at {size[1]}x{size[2]} needs more memory than this machine has; "
                             "pass a smaller --input-size") from None
        own = tuple(info["input_size"][1:])
        if size[1:] > own:  # a larger one fails where a layer is fixed to its own size (a Flatten before a Linear)
            raise UsageError(f"{args.model!r} cannot take inputs of size {size[1]}x{size[2]} ({first[:150]}): it "
                             f"takes its own, {own[0]}x{own[1]}; drop --input-size") from None
        raise UsageError(f"{args.model!r} cannot take inputs of size {size[1]}x{size[2]} ({first[:150]}); pass a "
                         "larger --input-size") from None
    expects = "x".join(map(str, info["input_size"]))
    print(f"{args.model} ({info['dataset']}): expects {expects} images (C x H x W)"
          + (f", summarised at {'x'.join(map(str, size))}" if tuple(size) != tuple(info["input_size"]) else ""))
    print(text)
    return 0


def _summary_of_a_path(path: str) -> str:
    """The line for ``reste summary PATH`` (a run folder, a checkpoint, a packed file), which said "unknown model
    'runs/digits'; did you mean 'digits'?", the float model (review install2)."""
    from .runfiles import CONFIG

    kind = "folder" if os.path.isdir(path) else "file"
    said = f"{path} is a {kind}; `reste summary` takes a model's name (the names: `reste summary --list`)"
    config = Path(path) / CONFIG
    try:
        run = json.loads(config.read_text(encoding="utf-8")) if config.is_file() else None
    except (OSError, ValueError):
        run = None
    if isinstance(run, dict) and isinstance(run.get("model"), str):
        words = [run["model"]] + (["--a32"] if run.get("a32") is True else [])
        options = run.get("model_options")
        if isinstance(options, dict):
            words += [f"--model-option {k}={v}" for k, v in options.items()]
        return f"{said}; this run's model: reste summary {' '.join(words)}"
    return said + ("; a checkpoint's sizes: `reste export CHECKPOINT OUT` prints them" if path.endswith(".pt") else "")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = _Parser(prog="reste", description="Train, evaluate and deploy binary neural networks (ReSTE).")
    parser.add_argument("--version", action="version", version=f"reste {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("train", help="train a model (no flags: 1W1A on digits, under a minute on a CPU)",
                       usage="%(prog)s [--preset NAME] [flags]",
                       description="Train a model into a run folder (--out), or continue one (--resume); with no "
                                   "flags, a 1W1A net on digits in under a minute on a CPU. `reste train --preset "
                                   "NAME --print-config` shows every setting a run would use. Exit status: 0 done, "
                                   "1 failed, 2 bad input, 75 the folder is in use, 143/138/130/129 stopped by "
                                   "SIGTERM/SIGUSR1/Ctrl-C/SIGHUP (last.pt holds the step; --resume continues), "
                                   "141 the output's reader went away. The log is for reading; parse the run's "
                                   "metrics.jsonl.")
    add_train_flags(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("presets", help="list the paper's settings with their published accuracy",
                       description="List the presets (the rows of the paper's tables) with their model, estimator, "
                                   "recipe and published top-1/top-5.")
    p.set_defaults(func=cmd_presets)

    p = sub.add_parser("eval", help="top-1/top-5 of a checkpoint on the test split",
                       description="Evaluate a checkpoint (or a run's last.pt) on its data set's test split: top-1, "
                                   "top-5 and loss, beside the accuracy stored at training.")
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="a .pt checkpoint or a run directory (uses its last.pt)")
    p.add_argument("--data-path", "--data_path", dest="data_path",
                   help="data set folder (default: the one the run was trained with)")
    p.add_argument("--download", action="store_true",
                   help="download the data set's files first (torchvision), as `reste train --download`")
    p.add_argument("--batch-size", dest="batch_size", type=int,
                   help="evaluation batch size (default: the run's eval batch size)")
    p.add_argument("--device", default="auto", help="auto (default: CUDA when present), cpu, cuda, cuda:N")
    p.add_argument("--workers", type=int, default=None,
                   help=f"data loading processes for image files (default: 1 per usable CPU, up to {MAX_FILE_WORKERS})")
    p.add_argument("--amp", metavar="{" + ",".join(AMP_MODES) + "}",
                   help="autocast of the evaluation (default: the run's own, to reproduce its logged accuracy)")
    p.add_argument("--threads", type=int,
                   help="torch CPU threads on the CPU (default: the run's own, to reproduce its logged accuracy to "
                        "the bit; 1 is best on a busy CPU)")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bar (it is drawn only when stderr is a terminal anyway)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object (model, dataset, epoch: the epochs finished, step: the batches of the "
                        "next, 0 at an epoch's end; amp, images, top1, top5, loss, stored_top1, seconds) instead of "
                        "the line")
    add_plugin_flag(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("show", help="a run's settings, progress, best and last accuracy and indicators (also "
                                    "while it trains); a sweep's runs",
                       description="Show a run's settings, progress, best and last accuracy and indicators, read "
                                   "from its config.json and metrics.jsonl (also while it trains). Of a sweep's "
                                   "folder: each run's state (finished, training now, stopped, diverged, "
                                   "failed, damaged, changed since, not started), epochs and best top-1 so far.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="the run's folder (its --out), or a sweep's")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object (run_dir, config, epochs_done, finished, state, pid, best, last, "
                        "train_seconds, indicators; of a sweep: sweep_dir, running, counts, settings and their "
                        "runs) instead of the lines")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("summary", help="per-layer precision, parameters, MACs and sizes of a model",
                       description="Print a model's layers with their precision, parameters and MACs, and its "
                                   "size in float32 and bit-packed; --list lists the models.")
    p.add_argument("model", metavar="MODEL", nargs="?", help="a model name (see --list)")
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


def line_buffered() -> None:
    """Each line of stdout and stderr written when printed, also where they are a file (a cluster job's log,
    nohup): Python buffers a file's output in blocks, so a log stays empty while the job runs, a kill -9 loses its
    lines, and a stderr line lands before the stdout lines printed earlier. A character the stream's encoding
    lacks (``±`` on an ASCII terminal, ``PYTHONIOENCODING=ascii``) is written as ``\\xb1``, not a crash after the
    work is done."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, ValueError, OSError):  # no stream, or not a TextIOWrapper
            stream.reconfigure(line_buffering=True, errors=_never_fail())


def _never_fail() -> str:
    """A codec error handler that writes a path's undecodable bytes back as they were (``surrogateescape``, a
    path read in a non-UTF-8 locale) and any other character the encoding lacks as ``\\xb1``."""
    import codecs

    name = "reste.never_fail"
    try:
        codecs.lookup_error(name)
    except LookupError:
        escape, replace = codecs.lookup_error("surrogateescape"), codecs.lookup_error("backslashreplace")

        def handle(err: UnicodeError) -> tuple[str | bytes, int]:
            try:
                return escape(err)
            except UnicodeError:
                return replace(err)

        codecs.register_error(name, handle)
    return name


def main(argv: Sequence[str] | None = None) -> int:
    """The ``reste`` command line; its messages name settings by their flags (``reste.errors.command_line``)."""
    line_buffered()
    with command_line():
        return _main(argv)


def _main(argv: Sequence[str] | None) -> int:
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
        try:
            args, extra = parser.parse_known_args(["--debug", *(a for a in argv if a != "--debug")] if debug else argv)
            if extra and getattr(args, "images", None) is not None:  # predict's IMAGES after a flag (review rev15
                args.images = [*args.images, *(a for a in extra if not a.startswith("-"))]  # #14): argparse gave
                extra = [a for a in extra if a.startswith("-")]  # the list its empty share at EXPORTED
            if extra:
                parser.error(f"unrecognized arguments: {' '.join(extra)}")
        except UsageError as err:
            raise UsageError(_flag_hint(str(err), argv, parser)) from None
        if not getattr(args, "func", None):  # a missing command is bad input: the help on stderr, status 2
            parser.print_help(sys.stderr)
            return 2
        _expand_home(args)
        return args.func(args)
    except UsageError as err:
        if debug:  # the traceback, then the line and the status as without it (review ux1 #4: a script adding
            import traceback  # --debug to its log took a folder in use, 75, or bad input, 2, for a failure)

            traceback.print_exc()
        print(f"{_error_prefix()} {usage_line(err)}", file=sys.stderr)
        return EX_TEMPFAIL if _run_in_use(err) else 2
    except BrokenPipeError:  # the reader of the output went away (`reste ... | head`): stop quietly
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        except OSError:
            pass
        command = _command(argv)
        # training stopped: say how to go on (not after a command that trains nothing: review ux1 #3)
        if command in ("train", "sweep") and "--print-config" not in argv and "--dry-run" not in argv:
            with contextlib.suppress(Exception):
                print("reste: stopped: its output's reader went away; "
                      f"{_run_kept(argv) if command == 'train' else 'run the same command again to continue'}",
                      file=sys.stderr)
        return 141  # 128 + SIGPIPE, as a tool killed by it
    except Exception as err:  # noqa: BLE001 - sorted below
        if not isinstance(err, _engine_error("Preempted")):
            return _unexpected(err, debug, _command(argv), argv)
        from .distributed import env_rank

        if env_rank() == 0:  # under torchrun, one line for all the processes
            with contextlib.suppress(OSError):  # (SIGHUP: its terminal may be gone)
                print(f"reste: {err}", file=sys.stderr)
        return 128 + err.signum
    except _Stopped as err:  # (train and sweep have handlers of their own while they run: see StopRequest)
        _STOPS.clear()  # (said here)
        return _say_stopped(err.signum, argv)
    except KeyboardInterrupt:
        kept = _kept(argv)
        print(f"reste: interrupted; {kept}" if kept else "reste: interrupted", file=sys.stderr)
        return 130
    finally:  # under torchrun a gloo group left alive can abort a process at exit: after a stop or an error too,
        # once its line is said (review mp1 #1: only a command that returned left it)
        if "torch.distributed" in sys.modules:
            from .distributed import leave_process_group

            leave_process_group()


def _torchrun_worker() -> bool:
    """Whether this process is one of several that torchrun started."""
    from .distributed import launched_world

    return launched_world() > 1


def _say_stopped(signum: int, argv: Sequence[str]) -> int:
    """The line of a command a stop signal ended (once, by rank 0 under torchrun); its exit status."""
    from .distributed import env_rank, signal_text

    if env_rank() == 0:
        with contextlib.suppress(OSError):  # (SIGHUP: its terminal may be gone)
            print(f"reste: stopped by {signal_text(signum)}; {_kept(argv) or 'run the same command again'}",
                  file=sys.stderr)
    return 128 + signum


def _kept(argv: Sequence[str]) -> str:
    """What a training command stopped before it ended keeps, and how to go on; "" for the others (and for
    ``--print-config``, which makes no run: review chaos6 #6)."""
    command = _command(argv)
    if "--print-config" in argv:
        return ""
    if command == "sweep":
        return ("the sweep keeps its finished runs and each run its finished epochs: run the same command again to "
                "continue")
    return _run_kept(argv) if command == "train" else ""


usage_line = one_line  # its name here before reste.errors had it

def _run_in_use(err: Exception) -> bool:
    """``err`` is :class:`reste.rundir.RunInUse` (the module is loaded where it was raised)."""
    rundir = sys.modules.get(f"{__package__}.rundir")
    return rundir is not None and isinstance(err, rundir.RunInUse)


def _another_things(a: str, b: str, known: Sequence[str]) -> bool:
    """Whether the unknown flag ``a`` names a setting of another thing than the close flag ``b`` does: its first word
    is that of a flag there is (--lr-scheduler: the lr's, not --o-schedule's o); a misspelt first word (--weigth-decay)
    is no other thing (review diff14 #4, #5)."""
    words, theirs = a.lstrip("-").replace("_", "-").split("-"), b.lstrip("-").replace("_", "-").split("-")
    if len(words) < 2 or "".join(words) == "".join(theirs):  # (--data-set is --dataset)
        return False
    firsts = {k.lstrip("-").replace("_", "-").split("-")[0] for k in known}
    return words[0] in firsts and words[0] != theirs[0]


def _flag_hint(message: str, argv: Sequence[str], parser: argparse.ArgumentParser) -> str:
    """An unknown flag of a sub-command: suggest the command's flag closest to it (``--threds``: did you mean
    --threads?), point to that command's --help, and (for those that take estimator and model flags, when no flag
    is close) say that a plugin's flags exist once --plugin loads it."""
    # (the list ends at its own parenthesis: the " (see `reste ... --help`)" after it is not a choice: newuser5 #1)
    choice = re.search(r"invalid choice: '(.*?)' \(choose from (.*?)\)(?= \(see `|$)", message)
    if choice:  # a sub-command's name (or a value of a flag with choices): the one closest to it first
        hint = did_you_mean(choice.group(1), [c.strip(" '") for c in choice.group(2).split(",")])
        return message.replace(f"{choice.group(1)!r} (choose", f"{choice.group(1)!r}; {hint}(choose", 1) \
            if hint else message
    command = _command(argv)
    if not message.startswith("unrecognized arguments") or not command:
        return message
    text = message.rsplit(" (see `", 1)[0]
    known = _command_flags(parser, command)
    words = text.split(":", 1)[1].split()
    repeat = _one_per_flag(words, argv)
    if repeat:  # `--grid a=1,2 b=3,4`: --grid (and --model-option) takes one KEY=VALUE
        return f"{text} ({repeat}; see `reste {command} --help`)"
    unknown = [a.split("=", 1)[0] for a in words if a.startswith("--")]
    if command == "eval" and any(f.replace("-", "").replace("_", "") == "dataset" for f in unknown):  # (newuser2 #6)
        return (f"{text} (the data set is the checkpoint's; --data-path says where its files are; see `reste eval "
                "--help`)")
    # a flag's dashed spelling, the one the help and the README give (--data-path, not its alias --data_path); not
    # another thing's same setting (--lr-schedule is no --o-schedule: review newuser2 #6)
    dashed = {m: m.replace("_", "-") if m.replace("_", "-") in known else m for m in known}
    close = [dashed[m] for flag in unknown for m in difflib.get_close_matches(flag, known, n=1, cutoff=0.7)
             if not _another_things(flag, m, known)]
    mean = f"did you mean {', '.join(dict.fromkeys(close))}? " if close else ""
    owners = _other_commands_flags(parser, command, unknown)  # (review ux1, suggestion 4; both: diff29, sugg. 1)
    if owners:
        return f"{text} ({mean}{owners}; see `reste {command} --help`)"
    if close:
        return f"{text} ({mean}see `reste {command} --help`)"
    plugin = ("; a plugin's flags (--my-flag) exist only with its --plugin MODULE on the line"
              if command in ("train", "sweep") and not any(a.startswith("--plugin") for a in argv) else "")
    return f"{text} (see `reste {command} --help`{plugin})"


def _one_per_flag(stray: Sequence[str], argv: Sequence[str]) -> str:
    """The hint for a stray ``KEY=VALUE`` given after another one to a flag that takes one at a time (``--grid
    a=1 b=2``: ``one axis per --grid: --grid b=2``), or "" where none of ``stray`` is such a one."""
    takers = {"--grid": "axis", "--model-option": "KEY=VALUE"}
    hints = []
    for word in stray:
        if word.startswith("-") or "=" not in word or word not in argv:
            continue
        i = list(argv).index(word)
        before = argv[i - 1] if i >= 1 else ""
        flag = argv[i - 2] if i >= 2 and not before.startswith("-") else before.split("=", 1)[0]
        if flag in takers and "=" in before:
            hints.append((flag, word))
    if not hints:
        return ""
    flag = hints[0][0]
    return f"one {takers[flag]} per {flag}: " + " ".join(f"{f} {w}" for f, w in hints)


def _other_commands_flags(parser: argparse.ArgumentParser, command: str, unknown: Sequence[str]) -> str:
    """Where each of ``unknown`` (flags ``reste COMMAND`` lacks) is another command's: "--grid and --seeds are
    `reste sweep`'s" (``reste train --grid ...``); "" unless every one of them is."""
    commands = next((list(a.choices) for a in parser._actions if isinstance(a, argparse._SubParsersAction)), [])
    by_commands: dict[tuple[str, ...], list[str]] = {}
    for flag in dict.fromkeys(unknown):
        found = tuple(c for c in commands if c != command and flag in _command_flags(parser, c))
        if not found:
            return ""
        by_commands.setdefault(found, []).append(flag)
    return "; ".join(f"{series(flags)} {'is a flag' if len(flags) == 1 else 'are flags'} of reste {series(others)}"
                     for others, flags in by_commands.items())


def _command_flags(parser: argparse.ArgumentParser, command: str) -> list[str]:
    """The long flags of ``reste COMMAND``'s parser, and of ``reste`` itself (``--debug``), which stand before it."""
    own = [o for a in parser._actions for o in a.option_strings if o.startswith("--")]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and command in action.choices:
            sub = action.choices[command]
            return [o for a in sub._actions for o in a.option_strings if o.startswith("--")] + own
    return own


def _run_kept(argv: Sequence[str]) -> str:
    """What a stopped ``reste train`` keeps, and how to go on, naming its folder where the command line does."""
    folder = next((argv[i + 1] for i, a in enumerate(argv[:-1]) if a in ("--out", "--resume")), None)
    folder = folder or next((a.split("=", 1)[1] for a in argv if a.startswith(("--out=", "--resume="))), None)
    if not folder:
        return ("a run keeps what it saved, its finished epochs at least (continue it with --resume RUN_DIR); a new "
                "run that saved nothing is removed")
    try:
        return _kept_in(folder, argv)
    except (OSError, UsageError):  # (review fuzz1 #3: a folder this user may not search; the error's line must not
        # raise)
        return f"{folder} keeps what the run saved, if anything: once it can be read, continue it with --resume"


def _kept_in(folder: str, argv: Sequence[str]) -> str:
    """:func:`_run_kept` of the run folder ``folder``; ``OSError`` or ``UsageError`` where it cannot be read."""
    from .rundir import holds_run

    if not holds_run(folder):  # a new run that saved nothing: its folder went
        return f"nothing was saved in {folder} (a new run's folder goes with it): run the command again"
    if _extends(argv, folder):  # (a resume that extends the run, stopped before its first step: its config.json still
        # plans the epochs it finished, review chaos6 #7)
        return f"{folder} keeps what the run saved, its finished epochs at least: run the same command again"
    finished = _finished(folder)
    if finished == "whole":  # `reste train ... | head -3`: only the done line met the closed pipe
        return f"the run had finished: {folder} holds it whole"
    if finished:  # (review combos #4) stopped between the last epoch's last.pt and its best.pt or top/ copy
        return (f"the run had finished, but its best.pt or top/ were not yet written: `reste train --resume "
                f"{shell_word(folder)}` writes them")
    from .distributed import launched_world
    from .rundir import resume_command

    # (review imgdist #2) under torchrun, torchrun again with as many processes: `reste train --resume` is one
    return (f"{folder} keeps what the run saved, its finished epochs at least (continue it with "
            f"{resume_command(folder, launched_world())}); a new run that saved nothing is removed")


def _extends(argv: Sequence[str], folder: str) -> bool:
    """Whether the command line continues the run in ``folder`` (--resume, --auto-resume) with more --epochs than its
    config.json plans."""
    if not any(a in ("--resume", "--auto-resume") or a.startswith("--resume=") for a in argv):
        return False
    given = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--epochs"]
    given += [a.split("=", 1)[1] for a in argv if a.startswith("--epochs=")]
    try:
        from .rundir import saved_config

        return bool(given) and int(given[-1]) > saved_config(folder).epochs
    except Exception:  # noqa: BLE001 - no number, no readable settings: not known to extend it
        return False


def _finished(folder: str) -> str:
    """Whether the run in ``folder`` has logged every epoch of its settings and its last.pt holds them all (a
    failed last write leaves metrics.jsonl ahead of it): ``"whole"``, or ``"lagging"`` where its best.pt or top/
    are not yet the last epoch's end's (``rundir.epoch_end_whole``); "" where it has not or that cannot be read."""
    try:
        from .checkpoint import load_checkpoint
        from .rundir import epoch_end_whole, last_checkpoint, read_metrics, saved_config

        epochs = saved_config(folder).epochs
        if len(read_metrics(folder, missing_ok=True)) < epochs:
            return ""
        last = load_checkpoint(last_checkpoint(folder))
        if not isinstance(last.get("epoch"), int) or last["epoch"] < epochs or last.get("step"):
            return ""
        return "whole" if epoch_end_whole(folder, last) else "lagging"
    except Exception:  # noqa: BLE001 - no run, or damaged files: say what a stopped run keeps
        return ""


def _command(argv: Sequence[str]) -> str:
    """The sub-command of a command line (its first word that is not a flag)."""
    return next((a for a in argv if not a.startswith("-")), "")


def _error_prefix() -> str:
    """``reste: error:``; under torchrun each failing process prints its line, the ranks after the first
    named (``reste: error (rank 1):``)."""
    from .distributed import env_rank

    return f"reste: error (rank {env_rank()}):" if env_rank() > 0 else "reste: error:"


def _engine_error(name: str) -> Any:
    """The engine's exception class ``name`` for the error handlers, or ``()`` (which nothing is an instance of)
    where the engine cannot be imported: the error being handled may be that very failure, and it must still
    end in one line, not in a second traceback."""
    try:
        from . import engine
    except Exception:  # noqa: BLE001 - any failure to import
        return ()
    return getattr(engine, name)


def _stdout_fails() -> bool:
    """Whether writing to stdout fails now (an empty write reaches the device: ``/dev/full`` refuses it)."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, ValueError, OSError):  # no stream, or not a file's (io.UnsupportedOperation)
        return False
    try:
        os.write(fd, b"")
    except OSError:
        return True
    return False


_PEER_GONE = re.compile(r"Connection closed by peer|Connection reset by peer|Broken pipe|NCCL communicator was aborted"
                        r"|remote process exited|The other side is gone", re.IGNORECASE)


def _peer_gone(err: Exception) -> bool:
    """Whether ``err`` is a collective failing because another process of a torchrun run ended (an error of its own,
    which that process's line gives)."""
    from .distributed import env_world_size

    try:
        several = env_world_size() > 1
    except Exception:  # noqa: BLE001 - stray launcher variables: said elsewhere
        return False
    return several and isinstance(err, RuntimeError) and bool(_PEER_GONE.search(str(err)))


def _run_file(name: object) -> bool:
    """Whether ``name`` is a file a run writes (its checkpoints, metrics, settings, top/ copies): an error naming one
    is a write of the run folder, not a read of the data set's files."""
    from .rundir import RUN_FILES, TOP_DIR

    if not isinstance(name, (str, os.PathLike)):
        return False
    path = Path(os.fspath(name))
    return path.name in RUN_FILES or path.parent.name == TOP_DIR


def _unexpected(err: Exception, debug: bool, command: str = "", argv: Sequence[str] = ()) -> int:
    """The last line of defence keeps tracebacks behind --debug: with it, the traceback, then the same line and
    status as without it (review diff28 #7: a refused read's 2 became a traceback's 1)."""
    TrainingDiverged = _engine_error("TrainingDiverged")
    if debug:
        import traceback

        traceback.print_exception(err)
    if isinstance(err, OSError) and err.errno in WRITES_REFUSED and _run_file(err.filename) and command in (
            "train", "sweep"):
        # the run folder stopped taking writes (its mode changed, remounted read-only, a failing disk): what the run
        # saved stays (review chaos #1: a temporary file's name, and Python's class, were all the line said)
        remedy = ("the file system has gone read-only: remount it" if err.errno == errno.EROFS else
                  "check the disk (the system log says more)" if err.errno == errno.EIO else
                  "make the folder writable again")
        then = (_run_kept(argv) if command == "train"
                else "finished runs and epochs are kept: run the same command again")
        print(f"{_error_prefix()} {err.strerror} writing {err.filename}; {remedy}; {then}", file=sys.stderr)
        return 1
    if isinstance(err, OSError) and err.errno in NO_ROOM:
        where = f" writing {err.filename}" if err.filename else ""
        room = ("raise the file size limit (`ulimit -f`, the job's) or write elsewhere" if err.errno == errno.EFBIG
                else "free some space")
        if err.filename is None and _stdout_fails():  # `> /dev/full`, or a full disk under the output's file
            where, room = "", "send the output elsewhere"
            err.strerror = f"cannot write the output (stdout): {err.strerror}"
        if command in ("train", "sweep"):
            then = (f"{room}; {_run_kept(argv)}" if command == "train" else "finished runs and epochs are kept: "
                    f"{room} and run the same command again")
        else:
            then = f"{room} and run it again"
        print(f"{_error_prefix()} {err.strerror}{where}; {then}", file=sys.stderr)
        return 1
    if _peer_gone(err):  # gloo's or NCCL's words for another process of the run that ended first
        then = f"; {_run_kept(argv)}" if command == "train" else ""
        print(f"{_error_prefix()} another process of this run stopped first (its own `reste: error` line says why; "
              "one killed by a signal, torchrun's report), so this one cannot go on "
              f"({gist(str(err).splitlines()[0] if str(err) else type(err).__name__)}){then}", file=sys.stderr)
        return 1
    if isinstance(err, PermissionError) and err.filename:  # a folder this user may not search or read (review fuzz1
        # #4: a data set's, a run's, a sweep's); writes a run folder stopped taking are said above
        then = f"; {_run_kept(argv)}" if command == "train" else " and run the command again"
        print(f"{_error_prefix()} cannot read {err.filename} (Permission denied); make it and the folders above it "
              f"readable (their mode, their owner){then}", file=sys.stderr)
        return 1 if command in ("train", "sweep") else 2  # (as any failed read during a run; else refused input)
    cause = machine_cause(err)  # (torch.compile's Inductor on a CPU without g++)
    if cause:
        then = f"; {_run_kept(argv)}" if command == "train" else ""
        print(f"{_error_prefix()} {cause}{then}", file=sys.stderr)
        return 1
    kind = "" if isinstance(err, TrainingDiverged) else f"{type(err).__name__}: "
    print(f"{_error_prefix()} {kind}{err}".splitlines()[0] + ("" if isinstance(err, TrainingDiverged) or debug
          else " (run with --debug for the traceback)"), file=sys.stderr)
    return 1


class _Stopped(BaseException):
    """SIGTERM or SIGHUP in a command with no handler of its own at that moment (``reste report``, ``eval``,
    ``export``; train and sweep before and after their runs): one line and 128 + the signal, where Python's default
    ended the process without a word and left its temporary files (review chaos2, suggestion). A ``BaseException``,
    as ``KeyboardInterrupt``: an ``except Exception`` that goes on (a sweep's tables so far) does not swallow it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


_STOPS: list[int] = []  # the stop signals _raise_stopped raised that no handler of _main has said yet


def _raise_stopped(signum: int, _frame: Any) -> None:
    """Raise :class:`_Stopped`, once: the signal's default action comes back (a second one ends the process at once),
    and it is recorded, for :func:`command` to end with it where Python swallowed the exception (one raised in a
    finalizer or an at-fork callback is only printed: review chaos6 #4)."""
    import signal

    _STOPS.append(signum)
    signal.signal(signum, signal.SIG_DFL)
    raise _Stopped(signum)


_raise_stopped.reste_stop = True  # (a command's own handler, export's, may take its place for a block)
_CHILD_HOOK: list[bool] = []


def _stops_raise() -> None:
    """SIGTERM and SIGHUP raise :class:`_Stopped` in this process, where they take the default action now (an ignored
    one, nohup's SIGHUP, stays ignored); a process forked from it (a DataLoader worker) gets the default back."""
    import signal

    mine = [sig for sig in (getattr(signal, name, None) for name in ("SIGTERM", "SIGHUP"))
            if sig is not None and signal.getsignal(sig) == signal.SIG_DFL]
    for sig in mine:
        signal.signal(sig, _raise_stopped)
    if mine and hasattr(os, "register_at_fork") and not _CHILD_HOOK:
        _CHILD_HOOK.append(True)
        os.register_at_fork(after_in_child=_stops_default)


def _stops_default() -> None:
    """SIGTERM and SIGHUP back to their default action where :func:`_stops_raise` took them."""
    import signal

    for name in ("SIGTERM", "SIGHUP"):
        sig = getattr(signal, name, None)
        if sig is not None and signal.getsignal(sig) is _raise_stopped:
            signal.signal(sig, signal.SIG_DFL)


def command() -> int:
    """The ``reste`` command once imported: warnings as one ``reste: warning:`` line each (not with --debug)."""
    if "--debug" not in sys.argv[1:]:
        one_line_warnings()
    try:
        _stops_raise()
        status = main()
        if _STOPS:  # a stop that Python swallowed where it was raised: the command went on, but it was stopped
            status = _say_stopped(_STOPS[0], sys.argv[1:])
        return status
    except _Stopped as err:  # before main's own handlers, or after them
        return _say_stopped(err.signum, sys.argv[1:])
    finally:  # done (a stopped run saved and said so): a Ctrl-C, SIGTERM or SIGHUP while Python shuts down (atexit
        # callbacks, torch's among them) takes its default action, not a traceback and exit status 0 (chaos6 #2)
        import signal

        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # (an ignored one stays ignored)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
        _stops_default()
        if "torch" in sys.modules and _torchrun_worker():
            # (review mp1 #2) torchrun SIGTERMs the other workers as soon as one has ended: one still on its way out
            # after a stop they agreed on died of it (-15 in torchrun's report, not 143 or 138), while there was
            # nothing left to save. Its SIGTERM alone: the others (a Ctrl-C) still end a process that hangs here
            signal.signal(signal.SIGTERM, signal.SIG_IGN)

