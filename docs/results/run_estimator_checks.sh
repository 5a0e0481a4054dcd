#!/usr/bin/env bash
# RBNN and SignSwish at their published schedules, and one change each, in the setting of the
# 6-epoch study (fmnist_vgg_1w1a, width 8, 6 epochs): per-epoch indicators for
# docs/results/estimator_checks.md. Each run prints one line per epoch (t/k or beta, loss, accuracy,
# estimating error, gradient stability) and keeps its run directory under $RUNS.
#   docs/results/run_estimator_checks.sh        (7 runs of 1-5 minutes, one thread each)
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${RUNS:-runs/checks}
# the study's recipe pinned (SGD, crop + flip): Fashion-MNIST's defaults have changed since (Adam, no augmentation)
COMMON=(--dataset fashion-mnist --model fmnist_vgg_1w1a --model-option width=8 --epochs 6
        --optimizer sgd --lr 0.1 --momentum 0.9 --weight-decay 1e-4 --batch-size 256 --warm-up 0 --augment
        --indicators general --threads 1 --no-progress)
rm -rf "$RUNS"   # fresh runs each time
for seed in 0 2; do
  reste train --estimator rbnn --seed "$seed" --out "$RUNS/rbnn-seed$seed" "${COMMON[@]}"             # published: t 0.01 -> 10
  reste train --estimator rbnn --t-min 1 --seed "$seed" --out "$RUNS/rbnn-tmin1-seed$seed" "${COMMON[@]}"  # t 1 -> 10 (k = 1)
done
reste train --estimator reste --seed 0 --out "$RUNS/reste-seed0" "${COMMON[@]}"                  # the control
for beta in 5 2; do
  reste train --estimator sign_swish --beta "$beta" --seed 0 --out "$RUNS/sign_swish-beta$beta-seed0" "${COMMON[@]}"
done
