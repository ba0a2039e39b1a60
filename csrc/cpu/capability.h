// The CPU kernels exist once per instruction set (kernels_default.cpp, kernels_avx2.cpp, kernels_avx512.cpp,
// kernels_avx512_bf16.cpp); dispatch.cpp picks one at run time from the CPU's features, as ATen's DispatchStub.
#pragma once

#include <cstdint>

#include "../ops.h"

#if defined(__x86_64__) && defined(__GNUC__)
#define FASTACT_CPU_X86 1
#endif

namespace fastact::cpu {

struct RangeKernels {
  // y = f(x) over memory offsets [begin, end).
  void (*forward)(const ElementwiseProblem& p, int64_t begin, int64_t end);
  // grad_input over [begin, end); if acc is not null, also adds d(loss)/d(param) of channel c into
  // acc[c - acc_base] (acc holds the compute type: float, or double for double inputs).
  void (*backward)(const ElementwiseProblem& p, int64_t begin, int64_t end, void* acc, int64_t acc_base);
  // y = table[bits of x] over [begin, end) for a 16-bit x (dispatch.cpp's lookup tables); null in the default
  // build (without vectors to collect the entries in, a table was never measured against the computed math).
  void (*lookup_forward)(const ElementwiseProblem& p, const uint16_t* table, int64_t begin, int64_t end);
  // grad_input = grad * table[bits of x] (table: the float derivative), likewise; no parameter gradient.
  void (*lookup_backward)(const ElementwiseProblem& p, const float* table, int64_t begin, int64_t end);
  // The same with the parameter gradient of one parameter value: pairs[2 b], pairs[2 b + 1] hold df/dx and
  // df/dparam at bits b; the sum of grad * df/dparam is added into acc[0] with the computed backward's bits.
  void (*lookup_backward_param)(const ElementwiseProblem& p, const float* pairs, int64_t begin, int64_t end,
                                float* acc);
  // The table lookup_backward_param reads, for a float problem with one parameter value: df/dx and
  // df/dparam (at grad = 1) of x[i] into pairs[2 i], pairs[2 i + 1], for i in [begin, end).
  void (*derivative_pairs)(const ElementwiseProblem& p, int64_t begin, int64_t end, float* pairs);
  // LeakyReLU over [begin, end) of a contiguous x, also writing the sign mask of x (bit i % 8 of mask[i / 8]:
  // x[i] > 0); begin is a multiple of kSignMaskUnit.
  void (*forward_with_sign_mask)(const ElementwiseProblem& p, uint8_t* mask, int64_t begin, int64_t end);
  // LeakyReLU's grad_input from grad and that mask (p.x unused), likewise.
  void (*backward_from_sign_mask)(const ElementwiseProblem& p, const uint8_t* mask, int64_t begin, int64_t end);
};

// The unit the sign-mask kernels' ranges are cut in: whole bytes of the mask, and 64-byte aligned outputs for
// non-temporal stores (at 8 bytes per element or fewer).
constexpr int64_t kSignMaskUnit = 64;

namespace DEFAULT { extern const RangeKernels kRangeKernels; }
#if defined(FASTACT_CPU_X86)
namespace AVX2 { extern const RangeKernels kRangeKernels; }
namespace AVX512 { extern const RangeKernels kRangeKernels; }
namespace AVX512_BF16 { extern const RangeKernels kRangeKernels; }
#endif

}  // namespace fastact::cpu
