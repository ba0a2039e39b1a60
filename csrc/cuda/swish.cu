// CUDA launchers of SwishOp (activations.h).
#include "kernels.cuh"

namespace fastact::cuda {
FASTACT_CUDA_LAUNCHERS(swish, SwishOp)
}  // namespace fastact::cuda
