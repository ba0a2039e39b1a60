// Float32 error of the computed CPU kernels (AVX2 build) against double references, in ulps of the
// reference: the worst and the mean over 4M inputs (half normal with sigma 4, half uniform on [-90, 30]).
// Build and run: bash benchmarks/cpu_cycles/build.sh && /tmp/fastact_accuracy
// The Swish reference takes z = beta x rounded as the kernel rounds it (that rounding alone is worth |z|
// ulps of exp(z)); f' is left out near its root at x = -1.2 (x in [-4, 0]), and results below 1e-30
// (subnormal intermediates) are skipped.
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>
#include "cpu/kernels.h"
using fastact::ActivationId;
static double sig(double z) { return z >= 0 ? 1 / (1 + std::exp(-z)) : std::exp(z) / (1 + std::exp(z)); }
static double ref_f(ActivationId id, double beta, double x) {
  if (id == ActivationId::Swish) return x * sig(double(float(float(beta) * float(x))));  // z as the kernel rounds it
  double sp = x > 30 ? x : std::log1p(std::exp(x));
  return x * std::tanh(sp);
}
static double ref_df(ActivationId id, double beta, double x) {
  if (id == ActivationId::Swish) { double z = float(float(beta) * float(x)); double s = sig(z); return s + z * s * (1 - s); }
  double sp = x > 30 ? x : std::log1p(std::exp(x));
  double c = std::cosh(sp);
  return std::tanh(sp) + x * sig(x) / (c * c);
}
static double ulps(float got, double want) {
  if (std::isnan(want)) return std::isnan(got) ? 0 : 1e9;
  if (std::fabs(want) < 1.1754944e-38) return 0;
  int e; std::frexp(want, &e);
  return std::fabs(got - want) / std::ldexp(1.0, e - 24);
}
int main() {
  const int64_t n = 1 << 22;
  std::vector<float> x(n), g(n, 1.0f), y(n);
  std::mt19937 rng(1);
  for (int64_t i = 0; i < n; ++i) {
    if (i % 2) x[i] = std::uniform_real_distribution<float>(-90.f, 30.f)(rng);
    else x[i] = std::normal_distribution<float>(0.f, 4.f)(rng);
  }
  const auto& kernels = fastact::cpu::CPU_CAPABILITY::kRangeKernels;
  struct Case { const char* name; ActivationId id; double beta; };
  for (Case c : {Case{"silu", ActivationId::Swish, 1.0}, Case{"swish1.3", ActivationId::Swish, 1.3},
                 Case{"mish", ActivationId::Mish, 0.0}}) {
    fastact::ElementwiseProblem p{};
    p.activation = c.id; p.dtype = c10::ScalarType::Float; p.numel = n; p.channels = 1; p.inner = n;
    p.x = x.data(); p.grad = g.data(); p.out = y.data(); p.param_scalar = c.beta; p.params_nonzero = c.beta != 0; p.params_at_most_one = c.beta <= 1;
    for (bool bwd : {false, true}) {
      bwd ? kernels.backward(p, 0, n, nullptr, 0) : kernels.forward(p, 0, n);
      double worst = 0, sum = 0; float at = 0; int64_t cnt = 0;
      for (int64_t i = 0; i < n; ++i) {
        double want = bwd ? ref_df(c.id, c.beta, x[i]) : ref_f(c.id, c.beta, x[i]);
        if (bwd && !(x[i] < -4 || x[i] > 0)) continue;  // f' has a root near -1.2: ulps there mean little
        if (std::fabs(want) < 1e-30) continue;  // subnormal intermediates
        double u = ulps(y[i], want);
        sum += u; ++cnt;
        if (u > worst) { worst = u; at = x[i]; }
      }
      std::printf("%-9s %s max %.3f ulp (at x=%.6g) mean %.4f\n", c.name, bwd ? "bwd" : "fwd", worst, at, sum / cnt);
    }
  }
}
