// The CPU kernels, compiled once per instruction set: each kernels_<capability>.cpp defines CPU_CAPABILITY
// (and enables the instruction set) and then includes this file. Everything here lives in
// fastact::cpu::CPU_CAPABILITY, like ATen's at::vec::CPU_CAPABILITY, so the variants never share a symbol.
//
// The kernels see raw pointers over a range [begin, end) of a dense tensor in memory order; threading and
// the deterministic reduction of parameter gradients are in dispatch.cpp, compiled once.
#pragma once

#ifndef CPU_CAPABILITY
#error "define CPU_CAPABILITY before including csrc/cpu/kernels.h"
#endif

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include <ATen/OpMathType.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#define FASTACT_WITH_VECTORIZED
#include "../activations.h"
#include "../ops.h"
#include "capability.h"

#define FASTACT_ALWAYS_INLINE_LAMBDA __attribute__((always_inline))

namespace fastact::cpu::CPU_CAPABILITY {
namespace {

using at::vec::Vectorized;

// A block is one Vectorized<scalar_t> of elements, computed as kParts vectors of the compute type
// (half types are widened to two float vectors, as ATen does).
template <typename scalar_t>
struct Block {
  using opmath_t = at::opmath_type<scalar_t>;
  using CVec = Vectorized<opmath_t>;
  static constexpr bool kReduced = !std::is_same_v<scalar_t, opmath_t>;
  static constexpr int kParts = kReduced ? 2 : 1;
  static constexpr int64_t kSize = Vectorized<scalar_t>::size();

  FASTACT_HOST_DEVICE static void load(const scalar_t* ptr, int64_t count, CVec (&out)[kParts]) {
    if constexpr (kReduced) {
      auto [lo, hi] = at::vec::convert_to_float<scalar_t>(Vectorized<scalar_t>::loadu(ptr, count));
      out[0] = lo;
      out[1] = hi;
    } else {
      out[0] = CVec::loadu(ptr, count);
    }
  }

  FASTACT_HOST_DEVICE static void store(scalar_t* ptr, int64_t count, const CVec (&in)[kParts]) {
    if constexpr (kReduced) {
      at::vec::convert_from_float<scalar_t>(in[0], in[1]).store(ptr, count);
    } else {
      in[0].store(ptr, count);
    }
  }

  // How many of a block's first `count` elements fall in part j.
  FASTACT_HOST_DEVICE static int64_t part_count(int64_t count, int j) {
    return std::clamp<int64_t>(count - j * CVec::size(), 0, CVec::size());
  }
};

// Calls block(offset, count) over [0, n) in blocks of B::kSize: full blocks two at a time (independent work
// for the out-of-order core, and count is a constant there, so loads and stores take their full-width path),
// then the partial tail.
template <typename B, typename BlockFn>
FASTACT_HOST_DEVICE void for_each_block(int64_t n, BlockFn&& block) {
  int64_t i = 0;
  for (; i + 2 * B::kSize <= n; i += 2 * B::kSize) {
    block(i, B::kSize);
    block(i + B::kSize, B::kSize);
  }
  for (; i < n; i += B::kSize) block(i, std::min(B::kSize, n - i));
}

// One run of n elements. Lanewise: element k uses param[k] (channels_last, where the channel is the
// fastest-moving index); otherwise the whole run uses param[0].
template <typename Op, typename scalar_t, bool kLanewise>
void forward_run(const scalar_t* x, scalar_t* y, int64_t n, const at::opmath_type<scalar_t>* param) {
  using B = Block<scalar_t>;
  using CVec = typename B::CVec;
  const CVec broadcast(param[0]);
  for_each_block<B>(n, [&](int64_t i, int64_t count) FASTACT_ALWAYS_INLINE_LAMBDA {
    CVec xv[B::kParts], yv[B::kParts];
    B::load(x + i, count, xv);
    for (int j = 0; j < B::kParts; ++j) {
      const CVec p =
          kLanewise ? CVec::loadu(param + i + j * CVec::size(), B::part_count(count, j)) : broadcast;
      yv[j] = Op::forward(xv[j], p);
    }
    B::store(y + i, count, yv);
  });
}

// Backward of one run. With kParamGrad, the parameter gradient is added to acc: lanewise into acc[k] for
// element k, otherwise the run's sum into acc[0].
template <typename Op, typename scalar_t, bool kLanewise, bool kParamGrad>
void backward_run(const scalar_t* grad, const scalar_t* x, scalar_t* grad_input, int64_t n,
                  const at::opmath_type<scalar_t>* param, at::opmath_type<scalar_t>* acc) {
  using B = Block<scalar_t>;
  using CVec = typename B::CVec;
  const CVec broadcast(param[0]);
  CVec sum(0);
  for_each_block<B>(n, [&](int64_t i, int64_t count) FASTACT_ALWAYS_INLINE_LAMBDA {
    CVec gv[B::kParts], xv[B::kParts], gxv[B::kParts];
    B::load(grad + i, count, gv);
    B::load(x + i, count, xv);
    for (int j = 0; j < B::kParts; ++j) {
      const int64_t part = B::part_count(count, j);
      const int64_t offset = i + j * CVec::size();
      const CVec p = kLanewise ? CVec::loadu(param + offset, part) : broadcast;
      CVec gp;
      Op::backward(gv[j], xv[j], p, gxv[j], gp);
      if constexpr (kParamGrad) {
        if constexpr (kLanewise) {
          (CVec::loadu(acc + offset, part) + gp).store(acc + offset, part);
        } else if (part == CVec::size()) {
          sum = sum + gp;
        } else {
          sum = CVec::set(sum, sum + gp, part);  // lanes past the end of the run stay out
        }
      }
    }
    B::store(grad_input + i, count, gxv);
  });
  if constexpr (kParamGrad && !kLanewise) {
    acc[0] += at::vec::vec_reduce_all<at::opmath_type<scalar_t>>(
        [](const CVec& a, const CVec& b) { return a + b; }, sum);
  }
}

// Walks [begin, end) in runs that share one parameter (or, with inner == 1, that run across channels) and
// calls fn(offset, length, channel, lanewise).
template <typename Fn>
void for_each_run(const ElementwiseProblem& p, int64_t begin, int64_t end, Fn&& fn) {
  if (p.channels == 1) {
    fn(begin, end - begin, int64_t(0), false);
    return;
  }
  for (int64_t i = begin; i < end;) {
    const int64_t row = i / p.inner;
    const int64_t channel = row % p.channels;
    if (p.inner == 1) {
      const int64_t length = std::min(end - i, p.channels - channel);
      fn(i, length, channel, true);
      i += length;
    } else {
      const int64_t length = std::min(end, (row + 1) * p.inner) - i;
      fn(i, length, channel, false);
      i += length;
    }
  }
}

template <typename Op, typename scalar_t>
void forward_range_typed(const ElementwiseProblem& p, int64_t begin, int64_t end) {
  using opmath_t = at::opmath_type<scalar_t>;
  const auto* x = static_cast<const scalar_t*>(p.x);
  auto* y = static_cast<scalar_t*>(p.out);
  const opmath_t scalar_param = static_cast<opmath_t>(p.param_scalar);
  const opmath_t* param = p.param ? static_cast<const opmath_t*>(p.param) : &scalar_param;
  for_each_run(p, begin, end, [&](int64_t offset, int64_t length, int64_t channel, bool lanewise) {
    if (lanewise) {
      forward_run<Op, scalar_t, true>(x + offset, y + offset, length, param + channel);
    } else {
      forward_run<Op, scalar_t, false>(x + offset, y + offset, length, param + channel);
    }
  });
}

template <typename Op, typename scalar_t>
void backward_range_typed(const ElementwiseProblem& p, int64_t begin, int64_t end, void* acc_void,
                          int64_t acc_base) {
  using opmath_t = at::opmath_type<scalar_t>;
  const auto* grad = static_cast<const scalar_t*>(p.grad);
  const auto* x = static_cast<const scalar_t*>(p.x);
  auto* grad_input = static_cast<scalar_t*>(p.out);
  const opmath_t scalar_param = static_cast<opmath_t>(p.param_scalar);
  const opmath_t* param = p.param ? static_cast<const opmath_t*>(p.param) : &scalar_param;
  auto* acc = static_cast<opmath_t*>(acc_void);
  for_each_run(p, begin, end, [&](int64_t offset, int64_t length, int64_t channel, bool lanewise) {
    const scalar_t* g = grad + offset;
    const scalar_t* xs = x + offset;
    scalar_t* gx = grad_input + offset;
    if (acc == nullptr) {
      if (lanewise) {
        backward_run<Op, scalar_t, true, false>(g, xs, gx, length, param + channel, nullptr);
      } else {
        backward_run<Op, scalar_t, false, false>(g, xs, gx, length, param + channel, nullptr);
      }
    } else if (lanewise) {
      backward_run<Op, scalar_t, true, true>(g, xs, gx, length, param + channel, acc + channel - acc_base);
    } else {
      backward_run<Op, scalar_t, false, true>(g, xs, gx, length, param + channel, acc + channel - acc_base);
    }
  });
}

template <typename Fn>
void dispatch(const ElementwiseProblem& p, Fn&& fn) {
  auto with_op = [&](auto scalar_tag) {
    using scalar_t = decltype(scalar_tag);
    switch (p.activation) {
#define FASTACT_CASE(F) \
  case ActivationId::F: return fn(F##Op{}, scalar_t{});
      FASTACT_FOR_EACH_FUNCTOR(FASTACT_CASE)
#undef FASTACT_CASE
    }
  };
  switch (p.dtype) {
    case c10::ScalarType::Float: return with_op(float{});
    case c10::ScalarType::Double: return with_op(double{});
    case c10::ScalarType::Half: return with_op(c10::Half{});
    case c10::ScalarType::BFloat16: return with_op(c10::BFloat16{});
    default: return;  // ops.cpp admits only these four
  }
}

void forward_range(const ElementwiseProblem& p, int64_t begin, int64_t end) {
  dispatch(p, [&](auto op, auto scalar) {
    forward_range_typed<decltype(op), decltype(scalar)>(p, begin, end);
  });
}

void backward_range(const ElementwiseProblem& p, int64_t begin, int64_t end, void* acc, int64_t acc_base) {
  dispatch(p, [&](auto op, auto scalar) {
    backward_range_typed<decltype(op), decltype(scalar)>(p, begin, end, acc, acc_base);
  });
}

}  // namespace

// The entry the dispatcher picks at run time.
const RangeKernels kRangeKernels{&forward_range, &backward_range};

}  // namespace fastact::cpu::CPU_CAPABILITY
