// The handful of primitives the activation functors are written in, for scalars (host and CUDA device) and,
// in the CPU kernel translation units, for at::vec::Vectorized. Masks are `bool` for scalars and a
// Vectorized bit mask (the result of a Vectorized comparison) for vectors.
#pragma once

#include <cmath>
#include <limits>

#if defined(__CUDACC__)
#define FASTACT_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define FASTACT_HOST_DEVICE inline
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
inline at::vec::Vectorized<S> fa_select(
    const at::vec::Vectorized<S>& mask, const at::vec::Vectorized<S>& a, const at::vec::Vectorized<S>& b) {
  return at::vec::Vectorized<S>::blendv(b, a, mask);
}
template <typename S>
inline at::vec::Vectorized<S> fa_exp(const at::vec::Vectorized<S>& x) {
  return x.exp();
}
template <typename S>
inline at::vec::Vectorized<S> fa_abs(const at::vec::Vectorized<S>& x) {
  return x.abs();
}
template <typename S>
inline at::vec::Vectorized<S> fa_neg(const at::vec::Vectorized<S>& x) {
  return x.neg();
}
#endif

}  // namespace
}  // namespace fastact
