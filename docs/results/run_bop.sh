#!/usr/bin/env bash
# Bop against latent weights on Fashion-MNIST (docs/results/bop/README.md): the data set's default model and recipe
# (fmnist_vgg28_1w1a, 8 epochs, batch 256, Adam at 1e-3, no augmentation), binarized with the STE and no weight
# scale in both settings; only the binary weights' training differs: latent float weights stepped by Adam
# (--optimizer adam) or no latent weights, +-1 flipped by Bop at larq's defaults (--optimizer bop; its Adam trains
# the other parameters as in the first). Two seeds; tables and figures go to docs/results/bop/.
# Run from anywhere; re-running skips finished runs and resumes interrupted ones.
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${RUNS:-runs/bop}   # checkpoints and logs (git-ignored)
JOBS=${JOBS:-2}          # runs at a time, one torch thread each
reste sweep --dataset fashion-mnist --model fmnist_vgg28_1w1a --epochs 8 --batch-size 256 --lr 1e-3 \
    --weight-decay 0 --warm-up 0 --no-augment --estimator ste --scaling none \
    --grid optimizer=adam,bop --seeds 0,1 --jobs "$JOBS" --threads 1 --runs-dir "$RUNS" --out docs/results/bop
