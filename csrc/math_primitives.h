// The handful of primitives the activation functors are written in, for scalars (host and CUDA device) and,
// in the CPU kernel translation units, for at::vec::Vectorized. Masks are `bool` for scalars and, for vectors,
// a Vectorized bit mask (the result of a Vectorized comparison) or, in the AVX-512 build, k-masks (MaskPack).
#pragma once

#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
#include <utility>

#if defined(__CUDACC__)
#define FASTACT_HOST_DEVICE __host__ __device__ __forceinline__
#else
// Forced: the functors must melt into the vector loops (GCC otherwise leaves some as calls, which spill
// every vector register).
#define FASTACT_HOST_DEVICE inline __attribute__((always_inline))
#endif

namespace fastact {
namespace {

template <typename T>
FASTACT_HOST_DEVICE T fa_select(bool mask, T a, T b) {
  return mask ? a : b;
}
FASTACT_HOST_DEVICE bool fa_any(bool mask) { return mask; }

// if_negative where v < 0, otherwise where v > 0; at v = +-0 and NaN it may take either, so callers use it
// only where both give the same there. On x86 the blend reads v's sign bit itself: no comparison.
template <typename T>
FASTACT_HOST_DEVICE T fa_select_negative(T v, T if_negative, T otherwise) {
  return v >= T(0) ? otherwise : if_negative;
}
// a > b ? a : b, NaN and signed zeros included (b where the comparison is false): what x86's max
// instructions compute, in one.
template <typename T>
FASTACT_HOST_DEVICE T fa_greater_or_second(T a, T b) {
  return a > b ? a : b;
}

FASTACT_HOST_DEVICE float fa_exp(float x) {
#if defined(__CUDA_ARCH__)
  return ::expf(x);  // full-precision expf, not __expf: the tails must stay accurate
#else
  return std::exp(x);
#endif
}
FASTACT_HOST_DEVICE double fa_exp(double x) {
#if defined(__CUDA_ARCH__)
  return ::exp(x);
#else
  return std::exp(x);
#endif
}
// exp(x) for x <= 0, which is all the functors need (they take exp(-|z|), so nothing overflows).
FASTACT_HOST_DEVICE float fa_exp_nonpositive(float x) { return fa_exp(x); }
FASTACT_HOST_DEVICE double fa_exp_nonpositive(double x) { return fa_exp(x); }

// The element type of T: T itself, or S for a VecPack<S, N>.
template <typename T>
struct fa_scalar_type {
  using type = T;
};

// Where exp(u) is below the normal numbers (u < -87 in float, whose smallest normal is exp(-87.34); u < -708 in
// double), it carries few significant bits (at u = -90 in float, 1 part in 600 000), and a result c e (the
// functors' leading term in that tail, c = x, 1 + x or x^2: |c| near |u| or larger) would keep that error, some
// 50 ulps of a result that is itself still normal.
template <typename T>
FASTACT_HOST_DEVICE auto fa_exp_is_subnormal(T u) {
  constexpr double kBound = std::is_same_v<typename fa_scalar_type<T>::type, double> ? -708.0 : -87.0;
  return T(kBound) > u;
}
// otherwise, with its lanes where exp(u) is subnormal replaced by a c b exp(u), computed as (a (c h)) (b h) with
// h = exp(u / 2) (a normal number): a few ulps, rounded once into the subnormals. With a the incoming gradient and
// c, b the rest, no product overflows where the result does not (a c alone may: a large gradient times x^2's x),
// and where h underflows to 0 the result is 0. A pack without such a lane costs a comparison.
template <typename T>
FASTACT_HOST_DEVICE T fa_select_exp_tail(T u, T a, T c, T b, T otherwise) {
  const auto tail = fa_exp_is_subnormal(u);
  if (!fa_any(tail)) [[likely]] return otherwise;
  const T h = fa_exp_nonpositive(u * T(0.5));
  return fa_select(tail, (a * (c * h)) * (b * h), otherwise);
}

// The functors' general paths (the far tails) for float packs avoid subnormal operands and results where they
// change no bit: on x86 an instruction with a subnormal input or output (an underflow to 0 included) takes a
// microcode assist of some 150 cycles, which made packs with a lane past |z| = 87 up to 60x slower than
// in-range ones. The scalar and double forms below are the plain math (a GPU has no such assists).
//
// exp(u) for u <= 0 where it is a normal float, 0 where it is subnormal (u < -87): for the general paths, whose
// lanes with u < -87 take fa_select_exp_tail's value or (positive z) need e only next to 1.
template <typename T>
FASTACT_HOST_DEVICE T fa_exp_nonpositive_normal(T u) {
  return fa_exp_nonpositive(u);
}
// e, with values below 2^-63 (whose square is subnormal) as 0: for terms that are only ever added to 1 or to
// 2e, or multiplied into such terms, where they are below half an ulp.
template <typename T>
FASTACT_HOST_DEVICE T fa_tiny_as_zero(T e) {
  return e;
}

// Whether T is a pack of float vectors: the one compute type whose exp has a fast path for arguments in
// [-87, 0] (fa_exp_moderate). The functors' forms for it skip what only the far tails need (exp's range
// check, the guards against inf * 0: a fifth of a SiLU forward's instructions) when every lane is in range,
// and run their general form out of line (fa_call_cold) otherwise.
template <typename T>
struct fa_is_float_pack : std::false_type {};

// Runs f() out of line, away from the hot loop it is called from.
template <typename F>
[[gnu::noinline, gnu::cold]] auto fa_call_cold(const F& f) {
  return f();
}

FASTACT_HOST_DEVICE float fa_abs(float x) { return ::fabsf(x); }
FASTACT_HOST_DEVICE double fa_abs(double x) { return ::fabs(x); }
FASTACT_HOST_DEVICE float fa_neg(float x) { return -x; }
FASTACT_HOST_DEVICE double fa_neg(double x) { return -x; }

// -|x|, the argument of every exp the functors take.
template <typename T>
FASTACT_HOST_DEVICE T fa_neg_abs(T x) {
  return fa_neg(fa_abs(x));
}

template <typename T>
FASTACT_HOST_DEVICE T fa_inf() {
  return T(std::numeric_limits<double>::infinity());
}

#if defined(FASTACT_WITH_VECTORIZED)
#define FASTACT_HOST_DEVICE_LAMBDA __attribute__((always_inline))
// ATen's Vectorized is its portable array-of-lanes template: the default build anywhere but aarch64, whose
// default build has NEON specializations.
#if defined(CPU_CAPABILITY_DEFAULT) && !defined(__aarch64__)
#define FASTACT_GENERIC_VECTORIZED
#endif

// N SIMD vectors computed in lockstep: the CPU kernels' compute type. Every operation is applied to all N
// vectors before the next one, so the instruction stream interleaves N independent dependency chains. An
// activation is one long chain (exp's polynomial, a division); fed one vector at a time, the core mostly
// waits on latency (measured: 19.1 cycles per 8 floats for silu with N = 1, 12.5 with N = 4).
// Calls f(std::integral_constant<int, I>{}) for I = 0 .. N-1: indices are constants, so the arrays indexed
// with them stay in registers (a loop over a runtime index leaves GCC keeping them in memory).
template <int N, typename F>
FASTACT_HOST_DEVICE void fa_static_for(F&& f) {
  [&]<int... I>(std::integer_sequence<int, I...>) FASTACT_HOST_DEVICE_LAMBDA {
    (f(std::integral_constant<int, I>{}), ...);
  }(std::make_integer_sequence<int, N>{});
}

template <typename S, int N>
struct VecPack {
  using Vec = at::vec::Vectorized<S>;
  static constexpr int kVecs = N;
  Vec v[N];

  VecPack() = default;
  template <typename A, typename = std::enable_if_t<std::is_arithmetic_v<A>>>
  FASTACT_HOST_DEVICE VecPack(A a)
      : VecPack([a](auto) FASTACT_HOST_DEVICE_LAMBDA { return Vec(static_cast<S>(a)); }, kIndices) {}
  // {f(0), f(1), ..., f(N-1)}, f called with std::integral_constant indices.
  template <typename F>
  FASTACT_HOST_DEVICE static VecPack generate(F&& f) {
    return VecPack(f, kIndices);
  }

 private:
  static constexpr auto kIndices = std::make_integer_sequence<int, N>{};
  template <typename F, int... I>
  FASTACT_HOST_DEVICE VecPack(const F& f, std::integer_sequence<int, I...>) : v{f(std::integral_constant<int, I>{})...} {}
};
template <typename S, int N>
struct fa_scalar_type<VecPack<S, N>> {
  using type = S;
};

#if defined(FASTACT_GENERIC_VECTORIZED)
// ATen's generic Vectorized is an array of lanes. GCC leaves its operators as calls, and its comparisons and
// blends branch in each lane, which on data of random sign mispredicts every other lane (LeakyReLU took 9.7 ns
// per element). The packs' operations here run on GCC's vector extension instead, 16 bytes at a time (the
// baseline ISA's width, SSE2 on x86-64: GCC computes wider vector types lane by lane there), so they compile
// to vector arithmetic, compares and and/andnot/or, without branches. A comparison gives -1 or 0 per lane, the mask
// form of Vectorized's.
template <typename L>
struct FaChunkOf {
  typedef L type __attribute__((vector_size(16)));
};
template <typename L>
using FaChunk = typename FaChunkOf<L>::type;
template <typename S>
using FaLaneBits = at::vec::int_same_size_t<S>;
template <typename S>
FASTACT_HOST_DEVICE constexpr FaLaneBits<S> fa_sign_bit() {
  return static_cast<FaLaneBits<S>>(std::make_unsigned_t<FaLaneBits<S>>{1} << (8 * sizeof(S) - 1));
}
// f applied to the vectors' chunks, read as lanes of type In (S, or integers of S's size for masks and bit
// operations); f's result chunk is stored bit for bit.
template <typename In, typename F, typename S, typename... More>
FASTACT_HOST_DEVICE at::vec::Vectorized<S> fa_lanes(F f, const at::vec::Vectorized<S>& a, const More&... more) {
  using V = at::vec::Vectorized<S>;
  static_assert(sizeof(V) % 16 == 0 && std::is_trivially_copyable_v<V>);
  V out;
  auto chunk = [](const V& v, int c) FASTACT_HOST_DEVICE_LAMBDA {
    FaChunk<In> r;
    std::memcpy(&r, reinterpret_cast<const char*>(&v) + 16 * c, 16);
    return r;
  };
  for (int c = 0; c < int(sizeof(V) / 16); ++c) {
    const auto r = f(chunk(a, c), chunk(more, c)...);
    static_assert(sizeof(r) == 16);
    std::memcpy(reinterpret_cast<char*>(&out) + 16 * c, &r, 16);
  }
  return out;
}
#define FASTACT_PACK_BINARY_OP(op, Lane)                                                             \
  template <typename S, int N>                                                                       \
  FASTACT_HOST_DEVICE VecPack<S, N> operator op(const VecPack<S, N>& a, const VecPack<S, N>& b) {    \
    return VecPack<S, N>::generate([&](int i) FASTACT_HOST_DEVICE_LAMBDA {                           \
      return fa_lanes<Lane>([](auto x, auto y) FASTACT_HOST_DEVICE_LAMBDA { return x op y; }, a.v[i], b.v[i]); \
    });                                                                                              \
  }
FASTACT_PACK_BINARY_OP(+, S)
FASTACT_PACK_BINARY_OP(-, S)
FASTACT_PACK_BINARY_OP(*, S)
FASTACT_PACK_BINARY_OP(/, S)
FASTACT_PACK_BINARY_OP(&, FaLaneBits<S>)
FASTACT_PACK_BINARY_OP(|, FaLaneBits<S>)
#undef FASTACT_PACK_BINARY_OP
#else
#define FASTACT_PACK_BINARY_OP(op)                                                                   \
  template <typename S, int N>                                                                       \
  FASTACT_HOST_DEVICE VecPack<S, N> operator op(const VecPack<S, N>& a, const VecPack<S, N>& b) {    \
    return VecPack<S, N>::generate([&](int i) FASTACT_HOST_DEVICE_LAMBDA { return a.v[i] op b.v[i]; }); \
  }
FASTACT_PACK_BINARY_OP(+)
FASTACT_PACK_BINARY_OP(-)
FASTACT_PACK_BINARY_OP(*)
FASTACT_PACK_BINARY_OP(/)
FASTACT_PACK_BINARY_OP(&)
FASTACT_PACK_BINARY_OP(|)
#endif
#if defined(CPU_CAPABILITY_AVX512)
#undef FASTACT_PACK_BINARY_OP
// AVX-512 compares into mask registers, and its blends read them. A comparison of packs is therefore kept as
// N k-masks (MaskPack) that fa_select consumes as they are: Vectorized's comparisons expand each k-mask to a
// vector, and its blendv compares that back into a k-mask, two more instructions per vector in every select
// and in exp's range check.
template <typename S, int N>
struct MaskPack {
  using Mask = std::conditional_t<std::is_same_v<S, float>, __mmask16, __mmask8>;
  Mask m[N];
};

template <typename S, int N, int Predicate>
FASTACT_HOST_DEVICE MaskPack<S, N> fa_compare(const VecPack<S, N>& a, const VecPack<S, N>& b) {
  MaskPack<S, N> r;
  fa_static_for<N>([&](auto i) FASTACT_HOST_DEVICE_LAMBDA {
    if constexpr (std::is_same_v<S, float>) {
      r.m[i] = _mm512_cmp_ps_mask(a.v[i], b.v[i], Predicate);
    } else {
      r.m[i] = _mm512_cmp_pd_mask(a.v[i], b.v[i], Predicate);
    }
  });
  return r;
}
// The ordered, quiet predicates Vectorized's comparisons use: false in a lane where either side is NaN.
#define FASTACT_PACK_COMPARISON(op, predicate)                                                       \
  template <typename S, int N>                                                                       \
  FASTACT_HOST_DEVICE MaskPack<S, N> operator op(const VecPack<S, N>& a, const VecPack<S, N>& b) {   \
    return fa_compare<S, N, predicate>(a, b);                                                        \
  }
FASTACT_PACK_COMPARISON(<, _CMP_LT_OQ)
FASTACT_PACK_COMPARISON(<=, _CMP_LE_OQ)
FASTACT_PACK_COMPARISON(>, _CMP_GT_OQ)
FASTACT_PACK_COMPARISON(>=, _CMP_GE_OQ)
FASTACT_PACK_COMPARISON(==, _CMP_EQ_OQ)
#undef FASTACT_PACK_COMPARISON

#define FASTACT_MASK_BINARY_OP(op)                                                                   \
  template <typename S, int N>                                                                       \
  FASTACT_HOST_DEVICE MaskPack<S, N> operator op(const MaskPack<S, N>& a, const MaskPack<S, N>& b) { \
    MaskPack<S, N> r;                                                                                \
    fa_static_for<N>([&](auto i) FASTACT_HOST_DEVICE_LAMBDA { r.m[i] = a.m[i] op b.m[i]; });          \
    return r;                                                                                        \
  }
FASTACT_MASK_BINARY_OP(&)
FASTACT_MASK_BINARY_OP(|)
#undef FASTACT_MASK_BINARY_OP

template <typename S, int N>
FASTACT_HOST_DEVICE VecPack<S, N> fa_select(const MaskPack<S, N>& mask, const VecPack<S, N>& a,
                                            const VecPack<S, N>& b) {
  return VecPack<S, N>::generate([&](auto i) FASTACT_HOST_DEVICE_LAMBDA {
    if constexpr (std::is_same_v<S, float>) {
      return at::vec::Vectorized<S>(_mm512_mask_blend_ps(mask.m[i], b.v[i], a.v[i]));
    } else {
      return at::vec::Vectorized<S>(_mm512_mask_blend_pd(mask.m[i], b.v[i], a.v[i]));
    }
  });
}
// Whether any lane of the pack is true.
template <typename S, int N>
FASTACT_HOST_DEVICE bool fa_any(const MaskPack<S, N>& mask) {
  unsigned bits = 0;
  fa_static_for<N>([&](auto i) FASTACT_HOST_DEVICE_LAMBDA { bits |= mask.m[i]; });
  return bits != 0;
}
#else
// Comparisons give masks (all bits set in a true lane), as Vectorized's do; ordered: false where either side
// is NaN.
#if defined(FASTACT_GENERIC_VECTORIZED)
#define FASTACT_PACK_COMPARISON(op)                                                                   \
  template <typename S, int N>                                                                        \
  FASTACT_HOST_DEVICE VecPack<S, N> operator op(const VecPack<S, N>& a, const VecPack<S, N>& b) {     \
    return VecPack<S, N>::generate([&](int i) FASTACT_HOST_DEVICE_LAMBDA {                            \
      return fa_lanes<S>([](auto x, auto y) FASTACT_HOST_DEVICE_LAMBDA { return x op y; }, a.v[i], b.v[i]); \
    });                                                                                               \
  }
#else
#define FASTACT_PACK_COMPARISON(op) FASTACT_PACK_BINARY_OP(op)
#endif
FASTACT_PACK_COMPARISON(<)
FASTACT_PACK_COMPARISON(<=)
FASTACT_PACK_COMPARISON(>)
FASTACT_PACK_COMPARISON(>=)
FASTACT_PACK_COMPARISON(==)
#undef FASTACT_PACK_COMPARISON
#undef FASTACT_PACK_BINARY_OP

#if defined(FASTACT_GENERIC_VECTORIZED)
template <typename S, int N>
FASTACT_HOST_DEVICE VecPack<S, N> fa_select(const VecPack<S, N>& mask, const VecPack<S, N>& a,
                                            const VecPack<S, N>& b) {
  return VecPack<S, N>::generate([&](int i) FASTACT_HOST_DEVICE_LAMBDA {
    return fa_lanes<FaLaneBits<S>>([](auto m, auto x, auto y) FASTACT_HOST_DEVICE_LAMBDA { return (m & x) | (~m & y); },
                                   mask.v[i], a.v[i], b.v[i]);
  });
}
template <typename S, int N>
FASTACT_HOST_DEVICE bool fa_any(const VecPack<S, N>& mask) {
  using V = at::vec::Vectorized<S>;
  FaChunk<int64_t> any = {0, 0};
  fa_static_for<N>([&](auto i) FASTACT_HOST_DEVICE_LAMBDA {
    for (int c = 0; c < int(sizeof(V) / 16); ++c) {
      FaChunk<int64_t> m;
      std::memcpy(&m, reinterpret_cast<const char*>(&mask.v[i]) + 16 * c, 16);
      any |= m;
    }
  });
  return (any[0] | any[1]) != 0;
}
#else
template <typename S, int N>
FASTACT_HOST_DEVICE VecPack<S, N> fa_select(const VecPack<S, N>& mask, const VecPack<S, N>& a,
                                            const VecPack<S, N>& b) {
  return VecPack<S, N>::generate(
      [&](int i) FASTACT_HOST_DEVICE_LAMBDA { return at::vec::Vectorized<S>::blendv(b.v[i], a.v[i], mask.v[i]); });
}
// Whether any lane of the pack is true.
template <typename S, int N>
FASTACT_HOST_DEVICE bool fa_any(const VecPack<S, N>& mask) {
  auto any = mask.v[0];
  fa_static_for<N - 1>([&](auto i) FASTACT_HOST_DEVICE_LAMBDA { any = any | mask.v[i + 1]; });
#if defined(CPU_CAPABILITY_AVX2)
  // The lanes' sign bits, without zero_mask's comparison against zero.
  if constexpr (std::is_same_v<S, float>) {
    return _mm256_movemask_ps(any) != 0;
  } else {
    return _mm256_movemask_pd(any) != 0;
  }
#endif
  return any.zero_mask() != (1 << at::vec::Vectorized<S>::size()) - 1;
}
#endif  // FASTACT_GENERIC_VECTORIZED
#endif  // CPU_CAPABILITY_AVX512
template <typename S, int N>
FASTACT_HOST_DEVICE VecPack<S, N> fa_select_negative(const VecPack<S, N>& v, const VecPack<S, N>& if_negative,
                                                     const VecPack<S, N>& otherwise) {
  return VecPack<S, N>::generate([&](int i) FASTACT_HOST_DEVICE_LAMBDA {
#if defined(CPU_CAPABILITY_AVX512)
    if constexpr (std::is_same_v<S, float>) {
      return at::vec::Vectorized<S>(
          _mm512_mask_blend_ps(_mm512_movepi32_mask(_mm512_castps_si512(v.v[i])), otherwise.v[i], if_negative.v[i]));
    } else {
      return at::vec::Vectorized<S>(
          _mm512_mask_blend_pd(_mm512_movepi64_mask(_mm512_castpd_si512(v.v[i])), otherwise.v[i], if_negative.v[i]));
    }
#elif defined(CPU_CAPABILITY_AVX2)
    if constexpr (std::is_same_v<S, float>) {
      return at::vec::Vectorized<S>(_mm256_blendv_ps(otherwise.v[i], if_negative.v[i], v.v[i]));
    } else {
      return at::vec::Vectorized<S>(_mm256_blendv_pd(otherwise.v[i], if_negative.v[i], v.v[i]));
    }
#elif defined(FASTACT_GENERIC_VECTORIZED)
    // The sign bit spread over the lane (an arithmetic shift): what the x86 blends read.
    return fa_lanes<FaLaneBits<S>>(
        [](auto s, auto a, auto b) FASTACT_HOST_DEVICE_LAMBDA {
          const auto m = s >> (8 * sizeof(S) - 1);
          return (m & a) | (~m & b);
        },
        v.v[i], if_negative.v[i], otherwise.v[i]);
#else
    using V = at::vec::Vectorized<S>;
    return V::blendv(otherwise.v[i], if_negative.v[i], v.v[i] < V(S(0)));
#endif
  });
}
template <typename S, int N>
FASTACT_HOST_DEVICE VecPack<S, N> fa_greater_or_second(const VecPack<S, N>& a, const VecPack<S, N>& b) {
  return VecPack<S, N>::generate([&](int i) FASTACT_HOST_DEVICE_LAMBDA {
#if defined(CPU_CAPABILITY_AVX512)
    if constexpr (std::is_same_v<S, float>) return at::vec::Vectorized<S>(_mm512_max_ps(a.v[i], b.v[i]));
    else return at::vec::Vectorized<S>(_mm512_max_pd(a.v[i], b.v[i]));
#elif defined(CPU_CAPABILITY_AVX2)
    if constexpr (std::is_same_v<S, float>) return at::vec::Vectorized<S>(_mm256_max_ps(a.v[i], b.v[i]));
    else return at::vec::Vectorized<S>(_mm256_max_pd(a.v[i], b.v[i]));
#elif defined(FASTACT_GENERIC_VECTORIZED)
    return fa_lanes<S>([](auto x, auto y) FASTACT_HOST_DEVICE_LAMBDA { return x > y ? x : y; }, a.v[i], b.v[i]);
#else
    return at::vec::Vectorized<S>::blendv(b.v[i], a.v[i], a.v[i] > b.v[i]);
#endif
  });
}
template <typename S, int N>
FASTACT_HOST_DEVICE VecPack<S, N> fa_fma(const VecPack<S, N>& a, const VecPack<S, N>& b, const VecPack<S, N>& c) {
#if defined(FASTACT_GENERIC_VECTORIZED)
  // Two roundings, as ATen's generic fmadd: the baseline ISA has no FMA.
  return VecPack<S, N>::generate([&](int i) FASTACT_HOST_DEVICE_LAMBDA {
    return fa_lanes<S>([](auto x, auto y, auto z) FASTACT_HOST_DEVICE_LAMBDA { return x * y + z; }, a.v[i], b.v[i], c.v[i]);
  });
#else
  return VecPack<S, N>::generate([&](int i) FASTACT_HOST_DEVICE_LAMBDA { return at::vec::fmadd(a.v[i], b.v[i], c.v[i]); });
#endif
}
// x clamped into [lo, hi] (NaN stays NaN).
template <typename S, int N>
FASTACT_HOST_DEVICE VecPack<S, N> fa_clamp(const VecPack<S, N>& x, S lo, S hi) {
#if defined(FASTACT_GENERIC_VECTORIZED)
  return VecPack<S, N>::generate([&](int i) FASTACT_HOST_DEVICE_LAMBDA {
    return fa_lanes<S>(
        [lo, hi](auto v) FASTACT_HOST_DEVICE_LAMBDA {
          using C = decltype(v);
          const C low = C{} + lo, high = C{} + hi;  // broadcasts
          const C above = v < low ? low : v;       // as ATen's generic clamp: NaN stays NaN
          return high < above ? high : above;
        },
        x.v[i]);
  });
#else
  using V = at::vec::Vectorized<S>;
  return VecPack<S, N>::generate([&](int i) FASTACT_HOST_DEVICE_LAMBDA { return at::vec::clamp(x.v[i], V(lo), V(hi)); });
#endif
}
// a b - c
template <typename S, int N>
FASTACT_HOST_DEVICE VecPack<S, N> fa_fmsub(const VecPack<S, N>& a, const VecPack<S, N>& b, const VecPack<S, N>& c) {
#if defined(FASTACT_GENERIC_VECTORIZED)
  return VecPack<S, N>::generate([&](int i) FASTACT_HOST_DEVICE_LAMBDA {
    return fa_lanes<S>([](auto x, auto y, auto z) FASTACT_HOST_DEVICE_LAMBDA { return x * y - z; }, a.v[i], b.v[i], c.v[i]);
  });
#else
  return VecPack<S, N>::generate([&](int i) FASTACT_HOST_DEVICE_LAMBDA { return at::vec::fmsub(a.v[i], b.v[i], c.v[i]); });
#endif
}
template <typename S, int N>
FASTACT_HOST_DEVICE VecPack<S, N> fa_abs(const VecPack<S, N>& x) {
#if defined(FASTACT_GENERIC_VECTORIZED)
  return VecPack<S, N>::generate([&](int i) FASTACT_HOST_DEVICE_LAMBDA {
    return fa_lanes<FaLaneBits<S>>([](auto v) FASTACT_HOST_DEVICE_LAMBDA { return v & ~fa_sign_bit<S>(); }, x.v[i]);
  });
#else
  return VecPack<S, N>::generate([&](int i) FASTACT_HOST_DEVICE_LAMBDA { return x.v[i].abs(); });
#endif
}
template <typename S, int N>
FASTACT_HOST_DEVICE VecPack<S, N> fa_neg(const VecPack<S, N>& x) {
#if defined(FASTACT_GENERIC_VECTORIZED)
  return VecPack<S, N>::generate([&](int i) FASTACT_HOST_DEVICE_LAMBDA {
    return fa_lanes<FaLaneBits<S>>([](auto v) FASTACT_HOST_DEVICE_LAMBDA { return v ^ fa_sign_bit<S>(); }, x.v[i]);
  });
#else
  return VecPack<S, N>::generate([&](int i) FASTACT_HOST_DEVICE_LAMBDA { return x.v[i].neg(); });
#endif
}
template <typename S, int N>
FASTACT_HOST_DEVICE VecPack<S, N> fa_neg_abs(const VecPack<S, N>& x) {  // one OR of the sign bit
#if defined(FASTACT_GENERIC_VECTORIZED)
  return VecPack<S, N>::generate([&](int i) FASTACT_HOST_DEVICE_LAMBDA {
    return fa_lanes<FaLaneBits<S>>([](auto v) FASTACT_HOST_DEVICE_LAMBDA { return v | fa_sign_bit<S>(); }, x.v[i]);
  });
#else
  using V = at::vec::Vectorized<S>;
  return VecPack<S, N>::generate([&](int i) FASTACT_HOST_DEVICE_LAMBDA { return x.v[i] | V(S(-0.0)); });
#endif
}

// 2^k for integer-valued k in [-126, 127]: the exponent bits, built in float arithmetic (exact) and converted.
FASTACT_HOST_DEVICE at::vec::Vectorized<float> fa_pow2(const at::vec::Vectorized<float>& k) {
  using V = at::vec::Vectorized<float>;
  const V bits = (k + V(127.0f)) * V(8388608.0f);  // (k + bias) << 23
  return at::vec::cast<float>(at::vec::convert_to_int_of_same_size(bits));
}

// exp(r) for |r| <= ln2/2: 1 + r + r^2 q(r), q of degree 4 fitted for least relative error on that interval
// (truncation error 3e-9, a twentieth of an ulp), by Horner's rule to the end: six FMAs where Cephes' expf
// polynomial of degree 7 takes seven. Horner's rounding errors dominate both: in float32 over 4M uniform r,
// worst 0.721 / mean 0.2538 ulp against Cephes' 0.720 / 0.2535.
template <typename T>
FASTACT_HOST_DEVICE T fa_exp_reduced(const T& r) {
  T p = fa_fma(T(1.381461276e-3f), r, T(8.368710056e-3f));
  p = fa_fma(p, r, T(4.166838899e-2f));
  p = fa_fma(p, r, T(1.666652113e-1f));
  p = fa_fma(p, r, T(4.999999404e-1f));
  p = fa_fma(p, r, T(1.0f));
  return fa_fma(p, r, T(1.0f));
}
// r = x - n ln2, with ln2 split in two (Cody-Waite) so that r is exact.
template <typename T>
FASTACT_HOST_DEVICE T fa_exp_remainder(const T& n, const T& x) {
  return fa_fma(n, T(2.12194440e-4f), fa_fma(n, T(-0.693359375f), x));
}

// exp(x) for a pack with a lane below -87 (rare in data: the result is below 1e-38; common in a lookup table's
// build, which takes every 16-bit value): 2^n is applied in two halves, so that results down to the subnormals
// are right. The whole pack in lockstep, as the fast path.
template <int N>
[[gnu::noinline, gnu::cold]] VecPack<float, N> fa_exp_nonpositive_tail(const VecPack<float, N>& x_in) {
  using V = at::vec::Vectorized<float>;
  using P = VecPack<float, N>;
  // Below -104 exp underflows to 0. Those lanes get 0 by a select, computed on x = 0: a product that underflows
  // takes a microcode assist on x86 (some 150 cycles per instruction), which made such packs (+-inf, a huge
  // |x|: half of a lookup table's build) 15x slower than in-range ones. NaN passes through.
  const auto zero = x_in < P(-104.0f);
  const P x = fa_select(zero, P(0.0f), x_in);
  const P n = P::generate([&](int i) FASTACT_HOST_DEVICE_LAMBDA { return (x.v[i] * V(1.44269504088896341f)).round(); });
  // n >= -150: both halves >= -75, normal powers of two
  const P half = P::generate([&](int i) FASTACT_HOST_DEVICE_LAMBDA { return (n.v[i] * V(0.5f)).trunc(); });
  const P e = fa_exp_reduced(fa_exp_remainder(n, x));
  return fa_select(zero, P(0.0f), P::generate([&](int i) FASTACT_HOST_DEVICE_LAMBDA {
    return e.v[i] * fa_pow2(half.v[i]) * fa_pow2(n.v[i] - half.v[i]);
  }));
}

// exp(kSign x) for kSign x in [-87, 87], inlined: Sleef's call (what Vectorized::exp runs) costs more than all
// the rest of an activation. 2^n is a normal float there: n is rounded by adding a magic constant, whose low
// mantissa bits then hold n + 127, so 2^n is one shift of those bits. The sign is folded into the constants.
template <int kSign, int N>
FASTACT_HOST_DEVICE VecPack<float, N> fa_exp_moderate_signed(const VecPack<float, N>& x) {
  static_assert(kSign == 1 || kSign == -1);
  using P = VecPack<float, N>;
  // 1.5 * 2^23 + 127: adding it rounds x log2(e) to an integer n and leaves n + 127 in the low bits.
  const P magic(12583039.0f);
  const P shifted = fa_fma(x, P(kSign * 1.44269504088896341f), magic);
  // A shift by an immediate: Vectorized's operator<< shifts by a vector (vpsllvd), which on Zen 1 issues once
  // per 3.9 cycles against 1.9.
  const P pow2 = P::generate([&](int i) FASTACT_HOST_DEVICE_LAMBDA {
#if defined(CPU_CAPABILITY_AVX512)
    return at::vec::Vectorized<float>(_mm512_castsi512_ps(_mm512_slli_epi32(_mm512_castps_si512(shifted.v[i]), 23)));
#elif defined(CPU_CAPABILITY_AVX2)
    return at::vec::Vectorized<float>(_mm256_castsi256_ps(_mm256_slli_epi32(_mm256_castps_si256(shifted.v[i]), 23)));
#else
#if defined(FASTACT_GENERIC_VECTORIZED)
    return fa_lanes<int32_t>([](auto bits) FASTACT_HOST_DEVICE_LAMBDA { return bits << 23; }, shifted.v[i]);
#else
    return at::vec::cast<float>(at::vec::cast<int32_t>(shifted.v[i]) << at::vec::Vectorized<int32_t>(23));
#endif
#endif
  });
  const P n = shifted - magic;
  if constexpr (kSign == 1) {
    return fa_exp_reduced(fa_exp_remainder(n, x)) * pow2;
  } else {  // r = -x - n ln2, as fa_exp_remainder
    return fa_exp_reduced(fa_fma(n, P(2.12194440e-4f), fa_fmsub(n, P(-0.693359375f), x))) * pow2;
  }
}
template <int N>
FASTACT_HOST_DEVICE VecPack<float, N> fa_exp_moderate(const VecPack<float, N>& x) {
  return fa_exp_moderate_signed<1>(x);
}
template <int N>
struct fa_is_float_pack<VecPack<float, N>> : std::true_type {};
// Whether every lane of u (an exp argument: -|z|, or NaN) is in fa_exp_moderate's range, [-87, 0]. (A NaN
// lane may go either way: both of the functors' paths give it a NaN.)
template <int N>
FASTACT_HOST_DEVICE bool fa_exp_is_moderate(const VecPack<float, N>& u) {
  return __builtin_expect(!fa_any(u < VecPack<float, N>(-87.0f)), 1);
}
// exp(x) for any x <= 0 (all the functors need: they take exp(-|z|), so nothing overflows).
template <int N>
FASTACT_HOST_DEVICE VecPack<float, N> fa_exp_nonpositive(const VecPack<float, N>& x) {
  return fa_exp_is_moderate(x) ? fa_exp_moderate(x) : fa_exp_nonpositive_tail(x);
}
template <int N>
FASTACT_HOST_DEVICE VecPack<double, N> fa_exp_nonpositive(const VecPack<double, N>& x) {
  return VecPack<double, N>::generate([&](int i) { return x.v[i].exp(); });
}
template <int N>
FASTACT_HOST_DEVICE VecPack<float, N> fa_exp_nonpositive_normal(const VecPack<float, N>& u) {
  using P = VecPack<float, N>;
  const auto subnormal = fa_exp_is_subnormal(u);  // NaN: false, so it passes through
  return fa_select(subnormal, P(0.0f), fa_exp_moderate(fa_select(subnormal, P(0.0f), u)));
}
template <int N>
FASTACT_HOST_DEVICE VecPack<float, N> fa_tiny_as_zero(const VecPack<float, N>& e) {
  using P = VecPack<float, N>;
  return fa_select(e < P(0x1p-63f), P(0.0f), e);
}
#endif

}  // namespace
}  // namespace fastact
