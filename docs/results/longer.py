"""What a longer budget changed: per setting, the paired per-seed gain of one sweep over another.

    python docs/results/longer.py SHORT_SWEEP LONG_SWEEP [METRIC]

Both sweeps are the same settings and seeds trained for different numbers of epochs (for example
docs/results/epochs64/leaders and docs/results/epochs128/leaders). For each setting, over the seeds
both finished: LONG - SHORT per seed, its mean with a 95% confidence interval (paired.py's Student
t), and in how many seeds the longer run ended higher. A network that has converged gains nothing
from twice the epochs; an interval above zero says it had not.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_spec = importlib.util.spec_from_file_location("paired", Path(__file__).with_name("paired.py"))
paired_module = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(paired_module)


def main(argv: list[str]) -> None:
    if len(argv) < 3:
        sys.exit(__doc__.strip().splitlines()[2].strip())
    short, long = argv[1], argv[2]
    metric = argv[3] if len(argv) > 3 else "final_acc"
    a, b = paired_module.read_metric(short, metric), paired_module.read_metric(long, metric)
    print(f"{metric}: {long} minus {short}, per seed; 95% CI of the mean gain (t, n - 1 dof)")
    # every setting of either sweep, those none of whose runs finished too (they have no row in runs.csv)
    for setting in dict.fromkeys([*paired_module.counts(long), *b, *paired_module.counts(short), *a]):
        seeds = sorted(set(a.get(setting, {})) & set(b.get(setting, {})), key=int)
        if not seeds:
            print(f"  {setting:24s} no seed finished in both")
            continue
        r = paired_module.paired([b[setting][s] for s in seeds], [a[setting][s] for s in seeds])
        print(f"  {setting:24s} {r['mean']:+7.2f}  {paired_module.interval(r)}  "
              f"(per seed: {', '.join(f'{d:+.2f}' for d in r['diffs'])}; higher in {r['wins']}/{r['n']})")


if __name__ == "__main__":
    main(sys.argv)
