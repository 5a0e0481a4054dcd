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
# With strongest_seeds34 in SWEEPS (run_study.sh's seeds 3 and 4 of the three strongest alone), estimators_5seeds
# is first joined from the runs.csv of estimators, o_end_5seeds (ReSTE at o_end 3, its default) and
# strongest_seeds34 by docs/results/combine.py, and compared as if it had run. SUMMARY (default OUT/summary.txt)
# is where the summary is written:
#   OUT=docs/results/epochs64 SWEEPS=strongest_seeds34 SUMMARY=docs/results/epochs64/summary_5seeds.txt \
#   docs/results/converged/summarize.sh
# With others or o_end_others in SWEEPS (run_study.sh's rest of the study beside leaders), estimators (leaders and
# others: the eight estimators) and o_end (o_end_others and leaders' ReSTE as o_end 3) are joined the same way, with
# their epochs, and summarized in their place:
#   OUT=docs/results/epochs128 SWEEPS="others o_end_others" docs/results/converged/summarize.sh
# and o_end_seeds34 (ReSTE at o_end 2, 3 and 5, seeds 3 and 4) joins o_end_5seeds from o_end and it, before
# strongest_seeds34 joins estimators_5seeds (the order the joins run in, whatever SWEEPS's order):
#   OUT=docs/results/epochs128 SWEEPS="others o_end_others o_end_seeds34 strongest_seeds34" \
#   docs/results/converged/summarize.sh
set -euo pipefail
cd "$(dirname "$0")/../../.."
source docs/results/converged/grids.sh
OUT=${OUT:-docs/results/converged}
SWEEPS=${SWEEPS:-estimators estimators_5seeds o_end o_end_5seeds}  # as run_study.sh's (leaders: the leading group)
SUMMARY=${SUMMARY:-$OUT/summary.txt}
has() { [[ " $SWEEPS " == *" $1 "* ]]; }
if has others || has o_end_others; then
  JOIN=()
  for d in $SWEEPS; do
    case $d in
      others)
        python docs/results/combine.py "$OUT/estimators" "$OUT/leaders" "$OUT/others" \
            --settings "$(labels estimator "$ESTIMATORS")"
        JOIN+=(estimators) ;;
      o_end_others)
        python docs/results/combine.py "$OUT/o_end" "$OUT/o_end_others" "$OUT/leaders" \
            --settings "$(labels o_end "$O_ENDS")" --alias estimator=reste o_end=3
        JOIN+=(o_end) ;;
      leaders) if ! has others; then JOIN+=(leaders); fi ;;  # with others: read through estimators
      *) JOIN+=("$d") ;;
    esac
  done
  SWEEPS="${JOIN[*]}"
fi
if has o_end_seeds34; then  # o_end 2, 3 and 5 at seeds 3 and 4 alone: o_end_5seeds is o_end and them
  python docs/results/combine.py "$OUT/o_end_5seeds" "$OUT/o_end" "$OUT/o_end_seeds34" \
      --settings "$(labels o_end "$O_ENDS_5SEEDS")"
  SWEEPS="${SWEEPS/o_end_seeds34/o_end_5seeds}"
fi
JOINED=""  # estimators_5seeds when it is joined below: compared pairwise, and its curves drawn when the
           # sweeps it joins had their epochs (epochs.csv; written by sweeps since 2026-12-01)
if has strongest_seeds34; then
  # the settings strongest_seeds34 ran, in its order (its grid: the strongest first)
  STRONGEST=$(python -c 'import csv, sys; print(",".join(dict.fromkeys(r["setting"]
    for r in csv.DictReader(open(sys.argv[1])))))' "$OUT/strongest_seeds34/runs.csv")
  python docs/results/combine.py "$OUT/estimators_5seeds" "$OUT/estimators" "$OUT/o_end_5seeds" \
      "$OUT/strongest_seeds34" --settings "estimator=reste,$STRONGEST" --alias o_end=3 estimator=reste
  JOINED=estimators_5seeds
fi
CURVES=$SWEEPS  # the folders whose convergence is read: the sweeps, and the joined one when it has its epochs
if [[ -n $JOINED && -f $OUT/$JOINED/epochs.csv ]]; then CURVES+=" $JOINED"; fi
# written beside, then put in place whole: a step that fails leaves the summary as it was; and a sweep whose
# curves cannot be redrawn (its run folders gone, no epochs.csv: the sweeps before 2026-12-01) keeps the
# convergence lines of the summary before (curves.py --previous), which nothing here could compute again
PREVIOUS=$(mktemp)
NEW=$(mktemp)
trap 'rm -f "$PREVIOUS" "$NEW"' EXIT
if [[ -f $SUMMARY ]]; then cp "$SUMMARY" "$PREVIOUS"; fi
{
  for d in $CURVES; do
    echo "== $d: convergence"
    python docs/results/curves.py "$OUT/$d" --out "$OUT/$d/learning_curves.png" --previous "$PREVIOUS"
  done
  for metric in final_acc best_acc; do
    echo "== paired differences, $metric"
    for d in estimators estimators_5seeds leaders; do
      if has $d || [[ $d == "$JOINED" ]]; then python docs/results/paired.py "$OUT/$d" estimator=reste "$metric"; fi
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
} | tee "$NEW"
cp "$NEW" "$SUMMARY"
