#!/usr/bin/env bash
# The Fashion-MNIST estimator study of docs/results/README.md: 8 estimators x 3 seeds and
# ReSTE with o_end in {1, 1.5, 2, 3, 5, 10} x 3 seeds (the o_end = 3 runs are the ReSTE runs of
# the first grid: both sweeps share --runs-dir, and identical settings share their runs).
# Tables and figures go to $OUT/{estimators,o_end}/ (default OUT: docs/results/epochs$EPOCHS).
# Run from anywhere; re-running skips finished runs and resumes interrupted ones.
#   EPOCHS=6 docs/results/run_study.sh      (the main study; EPOCHS=3 gives the pilot)
#   OUT=study6 EPOCHS=6 docs/results/run_study.sh   (with a reste later than 800c232: a new folder, relative to the
#   repository's root, where the script runs)
set -euo pipefail
cd "$(dirname "$0")/../.."
EPOCHS=${EPOCHS:-6}
RUNS=${RUNS:-runs/study}   # checkpoints and logs (git-ignored)
JOBS=${JOBS:-2}            # runs at a time, one torch thread each
OUT=${OUT:-docs/results/epochs$EPOCHS}   # tables and figures; a later reste than 800c232 needs a new one (README)
# the recipe pinned (SGD, crop + flip): Fashion-MNIST's defaults have changed since (Adam, no augmentation)
COMMON=(--dataset fashion-mnist --model fmnist_vgg_1w1a --model-option width=8 --epochs "$EPOCHS"
        --optimizer sgd --lr 0.1 --momentum 0.9 --weight-decay 1e-4 --batch-size 256 --warm-up 0 --augment
        --indicators general --seeds 0,1,2 --jobs "$JOBS" --threads 1 --runs-dir "$RUNS")

reste sweep --grid estimator=ste,reste,approx_sign,sign_swish,ede,rbnn,dsq,fda \
    --out "$OUT/estimators" "${COMMON[@]}"
# o_end = 1 keeps the default cosine o schedule: o stays 1 all along (the same training as the
# "constant" schedule); ReSTE warns that the schedule never changes.
reste sweep --estimator reste --grid o_end=1,1.5,2,3,5,10 \
    --out "$OUT/o_end" "${COMMON[@]}"
