#!/bin/bash
# Builds benchmarks/cpu_cycles/cycles.cpp against the installed torch's headers into /tmp/fastact_cycles
# (AVX2 kernels), /tmp/fastact_cycles_avx512 and /tmp/fastact_cycles_avx512_bf16 (AVX-512 kernels, without and
# with AVX512-BF16; run them only on a CPU with those), and table_ceiling.cpp (no torch) into
# /tmp/fastact_table_ceiling, and accuracy.cpp into /tmp/fastact_accuracy (AVX2). Needs torch in the active
# Python; no GPU. ab.sh builds the A/B of two source trees.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
torch_dir="$(python -c 'import os, torch; print(os.path.dirname(torch.__file__))')"
build() {  # source, output, then the flags of that kernel build (as setup.py's)
  local source="$1" out="$2"; shift 2
  g++ -O3 -std=c++20 "$@" -I"$here/../../csrc" -I"$torch_dir/include" \
    -I"$torch_dir/include/torch/csrc/api/include" "$here/$source" -o "$out" \
    -L"$torch_dir/lib" -lc10 -ltorch_cpu -Wl,-rpath,"$torch_dir/lib"
}
avx2="-mavx2 -mfma -mf16c -mbmi -mbmi2 -DCPU_CAPABILITY=AVX2 -DCPU_CAPABILITY_AVX2"
build cycles.cpp /tmp/fastact_cycles $avx2 &
avx512="-mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx2 -mfma -mf16c -mbmi -mbmi2 -Wno-maybe-uninitialized"
build cycles.cpp /tmp/fastact_cycles_avx512 $avx512 -DCPU_CAPABILITY=AVX512 -DCPU_CAPABILITY_AVX512 &
build cycles.cpp /tmp/fastact_cycles_avx512_bf16 $avx512 -mavx512bf16 -DCPU_CAPABILITY=AVX512_BF16 -DCPU_CAPABILITY_AVX512 &
build accuracy.cpp /tmp/fastact_accuracy $avx2 &
wait %1 && wait %2 && wait %3 && wait %4
g++ -O3 -std=c++17 -mavx2 -pthread "$here/table_ceiling.cpp" -o /tmp/fastact_table_ceiling
echo "built /tmp/fastact_cycles, /tmp/fastact_cycles_avx512, /tmp/fastact_cycles_avx512_bf16, /tmp/fastact_accuracy and"
echo "/tmp/fastact_table_ceiling"
