#!/usr/bin/env bash
# One call on a lent GPU machine (see README "GPU"): build fastact there (its torch differs from the dev
# machine's), run the test suite with its CUDA tests, then the CUDA kernel benchmark. Every phase logs under
# $OUT and the script goes on past a failed phase, so one call always brings back what it could measure.
#
#   OUT=/tmp/out bash benchmarks/gpu_run.sh            (the device tool sets OUT)
set -u
OUT=${OUT:-/tmp/fastact-gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
phase() { echo "== $1 ($(date -u +%H:%M:%S))"; }

phase environment
{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv
  $PY -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"
  lscpu | grep -E 'Model name|^CPU\(s\)|Flags' | cut -c1-200
} 2>&1 | tee "$OUT/environment.txt"

phase build
start=$(date +%s)
FASTACT_BUILD=cuda TORCH_CUDA_ARCH_LIST="9.0" MAX_JOBS=16 $PY setup.py build_ext --inplace >"$OUT/build.log" 2>&1
status=$?
echo "build exit $status in $(( $(date +%s) - start )) s" | tee -a "$OUT/environment.txt"
if [ $status -ne 0 ]; then grep -a -B2 -A8 "error" "$OUT/build.log" | head -80; exit 1; fi

phase tests
# The CUDA tests, and the CPU kernel-build test (this host may run the AVX-512 build, the dev machine does not).
timeout ${TEST_TIMEOUT:-200} $PY -m pytest tests/test_ops.py tests/test_nn.py -q --tb=short --maxfail=15 -p no:cacheprovider \
  -k "cuda or capability" --junitxml="$OUT/tests.xml" 2>&1 | tee "$OUT/tests.log" | tail -40

phase benchmark
timeout ${BENCH_TIMEOUT:-220} $PY -m fastact.bench kernels --device cuda --json "$OUT/gpu_kernels.json" \
  --plot "$OUT/gpu_kernels.png" ${BENCH_ARGS:---dtypes float32,bfloat16,float16 --impls fastact,native,eager --min-run-time 0.05} 2>&1 | tee "$OUT/bench.log" | tail -60
phase done
