// CUDA entry points: the device guard and stream are set by ops.cpp; here the activation is picked.
#include "../ops.h"

namespace fastact::cuda {

#define FASTACT_DECLARE(name)                          \
  void forward_##name(const ElementwiseProblem& pr);  \
  void backward_##name(const ElementwiseProblem& pr);
FASTACT_DECLARE(swish)
FASTACT_DECLARE(mish)
FASTACT_DECLARE(leaky)
#undef FASTACT_DECLARE

void forward(const ElementwiseProblem& pr) {
  switch (pr.activation) {
    case ActivationId::Swish: return forward_swish(pr);
    case ActivationId::Mish: return forward_mish(pr);
    case ActivationId::Leaky: return forward_leaky(pr);
  }
}

void backward(const ElementwiseProblem& pr) {
  switch (pr.activation) {
    case ActivationId::Swish: return backward_swish(pr);
    case ActivationId::Mish: return backward_mish(pr);
    case ActivationId::Leaky: return backward_leaky(pr);
  }
}

}  // namespace fastact::cuda
