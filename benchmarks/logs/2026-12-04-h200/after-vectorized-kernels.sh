set -u
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
S=$SECONDS
git log --oneline 2>/dev/null | head -1
timeout 120 python3 -c 'import time; from reste import cuda_ext; t = time.time(); k = cuda_ext.build(cuda=True); print(f"built ({k}) in {time.time() - t:.0f} s")'
RESTE_TEST_DEVICE=cuda timeout 90 python3 -m pytest -q -p no:cacheprovider -o addopts="" -m "not slow" tests/test_cuda_ext.py 2>&1 | tail -3
echo "($((SECONDS - S)) s)"
timeout 90 python3 benchmarks/train_step.py --device cuda --repeats 15 --warmup 3 --json "$OUT/rows.json" 2>&1
echo "($((SECONDS - S)) s)"
for cfg in "resnet20_1w1a 256" "vgg_small_1w1a 256" "resnet18_1w1a 96"; do
  set -- $cfg
  for graphs in "" "--cuda-graphs"; do
    echo "== $1 batch $2 fp32 ${graphs:-eager}"
    timeout 50 python3 benchmarks/train_epoch.py --device cuda --model "$1" --batch-size "$2" --amp none $graphs \
      --epochs 2 --steps 20 --images 20000 --test-images 4000 --json "$OUT/epoch-$1${graphs:+-graphed}.json" 2>&1 \
      | grep -v "^  epoch"
    echo "($((SECONDS - S)) s)"
  done
done
