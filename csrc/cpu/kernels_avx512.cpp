// The CPU kernels for AVX-512 (F, BW, VL, DQ) CPUs (setup.py compiles this file with -mavx512f ... and
// -DCPU_CAPABILITY=AVX512); dispatch.cpp calls them only where the CPU has those features.
#include "kernels.h"
