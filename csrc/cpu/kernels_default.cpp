// The CPU kernels for any CPU of the architecture (setup.py adds -DCPU_CAPABILITY=DEFAULT).
#include "kernels.h"
