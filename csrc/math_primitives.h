// The handful of primitives the activation functors are written in, for scalars (host and CUDA device) and,
// in the CPU kernel translation units, for at::vec::Vectorized. Masks are `bool` for scalars and a
// Vectorized bit mask (the result of a Vectorized comparison) for vectors.
#pragma once

#include <cmath>
#include <limits>

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

FASTACT_HOST_DEVICE float fa_abs(float x) { return ::fabsf(x); }
FASTACT_HOST_DEVICE double fa_abs(double x) { return ::fabs(x); }
FASTACT_HOST_DEVICE float fa_neg(float x) { return -x; }
FASTACT_HOST_DEVICE double fa_neg(double x) { return -x; }

template <typename T>
FASTACT_HOST_DEVICE T fa_inf() {
  return T(std::numeric_limits<double>::infinity());
}

#if defined(FASTACT_WITH_VECTORIZED)
template <typename S>
FASTACT_HOST_DEVICE at::vec::Vectorized<S> fa_select(
    const at::vec::Vectorized<S>& mask, const at::vec::Vectorized<S>& a, const at::vec::Vectorized<S>& b) {
  return at::vec::Vectorized<S>::blendv(b, a, mask);
}
template <typename S>
FASTACT_HOST_DEVICE at::vec::Vectorized<S> fa_exp(const at::vec::Vectorized<S>& x) {
  return x.exp();
}
// 2^k for integer-valued k in [-126, 127]: the exponent bits, built in float arithmetic (exact) and converted.
FASTACT_HOST_DEVICE at::vec::Vectorized<float> fa_pow2(const at::vec::Vectorized<float>& k) {
  using V = at::vec::Vectorized<float>;
  const V bits = (k + V(127.0f)) * V(8388608.0f);  // (k + bias) << 23
  return at::vec::cast<float>(at::vec::convert_to_int_of_same_size(bits));
}

// exp(x) for x <= 0 in float lanes, inlined: Sleef's call (what Vectorized::exp runs) costs more than all the
// rest of an activation. Cephes' expf: x = n ln2 + r with ln2 split in two (Cody-Waite), |r| <= ln2/2, a
// degree-6 polynomial; about 1 ulp. 2^n is applied in two halves, so results down to the subnormals are right.
FASTACT_HOST_DEVICE at::vec::Vectorized<float> fa_exp_nonpositive(const at::vec::Vectorized<float>& x_in) {
  using V = at::vec::Vectorized<float>;
  using at::vec::fmadd;
  const V x = at::vec::clamp_min(x_in, V(-104.0f));  // exp(-104) underflows to 0; NaN passes through
  const V n = (x * V(1.44269504088896341f)).round();
  V r = fmadd(n, V(-0.693359375f), x);
  r = fmadd(n, V(2.12194440e-4f), r);
  V p = fmadd(V(1.9875691500e-4f), r, V(1.3981999507e-3f));
  p = fmadd(p, r, V(8.3334519073e-3f));
  p = fmadd(p, r, V(4.1665795894e-2f));
  p = fmadd(p, r, V(1.6666665459e-1f));
  p = fmadd(p, r, V(5.0000001201e-1f));
  p = fmadd(p, r * r, r) + V(1.0f);
  const V half = (n * V(0.5f)).trunc();  // n >= -150: both halves >= -75, normal powers of two
  return p * fa_pow2(half) * fa_pow2(n - half);
}
FASTACT_HOST_DEVICE at::vec::Vectorized<double> fa_exp_nonpositive(const at::vec::Vectorized<double>& x) { return x.exp(); }

template <typename S>
FASTACT_HOST_DEVICE at::vec::Vectorized<S> fa_abs(const at::vec::Vectorized<S>& x) {
  return x.abs();
}
template <typename S>
FASTACT_HOST_DEVICE at::vec::Vectorized<S> fa_neg(const at::vec::Vectorized<S>& x) {
  return x.neg();
}
#endif

}  // namespace
}  // namespace fastact
