#!/usr/bin/env bash
# The converged Fashion-MNIST study of issue 14 (docs/results/converged/README.md):
#   1. the eight estimators, seeds 0-2, and ReSTE with o_end in {1, 1.5, 2, 3, 5, 10}, seeds 0-2;
#   2. seeds 3 and 4 for ReSTE at o_end 2, 3 and 5 and for the three other estimators with the
#      highest mean final accuracy in step 1.
# All sweeps share --runs-dir: a setting that two sweeps hold (ReSTE at o_end 3 is in all four)
# trains once per seed. Re-running skips finished runs and resumes interrupted ones, so the
# study can be stopped at any time (kill the script; each run saves every epoch) and continued.
#   docs/results/converged/run_study.sh       # the study: Adam 1e-3, 32 epochs, width 16, 2 runs at a time
# The earlier 16-epoch SGD study (docs/results/epochs16/README.md) is this script with
#   OUT=docs/results/epochs16 RUNS=runs/study-converged EPOCHS=16 OPTIMIZER=sgd LR=0.1 WEIGHT_DECAY=1e-4 \
#   CHANNELS_LAST=0 docs/results/converged/run_study.sh
# SWEEPS picks the sweeps to run. "leaders" is the leading group alone (STE, ReSTE, ApproxSign, DSQ,
# FDA; seeds 0-2), for a longer budget than the whole study fits:
#   OUT=docs/results/epochs64 RUNS=runs/study-adam64 EPOCHS=64 SWEEPS=leaders docs/results/converged/run_study.sh
# and at 128 epochs (docs/results/epochs128/README.md):
#   OUT=docs/results/epochs128 RUNS=runs/study-adam128 EPOCHS=128 SWEEPS=leaders docs/results/converged/run_study.sh
# then the rest of the study at 128 epochs (SWEEPS="o_end_others others", joined with leaders by summarize.sh),
# and its fourth and fifth seeds (SWEEPS="o_end_seeds34 strongest_seeds34", after summarize.sh has joined
# estimators, whose results.csv names the three strongest).
# The settings that still rose at 128 epochs, at 256 epochs (docs/results/epochs256/README.md; SEEDS picks the
# seeds, 0,1,2 by default; run the two sweeps side by side, one job each, or one after the other):
#   OUT=docs/results/epochs256 RUNS=runs/study-adam256 EPOCHS=256 JOBS=1 SWEEPS=rising docs/results/converged/run_study.sh
#   OUT=docs/results/epochs256 RUNS=runs/study-adam256 EPOCHS=256 JOBS=1 SWEEPS=o_end_rising docs/results/converged/run_study.sh
# The whole 64-epoch study (docs/results/epochs64/README.md) is SWEEPS="estimators o_end", then
# SWEEPS="o_end_5seeds estimators_5seeds" for seeds 3 and 4 (the fourth and fifth).
set -euo pipefail
cd "$(dirname "$0")/../../.."
source docs/results/converged/grids.sh
OUT=${OUT:-docs/results/converged}
RUNS=${RUNS:-runs/study-adam32}   # checkpoints and logs (git-ignored)
JOBS=${JOBS:-2}
EPOCHS=${EPOCHS:-32}
WIDTH=${WIDTH:-16}
OPTIMIZER=${OPTIMIZER:-adam}
LR=${LR:-1e-3}
WEIGHT_DECAY=${WEIGHT_DECAY:-0}
CHANNELS_LAST=${CHANNELS_LAST:-1}
SWEEPS=${SWEEPS:-estimators o_end o_end_5seeds estimators_5seeds}
SEEDS=${SEEDS:-0,1,2}   # the seeds of rising and o_end_rising
wants() { [[ " $SWEEPS " == *" $1 "* ]]; }
for s in $SWEEPS; do
  case $s in estimators|o_end|o_end_5seeds|estimators_5seeds|strongest_seeds34|leaders|others|o_end_others) ;;
    o_end_seeds34|rising|o_end_rising) ;;
    *) echo "run_study.sh: unknown sweep '$s' in SWEEPS (estimators, o_end, o_end_5seeds," \
            "estimators_5seeds, strongest_seeds34, leaders, others, o_end_others, o_end_seeds34," \
            "rising, o_end_rising)" >&2
       exit 2 ;;
  esac
done
# every setting of the recipe is given, so that a later change of the data set's defaults changes nothing here
COMMON=(--dataset fashion-mnist --model fmnist_vgg_1w1a --model-option "width=$WIDTH" --no-augment
        --epochs "$EPOCHS" --batch-size 256 --eval-batch-size 1000 --optimizer "$OPTIMIZER" --lr "$LR"
        --weight-decay "$WEIGHT_DECAY" --warm-up 0 --scaling layer --indicators general
        --jobs "$JOBS" --threads 1 --runs-dir "$RUNS")
if [[ $OPTIMIZER == sgd ]]; then COMMON+=(--momentum 0.9); fi
if [[ $CHANNELS_LAST == 1 ]]; then COMMON+=(--channels-last); fi

if wants estimators; then
  reste sweep --grid "estimator=$ESTIMATORS" --seeds 0,1,2 \
      --out "$OUT/estimators" "${COMMON[@]}"
fi
# o_end = 1 keeps the cosine schedule: o stays 1 all run long (ReSTE warns that it never moves)
if wants o_end; then
  reste sweep --estimator reste --grid "o_end=$O_ENDS" --seeds 0,1,2 --out "$OUT/o_end" "${COMMON[@]}"
fi
# seeds 3 and 4 of o_end 2, 3 and 5 alone: what o_end_5seeds adds to the o_end sweep, for when its run
# folders are gone (summarize.sh then joins o_end_5seeds from the two sweeps' runs.csv)
if wants o_end_seeds34; then
  reste sweep --estimator reste --grid "o_end=$O_ENDS_5SEEDS" --seeds 3,4 --out "$OUT/o_end_seeds34" "${COMMON[@]}"
fi
if wants o_end_5seeds; then
  reste sweep --estimator reste --grid "o_end=$O_ENDS_5SEEDS" --seeds 0,1,2,3,4 --out "$OUT/o_end_5seeds" "${COMMON[@]}"
fi
strongest() {  # the three other estimators with the highest mean final accuracy in the estimators sweep
  python - "$OUT/estimators/results.csv" <<'PY'
import csv
import sys

rows = [r for r in csv.DictReader(open(sys.argv[1])) if r["estimator"] != "reste"]
rows.sort(key=lambda r: float(r["final_acc_mean"]), reverse=True)
names = ",".join(r["estimator"] for r in rows[:3])
print(f"the three strongest other estimators after step 1: {names}", file=sys.stderr)
print(names)
PY
}
if wants estimators_5seeds; then
  STRONGEST=$(strongest)
  reste sweep --grid "estimator=reste,$STRONGEST" --seeds 0,1,2,3,4 --out "$OUT/estimators_5seeds" "${COMMON[@]}"
fi
# seeds 3 and 4 of the three strongest alone: what estimators_5seeds adds to the estimators and o_end_5seeds
# sweeps, for when their run folders are gone (docs/results/combine.py then joins the three sweeps' runs.csv)
if wants strongest_seeds34; then
  STRONGEST=$(strongest)
  reste sweep --grid "estimator=$STRONGEST" --seeds 3,4 --out "$OUT/strongest_seeds34" "${COMMON[@]}"
fi
if wants leaders; then
  reste sweep --grid "estimator=$LEADERS" --seeds 0,1,2 --out "$OUT/leaders" "${COMMON[@]}"
fi
# what the whole study adds to leaders: the three other estimators, and ReSTE at every o_end but its
# default 3 (a ReSTE run of leaders); docs/results/combine.py joins them with leaders into estimators and o_end
if wants others; then
  reste sweep --grid "estimator=$OTHERS" --seeds 0,1,2 --out "$OUT/others" "${COMMON[@]}"
fi
if wants o_end_others; then
  reste sweep --estimator reste --grid "o_end=$O_ENDS_OTHERS" --seeds 0,1,2 --out "$OUT/o_end_others" "${COMMON[@]}"
fi
# the settings that still rose over the last fifth at 128 epochs, trained longer (EPOCHS=256, docs/results/epochs256):
# the estimators in RISING (ReSTE, at its default o_end 3, among them as the control), and ReSTE at O_ENDS_RISING
if wants rising; then
  reste sweep --grid "estimator=$RISING" --seeds "$SEEDS" --out "$OUT/rising" "${COMMON[@]}"
fi
if wants o_end_rising; then
  reste sweep --estimator reste --grid "o_end=$O_ENDS_RISING" --seeds "$SEEDS" --out "$OUT/o_end_rising" "${COMMON[@]}"
fi
for d in $SWEEPS; do
  python docs/results/curves.py "$OUT/$d" --out "$OUT/$d/learning_curves.png"
done
