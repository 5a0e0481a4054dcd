"""Learning curves of a sweep and whether each setting has converged.

    python docs/results/curves.py SWEEP_DIR [--out FIGURE.png] [--tolerance 0.3]

For each setting, the test top-1 of every epoch, averaged over the seeds whose run
finished. A setting counts as converged (flat) when, over the last fifth of its
epochs, that mean gains less than ``--tolerance`` points: mean[E] - mean[E - ceil(E/5)].
Beside that verdict, the same gain read from a least-squares line through those epochs
(``trend``; less noisy than two single epochs), and the standard error of that gain over the seeds (the spread
of each run's own gain over the same epochs, divided by sqrt(n)): how far the verdict can be trusted when the
gain lies near the tolerance. Prints one line per setting and draws one panel of curves (default
SWEEP_DIR/learning_curves.png).
"""

from __future__ import annotations

import argparse
import csv
import math
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from reste.runfiles import METRICS  # (the name of a run's metrics file; imports nothing, no torch)

# reste.rundir (and so torch, seconds to import) only where a run's folder is here to read: a committed
# study reads its epochs.csv alone


def read_runs(sweep: Path) -> tuple[dict[str, list[list[float]]], dict[str, int]]:
    """(setting -> test top-1 per epoch of each finished run, setting -> runs that runs.csv lists). A run's
    epochs come from its folder if it is here, else from the sweep's epochs.csv (written by sweeps since
    2026-12-01): the run folders are not committed, so on a fresh clone an older sweep has no curves."""
    saved: dict[tuple[str, str], list[float]] = defaultdict(list)
    if (sweep / "epochs.csv").is_file():
        with open(sweep / "epochs.csv", newline="") as f:
            for row in csv.DictReader(f):
                saved[row["setting"], row["seed"]].append(float(row["test_acc"]))
    per_setting: dict[str, list[list[float]]] = defaultdict(list)
    listed: dict[str, int] = defaultdict(int)
    with open(sweep / "runs.csv", newline="") as f:
        for row in csv.DictReader(f):
            listed[row["setting"]] += 1
            run_dir = (sweep / row["run_dir"]).resolve()
            if (run_dir / METRICS).is_file():
                from reste.rundir import read_metrics
                per_setting[row["setting"]].append([m["test_acc"] for m in read_metrics(run_dir)])
            elif saved.get((row["setting"], row["seed"])):
                per_setting[row["setting"]].append(saved[row["setting"], row["seed"]])
    return per_setting, listed


def mean_curves(per_setting: dict[str, list[list[float]]]) -> dict[str, list[float]]:
    """setting -> mean test top-1 per epoch over its runs; refuses a setting whose runs have other numbers of
    epochs (runs of sweeps of other --epochs joined into one folder): their mean would be cut to the shortest."""
    out = {}
    for setting, runs in per_setting.items():
        epochs = min(len(r) for r in runs)
        if any(len(r) != epochs for r in runs):
            counts = " and ".join(map(str, sorted({len(r) for r in runs})))
            raise SystemExit(f"curves.py: the runs of {setting} have {counts} epochs: they do not compare; give a "
                             "folder whose runs trained alike")
        out[setting] = [statistics.fmean(r[e] for r in runs) for e in range(epochs)]
    return out


def trend(mean: list[float], back: int) -> float:
    """The gain over the last ``back`` epochs read from a least-squares line through those epochs and the
    one before them (slope x back): the test above compares two single epochs, each as noisy as the
    epoch-to-epoch wobble of the test accuracy; this uses all of them. Reported beside it, not instead."""
    if len(mean) <= back:
        return math.nan
    ys = mean[-1 - back:]
    return statistics.linear_regression(range(len(ys)), ys).slope * back


def gain_se(runs: list[list[float]], epochs: int, back: int) -> float:
    """Standard error over the runs of the gain over the last ``back`` of their first ``epochs`` epochs (the
    mean over runs of those gains is the gain of the mean curve); nan with fewer than two runs."""
    if len(runs) < 2 or epochs <= back:
        return math.nan
    gains = [r[epochs - 1] - r[epochs - 1 - back] for r in runs]
    return statistics.stdev(gains) / math.sqrt(len(gains))


def previous_section(summary: Path, sweep: str) -> list[str]:
    """The lines of ``== SWEEP: convergence`` in a summary written before (up to the next ``==`` line); [] where
    it has none."""
    if not summary.is_file():
        return []
    lines = summary.read_text(encoding="utf-8").splitlines()
    head = f"== {sweep}: convergence"
    if head not in lines:
        return []
    section = lines[lines.index(head) + 1:]
    end = next((i for i, line in enumerate(section) if line.startswith("== ")), len(section))
    return section[:end]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sweep", type=Path)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--tolerance", type=float, default=0.3)
    ap.add_argument("--previous", type=Path,
                    help="a summary written before: where the curves cannot be redrawn, its convergence lines of "
                         "this sweep are printed again (summarize.sh passes the summary it rewrites)")
    args = ap.parse_args()
    per_setting, listed = read_runs(args.sweep)
    data = mean_curves(per_setting)
    out = args.out or args.sweep / "learning_curves.png"
    if not data:  # the run folders are gone (a fresh clone): keep the committed figure and numbers, not blank them
        kept = previous_section(args.previous, args.sweep.name) if args.previous else []
        if kept:
            print("\n".join(kept))
            print(f"{args.sweep}: its learning curves cannot be redrawn here (none of its run folders, no "
                  f"epochs.csv): its convergence lines are kept from the summary before", file=sys.stderr)
            return
        print(f"{args.sweep}: none of the run folders its runs.csv names is here and it has no epochs.csv, so "
              f"its learning curves cannot be redrawn; {out} is left as it is")
        return
    for setting, mean in data.items():
        e = len(mean)
        back = max(1, math.ceil(e / 5))
        gain = mean[-1] - mean[-1 - back] if e > back else math.nan
        verdict = "flat" if gain < args.tolerance else "STILL RISING"
        n = len(per_setting[setting])
        part = f"  (mean of {n} of its {listed[setting]} runs: the others' epochs are not here)" \
            if n < listed[setting] else ""
        se = gain_se(per_setting[setting], e, back)
        spread = f"; se {se:.2f} over {n} seeds" if not math.isnan(se) else ""
        print(f"{setting:28s} {e:3d} epochs  final {mean[-1]:6.2f}  gain over the last {back} epochs "
              f"{gain:+.2f}  {verdict}  (trend {trend(mean, back):+.2f}{spread}){part}")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # left: every epoch; right: the second half, zoomed, with the last fifth (the convergence test) shaded
    fig, (ax, zoom) = plt.subplots(1, 2, figsize=(12, 4.5))
    epochs = max((len(m) for m in data.values()), default=1)
    start = max(1, epochs // 2)
    tail = [v for m in data.values() for v in m[start - 1:]]
    for setting, mean in data.items():
        ax.plot(range(1, len(mean) + 1), mean, label=setting)
        zoom.plot(range(start, len(mean) + 1), mean[start - 1:], marker=".", label=setting)
    back = max(1, math.ceil(epochs / 5))
    zoom.axvspan(epochs - back, epochs, color="0.9", zorder=0, label=f"last fifth ({back} epochs)")
    if tail:
        lo, hi = min(tail), max(tail)
        zoom.set_ylim(lo - 0.5, hi + 0.5)
    for a in (ax, zoom):
        a.set_xlabel("epoch")
        a.grid(alpha=0.3)
    ax.set_ylabel("test top-1 (%), mean over seeds")
    zoom.set_title(f"epochs {start}-{epochs}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
