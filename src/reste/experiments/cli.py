"""The experiment sub-commands of ``reste``: ``sweep``, ``report`` and ``plot``. They only parse flags."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

from ..errors import EX_TEMPFAIL, UsageError
from ..estimators import estimator_flags, list_estimators
from ..plugins import add_plugin_flag

SWEEP_EXAMPLE = ("reste sweep --grid estimator=ste,reste,ede --seeds 0,1,2 --out sweeps/est "
                 "--dataset fashion-mnist --epochs 5 --indicators")


def add_commands(sub: Any) -> None:
    from ..flags import add_train_flags

    p = sub.add_parser(
        "sweep", help="train a grid of settings over several seeds; tables and figures of the results",
        usage="%(prog)s --out DIR [--grid KEY=V1,V2,...] [--seeds S1,S2,...] [flags of reste train]",
        description="Train every combination of the --grid axes for every seed (finished runs are skipped, "
                    "partial ones resumed), then write results.md/.csv, runs.csv, epochs.csv and figures into --out. "
                    "The other flags are those of `reste train` and fix the settings that do not vary. "
                    f"Example: {SWEEP_EXAMPLE}",
    )
    s = p.add_argument_group("sweep")
    s.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                   help="a grid axis (repeatable): a TrainConfig field (estimator, lr, epochs, ...), an estimator "
                        "hyper-parameter (o_end, t, beta, ...) or a model option (width)")
    s.add_argument("--seeds", metavar="S1,S2,...", help="seeds, comma-separated (default: --seed, or 0)")
    s.add_argument("--jobs", "-j", type=int,
                   help="runs at a time, in worker processes with cores/jobs threads each (default 1, or one per "
                        "device of --devices)")
    s.add_argument("--devices", metavar="D1,D2,...",
                   help="spread the runs over these devices, one per job in turn: 0,1,2,3 (cuda:0 to cuda:3) or "
                        "device names (cuda:1,cpu); in place of --device")
    s.add_argument("--runs-dir", dest="runs_dir",
                   help="where the runs go (default OUT/runs, or where OUT/sweep.json records them); sweeps "
                        "sharing it share identical runs")
    s.add_argument("--no-report", dest="report", action="store_false", help="skip the tables and figures")
    s.add_argument("--dry-run", dest="dry_run", action="store_true",
                   help="list each run (to train, to resume, to mend, finished) and what each setting changes of a "
                        "--preset's recipe; make no folder and train nothing")
    add_train_flags(p, sweep=True)
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("report", help="re-write the tables and figures of a sweep folder (also mid-sweep)",
                       description="Write a sweep folder's results.md, results.csv, runs.csv, epochs.csv and "
                                   "figures again from its runs (also while the sweep runs).")
    p.add_argument("sweep_dir", metavar="SWEEP_DIR", help="the sweep folder (the --out of reste sweep)")
    p.add_argument("--no-plots", dest="plots", action="store_false", help="write the tables only, no figures")
    add_plugin_flag(p)  # a sweep's own plugins: a sweep.json's are not imported
    p.set_defaults(func=cmd_report)

    p = sub.add_parser(
        "plot", help="`plot estimators`: F and g of every estimator; `plot RUN_DIR...`: training curves (of a "
                     "SWEEP_DIR's runs too)",
        description="reste plot estimators [--out FILE.png|.pdf|.svg] draws the forward-equivalent F and the "
                    "backward g of "
                    "every registered estimator; reste plot RUN_DIR... [--out FILE] draws the training curves "
                    "(accuracy, loss on a log axis, learning rate and schedule, indicators) of runs, "
                    "several runs in one figure with a legend by the settings that differ. A sweep's folder "
                    "stands for its runs (--setting picks some), a folder of runs (runs/r1, runs/r2) for the "
                    "runs inside it, and a folder of sweeps (sweeps/est, sweeps/oend) for the sweeps inside it.",
    )
    p.add_argument("targets", nargs="+", metavar="estimators|RUN_DIR",
                   help="`estimators`, or one or more run directories; a sweep's folder, a folder of runs or a "
                        "folder of sweeps stands for the runs in it")
    p.add_argument("--out", help=".png, .pdf or .svg file (default estimators.png; RUN_DIR/curves.png for one run or "
                                  "FOLDER/curves.png for one sweep, folder of runs or folder of sweeps, else "
                                  "curves.png)")
    p.add_argument("--setting", action="append", default=[], metavar="KEY=V[,V...]",
                   help="of a sweep's runs, draw those whose setting has one of these values (a grid axis, or "
                        "seed; repeatable: all must hold; a key given twice takes both its values), e.g. --setting "
                        "o_end=5,10 --setting seed=0")
    p.add_argument("--at", "--progress", dest="progress", type=float, metavar="FRACTION",
                   help="plot estimators: how far into training the scheduled estimators are drawn, 0..1 (default "
                        "0.5); --progress is its former name (not the progress bar)")
    add_plugin_flag(p)
    p.set_defaults(func=cmd_plot)


def base_config(args: argparse.Namespace) -> Any:
    """The fixed settings of a sweep from the `reste train` flags (and --preset)."""
    from ..flags import config_from_args

    if getattr(args, "resume", None) or getattr(args, "force", False):
        raise UsageError("--resume/--force do not apply to a sweep: run the same sweep again to continue it")
    # --threads is a property of the sweep's worker processes (run_sweep's ``threads``), not of a run
    return dataclasses.replace(config_from_args(args), threads=None)


def cmd_sweep(args: argparse.Namespace) -> int:
    from ..flags import overrides_from_args, show_bar
    from .sweep import parse_grid, parse_seeds, run_sweep

    from ..distributed import env_world_size

    if env_world_size() > 1:  # each process would run the whole sweep, and all but the first are refused its --out
        raise UsageError("reste sweep starts its own worker processes: run it without torchrun (--devices 0,1,... "
                         "spreads its runs over GPUs, --jobs N trains N at a time)")
    if not args.out:
        raise UsageError(f"a sweep needs --out DIR for its runs and tables, e.g. {SWEEP_EXAMPLE}")
    grid = parse_grid(args.grid)
    if args.seeds is not None and args.seed is not None:
        raise UsageError("--seed and --seeds both given; a sweep trains the seeds of --seeds only")
    # estimator flags apply to the estimators they belong to (--o-schedule: ReSTE's schedule, not DSQ's),
    # whichever estimators the grid trains: passed to the sweep by flag name, not as the base's keywords
    flags = {dest: getattr(args, dest) for dest in estimator_flags() if getattr(args, dest, None) is not None}
    args = argparse.Namespace(**{**vars(args), **dict.fromkeys(flags)})
    fixed = overrides_from_args(args)
    fixed = {*fixed, *fixed.get("estimator_options", {}), *fixed.get("model_options", {}), *flags}
    clash = [key for key in grid if _bare(key) in fixed or _same_option(_bare(key), flags)]
    if clash:
        raise UsageError(f"{clash[0]!r} is both a grid axis and a fixed flag; give its values in --grid only")
    devices = args.devices.split(",") if args.devices is not None else None
    if devices and args.device is not None:
        raise UsageError("--device and --devices both given; --devices gives each job its device")
    if devices is not None and not all(d.strip() for d in devices):
        raise UsageError(f"--devices {args.devices!r}: write the devices separated by commas, e.g. 0,1 or "
                         "cuda:0,cuda:1")
    jobs = args.jobs if args.jobs is not None else len(devices) if devices else 1
    failures: list[tuple[str, int, str]] = []
    try:
        base = base_config(args)
        seeds = parse_seeds(args.seeds) if args.seeds is not None else None
        rows = run_sweep(base, grid, seeds, args.out, jobs=jobs, runs_dir=args.runs_dir, threads=args.threads,
                         report=args.report, log=lambda m: print(m, flush=True), flags=flags,
                         progress=show_bar(args), failures=failures, dry_run=args.dry_run, devices=devices)
    except UsageError as err:
        missing = _sweeps_plugins_not_loaded(args.out) if str(err).startswith("unknown ") else []
        if missing:  # (review user3, suggestion 4: the sweep in --out trained with them; as `reste eval RUN` says)
            raise UsageError(f"{err} (the sweep in {args.out} trained with --plugin {' '.join(missing)}: pass the "
                             "same --plugin)") from None
        if not str(err).startswith("unknown grid axis") or args.plugins:
            raise
        raise UsageError(f"{err}; the axes of a plugin's estimator or model exist once --plugin MODULE loads it "
                         "(see `reste sweep --help`)") from None
    if args.dry_run:
        return 0
    if failures and all(status == "busy" for _, _, status in failures):
        return EX_TEMPFAIL  # only runs another job holds: a requeue may try again later, as `reste train`'s 75
    return 1 if failures or any(r["n"] < r["n_runs"] for r in rows) else 0


def _sweeps_plugins_not_loaded(out: str) -> list[str]:
    """The plugins the sweep in ``out`` recorded (its base's and its settings') that this process has not loaded."""
    from ..plugins import not_loaded
    from .report import load_manifest

    try:
        manifest = load_manifest(Path(out))
        recorded = [*(manifest["base"].get("plugins") or []),
                    *(p for s in manifest["settings"] for p in (s.get("config") or {}).get("plugins") or [])]
    except (UsageError, KeyError, TypeError, AttributeError):  # none, or a damaged one: said where it is read
        return []
    return list(dict.fromkeys(not_loaded(recorded)))


def _bare(axis: str) -> str:
    """A grid axis without its ``estimator_options.``/``model_options.`` prefix (the name a flag would set)."""
    axis = axis.strip().replace("-", "_")
    prefix, dot, rest = axis.partition(".")
    return rest if dot and prefix in ("estimator_options", "model_options") else axis


def _same_option(axis: str, flags: dict[str, Any]) -> bool:
    """Whether grid ``axis``, an estimator keyword or flag name, sets an option that one of ``flags`` sets too."""
    from .sweep import flag_takers

    axis = axis.strip().replace("-", "_")
    sets = set(flag_takers(axis).items()) or {(e, axis) for e in list_estimators()}
    return any(sets & set(flag_takers(dest).items()) for dest in flags)


def cmd_report(args: argparse.Namespace) -> int:
    from ..errors import shell_word
    from .report import RESULTS_MD, summarize

    rows = summarize(args.sweep_dir, plots=args.plots, log=print)
    print(open(f"{args.sweep_dir}/{RESULTS_MD}", encoding="utf-8").read(), end="")
    # 1 where no run could be reported (a row per setting is written all the same: review experiments, suggestion),
    # with a line that says so (review ux1 #5)
    if any(r.get("n") for r in rows):
        return 0
    runs = sum(int(r.get("n_runs") or 0) for r in rows)
    print(f"reste: no run of {args.sweep_dir} could be reported ({runs} planned: none finished yet, or each failed "
          f"or diverged); `reste show {shell_word(str(args.sweep_dir))}` says where each stands", file=sys.stderr)
    return 1


def cmd_plot(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..errors import print_line
    from .plots import plot_estimators
    from ..rundir import holds_run
    from .report import is_sweep_folder, plot_runs_or_sweeps

    if args.targets[0] == "estimators":  # the word, always: a folder of that name is ./estimators (review newuser #3)
        here = Path("estimators")  # a run or a sweep of that name here: said, with how to draw it (review diff11 #4)
        folder = "sweep" if is_sweep_folder(here) else "run" if holds_run(here) else None
        hint = f"; the {folder} in the folder estimators here is drawn by `reste plot ./estimators`" if folder else ""
        if len(args.targets) > 1 or args.setting:
            raise UsageError("`reste plot estimators` takes no run directories nor --setting; plot runs with "
                             f"`reste plot RUN_DIR...`{hint}")
        given = {"out": args.out, "progress": args.progress}  # the others: plot_estimators' own defaults (arch3 #4)
        path = plot_estimators(**{k: v for k, v in given.items() if v is not None})
        if folder:
            print_line(f"note: `reste plot estimators` draws the estimators' F and g{hint}")
    else:
        if args.progress is not None:
            raise UsageError("--at is for `reste plot estimators` (where in training the schedules are drawn); "
                             "a run's curves show every epoch")
        path = plot_runs_or_sweeps(args.targets, args.out, args.setting, log=print_line)
    print(f"wrote {path}")
    return 0
