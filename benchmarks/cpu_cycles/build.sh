#!/bin/bash
# Builds benchmarks/cpu_cycles/cycles.cpp against the installed torch's headers (AVX2 kernels) into
# /tmp/fastact_cycles, and table_ceiling.cpp (no torch) into /tmp/fastact_table_ceiling. Needs torch in the
# active Python; no GPU.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
torch_dir="$(python -c 'import os, torch; print(os.path.dirname(torch.__file__))')"
g++ -O3 -std=c++20 -mavx2 -mfma -mf16c -mbmi -mbmi2 -DCPU_CAPABILITY=AVX2 -DCPU_CAPABILITY_AVX2 \
  -I"$here/../../csrc" -I"$torch_dir/include" -I"$torch_dir/include/torch/csrc/api/include" \
  "$here/cycles.cpp" -o /tmp/fastact_cycles \
  -L"$torch_dir/lib" -lc10 -ltorch_cpu -Wl,-rpath,"$torch_dir/lib"
g++ -O3 -std=c++17 -mavx2 -pthread "$here/table_ceiling.cpp" -o /tmp/fastact_table_ceiling
echo "built /tmp/fastact_cycles and /tmp/fastact_table_ceiling"
