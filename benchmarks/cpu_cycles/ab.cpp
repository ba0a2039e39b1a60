// A/B of two source trees' AVX2 CPU kernels in one process, on a cache-resident buffer: base (a git revision,
// compiled into namespace fastact::cpu::AVX512, AVX2 code all the same) against new (the working tree, in
// AVX2). Build and run: bash benchmarks/cpu_cycles/ab.sh [REV] && /tmp/fastact_ab [--big | --tables | --tails]
//
// Separate runs of cycles.cpp drift by up to 17% on a shared VM (two states that last minutes), more than the
// changes they should show; here base and new alternate 40 times per row, each the minimum of 30 timed
// blocks, so both see the same state. The leaky rows (kernels a math change does not touch) are the control:
// new/base 1.000 +- 0.002.
#include <algorithm>
#include <cmath>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <random>
#include <thread>
#include <utility>
#include <vector>
#include "cpu/capability.h"
using fastact::ActivationId;
using fastact::ElementwiseProblem;
using fastact::cpu::RangeKernels;
// x and the incoming gradient (normal, sigma 3), an output, and the problem over them.
template <typename T>
struct Inputs {
  std::vector<T> x, g, y;
  ElementwiseProblem p{};
  Inputs(int64_t n, ActivationId id, c10::ScalarType dtype, double param) : x(n), g(n), y(n) {
    std::mt19937 rng(0);
    std::normal_distribution<float> normal(0.0f, 3.0f);
    for (int64_t i = 0; i < n; ++i) {
      x[i] = T(normal(rng));
      g[i] = T(normal(rng));
    }
    p.activation = id;
    p.dtype = dtype;
    p.numel = p.inner = n;
    p.channels = 1;
    p.x = x.data();
    p.grad = g.data();
    p.out = y.data();
    p.param_scalar = param;
    p.params_nonzero = param != 0;  // as cpu::forward sets these
    p.params_at_most_one = param <= 1;
  }
};

template <typename T>
double time_once(const RangeKernels& k, ElementwiseProblem& p, bool backward, bool param_grad, float* acc) {
  double best = 1e30;
  for (int block = 0; block < 30; ++block) {
    const auto start = std::chrono::steady_clock::now();
    for (int it = 0; it < 5; ++it) backward ? k.backward(p, 0, p.numel, param_grad ? acc : nullptr, 0) : k.forward(p, 0, p.numel);
    const std::chrono::duration<double> e = std::chrono::steady_clock::now() - start;
    best = std::min(best, e.count() / 5 / p.numel);
  }
  return best;
}
// The best time per element of base (first) and new (second), alternating for `rounds` rounds.
template <typename T>
std::pair<double, double> alternate(Inputs<T>& in, bool backward, bool param_grad, int rounds) {
  ElementwiseProblem& p = in.p;
  float acc = 0;
  if (param_grad) p.param_grad = &acc;
  double a = 1e30, b = 1e30;
  for (int r = 0; r < rounds; ++r) {
    a = std::min(a, time_once<T>(fastact::cpu::AVX512::kRangeKernels, p, backward, param_grad, &acc));
    b = std::min(b, time_once<T>(fastact::cpu::AVX2::kRangeKernels, p, backward, param_grad, &acc));
  }
  return {a, b};
}
template <typename T>
void row(const char* name, ActivationId id, c10::ScalarType dtype, double param, bool backward, bool param_grad = false) {
  Inputs<T> in(1 << 14, id, dtype, param);
  const auto [a, b] = alternate(in, backward, param_grad, 40);
  std::printf("%-12s %-9s %-3s base %6.3f new %6.3f ns/element  new/base %.3f\n", name,
              dtype == c10::ScalarType::Float ? "float32" : "bfloat16", backward ? "bwd" : "fwd", a * 1e9, b * 1e9, b / a);
}
// The same at 2^24 elements on two threads (each half of the range, as the extension splits it), outputs
// streamed as the extension streams outputs of that size: the memory-bound regime, beside a two-thread
// memcpy of the forward's bytes.
template <typename T>
double time_big(const RangeKernels& k, ElementwiseProblem& p, bool backward) {
  double best = 1e30;
  for (int rep = 0; rep < 3; ++rep) {
    const auto start = std::chrono::steady_clock::now();
    std::thread other([&] { backward ? k.backward(p, p.numel / 2, p.numel, nullptr, 0) : k.forward(p, p.numel / 2, p.numel); });
    backward ? k.backward(p, 0, p.numel / 2, nullptr, 0) : k.forward(p, 0, p.numel / 2);
    other.join();
    const std::chrono::duration<double> e = std::chrono::steady_clock::now() - start;
    best = std::min(best, e.count());
  }
  return best;
}
template <typename T>
void row_big(const char* name, ActivationId id, c10::ScalarType dtype, double param, bool backward) {
  constexpr int64_t n = 1 << 24;
  Inputs<T> in(n, id, dtype, param);
  ElementwiseProblem& p = in.p;
  p.stream_out = true;
  const std::vector<T>& x = in.x;
  std::vector<T> copy(n);
  double a = 1e30, b = 1e30, c = 1e30;
  for (int r = 0; r < 8; ++r) {
    a = std::min(a, time_big<T>(fastact::cpu::AVX512::kRangeKernels, p, backward));
    b = std::min(b, time_big<T>(fastact::cpu::AVX2::kRangeKernels, p, backward));
    const auto start = std::chrono::steady_clock::now();
    std::thread other([&] { std::memcpy(copy.data() + n / 2, x.data() + n / 2, n / 2 * sizeof(T)); });
    std::memcpy(copy.data(), x.data(), n / 2 * sizeof(T));
    other.join();
    c = std::min(c, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  const double traffic = backward ? 1.5 : 1.0;  // backward moves 3 tensors, a copy 2
  std::printf("%-12s %-9s %-3s 2^24 x2 threads: base %6.2f new %6.2f ms  new/base %.3f  x copy: base %.2f new %.2f\n",
              name, dtype == c10::ScalarType::Float ? "float32" : "bfloat16", backward ? "bwd" : "fwd", a * 1e3,
              b * 1e3, b / a, c * traffic / a, c * traffic / b);
}

// The 16-bit table kernels (dispatch.cpp's lookup tables): the forward, and the backward with and without the
// parameter gradient, on a cache-resident buffer, read with scalar loads (ElementwiseProblem::table_gathers is
// false; the AVX-512 builds' gathers are timed by dispatch.cpp's probe): the tables hold finite values (as for
// every x of moderate size).
// The forward at n elements: n = 2^14 on one thread, in cache; larger on two threads (each half of the range),
// streamed as the extension streams outputs of that size, the memory-bound regime.
template <typename T>
void row_table_forward(const char* name, c10::ScalarType dtype, int64_t n) {
  Inputs<T> in(n, ActivationId::Swish, dtype, 1.0);
  std::mt19937 rng(1);
  std::vector<uint16_t> table(65536 + 1);
  for (uint16_t& v : table) v = static_cast<uint16_t>(rng() & 0x3fff);  // finite bfloat16/float16 bits
  // x and y 64-byte aligned, as torch allocates them (the vector stores of a misaligned y split cache lines)
  std::vector<T> buffers(2 * n + 64);
  T* x = reinterpret_cast<T*>((reinterpret_cast<std::uintptr_t>(buffers.data()) + 63) & ~std::uintptr_t(63));
  std::copy(in.x.begin(), in.x.end(), x);
  ElementwiseProblem& p = in.p;
  p.x = x;
  p.out = x + n;
  p.table_gathers = false;
  const bool big = n > (1 << 14);
  p.stream_out = big;
  auto time_table = [&](const RangeKernels& k) {
    double best = 1e30;
    for (int block = 0; block < (big ? 3 : 30); ++block) {
      const auto start = std::chrono::steady_clock::now();
      for (int it = 0; it < (big ? 1 : 5); ++it) {
        if (big) {
          std::thread other([&] { k.lookup_forward(p, table.data(), n / 2, n); });
          k.lookup_forward(p, table.data(), 0, n / 2);
          other.join();
        } else {
          k.lookup_forward(p, table.data(), 0, n);
        }
      }
      const std::chrono::duration<double> e = std::chrono::steady_clock::now() - start;
      best = std::min(best, e.count() / (big ? 1 : 5) / n);
    }
    return best;
  };
  auto time_computed = [&](const RangeKernels& k) {  // the new tree's computed forward, in cache, for comparison
    double best = 1e30;
    for (int block = 0; block < 30; ++block) {
      const auto start = std::chrono::steady_clock::now();
      for (int it = 0; it < 5; ++it) k.forward(p, 0, n);
      const std::chrono::duration<double> e = std::chrono::steady_clock::now() - start;
      best = std::min(best, e.count() / 5 / n);
    }
    return best;
  };
  double a = 1e30, b = 1e30, c = 1e30;
  for (int r = 0; r < (big ? 8 : 40); ++r) {
    a = std::min(a, time_table(fastact::cpu::AVX512::kRangeKernels));
    b = std::min(b, time_table(fastact::cpu::AVX2::kRangeKernels));
    if (!big) c = std::min(c, time_computed(fastact::cpu::AVX2::kRangeKernels));
  }
  std::printf("%-12s %-9s table fwd %s base %6.3f new %6.3f ns/element  new/base %.3f", name,
              dtype == c10::ScalarType::Half ? "float16" : "bfloat16", big ? "2^24 x2 threads" : "2^14",
              a * 1e9, b * 1e9, b / a);
  big ? std::printf("\n") : std::printf("  (new computed %.3f)\n", c * 1e9);
}

template <typename T>
void row_table(const char* name, c10::ScalarType dtype, bool param_grad) {
  Inputs<T> in(1 << 14, ActivationId::Swish, dtype, 1.3);
  ElementwiseProblem& p = in.p;
  p.table_gathers = false;
  float acc = 0, beta = 1.3f;
  p.param = &beta;
  if (param_grad) p.param_grad = &acc;
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> derivative(0.05f, 1.1f);
  std::vector<float> table(2 * 65536 + 2);
  for (float& v : table) v = derivative(rng);
  auto time_table = [&](const RangeKernels& k) {
    double best = 1e30;
    for (int block = 0; block < 30; ++block) {
      const auto start = std::chrono::steady_clock::now();
      for (int it = 0; it < 5; ++it) {
        param_grad ? k.lookup_backward_param(p, table.data(), 0, p.numel, &acc)
                   : k.lookup_backward(p, table.data(), 0, p.numel);
      }
      const std::chrono::duration<double> e = std::chrono::steady_clock::now() - start;
      best = std::min(best, e.count() / 5 / p.numel);
    }
    return best;
  };
  auto time_computed = [&](const RangeKernels& k) {  // the new tree's computed backward, for comparison
    double best = 1e30;
    for (int block = 0; block < 30; ++block) {
      const auto start = std::chrono::steady_clock::now();
      for (int it = 0; it < 5; ++it) k.backward(p, 0, p.numel, param_grad ? &acc : nullptr, 0);
      const std::chrono::duration<double> e = std::chrono::steady_clock::now() - start;
      best = std::min(best, e.count() / 5 / p.numel);
    }
    return best;
  };
  double a = 1e30, b = 1e30, c = 1e30;
  for (int r = 0; r < 40; ++r) {
    a = std::min(a, time_table(fastact::cpu::AVX512::kRangeKernels));
    b = std::min(b, time_table(fastact::cpu::AVX2::kRangeKernels));
    c = std::min(c, time_computed(fastact::cpu::AVX2::kRangeKernels));
  }
  std::printf("%-12s %-9s table bwd base %6.3f new %6.3f ns/element  new/base %.3f  (new computed %.3f)\n", name,
              dtype == c10::ScalarType::Half ? "float16" : "bfloat16", a * 1e9, b * 1e9, b / a, c * 1e9);
}

// The far tails (|beta x| > 87), where the kernels take their general path: every x the same value, float32,
// on a cache-resident buffer.
void row_tail(const char* name, ActivationId id, double param, float value, bool backward, bool param_grad) {
  Inputs<float> in(1 << 14, id, c10::ScalarType::Float, param);
  std::fill(in.x.begin(), in.x.end(), value);
  const auto [a, b] = alternate(in, backward, param_grad, 20);
  std::printf("%-12s x = %-6g %-9s base %7.3f new %7.3f ns/element  new/base %.3f\n", name, value,
              backward ? (param_grad ? "bwd+dbeta" : "bwd") : "fwd", a * 1e9, b * 1e9, b / a);
}

int main(int argc, char** argv) {
  if (argc > 1 && std::strcmp(argv[1], "--tails") == 0) {
    for (float value : {-100.0f, 100.0f, -1e30f, INFINITY}) {
      row_tail("swish1.3", ActivationId::Swish, 1.3, value, false, false);
      row_tail("swish1.3", ActivationId::Swish, 1.3, value, true, false);
      row_tail("swish1.3", ActivationId::Swish, 1.3, value, true, true);
      row_tail("mish", ActivationId::Mish, 0.0, value, false, false);
      row_tail("mish", ActivationId::Mish, 0.0, value, true, false);
    }
    return 0;
  }
  if (argc > 1 && std::strcmp(argv[1], "--tables") == 0) {
    row_table_forward<c10::BFloat16>("swish", c10::ScalarType::BFloat16, 1 << 14);
    row_table_forward<c10::Half>("swish", c10::ScalarType::Half, 1 << 14);
    row_table_forward<c10::BFloat16>("swish", c10::ScalarType::BFloat16, 1 << 24);
    row_table<c10::BFloat16>("swish", c10::ScalarType::BFloat16, false);
    row_table<c10::Half>("swish", c10::ScalarType::Half, false);
    row_table<c10::BFloat16>("swish+dbeta", c10::ScalarType::BFloat16, true);
    row_table<c10::Half>("swish+dbeta", c10::ScalarType::Half, true);
    return 0;
  }
  if (argc > 1 && std::strcmp(argv[1], "--big") == 0) {
    for (bool bwd : {false, true}) {
      row_big<float>("silu", ActivationId::Swish, c10::ScalarType::Float, 1.0, bwd);
      row_big<float>("swish1.3", ActivationId::Swish, c10::ScalarType::Float, 1.3, bwd);
      row_big<float>("mish", ActivationId::Mish, c10::ScalarType::Float, 0.0, bwd);
      row_big<c10::BFloat16>("mish", ActivationId::Mish, c10::ScalarType::BFloat16, 0.0, bwd);
      row_big<float>("leaky", ActivationId::Leaky, c10::ScalarType::Float, 0.5, bwd);
      row_big<c10::BFloat16>("leaky", ActivationId::Leaky, c10::ScalarType::BFloat16, 0.5, bwd);
    }
    return 0;
  }
  for (bool bwd : {false, true}) {
    row<float>("silu", ActivationId::Swish, c10::ScalarType::Float, 1.0, bwd);
    row<float>("swish1.3", ActivationId::Swish, c10::ScalarType::Float, 1.3, bwd);
    row<float>("mish", ActivationId::Mish, c10::ScalarType::Float, 0.0, bwd);
    row<c10::BFloat16>("silu", ActivationId::Swish, c10::ScalarType::BFloat16, 1.0, bwd);
    row<c10::BFloat16>("swish1.3", ActivationId::Swish, c10::ScalarType::BFloat16, 1.3, bwd);
    row<c10::BFloat16>("mish", ActivationId::Mish, c10::ScalarType::BFloat16, 0.0, bwd);
    row<float>("leaky", ActivationId::Leaky, c10::ScalarType::Float, 0.5, bwd);
    row<c10::BFloat16>("leaky", ActivationId::Leaky, c10::ScalarType::BFloat16, 0.5, bwd);
    if (bwd) {
      row<float>("swish+dbeta", ActivationId::Swish, c10::ScalarType::Float, 1.3, true, true);
      row<c10::BFloat16>("swish+dbeta", ActivationId::Swish, c10::ScalarType::BFloat16, 1.3, true, true);
    }
  }
}
