#!/usr/bin/env bash
# The CPU tests against a build of fastact instrumented with GCC's AddressSanitizer and UndefinedBehaviorSanitizer:
# out-of-bounds access (vector loops' tails, lookup tables, per-channel parameters), use after free, and undefined
# arithmetic (shifts, signed overflow, misaligned scalar access). A finding aborts the test run; its report is
# printed at the end (pytest's capture would swallow it).
#
#   bash tests/run_sanitized.sh [pytest arguments]      (default: the whole suite)
#
# Run it from an environment set up as in README.md. It builds into a copy of the tree's tracked files in
# $FASTACT_SANITIZED_DIR (default /tmp/fastact_sanitized), leaving the in-place build alone.
# The build is slow and large: ~50 min on a 2-core host, with up to ~7 GiB of memory for each kernel file
# compiled at once (MAX_JOBS, default 2, bounds how many). The tests take ~7 min there.
# Python and torch are not instrumented, so the sanitizers' runtimes are preloaded, and leak checking is off
# (the interpreter does not free all it holds at exit).
# GCC does not instrument masked vector loads and stores, so the AVX-512 builds' partial tails are checked only
# through the default and AVX2 builds, which share their block logic (csrc/cpu/kernels.h, for_each_block).
set -euo pipefail
cd "$(dirname "$0")/.."
sanitizers=${FASTACT_SANITIZE:-address,undefined}
work=${FASTACT_SANITIZED_DIR:-/tmp/fastact_sanitized}
python=$(command -v python)

mkdir -p "$work"
git ls-files -z | tar --null -T - -cf - | tar -xf - -C "$work"   # the tracked files, as they are in the tree
(cd "$work" && FASTACT_BUILD=cpu FASTACT_SANITIZE="$sanitizers" MAX_JOBS=${MAX_JOBS:-2} \
   "$python" setup.py -q build_ext --inplace)

reports="$work/sanitizer_reports"
rm -rf "$reports" && mkdir -p "$reports"
runtimes="$(${CXX:-c++} -print-file-name=libasan.so) $(${CXX:-c++} -print-file-name=libubsan.so)"
status=0
(cd "$work" &&
 LD_PRELOAD="$runtimes" \
 ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:log_path=$reports/report" \
 UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:log_path=$reports/report" \
 CI=1 PYTHONPATH="$work" "$python" -m pytest tests -q -p no:cacheprovider "$@") || status=$?
if compgen -G "$reports/report*" >/dev/null; then
  cat "$reports"/report*
  echo "sanitizer findings: $(ls "$reports" | wc -l) report(s) above, kept in $reports"
  if [ "$status" = 0 ]; then status=1; fi
fi
exit "$status"
