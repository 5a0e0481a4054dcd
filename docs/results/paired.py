"""Paired per-seed differences of a sweep's runs: python docs/results/paired.py SWEEP_DIR REFERENCE [METRIC].

Runs of the same seed share the initial weights and the data order, so the
difference REFERENCE - other, seed by seed, removes much of the seed noise.
Prints, per setting, the mean and sample std of that difference and how many
seeds the reference won.
"""

import csv
import statistics
import sys
from collections import defaultdict

sweep, ref = sys.argv[1], sys.argv[2]
metric = sys.argv[3] if len(sys.argv) > 3 else "best_acc"
runs = defaultdict(dict)
with open(f"{sweep}/runs.csv", newline="") as f:
    for row in csv.DictReader(f):
        runs[row["setting"]][row["seed"]] = float(row[metric])
if ref not in runs:
    sys.exit(f"no setting {ref!r}; settings: {', '.join(runs)}")
print(f"{metric}: {ref} minus each setting, per seed")
for setting, by_seed in runs.items():
    if setting == ref:
        continue
    seeds = sorted(set(by_seed) & set(runs[ref]))
    diffs = [runs[ref][s] - by_seed[s] for s in seeds]
    std = statistics.stdev(diffs) if len(diffs) > 1 else float("nan")
    wins = sum(d > 0 for d in diffs)
    print(f"  vs {setting:24s} {statistics.fmean(diffs):+7.2f} ± {std:5.2f}  "
          f"(per seed: {', '.join(f'{d:+.2f}' for d in diffs)}; {ref} ahead in {wins}/{len(diffs)})")
