// The CPU kernels for AVX-512 CPUs with AVX512-BF16 (Cooper Lake, Sapphire Rapids and later, Zen 4 and later):
// the AVX-512 build, plus the instruction set's float -> bfloat16 rounding (kernels.h, __AVX512BF16__). setup.py
// compiles this file with the AVX-512 flags, -mavx512bf16 and -DCPU_CAPABILITY=AVX512_BF16; dispatch.cpp calls
// it only where the CPU has those features.
#include "kernels.h"
