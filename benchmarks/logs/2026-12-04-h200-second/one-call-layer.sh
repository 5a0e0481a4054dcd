export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
python -c "from reste import cuda_ext; print(cuda_ext.build(cuda=True))" 2>&1 | tail -2
echo "== ext tests on cuda"
RESTE_TEST_DEVICE=cuda timeout 120 python -m pytest -q -x -p no:cacheprovider -o addopts="" -m "not slow" tests/test_cuda_ext.py 2>&1 | tail -8
echo "== prof"
timeout 150 python benchmarks/logs/2026-12-04-h200-second/profile.py cuda fp32,bf16 256 2>&1 | grep -v Warn | grep -B2 -A4 "=== "
echo "== nodes"
timeout 60 python benchmarks/node_overhead.py --device cuda --rounds 5 --calls 200 2>&1 | tail -9
