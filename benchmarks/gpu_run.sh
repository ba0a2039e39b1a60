#!/usr/bin/env bash
# One call on a lent GPU machine (see README "GPU"): build fastact there (its torch differs from the dev
# machine's), run the CUDA tests and the CUDA kernel benchmark, time the flat kernel's settings against the
# rows kernel, then what time is left allows. Phases run in order of priority inside a time budget (BUDGET
# seconds from the start, default 550; the first GPU call of 2026-11-28 took 132 s to build and 130 s for the
# tests): a phase that would not fit is skipped and says so. Every phase goes on past a failure and logs under
# a work folder that is packed into $OUT/gpu_results.tgz after each phase, so a call always brings back what
# it measured (the device tool brings back at most 8 files). The console gets the short tables.
#
#   OUT=/tmp/out bash benchmarks/gpu_run.sh                  (the device tool sets OUT)
#   PHASES="tests bench" bash benchmarks/gpu_run.sh          (a subset; the build always runs)
#
# Phases (default: tests bench flat flat_tests compile fusion layouts suite), in that order:
#   tests       tests.log: the CUDA tests of tests/test_ops.py and tests/test_nn.py, and the CPU build test
#   bench       gpu_kernels.json/.png, bench.log: fastact-bench kernels --device cuda (fastact, native, eager)
#   flat        flat_<v>.json, flat.log, flat_pick.txt: SiLU, Mish and LeakyReLU with the rows kernel
#               (FASTACT_CUDA_FLAT=0) and the flat kernel at 1, 2 and 4 vectors per thread, against native
#               in each run (benchmarks/gpu_flat_pick.py sums them up)
#   flat_tests  flat_tests.log: the CUDA tests with FASTACT_CUDA_FLAT=0, 2 and 4 (the settings not the default)
#   compile     gpu_compile.json, compile.log: the learnable ops against torch.compile of their eager composition
#   fusion      gpu_compile_fusion.json, compile_fusion.log: whole models under torch.compile, compile fusion
#               on and off (benchmarks/compile_fusion.py)
#   layouts     layouts.log: the layout experiment (benchmarks/gpu_experiments)
#   suite       suite.log: the rest of the test suite under this machine's torch (pytest-xdist, 12 workers)
#   pieces      pieces.log: the rows kernel at 1, 2 and 4 vectors per thread (FASTACT_CUDA_PIECE_VECTORS);
#               not in the default list
set -u
OUT=${OUT:-/tmp/fastact-gpu}
WORK=${WORK:-/tmp/fastact-gpu-work}
BUDGET=${BUDGET:-550}
rm -rf "$WORK"   # a warm machine keeps /tmp between calls: pack only this call's files
mkdir -p "$OUT" "$WORK"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
PHASES=${PHASES:-tests bench flat flat_tests compile fusion layouts suite}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}   # the in-place build, also for scripts run from elsewhere
SECONDS=0

pack() { tar czf "$OUT/gpu_results.tgz.tmp" -C "$WORK" . && mv "$OUT/gpu_results.tgz.tmp" "$OUT/gpu_results.tgz"; }
# want PHASE SECONDS: the phase was asked for and its estimate fits in what is left of the budget.
want() {
  case " $PHASES " in *" $1 "*) fits "$@" ;; *) return 1 ;; esac
}
fits() {
  if (( SECONDS + $2 > BUDGET )); then
    echo "== $1: skipped, needs ~$2 s and $(( BUDGET - SECONDS )) s are left" | tee -a "$WORK/skipped.txt"
    return 1
  fi
  echo "== $1 ($(date -u +%H:%M:%S), ${SECONDS} s in)"
}
# limit SECONDS: a command's timeout, cut to what is left of the budget (at least 10 s, so a phase that has
# started may overrun the budget by that much per command; the call's limit leaves room for it).
limit() { local left=$(( BUDGET - SECONDS )); echo $(( $1 < left ? $1 : (left > 10 ? left : 10) )); }
# pytest-xdist only for the CPU suite: the CUDA tests ran 294 in 39 s serially (2026-11-27) and 405 in 130 s
# with 4 workers (2026-11-28), each worker paying for its own torch import and CUDA context.
XDIST=""
$PY -c "import xdist" 2>/dev/null && XDIST="-n 12"

echo "== environment"
{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv
  $PY -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"
  lscpu | grep -E 'Model name|^CPU\(s\)|Flags' | cut -c1-200
  git log -1 --format='commit %H %s' 2>/dev/null
} 2>&1 | tee "$WORK/environment.txt"

echo "== build"
FASTACT_BUILD=cuda TORCH_CUDA_ARCH_LIST="9.0" MAX_JOBS=16 $PY setup.py build_ext --inplace >"$WORK/build.log" 2>&1
status=$?
echo "build exit $status in $SECONDS s" | tee -a "$WORK/environment.txt"
pack
if [ $status -ne 0 ]; then grep -a -B2 -A8 "error" "$WORK/build.log" | head -80; exit 1; fi

if want tests 140; then
  # The CUDA tests, and the CPU kernel-build test (this host may run other CPU builds than the dev machine).
  timeout $(limit 200) $PY -m pytest tests/test_ops.py tests/test_nn.py tests/test_compile_fusion.py -q --tb=short --maxfail=15 \
    -p no:cacheprovider --durations=20 -k "cuda or capability" >"$WORK/tests.log" 2>&1
  grep -a -E "passed|failed|error" "$WORK/tests.log" | tail -5; pack
fi

if want bench 45; then
  timeout $(limit 150) $PY -m fastact.bench kernels --device cuda --json "$WORK/gpu_kernels.json" \
    --plot "$WORK/gpu_kernels.png" --dtypes float32,bfloat16,float16 --impls fastact,native,eager \
    --min-run-time 0.05 --no-progress >"$WORK/bench.log" 2>&1
  grep -a -A45 "Targets (issue 3" "$WORK/bench.log" | cut -c1-160 | head -50; pack
fi

FLAT_OPS=swish,mish,leaky_0.5,leaky_-0.5
if want flat 90; then
  # The flat kernel (the default for the ops without a tensor parameter, at flat_vectors<Op> per thread) timed
  # against the rows kernel (FASTACT_CUDA_FLAT=0) and at 1, 2 and 4 vectors for every op, native in each run.
  for v in 0 1 2 4; do
    echo "FASTACT_CUDA_FLAT=$v"
    FASTACT_CUDA_FLAT=$v timeout $(limit 40) $PY -m fastact.bench kernels --device cuda --ops $FLAT_OPS \
      --impls fastact,native --dtypes float32,bfloat16,float16 --min-run-time 0.05 --no-progress --no-table \
      --json "$WORK/flat_$v.json" 2>&1
  done >"$WORK/flat.log"
  $PY benchmarks/gpu_flat_pick.py "$WORK"/flat_{0,1,2,4}.json >"$WORK/flat_pick.txt"
  grep -v "^  FLAT" "$WORK/flat_pick.txt"
  $PY benchmarks/gpu_flat_pick.py "$WORK"/flat_{0,1,2,4}.json --markdown swish=1,leaky_0.5=1,leaky_-0.5=1,mish=4
  pack
fi

if want flat_tests 180; then
  # The CUDA tests with the rows kernel in place of the flat one, and with the flat kernel at the sizes that
  # are not an op's default (2, and 4 for the ops that default to 1).
  for v in 0 2 4; do
    echo "CUDA tests, FASTACT_CUDA_FLAT=$v"
    FASTACT_CUDA_FLAT=$v timeout $(limit 90) $PY -m pytest tests/test_ops.py tests/test_nn.py -q --tb=short \
      --maxfail=15 -p no:cacheprovider -k cuda 2>&1 | tail -15
  done >"$WORK/flat_tests.log"
  grep -a -E "FASTACT|passed|failed|error" "$WORK/flat_tests.log"; pack
fi

if want compile 40; then
  # torch.compile of the eager compositions for the learnable ops (compiling every row would not fit).
  timeout $(limit 170) $PY -m fastact.bench kernels --device cuda --json "$WORK/gpu_compile.json" \
    --ops swish_beta,swish_beta_pc,prelu_pc --impls fastact,eager,compile --regimes user --passes fwd,fwd+bwd \
    --dtypes float32,bfloat16 --min-run-time 0.05 --no-progress >"$WORK/compile.log" 2>&1
  tail -25 "$WORK/compile.log" | cut -c1-160; pack
fi

if want fusion 90; then
  # Whole Conv-BN-activation models under torch.compile: torch's activations, fastact's fused forms and fastact's
  # kernels (benchmarks/compile_fusion.py), to check compile fusion's default on this GPU.
  timeout $(limit 200) $PY benchmarks/compile_fusion.py --device cuda --rounds 3 --min-run-time 0.2 \
    --json "$WORK/gpu_compile_fusion.json" >"$WORK/compile_fusion.log" 2>&1
  grep -a -v "^W" "$WORK/compile_fusion.log" | tail -20 | cut -c1-160; pack
fi

if want layouts 30; then
  # Rows-kernel layouts beside torch's copy and LeakyReLU and fastact's kernel (a small library, ~10 s to build).
  NVCC=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
  { timeout 60 $NVCC -O3 -std=c++17 -arch=sm_90 --expt-relaxed-constexpr -shared -Xcompiler -fPIC -o /tmp/librows_layout.so \
      benchmarks/gpu_experiments/rows_layout.cu \
    && timeout $(limit 120) $PY benchmarks/gpu_experiments/rows_layout.py /tmp/librows_layout.so; } >"$WORK/layouts.log" 2>&1
  tail -30 "$WORK/layouts.log"; pack
fi

if want suite 120; then
  # Everything else, under this machine's torch and Python (CI runs it under the dev machine's).
  CI=1 timeout $(limit 240) $PY -m pytest tests -q --tb=short --maxfail=15 -p no:cacheprovider \
    $XDIST -k "not cuda" >"$WORK/suite.log" 2>&1
  tail -15 "$WORK/suite.log"; pack
fi

if want pieces 120; then
  for v in 1 2 4; do
    echo "FASTACT_CUDA_PIECE_VECTORS=$v"
    FASTACT_CUDA_PIECE_VECTORS=$v timeout $(limit 60) $PY -m fastact.bench kernels --device cuda --regimes kernel \
      --ops swish,swish_beta,swish_beta_pc,mish,leaky_0.5,prelu_pc --impls fastact,native --dtypes float32,bfloat16 \
      --min-run-time 0.05 --no-progress 2>&1
  done > "$WORK/pieces.log"
  grep -a -E "FASTACT_CUDA|fraction|fastact/native|^cuda" "$WORK/pieces.log" | cut -c1-150; pack
fi
echo "== done in $SECONDS s"
pack
