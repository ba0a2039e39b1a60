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
#include <cstring>
#include <tuple>
#include <type_traits>

#include <ATen/OpMathType.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#define FASTACT_WITH_VECTORIZED
#include "../activations.h"
#include "../ops.h"
#include "capability.h"

#define FASTACT_ALWAYS_INLINE_LAMBDA __attribute__((always_inline))

namespace fastact::cpu::CPU_CAPABILITY {
namespace {

using at::vec::Vectorized;

// Vectors of the compute type per block: enough independent chains to hide the latency of the math (see
// VecPack). Measured on Zen 3 (AVX2) with benchmarks/cpu_cycles, cycles per 8 floats, silu forward: 19.1 with
// 1, 12.5 with 4 (benchmarks/results/cpu/zen3/README.md). On Zen 1 (ab.cpp) 6 and 8 took up to 1.4x the time
// of 4 in the backwards (16 vector registers: the chains spill), and 2 up to 1.4x in bfloat16.
constexpr int kVecsPerBlock = 4;

// bfloat16 <-> float where the lane order inside a block does not matter as long as the store undoes the
// load (every path but per-element parameters). Interleaving with zeros widens 16 bfloat16 in two in-lane
// shuffles and one packus narrows them back into the same order; ATen's order-keeping conversion takes five
// shuffles, which on AVX2 cost more than the rest of a leaky_relu.
#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
constexpr bool kUnorderedBFloat16 = true;
#if defined(CPU_CAPABILITY_AVX512)
#if defined(__AVX512BF16__)
// The AVX512-BF16 build splits even elements from odd ones instead (a shift and a mask), the order its
// narrowing below puts back with one permute.
FASTACT_HOST_DEVICE void widen_bf16_unordered(__m512i v, Vectorized<float>& a, Vectorized<float>& b) {
  a = _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
  b = _mm512_castsi512_ps(_mm512_and_si512(v, _mm512_set1_epi32(static_cast<int>(0xffff0000u))));
}
// The 16-bit values of 32 elements as the 32-bit indices of the lanes widen_bf16_unordered puts them in.
FASTACT_HOST_DEVICE void unordered_indices(__m512i v, __m512i& a, __m512i& b) {
  a = _mm512_and_si512(v, _mm512_set1_epi32(0xffff));
  b = _mm512_srli_epi32(v, 16);
}
#else
FASTACT_HOST_DEVICE void widen_bf16_unordered(__m512i v, Vectorized<float>& a, Vectorized<float>& b) {
  a = _mm512_castsi512_ps(_mm512_unpacklo_epi16(_mm512_setzero_si512(), v));
  b = _mm512_castsi512_ps(_mm512_unpackhi_epi16(_mm512_setzero_si512(), v));
}
FASTACT_HOST_DEVICE void unordered_indices(__m512i v, __m512i& a, __m512i& b) {
  a = _mm512_unpacklo_epi16(v, _mm512_setzero_si512());
  b = _mm512_unpackhi_epi16(v, _mm512_setzero_si512());
}
#endif
// Round to nearest even, in the low 16 bits of each 32-bit lane. A NaN becomes the quiet NaN 0x7fc0
// (rounding could carry its payload into the sign bit).
FASTACT_HOST_DEVICE __m512i round_to_bf16_bits(__m512 f) {
  const __m512i bits = _mm512_castps_si512(f);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  const __m512i rounded =
      _mm512_srli_epi32(_mm512_add_epi32(bits, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))), 16);
  return _mm512_mask_blend_epi32(_mm512_cmp_ps_mask(f, f, _CMP_UNORD_Q), rounded, _mm512_set1_epi32(0x7fc0));
}
#if defined(__AVX512BF16__)
// AVX512-BF16 rounds to nearest even in one instruction, but flushes subnormals to zero and keeps a NaN's
// payload: vectors holding either (rare in data) take round_to_bf16_bits, so every build gives the same bits.
constexpr int kBF16Special = 0x01 | 0x20 | 0x80;  // fpclass: quiet NaN, subnormal, signaling NaN
FASTACT_HOST_DEVICE bool bf16_special(__m512 f) { return _mm512_fpclass_ps_mask(f, kBF16Special) != 0; }
FASTACT_HOST_DEVICE __m512i narrow_bf16_unordered(const Vectorized<float>& a, const Vectorized<float>& b) {
  if (!(bf16_special(a) | bf16_special(b))) [[likely]] {
    // a's 16 (the even elements) in the low half, b's in the high half; the permute interleaves them.
    const __m512i halves = reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(b, a));
    const __m512i interleave = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7,
                                                22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    return _mm512_permutexvar_epi16(interleave, halves);
  }
  return _mm512_or_si512(round_to_bf16_bits(a), _mm512_slli_epi32(round_to_bf16_bits(b), 16));
}
// 16 floats rounded to bfloat16, in order.
FASTACT_HOST_DEVICE __m256i narrow_bf16_ordered(__m512 f) {
  if (!bf16_special(f)) [[likely]] return reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(f));
  return _mm512_cvtepi32_epi16(round_to_bf16_bits(f));
}
#else
FASTACT_HOST_DEVICE __m512i narrow_bf16_unordered(const Vectorized<float>& a, const Vectorized<float>& b) {
  return _mm512_packus_epi32(round_to_bf16_bits(a), round_to_bf16_bits(b));
}
FASTACT_HOST_DEVICE __m256i narrow_bf16_ordered(__m512 f) { return _mm512_cvtepi32_epi16(round_to_bf16_bits(f)); }
#endif
#else
// AVX2 splits even elements from odd ones (a byte shuffle and a mask), and the narrowing puts them back with
// one 16-bit blend. Moving 16 bits within a lane is done by byte shifts and shuffles, not bit shifts: Zen 1
// runs 256-bit bit shifts on one pipe only, at one per two cycles, and they bounded these conversions.
FASTACT_HOST_DEVICE void widen_bf16_unordered(__m256i v, Vectorized<float>& a, Vectorized<float>& b) {
  const __m256i low_to_high = _mm256_setr_epi8(-1, -1, 0, 1, -1, -1, 4, 5, -1, -1, 8, 9, -1, -1, 12, 13,
                                               -1, -1, 0, 1, -1, -1, 4, 5, -1, -1, 8, 9, -1, -1, 12, 13);
  a = _mm256_castsi256_ps(_mm256_shuffle_epi8(v, low_to_high));
  b = _mm256_castsi256_ps(_mm256_and_si256(v, _mm256_set1_epi32(static_cast<int>(0xffff0000u))));
}
// f's bits plus the bias that rounds its high 16 bits to nearest even. Right for every non-NaN float, and for
// NaNs whose low 16 bits are zero (a payload there could carry into the sign, or leave an infinity).
FASTACT_HOST_DEVICE __m256i add_bf16_rounding(__m256 f) {
  const __m256i bits = _mm256_castps_si256(f);
  // Bit 0 of each lane after a 2-byte shift of the 128-bit lane is bit 16 of the lane: the low bit kept.
  const __m256i lsb = _mm256_and_si256(_mm256_srli_si256(bits, 2), _mm256_set1_epi32(1));
  return _mm256_add_epi32(bits, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff)));
}
// NaN lanes become the quiet NaN 0x7fc00000, which add_bf16_rounding keeps a NaN.
FASTACT_HOST_DEVICE __m256 quiet_nans(__m256 f) {
  return _mm256_blendv_ps(f, _mm256_castsi256_ps(_mm256_set1_epi32(0x7fc00000)), _mm256_cmp_ps(f, f, _CMP_UNORD_Q));
}
// Rounds to nearest even, the inverse of widen_bf16_unordered; a NaN becomes the quiet NaN 0x7fc0. NaNs are
// rare in data, so one compare tests both vectors for them and the blends run only then.
// Whether a[k] or b[k] is a NaN, for some k.
FASTACT_HOST_DEVICE bool any_nan(__m256 a, __m256 b) {
  const __m256 unordered = _mm256_cmp_ps(a, b, _CMP_UNORD_Q);
  return !_mm256_testz_ps(unordered, unordered);
}
// narrow_bf16_unordered where no lane of a or b is a NaN.
FASTACT_HOST_DEVICE __m256i narrow_bf16_unordered_no_nan(__m256 a, __m256 b) {
  // The high halves: a's moved down by a byte shift (its lanes' high halves, now garbage, are b's).
  return _mm256_blend_epi16(_mm256_srli_si256(add_bf16_rounding(a), 2), add_bf16_rounding(b), 0xaa);
}
FASTACT_HOST_DEVICE __m256i narrow_bf16_unordered(Vectorized<float> a, Vectorized<float> b) {
  if (any_nan(a, b)) [[unlikely]] {
    a = quiet_nans(a);
    b = quiet_nans(b);
  }
  return narrow_bf16_unordered_no_nan(a, b);
}
#endif
#elif defined(FASTACT_GENERIC_VECTORIZED)
// ATen's generic conversions go through c10's scalar ones element by element (a bfloat16 silu forward took
// 3.5x its float32 time). Here, as in the AVX-512 build, each 32-bit word's two elements are split into the
// even and the odd one (a shift, a mask) and put back by the narrowing, on GCC's vectors of 32-bit lanes.
constexpr bool kUnorderedBFloat16 = true;
FASTACT_HOST_DEVICE void widen_bf16_unordered(const Vectorized<c10::BFloat16>& v, Vectorized<float>& a,
                                              Vectorized<float>& b) {
  Vectorized<float> words;
  static_assert(sizeof(words) == sizeof(v));
  std::memcpy(static_cast<void*>(&words), &v, sizeof(words));
  a = fa_lanes<uint32_t>([](auto w) FASTACT_HOST_DEVICE_LAMBDA { return w << 16; }, words);
  b = fa_lanes<uint32_t>([](auto w) FASTACT_HOST_DEVICE_LAMBDA { return w & 0xffff0000u; }, words);
}
// Round to nearest even in the high 16 bits of each 32-bit lane; a NaN becomes the quiet NaN 0x7fc0, as c10's.
template <typename C>
FASTACT_HOST_DEVICE C add_bf16_rounding(C bits) {
  const C rounded = bits + 0x7fffu + ((bits >> 16) & 1u);
  // (unsigned lanes: -1 / 0 as a mask of the same type)
  const C nan = (C)((bits & 0x7fffffffu) > 0x7f800000u);
  return (nan & 0x7fc00000u) | (~nan & rounded);
}
FASTACT_HOST_DEVICE Vectorized<c10::BFloat16> narrow_bf16_unordered(const Vectorized<float>& a,
                                                                    const Vectorized<float>& b) {
  const Vectorized<float> words = fa_lanes<uint32_t>(
      [](auto even, auto odd) FASTACT_HOST_DEVICE_LAMBDA {
        return (add_bf16_rounding(even) >> 16) | (add_bf16_rounding(odd) & 0xffff0000u);
      },
      a, b);
  Vectorized<c10::BFloat16> out;
  static_assert(sizeof(out) == sizeof(words));
  std::memcpy(static_cast<void*>(&out), &words, sizeof(out));
  return out;
}
#else
constexpr bool kUnorderedBFloat16 = false;
#endif

// Non-temporal stores, for outputs too large to stay in the cache (dispatch.cpp decides): written straight to
// memory, a cache line costs one transfer instead of two (a plain store first reads the line it overwrites).
// They need an address aligned to the vector's width.
#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
constexpr bool kCanStream = true;
constexpr std::uintptr_t kStreamAlignment = sizeof(Vectorized<float>);
// A run streams if its aligning head is at most 1/kMaxStreamHeadShare of it: per-channel runs (e.g. 1024
// elements of NCHW 32x32) stream too, short ones (7x7) keep plain stores.
constexpr int64_t kMaxStreamHeadShare = 8;
#if defined(CPU_CAPABILITY_AVX512)
FASTACT_HOST_DEVICE void stream_vector(float* p, const Vectorized<float>& v) { _mm512_stream_ps(p, v); }
FASTACT_HOST_DEVICE void stream_vector(double* p, const Vectorized<double>& v) { _mm512_stream_pd(p, v); }
template <typename S>  // the 16-bit types
FASTACT_HOST_DEVICE void stream_vector(S* p, const Vectorized<S>& v) {
  _mm512_stream_si512(reinterpret_cast<__m512i*>(p), __m512i(v));
}
#else
FASTACT_HOST_DEVICE void stream_vector(float* p, const Vectorized<float>& v) { _mm256_stream_ps(p, v); }
FASTACT_HOST_DEVICE void stream_vector(double* p, const Vectorized<double>& v) { _mm256_stream_pd(p, v); }
template <typename S>
FASTACT_HOST_DEVICE void stream_vector(S* p, const Vectorized<S>& v) {
  _mm256_stream_si256(reinterpret_cast<__m256i*>(p), __m256i(v));
}
#endif
// Non-temporal stores are weakly ordered: each range fences them before its thread reports it done.
FASTACT_HOST_DEVICE void fa_store_fence() { _mm_sfence(); }
#else
constexpr bool kCanStream = false;
constexpr std::uintptr_t kStreamAlignment = 1;
constexpr int64_t kMaxStreamHeadShare = 1;
template <typename S>
FASTACT_HOST_DEVICE void stream_vector(S* p, const Vectorized<S>& v) { v.store(p); }
FASTACT_HOST_DEVICE void fa_store_fence() {}
#endif

// Streamed runs (outputs past the cache, so inputs from memory too) also prefetch their inputs this far ahead
// (benchmarks/cpu_cycles/ab.cpp --big: 2^24 elements, two threads). On Zen 1 (AVX2 build) 8 KiB took
// LeakyReLU's memory-bound kernels 0.86-0.98 of the time (bfloat16 backward 0.82-0.89) and the compute-bound
// SiLU ones 0.95-1.00; 1 and 2 KiB were mixed (up to 1.06). On an Ice Lake VM (AVX-512 build) 8 KiB took
// 0.75-0.93 (SiLU and Mish 0.81-0.88, bfloat16 LeakyReLU 0.75-0.85; the bfloat16 Mish backward, bound by the
// core, 1.00), 4 KiB about the same, 16 KiB 0.87-0.99 for the backwards. (ab.cpp's in-cache rows of float32
// SiLU and the bfloat16 Mish backward moved by up to 1.2x there with no change to their code: GCC's inlining
// across the file shifts with any change to it. The extension's own in-cache calls showed no such step.)
#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
constexpr int64_t kPrefetchBytes = 8192;
#else
constexpr int64_t kPrefetchBytes = 0;
#endif
template <typename B>
FASTACT_HOST_DEVICE void prefetch_block_ahead(const typename B::scalar_type* p) {
  if constexpr (kPrefetchBytes > 0) {
    constexpr int64_t kBlockBytes = B::kSize * sizeof(*p);
    // A prefetch never faults, also past the end of the input.
    fa_static_for<(kBlockBytes + 63) / 64>([&](auto line) FASTACT_ALWAYS_INLINE_LAMBDA {
      __builtin_prefetch(reinterpret_cast<const char*>(p) + kPrefetchBytes + 64 * line, 0, 3);
    });
  }
}

template <typename S>
FASTACT_HOST_DEVICE void store_full(S* p, const Vectorized<S>& v, bool stream) {
  if (stream) {
    stream_vector(p, v);
  } else {
    v.store(p);
  }
}

// A block is kVecsPerBlock vectors of the compute type (float for the half types, which are widened as ATen
// does; at::vec::convert_to_float gives two float vectors per Vectorized<scalar_t>). kKeepOrder: lane k of
// the compute vectors is element k (needed to line elements up with per-element parameters). A partial
// block always keeps the order, so that its lanes past the end are known.
template <typename scalar_t, bool kKeepOrder>
struct Block {
  using scalar_type = scalar_t;
  using opmath_t = at::opmath_type<scalar_t>;
  using CVec = Vectorized<opmath_t>;
  using Pack = VecPack<opmath_t, kVecsPerBlock>;
  static constexpr bool kReduced = !std::is_same_v<scalar_t, opmath_t>;
  static constexpr bool kUnordered =
      kUnorderedBFloat16 && !kKeepOrder && std::is_same_v<scalar_t, c10::BFloat16>;
  static constexpr int64_t kVecSize = CVec::size();
  static constexpr int64_t kSize = kVecsPerBlock * kVecSize;

  // How many of a block's first `count` elements fall in vector j.
  FASTACT_HOST_DEVICE static int64_t part_count(int64_t count, int j) {
    return std::clamp<int64_t>(count - j * kVecSize, 0, kVecSize);
  }

  FASTACT_HOST_DEVICE static Pack load(const scalar_t* ptr, int64_t count) {
    Pack out;
    if constexpr (kReduced) {
      fa_static_for<kVecsPerBlock / 2>([&](auto k) FASTACT_ALWAYS_INLINE_LAMBDA {
        constexpr int j = 2 * k;
        const int64_t n = part_count(count, j) + part_count(count, j + 1);
        const auto raw = Vectorized<scalar_t>::loadu(ptr + j * kVecSize, n);
        if constexpr (kUnordered) {
          if (count == kSize) return widen_bf16_unordered(raw, out.v[j], out.v[j + 1]);
        }
        auto [lo, hi] = at::vec::convert_to_float<scalar_t>(raw);
        out.v[j] = lo;
        out.v[j + 1] = hi;
      });
    } else {
      fa_static_for<kVecsPerBlock>([&](auto j) FASTACT_ALWAYS_INLINE_LAMBDA {
        out.v[j] = CVec::loadu(ptr + j * kVecSize, part_count(count, j));
      });
    }
    return out;
  }

  // With stream (full blocks only, ptr aligned to kStreamAlignment), the stores are non-temporal.
  FASTACT_HOST_DEVICE static void store(scalar_t* ptr, int64_t count, const Pack& in, bool stream) {
    if constexpr (kReduced) {
      fa_static_for<kVecsPerBlock / 2>([&](auto k) FASTACT_ALWAYS_INLINE_LAMBDA {
        constexpr int j = 2 * k;
        const int64_t n = part_count(count, j) + part_count(count, j + 1);
        if (count == kSize) {
          Vectorized<scalar_t> out;
          if constexpr (kUnordered) {
            out = Vectorized<scalar_t>(narrow_bf16_unordered(in.v[j], in.v[j + 1]));
          } else {
            out = at::vec::convert_from_float<scalar_t>(in.v[j], in.v[j + 1]);
          }
          return store_full(ptr + j * kVecSize, out, stream);
        }
        if (n > 0) at::vec::convert_from_float<scalar_t>(in.v[j], in.v[j + 1]).store(ptr + j * kVecSize, n);
      });
    } else {
      fa_static_for<kVecsPerBlock>([&](auto j) FASTACT_ALWAYS_INLINE_LAMBDA {
        if (count == kSize) return store_full(ptr + j * kVecSize, in.v[j], stream);
        const int64_t n = part_count(count, j);
        if (n > 0) in.v[j].store(ptr + j * kVecSize, n);
      });
    }
  }

  // The parameter of the block at offset i of a run: lanewise, param[i + k] for element k; else param[0].
  // (Built in place every block: a Pack held across iterations is copied through the stack in halves,
  // which stalls store forwarding.)
  template <bool kLanewise>
  FASTACT_HOST_DEVICE static Pack load_param(const opmath_t* param, int64_t i, int64_t count) {
    if constexpr (kLanewise) {
      return Pack::generate([&](auto j) FASTACT_HOST_DEVICE_LAMBDA {
        return CVec::loadu(param + i + j * kVecSize, part_count(count, j));
      });
    } else {
      return Pack(*param);
    }
  }
};

// Calls block(offset, count, stream) over [0, n): a partial head block that brings `out` to the alignment of
// non-temporal stores, full blocks (count is a constant there, so loads and stores take their full-width
// path), then the partial tail. With stream (and an instruction set that has non-temporal stores), the full
// blocks' stores are non-temporal. The head is split off whether or not the run streams, so that a parameter
// gradient's sum (whose lanes follow the blocks) has the same bits either way.
template <typename B, typename BlockFn>
FASTACT_HOST_DEVICE void for_each_block(int64_t n, const typename B::scalar_type* out, bool stream,
                                        BlockFn&& block) {
  int64_t i = 0;
  const auto address = reinterpret_cast<std::uintptr_t>(out);
  const int64_t head = (-address & (kStreamAlignment - 1)) / sizeof(*out);
  // Short runs keep plain stores and no head: a partial head block, and the write-combining of too few lines,
  // would cost more than streaming saves.
  const bool aligns = kCanStream && address % sizeof(*out) == 0 && n >= 4 * B::kSize &&
                      head * kMaxStreamHeadShare <= n;
  stream = stream && aligns;
  if (aligns) {
    i = head;
    if (i > 0) block(0, i, false);
  }
  for (; i + B::kSize <= n; i += B::kSize) block(i, B::kSize, stream);
  if (i < n) block(i, n - i, false);
}

// What a forward does after each block besides storing it: nothing, or (LeakyReLU's sign mask)
// after(i, count, loaded block of x).
struct NothingAfterBlock {
  template <typename Pack>
  FASTACT_HOST_DEVICE void operator()(int64_t, int64_t, const Pack&) const {}
};

// One run of n elements. Lanewise: element k uses param[k] (channels_last, where the channel is the
// fastest-moving index); otherwise the whole run uses param[0].
template <typename Op, typename scalar_t, bool kLanewise, typename AfterBlock = NothingAfterBlock>
void forward_run(const scalar_t* x, scalar_t* y, int64_t n, const at::opmath_type<scalar_t>* param, bool stream,
                 const AfterBlock& after_block = {}) {
  using B = Block<scalar_t, kLanewise>;
  for_each_block<B>(n, y, stream, [&](int64_t i, int64_t count, bool stream_block) FASTACT_ALWAYS_INLINE_LAMBDA {
    if (stream_block) prefetch_block_ahead<B>(x + i);
    const auto p = B::template load_param<kLanewise>(param, i, count);
    const auto xs = B::load(x + i, count);
    B::store(y + i, count, Op::forward(xs, p), stream_block);
    after_block(i, count, xs);
  });
}

// Backward of one run, the gradients of each block from block_grads(i, count, gx, gp). With kParamGrad, the
// parameter gradient is added to acc: lanewise into acc[k] for element k, otherwise the run's sum into acc[0],
// in an order that depends only on n and the block's lanes (so the computed and looked-up backwards agree).
template <typename B, bool kLanewise, bool kParamGrad, typename BlockGradsFn>
void backward_run_blocks(typename B::scalar_type* grad_input, int64_t n, typename B::opmath_t* acc, bool stream,
                         BlockGradsFn&& block_grads) {
  using CVec = typename B::CVec;
  using Pack = typename B::Pack;
  Pack sum(0);
  for_each_block<B>(n, grad_input, stream,
                    [&](int64_t i, int64_t count, bool stream_block) FASTACT_ALWAYS_INLINE_LAMBDA {
    Pack gx, gp;
    block_grads(i, count, gx, gp);
    B::store(grad_input + i, count, gx, stream_block);
    if constexpr (kParamGrad) {
      fa_static_for<kVecsPerBlock>([&](auto j) FASTACT_ALWAYS_INLINE_LAMBDA {
        const int64_t part = B::part_count(count, j);
        if constexpr (kLanewise) {
          const int64_t offset = i + j * B::kVecSize;
          if (part > 0) (CVec::loadu(acc + offset, part) + gp.v[j]).store(acc + offset, part);
        } else if (part == B::kVecSize) {
          sum.v[j] = sum.v[j] + gp.v[j];
        } else {
          sum.v[j] = CVec::set(sum.v[j], sum.v[j] + gp.v[j], part);  // lanes past the end stay out
        }
      });
    }
  });
  if constexpr (kParamGrad && !kLanewise) {
    CVec total(0);
    fa_static_for<kVecsPerBlock>([&](auto j) FASTACT_ALWAYS_INLINE_LAMBDA { total = total + sum.v[j]; });
    acc[0] += at::vec::vec_reduce_all<typename B::opmath_t>([](const CVec& a, const CVec& b) { return a + b; },
                                                            total);
  }
}

template <typename Op, typename scalar_t, bool kLanewise, bool kParamGrad>
void backward_run(const scalar_t* grad, const scalar_t* x, scalar_t* grad_input, int64_t n,
                  const at::opmath_type<scalar_t>* param, at::opmath_type<scalar_t>* acc, bool stream) {
  using B = Block<scalar_t, kLanewise>;
  using Pack = typename B::Pack;
  backward_run_blocks<B, kLanewise, kParamGrad>(
      grad_input, n, acc, stream, [&](int64_t i, int64_t count, Pack& gx, Pack& gp) FASTACT_ALWAYS_INLINE_LAMBDA {
        if (stream) {
          prefetch_block_ahead<B>(grad + i);
          prefetch_block_ahead<B>(x + i);
        }
        Op::backward(B::load(grad + i, count), B::load(x + i, count), B::template load_param<kLanewise>(param, i, count),
                     gx, gp);
      });
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

// after_block(offset, count) follows each block of count elements at memory offset `offset`.
template <typename Op, typename scalar_t, typename AfterBlock = NothingAfterBlock>
void forward_range_typed(const ElementwiseProblem& p, int64_t begin, int64_t end, const AfterBlock& after_block = {}) {
  using UnitOp = typename UnitParamForward<Op>::type;
  using NonzeroOp = typename NonzeroParamForward<Op>::type;
  if constexpr (!std::is_same_v<UnitOp, NonzeroOp>) {
    if (p.params_nonzero && p.params_at_most_one) {
      return forward_range_typed<UnitOp, scalar_t>(p, begin, end, after_block);
    }
  }
  if constexpr (!std::is_same_v<NonzeroOp, Op>) {
    if (p.params_nonzero) return forward_range_typed<NonzeroOp, scalar_t>(p, begin, end, after_block);
  }
  using opmath_t = at::opmath_type<scalar_t>;
  const auto* x = static_cast<const scalar_t*>(p.x);
  auto* y = static_cast<scalar_t*>(p.out);
  const opmath_t scalar_param = static_cast<opmath_t>(p.param_scalar);
  const opmath_t* param = p.param ? static_cast<const opmath_t*>(p.param) : &scalar_param;
  for_each_run(p, begin, end, [&](int64_t offset, int64_t length, int64_t channel, bool lanewise) {
    auto after = [&](int64_t i, int64_t count, const auto& xs) FASTACT_ALWAYS_INLINE_LAMBDA {
      after_block(offset + i, count, xs);
    };
    if (lanewise) {
      forward_run<Op, scalar_t, true>(x + offset, y + offset, length, param + channel, p.stream_out, after);
    } else {
      forward_run<Op, scalar_t, false>(x + offset, y + offset, length, param + channel, p.stream_out, after);
    }
  });
  if (p.stream_out) fa_store_fence();
}

template <typename Op, typename scalar_t>
void backward_range_typed(const ElementwiseProblem& p, int64_t begin, int64_t end, void* acc_void,
                          int64_t acc_base) {
  using NonzeroOp = typename NonzeroParamBackward<Op>::type;
  if constexpr (!std::is_same_v<NonzeroOp, Op>) {
    if (p.params_nonzero) return backward_range_typed<NonzeroOp, scalar_t>(p, begin, end, acc_void, acc_base);
  }
  using opmath_t = at::opmath_type<scalar_t>;
  const auto* grad = static_cast<const scalar_t*>(p.grad);
  const auto* x = static_cast<const scalar_t*>(p.x);
  auto* grad_input = static_cast<scalar_t*>(p.out);
  const opmath_t scalar_param = static_cast<opmath_t>(p.param_scalar);
  const opmath_t* param = p.param ? static_cast<const opmath_t*>(p.param) : &scalar_param;
  auto* acc = static_cast<opmath_t*>(acc_void);
  const bool stream = p.stream_out;
  for_each_run(p, begin, end, [&](int64_t offset, int64_t length, int64_t channel, bool lanewise) {
    const scalar_t* g = grad + offset;
    const scalar_t* xs = x + offset;
    scalar_t* gx = grad_input + offset;
    const opmath_t* pc = param + channel;
    if (acc == nullptr) {
      if (lanewise) {
        backward_run<Op, scalar_t, true, false>(g, xs, gx, length, pc, nullptr, stream);
      } else {
        backward_run<Op, scalar_t, false, false>(g, xs, gx, length, pc, nullptr, stream);
      }
    } else if (lanewise) {
      backward_run<Op, scalar_t, true, true>(g, xs, gx, length, pc, acc + channel - acc_base, stream);
    } else {
      backward_run<Op, scalar_t, false, true>(g, xs, gx, length, pc, acc + channel - acc_base, stream);
    }
  });
  if (stream) fa_store_fence();
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

// ---------------------------------------------------------------------------------------------------------
// Lookup-table kernels (dispatch.cpp builds the tables and decides when to use them). Each instruction set
// supplies how entries are read into vectors (FloatRegister, kLookupStep elements per step, lookup_bits,
// scaled_lookup, lookup_pairs, interleave_pairs, store_bits); the loops around them are shared. Their template
// argument kGather picks AVX-512 gathers or scalar loads (the AVX2 build always loads; see the AVX-512 section).

// table[x[k]] for k < 4, joined in a general register. The indices come two to a 32-bit load (6 loads per 4
// entries, not 8: the loads are the bound), and the empty asm keeps the join in general registers: without it
// GCC's SLP vectorizer rebuilt the AVX-512 build's joins with vector inserts and shuffles, which all queue on
// one port (Ice Lake VM, one core, in cache, table forward: AVX-512 build 0.47 ns per element before, 0.31
// after; AVX2 build 0.33 and 0.30; benchmarks/cpu_cycles/ab.cpp --tables).
FASTACT_HOST_DEVICE uint64_t lookup_four(const uint16_t* table, const uint16_t* x) {
  uint32_t first, second;
  std::memcpy(&first, x, sizeof(first));
  std::memcpy(&second, x + 2, sizeof(second));
  uint64_t entries = uint64_t(table[first & 0xffff]) | uint64_t(table[first >> 16]) << 16 |
                     uint64_t(table[second & 0xffff]) << 32 | uint64_t(table[second >> 16]) << 48;
  asm("" : "+r"(entries));
  return entries;
}

#if defined(CPU_CAPABILITY_AVX2)
// The tables are read with scalar loads, 16 entries collected in a vector: on Zen 3 that takes 1.1-1.5x less
// time than AVX2 gathers, on Zen 1 (EPYC 7001) 1.7-2.1x less at 2^24 on 2 threads (benchmarks/cpu_cycles), and
// gathers are slow on many Intel cores too since the GDS microcode mitigation. The vector lets outputs past
// the cache be streamed.
using FloatRegister = __m256;
using BitsRegister = __m256i;  // kLookupStep 16-bit values
constexpr int64_t kLookupStep = 16;

FASTACT_HOST_DEVICE void store_bits(void* p, __m256i v, bool stream) {
  auto* dst = static_cast<__m256i*>(p);
  stream ? _mm256_stream_si256(dst, v) : _mm256_storeu_si256(dst, v);
}

// table[x[k]] for k < kLookupStep: the forward's output bits, in order. Four entries are joined in a
// general register and moved into the vector 64 bits at a time: a vector load of entries stored one by one
// to the stack cannot take them from the stores (no store forwarding) and waits. On Zen 1, per 8 bfloat16 in
// L1 (benchmarks/cpu_cycles): 10.4 cycles through the stack, 7.8 this way. (The derivatives of the backward
// are 32-bit, two per register: that way was slower there, 10.4 against 9.2, so they keep the stack.)
template <bool kGather>
FASTACT_HOST_DEVICE __m256i lookup_bits(const uint16_t* table, const uint16_t* x) {
  __m128i halves[2];
  fa_static_for<2>([&](auto h) FASTACT_ALWAYS_INLINE_LAMBDA {
    const auto* xh = x + 8 * h;
    halves[h] = _mm_insert_epi64(_mm_cvtsi64_si128(static_cast<long long>(lookup_four(table, xh))),
                                 static_cast<long long>(lookup_four(table, xh + 4)), 1);
  });
  return _mm256_set_m128i(halves[1], halves[0]);
}

// grad[k] * table[x[k]] for k < kLookupStep, rounded once to scalar_t, in order, into bits; false (bits unset)
// where a product is a NaN: a NaN entry (computed by the caller, dispatch.cpp's mark_exp_tails) or a NaN grad.
template <bool kGather, typename scalar_t>
FASTACT_HOST_DEVICE bool scaled_lookup(const float* table, const uint16_t* x, const scalar_t* grad, __m256i& bits) {
  alignas(32) float derivative[16];
  if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
    // grad is widened as widen_bf16_unordered widens it (even elements, then odd); the derivatives are laid
    // out the same way, and the narrowing restores the order.
    fa_static_for<16>([&](auto k) FASTACT_ALWAYS_INLINE_LAMBDA {
      constexpr int element = ((k & 7) << 1) | ((k & 8) >> 3);
      derivative[k] = table[x[element]];
    });
    Vectorized<float> g_even, g_odd;
    widen_bf16_unordered(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(grad)), g_even, g_odd);
    const __m256 even = _mm256_mul_ps(g_even, _mm256_load_ps(derivative));
    const __m256 odd = _mm256_mul_ps(g_odd, _mm256_load_ps(derivative + 8));
    if (any_nan(even, odd)) [[unlikely]] return false;  // the narrowing's own NaN test, moved here
    bits = narrow_bf16_unordered_no_nan(even, odd);
    return true;
  } else {  // Half: F16C converts 8 in order
    fa_static_for<16>([&](auto k) FASTACT_ALWAYS_INLINE_LAMBDA { derivative[k] = table[x[k]]; });
    __m256 products[2];
    fa_static_for<2>([&](auto k) FASTACT_ALWAYS_INLINE_LAMBDA {
      const __m256 g = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(grad + 8 * k)));
      products[k] = _mm256_mul_ps(g, _mm256_load_ps(derivative + 8 * k));
    });
    if (any_nan(products[0], products[1])) [[unlikely]] return false;
    bits = _mm256_set_m128i(_mm256_cvtps_ph(products[1], _MM_FROUND_TO_NEAREST_INT),
                            _mm256_cvtps_ph(products[0], _MM_FROUND_TO_NEAREST_INT));
    return true;
  }
}

// Slot t of a block's derivative pairs feeds lane pair_lane(t): shuffle_ps(a, b, 0x88) of two vectors of 4
// pairs gives their first members (a0 a1 b0 b1 | a2 a3 b2 b3), 0xdd their second.
constexpr int pair_lane(int t) { return (t & ~7) | (t & 1) | ((t & 2) << 1) | ((t & 4) >> 1); }
// The element in lane k of a block: a full bfloat16 block is widened as widen_bf16_unordered widens it, so
// the two vectors of each 16 elements hold the even and the odd elements; otherwise in order.
constexpr int block_element(int k, bool unordered) {
  return unordered ? (k & ~15) | ((k & 7) << 1) | ((k & 8) >> 3) : k;
}

// df/dx and df/dparam of the block at x (count elements) in the block's lanes, read as one 64-bit pair per
// element through a stack array (on Zen 3 a little faster than assembling the vectors with vmovq/vmovhpd).
template <bool kGather, typename B>
FASTACT_HOST_DEVICE void lookup_pairs(const float* pairs, const uint16_t* x, int64_t count, typename B::Pack& dfdx,
                                      typename B::Pack& dfdp) {
  static_assert(B::kVecSize == 8, "the pair shuffle below is written for 8-lane vectors");
  alignas(32) uint64_t slots[B::kSize];
  if (count == B::kSize) {
    fa_static_for<B::kSize>([&](auto t) FASTACT_ALWAYS_INLINE_LAMBDA {
      constexpr int element = block_element(pair_lane(t), B::kUnordered);
      std::memcpy(&slots[t], pairs + 2 * x[element], sizeof(uint64_t));
    });
  } else {  // in order; lanes past count hold derivatives that are never stored or summed
    for (int t = 0; t < B::kSize; ++t) {
      const int element = pair_lane(t);
      std::memcpy(&slots[t], pairs + 2 * (element < count ? x[element] : 0), sizeof(uint64_t));
    }
  }
  fa_static_for<kVecsPerBlock>([&](auto j) FASTACT_ALWAYS_INLINE_LAMBDA {
    const __m256 a = _mm256_load_ps(reinterpret_cast<const float*>(slots + 8 * j));
    const __m256 b = _mm256_load_ps(reinterpret_cast<const float*>(slots + 8 * j + 4));
    dfdx.v[j] = _mm256_shuffle_ps(a, b, 0x88);
    dfdp.v[j] = _mm256_shuffle_ps(a, b, 0xdd);
  });
}

// (a[k], b[k]) pairs of one vector, in order: pairs 0-3 into first, 4-7 into second.
FASTACT_HOST_DEVICE void interleave_pairs(__m256 a, __m256 b, __m256& first, __m256& second) {
  const __m256 lo = _mm256_unpacklo_ps(a, b);  // pairs 0 1 | 4 5
  const __m256 hi = _mm256_unpackhi_ps(a, b);  // pairs 2 3 | 6 7
  first = _mm256_permute2f128_ps(lo, hi, 0x20);
  second = _mm256_permute2f128_ps(lo, hi, 0x31);
}
#elif defined(CPU_CAPABILITY_AVX512)
// The tables are read with AVX-512 gathers where they are fast. On a Sapphire Rapids-class Xeon (not slowed by
// the GDS mitigation), one core, bfloat16 in cache, median ns per element (benchmarks/cpu_cycles): forward 0.33
// against 0.72-0.79 computed and 0.59 for the AVX2 build's scalar loads; backward 0.41 against 0.85-0.99 and
// 0.69; backward with a parameter gradient 0.58 against 0.93 and 1.00. The GDS ("Downfall") microcode
// mitigation makes gathers many times slower on the Xeons it covers (Skylake to Ice Lake): on an Ice Lake VM
// the bfloat16 SiLU forward read its table in 92 ms at 2^24 (2 threads) with gathers, against 8 ms computed.
// There (kGather false) the entries are read with scalar loads, joined in general registers as the AVX2 build
// joins them (Ice Lake VM, one core, in cache: forward 0.31 ns per element, backward 0.43, backward with a
// parameter gradient 0.44, against 0.29-0.32, 0.44-0.50 and 0.51-0.60 computed; gathers 0.55-0.62 in cache,
// ~10x slower at 2^24); dispatch.cpp times both ways
// once per process and sets ElementwiseProblem::table_gathers. The bits are the same.
using FloatRegister = __m512;
using BitsRegister = __m512i;  // kLookupStep 16-bit values
constexpr int64_t kLookupStep = 32;

FASTACT_HOST_DEVICE void store_bits(void* p, __m512i v, bool stream) {
  auto* dst = static_cast<__m512i*>(p);
  stream ? _mm512_stream_si512(dst, v) : _mm512_storeu_si512(dst, v);
}

// The 16-bit x of 16 elements as 32-bit indices, in order.
FASTACT_HOST_DEVICE __m512i load_indices(const uint16_t* x) {
  return _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x)));
}
FASTACT_HOST_DEVICE __m512i join_halves(__m256i lo, __m256i hi) {
  return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
}

// table[x[k]] for k < kLookupStep, in order. Each gather reads 32 bits at table + x, so the table has one
// entry of padding (dispatch.cpp); the high half of each lane is dropped.
template <bool kGather>
FASTACT_HOST_DEVICE __m512i lookup_bits(const uint16_t* table, const uint16_t* x) {
  if constexpr (!kGather) {
    auto four = [&](int k) FASTACT_ALWAYS_INLINE_LAMBDA {
      return static_cast<long long>(lookup_four(table, x + 4 * k));
    };
    return _mm512_set_epi64(four(7), four(6), four(5), four(4), four(3), four(2), four(1), four(0));
  }
  __m256i halves[2];
  fa_static_for<2>([&](auto h) FASTACT_ALWAYS_INLINE_LAMBDA {
    halves[h] = _mm512_cvtepi32_epi16(_mm512_i32gather_epi32(load_indices(x + 16 * h), table, 2));
  });
  return join_halves(halves[0], halves[1]);
}

// grad[k] * table[x[k]] for k < kLookupStep, rounded once to scalar_t (to nearest even), in order, into bits;
// false (bits unset) where a product is a NaN: a NaN entry (computed by the caller, dispatch.cpp's
// mark_exp_tails) or a NaN grad.
template <bool kGather, typename scalar_t>
FASTACT_HOST_DEVICE bool scaled_lookup(const float* table, const uint16_t* x, const scalar_t* grad, __m512i& bits) {
  __m512 products[2];
  fa_static_for<2>([&](auto h) FASTACT_ALWAYS_INLINE_LAMBDA {
    __m512 derivative;
    if constexpr (kGather) {
      derivative = _mm512_i32gather_ps(load_indices(x + 16 * h), table, 4);
    } else {  // two entries joined in each general register, as lookup_four joins four (0.43 ns per element
              // against 0.50 through a stack array, whose vector load cannot take the 16 stores' values)
      auto two = [&](int k) FASTACT_ALWAYS_INLINE_LAMBDA {
        uint32_t indices, first, second;
        std::memcpy(&indices, x + 16 * h + k, sizeof(indices));
        std::memcpy(&first, table + (indices & 0xffff), sizeof(first));
        std::memcpy(&second, table + (indices >> 16), sizeof(second));
        uint64_t entries = first | uint64_t(second) << 32;
        asm("" : "+r"(entries));
        return static_cast<long long>(entries);
      };
      derivative = _mm512_castsi512_ps(
          _mm512_set_epi64(two(14), two(12), two(10), two(8), two(6), two(4), two(2), two(0)));
    }
    const __m256i g = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(grad + 16 * h));
    const __m512 g_float = std::is_same_v<scalar_t, c10::BFloat16>
                               ? _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(g), 16))
                               : _mm512_cvtph_ps(g);
    products[h] = _mm512_mul_ps(g_float, derivative);
  });
  if ((_mm512_cmp_ps_mask(products[0], products[0], _CMP_UNORD_Q) |
       _mm512_cmp_ps_mask(products[1], products[1], _CMP_UNORD_Q)) != 0) [[unlikely]] {
    return false;
  }
  __m256i halves[2];
  fa_static_for<2>([&](auto h) FASTACT_ALWAYS_INLINE_LAMBDA {
    if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
      halves[h] = narrow_bf16_ordered(products[h]);
    } else {
      halves[h] = _mm512_cvtps_ph(products[h], _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    }
  });
  bits = join_halves(halves[0], halves[1]);
  return true;
}

// The element of a full bfloat16 block (of 32) in lane t of its vector h (0: a, 1: b) as widen_bf16_unordered
// widens it: with AVX512-BF16 a holds the even elements and b the odd; without, each 128-bit lane L of a holds
// elements 8 L to 8 L + 3 and of b 8 L + 4 to 8 L + 7 (unpacklo/hi_epi16).
constexpr int unordered_element(int h, int t) {
#if defined(__AVX512BF16__)
  return 2 * t + h;
#else
  return 8 * (t / 4) + 4 * h + t % 4;
#endif
}

// df/dx and df/dparam of the block at x (count elements) in the block's lanes: the indices of a full
// bfloat16 block are widened as widen_bf16_unordered widens its values, all others in order. One 64-bit
// gather per 8 pairs (half the loads of gathering the two floats apart: 0.41-0.57 against 0.63-0.85 ns per
// element), then the pairs of 16 lanes split into their first and second members. Read with scalar loads, a
// full block takes each index from x itself (not from the index vector through the stack, which took 0.72 ns
// per element against 0.52 this way, on an Ice Lake VM, in cache, one core).
template <bool kGather, typename B>
FASTACT_HOST_DEVICE void lookup_pairs(const float* pairs, const uint16_t* x, int64_t count, typename B::Pack& dfdx,
                                      typename B::Pack& dfdp) {
  static_assert(B::kVecSize == 16 && kVecsPerBlock % 2 == 0, "two vectors per 32 elements below");
  const __m512i first = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i second = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
  auto split = [&](int j, __m512 a, __m512 b) FASTACT_ALWAYS_INLINE_LAMBDA {
    dfdx.v[j] = _mm512_permutex2var_ps(a, first, b);
    dfdp.v[j] = _mm512_permutex2var_ps(a, second, b);
  };
  auto gather = [&](int j, __m512i index) FASTACT_ALWAYS_INLINE_LAMBDA {
    if constexpr (kGather) {
      split(j, _mm512_castsi512_ps(_mm512_i32gather_epi64(_mm512_castsi512_si256(index), pairs, 8)),
            _mm512_castsi512_ps(_mm512_i32gather_epi64(_mm512_extracti64x4_epi64(index, 1), pairs, 8)));
    } else {  // the 16 indices through the stack, one 64-bit load per pair
      alignas(64) uint32_t offsets[16];
      alignas(64) uint64_t entries[16];
      _mm512_store_si512(offsets, index);
      fa_static_for<16>([&](auto k) FASTACT_ALWAYS_INLINE_LAMBDA {
        std::memcpy(&entries[k], pairs + 2 * std::size_t(offsets[k]), sizeof(uint64_t));
      });
      split(j, _mm512_castsi512_ps(_mm512_load_si512(entries)), _mm512_castsi512_ps(_mm512_load_si512(entries + 8)));
    }
  };
  // Scalar loads of a full block: pair t of vector j + h read for the element element(h, t) of bits.
  auto load = [&](int j, const uint16_t* bits, auto element) FASTACT_ALWAYS_INLINE_LAMBDA {
    fa_static_for<2>([&](auto h) FASTACT_ALWAYS_INLINE_LAMBDA {
      alignas(64) uint64_t entries[16];
      fa_static_for<16>([&](auto t) FASTACT_ALWAYS_INLINE_LAMBDA {
        std::memcpy(&entries[t], pairs + 2 * std::size_t(bits[element(h, t)]), sizeof(uint64_t));
      });
      split(j + h, _mm512_castsi512_ps(_mm512_load_si512(entries)), _mm512_castsi512_ps(_mm512_load_si512(entries + 8)));
    });
  };
  fa_static_for<kVecsPerBlock / 2>([&](auto k) FASTACT_ALWAYS_INLINE_LAMBDA {
    constexpr int j = 2 * k;
    const uint16_t* bits = x + 16 * j;
    if (count == B::kSize) {
      if constexpr (!kGather) {
        if constexpr (B::kUnordered) {
          load(j, bits, [](int h, int t) { return unordered_element(h, t); });
        } else {
          load(j, bits, [](int h, int t) { return 16 * h + t; });
        }
      } else if constexpr (B::kUnordered) {
        __m512i lo, hi;
        unordered_indices(_mm512_loadu_si512(bits), lo, hi);
        gather(j, lo);
        gather(j + 1, hi);
      } else {
        gather(j, load_indices(bits));
        gather(j + 1, load_indices(bits + 16));
      }
    } else {  // in order; lanes past count read entry 0, and are never stored or summed
      fa_static_for<2>([&](auto h) FASTACT_ALWAYS_INLINE_LAMBDA {
        const int64_t part = B::part_count(count, j + h);
        const __mmask16 lanes = part >= 16 ? __mmask16(0xffff) : __mmask16((1u << part) - 1);
        gather(j + h, _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(lanes, bits + 16 * h)));
      });
    }
  });
}

// (a[k], b[k]) pairs of one vector, in order: pairs 0-7 into first, 8-15 into second.
FASTACT_HOST_DEVICE void interleave_pairs(__m512 a, __m512 b, __m512& first, __m512& second) {
  // unpacklo/hi interleave within 128-bit lanes: lo holds pairs 0 1 | 4 5 | 8 9 | 12 13, hi 2 3 | 6 7 | ...
  const __m512 lo = _mm512_unpacklo_ps(a, b), hi = _mm512_unpackhi_ps(a, b);
  first = _mm512_permutex2var_ps(lo, _mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23), hi);
  second = _mm512_permutex2var_ps(lo, _mm512_setr_epi32(8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31), hi);
}
#endif

#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
// Calls one(i) over a head that brings out + i to the alignment of non-temporal stores (when streaming),
// step(i, stream) for every full kLookupStep elements, and one(i) over the tail. Inlined: called, it holds the
// lambdas' captures in memory, which a vector store (it may alias anything) forces to reload every step (the
// AVX2 table forward took 13.2 cycles per 8 bfloat16 on Zen 1 so, 10.4 inlined).
template <typename T, typename StepFn, typename OneFn>
[[gnu::always_inline]] inline void for_each_step(int64_t n, const T* out, bool stream, StepFn&& step, OneFn&& one) {
  int64_t i = 0;
  if (stream) {
    for (; i < n && reinterpret_cast<std::uintptr_t>(out + i) % kStreamAlignment != 0; ++i) one(i);
  }
  if (stream) {  // two loops, so that step's stream flag is a constant (a test per step: 1-5% in cache)
    for (; i + kLookupStep <= n; i += kLookupStep) step(i, true);
  } else {
    for (; i + kLookupStep <= n; i += kLookupStep) step(i, false);
  }
  for (; i < n; ++i) one(i);
  if (stream) fa_store_fence();
}

// The 16-bit input of one step of the table kernels, prefetched 8 KiB ahead (streamed calls, both builds).
// AVX-512 build, Ice Lake VM, bfloat16 forward at 2^24, two threads: 0.80-0.90 of the time (4-16 KiB alike);
// in cache, with step's stream flag a constant, 0.98-1.02.
FASTACT_HOST_DEVICE void prefetch_step_ahead(const void* p) {
  constexpr int64_t kAheadBytes = 8192;
  fa_static_for<(kLookupStep * 2 + 63) / 64>([&](auto line) FASTACT_ALWAYS_INLINE_LAMBDA {
    __builtin_prefetch(static_cast<const char*>(p) + kAheadBytes + 64 * line, 0, 3);
  });
}

// fn(std::bool_constant<kGather>) with the problem's way of reading tables (only the AVX-512 build gathers).
template <typename Fn>
[[gnu::always_inline]] inline void with_table_reads(const ElementwiseProblem& p, Fn&& fn) {
#if defined(CPU_CAPABILITY_AVX512)
  if (p.table_gathers) return fn(std::true_type{});
#endif
  fn(std::false_type{});
}

// y = table[x] for 16-bit x. Bits in, bits out: any 16-bit type.
void lookup_forward(const ElementwiseProblem& p, const uint16_t* table, int64_t begin, int64_t end) {
  const auto* x = static_cast<const uint16_t*>(p.x) + begin;
  auto* y = static_cast<uint16_t*>(p.out) + begin;
  with_table_reads(p, [&](auto gather) {
    for_each_step(
        end - begin, y, p.stream_out,
        [&](int64_t i, bool stream) FASTACT_ALWAYS_INLINE_LAMBDA {
          if (stream) prefetch_step_ahead(x + i);
          store_bits(y + i, lookup_bits<decltype(gather)::value>(table, x + i), stream);
        },
        [&](int64_t i) { y[i] = table[x[i]]; });
  });
}

// grad_input = grad * table[x] (the float derivative, looked up by the bits of x), rounded once to the 16-bit
// type: the computed backward's float product and rounding, so the same bits. Where a product is a NaN (the
// table's NaN entries, dispatch.cpp's mark_exp_tails, and NaN grads), the computed kernel does that step.
template <bool kGather, typename scalar_t>
void lookup_backward_typed(const ElementwiseProblem& p, const float* table, int64_t begin, int64_t end) {
  const auto* x = static_cast<const uint16_t*>(p.x) + begin;
  const auto* grad = static_cast<const scalar_t*>(p.grad) + begin;
  auto* out = static_cast<scalar_t*>(p.out) + begin;
  for_each_step(
      end - begin, out, p.stream_out,
      [&](int64_t i, bool stream) FASTACT_ALWAYS_INLINE_LAMBDA {
        if (stream) {
          prefetch_step_ahead(grad + i);
          prefetch_step_ahead(x + i);
        }
        BitsRegister bits;
        if (scaled_lookup<kGather>(table, x + i, grad + i, bits)) [[likely]] {
          store_bits(out + i, bits, stream);
        } else {
          backward_range(p, begin + i, begin + i + kLookupStep, nullptr, 0);
        }
      },
      [&](int64_t i) {
        const float product = static_cast<float>(grad[i]) * table[x[i]];
        if (std::isnan(product)) {
          backward_range(p, begin + i, begin + i + 1, nullptr, 0);
        } else {
          out[i] = scalar_t(product);
        }
      });
}

void lookup_backward(const ElementwiseProblem& p, const float* table, int64_t begin, int64_t end) {
  with_table_reads(p, [&](auto gather) {
    if (p.dtype == c10::ScalarType::BFloat16) {
      lookup_backward_typed<decltype(gather)::value, c10::BFloat16>(p, table, begin, end);
    } else {
      lookup_backward_typed<decltype(gather)::value, c10::Half>(p, table, begin, end);
    }
  });
}

// Whether any lane of the pack is a NaN.
template <typename Pack>
FASTACT_HOST_DEVICE bool any_nan(const Pack& v) {
#if defined(CPU_CAPABILITY_AVX512)
  unsigned lanes = 0;
  fa_static_for<Pack::kVecs>([&](auto j) FASTACT_ALWAYS_INLINE_LAMBDA {
    lanes |= _mm512_cmp_ps_mask(v.v[j], v.v[j], _CMP_UNORD_Q);
  });
  return lanes != 0;
#else
  static_assert(Pack::kVecs % 2 == 0, "one comparison per two vectors below");
  __m256 unordered = _mm256_setzero_ps();
  fa_static_for<Pack::kVecs / 2>([&](auto j) FASTACT_ALWAYS_INLINE_LAMBDA {
    unordered = _mm256_or_ps(unordered, _mm256_cmp_ps(v.v[2 * j], v.v[2 * j + 1], _CMP_UNORD_Q));
  });
  return !_mm256_testz_ps(unordered, unordered);
#endif
}

// The backward with a parameter gradient, one parameter value: grad_input = grad * df/dx and the sum of
// grad * df/dparam added into acc[0], the two derivatives (at grad = 1) read from a table of pairs. It runs
// the computed backward's block loop: the same products, and the sum in the same lanes and order, so the
// same bits. A block with a NaN pair (dispatch.cpp's mark_exp_tails: an exp tail, or a NaN x) is computed by
// the op as backward_run computes it.
template <bool kGather, typename Op, typename scalar_t>
void lookup_backward_param_typed(const ElementwiseProblem& p, const float* pairs, int64_t begin, int64_t end,
                                 float* acc) {
  using B = Block<scalar_t, /*kKeepOrder=*/false>;
  using Pack = typename B::Pack;
  using NonzeroOp = typename NonzeroParamBackward<Op>::type;
  const auto* x = static_cast<const uint16_t*>(p.x) + begin;
  const auto* x_values = static_cast<const scalar_t*>(p.x) + begin;
  const auto* grad = static_cast<const scalar_t*>(p.grad) + begin;
  auto* grad_input = static_cast<scalar_t*>(p.out) + begin;
  const float param = p.param != nullptr ? *static_cast<const float*>(p.param) : static_cast<float>(p.param_scalar);
  backward_run_blocks<B, false, true>(
      grad_input, end - begin, acc, p.stream_out,
      [&](int64_t i, int64_t count, Pack& gx, Pack& gp) FASTACT_ALWAYS_INLINE_LAMBDA {
        Pack dfdx, dfdp;
        lookup_pairs<kGather, B>(pairs, x + i, count, dfdx, dfdp);
        const Pack g = B::load(grad + i, count);
        if (any_nan(dfdx)) [[unlikely]] {
          const Pack xs = B::load(x_values + i, count), params = B::template load_param<false>(&param, i, count);
          p.params_nonzero ? NonzeroOp::backward(g, xs, params, gx, gp) : Op::backward(g, xs, params, gx, gp);
          return;
        }
        gx = g * dfdx;
        gp = g * dfdp;
      });
  if (p.stream_out) fa_store_fence();
}

void lookup_backward_param(const ElementwiseProblem& p, const float* pairs, int64_t begin, int64_t end, float* acc) {
  dispatch(p, [&](auto op, auto scalar) {
    using scalar_t = decltype(scalar);
    if constexpr (std::is_same_v<scalar_t, c10::BFloat16> || std::is_same_v<scalar_t, c10::Half>) {
      with_table_reads(p, [&](auto gather) {
        lookup_backward_param_typed<decltype(gather)::value, decltype(op), scalar_t>(p, pairs, begin, end, acc);
      });
    }
  });
}

// The table lookup_backward_param reads: for float x[i], i in [begin, end), df/dx and df/dparam at grad = 1 and
// the problem's one parameter value, by the computed backward's own math, stored as pairs[2 i], pairs[2 i + 1].
template <typename Op>
void derivative_pairs_typed(const ElementwiseProblem& p, int64_t begin, int64_t end, float* pairs) {
  using B = Block<float, /*kKeepOrder=*/true>;
  using Pack = typename B::Pack;
  using CVec = typename B::CVec;
  const auto* x = static_cast<const float*>(p.x);
  const Pack param(static_cast<float>(p.param_scalar)), one(1.0f);
  for (int64_t i = begin; i < end; i += B::kSize) {
    const int64_t count = std::min<int64_t>(B::kSize, end - i);
    Pack dfdx, dfdp;
    Op::backward(one, B::load(x + i, count), param, dfdx, dfdp);
    fa_static_for<kVecsPerBlock>([&](auto j) FASTACT_ALWAYS_INLINE_LAMBDA {
      const int64_t part = B::part_count(count, j);
      if (part == 0) return;
      float* out = pairs + 2 * (i + j * B::kVecSize);
      FloatRegister first, second;
      interleave_pairs(dfdx.v[j], dfdp.v[j], first, second);
      if (part == B::kVecSize) {
        CVec(first).store(out);
        CVec(second).store(out + B::kVecSize);
      } else {
        alignas(64) float both[2 * B::kVecSize];
        CVec(first).store(both);
        CVec(second).store(both + B::kVecSize);
        std::memcpy(out, both, 2 * part * sizeof(float));
      }
    });
  }
}

void derivative_pairs(const ElementwiseProblem& p, int64_t begin, int64_t end, float* pairs) {
  dispatch(p, [&](auto op, auto) { derivative_pairs_typed<decltype(op)>(p, begin, end, pairs); });
}

constexpr auto kLookupForward = &lookup_forward;
constexpr auto kLookupBackward = &lookup_backward;
constexpr auto kLookupBackwardParam = &lookup_backward_param;
constexpr auto kDerivativePairs = &derivative_pairs;
#else
constexpr decltype(RangeKernels::lookup_forward) kLookupForward = nullptr;
constexpr decltype(RangeKernels::lookup_backward) kLookupBackward = nullptr;
constexpr decltype(RangeKernels::lookup_backward_param) kLookupBackwardParam = nullptr;
constexpr decltype(RangeKernels::derivative_pairs) kDerivativePairs = nullptr;
#endif


// ---------------------------------------------------------------------------------------------------------
// LeakyReLU's sign mask, which autograd saves instead of x (autograd.h, SignMaskNode): bit i % 8 of byte i / 8
// is x[i] > 0 (false for NaN), i counted from the start of a contiguous tensor. The backward needs only that bit
// per element, so it reads 1/32 of a float32 x (1/16 of a 16-bit one) instead of x. Every range starts at a
// multiple of kSignMaskUnit elements, so no two threads write one byte.

// The bits of x[0, count) into mask[0, (count + 7) / 8): one vector of x per step, the tail one element at a time.
template <typename scalar_t>
void write_sign_bits(const scalar_t* x, uint8_t* mask, int64_t count) {
  int64_t i = 0;
#if defined(CPU_CAPABILITY_AVX512)
  if constexpr (std::is_same_v<scalar_t, float>) {
    for (; i + 16 <= count; i += 16) {
      const __mmask16 bits = _mm512_cmp_ps_mask(_mm512_loadu_ps(x + i), _mm512_setzero_ps(), _CMP_GT_OQ);
      std::memcpy(mask + i / 8, &bits, sizeof(bits));
    }
  } else if constexpr (std::is_same_v<scalar_t, double>) {
    for (; i + 8 <= count; i += 8) {
      mask[i / 8] = _mm512_cmp_pd_mask(_mm512_loadu_pd(x + i), _mm512_setzero_pd(), _CMP_GT_OQ);
    }
  } else {
    // A 16-bit float is > 0 where its bits, as a signed integer, are in (0, +inf]: above are the NaNs.
    const __m512i inf = _mm512_set1_epi16(static_cast<int16_t>(std::is_same_v<scalar_t, c10::BFloat16> ? 0x7f80 : 0x7c00));
    for (; i + 32 <= count; i += 32) {
      const __m512i v = _mm512_loadu_si512(x + i);
      const __mmask32 bits = _mm512_cmpgt_epi16_mask(v, _mm512_setzero_si512()) & _mm512_cmple_epi16_mask(v, inf);
      std::memcpy(mask + i / 8, &bits, sizeof(bits));
    }
  }
#elif defined(CPU_CAPABILITY_AVX2)
  if constexpr (std::is_same_v<scalar_t, float>) {
    for (; i + 8 <= count; i += 8) {
      mask[i / 8] = static_cast<uint8_t>(
          _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(x + i), _mm256_setzero_ps(), _CMP_GT_OQ)));
    }
  } else if constexpr (std::is_same_v<scalar_t, double>) {
    for (; i + 8 <= count; i += 8) {
      const int low = _mm256_movemask_pd(_mm256_cmp_pd(_mm256_loadu_pd(x + i), _mm256_setzero_pd(), _CMP_GT_OQ));
      const int high = _mm256_movemask_pd(_mm256_cmp_pd(_mm256_loadu_pd(x + i + 4), _mm256_setzero_pd(), _CMP_GT_OQ));
      mask[i / 8] = static_cast<uint8_t>(low | high << 4);
    }
  } else {
    const __m256i above_inf = _mm256_set1_epi16(static_cast<int16_t>(std::is_same_v<scalar_t, c10::BFloat16> ? 0x7f81 : 0x7c01));
    auto positive = [&](__m256i v) {
      return _mm256_and_si256(_mm256_cmpgt_epi16(v, _mm256_setzero_si256()), _mm256_cmpgt_epi16(above_inf, v));
    };
    for (; i + 32 <= count; i += 32) {
      const auto* p = reinterpret_cast<const __m256i*>(x + i);
      // packs interleaves the two vectors' 64-bit quarters (a0 b0 a1 b1); the permute puts them back in order.
      const __m256i bytes = _mm256_permute4x64_epi64(
          _mm256_packs_epi16(positive(_mm256_loadu_si256(p)), positive(_mm256_loadu_si256(p + 1))), 0xd8);
      const uint32_t bits = static_cast<uint32_t>(_mm256_movemask_epi8(bytes));
      std::memcpy(mask + i / 8, &bits, sizeof(bits));
    }
  }
#elif defined(FASTACT_GENERIC_VECTORIZED) && defined(__SSE2__)
  // The default build on x86-64, where SSE2 is the baseline: 16 bytes of x per comparison.
  if constexpr (std::is_same_v<scalar_t, float>) {
    for (; i + 8 <= count; i += 8) {
      const int low = _mm_movemask_ps(_mm_cmpgt_ps(_mm_loadu_ps(x + i), _mm_setzero_ps()));
      const int high = _mm_movemask_ps(_mm_cmpgt_ps(_mm_loadu_ps(x + i + 4), _mm_setzero_ps()));
      mask[i / 8] = static_cast<uint8_t>(low | high << 4);
    }
  } else if constexpr (std::is_same_v<scalar_t, double>) {
    for (; i + 8 <= count; i += 8) {
      int byte = 0;
      for (int k = 0; k < 8; k += 2) byte |= _mm_movemask_pd(_mm_cmpgt_pd(_mm_loadu_pd(x + i + k), _mm_setzero_pd())) << k;
      mask[i / 8] = static_cast<uint8_t>(byte);
    }
  } else {
    // x > 0 for a 16-bit float: above +0 and at most +inf as a signed integer, as the AVX2 build tests it.
    const __m128i above_inf = _mm_set1_epi16(static_cast<int16_t>(std::is_same_v<scalar_t, c10::BFloat16> ? 0x7f81 : 0x7c01));
    auto positive = [&](__m128i v) {
      return _mm_and_si128(_mm_cmpgt_epi16(v, _mm_setzero_si128()), _mm_cmpgt_epi16(above_inf, v));
    };
    for (; i + 16 <= count; i += 16) {
      const auto* p = reinterpret_cast<const __m128i*>(x + i);
      const int bits = _mm_movemask_epi8(_mm_packs_epi16(positive(_mm_loadu_si128(p)), positive(_mm_loadu_si128(p + 1))));
      const uint16_t two_bytes = static_cast<uint16_t>(bits);
      std::memcpy(mask + i / 8, &two_bytes, sizeof(two_bytes));
    }
  }
#endif
  for (; i < count; i += 8) {
    uint8_t byte = 0;
    for (int64_t k = 0; k < std::min<int64_t>(8, count - i); ++k) {
      byte |= static_cast<uint8_t>(static_cast<at::opmath_type<scalar_t>>(x[i + k]) > 0) << k;
    }
    mask[i / 8] = byte;
  }
}

// The bits of one block of a forward: float32's and float64's from the block's vectors, which hold x in order
// (a comparison each: the float32 forward at 2^20 took 1.02-1.03x its time without bits in the AVX512-BF16 build,
// against 1.05-1.08x reading x again); the 16-bit types' from x, which their widened vectors hold in another order.
template <typename scalar_t, typename Pack>
FASTACT_HOST_DEVICE void write_block_sign_bits(const scalar_t* x, uint8_t* mask, int64_t count, const Pack& xs) {
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
  if constexpr (std::is_same_v<scalar_t, float> || std::is_same_v<scalar_t, double>) {
    constexpr int kLanes = Vectorized<scalar_t>::size();
    if (count == kLanes * kVecsPerBlock) {
      uint64_t bits = 0;
      fa_static_for<kVecsPerBlock>([&](auto j) FASTACT_ALWAYS_INLINE_LAMBDA {
        uint64_t lanes;
#if defined(CPU_CAPABILITY_AVX512)
        if constexpr (std::is_same_v<scalar_t, float>) {
          lanes = _mm512_cmp_ps_mask(xs.v[j], _mm512_setzero_ps(), _CMP_GT_OQ);
        } else {
          lanes = _mm512_cmp_pd_mask(xs.v[j], _mm512_setzero_pd(), _CMP_GT_OQ);
        }
#else
        if constexpr (std::is_same_v<scalar_t, float>) {
          lanes = static_cast<uint32_t>(_mm256_movemask_ps(_mm256_cmp_ps(xs.v[j], _mm256_setzero_ps(), _CMP_GT_OQ)));
        } else {
          lanes = static_cast<uint32_t>(_mm256_movemask_pd(_mm256_cmp_pd(xs.v[j], _mm256_setzero_pd(), _CMP_GT_OQ)));
        }
#endif
        bits |= lanes << (int(j) * kLanes);
      });
      std::memcpy(mask, &bits, kLanes * kVecsPerBlock / 8);
      return;
    }
  }
#endif
  write_sign_bits(x, mask, count);
}

// LeakyReLU's forward that also writes the bits, each block's right after the block, while its x is in L1 (a
// second pass over x, even in pieces of 8192 elements, cost the forward 5-30% at 2^20). That needs the blocks to
// start on whole bytes of the mask: they do where y is aligned for streaming at `begin` (no alignment head), as
// a fresh output is; otherwise the bits take their own pass.
template <typename scalar_t>
void forward_with_sign_mask_typed(const ElementwiseProblem& p, uint8_t* mask, int64_t begin, int64_t end) {
  const auto* x = static_cast<const scalar_t*>(p.x);
  const auto y = reinterpret_cast<std::uintptr_t>(static_cast<scalar_t*>(p.out) + begin);
  if (y % kStreamAlignment != 0) {
    forward_range_typed<LeakyOp, scalar_t>(p, begin, end);
    write_sign_bits(x + begin, mask + begin / 8, end - begin);
    return;
  }
  forward_range_typed<LeakyOp, scalar_t>(
      p, begin, end, [&](int64_t offset, int64_t count, const auto& xs) FASTACT_ALWAYS_INLINE_LAMBDA {
        write_block_sign_bits(x + offset, mask + offset / 8, count, xs);
      });
}

// grad_input = grad where the bit is set, else grad * slope (rounded once, as torch's leaky_relu_backward), over
// [begin, end); a streamed output (p.stream_out) must be aligned to 64 bytes at begin.
template <typename scalar_t>
void backward_from_sign_mask_typed(const ElementwiseProblem& p, const uint8_t* mask, int64_t begin, int64_t end) {
  using opmath_t = at::opmath_type<scalar_t>;
  const auto* g = static_cast<const scalar_t*>(p.grad) + begin;
  auto* gx = static_cast<scalar_t*>(p.out) + begin;
  const uint8_t* bits = mask + begin / 8;
  const int64_t count = end - begin;
  const opmath_t slope = static_cast<opmath_t>(p.param_scalar);
  const bool stream = p.stream_out;
  int64_t i = 0;
#if defined(CPU_CAPABILITY_AVX512)
  if constexpr (std::is_same_v<scalar_t, float>) {
    const __m512 s = _mm512_set1_ps(slope);
    for (; i + 16 <= count; i += 16) {
      __mmask16 m;
      std::memcpy(&m, bits + i / 8, sizeof(m));
      const __m512 v = _mm512_loadu_ps(g + i);
      const __m512 r = _mm512_mask_blend_ps(m, _mm512_mul_ps(v, s), v);
      stream ? _mm512_stream_ps(gx + i, r) : _mm512_storeu_ps(gx + i, r);
    }
  } else if constexpr (std::is_same_v<scalar_t, double>) {
    const __m512d s = _mm512_set1_pd(slope);
    for (; i + 8 <= count; i += 8) {
      const __m512d v = _mm512_loadu_pd(g + i);
      const __m512d r = _mm512_mask_blend_pd(bits[i / 8], _mm512_mul_pd(v, s), v);
      stream ? _mm512_stream_pd(gx + i, r) : _mm512_storeu_pd(gx + i, r);
    }
  } else {
    const __m512 s = _mm512_set1_ps(slope);
    for (; i + 16 <= count; i += 16) {
      __mmask16 m;
      std::memcpy(&m, bits + i / 8, sizeof(m));
      const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(g + i));
      __m256i scaled;
      if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
        const __m512 f = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(v), 16));
        scaled = narrow_bf16_ordered(_mm512_mul_ps(f, s));
      } else {
        scaled = _mm512_cvtps_ph(_mm512_mul_ps(_mm512_cvtph_ps(v), s), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      }
      const __m256i r = _mm256_mask_blend_epi16(m, scaled, v);
      auto* dst = reinterpret_cast<__m256i*>(gx + i);
      stream ? _mm256_stream_si256(dst, r) : _mm256_storeu_si256(dst, r);
    }
  }
#elif defined(CPU_CAPABILITY_AVX2)
  // One byte of the mask as 8 lanes (all ones where the bit is set).
  auto lanes32 = [](uint8_t byte) {
    const __m256i select = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    return _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32(byte), select), select);
  };
  if constexpr (std::is_same_v<scalar_t, float>) {
    const __m256 s = _mm256_set1_ps(slope);
    for (; i + 8 <= count; i += 8) {
      const __m256 v = _mm256_loadu_ps(g + i);
      const __m256 r = _mm256_blendv_ps(_mm256_mul_ps(v, s), v, _mm256_castsi256_ps(lanes32(bits[i / 8])));
      stream ? _mm256_stream_ps(gx + i, r) : _mm256_storeu_ps(gx + i, r);
    }
  } else if constexpr (std::is_same_v<scalar_t, double>) {
    const __m256d s = _mm256_set1_pd(slope);
    const __m256i select_low = _mm256_setr_epi64x(1, 2, 4, 8);
    const __m256i select_high = _mm256_setr_epi64x(16, 32, 64, 128);
    for (; i + 8 <= count; i += 8) {
      const __m256i byte = _mm256_set1_epi64x(bits[i / 8]);
      const __m256i low = _mm256_cmpeq_epi64(_mm256_and_si256(byte, select_low), select_low);
      const __m256i high = _mm256_cmpeq_epi64(_mm256_and_si256(byte, select_high), select_high);
      const __m256d v0 = _mm256_loadu_pd(g + i);
      const __m256d v1 = _mm256_loadu_pd(g + i + 4);
      const __m256d r0 = _mm256_blendv_pd(_mm256_mul_pd(v0, s), v0, _mm256_castsi256_pd(low));
      const __m256d r1 = _mm256_blendv_pd(_mm256_mul_pd(v1, s), v1, _mm256_castsi256_pd(high));
      stream ? _mm256_stream_pd(gx + i, r0) : _mm256_storeu_pd(gx + i, r0);
      stream ? _mm256_stream_pd(gx + i + 4, r1) : _mm256_storeu_pd(gx + i + 4, r1);
    }
  } else if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
    // 16 at a time through the build's unordered widening and narrowing (kernels.h, top), which put the
    // elements back in order; an ordered conversion of 8 took 1.2x the time of the saved-x backward.
    const Vectorized<float> s(slope);
    const __m256i select = _mm256_setr_epi16(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384,
                                             static_cast<int16_t>(0x8000));
    for (; i + 16 <= count; i += 16) {
      const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(g + i));
      Vectorized<float> even, odd;
      widen_bf16_unordered(v, even, odd);
      const __m256i scaled = narrow_bf16_unordered(even * s, odd * s);
      uint16_t m;
      std::memcpy(&m, bits + i / 8, sizeof(m));
      const __m256i set = _mm256_cmpeq_epi16(_mm256_and_si256(_mm256_set1_epi16(static_cast<int16_t>(m)), select), select);
      const __m256i r = _mm256_blendv_epi8(scaled, v, set);
      auto* dst = reinterpret_cast<__m256i*>(gx + i);
      stream ? _mm256_stream_si256(dst, r) : _mm256_storeu_si256(dst, r);
    }
  } else {
    const __m256 s = _mm256_set1_ps(slope);
    const __m128i select = _mm_setr_epi16(1, 2, 4, 8, 16, 32, 64, 128);
    for (; i + 8 <= count; i += 8) {
      const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(g + i));
      const __m128i scaled =
          _mm256_cvtps_ph(_mm256_mul_ps(_mm256_cvtph_ps(v), s), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      const __m128i set = _mm_cmpeq_epi16(_mm_and_si128(_mm_set1_epi16(bits[i / 8]), select), select);
      const __m128i r = _mm_blendv_epi8(scaled, v, set);
      auto* dst = reinterpret_cast<__m128i*>(gx + i);
      stream ? _mm_stream_si128(dst, r) : _mm_storeu_si128(dst, r);
    }
  }
#elif defined(FASTACT_GENERIC_VECTORIZED)
  // Eight elements per mask byte on GCC's 16-byte vectors: each lane tests its bit by an AND with its own power
  // of two, and selects without a branch (the scalar loop below branches on every bit: 3.2 ns per element).
  if constexpr (std::is_same_v<scalar_t, float> || std::is_same_v<scalar_t, double>) {
    using Lane = FaLaneBits<scalar_t>;
    constexpr int kPerChunk = 16 / sizeof(scalar_t);
    for (; i + 8 <= count; i += 8) {
      const Lane byte = bits[i / 8];
      fa_static_for<8 / kPerChunk>([&](auto c) FASTACT_ALWAYS_INLINE_LAMBDA {
        FaChunk<Lane> power;
        for (int k = 0; k < kPerChunk; ++k) power[k] = Lane{1} << (c * kPerChunk + k);
        FaChunk<scalar_t> v;
        std::memcpy(&v, g + i + c * kPerChunk, 16);
        const FaChunk<scalar_t> scaled = v * slope;
        FaChunk<Lane> kept, changed;
        std::memcpy(&kept, &v, 16);
        std::memcpy(&changed, &scaled, 16);
        const FaChunk<Lane> set = (power & byte) != 0;
        const FaChunk<Lane> r = (set & kept) | (~set & changed);
        std::memcpy(gx + i + c * kPerChunk, &r, 16);
      });
    }
  } else if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
    using Words = FaChunk<uint32_t>;
    for (; i + 8 <= count; i += 8) {
      const uint32_t byte = bits[i / 8];
      Words w;
      std::memcpy(&w, g + i, 16);
      // Each 32-bit word holds an even element (low half) and an odd one (high half).
      const Words even_bits = w << 16, odd_bits = w & 0xffff0000u;
      FaChunk<float> even, odd;
      std::memcpy(&even, &even_bits, 16);
      std::memcpy(&odd, &odd_bits, 16);
      const FaChunk<float> even_scaled = even * slope, odd_scaled = odd * slope;
      Words even_scaled_bits, odd_scaled_bits;
      std::memcpy(&even_scaled_bits, &even_scaled, 16);
      std::memcpy(&odd_scaled_bits, &odd_scaled, 16);
      const Words scaled =
          (add_bf16_rounding(even_scaled_bits) >> 16) | (add_bf16_rounding(odd_scaled_bits) & 0xffff0000u);
      const Words even_set = (Words)((Words{1, 4, 16, 64} & byte) != 0);
      const Words odd_set = (Words)((Words{2, 8, 32, 128} & byte) != 0);
      const Words keep = (even_set & 0x0000ffffu) | (odd_set & 0xffff0000u);
      const Words r = (keep & w) | (~keep & scaled);
      std::memcpy(gx + i, &r, 16);
    }
  }
#endif
  for (; i < count; ++i) {
    const opmath_t v = static_cast<opmath_t>(g[i]);
    gx[i] = static_cast<scalar_t>((bits[i / 8] >> (i % 8)) & 1 ? v : v * slope);
  }
  if (stream) fa_store_fence();
}

template <typename Fn>
void dispatch_dtype(c10::ScalarType dtype, Fn&& fn) {
  switch (dtype) {
    case c10::ScalarType::Float: return fn(float{});
    case c10::ScalarType::Double: return fn(double{});
    case c10::ScalarType::Half: return fn(c10::Half{});
    case c10::ScalarType::BFloat16: return fn(c10::BFloat16{});
    default: return;  // ops.cpp admits only these four
  }
}

void forward_with_sign_mask(const ElementwiseProblem& p, uint8_t* mask, int64_t begin, int64_t end) {
  dispatch_dtype(p.dtype, [&](auto scalar) { forward_with_sign_mask_typed<decltype(scalar)>(p, mask, begin, end); });
}

void backward_from_sign_mask(const ElementwiseProblem& p, const uint8_t* mask, int64_t begin, int64_t end) {
  dispatch_dtype(p.dtype, [&](auto scalar) { backward_from_sign_mask_typed<decltype(scalar)>(p, mask, begin, end); });
}

}  // namespace

// The entry the dispatcher picks at run time.
const RangeKernels kRangeKernels{&forward_range,         &backward_range,       kLookupForward,
                                 kLookupBackward,        kLookupBackwardParam,  kDerivativePairs,
                                 &forward_with_sign_mask, &backward_from_sign_mask};

}  // namespace fastact::cpu::CPU_CAPABILITY
