"""Paired per-seed differences of a sweep's runs, with 95% confidence intervals.

    python docs/results/paired.py SWEEP_DIR REFERENCE [METRIC]

Runs of the same seed share the initial weights and the data order, so the
difference REFERENCE - other, seed by seed, removes much of the seed noise.
Prints, per setting, the mean and sample std of that difference, the 95%
confidence interval of its mean (Student t with n - 1 degrees of freedom, so it
assumes the per-seed differences are roughly normal), t, and how many seeds the
reference won. Only seeds that both settings finished are paired.
"""

from __future__ import annotations

import argparse
import csv
import math
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from scipy.special import stdtrit  # the t quantile (scipy.stats's t.ppf; its import takes a second)


def paired(values_ref: list[float], values_other: list[float]) -> dict[str, float]:
    """Mean, sample std, 95% CI half-width and t of the differences ref - other."""
    diffs = [a - b for a, b in zip(values_ref, values_other)]
    n = len(diffs)
    if not n:
        raise ValueError("no seed to pair")
    mean = statistics.fmean(diffs)
    std = statistics.stdev(diffs) if n > 1 else math.nan
    if n > 1 and std <= 1e-9 * max(abs(mean), 1e-12):  # equal differences: the std is float noise (accuracies
        std = 0.0                                        # move in steps of one test image), not a spread
    half = stdtrit(n - 1, 0.975) * std / math.sqrt(n) if n > 1 else math.nan
    t = (mean / (std / math.sqrt(n)) if std > 0 else math.copysign(math.inf, mean) if mean else math.nan
         ) if n > 1 else math.nan
    return {"n": n, "mean": mean, "std": std, "lo": mean - half, "hi": mean + half, "t": t,
            "wins": sum(d > 0 for d in diffs), "diffs": diffs}


def interval(r: dict[str, float]) -> str:
    """The 95% CI of a paired() result as text; one seed has none (rather than printing nan)."""
    if r["n"] < 2:
        return f"no 95% CI from {r['n']} seed"
    if r["std"] == 0:
        return "identical differences"
    return f"95% CI [{r['lo']:+.2f}, {r['hi']:+.2f}]"


def read_metric(sweep: str, metric: str) -> dict[str, dict[str, float]]:
    """setting -> seed -> ``metric`` of each run in the sweep's runs.csv that has it; an unknown column is an
    error."""
    path = Path(sweep) / "runs.csv"
    if not path.is_file():
        sys.exit(f"{sweep} has no runs.csv; give the folder of a finished sweep")
    runs: dict[str, dict[str, float]] = defaultdict(dict)
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if metric not in (reader.fieldnames or []):
            sys.exit(f"{path} has no column {metric!r}; give one of {', '.join(reader.fieldnames or [])}")
        for row in reader:
            if row.get(metric) not in (None, ""):
                runs[row["setting"]][row["seed"]] = float(row[metric])
    return runs


def counts(sweep: str) -> dict[str, str]:
    """setting -> how many of its planned runs its results.csv reports, when not all ('2 of 3 runs, 1 diverged'),
    for each setting of results.csv (in its order; '' where every run is reported), also one of which no run
    finished: runs.csv has no row of it, and it must not drop out of the comparison unsaid."""
    path = Path(sweep) / "results.csv"
    out = {}
    if path.is_file():
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                n, n_runs, diverged = (int(row.get(k) or 0) for k in ("n", "n_runs", "n_diverged"))
                out[row["setting"]] = (f"{n} of {n_runs} runs" + (f", {diverged} diverged" if diverged else "")
                                       if n_runs > n else "")
    return out


def main(argv: list[str]) -> None:
    """``argv`` as ``sys.argv`` (the script's name first)."""
    parser = argparse.ArgumentParser(prog="paired.py", description=__doc__.splitlines()[0])
    parser.add_argument("sweep", help="a finished sweep's folder (its runs.csv)")
    parser.add_argument("reference", help="the setting the others are compared with, e.g. estimator=reste")
    parser.add_argument("metric", nargs="?", default="best_acc", help="a column of runs.csv (default best_acc)")
    args = parser.parse_args(argv[1:])
    sweep, ref, metric = args.sweep, args.reference, args.metric
    runs = read_metric(sweep, metric)
    short = counts(sweep)
    if ref not in runs:
        sys.exit(f"no setting {ref!r} with a finished run; settings: {', '.join(dict.fromkeys([*short, *runs]))}")
    print(f"{metric}: {ref} minus each setting, per seed; 95% CI of the mean difference (t, n - 1 dof)")
    if short.get(ref):
        print(f"  note: {ref} has {short[ref]}")
    for setting in dict.fromkeys([*short, *runs]):  # results.csv's settings first: none finished is said too
        by_seed = runs.get(setting, {})
        if setting == ref:
            continue
        seeds = sorted(set(by_seed) & set(runs[ref]), key=int)
        note = f"; {setting} has {short[setting]}" if short.get(setting) else ""
        if not seeds:
            print(f"  vs {setting:24s} no seed that both finished ({ref}: {' '.join(sorted(runs[ref], key=int))}; "
                  f"{setting}: {' '.join(sorted(by_seed, key=int)) or 'none'}){note}")
            continue
        r = paired([runs[ref][s] for s in seeds], [by_seed[s] for s in seeds])
        spread = f" ± {r['std']:5.2f}  {interval(r)}  t {r['t']:.2f}" if r["n"] > 1 else f"  {interval(r)}"
        print(f"  vs {setting:24s} {r['mean']:+7.2f}{spread}  (per seed: {', '.join(f'{d:+.2f}' for d in r['diffs'])}; "
              f"{ref} ahead in {r['wins']}/{r['n']}{note})")


if __name__ == "__main__":
    main(sys.argv)
