export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
echo "== direct, cpu then cuda"; timeout 120 python3 benchmarks/logs/2026-12-04-h200/segfault-diagnosis.py cpu cuda; echo "rc=$?"
echo "== direct, cuda only"; timeout 60 python3 benchmarks/logs/2026-12-04-h200/segfault-diagnosis.py cuda; echo "rc=$?"
echo "== cuda-gdb"; timeout 120 cuda-gdb -batch -ex run -ex bt --args python3 benchmarks/logs/2026-12-04-h200/segfault-diagnosis.py cuda 2>&1 | grep -v "^\[New Thread\|^\[Thread\|Detaching" | tail -45
echo "== the test alone"; RESTE_TEST_DEVICE=cuda timeout 60 python3 -m pytest -q -p no:cacheprovider -o addopts="" tests/test_cuda_ext.py -k "bad_arguments or another_device" 2>&1 | grep -v "site-packages" | tail -25
echo "== the whole file without it"; RESTE_TEST_DEVICE=cuda timeout 150 python3 -m pytest -q -p no:cacheprovider -o addopts="" -m "not slow" tests/test_cuda_ext.py -k "not bad_arguments" 2>&1 | grep -v "site-packages" | tail -25
