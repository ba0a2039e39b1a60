#!/bin/bash
# Builds benchmarks/cpu_cycles/ab.cpp into /tmp/fastact_ab: the AVX2 CPU kernels of a git revision (default
# HEAD) against those of the working tree, in one binary (see ab.cpp). Needs torch in the active Python.
# AB_NEW_FLAGS adds compiler flags to the working tree's build only (e.g. -DNDEBUG). AB_ISA=avx512 or
# avx512_bf16 builds both trees as that kernel build instead (setup.py's flags; run it on such a CPU only).
#   bash benchmarks/cpu_cycles/ab.sh [REV] && /tmp/fastact_ab
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(git -C "$here" rev-parse --show-toplevel)"
rev="${1:-HEAD}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
git -C "$root" archive "$rev" csrc | tar -x -C "$work"
torch_dir="$(python -c 'import os, torch; print(os.path.dirname(torch.__file__))')"
flags=(-O3 -std=c++20 -mavx2 -mfma -mf16c -mbmi -mbmi2 -I"$torch_dir/include" -I"$torch_dir/include/torch/csrc/api/include")
case "${AB_ISA:-avx2}" in
  avx2) flags+=(-DCPU_CAPABILITY_AVX2) ;;
  avx512) flags+=(-mavx512f -mavx512bw -mavx512vl -mavx512dq -Wno-maybe-uninitialized -DCPU_CAPABILITY_AVX512) ;;
  avx512_bf16) flags+=(-mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512bf16 -Wno-maybe-uninitialized -DCPU_CAPABILITY_AVX512) ;;
  *) echo "AB_ISA: avx2, avx512 or avx512_bf16" >&2; exit 2 ;;
esac
echo '#include "cpu/kernels.h"' > "$work/kernels.cpp"
# The same code under two namespace names (CPU_CAPABILITY), so that both trees link into one program.
g++ "${flags[@]}" -DCPU_CAPABILITY=AVX512 -I"$work/csrc" -c "$work/kernels.cpp" -o "$work/base.o" &
g++ "${flags[@]}" ${AB_NEW_FLAGS:-} -DCPU_CAPABILITY=AVX2 -I"$root/csrc" -c "$work/kernels.cpp" -o "$work/new.o"
wait %1
g++ "${flags[@]}" -DCPU_CAPABILITY=AVX2 -I"$root/csrc" "$here/ab.cpp" "$work/base.o" "$work/new.o" -o /tmp/fastact_ab \
  -L"$torch_dir/lib" -lc10 -ltorch_cpu -Wl,-rpath,"$torch_dir/lib"
echo "built /tmp/fastact_ab ($rev against the working tree)"
