"""The AVX-512 and AVX512-BF16 CPU kernel builds, run on a CPU without AVX-512 through emulation.

The other tests run the kernel builds this CPU supports; on a machine without AVX-512 (this project's CI) that
leaves the AVX-512 builds compiled but never run. tests/avx512_emulation/run_check.py compiles them with their
AVX-512 intrinsics implemented in AVX2 code (SIMDe) and compares them with the AVX2 build on every op, dtype,
parameter kind, layout and edge value, and the 16-bit lookup tables (see check.cpp). Skipped where SIMDe's
headers (Debian: libsimde-dev) or a C++ compiler are missing, or the CPU lacks AVX2."""
from __future__ import annotations

import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import fastact

RUN_CHECK = Path(__file__).parent / "avx512_emulation" / "run_check.py"
sys.path.insert(0, str(RUN_CHECK.parent))
from run_check import find_simde  # noqa: E402


def _skip_reason() -> str | None:
    if platform.system() != "Linux" or platform.machine().lower() not in ("x86_64", "amd64"):
        return "the emulation check builds with g++ for x86-64 Linux"
    if "avx2" not in fastact.supported_cpu_capabilities():
        return "the emulation runs on AVX2, which this CPU lacks"
    if shutil.which("g++") is None:
        return "no g++"
    if find_simde(None) is None:
        return "SIMDe's headers are not installed (apt-get install libsimde-dev)"
    return None


@pytest.mark.skipif(_skip_reason() is not None, reason=_skip_reason() or "")
def test_avx512_builds_agree_with_the_avx2_build_under_emulation():
    result = subprocess.run([sys.executable, str(RUN_CHECK)], capture_output=True, text=True, timeout=1200)
    print(result.stdout[-8000:], result.stderr[-4000:])
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-4000:]
    # both pairs ran to their summary
    assert "avx512 (emulated) against avx2 (native):" in result.stdout
    assert "avx512_bf16 (emulated) against avx512 (emulated), bitwise:" in result.stdout
