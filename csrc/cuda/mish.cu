// CUDA launchers of MishOp (activations.h).
#include "kernels.cuh"

namespace fastact::cuda {
FASTACT_CUDA_LAUNCHERS(Mish)
}  // namespace fastact::cuda
