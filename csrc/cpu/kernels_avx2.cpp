// The CPU kernels for AVX2 + FMA CPUs (setup.py compiles this file with -mavx2 -mfma ... and
// -DCPU_CAPABILITY=AVX2); dispatch.cpp calls them only where the CPU has those features.
#include "kernels.h"
