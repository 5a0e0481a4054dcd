#!/usr/bin/env bash
# Whole epochs of the CIFAR-10 presets of three models through the engine, fp32 as the presets run, eager and with
# --cuda-graphs, on one GPU (about 2 minutes on an H200); then the implied wall time of each preset. Random data:
# 20,000 train and 4,000 test images, scaled to CIFAR-10's sizes by train_epoch.full_epoch_s.
#   benchmarks/preset_epochs.sh                 # from the repository root or anywhere
#   PRESET_EPOCHS_SAVE=DIR benchmarks/preset_epochs.sh   # also keep each run's JSON figures there
set -euo pipefail
SAVE="${PRESET_EPOCHS_SAVE:-}"
if [ -n "$SAVE" ]; then SAVE="$(realpath -m "$SAVE")"; mkdir -p "$SAVE"; fi
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  echo "preset_epochs: no CUDA GPU is visible to torch here; nothing was timed" >&2
  exit 77
fi
WORK="$(mktemp -d "${TMPDIR:-/tmp}/reste-preset-epochs.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
FAILED=()
for cfg in "resnet20_1w1a 256" "vgg_small_1w1a 256" "resnet18_1w1a 96"; do
  set -- $cfg
  for graphs in "" "--cuda-graphs"; do
    echo "== $1, batch $2, fp32, ${graphs:-eager}"
    name="epoch-$1${graphs:+-graphed}.json"
    rc=0
    timeout 120 "$PYTHON" benchmarks/train_epoch.py --device cuda --model "$1" --batch-size "$2" --amp none $graphs \
      --epochs 2 --steps 20 --images 20000 --test-images 4000 --json "$WORK/$name" 2>&1 \
      | { grep --line-buffered -v "^  epoch" || true; } || rc=$?  # (live; pipefail gives the timing's status)
    if [ "$rc" -ne 0 ]; then FAILED+=("$1 ${graphs:-eager}: exit $rc"); fi
    if [ -n "$SAVE" ] && [ -f "$WORK/$name" ]; then cp "$WORK/$name" "$SAVE/"; fi
  done
done
echo
echo "== Presets (hours of a whole run: steps, test evaluation and checkpoints; data loading from disk left out)"
"$PYTHON" - "$WORK" <<'PY'
import json
import sys
from pathlib import Path

for path in sorted(Path(sys.argv[1]).glob("epoch-*.json")):
    figures = json.loads(path.read_text())
    mode = "graphed" if figures["args"]["cuda_graphs"] else "eager"
    presets = list(figures["implied_hours"])  # (a model's presets of one epoch count share a figure)
    hours = figures["implied_hours"][presets[0]]
    more = f" and {len(presets) - 1} more" if len(presets) > 1 else ""
    print(f"  {presets[0] + more:<40} {mode:<8} {hours:6.2f} h  (bare step "
          f"{1000 * figures['bare_step']['median_s']:.2f} ms)")
PY
if [ "${#FAILED[@]}" -gt 0 ]; then
  echo "FAILED (not timed, see above):"
  printf '  %s\n' "${FAILED[@]}"
  exit 1
fi
