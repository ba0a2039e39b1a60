// The activation functors with T = float and double scalars, compiled for the host: the math the CUDA kernels
// run element by element (csrc/cuda/kernels.cuh, with the same choice of the nonzero-parameter forward), and
// which the CPU kernels, computing packs, never take. tests/test_scalar_functors.py checks it on machines
// without a GPU.
//
// Usage: functors <swish|mish|leaky> <float|double> <param>. Reads "x g" pairs (hex floats) from stdin and
// writes "f gx gp" for each (gx = g df/dx, gp = g df/dparam), hex floats too.
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "activations.h"

namespace {

template <typename Op, typename T>
int run(T param) {
  using Forward = typename fastact::NonzeroParamForward<Op>::type;
  const bool nonzero = param != T(0);
  double x, g;
  while (std::scanf("%la %la", &x, &g) == 2) {
    const T f = nonzero ? Forward::forward(T(x), param) : Op::forward(T(x), param);
    T gx, gp;
    Op::backward(T(g), T(x), param, gx, gp);
    std::printf("%a %a %a\n", double(f), double(gx), double(gp));
  }
  return 0;
}

template <typename T>
int run_op(const char* op, T param) {
  if (!std::strcmp(op, "swish")) return run<fastact::SwishOp>(param);
  if (!std::strcmp(op, "mish")) return run<fastact::MishOp>(param);
  if (!std::strcmp(op, "leaky")) return run<fastact::LeakyOp>(param);
  std::fprintf(stderr, "unknown op %s\n", op);
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: %s <swish|mish|leaky> <float|double> <param>\n", argv[0]);
    return 2;
  }
  const double param = std::strtod(argv[3], nullptr);
  if (!std::strcmp(argv[2], "float")) return run_op(argv[1], static_cast<float>(param));
  if (!std::strcmp(argv[2], "double")) return run_op(argv[1], param);
  std::fprintf(stderr, "unknown dtype %s\n", argv[2]);
  return 2;
}
