#!/usr/bin/env bash
# The converged study's summary from its sweep folders (after run_study.sh):
#   convergence per setting (curves.py: mean test top-1 over seeds, gain over the last fifth of the
#   epochs, one learning-curve figure per sweep) and paired per-seed differences with 95 % intervals
#   (paired.py) against ReSTE (estimators) and against o_end = 3 (o_end), for the final and the best
#   test top-1; over all o_end runs, whether accuracy is an inverted U in o_end, where its top is, and
#   how the two indicators move step by step (o_end.py). Everything is printed and written to
#   summary.txt.
#   docs/results/converged/summarize.sh
#   OUT=docs/results/epochs64 SWEEPS=leaders docs/results/converged/summarize.sh   # the 64-epoch leading group
#   OUT=docs/results/epochs64 SWEEPS="estimators o_end" docs/results/converged/summarize.sh   # all of 64 epochs
set -euo pipefail
cd "$(dirname "$0")/../../.."
OUT=${OUT:-docs/results/converged}
SWEEPS=${SWEEPS:-estimators estimators_5seeds o_end o_end_5seeds}  # as run_study.sh's (leaders: the leading group)
has() { [[ " $SWEEPS " == *" $1 "* ]]; }
{
  for d in $SWEEPS; do
    echo "== $d: convergence"
    python docs/results/curves.py "$OUT/$d" --out "$OUT/$d/learning_curves.png"
  done
  for metric in final_acc best_acc; do
    echo "== paired differences, $metric"
    for d in estimators estimators_5seeds leaders; do
      if has $d; then python docs/results/paired.py "$OUT/$d" estimator=reste "$metric"; fi
    done
    for d in o_end o_end_5seeds; do
      if has $d; then python docs/results/paired.py "$OUT/$d" o_end=3 "$metric"; fi
    done
  done
  O_END=()  # the o_end sweeps of this study, fitted together (a run two of them share counts once)
  for d in o_end o_end_5seeds; do
    if has $d; then O_END+=("$OUT/$d"); fi
  done
  if (( ${#O_END[@]} )); then
    echo "== accuracy and indicators against o_end"
    python docs/results/o_end.py "${O_END[@]}" --metric final_acc
    python docs/results/o_end.py "${O_END[@]}" --metric best_acc --no-indicators
  fi
} | tee "$OUT/summary.txt"
