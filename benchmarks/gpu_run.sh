#!/usr/bin/env bash
# One call on a lent GPU machine (see README "GPU"): build fastact there (its torch differs from the dev
# machine's), time the rows-kernel layout experiment (benchmarks/gpu_experiments), run the test suite with its
# CUDA tests, then the CUDA kernel benchmark and the experimental flat kernel (add the `compile` phase for the
# torch.compile comparison of the learnable ops). Every phase logs under $OUT and the script goes on past a
# failed phase, so one call always brings back what it could measure. The default phases leave 8 files, the
# most the device tool brings back.
#
#   OUT=/tmp/out bash benchmarks/gpu_run.sh            (the device tool sets OUT)
#   PHASES="tests bench pieces" bash benchmarks/gpu_run.sh   (a subset; the build always runs)
#
# Phases (default: layouts tests bench flat): layouts (layouts.log), tests (tests.log), bench
# (gpu_kernels.json/.png, bench.log), compile (gpu_compile.json, appended to bench.log), pieces (pieces.log:
# the rows kernel at 1, 2 and 4 vectors per thread through FASTACT_CUDA_PIECE_VECTORS, kernel regime), flat
# (flat.log: the CUDA tests and the kernel regime with the experimental flat kernel, FASTACT_CUDA_FLAT).
set -u
OUT=${OUT:-/tmp/fastact-gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
PHASES=${PHASES:-layouts tests bench flat}
phase() { echo "== $1 ($(date -u +%H:%M:%S))"; }
want() { case " $PHASES " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}   # the in-place build, also for scripts run from elsewhere

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

if want layouts; then
phase layouts
# Rows-kernel layouts beside torch's copy and LeakyReLU and fastact's kernel (a small library, ~10 s to build).
NVCC=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
{ $NVCC -O3 -std=c++17 -arch=sm_90 --expt-relaxed-constexpr -shared -Xcompiler -fPIC -o /tmp/librows_layout.so \
    benchmarks/gpu_experiments/rows_layout.cu \
  && timeout 120 $PY benchmarks/gpu_experiments/rows_layout.py /tmp/librows_layout.so; } >"$OUT/layouts.log" 2>&1
tail -45 "$OUT/layouts.log"
fi

if want tests; then
phase tests
# The CUDA tests, and the CPU kernel-build test (this host may run the AVX-512 build, the dev machine does not).
timeout ${TEST_TIMEOUT:-200} $PY -m pytest tests/test_ops.py tests/test_nn.py -q --tb=short --maxfail=15 -p no:cacheprovider \
  -k "cuda or capability" 2>&1 | tee "$OUT/tests.log" | tail -40
fi

if want bench; then
phase benchmark
timeout ${BENCH_TIMEOUT:-220} $PY -m fastact.bench kernels --device cuda --json "$OUT/gpu_kernels.json" \
  --plot "$OUT/gpu_kernels.png" ${BENCH_ARGS:---dtypes float32,bfloat16,float16 --impls fastact,native,eager --min-run-time 0.05} 2>&1 | tee "$OUT/bench.log" | tail -60
fi

if want compile; then
phase compile
# torch.compile of the eager compositions for the learnable ops (compiling every row would not fit the lease).
timeout ${COMPILE_TIMEOUT:-170} $PY -m fastact.bench kernels --device cuda --json "$OUT/gpu_compile.json" \
  --ops swish_beta,swish_beta_pc,prelu_pc --impls fastact,eager,compile --regimes user --passes fwd,fwd+bwd \
  --dtypes float32,bfloat16 --min-run-time 0.05 --no-progress 2>&1 | tee -a "$OUT/bench.log" | tail -30
fi

if want pieces; then
phase pieces
for v in 1 2 4; do
  echo "FASTACT_CUDA_PIECE_VECTORS=$v"
  FASTACT_CUDA_PIECE_VECTORS=$v timeout 60 $PY -m fastact.bench kernels --device cuda --regimes kernel \
    --ops swish,swish_beta,swish_beta_pc,mish,leaky_0.5,prelu_pc --impls fastact,native --dtypes float32,bfloat16 \
    --min-run-time 0.05 --no-progress 2>&1
done > "$OUT/pieces.log"
grep -a -E "FASTACT_CUDA|fraction|fastact/native|^cuda" "$OUT/pieces.log" | cut -c1-150
fi
if want flat; then
phase flat
# The flat kernel (csrc/cuda/kernels.cuh, off by default): correct at 1 and 4 vectors per thread, then timed
# against the rows kernel (0) and native for the ops it takes (no per-channel or tensor parameter).
{
  for v in 1 4; do
    echo "CUDA tests, FASTACT_CUDA_FLAT=$v"
    FASTACT_CUDA_FLAT=$v timeout 120 $PY -m pytest tests/test_ops.py tests/test_nn.py -q --tb=short --maxfail=15 \
      -p no:cacheprovider -k cuda 2>&1 | tail -15
  done
  for v in 0 1 2 4; do
    echo "FASTACT_CUDA_FLAT=$v"
    FASTACT_CUDA_FLAT=$v timeout 60 $PY -m fastact.bench kernels --device cuda --regimes kernel \
      --ops swish,mish,leaky_0.5 --impls fastact,native --dtypes float32,bfloat16,float16 --min-run-time 0.05 \
      --no-progress 2>&1
  done
} > "$OUT/flat.log"
grep -a -E "FASTACT_CUDA|passed|failed|fastact/native|fraction" "$OUT/flat.log" | cut -c1-150
fi
phase done
