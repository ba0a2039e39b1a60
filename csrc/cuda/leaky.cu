// CUDA launchers of LeakyOp (activations.h).
#include "kernels.cuh"

namespace fastact::cuda {
FASTACT_CUDA_LAUNCHERS(Leaky)
}  // namespace fastact::cuda
