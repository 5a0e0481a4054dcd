#!/usr/bin/env bash
# The Fashion-MNIST default recipe, measured: `reste train --dataset fashion-mnist` with nothing
# else but the seed (and --threads when given), for seeds 0, 1 and 2, one after the other, then
# each run's best and final test top-1, its time (metrics.jsonl: the sum of the epochs' times, training
# and test evaluation; and the whole command's wall time for runs this script started) and the means.
#   docs/results/fmnist_default.sh                  # torch's default threads (all cores)
#   THREADS=1 SEEDS=0,1 docs/results/fmnist_default.sh
# Finished runs are kept in runs/fmnist-default/ (git-ignored) and not retrained.
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${RUNS:-runs/fmnist-default}
SEEDS=${SEEDS:-0,1,2}
EXTRA=()
if [ -n "${THREADS:-}" ]; then EXTRA=(--threads "$THREADS"); fi
for seed in ${SEEDS//,/ }; do
  out="$RUNS/seed$seed"
  if [ -f "$out/metrics.jsonl" ] && [ "$(wc -l < "$out/metrics.jsonl")" -ge 1 ] && [ -f "$out/last.pt" ]; then
    reste train --resume "$out" --no-progress "${EXTRA[@]}"       # continues or says it is finished
  else
    start=$SECONDS
    reste train --dataset fashion-mnist --seed "$seed" --out "$out" --no-progress "${EXTRA[@]}"
    echo $((SECONDS - start)) > "$RUNS/seed$seed.wall_seconds"   # the whole command, start-up included
  fi
done
python - "$RUNS" "$SEEDS" <<'PY'
import statistics
import sys
from pathlib import Path

from reste.rundir import read_metrics

runs, seeds = Path(sys.argv[1]), sys.argv[2].split(",")
best, final, minutes = [], [], []
for seed in seeds:
    rows = read_metrics(runs / f"seed{seed}")
    best.append(max(r["test_acc"] for r in rows))
    final.append(rows[-1]["test_acc"])
    minutes.append(sum(r["time"] for r in rows) / 60)
    wall = runs / f"seed{seed}.wall_seconds"
    whole = f" ({int(wall.read_text()) / 60:.1f} min for the whole command)" if wall.is_file() else ""
    print(f"seed {seed}: best {best[-1]:.2f} %, final {final[-1]:.2f} %, {len(rows)} epochs in "
          f"{minutes[-1]:.1f} min{whole}")
sd = statistics.stdev if len(seeds) > 1 else (lambda _v: 0.0)
print(f"mean over {len(seeds)} seeds: best {statistics.fmean(best):.2f} +- {sd(best):.2f} %, "
      f"final {statistics.fmean(final):.2f} +- {sd(final):.2f} %, {statistics.fmean(minutes):.1f} min per run")
PY
