// Single-core cost of the CPU kernels (csrc/cpu/kernels.h) in ns per element and cycles per 8 elements, on a
// cache-resident buffer: the tool for kernel work, where end-to-end timings are too noisy to see 10%.
// Build and run (AVX2 build of the kernels; see build.sh):
//
//   bash benchmarks/cpu_cycles/build.sh && /tmp/fastact_cycles [GHz]
//
// Each figure is the minimum over 300 timed blocks, so a shared machine's interruptions drop out.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "cpu/kernels.h"

namespace {

using fastact::ActivationId;
using fastact::ElementwiseProblem;

double ghz = 2.45;

template <typename T>
void run(const char* name, ActivationId id, c10::ScalarType dtype, double param, bool backward,
         bool param_grad = false) {
  constexpr int64_t n = 1 << 14;
  std::vector<T> x(n), g(n), y(n);
  std::mt19937 rng(0);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  for (int64_t i = 0; i < n; ++i) {
    x[i] = T(normal(rng));
    g[i] = T(normal(rng));
  }
  ElementwiseProblem p{};
  p.activation = id;
  p.dtype = dtype;
  p.numel = n;
  p.channels = 1;
  p.inner = n;
  p.x = x.data();
  p.grad = g.data();
  p.out = y.data();
  p.param_scalar = param;
  p.params_nonzero = param != 0;  // as cpu::forward sets these
  p.params_at_most_one = param <= 1;
  const auto& kernels = fastact::cpu::CPU_CAPABILITY::kRangeKernels;
  float acc = 0;  // the parameter gradient's partial sum, when the backward computes one
  if (param_grad) p.param_grad = &acc;
  double best = 1e30;
  for (int block = 0; block < 300; ++block) {
    const auto start = std::chrono::steady_clock::now();
    for (int it = 0; it < 5; ++it) {
      backward ? kernels.backward(p, 0, n, param_grad ? &acc : nullptr, 0) : kernels.forward(p, 0, n);
    }
    const std::chrono::duration<double> elapsed = std::chrono::steady_clock::now() - start;
    best = std::min(best, elapsed.count() / 5 / n);
  }
  std::printf("%-12s %-9s %-3s %6.3f ns/element %6.2f cycles/8 elements at %.2f GHz\n", name,
              dtype == c10::ScalarType::Float ? "float32" : "bfloat16", backward ? "bwd" : "fwd", best * 1e9,
              best * 1e9 * ghz * 8, ghz);
}

// The 16-bit lookup kernels (a table of every 16-bit input; what it holds does not change the cost).
template <typename T>
void run_lookup(bool backward, bool param_grad = false) {
  constexpr int64_t n = 1 << 14;
  std::vector<T> x(n), g(n), y(n);
  std::vector<uint16_t> values(65536);
  std::vector<float> derivatives(65536), pairs(2 * 65536);  // pairs: df/dx, df/dbeta
  float acc = 0;  // the parameter gradient's partial sum
  std::mt19937 rng(0);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  for (int64_t i = 0; i < n; ++i) {
    x[i] = T(normal(rng));
    g[i] = T(normal(rng));
  }
  for (int i = 0; i < 65536; ++i) {
    values[i] = static_cast<uint16_t>(rng());
    derivatives[i] = normal(rng);
    pairs[2 * i] = derivatives[i];
    pairs[2 * i + 1] = normal(rng);
  }
  ElementwiseProblem p{};
  p.activation = ActivationId::Swish;
  p.dtype = c10::CppTypeToScalarType<T>::value;
  p.numel = p.inner = n;
  p.channels = 1;
  p.x = x.data();
  p.grad = g.data();
  p.out = y.data();
  const auto& kernels = fastact::cpu::CPU_CAPABILITY::kRangeKernels;
  if (kernels.lookup_forward == nullptr) return;  // a build without the tables
  double best = 1e30;
  for (int block = 0; block < 300; ++block) {
    const auto start = std::chrono::steady_clock::now();
    for (int it = 0; it < 5; ++it) {
      if (!backward) {
        kernels.lookup_forward(p, values.data(), 0, n);
      } else if (param_grad) {
        kernels.lookup_backward_param(p, pairs.data(), 0, n, &acc);
      } else {
        kernels.lookup_backward(p, derivatives.data(), 0, n);
      }
    }
    const std::chrono::duration<double> elapsed = std::chrono::steady_clock::now() - start;
    best = std::min(best, elapsed.count() / 5 / n);
  }
  std::printf("%-12s %-9s %-3s %6.3f ns/element %6.2f cycles/8 elements at %.2f GHz\n",
              param_grad ? "table+dbeta" : "table",
              std::is_same_v<T, c10::Half> ? "float16" : "bfloat16", backward ? "bwd" : "fwd", best * 1e9,
              best * 1e9 * ghz * 8, ghz);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc > 1) ghz = std::atof(argv[1]);
  for (bool backward : {false, true}) {
    run<float>("silu", ActivationId::Swish, c10::ScalarType::Float, 1.0, backward);
    run<float>("mish", ActivationId::Mish, c10::ScalarType::Float, 0.0, backward);
    run<float>("leaky", ActivationId::Leaky, c10::ScalarType::Float, 0.5, backward);
    run<c10::BFloat16>("silu", ActivationId::Swish, c10::ScalarType::BFloat16, 1.0, backward);
    run<c10::BFloat16>("mish", ActivationId::Mish, c10::ScalarType::BFloat16, 0.0, backward);
    run<c10::BFloat16>("leaky", ActivationId::Leaky, c10::ScalarType::BFloat16, 0.5, backward);
    run_lookup<c10::BFloat16>(backward);
    run_lookup<c10::Half>(backward);
    if (backward) {  // with the gradient of a learnable beta
      run<float>("swish+dbeta", ActivationId::Swish, c10::ScalarType::Float, 1.3, true, true);
      run<c10::BFloat16>("swish+dbeta", ActivationId::Swish, c10::ScalarType::BFloat16, 1.3, true, true);
      run_lookup<c10::BFloat16>(true, true);
      run_lookup<c10::Half>(true, true);
    }
  }
}
