// CUDA entry points: the device guard is set by ops.cpp; here the functor's launcher is picked.
#include "../ops.h"

namespace fastact::cuda {

#define FASTACT_DECLARE(F)                          \
  void forward_##F(const ElementwiseProblem& pr);  \
  void backward_##F(const ElementwiseProblem& pr);
FASTACT_FOR_EACH_FUNCTOR(FASTACT_DECLARE)
#undef FASTACT_DECLARE

void forward(const ElementwiseProblem& pr) {
  switch (pr.activation) {
#define FASTACT_CASE(F) \
  case ActivationId::F: return forward_##F(pr);
    FASTACT_FOR_EACH_FUNCTOR(FASTACT_CASE)
#undef FASTACT_CASE
  }
}

void backward(const ElementwiseProblem& pr) {
  switch (pr.activation) {
#define FASTACT_CASE(F) \
  case ActivationId::F: return backward_##F(pr);
    FASTACT_FOR_EACH_FUNCTOR(FASTACT_CASE)
#undef FASTACT_CASE
  }
}

}  // namespace fastact::cuda
