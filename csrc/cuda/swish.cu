// CUDA launchers of SwishOp (activations.h).
#include "kernels.cuh"

namespace fastact::cuda {
FASTACT_CUDA_LAUNCHERS(Swish)
}  // namespace fastact::cuda
